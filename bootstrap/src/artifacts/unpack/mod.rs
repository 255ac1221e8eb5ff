//! Safe unpacking of verified artifacts: `file`, `tar.gz`, `tar.zst`, `zip`.
//!
//! Nothing is written outside the destination: absolute paths, `..`, links
//! that leave the tree, writes through symlinks and device nodes are refused.
//! Exec bits are kept, setuid/setgid/sticky dropped, and the expanded size is
//! capped (decompression bombs). The archive's bytes are hashed as they are
//! read and compared with the manifest at the end; the caller unpacks into a
//! temp directory and discards it on any error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kubestrap_manifest::{Sha256, Unpack};

use super::hash::{HashingReader, hash_file};

/// The longest path and path component Linux takes (PATH_MAX less the NUL).
const PATH_MAX: usize = 4095;
const NAME_MAX: usize = 255;

/// Bounds on what one archive may expand to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    /// The default for an archive of `compressed` bytes: 50× its size, at
    /// least 256 MiB and at most 32 GiB; at most a million entries.
    pub fn for_size(compressed: u64) -> Limits {
        Limits { max_bytes: compressed.saturating_mul(50).clamp(256 << 20, 32 << 30), max_entries: 1_000_000 }
    }
}

/// One regular file of an unpacked tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub sha256: Sha256,
    pub mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "{archive}: refused entry {entry:?}: {reason}; the archive is unsafe to unpack, so nothing from it is used"
    )]
    Unsafe { archive: PathBuf, entry: String, reason: String },
    #[error("{archive}: expands past the limit of {limit} bytes (a decompression bomb?); nothing from it is used")]
    TooLarge { archive: PathBuf, limit: u64 },
    #[error("{archive}: more than {limit} entries; nothing from it is used")]
    TooManyEntries { archive: PathBuf, limit: u64 },
    #[error(
        "{archive}: sha256 is {actual}, the manifest says {expected}; the cached file is corrupt: run `kubestrap cache verify` and try again"
    )]
    HashMismatch { archive: PathBuf, expected: Sha256, actual: Sha256 },
    #[error(
        "{archive}: the manifest names `{bin}` as the executable, but the archive does not contain it as a regular file"
    )]
    MissingBin { archive: PathBuf, bin: String },
    #[error(
        "{archive}: matches its sha256 but is not a valid {kind} archive ({reason}); the release is broken, nothing from it is used"
    )]
    Malformed { archive: PathBuf, kind: Unpack, reason: String },
    #[error("{archive}: cannot unpack: {source}")]
    Io {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks `archive` (a verified blob) into the empty directory `dest`.
pub fn unpack(
    archive: &Path,
    kind: Unpack,
    expected: Sha256,
    bin: &str,
    dest: &Path,
    limits: Limits,
) -> Result<Vec<FileEntry>, UnpackError> {
    let mut u = Unpacker {
        archive: archive.to_path_buf(),
        dest: dest.to_path_buf(),
        kind,
        limits,
        written: 0,
        entries: 0,
        files: Vec::new(),
    };
    let io_err = |source| UnpackError::Io { archive: archive.to_path_buf(), source };
    let file = File::open(archive).map_err(io_err)?;
    let reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let actual = match kind {
        Unpack::File => {
            let mut r = reader;
            u.write_file(bin, &mut r, 0o755)?;
            r.finish().map_err(io_err)?.0
        }
        Unpack::TarGz | Unpack::TarZst => match untar_pipelined(&mut u, reader, kind) {
            Ok(actual) => actual,
            // Decoding stopped early, so the archive was not hashed to its
            // end: a blob damaged on disk is reported as corrupt, not unsafe.
            Err(e) => {
                let actual = hash_file(archive).map_err(io_err)?.0;
                if actual != expected {
                    return Err(UnpackError::HashMismatch { archive: archive.to_path_buf(), expected, actual });
                }
                return Err(e);
            }
        },
        Unpack::Zip => {
            // zip needs random access: hash the whole file first.
            let actual = reader.finish().map_err(io_err)?.0;
            if actual == expected {
                u.zip()?;
            }
            actual
        }
    };
    if actual != expected {
        return Err(UnpackError::HashMismatch { archive: archive.to_path_buf(), expected, actual });
    }
    let bin_ok = fs::symlink_metadata(dest.join(bin)).is_ok_and(|m| m.is_file());
    if !bin_ok {
        return Err(UnpackError::MissingBin { archive: archive.to_path_buf(), bin: bin.to_string() });
    }
    u.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(u.files)
}

/// Untars in a pipeline of three threads: one reads and hashes the archive,
/// one decompresses, and this one parses the tar stream, checks and writes
/// the tree (as `tar --zstd` runs zstd as a child, plus the hash). Returns
/// the archive's sha256, over every byte of the file.
fn untar_pipelined(
    u: &mut Unpacker,
    reader: HashingReader<BufReader<File>>,
    kind: Unpack,
) -> Result<Sha256, UnpackError> {
    let archive = u.archive.clone();
    let io_err = |source| UnpackError::Io { archive: archive.clone(), source };
    let malformed = |e: io::Error| UnpackError::Malformed { archive: archive.clone(), kind, reason: e.to_string() };
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    std::thread::scope(|s| {
        let hasher = s.spawn(move || -> io::Result<Sha256> {
            let mut reader = reader;
            pump(&mut reader, &raw_tx)?;
            Ok(reader.finish()?.0)
        });
        let decoder = s.spawn(move || -> io::Result<()> {
            let input = ChannelReader { rx: raw_rx, chunk: Vec::new(), pos: 0 };
            let mut rest = match kind {
                Unpack::TarGz => {
                    // Concatenated members are gzip too; anything else after
                    // the stream is an error, not silently ignored.
                    let mut gz = flate2::read::MultiGzDecoder::new(input);
                    pump(&mut gz, &tx)?;
                    gz.into_inner()
                }
                _ => {
                    let mut z = zstd::Decoder::with_buffer(BufReader::with_capacity(1 << 20, input))?;
                    pump(&mut z, &tx)?;
                    z.finish().into_inner()
                }
            };
            // Whatever follows the compressed stream is read too, so the
            // hasher reaches the end of the file.
            io::copy(&mut rest, &mut io::sink())?;
            Ok(())
        });
        let mut ar = tar::Archive::new(ChannelReader { rx, chunk: Vec::new(), pos: 0 });
        let parsed = u.tar(&mut ar);
        if parsed.is_ok() {
            // Let the decoder reach the end so the whole archive is hashed.
            io::copy(&mut ar.into_inner(), &mut io::sink()).map_err(malformed)?;
        } else {
            drop(ar); // the decoder sees the closed channel and stops, then the hasher
        }
        let decoded = decoder.join().expect("the decoder thread does not panic");
        let digest = hasher.join().expect("the hasher thread does not panic");
        parsed?;
        decoded.map_err(malformed)?;
        digest.map_err(io_err)
    })
}

/// Sends the decoded stream in 1 MiB chunks; a decoding error is sent too.
fn pump(dec: &mut dyn Read, tx: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) -> io::Result<()> {
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < buf.len() {
            match dec.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            }
        }
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        tx.send(Ok(buf)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "unpacking stopped"))?;
    }
}

/// The receiving end of [`pump`], as a reader.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Unpacker {
    archive: PathBuf,
    kind: Unpack,
    dest: PathBuf,
    limits: Limits,
    written: u64,
    entries: u64,
    files: Vec<FileEntry>,
}

impl Unpacker {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe { archive: self.archive.clone(), entry: entry.to_string(), reason: reason.into() }
    }

    fn io(&self, source: io::Error) -> UnpackError {
        UnpackError::Io { archive: self.archive.clone(), source }
    }

    /// The archive's bytes do not decode as what the manifest says they are.
    fn malformed(&self, reason: impl ToString) -> UnpackError {
        UnpackError::Malformed { archive: self.archive.clone(), kind: self.kind, reason: reason.to_string() }
    }

    /// A read from the archive failed: a decoding error, except for a plain
    /// file, whose reads are the disk's.
    fn read_error(&self, e: io::Error) -> UnpackError {
        if self.kind == Unpack::File { self.io(e) } else { self.malformed(e) }
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries { archive: self.archive.clone(), limit: self.limits.max_entries });
        }
        Ok(())
    }

    /// A relative path with only normal components, or an error. `None` for
    /// the root itself (`./`).
    fn clean(&self, raw: &str) -> Result<Option<PathBuf>, UnpackError> {
        // `.complete` lists one name per line, and names reach terminals.
        if raw.chars().any(char::is_control) {
            return Err(self.unsafe_entry(raw, "its name contains a control character (a newline?)"));
        }
        if raw.len() > PATH_MAX {
            return Err(self.unsafe_entry(raw, format!("its name is longer than {PATH_MAX} bytes")));
        }
        if raw.split('/').any(|c| c.len() > NAME_MAX) {
            return Err(self.unsafe_entry(raw, format!("a part of its name is longer than {NAME_MAX} bytes")));
        }
        let p = Path::new(raw);
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => return Err(self.unsafe_entry(raw, "path contains '..'")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(raw, "absolute path"));
                }
            }
        }
        Ok((!out.as_os_str().is_empty()).then_some(out))
    }

    /// Makes sure every directory above `rel` exists as a real directory
    /// inside the destination (never a symlink), creating missing ones.
    fn prepare_parents(&self, raw: &str, rel: &Path) -> Result<(), UnpackError> {
        let mut cur = self.dest.clone();
        let parents: Vec<_> = rel.parent().into_iter().flat_map(|p| p.components()).collect();
        for c in parents {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(raw, "would be written through a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.unsafe_entry(raw, "a parent path is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o755).create(&cur).map_err(|e| self.io(e))?;
                }
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `path` so a new entry replaces it (a symlink is
    /// removed, never followed).
    fn clear(&self, path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fs::remove_file(path).map_err(|e| self.io(e)),
            Err(_) => Ok(()),
        }
    }

    fn write_file(&mut self, raw: &str, data: &mut dyn Read, mode: u32) -> Result<(), UnpackError> {
        self.count_entry()?;
        let Some(rel) = self.clean(raw)? else {
            return Err(self.unsafe_entry(raw, "a file at the archive root path"));
        };
        self.prepare_parents(raw, &rel)?;
        let path = self.dest.join(&rel);
        self.clear(&path)?;
        let mode = (mode & 0o777) | 0o600;
        let f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).map_err(|e| self.io(e))?;
        let mut f = f;
        let mut hasher = crate::artifacts::hash::Hasher::new();
        let room = self.limits.max_bytes - self.written;
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            n += k as u64;
            if n > room {
                return Err(UnpackError::TooLarge { archive: self.archive.clone(), limit: self.limits.max_bytes });
            }
            hasher.update(&buf[..k]);
            f.write_all(&buf[..k]).map_err(|e| self.io(e))?;
        }
        self.written += n;
        // Set exactly: the umask must not strip exec bits, and no setuid/setgid.
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| self.io(e))?;
        self.files.push(FileEntry { path: rel.to_string_lossy().into_owned(), sha256: hasher.finish(), mode });
        Ok(())
    }

    fn mkdir(&mut self, raw: &str, mode: u32) -> Result<(), UnpackError> {
        self.count_entry()?;
        let Some(rel) = self.clean(raw)? else { return Ok(()) };
        self.prepare_parents(raw, &rel)?;
        let path = self.dest.join(&rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(self.unsafe_entry(raw, "a directory entry over an existing file or link")),
            Err(_) => fs::DirBuilder::new().mode(0o755).create(&path).map_err(|e| self.io(e))?,
        }
        let mode = (mode & 0o777) | 0o700;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| self.io(e))
    }

    fn symlink(&mut self, raw: &str, target: &Path) -> Result<(), UnpackError> {
        self.count_entry()?;
        let Some(rel) = self.clean(raw)? else {
            return Err(self.unsafe_entry(raw, "a link at the archive root path"));
        };
        if target.is_absolute() {
            return Err(self.unsafe_entry(raw, format!("symlink to absolute path {}", target.display())));
        }
        // Resolve the target lexically from the link's directory; it must stay inside.
        // Only a leading run of `..` is allowed: `a/../..` could climb out
        // through a symlinked `a`, which a lexical check would not see.
        let mut depth: i64 = rel.components().count() as i64 - 1;
        let mut named = false;
        for c in target.components() {
            match c {
                Component::Normal(_) => {
                    depth += 1;
                    named = true;
                }
                Component::ParentDir if !named => depth -= 1,
                Component::CurDir => {}
                _ => {
                    return Err(
                        self.unsafe_entry(raw, format!("symlink target {} has '..' after a name", target.display()))
                    );
                }
            }
            if depth < 0 {
                return Err(
                    self.unsafe_entry(raw, format!("symlink to {} points outside the destination", target.display()))
                );
            }
        }
        self.prepare_parents(raw, &rel)?;
        let path = self.dest.join(&rel);
        self.clear(&path)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| self.io(e))
    }

    fn hardlink(&mut self, raw: &str, target: &str) -> Result<(), UnpackError> {
        self.count_entry()?;
        let Some(rel) = self.clean(raw)? else {
            return Err(self.unsafe_entry(raw, "a link at the archive root path"));
        };
        let tgt = match self.clean(target) {
            Ok(Some(t)) => t,
            _ => {
                return Err(self.unsafe_entry(raw, format!("hard link to {target:?} outside the destination")));
            }
        };
        // The target must be a regular file this archive already wrote, reached
        // without following symlinks.
        self.prepare_parents(target, &tgt)?;
        let src = self.dest.join(&tgt);
        if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            return Err(self.unsafe_entry(raw, format!("hard link to {target:?}, which is not a file in the archive")));
        }
        self.prepare_parents(raw, &rel)?;
        let path = self.dest.join(&rel);
        self.clear(&path)?;
        fs::hard_link(&src, &path).map_err(|e| self.io(e))?;
        if let Some(f) = self.files.iter().find(|f| Path::new(&f.path) == tgt).cloned() {
            self.files.push(FileEntry { path: rel.to_string_lossy().into_owned(), ..f });
        }
        Ok(())
    }

    fn tar<R: Read>(&mut self, ar: &mut tar::Archive<R>) -> Result<(), UnpackError> {
        let entries = ar.entries().map_err(|e| self.malformed(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.malformed(e))?;
            let raw = match std::str::from_utf8(&entry.path_bytes()) {
                Ok(name) => name.to_string(),
                Err(_) => {
                    let lossy = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                    return Err(self.unsafe_entry(&lossy, "its name is not UTF-8"));
                }
            };
            let mode = entry.header().mode().unwrap_or(0o644);
            use tar::EntryType as T;
            match entry.header().entry_type() {
                T::Regular | T::Continuous | T::GNUSparse => self.write_file(&raw, &mut entry, mode)?,
                T::Directory => self.mkdir(&raw, mode)?,
                T::Symlink => {
                    let target = entry.link_name().map_err(|e| self.malformed(e))?.unwrap_or_default().into_owned();
                    self.symlink(&raw, &target)?;
                }
                T::Link => {
                    let target =
                        entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                    self.hardlink(&raw, &target)?;
                }
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
                T::Char | T::Block => return Err(self.unsafe_entry(&raw, "device node")),
                T::Fifo => return Err(self.unsafe_entry(&raw, "named pipe")),
                other => return Err(self.unsafe_entry(&raw, format!("unsupported entry type {other:?}"))),
            }
        }
        Ok(())
    }

    fn zip(&mut self) -> Result<(), UnpackError> {
        let file = File::open(&self.archive).map_err(|e| self.io(e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| self.malformed(e))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| self.malformed(e))?;
            let raw = entry.name().to_string();
            let mode = entry.unix_mode().unwrap_or(0o644);
            if entry.is_dir() {
                self.mkdir(&raw, mode)?;
            } else if mode & 0o170000 == 0o120000 {
                let mut target = String::new();
                entry.by_ref().take(4096).read_to_string(&mut target).map_err(|e| self.malformed(e))?;
                self.symlink(&raw, Path::new(&target))?;
            } else if mode & 0o170000 == 0 || mode & 0o170000 == 0o100000 {
                self.write_file(&raw, &mut entry, mode)?;
            } else {
                return Err(self.unsafe_entry(&raw, "special file (device or pipe)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
