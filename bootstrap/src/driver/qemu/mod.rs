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
use std::time::{Duration, Instant};

use kubestrap_fskit as fskit;
use kubestrap_manifest::{Driver as Kind, Manifest, Sha256, Vars};
use serde::{Deserialize, Serialize};

use self::cmdline::{Accel, HostCaps, VmSpec};
use self::doctor::{checks, hypervisor_runs, settings_default};
use self::qmp::Qmp;
use super::native::{self, logs, monitor::LaunchSpec};
use super::{Capabilities, Check, Driver, DriverError, Host, HostState, Launch, Result, Stop, StopOutcome, guest};
use crate::profile::Profile;
use crate::retry::Backoff;
use crate::state::{read as read_state, write as write_state};

pub mod cmdline;
mod config;
mod doctor;
pub mod kvm;
mod qmp;

pub struct Qemu;

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
    fn run(&self, name: &str, args: &[&str], deadline: Duration) -> Result<String> {
        let (program, mut pre) = self.command(name);
        pre.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(&program);
        cmd.args(&pre).envs(self.env());
        let ran = crate::proc::run_bounded(cmd, None::<fn(_)>, None, deadline)
            .map_err(|source| DriverError::Spawn { what: "run the hypervisor", source })?
            .ok_or_else(|| DriverError::Qemu(format!("{name} did not finish within {}s", deadline.as_secs())))?;
        let text = format!("{}{}", ran.stdout, ran.stderr);
        if !ran.status.success() {
            return Err(DriverError::Qemu(format!("{name} {}: {}", args.join(" "), text.trim())));
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

fn tree<'a>(launch: &'a Launch, name: &str) -> Result<&'a PathBuf> {
    launch.trees.get(name).ok_or_else(|| {
        DriverError::Qemu(format!(
            "the release has no {name} for the qemu driver (its manifest must pin one with drivers = [\"qemu\"])"
        ))
    })
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

/// How long a first KVM guest may show nothing on its console.
const KVM_WATCH: Duration = Duration::from_secs(15);
/// The guest init's first words.
const GUEST_ALIVE: &str = "kubestrap-guest:";

/// What the guest wrote to its console since `offset` (at most 1 MiB).
fn console_since(log: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(1 << 20).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The home whose KVM verdict and cached hypervisor the checks look at.
fn checked_home() -> PathBuf {
    crate::home::Home::from_env().map(|h| h.root().to_path_buf()).unwrap_or_else(|_| std::env::temp_dir())
}

impl Qemu {
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
        let booted: Booted = read_state(&booted_path(p))
            .ok()
            .flatten()
            .ok_or_else(|| DriverError::Qemu("no record of how the VM was booted".into()))?;
        let mut q = Qmp::connect(&qmp_socket(p), Duration::from_secs(10)).map_err(DriverError::Qemu)?;
        q.execute("stop", None).map_err(DriverError::Qemu)?;
        q.set_timeout(Duration::from_secs(600));
        if let Err(e) = q.hmp(&format!("savevm {SUSPEND_TAG}")) {
            let _ = q.execute("cont", None);
            return Err(DriverError::Qemu(e));
        }
        write_state(&suspended_path(p), &booted)?;
        let _ = q.execute("quit", None);
        Ok(())
    }

    fn wait_gone(&self, p: &Profile, deadline: Duration) -> bool {
        Backoff::fixed(Duration::from_millis(20))
            .for_at_most(deadline)
            .poll(|| (!native::running(p).unwrap_or(false)).then_some(()))
            .is_some()
    }
}

impl Driver for Qemu {
    fn kind(&self) -> Kind {
        Kind::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { suspend: true, snapshot: true }
    }

    fn check(&self, manifest: Option<&Manifest>) -> Vec<Check> {
        let home = checked_home();
        let mut out = checks(&host_caps(&home).0, manifest, settings_default());
        out.extend(manifest.and_then(|m| hypervisor_runs(&home, m)));
        out
    }

    fn prerequisites(&self, _p: &Profile, manifest: &Manifest) -> Vec<Check> {
        // The hypervisor is re-hashed and run by the start itself.
        checks(&host_caps(&checked_home()).0, Some(manifest), settings_default())
    }

    fn extra_sans(&self) -> Vec<String> {
        vec![cmdline::GUEST_IP.to_string()]
    }

    fn vars(&self, launch: &Launch) -> Vars {
        guest::vars(launch, cmdline::GUEST_IP)
    }

    fn host_vars(&self, launch: &Launch) -> Vars {
        guest::host_vars(launch, cmdline::GUEST_IP, &self.host_data(&launch.profile))
    }

    fn host_data(&self, p: &Profile) -> PathBuf {
        stage(p).join("data")
    }

    fn create(&self, p: &Profile) -> Result<()> {
        for dir in [p.run(), p.logs(), vm_dir(p), disk_dir(p), self.host_data(p)] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        Ok(())
    }

    fn start(&self, launch: &Launch) -> Result<Host> {
        let p = &launch.profile;
        let hv = Hypervisor { tree: tree(launch, "hypervisor")?.clone() };
        let base = tree(launch, "base-image")?.clone();
        let disk = self.ensure_disk(p, &hv)?;
        let set = p.vm_settings();
        let (caps, kvm_booted) = host_caps(&p.home_root());
        let (accel, why) = cmdline::select_accel(&caps, set.accel).map_err(DriverError::Qemu)?;
        // A first guest on KVM is watched: some nested hosts run a test
        // guest, then hang a real one.
        let watch = accel == Accel::Kvm && set.accel.is_none() && !kvm_booted;
        tracing::debug!("qemu accelerator: {why}");

        // The config disk: localkube's command line as the guest runs it.
        let vars = self.vars(launch);
        let mut guest_args = vec![guest::path(&format!("component/{}", launch.run.program))];
        guest_args.extend(launch.run.args.iter().map(|a| a.render(&vars)));
        let next = vm_dir(p).join("config.next.tar");
        let env: Vec<(String, String)> = launch.run.env.iter().map(|(k, v)| (k.clone(), v.render(&vars))).collect();
        let config_sha256 = config::write(
            &config::ConfigDisk {
                args: &guest_args,
                env: &env,
                stop_signal: native::signal_of(launch.run.stop_signal) as i32,
                stop_timeout_s: launch.run.stop_timeout_s,
                component: &launch.component,
                pki: &p.pki(),
                stage: &self.host_data(p),
            },
            &next,
        )?;
        let config_disk = vm_dir(p).join("config.tar");
        let mut spec = VmSpec {
            name: format!("kubestrap-{}", p.name),
            accel,
            cpus: set.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mib: set.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            firmware: hv.firmware(),
            kernel: base.join("vmlinuz"),
            initrd: base.join("initrd.img"),
            data_disk: disk,
            config_disk: config_disk.clone(),
            host_port: launch.port,
            guest_port: guest::PORT,
            // Relative to qemu's working directory (the VM's): a socket's
            // path must fit in 108 bytes, a deep home's would not.
            qmp_socket: PathBuf::from("qmp.sock"),
            loadvm: None,
        };
        let booted = Booted { config_sha256, args: cmdline::args(&spec), accel };
        // Resume only the very VM this start would boot (same release,
        // PKI, placed files, settings); otherwise boot afresh with the data.
        let saved: Option<Booted> = read_state(&suspended_path(p)).ok().flatten();
        let resume = saved.as_ref() == Some(&booted);
        std::fs::rename(&next, &config_disk).map_err(|e| fskit::FsError::io(&config_disk, "write", e))?;
        logs::cap_log(&p.log_file())?;
        let mut console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.log_file())
            .map_err(|e| fskit::FsError::io(p.log_file(), "write", e))?;
        let note = match (&saved, resume) {
            (Some(_), true) => "resuming the suspended VM".to_string(),
            (Some(_), false) => "the saved state was for another release or configuration: booting afresh".into(),
            (None, _) => format!("booting the VM ({why})"),
        };
        let _ = writeln!(console, "kubestrap: {note}");
        let console_start = console.metadata().map(|m| m.len()).unwrap_or(0);
        // The saved state is used once: consumed before qemu starts, so a
        // start cut short, or a VM that crashes later, never goes back to it
        // (that would roll the disk back past what was written since).
        if saved.is_some() {
            fskit::remove_any(&suspended_path(p))?;
        }
        if resume {
            spec.loadvm = Some(SUSPEND_TAG.into());
        }
        write_state(&booted_path(p), &booted)?;
        fskit::remove_any(&qmp_socket(p))?;

        let (program, mut args) = hv.command("qemu-system-x86_64");
        args.extend(cmdline::args(&spec));
        let launch_spec = LaunchSpec {
            sha256: hv.sha256_of(&program)?,
            program,
            args,
            cwd: vm_dir(p),
            log: p.log_file(),
            port: launch.port,
            env: hv.env(),
        };
        let host = native::launch_monitored(p, &launch_spec)?;
        // qemu is up once its control socket answers with the VM running.
        let t = Instant::now();
        let up = Backoff::fixed(Duration::from_millis(20)).for_at_most(Duration::from_secs(60)).poll(|| {
            if !native::running(p).unwrap_or(false) {
                return Some(Err(()));
            }
            let mut q = Qmp::connect(&qmp_socket(p), Duration::from_secs(5)).ok()?;
            (q.status().ok()? == "running").then_some(Ok(()))
        });
        match up {
            Some(Ok(())) => {}
            _ if resume => {
                // The saved state cannot be loaded (damaged, or for another
                // CPU): boot afresh with the data disk, as after a power loss.
                let how = logs::tail(&p.log_file(), 3).join(" / ");
                let _ = native::kill_all(p);
                let _ = writeln!(console, "kubestrap: resuming failed ({how}); booting afresh with the data disk");
                tracing::warn!("resuming the VM of profile {:?} failed ({how}); booting afresh", p.name);
                return self.start(launch);
            }
            _ => {
                let how = logs::tail(&p.log_file(), 5).join(" / ");
                let _ = native::kill_all(p);
                return Err(DriverError::DidNotStart {
                    how: format!(
                        "qemu {} after {:.1}s: {how}",
                        if up.is_none() { "did not run the VM" } else { "exited" },
                        t.elapsed().as_secs_f64()
                    ),
                    log: p.log_file(),
                });
            }
        }
        if watch {
            let record = kvm_record(&p.home_root());
            let alive = Backoff::fixed(Duration::from_millis(100))
                .for_at_most(KVM_WATCH)
                .poll(|| console_since(&p.log_file(), console_start).contains(GUEST_ALIVE).then_some(()))
                .is_some();
            if !alive {
                let why = format!("a guest showed no sign of life within {}s under KVM", KVM_WATCH.as_secs());
                kvm::record_boot(&record, false, &why);
                native::kill_all(p)?;
                let _ = writeln!(console, "kubestrap: {why}; starting again with TCG (until this machine reboots)");
                return self.start(launch);
            }
            kvm::record_boot(&record, true, "a guest booted with KVM");
        }
        Ok(Host { id: format!("vm {} ({}, {accel})", spec.name, host.id), port: launch.port })
    }

    fn running(&self, p: &Profile) -> Result<bool> {
        native::running(p)
    }

    fn stop(&self, p: &Profile, how: Stop) -> Result<StopOutcome> {
        if !native::running(p)? {
            // Nothing runs: clear what a killed VM left (pid file, helpers).
            native::stop(p, how)?;
            return Ok(if suspended_path(p).is_file() { StopOutcome::Suspended } else { StopOutcome::WasNotRunning });
        }
        native::mark_stopping(p)?;
        // A VM left paused (a suspend cut short after it stopped the vCPUs):
        // if its state was saved, that is the suspend, finished; if not, it
        // runs again so the guest can hear the power button.
        if let Ok(mut q) = Qmp::connect(&qmp_socket(p), Duration::from_secs(5))
            && q.status().is_ok_and(|st| st != "running")
        {
            if suspended_path(p).is_file() {
                let _ = q.execute("quit", None);
                self.wait_gone(p, Duration::from_secs(15));
                native::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
                return Ok(StopOutcome::Suspended);
            }
            let _ = q.execute("cont", None);
        }
        if how.suspend {
            match self.suspend_running(p) {
                Ok(()) => {
                    self.wait_gone(p, Duration::from_secs(15));
                    native::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
                    return Ok(StopOutcome::Suspended);
                }
                Err(e) => {
                    tracing::warn!("suspending the VM of profile {:?} failed ({e}); shutting it down", p.name);
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
        let acpi = Qmp::connect(&qmp_socket(p), Duration::from_secs(10))
            .and_then(|mut q| q.execute("system_powerdown", None).map(|_| ()));
        let clean = acpi.is_ok() && self.wait_gone(p, how.timeout + Duration::from_secs(20));
        native::stop(p, Stop { timeout: Duration::from_secs(5), ..how })?;
        Ok(if clean { StopOutcome::Stopped } else { StopOutcome::Killed })
    }

    fn adopt(&self, p: &Profile) -> Result<()> {
        native::adopt(p)
    }

    fn status(&self, p: &Profile) -> Result<HostState> {
        Ok(match native::status(p)? {
            HostState::Stopped if suspended_path(p).is_file() => HostState::Suspended,
            other => other,
        })
    }

    fn delete(&self, p: &Profile) -> Result<()> {
        native::kill_all(p)
    }

    fn log_tail(&self, p: &Profile, n: usize) -> Vec<String> {
        logs::tail(&p.log_file(), n)
    }

    fn follow_log(&self, p: &Profile, out: &mut dyn Write) -> Result<()> {
        Ok(logs::follow(&p.log_file(), out)?)
    }

    /// The data disk, copied (reflinked where the filesystem can); the VM
    /// is shut down, so the disk is at rest.
    fn snapshot(&self, p: &Profile, dest: &Path) -> Result<fskit::Copied> {
        let copied = fskit::copy_tree(&disk_dir(p), dest)?;
        fskit::sync_fs(dest)?;
        Ok(copied)
    }

    fn restore(&self, p: &Profile, src: &Path) -> Result<()> {
        // A saved state belongs to the disk it was saved in.
        fskit::remove_any(&suspended_path(p))?;
        native::swap_in_copy(src, &disk_dir(p), &vm_dir(p).join(".disk-restoring"))
    }
}
