//! Booting one node's VM, as named steps: the config disk (localkube's
//! command line as the guest runs it) → the VM's command line → the saved
//! state, used only for the very VM this boot would make → qemu under the
//! monitor → running (its control socket says so) → a first KVM guest
//! watched for a sign of life. At most three boots per start
//! ([`Qemu::start_node`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubestrap_fskit as fskit;
use kubestrap_manifest::{ComponentName, Sha256};

use super::cmdline::{self, Accel, VmSpec};
use super::{
    Booted, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, Hypervisor, NodeNet, Qemu, SUSPEND_TAG, booted_path, config,
    did_not_start, host_caps, kvm, kvm_record, qmp::Qmp, qmp_socket, suspended_path, tree, vm_dir,
};
use crate::driver::supervisor::{self, logs, monitor::LaunchSpec};
use crate::driver::{Driver, DriverError, Host, Launch, QemuError, Result, guest};
use crate::profile::Profile;
use crate::progress::Step;
use crate::retry::Backoff;
use crate::state::{read as read_state, write as write_state};

/// How long a first KVM guest may show nothing on its console.
const KVM_WATCH: Duration = Duration::from_secs(15);
/// The guest init's first words.
const GUEST_ALIVE: &str = "kubestrap-guest:";

/// Whether a boot may resume the saved state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// When it is this very VM's.
    IfSame,
    /// Boot afresh with the data disk (a resume just failed).
    Never,
}

/// Whether the guest is watched for a sign of life: a first guest under a
/// KVM not yet proven here.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    Guest,
    No,
}

/// How one boot is made.
struct BootPlan {
    accel: Accel,
    /// Why this accelerator (for the log).
    why: String,
    resume: Resume,
    watch: Watch,
}

/// How one boot of the VM went wrong.
enum BootFailure {
    /// The saved state could not be resumed: boot afresh with the data.
    Resume(String),
    /// qemu exited at once, or the guest showed no sign of life, under a
    /// KVM not yet proven here: start again with TCG.
    Kvm(String),
    Other(DriverError),
}

impl From<DriverError> for BootFailure {
    fn from(e: DriverError) -> BootFailure {
        BootFailure::Other(e)
    }
}

impl From<kubestrap_fskit::FsError> for BootFailure {
    fn from(e: kubestrap_fskit::FsError) -> BootFailure {
        BootFailure::Other(e.into())
    }
}

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

impl Qemu<'_> {
    /// Boots (or resumes) one node's VM: see [`Driver::start`].
    pub(super) fn start_node(&self, launch: &Launch, net: &NodeNet) -> Result<Host> {
        let p = &launch.profile;
        let (caps, kvm_booted) = host_caps(self.ctx.home);
        let (accel, why) = cmdline::select_accel(&caps, launch.settings.accel).map_err(QemuError::Accelerator)?;
        // Some nested hosts run a test guest, then hang a real one, or
        // make qemu abort at once ("failed to set MSR"): the first one is watched.
        let first_kvm = accel == Accel::Kvm && launch.settings.accel.is_none() && !kvm_booted;
        let watch = if first_kvm { Watch::Guest } else { Watch::No };
        let mut plan = BootPlan { accel, why, resume: Resume::IfSame, watch };
        let record = kvm_record(self.ctx.home);
        let mut failed: Vec<String> = Vec::new();
        for _ in 0..3 {
            match self.boot(launch, &plan, net) {
                Ok(host) => {
                    if plan.watch == Watch::Guest {
                        kvm::record_boot(&record, true, "a guest booted with KVM")?;
                    }
                    return Ok(host);
                }
                Err(BootFailure::Resume(how)) => {
                    // The saved state cannot be loaded (damaged, or for
                    // another CPU): boot afresh with the data disk.
                    self.ctx.progress.warn(format!(
                        "resuming the VM of profile {:?} failed ({how}); booting afresh with its data disk",
                        p.name
                    ));
                    plan.resume = Resume::Never;
                }
                Err(BootFailure::Kvm(how)) if plan.watch == Watch::Guest => {
                    kvm::record_boot(&record, false, &how)?;
                    let t = Instant::now();
                    self.ctx.progress.step(
                        Step::AccelFallback {
                            why: format!("{how}; starting again with TCG (remembered until this machine reboots)"),
                        },
                        t.elapsed(),
                    );
                    failed.push(format!("with KVM: {how}"));
                    plan = BootPlan {
                        accel: Accel::Tcg,
                        why: "TCG: KVM failed on this machine".into(),
                        watch: Watch::No,
                        ..plan
                    };
                }
                Err(BootFailure::Kvm(how)) => return Err(did_not_start(p, how)),
                Err(BootFailure::Other(e)) if failed.is_empty() => return Err(e),
                Err(BootFailure::Other(e)) => {
                    failed.push(format!("then with TCG: {e}"));
                    return Err(QemuError::Attempts(format!("the VM did not start {}", failed.join("; "))).into());
                }
            }
        }
        Err(QemuError::Attempts(format!("the VM did not start after 3 boots: {}", failed.join("; "))).into())
    }

    /// One boot of the VM, its steps in order.
    fn boot(&self, launch: &Launch, plan: &BootPlan, net: &NodeNet) -> Result<Host, BootFailure> {
        let p = &launch.profile;
        let hv = Hypervisor { tree: tree(launch, ComponentName::Hypervisor)?.clone() };
        tracing::debug!("qemu accelerator: {}", plan.why);
        // A release that runs agents: every node on the cluster's segment,
        // where it is known by its address there.
        let l2 = launch.run.agent.is_some().then(|| net.address());
        let (next, config_sha256) = self.write_config(launch, l2)?;
        let mut spec = self.vm_spec(launch, &hv, plan.accel, net, l2.is_some())?;
        let booted = Booted { config_sha256, args: cmdline::args(&spec), accel: plan.accel };
        let config_disk = vm_dir(p).join("config.tar");
        std::fs::rename(&next, &config_disk).map_err(|e| fskit::FsError::io(&config_disk, "write", e))?;
        let (resume, mut console, console_start) = take_saved(p, &booted, plan)?;
        if resume {
            spec.loadvm = Some(SUSPEND_TAG.into());
        }
        write_state(&booted_path(p), &booted)?;
        fskit::remove_any(&qmp_socket(p))?;
        let host = launch_qemu(p, &hv, &spec, launch.port)?;
        wait_running(p, resume, plan.watch)?;
        if plan.watch == Watch::Guest && !guest_alive(p, console_start) {
            supervisor::kill_all(p)?;
            let how = format!("a guest showed no sign of life within {}s under KVM", KVM_WATCH.as_secs());
            let _ = writeln!(console, "kubestrap: {how}");
            return Err(BootFailure::Kvm(how));
        }
        Ok(Host { id: format!("vm {} ({}, {})", spec.name, host.id, plan.accel), pid: host.pid, port: launch.port })
    }

    /// Step "config disk": localkube's command line, environment and stop
    /// signal as the guest runs them, with the files it is given, written
    /// beside the one in use. Returns it and its sha256.
    fn write_config(&self, launch: &Launch, l2: Option<std::net::Ipv4Addr>) -> Result<(PathBuf, Sha256)> {
        let p = &launch.profile;
        let (ip, iface) = super::guest_net(l2);
        let vars = guest::vars(launch, ip, iface);
        let mut guest_args = vec![guest::path(&format!("component/{}", launch.run.program))];
        guest_args.extend(launch.run.args.iter().map(|a| a.render(&vars)));
        let next = vm_dir(p).join("config.next.tar");
        // The caller's proxies first (the guest's init exports each line in
        // order: what the manifest names wins).
        let mut env = self.ctx.env.proxies();
        env.extend(launch.run.env.iter().map(|(k, v)| (k.clone(), v.render(&vars))));
        let l2_cidr = l2.map(|a| format!("{a}/24"));
        let sha256 = config::write(
            &config::ConfigDisk {
                args: &guest_args,
                env: &env,
                stop_signal: supervisor::signal_of(launch.run.stop_signal) as i32,
                stop_timeout_s: launch.run.stop_timeout_s,
                component: &launch.component,
                pki: &p.pki(),
                stage: &self.host_data(p),
                l2: l2_cidr.as_deref(),
            },
            &next,
        )?;
        Ok((next, sha256))
    }

    /// Step "command line": the VM as qemu is asked to make it.
    fn vm_spec(&self, launch: &Launch, hv: &Hypervisor, accel: Accel, net: &NodeNet, l2: bool) -> Result<VmSpec> {
        let p = &launch.profile;
        let base = tree(launch, ComponentName::BaseImage)?.clone();
        let set = launch.settings;
        Ok(VmSpec {
            name: format!("kubestrap-{}", p.name),
            accel,
            cpus: set.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mib: set.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            firmware: hv.firmware(),
            kernel: base.join("vmlinuz"),
            initrd: base.join("initrd.img"),
            data_disk: self.ensure_disk(p, hv)?,
            config_disk: vm_dir(p).join("config.tar"),
            host_port: launch.port,
            guest_port: guest::PORT,
            listen: launch.listen,
            publish: launch.publish.iter().map(|p| (p.host, p.node)).collect(),
            forward: net.forward,
            l2: l2.then(|| net.spec()),
            // Relative to qemu's working directory (the VM's): a socket's
            // path must fit in 108 bytes, a deep home's would not.
            qmp_socket: PathBuf::from("qmp.sock"),
            loadvm: None,
        })
    }
}

/// Step "saved state": resumed only for the very VM this boot would make
/// (same release, PKI, placed files, settings); used once either way:
/// consumed before qemu starts, so a start cut short, or a VM that crashes
/// later, never goes back to it (that would roll the disk back past what
/// was written since). Returns whether it resumes, and the console log
/// with where this boot's output starts.
fn take_saved(p: &Profile, booted: &Booted, plan: &BootPlan) -> Result<(bool, std::fs::File, u64), BootFailure> {
    let saved: Option<Booted> = read_state(&suspended_path(p)).ok().flatten();
    let resume = plan.resume == Resume::IfSame && saved.as_ref() == Some(booted);
    logs::cap_log(&p.log_file())?;
    let mut console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.log_file())
        .map_err(|e| fskit::FsError::io(p.log_file(), "write", e))?;
    let note = match (&saved, resume) {
        (Some(_), true) => "resuming the suspended VM".to_string(),
        (Some(_), false) => "the saved state was for another release or configuration: booting afresh".into(),
        (None, _) => format!("booting the VM ({})", plan.why),
    };
    let _ = writeln!(console, "kubestrap: {note}");
    let start = console.metadata().map(|m| m.len()).unwrap_or(0);
    if saved.is_some() {
        fskit::remove_any(&suspended_path(p))?;
    }
    Ok((resume, console, start))
}

/// Step "launch": the hypervisor's qemu, re-hashed, under the monitor.
fn launch_qemu(p: &Profile, hv: &Hypervisor, spec: &VmSpec, port: u16) -> Result<Host> {
    let (program, mut args) = hv.command("qemu-system-x86_64");
    args.extend(cmdline::args(spec));
    let launch_spec = LaunchSpec {
        sha256: hv.sha256_of(&program)?,
        program,
        args,
        cwd: vm_dir(p),
        log: p.log_file(),
        port,
        env: hv.env(),
    };
    supervisor::launch_monitored(p, &launch_spec)
}

/// Step "running": qemu is up once its control socket answers with the VM
/// running; how it failed otherwise, told apart for the retry.
fn wait_running(p: &Profile, resume: bool, watch: Watch) -> Result<(), BootFailure> {
    let t = Instant::now();
    let up = Backoff::fixed(Duration::from_millis(20)).for_at_most(Duration::from_secs(60)).poll(|| {
        if !supervisor::running(p).unwrap_or(false) {
            return Some(Err(()));
        }
        let mut q = Qmp::connect(&qmp_socket(p), Duration::from_secs(5)).ok()?;
        (q.status().ok()? == "running").then_some(Ok(()))
    });
    let failure = |what: &str| {
        let how = logs::tail(&p.log_file(), 5).join(" / ");
        let _ = supervisor::kill_all(p);
        format!("qemu {what} after {:.1}s: {how}", t.elapsed().as_secs_f64())
    };
    match up {
        Some(Ok(())) => Ok(()),
        _ if resume => Err(BootFailure::Resume(failure("could not resume it"))),
        Some(Err(())) if watch == Watch::Guest => Err(BootFailure::Kvm(failure("exited at once under KVM"))),
        Some(Err(())) => Err(BootFailure::Other(did_not_start(p, failure("exited")))),
        None => Err(BootFailure::Other(did_not_start(p, failure("did not run the VM")))),
    }
}

/// Step "watch": whether the guest's init spoke on the console in time.
fn guest_alive(p: &Profile, console_start: u64) -> bool {
    Backoff::fixed(Duration::from_millis(100))
        .for_at_most(KVM_WATCH)
        .poll(|| console_since(&p.log_file(), console_start).contains(GUEST_ALIVE).then_some(()))
        .is_some()
}
