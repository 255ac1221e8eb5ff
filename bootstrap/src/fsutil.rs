//! Durable file operations: every write goes to a temp file in the same
//! directory, is fsynced, renamed into place, and the directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) with the given mode for any it creates.
pub fn create_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Writes `bytes` to `path` atomically with `mode`: temp file, fsync, rename,
/// fsync the directory. A crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let tmp = temp_sibling(path);
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// A unique temp path beside `path` (same filesystem, so rename is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: u64 = rand::random();
    path.with_file_name(format!(".{name}.{}.{nonce:x}.tmp", std::process::id()))
}

/// Removes temp files that [`write_atomic`] left beside `path` when its
/// process was killed mid-write. Call it only while holding the lock that
/// every writer of `path` takes, so none of them is in use.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    for e in list_dir(dir).unwrap_or_default() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            tracing::debug!("removing {} left by an interrupted write", e.path().display());
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The entries of a directory; none if it does not exist (yet).
pub fn list_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
}

/// Removes a file or a directory tree if it exists.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file, or a directory tree as one step: the tree is first renamed
/// to a `.trash-*` sibling (and the directory fsynced), so a crash never leaves
/// a half-deleted tree under its real name. Leftover `.trash-*` entries are
/// swept by `cache prune` (and by `delete` for profiles).
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: u64 = rand::random();
    let trash = path.with_file_name(format!(".trash-{name}-{nonce:x}"));
    fs::rename(path, &trash).with_context(|| format!("cannot remove {}", path.display()))?;
    if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    remove_trash(&trash)
}

/// Removes a renamed-away tree; another sweeper already removing it is fine.
fn remove_trash(trash: &Path) -> Result<()> {
    match fs::remove_dir_all(trash) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", trash.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the `.trash-*` trees in `dir` that a killed [`remove_tree`] left.
/// Best effort: another command may be removing the same ones.
pub fn sweep_trash(dir: &Path) {
    for e in list_dir(dir).unwrap_or_default() {
        if e.file_name().to_string_lossy().starts_with(".trash-")
            && let Err(err) = remove_trash(&e.path())
        {
            tracing::warn!("{err:#}");
        }
    }
}

/// Flushes the whole filesystem holding `dir` (one call, instead of an fsync
/// per file) so that what was written there is durable.
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether an I/O error means the disk is full (or over quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.txt");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        // No temp files left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
