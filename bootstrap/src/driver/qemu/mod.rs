//! The qemu driver: localkube in a VM of the manifest's pinned hypervisor
//! and base image (a kernel and an initramfs whose init runs localkube).
//! The VM's process is kept like the native driver's localkube (the same
//! monitor, pid file, exit record and marker), so stop, status and delete
//! share that code; what differs is how it starts (a data disk, a config
//! disk, a command line) and how it stops: `stop` suspends it (its RAM and
//! devices saved into the data disk, `start` resumes them), `stop
//! --shutdown` powers it off through ACPI.
//!
//! Files, under `profiles/<name>/vm/`: `disk/data.qcow2` (the persistent
//! data disk: snapshotted by upgrades), `config.tar` (the config disk,
//! written at each boot), `stage/data/` (files placed under localkube's
//! `{data}`, copied in at boot), `qmp.sock`, `booted.toml` and
//! `suspended.toml` (what the saved state belongs to). The guest's console
//! and qemu's own messages are the profile's log (written by the monitor,
//! capped like a native localkube's).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest, Sha256, Vars};
use serde::{Deserialize, Serialize};

use self::cmdline::{Accel, HostCaps};
use self::doctor::{checks, hypervisor_runs};
use self::qmp::Qmp;
use super::supervisor::{self, logs};
use super::{
    Check, Context, Description, Driver, DriverError, Host, HostState, Launch, Node, QemuError, Result, Stop,
    StopOutcome, guest,
};
use crate::profile::Profile;
use crate::retry::Backoff;
use crate::state::{read as read_state, write as write_state};

mod agents;
mod boot;

use agents::node_profile;
pub mod cmdline;
mod config;
mod doctor;
pub mod kvm;
mod qmp;

pub const DESCRIPTION: Description = Description {
    kind: Kind::Qemu,
    needs: &[ComponentName::Hypervisor, ComponentName::BaseImage],
    marks: Some("vm"),
    here: |_| Ok("the release brings a VM for this machine".into()),
    make: |ctx| Box::new(Qemu { ctx }),
};

pub struct Qemu<'a> {
    ctx: Context<'a>,
}

/// The internal snapshot a suspend saves and a start resumes.
const SUSPEND_TAG: &str = "kubestrap-suspend";
/// The data disk's size (sparse: it takes what the guest writes).
const DISK_GIB: u32 = 40;
/// Defaults when `start` names none.
const DEFAULT_MEMORY_MIB: u32 = 2048;
const DEFAULT_CPUS: u16 = 2;

fn vm_dir(p: &Profile) -> PathBuf {
    p.dir.join("vm")
}
fn disk_dir(p: &Profile) -> PathBuf {
    vm_dir(p).join("disk")
}
fn stage(p: &Profile) -> PathBuf {
    vm_dir(p).join("stage")
}
fn qmp_socket(p: &Profile) -> PathBuf {
    vm_dir(p).join("qmp.sock")
}
fn booted_path(p: &Profile) -> PathBuf {
    vm_dir(p).join("booted.toml")
}
fn suspended_path(p: &Profile) -> PathBuf {
    vm_dir(p).join("suspended.toml")
}

/// What a running VM was booted with: a suspend saves it beside the state,
/// and a start resumes only the VM it would boot anyway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Booted {
    config_sha256: Sha256,
    /// qemu's arguments (without `-loadvm`).
    args: Vec<String>,
    accel: Accel,
}

/// The hypervisor tree's programs, run through its own loader when it has
/// one (a Linux tree of Debian's qemu with its libraries).
struct Hypervisor {
    tree: PathBuf,
}

impl Hypervisor {
    fn loader(&self) -> Option<PathBuf> {
        Some(self.tree.join("lib/ld-linux-x86-64.so.2")).filter(|l| l.is_file())
    }
    /// (program to execute, arguments before qemu's own) for `bin/<name>`.
    fn command(&self, name: &str) -> (PathBuf, Vec<String>) {
        let bin = self.tree.join("bin").join(name);
        match self.loader() {
            Some(loader) => (
                loader,
                vec!["--library-path".into(), self.tree.join("lib").display().to_string(), bin.display().to_string()],
            ),
            None => (bin, Vec::new()),
        }
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![("QEMU_MODULE_DIR".into(), self.tree.join("lib/qemu").display().to_string())]
    }
    fn firmware(&self) -> PathBuf {
        self.tree.join("share/qemu")
    }
    /// Runs a helper (`qemu-img`) to completion, bounded in time.
    fn run(&self, name: &'static str, args: &[&str], deadline: Duration) -> Result<String> {
        let (program, mut pre) = self.command(name);
        pre.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(&program);
        cmd.args(&pre).envs(self.env());
        let ran = crate::proc::run_bounded(cmd, None::<fn(_)>, None, deadline)
            .map_err(|source| DriverError::Spawn { what: "run the hypervisor", source })?
            .ok_or(QemuError::ToolTimedOut { tool: name, secs: deadline.as_secs() })?;
        let text = format!("{}{}", ran.stdout, ran.stderr);
        if !ran.status.success() {
            return Err(QemuError::Tool { tool: name, args: args.join(" "), detail: text.trim().to_string() }.into());
        }
        Ok(text)
    }
    /// The sha256 the store recorded for a file of the tree.
    fn sha256_of(&self, program: &Path) -> Result<Sha256> {
        let rel = program.strip_prefix(&self.tree).unwrap_or(program).display().to_string();
        crate::artifacts::store::complete_list(&self.tree)
            .ok()
            .and_then(|mut l| l.remove(&rel))
            .and_then(|r| r.ok())
            .ok_or(DriverError::ProgramMissing { path: program.to_path_buf() })
    }
}

fn tree(launch: &Launch, name: ComponentName) -> Result<&PathBuf> {
    Ok(launch.trees.get(&name).ok_or(QemuError::MissingArtifact(name))?)
}

fn kvm_record(home: &Path) -> PathBuf {
    home.join("state/kvm-probe.toml")
}

/// What this machine offers qemu; `home` keeps the KVM probe's answer.
/// Also says whether a guest has booted with KVM yet.
pub fn host_caps(home: &Path) -> (HostCaps, bool) {
    let known = kvm::usable(&kvm_record(home));
    tracing::debug!("KVM: {}", known.why);
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        o => o,
    };
    (HostCaps { os: os.into(), kvm: known.usable, kvm_why: known.why, hvf: false, whpx: false }, known.booted)
}

impl Qemu<'_> {
    /// Creates the data disk on first start (sparse qcow2, atomically).
    fn ensure_disk(&self, p: &Profile, hv: &Hypervisor) -> Result<PathBuf> {
        let dir = disk_dir(p);
        fskit::create_dir_mode(&dir, 0o700)?;
        let disk = dir.join("data.qcow2");
        if disk.is_file() {
            return Ok(disk);
        }
        let tmp = fskit::temp_sibling(&disk);
        let size = format!("{DISK_GIB}G");
        let result = hv.run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &tmp.display().to_string(), &size],
            Duration::from_secs(30),
        );
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &disk).map_err(|e| fskit::FsError::io(&disk, "create", e))?;
        fskit::sync_dir(&dir)?;
        Ok(disk)
    }

    /// Saves the VM's state into its data disk and ends qemu.
    fn suspend_running(&self, p: &Profile) -> Result<()> {
        let booted: Booted = read_state(&booted_path(p)).ok().flatten().ok_or(QemuError::NotBooted)?;
        let mut q = Qmp::connect(&qmp_socket(p), Duration::from_secs(10)).map_err(QemuError::Qmp)?;
        q.execute("stop", None).map_err(QemuError::Qmp)?;
        q.set_timeout(Duration::from_secs(600));
        crate::killpoint::reached("savevm");
        if let Err(e) = q.hmp(&format!("savevm {SUSPEND_TAG}")) {
            let _ = q.execute("cont", None);
            return Err(QemuError::Qmp(e).into());
        }
        write_state(&suspended_path(p), &booted)?;
        crate::killpoint::reached("savevm done");
        let _ = q.execute("quit", None);
        Ok(())
    }

    fn wait_gone(&self, p: &Profile, deadline: Duration) -> bool {
        Backoff::fixed(Duration::from_millis(20))
            .for_at_most(deadline)
            .poll(|| (!supervisor::running(p).unwrap_or(false)).then_some(()))
            .is_some()
    }
}

/// The private network of a cluster's VMs: one segment per cluster (a
/// multicast group of its own on 127.0.0.1), addresses by node index (the
/// server is 1), made only for a release that runs agents.
#[derive(Clone, Debug)]
struct NodeNet {
    /// The profile of the cluster (the server's).
    cluster: PathBuf,
    index: u16,
    /// Whether the apiserver's port is forwarded to this machine (the server's VM).
    forward: bool,
}

/// The nodes' subnet: from the range reserved for benchmarks (RFC 2544), so
/// never a network a user's machine routes.
const L2_NET: [u8; 3] = [198, 19, 77];

impl NodeNet {
    fn server(p: &Profile) -> NodeNet {
        NodeNet { cluster: p.dir.clone(), index: 1, forward: true }
    }
    fn address(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(L2_NET[0], L2_NET[1], L2_NET[2], self.index as u8)
    }
    fn spec(&self) -> cmdline::L2 {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.cluster.as_os_str().as_encoded_bytes());
        // An administratively scoped group (239/8) and a port of the cluster's own.
        let port = 20000 + (u16::from_be_bytes([h[3], h[4]]) % 40000);
        cmdline::L2 {
            mcast: format!("239.{}.{}.{}:{port}", h[0], h[1], h[2].max(1)),
            mac: format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[5] & 0xfe, h[6], h[7], self.index),
        }
    }
}

/// The server VM's address on its cluster's L2 segment.
/// The guest's node address and the interface holding it: its address on
/// the cluster's segment (eth1) where it has one, else the user-mode
/// network's (eth0). Other nodes reach its pods only through the first:
/// flannel must be told so, as it picks the default route's (eth0) itself
/// (k3s pkg/agent/flannel/flannel.go `LookupExtInterface`).
pub(super) fn guest_net(l2: Option<std::net::Ipv4Addr>) -> (std::net::Ipv4Addr, &'static str) {
    match l2 {
        Some(a) => (a, "eth1"),
        None => (cmdline::GUEST_IP, "eth0"),
    }
}

pub fn server_l2_address() -> std::net::Ipv4Addr {
    NodeNet { cluster: PathBuf::new(), index: 1, forward: true }.address()
}

fn did_not_start(p: &Profile, how: String) -> DriverError {
    DriverError::DidNotStart { how, log: p.log_file() }
}

impl Driver for Qemu<'_> {
    fn kind(&self) -> Kind {
        Kind::Qemu
    }

    fn check(&self, manifest: Option<&Manifest>) -> Vec<Check> {
        let home = self.ctx.home;
        let mut out = checks(&host_caps(home).0, manifest, self.ctx.settings);
        out.extend(manifest.and_then(|m| hypervisor_runs(home, m)));
        out
    }

    /// With the accelerator asked (`--accel kvm` without KVM is refused
    /// before anything is fetched); the hypervisor is re-hashed and run by
    /// the start itself.
    fn prerequisites(&self, _p: &Profile, manifest: &Manifest) -> Vec<Check> {
        checks(&host_caps(self.ctx.home).0, Some(manifest), self.ctx.settings)
    }

    /// The guest's address, and the server's on its cluster's L2 segment
    /// (where agents reach it).
    fn extra_sans(&self, _p: &Profile) -> Vec<String> {
        vec![cmdline::GUEST_IP.to_string(), server_l2_address().to_string()]
    }

    fn node_reach(
        &self,
        _p: &Profile,
        _cfg: &crate::profile::Config,
    ) -> std::result::Result<std::net::Ipv4Addr, String> {
        Err("a VM's ports are not forwarded to this machine (only its API is, to 127.0.0.1)".into())
    }

    fn vars(&self, launch: &Launch) -> Vars {
        let (ip, iface) = guest_net(launch.run.agent.is_some().then(server_l2_address));
        guest::vars(launch, ip, iface)
    }

    fn host_vars(&self, launch: &Launch) -> Vars {
        let (ip, iface) = guest_net(launch.run.agent.is_some().then(server_l2_address));
        guest::host_vars(launch, ip, iface, &self.host_data(&launch.profile))
    }

    fn host_data(&self, p: &Profile) -> PathBuf {
        stage(p).join("data")
    }

    fn runs_agents(&self) -> bool {
        true
    }

    fn create(&self, launch: &Launch, node: Node) -> Result<()> {
        match node {
            Node::Server => self.create_dirs(&launch.profile),
            Node::Agent(a) => self.made(&launch.profile, &a).map(drop),
        }
    }

    /// Boots (or resumes) the node's VM. At most three boots: a resume that
    /// fails boots afresh with the data; a first guest on a KVM not yet
    /// proven here that makes qemu exit at once, or shows no sign of life,
    /// boots again with TCG (the verdict kept until the machine reboots).
    /// When TCG fails too, the error names both attempts.
    fn start(&self, launch: &Launch, node: Node) -> Result<Host> {
        match node {
            Node::Server => self.start_node(launch, &NodeNet::server(&launch.profile)),
            Node::Agent(a) => self.start_agent(launch, &a),
        }
    }

    fn running(&self, p: &Profile, node: Node) -> Result<bool> {
        supervisor::running(&node_profile(p, node))
    }

    fn stop(&self, p: &Profile, node: Node, how: Stop) -> Result<StopOutcome> {
        let sub = node_profile(p, node);
        if !sub.dir.is_dir() {
            return Ok(StopOutcome::WasNotRunning);
        }
        self.stop_vm(&sub, how)
    }

    fn adopt(&self, p: &Profile) -> Result<()> {
        supervisor::adopt(p)
    }

    fn status(&self, p: &Profile, node: Node) -> Result<HostState> {
        self.status_vm(&node_profile(p, node))
    }

    /// An agent's VM and its directory; for the server, the VM's
    /// processes, and any agent VM of the profile's (found on disk,
    /// whatever the config says).
    fn delete(&self, p: &Profile, node: Node) -> Result<()> {
        if let Node::Agent(a) = node {
            return self.delete_agent(p, &a);
        }
        for e in fskit::list_dir(&p.dir.join("nodes")).unwrap_or_default() {
            let sub = Profile { name: format!("{}-{}", p.name, e.file_name().to_string_lossy()), dir: e.path() };
            supervisor::kill_all(&sub)?;
        }
        supervisor::kill_all(p)
    }

    fn log_tail(&self, p: &Profile, node: Node, n: usize) -> Vec<String> {
        logs::tail(&node_profile(p, node).log_file(), n)
    }

    fn follow_log(&self, p: &Profile, node: Node, out: &mut dyn Write) -> Result<()> {
        Ok(logs::follow(&node_profile(p, node).log_file(), out)?)
    }

    /// The data disk, copied (reflinked where the filesystem can); the VM
    /// is shut down, so the disk is at rest.
    fn snapshot(&self, p: &Profile, node: Node, dest: &Path) -> Result<fskit::Copied> {
        let p = &self.node_made(p, node)?;
        let copied = fskit::copy_tree(&disk_dir(p), dest)?;
        fskit::sync_fs(dest)?;
        Ok(copied)
    }

    fn restore(&self, p: &Profile, node: Node, src: &Path) -> Result<()> {
        let p = &self.node_made(p, node)?;
        // A saved state belongs to the disk it was saved in.
        fskit::remove_any(&suspended_path(p))?;
        supervisor::swap_in_copy(src, &disk_dir(p), &vm_dir(p).join(".disk-restoring"))
    }
}

impl Qemu<'_> {
    /// The node's directories (server or agent alike).
    fn create_dirs(&self, p: &Profile) -> Result<()> {
        for dir in [p.run(), p.logs(), vm_dir(p), disk_dir(p), self.host_data(p)] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        Ok(())
    }

    /// Stops one node's VM: suspended, or powered off (see [`Driver::stop`]).
    fn stop_vm(&self, p: &Profile, how: Stop) -> Result<StopOutcome> {
        if !supervisor::running(p)? {
            // Nothing runs: clear what a killed VM left (pid file, helpers).
            supervisor::stop(p, how)?;
            return Ok(if suspended_path(p).is_file() { StopOutcome::Suspended } else { StopOutcome::WasNotRunning });
        }
        supervisor::mark_stopping(p)?;
        // A VM left paused (a suspend cut short after it stopped the vCPUs):
        // if its state was saved, that is the suspend, finished; if not, it
        // runs again so the guest can hear the power button.
        if let Ok(mut q) = Qmp::connect(&qmp_socket(p), Duration::from_secs(5))
            && q.status().is_ok_and(|st| st != "running")
        {
            if suspended_path(p).is_file() {
                let _ = q.execute("quit", None);
                self.wait_gone(p, Duration::from_secs(15));
                supervisor::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
                return Ok(StopOutcome::Suspended);
            }
            let _ = q.execute("cont", None);
        }
        if how.suspend {
            match self.suspend_running(p) {
                Ok(()) => {
                    self.wait_gone(p, Duration::from_secs(15));
                    supervisor::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
                    return Ok(StopOutcome::Suspended);
                }
                Err(e) => {
                    self.ctx.progress.warn(format!(
                        "suspending the VM of profile {:?} failed ({e}); shutting it down instead",
                        p.name
                    ));
                }
            }
        }
        fskit::remove_any(&suspended_path(p))?;
        // A saved state a resume left in the disk goes before the disk is at
        // rest (an upgrade copies it); the next suspend would replace it.
        if let Err(e) = Qmp::connect(&qmp_socket(p), Duration::from_secs(5)).and_then(|mut q| {
            q.set_timeout(Duration::from_secs(60));
            q.hmp(&format!("delvm {SUSPEND_TAG}"))
        }) {
            tracing::debug!("dropping the saved state from the data disk: {e}");
        }
        // ACPI power-off: the guest stops localkube with its own signal and
        // timeout, unmounts the data disk and powers off.
        crate::killpoint::reached("powerdown");
        let acpi = Qmp::connect(&qmp_socket(p), Duration::from_secs(10))
            .and_then(|mut q| q.execute("system_powerdown", None).map(|_| ()));
        let clean = acpi.is_ok() && self.wait_gone(p, how.timeout + Duration::from_secs(20));
        supervisor::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
        Ok(if clean { StopOutcome::Stopped } else { StopOutcome::Killed })
    }

    fn status_vm(&self, p: &Profile) -> Result<HostState> {
        Ok(match supervisor::status(p)? {
            HostState::Stopped if suspended_path(p).is_file() => HostState::Suspended,
            // qemu is the VM: with nothing of it left running, the host is
            // down too.
            HostState::Crashed { how, .. } => {
                HostState::Crashed { how, host_down: supervisor::host_processes(p).is_empty() }
            }
            other => other,
        })
    }
}
