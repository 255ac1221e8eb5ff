//! The process supervisor the native and qemu drivers share: a program
//! (localkube, or a VM's qemu) launched under its monitor (`kubestrap
//! __monitor`, see `monitor`), detached from the terminal in a session of
//! its own; its pid file, exit record and stop marker; and stopping,
//! adopting and finding every process of a profile by the marker
//! [`process::MARKER`] they carry, even when the pid file is lost or damaged.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::StopSignal;
use nix::sys::signal::{SigHandler, Signal, signal};

use self::monitor::LaunchSpec;
use self::process::{ExitRecord, PidFile, PidInfo, ProcId};
use super::{DriverError, Host, HostState, Result, Stop, StopOutcome};
use crate::profile::Profile;
use crate::retry::Backoff;
use crate::state::{read as read_state, write as write_state};

pub mod logs;
pub mod monitor;
pub mod process;

fn pid_info(profile: &Profile) -> PidInfo {
    PidFile::read(&monitor::pid_path(&profile.run()))
}

/// Present while a stop is under way; holds the localkube it stops.
fn stopping_path(profile: &Profile) -> PathBuf {
    profile.run().join("stopping")
}

/// Whether a stop of this very localkube was asked for (and maybe cut short).
fn stop_asked(profile: &Profile, localkube: &ProcId) -> bool {
    read_state::<ProcId>(&stopping_path(profile)).ok().flatten().is_some_and(|p| p == *localkube)
}

fn last_exit(profile: &Profile) -> Option<ExitRecord> {
    read_state(&monitor::exit_path(&profile.run())).ok().flatten()
}

pub fn signal_of(s: StopSignal) -> Signal {
    match s {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
    }
}

/// Stops processes of this profile: `signal`, up to `timeout`, then SIGKILL.
/// Returns those still alive after that.
fn stop_all(procs: &[ProcId], signal: Signal, timeout: Duration) -> Vec<ProcId> {
    for p in procs {
        p.signal(signal);
    }
    Backoff::fixed(Duration::from_millis(20))
        .for_at_most(timeout)
        .poll(|| (!procs.iter().any(ProcId::alive)).then_some(()));
    for p in procs.iter().filter(|p| p.alive()) {
        p.signal(Signal::SIGKILL);
    }
    procs.iter().filter(|p| !p.wait_gone(Duration::from_secs(5))).copied().collect()
}

fn pids(procs: &[ProcId]) -> String {
    procs.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>().join(", ")
}

fn host(pf: &PidFile) -> Host {
    Host { id: format!("pid {}", pf.localkube.pid), pid: Some(pf.localkube.pid), port: pf.port }
}

/// Puts a copy of `src` in place of `dest`: built at `tmp` beside it, then
/// swapped in by rename, so a kill leaves one or the other.
pub fn swap_in_copy(src: &std::path::Path, dest: &std::path::Path, tmp: &std::path::Path) -> Result<()> {
    fskit::remove_tree(tmp)?;
    fskit::copy_tree(src, tmp)?;
    fskit::sync_fs(tmp)?;
    fskit::remove_tree(dest)?;
    std::fs::rename(tmp, dest).map_err(|e| fskit::FsError::io(tmp, "move into place", e))?;
    fskit::sync_dir(dest.parent().unwrap_or(std::path::Path::new(".")))?;
    Ok(())
}

/// Launches `spec.program` under a monitor (detached, in its own session,
/// marked as the profile's): the native driver's localkube, the qemu
/// driver's hypervisor. Returns once the monitor reports the pid.
/// Refuses if anything of this profile is still running.
pub fn launch_monitored(p: &Profile, spec: &LaunchSpec) -> Result<Host> {
    let run = p.run();
    // Never two localkubes on one data directory, whatever the pid file says.
    let left = process::owned_by(&run);
    if !left.is_empty() {
        return Err(DriverError::StillRunning { profile: p.name.clone(), pids: pids(&left) });
    }
    for stale in [monitor::pid_path(&run), monitor::exit_path(&run), stopping_path(p)] {
        fskit::remove_any(&stale)?;
    }
    tracing::debug!(?spec, "launching under the monitor");
    write_state(&monitor::launch_path(&run), spec)?;
    let exe = std::env::current_exe()
        .map_err(|source| DriverError::Spawn { what: "find the kubestrap executable to run the monitor", source })?;
    let mut cmd = Command::new(exe);
    cmd.arg("__monitor")
        .arg(&run)
        .env(process::MARKER, process::marker_value(&run))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and signal are async-signal-safe; nothing else runs here.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
            let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
            Ok(())
        });
    }
    let mut mon = cmd.spawn().map_err(|source| DriverError::Spawn { what: "start the localkube monitor", source })?;
    // Wait for the monitor to report localkube's pid.
    let report = Duration::from_secs(15);
    let reported = Backoff::fixed(Duration::from_millis(5)).for_at_most(report).poll(|| {
        if let PidInfo::Current(pf) = pid_info(p) {
            return Some(Ok(pf));
        }
        match mon.try_wait() {
            Ok(Some(status)) => {
                let how = last_exit(p).map_or_else(|| format!("monitor {status}"), |r| r.describe());
                Some(Err(DriverError::DidNotStart { how, log: p.log_file() }))
            }
            _ => None,
        }
    });
    match reported {
        Some(Ok(pf)) => {
            // Reap the monitor later if it ends while we still run.
            std::thread::spawn(move || mon.wait());
            Ok(host(&pf))
        }
        Some(Err(e)) => Err(e),
        None => {
            let _ = mon.kill();
            stop_all(&process::owned_by(&run), Signal::SIGKILL, Duration::ZERO);
            Err(DriverError::NoReport(report))
        }
    }
}

/// A start keeps what runs: a stop interrupted before it acted no longer applies.
pub fn adopt(profile: &Profile) -> Result<()> {
    Ok(fskit::remove_any(&stopping_path(profile))?)
}

/// Records that a stop of the running program was asked for (before a
/// driver's own graceful stop: a kill half-way then reads as "stopping").
pub fn mark_stopping(profile: &Profile) -> Result<()> {
    if let PidInfo::Current(pf) = pid_info(profile) {
        write_state(&stopping_path(profile), &pf.localkube)?;
    }
    Ok(())
}

/// Whether the monitored program (localkube, or the VM) still runs.
pub fn running(profile: &Profile) -> Result<bool> {
    Ok(matches!(pid_info(profile), PidInfo::Current(pf) if pf.localkube.alive()))
}

/// Stops the monitored program and everything else of the profile.
pub fn stop(profile: &Profile, how: Stop) -> Result<StopOutcome> {
    let run = profile.run();
    let path = monitor::pid_path(&run);
    let info = PidFile::read(&path);
    let sig = signal_of(how.signal);
    let mut outcome = StopOutcome::WasNotRunning;
    if let PidInfo::Current(pf) = &info {
        // Mark the stop as asked for: if this command is killed half-way,
        // status says "stopping" (then "stopped"), not "crashed", and a
        // start finishes the stop before it starts again.
        write_state(&stopping_path(profile), &pf.localkube)?;
        if pf.localkube.alive() {
            outcome = if pf.localkube.stop(sig, how.timeout) { StopOutcome::Killed } else { StopOutcome::Stopped };
        }
        // Give the monitor a moment to record the exit.
        pf.monitor.wait_gone(Duration::from_secs(2));
    }
    // Whatever is left of this cluster (e.g. containerd and shims of a
    // real k3s; or everything, when the pid file was lost or damaged),
    // found by its marker. With a readable pid file, localkube has had
    // its graceful stop already: the rest is killed.
    // Scanned again until none is left: a monitor caught before it
    // launched localkube (its start was killed a moment earlier) may
    // still launch it while the first ones are being stopped.
    let graceful = !matches!(info, PidInfo::Current(_));
    for _ in 0..8 {
        let left = process::owned_tree(&run);
        if left.is_empty() {
            break;
        }
        let survivors =
            if graceful { stop_all(&left, sig, how.timeout) } else { stop_all(&left, Signal::SIGKILL, Duration::ZERO) };
        if graceful && outcome == StopOutcome::WasNotRunning {
            outcome = StopOutcome::Stopped;
        }
        if !survivors.is_empty() {
            return Err(DriverError::Survived {
                profile: profile.name.clone(),
                pids: pids(&survivors),
                consequence: format!("the pid file {} is kept so it is not started twice", path.display()),
            });
        }
    }
    fskit::remove_any(&path)?;
    fskit::remove_any(&stopping_path(profile))?;
    Ok(outcome)
}

/// The state of the monitored program.
pub fn status(profile: &Profile) -> Result<HostState> {
    let path = monitor::pid_path(&profile.run());
    let pf = match PidFile::read(&path) {
        // Stopped, or stopped by a reboot. Processes of the cluster
        // without a pid file are reported, so `start` clears them.
        PidInfo::Absent | PidInfo::OtherBoot => {
            let left = process::owned_by(&profile.run());
            if left.is_empty() {
                return Ok(HostState::Stopped);
            }
            return Ok(HostState::Crashed {
                how: format!("its pid file is gone but process(es) {} of it still run", pids(&left)),
                host_down: false,
            });
        }
        PidInfo::Damaged(why) => {
            return Ok(HostState::Crashed {
                how: format!("its pid file {} is damaged ({why})", path.display()),
                host_down: false,
            });
        }
        PidInfo::Current(pf) => pf,
    };
    let asked = stop_asked(profile, &pf.localkube);
    if pf.localkube.alive() {
        return Ok(if asked { HostState::Stopping(host(&pf)) } else { HostState::Running(host(&pf)) });
    }
    // A stop that was interrupted after localkube ended.
    if asked {
        return Ok(HostState::Stopped);
    }
    // The monitor writes the exit record as soon as it reaps localkube.
    let record = || last_exit(profile).filter(|r| r.pid == pf.localkube.pid);
    let found = Backoff::fixed(Duration::from_millis(10))
        .for_at_most(Duration::from_secs(2))
        .poll(|| match record() {
            Some(r) => Some(Some(r)),
            None if !pf.monitor.alive() => Some(record()),
            None => None,
        })
        .flatten();
    let how = found.map_or_else(
        || "exited; its monitor is gone too, so how is unknown (killed by kill -9, or with the machine?)".into(),
        |r| r.describe(),
    );
    Ok(HostState::Crashed { how, host_down: false })
}

/// The profile's processes other than its monitor: what is left of the
/// host itself once localkube has ended (the monitor lingers for a moment
/// after it writes the exit record, and is no part of the host).
pub fn host_processes(profile: &Profile) -> Vec<ProcId> {
    let monitor = match PidFile::read(&monitor::pid_path(&profile.run())) {
        PidInfo::Current(pf) => Some(pf.monitor),
        _ => None,
    };
    process::owned_by(&profile.run()).into_iter().filter(|p| Some(*p) != monitor).collect()
}

/// Kills whatever of the profile still runs.
pub fn kill_all(profile: &Profile) -> Result<()> {
    for _ in 0..8 {
        let found = process::owned_tree(&profile.run());
        if found.is_empty() {
            return Ok(());
        }
        let left = stop_all(&found, Signal::SIGKILL, Duration::ZERO);
        if !left.is_empty() {
            return Err(DriverError::Survived {
                profile: profile.name.clone(),
                pids: pids(&left),
                consequence: "not deleted".into(),
            });
        }
    }
    Ok(())
}
