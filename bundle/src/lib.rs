//! The self-extracting bundle format: the kubestrap executable followed by a
//! zip of STORED entries — the signed manifest and its signature, the key
//! lists that verify it offline, and every artifact it pins, named by
//! sha256:
//!
//! ```text
//! <kubestrap executable (the stub)>
//! manifest.toml            manifest.toml.minisig
//! keys/keys-<v>.toml       keys/keys-<v>.toml.minisig     (oldest first)
//! artifacts/<sha256>       …                               (sorted by sha256)
//! <central directory> [<zip64 end record> <zip64 locator>] <end record>
//! ```
//!
//! Written in a fixed order with fixed metadata (1980-01-01 timestamps, mode
//! 0644, no extra fields but zip64 sizes where needed), so the same inputs
//! give the same bytes; `unzip -l` lists it. A zip writer and reader are
//! hand-written here (about 300 lines) rather than taken from the `zip`
//! crate because the reader must be strict where zip readers are lenient —
//! end record exactly at the end of the file, central directory ending
//! exactly where the end records begin, every local header agreeing with
//! its central directory entry, no overlapping entries, nothing compressed,
//! encrypted or streamed — and the writer must hash while it copies.
//!
//! This crate checks the container. What is inside (the manifest's
//! signature, every artifact's sha256 and size) is verified by its caller
//! before anything is used.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod name;

pub use name::{ARTIFACTS, KEYS, MANIFEST, Name, SIGNATURE, artifact_name, key_list_name};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{} carries no bundle (no zip end record at its end)", path.display())]
    NotABundle { path: PathBuf },
    #[error("{}: not a valid kubestrap bundle: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{}: bundle entry {name:?} is not one a kubestrap bundle holds", path.display())]
    Unexpected { path: PathBuf, name: String },
    #[error("{}: bundle entry {name:?} is larger than the {cap} bytes expected", path.display())]
    TooLarge { path: PathBuf, name: String, cap: u64 },
}

type Result<T, E = BundleError> = std::result::Result<T, E>;

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const END_LEN: u64 = 22;
const LOCATOR_LEN: u64 = 20;
const END64_LEN: u64 = 56;
/// DOS date of 1980-01-01 (time 00:00:00 is 0).
const DOS_DATE: u16 = (1 << 5) | 1;
/// Sizes and offsets at or above this need zip64 fields.
const MAX32: u64 = 0xFFFF_FFFF;
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DESCRIPTOR: u16 = 1 << 3;
const FLAG_UTF8: u16 = 1 << 11;
/// A bundle holds at most this many entries, and a central directory of at most this size.
const MAX_ENTRIES: u64 = 100_000;
const MAX_CENTRAL: u64 = 64 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One entry of a bundle: where its bytes are in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Offset of its local header.
    pub header: u64,
    /// Offset of its first byte of data.
    pub data: u64,
    pub size: u64,
    pub crc32: u32,
}

/// A bundle's payload, checked for structure (not content).
#[derive(Debug)]
pub struct Payload {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
}

impl Payload {
    /// Whether the file ends with a zip end record: the cheap check made on
    /// every run (it reads the last 22 bytes).
    pub fn detect(path: &Path) -> bool {
        let Ok(f) = File::open(path) else { return false };
        let Ok(len) = f.metadata().map(|m| m.len()) else { return false };
        let mut end = [0u8; END_LEN as usize];
        len >= END_LEN && f.read_exact_at(&mut end, len - END_LEN).is_ok() && le32(&end, 0) == END
    }

    /// Opens a bundle and checks its structure strictly. Long on purpose:
    /// every structural check of the format, in the order of the file.
    pub fn open(path: &Path) -> Result<Payload> {
        let file = File::open(path).map_err(|e| io_err(path, "open", e))?;
        let len = file.metadata().map_err(|e| io_err(path, "stat", e))?.len();
        let bad = |reason: String| BundleError::Malformed { path: path.into(), reason };
        let read = |at: u64, n: u64| -> Result<Vec<u8>> {
            if at.checked_add(n).is_none_or(|end| end > len) {
                return Err(bad(format!("a record at offset {at} runs past the end of the file ({len} bytes)")));
            }
            let mut b = vec![0u8; n as usize];
            file.read_exact_at(&mut b, at).map_err(|e| io_err(path, "read", e))?;
            Ok(b)
        };
        if len < END_LEN {
            return Err(BundleError::NotABundle { path: path.into() });
        }
        let end_at = len - END_LEN;
        let end = read(end_at, END_LEN)?;
        if le32(&end, 0) != END {
            // Junk after the end record, or no bundle at all.
            let tail = read(len.saturating_sub(65_557 + END_LEN), len.min(65_557 + END_LEN))?;
            return Err(match tail.windows(4).rposition(|w| w == END.to_le_bytes()) {
                Some(at) => bad(format!(
                    "{} bytes follow the end of the zip (junk appended?)",
                    tail.len() - at - END_LEN as usize
                )),
                None => BundleError::NotABundle { path: path.into() },
            });
        }
        if le16(&end, 20) != 0 || le16(&end, 4) != 0 || le16(&end, 6) != 0 || le16(&end, 8) != le16(&end, 10) {
            return Err(bad("the end record has a comment or spans disks".into()));
        }
        let (mut count, mut cd_size, mut cd_at) = (le16(&end, 10) as u64, le32(&end, 12) as u64, le32(&end, 16) as u64);
        let mut cd_end_expected = end_at;
        if count == 0xFFFF || cd_size == MAX32 || cd_at == MAX32 {
            let loc_at = end_at.checked_sub(LOCATOR_LEN).ok_or_else(|| bad("no zip64 locator".into()))?;
            let loc = read(loc_at, LOCATOR_LEN)?;
            if le32(&loc, 0) != LOCATOR64 || le32(&loc, 4) != 0 || le32(&loc, 16) != 1 {
                return Err(bad("the zip64 locator is missing or spans disks".into()));
            }
            let rec_at = le64(&loc, 8);
            if rec_at.checked_add(END64_LEN) != Some(loc_at) {
                return Err(bad("the zip64 end record is not right before its locator".into()));
            }
            let rec = read(rec_at, END64_LEN)?;
            if le32(&rec, 0) != END64 || le64(&rec, 4) != END64_LEN - 12 || le64(&rec, 24) != le64(&rec, 32) {
                return Err(bad("the zip64 end record is malformed".into()));
            }
            (count, cd_size, cd_at) = (le64(&rec, 32), le64(&rec, 40), le64(&rec, 48));
            cd_end_expected = rec_at;
        }
        if count > MAX_ENTRIES || cd_size > MAX_CENTRAL {
            return Err(bad(format!("{count} entries in a central directory of {cd_size} bytes: too many")));
        }
        if cd_at.checked_add(cd_size) != Some(cd_end_expected) {
            return Err(bad(format!(
                "the central directory (offset {cd_at}, {cd_size} bytes) does not end where the end record begins ({cd_end_expected}): it points past the end, or something was inserted"
            )));
        }
        let cd = read(cd_at, cd_size)?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut pos = 0usize;
        for i in 0..count {
            let e = central_entry(&cd, &mut pos).map_err(|r| bad(format!("central directory entry {i}: {r}")))?;
            entries.push(e);
        }
        if pos != cd.len() {
            return Err(bad(format!("{} bytes of the central directory belong to no entry", cd.len() - pos)));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &mut entries {
            if !seen.insert(e.name.clone()) {
                return Err(bad(format!("the entry name {:?} appears twice", e.name)));
            }
            check_local(&read, e, cd_at).map_err(|r| bad(format!("entry {:?}: {r}", e.name)))?;
        }
        let mut by_offset: Vec<&Entry> = entries.iter().collect();
        by_offset.sort_by_key(|e| e.header);
        for w in by_offset.windows(2) {
            if w[1].header < w[0].data + w[0].size {
                return Err(bad(format!("entries {:?} and {:?} overlap", w[0].name, w[1].name)));
            }
        }
        Ok(Payload { path: path.into(), file, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries, in the order of the central directory.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Where the executable in front of the payload ends.
    pub fn stub_len(&self) -> u64 {
        self.entries.iter().map(|e| e.header).min().unwrap_or_else(|| self.file.metadata().map_or(0, |m| m.len()))
    }

    /// A reader over an entry's bytes (exactly `size` of them). Readers
    /// of one payload never disturb each other (positioned reads): entries
    /// stream into the store in parallel.
    pub fn reader(&self, e: &Entry) -> Result<EntryReader<'_>> {
        Ok(EntryReader { file: &self.file, pos: e.data, end: e.data + e.size })
    }

    /// A small entry read whole (a manifest, a signature, a key list).
    pub fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        let e = self
            .entry(name)
            .ok_or_else(|| BundleError::Malformed { path: self.path.clone(), reason: format!("it has no {name}") })?;
        if e.size > cap {
            return Err(BundleError::TooLarge { path: self.path.clone(), name: name.into(), cap });
        }
        let mut b = Vec::with_capacity(e.size as usize);
        self.reader(e)?.read_to_end(&mut b).map_err(|err| io_err(&self.path, "read", err))?;
        Ok(b)
    }
}

/// Reads one entry of a payload with positioned reads.
pub struct EntryReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the bundle ended inside an entry"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> BundleError {
    BundleError::Io { path: path.into(), op, source }
}

/// Reads one central directory entry at `*pos`.
fn central_entry(cd: &[u8], pos: &mut usize) -> Result<Entry, String> {
    let b = cd.get(*pos..*pos + 46).ok_or("truncated")?;
    if le32(b, 0) != CENTRAL {
        return Err("bad signature".into());
    }
    let flags = le16(b, 8);
    if flags & FLAG_ENCRYPTED != 0 {
        return Err("encrypted".into());
    }
    if flags & FLAG_DESCRIPTOR != 0 {
        return Err("streamed with a data descriptor".into());
    }
    if le16(b, 10) != 0 {
        return Err("compressed (bundles hold STORED entries only)".into());
    }
    if le16(b, 34) != 0 {
        return Err("spans disks".into());
    }
    let (crc32, mut csize, mut size) = (le32(b, 16), le32(b, 20) as u64, le32(b, 24) as u64);
    let (n, x, c) = (le16(b, 28) as usize, le16(b, 30) as usize, le16(b, 32) as usize);
    let mut header = le32(b, 42) as u64;
    let rest = cd.get(*pos + 46..*pos + 46 + n + x + c).ok_or("truncated name or extra field")?;
    let name = std::str::from_utf8(&rest[..n]).map_err(|_| "its name is not UTF-8")?.to_string();
    let mut extra = &rest[n..n + x];
    while extra.len() >= 4 {
        let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
        let body = extra.get(4..4 + len).ok_or("truncated extra field")?;
        if id == 1 {
            let mut f = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
            for v in [&mut size, &mut csize, &mut header] {
                if *v == MAX32 {
                    *v = f.next().ok_or("zip64 field missing")?;
                }
            }
        }
        extra = &extra[4 + len..];
    }
    if !extra.is_empty() {
        return Err("trailing bytes in the extra field".into());
    }
    if csize != size {
        return Err("its stored and original sizes differ".into());
    }
    *pos += 46 + n + x + c;
    Ok(Entry { name, header, data: 0, size, crc32 })
}

/// Checks an entry's local header against its central directory entry;
/// fills in where its data starts.
fn check_local(read: &dyn Fn(u64, u64) -> Result<Vec<u8>>, e: &mut Entry, cd_at: u64) -> Result<(), String> {
    let h = read(e.header, 30).map_err(|err| err.to_string())?;
    if le32(&h, 0) != LOCAL {
        return Err(format!("no local header at offset {}", e.header));
    }
    if le16(&h, 6) & (FLAG_ENCRYPTED | FLAG_DESCRIPTOR) != 0 || le16(&h, 8) != 0 {
        return Err("its local header says encrypted, streamed or compressed".into());
    }
    let (n, x) = (le16(&h, 26) as u64, le16(&h, 28) as u64);
    let tail = read(e.header + 30, n + x).map_err(|err| err.to_string())?;
    if tail[..n as usize] != *e.name.as_bytes() {
        return Err("its local header names another file".into());
    }
    let (mut csize, mut size) = (le32(&h, 18) as u64, le32(&h, 22) as u64);
    if size == MAX32 || csize == MAX32 {
        let extra = &tail[n as usize..];
        if extra.len() < 20 || le16(extra, 0) != 1 {
            return Err("zip64 sizes missing from its local header".into());
        }
        (size, csize) = (le64(extra, 4), le64(extra, 12));
    }
    if le32(&h, 14) != e.crc32 || size != e.size || csize != e.size {
        return Err("its local header disagrees with the central directory (crc or size)".into());
    }
    e.data = e.header + 30 + n + x;
    if e.data.checked_add(e.size).is_none_or(|end| end > cd_at) {
        return Err("its data runs into the central directory or past the end".into());
    }
    Ok(())
}

/// Writes a bundle: the stub, then entries, then the central directory.
/// Everything goes to a temp file beside `out`, renamed into place by
/// [`Writer::finish`].
pub struct Writer {
    out: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    pos: u64,
    central: Vec<u8>,
    count: u64,
}

impl Writer {
    /// Starts a bundle with the executable read from `stub` (`stub_len` bytes).
    pub fn create(out: &Path, stub: &mut dyn Read, stub_len: u64) -> Result<Writer> {
        let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
        let mut w = Writer {
            out: out.into(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            pos: 0,
            central: Vec::new(),
            count: 0,
        };
        let n = io::copy(&mut stub.take(stub_len), w.file()).map_err(|e| io_err(&w.tmp, "write", e))?;
        if n != stub_len {
            return Err(BundleError::Malformed {
                path: w.tmp.clone(),
                reason: format!("the executable ended after {n} of {stub_len} bytes"),
            });
        }
        w.pos = n;
        Ok(w)
    }

    /// Adds an entry of exactly `size` bytes read from `data`. `progress`
    /// gets the bytes written so far.
    pub fn add(&mut self, name: &str, data: &mut dyn Read, size: u64, progress: &mut dyn FnMut(u64)) -> Result<()> {
        let wide = size >= MAX32;
        let header = self.pos;
        let extra_len: u16 = if wide { 20 } else { 0 };
        let version: u16 = if wide || header >= MAX32 { 45 } else { 20 };
        let mut local = Vec::with_capacity(30 + name.len() + 20);
        local.extend(LOCAL.to_le_bytes());
        local.extend(version.to_le_bytes());
        local.extend(FLAG_UTF8.to_le_bytes());
        local.extend(0u16.to_le_bytes()); // STORED
        local.extend(0u16.to_le_bytes()); // time
        local.extend(DOS_DATE.to_le_bytes());
        local.extend(0u32.to_le_bytes()); // crc32, patched below
        let s32 = if wide { MAX32 as u32 } else { size as u32 };
        local.extend(s32.to_le_bytes());
        local.extend(s32.to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(extra_len.to_le_bytes());
        local.extend(name.as_bytes());
        if wide {
            local.extend(1u16.to_le_bytes());
            local.extend(16u16.to_le_bytes());
            local.extend(size.to_le_bytes());
            local.extend(size.to_le_bytes());
        }
        self.write(&local)?;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < size {
            let want = buf.len().min((size - done) as usize);
            let n = data.read(&mut buf[..want]).map_err(|e| io_err(&self.tmp, "read an entry for", e))?;
            if n == 0 {
                return Err(BundleError::Malformed {
                    path: self.out.clone(),
                    reason: format!("{name}: its source ended after {done} of {size} bytes"),
                });
            }
            crc.update(&buf[..n]);
            self.write(&buf[..n])?;
            done += n as u64;
            progress(done);
        }
        let crc = crc.finalize();
        // Patch the CRC into the local header.
        let tmp = self.tmp.clone();
        let f = self.file();
        f.flush().map_err(|e| io_err(&tmp, "write", e))?;
        f.get_ref().write_all_at(&crc.to_le_bytes(), header + 14).map_err(|e| io_err(&tmp, "write", e))?;
        self.central_entry(name, crc, size, header);
        Ok(())
    }

    fn central_entry(&mut self, name: &str, crc: u32, size: u64, header: u64) {
        let (size_wide, off_wide) = (size >= MAX32, header >= MAX32);
        let mut extra = Vec::new();
        if size_wide {
            extra.extend(size.to_le_bytes());
            extra.extend(size.to_le_bytes());
        }
        if off_wide {
            extra.extend(header.to_le_bytes());
        }
        let c = &mut self.central;
        c.extend(CENTRAL.to_le_bytes());
        c.extend(((3u16 << 8) | 45).to_le_bytes()); // made by: unix, zip 4.5
        c.extend((if size_wide || off_wide { 45u16 } else { 20 }).to_le_bytes());
        c.extend(FLAG_UTF8.to_le_bytes());
        c.extend(0u16.to_le_bytes());
        c.extend(0u16.to_le_bytes());
        c.extend(DOS_DATE.to_le_bytes());
        c.extend(crc.to_le_bytes());
        let s32 = if size_wide { MAX32 as u32 } else { size as u32 };
        c.extend(s32.to_le_bytes());
        c.extend(s32.to_le_bytes());
        c.extend((name.len() as u16).to_le_bytes());
        c.extend((if extra.is_empty() { 0u16 } else { 4 + extra.len() as u16 }).to_le_bytes());
        c.extend(0u16.to_le_bytes()); // comment
        c.extend(0u16.to_le_bytes()); // disk
        c.extend(0u16.to_le_bytes()); // internal attributes
        c.extend((0o100644u32 << 16).to_le_bytes());
        c.extend((if off_wide { MAX32 as u32 } else { header as u32 }).to_le_bytes());
        c.extend(name.as_bytes());
        if !extra.is_empty() {
            c.extend(1u16.to_le_bytes());
            c.extend((extra.len() as u16).to_le_bytes());
            c.extend(extra);
        }
        self.count += 1;
    }

    fn file(&mut self) -> &mut BufWriter<File> {
        self.file.as_mut().expect("the bundle is being written")
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        let tmp = self.tmp.clone();
        self.file().write_all(b).map_err(|e| io_err(&tmp, "write", e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes the central directory and end records, syncs, and renames the
    /// bundle into place (mode 0755: it is an executable).
    pub fn finish(mut self) -> Result<()> {
        let cd_at = self.pos;
        let central = std::mem::take(&mut self.central);
        self.write(&central)?;
        let cd_size = central.len() as u64;
        let wide = self.count >= 0xFFFF || cd_at >= MAX32 || cd_size >= MAX32;
        if wide {
            let rec_at = self.pos;
            let mut r = Vec::new();
            r.extend(END64.to_le_bytes());
            r.extend((END64_LEN - 12).to_le_bytes());
            r.extend(((3u16 << 8) | 45).to_le_bytes());
            r.extend(45u16.to_le_bytes());
            r.extend(0u32.to_le_bytes());
            r.extend(0u32.to_le_bytes());
            r.extend(self.count.to_le_bytes());
            r.extend(self.count.to_le_bytes());
            r.extend(cd_size.to_le_bytes());
            r.extend(cd_at.to_le_bytes());
            r.extend(LOCATOR64.to_le_bytes());
            r.extend(0u32.to_le_bytes());
            r.extend(rec_at.to_le_bytes());
            r.extend(1u32.to_le_bytes());
            self.write(&r)?;
        }
        let clamp16 = |v: u64| if wide { 0xFFFF } else { v as u16 };
        let clamp32 = |v: u64| if wide { MAX32 as u32 } else { v as u32 };
        let mut e = Vec::new();
        e.extend(END.to_le_bytes());
        e.extend(0u16.to_le_bytes());
        e.extend(0u16.to_le_bytes());
        e.extend(clamp16(self.count).to_le_bytes());
        e.extend(clamp16(self.count).to_le_bytes());
        e.extend(clamp32(cd_size).to_le_bytes());
        e.extend(clamp32(cd_at).to_le_bytes());
        e.extend(0u16.to_le_bytes());
        self.write(&e)?;
        let file = self.file.take().expect("not finished twice");
        let file = file.into_inner().map_err(|e| io_err(&self.tmp, "write", e.into_error()))?;
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o755)).map_err(|e| io_err(&self.tmp, "chmod", e))?;
        file.sync_all().map_err(|e| io_err(&self.tmp, "sync", e))?;
        std::fs::rename(&self.tmp, &self.out).map_err(|e| io_err(&self.out, "rename into place", e))?;
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished (an error, or a panic): no half bundle is left behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests;
