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

/// Declares [`Step`] with each step's name written once: the name is both
/// what `name()` returns and JSON's `step` tag.
macro_rules! steps {
    (
        $(#[$meta:meta])*
        pub enum Step {$(
            $(#[$doc:meta])*
            $variant:ident { $($field:ident: $ty:ty),* $(,)? } => $name:literal,
        )*}
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Serialize)]
        #[serde(tag = "step")]
        pub enum Step {
            $(
                $(#[$doc])*
                #[serde(rename = $name)]
                $variant { $($field: $ty),* },
            )*
        }

        impl Step {
            /// The step's name as shown (and as JSON's `step`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Step::$variant { .. } => $name,)*
                }
            }
        }
    };
}

steps! {
    /// The named steps of the cluster lifecycle, in the order `start` runs them
    /// (resolve → verify → fetch → unpack → configure → PKI → launch → ready →
    /// kubeconfig). `upgrade` reuses them.
    pub enum Step {
        /// The manifest's signature, freshness and rollback checks passed.
        ManifestVerified { manifest: String, kubernetes: String, trust: String } => "manifest verified",
        /// Every artifact the cluster needs is in the store, verified.
        ArtifactsVerified { count: usize, bytes: u64 } => "artifacts verified",
        /// Component trees unpacked (or found complete).
        ComponentsUnpacked { count: usize } => "components unpacked",
        /// An executable did not match its signed hash and was restored from
        /// the verified blob before it ran.
        ComponentRepaired { component: String, files: Vec<String> } => "component repaired",
        /// A new profile's driver, chosen because none was asked for.
        DriverChosen { driver: &'static str, why: String } => "driver chosen",
        /// The profile's config (port, driver, manifest pointer) is saved.
        Configured { profile: String, port: u16, created: bool } => "profile configured",
        /// The cluster PKI, made on first start, reused after.
        Certificates { created: bool } => "certificates",
        /// The release's image archives are in localkube's images directory.
        ImagesPlaced { copied: Vec<String>, kept: usize, removed: Vec<String> } => "images placed",
        /// localkube runs (not ready yet).
        LocalkubeStarted { host: String, driver: &'static str } => "localkube started",
        /// A localkube that was stopping (an interrupted `stop`) has ended.
        StopFinished { profile: String } => "interrupted stop finished",
        /// The apiserver answered its readiness check.
        ApiserverReady { server: String } => "apiserver ready",
        /// kubeconfig's cluster, user and context are written.
        Kubeconfig { context: String, path: PathBuf, current: bool } => "kubeconfig",
        /// What a native k3s left on the machine was removed (its mounts,
        /// links, iptables chains, ...).
        HostCleaned { removed: Vec<String> } => "machine cleaned",
        /// The docker driver's node image, imported from the verified rootfs
        /// (once per rootfs; later starts reuse it).
        NodeImage { image: String } => "node image imported",
        /// An agent node's host was started (it joins the server).
        NodeStarted { node: String, host: String } => "node started",
        /// The server a node joins: its CA matches the join line, and it took the token.
        ServerChecked { server: String, ca_sha256: String } => "server checked",
        /// A node reports Ready through the server's API.
        NodeReady { node: String } => "node ready",
        /// The release's system Deployments (k3s: CoreDNS) are Available.
        SystemReady { deployments: Vec<String> } => "system workloads available",
        /// An agent node was drained (unless forced) and removed.
        NodeRemoved { node: String, drained: bool } => "node removed",
        /// A VM did not come up with KVM and was started again with TCG.
        AccelFallback { why: String } => "accelerator fallback",
    }
}

impl Step {
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
            Step::SystemReady { deployments } => deployments.join(", "),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step's JSON, as `-o json` prints it (before the renderer adds
    /// its own keys): `step` is the name, then the variant's fields.
    #[test]
    fn steps_serialize_with_their_name_first() {
        let s = String::from;
        let steps = [
            (
                Step::ManifestVerified { manifest: s("stable-12"), kubernetes: s("1.33.1"), trust: s("signed") },
                r#"{"step":"manifest verified","manifest":"stable-12","kubernetes":"1.33.1","trust":"signed"}"#,
            ),
            (Step::ArtifactsVerified { count: 2, bytes: 5 }, r#"{"step":"artifacts verified","count":2,"bytes":5}"#),
            (Step::ComponentsUnpacked { count: 2 }, r#"{"step":"components unpacked","count":2}"#),
            (
                Step::ComponentRepaired { component: s("kubectl"), files: vec![s("bin/kubectl")] },
                r#"{"step":"component repaired","component":"kubectl","files":["bin/kubectl"]}"#,
            ),
            (
                Step::DriverChosen { driver: "docker", why: s("found") },
                r#"{"step":"driver chosen","driver":"docker","why":"found"}"#,
            ),
            (
                Step::Configured { profile: s("default"), port: 6443, created: true },
                r#"{"step":"profile configured","profile":"default","port":6443,"created":true}"#,
            ),
            (Step::Certificates { created: false }, r#"{"step":"certificates","created":false}"#),
            (
                Step::ImagesPlaced { copied: vec![s("a.tar")], kept: 1, removed: vec![] },
                r#"{"step":"images placed","copied":["a.tar"],"kept":1,"removed":[]}"#,
            ),
            (
                Step::LocalkubeStarted { host: s("h"), driver: "native" },
                r#"{"step":"localkube started","host":"h","driver":"native"}"#,
            ),
            (Step::StopFinished { profile: s("p") }, r#"{"step":"interrupted stop finished","profile":"p"}"#),
            (
                Step::ApiserverReady { server: s("https://127.0.0.1:6443") },
                r#"{"step":"apiserver ready","server":"https://127.0.0.1:6443"}"#,
            ),
            (
                Step::Kubeconfig { context: s("kubestrap"), path: PathBuf::from("/k/config"), current: true },
                r#"{"step":"kubeconfig","context":"kubestrap","path":"/k/config","current":true}"#,
            ),
            (Step::HostCleaned { removed: vec![s("m")] }, r#"{"step":"machine cleaned","removed":["m"]}"#),
            (Step::NodeImage { image: s("i") }, r#"{"step":"node image imported","image":"i"}"#),
            (Step::NodeStarted { node: s("n"), host: s("h") }, r#"{"step":"node started","node":"n","host":"h"}"#),
            (
                Step::ServerChecked { server: s("s"), ca_sha256: s("ab") },
                r#"{"step":"server checked","server":"s","ca_sha256":"ab"}"#,
            ),
            (Step::NodeReady { node: s("n") }, r#"{"step":"node ready","node":"n"}"#),
            (Step::NodeRemoved { node: s("n"), drained: true }, r#"{"step":"node removed","node":"n","drained":true}"#),
            (Step::AccelFallback { why: s("no kvm") }, r#"{"step":"accelerator fallback","why":"no kvm"}"#),
        ];
        for (step, want) in steps {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, want);
            assert!(json.starts_with(&format!("{{\"step\":\"{}\"", step.name())), "{json}");
        }
    }
}
