//! The engine, through the `docker` CLI: every call under a deadline, its
//! output capped, its failure said with what to do; and the import of the
//! release's rootfs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command};
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Sha256;

use super::address::{self, Address};
use super::{CALL, IMPORT, LABEL};
use crate::artifacts::hash::HashingReader;
use crate::driver::{DockerError, DockerErrorKind as Kind, DriverError, Result};

/// The lowest engine API version this driver is tested against (Docker
/// 20.10, Podman 4).
const MIN_API: (u32, u32) = (1, 41);

/// The engine this driver talks to: where it is (see [`super::address`])
/// and, once asked, what it is.
#[derive(Clone, Debug)]
pub struct Engine {
    pub address: Address,
    info: std::sync::OnceLock<Info>,
    /// Where what the engine said is kept between commands (see
    /// [`Engine::info`]); none: asked every time.
    cache: Option<std::path::PathBuf>,
}

/// What the engine says it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub version: String,
    pub api: String,
    /// Podman's Docker-compatible API (not Docker's).
    pub podman: bool,
    /// The engine runs as a user, in a user namespace.
    pub rootless: bool,
    /// Docker with `userns-remap`: its containers run in a user namespace
    /// of their own, where privileged ones are refused.
    #[serde(default)]
    pub userns_remap: bool,
}

impl Info {
    /// "Docker 20.10.24", "rootless Podman 4.3.1".
    pub fn name(&self) -> String {
        let what = if self.podman { "Podman" } else { "Docker" };
        format!("{}{what} {}", if self.rootless { "rootless " } else { "" }, self.version)
    }
}

impl Engine {
    pub fn new(address: Address) -> Engine {
        Engine { address, info: std::sync::OnceLock::new(), cache: None }
    }

    /// Keeps what the engine says in `dir` (a home's `state/`), for as long
    /// as the very process that serves its socket runs: Podman answers
    /// `version` and `info` in ~0.3 s, on every command otherwise.
    pub fn cached_in(mut self, dir: &Path) -> Engine {
        self.cache = Some(dir.join("engines"));
        self
    }

    /// The engine of the command's environment (what `docker` would use).
    pub fn from_env(env: &address::Env) -> Engine {
        Engine::new(address::resolve(env))
    }

    /// Where it is, for messages (redacted, and how it was found).
    pub fn describe(&self) -> String {
        self.address.describe()
    }

    /// A `docker` command aimed at this engine whatever the caller's
    /// environment says.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.address.host).env_remove("DOCKER_CONTEXT");
        cmd
    }

    /// A `docker` command's stdout, bounded in time; a failure explained.
    pub fn docker(&self, args: &[&str], deadline: Duration) -> Result<String> {
        let ran = self.run(args, None::<fn(ChildStdin)>, None, deadline)?;
        if !ran.status.success() {
            return Err(self.explain(args, &ran.stderr));
        }
        Ok(ran.stdout)
    }

    /// Runs `docker ARGS` under a deadline ([`crate::proc::run_bounded`]); its
    /// stderr with any URL password taken out.
    pub fn run<T: Send + 'static>(
        &self,
        args: &[&str],
        feed: Option<impl FnOnce(ChildStdin) -> T + Send + 'static>,
        to: Option<File>,
        deadline: Duration,
    ) -> Result<Ran<T>> {
        let mut cmd = self.command();
        cmd.args(args);
        let ran = crate::proc::run_bounded(cmd, feed, to, deadline).map_err(|e| {
            failed(format!(
                "cannot run the `docker` command ({e}): install the Docker CLI (or podman-docker) and make sure it is on PATH"
            ))
        })?;
        let Some(mut ran) = ran else {
            return Err(failed(format!(
                "`docker {}` did not finish within {}s (engine at {}); check the engine (`docker info`)",
                args.first().unwrap_or(&""),
                deadline.as_secs(),
                self.describe()
            )));
        };
        ran.stderr = crate::urls::redact_text(&ran.stderr);
        Ok(ran)
    }

    /// A failed engine call, said with what to do. Only errors about reaching
    /// the engine itself read as "unreachable" (exit 44); a container's own
    /// failure (a mount refused, say) is said as the engine said it.
    pub fn explain(&self, args: &[&str], stderr: &str) -> DriverError {
        explain(args, stderr, &self.describe())
    }

    /// The engine answers, is on this machine, with an API version this
    /// driver supports: what it is.
    pub fn info(&self) -> Result<Info> {
        if let Some(i) = self.info.get() {
            return Ok(i.clone());
        }
        // The process serving the socket, as it was when it last answered.
        let server = self.peer().and_then(|(pid, _)| crate::proc::ProcId::of(pid));
        let kept = self.cache.as_ref().map(|d| {
            let id =
                hex::encode(&ring::digest::digest(&ring::digest::SHA256, self.address.host.as_bytes()).as_ref()[..8]);
            d.join(format!("{id}.toml"))
        });
        if let (Some(server), Some(path)) = (server, &kept)
            && let Ok(Some(c)) = crate::state::read::<Cached>(path)
            && c.host == self.address.host
            && c.server == server
            && server.alive()
        {
            return Ok(self.info.get_or_init(|| c.info).clone());
        }
        let info = self.ask()?;
        if let (Some(server), Some(path)) = (server, &kept) {
            let c = Cached { host: self.address.host.clone(), server, info: info.clone() };
            if let Some(dir) = path.parent() {
                let _ = kubestrap_fskit::create_dir_mode(dir, 0o700);
            }
            if let Err(e) = crate::state::write(path, &c) {
                tracing::debug!("cannot keep what the engine said in {}: {e}", path.display());
            }
        }
        Ok(self.info.get_or_init(|| info).clone())
    }

    /// Asks the engine what it is (see [`Engine::info`]).
    fn ask(&self) -> Result<Info> {
        if !local_engine(&self.address.host) {
            return Err(unreachable(format!(
                "the engine at {} is on another machine: the docker driver bind-mounts this machine's files and \
                 publishes the apiserver on 127.0.0.1, so it needs an engine here; point DOCKER_HOST (or the docker \
                 context) at a local socket",
                self.describe()
            )));
        }
        let format = "{{.Server.Version}}|{{.Server.APIVersion}}|{{range .Server.Components}}{{.Name}},{{end}}";
        let out = self.docker(&["version", "--format", format], Duration::from_secs(10))?;
        let mut parts = out.trim().split('|');
        let (version, api) = (parts.next().unwrap_or("?").to_string(), parts.next().unwrap_or("0.0").to_string());
        let podman = parts.next().is_some_and(|c| c.contains("Podman"));
        let mut nums = api.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let have = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        if have < MIN_API {
            return Err(unreachable(format!(
                "the engine at {} speaks API {api} (version {version}); kubestrap needs API {}.{} or newer (Docker \
                 20.10+, Podman 4+): upgrade the engine",
                self.describe(),
                MIN_API.0,
                MIN_API.1
            )));
        }
        // Docker says so; Podman's compatible API does not, but its process
        // (the socket's peer) runs as the user.
        let security = self.docker(&["info", "--format", "{{json .SecurityOptions}}"], Duration::from_secs(10))?;
        let rootless = security.contains("name=rootless") || self.peer().is_some_and(|(_, uid)| uid != 0);
        let userns_remap = security.contains("name=userns");
        Ok(Info { version, api, podman, rootless, userns_remap })
    }

    /// The resource limits the engine's own process has (its socket's
    /// peer): a Podman engine gives containers higher limits than that by
    /// default, which a machine without CAP_SYS_RESOURCE refuses
    /// ("error setting rlimit"). `None` where it cannot be read.
    pub fn process_limits(&self) -> Option<(u64, u64)> {
        let (pid, _) = self.peer()?;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let hard = |name: &str| -> Option<u64> {
            let line = limits.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().nth(1)?.parse().ok()
        };
        Some((hard("Max open files")?, hard("Max processes")?))
    }
}

pub(super) use crate::proc::Ran;

/// What an engine said, and which process said it (`state/engines/`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Cached {
    host: String,
    server: crate::proc::ProcId,
    info: Info,
}

impl Engine {
    /// The pid and uid of the process serving the engine's unix socket.
    fn peer(&self) -> Option<(i32, u32)> {
        let path = self.address.host.strip_prefix("unix://")?;
        let sock = std::os::unix::net::UnixStream::connect(path).ok()?;
        let cred = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials).ok()?;
        Some((cred.pid(), cred.uid()))
    }
}

/// A failed engine call, said with what to do (see [`Engine::explain`]);
/// `engine` names where it was.
fn explain(args: &[&str], stderr: &str, engine: &str) -> DriverError {
    let what = format!("`docker {}`", args.iter().take(2).copied().collect::<Vec<_>>().join(" "));
    let about_daemon = stderr.contains("Cannot connect to the Docker daemon")
        || stderr.contains("Is the docker daemon running")
        || stderr.contains("error during connect")
        || (stderr.contains("dial unix") && (stderr.contains("no such file") || stderr.contains("connection refused")));
    if stderr.contains("permission denied") && stderr.contains("connect to the Docker daemon") {
        return unreachable(format!(
            "no permission to use the engine at {engine}: add yourself to the `docker` group (then log in again), \
             or use rootless Docker / Podman (their socket is found by itself, or name it in DOCKER_HOST)"
        ));
    }
    if about_daemon {
        return unreachable(format!(
            "cannot reach the engine at {engine} ({}): start it (`sudo systemctl start docker`, Docker Desktop, \
             `systemctl --user start podman.socket`, or `podman system service`), or point DOCKER_HOST at a running one",
            stderr.lines().last().unwrap_or(stderr)
        ));
    }
    if stderr.contains("container-init binary not found") || stderr.contains("catatonit") {
        return failed(format!(
            "{what} failed: {stderr}: Podman needs its init for `--init` (install the `catatonit` package)"
        ));
    }
    // What is not there, told apart once, here.
    let lower = stderr.to_lowercase();
    let kind = if lower.contains("no such container") {
        Kind::NoSuchContainer
    } else if lower.contains("no such image") || lower.contains("image not known") {
        Kind::NoSuchImage
    } else if lower.contains("no such network") || (lower.contains("network") && lower.contains("not found")) {
        Kind::NoSuchNetwork
    } else {
        Kind::Failed
    };
    DockerError::new(kind, format!("{what} failed: {stderr}")).into()
}

fn unreachable(message: String) -> DriverError {
    DockerError::new(Kind::Unreachable, message).into()
}

/// A failure of the engine or of its CLI that is not the engine's refusal.
pub(super) fn failed(message: impl Into<String>) -> DriverError {
    DockerError::failed(message).into()
}

/// An engine on another machine cannot see the host paths kubestrap
/// bind-mounts, and would publish the apiserver on its own 127.0.0.1.
fn local_engine(host: &str) -> bool {
    match url::Url::parse(host) {
        Ok(u) if matches!(u.scheme(), "tcp" | "http" | "https" | "ssh") => {
            matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"))
        }
        _ => true,
    }
}

/// The image id an import printed: Docker prints `sha256:<id>`, Podman's
/// compatible API has the CLI print it twice (`sha256:<id>: sha256:<id>`).
fn imported_id(out: &str) -> Option<String> {
    let is_id =
        |t: &&str| t.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    out.split(|c: char| c.is_whitespace() || c == ',').map(|t| t.trim_end_matches(':')).rfind(is_id).map(str::to_string)
}

pub(super) fn image_tag(sha: &str) -> String {
    format!("kubestrap-rootfs:{sha}")
}

/// Imports the verified rootfs blob unless the engine has it: decompressed
/// as it streams into `docker import`, hashed on the way. The import is
/// untagged until its hash has matched, so the tag only ever names verified
/// content; when another kubestrap tagged the same rootfs meanwhile, ours is
/// dropped and theirs used.
/// The node image made from rootfs `blob`, imported unless the engine
/// already has it; and whether it was imported now.
pub(super) fn ensure_image(e: &Engine, blob: &Path) -> Result<(String, bool)> {
    let sha = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = image_tag(&sha);
    let tagged = || e.docker(&["image", "inspect", "--format", "{{.Id}}", &tag], CALL).is_ok();
    if tagged() {
        return Ok((tag, false));
    }
    // One import at a time in this process: a cluster's nodes are made at
    // once, and the ones after the first find the image there.
    static IMPORTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = IMPORTING.lock().unwrap_or_else(|e| e.into_inner());
    if tagged() {
        return Ok((tag, false));
    }
    let want: Sha256 = sha.parse().map_err(|_| failed(format!("{}: not a store blob", blob.display())))?;
    // Checked before the engine sees a byte, and hashed again as it streams
    // (the file could change in between).
    let corrupt = |got: &dyn std::fmt::Display| {
        failed(format!(
            "the rootfs {} no longer matches its manifest (sha256 {got}); run `kubestrap cache verify`",
            blob.display()
        ))
    };
    let (before, _) = crate::artifacts::hash::hash_file(blob).map_err(|e| fskit::FsError::io(blob, "read", e))?;
    if before != want {
        return Err(corrupt(&before));
    }
    let file = fskit::open_regular(blob)?;
    let feed = move |mut stdin: ChildStdin| {
        let mut hashing = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
        let copied = (|| -> std::io::Result<()> {
            let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
            std::io::copy(&mut decoder, &mut stdin)?;
            stdin.flush()
        })();
        drop(stdin);
        (copied.map_err(|e| e.to_string()), hashing.finish().ok().map(|(h, _)| h))
    };
    let label = format!("LABEL {LABEL}.rootfs={sha}");
    let ran = e.run(&["import", "--change", &label, "-"], Some(feed), None, IMPORT)?;
    let (copied, got) = ran.fed.unwrap_or((Err("the feeding thread failed".into()), None));
    let id = imported_id(&ran.stdout).unwrap_or_default();
    let drop_ours = || {
        if !id.is_empty() {
            let _ = e.docker(&["image", "rm", &id], CALL);
        }
    };
    if got != Some(want) {
        drop_ours();
        return Err(match got {
            Some(got) => corrupt(&got),
            None => failed(format!("cannot read the rootfs {}", blob.display())),
        });
    }
    if !ran.status.success() || copied.is_err() || id.is_empty() {
        drop_ours();
        return Err(e.explain(&["import"], &format!("{} {}", ran.stderr, copied.err().unwrap_or_default())));
    }
    if tagged() {
        drop_ours();
    } else {
        e.docker(&["tag", &id, &tag], CALL)?;
        // Two imports may both have found the tag free: the later tag wins,
        // and the earlier import goes (the engine keeps it while a container
        // already uses it; that container's delete removes it).
        let now = e.docker(&["image", "inspect", "--format", "{{.Id}}", &tag], CALL).unwrap_or_default();
        if now.trim() != id {
            drop_ours();
        }
    }
    Ok((tag, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_the_daemon_read_as_unreachable() {
        let unreachable = |e: &str| explain(&["start"], e, "unix:///x.sock").is_docker(Kind::Unreachable);
        assert!(unreachable("Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?"));
        assert!(unreachable(
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
        ));
        assert!(unreachable(
            "error during connect: Get \"http://%2Fx/v1.41/version\": dial unix /x: connect: no such file"
        ));
        // A container's own failure is not the engine's.
        assert!(!unreachable(
            "Error response from daemon: error while creating mount source path '/x': permission denied"
        ));
        assert!(!unreachable(
            "Error response from daemon: driver failed programming external connectivity: connection refused"
        ));
    }

    #[test]
    fn an_import_id_is_read_as_docker_and_podman_print_it() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(imported_id(&format!("{id}\n")).as_deref(), Some(id.as_str()));
        assert_eq!(imported_id(&format!("{id}: {id}\n")).as_deref(), Some(id.as_str()));
        assert_eq!(imported_id("sha256:abc\n"), None);
        assert_eq!(imported_id(""), None);
    }

    #[test]
    fn engines_on_other_machines_are_told_apart() {
        for local in [
            "unix:///run/user/1000/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2376",
            "npipe:////./pipe/docker_engine",
        ] {
            assert!(local_engine(local), "{local}");
        }
        for remote in ["tcp://10.0.0.5:2376", "ssh://me@build-box", "tcp://docker.example.com:2375"] {
            assert!(!local_engine(remote), "{remote}");
        }
    }
}
