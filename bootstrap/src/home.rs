//! Where kubestrap keeps its state: `$KUBESTRAP_HOME`, else the platform
//! data directory (`$XDG_DATA_HOME/kubestrap`, i.e. `~/.local/share/kubestrap`
//! on Linux; `~/Library/Application Support/dev.kubestrap.kubestrap` on
//! macOS; `%APPDATA%\kubestrap\kubestrap\data` on Windows). The home records
//! its layout version so a kubestrap never misreads a home that a newer one
//! reshaped.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use kubestrap_fskit::{self as fskit, FsError, Lock, Mode, caps};
use kubestrap_manifest::Sha256;

use crate::env::Environment;

/// The layout of the home this kubestrap reads and writes.
pub const LAYOUT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot find a home for kubestrap")]
    Unknown,
    #[error(
        "{} was written by a newer kubestrap (home layout {found}; this kubestrap understands layout {LAYOUT} and older)",
        path.display()
    )]
    NewerLayout { path: PathBuf, found: u32 },
}

impl HomeError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            HomeError::Unknown => "set KUBESTRAP_HOME (or HOME)".into(),
            HomeError::NewerLayout { .. } => {
                "run that newer kubestrap, or point KUBESTRAP_HOME at another directory".into()
            }
        }
    }
}

/// The kubestrap home directory and the layout inside it.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
    /// Set once the layout is recorded (shared by clones).
    recorded: Arc<OnceLock<()>>,
    /// Warnings from code that holds no reporter (recording the layout
    /// while a lock is taken); the CLI reports them when the command ends.
    notes: Arc<Mutex<Vec<String>>>,
    /// The environment the command runs in (see [`crate::env`]).
    env: Arc<Environment>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LayoutFile {
    layout: u32,
}

impl Home {
    /// A home at `root`, made absolute (and symlinks resolved when it
    /// exists), so paths recorded in it mean the same from any directory.
    /// Refuses a home whose layout is newer than this kubestrap's.
    /// The command's environment rides with it (see [`crate::env`]).
    pub fn open(root: PathBuf, env: Environment) -> Result<Home, HomeError> {
        let root = fs::canonicalize(&root).or_else(|_| std::path::absolute(&root)).unwrap_or(root);
        let home = Home { root, recorded: Arc::default(), notes: Arc::default(), env: Arc::new(env) };
        home.check_layout()?;
        Ok(home)
    }

    /// The environment the command runs in, as the CLI read it.
    pub fn env(&self) -> &Environment {
        &self.env
    }

    fn layout_path(&self) -> PathBuf {
        self.root.join("state/layout.toml")
    }

    /// A missing record is layout 1 (homes made before it was recorded); a
    /// damaged one is rewritten when the home is next locked.
    fn check_layout(&self) -> Result<(), HomeError> {
        let path = self.layout_path();
        let found = fskit::read_capped_text(&path, caps::STATE)
            .ok()
            .and_then(|t| toml::from_str::<LayoutFile>(&t).ok())
            .map_or(LAYOUT, |l| l.layout);
        if found > LAYOUT {
            return Err(HomeError::NewerLayout { path, found });
        }
        Ok(())
    }

    /// Records this layout (once, when the home is first locked: every
    /// command that writes to the home takes a lock first). A failure (a
    /// full disk) does not fail the command: `stop` and `delete` must work
    /// there; it is noted, and tried again by the next command.
    fn record_layout(&self) {
        self.recorded.get_or_init(|| {
            let path = self.layout_path();
            let current =
                fskit::read_capped_text(&path, caps::STATE).ok().and_then(|t| toml::from_str::<LayoutFile>(&t).ok());
            if current.is_none_or(|l| l.layout < LAYOUT) {
                let text = format!("# the layout of this kubestrap home; do not edit\nlayout = {LAYOUT}\n");
                if let Err(e) = fskit::write_atomic(&path, text.as_bytes(), 0o644) {
                    self.note(format!("cannot record the home's layout: {e}"));
                }
            }
        });
    }

    fn note(&self, msg: String) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }

    /// The warnings noted so far (see [`Home`]'s `notes`), emptied.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
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
    /// Root-signed key lists, `<anchor>/keys-<version>.toml` with `.minisig` beside.
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
    /// once ([`FsError::Locked`]) when `wait` is false.
    pub fn lock(&self, name: &str, wait: bool, waiting: impl FnOnce()) -> Result<Lock, FsError> {
        let lock = fskit::lock(&self.locks().join(format!("{name}.lock")), Mode::Exclusive, wait, waiting)?;
        self.record_layout();
        Ok(lock)
    }

    /// The store lock: shared by commands that add to or use the cache
    /// (fetch, start, unpack), exclusive for those that remove from it
    /// (prune, verify, purge), so nothing is deleted from under a user.
    pub fn store_lock(&self, exclusive: bool, waiting: impl FnOnce()) -> Result<Lock, FsError> {
        let mode = if exclusive { Mode::Exclusive } else { Mode::Shared };
        let lock = fskit::lock(&self.locks().join("store.lock"), mode, true, waiting)?;
        self.record_layout();
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_layout_is_refused_and_an_older_one_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().to_path_buf(), Environment::default()).unwrap();
        drop(home.lock("x", true, || {}).unwrap());
        let text = fs::read_to_string(dir.path().join("state/layout.toml")).unwrap();
        assert!(text.contains(&format!("layout = {LAYOUT}")), "{text}");
        fs::write(dir.path().join("state/layout.toml"), "layout = 99\n").unwrap();
        let err = Home::open(dir.path().to_path_buf(), Environment::default()).unwrap_err();
        assert!(matches!(err, HomeError::NewerLayout { found: 99, .. }), "{err}");
        // A damaged record does not lock the user out.
        fs::write(dir.path().join("state/layout.toml"), [0xff, 0x00, 0x12]).unwrap();
        Home::open(dir.path().to_path_buf(), Environment::default()).unwrap();
    }
}
