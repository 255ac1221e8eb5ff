//! The self-extracting bundle format: the kubestrap executable followed by a
//! zip of STORED entries (manifest, signature, key lists, artifacts named by
//! sha256), written in a fixed order with fixed metadata so that the same
//! inputs give the same bytes. `unzip -l` reads it; kubestrap finds the zip's
//! end record in the last bytes of its own file.
//!
//! This crate only writes and reads the container. Verifying what is inside
//! (signature, sha256 and size of every artifact) is the caller's job, before
//! anything is used.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no bundle inside ({reason}); this kubestrap carries no offline payload")]
    NotABundle { path: PathBuf, reason: String },
    #[error("{path}: bundle entry {name:?}: {reason}")]
    Entry { path: PathBuf, name: String, reason: String },
}

/// One entry to put in a bundle: its name and where to read it from.
pub struct Entry {
    pub name: String,
    pub source: PathBuf,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// Writes `exe` followed by a zip of `entries` (STORED, fixed timestamps and
/// permissions, in the given order) to `out`.
pub fn write(exe: &Path, entries: &[Entry], out: &Path) -> Result<(), BundleError> {
    let mut f = File::create(out).map_err(io_err(out))?;
    io::copy(&mut File::open(exe).map_err(io_err(exe))?, &mut f).map_err(io_err(out))?;
    // Written after the executable: offsets in the zip count from the file start.
    let mut zip = ZipWriter::new(f);
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .large_file(true);
    for e in entries {
        zip.start_file(e.name.as_str(), opts).map_err(|err| BundleError::Entry {
            path: out.to_path_buf(),
            name: e.name.clone(),
            reason: err.to_string(),
        })?;
        io::copy(&mut File::open(&e.source).map_err(io_err(&e.source))?, &mut zip).map_err(io_err(out))?;
    }
    let mut f = zip.finish().map_err(|e| BundleError::Io { path: out.to_path_buf(), source: io::Error::other(e) })?;
    f.flush().map_err(io_err(out))?;
    f.sync_all().map_err(io_err(out))
}

/// A bundle opened for reading.
pub struct Bundle {
    path: PathBuf,
    zip: ZipArchive<BufReader<File>>,
}

impl Bundle {
    /// Opens the zip appended to `path` (e.g. `std::env::current_exe()`).
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let f = File::open(path).map_err(io_err(path))?;
        let zip = ZipArchive::new(BufReader::new(f))
            .map_err(|e| BundleError::NotABundle { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Bundle { path: path.to_path_buf(), zip })
    }

    /// Entry names with their sizes, in bundle order.
    pub fn entries(&mut self) -> Vec<(String, u64)> {
        (0..self.zip.len())
            .filter_map(|i| self.zip.by_index_raw(i).ok().map(|e| (e.name().to_string(), e.size())))
            .collect()
    }

    /// Streams one entry into `out`, at most `limit` bytes (a longer entry is an error).
    pub fn copy_entry(&mut self, name: &str, out: &mut dyn Write, limit: u64) -> Result<u64, BundleError> {
        let path = self.path.clone();
        let entry_err = |reason: String| BundleError::Entry { path: path.clone(), name: name.to_string(), reason };
        let mut e = self.zip.by_name(name).map_err(|err| entry_err(err.to_string()))?;
        if e.compression() != CompressionMethod::Stored {
            return Err(entry_err("not STORED".into()));
        }
        let n = io::copy(&mut e.by_ref().take(limit + 1), out).map_err(|err| entry_err(err.to_string()))?;
        if n > limit {
            return Err(entry_err(format!("longer than the {limit} bytes expected")));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("kubestrap");
        std::fs::write(&exe, b"\x7fELF fake executable").unwrap();
        let m = dir.path().join("manifest.toml");
        std::fs::write(&m, b"schema = 1\n").unwrap();
        let entries = vec![Entry { name: "manifest.toml".into(), source: m.clone() }];
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&exe, &entries, &a).unwrap();
        write(&exe, &entries, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "reproducible");
        assert!(std::fs::read(&a).unwrap().starts_with(b"\x7fELF fake executable"));
        let mut bundle = Bundle::open(&a).unwrap();
        assert_eq!(bundle.entries(), vec![("manifest.toml".to_string(), 11)]);
        let mut out = Vec::new();
        bundle.copy_entry("manifest.toml", &mut out, 100).unwrap();
        assert_eq!(out, b"schema = 1\n");
        assert!(bundle.copy_entry("manifest.toml", &mut Vec::new(), 5).is_err(), "limit enforced");
        assert!(matches!(Bundle::open(&exe), Err(BundleError::NotABundle { .. })));
    }
}
