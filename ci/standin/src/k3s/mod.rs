//! TEST ONLY: the stand-in's k3s mode, taken when it runs as `k3s` (the
//! release's run section names `program = "k3s"`). Besides answering the
//! API, it does to the machine it runs on (a host, a container, a VM guest)
//! the kernel-facing work a real k3s does at start, for real, so that a
//! wiring mistake that would break a first real k3s run fails a test here:
//!
//! - reads its configuration the way k3s does (config file, drop-ins,
//!   `K3S_*` variables, registries.yaml), so a host's settings that leak in
//!   show up (k3s pkg/cli/cmds/config.go, pkg/configfilearg);
//! - reconciles its custom CA with a datastore copy and refuses a different,
//!   newer file on disk (k3s pkg/cluster/bootstrap.go);
//! - makes the kubelet's `kubepods` cgroup with controllers on cgroup v2,
//!   which fails with EBUSY where processes sit in the root of the cgroup
//!   namespace (k3s issue #4085);
//! - loads the kernel modules k3s, kube-proxy and flannel use;
//! - starts one real container: a shim in its own session (carrying the
//!   environment, as containerd's shims do) and under it a process that
//!   pivots into the rootfs of an image archive from the images directory,
//!   in a new mount and network namespace, as runc does;
//! - wires that pod to a bridge (`cni0`) through a veth pair, its netns
//!   bind-mounted at /run/netns/cni-*, and connects from it to the
//!   advertised API address, as the `kubernetes` Service sends pods
//!   (k3s pkg/daemons/control/server.go);
//! - leaves, like k3s, the shim and the pod running when it exits, and
//!   mounts, links, iptables chains and files on the host.
//!
//! What each step found is in `<data-dir>/standin-k3s.json` and in the
//! ConfigMap `kube-system/standin-k3s`; fatal ones end the process, as they
//! end k3s.

pub mod cgroup;
pub mod config;
pub mod datastore;
pub mod host;
pub mod modules;
pub mod podnet;
pub mod sandbox;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};

/// How a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a caveat a real k3s would log.
    Warn,
    /// A real k3s would run, but this part of the cluster would not work.
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check { name, status, detail: detail.into() }
    }
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail)
    }
    pub fn failed(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Failed, detail)
    }
}

/// What every step found, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, c: Check) {
        let word = match c.status {
            Status::Ok => "ok",
            Status::Warn => "warning",
            Status::Failed => "FAILED",
        };
        eprintln!("standin-k3s: {}: {word}: {}", c.name, c.detail);
        self.checks.push(c);
    }

    /// The report as the ConfigMap `kube-system/standin-k3s`.
    pub fn configmap(&self) -> Value {
        let data: serde_json::Map<String, Value> = self
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    json!(format!("{}: {}", serde_json::to_value(c.status).unwrap().as_str().unwrap(), c.detail)),
                )
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "standin-k3s", "namespace": "kube-system"}, "data": data})
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join("standin-k3s.json");
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// The k3s flags the stand-in acts on in k3s mode.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub data_dir: PathBuf,
    pub port: u16,
    pub bind: String,
    pub node_ip: Option<Ipv4Addr>,
    pub advertise_address: Option<Ipv4Addr>,
    pub node_name: Option<String>,
    pub config: Option<PathBuf>,
    pub private_registry: Option<PathBuf>,
    pub token: Option<String>,
    pub cluster_cidr: Option<String>,
    pub flannel_iface: Option<String>,
}

/// The address the `kubernetes` Service sends pods to: the advertise
/// address, else the node IP, else the address of the interface of the
/// default route (k3s pkg/cli/server/server.go; kube-apiserver's default).
pub fn advertised(f: &Flags) -> Option<Ipv4Addr> {
    f.advertise_address.or(f.node_ip).or_else(podnet::default_route_address)
}

/// The node's own steps, run once the API listens. `Err` is fatal.
pub fn node_steps(f: &Flags, cfg: &config::Effective, report: &mut Report) -> anyhow::Result<()> {
    let cgroup = cgroup::kubepods()?;
    report.push(cgroup.check);
    report.push(modules::load());
    report.push(host::root_propagation());
    report.push(host::kept_dirs(&f.data_dir));
    report.push(host::dns());
    // The isolated drivers' data directory is /data (the node's volume or disk).
    report.push(host::sysctls(f.data_dir != Path::new("/data")));
    let pod = sandbox::run_container(&f.data_dir, &cgroup.pods, report);
    match pod {
        Some(pid) => report.push(podnet::wire_and_connect(pid, cfg, advertised(f), (&f.bind, f.port))),
        None => report.push(Check::new("pod network", Status::Warn, "no container runs, so no pod network was made")),
    }
    report.push(podnet::flannel_vxlan(f.flannel_iface.as_deref(), f.node_ip.or_else(|| advertised(f)))?);
    report.push(host::leftovers(cfg));
    Ok(())
}
