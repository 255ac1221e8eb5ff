//! What the isolated drivers (qemu, docker) share: where localkube finds its
//! files inside the guest, and the host's staging tree that feeds them.

use std::net::Ipv4Addr;
use std::path::Path;

use kubestrap_fskit::{self as fskit, FsError};
use kubestrap_manifest::{Run, Vars};

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
/// 127.0.0.1 forward; `node_ip` is the guest's own address, on `iface`.
pub fn vars(launch: &Launch, node_ip: Ipv4Addr, iface: &str) -> Vars {
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
        node_iface: iface.into(),
        listen: launch.listen.unwrap_or(Ipv4Addr::LOCALHOST).to_string(),
    };
    launch.joined(vars)
}

/// The same values as the host sees them: the staging tree at `host_data`.
pub fn host_vars(launch: &Launch, node_ip: Ipv4Addr, iface: &str, host_data: &Path) -> Vars {
    Vars {
        data: host_data.display().to_string(),
        pki: launch.profile.pki().display().to_string(),
        component: launch.component.display().to_string(),
        token: launch.profile.join_token().display().to_string(),
        ..vars(launch, node_ip, iface)
    }
}

/// An agent's stage: what every node of the cluster is given under its
/// data directory besides the PKI, mirrored from the server's stage
/// (`server_stage`): the run section's files, and the image archives
/// localkube imports (k3s: each node's containerd imports only its own
/// `{data}/agent/images`, pkg/agent/config/config.go). Made again at every
/// start of the agent: hard links where it can (an archive is replaced,
/// never changed in place), copies elsewhere. Returns how many archives.
pub fn stage_agent(run: &Run, server_stage: &Path, stage: &Path) -> Result<usize, FsError> {
    if stage.exists() {
        fskit::remove_tree(stage)?;
    }
    fskit::create_dir_mode(stage, 0o700)?;
    super::place_files(run, stage)?;
    let Some(images) = &run.images_dir else { return Ok(0) };
    let (from, to) = (server_stage.join(images.data_relative()), stage.join(images.data_relative()));
    fskit::create_dir_mode(&to, 0o700)?;
    let mut n = 0;
    for e in fskit::list_dir(&from).unwrap_or_default() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let dest = to.join(&name);
        if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).map_err(|err| FsError::io(&dest, "copy to", err))?;
        }
        n += 1;
    }
    Ok(n)
}
