//! The profile's own network on the engine: a fixed subnet, so that every
//! node's address is the same at every start.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, failed};
use super::{CALL, LABEL, home_id};
use crate::driver::{DockerErrorKind, Result};
use crate::profile::Profile;
use crate::state::{read as read_state, write as write_state};

pub(super) fn network_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}", p.name, home_id(p))
}

pub(super) fn network_path(p: &Profile) -> PathBuf {
    p.dir.join("container/network.toml")
}

/// The profile's own network: localkube's node address is fixed on it
/// (`{node-ip}`: k3s's node, advertised and bind address), the same at
/// every start, which the engine's default bridge cannot promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Network {
    pub(super) name: String,
    pub(super) subnet: String,
    pub(super) gateway: Ipv4Addr,
    pub(super) node: Ipv4Addr,
}

/// The subnet and gateway of an existing network.
pub(super) fn network_ipam(eng: &Engine, name: &str) -> Result<Option<(String, Ipv4Addr)>> {
    let format = "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}};{{end}}";
    let out = match eng.docker(&["network", "inspect", "--format", format, name], CALL) {
        Ok(out) => out,
        Err(e) if e.is_docker(DockerErrorKind::NoSuchNetwork) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The IPv4 pool (a network may also have an IPv6 one).
    Ok(out.split(';').filter_map(|c| c.trim().split_once(' ')).find_map(|(subnet, gw)| {
        let gw: Ipv4Addr = gw.parse().ok()?;
        Some((subnet.to_string(), gw))
    }))
}

/// Makes the profile's network if it is missing. The engine picks a free
/// subnet (it knows its other networks and the machine's routes); the
/// network is then made again with that subnet named, since a fixed
/// container address needs a subnet the user configured.
pub(super) fn ensure_network(eng: &Engine, p: &Profile) -> Result<Network> {
    let name = network_name(p);
    let labels = [format!("{LABEL}.profile={}", p.name), format!("{LABEL}.home={}", home_id(p))];
    let label_args: Vec<&str> = labels.iter().flat_map(|l| ["--label", l.as_str()]).collect();
    let mut ipam = network_ipam(eng, &name)?;
    for _ in 0..3 {
        if ipam.is_some() {
            break;
        }
        let mut create = vec!["network", "create"];
        create.extend(&label_args);
        create.push(&name);
        eng.docker(&create, CALL)?;
        let picked = network_ipam(eng, &name)?;
        eng.docker(&["network", "rm", &name], CALL)?;
        let Some((subnet, gateway)) = picked else { continue };
        let gw = gateway.to_string();
        let mut pinned = vec!["network", "create", "--subnet", &subnet, "--gateway", &gw];
        pinned.extend(&label_args);
        pinned.push(&name);
        // Another network may have taken the subnet meanwhile: pick again.
        if eng.docker(&pinned, CALL).is_ok() {
            ipam = network_ipam(eng, &name)?;
        }
    }
    let (subnet, gateway) = ipam.ok_or_else(|| failed(format!("cannot make the network {name}")))?;
    let node = Ipv4Addr::from(u32::from(gateway) + 1);
    let net = Network { name, subnet, gateway, node };
    if read_state::<Network>(&network_path(p)).ok().flatten().as_ref() != Some(&net) {
        write_state(&network_path(p), &net)?;
    }
    Ok(net)
}

/// The node address the profile's network gives localkube (unspecified
/// before its first start: only the paths matter then).
pub(super) fn node_ip(p: &Profile) -> Ipv4Addr {
    read_state::<Network>(&network_path(p)).ok().flatten().map_or(Ipv4Addr::UNSPECIFIED, |n| n.node)
}
