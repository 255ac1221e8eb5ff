//! Where verified blobs come from. Each [`ArtifactSource`] streams one
//! artifact's bytes into a [`BlobWriter`]; the store checks sha256 and size
//! whatever the source. Sources today: HTTP(S) mirrors (retries, Range
//! resume, speed limits) and local files (`file://` URLs and paths). A
//! [`Catalog`] holds many artifacts by sha256 (an offline bundle, a
//! directory of artifacts) and is asked before any URL.

use std::fmt;
use std::sync::Arc;

use kubestrap_fskit::FsError;
use kubestrap_manifest::{Artifact, Sha256};

use super::store::BlobWriter;
use crate::progress::Progress;
use crate::urls::Location;

mod bundle;
mod dir;
mod file;
mod http;

pub use bundle::BundleCatalog;
pub use dir::DirCatalog;
pub use file::FileSource;
pub use http::{ClientError, HttpSource, client, describe_error};

/// Why one source failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    HashMismatch {
        expected: Sha256,
        actual: Sha256,
    },
    TooLarge {
        limit: u64,
    },
    SizeMismatch {
        expected: u64,
        actual: u64,
    },
    Http(u16),
    Network,
    /// The source cannot serve it (a missing file, an unreadable bundle entry).
    Unavailable,
}

/// One source's failure, for the final error listing every source.
#[derive(Clone, Debug)]
pub struct SourceFailure {
    /// The source, as shown to users (URLs redacted).
    pub source: String,
    pub kind: FailureKind,
    pub message: String,
}

impl SourceFailure {
    pub fn new(source: &dyn ArtifactSource, kind: FailureKind, message: impl fmt::Display) -> SourceFailure {
        SourceFailure { source: source.describe(), kind, message: message.to_string() }
    }
    /// Bytes arrived but were not the ones the manifest pins.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::HashMismatch { .. } | FailureKind::TooLarge { .. } | FailureKind::SizeMismatch { .. }
        )
    }
}

/// Why one attempt failed: the source (retry, or the next source), or our
/// own disk (stop: no other source can help).
pub enum Attempt {
    Source(Box<SourceFailure>),
    Local(FsError),
}

impl From<FsError> for Attempt {
    fn from(e: FsError) -> Attempt {
        Attempt::Local(e)
    }
}

/// What a source needs to report progress on one artifact.
pub struct Ctx<'a> {
    pub label: &'a str,
    pub progress: &'a dyn Progress,
}

/// One place one artifact can be read from.
pub trait ArtifactSource: Send + Sync {
    /// For messages: a redacted URL, a path, a bundle entry.
    fn describe(&self) -> String;
    /// Whether reading it uses the network (`--offline` never does).
    fn is_remote(&self) -> bool;
    /// Streams the artifact into `w` until it holds `size` bytes, resuming
    /// at `w.offset()` where the source can. Never writes more than `size`.
    fn fetch_into(&self, w: &mut BlobWriter, size: u64, ctx: &Ctx<'_>) -> Result<(), Attempt>;
}

/// Holds artifacts by sha256 (an offline bundle, a directory).
pub trait Catalog: Send + Sync {
    /// A source for this artifact, if the catalog holds it.
    fn source_for(&self, sha256: &Sha256, size: u64) -> Option<Box<dyn ArtifactSource>>;
}

/// The sources of one artifact, in the order they are tried: every catalog
/// that holds it, then its URLs as the manifest lists them.
pub fn sources_for(
    a: &Artifact,
    catalogs: &[Arc<dyn Catalog>],
    client: Option<&reqwest::blocking::Client>,
    opts: &super::Options,
) -> Vec<Box<dyn ArtifactSource>> {
    let mut out: Vec<Box<dyn ArtifactSource>> =
        catalogs.iter().filter_map(|c| c.source_for(&a.sha256, a.size.get())).collect();
    for url in &a.urls {
        out.push(match Location::parse(url) {
            Location::Http(u) => Box::new(HttpSource::new(u, client.cloned(), opts.clone())),
            Location::File(p) => Box::new(FileSource::new(p)),
        });
    }
    out
}

/// Copies from a reader into the blob, refusing more than `size` bytes.
pub fn copy_capped(
    src: &dyn ArtifactSource,
    r: &mut dyn std::io::Read,
    w: &mut BlobWriter,
    size: u64,
    ctx: &Ctx<'_>,
) -> Result<(), Attempt> {
    let mut last = std::time::Instant::now();
    loop {
        // Read into a buffer the writer hands over, hashed and then moved
        // to its thread: no copy but the read's.
        let mut buf = w.buffer();
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Attempt::Source(Box::new(SourceFailure::new(
                    src,
                    FailureKind::Unavailable,
                    format!("cannot read: {e}"),
                ))));
            }
        };
        if n as u64 > size - w.offset() {
            return Err(Attempt::Source(Box::new(SourceFailure::new(
                src,
                FailureKind::TooLarge { limit: size },
                format!("longer than the {size} bytes the manifest allows; refused"),
            ))));
        }
        buf.truncate(n);
        w.push(buf)?;
        if last.elapsed() >= std::time::Duration::from_millis(100) {
            ctx.progress.report(crate::progress::Event::Download(crate::progress::Download::Progress {
                label: ctx.label,
                done: w.offset(),
            }));
            last = std::time::Instant::now();
        }
    }
    ctx.progress.report(crate::progress::Event::Download(crate::progress::Download::Progress {
        label: ctx.label,
        done: w.offset(),
    }));
    Ok(())
}
