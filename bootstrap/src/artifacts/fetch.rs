//! The fetch queue: brings artifacts into the store, verified by sha256 and
//! exact size, a few at a time. Each artifact's sources are tried in order
//! (catalogs such as a bundle first, then the manifest's URLs); the store
//! checks every body whatever its source. A partial download whose resumed
//! bytes fail the check is tried once more from zero.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubestrap_fskit::FsError;
use kubestrap_manifest::{Artifact, Driver, Manifest, Target};

use super::source::{self, Attempt, Catalog, Ctx, FailureKind, SourceFailure};
use super::store::{self, BlobError, BlobWriter};
use crate::home::Home;
use crate::progress::{Download, Event, Progress};
use crate::urls;

/// How downloads behave.
#[derive(Clone)]
pub struct Options {
    /// Never touch the network; fail listing what is missing.
    pub offline: bool,
    /// An extra trusted CA (PEM) for mirrors behind TLS interception.
    pub ca_cert: Option<PathBuf>,
    /// Artifacts downloaded at once.
    pub jobs: usize,
    /// Retries per URL after the first attempt.
    pub retries: u32,
    /// First backoff delay; doubles per retry up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Connect timeout, and the longest a read may stall.
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// A body slower than `speed_limit` bytes/s over `speed_time` is given
    /// up on (and resumed by the next attempt).
    pub speed_limit: u64,
    pub speed_time: Duration,
    /// The longest one attempt on one URL may take (resumed after).
    pub attempt_timeout: Duration,
    /// Asked before any URL (an offline bundle, say).
    pub catalogs: Vec<Arc<dyn Catalog>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            offline: false,
            ca_cert: None,
            jobs: 4,
            retries: 4,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            speed_limit: 1024,
            speed_time: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(600),
            catalogs: Vec::new(),
        }
    }
}

/// One artifact to bring into the store.
#[derive(Clone, Debug)]
pub struct Job {
    /// For humans: `kubectl 1.33.1 (linux-x86_64)`.
    pub label: String,
    pub artifact: Artifact,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("offline: {} artifact(s) are not in the cache:\n{}", missing.len(), missing.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    Offline { missing: Vec<String> },
    #[error("{label}: every source failed:\n{}", failures.iter().map(|f| format!("  - {}: {}", f.source, f.message)).collect::<Vec<_>>().join("\n"))]
    AllFailed { label: String, failures: Vec<SourceFailure> },
    #[error("{label}: {source}")]
    Local {
        label: String,
        #[source]
        source: FsError,
    },
    #[error("manifest {manifest}: {reason}")]
    NoArtifact { manifest: String, reason: String },
    #[error(transparent)]
    Client(#[from] source::ClientError),
}

impl FetchError {
    /// Whether any source delivered bytes that did not match the manifest.
    pub fn is_integrity(&self) -> bool {
        matches!(self, FetchError::AllFailed { failures, .. } if failures.iter().any(SourceFailure::is_integrity))
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            FetchError::Offline { .. } => {
                Some("copy them in with an offline bundle, or run `kubestrap fetch` once while online".into())
            }
            FetchError::AllFailed { .. } if self.is_integrity() => Some(
                "a source served other bytes than the signed manifest pins: nothing was kept; try another mirror, or report it".into(),
            ),
            FetchError::AllFailed { .. } => Some("check the network and HTTPS_PROXY/NO_PROXY, then run the command again: it resumes".into()),
            FetchError::Local { source, .. } => source.hint(),
            FetchError::NoArtifact { .. } | FetchError::Client(_) => None,
        }
    }
}

/// The download jobs for a manifest on a target and driver.
pub fn jobs_for(m: &Manifest, target: &Target, driver: Driver) -> Result<Vec<Job>, FetchError> {
    let needs = m.needs(target, driver).map_err(|reason| FetchError::NoArtifact { manifest: m.id(), reason })?;
    Ok(needs
        .into_iter()
        .map(|n| Job { label: format!("{} {} ({})", n.component, n.version, n.target), artifact: n.artifact })
        .collect())
}

/// Brings every job's blob into the store; returns the blob paths in order.
pub fn fetch_all(
    home: &Home,
    jobs: &[Job],
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>, FetchError> {
    crate::killpoint::reached("fetch");
    let missing: Vec<&Job> =
        jobs.iter().filter(|j| !store::has_blob(home, &j.artifact.sha256, j.artifact.size.get())).collect();
    let in_catalog =
        |j: &Job| opts.catalogs.iter().any(|c| c.source_for(&j.artifact.sha256, j.artifact.size.get()).is_some());
    let offline_missing: Vec<&&Job> = missing.iter().filter(|j| opts.offline && !in_catalog(j)).collect();
    if !offline_missing.is_empty() {
        return Err(FetchError::Offline {
            missing: offline_missing
                .iter()
                .map(|j| {
                    let from: Vec<String> = j.artifact.urls.iter().map(|u| urls::redact(u)).collect();
                    format!(
                        "{} sha256:{} ({} bytes) from {}",
                        j.label,
                        j.artifact.sha256,
                        j.artifact.size.get(),
                        from.join(" or ")
                    )
                })
                .collect(),
        });
    }
    if !missing.is_empty() {
        let bytes = missing.iter().map(|j| j.artifact.size.get()).sum();
        progress.report(Event::Download(Download::Plan { count: missing.len(), bytes }));
    }
    let needs_http = !opts.offline
        && missing
            .iter()
            .any(|j| j.artifact.urls.iter().any(|u| matches!(urls::Location::parse(u), urls::Location::Http(_))));
    let client = if needs_http { Some(source::client(opts)?) } else { None };
    let queue = Mutex::new(jobs.iter().enumerate());
    let results: Mutex<Vec<Option<Result<PathBuf, FetchError>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let Some((i, job)) = queue.lock().unwrap().next() else { break };
                    let r = fetch_one(home, job, opts, client.as_ref(), progress);
                    let failed = r.is_err();
                    results.lock().unwrap()[i] = Some(r);
                    if failed {
                        // Stop handing out work; running downloads finish.
                        queue.lock().unwrap().by_ref().for_each(drop);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(jobs.len());
    for r in results.into_inner().unwrap().into_iter().flatten() {
        out.push(r?);
    }
    Ok(out)
}

/// One artifact: the store, then each catalog and source in turn, until
/// one hands over bytes with the pinned sha256 and size. Long on purpose:
/// the order of the sources and what each failure means are one policy.
fn fetch_one(
    home: &Home,
    job: &Job,
    opts: &Options,
    client: Option<&reqwest::blocking::Client>,
    progress: &dyn Progress,
) -> Result<PathBuf, FetchError> {
    let a = &job.artifact;
    let label = job.label.as_str();
    let local = |source: FsError| FetchError::Local { label: label.to_string(), source };
    let size = a.size.get();
    let cached = || {
        store::has_blob(home, &a.sha256, size).then(|| {
            progress.report(Event::Download(Download::Start { label, size, cached: true }));
            home.blob(&a.sha256)
        })
    };
    if let Some(p) = cached() {
        return Ok(p);
    }
    // One downloader per blob, across processes too.
    let _lock = home.lock(&format!("blob-{}", a.sha256.hex()), true, || {}).map_err(local)?;
    if let Some(p) = cached() {
        return Ok(p);
    }
    progress.report(Event::Download(Download::Start { label, size, cached: false }));
    let started = Instant::now();
    let ctx = Ctx { label, progress };
    let sources: Vec<_> = source::sources_for(a, &opts.catalogs, client, opts)
        .into_iter()
        .filter(|s| !(opts.offline && s.is_remote()))
        .collect();
    let mut failures = Vec::new();
    for (n, src) in sources.iter().enumerate() {
        let mut retried_from_zero = false;
        let failure = loop {
            let mut w = BlobWriter::open(home, &a.sha256).map_err(local)?;
            let resumed = w.offset();
            let failure = match src.fetch_into(&mut w, size, &ctx) {
                Ok(()) => match w.finish(home, &a.sha256, size) {
                    Ok(path) => {
                        progress.report(Event::Download(Download::Done {
                            label,
                            downloaded: size - resumed,
                            elapsed: started.elapsed(),
                        }));
                        return Ok(path);
                    }
                    Err(BlobError::HashMismatch { expected, actual }) => SourceFailure::new(
                        src.as_ref(),
                        FailureKind::HashMismatch { expected, actual },
                        format!("sha256 mismatch: the manifest says {expected}, the download is {actual}"),
                    ),
                    Err(BlobError::SizeMismatch { expected, actual }) => SourceFailure::new(
                        src.as_ref(),
                        FailureKind::SizeMismatch { expected, actual },
                        format!("size mismatch: the manifest says {expected} bytes, the download is {actual}"),
                    ),
                    Err(BlobError::Fs(e)) => return Err(local(e)),
                },
                Err(Attempt::Local(e)) => return Err(local(e)),
                Err(Attempt::Source(f)) => {
                    if matches!(f.kind, FailureKind::TooLarge { .. }) {
                        w.discard();
                    }
                    *f
                }
            };
            let mismatch = matches!(failure.kind, FailureKind::HashMismatch { .. } | FailureKind::SizeMismatch { .. });
            if mismatch && resumed > 0 && !retried_from_zero {
                // The bad bytes may have come from the earlier attempt (another
                // mirror, or a previous run): try this source once more from zero.
                retried_from_zero = true;
                progress.report(Event::Download(Download::Retry {
                    label,
                    source: &failure.source,
                    attempt: 1,
                    delay: Duration::ZERO,
                    error: &failure.message,
                }));
                continue;
            }
            break failure;
        };
        if n + 1 < sources.len() {
            progress.report(Event::Download(Download::Fallback {
                label,
                source: &failure.source,
                error: &failure.message,
            }));
        }
        failures.push(failure);
    }
    Err(FetchError::AllFailed { label: label.to_string(), failures })
}
