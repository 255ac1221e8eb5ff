use std::path::PathBuf;

/// Lifecycle failures no lower layer describes. Each names the profile,
/// port or file, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    #[error("profile {profile:?} uses the {has} driver, not {asked}")]
    DriverMismatch { profile: String, has: String, asked: String },
    #[error("profile {profile:?} runs manifest {current}; {spec} is {candidate}")]
    OtherRelease { profile: String, current: String, spec: String, candidate: String },
    #[error("--purge removes the download cache, which profile(s) {others} still use")]
    PurgeInUse { others: String },
    #[error("port {port} on 127.0.0.1 is in use by another program")]
    PortInUse { port: u16 },
    #[error("no free port in {from}-{to}")]
    NoFreePort { from: u16, to: u16 },
    #[error("{what}.\nLast lines of {log}:\n{tail}")]
    LocalkubeExited { what: String, log: String, tail: String, advice: String },
    #[error("{what}.\nLast lines of {log}:\n{tail}")]
    NotReady { what: String, log: String, tail: String, advice: String },
    #[error("{what} is not in the cache")]
    NotCached { what: String, profile: String },
    #[error("the manifest has no {component} for this machine")]
    NoComponent { component: kubestrap_manifest::ComponentName },
    #[error("the cluster certificates in {} cannot be used ({reason})", dir.display())]
    Pki { dir: PathBuf, profile: String, reason: String },
    #[error(
        "profile {profile:?}: {placed}; localkube's data was made with another PKI (its datastore keeps the CAs it \
         first started with, and a different file would stop it). Nothing was changed"
    )]
    PlacedPkiDiffers { profile: String, placed: String },
    #[error("profile {profile:?} cannot have {nodes} nodes: {why}")]
    NodesUnsupported { profile: String, nodes: usize, why: String },
    #[error("{asked} nodes asked for; a profile has at most {max}")]
    TooManyNodes { asked: usize, max: usize },
    #[error("profile {profile:?} has no agent node {node:?} (its nodes: {nodes})")]
    NoSuchNode { profile: String, node: String, nodes: String },
    #[error("{name:?} is not a node name (an RFC 1123 name: lowercase letters, digits, '-' and '.')")]
    BadNodeName { name: String },
    #[error("profile {profile:?} is not running")]
    NotRunning { profile: String },
    #[error("{server}: not joined: {why}")]
    JoinRefused { server: String, why: String },
    #[error("profile {profile:?} is not a node of another machine's cluster (`node join` makes one)")]
    NotJoined { profile: String },
    #[error("profile {profile:?} serves its API on 127.0.0.1 only: no other machine can reach it")]
    NotListening { profile: String },
    #[error("profile {profile:?} is node {node} of the cluster at {server}: it has no join line of its own")]
    IsJoined { profile: String, node: String, server: String },
    #[error(
        "--publish: on the native driver the node is this machine, and its ports (NodePort {port}, say) are reached \
         on the node's address already"
    )]
    PublishNative { port: u16 },
    #[error("--publish {publish}: port {port} on 127.0.0.1 is in use by another program (or is the API's)")]
    PublishInUse { publish: String, port: u16 },
    #[error("release {release}'s nodes cannot join across machines: {why}")]
    NoRemoteJoin { profile: String, release: String, why: String },
    #[error("profile {profile:?} has {has} nodes; --nodes {asked} would remove some")]
    FewerNodes { profile: String, has: usize, asked: usize },
}

impl ClusterError {
    /// What to do about it (shown as `hint:`, and as JSON's `hint`).
    pub fn hint(&self) -> Option<String> {
        use ClusterError as E;
        Some(match self {
            E::Profile(e) => return e.hint(),
            E::DriverMismatch { profile, .. } => {
                format!("`kubestrap delete -p {profile}` first to use another driver, or start another profile")
            }
            E::OtherRelease { profile, .. } => format!(
                "changing a cluster's release is an upgrade (`kubestrap upgrade -p {profile}`); or delete the profile to start over with it"
            ),
            E::NodesUnsupported { .. } => {
                "use the docker driver (--driver docker) and a release whose manifest has run.agent".into()
            }
            E::TooManyNodes { .. } | E::BadNodeName { .. } => return None,
            E::NoSuchNode { profile, .. } => format!("`kubestrap node list -p {profile}` lists them"),
            E::JoinRefused { .. } => {
                "run the line `kubestrap node join-command` prints on the server's machine, as printed (its token and \
                 CA fingerprint are the cluster's own)"
                    .into()
            }
            E::NotJoined { profile } => {
                format!("`kubestrap delete -p {profile}` removes a cluster of this machine's own")
            }
            E::IsJoined { server, .. } => {
                format!("run `kubestrap node join-command` on the machine of the server at {server}")
            }
            E::NotListening { profile } => format!(
                "start it with `kubestrap start -p {profile} --listen ADDRESS` (this machine's address on the network \
                 the other machine shares), after `kubestrap stop -p {profile}`"
            ),
            E::NotRunning { profile } => format!("start it first: `kubestrap start -p {profile}`"),
            E::PublishNative { .. } => {
                "leave out --publish: `kubestrap service NAME` prints a Service's URL on the node's address".into()
            }
            E::PublishInUse { .. } => "pick another host port for it (`--publish OTHER:NODE_PORT`)".into(),
            E::NoRemoteJoin { profile, .. } => format!(
                "add nodes on the server's machine instead: `kubestrap node add -p {profile}` (docker or qemu driver)"
            ),
            E::FewerNodes { profile, .. } => {
                format!("remove nodes one at a time with `kubestrap node delete -p {profile} NAME`")
            }
            E::PurgeInUse { .. } => "delete them too (`kubestrap delete --all --purge`), or leave out --purge".into(),
            E::PortInUse { .. } => "free it, or choose another with --port".into(),
            E::NoFreePort { .. } => "choose a port with --port".into(),
            E::LocalkubeExited { advice, .. } | E::NotReady { advice, .. } => advice.clone(),
            E::NotCached { profile, .. } => format!("run `kubestrap start -p {profile}` (or `kubestrap fetch`) first"),
            E::NoComponent { .. } => return None,
            E::Pki { profile, .. } => format!(
                "restore them from a backup, or `kubestrap delete -p {profile}` and start again (its data goes with it)"
            ),
            E::PlacedPkiDiffers { profile, .. } => format!(
                "put the profile's earlier pki/ back (from a backup or a snapshot), or `kubestrap delete -p {profile}` and start again (its data goes with it)"
            ),
        })
    }
}
