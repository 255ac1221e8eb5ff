//! `agent`: a node that joins a server, in k3s's shape (`k3s agent --server
//! URL --token-file F --node-name N`). It fetches the server's CA from
//! `/cacerts` and, when the token is a full one (`K10<sha256>::…`), refuses a
//! server whose CA has another hash (pkg/clientaccess/token.go); then it
//! registers its Node with the token's secret and renews it every second
//! until SIGTERM. A 404 on renewal (the node object deleted) registers again,
//! as a kubelet does.
//!
//! Its data dir keeps `agent/state`, the version that last ran on it, as a
//! k3s agent's containerd keeps a store a newer release migrates: an older
//! agent refuses a state a newer one wrote, so a rollback must bring the
//! agent's state back with the server's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use sha2::Digest;

#[derive(Args)]
pub struct AgentArgs {
    /// The server: https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The join token's file (K3S_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    node_name: String,
    #[arg(long)]
    node_ip: Option<String>,
    #[arg(long)]
    data_dir: PathBuf,
    /// k3s-style flags accepted for their shape only.
    #[arg(long)]
    private_registry: Option<PathBuf>,
    #[arg(long)]
    kubelet_arg: Vec<String>,
    /// k3s: the interface flannel's VXLAN uses (else the default route's).
    #[arg(long)]
    flannel_iface: Option<String>,
    /// How often the node renews its status.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
}

/// The token's CA hash, user (`node` when it names none, as k3s's agent
/// does) and secret.
fn parse_token(token: &str) -> (Option<String>, String, String) {
    let t = token.trim();
    match t.strip_prefix("K10").and_then(|r| r.split_once("::")) {
        Some((hash, creds)) => {
            let (user, secret) = match creds.split_once(':') {
                Some((u, pw)) if !u.is_empty() => (u, pw),
                Some((_, pw)) => ("node", pw),
                None => ("node", creds),
            };
            (Some(hash.to_string()), user.to_string(), secret.to_string())
        }
        None => (None, "node".into(), t.to_string()),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn main(a: AgentArgs) -> Result<()> {
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?
        }
        (None, None) => bail!("--token or --token-file is required to join a server"),
    };
    let (want_hash, user, secret) = parse_token(&token);
    let base = a.server.trim_end_matches('/').to_string();
    anyhow::ensure!(base.starts_with("https://"), "--server {base}: expected an https:// URL");
    let version = crate::read_version()?;
    // k3s mode: what a k3s agent does first, fatal where it is fatal.
    let k3s = if crate::k3s_mode() { Some(k3s_checks(&a, &version)?) } else { None };
    claim_state(&a.data_dir, &version)?;
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let handler = nix::sys::signal::SigHandler::Handler(on_signal);
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::signal(sig, handler) }.context("installing a signal handler")?;
    }

    // The CA, fetched before anything is trusted, then checked against the token.
    let insecure = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let cacerts = retry("fetching the server's CA", || {
        let r = insecure.get(format!("{base}/cacerts")).send()?.error_for_status()?;
        Ok(r.bytes()?.to_vec())
    })?;
    let got = hex::encode(sha2::Sha256::digest(&cacerts));
    match &want_hash {
        Some(h) if *h != got => {
            bail!("the server at {base} has CA sha256 {got}, not the {h} the token names: refusing to join it")
        }
        Some(_) => eprintln!("standin-agent: the server's CA matches the token (sha256 {got})"),
        None => eprintln!("standin-agent: warning: the token pins no CA; trusting the server's (sha256 {got})"),
    }
    let ca = reqwest::Certificate::from_pem(&cacerts).context("the server's /cacerts is not a PEM certificate")?;
    // Short: a heartbeat on a connection a suspend left stale fails fast,
    // and the next one opens a new one.
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;

    let mut node = crate::nodes::node_object(&a.node_name, a.node_ip.as_deref(), &version, false);
    if let Some(found) = k3s {
        node["metadata"]["annotations"] = found;
    }
    let register = || -> Result<()> {
        let r = client
            .post(format!("{base}/api/v1/nodes"))
            .basic_auth(&user, Some(&secret))
            .header("Content-Type", "application/json")
            .body(node.to_string())
            .send()?;
        match r.status().as_u16() {
            201 | 409 => Ok(()),
            401 => bail!("the server at {base} refused the join token (HTTP 401)"),
            c => bail!("registering node {}: HTTP {c}: {}", a.node_name, r.text().unwrap_or_default()),
        }
    };
    retry("registering the node", || register().map_err(Fatal::or_retry))?;
    eprintln!("standin-agent: node {} registered with {base}", a.node_name);
    let beat = json!({"status": {"nodeInfo": {"kubeletVersion": version}}});
    let url = format!("{base}/api/v1/nodes/{}/status", a.node_name);
    let mut failing = false;
    while !STOP.load(Ordering::SeqCst) {
        let r = client
            .patch(&url)
            .basic_auth(&user, Some(&secret))
            .header("Content-Type", "application/merge-patch+json")
            .body(beat.to_string())
            .send();
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => {
                if failing {
                    eprintln!("standin-agent: the server answers again");
                }
                failing = false;
            }
            Ok(404) => {
                eprintln!("standin-agent: node {} is gone from the server; registering again", a.node_name);
                if let Err(e) = register() {
                    eprintln!("standin-agent: {e:#}");
                }
            }
            Ok(401) => bail!("the server at {base} no longer takes the join token (HTTP 401)"),
            other => {
                if !failing {
                    eprintln!("standin-agent: renewing the node failed ({other:?}); retrying");
                }
                failing = true;
            }
        }
        sleep_unless_stopped(Duration::from_millis(a.heartbeat_ms));
    }
    eprintln!("standin-agent: stopping");
    Ok(())
}

/// k3s mode: the agent reads its config as k3s does (a named file that is
/// missing is fatal before v1.29.8), chooses flannel's interface (no
/// default route and no `--flannel-iface` is fatal), and lists the image
/// archives its containerd would import from `<data-dir>/agent/images`
/// (pkg/agent/config/config.go): what it found, as the Node's annotations
/// `standin.kubestrap.dev/{flannel,images}`.
fn k3s_checks(a: &AgentArgs, version: &str) -> Result<serde_json::Value> {
    let flags = crate::k3s::Flags {
        data_dir: a.data_dir.clone(),
        node_name: Some(a.node_name.clone()),
        private_registry: a.private_registry.clone(),
        flannel_iface: a.flannel_iface.clone(),
        ..Default::default()
    };
    crate::k3s::config::effective(&flags).refuse_missing(version)?;
    let node_ip = a.node_ip.as_deref().and_then(|s| s.parse().ok());
    let flannel = crate::k3s::podnet::flannel_vxlan(a.flannel_iface.as_deref(), node_ip)?;
    eprintln!("standin-agent: flannel: {:?}: {}", flannel.status, flannel.detail);
    let images = crate::image_archives(&a.data_dir.join("agent/images"));
    for n in &images {
        eprintln!("standin: image archive {n}");
    }
    let status = serde_json::to_value(flannel.status)?;
    Ok(json!({
        "standin.kubestrap.dev/flannel": format!("{}: {}", status.as_str().unwrap_or_default(), flannel.detail),
        "standin.kubestrap.dev/images": images.join(","),
    }))
}

/// `v1.33.4+standin` as numbers.
fn release(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v').split(['+', '-']).next()?;
    let mut n = core.split('.').map(|x| x.parse::<u64>().ok());
    Some((n.next()??, n.next()??, n.next()??))
}

/// The agent's state is this version's from now on; one a newer version
/// wrote is refused.
fn claim_state(data_dir: &Path, version: &str) -> Result<()> {
    let dir = data_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("state");
    if let Ok(prev) = std::fs::read_to_string(&path)
        && release(&prev) > release(version)
    {
        bail!(
            "{}: the agent's state was written by {}, newer than this agent ({version}); it cannot be read by an older one",
            path.display(),
            prev.trim()
        );
    }
    let tmp = dir.join("state.tmp");
    std::fs::write(&tmp, format!("{version}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn sleep_unless_stopped(d: Duration) {
    let until = std::time::Instant::now() + d;
    while !STOP.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An error that retrying does not cure.
#[derive(Debug)]
struct Fatal(anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}
impl std::error::Error for Fatal {}

impl Fatal {
    /// A refusal is final; a connection error is retried.
    fn or_retry(e: anyhow::Error) -> anyhow::Error {
        if e.downcast_ref::<reqwest::Error>().is_some() { e } else { anyhow::Error::new(Fatal(e)) }
    }
}

/// Retries `f` (the server may still be starting) for up to 120 s.
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut said = false;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
            Err(e) if std::time::Instant::now() >= deadline || STOP.load(Ordering::SeqCst) => {
                return Err(e.context(format!("{what} (gave up after 120 s)")));
            }
            Err(e) => {
                if !said {
                    eprintln!("standin-agent: {what}: {e:#}; retrying");
                    said = true;
                }
                sleep_unless_stopped(Duration::from_millis(250));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_full_and_bare() {
        assert_eq!(parse_token("K10abc::server:s3cret\n"), (Some("abc".into()), "server".into(), "s3cret".into()));
        assert_eq!(parse_token("K10abc::s3cret"), (Some("abc".into()), "node".into(), "s3cret".into()));
        assert_eq!(parse_token("plain"), (None, "node".into(), "plain".into()));
        assert_eq!(crate::server::token_secret("K10abc::server:s3cret"), "s3cret");
        assert_eq!(crate::server::token_secret("plain\n"), "plain");
    }

    #[test]
    fn a_state_a_newer_agent_wrote_is_refused() {
        let d = tempfile::tempdir().unwrap();
        claim_state(d.path(), "v1.32.4+standin").unwrap();
        claim_state(d.path(), "v1.33.4+standin").unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("agent/state")).unwrap(), "v1.33.4+standin\n");
        let e = claim_state(d.path(), "v1.32.4+standin").unwrap_err().to_string();
        assert!(e.contains("written by v1.33.4+standin, newer than this agent (v1.32.4+standin)"), "{e}");
        claim_state(d.path(), "v1.33.4+standin").unwrap();
    }
}
