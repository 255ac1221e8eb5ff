//! localkube's log file: kept under a size cap by its monitor (copy-truncate
//! into `localkube.log.1`), read back as a tail or followed as it grows.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use kubestrap_fskit::{self as fskit, FsError};

/// The log is cut back to its last part when it grows past this.
pub const LOG_CAP: u64 = 16 << 20;

/// Keeps the log under [`LOG_CAP`] (copy-truncate): its newest half is kept
/// in `localkube.log.1` and the file is cut to zero; localkube writes with
/// O_APPEND, so it carries on at the new end.
pub fn cap_log(log: &Path) -> Result<(), FsError> {
    let Ok(meta) = fs::metadata(log) else { return Ok(()) };
    if meta.len() <= LOG_CAP {
        return Ok(());
    }
    let keep = LOG_CAP / 2;
    let tail = read_range(log, meta.len() - keep, meta.len())?;
    fskit::write_atomic(&fskit::sidecar(log, ".1"), &tail, 0o600)?;
    OpenOptions::new().write(true).open(log).and_then(|f| f.set_len(0)).map_err(|e| FsError::io(log, "truncate", e))
}

/// The last `n` lines of a log (and of its rotated part if needed). Reads at
/// most the last two cap's worth.
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    let lines_of = |p: &Path| -> Vec<String> {
        let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        read_range(p, len.saturating_sub(LOG_CAP), len)
            .map(|b| String::from_utf8_lossy(&b).lines().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let mut lines = lines_of(&fskit::sidecar(log, ".1"));
    lines.extend(lines_of(log));
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, FsError> {
    let mut f = fskit::open_regular(path)?;
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(from))
        .and_then(|_| f.take(to.saturating_sub(from)).read_to_end(&mut buf))
        .map_err(|e| FsError::io(path, "read", e))?;
    Ok(buf)
}

/// The last bytes shown, to find our place in `localkube.log.1` when the
/// monitor cuts the log back between two polls.
const FOLLOW_WINDOW: u64 = 4096;

/// Writes what is appended to the log from now on, until writing to `out`
/// fails (a closed pipe: a normal end).
pub fn follow(log: &Path, out: &mut dyn Write) -> Result<(), FsError> {
    let size = || fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let mut pos = size();
    let mut shown = read_range(log, pos.saturating_sub(FOLLOW_WINDOW), pos).unwrap_or_default();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = size();
        let mut buf = Vec::new();
        if len < pos {
            // Cut back (size cap): what came after our place moved to `.1`.
            let rotated = fskit::sidecar(log, ".1");
            let old = read_range(&rotated, 0, LOG_CAP).unwrap_or_default();
            buf.extend_from_slice(missed_before_cut(&shown, &old));
            pos = 0;
        }
        if len > pos {
            buf.extend(read_range(log, pos, len)?);
            pos = len;
        }
        if buf.is_empty() {
            continue;
        }
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        shown.extend_from_slice(&buf);
        let excess = shown.len().saturating_sub(FOLLOW_WINDOW as usize);
        shown.drain(..excess);
    }
}

/// What of the rotated part `rotated` comes after the bytes already shown
/// (`shown`, the newest of them last); all of it if they are not found.
/// The start of `shown` places it: its end may be missing from `rotated`
/// (written just before the cut, after the copy was taken).
fn missed_before_cut<'a>(shown: &[u8], rotated: &'a [u8]) -> &'a [u8] {
    if shown.is_empty() {
        return rotated;
    }
    let anchor = &shown[..(shown.len() / 2).clamp(1, 512)];
    match memchr::memmem::rfind(rotated, anchor) {
        Some(at) => &rotated[(at + shown.len()).min(rotated.len())..],
        None => rotated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_cut_back_keeping_its_newest_half() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("localkube.log");
        let mut body = vec![b'a'; (LOG_CAP / 2) as usize];
        body.extend(vec![b'z'; (LOG_CAP / 2 + 10) as usize]);
        fs::write(&log, &body).unwrap();
        cap_log(&log).unwrap();
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        let old = fs::read(dir.path().join("localkube.log.1")).unwrap();
        assert_eq!(old.len() as u64, LOG_CAP / 2);
        assert!(old.iter().all(|b| *b == b'z'), "the newest half is kept");
        // Under the cap nothing happens.
        fs::write(&log, b"small").unwrap();
        cap_log(&log).unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"small");
    }

    #[test]
    fn follow_finds_its_place_in_the_rotated_log() {
        let rotated = b"line 1\nline 2\nline 3\nline 4\n";
        assert_eq!(missed_before_cut(b"line 1\nline 2\n", rotated), b"line 3\nline 4\n");
        assert_eq!(missed_before_cut(b"line 3\nline 4\n", rotated), b"");
        // Fell behind further than the rotated part reaches: all of it.
        assert_eq!(missed_before_cut(b"older line 0\n", rotated), rotated);
        assert_eq!(missed_before_cut(b"", rotated), rotated);
        // Shown bytes past the copy's end (written just before the cut).
        assert_eq!(missed_before_cut(b"line 3\nline 4\nline 5\n", rotated), b"");
    }
}
