//! Agent nodes: one container each, of the same node image, on the
//! profile's network at a fixed address (the gateway + the node's index:
//! the server is index 1), reaching the server by its address there. Only
//! the server's API is published on this machine. Each agent's data is a
//! volume of its own, labelled with the profile and home (so `delete` finds
//! every one, even with a damaged config); the join token is the only file
//! of the PKI an agent is given. What every node gets under its data
//! directory (the run section's files, the image archives) comes from a
//! stage of the agent's own, mirrored from the server's at each start and
//! copied in by the entrypoint, as the server's is.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Vars;

use super::{
    CALL, Docker, Engine, LABEL, Spec, bind_mount, container_args, container_name, ensure_network, guest, home_id,
    no_such_container, stopped_path, volume_name,
};
use crate::driver::{AgentNode, Driver, DriverError, Host, Launch, Node, Result};
use crate::profile::Profile;

fn agent_container(p: &Profile, node: &AgentNode) -> String {
    format!("{}-{}", container_name(p), node.short())
}

fn agent_volume(p: &Profile, node: &AgentNode) -> String {
    format!("{}-data", agent_container(p, node))
}

fn agent_dir(p: &Profile) -> PathBuf {
    p.dir.join("container/agents")
}

fn agent_stopped(p: &Profile, node: &AgentNode) -> PathBuf {
    agent_dir(p).join(format!("{}.stopped", node.short()))
}

fn agent_created(p: &Profile, node: &AgentNode) -> PathBuf {
    agent_dir(p).join(format!("{}.toml", node.short()))
}

fn agent_stage(p: &Profile, node: &AgentNode) -> PathBuf {
    agent_dir(p).join(format!("{}.stage", node.short()))
}

/// The node's container: the server's, or an agent's.
pub(super) fn node_container(p: &Profile, node: Node) -> String {
    match node {
        Node::Server => container_name(p),
        Node::Agent(a) => agent_container(p, &a),
    }
}

/// Where a stop of the node is recorded before it acts.
pub(super) fn node_stopped(p: &Profile, node: Node) -> PathBuf {
    match node {
        Node::Server => stopped_path(p),
        Node::Agent(a) => agent_stopped(p, &a),
    }
}

/// The node's data volume (an agent's made first if it is missing, so
/// that a copy into it never makes an unlabelled one).
pub(super) fn node_volume(eng: &Engine, p: &Profile, node: Node) -> Result<String> {
    match node {
        Node::Server => Ok(volume_name(p)),
        Node::Agent(a) => {
            ensure_volume(eng, p, &a)?;
            Ok(agent_volume(p, &a))
        }
    }
}

/// The agent's address: the gateway + its index.
fn address(gateway: Ipv4Addr, node: &AgentNode) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(gateway) + u32::from(node.index))
}

/// localkube's template values in an agent's container.
fn agent_vars(launch: &Launch, ip: Ipv4Addr, server: Ipv4Addr, node: &AgentNode) -> Vars {
    Vars {
        node: node.node_name(&launch.profile.name),
        server: server.to_string(),
        port: guest::PORT,
        ..guest::vars(launch, ip, super::NODE_IFACE)
    }
}

/// The volumes and containers of a profile's agents on its engine, by label.
pub(super) fn remove_all(eng: &Engine, p: &Profile) -> Result<()> {
    let filters = [format!("label={LABEL}.profile={}", p.name), format!("label={LABEL}.home={}", home_id(p))];
    let mut ps = vec!["ps", "-a", "-q"];
    let mut vols = vec!["volume", "ls", "-q"];
    for f in &filters {
        ps.extend(["--filter", f.as_str()]);
        vols.extend(["--filter", f.as_str()]);
    }
    ps.extend(["--filter", "label=dev.kubestrap.node"]);
    for id in eng.docker(&ps, CALL)?.split_whitespace() {
        match eng.docker(&["rm", "-f", id], CALL) {
            Err(e) if !no_such_container(&e) => return Err(e),
            _ => {}
        }
    }
    for v in eng.docker(&vols, CALL)?.split_whitespace() {
        eng.docker(&["volume", "rm", "-f", v], CALL)?;
    }
    fskit::remove_any(&agent_dir(p))?;
    Ok(())
}

/// The agent's volume, made if it is not there, labelled so that `delete`
/// finds it whatever the config says (an engine would make one unlabelled
/// for a mount that names a missing volume).
fn ensure_volume(eng: &Engine, p: &Profile, node: &AgentNode) -> Result<()> {
    let volume = agent_volume(p, node);
    if eng.docker(&["volume", "inspect", "--format", "{{.Name}}", &volume], CALL).is_ok() {
        return Ok(());
    }
    let labels = [
        format!("{LABEL}.profile={}", p.name),
        format!("{LABEL}.home={}", home_id(p)),
        format!("{LABEL}.node={}", node.node_name(&p.name)),
    ];
    let mut create = vec!["volume", "create"];
    create.extend(labels.iter().flat_map(|l| ["--label", l.as_str()]));
    create.push(&volume);
    eng.docker(&create, CALL)?;
    Ok(())
}

impl Docker<'_> {
    /// Its volume and container, made (or kept: the same release and
    /// settings), not started.
    pub(super) fn create_agent(&self, launch: &Launch, node: &AgentNode) -> Result<()> {
        let p = &launch.profile;
        let agent =
            launch.run.agent.as_ref().ok_or_else(|| DriverError::NoAgentLine { release: launch.release.clone() })?;
        let (eng, info, image, blob) = self.prepare(launch)?;
        let net = ensure_network(&eng, p)?;
        let ip = address(net.gateway, node);
        let vars = agent_vars(launch, ip, net.node, node);
        let name = agent_container(p, node);
        let volume = agent_volume(p, node);
        let node_name = node.node_name(&p.name);
        ensure_volume(&eng, p, node)?;
        let spec = Spec {
            name: &name,
            hostname: &node_name,
            ip,
            volume: &volume,
            role: Some(&node_name),
            publish: None,
            mounts: [
                bind_mount(&p.join_dir(), &guest::path("pki/join"), true),
                bind_mount(&agent_stage(p, node), &guest::path("data"), true),
            ]
            .into_iter()
            .chain(super::hostview::mounts(launch)?)
            .collect(),
            command: agent.args.iter().map(|a| a.render(&vars)).collect(),
            env: self.proxies(),
        };
        let args = container_args(launch, &eng, &info, &image, &net.name, &spec);
        fskit::create_dir_mode(&agent_stage(p, node), 0o700)?;
        self.ensure_container(&eng, &agent_created(p, node), &name, &args, blob)
    }

    pub(super) fn start_agent(&self, launch: &Launch, node: &AgentNode) -> Result<Host> {
        let p = &launch.profile;
        let eng = self.engine_for(p)?;
        let name = agent_container(p, node);
        let staged = guest::stage_agent(&launch.run, &self.host_data(p), &agent_stage(p, node))?;
        tracing::debug!("node {}: {staged} image archives staged", node.short());
        fskit::remove_any(&agent_stopped(p, node))?;
        eng.docker(&["start", &name], CALL)?;
        Ok(Host { id: format!("container {name}"), pid: None, port: 0 })
    }

    pub(super) fn delete_agent(&self, p: &Profile, node: &AgentNode) -> Result<()> {
        let eng = self.engine_for(p)?;
        match eng.docker(&["rm", "-f", &agent_container(p, node)], CALL) {
            Err(e) if !no_such_container(&e) => return Err(e),
            _ => {}
        }
        eng.docker(&["volume", "rm", "-f", &agent_volume(p, node)], CALL)?;
        fskit::remove_any(&agent_created(p, node))?;
        fskit::remove_any(&agent_stopped(p, node))?;
        fskit::remove_any(&agent_stage(p, node))?;
        Ok(())
    }
}
