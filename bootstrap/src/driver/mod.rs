//! Drivers run localkube somewhere. Each implements [`Driver`]; nothing above
//! this module sees how (a host process, a VM, a container): the lifecycle
//! holds an opaque [`Host`] and asks the driver for state, logs and stops.
//! A driver is handed a [`Context`] (the home, the profile's settings, where
//! to report) and reads neither the environment nor the profile's config.
//!
//! To add a driver: a module beside `native` implementing [`Driver`] and
//! giving its [`Description`], and one line in [`DRIVERS`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubestrap_fskit::FsError;
use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest, Run, Sha256, StopSignal, Target, Vars};

use crate::profile::{Profile, VmSettings};
use crate::progress::Progress;

pub mod docker;
mod guest;
pub mod kernel;
pub mod native;
pub mod qemu;
pub mod supervisor;

/// What a driver is handed: the home it works in, the profile's VM or
/// container settings (as asked and kept), and where to report.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub home: &'a Path,
    /// The command's environment (where the engine is, PATH).
    pub env: &'a crate::env::Environment,
    pub settings: VmSettings,
    pub progress: &'a dyn Progress,
}

/// A driver as the rest of kubestrap knows it, before it makes one.
pub struct Description {
    pub kind: Kind,
    /// The components a release must pin for it, besides localkube and kubectl.
    pub needs: &'static [ComponentName],
    /// A directory only this driver makes in a profile: it tells the driver
    /// of a profile whose config cannot be read.
    pub marks: Option<&'static str>,
    /// Whether it can run on this machine at all, and why (or why not):
    /// cheap, for the choice of a new profile's driver.
    pub here: fn(&crate::env::Environment) -> std::result::Result<String, String>,
    pub make: for<'a> fn(Context<'a>) -> Box<dyn Driver + 'a>,
}

/// Every driver, in the order a new profile's default is chosen.
pub const DRIVERS: &[Description] = &[docker::DESCRIPTION, native::DESCRIPTION, qemu::DESCRIPTION];

/// A driver's description.
pub fn describe(kind: Kind) -> &'static Description {
    DRIVERS.iter().find(|d| d.kind == kind).expect("every manifest driver has a description")
}

/// The driver for a profile.
pub fn for_kind<'a>(kind: Kind, ctx: Context<'a>) -> Box<dyn Driver + 'a> {
    (describe(kind).make)(ctx)
}

/// The driver of a profile, even when its config cannot be read (so
/// `stop`, `delete` and `logs` still reach a container or a VM): the
/// config's `driver` line if one is legible, else the directory a driver
/// leaves in the profile ([`Description::marks`]), else native.
pub fn kind_of(p: &Profile) -> Kind {
    p.legible_driver().unwrap_or_else(|| {
        DRIVERS.iter().find(|d| d.marks.is_some_and(|m| p.dir.join(m).is_dir())).map_or(Kind::Native, |d| d.kind)
    })
}

/// Whether release `m` can run on `d` here: it pins what `d` needs for
/// this machine, and its localkube lists `d` (or no driver at all).
pub fn release_supports(m: &Manifest, d: &Description) -> bool {
    m.needs(&Target::host(), d.kind).is_ok_and(|n| d.needs.iter().all(|c| n.iter().any(|x| x.component == *c)))
        && m.component.localkube.drivers.as_ref().is_none_or(|l| l.contains(&d.kind))
}

/// The driver a new profile gets when none is asked for: the first of
/// [`DRIVERS`] that the release supports and that can run here, and why.
pub fn default_for(m: &Manifest, env: &crate::env::Environment) -> (Kind, String) {
    let mut passed = Vec::new();
    for d in DRIVERS {
        if !release_supports(m, d) {
            let what: Vec<&str> = d.needs.iter().map(|c| c.as_str()).collect();
            passed.push(if what.is_empty() {
                format!("the release is not for the {} driver", d.kind)
            } else {
                format!("the release has no {} for the {} driver", what.join(" or "), d.kind)
            });
            continue;
        }
        match (d.here)(env) {
            Ok(why) => {
                passed.push(why);
                return (d.kind, passed.join("; "));
            }
            Err(why) => passed.push(why),
        }
    }
    (Kind::Native, "the release names no driver that can run here".into())
}

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
    /// The other verified components the driver needs: unpacked trees
    /// (hypervisor, base image), or the verified blob itself (the rootfs,
    /// which the docker driver imports).
    pub trees: BTreeMap<ComponentName, PathBuf>,
    /// The VM's or container's size and accelerator, as the profile keeps them.
    pub settings: VmSettings,
    /// `--listen`: the apiserver is also reached at this address of this
    /// machine (other machines join there); loopback only otherwise.
    pub listen: Option<Ipv4Addr>,
    /// `--publish`: the server node's ports published on this machine.
    pub publish: Vec<crate::profile::Publish>,
    /// A node of another machine's cluster (`node join`): `run` is the
    /// release's agent command line, joined to this server.
    pub join: Option<JoinTarget>,
}

/// Where a joined node's server is, and what the node is called there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTarget {
    /// The server's address (`{server}`) and port (`{port}`).
    pub server: String,
    pub port: u16,
    /// The node's name (`{node}`).
    pub node: String,
}

impl Launch {
    /// Template values as `vars` made them, with a joined node's server,
    /// port and node name over them.
    pub fn joined(&self, mut vars: Vars) -> Vars {
        if let Some(j) = &self.join {
            vars.server = j.server.clone();
            vars.port = j.port;
            vars.node = j.node.clone();
        }
        vars
    }
}

/// The run section's files (k3s's config file) written into a node's data
/// directory `data`, as this machine sees it (the native data directory, or
/// a docker/qemu node's stage): each rewritten only when it differs.
pub fn place_files(run: &Run, data: &Path) -> std::result::Result<(), FsError> {
    for (path, content) in &run.files {
        let dest = data.join(path.data_relative());
        let max = kubestrap_manifest::MAX_FILE_BYTES as u64 + 1;
        if kubestrap_fskit::read_capped(&dest, max).ok().as_deref() == Some(content.as_bytes()) {
            continue;
        }
        if let Some(dir) = dest.parent() {
            kubestrap_fskit::create_dir_mode(dir, 0o700)?;
        }
        kubestrap_fskit::write_atomic(&dest, content.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// A running localkube as the lifecycle sees it: what to call it, its
/// process on this machine (when it is one), and the apiserver port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// For humans and JSON: `pid 1234`, a container id, a VM name.
    pub id: String,
    /// localkube's (or the VM's) process here, when it runs as one.
    pub pid: Option<i32>,
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
    /// Should run but does not: how it ended, if known, and whether the
    /// host went with it (a VM or container is the host; the native
    /// driver's host is this machine, which is still up).
    Crashed {
        how: String,
        host_down: bool,
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
    /// `stop --force` where the driver could not act (its engine gone): what
    /// may still run, and where.
    Unreached {
        left: String,
    },
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

/// Whether a failed check stops `start` before it fetches anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Blocking,
    /// localkube may still run, perhaps degraded: said, not refused.
    Advisory,
}

impl Check {
    pub fn new(name: &str, ok: bool, detail: &str, advice: &str, gate: Gate) -> Check {
        Check {
            name: name.to_string(),
            ok,
            detail: detail.to_string(),
            advice: (!ok).then(|| advice.to_string()),
            blocking: gate == Gate::Blocking,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("qemu: {0}")]
    Qemu(#[from] QemuError),
    #[error("docker: {0}")]
    Docker(#[from] DockerError),
    #[error("the {driver} driver cannot run this release here: {failures}")]
    Unfit { driver: Kind, failures: String },
    #[error("processes of profile {profile:?} are still running (pid {pids})")]
    StillRunning { profile: String, pids: String },
    #[error("process(es) {pids} of profile {profile:?} survived SIGKILL; {consequence}")]
    Survived { profile: String, pids: String, consequence: String },
    #[error("`{command}` failed: {why}")]
    HostTool { command: String, why: String },
    #[error(
        "profile {profile:?} is stopped, but what its localkube left on this machine could not all be removed: {left}"
    )]
    LeftOnHost { profile: String, left: String },
    #[error("the localkube monitor did not report a pid within {}s", .0.as_secs())]
    NoReport(Duration),
    #[error("localkube did not start ({how}); see {}", log.display())]
    DidNotStart { how: String, log: PathBuf },
    #[error("{}: the manifest's run.program is missing from the unpacked component", path.display())]
    ProgramMissing { path: PathBuf },
    #[error(
        "the {driver} driver runs one node per profile (its host is this machine: two nodes would share its paths and ports)"
    )]
    OneNode { driver: Kind },
    #[error("release {release} has no agent command line (run.agent): it runs one node")]
    NoAgentLine { release: String },
    #[error("cannot {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl DriverError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            DriverError::Unfit { .. } => {
                "`kubestrap doctor` says what each driver needs; or choose another with --driver".into()
            }
            DriverError::StillRunning { profile, .. } => format!("run `kubestrap stop -p {profile}` first"),
            DriverError::LeftOnHost { .. } => "remove it by hand, or run the command again".into(),
            DriverError::ProgramMissing { .. } => "run `kubestrap cache verify`".into(),
            DriverError::Qemu(QemuError::MissingArtifact(_)) => {
                "use a release whose manifest pins the VM artifacts (drivers = [\"qemu\"]), or another --driver".into()
            }
            DriverError::Docker(d) if d.kind == DockerErrorKind::Unreachable => {
                "start the Docker engine (or set DOCKER_HOST), or choose another --driver".into()
            }
            DriverError::Docker(d) if d.kind == DockerErrorKind::OtherEngine => {
                "point DOCKER_HOST (or `docker context use`) at the profile's engine; or `--force` deletes or stops it \
                 here, leaving what lives on that engine"
                    .into()
            }
            DriverError::Docker(d) if d.kind == DockerErrorKind::Unfit => {
                "use a rootful engine (`sudo`, the system's Docker or Podman), or --driver qemu".into()
            }
            DriverError::DidNotStart { log, .. } => format!("the log {} says why", log.display()),
            DriverError::Fs(e) => return e.hint(),
            _ => return None,
        })
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// What went wrong with a VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{0}")]
    Accelerator(String),
    #[error("{tool} {args}: {detail}")]
    Tool { tool: &'static str, args: String, detail: String },
    #[error("{tool} did not finish within {secs}s")]
    ToolTimedOut { tool: &'static str, secs: u64 },
    #[error("the release has no {0} for the qemu driver")]
    MissingArtifact(ComponentName),
    #[error("no record of how the VM was booted")]
    NotBooted,
    #[error("the VM's control socket: {0}")]
    Qmp(String),
    /// KVM made qemu fail or hang, and TCG did too: both attempts, said.
    #[error("{0}")]
    Attempts(String),
}

/// What the container engine said went wrong, told apart once, where its
/// answer is read (`engine::explain`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DockerError {
    pub kind: DockerErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerErrorKind {
    /// The engine cannot be reached (or used) at all.
    Unreachable,
    NoSuchContainer,
    NoSuchImage,
    NoSuchNetwork,
    /// The profile lives on another engine than the one asked for.
    OtherEngine,
    /// The engine cannot run what the release needs (a rootless engine and
    /// a localkube that needs real root).
    Unfit,
    /// Any other refusal or failure.
    Failed,
}

impl DockerError {
    pub fn new(kind: DockerErrorKind, message: impl Into<String>) -> DockerError {
        DockerError { kind, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> DockerError {
        DockerError::new(DockerErrorKind::Failed, message)
    }
}

impl DriverError {
    /// Whether this is the engine saying a thing of that kind is not there.
    pub fn is_docker(&self, kind: DockerErrorKind) -> bool {
        matches!(self, DriverError::Docker(e) if e.kind == kind)
    }
}

/// Where a file placed for a node is, once [`Driver::deliver`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the running node's data directory.
    Live,
    /// Staged: the node takes it at its next start.
    NextStart,
}

/// An agent node of a profile (clusters of more than one node): `m02`,
/// `m03`… beside the server (which is node 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentNode {
    /// Its index: 2 for `m02`. Fixes its address on the profile's network.
    pub index: u16,
}

impl AgentNode {
    /// `m02`: the node's name within the profile.
    pub fn short(&self) -> String {
        format!("m{:02}", self.index)
    }
    /// Its Kubernetes node name: `kubestrap-<profile>-m02`.
    pub fn node_name(&self, profile: &str) -> String {
        format!("kubestrap-{profile}-{}", self.short())
    }
    /// `m02` (or `kubestrap-<profile>-m02`) back to a node; the server's
    /// name and anything else are not agents.
    pub fn parse(profile: &str, s: &str) -> Option<AgentNode> {
        let short = s.strip_prefix(&format!("kubestrap-{profile}-")).unwrap_or(s);
        let n = short.strip_prefix('m')?;
        let index: u16 = n.parse().ok().filter(|_| n.len() >= 2 && n.bytes().all(|b| b.is_ascii_digit()))?;
        (2..=99).contains(&index).then_some(AgentNode { index })
    }
}

/// One node of a profile's cluster, as every driver method names it: the
/// profile's own host (node 1: its server, or for a profile that joined
/// another machine's cluster its one agent), or one of its agents, which
/// run the release's `run.agent` command line and join the server with the
/// cluster's join token, each with a state of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Server,
    Agent(AgentNode),
}

impl Node {
    /// Its Kubernetes node name (`kubestrap-<profile>`, `kubestrap-<profile>-m02`).
    pub fn name(&self, profile: &str) -> String {
        match self {
            Node::Server => format!("kubestrap-{profile}"),
            Node::Agent(a) => a.node_name(profile),
        }
    }
    /// How commands name it within the profile: `server`, `m02`.
    pub fn short(&self) -> String {
        match self {
            Node::Server => "server".into(),
            Node::Agent(a) => a.short(),
        }
    }
}

/// What runs one profile's nodes. The lifecycle calls, for each node:
/// `create` (idempotent) → `start` → `running` while it waits for ready;
/// `status` at any time; `stop`; `delete` before the profile is removed
/// (the server's last: it removes what every node shares). A driver that
/// runs one node per profile refuses an agent ([`DriverError::OneNode`]).
pub trait Driver: Sync {
    fn kind(&self) -> Kind;
    /// What this driver needs on this machine, checked.
    fn check(&self, manifest: Option<&Manifest>) -> Vec<Check>;
    /// What must hold for a start to go on, checked before anything is
    /// fetched and cheaply (every start runs it): `check` less what only
    /// `doctor` needs to see (running the hypervisor, the storage driver).
    fn prerequisites(&self, _p: &Profile, manifest: &Manifest) -> Vec<Check> {
        self.check(Some(manifest))
    }
    /// Whether it runs agent nodes beside the server.
    fn runs_agents(&self) -> bool {
        false
    }
    /// Addresses the apiserver certificate must carry besides the defaults.
    fn extra_sans(&self, _p: &Profile) -> Vec<String>;
    /// Where this machine reaches the apiserver of `p` running `run`
    /// (127.0.0.1 unless the driver gives localkube an address of its own).
    fn address(&self, _p: &Profile, _run: &Run) -> Ipv4Addr {
        Ipv4Addr::LOCALHOST
    }
    /// Where this machine reaches the server node's own ports (its
    /// NodePorts) directly, or why it cannot (only the API is forwarded).
    fn node_reach(&self, _p: &Profile, _cfg: &crate::profile::Config) -> std::result::Result<Ipv4Addr, String> {
        Err("only the API is forwarded to this machine".into())
    }
    /// The template values the server's args and pki-files paths are
    /// rendered with, as localkube sees its paths.
    fn vars(&self, launch: &Launch) -> Vars;
    /// The same values as the host sees them: where kubestrap places files
    /// (pki-files, image archives) for localkube to find at `vars`' paths.
    fn host_vars(&self, launch: &Launch) -> Vars {
        self.vars(launch)
    }
    /// The host directory that becomes the server's `{data}` (native: the
    /// directory itself; a VM: a staging tree copied in at boot).
    fn host_data(&self, profile: &Profile) -> PathBuf {
        profile.data()
    }
    /// Makes (or repairs, or keeps when it would be the same) what the node
    /// needs before it starts: directories with their modes, a VM's disk,
    /// an agent's container. Never starts it: an agent's may be made while
    /// the server comes up.
    fn create(&self, launch: &Launch, node: Node) -> Result<()>;
    /// Launches the node detached; returns once it is running (not ready).
    /// The server's refuses if anything of the profile still runs.
    fn start(&self, launch: &Launch, node: Node) -> Result<Host>;
    /// Whether the node's localkube still runs (checked while waiting for ready).
    fn running(&self, p: &Profile, node: Node) -> Result<bool> {
        Ok(matches!(self.status(p, node)?, HostState::Running(_) | HostState::Stopping(_)))
    }
    /// Stops gracefully (the signal, then a kill after the timeout; then
    /// whatever localkube left behind). Returns how it went.
    fn stop(&self, p: &Profile, node: Node, how: Stop) -> Result<StopOutcome>;
    /// A start found the server running and keeps it: a stop interrupted
    /// before it acted no longer applies.
    fn adopt(&self, profile: &Profile) -> Result<()>;
    fn status(&self, p: &Profile, node: Node) -> Result<HostState>;
    /// Removes the node's host and its state (after `stop`). The server's
    /// also removes what `create` made outside the profile directory (and
    /// any agent left there) and makes sure nothing of the profile still runs.
    fn delete(&self, p: &Profile, node: Node) -> Result<()>;
    /// What `delete --force` may leave behind when this driver could not
    /// remove it, named so the user can.
    fn leftovers(&self, _profile: &Profile) -> String {
        "nothing outside the profile's directory".into()
    }
    /// The last `n` lines of the node's localkube log.
    fn log_tail(&self, p: &Profile, node: Node, n: usize) -> Vec<String>;
    /// Writes what the node's localkube logs from now on to `out`, until
    /// writing fails.
    fn follow_log(&self, p: &Profile, node: Node, out: &mut dyn Write) -> Result<()>;

    /// Puts a file kubestrap placed in the server's host stage (`rel`, under
    /// [`Driver::host_data`]: an image archive) into the running node's
    /// `{data}` now, so localkube sees it while it runs; atomically (a
    /// dot-named part renamed into place: localkube passes dot files over).
    /// A node that is not running, or a driver that copies its stage in only
    /// at boot, takes it at its next start instead.
    fn deliver(&self, _p: &Profile, _node: Node, _rel: &Path) -> Result<Delivery> {
        Ok(Delivery::NextStart)
    }

    /// Copies the stopped node's state to `dest`, which must not exist
    /// (upgrade's safety net: a newer release may rewrite what every node
    /// keeps, as containerd migrates its store). Returns what was copied.
    fn snapshot(&self, p: &Profile, node: Node, dest: &Path) -> Result<kubestrap_fskit::Copied>;
    /// Puts a snapshot back in place of the stopped node's state.
    fn restore(&self, p: &Profile, node: Node, src: &Path) -> Result<()>;
}
