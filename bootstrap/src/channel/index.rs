//! The signed channel index: where `upgrade` and `self-update` learn the
//! newest manifest of a channel and the newest kubestrap. Verified through
//! the same key chains as manifests, with its own expiry and rollback
//! record (`@index`), and every file it names pinned by sha256 and size.

use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit, caps};
use kubestrap_manifest::ChannelIndex;
use kubestrap_signing as signing;

use super::{ChannelError, Loaded, policy, read};
use crate::artifacts;
use crate::env::Environment;
use crate::home::Home;
use crate::progress::Progress;
use crate::urls::Location;

type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// The index kubestrap follows when none is configured.
pub const DEFAULT_INDEX_URL: &str = "https://kubestrap.dev/channels/index.toml";

/// Where the index is: `--channel-url`, else `KUBESTRAP_CHANNEL_URL`, else
/// `channel-url` in the config file, else the built-in default.
pub fn index_url(flag: Option<&str>, env: &Environment) -> String {
    flag.map(str::to_string)
        .or_else(|| env.channel_url.clone())
        .or_else(|| config_get(env, "channel-url"))
        .unwrap_or_else(|| DEFAULT_INDEX_URL.to_string())
}

/// The keys `kubestrap config` knows.
pub const CONFIG_KEYS: &[&str] = &["channel-url"];

/// A key of kubestrap's config file (`$XDG_CONFIG_HOME/kubestrap/config.toml`).
pub fn config_get(env: &Environment, key: &str) -> Option<String> {
    let text = fskit::read_capped_text(env.config_file.as_ref()?, caps::STATE).ok()?;
    let t: toml::Table = toml::from_str(&text).ok()?;
    t.get(key)?.as_str().map(str::to_string)
}

/// Sets (or with `None` removes) a config key; returns the file.
pub fn config_set(env: &Environment, key: &str, value: Option<&str>) -> Result<PathBuf> {
    let path = env.config_file.clone().ok_or(ChannelError::NoConfigDir)?;
    let mut t: toml::Table = fskit::read_capped_text(&path, caps::STATE)
        .ok()
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default();
    match value {
        Some(v) => t.insert(key.into(), toml::Value::String(v.into())),
        None => t.remove(key),
    };
    fskit::write_atomic(&path, toml::to_string(&t).expect("a table serializes").as_bytes(), 0o644)?;
    Ok(path)
}

/// A verified index.
pub struct LoadedIndex {
    pub index: ChannelIndex,
    pub at: Location,
    /// Served at the official URL: only built-in roots may sign what it names.
    pub official: bool,
}

/// Reads and verifies the index at `url`. With `record`, its version is
/// recorded against rollback (and an older one refused); without, nothing
/// in the home changes (`--check`, `--dry-run`).
pub fn load(
    home: &Home,
    url: &str,
    opts: &artifacts::Options,
    allow_expired: bool,
    record: bool,
    progress: &dyn Progress,
) -> Result<LoadedIndex> {
    let at = Location::parse(url);
    let signed = read::read_signed(&at, opts)?;
    if record {
        super::import_channel_keys(home, &at, opts, allow_expired, progress);
    }
    let label = at.to_string();
    let doc = policy::Document { label: &label, bytes: &signed.bytes, sig: &signed.sig };
    let check = policy::Check {
        record: if record { policy::Record::KeyList } else { policy::Record::Nothing },
        ..policy::Check::taken(allow_expired)
    };
    let trusted = policy::verify_manifest(home, &doc, &check)?;
    let index = ChannelIndex::parse(&signed.bytes, Path::new(&label))?;
    let official = url == DEFAULT_INDEX_URL;
    if official && trusted.path.via_pinned_key() {
        return Err(ChannelError::NotOfficial { location: label, trust: trusted.path.to_string() });
    }
    let what = format!("channel index {label} (version {})", index.version);
    match signing::check_expiry(&what, index.expires, time::OffsetDateTime::now_utc(), allow_expired) {
        Ok(Some(w)) => progress.warn(w),
        Ok(None) => {}
        Err(source) => return Err(ChannelError::Expired { source }),
    }
    let seen_channel = if trusted.path.via_pinned_key() {
        format!("@index@{}", super::keys::pinned_id(&trusted.path))
    } else {
        "@index".to_string()
    };
    let sha = signing::sha256_hex(&signed.bytes);
    let signer = trusted.path.key_id().to_string();
    let still = |k: &str| trusted.current_keys.iter().any(|c| c == k);
    if record {
        signing::SeenVersions::check_and_record_signed(
            &home.seen_versions(),
            &seen_channel,
            index.version,
            &sha,
            &signer,
            &still,
        )?;
    } else {
        signing::SeenVersions::load(&home.seen_versions())?.check(&seen_channel, index.version, &sha)?;
    }
    Ok(LoadedIndex { index, at, official })
}

/// A file the index pins, read and checked against its sha256 and size.
pub fn read_pinned(
    at: &Location,
    sha256: &kubestrap_manifest::Sha256,
    size: u64,
    opts: &artifacts::Options,
) -> Result<read::Signed> {
    let signed = read::read_signed(at, opts)?;
    let actual = crate::artifacts::hash::hash_reader(&signed.bytes[..])
        .map_err(|e| fskit::FsError::io(PathBuf::new(), "hash", e))?;
    if actual.1 != size || actual.0 != *sha256 {
        return Err(ChannelError::IndexMismatch {
            location: at.to_string(),
            what: format!("{} bytes with sha256 {}", actual.1, actual.0),
            expected: format!("{size} bytes with sha256 {sha256}"),
        });
    }
    Ok(signed)
}

/// The newest manifest of `channel` the index names: pinned by the index,
/// signed itself. With `record` it is accepted into the home like any
/// manifest; without, only verified.
pub fn manifest(
    home: &Home,
    li: &LoadedIndex,
    channel: &str,
    opts: &artifacts::Options,
    allow_expired: bool,
    record: bool,
) -> Result<Loaded> {
    let entry = li.index.channel.get(channel).ok_or_else(|| ChannelError::NotInIndex {
        index: li.at.to_string(),
        channel: channel.into(),
        known: li.index.channel.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let at = li.at.resolve(&entry.url);
    let signed = read_pinned(&at, &entry.sha256, entry.size.get(), opts)?;
    let label = at.to_string();
    let loaded = if record {
        super::accept(home, &label, li.official, &signed.bytes, &signed.sig, allow_expired)?
    } else {
        let i = super::inspect_bytes(home, &label, &signed.bytes, &signed.sig, &[], allow_expired, Vec::new())?;
        Loaded { manifest: i.manifest, path: PathBuf::from(&label), trusted: i.trusted }
    };
    if loaded.manifest.channel != channel || loaded.manifest.version != entry.version {
        return Err(ChannelError::IndexMismatch {
            location: label,
            what: format!("a manifest of channel {:?} version {}", loaded.manifest.channel, loaded.manifest.version),
            expected: format!("channel {channel:?} version {}", entry.version),
        });
    }
    Ok(loaded)
}
