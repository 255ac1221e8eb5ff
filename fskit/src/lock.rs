//! One advisory lock scheme for every kubestrap lock (home, profile, store,
//! rollback records): `flock` on a lock file (or a directory), released on
//! drop and by the kernel when the holder dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::{FsError, Result, create_dir_mode};

/// Exclusive (one holder) or shared (many readers, no exclusive holder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn take(file: File, path: &Path, mode: Mode, wait: bool, waiting: impl FnOnce()) -> Result<Lock> {
    let tried = match mode {
        Mode::Exclusive => file.try_lock(),
        Mode::Shared => file.try_lock_shared(),
    };
    match tried {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            if !wait {
                return Err(FsError::Locked { path: path.into() });
            }
            waiting();
            let r = match mode {
                Mode::Exclusive => file.lock(),
                Mode::Shared => file.lock_shared(),
            };
            r.map_err(|e| FsError::io(path, "lock", e))?;
        }
        Err(TryLockError::Error(e)) => return Err(FsError::io(path, "lock", e)),
    }
    Ok(Lock { _file: file })
}

/// Locks the lock file `path` (created, with its directory, if missing).
/// If another process holds it, calls `waiting` once and then blocks — or
/// fails with [`FsError::Locked`] at once when `wait` is false.
pub fn lock(path: &Path, mode: Mode, wait: bool, waiting: impl FnOnce()) -> Result<Lock> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir_mode(dir, 0o700)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| FsError::io(path, "open lock file", e))?;
    take(file, path, mode, wait, waiting)
}

/// Locks a directory itself (flock works on directory descriptors):
/// serialises writers of files in it without leaving a lock file behind.
/// Waits for other holders.
pub fn lock_dir(dir: &Path) -> Result<Lock> {
    let file = File::open(dir).map_err(|e| FsError::io(dir, "open", e))?;
    take(file, dir, Mode::Exclusive, true, || {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/x.lock");
        let a = lock(&p, Mode::Shared, false, || {}).unwrap();
        let _b = lock(&p, Mode::Shared, false, || {}).unwrap();
        assert!(matches!(lock(&p, Mode::Exclusive, false, || {}), Err(FsError::Locked { .. })));
        drop(a);
        drop(_b);
        let _c = lock(&p, Mode::Exclusive, false, || {}).unwrap();
        assert!(matches!(lock(&p, Mode::Shared, false, || {}), Err(FsError::Locked { .. })));
    }
}
