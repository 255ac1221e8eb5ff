//! One node's container: its name, how it is made (`docker create`'s
//! arguments), what the engine says of it, and how it is stopped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kubestrap_fskit as fskit;
use serde::{Deserialize, Serialize};

use super::engine::{Engine, Info, ensure_image, failed};
use super::privilege::{capability_bounding_set, podman_limits, privilege_args};
use super::{CALL, Docker, LABEL};
use crate::driver::{DockerErrorKind, DriverError, Host, HostState, Launch, Result, Stop, StopOutcome, guest};
use crate::profile::Profile;
use crate::state::{read as read_state, write as write_state};

pub(super) fn stage(p: &Profile) -> PathBuf {
    p.dir.join("container/stage")
}
pub(super) fn created_path(p: &Profile) -> PathBuf {
    p.dir.join("container/created.toml")
}
pub(super) fn stopped_path(p: &Profile) -> PathBuf {
    p.dir.join("container/stopped")
}

/// One field of a `--mount` value, quoted as the CSV the CLI parses it
/// with, so a path with a comma or a quote stays one path.
pub(super) fn mount_field(key: &str, value: &str) -> String {
    let field = format!("{key}={value}");
    if field.contains([',', '"', '\n', '\r']) { format!("\"{}\"", field.replace('"', "\"\"")) } else { field }
}

/// A `--mount` value for a bind mount of a host path.
pub(super) fn bind_mount(host: &Path, target: &str, readonly: bool) -> String {
    let ro = if readonly { ",readonly" } else { "" };
    format!("type=bind,{},target={target}{ro}", mount_field("source", &host.display().to_string()))
}

/// A short id of this kubestrap home (two homes may share an engine).
pub(super) fn home_id(p: &Profile) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(p.home_root().as_os_str().as_encoded_bytes())[..4])
}

pub(super) fn container_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}", p.name, home_id(p))
}

pub(super) fn volume_name(p: &Profile) -> String {
    format!("kubestrap-{}-{}-data", p.name, home_id(p))
}

/// What a container was created with: a start reuses it only when a new
/// one would be the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct Created {
    pub(super) name: String,
    pub(super) args: Vec<String>,
}

/// The container's state as the engine reports it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct State {
    pub(super) status: String,
    pub(super) running: bool,
    pub(super) exit_code: i64,
    #[serde(default)]
    pub(super) finished_at: String,
    #[serde(default)]
    pub(super) error: String,
}

/// Whether an engine call failed only because the container is not there.
pub(super) fn no_such_container(e: &DriverError) -> bool {
    e.is_docker(DockerErrorKind::NoSuchContainer)
}

/// What the engine says of a profile's container.
pub(super) struct Inspected {
    pub(super) state: State,
    /// The short container id.
    pub(super) id: String,
    /// The host port the apiserver is published on (0 if none).
    pub(super) port: u16,
}

pub(super) fn inspect(eng: &Engine, name: &str) -> Result<Option<Inspected>> {
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
pub(super) fn stop_container(eng: &Engine, name: &str, stopped: &Path, how: Stop) -> Result<StopOutcome> {
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
pub(super) fn container_state(eng: &Engine, name: &str, stopped: &Path) -> Result<HostState> {
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

impl Docker<'_> {
    /// Makes the container `name` with `args` unless the one there was made
    /// with the same (`created` records what it was made with).
    pub(super) fn ensure_container(
        &self,
        eng: &Engine,
        created: &Path,
        name: &str,
        args: &[String],
        blob: &Path,
    ) -> Result<()> {
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
    pub(super) fn image_of(&self, eng: &Engine, p: &Profile) -> Result<String> {
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
pub(super) fn tail_of(eng: &Engine, name: &str, n: usize) -> Vec<String> {
    match eng.run(&["logs", "--tail", &n.to_string(), name], None::<fn(_)>, None, CALL) {
        Ok(ran) => {
            let lines: Vec<String> = ran.stdout.lines().chain(ran.stderr.lines()).map(String::from).collect();
            lines[lines.len().saturating_sub(n)..].to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// The image id a container was made from.
pub(super) fn image_of_container(eng: &Engine, name: &str) -> Result<String> {
    let out = eng.docker(&["container", "inspect", "--format", "{{.Image}}", name], CALL)?;
    let id = out.trim();
    if id.starts_with("sha256:") { Ok(id.to_string()) } else { Err(failed(format!("{name}: no image id ({id:?})"))) }
}

/// One node's container, beyond what every node's has.
pub(super) struct Spec<'s> {
    pub(super) name: &'s str,
    pub(super) hostname: &'s str,
    pub(super) ip: Ipv4Addr,
    pub(super) volume: &'s str,
    /// An agent's node name (label `dev.kubestrap.node`); the server has none.
    pub(super) role: Option<&'s str>,
    /// Where the apiserver's port is published on this machine (the server only).
    pub(super) publish: Option<Vec<String>>,
    /// Bind mounts besides the component.
    pub(super) mounts: Vec<String>,
    /// localkube's arguments.
    pub(super) command: Vec<String>,
    /// `NAME=value` the caller's environment gives every node (the proxies).
    pub(super) env: Vec<String>,
}

/// `docker create` for one node of `launch`'s release. Long on purpose: the
/// arguments in the order `docker create` takes them.
pub(super) fn container_args(
    launch: &Launch,
    eng: &Engine,
    info: &Info,
    image: &str,
    network: &str,
    spec: &Spec,
) -> Vec<String> {
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
        format!("type=volume,source={},target={}", spec.volume, guest::DATA),
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
    // The proxies first: what the manifest names wins.
    for e in &spec.env {
        args.extend(["--env".into(), e.clone()]);
    }
    let vars = guest::vars(launch, spec.ip, super::NODE_IFACE);
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
        // On a userns-remap engine a privileged container is refused
        // ("privileged mode is incompatible with user namespaces"): the
        // host's user namespace for it (as k3d asks, pkg/runtimes/docker/translate.go).
        if info.userns_remap && !info.podman {
            args.extend(["--userns".into(), "host".into()]);
        }
        args.extend(privilege_args(&capability_bounding_set()));
        args.extend(["--tmpfs".into(), "/run".into(), "--tmpfs".into(), "/var/run".into()]);
    }
    args.push(image.to_string());
    args.push(guest::path(&format!("component/{}", launch.run.program)));
    args.extend(spec.command.iter().cloned());
    args
}
