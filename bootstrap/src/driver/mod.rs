//! Drivers run localkube somewhere. Each implements [`Driver`]; nothing above
//! this module sees how (a host process, a VM, a container): the lifecycle
//! holds an opaque [`Host`] and asks the driver for state, logs and stops.
//!
//! To add a driver: a module beside `native` implementing [`Driver`] (its
//! prerequisites in `check`, its extra apiserver names in `extra_sans`, the
//! paths localkube sees in `vars`), and a line in [`for_kind`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubestrap_fskit::FsError;
use kubestrap_manifest::{Driver as Kind, Run, Sha256, StopSignal, Vars};

use crate::profile::Profile;

pub mod docker;
mod guest;
pub mod native;
pub mod qemu;

/// Everything a driver needs to run one profile's localkube.
#[derive(Clone, Debug)]
pub struct Launch {
    pub profile: Profile,
    /// The release being launched: the manifest's `<channel>-<version>`.
    pub release: String,
    pub run: Run,
    /// The unpacked localkube component tree (verified).
    pub component: PathBuf,
    /// The sha256 `run.program` must have when it is executed.
    pub program_sha256: Sha256,
    pub port: u16,
    /// The other verified components the driver needs, by component name:
    /// unpacked trees (`hypervisor`, `base-image`), or the verified blob
    /// itself (`rootfs`, which the docker driver imports).
    pub trees: BTreeMap<&'static str, PathBuf>,
}

/// A running localkube as the lifecycle sees it: what to call it, and the
/// apiserver port on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// For humans and JSON: `pid 1234`, a container id, a VM name.
    pub id: String,
    pub port: u16,
}

/// What a driver sees of its host and localkube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    Running(Host),
    /// Still running, but a stop was asked for (a `stop` or `delete` that
    /// was interrupted): it is on its way down.
    Stopping(Host),
    /// Stopped by the user (or never started).
    Stopped,
    /// Stopped with its running state saved (a VM's RAM): `start` resumes it.
    Suspended,
    /// Should run but does not: how it ended, if known.
    Crashed {
        how: String,
    },
}

/// How to stop localkube gracefully: the manifest's signal, then a kill
/// after the timeout.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub signal: StopSignal,
    pub timeout: Duration,
    /// Save the running state instead of shutting down, where the driver
    /// can (`kubestrap stop` without `--shutdown`).
    pub suspend: bool,
}

impl Stop {
    pub fn of(run: &Run) -> Stop {
        Stop { signal: run.stop_signal, timeout: Duration::from_secs(run.stop_timeout_s), suspend: false }
    }
    /// Without a readable manifest: SIGTERM and 30 s.
    pub const DEFAULT: Stop = Stop { signal: StopSignal::Term, timeout: Duration::from_secs(30), suspend: false };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    Stopped,
    /// Its running state was saved; `start` resumes it.
    Suspended,
    Killed,
    WasNotRunning,
}

/// What a driver can do beyond start and stop.
#[allow(dead_code, reason = "read by upgrade and doctor, which build on this seam")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `stop` can save the running state and `start` resume it (a VM).
    pub suspend: bool,
    /// The cluster's state can be copied aside and put back (upgrade).
    pub snapshot: bool,
}

/// One prerequisite of a driver on this machine (shown by `kubestrap doctor`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it fails.
    pub advice: Option<String>,
    /// A failure stops `start` before it fetches anything (a failure that
    /// is not blocking may still let localkube run, perhaps degraded).
    pub blocking: bool,
}

impl Check {
    pub fn new(name: &str, ok: bool, detail: &str, advice: &str, blocking: bool) -> Check {
        Check {
            name: name.to_string(),
            ok,
            detail: detail.to_string(),
            advice: (!ok).then(|| advice.to_string()),
            blocking,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[allow(dead_code, reason = "returned by the optional capabilities a driver lacks")]
    #[error("the {driver} driver cannot {what}")]
    Unsupported { driver: Kind, what: &'static str },
    #[error("qemu: {0}")]
    Qemu(String),
    #[error("docker: {0}")]
    Docker(String),
    /// The container engine cannot be reached (or used) at all.
    #[error("docker: {0}")]
    EngineUnreachable(String),
    #[error("the {driver} driver cannot run this release here: {failures}")]
    Unfit { driver: Kind, failures: String },
    #[error("processes of profile {profile:?} are still running (pid {pids}); run `kubestrap stop -p {profile}` first")]
    StillRunning { profile: String, pids: String },
    #[error("process(es) {pids} of profile {profile:?} survived SIGKILL; {consequence}")]
    Survived { profile: String, pids: String, consequence: String },
    #[error("`{command}` failed: {why}")]
    HostTool { command: String, why: String },
    #[error(
        "profile {profile:?} is stopped, but what its localkube left on this machine could not all be removed: {left}; \
         remove it by hand, or run the command again"
    )]
    LeftOnHost { profile: String, left: String },
    #[error("the localkube monitor did not report a pid within {}s", .0.as_secs())]
    NoReport(Duration),
    #[error("localkube did not start ({how}); see {}", log.display())]
    DidNotStart { how: String, log: PathBuf },
    #[error(
        "{}: the manifest's run.program is missing from the unpacked component; run `kubestrap cache verify`",
        path.display()
    )]
    ProgramMissing { path: PathBuf },
    #[error("cannot {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// What runs one profile's localkube. The lifecycle calls, in order:
/// `create` (idempotent) → `start` → `running` while it waits for ready;
/// `status` at any time; `stop`; `delete` before the profile is removed.
#[allow(dead_code, reason = "capabilities, checks and suspend are the seam doctor and the VM driver use")]
pub trait Driver {
    fn kind(&self) -> Kind;
    fn capabilities(&self) -> Capabilities;
    /// What this driver needs on this machine, checked.
    fn check(&self, manifest: Option<&kubestrap_manifest::Manifest>) -> Vec<Check>;
    /// What must hold for a start to go on, checked before anything is
    /// fetched and cheaply (every start runs it): `check` less what only
    /// `doctor` needs to see (running the hypervisor, the storage driver).
    fn prerequisites(&self, _p: &Profile, manifest: &kubestrap_manifest::Manifest) -> Vec<Check> {
        self.check(Some(manifest))
    }
    /// Addresses the apiserver certificate must carry besides the defaults.
    fn extra_sans(&self) -> Vec<String>;
    /// Where this machine reaches the apiserver of `p` running `run`
    /// (127.0.0.1 unless the driver gives localkube an address of its own).
    fn address(&self, _p: &Profile, _run: &Run) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::LOCALHOST
    }
    /// The template values localkube's args and pki-files paths are
    /// rendered with, as localkube sees its paths.
    fn vars(&self, launch: &Launch) -> Vars;
    /// The same values as the host sees them: where kubestrap places files
    /// (pki-files, image archives) for localkube to find at `vars`' paths.
    fn host_vars(&self, launch: &Launch) -> Vars {
        self.vars(launch)
    }
    /// The host directory that becomes localkube's `{data}` (native: the
    /// directory itself; a VM: a staging tree copied in at boot).
    fn host_data(&self, profile: &Profile) -> PathBuf {
        profile.data()
    }
    /// Makes (or repairs) what the driver needs for this profile before a
    /// start: directories with their modes, for a VM driver the machine.
    fn create(&self, profile: &Profile) -> Result<()>;
    /// Launches localkube detached; returns once it is running (not ready).
    /// Refuses if anything of this profile is still running.
    fn start(&self, launch: &Launch) -> Result<Host>;
    /// Whether localkube is still running (checked while waiting for ready).
    fn running(&self, profile: &Profile) -> Result<bool>;
    /// Stops gracefully (the signal, then a kill after the timeout; then
    /// whatever localkube left behind). Returns how it went.
    fn stop(&self, profile: &Profile, how: Stop) -> Result<StopOutcome>;
    /// A start found localkube running and keeps it: a stop interrupted
    /// before it acted no longer applies.
    fn adopt(&self, profile: &Profile) -> Result<()>;
    fn status(&self, profile: &Profile) -> Result<HostState>;
    /// Removes what `create` made outside the profile directory and makes
    /// sure nothing of the profile still runs. Called after `stop`.
    fn delete(&self, profile: &Profile) -> Result<()>;
    /// What `delete --force` may leave behind when this driver could not
    /// remove it, named so the user can.
    fn leftovers(&self, _profile: &Profile) -> String {
        "nothing outside the profile's directory".into()
    }
    /// The last `n` lines of localkube's log.
    fn log_tail(&self, profile: &Profile, n: usize) -> Vec<String>;
    /// Writes what localkube logs from now on to `out`, until writing fails.
    fn follow_log(&self, profile: &Profile, out: &mut dyn Write) -> Result<()>;

    /// Saves the running cluster's state and stops it (a VM's RAM).
    fn suspend(&self, _profile: &Profile) -> Result<()> {
        Err(DriverError::Unsupported { driver: self.kind(), what: "suspend a cluster" })
    }
    /// Copies the stopped cluster's state to `dest`, which must not exist
    /// (upgrade's safety net). Returns what was copied.
    fn snapshot(&self, _profile: &Profile, _dest: &Path) -> Result<kubestrap_fskit::Copied> {
        Err(DriverError::Unsupported { driver: self.kind(), what: "snapshot a cluster" })
    }
    /// Puts a snapshot back in place of the stopped cluster's state.
    fn restore(&self, _profile: &Profile, _src: &Path) -> Result<()> {
        Err(DriverError::Unsupported { driver: self.kind(), what: "restore a snapshot" })
    }
}

/// The driver for a profile.
pub fn for_kind(kind: Kind) -> Result<Box<dyn Driver>> {
    match kind {
        Kind::Native => Ok(Box::new(native::Native)),
        Kind::Qemu => Ok(Box::new(qemu::Qemu)),
        Kind::Docker => Ok(Box::new(docker::Docker)),
    }
}

/// Kinds `start --driver` accepts in this build.
pub const AVAILABLE: &[Kind] = &[Kind::Native, Kind::Qemu, Kind::Docker];
