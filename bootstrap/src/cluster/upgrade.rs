//! `upgrade` and `rollback`: a manifest swap. The candidate is verified and
//! every artifact of it fetched before anything is touched; then the old
//! release is stopped, its state snapshotted through the driver, the
//! profile's manifest pointer swapped, and the new release started and
//! checked (ready, and `/version` reporting its release). If it does not
//! come up, the old release is put back with its state. A journal records
//! each phase, so a command killed at any point is finished or undone by
//! the next `start` or `upgrade` — either the new cluster runs or the old
//! one does, with its data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::{Manifest, Target};

use super::bringup::{BringUp, Tuning, bring_up};
use super::components::fetch_and_unpack;
use super::journal::{Journal, Kind, Phase};
use super::recovery::{self, roll_back};
use super::session::{Session, Wait};
use super::snapshot;
use crate::artifacts::{self, store};
use crate::channel::{self, Loaded};
use crate::driver::{Node, Stop};
use crate::home::Home;
use crate::profile::{Config, Profile};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{what}")]
    Refused { what: String, advice: String },
    #[error(
        "the upgrade of profile {profile:?} to {to} failed: {why}.\nLast lines of the new localkube's log:\n{tail}\nIt was rolled back: {from} runs again, with its data."
    )]
    Failed { profile: String, from: String, to: String, why: String, tail: String },
    #[error(
        "the upgrade of profile {profile:?} to {to} failed ({why}), and so did putting {from} back: {rollback}. The journal {} keeps where it got to",
        journal.display()
    )]
    RollbackFailed { profile: String, from: String, to: String, why: String, rollback: String, journal: PathBuf },
    #[error("profile {profile:?} has not been upgraded, so there is no earlier release to roll back to")]
    NoPrevious { profile: String },
}

impl UpgradeError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            UpgradeError::Refused { advice, .. } => Some(advice.clone()),
            UpgradeError::RollbackFailed { profile, .. } => {
                Some(format!("`kubestrap start -p {profile}` tries the rollback again"))
            }
            UpgradeError::Failed { .. } | UpgradeError::NoPrevious { .. } => None,
        }
    }
}

/// Where the new release comes from.
pub enum Source {
    Manifest(String),
    Bundle(PathBuf),
    /// The channel index at this URL: the newest manifest of the profile's channel.
    Index(String),
}

pub struct UpgradeOptions {
    pub profile: String,
    pub source: Source,
    pub dry_run: bool,
    pub force: bool,
    pub allow_expired: bool,
    pub no_wait: bool,
    pub fetch: artifacts::Options,
    pub tuning: Tuning,
}

/// What an upgrade (or rollback) does, before it does it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub profile: String,
    pub from: String,
    pub to: String,
    pub kubernetes_from: String,
    pub kubernetes_to: String,
    /// Component, version now, version after.
    pub components: Vec<(String, String, String)>,
    /// Bytes still to download.
    pub download_bytes: u64,
    /// What `--force` overrode.
    pub forced: Option<String>,
    /// The snapshot a rollback restores.
    pub restore: Option<String>,
}

/// How long each phase took.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub fetch_ms: u64,
    pub snapshot_ms: u64,
    pub swap_ms: u64,
    pub ready_ms: u64,
}

#[derive(Debug)]
pub enum Outcome {
    UpToDate { release: String },
    Planned(Plan),
    Done { plan: Plan, snapshot: String, timings: Timings },
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// An opened session, its profile's driver, and an interrupted upgrade
/// finished or undone first.
fn open<'a>(
    home: &'a Home,
    profile: &str,
    no_wait: bool,
    fetch: &artifacts::Options,
    tuning: &Tuning,
    progress: &'a dyn Progress,
) -> Result<(Session<'a>, Config)> {
    let s = Session::open_existing(home, profile, Wait::from_no_wait(no_wait), progress)?;
    // A config that cannot be read is said before any recovery acts.
    s.profile.load()?;
    recovery::finish_interrupted(&s, fetch, tuning)?;
    let cfg = s.profile.load()?;
    Ok((s, cfg))
}

pub fn upgrade(home: &Home, o: &UpgradeOptions, progress: &dyn Progress) -> Result<Outcome> {
    let (s, cfg) = open(home, &o.profile, o.no_wait, &o.fetch, &o.tuning, progress)?;
    let p = &s.profile;
    if let Some(j) = &cfg.join {
        return Err(UpgradeError::Refused {
            what: format!(
                "profile {:?} is node {} of the cluster at {}: that cluster is upgraded on its server's machine",
                p.name, j.node, j.server
            ),
            advice: format!(
                "after the server's upgrade, `kubestrap node leave -p {0}` and join again with the new release",
                p.name
            ),
        }
        .into());
    }
    let current = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let (cand, fetch) = candidate(home, o, &current.manifest, !o.dry_run, progress)?;
    if cand.path == cfg.manifest {
        return Ok(Outcome::UpToDate { release: current.manifest.id() });
    }
    let forced = check_step(&current.manifest, &cand.manifest, o.force, p)?;
    if let Some(f) = &forced {
        progress.warn(format!("--force: {f}"));
    }
    let plan = plan(home, &p.name, &cfg, &current, &cand, forced, None)?;
    if o.dry_run {
        return Ok(Outcome::Planned(plan));
    }
    let swap =
        Swap { cfg: &cfg, from: &current, to: &cand, plan, kind: Kind::Upgrade, fetch: &fetch, tuning: &o.tuning };
    run(&s, swap)
}

pub struct RollbackOptions {
    pub profile: String,
    pub dry_run: bool,
    pub force: bool,
    pub no_wait: bool,
    pub fetch: artifacts::Options,
    pub tuning: Tuning,
}

/// Back to the release the profile ran before its last upgrade, its state
/// restored from the snapshot taken on that release (the current state is
/// snapshotted first, so nothing is lost).
pub fn rollback(home: &Home, o: &RollbackOptions, progress: &dyn Progress) -> Result<Outcome> {
    let (s, cfg) = open(home, &o.profile, o.no_wait, &o.fetch, &o.tuning, progress)?;
    let p = &s.profile;
    let previous = cfg.previous.clone().ok_or_else(|| UpgradeError::NoPrevious { profile: p.name.clone() })?;
    let current = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let target = channel::load_stored(home, &previous, channel::Stored::RUNNING)?;
    let restore = snapshot::latest_for(p, &previous);
    let forced = match (&restore, o.force) {
        (Some(_), _) => None,
        (None, true) => Some(format!(
            "no snapshot of the state {} wrote exists: it starts on the state {} wrote, which it may not read",
            target.manifest.id(),
            current.manifest.id()
        )),
        (None, false) => {
            return Err(UpgradeError::Refused {
                what: format!(
                    "no snapshot of profile {:?}'s state on {} exists (`kubestrap snapshot list -p {}`)",
                    p.name,
                    target.manifest.id(),
                    p.name
                ),
                advice: "the state was written by a newer release; pass --force to start the older one on it anyway"
                    .into(),
            }
            .into());
        }
    };
    let plan = plan(home, &p.name, &cfg, &current, &target, forced, restore.map(|s| s.id))?;
    if o.dry_run {
        return Ok(Outcome::Planned(plan));
    }
    let swap =
        Swap { cfg: &cfg, from: &current, to: &target, plan, kind: Kind::Rollback, fetch: &o.fetch, tuning: &o.tuning };
    run(&s, swap)
}

/// The candidate manifest, verified (and with `record`, accepted into the
/// home), and the download options for its artifacts.
fn candidate(
    home: &Home,
    o: &UpgradeOptions,
    current: &Manifest,
    record: bool,
    progress: &dyn Progress,
) -> Result<(Loaded, artifacts::Options)> {
    let mut fetch = o.fetch.clone();
    let loaded = match &o.source {
        Source::Manifest(spec) if record => channel::load(home, Some(spec), &fetch, o.allow_expired, progress)?,
        Source::Manifest(spec) => channel::verify_only(home, spec, &fetch, o.allow_expired)?,
        Source::Bundle(path) => {
            let payload = if record {
                let (loaded, payload) = channel::bundle::load(home, path, o.allow_expired, progress)?;
                fetch.catalogs.push(std::sync::Arc::new(artifacts::source::BundleCatalog(payload)));
                fetch.offline = true;
                return Ok((loaded, fetch));
            } else {
                channel::bundle::open(path)?
            };
            let i = channel::bundle::inspect(home, &payload, o.allow_expired)?;
            fetch.catalogs.push(std::sync::Arc::new(artifacts::source::BundleCatalog(std::sync::Arc::new(payload))));
            fetch.offline = true;
            Loaded { manifest: i.manifest, path: path.clone(), trusted: i.trusted }
        }
        Source::Index(url) => {
            let li = channel::index::load(home, url, &fetch, o.allow_expired, record, progress)?;
            channel::index::manifest(home, &li, &current.channel, &fetch, o.allow_expired, record)?
        }
    };
    Ok((loaded, fetch))
}

/// Kubernetes' version skew rules for a control plane: at most one minor
/// up, never a skipped minor, never down (that is `rollback`, which puts the
/// state of that release back). `--force` overrides, and says what may break.
fn check_step(from: &Manifest, to: &Manifest, force: bool, p: &Profile) -> Result<Option<String>> {
    let (a, b) = (&from.kubernetes, &to.kubernetes);
    let problem = if a.major != b.major {
        Some(format!("Kubernetes {a} → {b} changes the major version"))
    } else if b.minor > a.minor + 1 {
        Some(format!(
            "Kubernetes {a} → {b} skips {} minor version(s); upgrade one minor at a time (1.{} first)",
            b.minor - a.minor - 1,
            a.minor + 1
        ))
    } else if b < a {
        Some(format!(
            "Kubernetes {a} → {b} is a downgrade; to go back to the release profile {:?} ran before, use `kubestrap rollback -p {}` (it restores the state saved on it)",
            p.name, p.name
        ))
    } else {
        None
    };
    match (problem, force) {
        (None, _) => Ok(None),
        (Some(what), true) => {
            Ok(Some(format!("{what}; forced: the apiserver may not read its state, and workloads may break")))
        }
        (Some(what), false) => Err(UpgradeError::Refused {
            what,
            advice: "pass --force to do it anyway (the snapshot taken first lets `kubestrap rollback` undo it)".into(),
        }
        .into()),
    }
}

fn plan(
    home: &Home,
    profile: &str,
    cfg: &Config,
    from: &Loaded,
    to: &Loaded,
    forced: Option<String>,
    restore: Option<String>,
) -> Result<Plan> {
    let host = Target::host();
    let old = from.manifest.needs(&host, cfg.driver).unwrap_or_default();
    let new = to
        .manifest
        .needs(&host, cfg.driver)
        .map_err(|reason| artifacts::FetchError::NoArtifact { manifest: to.manifest.id(), reason })?;
    let components = new
        .iter()
        .map(|n| {
            let was =
                old.iter().find(|o| o.component == n.component).map_or_else(|| "-".to_string(), |o| o.version.clone());
            (n.component.to_string(), was, n.version.clone())
        })
        .collect();
    let download_bytes = new
        .iter()
        .filter(|n| !store::has_blob(home, &n.artifact.sha256, n.artifact.size.get()))
        .map(|n| n.artifact.size.get())
        .sum();
    Ok(Plan {
        profile: profile.into(),
        from: from.manifest.id(),
        to: to.manifest.id(),
        kubernetes_from: from.manifest.kubernetes.to_string(),
        kubernetes_to: to.manifest.kubernetes.to_string(),
        components,
        download_bytes,
        forced,
        restore,
    })
}

/// An upgrade or rollback, decided: from which release to which, with what.
struct Swap<'a> {
    cfg: &'a Config,
    from: &'a Loaded,
    to: &'a Loaded,
    plan: Plan,
    kind: Kind,
    fetch: &'a artifacts::Options,
    tuning: &'a Tuning,
}

/// The swap itself, journaled. Long on purpose: the journal's phases,
/// each entered before it acts, read in the order they happen.
fn run(s: &Session, swap: Swap) -> Result<Outcome> {
    let drv = s.driver();
    let Swap { cfg, from, to, plan, kind, fetch, tuning } = swap;
    let (home, p, progress) = (s.home, &s.profile, s.progress);
    let mut j = Journal {
        kind,
        phase: Phase::Planned,
        old: from.path.clone(),
        new: to.path.clone(),
        previous: cfg.previous.clone(),
        snapshot: None,
        restore: plan.restore.clone(),
        forced: plan.forced.clone(),
        started: crate::state::now(),
    };
    j.enter(p, Phase::Planned)?;
    let mut timings = Timings::default();

    // Everything the new release needs, verified, before anything is touched.
    let t = Instant::now();
    if let Err(e) = fetch_and_unpack(home, &to.manifest, cfg.driver, fetch, progress) {
        Journal::clear(p)?;
        return Err(e);
    }
    timings.fetch_ms = ms(t.elapsed());
    j.enter(p, Phase::Fetched)?;

    let t = Instant::now();
    // The whole cluster: agents first, then the server (whose datastore is
    // the cluster's state, snapshotted next).
    super::nodes::stop_cluster(drv, p, Stop::of(&from.manifest.component.localkube.run))?;
    j.enter(p, Phase::Stopped)?;
    let reason = match kind {
        Kind::Upgrade => format!("before the upgrade to {}", to.manifest.id()),
        Kind::Rollback => format!("before the rollback to {}", to.manifest.id()),
    };
    let agents = super::nodes::agents_of(p, cfg);
    let snap = snapshot::take(p, drv, &agents, &from.path, &from.manifest, &reason, s.progress)?;
    j.snapshot = Some(snap.id.clone());
    j.enter(p, Phase::Snapshotted)?;
    timings.snapshot_ms = ms(t.elapsed());

    let t = Instant::now();
    let mut new_cfg = cfg.clone();
    new_cfg.manifest = to.path.clone();
    new_cfg.previous = Some(from.path.clone());
    p.save(&new_cfg)?;
    if let Some(id) = &plan.restore {
        snapshot::restore(p, drv, &agents, id)?;
    }
    j.enter(p, Phase::Swapped)?;
    timings.swap_ms = ms(t.elapsed());

    let t = Instant::now();
    let plan_up = BringUp { loaded: to, fetch, existing: Some(&new_cfg), port: None, tuning };
    let up = bring_up(s, &plan_up).and_then(|started| check_version(&started.kubernetes, &to.manifest));
    match up {
        Ok(()) => {
            j.enter(p, Phase::Verified)?;
            Journal::clear(p)?;
            timings.ready_ms = ms(t.elapsed());
            Ok(Outcome::Done { plan, snapshot: snap.id, timings })
        }
        Err(e) => {
            let tail = super::nodes::tail_text(&drv.log_tail(p, Node::Server, 20));
            let why = format!("{e:#}");
            match roll_back(s, &mut j, fetch, tuning) {
                Ok(()) => {
                    Err(UpgradeError::Failed { profile: p.name.clone(), from: plan.from, to: plan.to, why, tail }
                        .into())
                }
                Err(rb) => Err(UpgradeError::RollbackFailed {
                    profile: p.name.clone(),
                    from: plan.from,
                    to: plan.to,
                    why,
                    rollback: format!("{rb:#}"),
                    journal: p.journal(),
                }
                .into()),
            }
        }
    }
}

/// The release must report the Kubernetes version its manifest says.
fn check_version(reported: &str, m: &Manifest) -> Result<()> {
    let v = reported.trim_start_matches('v');
    let core = v.split(['+', '-']).next().unwrap_or_default();
    let want = format!("{}.{}.{}", m.kubernetes.major, m.kubernetes.minor, m.kubernetes.patch);
    if core == want {
        Ok(())
    } else {
        Err(anyhow::anyhow!("its apiserver reports version {reported:?}, not Kubernetes {want} as {} says", m.id()))
    }
}

/// `upgrade --check`: whether the index names a newer manifest of the
/// profile's channel. Nothing in the home changes.
pub fn check(
    home: &Home,
    profile: &str,
    index_url: &str,
    o: &artifacts::Options,
    allow_expired: bool,
    progress: &dyn Progress,
) -> Result<(String, Option<String>)> {
    let p = Profile::new(home, profile)?;
    let cfg = p.load()?;
    let current = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?.manifest;
    let li = channel::index::load(home, index_url, o, allow_expired, false, progress)?;
    let newer = li
        .index
        .channel
        .get(&current.channel)
        .filter(|e| e.version > current.version)
        .map(|e| format!("{}-{}", current.channel, e.version));
    Ok((current.id(), newer))
}
