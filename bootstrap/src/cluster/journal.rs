//! The journal of an upgrade (or rollback) under way:
//! `profiles/<name>/upgrade.toml`, rewritten atomically before each step,
//! so a command killed at any point leaves the next one knowing exactly
//! what was done and what to finish or undo.

use std::path::PathBuf;

use kubestrap_fskit::FsError;
use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// Where an upgrade got to. Each is written before the step that follows
/// it begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Checked and planned; nothing touched.
    Planned,
    /// Every artifact of the new release is in the store, verified.
    Fetched,
    /// The old release is stopped.
    Stopped,
    /// The old release's state is snapshotted.
    Snapshotted,
    /// The profile points at the new release (and, for a rollback, the
    /// older state is restored).
    Swapped,
    /// The new release answered ready and reports its version.
    Verified,
    /// Going back: the old release, its state restored from the snapshot.
    RollingBack,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Planned => "planned",
            Phase::Fetched => "fetched",
            Phase::Stopped => "stopped",
            Phase::Snapshotted => "snapshotted",
            Phase::Swapped => "swapped",
            Phase::Verified => "verified",
            Phase::RollingBack => "rolling back",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Upgrade,
    Rollback,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Journal {
    pub kind: Kind,
    pub phase: Phase,
    /// The kept manifests: what ran, and what is to run.
    pub old: PathBuf,
    pub new: PathBuf,
    /// The profile's `previous` before the swap (put back with the old release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
    /// The snapshot of the old release's state (taken in `Snapshotted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// For a rollback: the snapshot of the older release's state it puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// What `--force` overrode, recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    pub started: String,
}

impl Journal {
    /// The journal of a profile: `Ok(None)` when no upgrade is under way,
    /// `Err(why)` when it is damaged.
    pub fn read(p: &Profile) -> Result<Option<Journal>, String> {
        crate::state::read(&p.journal())
    }

    /// Moves to `phase`, durably, before the step that follows.
    pub fn enter(&mut self, p: &Profile, phase: Phase) -> Result<(), FsError> {
        self.phase = phase;
        crate::state::write(&p.journal(), self)?;
        crate::killpoint::reached(&format!("upgrade {phase}"));
        Ok(())
    }

    /// The upgrade is over (done or undone).
    pub fn clear(p: &Profile) -> Result<(), FsError> {
        kubestrap_fskit::remove_any(&p.journal())
    }
}
