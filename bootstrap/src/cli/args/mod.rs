//! The command line: clap definitions only. `main` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kubestrap_manifest::{Driver, Target};

use super::render::Output;

const EXAMPLES: &str = "\
Examples:
  kubestrap start                      start (or resume) the default cluster
  kubestrap start -p dev --port 9443   a second cluster named dev
  kubestrap kubectl -- get ns          the pinned kubectl, pointed at the cluster
  kubestrap status -o json             machine-readable status (exit code: bitmask)
  kubestrap stop                       stop, keeping the cluster's state
  kubestrap delete --all --purge       remove every cluster and the download cache
  kubestrap fetch --manifest ./m.toml  download and verify what a manifest needs
  kubestrap completions bash > /etc/bash_completion.d/kubestrap";

#[derive(Parser, Debug)]
#[command(
    name = "kubestrap",
    version,
    about = "A local Kubernetes cluster in one command, from one file",
    long_about = "A local Kubernetes cluster in one command, from one file.\n\nEvery artifact is pinned by sha256 and size in a signed manifest and verified before use.",
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Output format: human text, or one JSON object per line for scripts.
    #[arg(short, long, value_enum, default_value = "text", global = true)]
    pub output: Output,
    /// kubestrap's state directory [env: KUBESTRAP_HOME; default: $XDG_DATA_HOME/kubestrap].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create or resume a cluster and point kubectl at it.
    #[command(
        after_help = "Examples:\n  kubestrap start\n  kubestrap start -p dev --manifest ./manifest.toml --port 9443\n  kubestrap start --offline\n  kubestrap start -p vm --driver qemu --cpus 4 --memory 4096"
    )]
    Start(StartArgs),
    /// Stop a cluster, keeping its state. A VM (qemu driver) is suspended:
    /// its memory is saved and `start` resumes it where it was.
    #[command(after_help = "Examples:\n  kubestrap stop\n  kubestrap stop -p dev --shutdown")]
    Stop(StopArgs),
    /// Delete a cluster and its kubeconfig entries.
    #[command(
        after_help = "Examples:\n  kubestrap delete\n  kubestrap delete -p dev\n  kubestrap delete --all --purge"
    )]
    Delete(DeleteArgs),
    /// Show host, localkube, apiserver, kubeconfig and node state. Exit code: 1 host down, 2 localkube down, 4 apiserver not ready, 8 an agent node down or not Ready (added).
    Status(ProfileArgs),
    /// Check what a start needs on this machine (ports, disk, kubeconfig,
    /// clock, and the driver's own needs); says what to do for each failure.
    /// Exit code: 0 all good, 44 something fails.
    #[command(
        after_help = "Examples:\n  kubestrap doctor\n  kubestrap doctor -p dev -o json\n  kubestrap doctor --manifest ./stable-7.toml"
    )]
    Doctor(DoctorArgs),
    /// Manage profiles (clusters).
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// A cluster's nodes: add, list, delete (more than one node: docker driver).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Run the pinned kubectl with this profile's context.
    #[command(after_help = "Examples:\n  kubestrap kubectl -- get pods -A\n  kubestrap kubectl -p dev -- version")]
    Kubectl {
        #[arg(short, long, default_value = "kubestrap")]
        profile: String,
        /// Arguments for kubectl (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show localkube's log.
    Logs {
        #[arg(short, long, default_value = "kubestrap")]
        profile: String,
        /// Keep printing as the log grows.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Download and verify every artifact a manifest needs, into the cache.
    #[command(
        after_help = "Examples:\n  kubestrap fetch --manifest ./manifest.toml\n  kubestrap fetch --manifest https://mirror.example/stable/manifest.toml --target linux-aarch64\n  kubestrap fetch --manifest ./manifest.toml --offline   # list what is missing"
    )]
    Fetch(FetchArgs),
    /// Inspect and maintain the download cache.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Check, sign and verify manifests; make signing keys.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// Sign and verify root-signed key lists (keys.toml).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Pin extra signing keys in this kubestrap home (private channels).
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Move a cluster to a newer release: verified first, snapshotted,
    /// health-checked, rolled back by itself if it does not come up.
    #[command(
        after_help = "Examples:\n  kubestrap upgrade --check               is a newer release in the channel? (exit 3: yes)\n  kubestrap upgrade --dry-run             what would change, and what it downloads\n  kubestrap upgrade                       to the channel's newest release\n  kubestrap upgrade --manifest ./m.toml   to a given signed manifest\n  kubestrap upgrade --from-bundle ./kubestrap-0.2.0-linux-x86_64"
    )]
    Upgrade(Box<UpgradeArgs>),
    /// Go back to the release a cluster ran before its last upgrade, with the state it had then.
    Rollback(RollbackArgs),
    /// List and remove the snapshots upgrades and rollbacks take.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Replace this kubestrap with the newer one the channel index names (verified).
    #[command(name = "self-update")]
    SelfUpdate(SelfUpdateArgs),
    /// Read and set kubestrap's settings (the channel index URL).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Load your own container image archives into a cluster, offline.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Where this machine reaches a Service of the cluster: a URL per port,
    /// from the node's address and the Service's NodePort (a ClusterIP
    /// Service is reached from pods only: the error says how to expose it).
    #[command(
        after_help = "Examples:\n  kubestrap service web\n  kubestrap service web -n shop --url\n  curl \"$(kubestrap service web --url --port http)\"\n  kubestrap service web --open"
    )]
    Service(ServiceArgs),
    /// Make, inspect, verify and extract offline bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Install from an offline bundle: import its payload into the store and
    /// write kubestrap (without the payload) to a bin directory.
    #[command(
        after_help = "Examples:\n  ./kubestrap-0.1.0-linux-x86_64 install\n  ./kubestrap-0.1.0-linux-x86_64 install --bin-dir /usr/local/bin\n  kubestrap install --from-bundle ./kubestrap-0.1.0-linux-x86_64"
    )]
    Install(InstallArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command to DIR.
    #[command(after_help = "Examples:\n  kubestrap man | man -l -\n  kubestrap man --out ~/.local/share/man/man1")]
    Man {
        /// Write kubestrap.1 and a kubestrap-<command>.1 per command here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Internal: the parent of a running localkube (started by `start`).
    #[command(name = "__monitor", hide = true)]
    Monitor { run_dir: PathBuf },
    /// Internal: runs a one-instruction KVM guest (the qemu driver's probe).
    #[command(name = "__kvm-probe", hide = true)]
    KvmProbe,
    /// Internal: which SHA-256 code runs on this CPU (the benchmarks print it).
    #[command(name = "__hash-info", hide = true)]
    HashInfo,
    /// Internal: the home layout this kubestrap understands (asked by `self-update`).
    #[command(name = "__layout", hide = true)]
    Layout,
}

#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The cluster's name.
    #[arg(short, long, default_value = "kubestrap")]
    pub profile: String,
}

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// The Service's name.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// One of its ports, by name or number [default: every TCP port].
    #[arg(long)]
    pub port: Option<String>,
    /// Print only the URLs, one per line (for scripts: `curl "$(kubestrap service web --url)"`).
    #[arg(long)]
    pub url: bool,
    /// Open each URL in this machine's browser (xdg-open).
    #[arg(long)]
    pub open: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ManifestSource {
    /// The manifest: a file path or an http(s) URL; its signature is read from
    /// `<manifest>.minisig`.
    #[arg(long, value_name = "FILE|URL", env = "KUBESTRAP_MANIFEST")]
    pub manifest: Option<String>,
    /// An offline bundle (a kubestrap with its payload appended): its
    /// manifest and artifacts, no network [default: this kubestrap's own
    /// payload, when it carries one].
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    pub from_bundle: Option<PathBuf>,
    /// Accept an expired manifest or key list (warns).
    #[arg(long)]
    pub allow_expired: bool,
}

#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Never touch the network; fail listing what is missing from the cache.
    #[arg(long)]
    pub offline: bool,
    /// An extra trusted CA certificate (PEM) for mirrors behind TLS interception.
    #[arg(long, env = "KUBESTRAP_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Downloads at once (1-64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Give up on a download slower than this many bytes per second over
    /// --speed-time (it resumes on the next attempt); 0 turns it off.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub speed_limit: u64,
    /// The window for --speed-limit (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub speed_time: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Shut down instead of suspending (a VM: ACPI power-off, then a kill
    /// after the stop timeout); the next start boots afresh, with the data.
    #[arg(long)]
    pub shutdown: bool,
    /// Where the driver cannot act (its container engine is gone, or the
    /// profile lives on another one): warn, name what may still run where,
    /// and exit 0.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// The driver to check [default: the profile's, else native].
    #[arg(long, value_parser = parse_start_driver)]
    pub driver: Option<Driver>,
    /// The apiserver port to check [default: the profile's, else 8443].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// The release to check for (a file or URL) [default: the profile's, else this home's newest].
    #[arg(long, value_name = "FILE|URL")]
    pub manifest: Option<String>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Where localkube runs: docker (a container of this machine's Docker or
    /// Podman engine, from the release's pinned rootfs), native (a host
    /// process; Linux) or qemu (a VM of the release's pinned hypervisor and
    /// base image; `stop` suspends it) [default for a new profile: the first
    /// of docker, native, qemu that the release supports and that can run
    /// here; `start` says which and why].
    #[arg(long, value_parser = parse_start_driver)]
    pub driver: Option<Driver>,
    #[command(flatten)]
    pub source: ManifestSource,
    #[command(flatten)]
    pub net: NetArgs,
    /// The apiserver port on 127.0.0.1 (1-65535) [default: 8443, or the next free one].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// How long to wait for the apiserver to become ready (1s to 24h, e.g. 90s, 5m).
    #[arg(long, default_value = "120s", value_parser = parse_wait)]
    pub wait_timeout: std::time::Duration,
    /// Do not switch kubectl's current context to this cluster.
    #[arg(long)]
    pub keep_context: bool,
    /// Ready once the apiserver and the server's node are, without waiting
    /// for the release's system workloads (k3s: CoreDNS) to be available.
    #[arg(long)]
    pub no_wait_system: bool,
    /// Fail at once if another kubestrap command holds this profile.
    #[arg(long)]
    pub no_wait: bool,
    /// Validity of the cluster certificates made on first start, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u16).range(1..))]
    pub cert_days: u16,
    /// The VM's CPUs (qemu driver) [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub cpus: Option<u16>,
    /// The VM's memory in MiB (qemu driver) [default: 2048].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(256..=1048576))]
    pub memory: Option<u32>,
    /// The VM's accelerator (qemu driver): kvm, hvf, whpx or tcg [default: the machine's own, else tcg].
    #[arg(long)]
    pub accel: Option<crate::driver::qemu::cmdline::Accel>,
    /// How many nodes: one server and N-1 agents that join it (docker and
    /// qemu drivers; the release must say how an agent runs). Adds nodes to an
    /// existing cluster, never removes any [default: as it has, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=99))]
    pub nodes: Option<u16>,
    /// Publish the server node's port NODE_PORT (a NodePort, say) on this
    /// machine's 127.0.0.1:HOST_PORT, and on the --listen address (docker
    /// and qemu drivers; repeat for more). Kept across stop and start;
    /// given again, replaces the kept ones.
    #[arg(long, value_name = "HOST_PORT:NODE_PORT", conflicts_with = "no_publish")]
    pub publish: Vec<crate::profile::Publish>,
    /// Publish none of the ports a earlier --publish kept.
    #[arg(long)]
    pub no_publish: bool,
    /// Also serve the cluster's API at this address of this machine (an
    /// IPv4 address other machines reach it at), so that they can join
    /// (`kubestrap node join-command`). Without it the API is on 127.0.0.1 only.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_listen)]
    pub listen: Option<std::net::Ipv4Addr>,
}

/// A specific address: the certificate must name the one other machines use.
fn parse_listen(s: &str) -> Result<std::net::Ipv4Addr, String> {
    let a: std::net::Ipv4Addr = s.parse().map_err(|_| format!("expected an IPv4 address, got {s:?}"))?;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
        return Err(format!(
            "{a}: expected this machine's address on the network other machines reach it on (not 0.0.0.0, loopback or multicast)"
        ));
    }
    Ok(a)
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Place image archives where localkube imports them (no registry
    /// needed): `docker save`, `podman save` or OCI layout tarballs, plain,
    /// gzip or zstd. Each is checked to be one, copied atomically and named
    /// by its sha256; loading the same archive twice changes nothing. An
    /// argument that is no file but an image of the local Docker or Podman
    /// engine (NAME[:TAG]) is saved from it first: this machine's platform
    /// only. On a running docker cluster every node gets it at once.
    #[command(
        after_help = "Examples:\n  kubestrap image load myapp:1.0            # from the local engine (docker save)\n  docker save myapp:1.0 -o myapp.tar && kubestrap image load myapp.tar\n  kubestrap image load -p dev app.tar.zst tools.oci.tar"
    )]
    Load {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(required = true, value_name = "FILE|IMAGE")]
        files: Vec<PathBuf>,
    },
    /// The image archives of a cluster: the release's and your own.
    List(ProfileArgs),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// A profile's snapshots, with the release they belong to and their size.
    List(ProfileArgs),
    /// Remove a snapshot.
    Remove {
        #[command(flatten)]
        profile: ProfileArgs,
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Where to put kubestrap [default: ~/.local/bin].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The bundle to install from [default: this kubestrap's own payload].
    #[arg(long, value_name = "FILE")]
    pub from_bundle: Option<PathBuf>,
    /// Accept an expired manifest (warns).
    #[arg(long)]
    pub allow_expired: bool,
}

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write a bundle: a kubestrap followed by a manifest and every artifact it pins.
    #[command(
        after_help = "Examples:\n  kubestrap bundle create --manifest ./manifest.toml --out kubestrap-0.1.0-linux-x86_64\n  kubestrap bundle create --manifest ./manifest.toml --artifacts ./mirror --target linux-aarch64 --stub ./kubestrap-aarch64 --out kubestrap-0.1.0-linux-aarch64"
    )]
    Create(Box<BundleCreateArgs>),
    /// Show what a bundle holds and who signed it (nothing is recorded).
    Inspect {
        file: PathBuf,
        #[arg(long)]
        allow_expired: bool,
    },
    /// Check every entry of a bundle against its signed manifest.
    Verify {
        file: PathBuf,
        #[arg(long)]
        allow_expired: bool,
    },
    /// Write a bundle's verified manifest, key lists and artifacts into DIR.
    Extract {
        file: PathBuf,
        dir: PathBuf,
        #[arg(long)]
        allow_expired: bool,
    },
}

#[derive(Args, Debug)]
pub struct BundleCreateArgs {
    /// The signed manifest (file or URL) the bundle carries.
    #[arg(long, value_name = "FILE|URL")]
    pub manifest: String,
    /// Machines the bundle is for (repeat) [default: this one].
    #[arg(long = "target", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// Drivers the bundle is for (repeat) [default: every driver the manifest's localkube supports].
    #[arg(long = "driver", value_parser = parse_driver)]
    pub drivers: Vec<Driver>,
    /// Take artifacts only from this home's cache (no download).
    #[arg(long, conflicts_with = "artifacts")]
    pub from_cache: bool,
    /// Take artifacts from this directory (named by sha256, or as the last
    /// part of their URL) before downloading.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// The kubestrap executable to put in front [default: this one, without its own payload].
    #[arg(long, value_name = "PATH")]
    pub stub: Option<PathBuf>,
    /// Where to write the bundle.
    #[arg(short = 'O', long = "out", value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    #[arg(long)]
    pub allow_expired: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Delete every profile.
    #[arg(long)]
    pub all: bool,
    /// Also remove the download cache (blobs and component trees).
    #[arg(long)]
    pub purge: bool,
    /// Delete the profile's files even when its driver cannot reach what
    /// it made (a Docker engine that is gone): what is left is named.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// List profiles with their state.
    List,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    pub source: ManifestSource,
    /// The machine the artifacts are for [default: this one].
    #[arg(long, value_parser = parse_target)]
    pub target: Option<Target>,
    /// Which driver's artifacts to fetch.
    #[arg(long, default_value = "native", value_parser = parse_driver)]
    pub driver: Driver,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// List cached artifacts, their sizes and which manifests use them.
    List,
    /// Re-hash everything in the cache; remove what is corrupt.
    Verify,
    /// Fetch (if needed) and unpack every component a manifest needs on this machine.
    Unpack {
        #[command(flatten)]
        source: ManifestSource,
        #[arg(long, default_value = "native", value_parser = parse_driver)]
        driver: Driver,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Remove what no profile or newest manifest references.
    Prune {
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

mod node;
mod release;
mod upgrade;

pub use node::NodeCmd;
pub use release::*;
pub use upgrade::{ConfigCmd, RollbackArgs, SelfUpdateArgs, UpgradeArgs};

fn parse_driver(s: &str) -> Result<Driver, String> {
    s.parse()
}

/// The drivers `start` can run: those this kubestrap has.
fn parse_start_driver(s: &str) -> Result<Driver, String> {
    let d: Driver = s.parse()?;
    if crate::driver::DRIVERS.iter().any(|x| x.kind == d) {
        Ok(d)
    } else {
        let names: Vec<&str> = crate::driver::DRIVERS.iter().map(|d| d.kind.as_str()).collect();
        Err(format!("the {d} driver is not part of this kubestrap; available: {}", names.join(", ")))
    }
}

pub(super) fn parse_target(s: &str) -> Result<Target, String> {
    s.parse()
}

/// `90s`, `5m`, `1h 30m`, `500ms` (humantime), or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(std::time::Duration::from_secs).map_err(|_| format!("{s:?} is too large"));
    }
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 90s or 5m, got {s:?} ({e})"))
}

/// A wait a user can mean: 1 s to 24 h.
pub fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!("expected 1s to 24h, got {s:?}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The help of `start --driver` names every driver, and the default
    /// choice in the order the code makes it; `status` names every bit of
    /// its exit code.
    #[test]
    fn help_agrees_with_the_drivers_and_the_status_bits() {
        let cli = Cli::command();
        let start = cli.find_subcommand("start").unwrap();
        let help = |name: &str| {
            let a = start.get_arguments().find(|a| a.get_id() == name).unwrap();
            a.get_long_help().or(a.get_help()).unwrap().to_string()
        };
        let order: Vec<&str> = crate::driver::DRIVERS.iter().map(|d| d.kind.as_str()).collect();
        let driver = help("driver");
        assert!(driver.contains(&format!("the first of {}", order.join(", "))), "{driver}");
        for d in &order {
            assert!(driver.contains(&format!("{d} (")), "--driver help does not describe {d}: {driver}");
        }
        assert!(help("nodes").contains("docker and qemu drivers"));
        let status = cli.find_subcommand("status").unwrap().get_about().unwrap().to_string();
        let st = crate::cluster::status::Status::BITS;
        for (bit, what) in st {
            assert!(status.contains(&format!("{bit} {what}")), "status help lacks bit {bit}: {status}");
        }
    }

    /// An option clap gives a default must not say it again in its doc
    /// (`--help` would print `[default: x] [default: x]`); every subcommand
    /// with arguments that a new user meets has an example.
    #[test]
    fn help_says_each_default_once() {
        fn walk(cmd: &clap::Command, path: &str, bad: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let doc =
                    [a.get_help(), a.get_long_help()].into_iter().flatten().map(|h| h.to_string()).collect::<String>();
                if !a.get_default_values().is_empty() && doc.contains("[default:") {
                    bad.push(format!("{path} --{}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), bad);
            }
        }
        let mut bad = Vec::new();
        walk(&Cli::command(), "kubestrap", &mut bad);
        assert!(bad.is_empty(), "defaults said twice in --help: {bad:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        assert!(parse_duration("soon").is_err());
        assert!(parse_wait("0s").is_err() && parse_wait("2d").is_err() && parse_wait("5m").is_ok());
    }
}
