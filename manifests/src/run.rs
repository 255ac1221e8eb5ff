//! How localkube runs: the manifest's `[component.localkube.run]` (and its
//! agent command line), each value checked as it is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check_rel_path;
use crate::{PkiFile, StopSignal, Template, template};

/// How localkube runs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawRun")]
pub struct Run {
    /// The executable, relative to the unpacked component tree.
    pub program: String,
    pub args: Vec<Template>,
    /// Path polled over TLS with the admin client certificate until it answers 200.
    pub ready: String,
    /// Once `ready` answers, `start` also waits for the server's own Node
    /// (`{node}`) to report Ready: a cluster that cannot run pods is not
    /// ready (a localkube whose kubelet runs beside the apiserver).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_ready: bool,
    /// ... and for these Deployments (`NAMESPACE/NAME`) of the release's own
    /// to be Available: the system workloads it deploys (k3s: CoreDNS),
    /// which run only where the cluster can run pods (their images there,
    /// the pod network up). `start --no-wait-system` skips this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_deployments: Vec<String>,
    pub stop_signal: StopSignal,
    pub stop_timeout_s: u64,
    /// Where localkube expects the PKI files kubestrap made: path template → file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pki_files: BTreeMap<Template, PkiFile>,
    /// The directory localkube imports container image archives from (k3s:
    /// `{data}/agent/images`): `start` places the `images` component there
    /// and `kubestrap image load` a user's archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_dir: Option<Template>,
    /// localkube must run as root on the native driver (k3s does): a
    /// non-root user is told to use a VM or container driver.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_root: bool,
    /// localkube's environment: these variables (templates), and nothing
    /// else of the caller's but PATH, HOME and the proxy variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Template>,
    /// Files localkube expects under its data directory, on every node:
    /// path template (`{data}/...`) → content, written by kubestrap before
    /// each start (k3s: the config file `K3S_CONFIG_FILE` names, which k3s
    /// before v1.29.8 requires to exist).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<Template, String>,
    /// How localkube runs as an agent that joins the server (clusters of
    /// more than one node). A release without it runs one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
}

/// localkube as an agent node: the same program, with these arguments
/// (`{server}`, `{port}` and `{token}` say where and how to join; `{node}`,
/// `{node-ip}` and `{data}` are the agent's own). It is ready when its Node
/// reports Ready through the server's API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawAgent")]
pub struct Agent {
    pub args: Vec<Template>,
    /// How long a new agent's node may take to become Ready.
    pub ready_timeout_s: u64,
    /// Why an agent on another machine cannot join (`node join`), when it
    /// cannot: it needs more of the server than the API port kubestrap
    /// forwards (k3s: the server's advertised address, which is private to
    /// its machine, and flannel's VXLAN port between nodes). None: it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_remote_join: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAgent {
    args: Vec<Template>,
    ready_timeout_s: u64,
    #[serde(default)]
    no_remote_join: Option<String>,
}

impl TryFrom<RawAgent> for Agent {
    type Error = String;
    fn try_from(r: RawAgent) -> Result<Self, String> {
        for name in ["server", "token", "node"] {
            if !r.args.iter().any(|a| a.uses(name)) {
                return Err(format!("agent.args: expected an argument that uses {{{name}}}"));
            }
        }
        if !(1..=600).contains(&r.ready_timeout_s) {
            return Err(format!("agent.ready-timeout-s: expected 1 to 600 seconds, got {}", r.ready_timeout_s));
        }
        if let Some(why) = &r.no_remote_join {
            template::check_no_control(why).map_err(|e| format!("agent.no-remote-join: {e}"))?;
            if why.is_empty() || why.len() > 1024 {
                return Err("agent.no-remote-join: expected a reason of 1 to 1024 bytes".into());
            }
        }
        Ok(Agent { args: r.args, ready_timeout_s: r.ready_timeout_s, no_remote_join: r.no_remote_join })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRun {
    program: String,
    args: Vec<Template>,
    ready: String,
    #[serde(default)]
    node_ready: bool,
    #[serde(default)]
    ready_deployments: Vec<String>,
    stop_signal: StopSignal,
    stop_timeout_s: u64,
    #[serde(default)]
    pki_files: BTreeMap<Template, PkiFile>,
    #[serde(default)]
    images_dir: Option<Template>,
    #[serde(default)]
    needs_root: bool,
    #[serde(default)]
    env: BTreeMap<String, Template>,
    #[serde(default)]
    files: BTreeMap<Template, String>,
    #[serde(default)]
    agent: Option<Agent>,
}

/// The most `files` a run section names, and the most bytes each holds.
pub const MAX_FILES: usize = 16;
pub const MAX_FILE_BYTES: usize = 64 << 10;

impl TryFrom<RawRun> for Run {
    type Error = String;
    fn try_from(r: RawRun) -> Result<Self, String> {
        check_rel_path("program", &r.program)?;
        template::check_no_control(&r.ready).map_err(|e| format!("ready: {e}"))?;
        if !r.ready.starts_with('/') {
            return Err(format!("ready: expected an absolute URL path such as \"/readyz\", got {:?}", r.ready));
        }
        if !(1..=600).contains(&r.stop_timeout_s) {
            return Err(format!("stop-timeout-s: expected 1 to 600 seconds, got {}", r.stop_timeout_s));
        }
        if !r.args.iter().any(|a| a.uses("port")) {
            return Err(
                "args: expected an argument that uses {port}, so kubestrap can choose the apiserver port".into()
            );
        }
        for path in r.pki_files.keys() {
            // Never inside {pki}: a copy there could overwrite kubestrap's own
            // PKI (ca.crt with the CA key, say).
            check_under_data("pki-files", path)?;
        }
        if let Some(dir) = &r.images_dir {
            check_under_data("images-dir", dir)?;
        }
        for name in r.env.keys() {
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(format!("env: expected variable names of A-Z, 0-9 and '_', got {name:?}"));
            }
        }
        if r.ready_deployments.len() > 8 {
            return Err(format!("ready-deployments: expected at most 8, got {}", r.ready_deployments.len()));
        }
        for d in &r.ready_deployments {
            let ok = d.split_once('/').is_some_and(|(ns, name)| {
                let label = |s: &str| {
                    !s.is_empty()
                        && s.len() <= 63
                        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                };
                label(ns) && name.len() <= 253 && name.split('.').all(label)
            });
            if !ok {
                return Err(format!("ready-deployments: expected NAMESPACE/NAME of lowercase DNS names, got {d:?}"));
            }
        }
        if r.files.len() > MAX_FILES {
            return Err(format!("files: expected at most {MAX_FILES} files, got {}", r.files.len()));
        }
        for (path, content) in &r.files {
            check_under_data("files", path)?;
            if r.pki_files.contains_key(path) {
                return Err(format!("files: {:?} is also a pki-files path", path.as_str()));
            }
            if content.len() > MAX_FILE_BYTES {
                return Err(format!(
                    "files: {:?} holds {} bytes, more than the {MAX_FILE_BYTES} a file may",
                    path.as_str(),
                    content.len()
                ));
            }
        }
        Ok(Run {
            program: r.program,
            args: r.args,
            ready: r.ready,
            node_ready: r.node_ready,
            ready_deployments: r.ready_deployments,
            stop_signal: r.stop_signal,
            stop_timeout_s: r.stop_timeout_s,
            pki_files: r.pki_files,
            images_dir: r.images_dir,
            needs_root: r.needs_root,
            env: r.env,
            files: r.files,
            agent: r.agent,
        })
    }
}

/// A path template that must stay inside localkube's data directory.
fn check_under_data(field: &str, path: &Template) -> Result<(), String> {
    let Some(rest) = path.as_str().strip_prefix("{data}/") else {
        return Err(format!(
            "{field}: expected a path under {{data}}/ (never inside kubestrap's own {{pki}}), got {:?}",
            path.as_str()
        ));
    };
    if rest.contains('{') {
        return Err(format!("{field}: expected no templates after {{data}}/, got {:?}", path.as_str()));
    }
    check_rel_path(field, rest)
}
