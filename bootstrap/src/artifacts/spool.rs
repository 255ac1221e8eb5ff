//! The writing half of a blob writer: a thread of its own writes the
//! buffers handed to it into the partial file and hands them back, so the
//! copy into the page cache and the disk's write-back of one buffer overlap
//! the hashing of the next (what a bundle import or a local file copy
//! spends its time on besides hashing). The bytes written are the very
//! buffer the caller hashed: it is moved, never shared.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

/// How much the spool lets pile up in the page cache before it starts the
/// disk on it (a hint to the kernel; the fsync at the end is what counts).
const WRITE_BACK_EVERY: u64 = 8 << 20;

/// The size of the buffers [`Spool::buffer`] hands out.
pub const BUFFER: usize = 1 << 20;

/// Buffers in flight to the writer at most (memory: a few MiB per blob).
const DEPTH: usize = 4;

enum Op {
    Write(Vec<u8>),
    /// Back to an empty file (a restarted download).
    Truncate,
}

pub struct Spool {
    tx: Option<SyncSender<Op>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<File>>>,
}

impl Spool {
    /// Writes to `file` from its current end (`len` bytes are there).
    pub fn new(file: File, len: u64) -> io::Result<Spool> {
        let (tx, rx) = sync_channel::<Op>(DEPTH);
        let (back, spare) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let thread = std::thread::Builder::new().name("blob-writer".into()).spawn(move || {
            let mut file = file;
            let (mut len, mut written_back) = (len, len);
            for op in rx {
                match op {
                    Op::Write(buf) => {
                        file.write_all(&buf)?;
                        len += buf.len() as u64;
                        if len - written_back >= WRITE_BACK_EVERY {
                            write_back(&file, written_back, len - written_back);
                            written_back = len;
                        }
                        let _ = back.try_send(buf);
                    }
                    Op::Truncate => {
                        file.set_len(0)?;
                        file.seek(SeekFrom::Start(0))?;
                        (len, written_back) = (0, 0);
                    }
                }
            }
            Ok(file)
        })?;
        Ok(Spool { tx: Some(tx), spare, thread: Some(thread) })
    }

    /// An empty buffer of [`BUFFER`] bytes to read into (one the writer is
    /// done with, when there is one).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut buf = match self.spare.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Vec::with_capacity(BUFFER),
        };
        buf.resize(BUFFER, 0);
        buf
    }

    /// Hands `buf` to the writer. An error is the writer's (it has stopped).
    pub fn write(&mut self, buf: Vec<u8>) -> io::Result<()> {
        self.send(Op::Write(buf))
    }

    pub fn truncate(&mut self) -> io::Result<()> {
        self.send(Op::Truncate)
    }

    fn send(&mut self, op: Op) -> io::Result<()> {
        if self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok()) {
            return Ok(());
        }
        // The writer stopped: its error, or (closed already) one of ours.
        Err(self.close().err().unwrap_or_else(|| io::Error::other("the blob writer has stopped")))
    }

    /// Waits for everything to be written; the file back, or the error
    /// that stopped the writer.
    pub fn close(&mut self) -> io::Result<File> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the blob writer thread panicked")),
            None => Err(io::Error::other("the blob writer was closed already")),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.close();
        }
    }
}

/// Starts the disk on `len` bytes at `from` without waiting for it.
fn write_back(file: &File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range(2) on a descriptor this thread owns; no memory is passed.
        unsafe { libc::sync_file_range(file.as_raw_fd(), from as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_is_given_in_order_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut s = Spool::new(File::create(&path).unwrap(), 0).unwrap();
        for i in 0..20u8 {
            let mut b = s.buffer();
            b.truncate(1000);
            b.fill(i);
            s.write(b).unwrap();
        }
        s.truncate().unwrap();
        for i in 0..3u8 {
            s.write(vec![i; 10]).unwrap();
        }
        drop(s.close().unwrap());
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got, [vec![0u8; 10], vec![1; 10], vec![2; 10]].concat());
    }

    #[test]
    fn a_write_error_reaches_the_caller() {
        // /dev/full: every write fails with ENOSPC.
        let f = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut s = Spool::new(f, 0).unwrap();
        let mut err = None;
        for _ in 0..DEPTH + 3 {
            if let Err(e) = s.write(vec![1; 4096]) {
                err = Some(e);
                break;
            }
        }
        let err = err.or_else(|| s.close().err()).expect("the error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
