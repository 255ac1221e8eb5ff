//! The arguments of the release tooling: `manifest`, `keys` and `trust`.

use super::{NetArgs, parse_duration, parse_target};
use clap::{Args, Subcommand};
use kubestrap_manifest::Target;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ManifestCmd {
    /// Parse and validate a manifest; print a summary (exit 2 on errors).
    Check { file: PathBuf },
    /// Write an unsigned manifest pinning local files by sha256 and size.
    #[command(after_help = "Examples:
  kubestrap manifest new --out m.toml --channel dev --manifest-version 3 --kubernetes 1.33.1 \\
    --component kubectl@1.33.1=/usr/bin/kubectl \\
    --component localkube@1.33.1+k3s1=./k3s.tar.zst#k3s --drivers localkube=native,qemu \\
    --url localkube=https://mirror.example/k3s.tar.zst --run ./run.toml
  kubestrap manifest sign --key release.key m.toml")]
    New(Box<NewManifestArgs>),
    /// Write an unsigned release manifest for k3s and kubectl from upstream's
    /// own checksum files and sizes (or a mirror laid out like upstream).
    #[command(after_help = "Examples:
  kubestrap manifest generate --kubernetes 1.34.3 --k3s v1.34.3+k3s1 --images --out stable-7.toml \\
    --channel stable --manifest-version 7 --pins manifests/channel/pins.toml --verify
  kubestrap manifest generate --kubernetes 1.33.2 --k3s v1.33.2+k3s1 --kubectl v1.34.3 \\
    --target linux-x86_64 --target darwin-aarch64 --base-url https://mirror.example/upstream --out m.toml")]
    Generate(Box<GenerateArgs>),
    /// Write an unsigned channel index naming each channel's newest manifest
    /// and the newest kubestrap per target (sign it like a manifest).
    #[command(after_help = "Example:
  kubestrap manifest index --out site/index.toml --index-version 12 \\
    --channel site/stable/7/manifest.toml --kubestrap linux-x86_64=site/bin/kubestrap-0.2.0-linux-x86_64
  kubestrap manifest sign --key release.key site/index.toml")]
    Index(Box<IndexArgs>),
    /// Make a signing key pair (minisign format) in DIR.
    #[command(
        after_help = "The secret key is encrypted with a password from the prompt or KUBESTRAP_KEY_PASSWORD.\nExample:\n  kubestrap manifest keygen --out ./keys --name release-2026"
    )]
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "kubestrap")]
        name: String,
        /// Store the secret key without a password (CI and development only).
        #[arg(long)]
        unencrypted: bool,
    },
    /// Sign FILE with KEY, writing FILE.minisig.
    Sign {
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        file: PathBuf,
        /// The trusted comment [default: file name and time].
        #[arg(long)]
        comment: Option<String>,
    },
    /// Make a manifest this home's default (verified, then kept): what a new
    /// profile's `start`, and `doctor`, use when no --manifest is named.
    /// Without one, show the default.
    #[command(after_help = "Examples:
  kubestrap manifest default ./dev/manifest.toml
  kubestrap manifest default https://mirror.example/kubestrap/stable/7/manifest.toml
  kubestrap manifest default            # which one it is")]
    Default {
        /// The manifest: a file or an http(s) URL (its signature beside it, `.minisig`).
        #[arg(value_name = "FILE|URL")]
        manifest: Option<String>,
        /// Accept an expired manifest (warns).
        #[arg(long)]
        allow_expired: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Verify FILE against FILE.minisig and the trusted keys; show signer and freshness.
    Verify {
        file: PathBuf,
        #[arg(long)]
        allow_expired: bool,
    },
}

#[derive(Args, Debug)]
pub struct NewManifestArgs {
    /// Where to write the manifest.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, default_value = "dev")]
    pub channel: String,
    /// The manifest's `version` (strictly increasing per channel).
    #[arg(long, default_value_t = 1)]
    pub manifest_version: u64,
    /// The Kubernetes release, e.g. 1.33.1.
    #[arg(long)]
    pub kubernetes: semver::Version,
    /// How long it stays valid from now (e.g. 180d).
    #[arg(long, default_value = "180d", value_parser = parse_duration)]
    pub valid_for: std::time::Duration,
    /// Which kubestrap versions may use it.
    #[arg(long, default_value = ">=0.1.0")]
    pub requires_bootstrap: semver::VersionReq,
    /// The machine the files are for [default: this one].
    #[arg(long, value_parser = parse_target)]
    pub target: Option<Target>,
    /// NAME@VERSION=FILE[#BIN]: pin FILE (unpacked by its extension:
    /// .tar.gz, .tar.zst, .zip, else a plain executable) as component NAME
    /// (kubectl, localkube, hypervisor, base-image); BIN is the executable
    /// inside an archive.
    #[arg(long = "component", value_name = "NAME@VERSION=FILE[#BIN]", required = true)]
    pub components: Vec<String>,
    /// NAME=URL: where the component is downloaded from (repeat for
    /// mirrors) [default: file://FILE].
    #[arg(long = "url", value_name = "NAME=URL")]
    pub urls: Vec<String>,
    /// NAME=D1,D2: the drivers that need a component [default: all].
    #[arg(long = "drivers", value_name = "NAME=DRIVERS")]
    pub drivers: Vec<String>,
    /// localkube's run section, a TOML file (program, args, ready,
    /// stop-signal, stop-timeout-s, pki-files).
    #[arg(long, value_name = "FILE")]
    pub run: PathBuf,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Where to write the index; relative URLs in it are relative to it.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The index's own version (strictly increasing).
    #[arg(long)]
    pub index_version: u64,
    /// A channel's newest manifest, a file inside the index's directory
    /// (repeat); its channel and version are read from it.
    #[arg(long = "channel", value_name = "MANIFEST")]
    pub channels: Vec<PathBuf>,
    /// TARGET=FILE: the kubestrap executable for a target, inside the
    /// index's directory (repeat).
    #[arg(long = "kubestrap", value_name = "TARGET=FILE")]
    pub executables: Vec<String>,
    /// The kubestrap version those executables are [default: this one].
    #[arg(long)]
    pub kubestrap_version: Option<semver::Version>,
    /// How long it stays valid (published is now, or SOURCE_DATE_EPOCH).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub valid_for: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Where to write the manifest.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The Kubernetes release, e.g. 1.34.3.
    #[arg(long)]
    pub kubernetes: semver::Version,
    /// The k3s release of it, e.g. v1.34.3+k3s1.
    #[arg(long, value_name = "vX.Y.Z+k3sN")]
    pub k3s: String,
    /// The kubectl release (within one minor of --kubernetes) [default: v<kubernetes>].
    #[arg(long, value_name = "vX.Y.Z")]
    pub kubectl: Option<String>,
    /// A host the manifest serves (repeat) [default: linux-x86_64, linux-aarch64].
    #[arg(long = "target", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// A mirror laid out like upstream: {URL}/dl.k8s.io/release/... and
    /// {URL}/github.com/k3s-io/k3s/releases/download/...; listed first in
    /// the manifest, before upstream.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Add k3s's air-gap image archive per target (the `images` component).
    #[arg(long)]
    pub images: bool,
    /// Download every artifact and hash it (else sizes come from HEAD).
    #[arg(long)]
    pub verify: bool,
    /// The project's own artifacts for the docker and qemu drivers, as
    /// ci/vm/build.sh and ci/docker/build.sh write them (hypervisor-*,
    /// base-*, rootfs-*.tar.zst), pinned from these files.
    #[arg(long, value_name = "DIR", requires = "driver_artifacts_url")]
    pub driver_artifacts: Option<PathBuf>,
    /// Where those files are served (the manifest's URL for each is URL/NAME).
    #[arg(long, value_name = "URL", requires = "driver_artifacts")]
    pub driver_artifacts_url: Option<String>,
    /// Refuse values that disagree with these pins (manifests/channel/pins.toml).
    #[arg(long, value_name = "FILE")]
    pub pins: Option<PathBuf>,
    /// localkube's run section [default: the built-in k3s one, manifests/channel/k3s-run.toml].
    #[arg(long, value_name = "FILE")]
    pub run: Option<PathBuf>,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    #[arg(long, default_value_t = 1)]
    pub manifest_version: u64,
    /// How long it stays valid (published is now, or SOURCE_DATE_EPOCH).
    #[arg(long, default_value = "180d", value_parser = parse_duration)]
    pub valid_for: std::time::Duration,
    /// Which kubestrap versions may use it [default: this one and newer].
    #[arg(long)]
    pub requires_bootstrap: Option<semver::VersionReq>,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Sign a key list with one or more root keys (adds to FILE.minisig).
    SignList {
        /// A root secret key; repeat for a threshold.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        file: PathBuf,
    },
    /// Verify a chain of key lists (oldest first) against the built-in and pinned roots.
    VerifyList {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        allow_expired: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// Pin a public key (minisign .pub) in this kubestrap home.
    Add { key: PathBuf },
    /// List pinned and built-in keys.
    List,
    /// Unpin a key by id.
    Remove { id: String },
}
