//! k3s's configuration, found the way k3s finds it (k3s
//! pkg/configfilearg/parser.go, pkg/cli/cmds/config.go): the config file is
//! `K3S_CONFIG_FILE`, else `--config`, else /etc/rancher/k3s/config.yaml,
//! plus `<that file>.d/*.yaml`; a missing file is no error. Its keys count
//! unless the command line sets the same flag; `K3S_TOKEN` and
//! `K3S_NODE_NAME` count like flags; registries come from
//! `--private-registry`, else /etc/rancher/k3s/registries.yaml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Check, Flags};

pub const DEFAULT_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
pub const DEFAULT_REGISTRIES: &str = "/etc/rancher/k3s/registries.yaml";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";

/// What the configuration comes to.
#[derive(Clone, Debug)]
pub struct Effective {
    pub cluster_cidr: String,
    /// Where a join token came from, if one was given.
    pub token_from: Option<String>,
    pub node_name: Option<String>,
    /// The registries file read, with its number of mirrors.
    pub registries: Option<(PathBuf, usize)>,
    /// Config files read, with their keys.
    pub files: Vec<(PathBuf, Vec<String>)>,
    /// The config file looked for.
    pub config_path: PathBuf,
    /// Whether it was named (`K3S_CONFIG_FILE` or `--config`), not the default.
    pub config_named: bool,
    /// `K3S_*` variables set in the environment.
    pub env: Vec<String>,
}

fn read_yaml(path: &Path) -> Option<BTreeMap<String, serde_norway::Value>> {
    let text = std::fs::read_to_string(path).ok()?;
    if text.trim().is_empty() {
        return Some(BTreeMap::new());
    }
    serde_norway::from_str(&text).ok()
}

fn as_text(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn effective(f: &Flags) -> Effective {
    effective_in(f, &std::env::vars().collect())
}

/// [`effective`] with the environment given.
fn effective_in(f: &Flags, vars: &BTreeMap<String, String>) -> Effective {
    let env = |k: &str| vars.get(k).cloned().filter(|v| !v.is_empty());
    let named = env("K3S_CONFIG_FILE").map(PathBuf::from).or_else(|| f.config.clone());
    let config_named = named.is_some();
    let config_path = named.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut files = Vec::new();
    let mut merged: BTreeMap<String, serde_norway::Value> = BTreeMap::new();
    let mut add = |p: PathBuf| {
        if let Some(map) = read_yaml(&p) {
            files.push((p, map.keys().cloned().collect()));
            merged.extend(map);
        }
    };
    add(config_path.clone());
    let dropins = PathBuf::from(format!("{}.d", config_path.display()));
    if let Ok(rd) = std::fs::read_dir(&dropins) {
        let mut names: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        names.sort();
        names.into_iter().for_each(&mut add);
    }
    let key = |k: &str| merged.get(k).and_then(as_text);
    let token_from = if f.token.is_some() {
        Some("--token".to_string())
    } else if env("K3S_TOKEN").is_some() {
        Some("K3S_TOKEN".into())
    } else if key("token").is_some() {
        Some(format!("token in {}", config_path.display()))
    } else {
        None
    };
    let registries_path = f.private_registry.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRIES));
    let registries = read_yaml(&registries_path).map(|m| {
        let mirrors = m.get("mirrors").and_then(|v| v.as_mapping()).map_or(0, |m| m.len());
        (registries_path, mirrors)
    });
    let k3s_env: Vec<String> = vars.keys().filter(|k| k.starts_with("K3S_")).cloned().collect();
    Effective {
        cluster_cidr: f
            .cluster_cidr
            .clone()
            .or_else(|| key("cluster-cidr"))
            .unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.into()),
        token_from,
        node_name: f.node_name.clone().or_else(|| env("K3S_NODE_NAME")).or_else(|| key("node-name")),
        registries,
        files,
        config_path,
        config_named,
        env: k3s_env,
    }
}

/// Whether k3s `version` treats a named config file that is missing as
/// fatal: every release before k3s PR #10591, which reached v1.29.8 and
/// v1.30.4 (pkg/configfilearg/parser.go: `!isSet && os.IsNotExist` is the
/// only case that reads as empty).
pub fn missing_named_file_is_fatal(version: &str) -> bool {
    let core = version.trim().trim_start_matches('v').split(['+', '-']).next().unwrap_or_default();
    let n: Vec<u64> = core.split('.').filter_map(|x| x.parse().ok()).collect();
    match n[..] {
        [1, minor, patch] => minor < 29 || (minor == 29 && patch < 8) || (minor == 30 && patch < 4),
        _ => false,
    }
}

impl Effective {
    /// k3s `version`'s refusal of a named config file that is missing.
    pub fn refuse_missing(&self, version: &str) -> anyhow::Result<()> {
        if self.config_named && !self.config_path.exists() && missing_named_file_is_fatal(version) {
            anyhow::bail!(
                "k3s {version}: open {}: no such file or directory (a config file named by K3S_CONFIG_FILE or \
                 --config must exist before k3s v1.29.8)",
                self.config_path.display()
            );
        }
        Ok(())
    }

    /// What was read, for the report: the test asserts nothing leaked in.
    pub fn check(&self) -> Check {
        let files = if self.files.is_empty() {
            format!("no config file ({} absent)", self.config_path.display())
        } else {
            self.files
                .iter()
                .map(|(p, keys)| format!("read {} ({})", p.display(), keys.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let registries = match &self.registries {
            Some((p, n)) => format!("registries from {} ({n} mirrors)", p.display()),
            None => "no registries file".into(),
        };
        let env = if self.env.is_empty() { "no K3S_ variables".to_string() } else { self.env.join(" ") };
        Check::ok(
            "config",
            format!(
                "{files}; cluster-cidr {}; token: {}; node-name: {}; {registries}; environment: {env}",
                self.cluster_cidr,
                self.token_from.as_deref().unwrap_or("none"),
                self.node_name.as_deref().unwrap_or("(hostname)")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_k3s_reads_where_k3s_reads_it() {
        let dir = std::env::temp_dir().join(format!("standin-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config.yaml.d")).unwrap();
        std::fs::write(dir.join("config.yaml"), "cluster-cidr: 10.99.0.0/16\nnode-name: from-file\n").unwrap();
        std::fs::write(dir.join("config.yaml.d/10-token.yaml"), "token: from-dropin\n").unwrap();
        std::fs::write(dir.join("registries.yaml"), "mirrors:\n  docker.io: {}\n  quay.io: {}\n").unwrap();
        let flags = Flags {
            config: Some(dir.join("config.yaml")),
            private_registry: Some(dir.join("registries.yaml")),
            node_name: Some("from-flag".into()),
            ..Flags::default()
        };
        let e = effective_in(&flags, &BTreeMap::new());
        assert_eq!(e.cluster_cidr, "10.99.0.0/16");
        assert_eq!(e.node_name.as_deref(), Some("from-flag"), "the command line wins over the file");
        assert!(e.token_from.as_deref().unwrap().starts_with("token in"), "{:?}", e.token_from);
        assert_eq!(e.registries.as_ref().unwrap().1, 2);
        // K3S_CONFIG_FILE wins over --config; K3S_TOKEN counts like --token.
        let vars: BTreeMap<String, String> = [
            ("K3S_CONFIG_FILE".to_string(), dir.join("absent.yaml").display().to_string()),
            ("K3S_TOKEN".into(), "t".into()),
        ]
        .into();
        let e = effective_in(&flags, &vars);
        assert_eq!(e.cluster_cidr, DEFAULT_CLUSTER_CIDR);
        assert!(e.files.is_empty());
        assert_eq!(e.token_from.as_deref(), Some("K3S_TOKEN"));
        assert_eq!(e.env, ["K3S_CONFIG_FILE", "K3S_TOKEN"]);
        // A named file that is missing: fatal for the releases before the fix.
        assert!(e.refuse_missing("v1.29.6+k3s1").unwrap_err().to_string().contains("absent.yaml"));
        e.refuse_missing("v1.29.8+k3s1").unwrap();
        assert!(e.refuse_missing("v1.30.3+k3s1").is_err());
        e.refuse_missing("v1.30.8+k3s1").unwrap();
        e.refuse_missing("v1.34.3+k3s1").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
