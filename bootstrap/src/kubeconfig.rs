//! Merging our cluster, user and context into the user's kubeconfig while
//! preserving every other entry and field. The file is the first one in
//! `$KUBECONFIG`, else `~/.kube/config`. Writes are atomic, mode 0600, under a
//! lock. A kubeconfig that does not parse is never overwritten.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde_norway::{Mapping, Value};

use crate::driver::process::ProcId;
use crate::exit::{Code, coded};
use crate::fsutil;
use crate::home;

/// The kubeconfig file kubestrap writes to.
pub fn path() -> Result<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty())
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find the kubeconfig: set KUBECONFIG or HOME")?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// What we put in a kubeconfig for one profile.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The cluster, user and context name.
    pub name: String,
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Vec<u8>,
    pub client_key_pem: Vec<u8>,
}

/// The kubeconfig name of a profile: `kubestrap` for the default profile,
/// `kubestrap-<name>` for others.
pub fn context_name(profile: &str) -> String {
    if profile == "kubestrap" { profile.to_string() } else { format!("kubestrap-{profile}") }
}

const LISTS: [(&str, &str); 3] = [("clusters", "cluster"), ("users", "user"), ("contexts", "context")];

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Reads and parses a kubeconfig; a missing or empty file is an empty config.
fn read(path: &Path) -> Result<Mapping> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Mapping::new()),
        Err(e) => return Err(coded(Code::Kubeconfig, format!("cannot read kubeconfig {}: {e}", path.display()))),
    };
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    let not_parsed = |why: String| {
        coded(
            Code::Kubeconfig,
            format!(
                "kubeconfig {} does not parse ({why}); kubestrap left it untouched. Fix it, or point KUBECONFIG at another file",
                path.display()
            ),
        )
    };
    match serde_norway::from_str::<Value>(&text) {
        Ok(Value::Mapping(m)) => {
            for (list, _) in LISTS {
                if let Some(v) = m.get(key(list))
                    && !matches!(v, Value::Sequence(_) | Value::Null)
                {
                    return Err(not_parsed(format!("`{list}` is not a list")));
                }
            }
            Ok(m)
        }
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(not_parsed("not a mapping".into())),
        Err(e) => Err(not_parsed(e.to_string())),
    }
}

/// Serializes a kubeconfig for kubectl, whose YAML reader follows YAML 1.1:
/// a string such as `on`, `no`, `y` or `1:20` is quoted so it stays a string
/// (serde_norway would write it bare and kubectl would read a bool or a
/// number), and long strings stay on one line rather than in block style.
fn to_yaml(doc: &Mapping) -> Result<String> {
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    serde_saphyr::to_string_with_options(doc, options).context("cannot serialize kubeconfig")
}

fn write(path: &Path, doc: &Mapping) -> Result<()> {
    let text = to_yaml(doc)?;
    fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|e| coded(Code::Kubeconfig, format!("{e:#}")))
}

/// The real file behind a symlinked kubeconfig (dotfile managers do this),
/// also when the link points at a file not made yet: it is written there,
/// and the link is kept.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(real) = fs::canonicalize(path) {
        return real;
    }
    match fs::read_link(path) {
        Ok(target) => in_real_dir(&path.parent().map_or(target.clone(), |dir| dir.join(&target))),
        Err(_) => in_real_dir(path),
    }
}

/// `path` with its directory resolved (the file itself need not exist).
fn in_real_dir(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

fn with_locked<T>(path: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let real = resolve(path);
    // kubestraps (of any home) take turns on the kubeconfig's directory, so
    // only one at a time deals with kubectl's lock file below.
    let dir = real.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| coded(Code::Kubeconfig, format!("cannot create {}: {e}", dir.display())))?;
    let _guard = home::lock_dir(dir)?;
    // kubectl locks the path it was given, not a symlink's target: take both
    // when they are two files (not two spellings of one path).
    let _kubectl = KubectlLock::take(path)?;
    let _kubectl_real = if in_real_dir(path) != real { Some(KubectlLock::take(&real)?) } else { None };
    // A write killed half-way leaves a temp file holding admin keys: gone now.
    fsutil::remove_stale_temps(&real);
    f(&real)
}

/// kubectl's own lock on a kubeconfig (client-go): `<file>.lock`, created
/// exclusively for the length of a write and removed after. Taking it too
/// means a `kubectl config ...` running at the same moment never loses its
/// change or ours. Ours records who holds it, so one left by a killed
/// kubestrap is recognised and removed (only one kubestrap at a time gets
/// here: see `with_locked`); kubectl's is waited for.
struct KubectlLock(PathBuf);

impl KubectlLock {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    fn take(kubeconfig: &Path) -> Result<KubectlLock> {
        let mut s = kubeconfig.as_os_str().to_owned();
        s.push(".lock");
        let path = PathBuf::from(s);
        let me = ProcId::of(std::process::id() as i32).context("cannot identify this process")?;
        // The lock appears with its owner already written in it (a hard link
        // to a finished temp file), so a kill can never leave an empty lock
        // that looks like kubectl's.
        let owner = fsutil::temp_sibling(&path);
        fs::write(&owner, format!("kubestrap {} {}\n", me.pid, me.start_time))
            .map_err(|e| coded(Code::Kubeconfig, format!("cannot write {}: {e}", owner.display())))?;
        let taken = Self::link(&owner, &path);
        let _ = fs::remove_file(&owner);
        taken
    }

    fn link(owner: &Path, path: &Path) -> Result<KubectlLock> {
        let deadline = std::time::Instant::now() + Self::WAIT;
        loop {
            match fs::hard_link(owner, path) {
                Ok(()) => return Ok(KubectlLock(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::left_by_dead_kubestrap(path) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                }
                Err(e) => return Err(coded(Code::Kubeconfig, format!("cannot create {}: {e}", path.display()))),
            }
            if std::time::Instant::now() >= deadline {
                return Err(coded(
                    Code::Kubeconfig,
                    format!(
                        "{} has existed for {}s: another program (kubectl?) is changing the kubeconfig, or one was killed while doing so. If none is running, remove {} and retry",
                        path.display(),
                        Self::WAIT.as_secs(),
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn left_by_dead_kubestrap(path: &Path) -> bool {
        let Ok(text) = fs::read_to_string(path) else { return false };
        let mut w = text.split_whitespace();
        match (w.next(), w.next().and_then(|p| p.parse().ok()), w.next().and_then(|t| t.parse().ok())) {
            (Some("kubestrap"), Some(pid), Some(start_time)) => !ProcId { pid, start_time }.alive(),
            _ => false,
        }
    }
}

impl Drop for KubectlLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn upsert(doc: &mut Mapping, list: &str, item_key: &str, name: &str, mut body: Mapping) {
    let seq = doc.entry(key(list)).or_insert_with(|| Value::Sequence(Vec::new()));
    if !seq.is_sequence() {
        *seq = Value::Sequence(Vec::new());
    }
    let seq = seq.as_sequence_mut().expect("sequence");
    let existing = seq.iter_mut().find(|v| v.get("name").and_then(Value::as_str) == Some(name));
    // Our cluster and user are ours: replaced whole, so no stale credential
    // (a token, a certificate path) lingers beside the new ones; only
    // `extensions`, which tools add to entries, is kept. Our context holds
    // no credential: what the user set on it (a namespace…) is kept.
    if let Some(Value::Mapping(old)) = existing.as_ref().and_then(|e| e.get(item_key)) {
        for (k, v) in old {
            if (list == "contexts" || k.as_str() == Some("extensions")) && !body.contains_key(k) {
                body.insert(k.clone(), v.clone());
            }
        }
    }
    let mut item = Mapping::new();
    item.insert(key("name"), key(name));
    item.insert(key(item_key), Value::Mapping(body));
    match existing {
        Some(existing) => *existing = Value::Mapping(item),
        None => seq.push(Value::Mapping(item)),
    }
}

/// Fails (touching nothing) if the kubeconfig exists but does not parse, so
/// `start` can refuse before it launches anything.
pub fn check(path: &Path) -> Result<()> {
    read(&resolve(path)).map(|_| ())
}

/// Adds or updates our entries; sets current-context if `set_current`.
pub fn merge(path: &Path, e: &Entry, set_current: bool) -> Result<()> {
    with_locked(path, |real| {
        let mut doc = read(real)?;
        let b64 = |b: &[u8]| key(&base64::engine::general_purpose::STANDARD.encode(b));
        doc.entry(key("apiVersion")).or_insert_with(|| key("v1"));
        doc.entry(key("kind")).or_insert_with(|| key("Config"));
        let mut cluster = Mapping::new();
        cluster.insert(key("server"), key(&e.server));
        cluster.insert(key("certificate-authority-data"), b64(&e.ca_pem));
        upsert(&mut doc, "clusters", "cluster", &e.name, cluster);
        let mut user = Mapping::new();
        user.insert(key("client-certificate-data"), b64(&e.client_cert_pem));
        user.insert(key("client-key-data"), b64(&e.client_key_pem));
        upsert(&mut doc, "users", "user", &e.name, user);
        let mut ctx = Mapping::new();
        ctx.insert(key("cluster"), key(&e.name));
        ctx.insert(key("user"), key(&e.name));
        upsert(&mut doc, "contexts", "context", &e.name, ctx);
        if set_current {
            doc.insert(key("current-context"), key(&e.name));
        }
        write(real, &doc)
    })
}

/// Removes our entries (and current-context if it was ours). Missing file or
/// entries are fine.
pub fn remove(path: &Path, name: &str) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    with_locked(path, |real| {
        let mut doc = read(real)?;
        let mut changed = false;
        for (list, _) in LISTS {
            if let Some(Value::Sequence(seq)) = doc.get_mut(key(list)) {
                let before = seq.len();
                seq.retain(|v| v.get("name").and_then(Value::as_str) != Some(name));
                changed |= seq.len() != before;
            }
        }
        if doc.get(key("current-context")).and_then(Value::as_str) == Some(name) {
            doc.insert(key("current-context"), key(""));
            changed = true;
        }
        if changed {
            write(real, &doc)?;
        }
        Ok(changed)
    })
}

/// Our context's state in the kubeconfig, for `status`.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Present and pointing at this server.
    Configured {
        current: bool,
    },
    /// Present but pointing elsewhere (e.g. a stale port).
    Misconfigured {
        server: String,
    },
    Missing,
}

pub fn state(path: &Path, name: &str, server: &str) -> Result<State> {
    let doc = read(&resolve(path))?;
    let found = doc
        .get(key("clusters"))
        .and_then(Value::as_sequence)
        .and_then(|seq| seq.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(name)))
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("server"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let has_context = doc
        .get(key("contexts"))
        .and_then(Value::as_sequence)
        .is_some_and(|seq| seq.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(name)));
    Ok(match found {
        Some(s) if s == server && has_context => {
            State::Configured { current: doc.get(key("current-context")).and_then(Value::as_str) == Some(name) }
        }
        Some(s) => State::Misconfigured { server: s },
        None => State::Missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(name: &str, port: u16) -> Entry {
        Entry {
            name: name.into(),
            server: format!("https://127.0.0.1:{port}"),
            ca_pem: b"CA".to_vec(),
            client_cert_pem: b"CERT".to_vec(),
            client_key_pem: b"KEY".to_vec(),
        }
    }

    const OTHER: &str = "apiVersion: v1\nkind: Config\npreferences:\n  colors: true\nclusters:\n- name: prod\n  cluster:\n    server: https://prod.example:6443\n    extensions:\n    - name: x\n      extension: {a: 1}\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\n    namespace: web\nusers:\n- name: prod\n  user:\n    token: secret\ncurrent-context: prod\n";

    #[test]
    fn merge_preserves_others_and_remove_restores() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        fs::write(&p, OTHER).unwrap();
        merge(&p, &entry("kubestrap", 8443), true).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(doc["current-context"], key("kubestrap"));
        assert_eq!(doc["preferences"]["colors"], Value::Bool(true));
        assert_eq!(doc["contexts"][0]["context"]["namespace"], key("web"));
        assert_eq!(doc["clusters"][0]["cluster"]["extensions"][0]["name"], key("x"));
        assert_eq!(state(&p, "kubestrap", "https://127.0.0.1:8443").unwrap(), State::Configured { current: true });
        assert!(matches!(state(&p, "kubestrap", "https://127.0.0.1:9999").unwrap(), State::Misconfigured { .. }));
        // Updating in place keeps one entry.
        merge(&p, &entry("kubestrap", 8444), false).unwrap();
        let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(doc["clusters"].as_sequence().unwrap().len(), 2);
        assert!(remove(&p, "kubestrap").unwrap());
        let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        let original: Value = serde_norway::from_str(OTHER).unwrap();
        assert_eq!(doc["clusters"], original["clusters"]);
        assert_eq!(doc["users"], original["users"]);
        assert_eq!(doc["contexts"], original["contexts"]);
        assert_eq!(state(&p, "kubestrap", "x").unwrap(), State::Missing);
    }

    #[test]
    fn malformed_kubeconfig_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        let bad = "clusters: [\n  - name: oops\n";
        fs::write(&p, bad).unwrap();
        let e = merge(&p, &entry("kubestrap", 8443), true).unwrap_err();
        assert!(e.to_string().contains("left it untouched"), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), bad);
        fs::write(&p, "clusters: 5\n").unwrap();
        assert!(merge(&p, &entry("kubestrap", 8443), true).is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), "clusters: 5\n");
    }

    #[test]
    fn creates_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nested/config");
        merge(&p, &entry("kubestrap-dev", 9443), true).unwrap();
        // No lock file or temp file is left beside it.
        let names: Vec<String> =
            fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["config"]);
        let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(doc["kind"], key("Config"));
        assert_eq!(doc["users"][0]["user"]["client-key-data"], key("S0VZ"));
    }

    /// Values a YAML 1.1 reader (kubectl's) would take for bools, numbers or
    /// timestamps unless they are quoted.
    const TRICKY: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: odd\n  cluster:\n    server: 'https://odd.example:6443'\n    tls-server-name: 'on'\n    proxy-url: 'y'\n- name: kubestrap\n  cluster:\n    server: https://old:1\n    certificate-authority: /old/ca.crt\n    extensions:\n    - name: keep\n      extension: {a: b}\ncontexts:\n- name: odd\n  context:\n    cluster: odd\n    user: odd\n    namespace: 'no'\n- name: times\n  context:\n    cluster: odd\n    user: odd\n    namespace: '2001-12-14'\n- name: sexagesimal\n  context:\n    cluster: odd\n    user: odd\n    namespace: '1:20'\nusers:\n- name: odd\n  user:\n    username: 'off'\n    password: 'null'\n- name: kubestrap\n  user:\n    token: stale\ncurrent-context: odd\n";

    /// `kubectl config view -o json --raw` of a kubeconfig file.
    fn kubectl_view(kubectl: &str, p: &Path) -> serde_json::Value {
        let out = std::process::Command::new(kubectl)
            .args(["config", "view", "-o", "json", "--raw"])
            .env("KUBECONFIG", p)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl config view: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn named<'a>(v: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
        v[list].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or(&serde_json::Value::Null)
    }

    #[test]
    fn kubectl_reads_every_other_entry_unchanged_after_a_merge() {
        let Some(kubectl) = ["/usr/lib/google-cloud-sdk/bin/kubectl.1.33", "/usr/bin/kubectl"]
            .into_iter()
            .find(|k| Path::new(k).is_file())
        else {
            println!("SKIPPED: no kubectl on this machine");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        fs::write(&p, TRICKY).unwrap();
        let before = kubectl_view(kubectl, &p);
        merge(&p, &entry("kubestrap", 8443), false).unwrap();
        let after = kubectl_view(kubectl, &p);
        assert_eq!(named(&after, "clusters", "odd"), named(&before, "clusters", "odd"));
        assert_eq!(named(&after, "users", "odd"), named(&before, "users", "odd"));
        for ctx in ["odd", "times", "sexagesimal"] {
            assert_eq!(named(&after, "contexts", ctx), named(&before, "contexts", ctx));
        }
        assert_eq!(after["current-context"], "odd");
        // A namespace set on our context survives the next start.
        let out = std::process::Command::new(kubectl)
            .args(["config", "set-context", "kubestrap", "--namespace=team"])
            .env("KUBECONFIG", &p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        merge(&p, &entry("kubestrap", 8443), false).unwrap();
        let after = kubectl_view(kubectl, &p);
        assert_eq!(named(&after, "contexts", "kubestrap")["context"]["namespace"], "team");
        // Our cluster and user were replaced whole: no stale token or CA path, extensions kept.
        let ours = &named(&after, "users", "kubestrap")["user"];
        assert!(ours.get("token").is_none() && ours["client-key-data"] == "S0VZ", "{ours}");
        let ours = &named(&after, "clusters", "kubestrap")["cluster"];
        assert!(ours.get("certificate-authority").is_none(), "{ours}");
        assert_eq!(ours["server"], "https://127.0.0.1:8443");
        assert_eq!(ours["extensions"][0]["name"], "keep", "{ours}");
        // And the same after our entries are removed again.
        assert!(remove(&p, "kubestrap").unwrap());
        let removed = kubectl_view(kubectl, &p);
        assert_eq!(named(&removed, "contexts", "odd"), named(&before, "contexts", "odd"));
        assert_eq!(named(&removed, "users", "odd"), named(&before, "users", "odd"));
        assert_eq!(named(&removed, "clusters", "kubestrap"), &serde_json::Value::Null);
    }

    #[test]
    fn temp_files_left_by_a_killed_write_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        let stale = dir.path().join(".config.4242.abc.tmp");
        fs::write(&stale, "client-key-data: secret").unwrap();
        let unrelated = dir.path().join(".other.1.tmp");
        fs::write(&unrelated, "x").unwrap();
        merge(&p, &entry("kubestrap", 8443), true).unwrap();
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn a_relative_or_symlinked_kubeconfig_is_locked_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-config");
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        merge(&link, &entry("kubestrap", 8443), true).unwrap();
        // Now the target exists: both locks (link and target) are taken and released.
        merge(&link, &entry("kubestrap", 8444), true).unwrap();
        assert!(!dir.path().join("config.lock").exists() && !dir.path().join("real-config.lock").exists());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is kept");
        assert_eq!(state(&real, "kubestrap", "https://127.0.0.1:8444").unwrap(), State::Configured { current: true });
        // Another spelling of one file (through a linked directory) is one
        // file, one lock: no waiting on our own lock.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("same-dir")).unwrap();
        let other = dir.path().join("same-dir/plain-config");
        merge(&other, &entry("kubestrap", 8443), true).unwrap();
        let t = std::time::Instant::now();
        merge(&other, &entry("kubestrap", 8444), true).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "waited on its own lock: {:?}", t.elapsed());
    }

    #[test]
    fn waits_for_kubectls_lock_and_clears_a_dead_kubestraps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        let lock = dir.path().join("config.lock");
        // Held by kubectl (empty file, as client-go makes it): we wait for it.
        fs::write(&lock, "").unwrap();
        let l2 = lock.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            fs::remove_file(l2).unwrap();
        });
        let t = std::time::Instant::now();
        merge(&p, &entry("kubestrap", 8443), true).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(250), "did not wait for kubectl's lock");
        releaser.join().unwrap();
        assert!(!lock.exists(), "our lock is released");
        // Left by a kubestrap that died: removed, and the write goes ahead.
        fs::write(&lock, "kubestrap 999999 1\n").unwrap();
        merge(&p, &entry("kubestrap", 8444), true).unwrap();
        assert!(!lock.exists());
        assert_eq!(state(&p, "kubestrap", "https://127.0.0.1:8444").unwrap(), State::Configured { current: true });
    }
}
