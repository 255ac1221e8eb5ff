//! Joining another machine's cluster: `node join-command` on the server's
//! machine prints one line; `node join` runs it here. This machine's
//! profile then runs only an agent (the release's `run.agent`, on any
//! driver) joined to that server, as k3s's own agents join (its agent
//! protocol, `K10<ca sha256>::server:<secret>` tokens).
//!
//! Nothing is trusted on first use: the line carries the sha256 of the
//! server's CA, and the CA the server hands out (`/cacerts`) must have it
//! before the token is sent anywhere; the token is then checked against the
//! server (k3s's node-authenticated `/v1-k3s/readyz`) before anything is
//! fetched or started. The token is kept beside nothing else of a PKI
//! (`pki/join/token`, 0600) and never printed.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_fskit as fskit;
use kubestrap_manifest::Run;
use sha2::Digest;

use super::ClusterError;
use super::bringup::{launch_of, preflight};
use super::components::fetch_and_unpack;
use super::nodes::{NotUp, Readiness};
use super::release::{self, ReleaseRequest};
use super::session::{Force, Session, Wait};
use crate::driver::{self, HostState, JoinTarget, Node, Stop};
use crate::home::Home;
use crate::profile::{Config, Joined, Profile};
use crate::progress::{Progress, Step};

/// What `node join` is asked.
pub struct JoinOptions {
    /// The profile to make, the release and driver to run it on.
    pub profile: String,
    pub release: ReleaseRequest,
    pub driver: Option<kubestrap_manifest::Driver>,
    /// Whether to wait for another command that holds the profile.
    pub wait: Wait,
    /// How long the node may take to be Ready (the release's agent
    /// timeout, when it names one, over this).
    pub wait_timeout: Duration,
    /// The server, `https://HOST:PORT`.
    pub server: String,
    /// The join token (read from `--token-file`, never from the command line).
    pub token: String,
    /// `--ca-sha256`: the server CA's fingerprint (else the token's `K10` prefix).
    pub ca_sha256: Option<String>,
    /// This node's name in the cluster.
    pub node: Option<String>,
}

/// A parsed join token: the CA hash it pins (when it is a full token) and
/// the secret sent to the server.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    pub ca_sha256: Option<String>,
    /// The user it names (`server`, `node`): k3s's agent authenticates as
    /// that user, and as `node` when the token names none
    /// (pkg/clientaccess/token.go).
    pub user: Option<String>,
    pub secret: String,
}

impl Token {
    /// `K10<sha256>::<user>:<secret>`, `K10<sha256>::<secret>` or a bare secret.
    pub fn parse(text: &str) -> Result<Token, ClusterError> {
        let t = text.trim();
        let bad = |why: &str| ClusterError::JoinRefused { server: String::new(), why: format!("the join token {why}") };
        if t.is_empty() || t.len() > 512 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("is empty, too long, or holds spaces"));
        }
        let Some((hash, creds)) = t.strip_prefix("K10").and_then(|r| r.split_once("::")) else {
            return Ok(Token { ca_sha256: None, user: None, secret: t.to_string() });
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("has a K10 prefix but no sha256 after it"));
        }
        let (user, secret) = match creds.split_once(':') {
            Some((u, s)) if !u.is_empty() => (Some(u.to_string()), s),
            Some((_, s)) => (None, s),
            None => (None, creds),
        };
        if secret.is_empty() {
            return Err(bad("has no secret"));
        }
        Ok(Token { ca_sha256: Some(hash.to_ascii_lowercase()), user, secret: secret.to_string() })
    }
}

/// `https://HOST:PORT` → (host, port).
fn parse_server(url: &str) -> Result<(String, u16), ClusterError> {
    let bad = || ClusterError::JoinRefused {
        server: crate::urls::redact(url),
        why: "expected the server as https://HOST:PORT (what `kubestrap node join-command` prints)".into(),
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !ok {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The CA hash a join token pins, as k3s computes it
/// (pkg/clientaccess/token.go `hashCA`; k3s's token docs): the sha256 of
/// `/cacerts` as served when it is one certificate; of the root
/// certificate's DER (its fingerprint) when it is a bundle (a custom CA
/// with intermediates).
fn ca_hash(cacerts: &[u8]) -> String {
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(cacerts)
        .filter_map(|p| p.ok())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect();
    if ders.len() > 1 {
        let root = ders.iter().find(|d| {
            x509_parser::parse_x509_certificate(d).is_ok_and(|(_, c)| c.issuer().as_raw() == c.subject().as_raw())
        });
        if let Some(root) = root.or(ders.last()) {
            return hex::encode(sha2::Sha256::digest(root));
        }
    }
    hex::encode(sha2::Sha256::digest(cacerts))
}

/// The server's CA, fetched without trusting anything, then checked
/// against the fingerprint; and the token, checked against the server.
/// Returns a client that trusts that CA only.
fn check_server(url: &str, want: &str, token: &Token) -> Result<Remote, ClusterError> {
    let refused = |why: String| ClusterError::JoinRefused { server: url.to_string(), why };
    let insecure = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| refused(format!("cannot set up a client: {e}")))?;
    let resp = insecure
        .get(format!("{url}/cacerts"))
        .send()
        .map_err(|e| refused(format!("it does not answer: {}", crate::artifacts::source::describe_error(&e))))?;
    if !resp.status().is_success() {
        return Err(refused(format!("its /cacerts answered HTTP {}", resp.status().as_u16())));
    }
    let mut ca = Vec::new();
    resp.take(64 << 10).read_to_end(&mut ca).map_err(|e| refused(format!("reading its CA: {e}")))?;
    let got = ca_hash(&ca);
    if !got.eq_ignore_ascii_case(want) {
        return Err(refused(format!(
            "its CA certificate has sha256 {got}, not {want} as the join line says: this is not that cluster's server \
             (or someone is in between). Nothing was sent to it"
        )));
    }
    let cert =
        reqwest::Certificate::from_pem(&ca).map_err(|e| refused(format!("its CA is not a PEM certificate: {e}")))?;
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| refused(format!("cannot set up a client: {e}")))?;
    let user = token.user.clone().unwrap_or_else(|| "node".into());
    let remote = Remote { client, base: url.to_string(), user, secret: token.secret.clone() };
    match remote.get("/v1-k3s/readyz") {
        Ok((200, _)) => Ok(remote),
        Ok((401 | 403, _)) => {
            Err(refused("it refused the join token (HTTP 401): the token is wrong or was replaced".into()))
        }
        Ok((code, body)) => Err(refused(format!("it is not ready to take nodes (HTTP {code}: {})", body.trim()))),
        Err(e) => Err(refused(e)),
    }
}

/// The joined server, asked with the node credentials k3s agents use
/// (HTTP basic `node:<secret>`).
struct Remote {
    client: reqwest::blocking::Client,
    base: String,
    user: String,
    secret: String,
}

impl Remote {
    fn send(&self, method: reqwest::Method, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.secret))
            .send()
            .map_err(|e| crate::artifacts::source::describe_error(&e))?;
        let code = resp.status().as_u16();
        let mut body = String::new();
        let _ = resp.take(1 << 20).read_to_string(&mut body);
        Ok((code, body))
    }
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.send(reqwest::Method::GET, path)
    }

    /// The node's Ready condition; `Unknown` when the server does not say
    /// to node credentials (a real k3s shows Nodes only to the cluster's users).
    fn node_ready(&self, node: &str) -> Result<Readiness, String> {
        match self.get(&format!("/api/v1/nodes/{node}"))? {
            (200, body) => super::nodes::ready_in(&body),
            (404, _) => Ok(Readiness::NotReady),
            (401 | 403, _) => Ok(Readiness::Unknown),
            (code, body) => Err(format!("HTTP {code}: {}", body.trim())),
        }
    }
}

/// A DNS label from this machine's hostname and the profile.
fn default_node_name(profile: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let host: String = host
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!("{}-{profile}", host.trim_matches('-'));
    let name: String = name.trim_matches('-').chars().take(63).collect();
    if name.is_empty() { format!("node-{profile}") } else { name.trim_end_matches('-').to_string() }
}

/// What `node join` did.
pub struct JoinedNode {
    pub profile: String,
    pub node: String,
    pub server: String,
    pub host: String,
    /// Whether the server confirmed the node Ready (None: it does not say
    /// to node credentials).
    pub ready: Option<bool>,
}

/// `node join`, as named steps: the profile may join → the join line is
/// well formed → the server is the one it names and takes the token → the
/// release → the driver → the profile recorded → the agent started and
/// Ready.
pub fn join(home: &Home, j: &JoinOptions, progress: &dyn Progress) -> Result<JoinedNode> {
    let s = Session::open(home, &j.profile, j.wait, progress)?;
    let p = &s.profile;
    let existing = if p.exists() { Some(p.load()?) } else { None };
    may_join(p, existing.as_ref(), &j.server)?;
    let line = JoinLine::check(j)?;
    let t = Instant::now();
    let remote = check_server(&line.url, &line.ca_sha256, &line.token)?;
    progress.step(Step::ServerChecked { server: line.url.clone(), ca_sha256: line.ca_sha256.clone() }, t.elapsed());

    let (loaded, fetch) = release::resolve(home, &j.release, p, existing.as_ref(), None, progress)?;
    let m = &loaded.manifest;
    let Some(agent) = &m.component.localkube.run.agent else {
        return Err(ClusterError::NodesUnsupported {
            profile: p.name.clone(),
            nodes: 2,
            why: format!("release {} has no agent command line (run.agent): it cannot join a cluster", m.id()),
        }
        .into());
    };
    if let Some(why) = &agent.no_remote_join {
        return Err(ClusterError::NoRemoteJoin { profile: p.name.clone(), release: m.id(), why: why.clone() }.into());
    }
    let kind = match (existing.as_ref(), j.driver) {
        (Some(c), _) => c.driver,
        (None, Some(d)) => d,
        (None, None) => {
            let (k, why) = driver::default_for(m, home.env());
            progress.step(Step::DriverChosen { driver: k.as_str(), why }, Duration::ZERO);
            k
        }
    };
    let settings = super::bringup::merge_settings(None, existing.as_ref()).unwrap_or_default();
    let s = s.with_driver(kind, settings);
    let (p, drv) = (&s.profile, s.driver());
    preflight(drv, p, m)?;
    let node = existing
        .as_ref()
        .and_then(|c| c.join.as_ref().map(|x| x.node.clone()))
        .or_else(|| j.node.clone())
        .unwrap_or_else(|| default_node_name(&p.name));
    super::nodes::check_node_name(&node)?;
    let cfg = Config {
        name: p.name.clone(),
        driver: kind,
        manifest: loaded.path.clone(),
        port: line.port,
        port_pinned: true,
        created: existing.as_ref().map_or_else(crate::state::now, |c| c.created.clone()),
        previous: None,
        vm: Some(settings).filter(|s| *s != Default::default()),
        address: None,
        agents: Vec::new(),
        listen: None,
        publish: Vec::new(),
        join: Some(Joined { server: line.url.clone(), ca_sha256: line.ca_sha256.clone(), node: node.clone() }),
    };
    record(p, existing.as_ref(), &cfg, &j.token)?;
    let (host, ready) = run_joined(&s, &loaded, &cfg, &fetch, &remote, j.wait_timeout)?;
    Ok(JoinedNode { profile: p.name.clone(), node, server: line.url, host, ready })
}

/// Step "the profile may join": a new profile, or one that is already a
/// node of that very server.
fn may_join(p: &Profile, existing: Option<&Config>, server: &str) -> Result<(), ClusterError> {
    let Some(c) = existing else { return Ok(()) };
    let what = match &c.join {
        Some(x) if x.server == server => return Ok(()),
        Some(x) => format!("is a node of {}", x.server),
        None => "runs a cluster of its own".to_string(),
    };
    Err(ClusterError::JoinRefused {
        server: server.to_string(),
        why: format!("profile {:?} exists and {what}; join with another -p, or delete it first", p.name),
    })
}

/// The join line, checked before anything is sent anywhere.
struct JoinLine {
    /// The server, `https://HOST:PORT`, and its port.
    url: String,
    port: u16,
    token: Token,
    /// The CA the server must have (lowercase hex).
    ca_sha256: String,
}

impl JoinLine {
    /// Step "the join line": the server's URL, the token, the node's name
    /// and the CA fingerprint (from `--ca-sha256` or the token, agreeing
    /// when both name one).
    fn check(j: &JoinOptions) -> Result<JoinLine, ClusterError> {
        let url = j.server.trim_end_matches('/').to_string();
        let (_, port) = parse_server(&url)?;
        let refused = |why: String| ClusterError::JoinRefused { server: url.clone(), why };
        let token = Token::parse(&j.token).map_err(|e| match e {
            ClusterError::JoinRefused { why, .. } => refused(why),
            other => other,
        })?;
        if let Some(node) = &j.node {
            super::nodes::check_node_name(node)?;
        }
        if let Some(h) = &j.ca_sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(refused(format!(
                "--ca-sha256 {h:?}: expected 64 hex digits (what `kubestrap node join-command` prints)"
            )));
        }
        let want = j.ca_sha256.clone().or_else(|| token.ca_sha256.clone()).ok_or_else(|| {
            refused(
                "neither --ca-sha256 nor the token (K10<sha256>::…) names the server's CA: kubestrap trusts no server \
                 on first use"
                    .into(),
            )
        })?;
        if let (Some(a), Some(b)) = (&j.ca_sha256, &token.ca_sha256)
            && !a.eq_ignore_ascii_case(b)
        {
            return Err(refused("--ca-sha256 and the token name different CAs".into()));
        }
        Ok(JoinLine { url: url.clone(), port, token, ca_sha256: want.to_ascii_lowercase() })
    }
}

/// Step "record": the profile's directory, its join token (0600, never
/// printed) and its config.
fn record(p: &Profile, existing: Option<&Config>, cfg: &Config, token: &str) -> Result<()> {
    fskit::create_dir_mode(&p.dir, 0o700)?;
    fskit::create_dir_mode(&p.join_dir(), 0o700)?;
    fskit::write_atomic(&p.join_token(), format!("{}\n", token.trim()).as_bytes(), 0o600)?;
    if existing != Some(cfg) {
        p.save(cfg)?;
    }
    Ok(())
}

/// A joined profile's `start`: its agent again, to the server it joined.
pub fn restart(s: &Session, cfg: &Config, release: &ReleaseRequest, wait: Duration) -> Result<JoinedNode> {
    let p = &s.profile;
    let joined = cfg.join.as_ref().expect("a joined profile");
    let token = Token::parse(&p.load_join_token()?)?;
    let t = Instant::now();
    let remote = check_server(&joined.server, &joined.ca_sha256, &token)?;
    s.progress
        .step(Step::ServerChecked { server: joined.server.clone(), ca_sha256: joined.ca_sha256.clone() }, t.elapsed());
    let (loaded, fetch) = release::resolve(s.home, release, p, Some(cfg), None, s.progress)?;
    let (host, ready) = run_joined(s, &loaded, cfg, &fetch, &remote, wait)?;
    Ok(JoinedNode { profile: p.name.clone(), node: joined.node.clone(), server: joined.server.clone(), host, ready })
}

/// The release's agent command line, as the run a joined profile's driver runs.
fn agent_run(run: &Run) -> Run {
    let mut r = run.clone();
    if let Some(a) = &run.agent {
        r.args = a.args.clone();
    }
    // An agent's readiness is its Node's, asked of the server (not here).
    r.node_ready = false;
    r
}

/// Starts (or finds running) the joined node's agent and waits until the
/// server says it is Ready (or, where the server does not say to node
/// credentials, until it has run steadily for a few seconds).
fn run_joined(
    s: &Session,
    loaded: &crate::channel::Loaded,
    cfg: &Config,
    fetch: &crate::artifacts::Options,
    remote: &Remote,
    wait: Duration,
) -> Result<(String, Option<bool>)> {
    let (p, progress, drv) = (&s.profile, s.progress, s.driver());
    let joined = cfg.join.as_ref().expect("a joined profile");
    let m = &loaded.manifest;
    let (server, port) = parse_server(&joined.server)?;
    let components = fetch_and_unpack(s.home, m, drv.kind(), fetch, progress)?;
    let mut launch = launch_of(p, m, components, cfg);
    launch.run = agent_run(&m.component.localkube.run);
    launch.join = Some(JoinTarget { server, port, node: joined.node.clone() });
    let run = &launch.run;
    let host = match drv.status(p, Node::Server)? {
        HostState::Running(h) => {
            drv.adopt(p)?;
            h
        }
        state => {
            if matches!(state, HostState::Stopping(_) | HostState::Crashed { .. }) {
                drv.stop(p, Node::Server, Stop::of(run))?;
            }
            drv.create(&launch, Node::Server)?;
            let t = Instant::now();
            let h = drv.start(&launch, Node::Server)?;
            progress.step(Step::NodeStarted { node: joined.node.clone(), host: h.id.clone() }, t.elapsed());
            h
        }
    };
    let timeout = m.component.localkube.run.agent.as_ref().map_or(wait, |a| Duration::from_secs(a.ready_timeout_s));
    // Asked for by the name it joined with.
    let ask = |name: &str| remote.node_ready(name);
    let log = p.log_file().display().to_string();
    let node = [(Node::Server, joined.node.clone())];
    match super::nodes::wait_ready(drv, p, &node, &ask, Instant::now() + timeout, progress) {
        Ok(said) if said.first() == Some(&Readiness::Ready) => Ok((host.id, Some(true))),
        Ok(_) => {
            // The server does not show Nodes to node credentials: running
            // steadily for 5 s is what can be seen from here.
            progress.warn(format!(
                "the server does not show its nodes to a joining node: see node {} with `kubectl get nodes` on the \
                 server's machine",
                joined.node
            ));
            Ok((host.id, None))
        }
        Err(NotUp::Ended { .. }) => Err(ClusterError::LocalkubeExited {
            what: format!("the agent of node {} ended before it was Ready", joined.node),
            log,
            tail: super::nodes::tail_text(&drv.log_tail(p, Node::Server, 20)),
            advice: format!("The log above says why; see also `kubestrap logs -p {}`", p.name),
        }
        .into()),
        Err(NotUp::Timeout { last, .. }) => {
            let _ = drv.stop(p, Node::Server, Stop::of(run));
            Err(ClusterError::NotReady {
                what: format!(
                    "node {} was not Ready after {}s ({last}); its agent was stopped",
                    joined.node,
                    timeout.as_secs()
                ),
                log,
                tail: super::nodes::tail_text(&drv.log_tail(p, Node::Server, 20)),
                advice: format!("Retry with `kubestrap start -p {}`, or see `kubestrap logs -p {}`", p.name, p.name),
            }
            .into())
        }
    }
}

/// `node leave`: the joined node's agent stopped and removed, its Node
/// object removed from the server (where node credentials may), and the
/// profile deleted.
pub fn leave(home: &Home, name: &str, force: Force, progress: &dyn Progress) -> Result<String> {
    let s = Session::open_existing(home, name, Wait::Yes, progress)?;
    let p = &s.profile;
    let cfg = p.load()?;
    let Some(joined) = cfg.join.clone() else {
        return Err(ClusterError::NotJoined { profile: p.name.clone() }.into());
    };
    let drv = s.driver();
    let how = crate::channel::peek(&cfg.manifest).map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
    drv.stop(p, Node::Server, how)?;
    let removed = Token::parse(&p.load_join_token()?)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(check_server(&joined.server, &joined.ca_sha256, &t)?))
        .and_then(|r| {
            r.send(reqwest::Method::DELETE, &format!("/api/v1/nodes/{}", joined.node)).map_err(anyhow::Error::msg)
        });
    match removed {
        Ok((200 | 202 | 404, _)) => {}
        Ok((code, _)) => progress.warn(format!(
            "the server kept node {}'s object (HTTP {code}): remove it there with `kubestrap node delete {}`",
            joined.node, joined.node
        )),
        Err(e) if force == Force::Yes => {
            progress.warn(format!("{e:#}; the node's object stays on the server (--force)"))
        }
        Err(e) => {
            return Err(e.context(format!(
                "node {} is stopped but its object could not be removed from {}; `kubestrap node leave -p {} --force` \
                 removes the profile anyway",
                joined.node, joined.server, p.name
            )));
        }
    }
    super::stop::delete_locked(&s, force)?;
    Ok(joined.node)
}

/// `node join-command`: the one line a second machine runs to join this
/// cluster. Carries the token (a secret: printed only when asked for).
pub fn join_command(home: &Home, name: &str) -> Result<String> {
    let p = Profile::new(home, name)?;
    let cfg = p.load()?;
    if let Some(j) = &cfg.join {
        let (node, server) = (j.node.clone(), j.server.clone());
        return Err(ClusterError::IsJoined { profile: p.name.clone(), node, server }.into());
    }
    let Some(at) = cfg.listen else {
        return Err(ClusterError::NotListening { profile: p.name.clone() }.into());
    };
    let manifest = crate::channel::peek(&cfg.manifest);
    let release = manifest.as_ref().map(|m| m.id()).unwrap_or_default();
    if let Some(why) =
        manifest.as_ref().and_then(|m| m.component.localkube.run.agent.as_ref()).and_then(|a| a.no_remote_join.clone())
    {
        return Err(ClusterError::NoRemoteJoin { profile: p.name.clone(), release, why }.into());
    }
    let pki = super::pki::Pki::new(p.pki());
    let token = pki.join_token()?;
    let ca = pki.ca_sha256()?;
    Ok(format!(
        "printf '%s\\n' '{token}' | kubestrap node join https://{at}:{} --ca-sha256 {ca} --token-file - # release {release}",
        cfg.port
    ))
}

/// What the joined server says now: its `/v1-k3s/readyz` code (or why it
/// did not answer), and this node's Ready (Unknown: not shown to node credentials).
pub fn remote_state(p: &Profile, joined: &Joined) -> Result<(u16, Readiness), String> {
    let token = p.load_join_token().map_err(|e| e.to_string())?;
    let token = Token::parse(&token).map_err(|e| e.to_string())?;
    let remote = check_server(&joined.server, &joined.ca_sha256, &token).map_err(|e| e.to_string())?;
    let code = remote.get("/v1-k3s/readyz")?.0;
    Ok((code, remote.node_ready(&joined.node)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_their_user() {
        let h = "a".repeat(64);
        let t = Token::parse(&format!("K10{h}::server:s3cret\n")).unwrap();
        assert_eq!(
            (t.ca_sha256.as_deref(), t.user.as_deref(), t.secret.as_str()),
            (Some(&h[..]), Some("server"), "s3cret")
        );
        let t = Token::parse(&format!("K10{h}::s3cret")).unwrap();
        assert_eq!((t.user, t.secret.as_str()), (None, "s3cret"));
        let t = Token::parse("bare").unwrap();
        assert_eq!((t.ca_sha256, t.user, t.secret.as_str()), (None, None, "bare"));
        assert!(Token::parse(&format!("K10{h}::node:")).is_err());
    }

    #[test]
    fn a_ca_bundle_is_hashed_by_its_root_as_k3s_hashes_it() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca("root").self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate().unwrap();
        let mid = ca("intermediate").signed_by(&mid_key, &root, &root_key).unwrap();
        // One certificate: the bytes as served.
        let one = root.pem();
        assert_eq!(ca_hash(one.as_bytes()), hex::encode(sha2::Sha256::digest(one.as_bytes())));
        // A bundle (intermediate first): the root's DER, wherever it is.
        let bundle = format!("{}{}", mid.pem(), root.pem());
        assert_eq!(ca_hash(bundle.as_bytes()), hex::encode(sha2::Sha256::digest(root.der())));
    }
}
