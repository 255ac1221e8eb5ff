//! The environment a command runs in: what kubestrap reads of its process
//! environment, read once by the CLI when the command starts (`cli::env`)
//! and handed down with the home ([`crate::home::Home::env`]). Nothing
//! below the CLI reads a process variable: a driver, the kubeconfig writer
//! and the channel resolver see this value, so what they saw is what the
//! command was started with, and a test can give them any other.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::driver::docker::DockerEnv;

/// The proxy variables a node gets from the caller's environment on every
/// driver, as a native localkube inherits them (k3s and containerd pull
/// through them).
pub const PROXY_VARS: [&str; 6] = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"];

#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `KUBECONFIG` (a list of files), when set and not empty.
    pub kubeconfig: Option<OsString>,
    /// `HOME`, when set and not empty.
    pub home: Option<PathBuf>,
    /// `KUBESTRAP_CHANNEL_URL`, when set and not empty.
    pub channel_url: Option<String>,
    /// kubestrap's config file (`$XDG_CONFIG_HOME/kubestrap/config.toml`),
    /// where this platform has a config directory.
    pub config_file: Option<PathBuf>,
    /// Where the docker CLI would find its engine: `DOCKER_HOST`,
    /// `DOCKER_CONTEXT`, `DOCKER_CONFIG`, `XDG_RUNTIME_DIR`.
    pub docker: DockerEnv,
    /// `PATH`, where host programs (ip, iptables) are looked for.
    pub path: std::ffi::OsString,
    /// The variables a monitored localkube may inherit (PATH, HOME, the
    /// locale, the proxies: the monitor keeps those it names).
    pub vars: Vec<(OsString, OsString)>,
}

impl Environment {
    /// The proxy variables set (and not empty), as `(name, value)`.
    pub fn proxies(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .filter_map(|(k, v)| {
                let (k, v) = (k.to_str()?, v.to_str()?);
                (PROXY_VARS.contains(&k) && !v.is_empty() && !v.chars().any(char::is_control))
                    .then(|| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}
