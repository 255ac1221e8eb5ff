//! The docker driver: localkube in a container on the host's Docker engine
//! (or Podman's Docker-compatible one), from the release's pinned base
//! rootfs — imported into the engine under a tag derived from its sha256, so
//! no registry is ever contacted. localkube, its command line and the PKI
//! are bind-mounted read-only when the container is created; localkube's
//! data directory is a named volume that outlives the container.
//!
//! It talks to the engine through the `docker` CLI, not the engine API: the
//! CLI is what every engine (Docker, rootless Docker, Podman, a remote
//! context) is paired with and configured for (`DOCKER_HOST`, contexts, TLS
//! settings), it adds no dependency to kubestrap, and every call here runs
//! under a deadline with its stderr kept for the error message.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::{Driver as Kind, Manifest, Sha256, Vars};
use serde::{Deserialize, Serialize};

use super::{Capabilities, Check, Driver, DriverError, Host, HostState, Launch, Result, Stop, StopOutcome, guest};
use crate::artifacts::hash::HashingReader;
use crate::profile::{Profile, VmSettings};
use crate::retry::Backoff;
use crate::state::{read as read_state, write as write_state};

pub struct Docker;

/// The lowest engine API version this driver is tested against (Docker 20.10).
const MIN_API: (u32, u32) = (1, 41);
/// Every engine call is bounded; an import of a large rootfs gets longer.
const CALL: Duration = Duration::from_secs(60);
const IMPORT: Duration = Duration::from_secs(600);
const LABEL: &str = "dev.kubestrap";

fn stage(p: &Profile) -> PathBuf {
    p.dir.join("container/stage")
}
fn created_path(p: &Profile) -> PathBuf {
    p.dir.join("container/created.toml")
}
fn stopped_path(p: &Profile) -> PathBuf {
    p.dir.join("container/stopped")
}

/// Where the engine is, for messages.
pub fn engine_address() -> String {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// A `docker` command's output, bounded in time.
fn docker(args: &[&str], deadline: Duration) -> Result<String> {
    let (status, stdout, stderr) = exec(args, deadline)?;
    if !status.success() {
        return Err(explain(args, &stderr));
    }
    Ok(stdout)
}

/// Runs `docker ARGS` under a deadline: its exit status, stdout (at most
/// 16 MiB) and stderr (at most 1 MiB).
fn exec(args: &[&str], deadline: Duration) -> Result<(std::process::ExitStatus, String, String)> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            DriverError::Docker(format!(
                "cannot run the `docker` command ({e}): install the Docker CLI (or podman-docker) and make sure it is on PATH"
            ))
        })?;
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let _ = (&mut out).take(16 << 20).read_to_end(&mut o);
        o
    });
    let ereader = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = (&mut err).take(1 << 20).read_to_end(&mut e);
        e
    });
    let status =
        Backoff::fixed(Duration::from_millis(10)).for_at_most(deadline).poll(|| child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(DriverError::Docker(format!(
            "`docker {}` did not finish within {}s (engine at {})",
            args.first().unwrap_or(&""),
            deadline.as_secs(),
            engine_address()
        )));
    };
    let stdout = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&ereader.join().unwrap_or_default()).trim().to_string();
    Ok((status, stdout, stderr))
}

/// One field of a `--mount` value, quoted as the CSV the CLI parses it
/// with, so a path with a comma or a quote stays one path.
fn mount_field(key: &str, value: &str) -> String {
    let field = format!("{key}={value}");
    if field.contains([',', '"', '\n', '\r']) { format!("\"{}\"", field.replace('"', "\"\"")) } else { field }
}

/// A `--mount` value for a bind mount of a host path.
fn bind_mount(host: &Path, target: &str, readonly: bool) -> String {
    let ro = if readonly { ",readonly" } else { "" };
    format!("type=bind,{},target={target}{ro}", mount_field("source", &host.display().to_string()))
}

/// A failed engine call, said with what to do.
fn explain(args: &[&str], stderr: &str) -> DriverError {
    let what = format!("`docker {}`", args.iter().take(2).copied().collect::<Vec<_>>().join(" "));
    if stderr.contains("Cannot connect")
        || stderr.contains("connect: no such file")
        || stderr.contains("connection refused")
        || stderr.contains("error during connect")
    {
        return DriverError::EngineUnreachable(format!(
            "cannot reach the Docker engine at {} ({}): start it (`sudo systemctl start docker`, Docker Desktop, or \
             `systemctl --user start podman.socket`), or point DOCKER_HOST at a running one",
            engine_address(),
            stderr.lines().last().unwrap_or(stderr)
        ));
    }
    if stderr.contains("permission denied") {
        return DriverError::EngineUnreachable(format!(
            "no permission to use the Docker engine at {}: add yourself to the `docker` group (then log in again), \
             or use rootless Docker / Podman through DOCKER_HOST",
            engine_address()
        ));
    }
    DriverError::Docker(format!("{what} failed: {stderr}"))
}

/// The engine answers, with an API version this driver supports.
pub fn engine() -> Result<(String, String)> {
    let out = docker(&["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"], Duration::from_secs(10))?;
    let mut parts = out.split_whitespace();
    let (version, api) = (parts.next().unwrap_or("?").to_string(), parts.next().unwrap_or("0.0").to_string());
    let mut nums = api.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let have = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if have < MIN_API {
        return Err(DriverError::Docker(format!(
            "the engine at {} speaks API {api} (version {version}); kubestrap needs API {}.{} or newer (Docker 20.10+, \
             Podman 4+): upgrade the engine",
            engine_address(),
            MIN_API.0,
            MIN_API.1
        )));
    }
    Ok((version, api))
}

/// A short id of this kubestrap home (two homes may share an engine).
fn home_id(p: &Profile) -> String {
    use sha2::Digest;
    let home = p.dir.parent().and_then(Path::parent).unwrap_or(&p.dir);
    hex::encode(&sha2::Sha256::digest(home.as_os_str().as_encoded_bytes())[..4])
}

fn container_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}", p.name, home_id(p))
}

fn volume_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}-data", p.name, home_id(p))
}

fn image_tag(sha: &str) -> String {
    format!("kubestrap-rootfs:{sha}")
}

/// What a container was created with: a start reuses it only when a new
/// one would be the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Created {
    name: String,
    args: Vec<String>,
}

/// Imports the verified rootfs blob unless the engine has it: decompressed
/// as it streams into `docker import`, hashed on the way. The import is
/// untagged until its hash has matched, so the tag only ever names verified
/// content; when another kubestrap tagged the same rootfs meanwhile, ours is
/// dropped and theirs used.
fn ensure_image(blob: &Path) -> Result<String> {
    let sha = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = image_tag(&sha);
    let tagged = || docker(&["image", "inspect", "--format", "{{.Id}}", &tag], CALL).is_ok();
    if tagged() {
        return Ok(tag);
    }
    let want: Sha256 = sha.parse().map_err(|_| DriverError::Docker(format!("{}: not a store blob", blob.display())))?;
    // Checked before the engine sees a byte, and hashed again as it streams
    // (the file could change in between).
    let corrupt = |got: &dyn std::fmt::Display| {
        DriverError::Docker(format!(
            "the rootfs {} no longer matches its manifest (sha256 {got}); run `kubestrap cache verify`",
            blob.display()
        ))
    };
    let (before, _) = crate::artifacts::hash::hash_file(blob).map_err(|e| fskit::FsError::io(blob, "read", e))?;
    if before != want {
        return Err(corrupt(&before));
    }
    let label = format!("LABEL {LABEL}.rootfs={sha}");
    let mut child = Command::new("docker")
        .args(["import", "--change", &label, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DriverError::Docker(format!("cannot run `docker import`: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let file = fskit::open_regular(blob)?;
    let mut hashing = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
    let copied = (|| -> std::io::Result<()> {
        let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
        std::io::copy(&mut decoder, &mut stdin)?;
        stdin.flush()
    })();
    drop(stdin);
    let (got, _) = hashing.finish().map_err(|e| fskit::FsError::io(blob, "read", e))?;
    let status = Backoff::fixed(Duration::from_millis(10)).for_at_most(IMPORT).poll(|| child.try_wait().ok().flatten());
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = (&mut o).take(4 << 10).read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(64 << 10).read_to_string(&mut err);
    }
    let id = out.trim().to_string();
    let ok = matches!((&copied, status), (Ok(()), Some(s)) if s.success()) && id.starts_with("sha256:");
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
        if id.starts_with("sha256:") {
            let _ = docker(&["image", "rm", &id], CALL);
        }
        if got != want {
            return Err(corrupt(&got));
        }
        let why = copied.err().map(|e| e.to_string()).unwrap_or_default();
        return Err(explain(&["import"], &format!("{} {why}", err.trim())));
    }
    if got != want {
        let _ = docker(&["image", "rm", &id], CALL);
        return Err(corrupt(&got));
    }
    if tagged() {
        let _ = docker(&["image", "rm", &id], CALL);
    } else {
        docker(&["tag", &id, &tag], CALL)?;
    }
    Ok(tag)
}

/// The container's state as the engine reports it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct State {
    status: String,
    running: bool,
    exit_code: i64,
    #[serde(default)]
    finished_at: String,
    #[serde(default)]
    error: String,
}

fn inspect(p: &Profile) -> Result<Option<(State, String)>> {
    match docker(&["container", "inspect", "--format", "{{json .State}} {{.Id}}", &container_name(p)], CALL) {
        Ok(out) => {
            let (json, id) = out.trim().rsplit_once(' ').unwrap_or((out.trim(), ""));
            let state: State = serde_json::from_str(json)
                .map_err(|e| DriverError::Docker(format!("cannot read the container's state: {e}")))?;
            Ok(Some((state, id.chars().take(12).collect())))
        }
        Err(DriverError::Docker(msg)) if msg.contains("No such container") || msg.contains("no such container") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn settings(p: &Profile) -> VmSettings {
    p.load().ok().and_then(|c| c.vm).unwrap_or_default()
}

impl Driver for Docker {
    fn kind(&self) -> Kind {
        Kind::Docker
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { suspend: false, snapshot: true }
    }

    fn check(&self, manifest: Option<&Manifest>) -> Vec<Check> {
        let mut out = Vec::new();
        match engine() {
            Ok((version, api)) => {
                out.push(Check::new(
                    "engine",
                    true,
                    &format!("{} answers: version {version}, API {api}", engine_address()),
                    "",
                    true,
                ));
                let storage = docker(&["info", "--format", "{{.Driver}}"], Duration::from_secs(10)).unwrap_or_default();
                out.push(Check::new("storage driver", true, storage.trim(), "", false));
            }
            Err(e) => out.push(Check::new(
                "engine",
                false,
                &e.to_string(),
                "start the engine or set DOCKER_HOST; or use --driver native or --driver qemu",
                true,
            )),
        }
        if let Some(m) = manifest {
            let has = m
                .needs(&kubestrap_manifest::Target::host(), Kind::Docker)
                .is_ok_and(|n| n.iter().any(|n| n.component == "rootfs"));
            out.push(Check::new(
                "rootfs",
                has,
                &if has {
                    format!("release {} pins a base rootfs for the docker driver", m.id())
                } else {
                    format!("release {} pins no base rootfs for the docker driver", m.id())
                },
                "use a release made for the docker driver, or another driver",
                true,
            ));
        }
        out
    }

    fn extra_sans(&self) -> Vec<String> {
        Vec::new()
    }

    fn vars(&self, launch: &Launch) -> Vars {
        guest::vars(launch)
    }

    fn host_vars(&self, launch: &Launch) -> Vars {
        guest::host_vars(launch, &self.host_data(&launch.profile))
    }

    fn host_data(&self, p: &Profile) -> PathBuf {
        stage(p).join("data")
    }

    fn create(&self, p: &Profile) -> Result<()> {
        for dir in [p.run(), p.logs(), self.host_data(p)] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        Ok(())
    }

    fn start(&self, launch: &Launch) -> Result<Host> {
        let p = &launch.profile;
        engine()?;
        let blob = launch.trees.get("rootfs").ok_or_else(|| {
            DriverError::Docker("the release has no base rootfs for the docker driver (drivers = [\"docker\"])".into())
        })?;
        let image = ensure_image(blob)?;
        let vars = self.vars(launch);
        let name = container_name(p);
        let volume = volume_name(p);
        let set = settings(p);
        let mut args: Vec<String> = vec![
            "create".into(),
            // Never a registry: a missing image is an error, not a pull.
            "--pull".into(),
            "never".into(),
            "--name".into(),
            name.clone(),
            "--hostname".into(),
            vars.node.clone(),
            "--label".into(),
            format!("{LABEL}.profile={}", p.name),
            "--label".into(),
            format!("{LABEL}.home={}", home_id(p)),
            "--label".into(),
            format!("{LABEL}.release={}", launch.release),
            "--label".into(),
            format!("{LABEL}.localkube={}", launch.program_sha256),
            "--publish".into(),
            format!("127.0.0.1:{}:{}", launch.port, guest::PORT),
            "--mount".into(),
            format!("type=volume,source={volume},target=/data"),
            "--mount".into(),
            bind_mount(&launch.component, &guest::path("component"), true),
            "--mount".into(),
            bind_mount(&p.pki(), &guest::path("pki"), true),
            "--mount".into(),
            bind_mount(&self.host_data(p), &guest::path("data"), true),
            "--stop-signal".into(),
            format!("SIG{:?}", launch.run.stop_signal).to_uppercase(),
            "--stop-timeout".into(),
            launch.run.stop_timeout_s.to_string(),
            "--entrypoint".into(),
            "/init".into(),
        ];
        if let Some(c) = set.cpus {
            args.extend(["--cpus".into(), c.to_string()]);
        }
        if let Some(m) = set.memory_mib {
            args.extend(["--memory".into(), format!("{m}m")]);
        }
        // k3s runs containerd, cgroups and iptables of its own (as k3d and
        // kind nodes do); a localkube that needs no root gets no privilege.
        if launch.run.needs_root {
            args.extend(["--privileged".into(), "--tmpfs".into(), "/run".into(), "--tmpfs".into(), "/var/run".into()]);
        }
        args.push(image);
        args.push(guest::path(&format!("component/{}", launch.run.program)));
        args.extend(launch.run.args.iter().map(|a| a.render(&vars)));
        let want = Created { name: name.clone(), args: args.clone() };
        let existing = inspect(p)?;
        let same: Option<Created> = read_state(&created_path(p)).ok().flatten();
        if existing.is_some() && same.as_ref() != Some(&want) {
            docker(&["rm", "-f", &name], CALL)?;
        }
        if existing.is_none() || same.as_ref() != Some(&want) {
            fskit::remove_any(&created_path(p))?;
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            match docker(&refs, CALL) {
                // Another profile's delete took the image with its last
                // container between our check and this create: import again.
                Err(DriverError::Docker(m)) if m.contains("No such image") => {
                    ensure_image(blob)?;
                    docker(&refs, CALL)?;
                }
                other => {
                    other?;
                }
            }
            write_state(&created_path(p), &want)?;
        }
        fskit::remove_any(&stopped_path(p))?;
        docker(&["start", &name], CALL)?;
        let id = inspect(p)?.map(|(_, id)| id).unwrap_or_default();
        Ok(Host { id: format!("container {name} ({id})"), port: launch.port })
    }

    fn running(&self, p: &Profile) -> Result<bool> {
        Ok(inspect(p)?.is_some_and(|(s, _)| s.running))
    }

    fn stop(&self, p: &Profile, how: Stop) -> Result<StopOutcome> {
        let Some((state, _)) = inspect(p)? else { return Ok(StopOutcome::WasNotRunning) };
        // Recorded first: a stop cut short reads as "stopping", never "crashed".
        fskit::write_atomic(&stopped_path(p), crate::state::now().as_bytes(), 0o600)?;
        if !state.running {
            return Ok(StopOutcome::WasNotRunning);
        }
        let secs = how.timeout.as_secs().to_string();
        docker(&["stop", "--time", &secs, &container_name(p)], how.timeout + CALL)?;
        let killed = inspect(p)?.is_some_and(|(s, _)| s.exit_code == 137);
        Ok(if killed { StopOutcome::Killed } else { StopOutcome::Stopped })
    }

    fn adopt(&self, p: &Profile) -> Result<()> {
        Ok(fskit::remove_any(&stopped_path(p))?)
    }

    fn status(&self, p: &Profile) -> Result<HostState> {
        let Some((state, id)) = inspect(p)? else { return Ok(HostState::Stopped) };
        let asked = stopped_path(p).is_file();
        let port = p.load().map(|c| c.port).unwrap_or_default();
        let host = Host { id: format!("container {} ({id})", container_name(p)), port };
        Ok(match (state.running, asked) {
            (true, true) => HostState::Stopping(host),
            (true, false) => HostState::Running(host),
            (false, true) => HostState::Stopped,
            (false, false) if state.status == "created" => HostState::Stopped,
            (false, false) => HostState::Crashed {
                how: format!(
                    "the container exited with code {} at {}{}",
                    state.exit_code,
                    state.finished_at,
                    if state.error.is_empty() { String::new() } else { format!(" ({})", state.error) }
                ),
            },
        })
    }

    fn delete(&self, p: &Profile) -> Result<()> {
        let image = self.image_of(p).ok();
        match docker(&["rm", "-f", "--volumes", &container_name(p)], CALL) {
            Ok(_) => {}
            Err(DriverError::Docker(m)) if m.contains("No such container") || m.contains("no such container") => {}
            Err(e) => return Err(e),
        }
        let _ = docker(&["volume", "rm", "-f", &volume_name(p)], CALL);
        // The image goes with its last container.
        if let Some(image) = image
            && docker(&["ps", "-a", "-q", "--filter", &format!("ancestor={image}")], CALL)
                .is_ok_and(|o| o.trim().is_empty())
        {
            let _ = docker(&["image", "rm", &image], CALL);
        }
        Ok(())
    }

    fn log_tail(&self, p: &Profile, n: usize) -> Vec<String> {
        match exec(&["logs", "--tail", &n.to_string(), &container_name(p)], CALL) {
            Ok((_, stdout, stderr)) => {
                let lines: Vec<String> = stdout.lines().chain(stderr.lines()).map(String::from).collect();
                lines[lines.len().saturating_sub(n)..].to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    fn follow_log(&self, p: &Profile, out: &mut dyn Write) -> Result<()> {
        // The container's stdout and stderr, as one stream, into `out`.
        let spawn_err = |source| DriverError::Spawn { what: "run `docker logs`", source };
        let (mut reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let mut child = Command::new("docker")
            .args(["logs", "--follow", "--tail", "0", &container_name(p)])
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(spawn_err)?)
            .stderr(writer)
            .spawn()
            .map_err(spawn_err)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = child.kill();
        let status = child.wait().map_err(spawn_err)?;
        if !status.success() && status.code().is_some() {
            return Err(DriverError::Docker(format!("`docker logs --follow` ended with {status}")));
        }
        Ok(())
    }

    /// The data volume, copied to `dest` through a throwaway container of
    /// the profile's own image (nothing pulled).
    fn snapshot(&self, p: &Profile, dest: &Path) -> Result<fskit::Copied> {
        fskit::create_dir_mode(dest, 0o700)?;
        let image = self.image_of(p)?;
        let to = bind_mount(dest, "/to", false);
        let from = format!("type=volume,source={},target=/from,readonly", volume_name(p));
        docker(
            &[
                "run",
                "--rm",
                "--pull",
                "never",
                "--mount",
                &from,
                "--mount",
                &to,
                "--entrypoint",
                "/bin/cp",
                &image,
                "-a",
                "/from/.",
                "/to/",
            ],
            IMPORT,
        )?;
        fskit::sync_fs(dest)?;
        Ok(fskit::Copied { files: 0, bytes: fskit::tree_size(dest), reflinked: 0 })
    }

    fn restore(&self, p: &Profile, src: &Path) -> Result<()> {
        let image = self.image_of(p)?;
        let from = bind_mount(src, "/from", true);
        let to = format!("type=volume,source={},target=/to", volume_name(p));
        let script = "find /to -mindepth 1 -maxdepth 1 -exec rm -rf {} + && cp -a /from/. /to/";
        docker(
            &[
                "run",
                "--rm",
                "--pull",
                "never",
                "--mount",
                &from,
                "--mount",
                &to,
                "--entrypoint",
                "/bin/sh",
                &image,
                "-c",
                script,
            ],
            IMPORT,
        )?;
        Ok(())
    }
}

impl Docker {
    /// The image the profile's container was made from: by id from the
    /// engine (the record may be damaged or never written, and the tag may
    /// have moved to a later import of the same rootfs), else the recorded tag.
    fn image_of(&self, p: &Profile) -> Result<String> {
        if let Ok(out) = docker(&["container", "inspect", "--format", "{{.Image}}", &container_name(p)], CALL)
            && out.trim().starts_with("sha256:")
        {
            return Ok(out.trim().to_string());
        }
        read_state::<Created>(&created_path(p))
            .ok()
            .flatten()
            .and_then(|c| c.args.into_iter().find(|a| a.starts_with("kubestrap-rootfs:")))
            .ok_or_else(|| DriverError::Docker(format!("profile {:?} has no container image recorded", p.name)))
    }
}
