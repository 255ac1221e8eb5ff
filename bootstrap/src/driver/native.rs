//! The native driver: localkube as a host process, detached from the
//! terminal (own session), parented by its monitor (see `monitor`).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::monitor::{self, LaunchSpec};
use super::process::{self, ExitRecord, PidFile, PidInfo, ProcId};
use super::{Driver, HostState, Launch, StopOutcome};
use crate::exit::{Code, coded};
use crate::fsutil;
use crate::profile::Profile;

pub struct Native;

fn pid_info(profile: &Profile) -> Result<PidInfo> {
    PidFile::read(&monitor::pid_path(&profile.run()))
}

/// Present while a stop is under way; holds the localkube it stops.
fn stopping_path(profile: &Profile) -> PathBuf {
    profile.run().join("stopping")
}

/// Whether a stop of this very localkube was asked for (and maybe cut short).
fn stop_asked(profile: &Profile, localkube: &ProcId) -> bool {
    fs::read_to_string(stopping_path(profile))
        .ok()
        .and_then(|t| toml::from_str::<ProcId>(&t).ok())
        .is_some_and(|p| p == *localkube)
}

fn last_exit(profile: &Profile) -> Option<ExitRecord> {
    let text = fs::read_to_string(monitor::exit_path(&profile.run())).ok()?;
    toml::from_str(&text).ok()
}

/// Stops processes of this profile: `signal`, up to `timeout`, then SIGKILL.
/// Returns those still alive after that.
fn stop_all(procs: &[ProcId], signal: i32, timeout: Duration) -> Vec<ProcId> {
    for p in procs {
        p.signal(signal);
    }
    let deadline = Instant::now() + timeout;
    while procs.iter().any(ProcId::alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter().filter(|p| p.alive()) {
        p.signal(libc::SIGKILL);
    }
    procs.iter().filter(|p| !p.wait_gone(Duration::from_secs(5))).copied().collect()
}

fn pids(procs: &[ProcId]) -> String {
    procs.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>().join(", ")
}

impl Driver for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn extra_sans(&self) -> Vec<String> {
        Vec::new()
    }

    fn create(&self, p: &Profile) -> Result<()> {
        for dir in [p.run(), p.logs(), p.data()] {
            fsutil::create_dir_mode(&dir, 0o700)?;
        }
        Ok(())
    }

    fn start(&self, launch: &Launch) -> Result<i32> {
        let p = &launch.profile;
        let run = p.run();
        // Never two localkubes on one data directory, whatever the pid file says.
        let left = process::owned_by(&run);
        if !left.is_empty() {
            return Err(coded(
                Code::Driver,
                format!(
                    "processes of profile {:?} are still running (pid {}); run `kubestrap stop -p {}` first",
                    p.name,
                    pids(&left),
                    p.name
                ),
            ));
        }
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
        cmd.arg("__monitor")
            .arg(&run)
            .env(process::MARKER, process::marker_value(&run))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
            if let PidInfo::Current(pf) = pid_info(p)? {
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
                stop_all(&process::owned_by(&run), libc::SIGKILL, Duration::ZERO);
                return Err(coded(Code::Driver, "the localkube monitor did not report a pid within 15s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn running(&self, profile: &Profile) -> Result<bool> {
        Ok(matches!(pid_info(profile)?, PidInfo::Current(pf) if pf.localkube.alive()))
    }

    fn stop(&self, profile: &Profile, signal: i32, timeout: Duration) -> Result<StopOutcome> {
        let run = profile.run();
        let path = monitor::pid_path(&run);
        let info = PidFile::read(&path)?;
        let mut outcome = StopOutcome::WasNotRunning;
        if let PidInfo::Current(pf) = &info {
            // Mark the stop as asked for: if this command is killed half-way,
            // status says "stopped", not "crashed".
            fsutil::write_atomic(&stopping_path(profile), toml::to_string(&pf.localkube)?.as_bytes(), 0o600)?;
            if pf.localkube.alive() {
                outcome = if pf.localkube.stop(signal, timeout) { StopOutcome::Killed } else { StopOutcome::Stopped };
            }
            // Give the monitor a moment to record the exit.
            pf.monitor.wait_gone(Duration::from_secs(2));
        }
        // Whatever is left of this cluster (e.g. containerd and shims of a
        // real k3s; or everything, when the pid file was lost or damaged),
        // found by its marker. With a readable pid file, localkube has had
        // its graceful stop already: the rest is killed.
        let left = process::owned_by(&run);
        if !left.is_empty() {
            let graceful = !matches!(info, PidInfo::Current(_));
            let survivors = if graceful {
                stop_all(&left, signal, timeout)
            } else {
                stop_all(&left, libc::SIGKILL, Duration::ZERO)
            };
            if graceful && outcome == StopOutcome::WasNotRunning {
                outcome = StopOutcome::Stopped;
            }
            if !survivors.is_empty() {
                return Err(coded(
                    Code::Driver,
                    format!(
                        "process(es) {} of profile {:?} survived SIGKILL; the pid file {} is kept so it is not started twice",
                        pids(&survivors),
                        profile.name,
                        path.display()
                    ),
                ));
            }
        }
        fsutil::remove_any(&path)?;
        fsutil::remove_any(&stopping_path(profile))?;
        Ok(outcome)
    }

    fn resume(&self, profile: &Profile) -> Result<()> {
        let path = stopping_path(profile);
        fsutil::remove_any(&path).with_context(|| format!("cannot remove {}", path.display()))
    }

    fn status(&self, profile: &Profile) -> Result<HostState> {
        let path = monitor::pid_path(&profile.run());
        let pf = match PidFile::read(&path)? {
            // Stopped, or stopped by a reboot. Processes of the cluster
            // without a pid file are reported, so `start` clears them.
            PidInfo::Absent | PidInfo::OtherBoot => {
                let left = process::owned_by(&profile.run());
                if left.is_empty() {
                    return Ok(HostState::Stopped);
                }
                return Ok(HostState::Crashed {
                    how: format!("its pid file is gone but process(es) {} of it still run", pids(&left)),
                });
            }
            PidInfo::Damaged(why) => {
                return Ok(HostState::Crashed { how: format!("its pid file {} is damaged ({why})", path.display()) });
            }
            PidInfo::Current(pf) => pf,
        };
        if pf.localkube.alive() {
            return Ok(HostState::Running { pid: pf.localkube.pid, port: pf.port });
        }
        // A stop that was interrupted after localkube ended.
        if stop_asked(profile, &pf.localkube) {
            return Ok(HostState::Stopped);
        }
        // The monitor writes the exit record as soon as it reaps localkube.
        let record = || last_exit(profile).filter(|r| r.pid == pf.localkube.pid);
        let deadline = Instant::now() + Duration::from_secs(2);
        while record().is_none() && pf.monitor.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let how = match record() {
            Some(r) => r.describe(),
            None => {
                "exited; its monitor is gone too, so how is unknown (killed by kill -9, or with the machine?)".into()
            }
        };
        Ok(HostState::Crashed { how })
    }

    fn delete(&self, profile: &Profile) -> Result<()> {
        let left = stop_all(&process::owned_by(&profile.run()), libc::SIGKILL, Duration::ZERO);
        if left.is_empty() {
            Ok(())
        } else {
            Err(coded(
                Code::Driver,
                format!("process(es) {} of profile {:?} survived SIGKILL; not deleted", pids(&left), profile.name),
            ))
        }
    }

    fn logs(&self, profile: &Profile) -> PathBuf {
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
