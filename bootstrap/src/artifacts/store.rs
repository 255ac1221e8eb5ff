//! The content-addressed store: verified blobs and unpacked component trees.
//!
//! Invariants: a file exists under `blobs/sha256/` only after its sha256 and
//! size matched; a tree under `components/<sha256>/` is used only if its
//! `.complete` file (written last, listing every file's sha256) exists, and
//! what is executed from it is re-hashed against that list first.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit, FsError};
use kubestrap_manifest::{Artifact, Sha256};

use super::hash::{Hasher, hash_file};
use super::spool::Spool;
use super::unpack::{self, FileEntry, Limits, UnpackError};
use crate::home::Home;

/// Name of the marker written last in a component tree.
pub const COMPLETE: &str = ".complete";
/// A `.complete` list is at most this big (a million entries).
const COMPLETE_CAP: u64 = 256 << 20;
/// Trees being unpacked: `.tmp-<sha256>-<pid>` in `components/`.
const UNPACKING: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{}: {reason}; run `kubestrap cache verify`, then try again", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// A finished body whose hash or size does not match the manifest.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: Sha256, actual: Sha256 },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// A download in progress: appends to `<hex>.partial`, hashing as it goes
/// (in the caller's thread; the writing is the [`Spool`]'s).
pub struct BlobWriter {
    spool: Spool,
    hasher: Hasher,
    len: u64,
    partial: PathBuf,
}

impl BlobWriter {
    /// Opens the partial file for `sha`, keeping (and re-hashing) bytes from
    /// an earlier interrupted download so it can resume.
    pub fn open(home: &Home, sha: &Sha256) -> Result<BlobWriter, FsError> {
        fskit::create_dir_mode(&home.partials(), 0o755)?;
        let partial = home.partial(sha);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(|e| FsError::io(&partial, "open", e))?;
        let mut hasher = Hasher::new();
        let len =
            io::copy(&mut (&mut file).take(u64::MAX), &mut hasher).map_err(|e| FsError::io(&partial, "read", e))?;
        let spool = Spool::new(file, len).map_err(|e| FsError::io(&partial, "start writing", e))?;
        Ok(BlobWriter { spool, hasher, len, partial })
    }

    /// Bytes already present (the offset to resume from).
    pub fn offset(&self) -> u64 {
        self.len
    }

    /// Drops everything written so far (the server ignored our Range).
    pub fn restart(&mut self) -> Result<(), FsError> {
        self.spool.truncate().map_err(|e| FsError::io(&self.partial, "truncate", e))?;
        self.hasher = Hasher::new();
        self.len = 0;
        Ok(())
    }

    /// An empty buffer to read the next bytes into, for [`BlobWriter::push`].
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spool.buffer()
    }

    /// Appends `buf` (read into a [`BlobWriter::buffer`]): hashed here,
    /// written by the spool.
    pub fn push(&mut self, buf: Vec<u8>) -> Result<(), FsError> {
        self.hasher.update(&buf);
        self.len += buf.len() as u64;
        self.spool.write(buf).map_err(|e| FsError::io(&self.partial, "write", e))
    }

    /// Appends a borrowed chunk (copied once into a buffer).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), FsError> {
        let mut buf = self.buffer();
        buf.clear();
        buf.extend_from_slice(chunk);
        self.push(buf)
    }

    /// Checks size and hash; on a match moves the file to `blobs/sha256/`
    /// durably. On a mismatch the partial file is removed.
    pub fn finish(mut self, home: &Home, expected: &Sha256, size: u64) -> Result<PathBuf, BlobError> {
        let file = self.spool.close().map_err(|e| FsError::io(&self.partial, "write", e))?;
        let actual = self.hasher.finish();
        if self.len != size || actual != *expected {
            drop(file);
            let _ = fs::remove_file(&self.partial);
            return Err(if self.len != size {
                BlobError::SizeMismatch { expected: size, actual: self.len }
            } else {
                BlobError::HashMismatch { expected: *expected, actual }
            });
        }
        file.sync_all().map_err(|e| FsError::io(&self.partial, "sync", e))?;
        let dir = home.blobs();
        fskit::create_dir_mode(&dir, 0o755)?;
        let dest = home.blob(expected);
        fs::rename(&self.partial, &dest).map_err(|e| FsError::io(&self.partial, "move into the store", e))?;
        fskit::sync_dir(&dir)?;
        Ok(dest)
    }

    /// Forgets the partial file entirely (a body that cannot be right).
    pub fn discard(mut self) {
        let _ = self.spool.close();
        let _ = fs::remove_file(&self.partial);
    }
}

/// Whether a verified blob of the right size is in the store.
pub fn has_blob(home: &Home, sha: &Sha256, size: u64) -> bool {
    fs::metadata(home.blob(sha)).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// The unpacked tree for an artifact whose blob is in the store, unpacking it
/// first if needed. Safe against concurrent callers and crashes: the tree is
/// built in a temp dir and renamed into place with `.complete` already in it.
pub fn ensure_component(home: &Home, artifact: &Artifact) -> Result<PathBuf, StoreError> {
    let sha = &artifact.sha256;
    let final_dir = home.component(sha);
    if final_dir.join(COMPLETE).is_file() {
        return Ok(final_dir);
    }
    let _lock = home.lock(&format!("component-{}", sha.hex()), true, || {})?;
    if final_dir.join(COMPLETE).is_file() {
        return Ok(final_dir);
    }
    let root = home.components();
    fskit::create_dir_mode(&root, 0o755)?;
    // What a killed unpack of this tree left (we hold its lock: no one uses it).
    sweep_unpacking(home, Some(sha));
    let tmp = root.join(format!("{UNPACKING}{}-{}", sha.hex(), std::process::id()));
    fskit::remove_any(&tmp)?;
    fs::create_dir(&tmp).map_err(|e| FsError::io(&tmp, "create directory", e))?;
    let built = (|| -> Result<(), StoreError> {
        let files = unpack::unpack(
            &home.blob(sha),
            artifact.unpack,
            *sha,
            &artifact.bin,
            &tmp,
            Limits::for_size(artifact.size.get()),
        )?;
        // Every unpacked file durable before `.complete` says the tree is whole.
        fskit::sync_fs(&tmp)?;
        fskit::write_atomic(&tmp.join(COMPLETE), render_complete(&files).as_bytes(), 0o644)?;
        // A leftover tree without `.complete` is from a crash: replace it.
        fskit::remove_tree(&final_dir)?;
        fs::rename(&tmp, &final_dir).map_err(|e| FsError::io(&tmp, "move into place", e))?;
        fskit::sync_dir(&root)?;
        Ok(())
    })();
    if built.is_err() {
        let _ = fskit::remove_any(&tmp);
    }
    built?;
    Ok(final_dir)
}

/// Removes trees that a killed unpack left (`.tmp-<sha256>-<pid>`), of one
/// artifact or of all, skipping any another process is still building
/// (whose component lock is held). Quiet: an interrupted unpack is not
/// corruption.
pub fn sweep_unpacking(home: &Home, only: Option<&Sha256>) {
    for e in fskit::list_dir(&home.components()).unwrap_or_default() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_prefix(UNPACKING).and_then(|r| r.split('-').next()) else { continue };
        if only.is_some_and(|sha| sha.hex() != hex) {
            continue;
        }
        if only.is_some() {
            let _ = fskit::remove_any(&e.path());
            continue;
        }
        // Not held by a live unpack? Then nobody will finish it.
        if let Ok(_free) = home.lock(&format!("component-{hex}"), false, || {}) {
            tracing::debug!("removing {} left by an interrupted unpack", e.path().display());
            let _ = fskit::remove_any(&e.path());
        }
    }
}

fn render_complete(files: &[FileEntry]) -> String {
    let mut out = String::from("# kubestrap component tree v1: sha256  mode  path\n");
    for f in files {
        out.push_str(&format!("{}  {:o}  {}\n", f.sha256, f.mode, f.path));
    }
    out
}

/// The files a tree's `.complete` lists, with their sha256.
pub fn complete_list(dir: &Path) -> Result<BTreeMap<String, Result<Sha256, String>>, StoreError> {
    let path = dir.join(COMPLETE);
    let text = fskit::read_capped_text(&path, COMPLETE_CAP)
        .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let mut parts = line.splitn(3, "  ");
        match (parts.next(), parts.next(), parts.next()) {
            (Some(hex), Some(_mode), Some(p)) => {
                out.insert(p.to_string(), hex.parse::<Sha256>().map_err(|_| format!("malformed line {line:?}")));
            }
            _ => {
                out.insert(line.to_string(), Err(format!("malformed line {line:?}")));
            }
        }
    }
    Ok(out)
}

/// Re-hashes a component tree against its `.complete` list. Returns the
/// paths that are missing or differ.
pub fn verify_component(dir: &Path) -> Result<Vec<String>, StoreError> {
    Ok(complete_list(dir)?
        .into_iter()
        .filter(|(path, want)| !want.as_ref().is_ok_and(|w| file_matches(&dir.join(path), w)))
        .map(|(path, want)| want.err().unwrap_or(path))
        .collect())
}

/// Whether a regular file (not a link to one) has this sha256.
pub fn file_matches(path: &Path, want: &Sha256) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) && hash_file(path).is_ok_and(|(got, _)| got == *want)
}

/// Makes sure an unpacked tree still matches its signed artifact before
/// anything from it runs: every file is re-hashed against `.complete` (and
/// `.complete` itself must be the list the blob unpacks to, so it is checked
/// against the blob when the tree looks damaged). A mismatch is repaired by
/// unpacking again from the verified blob. Returns the paths that had to be
/// repaired (empty when all was well).
pub fn ensure_intact(home: &Home, artifact: &Artifact) -> Result<(PathBuf, Vec<String>), StoreError> {
    let dir = ensure_component(home, artifact)?;
    let bad = verify_component(&dir).unwrap_or_else(|e| vec![e.to_string()]);
    if bad.is_empty() && dir.join(&artifact.bin).is_file() {
        return Ok((dir, bad));
    }
    let _lock = home.lock(&format!("component-{}", artifact.sha256.hex()), true, || {})?;
    fskit::remove_tree(&dir)?;
    drop(_lock);
    let dir = ensure_component(home, artifact)?;
    let still = verify_component(&dir)?;
    if !still.is_empty() {
        return Err(StoreError::Corrupt {
            path: dir,
            reason: format!("{} differ from the artifact even after unpacking it again", still.join(", ")),
        });
    }
    Ok((dir, if bad.is_empty() { vec![artifact.bin.clone()] } else { bad }))
}

/// Every blob in the store with its size.
pub fn list_blobs(home: &Home) -> Result<Vec<(Sha256, u64)>, FsError> {
    let mut out = Vec::new();
    for e in fskit::list_dir(&home.blobs())? {
        if let Ok(sha) = e.file_name().to_string_lossy().parse::<Sha256>() {
            let len = e.metadata().map_err(|err| FsError::io(e.path(), "stat", err))?.len();
            out.push((sha, len));
        }
    }
    out.sort();
    Ok(out)
}

/// Every component tree directory name (complete or not); unpacks in
/// progress and their leftovers are not component trees.
pub fn list_components(home: &Home) -> Result<Vec<(String, bool)>, FsError> {
    let mut out = Vec::new();
    for e in fskit::list_dir(&home.components())? {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let complete = e.path().join(COMPLETE).is_file();
        out.push((name, complete));
    }
    out.sort();
    Ok(out)
}
