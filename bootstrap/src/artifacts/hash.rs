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

/// Which SHA-256 code the `sha2` crate runs on this CPU (it chooses at run
/// time): the CPU's SHA extensions where it has them, else portable code.
pub fn backend() -> &'static str {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        let shani = std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1");
        if shani { "x86 SHA extensions (SHA-NI)" } else { "portable (no SHA-NI on this CPU)" }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") { "ARMv8 SHA2 instructions" } else { "portable" }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        "portable"
    }
}
