//! What logic reports while it works. Logic never prints: it sends typed
//! [`Event`]s to a [`Progress`], and the CLI's renderer shows them (bars on a
//! terminal, plain lines otherwise, one JSON object per event with
//! `-o json`). The JSON event schema is documented in README ("JSON output").

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Receives progress (rendered by the CLI layer).
pub trait Progress: Sync {
    fn report(&self, e: Event<'_>);

    fn step(&self, step: Step, elapsed: Duration) {
        self.report(Event::Step { step, elapsed });
    }
    fn warn(&self, msg: String) {
        self.report(Event::Warning(msg));
    }
    /// What a sweep of a killed command's leftovers could not remove.
    fn unswept(&self, left: Vec<kubestrap_fskit::FsError>) {
        for e in left {
            self.warn(format!("{e}; it is left over from a killed command: remove it by hand"));
        }
    }
}

/// Reports nothing (tests).
#[cfg(test)]
pub struct Silent;

#[cfg(test)]
impl Progress for Silent {
    fn report(&self, _: Event<'_>) {}
}

#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A lifecycle step finished.
    Step { step: Step, elapsed: Duration },
    /// Something the user should know; the command goes on.
    Warning(String),
    /// Downloads and their progress.
    Download(Download<'a>),
}

/// The named steps of the cluster lifecycle, in the order `start` runs them
/// (resolve → verify → fetch → unpack → configure → PKI → launch → ready →
/// kubeconfig). `upgrade` reuses them.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// The manifest's signature, freshness and rollback checks passed.
    #[serde(rename = "manifest verified")]
    ManifestVerified { manifest: String, kubernetes: String, trust: String },
    /// Every artifact the cluster needs is in the store, verified.
    #[serde(rename = "artifacts verified")]
    ArtifactsVerified { count: usize, bytes: u64 },
    /// Component trees unpacked (or found complete).
    #[serde(rename = "components unpacked")]
    ComponentsUnpacked { count: usize },
    /// An executable did not match its signed hash and was restored from
    /// the verified blob before it ran.
    #[serde(rename = "component repaired")]
    ComponentRepaired { component: String, files: Vec<String> },
    /// A new profile's driver, chosen because none was asked for.
    #[serde(rename = "driver chosen")]
    DriverChosen { driver: &'static str, why: String },
    /// The profile's config (port, driver, manifest pointer) is saved.
    #[serde(rename = "profile configured")]
    Configured { profile: String, port: u16, created: bool },
    /// The cluster PKI, made on first start, reused after.
    #[serde(rename = "certificates")]
    Certificates { created: bool },
    /// The release's image archives are in localkube's images directory.
    #[serde(rename = "images placed")]
    ImagesPlaced { copied: Vec<String>, kept: usize, removed: Vec<String> },
    /// localkube runs (not ready yet).
    #[serde(rename = "localkube started")]
    LocalkubeStarted { host: String, driver: &'static str },
    /// A localkube that was stopping (an interrupted `stop`) has ended.
    #[serde(rename = "interrupted stop finished")]
    StopFinished { profile: String },
    /// The apiserver answered its readiness check.
    #[serde(rename = "apiserver ready")]
    ApiserverReady { server: String },
    /// kubeconfig's cluster, user and context are written.
    #[serde(rename = "kubeconfig")]
    Kubeconfig { context: String, path: PathBuf, current: bool },
    /// What a native k3s left on the machine was removed (its mounts,
    /// links, iptables chains, ...).
    #[serde(rename = "machine cleaned")]
    HostCleaned { removed: Vec<String> },
    /// The docker driver's node image, imported from the verified rootfs
    /// (once per rootfs; later starts reuse it).
    #[serde(rename = "node image imported")]
    NodeImage { image: String },
    /// An agent node's host was started (it joins the server).
    #[serde(rename = "node started")]
    NodeStarted { node: String, host: String },
    /// The server a node joins: its CA matches the join line, and it took the token.
    #[serde(rename = "server checked")]
    ServerChecked { server: String, ca_sha256: String },
    /// A node reports Ready through the server's API.
    #[serde(rename = "node ready")]
    NodeReady { node: String },
    /// An agent node was drained (unless forced) and removed.
    #[serde(rename = "node removed")]
    NodeRemoved { node: String, drained: bool },
    /// A VM did not come up with KVM and was started again with TCG.
    #[serde(rename = "accelerator fallback")]
    AccelFallback { why: String },
}

impl Step {
    /// The step's name as shown (and as JSON's `step`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::ManifestVerified { .. } => "manifest verified",
            Step::ArtifactsVerified { .. } => "artifacts verified",
            Step::ComponentsUnpacked { .. } => "components unpacked",
            Step::ComponentRepaired { .. } => "component repaired",
            Step::DriverChosen { .. } => "driver chosen",
            Step::Configured { .. } => "profile configured",
            Step::Certificates { .. } => "certificates",
            Step::ImagesPlaced { .. } => "images placed",
            Step::LocalkubeStarted { .. } => "localkube started",
            Step::StopFinished { .. } => "interrupted stop finished",
            Step::ApiserverReady { .. } => "apiserver ready",
            Step::Kubeconfig { .. } => "kubeconfig",
            Step::HostCleaned { .. } => "machine cleaned",
            Step::NodeImage { .. } => "node image imported",
            Step::NodeStarted { .. } => "node started",
            Step::NodeReady { .. } => "node ready",
            Step::ServerChecked { .. } => "server checked",
            Step::NodeRemoved { .. } => "node removed",
            Step::AccelFallback { .. } => "accelerator fallback",
        }
    }

    /// A one-line detail for humans.
    pub fn detail(&self) -> String {
        match self {
            Step::ManifestVerified { manifest, kubernetes, trust } => {
                format!("{manifest} (Kubernetes {kubernetes}), {trust}")
            }
            Step::ArtifactsVerified { count, bytes } => {
                format!("{count} artifact(s), {}", indicatif::HumanBytes(*bytes))
            }
            Step::ComponentsUnpacked { count } => format!("{count} component(s)"),
            Step::ComponentRepaired { component, files } => {
                format!(
                    "{component}: {} did not match the manifest; restored from the verified artifact",
                    files.join(", ")
                )
            }
            Step::DriverChosen { driver, why } => format!("{driver}: {why}"),
            Step::Configured { profile, port, created } => {
                format!("{profile}, port {port}{}", if *created { ", new" } else { "" })
            }
            Step::Certificates { created } => (if *created { "created" } else { "reused" }).into(),
            Step::ImagesPlaced { copied, kept, removed } => {
                let mut parts = Vec::new();
                if !copied.is_empty() {
                    parts.push(format!("copied {}", copied.join(", ")));
                }
                if *kept > 0 {
                    parts.push(format!("{kept} already in place"));
                }
                if !removed.is_empty() {
                    parts.push(format!("removed {} (an earlier release's)", removed.join(", ")));
                }
                parts.join("; ")
            }
            Step::LocalkubeStarted { host, driver } => format!("{host}, {driver} driver"),
            Step::StopFinished { profile } => format!("profile {profile:?} had been told to stop; it is started again"),
            Step::ApiserverReady { server } => server.clone(),
            Step::Kubeconfig { context, path, current } => {
                format!("{context} in {} ({})", path.display(), if *current { "current context" } else { "added" })
            }
            Step::HostCleaned { removed } => format!("{} removed: {}", removed.len(), removed.join(", ")),
            Step::AccelFallback { why } => why.clone(),
            Step::NodeImage { image } => image.clone(),
            Step::NodeStarted { node, host } => format!("{node} ({host})"),
            Step::NodeReady { node } => node.clone(),
            Step::ServerChecked { server, ca_sha256 } => {
                format!("{server}: CA sha256 {}…, token accepted", &ca_sha256[..12.min(ca_sha256.len())])
            }
            Step::NodeRemoved { node, drained } => {
                format!("{node}{}", if *drained { " (drained first)" } else { " (not drained: --force)" })
            }
        }
    }
}

/// What a download is doing.
#[derive(Clone, Debug)]
pub enum Download<'a> {
    /// What is about to be downloaded (not already cached).
    Plan {
        count: usize,
        bytes: u64,
    },
    /// `cached`: already verified in the store, nothing to download.
    Start {
        label: &'a str,
        size: u64,
        cached: bool,
    },
    /// Bytes in place so far (resumed bytes included).
    Progress {
        label: &'a str,
        done: u64,
    },
    Retry {
        label: &'a str,
        source: &'a str,
        attempt: u32,
        delay: Duration,
        error: &'a str,
    },
    Fallback {
        label: &'a str,
        source: &'a str,
        error: &'a str,
    },
    Done {
        label: &'a str,
        downloaded: u64,
        elapsed: Duration,
    },
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
