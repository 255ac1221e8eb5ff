//! What the native driver needs of this machine: `kubestrap doctor` shows
//! every check; `start` refuses to begin when a blocking one fails.

use std::fs;
use std::path::Path;

use kubestrap_manifest::Manifest;

use crate::driver::supervisor::process::MARKER;
use crate::driver::{Check, Gate};

/// The machine facts the checks read, gathered once (tests pass their own).
#[derive(Clone, Debug)]
pub struct Machine {
    pub euid: u32,
    pub procfs: bool,
    /// The controllers of the cgroup v2 root, `None` on cgroup v1 (or hybrid).
    pub cgroup2_controllers: Option<Vec<String>>,
    pub overlay: bool,
    pub br_netfilter: bool,
    /// (pid, name) of kubelet/k3s/containerd processes kubestrap did not start.
    pub foreign: Vec<(i32, String)>,
    /// The host programs the node address and the cleanup after k3s use, missing.
    pub missing_tools: Vec<&'static str>,
    /// Whether `/` is a shared mount (the kubelet's mount propagation).
    pub root_shared: bool,
}

impl Machine {
    pub fn probe(tools: super::node::Tools) -> Machine {
        let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .ok()
            .map(|s| s.split_whitespace().map(String::from).collect());
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        Machine {
            euid: nix::unistd::geteuid().as_raw(),
            procfs: Path::new("/proc/self/stat").is_file(),
            cgroup2_controllers: controllers,
            overlay: filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")),
            br_netfilter: Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
            foreign: foreign_kubernetes(),
            missing_tools: ["ip", "iptables", "iptables-save", "iptables-restore"]
                .into_iter()
                .filter(|t| tools.find(t).is_none())
                .collect(),
            root_shared: fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .find(|l| l.split(' ').nth(4) == Some("/"))
                .is_some_and(|l| l.contains(" shared:")),
        }
    }
}

/// Names of processes that hold the ports and state a k3s needs.
const KUBERNETES_PROCESSES: [&str; 5] = ["kubelet", "k3s-server", "k3s-agent", "k3s", "kube-apiserver"];

/// Kubernetes processes not started by kubestrap (they lack its marker).
fn foreign_kubernetes() -> Vec<(i32, String)> {
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    let marker = format!("{MARKER}=");
    let mut out: Vec<(i32, String)> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            if !KUBERNETES_PROCESSES.contains(&comm) {
                return None;
            }
            let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = env.split(|b| *b == 0).any(|kv| kv.starts_with(marker.as_bytes()));
            (!ours).then(|| (pid, comm.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The controllers k3s's own `check-config` wants on cgroup v2.
const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// The native driver's checks for running `m`'s localkube (or, without a
/// manifest, the ones every localkube needs). Long on purpose: one flat
/// list of checks of a few lines each, in the order `doctor` shows them.
pub fn checks(machine: &Machine, m: Option<&Manifest>) -> Vec<Check> {
    let mut out = vec![Check::new(
        "procfs",
        machine.procfs,
        if machine.procfs { "/proc is mounted" } else { "/proc is not mounted" },
        "the native driver finds its processes through /proc: mount it",
        Gate::Blocking,
    )];
    let Some(m) = m.filter(|m| m.component.localkube.run.needs_root) else { return out };
    let lk = &m.component.localkube;
    let root = machine.euid == 0;
    out.push(Check::new(
        "root",
        root,
        &if root {
            format!("running as root, as {} {} needs on the host", lk.run.program, lk.version)
        } else {
            format!("running as uid {}; {} {} needs root on the host", machine.euid, lk.run.program, lk.version)
        },
        "run `sudo -E kubestrap start` (-E keeps your KUBECONFIG and home), or use `--driver qemu` or \
         `--driver docker`, which need no root",
        Gate::Blocking,
    ));
    let v1_refused = m.kubernetes >= semver::Version::new(1, 35, 0);
    out.push(match &machine.cgroup2_controllers {
        Some(have) => {
            let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !have.iter().any(|h| h == c)).collect();
            Check::new(
                "cgroups",
                missing.is_empty(),
                &if missing.is_empty() {
                    format!("cgroup v2 with {}", CONTROLLERS.join(", "))
                } else {
                    format!("cgroup v2 lacks the {} controller(s)", missing.join(", "))
                },
                "enable the controllers in /sys/fs/cgroup/cgroup.subtree_control (inside a container: run it \
                 with --cgroupns=private and a writable cgroup), or use --driver qemu",
                Gate::Advisory,
            )
        }
        None => Check::new(
            "cgroups",
            !v1_refused,
            &if v1_refused {
                format!("cgroup v1: the kubelet of Kubernetes {} refuses it", m.kubernetes)
            } else {
                format!("cgroup v1 (Kubernetes {} still runs on it; 1.35 and later refuse it)", m.kubernetes)
            },
            "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2), or use --driver qemu",
            Gate::Advisory,
        ),
    });
    for (name, ok, what) in [
        ("overlay", machine.overlay, "the overlay filesystem (containerd's snapshotter)"),
        ("br_netfilter", machine.br_netfilter, "bridge netfilter (pod traffic through iptables)"),
    ] {
        out.push(Check::new(
            &format!("module {name}"),
            ok,
            &format!("{what}: {}", if ok { "available" } else { "not loaded" }),
            &format!("run `sudo modprobe {name}` (k3s tries that itself, which fails inside a container)"),
            Gate::Advisory,
        ));
    }
    let tools = &machine.missing_tools;
    out.push(Check::new(
        "host tools",
        tools.is_empty(),
        &if tools.is_empty() {
            "ip and iptables are installed (the node address, its guard, the cleanup after k3s)".to_string()
        } else {
            format!("{} not installed: the node address and the cleanup after k3s use them", tools.join(", "))
        },
        "install iproute2 and iptables (`apt-get install iproute2 iptables`)",
        Gate::Blocking,
    ));
    out.push(Check::new(
        "mount propagation",
        machine.root_shared,
        if machine.root_shared {
            "/ is a shared mount"
        } else {
            "/ is not a shared mount: pods with Bidirectional mount propagation would fail"
        },
        "run `mount --make-rshared /` (systemd does it at boot), or use --driver docker or --driver qemu",
        Gate::Advisory,
    ));
    let foreign = &machine.foreign;
    out.push(Check::new(
        "other kubernetes",
        foreign.is_empty(),
        &if foreign.is_empty() {
            "no kubelet or k3s runs on this machine outside kubestrap".to_string()
        } else {
            let list: Vec<String> = foreign.iter().map(|(pid, n)| format!("{n} (pid {pid})")).collect();
            format!("{} already run(s) here and hold(s) the kubelet's ports", list.join(", "))
        },
        "stop the other Kubernetes (e.g. `systemctl stop k3s`), or use --driver qemu or --driver docker",
        Gate::Blocking,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k3s(kubernetes: &str) -> Manifest {
        let good = include_str!("../../../../manifests/tests/fixtures/good.toml");
        let mut m = Manifest::parse(good.as_bytes(), Path::new("good.toml")).unwrap();
        m.kubernetes = kubernetes.parse().unwrap();
        m.component.localkube.run.needs_root = true;
        m.component.localkube.run.program = "k3s".into();
        m
    }

    fn good() -> Machine {
        Machine {
            euid: 0,
            procfs: true,
            cgroup2_controllers: Some(CONTROLLERS.iter().map(|c| c.to_string()).collect()),
            overlay: true,
            br_netfilter: true,
            foreign: vec![],
            missing_tools: vec![],
            root_shared: true,
        }
    }

    fn failing(machine: &Machine, m: Option<&Manifest>) -> Vec<String> {
        checks(machine, m).into_iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn a_localkube_without_root_needs_only_procfs() {
        let mut m = k3s("1.33.1");
        m.component.localkube.run.needs_root = false;
        let machine = Machine { euid: 1000, cgroup2_controllers: None, overlay: false, ..good() };
        assert_eq!(checks(&machine, Some(&m)).len(), 1);
        assert!(failing(&machine, Some(&m)).is_empty());
    }

    #[test]
    fn k3s_checks_say_what_fails_and_what_to_do() {
        let m = k3s("1.33.1");
        assert!(failing(&good(), Some(&m)).is_empty());
        let bad = Machine {
            euid: 1000,
            cgroup2_controllers: Some(vec!["cpu".into(), "pids".into()]),
            br_netfilter: false,
            foreign: vec![(42, "kubelet".into())],
            missing_tools: vec!["iptables"],
            root_shared: false,
            ..good()
        };
        assert_eq!(
            failing(&bad, Some(&m)),
            ["root", "cgroups", "module br_netfilter", "host tools", "mount propagation", "other kubernetes"]
        );
        let all = checks(&bad, Some(&m));
        let root = all.iter().find(|c| c.name == "root").unwrap();
        assert!(root.blocking && root.detail.contains("uid 1000"), "{root:?}");
        assert!(root.advice.as_deref().unwrap().contains("--driver qemu"));
        let cg = all.iter().find(|c| c.name == "cgroups").unwrap();
        assert!(cg.detail.contains("cpuset, io, memory"), "{cg:?}");
        assert!(all.iter().find(|c| c.name == "other kubernetes").unwrap().detail.contains("kubelet (pid 42)"));
    }

    #[test]
    fn cgroup_v1_is_refused_from_kubernetes_1_35() {
        let v1 = Machine { cgroup2_controllers: None, ..good() };
        assert!(failing(&v1, Some(&k3s("1.34.3"))).is_empty());
        assert_eq!(failing(&v1, Some(&k3s("1.35.0"))), ["cgroups"]);
    }
}
