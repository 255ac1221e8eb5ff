//! `upgrade`, `rollback`, `snapshot`, `config` and `self-update`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use kubestrap_fskit::{self as fskit};
use kubestrap_manifest::{Manifest, Target, Unpack};
use serde_json::json;

use crate::artifacts::{self, Job};
use crate::channel::{self, ChannelError};
use crate::cli::args::{ConfigCmd, RollbackArgs, SelfUpdateArgs, SnapshotCmd, UpgradeArgs};
use crate::cli::exit::{Code, UsageError};
use crate::cli::render::{Ui, human_bytes, human_duration};
use crate::cluster::Tuning;
use crate::cluster::snapshot;
use crate::cluster::upgrade::{self, Outcome, Plan, RollbackOptions, Source, UpgradeOptions};
use crate::home::Home;
use crate::profile::Profile;

fn tuning(wait_timeout: std::time::Duration) -> Tuning {
    // An upgrade keeps the user's current context as it is.
    Tuning {
        wait_timeout,
        keep_context: true,
        cert_validity: time::Duration::days(365),
        vm: None,
        nodes: None,
        listen: None,
        publish: None,
        // The server first, then each agent, each Ready before the next.
        rollout: crate::cluster::nodes::Rollout::OneByOne,
        // A candidate whose system workloads never run is not up: rolled back.
        system: crate::cluster::System::Wait,
    }
}

pub fn upgrade(a: UpgradeArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let fetch = super::fetch_options(&a.net);
    let index = channel::index::index_url(a.channel_url.as_deref(), home.env());
    if a.check {
        let (current, newer) = upgrade::check(home, &a.profile.profile, &index, &fetch, a.allow_expired, ui)?;
        ui.json(json!({"profile": a.profile.profile, "current": current, "available": newer}));
        return Ok(match newer {
            Some(n) => {
                ui.line(&format!(
                    "{n} is available (profile {:?} runs {current}); `kubestrap upgrade` moves to it",
                    a.profile.profile
                ));
                Code::Available
            }
            None => {
                ui.line(&format!("profile {:?} runs {current}, the newest release of its channel", a.profile.profile));
                Code::Ok
            }
        });
    }
    let source = match (a.manifest, a.from_bundle) {
        (Some(m), _) => Source::Manifest(m),
        (None, Some(b)) => Source::Bundle(b),
        (None, None) => Source::Index(index),
    };
    let o = UpgradeOptions {
        profile: a.profile.profile,
        source,
        dry_run: a.dry_run,
        force: a.force,
        allow_expired: a.allow_expired,
        no_wait: a.wait.no_wait,
        fetch,
        tuning: tuning(a.wait.wait_timeout),
    };
    let outcome = upgrade::upgrade(home, &o, ui)?;
    render(&outcome, "upgrade", t, ui);
    Ok(Code::Ok)
}

pub fn rollback(a: RollbackArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let o = RollbackOptions {
        profile: a.profile.profile,
        dry_run: a.dry_run,
        force: a.force,
        no_wait: a.wait.no_wait,
        fetch: artifacts::Options { offline: true, ..Default::default() },
        tuning: tuning(a.wait.wait_timeout),
    };
    let outcome = upgrade::rollback(home, &o, ui)?;
    render(&outcome, "rollback", t, ui);
    Ok(Code::Ok)
}

fn show_plan(plan: &Plan, what: &str, ui: &Ui) {
    ui.line(&format!(
        "{what} of profile {:?}: {} (Kubernetes {}) → {} (Kubernetes {})",
        plan.profile, plan.from, plan.kubernetes_from, plan.to, plan.kubernetes_to
    ));
    for (c, old, new) in &plan.components {
        ui.line(&format!("  {c:<11} {old} → {new}"));
    }
    ui.line(&format!("  to download: {}", human_bytes(plan.download_bytes)));
    if let Some(r) = &plan.restore {
        ui.line(&format!(
            "  restores snapshot {r} (the state it had on {}); the current state is snapshotted first",
            plan.to
        ));
    }
    if let Some(f) = &plan.forced {
        ui.line(&format!("  forced: {f}"));
    }
}

fn render(outcome: &Outcome, what: &str, t: Instant, ui: &Ui) {
    match outcome {
        Outcome::UpToDate { release } => {
            ui.json(json!({"result": "up-to-date", "release": release}));
            ui.line(&format!("already on {release}: nothing to do"));
        }
        Outcome::Planned(plan) => {
            ui.json(json!({"result": "dry-run", "plan": plan}));
            show_plan(plan, &format!("{what} plan (dry run: nothing changes)"), ui);
        }
        Outcome::Done { plan, snapshot, timings } => {
            ui.json(json!({"result": "done", "plan": plan, "snapshot": snapshot, "timings": timings, "elapsed_ms": t.elapsed().as_millis() as u64}));
            show_plan(plan, what, ui);
            ui.result(
                &format!("{what} done: profile {:?} runs {}", plan.profile, plan.to),
                &format!(
                    "fetch {} ms, snapshot {} ms, swap {} ms, ready {} ms; snapshot {snapshot} kept (`kubestrap rollback` returns to {})",
                    timings.fetch_ms, timings.snapshot_ms, timings.swap_ms, timings.ready_ms, plan.from
                ),
                t.elapsed(),
            );
        }
    }
}

pub fn snapshot(cmd: SnapshotCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        SnapshotCmd::List(p) => {
            let p = Profile::new(home, &p.profile)?;
            p.load()?;
            let all = snapshot::list(&p);
            if all.is_empty() {
                ui.line(&format!("profile {:?} has no snapshots (an upgrade or rollback takes one)", p.name));
            }
            let mut total = 0;
            for s in &all {
                let used = fskit::tree_size(&s.dir);
                total += used;
                ui.json(json!({"id": s.id, "release": s.meta.release, "kubernetes": s.meta.kubernetes, "taken": s.meta.taken,
                    "reason": s.meta.reason, "bytes": s.meta.bytes, "disk_bytes": used, "reflinked_files": s.meta.reflinked, "nodes": 1 + s.meta.nodes.len()}));
                let nodes = match s.meta.nodes.len() {
                    0 => String::new(),
                    n => format!("  {} nodes", n + 1),
                };
                ui.line(&format!(
                    "{}  {} (Kubernetes {})  {}  {}{nodes}  [{}]",
                    s.id,
                    s.meta.release,
                    s.meta.kubernetes,
                    s.meta.taken,
                    human_bytes(used),
                    s.meta.reason
                ));
            }
            if !all.is_empty() {
                ui.line(&format!("{} snapshot(s), {} on disk", all.len(), human_bytes(total)));
            }
            Ok(Code::Ok)
        }
        SnapshotCmd::Remove { profile, id } => {
            let p = Profile::new(home, &profile.profile)?;
            let _lock = crate::cluster::lock_profile(home, &p, true, ui)?;
            let s = snapshot::remove(&p, &id)?;
            ui.json(json!({"removed": s.id}));
            ui.line(&format!("removed snapshot {} of {} ({})", s.id, s.meta.release, human_bytes(s.meta.bytes)));
            Ok(Code::Ok)
        }
    }
}

pub fn config(cmd: ConfigCmd, home: &Home, ui: &Ui) -> Result<Code> {
    let check = |key: &str| -> Result<()> {
        if channel::index::CONFIG_KEYS.contains(&key) {
            Ok(())
        } else {
            Err(UsageError(format!("unknown setting {key:?}; known: {}", channel::index::CONFIG_KEYS.join(", ")))
                .into())
        }
    };
    match cmd {
        ConfigCmd::Get { key } => {
            check(&key)?;
            let value = channel::index::config_get(home.env(), &key);
            let effective = channel::index::index_url(None, home.env());
            ui.json(json!({"key": key, "value": value, "effective": effective}));
            match value {
                Some(v) => ui.line(&v),
                None => ui.line(&format!("(not set; in effect: {effective})")),
            }
        }
        ConfigCmd::Set { key, value } => {
            check(&key)?;
            let path = channel::index::config_set(home.env(), &key, Some(&value))?;
            ui.json(json!({"key": key, "value": value, "file": path}));
            ui.line(&format!("{key} = {value} ({})", path.display()));
        }
        ConfigCmd::Unset { key } => {
            check(&key)?;
            let path = channel::index::config_set(home.env(), &key, None)?;
            ui.json(json!({"key": key, "value": null, "file": path}));
            ui.line(&format!("{key} unset ({})", path.display()));
        }
    }
    Ok(Code::Ok)
}

/// Where the kubestrap a self-update replaced is kept.
fn previous_exe(home: &Home) -> PathBuf {
    home.root().join("state/kubestrap-previous")
}

/// `self-update`. Long on purpose: its steps (index, verify, download,
/// check, keep the old one, swap) share the verified state and run in
/// this order only.
pub fn self_update(a: SelfUpdateArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let exe = std::env::current_exe()?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let kept = previous_exe(home);
    if a.rollback {
        if !kept.is_file() {
            return Err(UsageError(format!("no earlier kubestrap is kept ({} does not exist)", kept.display())).into());
        }
        let now = fskit::read_capped(&exe, 1 << 30)?;
        self_replace::self_replace(&kept)?;
        fskit::write_atomic(&kept, &now, 0o755)?;
        ui.json(json!({"rolled_back": exe}));
        ui.result("self-update rolled back", &format!("{} is the kubestrap it replaced", exe.display()), t.elapsed());
        return Ok(Code::Ok);
    }
    let mut fetch = super::fetch_options(&a.net);
    let url = channel::index::index_url(a.channel_url.as_deref(), home.env());
    let li = channel::index::load(home, &url, &fetch, a.allow_expired, !a.check, ui)?;
    let target = Target::host();
    let entry = li.index.kubestrap.get(&target).ok_or_else(|| ChannelError::NoExecutable {
        index: li.at.to_string(),
        target: target.to_string(),
        known: li.index.kubestrap.keys().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
    })?;
    let me = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver");
    ui.json(json!({"current": me.to_string(), "available": entry.version.to_string()}));
    if entry.version < me {
        return Err(upgrade::UpgradeError::Refused {
            what: format!("the channel index names kubestrap {}, older than this one ({me})", entry.version),
            advice: "a self-update never goes back; `kubestrap self-update --rollback` puts back the kubestrap the last one replaced".into(),
        }
        .into());
    }
    if entry.version == me {
        ui.line(&format!("kubestrap {me} is the newest the channel names"));
        return Ok(Code::Ok);
    }
    if a.check {
        ui.line(&format!(
            "kubestrap {} is available (this is {me}); `kubestrap self-update` installs it",
            entry.version
        ));
        return Ok(Code::Available);
    }
    // Through the verified fetch path: sha256 and size from the signed index.
    let urls = entry.urls.iter().map(|u| li.at.resolve(u).spec()).collect();
    let artifact = Manifest::artifact(urls, entry.sha256, entry.size.get(), Unpack::File, "kubestrap")
        .map_err(anyhow::Error::msg)?;
    fetch.jobs = 1;
    let job = Job { label: format!("kubestrap {} ({target})", entry.version), artifact };
    let _store = home.store_lock(false, || {})?;
    let blob = artifacts::fetch_all(home, std::slice::from_ref(&job), &fetch, ui)?.remove(0);
    // Run from a private executable copy, so the store's blob is never run.
    let staged = fskit::temp_sibling(&exe);
    std::fs::copy(&blob, &staged)?;
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = (|| -> Result<()> {
        // A home with a newer layout than the new kubestrap reads is left alone.
        let out = std::process::Command::new(&staged).arg("__layout").output()?;
        let layout: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        if layout < crate::home::LAYOUT {
            return Err(upgrade::UpgradeError::Refused {
                what: format!(
                    "kubestrap {} reads home layout {layout}, and this home is layout {}",
                    entry.version,
                    crate::home::LAYOUT
                ),
                advice:
                    "it would misread this home; keep this kubestrap, or use the newer one with another KUBESTRAP_HOME"
                        .into(),
            }
            .into());
        }
        fskit::write_atomic(&kept, &fskit::read_capped(&exe, 1 << 30)?, 0o755)?;
        self_replace::self_replace(&staged)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&staged);
    result?;
    ui.json(json!({"updated": exe, "version": entry.version.to_string(), "previous_kept": kept}));
    ui.result(
        &format!("kubestrap {me} → {}", entry.version),
        &format!(
            "{} replaced; the previous one is kept (`kubestrap self-update --rollback`); {}",
            exe.display(),
            human_duration(t.elapsed())
        ),
        t.elapsed(),
    );
    Ok(Code::Ok)
}
