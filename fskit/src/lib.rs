//! kubestrap's filesystem toolkit, used by every crate of the workspace:
//!
//! - durable writes: temp file in the same directory → fsync → rename →
//!   fsync of the directory ([`write_atomic`]), so a crash leaves the old
//!   file or the new one, never half of either;
//! - capped reads of files that come from outside kubestrap's store
//!   ([`read_capped`]): a size limit, and only regular files (a FIFO or
//!   `/dev/zero` behind a symlink is refused, never waited on or read whole);
//! - tree removal as one step ([`remove_tree`], renamed away first) and the
//!   sweep of what a killed removal left ([`sweep_trash`]);
//! - sidecar names (`.minisig`, `.lock`, `.1`) in one place ([`sidecar`]);
//! - one advisory lock scheme ([`lock`]), released by the kernel when the
//!   holder dies, so a `kill -9` never leaves a stale lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod lock;

pub use lock::{Lock, Mode, lock, lock_dir};

/// What went wrong with a file, and which file.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// What was being done: "read", "write", "create directory", ...
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {max} bytes; refused (not what kubestrap expects there)", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{} is not a regular file; refused", path.display())]
    NotRegular { path: PathBuf },
    #[error("{} is not UTF-8 text; refused", path.display())]
    NotText { path: PathBuf },
    #[error("{} is locked by another kubestrap command", path.display())]
    Locked { path: PathBuf },
}

impl FsError {
    /// What to do about it, where the error itself knows (a full disk's
    /// advice names the directory to free, which the caller knows).
    pub fn hint(&self) -> Option<String> {
        match self {
            FsError::Locked { .. } => Some("wait for it to finish, or retry without --no-wait".into()),
            FsError::Io { .. } | FsError::TooLarge { .. } | FsError::NotRegular { .. } | FsError::NotText { .. } => {
                None
            }
        }
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

impl FsError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> FsError {
        FsError::Io { path: path.into(), op, source }
    }
    pub fn path(&self) -> &Path {
        match self {
            FsError::Io { path, .. }
            | FsError::TooLarge { path, .. }
            | FsError::NotRegular { path }
            | FsError::NotText { path }
            | FsError::Locked { path } => path,
        }
    }
    /// The file (or a directory on its path) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
    /// The disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if is_disk_full(source))
    }
}

/// Whether an I/O error means the disk is full (or over quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// `path` with `suffix` appended to its file name: `m.toml` → `m.toml.minisig`.
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The detached signature beside a file.
pub fn signature_path(path: &Path) -> PathBuf {
    sidecar(path, ".minisig")
}

fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| FsError::io(dir, "sync", e))
}

/// Flushes the whole filesystem holding `dir` (one call, instead of an fsync
/// per file) so that what was written there is durable.
pub fn sync_fs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| FsError::io(dir, "open", e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(FsError::io(dir, "sync", io::Error::last_os_error()))
    }
}

/// Creates a directory (and parents) with `mode` for any it creates.
pub fn create_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|e| FsError::io(dir, "create directory", e))
}

/// Writes `bytes` to `path` atomically with exactly `mode`: temp file, fsync,
/// rename, fsync the directory (created if missing). A crash leaves either
/// the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(path, mode, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content that is streamed: `fill` writes the temp
/// file (and may return what it computed on the way, a hash say); then it
/// is fsynced and renamed over `path`. On any error the temp file goes.
pub fn write_atomic_with<T>(path: &Path, mode: u32, fill: impl FnOnce(&mut File) -> io::Result<T>) -> Result<T> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(|e| FsError::io(dir, "create directory", e))?;
    let tmp = temp_sibling(path);
    let result = (|| -> io::Result<T> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let out = fill(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| FsError::io(path, "write", e))
}

/// Creates `path` with `bytes` and `mode`, failing if it exists; fsynced.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A unique temp path beside `path` (same filesystem, so rename is atomic):
/// `.<name>.<pid>.<nonce>.tmp`.
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
        Err(e) => Err(FsError::io(dir, "list", e)),
    }
}

/// Removes a file or a directory tree if it exists.
pub fn remove_any(path: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|e| FsError::io(path, "remove", e))
}

/// The prefix of trees renamed away by [`remove_tree`].
const TRASH: &str = ".trash-";

/// Removes a file, or a directory tree as one step: the tree is first renamed
/// to a `.trash-*` sibling (and the directory fsynced), so a crash never leaves
/// a half-deleted tree under its real name. Leftovers are swept by
/// [`sweep_trash`].
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::io(path, "remove", e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| FsError::io(path, "remove", e));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: u64 = rand::random();
    let trash = path.with_file_name(format!("{TRASH}{name}-{nonce:x}"));
    fs::rename(path, &trash).map_err(|e| FsError::io(path, "remove", e))?;
    let _ = sync_dir(parent_dir(path));
    remove_trash(&trash)
}

/// Removes a renamed-away tree; another sweeper already removing it is fine.
fn remove_trash(trash: &Path) -> Result<()> {
    match fs::remove_dir_all(trash) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FsError::io(trash, "remove", e)),
        _ => Ok(()),
    }
}

/// Removes the `.trash-*` trees in `dir` that a killed [`remove_tree`] left.
/// Best effort (another command may be removing the same ones): returns
/// what could not be removed, for the caller to report.
#[must_use = "what could not be removed is for the user to hear"]
pub fn sweep_trash(dir: &Path) -> Vec<FsError> {
    list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TRASH))
        .filter_map(|e| remove_trash(&e.path()).err())
        .collect()
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

/// Opens a file for reading only if it is a regular file. Opened
/// non-blocking, so a FIFO planted where a file should be is refused at
/// once instead of blocking the open.
pub fn open_regular(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FsError::io(path, "read", e))?;
    let meta = f.metadata().map_err(|e| FsError::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(FsError::NotRegular { path: path.into() });
    }
    Ok(f)
}

/// Reads a whole file of at most `max` bytes. Anything bigger, and anything
/// that is not a regular file (a device, a FIFO, a directory), is refused
/// before more than `max + 1` bytes are read.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|e| FsError::io(path, "read", e))?;
    if bytes.len() as u64 > max {
        return Err(FsError::TooLarge { path: path.into(), max });
    }
    Ok(bytes)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_capped_text(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_capped(path, max)?).map_err(|_| FsError::NotText { path: path.into() })
}

/// Caps for files kubestrap reads that come from outside its store.
pub mod caps {
    /// A manifest, a channel index, a key list.
    pub const DOCUMENT: u64 = 1 << 20;
    /// A `.minisig` file (a few signature blocks).
    pub const SIGNATURE: u64 = 64 << 10;
    /// A key file (minisign public or secret key).
    pub const KEY: u64 = 16 << 10;
    /// A small state file kubestrap wrote itself (pid file, config, records).
    pub const STATE: u64 = 64 << 10;
    /// A kubeconfig (they hold many clusters and inline certificates).
    pub const KUBECONFIG: u64 = 32 << 20;
    /// A PEM bundle of CA certificates.
    pub const PEM_BUNDLE: u64 = 4 << 20;
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

    #[test]
    fn capped_reads_refuse_big_files_devices_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
        assert!(matches!(read_capped(&p, 99), Err(FsError::TooLarge { max: 99, .. })));
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(read_capped(&zero, 1 << 20), Err(FsError::NotRegular { .. })));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_capped(&fifo, 10), Err(FsError::NotRegular { .. })), "a FIFO is refused at once");
        assert!(matches!(read_capped(dir.path(), 10), Err(FsError::NotRegular { .. }) | Err(FsError::Io { .. })));
        fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_capped_text(&p, 10), Err(FsError::NotText { .. })));
        assert!(read_capped(&dir.path().join("missing"), 10).unwrap_err().is_not_found());
    }

    #[test]
    fn tree_removal_renames_first_and_sweeps_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tree");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/c"), "x").unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        let left = dir.path().join(".trash-old-1");
        fs::create_dir_all(left.join("x")).unwrap();
        assert!(sweep_trash(dir.path()).is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn sidecars() {
        assert_eq!(signature_path(Path::new("/a/m.toml")), Path::new("/a/m.toml.minisig"));
        assert_eq!(sidecar(Path::new("log"), ".1"), Path::new("log.1"));
    }
}

/// What [`copy_tree`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Files shared with their source by reflink (copy-on-write, no bytes
    /// copied); the others were copied.
    pub reflinked: u64,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, o: Copied) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.reflinked += o.reflinked;
    }
}

/// Copies a directory tree (files, directories, symlinks; modes kept) to
/// `dst`, which must not exist. Files are reflinked where the filesystem
/// can (a copy-on-write clone), copied otherwise — never hard-linked, so
/// the copy never changes when the original is modified in place.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<Copied> {
    let mut done = Copied::default();
    copy_dir(src, dst, &mut done)?;
    Ok(done)
}

fn copy_dir(src: &Path, dst: &Path, done: &mut Copied) -> Result<()> {
    let meta = fs::symlink_metadata(src).map_err(|e| FsError::io(src, "read", e))?;
    fs::DirBuilder::new()
        .mode(meta.permissions().mode() & 0o7777)
        .create(dst)
        .map_err(|e| FsError::io(dst, "create directory", e))?;
    for e in list_dir(src)? {
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().map_err(|err| FsError::io(&from, "read", err))?;
        if ft.is_dir() {
            copy_dir(&from, &to, done)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|err| FsError::io(&from, "read", err))?;
            std::os::unix::fs::symlink(target, &to).map_err(|err| FsError::io(&to, "write", err))?;
        } else if ft.is_file() {
            let len = e.metadata().map_err(|err| FsError::io(&from, "read", err))?.len();
            let copied = reflink_copy::reflink_or_copy(&from, &to).map_err(|err| FsError::io(&to, "copy to", err))?;
            // `None`: reflinked (no bytes copied).
            if copied.is_none() {
                done.reflinked += 1;
            }
            done.files += 1;
            done.bytes += len;
        }
        // Sockets, FIFOs and devices in a data directory are runtime
        // state, not data: not copied.
    }
    Ok(())
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn copies_trees_without_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), b"data").unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/link")).unwrap();
        let c = copy_tree(&src, &dir.path().join("dst")).unwrap();
        assert_eq!((c.files, c.bytes), (1, 4));
        fs::write(src.join("a/b/f"), b"changed").unwrap();
        assert_eq!(fs::read(dir.path().join("dst/a/b/f")).unwrap(), b"data", "the copy is independent");
        assert_eq!(fs::read_link(dir.path().join("dst/a/link")).unwrap(), Path::new("b/f"));
    }
}
