//! Where the engine is: the one the `docker` CLI would use — `DOCKER_HOST`,
//! else the current context (`DOCKER_CONTEXT`, else `currentContext` in the
//! CLI's config.json, read from the same files the CLI reads), else the
//! default socket — and, only when none of those was chosen and nothing
//! answers at the default socket, an engine this machine runs elsewhere:
//! Podman's socket (rootful `/run/podman/podman.sock`, rootless
//! `$XDG_RUNTIME_DIR/podman/podman.sock`) or rootless Docker's
//! (`$XDG_RUNTIME_DIR/docker.sock`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default engine socket of the docker CLI.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How the engine was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "by", content = "name")]
pub enum Found {
    /// `DOCKER_HOST` names it.
    DockerHost,
    /// A docker context (not `default`) points at it.
    Context(String),
    /// The CLI's default socket.
    Default,
    /// Nothing answers at the default socket; this socket does.
    Fallback(String),
    /// The engine the profile was created on (nothing else was asked for).
    Profile,
}

impl Found {
    /// Whether the user asked for this engine (so a profile that lives on
    /// another one is refused rather than followed).
    pub fn asked(&self) -> bool {
        matches!(self, Found::DockerHost | Found::Context(_))
    }
}

/// An engine address (`unix://…`, `tcp://…`) and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub found: Found,
}

impl Address {
    /// For messages: the address (a password taken out) and how it was found.
    pub fn describe(&self) -> String {
        let host = crate::urls::redact(&self.host);
        match &self.found {
            Found::DockerHost => format!("{host} (DOCKER_HOST)"),
            Found::Context(name) => format!("{host} (docker context {name:?})"),
            Found::Default => host,
            Found::Fallback(what) => format!("{host} ({what}; no engine this user may use answers at {DEFAULT_HOST})"),
            Found::Profile => format!("{host} (where the profile was created)"),
        }
    }
}

/// What the environment says of the engine, as the CLI reads it.
#[derive(Clone, Debug)]
pub struct Env {
    pub docker_host: Option<String>,
    pub docker_context: Option<String>,
    /// `DOCKER_CONFIG`, else `~/.docker`.
    pub config_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub uid: u32,
    /// The socket of [`DEFAULT_HOST`].
    pub default_socket: PathBuf,
    /// Rootful Podman's socket.
    pub podman_socket: PathBuf,
}

impl Default for Env {
    fn default() -> Env {
        Env {
            docker_host: None,
            docker_context: None,
            config_dir: None,
            runtime_dir: None,
            uid: 0,
            default_socket: PathBuf::from("/var/run/docker.sock"),
            podman_socket: PathBuf::from("/run/podman/podman.sock"),
        }
    }
}

/// The engine the docker CLI would use, or an engine this machine runs
/// where the CLI's default finds none (see the module docs).
pub fn resolve(env: &Env) -> Address {
    if let Some(host) = &env.docker_host {
        return Address { host: host.clone(), found: Found::DockerHost };
    }
    let context = env.docker_context.clone().or_else(|| current_context(env.config_dir.as_deref()));
    if let Some(name) = context.filter(|n| n != "default")
        && let Some(host) = context_host(env.config_dir.as_deref(), &name)
    {
        return Address { host, found: Found::Context(name) };
    }
    if answers(&env.default_socket) {
        return Address { host: DEFAULT_HOST.into(), found: Found::Default };
    }
    let mut others: Vec<(PathBuf, &str)> = Vec::new();
    if env.uid == 0 {
        others.push((env.podman_socket.clone(), "Podman's socket"));
    }
    if let Some(run) = &env.runtime_dir {
        others.push((run.join("podman/podman.sock"), "rootless Podman's socket"));
        others.push((run.join("docker.sock"), "rootless Docker's socket"));
    }
    for (sock, what) in others {
        if answers(&sock) {
            return Address { host: format!("unix://{}", sock.display()), found: Found::Fallback(what.into()) };
        }
    }
    Address { host: DEFAULT_HOST.into(), found: Found::Default }
}

/// Whether something accepts connections on a unix socket.
fn answers(sock: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

/// The CLI's current context from its config.json (`currentContext`).
fn current_context(config_dir: Option<&Path>) -> Option<String> {
    let text = kubestrap_fskit::read_capped_text(&config_dir?.join("config.json"), 1 << 20).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["currentContext"].as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// A context's docker endpoint, from `contexts/meta/<sha256 of its name>/meta.json`.
fn context_host(config_dir: Option<&Path>, name: &str) -> Option<String> {
    let id = hex::encode(ring::digest::digest(&ring::digest::SHA256, name.as_bytes()));
    let meta = config_dir?.join("contexts/meta").join(id).join("meta.json");
    let text = kubestrap_fskit::read_capped_text(&meta, 1 << 20).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["Endpoints"]["docker"]["Host"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Env {
        Env {
            docker_host: None,
            docker_context: None,
            config_dir: Some(dir.join("docker")),
            runtime_dir: Some(dir.join("run")),
            uid: 1000,
            default_socket: dir.join("docker.sock"),
            podman_socket: dir.join("podman.sock"),
        }
    }

    fn context(dir: &Path, name: &str, host: &str) {
        let id = hex::encode(ring::digest::digest(&ring::digest::SHA256, name.as_bytes()));
        let meta = dir.join("docker/contexts/meta").join(id);
        std::fs::create_dir_all(&meta).unwrap();
        let json = serde_json::json!({"Name": name, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}}});
        std::fs::write(meta.join("meta.json"), json.to_string()).unwrap();
    }

    #[test]
    fn docker_host_then_the_current_context_as_the_cli_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        context(d, "rootless", "unix:///run/user/1000/docker.sock");
        std::fs::write(d.join("docker/config.json"), r#"{"currentContext": "rootless"}"#).unwrap();
        let mut e = env(d);
        let a = resolve(&e);
        assert_eq!(a.host, "unix:///run/user/1000/docker.sock");
        assert_eq!(a.found, Found::Context("rootless".into()));
        assert!(a.found.asked() && a.describe().contains("docker context \"rootless\""));
        // DOCKER_CONTEXT wins over the config file; DOCKER_HOST over both.
        context(d, "other", "unix:///tmp/other.sock");
        e.docker_context = Some("other".into());
        assert_eq!(resolve(&e).host, "unix:///tmp/other.sock");
        e.docker_host = Some("tcp://user:secret@127.0.0.1:2375".into());
        let a = resolve(&e);
        assert_eq!((a.found.clone(), a.host.as_str()), (Found::DockerHost, "tcp://user:secret@127.0.0.1:2375"));
        assert!(!a.describe().contains("secret"), "{}", a.describe());
    }

    #[test]
    fn a_socket_that_answers_is_found_when_the_default_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut e = env(d);
        assert_eq!(resolve(&e).found, Found::Default, "nothing answers anywhere: the default, for its error");
        std::fs::create_dir_all(d.join("run/podman")).unwrap();
        let _rootless = std::os::unix::net::UnixListener::bind(d.join("run/podman/podman.sock")).unwrap();
        let a = resolve(&e);
        assert_eq!(a.found, Found::Fallback("rootless Podman's socket".into()));
        assert_eq!(a.host, format!("unix://{}", d.join("run/podman/podman.sock").display()));
        assert!(
            !a.found.asked()
                && a.describe().contains("no engine this user may use answers at unix:///var/run/docker.sock")
        );
        // As root, rootful Podman first; an engine at the default socket before both.
        e.uid = 0;
        let _rootful = std::os::unix::net::UnixListener::bind(d.join("podman.sock")).unwrap();
        assert_eq!(resolve(&e).found, Found::Fallback("Podman's socket".into()));
        let _docker = std::os::unix::net::UnixListener::bind(d.join("docker.sock")).unwrap();
        assert_eq!(resolve(&e), Address { host: DEFAULT_HOST.into(), found: Found::Default });
    }
}
