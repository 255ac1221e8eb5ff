//! The `node` commands: `node add`, `list`, `delete` and `logs` of a
//! profile's own agents (node mechanics are in `nodes`, below bring-up;
//! joining another machine's cluster is `join`).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::ClusterError;
use super::nodes::{self, HostSummary, Made, NodeStatus, Rollout, agents_of, check_node_name, probe};
use super::session::{Force, Session, Wait};
use crate::channel;
use crate::driver::{AgentNode, Driver, HostState, Node, Stop};
use crate::home::Home;
use crate::profile::{Config, Endpoint, Profile};
use crate::progress::{Progress, Step};

/// The running server, for node operations: its driver state must be Running.
fn running_server(drv: &dyn Driver, p: &Profile, cfg: &Config) -> Result<Endpoint> {
    match drv.status(p, Node::Server)? {
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
    let drv = s.driver();
    let loaded = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let have = agents_of(p, &cfg);
    nodes::check_supported(drv, p, &loaded.manifest, have.len() + 1 + count)?;
    let at = running_server(drv, p, &cfg)?;
    let new = nodes::new_agents(&have, count)?;
    cfg.agents.extend(new.iter().map(AgentNode::short));
    p.save(&cfg)?;
    crate::killpoint::reached("node add");
    let mut launch = super::bringup::running_launch(&s, &loaded, &cfg)?;
    if let (Some(w), Some(a)) = (wait, launch.run.agent.as_mut()) {
        a.ready_timeout_s = w.as_secs().max(1);
    }
    let probe = probe(p, at)?;
    if let Err(e) = nodes::start_agents(drv, &launch, &new, &probe, (Rollout::Parallel, Made::NotYet), progress) {
        // Nothing half-added stays: the new nodes go, the others are untouched.
        for n in &new {
            let _ = drv.delete(p, Node::Agent(*n));
            let _ = probe.delete(&format!("/api/v1/nodes/{}", n.node_name(&p.name)));
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
    let state = drv.status(&p, Node::Server)?;
    let probe = match &state {
        HostState::Running(h) => probe(&p, Endpoint { port: h.port, ..cfg.endpoint() }).ok(),
        _ => None,
    };
    Ok(nodes::statuses(drv.as_ref(), &p, &cfg, HostSummary::from(&state), probe.as_ref()))
}

/// `node delete`: drains the node with the pinned kubectl (unless `force`),
/// stops and removes its host and state, then its Node object.
pub fn remove(home: &Home, name: &str, node: &str, force: Force, progress: &dyn Progress) -> Result<String> {
    let s = Session::open_existing(home, name, Wait::Yes, progress)?;
    let p = &s.profile;
    let mut cfg = p.load()?;
    check_node_name(node)?;
    let have = agents_of(p, &cfg);
    let drv = s.driver();
    let server = running_server(drv, p, &cfg);
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
    if force == Force::No {
        server
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}: a node is drained through the server; --force removes it without"))?;
        drain(home, p, &cfg, &node_name, progress)?;
    }
    crate::killpoint::reached("node delete");
    if let Some(n) = ours.filter(|_| drv.runs_agents()) {
        let how = channel::peek(&cfg.manifest).map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
        drv.stop(p, Node::Agent(n), how)?;
        drv.delete(p, Node::Agent(n))?;
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
    progress.step(Step::NodeRemoved { node: node_name.clone(), drained: force == Force::No }, t.elapsed());
    Ok(node_name)
}

/// `kubectl drain` with the pinned kubectl: the node cordoned, its pods
/// evicted (DaemonSets' left, as drain does), within 150 s.
fn drain(home: &Home, p: &Profile, cfg: &Config, node: &str, progress: &dyn Progress) -> Result<()> {
    let kubectl = nodes::pinned_kubectl(home, p, cfg, progress)?;
    let kc = super::kubeconfig::path(home.env())?;
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
    Ok(drv.log_tail(&p, Node::Agent(n), lines))
}
