//! The nodes of a profile's cluster, as bring-up, `node add`, `node join`,
//! upgrade and `status` all use them. A profile's server is node 1; its
//! agents (`m02`, `m03`…, kept in the config's `agents`) run the release's
//! `run.agent` command line on a driver that runs agents and join the
//! server with the join token. Every node is driven through the same
//! [`Driver`] methods, named by [`Node`]. A node counts as up when its
//! Node object reports Ready through the server's API (asked with the
//! admin certificate, or with node credentials by a joined machine).
//!
//! The `node` commands are in `node_cmd`, above bring-up; this file is
//! below it.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::{ComponentName, Manifest, Target};
use serde::{Serialize, Serializer};

use super::ClusterError;
use super::apiserver::Probe;
use super::pki::Pki;
use crate::artifacts::store;
use crate::channel;
use crate::driver::{AgentNode, Driver, DriverError, HostState, Launch, Node, Stop, StopOutcome};
use crate::home::Home;
use crate::profile::{Config, Endpoint, Profile};
use crate::progress::{Progress, Step};
use crate::retry::Backoff;

/// The most nodes a profile may have (the server and 98 agents).
pub const MAX_NODES: usize = 99;

/// A Kubernetes node name: an RFC 1123 subdomain (lowercase letters,
/// digits, '-' and '.', at most 253), so that it is one path segment of
/// the API and one argument, never anything else.
pub fn check_node_name(name: &str) -> Result<(), ClusterError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ClusterError::BadNodeName { name: name.to_string() })
    }
}

/// The profile's agents, in order.
pub fn agents_of(p: &Profile, cfg: &Config) -> Vec<AgentNode> {
    let mut out: Vec<AgentNode> = cfg.agents.iter().filter_map(|a| AgentNode::parse(&p.name, a)).collect();
    out.sort();
    out.dedup();
    out
}

/// Agents as nodes.
pub fn as_nodes(agents: &[AgentNode]) -> Vec<Node> {
    agents.iter().map(|a| Node::Agent(*a)).collect()
}

/// Nodes of profile `p` with their Kubernetes names.
pub fn named(p: &Profile, nodes: &[Node]) -> Vec<(Node, String)> {
    nodes.iter().map(|n| (*n, n.name(&p.name))).collect()
}

/// `count` new agents: the lowest indices not in use.
pub fn new_agents(have: &[AgentNode], count: usize) -> Result<Vec<AgentNode>, ClusterError> {
    if have.len() + 1 + count > MAX_NODES {
        return Err(ClusterError::TooManyNodes { asked: have.len() + 1 + count, max: MAX_NODES });
    }
    let free = (2..=MAX_NODES as u16).map(|index| AgentNode { index }).filter(|n| !have.contains(n));
    Ok(free.take(count).collect())
}

/// Whether this driver and release can run `nodes` nodes: the driver runs
/// agents and the release says how (`run.agent`).
pub fn check_supported(drv: &dyn Driver, p: &Profile, m: &Manifest, nodes: usize) -> Result<(), ClusterError> {
    if nodes <= 1 {
        return Ok(());
    }
    let why = if !drv.runs_agents() {
        DriverError::OneNode { driver: drv.kind() }.to_string()
    } else if m.component.localkube.run.agent.is_none() {
        DriverError::NoAgentLine { release: m.id() }.to_string()
    } else {
        return Ok(());
    };
    Err(ClusterError::NodesUnsupported { profile: p.name.clone(), nodes, why })
}

/// What the server says of a node's Ready condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    /// The server has no such node (yet).
    Unregistered,
    /// The server does not say: it does not answer, or not to the
    /// credentials asking (a real k3s shows Nodes only to its users).
    Unknown,
}

/// How a node's host is, as `status` and `node list` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostSummary {
    Running,
    Stopping,
    Stopped,
    Suspended,
    Crashed,
    /// The driver could not say.
    Unknown,
    /// A node another machine joined: its host is not here.
    Elsewhere,
}

impl From<&HostState> for HostSummary {
    fn from(s: &HostState) -> HostSummary {
        match s {
            HostState::Running(_) => HostSummary::Running,
            HostState::Stopping(_) => HostSummary::Stopping,
            HostState::Stopped => HostSummary::Stopped,
            HostState::Suspended => HostSummary::Suspended,
            HostState::Crashed { .. } => HostSummary::Crashed,
        }
    }
}

/// A node's part in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent,
    /// Joined from another machine (`node join`).
    Joined,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for HostSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostSummary::Elsewhere => f.write_str("elsewhere"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Joined => "joined",
        })
    }
}

/// Serializes as the display string (`"Running"`, `"agent"`).
fn as_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One node as `status` and `node list` show it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// `kubestrap-<profile>` for the server, `kubestrap-<profile>-m02`…
    pub name: String,
    #[serde(serialize_with = "as_display")]
    pub role: Role,
    #[serde(serialize_with = "as_display")]
    pub host: HostSummary,
    #[serde(serialize_with = "as_display")]
    pub ready: Readiness,
    /// Why its host is down, when it should run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<String>,
}

impl NodeStatus {
    /// An agent that is down, or not Ready as the server says (Unknown: it
    /// does not say).
    pub fn agent_down(&self) -> bool {
        self.role == Role::Agent
            && (self.host != HostSummary::Running
                || matches!(self.ready, Readiness::NotReady | Readiness::Unregistered))
    }
}

/// A node's Ready condition as the server reports it.
pub fn node_ready(probe: &Probe, node: &str) -> Result<Readiness, String> {
    match probe.get(&format!("/api/v1/nodes/{node}"))? {
        (200, body) => ready_in(&body).map_err(|e| format!("node {node}: {e}")),
        (404, _) => Ok(Readiness::Unregistered),
        (code, body) => Err(format!("HTTP {code}: {}", body.trim().chars().take(200).collect::<String>())),
    }
}

/// Whether a Node object (JSON) has its Ready condition True.
pub(super) fn ready_in(body: &str) -> Result<Readiness, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let ready = v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    Ok(if ready { Readiness::Ready } else { Readiness::NotReady })
}

/// How agents are brought up: all at once (a start), or one after the
/// other, each Ready before the next (an upgrade).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    Parallel,
    OneByOne,
}

/// Whether the agents' hosts were made already (while the server came up).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Made {
    Already,
    NotYet,
}

/// `f` for every node at once, one thread each: what each returned, in
/// the nodes' order (a thread that panicked, as an error saying what it was
/// doing).
pub fn for_each_node<T: Send>(
    nodes: &[Node],
    doing: &str,
    f: impl Fn(Node) -> crate::driver::Result<T> + Sync,
) -> Vec<crate::driver::Result<T>> {
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| (n, s.spawn(move || f(*n)))).collect();
        hs.into_iter()
            .map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(DriverError::HostTool {
                        command: format!("{doing} node {}", n.short()),
                        why: "its thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// [`for_each_node`], the first failure an error naming its node.
pub fn on_every_node<T: Send>(
    nodes: &[Node],
    doing: &str,
    f: impl Fn(Node) -> crate::driver::Result<T> + Sync,
) -> Result<Vec<T>> {
    nodes
        .iter()
        .zip(for_each_node(nodes, doing, f))
        .map(|(n, r)| r.map_err(|e| anyhow::Error::from(e).context(format!("{doing} node {}", n.short()))))
        .collect()
}

/// Makes every agent's host (at once), none started: what can be done
/// while the server comes up.
pub fn create(drv: &dyn Driver, launch: &Launch, agents: &[AgentNode]) -> Result<()> {
    on_every_node(&as_nodes(agents), "making", |n| drv.create(launch, n))?;
    Ok(())
}

/// Starts `agents` (in parallel, or one by one; made first unless
/// `made`) and waits until each one's node is Ready. On failure the
/// agents this call started are stopped again, and the error names the
/// node with its last log lines.
pub fn start_agents(
    drv: &dyn Driver,
    launch: &Launch,
    agents: &[AgentNode],
    probe: &Probe,
    (rollout, made): (Rollout, Made),
    progress: &dyn Progress,
) -> Result<()> {
    if agents.is_empty() {
        return Ok(());
    }
    let p = &launch.profile;
    let Some(agent) = launch.run.agent.as_ref().filter(|_| drv.runs_agents()) else {
        let why = "this driver or release runs one node".to_string();
        return Err(ClusterError::NodesUnsupported { profile: p.name.clone(), nodes: agents.len() + 1, why }.into());
    };
    if made == Made::NotYet {
        create(drv, launch, agents)?;
    }
    let timeout = Duration::from_secs(agent.ready_timeout_s);
    let nodes = as_nodes(agents);
    let groups: Vec<&[Node]> = match rollout {
        Rollout::Parallel => vec![&nodes],
        Rollout::OneByOne => nodes.chunks(1).collect(),
    };
    let mut started: Vec<Node> = Vec::new();
    let result = (|| -> Result<()> {
        for group in groups {
            crate::killpoint::reached("node start");
            let t = Instant::now();
            let launched = for_each_node(group, "starting", |n| drv.start(launch, n));
            for (n, r) in group.iter().zip(launched) {
                let host = r.map_err(|e| anyhow::Error::from(e).context(format!("starting node {}", n.short())))?;
                progress.step(Step::NodeStarted { node: n.name(&p.name), host: host.id }, t.elapsed());
                started.push(*n);
            }
            let ask = |name: &str| node_ready(probe, name);
            wait_ready(drv, p, &named(p, group), &ask, Instant::now() + timeout, progress)
                .map_err(|e| agent_not_up(drv, p, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for n in &started {
            let _ = drv.stop(p, *n, Stop::of(&launch.run));
        }
    }
    result
}

/// Why a node did not come up.
#[derive(Debug)]
pub enum NotUp {
    /// Its host ended (how, as the driver says).
    Ended { node: Node, how: String },
    /// The deadline passed; the server's last answer.
    Timeout { node: Node, last: String },
}

/// How a wait asks the server about one node (by its Kubernetes name).
pub type Ask<'a> = dyn Fn(&str) -> Result<Readiness, String> + 'a;

/// The one wait for nodes to be Ready, for every caller: bring-up's server,
/// its agents, `node add`, a joined node, an upgrade's agents one by one.
/// Polls `ask` until every node of `nodes` is Ready (each said as a step),
/// while its host runs (asked of the driver once a second: that is an
/// engine call for a container). A node the server does not say anything
/// of (`Unknown`) counts as up once its host has run steadily for 5 s.
/// Returns what the server said of each, in order.
pub fn wait_ready(
    drv: &dyn Driver,
    p: &Profile,
    nodes: &[(Node, String)],
    ask: &Ask,
    deadline: Instant,
    progress: &dyn Progress,
) -> Result<Vec<Readiness>, NotUp> {
    let t = Instant::now();
    let mut said: Vec<Option<Readiness>> = vec![None; nodes.len()];
    // Asking a local apiserver is cheap: every 50 ms at first, 200 ms at most.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).until(deadline);
    // Whether a host ended is asked of the driver (an engine call for a
    // container) once a second, not at every poll of the server.
    let mut hosts_checked = Instant::now();
    let mut unknown_since: Option<Instant> = None;
    let mut last = (Node::Server, String::new());
    loop {
        let check_hosts = hosts_checked.elapsed() >= Duration::from_secs(1);
        if check_hosts {
            hosts_checked = Instant::now();
        }
        for (i, (n, name)) in nodes.iter().enumerate() {
            if said[i].is_some() {
                continue;
            }
            let answer = match ask(name) {
                Ok(Readiness::Ready) => {
                    progress.step(Step::NodeReady { node: name.clone() }, t.elapsed());
                    said[i] = Some(Readiness::Ready);
                    continue;
                }
                Ok(Readiness::Unknown) => {
                    if unknown_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(5) {
                        said[i] = Some(Readiness::Unknown);
                        continue;
                    }
                    format!("the server does not say whether node {name} is Ready")
                }
                Ok(Readiness::NotReady) => format!("node {name} is registered but not Ready"),
                Ok(Readiness::Unregistered) => format!("node {name} has not registered"),
                Err(e) => e,
            };
            last = (*n, answer);
            if check_hosts {
                // Running or on its way down is alive (a stop is not this
                // wait's to judge); an engine that does not answer is asked
                // again next second.
                match drv.status(p, *n) {
                    Ok(HostState::Running(_) | HostState::Stopping(_)) | Err(_) => {}
                    Ok(HostState::Crashed { how, .. }) => return Err(NotUp::Ended { node: *n, how }),
                    Ok(_) => return Err(NotUp::Ended { node: *n, how: "stopped".into() }),
                }
            }
        }
        if said.iter().all(Option::is_some) {
            return Ok(said.into_iter().flatten().collect());
        }
        if !backoff.wait() {
            return Err(NotUp::Timeout { node: last.0, last: last.1 });
        }
    }
}

/// An agent that did not come up, as an error with its last log lines.
pub fn agent_not_up(drv: &dyn Driver, p: &Profile, e: NotUp) -> anyhow::Error {
    let (NotUp::Ended { node, .. } | NotUp::Timeout { node, .. }) = &e;
    let node = *node;
    let log = format!("`kubestrap node logs -p {} {}`", p.name, node.short());
    let tail = tail_text(&drv.log_tail(p, node, 20));
    match e {
        NotUp::Ended { how, .. } => ClusterError::LocalkubeExited {
            what: format!("node {} ended before it was Ready ({how})", node.short()),
            log,
            tail,
            advice: format!("The log above says why; see also `kubestrap logs -p {}`", p.name),
        },
        NotUp::Timeout { last, .. } => ClusterError::NotReady {
            what: format!("node {} was not Ready in time ({last})", node.short()),
            log,
            tail,
            advice: format!(
                "Retry with `kubestrap start -p {}`, or remove the node with `kubestrap node delete -p {} {}`",
                p.name,
                p.name,
                node.short()
            ),
        },
    }
    .into()
}

/// Log lines as an error shows them.
pub(super) fn tail_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// Stops the whole cluster: its agents (as the config names them, at
/// once: before the server, so none is left reconnecting to a server that
/// is gone), then the server.
pub fn stop_cluster(drv: &dyn Driver, p: &Profile, how: Stop) -> Result<StopOutcome> {
    if let Ok(cfg) = p.load()
        && drv.runs_agents()
    {
        on_every_node(&as_nodes(&agents_of(p, &cfg)), "stopping", |n| drv.stop(p, n, how))?;
    }
    Ok(drv.stop(p, Node::Server, how)?)
}

/// Every node of the profile: the server (its host as given) and each
/// agent, and the nodes other machines joined (known to the server only).
pub fn statuses(
    drv: &dyn Driver,
    p: &Profile,
    cfg: &Config,
    server_host: HostSummary,
    probe: Option<&Probe>,
) -> Vec<NodeStatus> {
    let ready = |name: &str| match probe.map(|pr| node_ready(pr, name)) {
        Some(Ok(r)) => r,
        _ => Readiness::Unknown,
    };
    let server_name = Node::Server.name(&p.name);
    let mut out = vec![NodeStatus {
        ready: ready(&server_name),
        name: server_name,
        role: Role::Server,
        host: server_host,
        crash: None,
    }];
    for n in agents_of(p, cfg) {
        let (host, crash) = match drv.status(p, Node::Agent(n)) {
            Ok(HostState::Crashed { how, .. }) => (HostSummary::Crashed, Some(how)),
            Ok(state) => (HostSummary::from(&state), None),
            Err(e) => (HostSummary::Unknown, Some(e.to_string())),
        };
        let name = n.node_name(&p.name);
        out.push(NodeStatus { ready: ready(&name), name, role: Role::Agent, host, crash });
    }
    if let Some(Ok((200, body))) = probe.map(|pr| pr.get("/api/v1/nodes")) {
        let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for n in list["items"].as_array().into_iter().flatten() {
            let Some(name) = n["metadata"]["name"].as_str() else { continue };
            if out.iter().any(|o| o.name == name) {
                continue;
            }
            out.push(NodeStatus {
                ready: ready(name),
                name: name.to_string(),
                role: Role::Joined,
                host: HostSummary::Elsewhere,
                crash: None,
            });
        }
    }
    out
}

/// A probe of the server for node questions.
pub fn probe(p: &Profile, at: Endpoint) -> Result<Probe> {
    Probe::new(&Pki::new(p.pki()), at, Duration::from_secs(5))
}

/// The profile's pinned kubectl, re-verified (and repaired from its blob if
/// it no longer matches) right before it runs.
pub fn pinned_kubectl(home: &Home, p: &Profile, cfg: &Config, progress: &dyn Progress) -> Result<PathBuf> {
    let m = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?.manifest;
    let need = m
        .needs(&Target::host(), cfg.driver)
        .map_err(|reason| crate::artifacts::FetchError::NoArtifact { manifest: m.id(), reason })?
        .into_iter()
        .find(|n| n.component == ComponentName::Kubectl)
        .ok_or(ClusterError::NoComponent { component: ComponentName::Kubectl })?;
    if !store::has_blob(home, &need.artifact.sha256, need.artifact.size.get()) {
        return Err(ClusterError::NotCached { what: "kubectl".into(), profile: p.name.clone() }.into());
    }
    let _store = home.store_lock(false, || {})?;
    let t = Instant::now();
    let (dir, repaired) = store::ensure_intact(home, &need.artifact)?;
    if !repaired.is_empty() {
        progress.step(
            Step::ComponentRepaired { component: format!("kubectl {}", need.version), files: repaired },
            t.elapsed(),
        );
    }
    Ok(dir.join(&need.artifact.bin))
}
