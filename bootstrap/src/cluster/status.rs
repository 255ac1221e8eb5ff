//! `status`: what the driver, the apiserver and the kubeconfig say, as
//! typed states; the exit bitmask is computed from them.

use std::fmt;
use std::time::Duration;

use anyhow::Result;
use kubestrap_manifest::PkiFile;
use serde::{Serialize, Serializer};

use super::apiserver::Probe;
use super::kubeconfig;
use super::nodes::{HostSummary, NodeStatus, Readiness, Role};
use super::pki::Pki;
use crate::channel;
use crate::driver::{Driver, Host, HostState, Node};
use crate::home::Home;
use crate::profile::Profile;

/// Serializes a state as its display string (`"Running"`, `"Not ready (HTTP 500)"`).
macro_rules! display_serialize {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// The machine localkube runs on (the host process's, a VM, a container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStatus {
    Running,
    Stopped,
    /// A VM whose running state is saved (`kubestrap stop` of the qemu driver).
    Suspended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalkubeStatus {
    Running,
    /// Told to stop (an interrupted stop); on its way down.
    Stopping,
    Stopped,
    Crashed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiserverStatus {
    Running,
    Stopped,
    NotReady { code: u16 },
    NotAnswering { error: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeconfigStatus {
    Configured { current: bool },
    Misconfigured,
    Missing,
    Unreadable { error: String },
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostStatus::Running => "Running",
            HostStatus::Stopped => "Stopped",
            HostStatus::Suspended => "Suspended",
        })
    }
}

impl fmt::Display for LocalkubeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalkubeStatus::Running => "Running",
            LocalkubeStatus::Stopping => "Stopping",
            LocalkubeStatus::Stopped => "Stopped",
            LocalkubeStatus::Crashed => "Crashed",
        })
    }
}

impl fmt::Display for ApiserverStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiserverStatus::Running => f.write_str("Running"),
            ApiserverStatus::Stopped => f.write_str("Stopped"),
            ApiserverStatus::NotReady { code } => write!(f, "Not ready (HTTP {code})"),
            ApiserverStatus::NotAnswering { error } => write!(f, "Not answering ({error})"),
        }
    }
}

impl fmt::Display for KubeconfigStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeconfigStatus::Configured { current: true } => f.write_str("Configured (current context)"),
            KubeconfigStatus::Configured { current: false } => f.write_str("Configured"),
            KubeconfigStatus::Misconfigured => f.write_str("Misconfigured"),
            KubeconfigStatus::Missing => f.write_str("Missing"),
            KubeconfigStatus::Unreadable { error } => write!(f, "Unreadable ({error})"),
        }
    }
}

display_serialize!(HostStatus);
display_serialize!(LocalkubeStatus);
display_serialize!(ApiserverStatus);
display_serialize!(KubeconfigStatus);

/// A profile's state, minikube-style.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub driver: String,
    pub host: HostStatus,
    pub localkube: LocalkubeStatus,
    pub apiserver: ApiserverStatus,
    pub kubeconfig: KubeconfigStatus,
    pub kubernetes: String,
    pub manifest: String,
    pub server: String,
    /// The driver's name for the running localkube (`pid 1234`).
    pub host_id: Option<String>,
    /// The pid, for the native driver.
    pub pid: Option<i32>,
    /// Why localkube is not running, when it should be.
    pub crash: Option<String>,
    /// An upgrade a killed command left, to be finished or undone.
    pub upgrade: Option<String>,
    pub log_tail: Vec<String>,
    pub warnings: Vec<String>,
    /// Every node: the server, then each agent (host state and Ready).
    pub nodes: Vec<NodeStatus>,
    /// Bitmask: 1 host down, 2 localkube down, 4 apiserver not ready,
    /// 8 an agent node down or not Ready.
    pub exit_code: u8,
}

impl Status {
    /// The exit code's bits, as `status --help` says them.
    pub const BITS: [(u8, &'static str); 4] =
        [(1, "host down"), (2, "localkube down"), (4, "apiserver not ready"), (8, "an agent node down or not Ready")];

    /// 1 host down, 2 localkube down, 4 apiserver not ready, 8 an agent
    /// node down or not Ready (added).
    pub fn bitmask(&self) -> u8 {
        let down = [
            self.host != HostStatus::Running,
            self.localkube != LocalkubeStatus::Running,
            self.apiserver != ApiserverStatus::Running,
            self.nodes.iter().any(NodeStatus::agent_down),
        ];
        Self::BITS.iter().zip(down).filter(|(_, down)| *down).map(|((bit, _), _)| bit).sum()
    }

    /// The server's host and localkube from what the driver says; the
    /// running host, if any.
    fn set_host(&mut self, state: HostState, drv: &dyn Driver, p: &Profile) -> Option<Host> {
        let (host, stopping) = match state {
            HostState::Running(host) => (Some(host), false),
            HostState::Stopping(host) => (Some(host), true),
            HostState::Stopped => (None, false),
            HostState::Suspended => {
                self.host = HostStatus::Suspended;
                (None, false)
            }
            HostState::Crashed { how, host_down } => {
                self.host = if host_down { HostStatus::Stopped } else { HostStatus::Running };
                self.localkube = LocalkubeStatus::Crashed;
                self.crash = Some(how);
                self.log_tail = drv.log_tail(p, Node::Server, 20);
                (None, false)
            }
        };
        let host = host?;
        self.host = HostStatus::Running;
        self.localkube = if stopping { LocalkubeStatus::Stopping } else { LocalkubeStatus::Running };
        self.pid = host.pid;
        self.host_id = Some(host.id.clone());
        Some(host)
    }

    /// The localkube state as a node's host state.
    fn server_host(&self) -> HostSummary {
        match self.localkube {
            LocalkubeStatus::Running => HostSummary::Running,
            LocalkubeStatus::Stopping => HostSummary::Stopping,
            LocalkubeStatus::Stopped if self.host == HostStatus::Suspended => HostSummary::Suspended,
            LocalkubeStatus::Stopped => HostSummary::Stopped,
            LocalkubeStatus::Crashed => HostSummary::Crashed,
        }
    }
}

/// How long `status` waits for the apiserver's answer.
const STATUS_PROBE: Duration = Duration::from_secs(5);

/// A node of another machine's cluster: its agent's host here, and what
/// the server it joined says.
fn joined_status(p: &Profile, drv: &dyn Driver, joined: &crate::profile::Joined, mut st: Status) -> Status {
    st.server = joined.server.clone();
    let state = drv.status(p, Node::Server).unwrap_or(HostState::Stopped);
    st.set_host(state, drv, p);
    let ready = match super::join::remote_state(p, joined) {
        Ok((200, ready)) => {
            st.apiserver = ApiserverStatus::Running;
            ready
        }
        Ok((code, _)) => {
            st.apiserver = ApiserverStatus::NotReady { code };
            Readiness::Unknown
        }
        Err(error) => {
            st.apiserver = ApiserverStatus::NotAnswering { error };
            Readiness::Unknown
        }
    };
    st.nodes = vec![NodeStatus {
        name: joined.node.clone(),
        role: Role::Agent,
        host: st.server_host(),
        ready,
        crash: st.crash.clone(),
    }];
    st.warnings.push(format!("profile {:?} is node {} of the cluster at {}", st.name, joined.node, joined.server));
    st.exit_code = st.bitmask();
    st
}

/// What `status` says of profile `name`, in named steps: what the config
/// says → the server's host → the apiserver → the nodes → kubeconfig →
/// certificates.
pub fn status(home: &Home, name: &str, progress: &dyn crate::progress::Progress) -> Result<Status> {
    let p = Profile::new(home, name)?;
    let cfg = p.load()?;
    let drv = super::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), progress);
    let manifest = channel::peek(&cfg.manifest);
    let mut st = from_config(&p, &cfg, manifest.as_ref());
    if let Some(joined) = &cfg.join {
        return Ok(joined_status(&p, drv.as_ref(), joined, st));
    }
    let pki = Pki::new(p.pki());
    let host = st.set_host(drv.status(&p, Node::Server)?, drv.as_ref(), &p);
    let probe = match host {
        Some(host) => Some(ask_apiserver(&mut st, &pki, &cfg, &host, manifest.as_ref())?),
        None => None,
    };
    if st.localkube == LocalkubeStatus::Stopping {
        st.warnings.push(format!(
            "a stop of profile {name:?} was interrupted; localkube is shutting down. `kubestrap start -p {name}` waits for it and starts it again"
        ));
    }
    if let Some(u) = &st.upgrade {
        st.warnings.push(u.clone());
    }
    // Nodes are asked about only where there can be more than one: a
    // single-node status stays two requests.
    let several = !cfg.agents.is_empty() || cfg.listen.is_some();
    let probe = probe.filter(|_| st.apiserver == ApiserverStatus::Running && several);
    st.nodes = super::nodes::statuses(drv.as_ref(), &p, &cfg, st.server_host(), probe.as_ref());
    let down: Vec<&str> = st
        .nodes
        .iter()
        .filter(|n| n.role == Role::Agent && n.host != HostSummary::Running)
        .map(|n| n.name.as_str())
        .collect();
    if !down.is_empty() && st.localkube == LocalkubeStatus::Running {
        st.warnings.push(format!(
            "node(s) {} of profile {name:?} are not running: `kubestrap start -p {name}` starts them again",
            down.join(", ")
        ));
    }
    if p.deleting().exists() {
        st.warnings.push(format!(
            "a delete of profile {name:?} was cut short: `kubestrap delete -p {name}` finishes it (`kubestrap start -p {name}` finishes it, then starts the profile afresh)"
        ));
    }
    st.exit_code = st.bitmask();
    st.kubeconfig = kubeconfig_state(&mut st, home.env())?;
    certificate_warnings(&mut st, &pki);
    Ok(st)
}

/// Step "what the config says": everything stopped until asked.
fn from_config(p: &Profile, cfg: &crate::profile::Config, manifest: Option<&kubestrap_manifest::Manifest>) -> Status {
    Status {
        name: p.name.clone(),
        driver: cfg.driver.to_string(),
        host: HostStatus::Stopped,
        localkube: LocalkubeStatus::Stopped,
        apiserver: ApiserverStatus::Stopped,
        kubeconfig: KubeconfigStatus::Missing,
        kubernetes: manifest.map(|m| m.kubernetes.to_string()).unwrap_or_default(),
        manifest: manifest.map(|m| m.id()).unwrap_or_else(|| cfg.manifest.display().to_string()),
        server: cfg.endpoint().url(),
        host_id: None,
        pid: None,
        crash: None,
        upgrade: super::recovery::interrupted(p),
        log_tail: Vec::new(),
        warnings: Vec::new(),
        nodes: Vec::new(),
        exit_code: 0,
    }
}

/// Step "the apiserver": its readiness check and version, at the running
/// host's port. Returns the probe, for the nodes.
fn ask_apiserver(
    st: &mut Status,
    pki: &Pki,
    cfg: &crate::profile::Config,
    host: &Host,
    manifest: Option<&kubestrap_manifest::Manifest>,
) -> Result<Probe> {
    let at = crate::profile::Endpoint { port: host.port, ..cfg.endpoint() };
    st.server = at.url();
    // Long enough for a loaded VM under TCG (TLS handshakes are slow
    // there), short enough that a hung engine or VM is said quickly.
    let probe = Probe::new(pki, at, STATUS_PROBE)?;
    let ready = manifest.map_or("/readyz", |m| m.component.localkube.run.ready.as_str());
    match probe.get(ready) {
        Ok((200, _)) => {
            st.apiserver = ApiserverStatus::Running;
            if let Some(v) = probe.version() {
                st.kubernetes = v;
            }
        }
        Ok((code, _)) => st.apiserver = ApiserverStatus::NotReady { code },
        Err(error) => st.apiserver = ApiserverStatus::NotAnswering { error },
    }
    Ok(probe)
}

/// Step "kubeconfig": whether its context points at the cluster.
fn kubeconfig_state(st: &mut Status, env: &crate::env::Environment) -> Result<KubeconfigStatus> {
    let kc = kubeconfig::path(env)?;
    let name = st.name.clone();
    Ok(match kubeconfig::state(&kc, &kubeconfig::context_name(&name), &st.server) {
        Ok(kubeconfig::State::Configured { current }) => KubeconfigStatus::Configured { current },
        Ok(kubeconfig::State::Misconfigured { server }) => {
            st.warnings.push(format!(
                "kubeconfig points at {server}, the cluster is at {}; run `kubestrap start -p {name}` to fix it",
                st.server
            ));
            KubeconfigStatus::Misconfigured
        }
        Ok(kubeconfig::State::Missing) => KubeconfigStatus::Missing,
        Err(e) => KubeconfigStatus::Unreadable { error: e.to_string() },
    })
}

/// Step "certificates": those that expire within the renewal window.
fn certificate_warnings(st: &mut Status, pki: &Pki) {
    let Ok(exp) = pki.expiries() else { return };
    let name = &st.name;
    let soon = time::OffsetDateTime::now_utc() + super::pki::RENEW_BEFORE;
    for (f, at) in exp.into_iter().filter(|(_, at)| *at < soon) {
        let how = if f == PkiFile::CaCert {
            format!(
                "the cluster CA cannot be renewed in place: keep what you need, then `kubestrap delete -p {name}` and start again"
            )
        } else {
            format!("`kubestrap stop -p {name}` then `kubestrap start -p {name}` renews it")
        };
        st.warnings.push(format!("certificate {} expires {}; {how}", f.file_name(), kubestrap_manifest::rfc3339(at)));
    }
}
