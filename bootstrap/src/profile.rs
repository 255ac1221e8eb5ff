//! Per-cluster state: `profiles/<name>/config.toml` and the directories
//! beside it (pki/, data/, logs/, run/).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use kubestrap_manifest::Driver;
use serde::{Deserialize, Serialize};

use crate::exit::{Code, coded};
use crate::fsutil;
use crate::home::Home;

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
}

/// Paths of one profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
}

impl Profile {
    pub fn new(home: &Home, name: &str) -> Result<Profile> {
        check_name(name)?;
        Ok(Profile { name: name.to_string(), dir: home.profile(name) })
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
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
    pub fn exists(&self) -> bool {
        self.config_path().is_file()
    }

    pub fn load(&self) -> Result<Config> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                coded(
                    Code::NoProfile,
                    format!(
                        "profile {:?} does not exist; create it with `kubestrap start -p {}`",
                        self.name, self.name
                    ),
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
            }
        })?;
        toml::from_str(&text).map_err(|e| {
            coded(
                Code::Disk,
                format!("{} is damaged ({e}); fix it, or run `kubestrap delete -p {}`", path.display(), self.name),
            )
        })
    }

    pub fn save(&self, cfg: &Config) -> Result<()> {
        fsutil::create_dir_mode(&self.dir, 0o700)?;
        let text = toml::to_string(cfg).context("cannot serialize profile config")?;
        fsutil::write_atomic(&self.config_path(), text.as_bytes(), 0o600)
    }
}

/// Profile names become directory names, kubeconfig entries and node names.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(coded(
            Code::Usage,
            format!(
                "invalid profile name {name:?}: use 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// Names of every profile in the home.
pub fn names(home: &Home) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fsutil::list_dir(&home.profiles())? {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().join("config.toml").is_file() && check_name(&name).is_ok() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The manifests any profile points at.
pub fn all_manifest_paths(home: &Home) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for name in names(home)? {
        if let Ok(cfg) = Profile::new(home, &name)?.load() {
            out.insert(cfg.manifest);
        }
    }
    Ok(out)
}
