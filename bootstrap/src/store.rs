//! The content-addressed store: verified blobs and unpacked component trees.
//!
//! Invariants: a file exists under `blobs/sha256/` only after its sha256 and
//! size matched; a tree under `components/<sha256>/` is used only if its
//! `.complete` file (written last, listing every file's sha256) exists.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kubestrap_manifest::{Artifact, Sha256};
use sha2::Digest;

use crate::fsutil;
use crate::home::Home;
use crate::unpack::{self, FileEntry, Limits};

/// Name of the marker written last in a component tree.
pub const COMPLETE: &str = ".complete";

/// A download in progress: appends to `<hex>.partial`, hashing as it goes.
pub struct BlobWriter {
    file: File,
    hasher: sha2::Sha256,
    len: u64,
    partial: PathBuf,
}

/// A finished body whose hash or size does not match the manifest.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: Sha256, actual: Sha256 },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
}

impl BlobWriter {
    /// Opens the partial file for `sha`, keeping (and re-hashing) bytes from
    /// an earlier interrupted download so it can resume.
    pub fn open(home: &Home, sha: &Sha256) -> Result<BlobWriter> {
        let dir = home.partials();
        fsutil::create_dir_mode(&dir, 0o755)?;
        let partial = home.partial(sha);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .with_context(|| format!("cannot open {}", partial.display()))?;
        let mut hasher = sha2::Sha256::new();
        let len = io::copy(&mut (&mut file).take(u64::MAX), &mut HashSink(&mut hasher))
            .with_context(|| format!("cannot read {}", partial.display()))?;
        Ok(BlobWriter { file, hasher, len, partial })
    }

    /// Bytes already present (the offset to resume from).
    pub fn offset(&self) -> u64 {
        self.len
    }

    /// Drops everything written so far (the server ignored our Range).
    pub fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = sha2::Sha256::new();
        self.len = 0;
        Ok(())
    }

    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Checks size and hash; on a match moves the file to `blobs/sha256/`
    /// durably. On a mismatch the partial file is removed.
    pub fn finish(self, home: &Home, expected: &Sha256, size: u64) -> Result<PathBuf> {
        let actual = Sha256::from_bytes(self.hasher.finalize().into());
        if self.len != size || actual != *expected {
            drop(self.file);
            let _ = fs::remove_file(&self.partial);
            return Err(if self.len != size {
                BlobError::SizeMismatch { expected: size, actual: self.len }
            } else {
                BlobError::HashMismatch { expected: *expected, actual }
            }
            .into());
        }
        self.file.sync_all().with_context(|| format!("cannot sync {}", self.partial.display()))?;
        let dir = home.blobs();
        fsutil::create_dir_mode(&dir, 0o755)?;
        let dest = home.blob(expected);
        fs::rename(&self.partial, &dest)
            .with_context(|| format!("cannot move {} into the store", self.partial.display()))?;
        fsutil::sync_dir(&dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(dest)
    }

    /// Forgets the partial file entirely (a body that cannot be right).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.partial);
    }
}

struct HashSink<'a>(&'a mut sha2::Sha256);
impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a verified blob of the right size is in the store.
pub fn has_blob(home: &Home, sha: &Sha256, size: u64) -> bool {
    fs::metadata(home.blob(sha)).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Hashes a file.
pub fn hash_file(path: &Path) -> io::Result<(Sha256, u64)> {
    let f = File::open(path)?;
    unpack::HashingReader::new(io::BufReader::with_capacity(1 << 20, f)).finish()
}

/// The unpacked tree for an artifact whose blob is in the store, unpacking it
/// first if needed. Safe against concurrent callers and crashes: the tree is
/// built in a temp dir and renamed into place with `.complete` already in it.
pub fn ensure_component(home: &Home, artifact: &Artifact) -> Result<PathBuf> {
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
    fsutil::create_dir_mode(&root, 0o755)?;
    let tmp = root.join(format!(".tmp-{}-{}", sha.short(), std::process::id()));
    fsutil::remove_any(&tmp).with_context(|| format!("cannot clean {}", tmp.display()))?;
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let built = (|| -> Result<()> {
        let files = unpack::unpack(
            &home.blob(sha),
            artifact.unpack,
            *sha,
            &artifact.bin,
            &tmp,
            Limits::for_size(artifact.size.get()),
        )?;
        // Every unpacked file durable before `.complete` says the tree is whole.
        fsutil::sync_fs(&tmp).with_context(|| format!("cannot sync {}", tmp.display()))?;
        fsutil::write_atomic(&tmp.join(COMPLETE), render_complete(&files).as_bytes(), 0o644)?;
        // A leftover tree without `.complete` is from a crash: replace it.
        fsutil::remove_tree(&final_dir)?;
        fs::rename(&tmp, &final_dir).with_context(|| format!("cannot move {} into place", tmp.display()))?;
        fsutil::sync_dir(&root)?;
        Ok(())
    })();
    if built.is_err() {
        let _ = fsutil::remove_any(&tmp);
    }
    built?;
    Ok(final_dir)
}

fn render_complete(files: &[FileEntry]) -> String {
    let mut out = String::from("# kubestrap component tree v1: sha256  mode  path\n");
    for f in files {
        out.push_str(&format!("{}  {:o}  {}\n", f.sha256, f.mode, f.path));
    }
    out
}

/// Re-hashes a component tree against its `.complete` list. Returns the
/// paths that are missing or differ.
pub fn verify_component(dir: &Path) -> Result<Vec<String>> {
    let list = fs::read_to_string(dir.join(COMPLETE))
        .with_context(|| format!("cannot read {}", dir.join(COMPLETE).display()))?;
    let mut bad = Vec::new();
    for line in list.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let mut parts = line.splitn(3, "  ");
        let (Some(hex), Some(_mode), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            bad.push(format!("malformed line {line:?}"));
            continue;
        };
        let ok = hex.parse::<Sha256>().is_ok_and(|want| hash_file(&dir.join(path)).is_ok_and(|(got, _)| got == want));
        if !ok {
            bad.push(path.to_string());
        }
    }
    Ok(bad)
}

/// Every blob in the store with its size.
pub fn list_blobs(home: &Home) -> Result<Vec<(Sha256, u64)>> {
    let mut out = Vec::new();
    for e in fsutil::list_dir(&home.blobs())? {
        if let Ok(sha) = e.file_name().to_string_lossy().parse::<Sha256>() {
            out.push((sha, e.metadata()?.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every component tree directory name (complete or not).
pub fn list_components(home: &Home) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for e in fsutil::list_dir(&home.components())? {
        let name = e.file_name().to_string_lossy().into_owned();
        let complete = e.path().join(COMPLETE).is_file();
        out.push((name, complete));
    }
    out.sort();
    Ok(out)
}

/// Size of a directory tree in bytes (not following links).
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
