//! What a node container is shown of this machine, each a file written
//! under the profile and mounted read-only.
//!
//! Pods' upstream DNS. On a user-defined network the
//! container's /etc/resolv.conf names only Docker's embedded DNS,
//! 127.0.0.11, which a pod's own network namespace cannot reach; k3s takes
//! a resolv.conf of loopback nameservers as unusable and gives pods 8.8.8.8
//! instead (k3s pkg/agent/config/config.go `isValidResolvConf`) — no use
//! offline, or behind a company's DNS. So every node gets this machine's
//! own nameservers (from /etc/resolv.conf, else systemd-resolved's list of
//! upstreams, as k3s reads them on a host), mounted read-only at
//! `/run/kubestrap/upstream-resolv.conf`; the entrypoint has k3s use it
//! where the container's own names loopback alone.
//!
//! Its memory. With `--memory` the container's cgroup is limited, but
//! /proc/meminfo still says the whole machine's, and the kubelet reports
//! (and schedules against) that as the node's capacity: a /proc/meminfo of
//! the limit is mounted over it (as k3d does for its nodes).

use std::net::IpAddr;
use std::path::Path;

use kubestrap_fskit as fskit;

use super::bind_mount;
use crate::driver::{Launch, Result, guest};
use crate::profile::Profile;

/// The mounts of what a node container is shown of this machine.
pub(super) fn mounts(launch: &Launch) -> Result<Vec<String>> {
    let p = &launch.profile;
    let mut out: Vec<String> = upstream_mount(p)?.into_iter().collect();
    if let Some(mib) = launch.settings.memory_mib.filter(|_| launch.run.needs_root) {
        let path = p.dir.join("container/meminfo");
        write_if_changed(&path, &meminfo(u64::from(mib) * 1024))?;
        out.push(bind_mount(&path, "/proc/meminfo", true));
    }
    Ok(out)
}

/// A /proc/meminfo of `kib` KiB, none of it in use.
fn meminfo(kib: u64) -> String {
    let mut out = String::new();
    for (k, v) in [("MemTotal", kib), ("MemFree", kib), ("MemAvailable", kib)]
        .into_iter()
        .chain(["Buffers", "Cached", "SwapCached", "SwapTotal", "SwapFree"].map(|k| (k, 0)))
    {
        out.push_str(&format!("{:<16}{v:>8} kB\n", format!("{k}:")));
    }
    out
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fskit::create_dir_mode(dir, 0o700)?;
    }
    if fskit::read_capped_text(path, CAP).ok().as_deref() != Some(text) {
        fskit::write_atomic(path, text.as_bytes(), 0o644)?;
    }
    Ok(())
}

const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];
const CAP: u64 = 64 << 10;

/// The nameservers (not loopback) and the first search line of a resolv.conf.
fn upstreams(text: &str) -> (Vec<IpAddr>, Option<String>) {
    let mut servers = Vec::new();
    let mut search = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let ip = words.next().and_then(|w| w.split('%').next()).and_then(|w| w.parse::<IpAddr>().ok());
                if let Some(ip) = ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) {
                    servers.push(ip);
                }
            }
            Some("search") if search.is_none() => {
                let domains: Vec<&str> = words.filter(|w| w.chars().all(|c| c.is_ascii_graphic())).collect();
                if !domains.is_empty() {
                    search = Some(domains.join(" "));
                }
            }
            _ => {}
        }
    }
    (servers, search)
}

/// This machine's upstream nameservers as a resolv.conf, or None when it has none.
fn host_resolv_conf(files: &[&Path]) -> Option<String> {
    files.iter().find_map(|f| {
        let text = fskit::read_capped_text(f, CAP).ok()?;
        let (servers, search) = upstreams(&text);
        if servers.is_empty() {
            return None;
        }
        let mut out = format!("# This machine's nameservers ({}), for pods (written by kubestrap)\n", f.display());
        // A resolver uses three at most.
        for s in servers.iter().take(3) {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if let Some(s) = search {
            out.push_str(&format!("search {s}\n"));
        }
        Some(out)
    })
}

/// The mount of this machine's nameservers for a node container (written
/// under the profile first), or None where this machine names none.
fn upstream_mount(p: &Profile) -> Result<Option<String>> {
    let files: Vec<&Path> = HOST_FILES.iter().map(Path::new).collect();
    let Some(text) = host_resolv_conf(&files) else { return Ok(None) };
    let path = p.dir.join("container/resolv.conf");
    write_if_changed(&path, &text)?;
    Ok(Some(bind_mount(&path, &guest::path("upstream-resolv.conf"), true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_says_the_limit() {
        let m = meminfo(1536 * 1024);
        assert!(m.starts_with("MemTotal:        1572864 kB\nMemFree:         1572864 kB\n"), "{m}");
        assert!(m.contains("SwapTotal:             0 kB\n"), "{m}");
    }

    #[test]
    fn loopback_resolvers_are_passed_over_for_the_upstreams() {
        let d = tempfile::tempdir().unwrap();
        let (stub, upstream) = (d.path().join("stub"), d.path().join("upstream"));
        std::fs::write(
            &stub,
            "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n",
        )
        .unwrap();
        std::fs::write(
            &upstream,
            "nameserver 10.1.2.3\nnameserver fe80::1%eth0\nnameserver ::1\nsearch corp.example lab.example\n",
        )
        .unwrap();
        let text = host_resolv_conf(&[&stub, &upstream]).unwrap();
        assert!(text.contains("nameserver 10.1.2.3\nnameserver fe80::1\n"), "{text}");
        assert_eq!(text.matches("\nnameserver ").count(), 2, "loopback ::1 left out: {text}");
        assert!(text.ends_with("search corp.example lab.example\n"), "{text}");
        assert!(host_resolv_conf(&[&stub]).is_none(), "only loopback: none");
        assert!(host_resolv_conf(&[&d.path().join("missing")]).is_none());
    }
}
