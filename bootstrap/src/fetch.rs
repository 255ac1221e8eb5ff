//! Downloads artifacts into the store, verified by sha256 and exact size.
//!
//! Every body is hashed while it is written (no second pass). An interrupted
//! download resumes from its partial file with an HTTP Range request.
//! Transient failures (connect errors, resets, timeouts, 5xx, 429) are retried
//! with bounded exponential backoff; then the next URL is tried. A body longer
//! than the declared size is cut off and refused. Sources may be `http(s)://`,
//! `file://` URLs or plain paths.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kubestrap_manifest::{Artifact, Sha256};
use kubestrap_manifest::{Driver, Manifest, Target};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::home::Home;
use crate::store::{self, BlobError, BlobWriter};

/// How downloads behave.
#[derive(Clone, Debug)]
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

/// What a download is doing, for the UI.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// What is about to be downloaded (not already cached).
    Plan {
        count: usize,
        bytes: u64,
    },
    /// `cached`: already verified in the store, nothing to download.
    Start {
        label: &'a str,
        size: u64,
        cached: bool,
    },
    /// `resumed_from` bytes were already present from an earlier attempt.
    Progress {
        label: &'a str,
        done: u64,
    },
    Retry {
        label: &'a str,
        url: &'a str,
        attempt: u32,
        delay: Duration,
        error: &'a str,
    },
    Fallback {
        label: &'a str,
        url: &'a str,
        error: &'a str,
    },
    Done {
        label: &'a str,
        downloaded: u64,
        elapsed: Duration,
    },
}

/// Receives download events (rendered by the CLI layer).
pub trait Reporter: Sync {
    fn event(&self, e: Event<'_>);
}

/// Why one URL failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    HashMismatch { expected: Sha256, actual: Sha256 },
    TooLarge { limit: u64 },
    SizeMismatch { expected: u64, actual: u64 },
    Http(u16),
    Network,
    Source,
}

#[derive(Clone, Debug)]
pub struct UrlFailure {
    pub url: String,
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("offline: {} artifact(s) are not in the cache:\n{}\nCopy them in with an offline bundle, or run `kubestrap fetch` once while online.", missing.len(), missing.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    Offline { missing: Vec<String> },
    #[error("{label}: every source failed:\n{}", failures.iter().map(|f| format!("  - {}: {}", f.url, f.message)).collect::<Vec<_>>().join("\n"))]
    AllFailed { label: String, failures: Vec<UrlFailure> },
    #[error("{label}: {source:#}")]
    Local {
        label: String,
        #[source]
        source: anyhow::Error,
    },
}

impl FetchError {
    /// Whether any source delivered bytes that did not match the manifest.
    pub fn is_integrity(&self) -> bool {
        matches!(self, FetchError::AllFailed { failures, .. } if failures.iter().any(|f| matches!(f.kind, FailureKind::HashMismatch { .. } | FailureKind::TooLarge { .. } | FailureKind::SizeMismatch { .. })))
    }
}

/// The download jobs for a manifest on a target and driver.
pub fn jobs_for(m: &Manifest, target: &Target, driver: Driver) -> Result<Vec<Job>> {
    let needs = m
        .needs(target, driver)
        .map_err(|e| crate::exit::coded(crate::exit::Code::Usage, format!("manifest {}: {e}", m.id())))
        .context("cannot choose artifacts")?;
    Ok(needs
        .into_iter()
        .map(|n| Job { label: format!("{} {} ({})", n.component, n.version, n.target), artifact: n.artifact })
        .collect())
}

/// Builds the HTTP client: rustls, proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY,
/// and the extra CA if one is given.
pub fn client(opts: &Options) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .user_agent(concat!("kubestrap/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.read_timeout);
    if let Some(path) = &opts.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read CA certificate {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().context("cannot set up the HTTP client")
}

/// Brings every job's blob into the store; returns the blob paths in order.
pub fn fetch_all(
    home: &Home,
    jobs: &[Job],
    opts: &Options,
    reporter: &dyn Reporter,
) -> Result<Vec<PathBuf>, FetchError> {
    let missing: Vec<&Job> =
        jobs.iter().filter(|j| !store::has_blob(home, &j.artifact.sha256, j.artifact.size.get())).collect();
    if opts.offline && !missing.is_empty() {
        return Err(FetchError::Offline {
            missing: missing
                .iter()
                .map(|j| {
                    format!(
                        "{} sha256:{} ({} bytes) from {}",
                        j.label,
                        j.artifact.sha256,
                        j.artifact.size.get(),
                        j.artifact.urls.join(" or ")
                    )
                })
                .collect(),
        });
    }
    if !missing.is_empty() {
        reporter
            .event(Event::Plan { count: missing.len(), bytes: missing.iter().map(|j| j.artifact.size.get()).sum() });
    }
    let client = if missing.is_empty() || missing.iter().all(|j| j.artifact.urls.iter().all(|u| !is_http(u))) {
        None
    } else {
        Some(client(opts).map_err(|source| FetchError::Local { label: "HTTP client".into(), source })?)
    };
    let queue = Mutex::new(jobs.iter().enumerate());
    let results: Mutex<Vec<Option<Result<PathBuf, FetchError>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let Some((i, job)) = queue.lock().unwrap().next() else { break };
                    let r = fetch_one(home, job, opts, client.as_ref(), reporter);
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

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn fetch_one(
    home: &Home,
    job: &Job,
    opts: &Options,
    client: Option<&reqwest::blocking::Client>,
    reporter: &dyn Reporter,
) -> Result<PathBuf, FetchError> {
    let a = &job.artifact;
    let label = job.label.as_str();
    let local = |source: anyhow::Error| FetchError::Local { label: label.to_string(), source };
    let size = a.size.get();
    if store::has_blob(home, &a.sha256, size) {
        reporter.event(Event::Start { label, size, cached: true });
        return Ok(home.blob(&a.sha256));
    }
    // One downloader per blob, across processes too.
    let _lock = home.lock(&format!("blob-{}", a.sha256.hex()), true, || {}).map_err(local)?;
    if store::has_blob(home, &a.sha256, size) {
        reporter.event(Event::Start { label, size, cached: true });
        return Ok(home.blob(&a.sha256));
    }
    reporter.event(Event::Start { label, size, cached: false });
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut urls: Vec<(usize, &String)> = a.urls.iter().enumerate().collect();
    let mut k = 0;
    while k < urls.len() {
        let (n, url) = urls[k];
        k += 1;
        let mut w = BlobWriter::open(home, &a.sha256).map_err(local)?;
        let resumed = w.offset();
        let outcome = if is_http(url) {
            download_with_retries(client.expect("client built for http URLs"), url, &mut w, size, opts, label, reporter)
        } else {
            copy_local(url, &mut w, size, label, reporter)
        };
        let failure = match outcome {
            Ok(()) => match w.finish(home, &a.sha256, size) {
                Ok(path) => {
                    reporter.event(Event::Done { label, downloaded: size - resumed, elapsed: started.elapsed() });
                    return Ok(path);
                }
                Err(e) => match e.downcast::<BlobError>() {
                    Ok(BlobError::HashMismatch { expected, actual }) => UrlFailure {
                        url: url.clone(),
                        kind: FailureKind::HashMismatch { expected, actual },
                        message: format!("sha256 mismatch: the manifest says {expected}, the download is {actual}"),
                    },
                    Ok(BlobError::SizeMismatch { expected, actual }) => UrlFailure {
                        url: url.clone(),
                        kind: FailureKind::SizeMismatch { expected, actual },
                        message: format!("size mismatch: the manifest says {expected} bytes, the download is {actual}"),
                    },
                    Err(e) => return Err(local(e)),
                },
            },
            Err(Attempt::Local(e)) => return Err(local(e)),
            Err(Attempt::Url(f)) => {
                if matches!(f.kind, FailureKind::TooLarge { .. }) {
                    w.discard();
                }
                *f
            }
        };
        let mismatch = matches!(failure.kind, FailureKind::HashMismatch { .. } | FailureKind::SizeMismatch { .. });
        if mismatch && resumed > 0 {
            // The bad bytes may have come from the earlier attempt (another
            // mirror, or a previous run): try this URL once more from zero.
            reporter.event(Event::Retry { label, url, attempt: 1, delay: Duration::ZERO, error: &failure.message });
            urls.insert(k, (n, url));
            continue;
        }
        if n + 1 < a.urls.len() {
            reporter.event(Event::Fallback { label, url, error: &failure.message });
        }
        failures.push(failure);
    }
    Err(FetchError::AllFailed { label: label.to_string(), failures })
}

/// Why one attempt failed: the URL (retry or next URL), or our own disk (stop).
enum Attempt {
    Url(Box<UrlFailure>),
    Local(anyhow::Error),
}

struct Transient(bool);

fn download_with_retries(
    client: &reqwest::blocking::Client,
    url: &str,
    w: &mut BlobWriter,
    size: u64,
    opts: &Options,
    label: &str,
    reporter: &dyn Reporter,
) -> Result<(), Attempt> {
    let mut attempt = 0;
    loop {
        match download_once(client, url, w, size, label, reporter) {
            Ok(()) => return Ok(()),
            Err((Transient(true), Attempt::Url(f))) if attempt < opts.retries => {
                let delay = opts.backoff.saturating_mul(1 << attempt.min(16)).min(opts.max_backoff);
                attempt += 1;
                reporter.event(Event::Retry { label, url, attempt, delay, error: &f.message });
                std::thread::sleep(delay);
            }
            Err((_, e)) => return Err(e),
        }
    }
}

fn url_failure(url: &str, kind: FailureKind, message: impl fmt::Display) -> Attempt {
    Attempt::Url(Box::new(UrlFailure { url: url.to_string(), kind, message: message.to_string() }))
}

fn download_once(
    client: &reqwest::blocking::Client,
    url: &str,
    w: &mut BlobWriter,
    size: u64,
    label: &str,
    reporter: &dyn Reporter,
) -> Result<(), (Transient, Attempt)> {
    let transient = |m: String| (Transient(true), url_failure(url, FailureKind::Network, m));
    let local =
        |e: io::Error, what: &str| (Transient(false), Attempt::Local(anyhow::Error::new(e).context(what.to_string())));
    if w.offset() > size {
        w.restart().map_err(|e| local(e, "cannot truncate the partial download"))?;
    }
    if w.offset() == size {
        return Ok(());
    }
    let offset = w.offset();
    let mut req = client.get(url);
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    let mut resp = req.send().map_err(|e| {
        if is_certificate_error(&e) {
            // Deterministic: retrying cannot help; say how to fix it.
            let m = format!(
                "{}; if this mirror is behind TLS interception, pass its CA with --ca-cert FILE (or KUBESTRAP_CA_CERT)",
                describe(&e)
            );
            (Transient(false), url_failure(url, FailureKind::Network, m))
        } else {
            transient(describe(&e))
        }
    })?;
    let status = resp.status();
    match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(offset) {
                w.restart().map_err(|e| local(e, "cannot truncate the partial download"))?;
                return Err(transient(format!(
                    "server answered a range starting at {start:?}, asked for {offset}; restarting"
                )));
            }
        }
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            if offset > 0 {
                // The server ignored our Range: start over.
                w.restart().map_err(|e| local(e, "cannot truncate the partial download"))?;
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            w.restart().map_err(|e| local(e, "cannot truncate the partial download"))?;
            return Err(transient("server refused to resume (416); restarting".into()));
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
            return Err(transient(format!("HTTP {s}")));
        }
        s => {
            let advice =
                if s == StatusCode::PROXY_AUTHENTICATION_REQUIRED { " (check HTTPS_PROXY credentials)" } else { "" };
            return Err((
                Transient(false),
                url_failure(url, FailureKind::Http(s.as_u16()), format!("HTTP {s}{advice}")),
            ));
        }
    }
    let room = size - w.offset();
    if let Some(len) = resp.content_length()
        && len > room
    {
        return Err((
            Transient(false),
            url_failure(
                url,
                FailureKind::TooLarge { limit: size },
                format!(
                    "the server announces {} bytes, more than the {size} the manifest allows; refused",
                    len + w.offset()
                ),
            ),
        ));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_report = Instant::now();
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(transient(format!("connection lost after {} of {size} bytes: {e}", w.offset()))),
        };
        if n as u64 > size - w.offset() {
            return Err((
                Transient(false),
                url_failure(
                    url,
                    FailureKind::TooLarge { limit: size },
                    format!("the body is longer than the {size} bytes the manifest allows; cut off and refused"),
                ),
            ));
        }
        w.write(&buf[..n]).map_err(|e| local(e, "cannot write the download to disk"))?;
        if last_report.elapsed() >= Duration::from_millis(100) {
            reporter.event(Event::Progress { label, done: w.offset() });
            last_report = Instant::now();
        }
    }
    reporter.event(Event::Progress { label, done: w.offset() });
    if w.offset() < size {
        return Err(transient(format!("the body ended after {} of {size} bytes", w.offset())));
    }
    Ok(())
}

/// Whether a request failed because the server's certificate was refused.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(rustls::Error::InvalidCertificate(_)) = c.downcast_ref::<rustls::Error>() {
            return true;
        }
        // io::Error's `source()` skips its own payload: descend into it instead.
        cause = match c.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|i| i as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// A request error with its causes (DNS, TLS, connect…), on one line.
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    s
}

fn copy_local(url: &str, w: &mut BlobWriter, size: u64, label: &str, reporter: &dyn Reporter) -> Result<(), Attempt> {
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let fail = |m: String| url_failure(url, FailureKind::Source, m);
    let mut f = File::open(path).map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    w.restart().map_err(|e| Attempt::Local(e.into()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        if n as u64 > size - w.offset() {
            return Err(url_failure(
                url,
                FailureKind::TooLarge { limit: size },
                format!("the file is longer than the {size} bytes the manifest allows; refused"),
            ));
        }
        w.write(&buf[..n]).map_err(|e| Attempt::Local(anyhow::Error::new(e).context("cannot write to the store")))?;
    }
    reporter.event(Event::Progress { label, done: w.offset() });
    Ok(())
}
