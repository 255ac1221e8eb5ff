//! Agent nodes: one VM each, kept like the server's (the same monitor, pid
//! file, suspend and resume) under `profiles/<name>/nodes/<m02>/`, a
//! directory of its own laid out as a profile's, whose PKI is the join
//! token alone. Every VM of the cluster has a second NIC on the cluster's
//! private L2 segment (qemu's multicast socket netdev on 127.0.0.1: no
//! bridge, no root) at a fixed address by node index; agents reach the
//! server there.

use std::borrow::Cow;

use kubestrap_fskit as fskit;

use super::{NodeNet, Qemu, server_l2_address};
use crate::driver::{AgentNode, Driver, DriverError, Host, JoinTarget, Launch, Node, Result, guest};
use crate::profile::Profile;

/// The node's directories: the profile's own for the server, else the
/// agent's under `nodes/<m02>/` (laid out as a profile's, so one VM's
/// machinery serves every node).
pub(super) fn node_profile(p: &Profile, node: Node) -> Cow<'_, Profile> {
    match node {
        Node::Server => Cow::Borrowed(p),
        Node::Agent(a) => {
            Cow::Owned(Profile { name: format!("{}-{}", p.name, a.short()), dir: p.dir.join("nodes").join(a.short()) })
        }
    }
}

impl Qemu<'_> {
    /// The agent's directory with its VM's directories (made if an agent
    /// was recorded but never made: a `node add` killed early).
    pub(super) fn made(&self, p: &Profile, node: &AgentNode) -> Result<Profile> {
        let sub = node_profile(p, Node::Agent(*node)).into_owned();
        fskit::create_dir_mode(&p.dir.join("nodes"), 0o700)?;
        fskit::create_dir_mode(&sub.dir, 0o700)?;
        self.create_dirs(&sub)?;
        Ok(sub)
    }

    /// [`Qemu::made`] for an agent; the profile itself for the server.
    pub(super) fn node_made<'p>(&self, p: &'p Profile, node: Node) -> Result<Cow<'p, Profile>> {
        match node {
            Node::Server => Ok(Cow::Borrowed(p)),
            Node::Agent(a) => Ok(Cow::Owned(self.made(p, &a)?)),
        }
    }

    /// Boots the agent's VM with the release's agent command line, joined
    /// to the server on the cluster's segment.
    pub(super) fn start_agent(&self, launch: &Launch, node: &AgentNode) -> Result<Host> {
        let p = &launch.profile;
        let agent =
            launch.run.agent.as_ref().ok_or_else(|| DriverError::NoAgentLine { release: launch.release.clone() })?;
        let sub = self.made(p, node)?;
        // Its PKI: the join token, nothing else of the cluster's.
        fskit::create_dir_mode(&sub.pki(), 0o700)?;
        fskit::create_dir_mode(&sub.join_dir(), 0o700)?;
        let token = fskit::read_capped(&p.join_token(), 4096)?;
        if fskit::read_capped(&sub.join_token(), 4096).ok().as_ref() != Some(&token) {
            fskit::write_atomic(&sub.join_token(), &token, 0o600)?;
        }
        // What every node gets under its data directory, from the server's stage.
        guest::stage_agent(&launch.run, &self.host_data(p), &self.host_data(&sub))?;
        let mut l = launch.clone();
        l.profile = sub;
        l.run.args = agent.args.clone();
        l.listen = None;
        l.publish.clear();
        l.join = Some(JoinTarget {
            server: server_l2_address().to_string(),
            port: guest::PORT,
            node: node.node_name(&p.name),
        });
        self.start_node(&l, &NodeNet { cluster: p.dir.clone(), index: node.index, forward: false })
    }

    pub(super) fn delete_agent(&self, p: &Profile, node: &AgentNode) -> Result<()> {
        let sub = node_profile(p, Node::Agent(*node));
        if sub.dir.is_dir() {
            self.delete(&sub, Node::Server)?;
            fskit::remove_tree(&sub.dir)?;
        }
        Ok(())
    }
}
