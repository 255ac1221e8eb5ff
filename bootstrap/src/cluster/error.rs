use std::path::PathBuf;

/// Lifecycle failures no lower layer describes. Each names the profile,
/// port or file, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    #[error("profile {profile:?} uses the {has} driver; delete it first to use {asked}")]
    DriverMismatch { profile: String, has: String, asked: String },
    #[error(
        "profile {profile:?} runs manifest {current}; {spec} is {candidate}. Changing a cluster's release is an upgrade; delete the profile to start over with it"
    )]
    OtherRelease { profile: String, current: String, spec: String, candidate: String },
    #[error(
        "--purge removes the download cache, which profile(s) {others} still use; delete them too (`kubestrap delete --all --purge`), or leave out --purge"
    )]
    PurgeInUse { others: String },
    #[error("port {port} on 127.0.0.1 is in use by another program; free it, or choose another with --port")]
    PortInUse { port: u16 },
    #[error("no free port in {from}-{to}; choose one with --port")]
    NoFreePort { from: u16, to: u16 },
    #[error("{what}.\nLast lines of {log}:\n{tail}\n{advice}")]
    LocalkubeExited { what: String, log: String, tail: String, advice: String },
    #[error("{what}.\nLast lines of {log}:\n{tail}\n{advice}")]
    NotReady { what: String, log: String, tail: String, advice: String },
    #[error("{what} is not in the cache; run `kubestrap start -p {profile}` (or `kubestrap fetch`) first")]
    NotCached { what: String, profile: String },
    #[error("the manifest has no {component} for this machine")]
    NoComponent { component: kubestrap_manifest::ComponentName },
    #[error(
        "the cluster certificates in {} cannot be used ({reason}); restore them from a backup, or `kubestrap delete -p {profile}` and start again (its data goes with it)",
        dir.display()
    )]
    Pki { dir: PathBuf, profile: String, reason: String },
    #[error(
        "profile {profile:?}: {placed}; localkube's data was made with another PKI (its datastore keeps the CAs it \
         first started with, and a different file would stop it). Nothing was changed. Put the profile's earlier \
         pki/ back (from a backup or a snapshot), or `kubestrap delete -p {profile}` and start again (its data \
         goes with it)"
    )]
    PlacedPkiDiffers { profile: String, placed: String },
}
