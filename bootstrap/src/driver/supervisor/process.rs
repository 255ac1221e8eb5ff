//! The native driver's process records: the marker that finds a cluster's
//! processes, the pid file and the exit record.

use std::fs;
use std::path::Path;

use kubestrap_fskit::FsError;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use crate::proc::{ProcId, boot_id, stat};

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

/// The profile's processes ([`owned_by`]) and every process under them:
/// what a k3s's containerd shims run (pods) never carries the marker, and is
/// gathered before anything is signalled (a killed shim's children would be
/// handed to init).
pub fn owned_tree(run_dir: &Path) -> Vec<ProcId> {
    let roots = owned_by(run_dir);
    if roots.is_empty() {
        return roots;
    }
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else { return roots };
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for pid in rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if let Some(s) = stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut out = roots.clone();
    let mut queue: Vec<i32> = roots.iter().map(|p| p.pid).collect();
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if child == me || out.iter().any(|p| p.pid == child) {
                continue;
            }
            if let Some(s) = stat(child).filter(|s| s.state != 'Z' && s.state != 'X') {
                out.push(ProcId { pid: child, start_time: s.start_time });
                queue.push(child);
            }
        }
    }
    out
}

/// The marker's value for a run directory: its canonical path, so that two
/// spellings of one directory (relative, through a symlink) agree and two
/// directories never do.
pub fn marker_value(run_dir: &Path) -> std::path::PathBuf {
    fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf())
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
    /// What the pid file says. Any damage (garbage, not text, too big, not
    /// a file) reads as [`PidInfo::Damaged`]: the cluster's processes are
    /// then found by their marker, so stop and delete still work.
    pub fn read(path: &Path) -> PidInfo {
        match crate::state::read::<PidFile>(path) {
            Ok(None) => PidInfo::Absent,
            Ok(Some(pf)) if pf.boot.is_empty() || pf.boot == boot_id() => PidInfo::Current(pf),
            Ok(Some(_)) => PidInfo::OtherBoot,
            Err(why) => PidInfo::Damaged(why),
        }
    }
    pub fn write(&self, path: &Path) -> Result<(), FsError> {
        crate::state::write(path, self)
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
    Signal::try_from(s).map_or("signal", Signal::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Backoff;
    use std::time::Duration;

    #[test]
    fn finds_processes_by_their_marker_only() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut ours = std::process::Command::new("sleep").arg("30").env(MARKER, &run).spawn().unwrap();
        let mut other =
            std::process::Command::new("sleep").arg("30").env(MARKER, dir.path().join("run2")).spawn().unwrap();
        // spawn() returns when the child's exec closed its descriptors, a
        // moment before the kernel publishes its new environment.
        let found = Backoff::fixed(Duration::from_millis(10))
            .for_at_most(Duration::from_secs(5))
            .poll(|| Some(owned_by(&run)).filter(|f| !f.is_empty()))
            .unwrap_or_default();
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![ours.id() as i32]);
        for c in [&mut ours, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(owned_by(&run).is_empty());
    }
}
