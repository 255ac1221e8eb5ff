//! Hashing while reading: every byte of an artifact is hashed as it streams
//! (into the store, through a decoder), never in a second pass.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use kubestrap_manifest::Sha256;

/// SHA-256 of everything kubestrap verifies: artifacts as they stream,
/// unpacked files, what runs. OpenSSL's assembly (through `ring`, which the
/// TLS stack already carries), which picks the CPU's SHA extensions at run
/// time — the same code `openssl dgst -sha256` runs, so its speed holds on
/// every CPU that baseline is measured on.
pub struct Hasher(ring::digest::Context);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Sha256 {
        let d = self.0.finish();
        Sha256::from_bytes(d.as_ref().try_into().expect("SHA-256 digests are 32 bytes"))
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads through, hashing and counting every byte.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Hasher::new(), count: 0 }
    }
    /// Reads the rest of the input, then returns its digest and length.
    pub fn finish(mut self) -> io::Result<(Sha256, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.count))
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

/// Which SHA-256 code [`Hasher`] runs on this CPU (OpenSSL's assembly
/// chooses at run time): the CPU's SHA extensions where it has them, else
/// its vector code.
pub fn backend() -> &'static str {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        let shani = std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1");
        if shani {
            "OpenSSL assembly (ring), x86 SHA extensions (SHA-NI)"
        } else {
            "OpenSSL assembly (ring), AVX2/SSSE3 (no SHA-NI on this CPU)"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            "OpenSSL assembly (ring), ARMv8 SHA2 instructions"
        } else {
            "OpenSSL assembly (ring), NEON"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        "ring, portable"
    }
}
