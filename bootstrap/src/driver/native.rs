//! The native driver: localkube as a host process, detached from the
//! terminal (own session), parented by its monitor (see `monitor`).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::monitor::{self, LaunchSpec};
use super::process::{ExitRecord, PidFile};
use super::{Driver, HostState, Launch, StopOutcome};
use crate::exit::{Code, coded};
use crate::fsutil;
use crate::profile::Profile;

pub struct Native;

fn pid_file(profile: &Profile) -> Result<Option<PidFile>> {
    PidFile::read(&monitor::pid_path(&profile.run()))
}

/// Present while a stop is under way.
fn stopping_path(profile: &Profile) -> PathBuf {
    profile.run().join("stopping")
}

fn last_exit(profile: &Profile) -> Option<ExitRecord> {
    let text = fs::read_to_string(monitor::exit_path(&profile.run())).ok()?;
    toml::from_str(&text).ok()
}

impl Driver for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn extra_sans(&self) -> Vec<String> {
        Vec::new()
    }

    fn start(&self, launch: &Launch) -> Result<i32> {
        let p = &launch.profile;
        let run = p.run();
        fsutil::create_dir_mode(&run, 0o700)?;
        fsutil::create_dir_mode(&p.logs(), 0o700)?;
        fsutil::create_dir_mode(&p.data(), 0o700)?;
        for stale in [monitor::pid_path(&run), monitor::exit_path(&run), stopping_path(p)] {
            fsutil::remove_any(&stale)?;
        }
        let vars = launch.vars();
        let program = launch.component.join(&launch.run.program);
        if !program.is_file() {
            return Err(coded(
                Code::CorruptCache,
                format!(
                    "{}: the manifest's run.program is missing from the unpacked component; run `kubestrap cache verify`",
                    program.display()
                ),
            ));
        }
        let spec = LaunchSpec {
            program,
            args: launch.run.args.iter().map(|a| a.render(&vars)).collect(),
            cwd: p.data(),
            log: p.log_file(),
            port: launch.port,
        };
        tracing::debug!(?spec, "launching localkube");
        fsutil::write_atomic(&monitor::launch_path(&run), toml::to_string(&spec)?.as_bytes(), 0o600)?;
        let exe = std::env::current_exe().context("cannot find the kubestrap executable to run the monitor")?;
        let mut cmd = Command::new(exe);
        cmd.arg("__monitor").arg(&run).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid and signal are async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut mon = cmd.spawn().context("cannot start the localkube monitor")?;
        // Wait for the monitor to report localkube's pid.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(pf) = pid_file(p)? {
                // Reap the monitor later if it ends while we still run.
                std::thread::spawn(move || mon.wait());
                return Ok(pf.localkube.pid);
            }
            if let Some(status) = mon.try_wait()? {
                let how = last_exit(p).map_or_else(|| format!("monitor {status}"), |r| r.describe());
                return Err(coded(
                    Code::LocalkubeExited,
                    format!("localkube did not start ({how}); see {}", p.log_file().display()),
                ));
            }
            if Instant::now() > deadline {
                let _ = mon.kill();
                return Err(coded(Code::Driver, "the localkube monitor did not report a pid within 15s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn running(&self, profile: &Profile) -> Result<bool> {
        Ok(pid_file(profile)?.is_some_and(|pf| pf.localkube.alive()))
    }

    fn stop(&self, profile: &Profile, signal: i32, timeout: Duration) -> Result<StopOutcome> {
        let path = monitor::pid_path(&profile.run());
        let Some(pf) = PidFile::read(&path)? else { return Ok(StopOutcome::WasNotRunning) };
        // Mark the stop as asked for: if this command is killed half-way,
        // status says "stopped", not "crashed".
        fsutil::write_atomic(&stopping_path(profile), b"", 0o600)?;
        let outcome = if !pf.localkube.alive() {
            StopOutcome::WasNotRunning
        } else if pf.localkube.stop(signal, timeout) {
            StopOutcome::Killed
        } else {
            StopOutcome::Stopped
        };
        // Give the monitor a moment to record the exit. Then whatever localkube
        // left in the monitor's process group (e.g. containerd and shims of a
        // real k3s) is killed, each one verified by its start time.
        pf.monitor.wait_gone(Duration::from_secs(2));
        for leftover in pf.monitor.group_members() {
            leftover.signal(libc::SIGKILL);
            leftover.wait_gone(Duration::from_secs(5));
        }
        if pf.localkube.alive() {
            return Err(coded(
                Code::Driver,
                format!(
                    "localkube (pid {}) survived SIGKILL; the pid file {} is kept so it is not started twice",
                    pf.localkube.pid,
                    path.display()
                ),
            ));
        }
        fsutil::remove_any(&path)?;
        fsutil::remove_any(&stopping_path(profile))?;
        Ok(outcome)
    }

    fn state(&self, profile: &Profile) -> Result<HostState> {
        match pid_file(profile)? {
            None => Ok(HostState::Stopped),
            Some(pf) if pf.localkube.alive() => Ok(HostState::Running { pid: pf.localkube.pid, port: pf.port }),
            // A stop that was interrupted after localkube ended.
            Some(_) if stopping_path(profile).exists() => Ok(HostState::Stopped),
            Some(pf) => {
                // The monitor writes the exit record as soon as it reaps localkube.
                let record = || last_exit(profile).filter(|r| r.pid == pf.localkube.pid);
                let deadline = Instant::now() + Duration::from_secs(2);
                while record().is_none() && pf.monitor.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let how = match record() {
                    Some(r) => r.describe(),
                    None => {
                        "exited; its monitor is gone too, so how is unknown (killed by kill -9, or with the machine?)"
                            .into()
                    }
                };
                Ok(HostState::Crashed { how })
            }
        }
    }

    fn log_file(&self, profile: &Profile) -> PathBuf {
        profile.log_file()
    }
}

/// The last `n` lines of a log (and of its rotated part if needed).
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    let mut old = log.as_os_str().to_owned();
    old.push(".1");
    let mut lines: Vec<String> =
        fs::read(&old).map(|b| String::from_utf8_lossy(&b).lines().map(str::to_string).collect()).unwrap_or_default();
    lines.extend(
        fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}
