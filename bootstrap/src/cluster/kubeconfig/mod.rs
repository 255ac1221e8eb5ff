//! Merging our cluster, user and context into the user's kubeconfig while
//! preserving every other entry and field. The file is the first one in
//! `$KUBECONFIG`, else `~/.kube/config`. Writes are atomic, mode 0600, under a
//! lock. A kubeconfig that does not parse, or that its owner made
//! read-only, is never overwritten.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use kubestrap_fskit::{self as fskit, FsError, caps};
use serde_norway::{Mapping, Value};

mod lock;

use lock::KubectlLock;

use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot find the kubeconfig")]
    NoPath,
    #[error("cannot read kubeconfig {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("kubeconfig {} does not parse ({why}); kubestrap left it untouched", path.display())]
    NotParsed { path: PathBuf, why: String },
    #[error(
        "kubeconfig {} is read-only (mode {mode:o}); kubestrap does not change it, as kubectl would not",
        path.display()
    )]
    ReadOnly { path: PathBuf, mode: u32 },
    #[error("cannot write the kubeconfig in {}: {reason}", dir.display())]
    DirNotWritable { dir: PathBuf, reason: String },
    #[error("cannot write kubeconfig: {0}")]
    Write(#[source] FsError),
    #[error(
        "{} has existed for {secs}s: another program (kubectl?) is changing the kubeconfig, or one was killed while doing so",
        lock.display()
    )]
    Busy { lock: PathBuf, secs: u64 },
}

impl KubeconfigError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        use KubeconfigError as E;
        Some(match self {
            E::NoPath => "set KUBECONFIG or HOME".into(),
            E::NotParsed { .. } => "fix it, or point KUBECONFIG at another file".into(),
            E::ReadOnly { path, .. } => format!(
                "make it writable (`chmod u+w {}`), or point KUBECONFIG at another file (e.g. KUBECONFIG=$HOME/.kube/kubestrap)",
                path.display()
            ),
            E::DirNotWritable { .. } => "point KUBECONFIG at a file in a directory you can write".into(),
            E::Busy { lock, .. } => format!("if no kubectl is running, remove {} and retry", lock.display()),
            E::Unreadable { .. } | E::Write(_) => return None,
        })
    }
}

type Result<T, E = KubeconfigError> = std::result::Result<T, E>;

/// The kubeconfig file kubestrap writes to: the first of `KUBECONFIG`'s
/// files (as kubectl writes to), else `~/.kube/config`.
pub fn path(env: &crate::env::Environment) -> Result<PathBuf> {
    if let Some(list) = &env.kubeconfig
        && let Some(first) = std::env::split_paths(list).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = env.home.as_ref().ok_or(KubeconfigError::NoPath)?;
    Ok(home.join(".kube/config"))
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
    let text = match fskit::read_capped_text(path, caps::KUBECONFIG) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(Mapping::new()),
        Err(e @ FsError::NotText { .. }) => {
            return Err(KubeconfigError::NotParsed { path: path.into(), why: e.to_string() });
        }
        Err(e) => return Err(KubeconfigError::Unreadable { path: path.into(), reason: e.to_string() }),
    };
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    let not_parsed = |why: String| KubeconfigError::NotParsed { path: path.into(), why };
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
fn to_yaml(doc: &Mapping) -> String {
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    serde_saphyr::to_string_with_options(doc, options).expect("a parsed kubeconfig serializes")
}

fn write(path: &Path, doc: &Mapping) -> Result<()> {
    fskit::write_atomic(path, to_yaml(doc).as_bytes(), 0o600).map_err(KubeconfigError::Write)
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

fn with_locked<T>(path: &Path, progress: &dyn Progress, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let real = resolve(path);
    // kubestraps (of any home) take turns on the kubeconfig's directory, so
    // only one at a time deals with kubectl's lock file below.
    let dir = real.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let not_writable =
        |e: &dyn std::fmt::Display| KubeconfigError::DirNotWritable { dir: dir.into(), reason: e.to_string() };
    fs::create_dir_all(dir).map_err(|e| not_writable(&e))?;
    let _guard = fskit::lock_dir(dir).map_err(|e| not_writable(&e))?;
    // kubectl locks the path it was given, not a symlink's target: take both
    // when they are two files (not two spellings of one path).
    let _kubectl = KubectlLock::take(path, progress)?;
    let _kubectl_real = if in_real_dir(path) != real { Some(KubectlLock::take(&real, progress)?) } else { None };
    // A write killed half-way leaves a temp file holding admin keys: gone now.
    fskit::remove_stale_temps(&real);
    f(&real)
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

/// Fails (touching nothing) if kubestrap could not update the kubeconfig:
/// it does not parse, its owner made it read-only, or its directory cannot
/// be written. `start` checks this before it launches anything.
pub fn check(path: &Path) -> Result<()> {
    let real = resolve(path);
    read(&real)?;
    if let Ok(meta) = fs::metadata(&real) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o222 == 0 || !writable(&real) {
            return Err(KubeconfigError::ReadOnly { path: path.into(), mode });
        }
    }
    // The directory (or the nearest one that exists, to create it in).
    let dir = real.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    if !writable(existing) {
        return Err(KubeconfigError::DirNotWritable {
            dir: existing.into(),
            reason: "permission denied (or a read-only filesystem)".into(),
        });
    }
    Ok(())
}

/// Whether this user may write `path` (access(2), which also says no on a
/// read-only filesystem).
fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Adds or updates our entries; sets current-context if `set_current`.
pub fn merge(path: &Path, e: &Entry, set_current: bool, progress: &dyn Progress) -> Result<()> {
    with_locked(path, progress, |real| {
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
pub fn remove(path: &Path, name: &str, progress: &dyn Progress) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    with_locked(path, progress, |real| {
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
mod tests;
