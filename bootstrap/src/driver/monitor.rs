//! The per-cluster monitor (`kubestrap __monitor RUN_DIR`), in the manner of
//! podman's conmon: the parent of localkube, and nothing else. It records
//! localkube's pid (with start time) and, when it ends, its exit code or
//! signal — which only a parent can learn — and keeps the log under its size
//! cap. It holds no state, serves nothing, and never restarts localkube; if it
//! is killed, localkube keeps running and only the exit record is lost.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::process::{ExitRecord, PidFile, ProcId, boot_id};
use crate::fsutil;

/// The log is cut back to its last part when it grows past this.
pub const LOG_CAP: u64 = 16 << 20;

/// What the monitor launches, written by `start` to `run/launch.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

pub fn launch_path(run_dir: &Path) -> PathBuf {
    run_dir.join("launch.toml")
}
pub fn pid_path(run_dir: &Path) -> PathBuf {
    run_dir.join("localkube.pid")
}
pub fn exit_path(run_dir: &Path) -> PathBuf {
    run_dir.join("last-exit.toml")
}

/// Entry point of `kubestrap __monitor RUN_DIR`.
pub fn main(run_dir: &Path) -> Result<()> {
    let spec: LaunchSpec = toml::from_str(&fs::read_to_string(launch_path(run_dir))?)?;
    cap_log(&spec.log)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("cannot open {}", spec.log.display()))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).current_dir(&spec.cwd).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log.try_clone()?);
    // localkube must not inherit the monitor's ignored signals.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let mut l = &log;
            let _ = writeln!(l, "kubestrap: cannot start {}: {e}", spec.program.display());
            fsutil::write_atomic(
                &exit_path(run_dir),
                toml::to_string(&ExitRecord { pid: 0, code: Some(127), signal: None, at: now() })?.as_bytes(),
                0o600,
            )?;
            return Err(e.into());
        }
    };
    let localkube = ProcId::of(child.id() as i32).context("localkube vanished at once")?;
    let monitor = ProcId::of(std::process::id() as i32).context("cannot identify the monitor")?;
    PidFile { localkube, monitor, port: spec.port, started: now(), boot: boot_id() }.write(&pid_path(run_dir))?;
    // Wait in a thread so the exit is recorded the moment it happens; cap
    // the log every few seconds meanwhile.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(status) => break status?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = cap_log(&spec.log);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("lost track of localkube"),
        }
    };
    let record = ExitRecord { pid: localkube.pid, code: status.code(), signal: status.signal(), at: now() };
    fsutil::write_atomic(&exit_path(run_dir), toml::to_string(&record)?.as_bytes(), 0o600)?;
    Ok(())
}

/// Keeps the log under [`LOG_CAP`] (copy-truncate): its newest half is kept
/// in `localkube.log.1` and the file is cut to zero; localkube writes with
/// O_APPEND, so it carries on at the new end.
pub fn cap_log(log: &Path) -> Result<()> {
    let Ok(meta) = fs::metadata(log) else { return Ok(()) };
    if meta.len() <= LOG_CAP {
        return Ok(());
    }
    let mut f = OpenOptions::new().read(true).write(true).open(log)?;
    let keep = LOG_CAP / 2;
    f.seek(SeekFrom::Start(meta.len() - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    Read::by_ref(&mut f).take(keep).read_to_end(&mut tail)?;
    let mut old = log.as_os_str().to_owned();
    old.push(".1");
    fsutil::write_atomic(Path::new(&old), &tail, 0o600)?;
    f.set_len(0)?;
    Ok(())
}

pub fn now() -> String {
    kubestrap_manifest::rfc3339(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_cut_back_keeping_its_newest_half() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("localkube.log");
        let mut body = vec![b'a'; (LOG_CAP / 2) as usize];
        body.extend(vec![b'z'; (LOG_CAP / 2 + 10) as usize]);
        fs::write(&log, &body).unwrap();
        cap_log(&log).unwrap();
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        let old = fs::read(dir.path().join("localkube.log.1")).unwrap();
        assert_eq!(old.len() as u64, LOG_CAP / 2);
        assert!(old.iter().all(|b| *b == b'z'), "the newest half is kept");
        // Under the cap nothing happens.
        fs::write(&log, b"small").unwrap();
        cap_log(&log).unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"small");
    }
}
