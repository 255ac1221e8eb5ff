//! Bringing a cluster up: the steps "fetch → unpack → configure → PKI →
//! launch → ready → kubeconfig" for a stopped profile and a verified
//! manifest, shared by `start` and by `upgrade` (the new release, or the old
//! one when it rolls back). A localkube it launches is stopped again by a
//! guard if a later step fails, whatever the way out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::{Manifest, PkiFile};

use super::apiserver::{Probe, WaitError};
use super::components::{fetch_and_unpack, place_images};
use super::nodes::{self, Made, NotUp, Rollout};
use super::pki::{self, Pki};
use super::session::Session;
use super::{ClusterError, kubeconfig, ports};
use crate::artifacts;
use crate::channel::Loaded;
use crate::driver::{self, Driver, Host, HostState, Launch, Node, Stop};
use crate::profile::{Config, Endpoint, Profile, VmSettings};
use crate::progress::{Progress, Step};

/// How a cluster is brought up, beyond which release.
pub struct Tuning {
    pub wait_timeout: Duration,
    pub keep_context: bool,
    pub cert_validity: time::Duration,
    /// A VM's size and accelerator, when asked (kept in the profile).
    pub vm: Option<VmSettings>,
    /// `--nodes`: how many nodes the cluster has (None: as it had, or one).
    pub nodes: Option<usize>,
    /// How the agents come up: all at once, or each Ready before the next.
    pub rollout: Rollout,
    /// `--listen`: also serve the API at this address (None: as it was).
    pub listen: Option<std::net::Ipv4Addr>,
    /// `--publish` (None: as it was; empty: none).
    pub publish: Option<Vec<crate::profile::Publish>>,
    /// Whether ready waits for the release's system workloads too.
    pub system: System,
}

/// Whether "ready" includes the release's system workloads (`run.ready-deployments`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Wait,
    /// `start --no-wait-system`.
    Skip,
}

#[derive(Debug)]
pub struct Started {
    pub profile: String,
    pub context: String,
    pub server: String,
    pub kubeconfig: PathBuf,
    /// The running localkube as its driver names it (and its pid, natively).
    pub host: Host,
    pub kubernetes: String,
    pub manifest: String,
    pub already_running: bool,
    pub created: bool,
}

/// What to bring up, beyond the session and its driver.
pub struct BringUp<'a> {
    /// The verified manifest, and where it is kept.
    pub loaded: &'a Loaded,
    pub fetch: &'a artifacts::Options,
    /// The profile's config as it was (`None`: a new profile).
    pub existing: Option<&'a Config>,
    /// `--port`, when asked.
    pub port: Option<u16>,
    pub tuning: &'a Tuning,
}

/// A launched localkube that is stopped again when dropped, unless the
/// bring-up it belongs to finished: no early return leaves one running.
struct Launched<'d> {
    drv: &'d dyn Driver,
    profile: &'d Profile,
    stop: Stop,
    armed: bool,
}

impl Launched<'_> {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Launched<'_> {
    fn drop(&mut self) {
        if self.armed && self.drv.running(self.profile, Node::Server).unwrap_or(false) {
            let _ = self.drv.stop(self.profile, Node::Server, self.stop);
        }
    }
}

/// Steps "fetch → unpack → configure → PKI → launch → ready → kubeconfig"
/// for a stopped profile and a verified manifest.
pub fn bring_up(s: &Session, plan: &BringUp) -> Result<Started> {
    let (p, drv) = (&s.profile, s.driver());
    let m = &plan.loaded.manifest;
    let run = &m.component.localkube.run;
    let agents = wanted_agents(p, plan.existing, plan.tuning.nodes)?;
    nodes::check_supported(drv, p, m, agents.len() + 1)?;
    // k3s on the host binds its kubelet and the rest to the node address:
    // on a network others reach, that is more than the API.
    let listen = plan.tuning.listen.or(plan.existing.and_then(|c| c.listen));
    if let Some(at) = listen.filter(|_| drv.kind() == kubestrap_manifest::Driver::Native && run.needs_root) {
        return Err(driver::DriverError::Unfit {
            driver: drv.kind(),
            failures: format!(
                "--listen {at}: {} on the native driver would put its kubelet and node ports on that network, not \
                 only the API; use --driver docker or --driver qemu, which forward the API alone",
                run.program
            ),
        }
        .into());
    }
    let publish = plan.tuning.publish.as_deref().or(plan.existing.map(|c| c.publish.as_slice())).unwrap_or_default();
    if let Some(first) = publish.first().filter(|_| drv.kind() == kubestrap_manifest::Driver::Native) {
        return Err(ClusterError::PublishNative { port: first.node }.into());
    }
    preflight(drv, p, m)?;
    let mut components = fetch_and_unpack(s.home, m, drv.kind(), plan.fetch, s.progress)?;
    crate::killpoint::reached("configure");
    let (cfg, created) = configure(s, drv, plan, &agents)?;
    let at = cfg.endpoint();
    let images = std::mem::take(&mut components.images);
    let launch = launch_of(p, m, components, &cfg);
    let pki = certificates(drv, &launch, plan.tuning.cert_validity, s.progress)?;
    place_images(&drv.host_data(p), p, m, images, s.progress)?;
    let check = ReadyCheck { pki: &pki, at, run, timeout: plan.tuning.wait_timeout, system: plan.tuning.system };
    // The agents' hosts are made while the server's starts and comes up;
    // they start once it is ready.
    let making = drv.runs_agents() && !agents.is_empty();
    let (up, made) = std::thread::scope(|sc| {
        let (launch, agents) = (&launch, &agents);
        let creating = making.then(|| sc.spawn(move || nodes::create(drv, launch, agents)));
        let up = (|| -> Result<(Host, Launched)> {
            let t = Instant::now();
            crate::killpoint::reached("launch");
            let host = drv.start(launch, Node::Server)?;
            let launched = Launched { drv, profile: p, stop: Stop::of(run), armed: true };
            s.progress.step(Step::LocalkubeStarted { host: host.id.clone(), driver: drv.kind().as_str() }, t.elapsed());
            crate::killpoint::reached("ready");
            wait_ready(drv, p, &check, true, s.progress)?;
            Ok((host, launched))
        })();
        let made = creating.map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("making the nodes panicked"))));
        (up, made)
    });
    let (host, launched) = up?;
    made.transpose()?;
    crate::killpoint::reached("kubeconfig");
    let version = write_kubeconfig(s, &pki, at, plan.tuning.keep_context)?;
    let probe = Probe::new(&pki, at, Duration::from_secs(5))?;
    nodes::start_agents(drv, &launch, &agents, &probe, (plan.tuning.rollout, Made::Already), s.progress)?;
    launched.keep();
    Ok(Started { kubernetes: version, manifest: m.id(), already_running: false, created, ..result(s, at, host)? })
}

/// What the driver is handed to run release `m` for profile `p`.
pub(super) fn launch_of(p: &Profile, m: &Manifest, components: super::components::Components, cfg: &Config) -> Launch {
    Launch {
        profile: p.clone(),
        release: m.id(),
        run: m.component.localkube.run.clone(),
        program_sha256: components.program_sha256,
        component: components.localkube,
        port: cfg.port,
        trees: components.trees,
        settings: cfg.vm.unwrap_or_default(),
        listen: cfg.listen,
        publish: cfg.publish.clone(),
        join: None,
    }
}

/// The running cluster's launch, for nodes added to it: its release's
/// components from the cache only (offline), verified as a start does.
pub fn running_launch(s: &Session, loaded: &Loaded, cfg: &Config) -> Result<Launch> {
    let drv = s.driver();
    let fetch = artifacts::Options { offline: true, ..Default::default() };
    let components = fetch_and_unpack(s.home, &loaded.manifest, drv.kind(), &fetch, s.progress)?;
    Ok(launch_of(&s.profile, &loaded.manifest, components, cfg))
}

/// The agents the cluster is to have: those it has, and as many new ones
/// as `--nodes` asks beyond them (fewer is refused: nodes are removed one
/// by one, drained, with `node delete`).
pub(super) fn wanted_agents(
    p: &Profile,
    existing: Option<&Config>,
    asked: Option<usize>,
) -> Result<Vec<crate::driver::AgentNode>> {
    let have = existing.map(|c| nodes::agents_of(p, c)).unwrap_or_default();
    match asked {
        Some(0) => Err(anyhow::anyhow!("--nodes 0: a cluster has at least one node (its server)")),
        Some(n) if n < have.len() + 1 => {
            Err(ClusterError::FewerNodes { profile: p.name.clone(), has: have.len() + 1, asked: n }.into())
        }
        Some(n) => {
            let mut all = have.clone();
            all.extend(nodes::new_agents(&have, n - 1 - have.len())?);
            Ok(all)
        }
        None => Ok(have),
    }
}

/// The driver's blocking checks for this release (k3s on the host needs
/// root, say), before anything is fetched: `kubestrap doctor` shows them all.
pub(super) fn preflight(drv: &dyn Driver, p: &Profile, m: &Manifest) -> Result<()> {
    let failures: Vec<String> = drv
        .prerequisites(p, m)
        .into_iter()
        .filter(|c| c.blocking && !c.ok)
        .map(|c| format!("{} ({}); {}", c.name, c.detail, c.advice.unwrap_or_default()))
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    Err(driver::DriverError::Unfit { driver: drv.kind(), failures: failures.join("; ") }.into())
}

/// Step "configure": port, driver, manifest pointer. Ports are chosen under
/// a home-wide lock and recorded before it is released, so two profiles
/// starting at once never pick the same one. Returns where the apiserver will answer and whether
/// the profile is new.
fn configure(
    s: &Session,
    drv: &dyn Driver,
    plan: &BringUp,
    agents: &[crate::driver::AgentNode],
) -> Result<(Config, bool)> {
    let (home, p, existing, loaded, progress) = (s.home, &s.profile, plan.existing, plan.loaded, s.progress);
    let (asked, vm) = (plan.port, plan.tuning.vm.as_ref());
    let listen = plan.tuning.listen.or(existing.and_then(|c| c.listen));
    // A host process binds the address itself: local clients reach it there.
    let native_listen = listen.filter(|_| drv.kind() == kubestrap_manifest::Driver::Native);
    let t = Instant::now();
    let ports_lock = home.lock("ports", true, || {})?;
    let port = ports::choose(home, p, asked, existing)?;
    let publish =
        plan.tuning.publish.clone().unwrap_or_else(|| existing.map(|c| c.publish.clone()).unwrap_or_default());
    ports::check_published(&publish, port)?;
    let created = existing.is_none();
    let cfg = Config {
        name: p.name.clone(),
        driver: drv.kind(),
        manifest: loaded.path.clone(),
        port,
        port_pinned: asked.is_some() || existing.is_some_and(|c| c.port_pinned),
        created: existing.map_or_else(crate::state::now, |c| c.created.clone()),
        previous: existing.and_then(|c| c.previous.clone()),
        // Each setting asked for replaces that one; the others are kept.
        vm: merge_settings(vm, existing),
        address: native_listen
            .or(Some(drv.address(p, &loaded.manifest.component.localkube.run)))
            .filter(|a| !a.is_loopback()),
        agents: agents.iter().map(|a| a.short()).collect(),
        listen,
        publish,
        join: None,
    };
    if existing != Some(&cfg) {
        p.save(&cfg)?;
    }
    drop(ports_lock);
    progress.step(Step::Configured { profile: p.name.clone(), port, created }, t.elapsed());
    Ok((cfg, created))
}

/// The settings a start asked for, over those the profile keeps: each one
/// asked replaces only itself.
pub fn merge_settings(asked: Option<&VmSettings>, existing: Option<&Config>) -> Option<VmSettings> {
    match (asked, existing.and_then(|c| c.vm.as_ref())) {
        (Some(asked), Some(kept)) => Some(VmSettings {
            cpus: asked.cpus.or(kept.cpus),
            memory_mib: asked.memory_mib.or(kept.memory_mib),
            accel: asked.accel.or(kept.accel),
        }),
        (asked, kept) => asked.or(kept).copied(),
    }
}

/// Step "PKI": made once, reused after, placed where localkube expects it.
fn certificates(drv: &dyn Driver, launch: &Launch, validity: time::Duration, progress: &dyn Progress) -> Result<Pki> {
    let t = Instant::now();
    let p = &launch.profile;
    drv.create(launch, Node::Server)?;
    let pki = Pki::new(p.pki());
    let made = pki
        .ensure(&pki::Options {
            profile: p.name.clone(),
            validity,
            extra_sans: drv.extra_sans(p).into_iter().chain(launch.listen.map(|a| a.to_string())).collect(),
        })
        .map_err(|e| ClusterError::Pki { dir: p.pki(), profile: p.name.clone(), reason: format!("{e:#}") })?;
    let vars = drv.host_vars(launch);
    // Every file is checked before one is written: all or nothing.
    let placed: Vec<(std::path::PathBuf, PkiFile)> =
        launch.run.pki_files.iter().map(|(dest, f)| (std::path::PathBuf::from(dest.render(&vars)), *f)).collect();
    let differ: Vec<String> =
        placed.iter().filter_map(|(dest, f)| pki.check_placed(dest, *f).err()).map(|e| e.to_string()).collect();
    if !differ.is_empty() {
        return Err(ClusterError::PlacedPkiDiffers { profile: p.name.clone(), placed: differ.join("; ") }.into());
    }
    for (dest, file) in &placed {
        pki.place(dest, *file).map_err(|e| ClusterError::Pki {
            dir: p.pki(),
            profile: p.name.clone(),
            reason: e.to_string(),
        })?;
    }
    driver::place_files(&launch.run, &drv.host_data(p))?;
    progress.step(Step::Certificates { created: made }, t.elapsed());
    Ok(pki)
}

pub(super) fn result(s: &Session, at: Endpoint, host: Host) -> Result<Started> {
    let p = &s.profile;
    Ok(Started {
        profile: p.name.clone(),
        context: kubeconfig::context_name(&p.name),
        server: at.url(),
        kubeconfig: kubeconfig::path(s.home.env())?,
        host,
        kubernetes: String::new(),
        manifest: String::new(),
        already_running: false,
        created: false,
    })
}

/// What "ready" means for one cluster: where and how to ask, for how long.
pub struct ReadyCheck<'a> {
    pub pki: &'a Pki,
    pub at: Endpoint,
    pub run: &'a kubestrap_manifest::Run,
    pub timeout: Duration,
    pub system: System,
}

/// Polls each `NAMESPACE/NAME` Deployment until it is Available.
fn wait_deployments(
    probe: &Probe,
    names: &[String],
    deadline: Instant,
    mut alive: impl FnMut() -> bool,
) -> std::result::Result<(), WaitError> {
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).until(deadline);
    let mut pending: Vec<&String> = names.iter().collect();
    loop {
        let mut last = String::new();
        pending.retain(|d| {
            let (ns, name) = d.split_once('/').unwrap_or_default();
            match probe.get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}")) {
                Ok((200, body)) => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let available = v["status"]["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == "Available"))
                        .is_some_and(|c| c["status"] == "True");
                    if !available {
                        last = format!("deployment {d}: not Available ({})", v["status"]["conditions"]);
                    }
                    !available
                }
                Ok((404, _)) => {
                    last = format!("deployment {d}: not deployed yet");
                    true
                }
                Ok((code, body)) => {
                    last =
                        format!("deployment {d}: HTTP {code}: {}", body.trim().chars().take(200).collect::<String>());
                    true
                }
                Err(e) => {
                    last = format!("deployment {d}: {e}");
                    true
                }
            }
        });
        if pending.is_empty() {
            return Ok(());
        }
        if !alive() {
            return Err(WaitError::Exited);
        }
        if !backoff.wait() {
            return Err(WaitError::Timeout { last });
        }
    }
}

/// Step "ready": polls the apiserver until ready. Not ready in time:
/// localkube is stopped if this command `launched` it (one that was running
/// already is left alone); exited: how it ended. Either way with the last
/// log lines.
pub fn wait_ready(
    drv: &dyn Driver,
    p: &Profile,
    check: &ReadyCheck,
    launched: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let ReadyCheck { pki, at, run, timeout, system } = *check;
    let t = Instant::now();
    let port = at.port;
    let probe = Probe::new(pki, at, Duration::from_secs(2))?;
    let deadline = Instant::now() + timeout;
    let alive = || drv.running(p, Node::Server).unwrap_or(false);
    let mut waited = probe.wait_ready(&run.ready, deadline, alive);
    let mut waiting_for = "the apiserver".to_string();
    if waited.is_ok() {
        progress.step(Step::ApiserverReady { server: probe.server().to_string() }, t.elapsed());
        if run.node_ready {
            waiting_for = format!("the apiserver answers, but node {}", Node::Server.name(&p.name));
            let ask = |name: &str| nodes::node_ready(&probe, name);
            waited = nodes::wait_ready(drv, p, &nodes::named(p, &[Node::Server]), &ask, deadline, progress)
                .map(drop)
                .map_err(|e| match e {
                    NotUp::Ended { .. } => WaitError::Exited,
                    NotUp::Timeout { last, .. } => WaitError::Timeout { last },
                });
        }
        if waited.is_ok() && system == System::Wait && !run.ready_deployments.is_empty() {
            let t = Instant::now();
            waiting_for = format!(
                "the cluster's system workloads ({}: their pods need their images, from the release's air-gap \
                 archive or a registry this machine reaches, and the pod network)",
                run.ready_deployments.join(", ")
            );
            let alive = || drv.running(p, Node::Server).unwrap_or(false);
            waited = wait_deployments(&probe, &run.ready_deployments, deadline, alive);
            if waited.is_ok() {
                progress.step(Step::SystemReady { deployments: run.ready_deployments.clone() }, t.elapsed());
            }
        }
    }
    let Err(e) = waited else { return Ok(()) };
    let tail = drv.log_tail(p, Node::Server, 20);
    let log = p.log_file().display().to_string();
    let tail_text = nodes::tail_text(&tail);
    Err(match e {
        WaitError::Exited => {
            let how = match drv.status(p, Node::Server)? {
                HostState::Crashed { how, .. } => how,
                _ => "exited".into(),
            };
            let advice = if tail.iter().any(|l| l.to_lowercase().contains("address already in use")) {
                format!(
                    "Its port {port} was taken by another program after kubestrap chose it: start again, or pick one with --port"
                )
            } else {
                format!("The log above says why; see also `kubestrap logs -p {}`", p.name)
            };
            ClusterError::LocalkubeExited {
                what: format!("localkube {how} before the apiserver became ready"),
                log,
                tail: tail_text,
                advice,
            }
        }
        WaitError::Timeout { last } => {
            let stopped = if !launched {
                "it was running before this start, so it was left running".to_string()
            } else {
                match drv.stop(p, Node::Server, Stop::of(run)) {
                    Ok(_) => "localkube was stopped".to_string(),
                    Err(stop) => format!("stopping localkube failed too: {stop}"),
                }
            };
            ClusterError::NotReady {
                what: format!(
                    "{waiting_for} was not ready after {}s (last answer: {last}); {stopped}",
                    timeout.as_secs()
                ),
                log,
                tail: tail_text,
                advice: format!("Retry with a longer --wait-timeout, or see `kubestrap logs -p {}`", p.name),
            }
        }
    }
    .into())
}

/// Step "kubeconfig": writes the context; returns the apiserver's version.
pub fn write_kubeconfig(s: &Session, pki: &Pki, at: Endpoint, keep_context: bool) -> Result<String> {
    let (p, progress) = (&s.profile, s.progress);
    let t = Instant::now();
    let path = kubeconfig::path(s.home.env())?;
    let entry = kubeconfig::Entry {
        name: kubeconfig::context_name(&p.name),
        server: at.url(),
        ca_pem: pki.read(PkiFile::CaCert)?,
        client_cert_pem: pki.read(PkiFile::AdminCert)?,
        client_key_pem: pki.read(PkiFile::AdminKey)?,
    };
    kubeconfig::merge(&path, &entry, !keep_context, progress)?;
    progress.step(Step::Kubeconfig { context: entry.name.clone(), path, current: !keep_context }, t.elapsed());
    let probe = Probe::new(pki, at, Duration::from_secs(2))?;
    Ok(probe.version().unwrap_or_default())
}
