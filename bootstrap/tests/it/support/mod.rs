//! The harness of the integration tests: a temp kubestrap home with a pinned
//! dev signing key and the real binary ([`Env`]); artifacts, manifests, a
//! scripted HTTP(S) server and a test CA, each in its own module. A failing
//! command's report shows the command, its output, the home's file tree and
//! the tail of every localkube log in it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod artifacts;
mod cluster;
// The binary's own table of exit codes; the tests name only some of them.
#[allow(dead_code)]
#[path = "../../../src/cli/code.rs"]
mod code;
mod engines;
mod k3s;
mod manifest;
mod netns;
mod server;
mod tls;

pub use artifacts::*;
pub use cluster::*;
pub use code::Code;
pub use engines::*;
pub use k3s::*;
pub use manifest::*;
pub use netns::*;
pub use server::*;
pub use tls::*;

pub use kubestrap_testkit::{is_root, kubectl, kubectl_of, kubectls, need, which};

/// The real kubectl the end-to-end tests drive (the newest on the machine).
pub static KUBECTL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| kubectl().display().to_string());

/// The kubestrap binary under test.
pub const KUBESTRAP: &str = env!("CARGO_BIN_EXE_kubestrap");

/// The target every generated manifest is for (the test machines' own).
pub const TARGET: &str = "linux-x86_64";

/// Environment variables that would leak the caller's setup into a test.
const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "XDG_DATA_HOME",
    "KUBESTRAP_MANIFEST",
    "KUBESTRAP_CA_CERT",
    "KUBESTRAP_KEY_PASSWORD",
    "KUBESTRAP_LOG",
    "KUBESTRAP_HOME",
    "KUBECONFIG",
];

/// A kubestrap home in a temp dir, with an unencrypted dev key pair
/// (`keys/dev.key`, `keys/dev.pub`) pinned by `trust add`.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// `KUBESTRAP_HOME`.
    pub home: PathBuf,
    /// `KUBECONFIG` (does not exist until something writes it).
    pub kubeconfig: PathBuf,
    /// Holds `dev.key` and `dev.pub`.
    pub keys: PathBuf,
    /// The container engine kubestrap is pointed at (`DOCKER_HOST`), and the
    /// user it runs as for a rootless one; `None`: the caller's.
    pub engine: Option<TestEngine>,
}

impl Env {
    pub fn new() -> Env {
        Env::made(None)
    }

    /// An env whose kubestrap talks to `engine` (as its user, for a
    /// rootless one: the temp dir is that user's).
    pub fn on(engine: &TestEngine) -> Env {
        Env::made(Some(engine.clone()))
    }

    fn made(engine: Option<TestEngine>) -> Env {
        let dir = tempfile::Builder::new().prefix("kubestrap-test-").tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let env = Env {
            home: root.join("home"),
            kubeconfig: root.join(".kube/config"),
            keys: root.join("keys"),
            dir,
            engine,
        };
        // keygen does not create its --out directory.
        fs::create_dir_all(&env.keys).unwrap();
        if let Some(u) = env.engine.as_ref().and_then(|e| e.user.as_ref()) {
            for d in [&root, &env.keys] {
                std::os::unix::fs::chown(d, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        let keys = env.keys.to_str().unwrap().to_string();
        env.ok(&["manifest", "keygen", "--out", &keys, "--name", "dev", "--unencrypted"]);
        let public = env.keys.join("dev.pub");
        assert!(public.is_file(), "keygen did not write {}", public.display());
        env.ok(&["trust", "add", public.to_str().unwrap()]);
        env
    }

    /// The suffix the docker driver gives the engine objects of this home
    /// (the first 4 bytes of the sha256 of its path, in hex).
    pub fn home_id(&self) -> String {
        let home = fs::canonicalize(&self.home).unwrap();
        sha256_hex(home.as_os_str().as_encoded_bytes())[..8].to_string()
    }

    /// The temp dir's path (a scratch area beside the home).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory `name` under the temp dir, created if needed.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        self.own(&p);
        p
    }

    /// Gives a directory the test made to the user kubestrap runs as.
    fn own(&self, dir: &Path) {
        if let Some(u) = self.engine.as_ref().and_then(|e| e.user.as_ref()) {
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).unwrap();
        }
    }

    /// The kubestrap binary with this env's home, kubeconfig and HOME, no
    /// colours, no proxies, stdin closed.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBESTRAP);
        for k in SCRUBBED_ENV {
            c.env_remove(k);
        }
        c.args(args)
            .env("KUBESTRAP_HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if let Some(e) = &self.engine {
            c.env("DOCKER_HOST", &e.host).env_remove("DOCKER_CONTEXT");
            if let Some(u) = &e.user {
                use std::os::unix::process::CommandExt;
                c.uid(u.uid).gid(u.gid).env("XDG_RUNTIME_DIR", &u.runtime);
            }
        }
        c
    }

    /// Another program (a bundle, say) with this env's environment.
    pub fn cmd_of(&self, program: &Path, args: &[&str]) -> Command {
        let c = self.cmd(args);
        let mut p = Command::new(program);
        p.args(args);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => p.env(k, v),
                None => p.env_remove(k),
            };
        }
        p.stdin(Stdio::null());
        p
    }

    /// Runs kubestrap; returns its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap_or_else(|e| panic!("cannot run {KUBESTRAP}: {e}"))
    }

    /// Runs kubestrap, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!("{}", self.report(args, &out, "expected success"));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubestrap, expecting exit code `code`; returns stderr.
    pub fn fail(&self, args: &[&str], code: Code) -> String {
        let out = self.run(args);
        if out.status.code() != exit(code) {
            panic!("{}", self.report(args, &out, &format!("expected exit code {} ({code:?})", code as i32)));
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes `spec` as `<temp>/<name>` and signs it with the dev key
    /// (`<name>.minisig` beside it). Returns the manifest's path.
    pub fn write_signed_manifest(&self, spec: &ManifestSpec, name: &str) -> PathBuf {
        self.write_signed_text(&spec.to_toml(), name)
    }

    /// Writes manifest text as `<temp>/<name>` and signs it with the dev key.
    pub fn write_signed_text(&self, text: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
            self.own(parent);
        }
        fs::write(&path, text).unwrap();
        let key = self.keys.join("dev.key");
        self.ok(&["manifest", "sign", "--key", key.to_str().unwrap(), path.to_str().unwrap()]);
        path
    }

    /// Paths of every verified blob in the store (`blobs/sha256/*`).
    pub fn blobs(&self) -> Vec<PathBuf> {
        list_dir(&self.home.join("blobs/sha256"))
    }

    /// Where the store keeps the blob with this sha256.
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.home.join("blobs/sha256").join(sha256)
    }

    /// Partial downloads (`blobs/partial/*`).
    pub fn partials(&self) -> Vec<PathBuf> {
        list_dir(&self.home.join("blobs/partial"))
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

impl Env {
    /// A failed command's account: the command and its output (see
    /// [`describe`]), then the home's file tree and the tail of every
    /// localkube log in it.
    pub fn report(&self, args: &[&str], out: &Output, why: &str) -> String {
        let mut s = describe(args, out, why);
        s.push_str(&format!("\n--- files under {} ---\n", self.home.display()));
        let mut logs = Vec::new();
        tree(&self.home, &self.home, &mut s, &mut logs);
        for log in logs {
            let text = fs::read(&log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- last lines of {} ---\n", log.display()));
            for l in &lines[lines.len().saturating_sub(20)..] {
                s.push_str(&format!("  | {l}\n"));
            }
        }
        s
    }
}

/// Lists a tree (sizes, link targets) into `out`; collects localkube logs.
fn tree(root: &Path, dir: &Path, out: &mut String, logs: &mut Vec<PathBuf>) {
    for p in list_dir(dir) {
        let rel = p.strip_prefix(root).unwrap_or(&p).display();
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                out.push_str(&format!("  {rel}/\n"));
                tree(root, &p, out, logs);
            }
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
                out.push_str(&format!("  {rel} -> {to}\n"));
            }
            Ok(m) => {
                out.push_str(&format!("  {rel} ({} bytes)\n", m.len()));
                if p.file_name().is_some_and(|n| n == "localkube.log") {
                    logs.push(p);
                }
            }
            Err(_) => {}
        }
    }
}

/// A process's exit status when kubestrap exits with `code`, to compare
/// with `Output::status.code()`.
pub fn exit(code: Code) -> Option<i32> {
    Some(code as i32)
}

/// A readable account of a finished command, for assertion messages.
pub fn describe(args: &[&str], out: &Output, why: &str) -> String {
    format!(
        "{why}: `kubestrap {}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Parses `-o json` output: one JSON object per non-empty line.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Flips one bit of the byte at `offset` in a file.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut b = fs::read(path).unwrap();
    b[offset] ^= 0x01;
    // Blobs are read-only in the store on some setups: make it writable.
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o644));
    fs::write(path, b).unwrap();
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Docker engine answers (the docker driver's tests).
pub fn docker_engine() -> Result<(), String> {
    let out = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .map_err(|e| format!("the docker CLI cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("no Docker engine answers: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The minisign binary is installed (signatures checked both ways).
pub fn minisign_installed() -> Result<(), String> {
    which("minisign").map(drop).ok_or_else(|| "the minisign binary is not installed (apt-get install minisign)".into())
}

/// qemu is installed (the qemu driver's tests build and boot its VM).
pub fn qemu_installed() -> Result<(), String> {
    match which("qemu-system-x86_64") {
        Some(_) => Ok(()),
        None => Err("qemu-system-x86_64 is not installed (ci/test.sh installs qemu-system-x86)".into()),
    }
}

/// The development localkube can be built and run here: Debian's Go 1.19
/// and the source package's tools (ci/prereqs.sh installs them), and root
/// (its containerd, kubelet and iptables on the native driver).
pub fn localkube_buildable() -> Result<(), String> {
    if !Path::new("/usr/lib/go-1.19/bin/go").is_file() {
        return Err("Debian's Go 1.19 is not installed (ci/prereqs.sh installs golang-1.19-go)".into());
    }
    for tool in ["dpkg-source", "patchelf", "rsync", "jq", "gcc"] {
        if which(tool).is_none() {
            return Err(format!("{tool} is not installed (ci/prereqs.sh installs it)"));
        }
    }
    is_root().map_err(|e| format!("real Kubernetes components need root (containerd, the kubelet, iptables): {e}"))
}
