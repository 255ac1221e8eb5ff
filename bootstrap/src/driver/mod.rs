//! Drivers run localkube somewhere: `native` runs it as a supervised host
//! process (Linux, no VM). Each driver implements [`Driver`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use kubestrap_manifest::{Run, Vars};

use crate::profile::Profile;

pub mod monitor;
pub mod native;
pub mod process;

/// Everything a driver needs to run one profile's localkube.
#[derive(Clone, Debug)]
pub struct Launch {
    pub profile: Profile,
    pub run: Run,
    /// The unpacked localkube component tree.
    pub component: PathBuf,
    pub port: u16,
}

impl Launch {
    /// Template values for the manifest's args and pki-files paths.
    pub fn vars(&self) -> Vars {
        Vars {
            data: self.profile.data().display().to_string(),
            pki: self.profile.pki().display().to_string(),
            port: self.port,
            bind: "127.0.0.1".into(),
            profile: self.profile.name.clone(),
            node: format!("kubestrap-{}", self.profile.name),
            component: self.component.display().to_string(),
        }
    }
}

/// What a driver sees of its host and localkube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    /// localkube runs (pid, port).
    Running { pid: i32, port: u16 },
    /// Stopped by the user (or never started).
    Stopped,
    /// Should run but does not: how it ended, if known.
    Crashed { how: String },
}

/// What runs one profile's localkube. The lifecycle calls, in order:
/// `create` (idempotent) → `start` → `running` while it waits for ready;
/// `status` at any time; `stop`; `delete` before the profile is removed.
pub trait Driver {
    fn name(&self) -> &'static str;
    /// Addresses the apiserver certificate must carry besides the defaults.
    fn extra_sans(&self) -> Vec<String>;
    /// Makes (or repairs) what the driver needs for this profile before a
    /// start: directories with their modes, for a VM driver the machine.
    fn create(&self, profile: &Profile) -> Result<()>;
    /// Launches localkube detached; returns once it is running (not ready).
    /// Refuses if anything of this profile is still running.
    fn start(&self, launch: &Launch) -> Result<i32>;
    /// Whether localkube is still running (checked while waiting for ready).
    fn running(&self, profile: &Profile) -> Result<bool>;
    /// Stops gracefully: the manifest's signal, then SIGKILL after `timeout`;
    /// then whatever localkube left behind. Returns how it went.
    fn stop(&self, profile: &Profile, signal: i32, timeout: Duration) -> Result<StopOutcome>;
    /// A start found localkube running: a stop interrupted before it acted
    /// no longer applies.
    fn resume(&self, profile: &Profile) -> Result<()>;
    fn status(&self, profile: &Profile) -> Result<HostState>;
    /// Removes what `create` made outside the profile directory and makes
    /// sure nothing of the profile still runs. Called after `stop`.
    fn delete(&self, profile: &Profile) -> Result<()>;
    /// localkube's log file (kept under a size cap, older part in `.1`).
    fn logs(&self, profile: &Profile) -> PathBuf;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    Stopped,
    Killed,
    WasNotRunning,
}

/// The driver for a profile.
pub fn for_kind(kind: kubestrap_manifest::Driver) -> Result<Box<dyn Driver>> {
    match kind {
        kubestrap_manifest::Driver::Native => Ok(Box::new(native::Native)),
        other => Err(crate::exit::coded(
            crate::exit::Code::Usage,
            format!("this kubestrap has no {other} driver; use --driver native"),
        )),
    }
}
