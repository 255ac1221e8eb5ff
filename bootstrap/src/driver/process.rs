//! Processes identified safely: a pid plus its start time (from
//! `/proc/<pid>/stat`), so a reused pid is never mistaken for ours and never
//! signalled.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// A process we started: pid and kernel start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says.
struct Stat {
    state: char,
    start_time: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 is state (index 0), field 22 is starttime (index 19).
    Some(Stat { state: fields.first()?.chars().next()?, start_time: fields.get(19)?.parse().ok()? })
}

impl ProcId {
    /// Identifies a live process.
    pub fn of(pid: i32) -> Option<ProcId> {
        stat(pid).map(|s| ProcId { pid, start_time: s.start_time })
    }

    /// Whether this exact process is still alive (not a zombie, not a
    /// different process that reused the pid).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_time == self.start_time && s.state != 'Z' && s.state != 'X')
    }

    /// Sends `signal` only if this exact process is alive.
    pub fn signal(&self, signal: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill(2) with a pid we just verified by start time.
        unsafe { libc::kill(self.pid, signal) == 0 }
    }

    /// Waits until the process is gone, up to `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        true
    }

    /// Asks the process to stop with `signal`; after `timeout` kills it.
    /// Returns true if it had to be killed.
    pub fn stop(&self, signal: i32, timeout: Duration) -> bool {
        if !self.signal(signal) {
            return false;
        }
        if self.wait_gone(timeout) {
            return false;
        }
        self.signal(libc::SIGKILL);
        self.wait_gone(Duration::from_secs(10));
        true
    }
}

/// The environment variable that marks every process of one cluster: the
/// monitor, localkube and whatever localkube starts inherit it. Its value is
/// the profile's run directory. It finds a cluster's processes even when the
/// pid file is gone or damaged, and it proves a process is ours before
/// anything but localkube itself is signalled.
pub const MARKER: &str = "KUBESTRAP_RUN_DIR";

/// Live processes (not zombies) whose environment marks them as belonging to
/// the cluster whose run directory is `run_dir`; never this process.
pub fn owned_by(run_dir: &Path) -> Vec<ProcId> {
    let mut want = format!("{MARKER}=").into_bytes();
    want.extend_from_slice(marker_value(run_dir).as_os_str().as_encoded_bytes());
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
            if !env.split(|b| *b == 0).any(|kv| kv == want.as_slice()) {
                return None;
            }
            let s = stat(pid)?;
            (s.state != 'Z' && s.state != 'X').then_some(ProcId { pid, start_time: s.start_time })
        })
        .collect()
}

/// The marker's value for a run directory: its canonical path, so that two
/// spellings of one directory (relative, through a symlink) agree and two
/// directories never do.
pub fn marker_value(run_dir: &Path) -> std::path::PathBuf {
    fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf())
}

/// This boot's id: pids and start times mean nothing across a reboot.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The pid file of a running localkube: the process and its monitor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PidFile {
    pub localkube: ProcId,
    pub monitor: ProcId,
    pub port: u16,
    pub started: String,
    /// The boot it was written in ([`boot_id`]); empty in pid files of
    /// earlier kubestraps, whose pid and start time are then trusted alone.
    #[serde(default)]
    pub boot: String,
}

/// What a pid file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidInfo {
    /// No pid file: nothing was launched, or it was stopped.
    Absent,
    /// Written in this boot.
    Current(PidFile),
    /// Written before a reboot: nothing it names is ours any more.
    OtherBoot,
    /// Does not parse (why): which processes are ours must be found otherwise.
    Damaged(String),
}

impl PidFile {
    pub fn read(path: &Path) -> Result<PidInfo> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PidInfo::Absent),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(match toml::from_str::<PidFile>(&text) {
            Ok(pf) if pf.boot.is_empty() || pf.boot == boot_id() => PidInfo::Current(pf),
            Ok(_) => PidInfo::OtherBoot,
            Err(e) => PidInfo::Damaged(e.message().to_string()),
        })
    }
    pub fn write(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, toml::to_string(self)?.as_bytes(), 0o600)
    }
}

/// How localkube ended, recorded by its monitor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExitRecord {
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: String,
}

impl ExitRecord {
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(s)) => format!("killed by signal {s} ({})", signal_name(s)),
            (Some(c), None) => format!("exited with code {c}"),
            (None, None) => "exited".into(),
        }
    }
}

pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_self_and_rejects_reused_pid() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let impostor = ProcId { start_time: me.start_time + 1, ..me };
        assert!(!impostor.alive());
        assert!(!impostor.signal(0), "a pid with another start time is never signalled");
    }

    #[test]
    fn finds_processes_by_their_marker_only() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut ours = std::process::Command::new("sleep").arg("30").env(MARKER, &run).spawn().unwrap();
        let mut other =
            std::process::Command::new("sleep").arg("30").env(MARKER, dir.path().join("run2")).spawn().unwrap();
        // spawn() returns when the child's exec closed its descriptors, a
        // moment before the kernel publishes its new environment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = owned_by(&run);
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = owned_by(&run);
        }
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![ours.id() as i32]);
        for c in [&mut ours, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(owned_by(&run).is_empty());
    }

    #[test]
    fn stops_a_child_and_sees_it_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcId::of(child.id() as i32).unwrap();
        // Reap in the background so the zombie disappears like it would under init.
        let waiter = std::thread::spawn(move || child.wait());
        assert!(!id.stop(libc::SIGTERM, Duration::from_secs(5)));
        waiter.join().unwrap().unwrap();
        assert!(!id.alive());
    }
}
