//! The container engines the docker driver is tested on: the machine's
//! rootful Docker, and what `ci/engines.sh` brings up (rootful Podman;
//! rootless Podman and rootless Docker for a user of their own), found
//! through the variables it prints. A missing one fails its test unless
//! `KUBESTRAP_TEST_SKIP` names its group (`podman`, `rootless`).

use std::path::PathBuf;
use std::process::Command;

/// A user the rootless engines run as; kubestrap runs as it too.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    /// `XDG_RUNTIME_DIR`.
    pub runtime: PathBuf,
}

/// An engine and who talks to it.
#[derive(Clone, Debug)]
pub struct TestEngine {
    pub name: &'static str,
    /// `DOCKER_HOST`.
    pub host: String,
    /// The user kubestrap runs as (root when `None`).
    pub user: Option<TestUser>,
    /// Podman's Docker-compatible API.
    pub podman: bool,
}

impl TestEngine {
    /// `docker ARGS` against this engine, as its user; (success, stdout).
    pub fn docker(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("docker");
        c.args(args).env("DOCKER_HOST", &self.host).env_remove("DOCKER_CONTEXT");
        if let Some(u) = &self.user {
            use std::os::unix::process::CommandExt;
            c.uid(u.uid).gid(u.gid).env("XDG_RUNTIME_DIR", &u.runtime).env("HOME", "/tmp");
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl TestEngine {
    /// A one-file image and a container of it on this engine: someone
    /// else's, which nothing of kubestrap's may touch. Returns its name.
    pub fn bystander(&self, dir: &std::path::Path) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slug = self.name.replace(' ', "-").to_lowercase();
        let name = format!("kubestrap-test-bystander-{}-{n}-{slug}", std::process::id());
        let tar = dir.join(format!("{name}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hi.txt", &b"hi\n"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let image = format!("{name}:1");
        assert!(self.docker(&["import", tar.to_str().unwrap(), &image]).0, "import of the bystander on {}", self.name);
        assert!(self.docker(&["create", "--name", &name, &image, "/hi"]).0);
        name
    }
}

fn answers(e: &TestEngine) -> Result<(), String> {
    match e.docker(&["version", "--format", "{{.Server.Version}}"]) {
        (true, _) => Ok(()),
        (false, _) => Err(format!("no engine answers at {} (ci/engines.sh starts it)", e.host)),
    }
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set: run the tests through ci/test.sh (ci/engines.sh)"))
}

fn user() -> Result<TestUser, String> {
    let name = var("KUBESTRAP_TEST_ROOTLESS_USER")?;
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id").args([flag, &name]).output().map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| format!("no user {name}"))
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    Ok(TestUser { uid, gid, runtime: PathBuf::from(format!("/run/user/{uid}")) })
}

fn checked(e: TestEngine) -> Result<TestEngine, String> {
    answers(&e).map(|()| e)
}

pub fn rootful_docker() -> Result<TestEngine, String> {
    checked(TestEngine {
        name: "rootful Docker",
        host: "unix:///var/run/docker.sock".into(),
        user: None,
        podman: false,
    })
}

pub fn rootful_podman() -> Result<TestEngine, String> {
    checked(TestEngine { name: "rootful Podman", host: var("KUBESTRAP_TEST_PODMAN")?, user: None, podman: true })
}

pub fn rootless_podman() -> Result<TestEngine, String> {
    checked(TestEngine {
        name: "rootless Podman",
        host: var("KUBESTRAP_TEST_ROOTLESS_PODMAN")?,
        user: Some(user()?),
        podman: true,
    })
}

pub fn rootless_docker() -> Result<TestEngine, String> {
    checked(TestEngine {
        name: "rootless Docker",
        host: var("KUBESTRAP_TEST_ROOTLESS_DOCKER")?,
        user: Some(user()?),
        podman: false,
    })
}

/// The engine if it is there; a test fails without it unless its group is
/// skipped by name (then `None`).
pub fn wanted(group: &str, find: fn() -> Result<TestEngine, String>) -> Option<TestEngine> {
    let mut found = None;
    super::need(group, || find().map(|e| found = Some(e))).then_some(())?;
    found
}
