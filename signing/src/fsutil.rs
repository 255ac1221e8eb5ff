//! Crash-safe file writes: temp file in the same directory, fsync, rename,
//! fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Atomically replaces `path` with `data` (mode 0600 when `private`).
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, "create a temporary file in", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(tmp.path(), "chmod", e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    tmp.write_all(data).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(tmp.path(), "write", e))?;
    tmp.persist(path).map_err(|e| Error::io(path, "rename into place", e.error))?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename in it is durable (no-op off Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "fsync", e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `path` with `data`, failing with [`Error::AlreadyExists`] if it
/// exists (mode 0600 when `private`). The file is fsynced.
pub fn create_new(path: &Path, data: &[u8], private: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists { path: path.into() }
        } else {
            Error::io(path, "create", e)
        }
    })?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, "write", e))
}
