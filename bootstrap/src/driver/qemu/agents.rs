//! Agent nodes: one VM each, kept like the server's (the same monitor, pid
//! file, suspend and resume) under `profiles/<name>/nodes/<m02>/`, a profile
//! directory of its own whose PKI is the join token alone. Every VM of the
//! cluster has a second NIC on the cluster's private L2 segment (qemu's
//! multicast socket netdev on 127.0.0.1: no bridge, no root) at a fixed
//! address by node index; agents reach the server there.

use std::path::Path;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Agent;

use super::{NodeNet, Qemu, server_l2_address};
use crate::driver::{AgentNode, Agents, Driver, Host, HostState, JoinTarget, Launch, Result, Stop, StopOutcome, guest};
use crate::profile::Profile;

/// The agent's own profile directory (its VM, run and log files).
pub(super) fn node_profile(p: &Profile, node: &AgentNode) -> Profile {
    Profile { name: format!("{}-{}", p.name, node.short()), dir: p.dir.join("nodes").join(node.short()) }
}

impl Qemu<'_> {
    /// The agent's profile directory with its VM's directories (made if an
    /// agent was recorded but never made: a `node add` killed early).
    fn made(&self, p: &Profile, node: &AgentNode) -> Result<Profile> {
        let sub = node_profile(p, node);
        fskit::create_dir_mode(&p.dir.join("nodes"), 0o700)?;
        fskit::create_dir_mode(&sub.dir, 0o700)?;
        self.create(&sub)?;
        Ok(sub)
    }
}

impl Agents for Qemu<'_> {
    fn start_agent(&self, launch: &Launch, agent: &Agent, node: &AgentNode) -> Result<Host> {
        let p = &launch.profile;
        let sub = self.made(p, node)?;
        // Its PKI: the join token, nothing else of the cluster's.
        fskit::create_dir_mode(&sub.pki(), 0o700)?;
        fskit::create_dir_mode(&sub.join_dir(), 0o700)?;
        let token = fskit::read_capped(&p.join_token(), 4096)?;
        if fskit::read_capped(&sub.join_token(), 4096).ok().as_ref() != Some(&token) {
            fskit::write_atomic(&sub.join_token(), &token, 0o600)?;
        }
        let mut l = launch.clone();
        l.profile = sub;
        l.run.args = agent.args.clone();
        l.listen = None;
        l.join = Some(JoinTarget {
            server: server_l2_address().to_string(),
            port: guest::PORT,
            node: node.node_name(&p.name),
        });
        self.start_node(&l, &NodeNet { cluster: p.dir.clone(), index: node.index, forward: false })
    }

    fn agent_status(&self, p: &Profile, node: &AgentNode) -> Result<HostState> {
        self.status(&node_profile(p, node))
    }

    fn stop_agent(&self, p: &Profile, node: &AgentNode, how: Stop) -> Result<StopOutcome> {
        let sub = node_profile(p, node);
        if !sub.dir.is_dir() {
            return Ok(StopOutcome::WasNotRunning);
        }
        self.stop(&sub, how)
    }

    fn snapshot_agent(&self, p: &Profile, node: &AgentNode, dest: &Path) -> Result<fskit::Copied> {
        self.snapshot(&self.made(p, node)?, dest)
    }

    fn restore_agent(&self, p: &Profile, node: &AgentNode, src: &Path) -> Result<()> {
        self.restore(&self.made(p, node)?, src)
    }

    fn delete_agent(&self, p: &Profile, node: &AgentNode) -> Result<()> {
        let sub = node_profile(p, node);
        if sub.dir.is_dir() {
            self.delete(&sub)?;
            fskit::remove_tree(&sub.dir)?;
        }
        Ok(())
    }

    fn agent_log_tail(&self, p: &Profile, node: &AgentNode, n: usize) -> Vec<String> {
        self.log_tail(&node_profile(p, node), n)
    }
}
