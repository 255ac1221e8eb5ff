//! Snapshots of a cluster's state, taken through its driver before an
//! upgrade or a rollback: `profiles/<name>/snapshots/<id>/` with the
//! driver's copy of the server's state in `data/`, each agent node's in
//! `nodes/<m02>/`, and `snapshot.toml` (which release the state belongs to,
//! which nodes it holds) written last; the directory is built under a temp name and
//! renamed into place, so a snapshot exists whole or not at all.

use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit, FsError};
use kubestrap_manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::driver::{AgentNode, Driver, DriverError, Node};
use crate::profile::Profile;
use crate::progress::Progress;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Meta {
    /// The kept manifest the state was written by.
    pub manifest: PathBuf,
    /// `<channel>-<version>` of that manifest, and its Kubernetes.
    pub release: String,
    pub kubernetes: String,
    pub taken: String,
    pub reason: String,
    pub files: u64,
    pub bytes: u64,
    /// Files shared with the original by reflink (no bytes copied).
    pub reflinked: u64,
    /// The agent nodes whose state it holds besides the server's (`m02`…);
    /// none in snapshots of a single node or of earlier kubestraps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub id: String,
    pub dir: PathBuf,
    pub meta: Meta,
}

/// Where a snapshot (or one being built) in `dir` keeps a node's state:
/// the server's in `data/`, an agent's in `nodes/<m02>/`.
fn node_dir(dir: &Path, node: Node) -> PathBuf {
    match node {
        Node::Server => dir.join("data"),
        Node::Agent(a) => dir.join(NODES).join(a.short()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{doing} node {node}: {source}")]
    Node { doing: &'static str, node: String, source: DriverError },
    #[error("profile {profile:?} has no snapshot {id:?} (see `kubestrap snapshot list -p {profile}`)")]
    NoSuchSnapshot { profile: String, id: String },
}

const META: &str = "snapshot.toml";
const BUILDING: &str = ".tmp-";
const NODES: &str = "nodes";

/// Takes a snapshot of a stopped cluster: the server's state and each of
/// `agents`'.
pub fn take(
    p: &Profile,
    drv: &dyn Driver,
    agents: &[AgentNode],
    manifest: &Path,
    m: &Manifest,
    reason: &str,
    progress: &dyn Progress,
) -> Result<Snapshot, SnapshotError> {
    let root = p.snapshots();
    fskit::create_dir_mode(&root, 0o700)?;
    sweep(p, progress);
    let now = time::OffsetDateTime::now_utc();
    let id = format!("{}-{}", now.unix_timestamp_nanos() / 1_000_000, m.id());
    let tmp = root.join(format!("{BUILDING}{id}"));
    fskit::create_dir_mode(&tmp, 0o700)?;
    let agents = if drv.runs_agents() { agents } else { &[] };
    if !agents.is_empty() {
        fskit::create_dir_mode(&tmp.join(NODES), 0o700)?;
    }
    // Every node's copy at once (an engine's throwaway container each).
    let mut all = vec![Node::Server];
    all.extend(super::nodes::as_nodes(agents));
    let mut copied = fskit::Copied::default();
    for c in each(&all, "snapshotting", |n| drv.snapshot(p, n, &node_dir(&tmp, n)))? {
        copied += c;
    }
    let nodes = agents.iter().map(AgentNode::short).collect();
    let meta = Meta {
        manifest: manifest.into(),
        release: m.id(),
        kubernetes: m.kubernetes.to_string(),
        taken: kubestrap_manifest::rfc3339(now),
        reason: reason.into(),
        files: copied.files,
        bytes: copied.bytes,
        reflinked: copied.reflinked,
        nodes,
    };
    crate::state::write(&tmp.join(META), &meta)?;
    let dir = root.join(&id);
    std::fs::rename(&tmp, &dir).map_err(|e| FsError::io(&tmp, "move into place", e))?;
    fskit::sync_dir(&root)?;
    Ok(Snapshot { id, dir, meta })
}

/// The snapshot's state in place of the stopped cluster's: the server's,
/// and each of `agents`' that it holds (an agent added after it was taken
/// keeps its own state: it joins the restored server as a node it never
/// knew).
pub fn restore(p: &Profile, drv: &dyn Driver, agents: &[AgentNode], id: &str) -> Result<(), SnapshotError> {
    let snap = find(p, id)?;
    let mut held = vec![Node::Server];
    if drv.runs_agents() {
        held.extend(agents.iter().filter(|n| snap.meta.nodes.contains(&n.short())).map(|n| Node::Agent(*n)));
    }
    each(&held, "restoring", |n| drv.restore(p, n, &node_dir(&snap.dir, n)))?;
    Ok(())
}

/// `f` on every node at once; the first failure names its node.
fn each<T: Send>(
    nodes: &[Node],
    doing: &'static str,
    f: impl Fn(Node) -> Result<T, DriverError> + Sync,
) -> Result<Vec<T>, SnapshotError> {
    nodes
        .iter()
        .zip(super::nodes::for_each_node(nodes, doing, f))
        .map(|(n, r)| r.map_err(|source| SnapshotError::Node { doing, node: n.short(), source }))
        .collect()
}

/// Snapshots that a killed `take` left half made.
fn sweep(p: &Profile, progress: &dyn Progress) {
    for e in fskit::list_dir(&p.snapshots()).unwrap_or_default() {
        if e.file_name().to_string_lossy().starts_with(BUILDING) {
            let _ = fskit::remove_tree(&e.path());
        }
    }
    progress.unswept(fskit::sweep_trash(&p.snapshots()));
}

/// The profile's snapshots, oldest first (damaged ones left out).
pub fn list(p: &Profile) -> Vec<Snapshot> {
    let mut out: Vec<Snapshot> = fskit::list_dir(&p.snapshots())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = crate::state::read::<Meta>(&e.path().join(META)).ok().flatten()?;
            Some(Snapshot { id: e.file_name().to_string_lossy().into_owned(), dir: e.path(), meta })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The newest snapshot of the state a manifest's release wrote.
pub fn latest_for(p: &Profile, manifest: &Path) -> Option<Snapshot> {
    list(p).into_iter().rev().find(|s| s.meta.manifest == manifest)
}

pub fn find(p: &Profile, id: &str) -> Result<Snapshot, SnapshotError> {
    list(p)
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| SnapshotError::NoSuchSnapshot { profile: p.name.clone(), id: id.into() })
}

pub fn remove(p: &Profile, id: &str) -> Result<Snapshot, SnapshotError> {
    let s = find(p, id)?;
    fskit::remove_tree(&s.dir)?;
    Ok(s)
}

/// The manifests any profile points at, ran before its last upgrade, or
/// has a snapshot of (`rollback` needs their components).
pub fn all_manifest_paths(home: &crate::home::Home) -> Result<std::collections::BTreeSet<PathBuf>, FsError> {
    let mut out = std::collections::BTreeSet::new();
    for name in crate::profile::names(home)? {
        let Ok(p) = Profile::new(home, &name) else { continue };
        if let Ok(cfg) = p.load() {
            out.insert(cfg.manifest);
            out.extend(cfg.previous);
        }
        out.extend(list(&p).into_iter().map(|s| s.meta.manifest));
    }
    Ok(out)
}
