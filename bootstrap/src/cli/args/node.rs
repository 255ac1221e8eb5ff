//! The arguments of `node`: a cluster's own nodes, and joining another
//! machine's cluster.

use std::path::PathBuf;

use clap::Subcommand;
use kubestrap_manifest::Driver;

use super::{ManifestSource, NetArgs, ProfileArgs, parse_wait};

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Add agent nodes to a running cluster; waits until each is Ready.
    #[command(after_help = "Examples:\n  kubestrap node add\n  kubestrap node add -p dev --count 2")]
    Add {
        #[command(flatten)]
        profile: ProfileArgs,
        /// How many nodes to add.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=98))]
        count: u16,
        /// How long to wait for the nodes to become Ready [default: the release's agent ready-timeout-s].
        #[arg(long, value_parser = parse_wait)]
        wait_timeout: Option<std::time::Duration>,
    },
    /// List the cluster's nodes: host state and Ready.
    #[command(after_help = "Examples:\n  kubestrap node list\n  kubestrap node list -p dev -o json")]
    List {
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Remove an agent node: drained with the pinned kubectl, then its
    /// host, its state and its Node object removed.
    #[command(
        after_help = "Examples:\n  kubestrap node delete m02\n  kubestrap node delete -p dev kubestrap-dev-m03 --force"
    )]
    Delete {
        #[command(flatten)]
        profile: ProfileArgs,
        /// The node: `m02` or its node name `kubestrap-<profile>-m02`.
        name: String,
        /// Do not drain it first (and remove it even when the cluster is stopped).
        #[arg(long)]
        force: bool,
    },
    /// Print the one line a second machine runs to join this cluster (it
    /// carries the join token: a secret). The cluster must serve its API at
    /// an address other machines reach (`start --listen ADDRESS`).
    #[command(after_help = "Examples:\n  kubestrap node join-command\n  kubestrap node join-command -p dev > join.sh")]
    JoinCommand {
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Join another machine's cluster as a node: this profile runs only an
    /// agent, on any driver. The server's CA must have the sha256 the join
    /// line names (nothing is trusted on first use).
    #[command(
        after_help = "Examples:\n  printf '%s\\n' \"$TOKEN\" | kubestrap node join https://192.168.1.20:8443 --ca-sha256 9f86d0… --token-file -\n  kubestrap node join https://10.0.0.5:8443 --token-file ./token --driver docker -p work"
    )]
    Join {
        #[command(flatten)]
        profile: ProfileArgs,
        /// The server: https://HOST:PORT.
        server: String,
        /// The join token's file (`-`: standard input). Never on the command line.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The server CA certificate's sha256 [default: the token's K10 prefix].
        #[arg(long, value_name = "SHA256")]
        ca_sha256: Option<String>,
        /// This node's name in the cluster [default: <hostname>-<profile>].
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        driver: Option<Driver>,
        #[command(flatten)]
        source: ManifestSource,
        #[command(flatten)]
        net: NetArgs,
        /// How long to wait for the node to become Ready.
        #[arg(long, default_value = "120s", value_parser = parse_wait)]
        wait_timeout: std::time::Duration,
        /// Fail at once if another kubestrap command holds the profile.
        #[arg(long)]
        no_wait: bool,
    },
    /// Leave the cluster this profile joined: its agent stopped and removed,
    /// its Node object removed from the server, the profile deleted.
    #[command(after_help = "Examples:\n  kubestrap node leave\n  kubestrap node leave -p work --force")]
    Leave {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Delete the profile even when the server cannot be reached.
        #[arg(long)]
        force: bool,
    },
    /// Show an agent node's log.
    Logs {
        #[command(flatten)]
        profile: ProfileArgs,
        name: String,
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
}
