//! The per-cluster monitor (`kubestrap __monitor RUN_DIR`), in the manner of
//! podman's conmon: the parent of localkube, and nothing else. It records
//! localkube's pid (with start time) and, when it ends, its exit code or
//! signal — which only a parent can learn — and keeps the log under its size
//! cap. It holds no state, serves nothing, and never restarts localkube; if it
//! is killed, localkube keeps running and only the exit record is lost.
//!
//! It is also the last check that what runs is what the manifest pins: the
//! program is opened and hashed from that open file, and the child checks,
//! immediately before its exec, that the path still names that very file
//! (same device and inode), so a file swapped in after the check never runs.
//! (Executing the descriptor itself, `/proc/self/fd/N`, would close that
//! last gap but names the process "N" in `ps` and breaks scripts' `$0`.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubestrap_manifest::Sha256;
use nix::sys::signal::{SigHandler, Signal, signal};
use serde::{Deserialize, Serialize};

use super::logs::cap_log;
use super::process::{ExitRecord, PidFile, ProcId, boot_id};
use crate::artifacts::hash::hash_reader;
use crate::state::{read as read_state, write as write_state};

/// What the monitor launches, written by `start` to `run/launch.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LaunchSpec {
    pub program: PathBuf,
    /// What `program` must hash to when it is executed.
    pub sha256: Sha256,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    /// Extra environment (QEMU_MODULE_DIR for the qemu driver's hypervisor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
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

/// The caller's environment variables localkube keeps (with the marker).
const KEPT_ENV: &[&str] = &[
    super::process::MARKER,
    "PATH",
    "HOME",
    "LANG",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The exit code recorded when the program did not match its hash.
pub const NOT_VERIFIED: i32 = 126;

/// Entry point of `kubestrap __monitor RUN_DIR`.
pub fn main(run_dir: &Path, vars: &[(std::ffi::OsString, std::ffi::OsString)]) -> anyhow::Result<()> {
    let spec: LaunchSpec = read_state(&launch_path(run_dir))
        .map_err(|why| anyhow::anyhow!("{}: {why}", launch_path(run_dir).display()))?
        .ok_or_else(|| anyhow::anyhow!("{} is missing", launch_path(run_dir).display()))?;
    cap_log(&spec.log)?;
    let log = OpenOptions::new().create(true).append(true).open(&spec.log)?;
    let refuse = |code: i32, msg: String| -> anyhow::Result<()> {
        let mut l = &log;
        let _ = writeln!(l, "kubestrap: {msg}");
        write_state(&exit_path(run_dir), &ExitRecord { pid: 0, code: Some(code), signal: None, at: now() })?;
        anyhow::bail!(msg)
    };
    let program = match open_verified(&spec.program, &spec.sha256) {
        Ok(f) => f,
        Err(msg) => return refuse(NOT_VERIFIED, msg),
    };
    let (dev, ino) = program.metadata().map(|m| (m.dev(), m.ino()))?;
    let path_c = std::ffi::CString::new(spec.program.as_os_str().as_encoded_bytes())?;
    let mut cmd = Command::new(&spec.program);
    // Nothing of the caller's environment but what the program needs to
    // run here and the proxies a user set (kubestrap honours them, so do
    // localkube's pulls): a user's K3S_TOKEN or K3S_URL never reaches k3s
    // (k3s pkg/cli/cmds reads K3S_* variables as flags).
    cmd.env_clear()
        .envs(vars.iter().filter(|(k, _)| k.to_str().is_some_and(|k| KEPT_ENV.contains(&k))).cloned())
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: stat and signal are async-signal-safe; nothing else runs here.
    unsafe {
        cmd.pre_exec(move || {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path_c.as_ptr(), &mut st) != 0 || st.st_dev != dev || st.st_ino != ino {
                return Err(std::io::Error::other("the program was replaced after it was verified"));
            }
            // localkube must not inherit the monitor's ignored signals.
            let _ = signal(Signal::SIGHUP, SigHandler::SigDfl);
            let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return refuse(127, format!("cannot start {}: {e}", spec.program.display())),
    };
    drop(program);
    let localkube = ProcId::of(child.id() as i32).ok_or_else(|| anyhow::anyhow!("localkube vanished at once"))?;
    let monitor =
        ProcId::of(std::process::id() as i32).ok_or_else(|| anyhow::anyhow!("cannot identify the monitor"))?;
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
    write_state(&exit_path(run_dir), &record)?;
    Ok(())
}

/// Opens the program and checks the open file against its pinned hash.
fn open_verified(program: &Path, want: &Sha256) -> Result<File, String> {
    let f = kubestrap_fskit::open_regular(program).map_err(|e| e.to_string())?;
    let (got, _) = hash_reader(&f).map_err(|e| format!("cannot read {}: {e}", program.display()))?;
    if got != *want {
        return Err(format!(
            "{} does not match the signed manifest (sha256 {got}, expected {want}); refusing to run it",
            program.display()
        ));
    }
    Ok(f)
}

pub use crate::state::now;
