//! The stand-in's objects, persisted as one JSON file in the data dir.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const STATE_FILE: &str = "standin-state.json";

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The resources the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res {
    Namespaces,
    ConfigMaps,
    ServiceAccounts,
    /// Listed (always none: the stand-in runs no workloads), so the first
    /// thing users type, `kubectl get pods -A`, answers like a new cluster.
    Pods,
    /// Registered by the server itself (`--node-name`) and by agents; their
    /// Ready condition follows their heartbeats (see `nodes.rs`).
    Nodes,
}

impl Res {
    pub const ALL: [Res; 5] = [Res::ConfigMaps, Res::Namespaces, Res::Nodes, Res::Pods, Res::ServiceAccounts];

    pub fn from_plural(s: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.plural() == s)
    }
    pub fn plural(self) -> &'static str {
        match self {
            Res::Namespaces => "namespaces",
            Res::ConfigMaps => "configmaps",
            Res::ServiceAccounts => "serviceaccounts",
            Res::Pods => "pods",
            Res::Nodes => "nodes",
        }
    }
    pub fn singular(self) -> &'static str {
        match self {
            Res::Namespaces => "namespace",
            Res::ConfigMaps => "configmap",
            Res::ServiceAccounts => "serviceaccount",
            Res::Pods => "pod",
            Res::Nodes => "node",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Res::Namespaces => "Namespace",
            Res::ConfigMaps => "ConfigMap",
            Res::ServiceAccounts => "ServiceAccount",
            Res::Pods => "Pod",
            Res::Nodes => "Node",
        }
    }
    pub fn short_name(self) -> &'static str {
        match self {
            Res::Namespaces => "ns",
            Res::ConfigMaps => "cm",
            Res::ServiceAccounts => "sa",
            Res::Pods => "po",
            Res::Nodes => "no",
        }
    }
    pub fn namespaced(self) -> bool {
        !matches!(self, Res::Namespaces | Res::Nodes)
    }
    /// The verbs the stand-in really implements (advertised in discovery).
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Res::Namespaces | Res::ConfigMaps => &["create", "delete", "get", "list"],
            Res::ServiceAccounts | Res::Pods => &["get", "list"],
            Res::Nodes => &["create", "delete", "get", "list", "patch"],
        }
    }
}

/// Everything persisted. Maps are keyed by `name` (cluster-scoped) or
/// `namespace/name`, so iteration order is the apiserver's list order.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub resource_version: u64,
    #[serde(default)]
    pub namespaces: BTreeMap<String, Value>,
    #[serde(default)]
    pub configmaps: BTreeMap<String, Value>,
    #[serde(default)]
    pub serviceaccounts: BTreeMap<String, Value>,
    /// Never filled (see [`Res::Pods`]).
    #[serde(default, skip_serializing)]
    pub pods: BTreeMap<String, Value>,
    #[serde(default)]
    pub nodes: BTreeMap<String, Value>,
}

pub fn key(res: Res, ns: &str, name: &str) -> String {
    if res.namespaced() { format!("{ns}/{name}") } else { name.to_string() }
}

impl State {
    pub fn map(&self, res: Res) -> &BTreeMap<String, Value> {
        match res {
            Res::Namespaces => &self.namespaces,
            Res::ConfigMaps => &self.configmaps,
            Res::ServiceAccounts => &self.serviceaccounts,
            Res::Pods => &self.pods,
            Res::Nodes => &self.nodes,
        }
    }
    pub fn map_mut(&mut self, res: Res) -> &mut BTreeMap<String, Value> {
        match res {
            Res::Namespaces => &mut self.namespaces,
            Res::ConfigMaps => &mut self.configmaps,
            Res::ServiceAccounts => &mut self.serviceaccounts,
            Res::Pods => &mut self.pods,
            Res::Nodes => &mut self.nodes,
        }
    }
    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<&Value> {
        self.map(res).get(&key(res, ns, name))
    }
    /// Objects of `res`, in one namespace or (None) across all.
    pub fn list(&self, res: Res, ns: Option<&str>) -> Vec<&Value> {
        let prefix = ns.filter(|_| res.namespaced()).map(|ns| format!("{ns}/"));
        self.map(res)
            .iter()
            .filter(|(k, _)| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
            .map(|(_, v)| v)
            .collect()
    }
    pub fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Stamps the server-set metadata on a new object and stores it.
    pub fn insert(&mut self, res: Res, mut obj: Value) -> Value {
        let rv = self.next_resource_version();
        stamp(&mut obj, &rv);
        let meta = &obj["metadata"];
        let k = key(res, meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""));
        self.map_mut(res).insert(k, obj.clone());
        obj
    }

    /// Creates the namespace (and its `default` service account) if missing.
    pub fn ensure_namespace(&mut self, name: &str) {
        if self.get(Res::Namespaces, "", name).is_none() {
            self.insert(Res::Namespaces, namespace_object(name, None));
        }
        if self.get(Res::ServiceAccounts, name, "default").is_none() {
            let sa = json!({
                "kind": "ServiceAccount",
                "apiVersion": "v1",
                "metadata": {"name": "default", "namespace": name},
            });
            self.insert(Res::ServiceAccounts, sa);
        }
    }

    /// Removes a namespace and everything in it.
    pub fn remove_namespace(&mut self, name: &str) -> Option<Value> {
        let prefix = format!("{name}/");
        self.configmaps.retain(|k, _| !k.starts_with(&prefix));
        self.serviceaccounts.retain(|k, _| !k.starts_with(&prefix));
        self.next_resource_version();
        self.namespaces.remove(name)
    }
}

/// Sets uid, resourceVersion and creationTimestamp (if not set yet).
pub fn stamp(obj: &mut Value, rv: &str) {
    let meta = &mut obj["metadata"];
    if meta.get("uid").is_none() {
        meta["uid"] = json!(new_uid());
    }
    if meta.get("creationTimestamp").is_none() {
        meta["creationTimestamp"] = json!(now_rfc3339());
    }
    meta["resourceVersion"] = json!(rv);
}

/// A Namespace object as the apiserver would store it (before stamping).
pub fn namespace_object(name: &str, user: Option<&Value>) -> Value {
    let mut meta = user.cloned().unwrap_or_else(|| json!({}));
    meta["name"] = json!(name);
    meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// A random (version 4 style) UUID.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    let hi = (a & !0xf000) | 0x4000; // version nibble
    let lo = (b & !(0xc << 60)) | (0x8 << 60); // variant bits
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&Rfc3339).unwrap_or_default()
}

/// RFC 1123 label: what namespace names must be.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: what configmap names must be.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The random suffix of a `generateName` name.
pub fn generate_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The state and the file it lives in.
pub struct Store {
    path: PathBuf,
    pub state: State,
}

impl Store {
    /// Loads `<dir>/standin-state.json` (creating the dir if needed) and makes
    /// sure the system namespaces exist.
    pub fn load(dir: &Path) -> Result<Store> {
        fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        let mut state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let before = state.clone();
        for ns in SYSTEM_NAMESPACES {
            state.ensure_namespace(ns);
        }
        let names: Vec<String> = state.namespaces.keys().cloned().collect();
        for ns in names {
            state.ensure_namespace(&ns);
        }
        let store = Store { path, state };
        if store.state != before {
            store.save()?;
        }
        Ok(store)
    }

    /// Atomically replaces the state file: temp file, fsync, rename, fsync dir.
    pub fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&self.state)?;
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path).with_context(|| format!("renaming to {}", self.path.display()))?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("standin-{tag}-{}-{:x}", std::process::id(), random_u64()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn fresh_store_has_system_namespaces_and_default_sas() {
        let dir = temp_dir("fresh");
        let store = Store::load(&dir).unwrap();
        for ns in SYSTEM_NAMESPACES {
            assert!(store.state.get(Res::Namespaces, "", ns).is_some(), "{ns}");
            assert!(store.state.get(Res::ServiceAccounts, ns, "default").is_some(), "{ns}");
        }
        assert!(dir.join(STATE_FILE).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = temp_dir("roundtrip");
        let mut store = Store::load(&dir).unwrap();
        let cm = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "demo", "namespace": "default"}, "data": {"a": "b"}});
        let stored = store.state.insert(Res::ConfigMaps, cm);
        store.state.ensure_namespace("extra");
        store.save().unwrap();

        let again = Store::load(&dir).unwrap();
        assert_eq!(again.state, store.state);
        assert_eq!(again.state.get(Res::ConfigMaps, "default", "demo"), Some(&stored));
        assert_eq!(again.state.list(Res::ServiceAccounts, Some("extra")).len(), 1);
        assert_eq!(again.state.list(Res::ServiceAccounts, None).len(), 5);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uids_look_like_uuids() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
