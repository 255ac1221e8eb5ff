//! Where a manifest comes from — a file, a URL, a copy kept in the home (and
//! next a bundle) — and whether it is accepted ([`policy`]: signature over the
//! exact bytes before parsing, then schema, expiry, `requires-bootstrap` and
//! rollback). An accepted manifest is kept in `manifests/` (with its
//! signature) for offline use.

use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit};
use kubestrap_manifest::Manifest;
use kubestrap_signing::KeyListFile;

use crate::artifacts;
use crate::home::Home;
use crate::progress::Progress;
use crate::urls::Location;

pub mod bundle;
mod error;
pub mod generate;
pub mod index;
pub mod keys;
pub mod policy;
mod read;

pub use error::ChannelError;
pub use keys::{BUILTIN_ANCHOR, Trusted};

type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// The channel kubestrap follows when no manifest is named.
pub const DEFAULT_CHANNEL_URL: &str = "https://kubestrap.dev/channels/stable/manifest.toml";
/// The `channel` a manifest served at [`DEFAULT_CHANNEL_URL`] must declare.
pub const DEFAULT_CHANNEL: &str = "stable";

/// A verified, parsed manifest.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Manifest,
    /// Where it is kept in the home.
    pub path: PathBuf,
    pub trusted: Trusted,
}

/// What `start` asks for.
pub struct Want<'a> {
    /// `--manifest`: a path or URL.
    pub spec: Option<&'a str>,
    /// The manifest the profile runs, if it exists.
    pub current: Option<&'a Path>,
    /// A release to run again with none named: the one a profile ran
    /// before the delete a killed command left was finished.
    pub again: Option<&'a Path>,
    pub allow_expired: bool,
    pub fetch: &'a artifacts::Options,
}

/// The manifest a start uses: the one named, else the one the profile runs
/// (or ran before a delete cut short, when it is still valid), else the
/// home's default, else the channel's newest (falling back to the newest kept here only when
/// the channel cannot be reached: a bad, old or expired manifest is an
/// answer, not an outage — freeze protection). Warnings are reported.
pub fn resolve(home: &Home, want: &Want<'_>, progress: &dyn Progress) -> Result<Loaded> {
    let loaded = match (want.spec, want.current) {
        (Some(spec), _) => load(home, Some(spec), want.fetch, want.allow_expired, progress)?,
        (None, Some(current)) => load_stored(home, current, Stored::current(want.allow_expired))?,
        (None, None) => match want.again.and_then(|a| load_stored(home, a, Stored::fresh(want.allow_expired)).ok()) {
            Some(again) => again,
            None => default_or_channel(home, want, progress)?,
        },
    };
    if want.spec.is_none() {
        for w in &loaded.trusted.warnings {
            progress.warn(w.clone());
        }
    }
    Ok(loaded)
}

/// With nothing named and no profile: the home's default (installed from a
/// bundle: that release, with no network), else the channel's newest.
fn default_or_channel(home: &Home, want: &Want<'_>, progress: &dyn Progress) -> Result<Loaded> {
    if let Some(path) = default_manifest(home) {
        return load_stored(home, &path, Stored::fresh(want.allow_expired));
    }
    let mut fallback = None;
    if !want.fetch.offline {
        match load(home, None, want.fetch, want.allow_expired, progress) {
            Ok(l) => return Ok(l),
            Err(e @ ChannelError::Download { .. }) => match newest_stored(home)? {
                Some(path) => {
                    progress.warn(format!(
                        "{e}; using the newest {DEFAULT_CHANNEL} manifest kept here, {}",
                        path.display()
                    ));
                    fallback = Some(path);
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    let path = match fallback {
        Some(p) => p,
        None => newest_stored(home)?.ok_or(ChannelError::NoneKept)?,
    };
    load_stored(home, &path, Stored::fresh(want.allow_expired))
}

/// Loads, verifies and records the manifest named by `spec` (a path or URL),
/// or, with none named, the channel's. Warnings are reported.
pub fn load(
    home: &Home,
    spec: Option<&str>,
    opts: &artifacts::Options,
    allow_expired: bool,
    progress: &dyn Progress,
) -> Result<Loaded> {
    let at = Location::parse(spec.unwrap_or(DEFAULT_CHANNEL_URL));
    let signed = read::read_signed(&at, opts)?;
    import_channel_keys(home, &at, opts, allow_expired, progress);
    let official = matches!(&at, Location::Http(u) if u.as_str() == DEFAULT_CHANNEL_URL);
    let loaded = accept(home, &at.to_string(), official, &signed.bytes, &signed.sig, allow_expired)?;
    for w in &loaded.trusted.warnings {
        progress.warn(w.clone());
    }
    Ok(loaded)
}

/// Verifies the manifest at `spec` (path or URL) without recording anything
/// (`upgrade --dry-run`).
pub fn verify_only(home: &Home, spec: &str, opts: &artifacts::Options, allow_expired: bool) -> Result<Loaded> {
    let at = Location::parse(spec);
    let signed = read::read_signed(&at, opts)?;
    let label = at.to_string();
    let i = inspect_bytes(home, &label, &signed.bytes, &signed.sig, &[], allow_expired, Vec::new())?;
    Ok(Loaded {
        manifest: i.manifest,
        path: at.as_path().map_or_else(|| PathBuf::from(&label), Path::to_path_buf),
        trusted: i.trusted,
    })
}

/// How a manifest kept in the home is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// An expired one is accepted (with a warning).
    pub allow_expired: bool,
    /// It is what a profile runs: expiry only warns, it never stops a
    /// running cluster from being stopped, restarted or upgraded.
    pub running: bool,
}

impl Stored {
    /// A release a profile runs (or ran, and may run again).
    pub const RUNNING: Stored = Stored { allow_expired: true, running: true };
    /// A release the profile runs, expiry as the user asked.
    pub fn current(allow_expired: bool) -> Stored {
        Stored { allow_expired, running: true }
    }
    /// A release to start anew from the home's copies.
    pub fn fresh(allow_expired: bool) -> Stored {
        Stored { allow_expired, running: false }
    }
}

pub fn load_stored(home: &Home, path: &Path, how: Stored) -> Result<Loaded> {
    let signed = read::read_stored(path)?;
    let label = path.display().to_string();
    let doc = policy::Document { label: &label, bytes: &signed.bytes, sig: &signed.sig };
    let mut trusted = policy::verify_manifest(home, &doc, &policy::Check::taken(how.allow_expired))?;
    let manifest = Manifest::parse(&signed.bytes, path)?;
    trusted.warnings.extend(policy::check_fresh(&manifest, &label, how.allow_expired, how.running)?);
    Ok(Loaded { manifest, path: path.to_path_buf(), trusted })
}

/// Verifies bytes + signature and records the manifest (rollback state and a
/// copy in the home). `label` names where it came from (redacted);
/// `official`: it was served at the official channel URL.
pub fn accept(
    home: &Home,
    label: &str,
    official: bool,
    bytes: &[u8],
    sig: &str,
    allow_expired: bool,
) -> Result<Loaded> {
    let label = label.to_string();
    // Signature first, over the exact bytes; nothing is parsed before it holds.
    let doc = policy::Document { label: &label, bytes, sig };
    let mut trusted = policy::verify_manifest(home, &doc, &policy::Check::taken(allow_expired))?;
    let manifest = Manifest::parse(bytes, Path::new(&label))?;
    if official && trusted.path.via_pinned_key() {
        return Err(ChannelError::NotOfficial { location: label, trust: trusted.path.to_string() });
    }
    if official && manifest.channel != DEFAULT_CHANNEL {
        // A validly signed manifest of another channel (an old beta, say)
        // served in its place: refused before anything is recorded.
        return Err(ChannelError::WrongChannel { location: label, got: manifest.channel, want: DEFAULT_CHANNEL });
    }
    trusted.warnings.extend(policy::check_fresh(&manifest, &label, allow_expired, false)?);
    trusted.warnings.extend(policy::check_not_rolled_back(home, &manifest, &trusted, bytes)?);
    // Named by its rollback record, so two private channels of one name (or
    // a private one named like the official) never overwrite each other.
    let path =
        home.manifests().join(format!("{}-{}.toml", policy::seen_channel(&manifest, &trusted), manifest.version));
    if fskit::read_capped(&path, fskit::caps::DOCUMENT).ok().as_deref() != Some(bytes) {
        fskit::write_atomic(&fskit::signature_path(&path), sig.as_bytes(), 0o644)?;
        fskit::write_atomic(&path, bytes, 0o644)?;
    }
    Ok(Loaded { manifest, path, trusted })
}

/// A channel may publish its newest key list as `keys.toml` (+ `.minisig`)
/// beside the manifest; if so it is verified against the chain this home
/// trusts and kept, so release keys can rotate without a new kubestrap. One
/// that cannot be read or used is said and left out.
pub(super) fn import_channel_keys(
    home: &Home,
    manifest: &Location,
    opts: &artifacts::Options,
    allow_expired: bool,
    progress: &dyn Progress,
) {
    let at = manifest.sibling("keys.toml");
    let Ok(signed) = read::read_signed(&at, opts) else { return };
    let file = KeyListFile::new(at.to_string(), signed.bytes, signed.sig);
    match keys::import_key_list(home, file, allow_expired) {
        Ok(v) => tracing::debug!(version = v, "key list {at} accepted"),
        Err(e) => progress.warn(format!("ignoring the key list {at}: {e}")),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Default {
    manifest: PathBuf,
}

fn default_path(home: &Home) -> PathBuf {
    home.root().join("state/default.toml")
}

/// The manifest `kubestrap install` made this home's default: what `start`
/// with no manifest named uses (a kept file; none if it is gone).
pub fn default_manifest(home: &Home) -> Option<PathBuf> {
    crate::state::read::<Default>(&default_path(home)).ok().flatten().map(|d| d.manifest).filter(|p| p.is_file())
}

/// Makes a kept manifest this home's default.
pub fn set_default(home: &Home, manifest: &Path) -> Result<()> {
    Ok(crate::state::write(&default_path(home), &Default { manifest: manifest.into() })?)
}

/// Stored manifests, newest version first per channel. A damaged one is
/// skipped (it is re-verified before any use anyway).
pub fn stored(home: &Home) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    for e in fskit::list_dir(&home.manifests())? {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml")
            && let Ok(bytes) = fskit::read_capped(&p, fskit::caps::DOCUMENT)
            && let Ok(m) = Manifest::parse(&bytes, &p)
        {
            out.push((p, m));
        }
    }
    out.sort_by(|a, b| {
        (&a.1.channel, std::cmp::Reverse(a.1.version)).cmp(&(&b.1.channel, std::cmp::Reverse(b.1.version)))
    });
    Ok(out)
}

/// Parses a manifest kept in the home to read its settings (stop signal,
/// versions); nothing from it is executed. `None` if it is gone or damaged.
pub fn peek(path: &Path) -> Option<Manifest> {
    let bytes = fskit::read_capped(path, fskit::caps::DOCUMENT).ok()?;
    Manifest::parse(&bytes, path).ok()
}

fn newest_stored(home: &Home) -> Result<Option<PathBuf>> {
    Ok(stored(home)?
        .into_iter()
        // The official record only (`stable-<v>.toml`), never a private
        // channel that calls itself stable (`stable@<key>-<v>.toml`).
        .filter(|(p, m)| {
            m.channel == DEFAULT_CHANNEL
                && p.file_name().is_some_and(|n| *n == *format!("{DEFAULT_CHANNEL}-{}.toml", m.version))
        })
        .max_by_key(|(_, m)| m.version)
        .map(|(p, _)| p))
}

/// What `manifest verify` shows: verification without side effects (no
/// rollback state recorded).
pub struct Inspected {
    pub manifest: Manifest,
    pub trusted: Trusted,
    pub warnings: Vec<String>,
    /// The highest version of its channel this home has seen.
    pub highest_seen: Option<u64>,
}

/// Verifies a manifest file without recording anything. A key list shipped
/// beside it is taken into account (not kept) when it is usable; one that is
/// not is said in the warnings and left out, as `fetch` does.
pub fn inspect(home: &Home, file: &Path, allow_expired: bool) -> Result<Inspected> {
    let signed = read::read_local(file)?;
    let label = file.display().to_string();
    let mut warnings = Vec::new();
    let beside = file.parent().map(|d| d.join("keys.toml")).filter(|p| p.is_file());
    let extra = beside.and_then(|p| match KeyListFile::from_path(&p) {
        Ok(f) => Some(f),
        Err(e) => {
            warnings.push(format!("ignoring the key list {}: {e}", p.display()));
            None
        }
    });
    // Only the list itself decides: once it is usable, what it says (a
    // revocation above all) applies.
    let extra = extra.filter(|f| match keys::check_key_list(home, f, allow_expired) {
        Ok(()) => true,
        Err(e) => {
            warnings.push(format!("ignoring the key list {}: {e}", f.label));
            false
        }
    });
    let extra: Vec<KeyListFile> = extra.into_iter().collect();
    inspect_bytes(home, &label, &signed.bytes, &signed.sig, &extra, allow_expired, warnings)
}

/// [`inspect`] of manifest bytes, with the key lists that came with them.
pub fn inspect_bytes(
    home: &Home,
    label: &str,
    bytes: &[u8],
    sig: &str,
    extra: &[KeyListFile],
    allow_expired: bool,
    mut warnings: Vec<String>,
) -> Result<Inspected> {
    let check = policy::Check { allow_expired, extra, record: policy::Record::Nothing };
    let trusted = policy::verify_manifest(home, &policy::Document { label, bytes, sig }, &check)?;
    let manifest = Manifest::parse(bytes, Path::new(label))?;
    warnings.extend(trusted.warnings.iter().cloned());
    warnings.extend(policy::check_fresh(&manifest, label, allow_expired, false)?);
    let seen = kubestrap_signing::SeenVersions::load(&home.seen_versions())?;
    let highest_seen = seen.get(&policy::seen_channel(&manifest, &trusted)).map(|e| e.version);
    Ok(Inspected { manifest, trusted, warnings, highest_seen })
}
