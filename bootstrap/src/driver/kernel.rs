//! What this machine's kernel has that a localkube on it (natively, or in
//! a container, which shares it) cannot add itself from inside a
//! container: the modules k3s would otherwise `modprobe`.

use std::path::Path;

use super::{Check, Gate};

/// The kernel's overlay filesystem and bridge netfilter, as /proc shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modules {
    /// containerd's overlayfs snapshotter.
    pub overlay: bool,
    /// Pod traffic through iptables (kube-proxy's Services, flannel).
    pub br_netfilter: bool,
}

impl Modules {
    pub fn probe() -> Modules {
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        Modules {
            overlay: filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")),
            br_netfilter: Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        }
    }

    /// One advisory check per module; `inside` says why k3s cannot load it itself.
    pub fn checks(self, inside: &str) -> Vec<Check> {
        [
            ("overlay", self.overlay, "the overlay filesystem (containerd's snapshotter)"),
            ("br_netfilter", self.br_netfilter, "bridge netfilter (pod traffic through iptables)"),
        ]
        .into_iter()
        .map(|(name, ok, what)| {
            Check::new(
                &format!("module {name}"),
                ok,
                &format!("{what}: {}", if ok { "available" } else { "not loaded" }),
                &format!("run `sudo modprobe {name}` on this machine ({inside})"),
                Gate::Advisory,
            )
        })
        .collect()
    }
}
