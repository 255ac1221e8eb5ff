//! Clusters of more than one node. A profile's server is node 1; its agents
//! (`m02`, `m03`…, kept in the config's `agents`) run the release's
//! `run.agent` command line on a driver that can run them
//! ([`crate::driver::Agents`]) and join the server with the join token.
//! A node counts as up when its Node object reports Ready through the
//! server's API (asked with the admin certificate).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::{ComponentName, Manifest, Target};
use serde::Serialize;

use super::ClusterError;
use super::apiserver::Probe;
use super::pki::Pki;
use super::session::{Session, Wait};
use crate::artifacts::store;
use crate::channel;
use crate::driver::{AgentNode, Agents, Driver, HostState, Launch, Stop};
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
    let why = if drv.agents().is_none() {
        format!(
            "the {} driver runs one node per profile (its host is this machine: two k3s nodes would share its paths and \
             ports)",
            drv.kind()
        )
    } else if m.component.localkube.run.agent.is_none() {
        format!("release {} has no agent command line (run.agent): it runs one node", m.id())
    } else {
        return Ok(());
    };
    Err(ClusterError::NodesUnsupported { profile: p.name.clone(), nodes, why })
}

/// A node's Ready condition as the server reports it: `None` when the
/// server has no such node (yet).
pub fn node_ready(probe: &Probe, node: &str) -> Result<Option<bool>, String> {
    match probe.get(&format!("/api/v1/nodes/{node}"))? {
        (200, body) => ready_in(&body).map(Some).map_err(|e| format!("node {node}: {e}")),
        (404, _) => Ok(None),
        (code, body) => Err(format!("HTTP {code}: {}", body.trim().chars().take(200).collect::<String>())),
    }
}

/// Whether a Node object (JSON) has its Ready condition True.
pub(super) fn ready_in(body: &str) -> Result<bool, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True"))
}

/// How agents are brought up: all at once (a start), or one after the
/// other, each Ready before the next (an upgrade).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    Parallel,
    OneByOne,
}

/// `f` for every node at once, one thread each: what each returned, in
/// the nodes' order (a thread that panicked, as an error saying what it was
/// doing).
pub fn for_each_node<T: Send>(
    nodes: &[AgentNode],
    doing: &str,
    f: impl Fn(&AgentNode) -> crate::driver::Result<T> + Sync,
) -> Vec<crate::driver::Result<T>> {
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| (n, s.spawn(move || f(n)))).collect();
        hs.into_iter()
            .map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::driver::DriverError::HostTool {
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
    nodes: &[AgentNode],
    doing: &str,
    f: impl Fn(&AgentNode) -> crate::driver::Result<T> + Sync,
) -> Result<Vec<T>> {
    nodes
        .iter()
        .zip(for_each_node(nodes, doing, f))
        .map(|(n, r)| r.map_err(|e| anyhow::Error::from(e).context(format!("{doing} node {}", n.short()))))
        .collect()
}

/// Makes every node's host (at once), none started: what can be done
/// while the server comes up.
pub fn create(agents: &dyn Agents, launch: &Launch, nodes: &[AgentNode]) -> Result<()> {
    let Some(agent) = launch.run.agent.as_ref() else { return Ok(()) };
    on_every_node(nodes, "making", |n| agents.create_agent(launch, agent, n))?;
    Ok(())
}

/// Starts `nodes` (in parallel, or one by one; made first unless
/// `created`) and waits until each one's node is Ready. On failure the
/// agents this call started are stopped again, and the error names the
/// node with its last log lines.
pub fn bring_up(
    drv: &dyn Driver,
    launch: &Launch,
    nodes: &[AgentNode],
    probe: &Probe,
    (rollout, created): (Rollout, bool),
    progress: &dyn Progress,
) -> Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let p = &launch.profile;
    let (Some(agents), Some(agent)) = (drv.agents(), launch.run.agent.as_ref()) else {
        let why = "this driver or release runs one node".to_string();
        return Err(ClusterError::NodesUnsupported { profile: p.name.clone(), nodes: nodes.len() + 1, why }.into());
    };
    if !created {
        create(agents, launch, nodes)?;
    }
    let timeout = Duration::from_secs(agent.ready_timeout_s);
    let stop = Stop::of(&launch.run);
    let groups: Vec<&[AgentNode]> = match rollout {
        Rollout::Parallel => vec![nodes],
        Rollout::OneByOne => nodes.chunks(1).collect(),
    };
    let mut started: Vec<AgentNode> = Vec::new();
    let result = (|| -> Result<()> {
        for group in groups {
            crate::killpoint::reached("node start");
            let t = Instant::now();
            let launched = for_each_node(group, "starting", |n| agents.start_agent(launch, agent, n));
            for (n, r) in group.iter().zip(launched) {
                let host = r.map_err(|e| anyhow::Error::from(e).context(format!("starting node {}", n.short())))?;
                progress.step(Step::NodeStarted { node: n.node_name(&p.name), host: host.id }, t.elapsed());
                started.push(*n);
            }
            wait_ready(agents, p, group, probe, Instant::now() + timeout, progress)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for n in &started {
            let _ = agents.stop_agent(p, n, stop);
        }
    }
    result
}

/// Waits until every node of `nodes` is Ready, while its host runs.
pub fn wait_ready(
    agents: &dyn Agents,
    p: &Profile,
    nodes: &[AgentNode],
    probe: &Probe,
    deadline: Instant,
    progress: &dyn Progress,
) -> Result<()> {
    let t = Instant::now();
    let mut pending: Vec<AgentNode> = nodes.to_vec();
    // Asking the local apiserver is cheap: every 50 ms at first, 200 ms at most.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).until(deadline);
    let mut last = String::new();
    // Whether a node's host ended is asked of the driver (an engine call)
    // once a second, not at every poll of the apiserver.
    let mut hosts_checked = Instant::now();
    loop {
        let check_hosts = hosts_checked.elapsed() >= Duration::from_secs(1);
        if check_hosts {
            hosts_checked = Instant::now();
        }
        let mut still = Vec::new();
        for n in pending {
            let name = n.node_name(&p.name);
            match node_ready(probe, &name) {
                Ok(Some(true)) => progress.step(Step::NodeReady { node: name }, t.elapsed()),
                answer => {
                    last = match answer {
                        Ok(Some(_)) => format!("node {name} is registered but not Ready"),
                        Ok(None) => format!("node {name} has not registered"),
                        Err(e) => e,
                    };
                    if check_hosts && let Ok(HostState::Crashed { how, .. }) = agents.agent_status(p, &n) {
                        return Err(ClusterError::LocalkubeExited {
                            what: format!("node {} ended before it was Ready ({how})", n.short()),
                            log: format!("`kubestrap node logs -p {} {}`", p.name, n.short()),
                            tail: tail_text(&agents.agent_log_tail(p, &n, 20)),
                            advice: format!("The log above says why; see also `kubestrap logs -p {}`", p.name),
                        }
                        .into());
                    }
                    still.push(n);
                }
            }
        }
        pending = still;
        let Some(first) = pending.first() else { return Ok(()) };
        if !backoff.wait() {
            return Err(ClusterError::NotReady {
                what: format!("node {} was not Ready in time ({last})", first.short()),
                log: format!("`kubestrap node logs -p {} {}`", p.name, first.short()),
                tail: tail_text(&agents.agent_log_tail(p, first, 20)),
                advice: format!(
                    "Retry with `kubestrap start -p {}`, or remove the node with `kubestrap node delete -p {} {}`",
                    p.name,
                    p.name,
                    first.short()
                ),
            }
            .into());
        }
    }
}

/// Log lines as an error shows them.
pub(super) fn tail_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// Stops every agent (at once): before the server, so none is left
/// reconnecting to a server that is gone.
pub fn stop_all(drv: &dyn Driver, p: &Profile, nodes: &[AgentNode], how: Stop) -> Result<()> {
    let Some(agents) = drv.agents() else { return Ok(()) };
    on_every_node(nodes, "stopping", |n| agents.stop_agent(p, n, how))?;
    Ok(())
}

/// Stops the whole cluster: its agents (as the config names them), then
/// the server.
pub fn stop_cluster(drv: &dyn Driver, p: &Profile, how: Stop) -> Result<crate::driver::StopOutcome> {
    if let Ok(cfg) = p.load() {
        stop_all(drv, p, &agents_of(p, &cfg), how)?;
    }
    Ok(drv.stop(p, how)?)
}

/// One node as `status` and `node list` show it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// `kubestrap-<profile>` for the server, `kubestrap-<profile>-m02`…
    pub name: String,
    pub role: &'static str,
    /// Running, Stopped, Stopping, Suspended, or Crashed.
    pub host: String,
    /// What the server says of its Node: Ready, NotReady, Unregistered, or
    /// Unknown (the server does not answer).
    pub ready: String,
    /// Why its host is down, when it should run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash: Option<String>,
}

/// Every node of the profile: the server (its host as given) and each agent.
pub fn statuses(
    drv: &dyn Driver,
    p: &Profile,
    cfg: &Config,
    server_host: &str,
    probe: Option<&Probe>,
) -> Vec<NodeStatus> {
    let ready = |name: &str| match probe.map(|pr| node_ready(pr, name)) {
        Some(Ok(Some(true))) => "Ready".to_string(),
        Some(Ok(Some(false))) => "NotReady".to_string(),
        Some(Ok(None)) => "Unregistered".to_string(),
        _ => "Unknown".to_string(),
    };
    let server_name = format!("kubestrap-{}", p.name);
    let mut out = vec![NodeStatus {
        ready: ready(&server_name),
        name: server_name,
        role: "server",
        host: server_host.to_string(),
        crash: None,
    }];
    let agents = drv.agents();
    for n in agents_of(p, cfg) {
        let (host, crash) = match agents.map(|a| a.agent_status(p, &n)) {
            Some(Ok(HostState::Running(_))) => ("Running".to_string(), None),
            Some(Ok(HostState::Stopping(_))) => ("Stopping".to_string(), None),
            Some(Ok(HostState::Stopped)) => ("Stopped".to_string(), None),
            Some(Ok(HostState::Suspended)) => ("Suspended".to_string(), None),
            Some(Ok(HostState::Crashed { how, .. })) => ("Crashed".to_string(), Some(how)),
            Some(Err(e)) => ("Unknown".to_string(), Some(e.to_string())),
            None => ("Unknown".to_string(), Some("this driver runs no agents".into())),
        };
        let name = n.node_name(&p.name);
        out.push(NodeStatus { ready: ready(&name), name, role: "agent", host, crash });
    }
    // Nodes other machines joined (`node join`): known to the server only.
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
                role: "joined",
                host: "elsewhere".into(),
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

/// The running server, for node operations: its driver state must be Running.
fn running_server(drv: &dyn Driver, p: &Profile, cfg: &Config) -> Result<Endpoint> {
    match drv.status(p)? {
        HostState::Running(h) => Ok(Endpoint { port: h.port, ..cfg.endpoint() }),
        _ => Err(ClusterError::NotRunning { profile: p.name.clone() }.into()),
    }
}

/// `node add`: `count` agents join the running cluster, recorded in its
/// config before they start (a killed add leaves nodes `start` brings up
/// and `delete` removes); ones that do not become Ready are removed again.
pub fn add(
    home: &Home,
    name: &str,
    count: usize,
    wait: Option<Duration>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let s = Session::open_existing(home, name, Wait::Yes, progress)?;
    let p = &s.profile;
    let mut cfg = p.load()?;
    if let Some(j) = &cfg.join {
        anyhow::bail!(
            "profile {:?} is node {} of the cluster at {}: add nodes on the server's machine",
            p.name,
            j.node,
            j.server
        );
    }
    let drv = s.profile_driver();
    let loaded = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let have = agents_of(p, &cfg);
    check_supported(drv.as_ref(), p, &loaded.manifest, have.len() + 1 + count)?;
    let at = running_server(drv.as_ref(), p, &cfg)?;
    let new = new_agents(&have, count)?;
    cfg.agents.extend(new.iter().map(AgentNode::short));
    p.save(&cfg)?;
    crate::killpoint::reached("node add");
    let mut launch = super::bringup::running_launch(&s, drv.as_ref(), &loaded, &cfg)?;
    if let (Some(w), Some(a)) = (wait, launch.run.agent.as_mut()) {
        a.ready_timeout_s = w.as_secs().max(1);
    }
    let probe = probe(p, at)?;
    if let Err(e) = bring_up(drv.as_ref(), &launch, &new, &probe, (Rollout::Parallel, false), progress) {
        // Nothing half-added stays: the new nodes go, the others are untouched.
        if let Some(agents) = drv.agents() {
            for n in &new {
                let _ = agents.delete_agent(p, n);
                let _ = probe.delete(&format!("/api/v1/nodes/{}", n.node_name(&p.name)));
            }
        }
        cfg.agents.retain(|a| !new.iter().any(|n| n.short() == *a));
        p.save(&cfg)?;
        return Err(e);
    }
    Ok(new.iter().map(|n| n.node_name(&p.name)).collect())
}

/// `node list`.
pub fn list(home: &Home, name: &str, progress: &dyn Progress) -> Result<Vec<NodeStatus>> {
    let p = Profile::new(home, name)?;
    let cfg = p.load()?;
    let drv = super::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), progress);
    let (server_host, probe) = match drv.status(&p)? {
        HostState::Running(h) => ("Running", probe(&p, Endpoint { port: h.port, ..cfg.endpoint() }).ok()),
        HostState::Stopping(_) => ("Stopping", None),
        HostState::Stopped => ("Stopped", None),
        HostState::Suspended => ("Suspended", None),
        HostState::Crashed { .. } => ("Crashed", None),
    };
    Ok(statuses(drv.as_ref(), &p, &cfg, server_host, probe.as_ref()))
}

/// `node delete`: drains the node with the pinned kubectl (unless `force`),
/// stops and removes its host and state, then its Node object.
pub fn remove(home: &Home, name: &str, node: &str, force: bool, progress: &dyn Progress) -> Result<String> {
    let s = Session::open_existing(home, name, Wait::Yes, progress)?;
    let p = &s.profile;
    let mut cfg = p.load()?;
    check_node_name(node)?;
    let have = agents_of(p, &cfg);
    let drv = s.profile_driver();
    let server = running_server(drv.as_ref(), p, &cfg);
    let ours = AgentNode::parse(&p.name, node).filter(|n| have.contains(n));
    // Not one of this machine's: a node another machine joined (`node
    // join`), known to the server only.
    let remote = match (&ours, &server) {
        (None, Ok(at)) if node != format!("kubestrap-{}", p.name) => {
            probe(p, *at)?.get(&format!("/api/v1/nodes/{node}")).is_ok_and(|(code, _)| code == 200)
        }
        _ => false,
    };
    if ours.is_none() && !remote {
        let mut names = vec![format!("kubestrap-{} (the server)", p.name)];
        names.extend(have.iter().map(AgentNode::short));
        return Err(
            ClusterError::NoSuchNode { profile: p.name.clone(), node: node.into(), nodes: names.join(", ") }.into()
        );
    }
    let node_name = ours.as_ref().map_or_else(|| node.to_string(), |n| n.node_name(&p.name));
    let t = Instant::now();
    if !force {
        server
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}: a node is drained through the server; --force removes it without"))?;
        drain(home, p, &cfg, &node_name, progress)?;
    }
    crate::killpoint::reached("node delete");
    if let (Some(agents), Some(n)) = (drv.agents(), &ours) {
        let how = channel::peek(&cfg.manifest).map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
        agents.stop_agent(p, n, how)?;
        agents.delete_agent(p, n)?;
    }
    if let Ok(at) = server {
        let probe = probe(p, at)?;
        match probe.delete(&format!("/api/v1/nodes/{node_name}")) {
            Ok(200 | 202 | 404) => {}
            Ok(code) => progress.warn(format!(
                "the server kept node {node_name}'s object (HTTP {code}); `kubectl delete node {node_name}` removes it"
            )),
            Err(e) => progress.warn(format!("removing node {node_name}'s object: {e}")),
        }
    }
    if let Some(n) = &ours {
        cfg.agents.retain(|a| *a != n.short());
        p.save(&cfg)?;
    }
    progress.step(Step::NodeRemoved { node: node_name.clone(), drained: !force }, t.elapsed());
    Ok(node_name)
}

/// `kubectl drain` with the pinned kubectl: the node cordoned, its pods
/// evicted (DaemonSets' left, as drain does), within 150 s.
fn drain(home: &Home, p: &Profile, cfg: &Config, node: &str, progress: &dyn Progress) -> Result<()> {
    let kubectl = pinned_kubectl(home, p, cfg, progress)?;
    let kc = super::kubeconfig::path()?;
    let mut cmd = std::process::Command::new(&kubectl);
    cmd.arg(format!("--kubeconfig={}", kc.display()))
        .arg(format!("--context={}", super::kubeconfig::context_name(&p.name)))
        .args(["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"]);
    let ran = crate::proc::run_bounded(cmd, None::<fn(std::process::ChildStdin)>, None, Duration::from_secs(150))
        .map_err(|source| crate::driver::DriverError::Spawn { what: "run the pinned kubectl", source })?;
    let why = match &ran {
        Some(r) if r.status.success() => return Ok(()),
        Some(r) => r.stderr.trim().to_string(),
        None => "it did not finish within 150 s".into(),
    };
    anyhow::bail!(
        "draining node {node} failed (kubectl drain: {why}); nothing was removed. `kubestrap node delete -p {} {node} --force` removes it undrained",
        p.name
    )
}

/// `node logs`: an agent's last lines.
pub fn log_tail(home: &Home, name: &str, node: &str, lines: usize, progress: &dyn Progress) -> Result<Vec<String>> {
    let p = Profile::new(home, name)?;
    let cfg = p.load()?;
    let have = agents_of(&p, &cfg);
    let Some(n) = AgentNode::parse(&p.name, node).filter(|n| have.contains(n)) else {
        let names: Vec<String> = have.iter().map(AgentNode::short).collect();
        return Err(
            ClusterError::NoSuchNode { profile: p.name.clone(), node: node.into(), nodes: names.join(", ") }.into()
        );
    };
    let drv = super::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), progress);
    Ok(drv.agents().map(|a| a.agent_log_tail(&p, &n, lines)).unwrap_or_default())
}
