//! The cluster lifecycle: `start` as named steps (`start`, `bringup`), `stop`,
//! `delete`, `status`, `upgrade` and rollback (with `snapshot`, `journal`,
//! `recovery`), the nodes of a cluster (`nodes`: the node model every path
//! uses; `node_cmd`: the `node` commands) and joining another machine's
//! (`join`), and what a cluster is made of besides localkube — its PKI,
//! kubeconfig entries, images and the apiserver probe. Every mutating
//! command holds a `session` (the profile's lock and its driver); the
//! release it asks for is a `release::ReleaseRequest`. The profile itself
//! (paths and config) is `crate::profile`, below this layer. Logic only:
//! progress goes out as typed events ([`crate::progress`]), results are
//! returned.

use anyhow::Result;
use kubestrap_fskit::Lock;

use crate::home::Home;
use crate::progress::Progress;

pub mod apiserver;
mod bringup;
mod components;
pub mod doctor;
mod error;
pub mod images;
pub mod join;
pub mod journal;
pub mod kubeconfig;
pub mod node_cmd;
pub mod nodes;
pub mod pki;
mod ports;
pub mod recovery;
pub mod release;
pub mod service;
pub mod session;
pub mod snapshot;
mod start;
pub mod status;
mod stop;
pub mod upgrade;

pub use bringup::{System, Tuning};
pub use error::ClusterError;
pub use nodes::pinned_kubectl;
pub use release::ReleaseRequest;
pub use start::{StartOptions, start};
pub use status::status;
pub use stop::{delete, purge, stop};

use crate::profile::Profile;

/// Takes the profile's lock; says so if it has to wait.
pub fn lock_profile(home: &Home, p: &Profile, wait: bool, progress: &dyn Progress) -> Result<Lock> {
    Ok(home.lock(&format!("profile-{}", p.name), wait, || {
        progress
            .warn(format!("another kubestrap command is working on profile {:?}; waiting for it to finish…", p.name))
    })?)
}
