//! The native driver's node address, for a localkube that names `{node-ip}`
//! (k3s): the apiserver must listen where pods reach it. The `kubernetes`
//! Service sends pods to the advertised address and the https port (k3s
//! pkg/daemons/control/server.go), and k3s's listener is only on
//! `--bind-address` (pkg/cluster/https.go): bound to 127.0.0.1, the host's
//! `/readyz` works while no pod reaches the API (k3s issue #10668). Bound to
//! the host's LAN address, the LAN reaches it.
//!
//! So each such profile gets a private address of its own, from 198.18.0.0/15
//! (reserved for benchmarking, RFC 2544: never a real network's), on a
//! bridge with no ports named after the profile (as docker0 holds Docker's
//! address; a bridge because some kernels have no dummy device), used as
//! node, advertised and bind address and in the kubeconfig. The host reaches
//! it (local delivery), pods reach it through the `cni0` bridge, and a guard
//! chain in the filter table's INPUT drops what comes for it from anywhere
//! else: a LAN neighbour that routes the address to this machine, a
//! container on another bridge.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use kubestrap_manifest::Run;
use sha2::Digest;

use crate::driver::supervisor::process::marker_value;
use crate::driver::{DriverError, Result};
use crate::profile::Profile;

/// The bridge the CNI plugin of k3s's flannel puts pods on.
pub const CNI_BRIDGE: &str = "cni0";

/// Whether `run` asks for a node address of its own.
pub fn wanted(run: &Run) -> bool {
    run.args.iter().chain(run.env.values()).any(|t| t.uses("node-ip"))
}

/// The interface of this machine that holds `addr`.
pub fn iface_of(addr: Ipv4Addr) -> Option<String> {
    let found = nix::ifaddrs::getifaddrs()
        .ok()?
        .find(|i| i.address.as_ref().and_then(|a| a.as_sockaddr_in()).is_some_and(|s| s.ip() == addr));
    found.map(|i| i.interface_name)
}

/// A profile's node address, its link and its guard chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    pub address: Ipv4Addr,
    /// The bridge holding the address (`kubestrap-<5 hex>`, 15 characters).
    pub link: String,
    /// The filter chain that keeps it off the network.
    pub chain: String,
}

impl NodeNet {
    /// Derived from the profile's run directory: the same at every start.
    pub fn of(p: &Profile) -> NodeNet {
        let h = sha2::Sha256::digest(marker_value(&p.run()).as_os_str().as_encoded_bytes());
        let tag = hex::encode(&h[..3])[..5].to_string();
        NodeNet {
            address: Ipv4Addr::new(198, 18 + (h[3] & 1), h[4], 1 + h[5] % 254),
            link: format!("kubestrap-{tag}"),
            chain: format!("KUBESTRAP-{}", tag.to_uppercase()),
        }
    }

    /// Makes the bridge, its address and the guard (idempotent).
    pub fn up(&self, tools: Tools) -> Result<()> {
        if tools.run(&["ip", "link", "show", "dev", &self.link]).is_err() {
            tools.run(&["ip", "link", "add", &self.link, "type", "bridge"])?;
        }
        tools.run(&["ip", "addr", "replace", &format!("{}/32", self.address), "dev", &self.link])?;
        tools.run(&["ip", "link", "set", &self.link, "up"])?;
        let _ = tools.run(&["iptables", "-w", "-N", &self.chain]);
        tools.run(&["iptables", "-w", "-F", &self.chain])?;
        for rule in [&["-i", "lo", "-j", "RETURN"][..], &["-i", CNI_BRIDGE, "-j", "RETURN"], &["-j", "DROP"]] {
            let mut args = vec!["iptables", "-w", "-A", &self.chain];
            args.extend_from_slice(rule);
            tools.run(&args)?;
        }
        let dest = format!("{}/32", self.address);
        let jump = ["-d", dest.as_str(), "-j", self.chain.as_str()];
        let check: Vec<&str> = ["iptables", "-w", "-C", "INPUT"].into_iter().chain(jump).collect();
        if tools.run(&check).is_err() {
            let insert: Vec<&str> = ["iptables", "-w", "-I", "INPUT", "1"].into_iter().chain(jump).collect();
            tools.run(&insert)?;
        }
        Ok(())
    }
}

/// The host programs the native driver runs (ip, iptables), found on the
/// command's PATH (as the CLI read it), else in the sbin directories (a
/// user's PATH may lack them even as root).
#[derive(Clone, Copy)]
pub struct Tools<'a> {
    path: &'a std::ffi::OsStr,
}

impl<'a> Tools<'a> {
    pub fn new(path: &'a std::ffi::OsStr) -> Tools<'a> {
        Tools { path }
    }

    /// Where host program `name` is.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(self.path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Runs `argv` (a host program and its arguments), bounded: its stdout,
    /// or its stderr as the error.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        self.run_with_input(argv, None)
    }

    pub fn run_with_input(&self, argv: &[&str], input: Option<String>) -> Result<String> {
        let (name, args) = argv.split_first().expect("a program");
        let program = self.find(name).ok_or_else(|| DriverError::HostTool {
            command: argv.join(" "),
            why: format!("{name} is not installed"),
        })?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        let feed = input.map(|text| {
            move |mut stdin: std::process::ChildStdin| std::io::Write::write_all(&mut stdin, text.as_bytes())
        });
        let ran = crate::proc::run_bounded(cmd, feed, None, Duration::from_secs(30))
            .map_err(|e| DriverError::HostTool { command: argv.join(" "), why: e.to_string() })?
            .ok_or_else(|| DriverError::HostTool {
                command: argv.join(" "),
                why: "did not finish within 30 s".into(),
            })?;
        if !ran.status.success() {
            return Err(DriverError::HostTool { command: argv.join(" "), why: ran.stderr });
        }
        Ok(ran.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_has_one_address_link_and_chain() {
        let home = tempfile::tempdir().unwrap();
        let h = crate::home::Home::open(home.path().to_path_buf(), Default::default()).unwrap();
        let a = NodeNet::of(&Profile::new(&h, "a").unwrap());
        assert_eq!(a, NodeNet::of(&Profile::new(&h, "a").unwrap()));
        let b = NodeNet::of(&Profile::new(&h, "b").unwrap());
        assert_ne!(a.link, b.link);
        for n in [&a, &b] {
            let [x, y, _, last] = n.address.octets();
            assert!(x == 198 && (y == 18 || y == 19) && last != 0 && last != 255, "{n:?}");
            assert_eq!(n.link.len(), 15, "{n:?}");
            assert!(n.chain.starts_with("KUBESTRAP-") && n.chain.len() <= 28, "{n:?}");
        }
    }
}
