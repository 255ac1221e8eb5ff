//! `start`: idempotent; creates the profile if absent, resumes it if stopped,
//! recovers it if localkube crashed or was left stopping. Its named steps:
//! resolve → verify here, then fetch → unpack → configure → PKI → launch →
//! ready → kubeconfig (`bringup`, which `upgrade` shares).

use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::Driver as Kind;

use super::bringup::{
    BringUp, ReadyCheck, Started, Tuning, bring_up, merge_settings, result, wait_ready, write_kubeconfig,
};
use super::pki::Pki;
use super::recovery;
use super::release::{self, ReleaseRequest};
use super::session::{Session, Wait};
use super::{ClusterError, kubeconfig};
use crate::channel::{self, Loaded};
use crate::driver::{self, Host, HostState, Node, Stop};
use crate::home::Home;
use crate::profile::{Config, Endpoint, VmSettings};
use crate::progress::{Progress, Step};

/// What `start` is asked.
pub struct StartOptions {
    pub profile: String,
    pub driver: Option<Kind>,
    pub release: ReleaseRequest,
    pub port: Option<u16>,
    pub wait_timeout: Duration,
    pub keep_context: bool,
    /// Whether to wait for another command that holds the profile.
    pub wait: Wait,
    pub cert_validity: time::Duration,
    /// `--cpus`, `--memory`, `--accel` (qemu driver).
    pub vm: Option<VmSettings>,
    /// `--nodes`.
    pub nodes: Option<usize>,
    /// `--listen`.
    pub listen: Option<std::net::Ipv4Addr>,
    /// `--publish` (None: as it was; empty: `--no-publish`).
    pub publish: Option<Vec<crate::profile::Publish>>,
    /// `--no-wait-system`: ready without the release's system workloads.
    pub system: super::bringup::System,
}

/// `start`, as named steps: what a killed command left (a delete, an
/// upgrade) finished → a joined profile's agent again → the driver asked
/// for, checked against the profile's → resolve and verify the release →
/// the driver chosen → what runs of it kept (ready) or cleared → bring-up.
pub fn start(home: &Home, o: &StartOptions, progress: &dyn Progress) -> Result<Started> {
    let s = Session::open(home, &o.profile, o.wait, progress)?;
    let p = &s.profile;
    let again = finish_delete(&s)?;
    let tuning = Tuning {
        wait_timeout: o.wait_timeout,
        keep_context: o.keep_context,
        cert_validity: o.cert_validity,
        vm: merge_settings(o.vm.as_ref(), again.as_ref()),
        // A profile started afresh after a cut-short delete keeps its size.
        nodes: o.nodes.or_else(|| again.as_ref().filter(|c| !c.agents.is_empty()).map(|c| c.agents.len() + 1)),
        rollout: super::nodes::Rollout::Parallel,
        listen: o.listen,
        publish: o.publish.clone(),
        system: o.system,
    };
    // An upgrade a killed command left is finished or undone first.
    if p.exists() && p.load().is_ok() {
        recovery::finish_interrupted(&s, &o.release.fetch, &tuning)?;
    }
    let existing = if p.exists() { Some(p.load()?) } else { None };
    // A node of another machine's cluster: its agent again.
    if let Some(cfg) = existing.as_ref().filter(|c| c.join.is_some()) {
        return restart_joined(&s, cfg, o);
    }
    let kind = match (&existing, o.driver) {
        (Some(c), Some(d)) if c.driver != d => {
            return Err(ClusterError::DriverMismatch {
                profile: p.name.clone(),
                has: c.driver.to_string(),
                asked: d.to_string(),
            }
            .into());
        }
        (Some(c), _) => Some(c.driver),
        (None, d) => d.or(again.as_ref().map(|c| c.driver)),
    };
    // A kubeconfig we could not update later is refused before anything runs.
    kubeconfig::check(&kubeconfig::path(home.env())?)?;

    let again_manifest = again.as_ref().map(|c| c.manifest.as_path());
    let (loaded, fetch) = release::resolve(home, &o.release, p, existing.as_ref(), again_manifest, progress)?;
    // A new profile with no --driver: the best this machine and release allow.
    let kind = match kind {
        Some(k) => k,
        None => {
            let (k, why) = driver::default_for(&loaded.manifest, home.env());
            progress.step(Step::DriverChosen { driver: k.as_str(), why }, Duration::ZERO);
            k
        }
    };
    // The settings asked, over those kept: what the driver's checks see.
    let settings = merge_settings(tuning.vm.as_ref(), existing.as_ref()).unwrap_or_default();
    let s = s.with_driver(kind, settings);
    if let Some(started) = keep_or_clear(&s, &loaded, existing.as_ref(), o)? {
        return Ok(started);
    }
    let plan = BringUp { loaded: &loaded, fetch: &fetch, existing: existing.as_ref(), port: o.port, tuning: &tuning };
    bring_up(&s, &plan)
}

/// Step "a cut-short delete": finished first (its state may be half gone,
/// and deleting it is what was asked). Returns the deleted profile's config:
/// the fresh one runs the release and driver it ran, unless others are named.
fn finish_delete(s: &Session) -> Result<Option<Config>> {
    let p = &s.profile;
    if !p.deleting().exists() {
        return Ok(None);
    }
    let again = p.load().ok();
    s.progress.warn(format!(
        "a delete of profile {:?} was cut short; finishing it, then starting the profile afresh{}",
        p.name,
        again.as_ref().map_or(String::new(), |c| format!(" with the release it ran, on driver {}", c.driver)),
    ));
    super::stop::delete_locked(s, super::session::Force::No)?;
    Ok(again)
}

/// Step "a joined profile": its agent again, to the server it joined.
fn restart_joined(s: &Session, cfg: &Config, o: &StartOptions) -> Result<Started> {
    let j = super::join::restart(s, cfg, &o.release, o.wait_timeout)?;
    Ok(Started {
        profile: j.profile,
        context: String::new(),
        server: j.server,
        kubeconfig: kubeconfig::path(s.home.env())?,
        host: Host { id: j.host, pid: None, port: cfg.port },
        kubernetes: String::new(),
        manifest: channel::peek(&cfg.manifest).map(|m| m.id()).unwrap_or_default(),
        already_running: false,
        created: false,
    })
}

/// Step "what runs": the running server of an existing profile is kept
/// (waited for until ready: `Some`); one a cut-short stop left going down,
/// or one that crashed, is stopped the way the manifest says before it
/// starts again (`None`).
fn keep_or_clear(s: &Session, loaded: &Loaded, existing: Option<&Config>, o: &StartOptions) -> Result<Option<Started>> {
    let (p, progress, drv) = (&s.profile, s.progress, s.driver());
    let run = &loaded.manifest.component.localkube.run;
    match drv.status(p, Node::Server)? {
        HostState::Running(host) if existing.is_some() => return rejoin(s, &host, loaded, o),
        HostState::Stopping(_) => {
            // A stop (or delete) was cut short while localkube shut down:
            // finish it, then start afresh.
            let t = Instant::now();
            drv.stop(p, Node::Server, Stop::of(run))?;
            progress.step(Step::StopFinished { profile: p.name.clone() }, t.elapsed());
        }
        HostState::Crashed { how, .. } => {
            progress
                .warn(format!("localkube of profile {:?} had stopped unexpectedly ({how}); starting it again", p.name));
            // What is left of it (helpers; all of it when only the pid file was
            // lost) is stopped the way the manifest says.
            drv.stop(p, Node::Server, Stop::of(run))?;
        }
        HostState::Running(_) | HostState::Stopped | HostState::Suspended => {}
    }
    Ok(None)
}

/// A start found localkube running: wait until it is ready and make sure
/// kubeconfig points at it. `None` when it ended meanwhile (it was going
/// down): the caller starts it again.
fn rejoin(s: &Session, host: &Host, loaded: &Loaded, o: &StartOptions) -> Result<Option<Started>> {
    let (p, progress, drv) = (&s.profile, s.progress, s.driver());
    drv.adopt(p)?;
    if let Some(at) = o.listen.filter(|a| p.load().ok().and_then(|c| c.listen) != Some(*a)) {
        progress.warn(format!(
            "profile {:?} is already running; --listen {at} applies once it is stopped and started again",
            p.name
        ));
    }
    if let Some(asked) = o.publish.as_ref().filter(|asked| p.load().ok().map(|c| c.publish) != Some(asked.to_vec())) {
        let list: Vec<String> = asked.iter().map(|x| x.to_string()).collect();
        progress.warn(format!(
            "profile {:?} is already running; --publish {} applies once it is stopped and started again",
            p.name,
            if list.is_empty() { "(none)".to_string() } else { list.join(" ") }
        ));
    }
    if let Some(asked) = o.port.filter(|asked| *asked != host.port) {
        progress.warn(format!(
            "profile {:?} is already running on port {}; --port {asked} is ignored (stop it first to move it)",
            p.name, host.port
        ));
    }
    let pki = Pki::new(p.pki());
    let run = &loaded.manifest.component.localkube.run;
    let at = Endpoint { port: host.port, ..p.load()?.endpoint() };
    match wait_ready(
        drv,
        p,
        &ReadyCheck { pki: &pki, at, run, timeout: o.wait_timeout, system: o.system },
        false,
        progress,
    ) {
        Ok(()) => {}
        Err(e) if !drv.running(p, Node::Server).unwrap_or(true) => {
            progress.warn(format!(
                "localkube of profile {:?} ended while this start waited for it ({e}); starting it again",
                p.name
            ));
            drv.stop(p, Node::Server, Stop::of(run))?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let version = write_kubeconfig(s, &pki, at, o.keep_context)?;
    rejoin_nodes(s, loaded, o, at)?;
    Ok(Some(Started {
        kubernetes: version,
        manifest: loaded.manifest.id(),
        already_running: true,
        created: false,
        ..result(s, at, host.clone())?
    }))
}

/// The running server's agents: those asked for beyond them (`--nodes`)
/// added, those that are not running (killed behind kubestrap's back)
/// started again, and every one waited for until Ready.
fn rejoin_nodes(s: &Session, loaded: &Loaded, o: &StartOptions, at: Endpoint) -> Result<()> {
    use super::nodes;
    let (p, progress, drv) = (&s.profile, s.progress, s.driver());
    let mut cfg = p.load()?;
    let all = super::bringup::wanted_agents(p, Some(&cfg), o.nodes)?;
    if all.len() != cfg.agents.len() {
        nodes::check_supported(drv, p, &loaded.manifest, all.len() + 1)?;
        cfg.agents = all.iter().map(crate::driver::AgentNode::short).collect();
        p.save(&cfg)?;
    }
    if all.is_empty() || !drv.runs_agents() {
        return Ok(());
    }
    let down: Vec<_> =
        all.iter().filter(|n| !matches!(drv.status(p, Node::Agent(**n)), Ok(HostState::Running(_)))).copied().collect();
    let probe = nodes::probe(p, at)?;
    if !down.is_empty() {
        let names: Vec<String> = down.iter().map(|n| n.short()).collect();
        progress.warn(format!(
            "node(s) {} of profile {:?} are not running; starting them again",
            names.join(", "),
            p.name
        ));
        let launch = super::bringup::running_launch(s, loaded, &cfg)?;
        nodes::start_agents(drv, &launch, &down, &probe, (nodes::Rollout::Parallel, nodes::Made::NotYet), progress)?;
    }
    // The others ran already: each must be Ready too.
    let up: Vec<_> = all.into_iter().filter(|n| !down.contains(n)).collect();
    let run = &loaded.manifest.component.localkube.run;
    let timeout = run.agent.as_ref().map_or(o.wait_timeout, |a| Duration::from_secs(a.ready_timeout_s));
    let ask = |name: &str| nodes::node_ready(&probe, name);
    nodes::wait_ready(drv, p, &nodes::named(p, &nodes::as_nodes(&up)), &ask, Instant::now() + timeout, progress)
        .map(drop)
        .map_err(|e| nodes::agent_not_up(drv, p, e))
}
