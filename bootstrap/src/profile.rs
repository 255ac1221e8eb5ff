//! Per-cluster state: `profiles/<name>/config.toml` and the directories
//! beside it (pki/, data/, logs/, run/).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit, FsError};
use kubestrap_manifest::Driver;
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::state::{read as read_state, write as write_state};

/// A profile that cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {profile:?} does not exist")]
    NoProfile { profile: String },
    #[error("invalid profile name {name:?}")]
    BadName { name: String },
    #[error("{} is damaged ({why})", path.display())]
    DamagedConfig { path: PathBuf, why: String, profile: String },
}

impl ProfileError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ProfileError::NoProfile { profile } => {
                format!("create it with `kubestrap start -p {profile}` (see `kubestrap profile list`)")
            }
            ProfileError::BadName { .. } => {
                "use 1-63 lowercase letters, digits or '-', not starting or ending with '-'".into()
            }
            ProfileError::DamagedConfig { profile, .. } => {
                format!("fix it, or `kubestrap delete -p {profile}` (stop and delete work without it)")
            }
        })
    }
}

/// A qemu accelerator (kept in a VM profile's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Hvf,
    Whpx,
    /// Software emulation: works everywhere, several times slower.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Accel, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "hvf" => Ok(Accel::Hvf),
            "whpx" => Ok(Accel::Whpx),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("unknown accelerator {s:?}; expected kvm, hvf, whpx or tcg")),
        }
    }
}

/// What a profile runs. Changed only by atomic rename.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub name: String,
    pub driver: Driver,
    /// The accepted manifest this cluster runs (kept under `manifests/`).
    pub manifest: PathBuf,
    /// The apiserver port on the host.
    pub port: u16,
    /// Whether the user chose the port (then it is never changed silently).
    #[serde(default)]
    pub port_pinned: bool,
    pub created: String,
    /// The manifest this cluster ran before its last upgrade (or rollback):
    /// what `kubestrap rollback` returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
    /// The VM's size and accelerator (qemu driver), as `start` was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmSettings>,
    /// The apiserver's address on this machine, when it is not 127.0.0.1
    /// (the native driver's node address for a localkube that has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The agent nodes beside the server (`m02`, `m03`…): a cluster of
    /// `agents.len() + 1` nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// `start --listen`: the apiserver is also reached at this address of
    /// this machine, where other machines join the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<Ipv4Addr>,
    /// `start --publish HOST:NODE`: the server node's ports published on
    /// this machine (127.0.0.1, and the `--listen` address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
    /// This profile is a node of another machine's cluster (`node join`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Joined>,
}

/// The cluster a joined profile's node belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Joined {
    /// The server's URL, `https://HOST:PORT`.
    pub server: String,
    /// The sha256 of the server's CA certificate, checked before joining.
    pub ca_sha256: String,
    /// This node's name in that cluster.
    pub node: String,
}

impl Config {
    /// Where the apiserver answers on this machine.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { address: self.address.unwrap_or(Ipv4Addr::LOCALHOST), port: self.port }
    }
}

/// One `start --publish HOST_PORT:NODE_PORT`: the server node's port
/// NODE_PORT (a NodePort, say) reached at HOST_PORT on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Publish {
    pub host: u16,
    pub node: u16,
}

impl std::str::FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Publish, String> {
        let bad = || format!("expected HOST_PORT:NODE_PORT, two ports from 1 to 65535 (e.g. 8080:30080), got {s:?}");
        let (h, n) = s.split_once(':').ok_or_else(bad)?;
        let port = |x: &str| x.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(Publish { host: port(h)?, node: port(n)? })
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.node)
    }
}

impl Serialize for Publish {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Publish {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Publish, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a cluster's apiserver answers on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.address, self.port)
    }
}

/// What `start --cpus/--memory/--accel` asked of a VM; unset means the
/// driver's default.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSettings {
    pub cpus: Option<u16>,
    pub memory_mib: Option<u32>,
    pub accel: Option<Accel>,
}

/// Paths of one profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
}

impl Profile {
    pub fn new(home: &Home, name: &str) -> Result<Profile, ProfileError> {
        check_name(name)?;
        Ok(Profile { name: name.to_string(), dir: home.profile(name) })
    }
    /// The kubestrap home the profile lives in (`<home>/profiles/<name>`).
    pub fn home_root(&self) -> PathBuf {
        self.dir.parent().and_then(Path::parent).map_or_else(|| self.dir.clone(), Path::to_path_buf)
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    /// The cluster's join token (0600, in a directory of its own that a
    /// node's container or VM is given alone): what the server and every
    /// agent are started with.
    pub fn join_dir(&self) -> PathBuf {
        self.pki().join("join")
    }
    pub fn join_token(&self) -> PathBuf {
        self.join_dir().join("token")
    }
    /// The join token kept in the profile.
    pub fn load_join_token(&self) -> Result<String, FsError> {
        fskit::read_capped_text(&self.join_token(), 4096)
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log_file(&self) -> PathBuf {
        self.logs().join("localkube.log")
    }
    pub fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// Snapshots of the cluster's state taken before upgrades and rollbacks.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    /// Written before a delete destroys anything: a delete that was cut
    /// short is finished by the next `start` (or `delete`), never left as
    /// a profile whose state is half gone.
    pub fn deleting(&self) -> PathBuf {
        self.dir.join("deleting")
    }
    /// The journal of an upgrade or rollback under way.
    pub fn journal(&self) -> PathBuf {
        self.dir.join("upgrade.toml")
    }
    /// Whether the profile exists (its config, damaged or not).
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(self.config_path()).is_ok()
    }

    /// The profile's config: [`ProfileError::NoProfile`] if there is none,
    /// [`ProfileError::DamagedConfig`] if it cannot be read as one.
    pub fn load(&self) -> Result<Config, ProfileError> {
        let path = self.config_path();
        match read_state::<Config>(&path) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(ProfileError::NoProfile { profile: self.name.clone() }),
            Err(why) => Err(ProfileError::DamagedConfig { path, why, profile: self.name.clone() }),
        }
    }

    /// The `driver = ` line of the config, when legible even though the
    /// config does not parse.
    pub fn legible_driver(&self) -> Option<Driver> {
        if let Ok(cfg) = self.load() {
            return Some(cfg.driver);
        }
        let text = fskit::read_capped_text(&self.config_path(), 1 << 20).unwrap_or_default();
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "driver").then(|| v.trim().trim_matches('"').parse::<Driver>().ok())?
        })
    }

    pub fn save(&self, cfg: &Config) -> Result<(), FsError> {
        fskit::create_dir_mode(&self.dir, 0o700)?;
        write_state(&self.config_path(), cfg)
    }
}

/// Profile names become directory names, kubeconfig entries and node names.
pub fn check_name(name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(ProfileError::BadName { name: name.to_string() }) }
}

/// Names of every profile in the home (damaged ones included).
pub fn names(home: &Home) -> Result<Vec<String>, FsError> {
    let mut out = Vec::new();
    for e in fskit::list_dir(&home.profiles())? {
        let name = e.file_name().to_string_lossy().into_owned();
        if std::fs::symlink_metadata(e.path().join("config.toml")).is_ok() && check_name(&name).is_ok() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
