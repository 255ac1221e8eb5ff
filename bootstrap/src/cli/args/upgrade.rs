//! The arguments of `upgrade`, `rollback`, `self-update` and `config`.

use clap::{Args, Subcommand};

use std::path::PathBuf;

use super::{NetArgs, ProfileArgs, parse_wait};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// The release to upgrade to: a signed manifest (file or URL) [default: the channel index's newest].
    #[arg(long, value_name = "FILE|URL", conflicts_with = "from_bundle")]
    pub manifest: Option<String>,
    /// The release to upgrade to: an offline bundle (no network).
    #[arg(long, value_name = "FILE")]
    pub from_bundle: Option<PathBuf>,
    /// The channel index [env: KUBESTRAP_CHANNEL_URL; config: channel-url].
    #[arg(long, value_name = "URL")]
    pub channel_url: Option<String>,
    /// Only say whether a newer release exists: exit 0 none, 3 available (any other code: cannot tell, and why).
    #[arg(long, conflicts_with_all = ["dry_run", "manifest", "from_bundle"])]
    pub check: bool,
    /// Print the plan (each component old → new, bytes to download); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow what the skew rules refuse (a skipped minor, a downgrade); says what may break.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitFlags,
    /// Accept an expired manifest or index (warns).
    #[arg(long)]
    pub allow_expired: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Roll back even without a snapshot of the older release's state.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitFlags,
}

/// How `upgrade` and `rollback` wait: for the profile's lock, and for the
/// release they move to.
#[derive(Args, Debug)]
pub struct WaitFlags {
    /// How long the new release may take to become ready before it is rolled back.
    #[arg(long, default_value = "120s", value_parser = parse_wait)]
    pub wait_timeout: std::time::Duration,
    /// Fail at once if another kubestrap command holds this profile.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug)]
pub struct SelfUpdateArgs {
    /// Only say whether a newer kubestrap exists: exit 0 none, 3 available.
    #[arg(long, conflicts_with = "rollback")]
    pub check: bool,
    /// Put back the kubestrap the last self-update replaced.
    #[arg(long)]
    pub rollback: bool,
    /// The channel index [env: KUBESTRAP_CHANNEL_URL; config: channel-url].
    #[arg(long, value_name = "URL")]
    pub channel_url: Option<String>,
    #[arg(long)]
    pub allow_expired: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print a setting (channel-url).
    Get { key: String },
    /// Set a setting (channel-url URL).
    Set { key: String, value: String },
    /// Remove a setting (back to its default).
    Unset { key: String },
}
