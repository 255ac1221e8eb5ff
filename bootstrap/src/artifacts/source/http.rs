//! HTTP(S) mirrors as artifact sources: rustls, proxies from the
//! environment, an extra CA for TLS interception; Range resume; transient
//! failures (connect errors, resets, timeouts, 5xx, 429, a body that trickles
//! below the speed limit) retried with bounded exponential backoff.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubestrap_fskit::{self as fskit, caps};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use url::Url;

use super::{ArtifactSource, Attempt, Ctx, FailureKind, SourceFailure};
use crate::artifacts::Options;
use crate::artifacts::store::BlobWriter;
use crate::progress::{Download, Event};
use crate::retry::Backoff;
use crate::urls;

/// The HTTP client cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--ca-cert {}: {reason}; give a file of PEM CA certificates (or unset KUBESTRAP_CA_CERT)", path.display())]
    CaCert { path: PathBuf, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Build(String),
}

/// Builds the HTTP client: rustls, proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY,
/// and the extra CA if one is given.
pub fn client(opts: &Options) -> Result<reqwest::blocking::Client, ClientError> {
    let mut b = reqwest::blocking::Client::builder()
        .user_agent(concat!("kubestrap/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.read_timeout);
    if let Some(path) = &opts.ca_cert {
        for c in ca_certs(path)? {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| ClientError::Build(describe_error(&e)))
}

fn ca_certs(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let bad = |reason: String| ClientError::CaCert { path: path.into(), reason };
    let pem = fskit::read_capped(path, caps::PEM_BUNDLE).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() || !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// A request error with its causes (DNS, TLS, connect…), on one line, with
/// any URL in it redacted.
pub fn describe_error(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    urls::redact_text(&s)
}

pub struct HttpSource {
    url: Url,
    client: Option<reqwest::blocking::Client>,
    opts: Options,
}

impl HttpSource {
    pub fn new(url: Url, client: Option<reqwest::blocking::Client>, opts: Options) -> HttpSource {
        HttpSource { url, client, opts }
    }

    fn fail(&self, kind: FailureKind, message: impl std::fmt::Display) -> Attempt {
        Attempt::Source(Box::new(SourceFailure::new(self, kind, message)))
    }
}

/// Whether an attempt may be retried on the same URL.
struct Transient(bool);

impl ArtifactSource for HttpSource {
    fn describe(&self) -> String {
        urls::redact(self.url.as_str())
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn fetch_into(&self, w: &mut BlobWriter, size: u64, ctx: &Ctx<'_>) -> Result<(), Attempt> {
        let Some(client) = &self.client else {
            return Err(self.fail(FailureKind::Network, "no HTTP client (offline)"));
        };
        let mut backoff = Backoff::new(self.opts.backoff, self.opts.max_backoff);
        let mut attempt = 0;
        loop {
            match self.once(client, w, size, ctx) {
                Ok(()) => return Ok(()),
                Err((Transient(true), Attempt::Source(f))) if attempt < self.opts.retries => {
                    let delay = backoff.next_delay().unwrap_or_default();
                    attempt += 1;
                    let source = self.describe();
                    ctx.progress.report(Event::Download(Download::Retry {
                        label: ctx.label,
                        source: &source,
                        attempt,
                        delay,
                        error: &f.message,
                    }));
                    std::thread::sleep(delay);
                }
                Err((_, e)) => return Err(e),
            }
        }
    }
}

impl HttpSource {
    /// One request to one URL, to the stored blob. Long on purpose: one
    /// exchange read in order (request, status, length, the stream with its
    /// stall and rate checks), each check beside the bytes it guards.
    fn once(
        &self,
        client: &reqwest::blocking::Client,
        w: &mut BlobWriter,
        size: u64,
        ctx: &Ctx<'_>,
    ) -> Result<(), (Transient, Attempt)> {
        let transient = |m: String| (Transient(true), self.fail(FailureKind::Network, m));
        let local = |e| (Transient(false), Attempt::Local(e));
        if w.offset() > size {
            w.restart().map_err(local)?;
        }
        if w.offset() == size {
            return Ok(());
        }
        let offset = w.offset();
        let mut req = client.get(self.url.clone());
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let mut resp = req.send().map_err(|e| {
            if is_certificate_error(&e) {
                // Deterministic: retrying cannot help; say how to fix it.
                let m = format!(
                    "{}; if this mirror is behind TLS interception, pass its CA with --ca-cert FILE (or KUBESTRAP_CA_CERT)",
                    describe_error(&e)
                );
                (Transient(false), self.fail(FailureKind::Network, m))
            } else {
                transient(describe_error(&e))
            }
        })?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    w.restart().map_err(local)?;
                    return Err(transient(format!(
                        "server answered a range starting at {start:?}, asked for {offset}; restarting"
                    )));
                }
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                if offset > 0 {
                    // The server ignored our Range: start over.
                    w.restart().map_err(local)?;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                w.restart().map_err(local)?;
                return Err(transient("server refused to resume (416); restarting".into()));
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                return Err(transient(format!("HTTP {s}")));
            }
            s => {
                let advice = if s == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                    " (check HTTPS_PROXY credentials)"
                } else {
                    ""
                };
                return Err((Transient(false), self.fail(FailureKind::Http(s.as_u16()), format!("HTTP {s}{advice}"))));
            }
        }
        let too_large = |m: String| (Transient(false), self.fail(FailureKind::TooLarge { limit: size }, m));
        if let Some(len) = resp.content_length()
            && len > size - w.offset()
        {
            return Err(too_large(format!(
                "the server announces {} bytes, more than the {size} the manifest allows; refused",
                len + w.offset()
            )));
        }
        let mut speed = SpeedCheck::new(self.opts.speed_limit, self.opts.speed_time, self.opts.attempt_timeout);
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
                return Err(too_large(format!(
                    "the body is longer than the {size} bytes the manifest allows; cut off and refused"
                )));
            }
            w.write(&buf[..n]).map_err(local)?;
            if let Some(m) = speed.add(n as u64) {
                // Resumed from here by the retry, or by the next mirror.
                return Err(transient(format!("{m} after {} of {size} bytes", w.offset())));
            }
            if last_report.elapsed() >= Duration::from_millis(100) {
                ctx.progress.report(Event::Download(Download::Progress { label: ctx.label, done: w.offset() }));
                last_report = Instant::now();
            }
        }
        ctx.progress.report(Event::Download(Download::Progress { label: ctx.label, done: w.offset() }));
        if w.offset() < size {
            return Err(transient(format!("the body ended after {} of {size} bytes", w.offset())));
        }
        Ok(())
    }
}

/// curl's `--speed-limit`/`--speed-time`: a body that delivers fewer than
/// `limit` bytes per second on average over `window` is given up on (a
/// server trickling one byte a second would otherwise hold a download
/// forever, since each read alone is quick).
/// An attempt also ends at `deadline` (the retry resumes where it stopped).
struct SpeedCheck {
    limit: u64,
    window: Duration,
    since: Instant,
    bytes: u64,
    deadline: Instant,
    timeout: Duration,
}

impl SpeedCheck {
    fn new(limit: u64, window: Duration, timeout: Duration) -> SpeedCheck {
        let now = Instant::now();
        SpeedCheck { limit, window, since: now, bytes: 0, deadline: now + timeout, timeout }
    }

    /// Counts `n` bytes; an error message once a whole window was too slow,
    /// or the attempt's time is up.
    fn add(&mut self, n: u64) -> Option<String> {
        self.bytes += n;
        if Instant::now() >= self.deadline {
            return Some(format!("this attempt took longer than {}s", self.timeout.as_secs()));
        }
        let elapsed = self.since.elapsed();
        if elapsed < self.window {
            return None;
        }
        let rate = self.bytes as f64 / elapsed.as_secs_f64();
        if self.limit > 0 && rate < self.limit as f64 {
            return Some(format!(
                "too slow: {rate:.0} bytes/s over {}s, under the limit of {} bytes/s (--speed-limit)",
                elapsed.as_secs(),
                self.limit
            ));
        }
        self.since = Instant::now();
        self.bytes = 0;
        None
    }
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
