//! An upgrade or rollback a killed command left behind: read from its
//! journal and finished or undone by the next `start`, `upgrade` or
//! `rollback` — before the swap nothing of it applies; after it, the
//! earlier release is put back with its state. Either the new release runs
//! or the old one does, with its data.

use anyhow::Result;

use super::bringup::{BringUp, Tuning, bring_up};
use super::journal::{Journal, Kind, Phase};
use super::session::Session;
use super::snapshot;
use crate::artifacts;
use crate::channel::{self, Stored};
use crate::driver::Stop;
use crate::profile::Profile;

/// Puts the old release back: stops whatever runs, points the profile at
/// the old manifest, restores the snapshot, starts it.
pub(super) fn roll_back(s: &Session, j: &mut Journal, fetch: &artifacts::Options, tuning: &Tuning) -> Result<()> {
    let (home, p, drv) = (s.home, &s.profile, s.driver());
    j.enter(p, Phase::RollingBack)?;
    let old = channel::load_stored(home, &j.old, Stored::RUNNING)?;
    let stop = channel::peek(&j.new)
        .map_or(Stop::of(&old.manifest.component.localkube.run), |m| Stop::of(&m.component.localkube.run));
    super::nodes::stop_cluster(drv, p, stop)?;
    let mut cfg = p.load()?;
    cfg.manifest = j.old.clone();
    cfg.previous = j.previous.clone();
    p.save(&cfg)?;
    if let Some(id) = &j.snapshot {
        snapshot::restore(p, drv, &super::nodes::agents_of(p, &cfg), id)?;
    }
    bring_up(s, &BringUp { loaded: &old, fetch, existing: Some(&cfg), port: None, tuning })?;
    Journal::clear(p)?;
    Ok(())
}

/// Finishes or undoes an upgrade a killed command left (called in its
/// session by `start`, `upgrade` and `rollback`); says what was done.
pub fn finish_interrupted(s: &Session, fetch: &artifacts::Options, tuning: &Tuning) -> Result<()> {
    if let Some(msg) = finish(s, fetch, tuning)? {
        s.progress.warn(msg);
    }
    Ok(())
}

fn finish(s: &Session, fetch: &artifacts::Options, tuning: &Tuning) -> Result<Option<String>> {
    let p = &s.profile;
    let mut j = match Journal::read(p) {
        Ok(None) => return Ok(None),
        Ok(Some(j)) => j,
        Err(why) => {
            Journal::clear(p)?;
            return Ok(Some(format!(
                "the journal of an interrupted upgrade of profile {:?} was damaged ({why}) and was removed; the profile runs the release its config names",
                p.name
            )));
        }
    };
    let what = |j: &Journal| {
        let to = channel::peek(&j.new).map_or_else(|| j.new.display().to_string(), |m| m.id());
        format!("{} of profile {:?} to {to}", if j.kind == Kind::Upgrade { "an upgrade" } else { "a rollback" }, p.name)
    };
    // Killed between the config's swap (or a rollback's restore) and the
    // journal saying so: the config already names the new release.
    let swapped = j.phase == Phase::Snapshotted && p.load().is_ok_and(|c| c.manifest == j.new);
    match j.phase {
        Phase::Snapshotted if swapped => {
            let w = what(&j);
            roll_back(s, &mut j, fetch, tuning)?;
            Ok(Some(format!(
                "{w} was interrupted during the swap; it was rolled back, and the earlier release runs with its state (run the command again to retry)"
            )))
        }
        Phase::Planned | Phase::Fetched | Phase::Stopped | Phase::Snapshotted => {
            Journal::clear(p)?;
            Ok(Some(format!("{} was interrupted before the swap; nothing of it applies", what(&j))))
        }
        Phase::Verified => {
            Journal::clear(p)?;
            Ok(Some(format!("{} had finished when it was interrupted", what(&j))))
        }
        Phase::Swapped | Phase::RollingBack => {
            let w = what(&j);
            roll_back(s, &mut j, fetch, tuning)?;
            Ok(Some(format!(
                "{w} was interrupted after the swap; it was rolled back, and the earlier release runs with its state (run the command again to retry)"
            )))
        }
    }
}

/// For `status`: an upgrade a killed command left, if any.
pub fn interrupted(p: &Profile) -> Option<String> {
    match Journal::read(p) {
        Ok(Some(j)) => Some(format!(
            "{} to {} was interrupted at phase {}; `kubestrap start -p {}` (or `upgrade`) finishes or undoes it",
            if j.kind == Kind::Upgrade { "an upgrade" } else { "a rollback" },
            channel::peek(&j.new).map_or_else(|| j.new.display().to_string(), |m| m.id()),
            j.phase,
            p.name
        )),
        Ok(None) => None,
        Err(why) => {
            Some(format!("the journal of an interrupted upgrade is damaged ({why}); `kubestrap start` removes it"))
        }
    }
}
