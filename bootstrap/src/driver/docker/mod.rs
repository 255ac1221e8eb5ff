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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest, Vars};
use serde::{Deserialize, Serialize};

use super::{
    Check, Context, Delivery, Description, DockerError, DockerErrorKind, Driver, DriverError, Gate, Host, HostState,
    Launch, Node, Result, Stop, StopOutcome, guest,
};
use crate::profile::Profile;
use crate::progress::Step;
use crate::state::{read as read_state, write as write_state};

mod address;
mod agents;
mod checks;
mod container;
mod engine;
mod hostview;
mod network;
mod privilege;
mod volume;

pub use address::Env as DockerEnv;

/// `docker save` of image `name` from the engine the environment names
/// into `dest`, refused unless the image is for this machine's platform
/// (an archive of another platform's layers would never run here).
pub fn save_image(env: &DockerEnv, name: &str, dest: &Path) -> Result<()> {
    let eng = Engine::from_env(env);
    let platform = match eng.docker(&["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", name], CALL) {
        Ok(p) => p.trim().to_string(),
        Err(e) if e.is_docker(DockerErrorKind::NoSuchImage) => {
            return Err(DockerError::new(
                DockerErrorKind::NoSuchImage,
                format!("{name:?} is no file here, and the engine at {} has no such image", eng.describe()),
            )
            .into());
        }
        Err(e) => return Err(e),
    };
    let here = format!("linux/{}", if std::env::consts::ARCH == "x86_64" { "amd64" } else { "arm64" });
    if platform != here {
        return Err(failed(format!(
            "image {name} is for {platform}, not this machine's {here}: pull it for {here} (`docker pull --platform \
             {here} {name}`) and load it again"
        )));
    }
    let out = dest.display().to_string();
    eng.docker(&["save", "-o", &out, name], IMPORT)?;
    Ok(())
}
use agents::{node_container, node_stopped, node_volume};
use checks::{engine_check, rootfs_check, rootless_check, storage_check};
use container::{
    Spec, bind_mount, container_args, container_name, container_state, created_path, home_id, inspect,
    no_such_container, stage, stop_container, stopped_path, tail_of, volume_name,
};
use engine::{Engine, Info, ensure_image, failed};
use network::{ensure_network, network_ipam, network_name, node_ip};
use privilege::podman_limits;

pub const DESCRIPTION: Description = Description {
    kind: Kind::Docker,
    needs: &[ComponentName::Rootfs],
    marks: Some("container"),
    here: |env| {
        let eng = Engine::from_env(&env.docker);
        match eng.info() {
            Ok(info) => Ok(format!("{} answers at {}", info.name(), eng.describe())),
            Err(e) => {
                tracing::debug!("docker driver not chosen: {e}");
                Err(format!("no usable container engine answers at {}", eng.describe()))
            }
        }
    },
    make: |ctx| {
        let engine = Engine::from_env(&ctx.env.docker).cached_in(&ctx.home.join("state"));
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
/// A node container's one interface, on the profile's network: where its
/// node address is (`{node-iface}`).
const NODE_IFACE: &str = "eth0";

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
            // A node container shares this machine's kernel and cannot load a
            // module from inside: what k3s would modprobe must be there.
            if manifest.is_some_and(|m| m.component.localkube.run.needs_root) {
                out.extend(
                    crate::driver::kernel::Modules::probe()
                        .checks("a node container shares this machine's kernel and cannot load modules itself"),
                );
            }
        }
        out.extend(manifest.map(rootfs_check));
        out
    }

    /// The engine (the profile's own, for one that exists), that it can run
    /// the release, and the rootfs; the storage driver is for `doctor`.
    fn prerequisites(&self, p: &Profile, manifest: &Manifest) -> Vec<Check> {
        let eng = match self.engine_for(p) {
            Ok(e) => e,
            Err(e) => {
                return vec![Check::new(
                    "engine",
                    false,
                    &e.to_string(),
                    &e.hint().unwrap_or_default(),
                    Gate::Blocking,
                )];
            }
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

    /// A rootful engine's containers are on a bridge of this machine: their
    /// addresses are reached directly. A rootless engine's are inside its
    /// own network namespace.
    fn node_reach(
        &self,
        p: &Profile,
        _cfg: &crate::profile::Config,
    ) -> std::result::Result<std::net::Ipv4Addr, String> {
        let eng = self.engine_for(p).map_err(|e| e.to_string())?;
        let info = eng.info().map_err(|e| e.to_string())?;
        if info.rootless {
            return Err(format!(
                "the engine is {}: its containers' addresses are inside its own network namespace",
                info.name()
            ));
        }
        Some(node_ip(p)).filter(|a| !a.is_unspecified()).ok_or_else(|| "the node has no address yet".into())
    }

    fn vars(&self, launch: &Launch) -> Vars {
        guest::vars(launch, node_ip(&launch.profile), NODE_IFACE)
    }

    fn host_vars(&self, launch: &Launch) -> Vars {
        guest::host_vars(launch, node_ip(&launch.profile), NODE_IFACE, &self.host_data(&launch.profile))
    }

    fn host_data(&self, p: &Profile) -> PathBuf {
        stage(p).join("data")
    }

    /// The directories, and the profile's network: its node address is
    /// fixed before the certificates are made (they name it).
    fn runs_agents(&self) -> bool {
        true
    }

    /// The server's directories and the profile's network (its node
    /// address is fixed before the certificates are made: they name it);
    /// an agent's volume and container.
    fn create(&self, launch: &Launch, node: Node) -> Result<()> {
        let p = &launch.profile;
        if let Node::Agent(a) = node {
            return self.create_agent(launch, &a);
        }
        for dir in [p.run(), p.logs(), self.host_data(p)] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        ensure_network(&self.engine_for(p)?, p)?;
        Ok(())
    }

    fn start(&self, launch: &Launch, node: Node) -> Result<Host> {
        let p = &launch.profile;
        if let Node::Agent(a) = node {
            return self.start_agent(launch, &a);
        }
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
                // The API, and each `--publish HOST:NODE`.
                let ports =
                    [(launch.port, guest::PORT)].into_iter().chain(launch.publish.iter().map(|p| (p.host, p.node)));
                let mut at = Vec::new();
                for (host, node) in ports {
                    at.push(format!("127.0.0.1:{host}:{node}"));
                    at.extend(launch.listen.map(|a| format!("{a}:{host}:{node}")));
                }
                at
            }),
            mounts: [
                bind_mount(&p.pki(), &guest::path("pki"), true),
                bind_mount(&self.host_data(p), &guest::path("data"), true),
            ]
            .into_iter()
            .chain(hostview::mounts(launch)?)
            .collect(),
            command: launch.run.args.iter().map(|a| a.render(&vars)).collect(),
            env: self.proxies(),
        };
        let args = container_args(launch, &eng, &info, &image, &net.name, &spec);
        self.ensure_container(&eng, &created_path(p), &name, &args, blob)?;
        fskit::remove_any(&stopped_path(p))?;
        eng.docker(&["start", &name], CALL)?;
        let id = inspect(&eng, &name)?.map(|i| i.id).unwrap_or_default();
        Ok(Host { id: format!("container {name} ({id})"), pid: None, port: launch.port })
    }

    fn running(&self, p: &Profile, node: Node) -> Result<bool> {
        let eng = self.engine_for(p)?;
        Ok(inspect(&eng, &node_container(p, node))?.is_some_and(|i| i.state.running))
    }

    fn stop(&self, p: &Profile, node: Node, how: Stop) -> Result<StopOutcome> {
        let eng = self.engine_for(p)?;
        if let Some(dir) = node_stopped(p, node).parent() {
            fskit::create_dir_mode(dir, 0o700)?;
        }
        stop_container(&eng, &node_container(p, node), &node_stopped(p, node), how)
    }

    fn adopt(&self, p: &Profile) -> Result<()> {
        Ok(fskit::remove_any(&stopped_path(p))?)
    }

    fn status(&self, p: &Profile, node: Node) -> Result<HostState> {
        let eng = self.engine_for(p)?;
        container_state(&eng, &node_container(p, node), &node_stopped(p, node))
    }

    fn delete(&self, p: &Profile, node: Node) -> Result<()> {
        if let Node::Agent(a) = node {
            return self.delete_agent(p, &a);
        }
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

    /// Copied into the running node's container (a part file on its data
    /// volume, renamed into place), the server's or an agent's alike: an
    /// agent has no stage of its own, and keeps what it was given.
    fn deliver(&self, p: &Profile, node: Node, rel: &Path) -> Result<Delivery> {
        let eng = self.engine_for(p)?;
        let name = node_container(p, node);
        if !inspect(&eng, &name)?.is_some_and(|i| i.state.running) {
            return Ok(Delivery::NextStart);
        }
        let dest = Path::new(guest::DATA).join(rel);
        let (Some(dir), Some(file)) = (dest.parent(), dest.file_name()) else {
            return Err(failed(format!("{}: not a file under the data directory", rel.display())));
        };
        let part = dir.join(format!(".{}.part", file.to_string_lossy()));
        let (dir, part, dest) = (dir.display().to_string(), part.display().to_string(), dest.display().to_string());
        let src = self.host_data(p).join(rel).display().to_string();
        eng.docker(&["exec", &name, "mkdir", "-p", &dir], CALL)?;
        eng.docker(&["cp", &src, &format!("{name}:{part}")], IMPORT)?;
        eng.docker(&["exec", &name, "mv", "-f", &part, &dest], CALL)?;
        Ok(Delivery::Live)
    }

    fn log_tail(&self, p: &Profile, node: Node, n: usize) -> Vec<String> {
        let Ok(eng) = self.engine_for(p) else { return Vec::new() };
        tail_of(&eng, &node_container(p, node), n)
    }

    fn follow_log(&self, p: &Profile, node: Node, out: &mut dyn Write) -> Result<()> {
        let eng = self.engine_for(p)?;
        // The container's stdout and stderr, as one stream, into `out`.
        let spawn_err = |source| DriverError::Spawn { what: "run `docker logs`", source };
        let (mut reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let mut child = eng
            .command()
            .args(["logs", "--follow", "--tail", "0", &node_container(p, node)])
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
    fn snapshot(&self, p: &Profile, node: Node, dest: &Path) -> Result<fskit::Copied> {
        self.with_throwaways(p, |eng, b| volume::snapshot(eng, b, &node_volume(eng, p, node)?, dest))
    }

    /// The snapshot copied in beside the volume's data, then put in place
    /// of it (a cut-short restore leaves the data as it was until the swap).
    fn restore(&self, p: &Profile, node: Node, src: &Path) -> Result<()> {
        self.with_throwaways(p, |eng, b| volume::restore(eng, b, &node_volume(eng, p, node)?, src))
    }
}

impl Docker<'_> {
    /// `NAME=value` for each proxy variable the command's environment sets.
    fn proxies(&self) -> Vec<String> {
        self.ctx.env.proxies().into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

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
}
