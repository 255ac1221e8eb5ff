//! The docker driver: localkube in a container on the host's Docker engine
//! (or Podman's Docker-compatible one), from the release's pinned base
//! rootfs — imported into the engine under a tag derived from its sha256, so
//! no registry is ever contacted. localkube, its command line and the PKI
//! are bind-mounted read-only when the container is created; localkube's
//! data directory is a named volume that outlives the container.
//!
//! It talks to the engine through the `docker` CLI, not the engine API: the
//! CLI is what every engine (Docker, rootless Docker, Podman, a context) is
//! paired with and configured for (`DOCKER_HOST`, contexts, TLS settings),
//! it adds no dependency to kubestrap, and every call here runs under a
//! deadline with its stderr kept for the error message. The engine must be
//! on this machine: the container bind-mounts this machine's files.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest, Vars};
use serde::{Deserialize, Serialize};

use super::{
    Check, Context, Description, DockerError, DockerErrorKind, Driver, DriverError, Host, HostState, Launch, Result,
    Stop, StopOutcome, guest,
};
use crate::profile::Profile;
use crate::progress::Step;
use crate::state::{read as read_state, write as write_state};

mod address;
mod agents;
mod engine;
mod volume;

use engine::{Engine, Info, ensure_image, failed};

pub const DESCRIPTION: Description = Description {
    kind: Kind::Docker,
    needs: &[ComponentName::Rootfs],
    marks: Some("container"),
    here: || {
        let eng = Engine::from_env();
        match eng.info() {
            Ok(info) => Ok(format!("{} answers at {}", info.name(), eng.describe())),
            Err(e) => {
                tracing::debug!("docker driver not chosen: {e}");
                Err(format!("no usable container engine answers at {}", eng.describe()))
            }
        }
    },
    make: |ctx| {
        let engine = Engine::from_env().cached_in(&ctx.home.join("state"));
        Box::new(Docker { ctx, engine })
    },
};

pub struct Docker<'a> {
    ctx: Context<'a>,
    /// The engine the `docker` CLI would use here (what a new profile is
    /// created on).
    engine: Engine,
}

/// The engine a profile was created on (`container/engine.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EngineRecord {
    host: String,
    /// What it was ("Docker 20.10.24", "rootless Podman 4.3.1").
    name: String,
}

fn engine_path(p: &Profile) -> PathBuf {
    p.dir.join("container/engine.toml")
}

impl Docker<'_> {
    /// The engine `p` lives on: the one it was created on. When the user
    /// points elsewhere (DOCKER_HOST, a docker context), that is refused
    /// with both named; when nothing was asked, the profile's is used.
    fn engine_for(&self, p: &Profile) -> Result<Engine> {
        let Some(kept) = read_state::<EngineRecord>(&engine_path(p)).ok().flatten() else {
            return Ok(self.engine.clone());
        };
        if kept.host == self.engine.address.host {
            return Ok(self.engine.clone());
        }
        let lives = address::Address { host: kept.host.clone(), found: address::Found::Profile };
        if self.engine.address.found.asked() {
            return Err(DockerError::new(
                DockerErrorKind::OtherEngine,
                format!(
                    "profile {:?} lives on the engine at {} ({}); kubestrap was pointed at {}",
                    p.name,
                    crate::urls::redact(&kept.host),
                    kept.name,
                    self.engine.describe()
                ),
            )
            .into());
        }
        tracing::debug!("profile {:?}: its own engine, {}", p.name, lives.describe());
        Ok(Engine::new(lives).cached_in(&self.ctx.home.join("state")))
    }

    /// Records the engine a new container is made on.
    fn remember_engine(&self, p: &Profile, eng: &Engine, info: &Info) -> Result<()> {
        let want = EngineRecord { host: eng.address.host.clone(), name: info.name() };
        if read_state::<EngineRecord>(&engine_path(p)).ok().flatten().as_ref() != Some(&want) {
            write_state(&engine_path(p), &want)?;
        }
        Ok(())
    }
}

/// Every engine call is bounded; a copy of a large volume gets longer.
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

/// A short id of this kubestrap home (two homes may share an engine).
fn home_id(p: &Profile) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(p.home_root().as_os_str().as_encoded_bytes())[..4])
}

fn container_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}", p.name, home_id(p))
}

fn volume_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}-data", p.name, home_id(p))
}

fn network_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}", p.name, home_id(p))
}

fn network_path(p: &Profile) -> PathBuf {
    p.dir.join("container/network.toml")
}

/// The profile's own network: localkube's node address is fixed on it
/// (`{node-ip}`: k3s's node, advertised and bind address), the same at
/// every start, which the engine's default bridge cannot promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Network {
    name: String,
    subnet: String,
    gateway: Ipv4Addr,
    node: Ipv4Addr,
}

/// The subnet and gateway of an existing network.
fn network_ipam(eng: &Engine, name: &str) -> Result<Option<(String, Ipv4Addr)>> {
    let format = "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}};{{end}}";
    let out = match eng.docker(&["network", "inspect", "--format", format, name], CALL) {
        Ok(out) => out,
        Err(e) if e.is_docker(DockerErrorKind::NoSuchNetwork) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The IPv4 pool (a network may also have an IPv6 one).
    Ok(out.split(';').filter_map(|c| c.trim().split_once(' ')).find_map(|(subnet, gw)| {
        let gw: Ipv4Addr = gw.parse().ok()?;
        Some((subnet.to_string(), gw))
    }))
}

/// Makes the profile's network if it is missing. The engine picks a free
/// subnet (it knows its other networks and the machine's routes); the
/// network is then made again with that subnet named, since a fixed
/// container address needs a subnet the user configured.
fn ensure_network(eng: &Engine, p: &Profile) -> Result<Network> {
    let name = network_name(p);
    let labels = [format!("{LABEL}.profile={}", p.name), format!("{LABEL}.home={}", home_id(p))];
    let label_args: Vec<&str> = labels.iter().flat_map(|l| ["--label", l.as_str()]).collect();
    let mut ipam = network_ipam(eng, &name)?;
    for _ in 0..3 {
        if ipam.is_some() {
            break;
        }
        let mut create = vec!["network", "create"];
        create.extend(&label_args);
        create.push(&name);
        eng.docker(&create, CALL)?;
        let picked = network_ipam(eng, &name)?;
        eng.docker(&["network", "rm", &name], CALL)?;
        let Some((subnet, gateway)) = picked else { continue };
        let gw = gateway.to_string();
        let mut pinned = vec!["network", "create", "--subnet", &subnet, "--gateway", &gw];
        pinned.extend(&label_args);
        pinned.push(&name);
        // Another network may have taken the subnet meanwhile: pick again.
        if eng.docker(&pinned, CALL).is_ok() {
            ipam = network_ipam(eng, &name)?;
        }
    }
    let (subnet, gateway) = ipam.ok_or_else(|| failed(format!("cannot make the network {name}")))?;
    let node = Ipv4Addr::from(u32::from(gateway) + 1);
    let net = Network { name, subnet, gateway, node };
    if read_state::<Network>(&network_path(p)).ok().flatten().as_ref() != Some(&net) {
        write_state(&network_path(p), &net)?;
    }
    Ok(net)
}

/// The node address the profile's network gives localkube (unspecified
/// before its first start: only the paths matter then).
fn node_ip(p: &Profile) -> Ipv4Addr {
    read_state::<Network>(&network_path(p)).ok().flatten().map_or(Ipv4Addr::UNSPECIFIED, |n| n.node)
}

/// What a container was created with: a start reuses it only when a new
/// one would be the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Created {
    name: String,
    args: Vec<String>,
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

/// Whether an engine call failed only because the container is not there.
fn no_such_container(e: &DriverError) -> bool {
    e.is_docker(DockerErrorKind::NoSuchContainer)
}

/// What the engine says of a profile's container.
struct Inspected {
    state: State,
    /// The short container id.
    id: String,
    /// The host port the apiserver is published on (0 if none).
    port: u16,
}

fn inspect(eng: &Engine, name: &str) -> Result<Option<Inspected>> {
    let format = "{{json .State}}\n{{json .HostConfig.PortBindings}}\n{{.Id}}";
    match eng.docker(&["container", "inspect", "--format", format, name], CALL) {
        Ok(out) => {
            let mut lines = out.trim().lines();
            let state: State = serde_json::from_str(lines.next().unwrap_or_default())
                .map_err(|e| failed(format!("cannot read the container's state: {e}")))?;
            // {"6443/tcp":[{"HostIp":"127.0.0.1","HostPort":"8443"}]}
            let bindings: std::collections::HashMap<String, Vec<serde_json::Value>> =
                serde_json::from_str(lines.next().unwrap_or_default()).unwrap_or_default();
            let port = bindings
                .get(&format!("{}/tcp", guest::PORT))
                .and_then(|b| b.first())
                .and_then(|b| b["HostPort"].as_str())
                .and_then(|p| p.parse().ok())
                .unwrap_or_default();
            let id = lines.next().unwrap_or_default().chars().take(12).collect();
            Ok(Some(Inspected { state, id, port }))
        }
        Err(e) if no_such_container(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stops a node's container gracefully (its stop signal, then a kill after
/// the timeout), the stop recorded in `stopped` first: a stop cut short
/// reads as "stopping", never "crashed".
fn stop_container(eng: &Engine, name: &str, stopped: &Path, how: Stop) -> Result<StopOutcome> {
    let Some(Inspected { state, .. }) = inspect(eng, name)? else { return Ok(StopOutcome::WasNotRunning) };
    fskit::write_atomic(stopped, crate::state::now().as_bytes(), 0o600)?;
    if !state.running {
        return Ok(StopOutcome::WasNotRunning);
    }
    let secs = how.timeout.as_secs().to_string();
    crate::killpoint::reached("container stop");
    eng.docker(&["stop", "--time", &secs, name], how.timeout + CALL)?;
    crate::killpoint::reached("container stopped");
    let killed = inspect(eng, name)?.is_some_and(|i| i.state.exit_code == 137);
    Ok(if killed { StopOutcome::Killed } else { StopOutcome::Stopped })
}

/// A node's container as a host state: stopped when asked (`stopped`
/// exists) or never started, crashed when it ended by itself.
fn container_state(eng: &Engine, name: &str, stopped: &Path) -> Result<HostState> {
    let Some(Inspected { state, id, port }) = inspect(eng, name)? else { return Ok(HostState::Stopped) };
    let asked = stopped.is_file();
    let host = Host { id: format!("container {name} ({id})"), pid: None, port };
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
            host_down: true,
        },
    })
}

/// Capability names by number, as the engines know them (Docker 20.10
/// knows up to CAP_AUDIT_READ, 37, and refuses later names).
const CAPABILITIES: [&str; 38] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// This machine's capability bounding set (what a process here, and so a
/// container of its engine, can ever hold), and the kernel's highest
/// capability number.
fn capability_bounding_set() -> (u64, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    let last =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    (bnd, last)
}

/// What a localkube that needs root (k3s) gets, as k3d's and kind's nodes:
/// `--privileged`. Where this machine's bounding set lacks a capability (a
/// confined machine: runc refuses every privileged container there,
/// "unable to apply caps"), the same less that: every capability it has,
/// no seccomp or AppArmor confinement, /proc and /sys unmasked, /dev/kmsg
/// (the kubelet reads it); the entrypoint makes /sys and the cgroup
/// filesystems writable, as they are in a privileged container.
fn privilege_args((bnd, last): &(u64, u32)) -> Vec<String> {
    let all = (0..=*last).all(|c| bnd & (1 << c) != 0);
    if all {
        return vec!["--privileged".into()];
    }
    let mut out: Vec<String> = CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(c, _)| bnd & (1 << c) != 0)
        .flat_map(|(_, name)| ["--cap-add".to_string(), name.to_string()])
        .collect();
    for opt in ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"] {
        out.extend(["--security-opt".into(), opt.into()]);
    }
    if Path::new("/dev/kmsg").exists() {
        out.extend(["--device".into(), "/dev/kmsg".into()]);
    }
    out
}

/// What a Podman engine is asked for: open files and processes no higher
/// than its own process may have (Podman's defaults, 1048576, are higher:
/// a machine without CAP_SYS_RESOURCE refuses them, "error setting rlimit
/// type 7"). Docker passes its own limits on by itself: nothing to ask.
fn podman_limits(eng: &Engine, info: &Info) -> Vec<String> {
    if !info.podman {
        return Vec::new();
    }
    // The engine's own, else this process's (the same machine, most often
    // the same limits), never above what k3s asks of a node.
    let own = || {
        let hard = |r| nix::sys::resource::getrlimit(r).map(|(_, h)| h).unwrap_or(1 << 20);
        (hard(nix::sys::resource::Resource::RLIMIT_NOFILE), hard(nix::sys::resource::Resource::RLIMIT_NPROC))
    };
    let (nofile, nproc) = eng.process_limits().unwrap_or_else(own);
    let (nofile, nproc) = (nofile.min(1 << 20), nproc.min(1 << 20));
    vec!["--ulimit".into(), format!("nofile={nofile}:{nofile}"), "--ulimit".into(), format!("nproc={nproc}:{nproc}")]
}

/// The engine, as a check: whether it answers (and how), blocking.
fn engine_check(eng: &Engine) -> (Check, Option<Info>) {
    match eng.info() {
        Ok(info) => {
            let detail = format!("{} answers at {}: API {}", info.name(), eng.describe(), info.api);
            (Check::new("engine", true, &detail, "", true), Some(info))
        }
        Err(e) => {
            let advice = "start the engine or set DOCKER_HOST (or `docker context use`); or use --driver native or \
                          --driver qemu";
            (Check::new("engine", false, &e.to_string(), advice, true), None)
        }
    }
}

/// A rootless engine cannot give a localkube that needs real root (k3s:
/// containerd, cgroups, iptables of the machine's own) what it needs.
fn rootless_check(info: &Info, m: &Manifest) -> Option<Check> {
    let run = &m.component.localkube.run;
    (info.rootless && run.needs_root).then(|| {
        Check::new(
            "rootless engine",
            false,
            &format!(
                "the engine is {} and release {} runs {} as real root (needs-root): a rootless engine cannot give it \
                 the machine's cgroups, iptables and devices",
                info.name(),
                m.id(),
                run.program
            ),
            "use a rootful engine (the system's Docker or Podman, with sudo), or --driver qemu (no root needed)",
            true,
        )
    })
}

/// The engine's storage driver: `vfs` copies every layer in full (slow,
/// and a node image takes its whole size again per container), flagged
/// though not blocking.
fn storage_check(driver: &str) -> Check {
    let vfs = driver == "vfs";
    let detail = if vfs {
        "vfs: every container gets a full copy of its image (slow starts, large disk use)".to_string()
    } else {
        driver.to_string()
    };
    let advice = "configure the engine for overlay2 (Docker: \"storage-driver\" in daemon.json; Podman: driver = \"overlay\" in storage.conf, with fuse-overlayfs when rootless on an older kernel)";
    Check::new("storage driver", !vfs, &detail, if vfs { advice } else { "" }, false)
}

/// Whether the release pins a base rootfs for this machine, blocking.
fn rootfs_check(m: &Manifest) -> Check {
    let has = m
        .needs(&kubestrap_manifest::Target::host(), Kind::Docker)
        .is_ok_and(|n| n.iter().any(|n| n.component == ComponentName::Rootfs));
    let pins = if has { "pins a" } else { "pins no" };
    let detail = format!("release {} {pins} base rootfs for the docker driver", m.id());
    Check::new("rootfs", has, &detail, "use a release made for the docker driver, or another driver", true)
}

impl Driver for Docker<'_> {
    fn kind(&self) -> Kind {
        Kind::Docker
    }

    fn check(&self, manifest: Option<&Manifest>) -> Vec<Check> {
        let eng = &self.engine;
        let (engine, info) = engine_check(eng);
        let mut out = vec![engine];
        if let Some(info) = &info {
            let storage = eng.docker(&["info", "--format", "{{.Driver}}"], Duration::from_secs(10)).unwrap_or_default();
            out.push(storage_check(storage.trim()));
            out.extend(manifest.and_then(|m| rootless_check(info, m)));
        }
        out.extend(manifest.map(rootfs_check));
        out
    }

    /// The engine (the profile's own, for one that exists), that it can run
    /// the release, and the rootfs; the storage driver is for `doctor`.
    fn prerequisites(&self, p: &Profile, manifest: &Manifest) -> Vec<Check> {
        let eng = match self.engine_for(p) {
            Ok(e) => e,
            Err(e) => return vec![Check::new("engine", false, &e.to_string(), &e.hint().unwrap_or_default(), true)],
        };
        let (engine, info) = engine_check(&eng);
        let mut out = vec![engine];
        out.extend(info.and_then(|i| rootless_check(&i, manifest)));
        out.push(rootfs_check(manifest));
        out
    }

    /// The node's address on the profile's network: where the other nodes
    /// reach the apiserver.
    fn extra_sans(&self, p: &Profile) -> Vec<String> {
        let ip = node_ip(p);
        if ip.is_unspecified() { Vec::new() } else { vec![ip.to_string()] }
    }

    fn vars(&self, launch: &Launch) -> Vars {
        guest::vars(launch, node_ip(&launch.profile))
    }

    fn host_vars(&self, launch: &Launch) -> Vars {
        guest::host_vars(launch, node_ip(&launch.profile), &self.host_data(&launch.profile))
    }

    fn host_data(&self, p: &Profile) -> PathBuf {
        stage(p).join("data")
    }

    /// The directories, and the profile's network: its node address is
    /// fixed before the certificates are made (they name it).
    fn create(&self, p: &Profile) -> Result<()> {
        for dir in [p.run(), p.logs(), self.host_data(p)] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        ensure_network(&self.engine_for(p)?, p)?;
        Ok(())
    }

    fn start(&self, launch: &Launch) -> Result<Host> {
        let p = &launch.profile;
        let (eng, info, image, blob) = self.prepare(launch)?;
        let net = ensure_network(&eng, p)?;
        let vars = self.vars(launch);
        let name = container_name(p);
        let spec = Spec {
            name: &name,
            hostname: &vars.node,
            ip: net.node,
            volume: &volume_name(p),
            role: None,
            // A joined node serves nothing here; a server is published on
            // 127.0.0.1, and on the `--listen` address.
            publish: launch.join.is_none().then(|| {
                let mut at = vec![format!("127.0.0.1:{}:{}", launch.port, guest::PORT)];
                at.extend(launch.listen.map(|a| format!("{a}:{}:{}", launch.port, guest::PORT)));
                at
            }),
            mounts: vec![
                bind_mount(&p.pki(), &guest::path("pki"), true),
                bind_mount(&self.host_data(p), &guest::path("data"), true),
            ],
            command: launch.run.args.iter().map(|a| a.render(&vars)).collect(),
        };
        let args = container_args(launch, &eng, &info, &image, &net.name, &spec);
        self.ensure_container(&eng, &created_path(p), &name, &args, blob)?;
        fskit::remove_any(&stopped_path(p))?;
        eng.docker(&["start", &name], CALL)?;
        let id = inspect(&eng, &name)?.map(|i| i.id).unwrap_or_default();
        Ok(Host { id: format!("container {name} ({id})"), pid: None, port: launch.port })
    }

    fn running(&self, p: &Profile) -> Result<bool> {
        let eng = self.engine_for(p)?;
        Ok(inspect(&eng, &container_name(p))?.is_some_and(|i| i.state.running))
    }

    fn stop(&self, p: &Profile, how: Stop) -> Result<StopOutcome> {
        let eng = self.engine_for(p)?;
        stop_container(&eng, &container_name(p), &stopped_path(p), how)
    }

    fn adopt(&self, p: &Profile) -> Result<()> {
        Ok(fskit::remove_any(&stopped_path(p))?)
    }

    fn status(&self, p: &Profile) -> Result<HostState> {
        let eng = self.engine_for(p)?;
        container_state(&eng, &container_name(p), &stopped_path(p))
    }

    fn delete(&self, p: &Profile) -> Result<()> {
        let eng = self.engine_for(p)?;
        let image = self.image_of(&eng, p).ok();
        match eng.docker(&["rm", "-f", "--volumes", &container_name(p)], CALL) {
            Err(e) if !no_such_container(&e) => return Err(e),
            _ => {}
        }
        // The agents' containers and volumes (found by label), before the
        // network they are on.
        agents::remove_all(&eng, p)?;
        // A throwaway a killed upgrade left holds the volume.
        volume::remove_throwaways(&eng, &container_name(p))?;
        if let Err(e) = eng.docker(&["volume", "rm", "-f", &volume_name(p)], CALL) {
            return Err(failed(format!("the volume {} could not be removed: {e}", volume_name(p))));
        }
        match network_ipam(&eng, &network_name(p)) {
            Ok(None) => {}
            Ok(Some(_)) => {
                if let Err(e) = eng.docker(&["network", "rm", &network_name(p)], CALL) {
                    return Err(failed(format!("the network {} could not be removed: {e}", network_name(p))));
                }
            }
            Err(e) => return Err(e),
        }
        // The image goes with its last container.
        if let Some(image) = image
            && eng
                .docker(&["ps", "-a", "-q", "--filter", &format!("ancestor={image}")], CALL)
                .is_ok_and(|o| o.trim().is_empty())
        {
            let _ = eng.docker(&["image", "rm", &image], CALL);
        }
        // Untagged imports a killed start left (an import is tagged only once
        // verified); an hour old, so never one that is being verified now.
        let label = format!("label={LABEL}.rootfs");
        let _ = eng.docker(&["image", "prune", "-f", "--filter", &label, "--filter", "until=1h"], CALL);
        Ok(())
    }

    fn leftovers(&self, p: &Profile) -> String {
        let at = read_state::<EngineRecord>(&engine_path(p))
            .ok()
            .flatten()
            .map_or_else(|| self.engine.describe(), |r| format!("{} ({})", crate::urls::redact(&r.host), r.name));
        format!(
            "on the engine at {at}: container {}, volume {} and network {} (`docker rm -f {0}; docker volume rm {1}; \
             docker network rm {2}`, with DOCKER_HOST at that engine)",
            container_name(p),
            volume_name(p),
            network_name(p)
        )
    }

    fn log_tail(&self, p: &Profile, n: usize) -> Vec<String> {
        let Ok(eng) = self.engine_for(p) else { return Vec::new() };
        tail_of(&eng, &container_name(p), n)
    }

    fn follow_log(&self, p: &Profile, out: &mut dyn Write) -> Result<()> {
        let eng = self.engine_for(p)?;
        // The container's stdout and stderr, as one stream, into `out`.
        let spawn_err = |source| DriverError::Spawn { what: "run `docker logs`", source };
        let (mut reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let mut child = eng
            .command()
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
            return Err(failed(format!("`docker logs --follow` ended with {status}")));
        }
        Ok(())
    }

    /// The data volume, copied out through a throwaway container of the
    /// profile's own image (nothing pulled) into a file of the user's, which
    /// keeps the owners and modes of the files inside ([`volume::snapshot`]).
    fn snapshot(&self, p: &Profile, dest: &Path) -> Result<fskit::Copied> {
        self.with_throwaways(p, |eng, b| volume::snapshot(eng, b, &volume_name(p), dest))
    }

    /// The snapshot copied in beside the volume's data, then put in place
    /// of it (a cut-short restore leaves the data as it was until the swap).
    fn restore(&self, p: &Profile, src: &Path) -> Result<()> {
        self.with_throwaways(p, |eng, b| volume::restore(eng, b, &volume_name(p), src))
    }

    fn agents(&self) -> Option<&dyn super::Agents> {
        Some(self)
    }
}

impl Docker<'_> {
    /// Runs `f` with what the throwaway containers that read and write the
    /// profile's volumes are made of (the server's and its agents' alike:
    /// all are marked with the server's container, so a delete finds any a
    /// killed command left).
    pub(super) fn with_throwaways<T>(
        &self,
        p: &Profile,
        f: impl FnOnce(&Engine, &volume::Throwaways<'_>) -> Result<T>,
    ) -> Result<T> {
        let eng = self.engine_for(p)?;
        let image = self.image_of(&eng, p)?;
        let extra = podman_limits(&eng, &eng.info()?);
        f(&eng, &volume::Throwaways { owner: &container_name(p), image: &image, extra: &extra })
    }

    /// What every node's container needs before it is made: the profile's
    /// engine (able to run the release), recorded, and the node image.
    fn prepare<'l>(&self, launch: &'l Launch) -> Result<(Engine, Info, String, &'l PathBuf)> {
        // The engine was checked by the start's prerequisites.
        let p = &launch.profile;
        let eng = self.engine_for(p)?;
        let info = eng.info()?;
        if info.rootless && launch.run.needs_root {
            return Err(DockerError::new(
                DockerErrorKind::Unfit,
                format!("{} cannot run {} as real root (needs-root)", info.name(), launch.run.program),
            )
            .into());
        }
        self.remember_engine(p, &eng, &info)?;
        let blob = launch
            .trees
            .get(&ComponentName::Rootfs)
            .ok_or_else(|| failed("the release has no base rootfs for the docker driver (drivers = [\"docker\"])"))?;
        let t = std::time::Instant::now();
        let (image, imported) = ensure_image(&eng, blob)?;
        if imported {
            self.ctx.progress.step(Step::NodeImage { image: image.clone() }, t.elapsed());
        }
        Ok((eng, info, image, blob))
    }

    /// Makes the container `name` with `args` unless the one there was made
    /// with the same (`created` records what it was made with).
    fn ensure_container(&self, eng: &Engine, created: &Path, name: &str, args: &[String], blob: &Path) -> Result<()> {
        let want = Created { name: name.to_string(), args: args.to_vec() };
        let existing = inspect(eng, name)?.is_some();
        let same = read_state::<Created>(created).ok().flatten().is_some_and(|c| c == want);
        if existing && same {
            return Ok(());
        }
        // The image the old container was made from goes with it when
        // nothing else uses it (an upgrade to another rootfs).
        let old_image = if existing { image_of_container(eng, name).ok() } else { None };
        if existing {
            eng.docker(&["rm", "-f", name], CALL)?;
        }
        fskit::remove_any(created)?;
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match eng.docker(&refs, CALL) {
            // Another profile's delete took the image with its last
            // container between our check and this create: import again.
            Err(e) if e.is_docker(DockerErrorKind::NoSuchImage) => {
                ensure_image(eng, blob)?;
                eng.docker(&refs, CALL)?;
            }
            other => {
                other?;
            }
        }
        write_state(created, &want)?;
        if let Some(old) = old_image {
            // Refused by the engine while any container uses it.
            let _ = eng.docker(&["image", "rm", &old], CALL);
        }
        Ok(())
    }

    /// The image the profile's container was made from: by id from the
    /// engine (the record may be damaged or never written, and the tag may
    /// have moved to a later import of the same rootfs), else the recorded tag.
    fn image_of(&self, eng: &Engine, p: &Profile) -> Result<String> {
        if let Ok(image) = image_of_container(eng, &container_name(p)) {
            return Ok(image);
        }
        read_state::<Created>(&created_path(p))
            .ok()
            .flatten()
            .and_then(|c| c.args.into_iter().find(|a| a.starts_with("kubestrap-rootfs:")))
            .ok_or_else(|| failed(format!("profile {:?} has no container image recorded", p.name)))
    }
}

/// The last `n` lines a container logged.
fn tail_of(eng: &Engine, name: &str, n: usize) -> Vec<String> {
    match eng.run(&["logs", "--tail", &n.to_string(), name], None::<fn(_)>, None, CALL) {
        Ok(ran) => {
            let lines: Vec<String> = ran.stdout.lines().chain(ran.stderr.lines()).map(String::from).collect();
            lines[lines.len().saturating_sub(n)..].to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// The image id a container was made from.
fn image_of_container(eng: &Engine, name: &str) -> Result<String> {
    let out = eng.docker(&["container", "inspect", "--format", "{{.Image}}", name], CALL)?;
    let id = out.trim();
    if id.starts_with("sha256:") { Ok(id.to_string()) } else { Err(failed(format!("{name}: no image id ({id:?})"))) }
}

/// One node's container, beyond what every node's has.
struct Spec<'s> {
    name: &'s str,
    hostname: &'s str,
    ip: Ipv4Addr,
    volume: &'s str,
    /// An agent's node name (label `dev.kubestrap.node`); the server has none.
    role: Option<&'s str>,
    /// Where the apiserver's port is published on this machine (the server only).
    publish: Option<Vec<String>>,
    /// Bind mounts besides the component.
    mounts: Vec<String>,
    /// localkube's arguments.
    command: Vec<String>,
}

/// `docker create` for one node of `launch`'s release.
fn container_args(launch: &Launch, eng: &Engine, info: &Info, image: &str, network: &str, spec: &Spec) -> Vec<String> {
    let p = &launch.profile;
    let mut args: Vec<String> = vec![
        "create".into(),
        // Never a registry: a missing image is an error, not a pull.
        "--pull".into(),
        "never".into(),
        "--name".into(),
        spec.name.to_string(),
        "--hostname".into(),
        // A hostname has at most 63 characters (the node name may be longer).
        spec.hostname.chars().take(63).collect::<String>().trim_end_matches('-').to_string(),
        "--label".into(),
        format!("{LABEL}.profile={}", p.name),
        "--label".into(),
        format!("{LABEL}.home={}", home_id(p)),
        "--label".into(),
        format!("{LABEL}.release={}", launch.release),
        "--label".into(),
        format!("{LABEL}.localkube={}", launch.program_sha256),
    ];
    if let Some(node) = spec.role {
        args.extend(["--label".into(), format!("{LABEL}.node={node}")]);
    }
    args.extend(["--network".into(), network.to_string(), "--ip".into(), spec.ip.to_string()]);
    for publish in spec.publish.iter().flatten() {
        args.extend(["--publish".into(), publish.clone()]);
    }
    args.extend([
        "--mount".into(),
        format!("type=volume,source={},target=/data", spec.volume),
        "--mount".into(),
        bind_mount(&launch.component, &guest::path("component"), true),
    ]);
    for m in &spec.mounts {
        args.extend(["--mount".into(), m.clone()]);
    }
    args.extend([
        "--stop-signal".into(),
        format!("SIG{:?}", launch.run.stop_signal).to_uppercase(),
        "--stop-timeout".into(),
        launch.run.stop_timeout_s.to_string(),
        "--entrypoint".into(),
        "/init".into(),
        // A real PID 1 that passes the stop signal on and reaps.
        "--init".into(),
        // The container's log, capped like the native driver's.
        "--log-driver".into(),
        "json-file".into(),
        "--log-opt".into(),
        "max-size=16m".into(),
        "--log-opt".into(),
        "max-file=2".into(),
    ]);
    args.extend(podman_limits(eng, info));
    let vars = guest::vars(launch, spec.ip);
    for (k, v) in &launch.run.env {
        args.extend(["--env".into(), format!("{k}={}", v.render(&vars))]);
    }
    let set = launch.settings;
    if let Some(c) = set.cpus {
        args.extend(["--cpus".into(), c.to_string()]);
    }
    if let Some(m) = set.memory_mib {
        args.extend(["--memory".into(), format!("{m}m")]);
    }
    // k3s runs containerd, cgroups and iptables of its own (as k3d and
    // kind nodes do); a localkube that needs no root gets no privilege.
    if launch.run.needs_root {
        args.extend(privilege_args(&capability_bounding_set()));
        args.extend(["--tmpfs".into(), "/run".into(), "--tmpfs".into(), "/var/run".into()]);
    }
    args.push(image.to_string());
    args.push(guest::path(&format!("component/{}", launch.run.program)));
    args.extend(spec.command.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vfs_storage_driver_is_flagged() {
        assert!(storage_check("overlay2").ok);
        let vfs = storage_check("vfs");
        assert!(!vfs.ok && !vfs.blocking && vfs.advice.as_deref().is_some_and(|a| a.contains("overlay")), "{vfs:?}");
    }

    #[test]
    fn privileged_unless_the_machine_lacks_a_capability() {
        assert_eq!(privilege_args(&(0x1ff_ffff_ffff, 40)), ["--privileged"]);
        // A machine without CAP_SYS_RESOURCE (24): every other capability.
        let args = privilege_args(&(0x1ff_feff_ffff, 40));
        assert!(!args.contains(&"--privileged".to_string()));
        let caps: Vec<&str> = args.chunks(2).filter(|p| p[0] == "--cap-add").map(|p| p[1].as_str()).collect();
        assert_eq!(caps.len(), 37, "{caps:?}");
        assert!(caps.contains(&"SYS_ADMIN") && caps.contains(&"NET_ADMIN") && !caps.contains(&"SYS_RESOURCE"));
        assert!(args.contains(&"seccomp=unconfined".to_string()));
    }
}
