//! The acceptance policy for a manifest, in one place: its signature over
//! the exact bytes (through a key list chain or a pinned key, revocations of
//! the official chain applying everywhere), then freshness (`expires`,
//! `requires-bootstrap`) and rollback (never older than a version seen for
//! its channel, never the same version with other bytes).

use std::path::PathBuf;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Manifest;
use kubestrap_signing::{self as signing, KeyListFile, PublicKey, TrustContext, TrustPath};
use time::OffsetDateTime;

use super::keys::{self, BUILTIN_ANCHOR, Chain, anchor_keys, pinned_id, verify_chain};
use super::{ChannelError, Trusted};
use crate::home::Home;

type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// A signed document as read: where it came from (redacted), its exact
/// bytes and its detached signature.
pub struct Document<'a> {
    pub label: &'a str,
    pub bytes: &'a [u8],
    pub sig: &'a str,
}

/// How a signed document is checked.
pub struct Check<'a> {
    /// An expired key list is accepted (with a warning).
    pub allow_expired: bool,
    /// Key lists that came with the document but are not kept (`manifest verify`).
    pub extra: &'a [KeyListFile],
    pub record: Record,
}

impl Check<'_> {
    /// The check of a document that is taken (its key list recorded).
    pub fn taken(allow_expired: bool) -> Check<'static> {
        Check { allow_expired, extra: &[], record: Record::KeyList }
    }
}

/// Whether the version of the key list that verified a document is
/// recorded against rollback (not for a document only looked at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    KeyList,
    Nothing,
}

/// Verifies a manifest's signature over its exact bytes, against each key
/// list chain kept here (and keys pinned here), as `check` says. Long on
/// purpose: the acceptance policy reads as one decision, top to bottom.
pub fn verify_manifest(home: &Home, doc: &Document<'_>, check: &Check<'_>) -> Result<Trusted> {
    let Document { label, bytes, sig } = *doc;
    let Check { allow_expired, extra, record } = *check;
    let pinned = signing::pinned_keys(&home.trust())?;
    let (mut chains, mut warnings) = keys::key_chains(home)?;
    for list in extra {
        let (chain, _, _) = keys::place(&chains, list, &pinned, allow_expired)?;
        chains.retain(|c| c.anchor != chain.anchor);
        chains.push(chain);
    }
    // A chain whose pinned anchor was removed trusts nothing: left out.
    chains.retain(|c| !anchor_keys(&c.anchor, &pinned).is_empty());
    if chains.is_empty() {
        chains.push(Chain { anchor: BUILTIN_ANCHOR.into(), files: Vec::new() });
    }
    let roots = signing::builtin_roots();
    let now = OffsetDateTime::now_utc();
    let results: Vec<(String, signing::Result<signing::VerifiedManifest>)> = chains
        .iter()
        .map(|c| {
            let builtin: &[PublicKey] = if c.anchor == BUILTIN_ANCHOR { &roots } else { &[] };
            let ctx =
                TrustContext { builtin_roots: builtin, key_chain: &c.files, pinned_keys: &pinned, allow_expired, now };
            (c.anchor.clone(), signing::verify_manifest(label, bytes, sig, &ctx))
        })
        .collect();
    // A release key of some chain; else a revocation by any chain wins over
    // a pinned key's direct signature; else that signature. Failing all:
    // a bad signature, then the built-in chain's answer (chains sort it
    // first), rather than an unrelated private chain's trouble.
    let find = |f: &dyn Fn(&signing::Result<signing::VerifiedManifest>) -> bool| results.iter().position(|(_, r)| f(r));
    let pick = find(&|r| r.as_ref().is_ok_and(|v| !matches!(v.trust_path, TrustPath::Pinned { .. })))
        .or_else(|| find(&|r| matches!(r, Err(signing::Error::Revoked { .. }))))
        .or_else(|| find(&|r| r.is_ok()))
        .or_else(|| {
            find(&|r| matches!(r, Err(signing::Error::BadSignature { .. } | signing::Error::MalformedSignature { .. })))
        })
        .unwrap_or(0);
    let (anchor, result) = results.into_iter().nth(pick).expect("one result per chain");
    let v = result?;
    // What kubestrap's own key lists revoke is revoked everywhere: a private
    // chain or a pinned key cannot bring back a key the official chain
    // revoked (by id or by key material).
    if anchor != BUILTIN_ANCHOR
        && let Some(official) = chains.iter().find(|c| c.anchor == BUILTIN_ANCHOR && !c.files.is_empty())
        && let Ok(official) = verify_chain(BUILTIN_ANCHOR, &official.files, &pinned, true)
    {
        let signer = v.trust_path.key_id();
        let material = v
            .key_list
            .iter()
            .flat_map(|l| l.release.iter().map(|k| &k.key))
            .chain(&pinned)
            .find(|k| k.key_id() == signer);
        if official.revoked.contains(&signer) || material.is_some_and(|k| official.is_revoked(k)) {
            return Err(signing::Error::Revoked {
                file: label.to_string(),
                key_id: signer,
                list_version: official.version,
            }
            .into());
        }
    }
    if let Some(list) = v.key_list.as_ref().filter(|_| record == Record::KeyList) {
        // Key lists are versioned too: an older one is a rollback.
        let channel = format!("{KEY_LIST_CHANNEL}/{anchor}");
        signing::SeenVersions::check_and_record(
            &seen_path(home, &mut warnings)?,
            &channel,
            list.version,
            &list.sha256,
        )?;
    }
    let current_keys = match &v.key_list {
        Some(l) => l
            .release
            .iter()
            .map(|k| k.key.key_id())
            .filter(|id| !l.revoked.contains(id))
            .map(|id| id.to_string())
            .collect(),
        None => pinned.iter().map(|k| k.key_id().to_string()).collect(),
    };
    warnings.extend(v.warnings);
    Ok(Trusted { path: v.trust_path, trusted_comment: v.trusted_comment, warnings, current_keys })
}

/// Expiry and `requires-bootstrap`. Returns warnings to print. `stored`: a
/// manifest a profile already runs (expiry then only warns: a running
/// cluster is never stranded by the calendar; upgrades still refuse).
pub fn check_fresh(m: &Manifest, label: &str, allow_expired: bool, stored: bool) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let what = format!("manifest {label} ({} version {})", m.channel, m.version);
    let now = OffsetDateTime::now_utc();
    match signing::check_expiry(&what, m.expires, now, allow_expired || stored) {
        Ok(Some(w)) => warnings.push(w),
        Ok(None) => {}
        Err(source) => return Err(ChannelError::Expired { source }),
    }
    let me = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver");
    if !m.requires_bootstrap.matches(&me) {
        return Err(ChannelError::NeedsNewer { what, req: m.requires_bootstrap.to_string(), me: me.to_string() });
    }
    Ok(warnings)
}

/// The pseudo-channel under which the newest key list version of a chain is
/// recorded (`@keys/<anchor>`).
const KEY_LIST_CHANNEL: &str = "@keys";

/// The rollback record, rebuilt first if damaged (what was done is added
/// to `warnings`).
fn seen_path(home: &Home, warnings: &mut Vec<String>) -> Result<PathBuf> {
    let path = home.seen_versions();
    if let Some(dir) = path.parent() {
        kubestrap_fskit::create_dir_mode(dir, 0o700)?;
    }
    if let Err(signing::Error::StateCorrupt { reason, .. }) = signing::SeenVersions::load(&path) {
        warnings.extend(rebuild_seen(home, &path, &reason)?);
    }
    Ok(path)
}

/// A damaged rollback record is moved aside and rebuilt from what the home
/// keeps: every accepted manifest (`manifests/<channel>-<v>.toml`) and key
/// list (`keys/<anchor>/keys-<v>.toml`) names its channel, version and bytes.
/// Says what it did, unless another command repaired it meanwhile.
fn rebuild_seen(home: &Home, path: &std::path::Path, reason: &str) -> Result<Option<String>> {
    let _lock = fskit::lock(&fskit::sidecar(path, ".lock"), fskit::Mode::Exclusive, true, || {})?;
    if !matches!(signing::SeenVersions::load(path), Err(signing::Error::StateCorrupt { .. })) {
        return Ok(None); // repaired meanwhile
    }
    let aside = fskit::sidecar(path, &format!(".damaged-{}", time::OffsetDateTime::now_utc().unix_timestamp()));
    std::fs::rename(path, &aside).map_err(|e| fskit::FsError::io(path, "move aside", e))?;
    let mut found: Vec<(String, u64, String)> = Vec::new();
    let mut scan = |dir: &std::path::Path, channel_of: &dyn Fn(&str) -> Option<(String, u64)>| -> Result<()> {
        for e in fskit::list_dir(dir)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if let (Some((channel, v)), Ok(bytes)) =
                (channel_of(&name), fskit::read_capped(&e.path(), fskit::caps::DOCUMENT))
            {
                found.push((channel, v, signing::sha256_hex(&bytes)));
            }
        }
        Ok(())
    };
    let split = |stem: &str| -> Option<(String, u64)> {
        let (c, v) = stem.rsplit_once('-')?;
        Some((c.to_string(), v.parse().ok()?))
    };
    scan(&home.manifests(), &|n| split(n.strip_suffix(".toml")?))?;
    for anchor in fskit::list_dir(&home.keys())? {
        let a = anchor.file_name().to_string_lossy().into_owned();
        scan(&anchor.path(), &|n| {
            let v = n.strip_prefix("keys-")?.strip_suffix(".toml")?.parse().ok()?;
            Some((format!("{KEY_LIST_CHANNEL}/{a}"), v))
        })?;
    }
    found.sort();
    let mut seen = signing::SeenVersions::load(path)?;
    for (channel, v, sha) in found {
        // The highest kept version of each channel wins; a clash is skipped.
        let _ = seen.record(&channel, v, &sha);
    }
    seen.save()?;
    Ok(Some(format!(
        "{} was damaged ({reason}); it was moved to {} and rebuilt from the manifests and key lists kept in {}",
        path.display(),
        aside.display(),
        home.root().display()
    )))
}

/// The name under which a manifest's channel is recorded against rollback:
/// the channel for manifests trusted through the built-in roots,
/// `<channel>@<pinned key>` for those trusted through a key pinned here, so a
/// private channel can never block (or be blocked by) the official one of
/// the same name.
pub fn seen_channel(m: &Manifest, trusted: &Trusted) -> String {
    if trusted.path.via_pinned_key() {
        format!("{}@{}", m.channel, pinned_id(&trusted.path))
    } else {
        m.channel.clone()
    }
}

/// Refuses a manifest older than one this home has seen for its channel, or
/// the same version with other bytes; records it otherwise. A record
/// vouched for by a key that is no longer trusted (revoked, rotated out)
/// does not bind: it is replaced, and a warning returned.
pub fn check_not_rolled_back(home: &Home, m: &Manifest, trusted: &Trusted, bytes: &[u8]) -> Result<Vec<String>> {
    let channel = seen_channel(m, trusted);
    let signer = trusted.path.key_id().to_string();
    let mut warnings = Vec::new();
    let recorded = signing::SeenVersions::check_and_record_signed(
        &seen_path(home, &mut warnings)?,
        &channel,
        m.version,
        &signing::sha256_hex(bytes),
        &signer,
        &|k| trusted.current_keys.iter().any(|c| c == k),
    )?;
    if let signing::Recorded::Superseded { version, key } = recorded {
        warnings.push(format!(
            "channel {channel}: the record of version {version} was signed by key {key}, which is no longer trusted (revoked or rotated out); it no longer binds, and version {} signed by {signer} replaces it",
            m.version
        ));
    }
    Ok(warnings)
}
