//! What the isolated drivers (qemu, docker) share: where localkube finds its
//! files inside the guest, and the host's staging tree that feeds them.

use std::net::Ipv4Addr;
use std::path::Path;

use kubestrap_manifest::Vars;

use super::Launch;

/// The apiserver's port inside the guest.
pub const PORT: u16 = 6443;
/// Where the guest finds what kubestrap gives it (component, PKI, data seed).
pub const CONFIG: &str = "/run/kubestrap";

/// localkube's data directory in the guest: the node's volume or data disk.
pub const DATA: &str = "/data";

/// `rel` under the guest's config directory.
pub fn path(rel: &str) -> String {
    format!("{CONFIG}/{rel}")
}

/// localkube's template values as the guest sees them. It binds every
/// interface of the guest, which is reachable only through the driver's
/// 127.0.0.1 forward; `node_ip` is the guest's own address.
pub fn vars(launch: &Launch, node_ip: Ipv4Addr) -> Vars {
    let p = &launch.profile;
    let vars = Vars {
        data: DATA.into(),
        pki: path("pki"),
        port: PORT,
        bind: "0.0.0.0".into(),
        profile: p.name.clone(),
        node: format!("kubestrap-{}", p.name),
        node_ip: node_ip.to_string(),
        component: path("component"),
        server: node_ip.to_string(),
        token: path("pki/join/token"),
    };
    launch.joined(vars)
}

/// The same values as the host sees them: the staging tree at `host_data`.
pub fn host_vars(launch: &Launch, node_ip: Ipv4Addr, host_data: &Path) -> Vars {
    Vars {
        data: host_data.display().to_string(),
        pki: launch.profile.pki().display().to_string(),
        component: launch.component.display().to_string(),
        token: launch.profile.join_token().display().to_string(),
        ..vars(launch, node_ip)
    }
}
