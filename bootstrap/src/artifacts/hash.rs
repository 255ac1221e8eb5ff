//! Hashing while reading: every byte of an artifact is hashed as it streams
//! (into the store, through a decoder), never in a second pass.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use kubestrap_manifest::Sha256;
use sha2::Digest;

/// Reads through, hashing and counting every byte.
pub struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: sha2::Sha256::new(), count: 0 }
    }
    /// Reads the rest of the input, then returns its digest and length.
    pub fn finish(mut self) -> io::Result<(Sha256, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Sha256::from_bytes(self.hasher.finalize().into()), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes a file.
pub fn hash_file(path: &Path) -> io::Result<(Sha256, u64)> {
    hash_reader(File::open(path)?)
}

/// Hashes everything a reader yields.
pub fn hash_reader(r: impl Read) -> io::Result<(Sha256, u64)> {
    HashingReader::new(io::BufReader::with_capacity(1 << 20, r)).finish()
}
