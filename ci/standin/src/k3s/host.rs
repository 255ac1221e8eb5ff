//! What else k3s does to the machine it runs on, whatever `--data-dir`
//! says, and leaves there when it exits (k3s's install.sh writes
//! k3s-killall.sh for it): flannel's subnet file (/run/flannel), the
//! kubelet's pod volumes (/var/lib/kubelet/pods, a memory-backed emptyDir
//! is a tmpfs mount), the node password (/etc/rancher/node), and
//! kube-proxy's, the CNI plugins' and flannel's iptables chains (KUBE-*,
//! CNI-*, FLANNEL-*), made here with the machine's iptables where it has one
//! (k3s brings its own).

use std::path::Path;
use std::process::{Command, Stdio};

use super::config::Effective;
use super::{Check, Status};

/// The kubelet wants shared mount propagation for Bidirectional volumes.
pub fn root_propagation() -> Check {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = info.lines().find(|l| l.split(' ').nth(4) == Some("/"));
    match root {
        Some(l) if l.contains(" shared:") => Check::ok("mounts", "/ is a shared mount"),
        Some(_) => Check::new(
            "mounts",
            Status::Warn,
            "/ is not a shared mount: pods with Bidirectional mount propagation fail (`mount --make-rshared /`)",
        ),
        None => Check::failed("mounts", "/ is not in /proc/self/mountinfo"),
    }
}

/// The kernel settings k3s's agent (pkg/agent/syssetup), the kubelet
/// (its kernel tunables) and kube-proxy (route_localnet) set for the whole
/// machine, set here too — on the host only (`native`): in a container the
/// global ones would change this machine for good, as a real k3s in a
/// container does (no driver can take that back), and a VM's are its own.
pub fn sysctls(native: bool) -> Check {
    const SET: [(&str, &str); 4] = [
        ("net/ipv4/conf/all/route_localnet", "1"),
        ("vm/overcommit_memory", "1"),
        ("kernel/panic", "10"),
        ("kernel/panic_on_oops", "1"),
    ];
    if !native {
        return Check::ok("sysctls", "not set in a container or VM (see the stand-in's k3s::host)");
    }
    let mut failed = Vec::new();
    for (name, value) in SET {
        if let Err(e) = std::fs::write(Path::new("/proc/sys").join(name), value) {
            failed.push(format!("{name}: {e}"));
        }
    }
    let names: Vec<String> = SET.iter().map(|(n, v)| format!("{}={v}", n.replace('/', "."))).collect();
    if failed.is_empty() {
        Check::ok("sysctls", format!("set {}", names.join(" ")))
    } else {
        Check::new("sysctls", Status::Warn, format!("could not set {}", failed.join("; ")))
    }
}

/// The nameservers pods get upstream, found as k3s finds them
/// (pkg/agent/config/config.go): `K3S_RESOLV_CONF` (`--resolv-conf`), else
/// /etc/resolv.conf, else systemd-resolved's upstreams; a file whose
/// nameservers are all loopback is unusable (`isValidResolvConf`), and
/// with none usable k3s gives pods 8.8.8.8.
pub fn dns() -> Check {
    let usable = |path: &str| -> Option<Vec<String>> {
        let text = std::fs::read_to_string(path).ok()?;
        let servers: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver").map(str::trim))
            .filter(|s| s.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
            .map(String::from)
            .collect();
        (!servers.is_empty()).then_some(servers)
    };
    let asked = std::env::var("K3S_RESOLV_CONF").ok().filter(|v| !v.is_empty());
    let found = match &asked {
        Some(f) => usable(f).map(|s| (f.clone(), s)),
        None => ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
            .into_iter()
            .find_map(|f| usable(f).map(|s| (f.to_string(), s))),
    };
    match found {
        Some((file, servers)) => {
            Check::ok("dns", format!("pods' upstream nameservers: {} (from {file})", servers.join(" ")))
        }
        None => Check::new(
            "dns",
            Status::Warn,
            format!(
                "no usable nameserver in {}: pods' upstream DNS becomes 8.8.8.8, which an offline machine or a \
                 company network does not reach",
                asked.unwrap_or_else(|| "/etc/resolv.conf".into())
            ),
        ),
    }
}

/// Where the kubelet's root (pods' emptyDirs, its state) and pod logs
/// live: k3s writes /var/lib/kubelet and /var/log/pods whatever
/// `--data-dir` says, so they are kept only where they share the data
/// directory's filesystem (a node's volume or data disk) and are mounts
/// (shared, as the kubelet needs).
pub fn kept_dirs(data_dir: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    let Ok(data) = std::fs::metadata(data_dir) else {
        return Check::failed("kubelet root", format!("{} is missing", data_dir.display()));
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut elsewhere = Vec::new();
    for d in ["/var/lib/kubelet", "/var/log"] {
        let _ = std::fs::create_dir_all(d);
        let same = std::fs::metadata(d).is_ok_and(|m| m.dev() == data.dev());
        let mounted = info.lines().any(|l| l.split(' ').nth(4) == Some(d));
        if !same || !mounted {
            elsewhere.push(d);
        }
    }
    if elsewhere.is_empty() {
        Check::ok(
            "kubelet root",
            format!("/var/lib/kubelet and /var/log are mounts on {}'s filesystem", data_dir.display()),
        )
    } else {
        Check::new(
            "kubelet root",
            Status::Warn,
            format!(
                "{} not on {}'s filesystem: pods' emptyDirs, the kubelet's state and pod logs live in the container's \
                 layer or the machine's root",
                elsewhere.join(" and "),
                data_dir.display()
            ),
        )
    }
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// kube-proxy's, the CNI plugins' and flannel's chains, with the jumps to them.
fn chains(cfg: &Effective) -> String {
    if !iptables(&["-t", "filter", "-S", "INPUT"]) {
        return "no iptables here (k3s brings its own)".into();
    }
    let cni = format!("CNI-{:012x}", crate::store::random_u64() & 0xffff_ffff_ffff);
    let rules: Vec<(&str, &str, String)> = vec![
        ("filter", "FORWARD", "FLANNEL-FWD".into()),
        ("filter", "INPUT", "KUBE-FIREWALL".into()),
        ("nat", "PREROUTING", "KUBE-SERVICES".into()),
        ("nat", "POSTROUTING", "FLANNEL-POSTRTG".into()),
        ("nat", "POSTROUTING", cni.clone()),
    ];
    let mut made = Vec::new();
    for (table, from, chain) in &rules {
        let _ = iptables(&["-t", table, "-N", chain]);
        let comment = format!("standin-k3s {}", cfg.cluster_cidr);
        let jump = ["-t", table, "-A", from, "-m", "comment", "--comment", &comment, "-j", chain];
        if iptables(&jump) {
            made.push(format!("{table}/{chain}"));
        }
    }
    format!("iptables chains {}", made.join(", "))
}

pub fn leftovers(cfg: &Effective) -> Check {
    let mut done = vec![chains(cfg)];
    let mut problems = Vec::new();
    let subnet = "/run/flannel/subnet.env";
    let wrote = std::fs::create_dir_all("/run/flannel").and_then(|()| {
        std::fs::write(subnet, format!("FLANNEL_NETWORK={}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", cfg.cluster_cidr))
    });
    match wrote {
        Ok(()) => done.push(subnet.to_string()),
        Err(e) => problems.push(format!("{subnet}: {e}")),
    }
    let uid = format!("{:032x}", u128::from(crate::store::random_u64()) << 64 | u128::from(crate::store::random_u64()));
    let volume = Path::new("/var/lib/kubelet/pods").join(uid).join("volumes/kubernetes.io~empty-dir/cache");
    let mounted = std::fs::create_dir_all(&volume).map_err(|e| e.to_string()).and_then(|()| {
        nix::mount::mount(Some("tmpfs"), &volume, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
            .map_err(|e| e.to_string())
    });
    match mounted {
        Ok(()) => done.push(format!("emptyDir tmpfs at {}", volume.display())),
        Err(e) => problems.push(format!("{}: {e}", volume.display())),
    }
    let password = Path::new("/etc/rancher/node/password");
    if !password.exists() {
        let wrote = std::fs::create_dir_all("/etc/rancher/node")
            .and_then(|()| std::fs::write(password, format!("{:016x}\n", crate::store::random_u64())));
        match wrote {
            Ok(()) => done.push(password.display().to_string()),
            Err(e) => problems.push(format!("{}: {e}", password.display())),
        }
    }
    if problems.is_empty() {
        Check::ok("host", done.join("; "))
    } else {
        Check::new("host", Status::Warn, format!("{}; could not: {}", done.join("; "), problems.join("; ")))
    }
}
