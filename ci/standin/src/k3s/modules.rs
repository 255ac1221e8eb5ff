//! Kernel modules. k3s runs `modprobe` for what it needs (k3s
//! pkg/agent/syssetup/setup.go: overlay, nf_conntrack, br_netfilter,
//! iptable_nat, iptable_filter, ip6table_nat, ip6table_filter; a failure
//! only warns), and kube-proxy's and flannel's rules make the kernel ask
//! modprobe for the matches and targets they use. Each must end up loaded
//! or built in; on a kernel without loadable modules it is built in or
//! missing, which only a rule would tell.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Check, Status};

/// What k3s loads itself, then what kube-proxy (iptables and nftables
/// modes), flannel (vxlan) and the network policy controller (ipset) use.
pub const NEEDED: &[&str] = &[
    "overlay",
    "nf_conntrack",
    "br_netfilter",
    "iptable_nat",
    "iptable_filter",
    "ip6table_nat",
    "ip6table_filter",
    "xt_nat",
    "xt_statistic",
    "xt_comment",
    "xt_mark",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_multiport",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "nft_reject_ipv4",
    "vxlan",
    "veth",
    "bridge",
    "ip_set",
];

fn loaded(m: &str) -> bool {
    Path::new("/sys/module").join(m).exists()
}

fn builtin(m: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let list = std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release.trim())).unwrap_or_default();
    let file = format!("/{m}.ko");
    list.lines().any(|l| l.ends_with(&file) || l.ends_with(&file.replace('_', "-")))
}

pub fn load() -> Check {
    if !Path::new("/proc/modules").exists() {
        return Check::ok("modules", "the kernel has no loadable modules: what k3s needs must be built in");
    }
    let mut missing = Vec::new();
    let mut errors = Vec::new();
    // What was neither loaded nor built in, and modprobe loaded now: what a
    // kernel without a module tree and modprobe would lack.
    let mut probed = Vec::new();
    for m in NEEDED {
        if loaded(m) || builtin(m) {
            continue;
        }
        match Command::new("modprobe").args(["--", m]).stdout(Stdio::null()).output() {
            Ok(out) if out.status.success() && (loaded(m) || builtin(m)) => probed.push(*m),
            Ok(out) => {
                missing.push(*m);
                errors.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            Err(e) => {
                missing.push(*m);
                errors.push(format!("modprobe: {e}"));
            }
        }
    }
    if missing.is_empty() {
        let now = if probed.is_empty() { "none".to_string() } else { probed.join(" ") };
        return Check::ok(
            "modules",
            format!("{} modules loaded or built in; loaded now by modprobe: {now}", NEEDED.len()),
        );
    }
    errors.dedup();
    Check::new("modules", Status::Failed, format!("not available: {} ({})", missing.join(", "), errors.join("; ")))
}
