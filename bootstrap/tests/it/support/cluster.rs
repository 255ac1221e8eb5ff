//! A cluster for end-to-end tests: an [`Env`] with a signed stand-in
//! manifest; every profile is deleted on drop, so no localkube outlives its
//! test. Helpers for processes and the real kubectl.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use super::{Env, ManifestSpec, json_lines};

/// Tests that let kubestrap choose the port run one at a time, so two of
/// them never race for the same free port.
pub static AUTO_PORT: Mutex<()> = Mutex::new(());

/// A cluster environment; deletes every profile on drop so no localkube
/// outlives its test, whatever happened.
pub struct Cluster {
    pub env: Env,
    pub manifest: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.env.run(&["delete", "--all"]);
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with(|_| {})
    }

    pub fn with(edit: impl FnOnce(&mut ManifestSpec)) -> Cluster {
        Cluster::in_env(Env::new(), edit)
    }

    /// A cluster whose kubestrap talks to `engine` (see [`Env::on`]).
    pub fn on(engine: &super::TestEngine, edit: impl FnOnce(&mut ManifestSpec)) -> Cluster {
        Cluster::in_env(Env::on(engine), edit)
    }

    pub fn in_env(env: Env, edit: impl FnOnce(&mut ManifestSpec)) -> Cluster {
        let mut spec = ManifestSpec::standin(env.path(), "v1.33.1+standin");
        edit(&mut spec);
        let manifest = env.write_signed_manifest(&spec, "manifest.toml");
        Cluster { env, manifest }
    }

    pub fn m(&self) -> &str {
        self.manifest.to_str().unwrap()
    }

    /// `start` on a free port of its own; returns stdout.
    pub fn start(&self, profile: &str) -> String {
        let port = free_port().to_string();
        self.env.ok(&["start", "-p", profile, "--manifest", self.m(), "--port", &port])
    }

    pub fn kubectl(&self, kubectl: &str, args: &[&str]) -> Output {
        Command::new(kubectl)
            .args(args)
            .env("KUBECONFIG", &self.env.kubeconfig)
            .env("HOME", self.env.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn kubectl_ok(&self, kubectl: &str, args: &[&str]) -> String {
        let out = self.kubectl(kubectl, args);
        assert!(
            out.status.success(),
            "{kubectl} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self, profile: &str) -> (i32, serde_json::Value) {
        let out = self.env.run(&["status", "-p", profile, "-o", "json"]);
        let v = json_lines(&String::from_utf8_lossy(&out.stdout)).pop().expect("status JSON");
        (out.status.code().unwrap(), v)
    }

    pub fn pid_file(&self, profile: &str) -> PathBuf {
        self.env.home.join("profiles").join(profile).join("run/localkube.pid")
    }

    pub fn localkube_pid(&self, profile: &str) -> i32 {
        let v: toml::Value = toml::from_str(&fs::read_to_string(self.pid_file(profile)).unwrap()).unwrap();
        v["localkube"]["pid"].as_integer().unwrap() as i32
    }
}

/// Makes localkube a shell script that runs `prelude`, then execs the
/// stand-in with its arguments (a localkube with helpers, a chatty one…).
pub fn wrap_standin(s: &mut ManifestSpec, name: &str, prelude: &str) {
    let dir = s.localkube.1.path.parent().unwrap().to_path_buf();
    let script = format!("#!/bin/sh\n{prelude}\nexec \"$(dirname \"$0\")/localkube-standin\" \"$@\"\n");
    let standin = fs::read(crate::support::standin_binary()).unwrap();
    let a = crate::support::tar_zst_artifact(
        &dir,
        &format!("{name}.tar.zst"),
        &[
            ("run.sh", script.as_bytes(), 0o755),
            ("localkube-standin", &standin, 0o755),
            ("version.txt", b"v1.33.1+standin\n", 0o644),
        ],
    );
    s.localkube = (vec![a.path_url()], a, "tar.zst".into(), "run.sh".into());
    s.program = "run.sh".into();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
        state != 'Z' && state != 'X'
    })
}

impl Cluster {
    /// The run directory of a profile (as the marker names it).
    pub fn run_dir(&self, profile: &str) -> PathBuf {
        fs::canonicalize(self.env.home.join("profiles").join(profile).join("run")).unwrap_or_default()
    }

    /// Pids of the localkube processes of a profile (found by the marker
    /// every process of a cluster carries), whatever the pid file says.
    pub fn localkubes(&self, profile: &str) -> Vec<i32> {
        let want = format!("KUBESTRAP_RUN_DIR={}", self.run_dir(profile).display());
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("localkube") && alive(pid) && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    /// Starts kubestrap in the background (to be killed).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.env.cmd(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    }
}

/// SIGKILL, and reap.
pub fn kill9(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}
