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
    pub modules: crate::driver::kernel::Modules,
    /// (pid, name) of kubelet/k3s/containerd processes kubestrap did not start.
    pub foreign: Vec<(i32, String)>,
    /// The host programs the node address and the cleanup after k3s use, missing.
    pub missing_tools: Vec<&'static str>,
    /// Whether `/` is a shared mount (the kubelet's mount propagation).
    pub root_shared: bool,
    /// A host firewall that drops pods' traffic to the node address unless
    /// told not to: "firewalld" or "ufw".
    pub firewall: Option<&'static str>,
    /// The filesystem of kubestrap's home (the data directories), where
    /// containerd's overlayfs snapshotter cannot work on it.
    pub no_overlay_fs: Option<&'static str>,
}

/// Filesystems overlayfs refuses as its upper directory (statfs magic):
/// containerd's overlayfs snapshotter then fails (containerd
/// `OverlaySupported`), and k3s with it.
const NO_OVERLAY: [(i64, &str); 4] = [
    (0x2fc1_2fc1, "ZFS (overlay needs ZFS 2.2 or later)"),
    (0xf15f, "eCryptfs (an encrypted home)"),
    (0x6969, "NFS"),
    (0x794c_7630, "overlay (this machine is itself a container)"),
];

fn firewall() -> Option<&'static str> {
    let pid = fs::read_to_string("/run/firewalld/firewalld.pid").ok().and_then(|s| s.trim().parse::<u32>().ok());
    if pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
        return Some("firewalld");
    }
    let ufw = kubestrap_fskit::read_capped_text(Path::new("/etc/ufw/ufw.conf"), 64 << 10).unwrap_or_default();
    ufw.lines().any(|l| l.trim() == "ENABLED=yes").then_some("ufw")
}

fn no_overlay_fs(dir: &Path) -> Option<&'static str> {
    // The home may not exist yet: its nearest existing ancestor.
    let dir = dir.ancestors().find(|d| d.exists())?;
    let magic = nix::sys::statfs::statfs(dir).ok()?.filesystem_type().0 as i64;
    NO_OVERLAY.iter().find(|(m, _)| *m == magic).map(|(_, name)| *name)
}

impl Machine {
    pub fn probe(tools: super::node::Tools, home: &Path) -> Machine {
        let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .ok()
            .map(|s| s.split_whitespace().map(String::from).collect());
        Machine {
            euid: nix::unistd::geteuid().as_raw(),
            procfs: Path::new("/proc/self/stat").is_file(),
            cgroup2_controllers: controllers,
            modules: crate::driver::kernel::Modules::probe(),
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
            firewall: firewall(),
            no_overlay_fs: no_overlay_fs(home),
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
    out.extend(machine.modules.checks("k3s tries that itself, which fails inside a container"));
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
    out.push(match machine.firewall {
        None => Check::new(
            "firewall",
            true,
            "no firewalld or ufw filters this machine's traffic",
            "",
            Gate::Advisory,
        ),
        Some(fw) => Check::new(
            "firewall",
            false,
            &format!("{fw} is on: it drops pods' traffic to the API and to each other unless k3s's networks are let in"),
            &if fw == "firewalld" {
                "let the pod and Service networks in: `firewall-cmd --permanent --zone=trusted --add-source=10.42.0.0/16 \
                 --add-source=10.43.0.0/16 && firewall-cmd --reload`, or use --driver docker or --driver qemu"
                    .to_string()
            } else {
                "let the pod and Service networks in: `ufw allow from 10.42.0.0/16 to any && ufw allow from \
                 10.43.0.0/16 to any`, or use --driver docker or --driver qemu"
                    .to_string()
            },
            Gate::Advisory,
        ),
    });
    out.push(Check::new(
        "data filesystem",
        machine.no_overlay_fs.is_none(),
        &match machine.no_overlay_fs {
            None => "kubestrap's home is on a filesystem overlayfs works on".to_string(),
            Some(fs) => format!("kubestrap's home is on {fs}: containerd's overlayfs snapshotter cannot work there"),
        },
        "put kubestrap's home on a local ext4 or xfs filesystem (`--home DIR`, or KUBESTRAP_HOME), or use --driver \
         docker or --driver qemu",
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
            modules: crate::driver::kernel::Modules { overlay: true, br_netfilter: true },
            foreign: vec![],
            missing_tools: vec![],
            root_shared: true,
            firewall: None,
            no_overlay_fs: None,
        }
    }

    fn failing(machine: &Machine, m: Option<&Manifest>) -> Vec<String> {
        checks(machine, m).into_iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn a_localkube_without_root_needs_only_procfs() {
        let mut m = k3s("1.33.1");
        m.component.localkube.run.needs_root = false;
        let machine = Machine {
            euid: 1000,
            cgroup2_controllers: None,
            modules: crate::driver::kernel::Modules { overlay: false, br_netfilter: true },
            ..good()
        };
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
            modules: crate::driver::kernel::Modules { overlay: true, br_netfilter: false },
            foreign: vec![(42, "kubelet".into())],
            missing_tools: vec!["iptables"],
            root_shared: false,
            firewall: Some("firewalld"),
            no_overlay_fs: Some("eCryptfs (an encrypted home)"),
            ..good()
        };
        assert_eq!(
            failing(&bad, Some(&m)),
            [
                "root",
                "cgroups",
                "module br_netfilter",
                "host tools",
                "mount propagation",
                "firewall",
                "data filesystem",
                "other kubernetes"
            ]
        );
        let all = checks(&bad, Some(&m));
        let root = all.iter().find(|c| c.name == "root").unwrap();
        assert!(root.blocking && root.detail.contains("uid 1000"), "{root:?}");
        assert!(root.advice.as_deref().unwrap().contains("--driver qemu"));
        let cg = all.iter().find(|c| c.name == "cgroups").unwrap();
        assert!(cg.detail.contains("cpuset, io, memory"), "{cg:?}");
        assert!(all.iter().find(|c| c.name == "other kubernetes").unwrap().detail.contains("kubelet (pid 42)"));
        let fw = all.iter().find(|c| c.name == "firewall").unwrap();
        assert!(!fw.blocking && fw.advice.as_deref().unwrap().contains("--add-source=10.42.0.0/16"), "{fw:?}");
        let ufw = checks(&Machine { firewall: Some("ufw"), ..good() }, Some(&m));
        let ufw = ufw.iter().find(|c| c.name == "firewall").unwrap();
        assert!(ufw.advice.as_deref().unwrap().contains("ufw allow from 10.42.0.0/16"), "{ufw:?}");
        let data = all.iter().find(|c| c.name == "data filesystem").unwrap();
        assert!(data.detail.contains("eCryptfs") && data.advice.as_deref().unwrap().contains("--home"), "{data:?}");
    }

    #[test]
    fn the_home_filesystem_is_read_from_the_kernel() {
        // This machine's temp directory: tmpfs or a disk, never one overlay refuses here.
        let d = tempfile::tempdir().unwrap();
        let fs_type = nix::sys::statfs::statfs(d.path()).unwrap().filesystem_type().0 as i64;
        let want = NO_OVERLAY.iter().find(|(m, _)| *m == fs_type).map(|(_, n)| *n);
        assert_eq!(no_overlay_fs(&d.path().join("not/made/yet")), want);
    }

    #[test]
    fn cgroup_v1_is_refused_from_kubernetes_1_35() {
        let v1 = Machine { cgroup2_controllers: None, ..good() };
        assert!(failing(&v1, Some(&k3s("1.34.3"))).is_empty());
        assert_eq!(failing(&v1, Some(&k3s("1.35.0"))), ["cgroups"]);
    }
}
