//! Where kubestrap keeps its state: `$KUBESTRAP_HOME`, else
//! `$XDG_DATA_HOME/kubestrap`, else `~/.local/share/kubestrap`.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kubestrap_manifest::Sha256;

use crate::fsutil;

/// The kubestrap home directory and the layout inside it.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at `root`, made absolute (and symlinks resolved when it
    /// exists), so paths recorded in it mean the same from any directory.
    pub fn new(root: PathBuf) -> Home {
        let root = fs::canonicalize(&root).or_else(|_| std::path::absolute(&root)).unwrap_or(root);
        Home { root }
    }

    /// The home chosen by the environment (see module docs).
    pub fn from_env() -> Result<Home> {
        if let Some(h) = std::env::var_os("KUBESTRAP_HOME").filter(|v| !v.is_empty()) {
            return Ok(Home::new(PathBuf::from(h)));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(Home::new(PathBuf::from(x).join("kubestrap")));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => Ok(Home::new(PathBuf::from(h).join(".local/share/kubestrap"))),
            None => bail!("cannot find a home for kubestrap: set KUBESTRAP_HOME (or HOME)"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Verified artifacts, content-addressed and immutable.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn blob(&self, sha: &Sha256) -> PathBuf {
        self.blobs().join(sha.hex())
    }
    /// Downloads in progress, resumable (`<hex>.partial`).
    pub fn partials(&self) -> PathBuf {
        self.root.join("blobs/partial")
    }
    pub fn partial(&self, sha: &Sha256) -> PathBuf {
        self.partials().join(format!("{}.partial", sha.hex()))
    }
    /// Unpacked artifact trees, one per blob.
    pub fn components(&self) -> PathBuf {
        self.root.join("components")
    }
    pub fn component(&self, sha: &Sha256) -> PathBuf {
        self.components().join(sha.hex())
    }
    /// Accepted manifests, `<channel>-<version>.toml` with `.minisig` beside.
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }
    pub fn profile(&self, name: &str) -> PathBuf {
        self.profiles().join(name)
    }
    /// Keys pinned with `kubestrap trust add`.
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// Root-signed key lists, `keys-<version>.toml` with `.minisig` beside.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Highest manifest version seen per channel (rollback protection).
    pub fn seen_versions(&self) -> PathBuf {
        self.root.join("state/seen-versions.toml")
    }
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Takes an exclusive lock named `name` under `locks/`. If another
    /// kubestrap holds it, calls `waiting` once and then blocks — or fails at
    /// once when `wait` is false.
    pub fn lock(&self, name: &str, wait: bool, waiting: impl FnOnce()) -> Result<LockGuard> {
        lock_file(&self.locks().join(format!("{name}.lock")), wait, waiting)
    }

    /// The store lock: shared by commands that add to or use the cache
    /// (fetch, start, unpack), exclusive for those that remove from it
    /// (prune, verify, purge), so nothing is deleted from under a user.
    pub fn store_lock(&self, exclusive: bool, waiting: impl FnOnce()) -> Result<LockGuard> {
        let path = self.locks().join("store.lock");
        if exclusive {
            return lock_file(&path, true, waiting);
        }
        let file = open_lock(&path)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                waiting();
                file.lock_shared().with_context(|| format!("cannot lock {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        Ok(LockGuard { _file: file })
    }
}

fn open_lock(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fsutil::create_dir_mode(dir, 0o700)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))
}

/// Takes an exclusive lock on a directory itself (flock works on directory
/// descriptors): serialises writers of files in it without leaving a lock
/// file behind. Waits for other holders.
pub fn lock_dir(dir: &Path) -> Result<LockGuard> {
    let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", dir.display()))?;
    Ok(LockGuard { _file: file })
}

/// An exclusive advisory lock, released on drop (and by the kernel if the
/// process dies, so a `kill -9` never leaves a stale lock).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// The lock is held by another process and the caller asked not to wait.
#[derive(Debug, thiserror::Error)]
#[error("{path} is locked by another kubestrap command; wait for it to finish, or retry without --no-wait")]
pub struct Locked {
    pub path: PathBuf,
}

pub fn lock_file(path: &Path, wait: bool, waiting: impl FnOnce()) -> Result<LockGuard> {
    let file = open_lock(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            if !wait {
                return Err(Locked { path: path.to_path_buf() }.into());
            }
            waiting();
            file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(LockGuard { _file: file })
}
