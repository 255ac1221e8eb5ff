//! Glue between the signing crate and this home: which keys are trusted
//! (built-in roots, key lists kept under `keys/`, keys pinned under `trust/`),
//! and the freshness checks on a parsed manifest.

use std::fs;
use std::path::PathBuf;

use anyhow::Result;
use kubestrap_manifest::Manifest;
use kubestrap_signing::{self as signing, KeyListFile, PublicKey, TrustContext, TrustPath, TrustedKeyList};
use time::OffsetDateTime;

use crate::exit::{Code, coded};
use crate::fsutil;
use crate::home::Home;

/// How a manifest came to be trusted, for humans and `-o json`.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub path: TrustPath,
    pub trusted_comment: String,
    pub warnings: Vec<String>,
}

impl Trusted {
    /// The loud notice for manifests trusted through a key pinned here.
    pub fn pinned_notice(&self) -> Option<String> {
        self.path.via_pinned_key().then(|| {
            format!("NOT the official kubestrap channel: this manifest is {}. Remove the key with `kubestrap trust remove {}` if you did not mean to trust it.", self.path, pinned_id(&self.path))
        })
    }
}

fn pinned_id(p: &TrustPath) -> String {
    match p {
        TrustPath::PinnedRelease { pinned_root, .. } => pinned_root.to_string(),
        other => other.key_id().to_string(),
    }
}

/// The anchor of the key list chain rooted in kubestrap's built-in root keys;
/// a chain rooted in a pinned key is named by that key's id.
pub const BUILTIN_ANCHOR: &str = "builtin";

/// One chain of key lists, kept in `keys/<anchor>/keys-<version>.toml`.
/// Chains are independent: a private channel's list never extends, replaces
/// or blocks the official one, nor another private one.
#[derive(Clone, Debug)]
pub struct Chain {
    pub anchor: String,
    /// Oldest first.
    pub files: Vec<KeyListFile>,
}

/// The key list chains kept in the home, the built-in one first.
pub fn key_chains(home: &Home) -> Result<Vec<Chain>> {
    let mut chains = Vec::new();
    for dir in fsutil::list_dir(&home.keys())?.into_iter().filter(|e| e.path().is_dir()) {
        let anchor = dir.file_name().to_string_lossy().into_owned();
        let mut files: Vec<(u64, PathBuf)> = fsutil::list_dir(&dir.path())?
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v = name.strip_prefix("keys-")?.strip_suffix(".toml")?.parse().ok()?;
                Some((v, e.path()))
            })
            .collect();
        files.sort();
        let files = files.into_iter().map(|(_, p)| Ok(KeyListFile::from_path(&p)?)).collect::<Result<Vec<_>>>()?;
        if !files.is_empty() {
            chains.push(Chain { anchor, files });
        }
    }
    chains.sort_by_key(|c| (c.anchor != BUILTIN_ANCHOR, c.anchor.clone()));
    Ok(chains)
}

/// The keys that anchor a chain: the built-in roots, or the pinned key of
/// that id (none if it was unpinned: the chain is then not trusted).
fn anchor_keys(anchor: &str, pinned: &[PublicKey]) -> Vec<PublicKey> {
    if anchor == BUILTIN_ANCHOR {
        signing::builtin_roots()
    } else {
        pinned.iter().filter(|k| k.key_id().to_string() == anchor).cloned().collect()
    }
}

fn verify_chain(
    anchor: &str,
    files: &[KeyListFile],
    pinned: &[PublicKey],
    allow_expired: bool,
) -> Result<TrustedKeyList> {
    let keys = anchor_keys(anchor, pinned);
    Ok(signing::KeyChain::verify(files, &keys, OffsetDateTime::now_utc(), allow_expired)?)
}

/// Where a key list belongs: the chain it is already the newest of, the
/// chain it extends, or a new chain anchored in the built-in roots or a
/// pinned key that has none yet. Returns the chain with it and its
/// verification, and whether it was known already.
fn place(
    chains: &[Chain],
    file: &KeyListFile,
    pinned: &[PublicKey],
    allow_expired: bool,
) -> Result<(Chain, TrustedKeyList, bool)> {
    for c in chains {
        if c.files.last().is_some_and(|newest| newest.bytes == file.bytes) {
            let t = verify_chain(&c.anchor, &c.files, pinned, allow_expired)?;
            return Ok((c.clone(), t, true));
        }
    }
    let mut best: Option<anyhow::Error> = None;
    let mut keep = |e: anyhow::Error| {
        // An error from a chain the list belongs to beats "not anchored".
        let anchored = !matches!(e.downcast_ref(), Some(signing::Error::NotAnchored { .. }));
        if best.is_none() || anchored {
            best = Some(e);
        }
    };
    for c in chains {
        let mut files = c.files.clone();
        files.push(file.clone());
        match verify_chain(&c.anchor, &files, pinned, allow_expired) {
            Ok(t) => return Ok((Chain { anchor: c.anchor.clone(), files }, t, false)),
            Err(e) => keep(e),
        }
    }
    let fresh = std::iter::once(BUILTIN_ANCHOR.to_string()).chain(pinned.iter().map(|k| k.key_id().to_string()));
    for anchor in fresh.filter(|a| !chains.iter().any(|c| c.anchor == *a)) {
        let files = vec![file.clone()];
        match verify_chain(&anchor, &files, pinned, allow_expired) {
            Ok(t) => return Ok((Chain { anchor, files }, t, false)),
            Err(e) => keep(e),
        }
    }
    Err(best.unwrap_or_else(|| anyhow::anyhow!("{}: no trusted key anchors this key list", file.label)))
}

/// Whether a key list would be accepted into one of this home's chains
/// (nothing is kept): `manifest verify` uses a list beside the manifest
/// only then.
pub fn check_key_list(home: &Home, file: &KeyListFile, allow_expired: bool) -> Result<()> {
    let pinned = signing::pinned_keys(&home.trust())?;
    place(&key_chains(home)?, file, &pinned, allow_expired).map(|_| ())
}

/// Adds a key list (verified against the chain it extends) to the home.
pub fn import_key_list(home: &Home, file: KeyListFile, allow_expired: bool) -> Result<u64> {
    let _lock = home.lock("keys", true, || {})?;
    let pinned = signing::pinned_keys(&home.trust())?;
    let (chain, verified, known) = place(&key_chains(home)?, &file, &pinned, allow_expired)?;
    if !known {
        let dir = home.keys().join(&chain.anchor);
        fsutil::create_dir_mode(&dir, 0o755)?;
        let path = dir.join(format!("keys-{}.toml", verified.version));
        if fs::read(&path).is_ok_and(|b| b != file.bytes) {
            return Err(coded(
                Code::Rollback,
                format!(
                    "{}: version {} of this key list chain is kept already with other contents ({}); refusing to replace it",
                    file.label,
                    verified.version,
                    path.display()
                ),
            ));
        }
        fsutil::write_atomic(&signing::signature_path(&path), file.sigs.as_bytes(), 0o644)?;
        fsutil::write_atomic(&path, &file.bytes, 0o644)?;
    }
    Ok(verified.version)
}

/// Verifies a manifest's signature over its exact bytes, against each key
/// list chain kept here (and keys pinned here). `extra`: a key list that
/// came with the manifest but is not kept (`manifest verify`); with
/// `record`, the key list version used is recorded against rollback.
pub fn verify_manifest(
    home: &Home,
    label: &str,
    bytes: &[u8],
    sig: &str,
    allow_expired: bool,
    extra: Option<KeyListFile>,
    record: bool,
) -> Result<Trusted> {
    let pinned = signing::pinned_keys(&home.trust())?;
    let mut chains = key_chains(home)?;
    if let Some(list) = extra {
        let (chain, _, _) = place(&chains, &list, &pinned, allow_expired)?;
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
    if let Some(list) = v.key_list.as_ref().filter(|_| record) {
        // Key lists are versioned too: an older one is a rollback.
        let channel = format!("{KEY_LIST_CHANNEL}/{anchor}");
        signing::SeenVersions::check_and_record(&seen_path(home)?, &channel, list.version, &list.sha256)?;
    }
    Ok(Trusted { path: v.trust_path, trusted_comment: v.trusted_comment, warnings: v.warnings })
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
        Err(e) => return Err(anyhow::Error::new(e).context("refusing an expired manifest (a frozen or replayed channel); get a current one, or pass --allow-expired to accept it knowingly")),
    }
    let me = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver");
    if !m.requires_bootstrap.matches(&me) {
        return Err(coded(
            Code::NeedsNewerKubestrap,
            format!(
                "{what} requires kubestrap {}, this is {me}; run `kubestrap self-update` (or download a newer kubestrap) and try again",
                m.requires_bootstrap
            ),
        ));
    }
    Ok(warnings)
}

/// The pseudo-channel under which the newest key list version of a chain is
/// recorded (`@keys/<anchor>`).
const KEY_LIST_CHANNEL: &str = "@keys";

fn seen_path(home: &Home) -> Result<PathBuf> {
    let path = home.seen_versions();
    if let Some(dir) = path.parent() {
        fsutil::create_dir_mode(dir, 0o700)?;
    }
    Ok(path)
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
/// the same version with other bytes; records it otherwise.
pub fn check_not_rolled_back(home: &Home, m: &Manifest, trusted: &Trusted, bytes: &[u8]) -> Result<()> {
    let channel = seen_channel(m, trusted);
    signing::SeenVersions::check_and_record(&seen_path(home)?, &channel, m.version, &signing::sha256_hex(bytes))?;
    Ok(())
}
