//! Glue between the signing crate and this home: which keys are trusted
//! (built-in roots, key lists kept under `keys/`, keys pinned under `trust/`),
//! and the freshness checks on a parsed manifest.

use std::path::PathBuf;

use anyhow::Result;
use kubestrap_manifest::Manifest;
use kubestrap_signing::{self as signing, KeyListFile, TrustContext, TrustPath};
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

/// Key lists kept in the home, oldest first.
pub fn key_chain(home: &Home) -> Result<Vec<KeyListFile>> {
    let mut files: Vec<(u64, PathBuf)> = fsutil::list_dir(&home.keys())?
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("keys-")?.strip_suffix(".toml")?.parse().ok()?;
            Some((v, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| Ok(KeyListFile::from_path(&p)?)).collect()
}

/// Adds a key list (verified against the current chain first) to the home.
pub fn import_key_list(home: &Home, file: KeyListFile, allow_expired: bool) -> Result<u64> {
    let mut chain = key_chain(home)?;
    // The list this home already has as its newest (a channel serves the same
    // keys.toml with every manifest): nothing to import, nothing to warn about.
    let known = chain.last().is_some_and(|newest| newest.bytes == file.bytes);
    if !known {
        chain.push(file.clone());
    }
    let pinned = signing::pinned_keys(&home.trust())?;
    let roots = signing::builtin_roots();
    let now = OffsetDateTime::now_utc();
    let verified = signing::KeyChain::verify(&chain, &roots, now, allow_expired).or_else(|e| {
        if pinned.is_empty() { Err(e) } else { signing::KeyChain::verify(&chain, &pinned, now, allow_expired) }
    })?;
    if !known {
        let path = home.keys().join(format!("keys-{}.toml", verified.version));
        fsutil::write_atomic(&signing::signature_path(&path), file.sigs.as_bytes(), 0o644)?;
        fsutil::write_atomic(&path, &file.bytes, 0o644)?;
    }
    Ok(verified.version)
}

/// Verifies a manifest's signature over its exact bytes. `extra`: a key list
/// that came with the manifest but is not kept (`manifest verify`); with
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
    let mut chain = key_chain(home)?;
    if let Some(list) = extra
        && chain.last().is_none_or(|newest| newest.bytes != list.bytes)
    {
        chain.push(list);
    }
    let pinned = signing::pinned_keys(&home.trust())?;
    let roots = signing::builtin_roots();
    let ctx = TrustContext {
        builtin_roots: &roots,
        key_chain: &chain,
        pinned_keys: &pinned,
        allow_expired,
        now: OffsetDateTime::now_utc(),
    };
    let v = signing::verify_manifest(label, bytes, sig, &ctx)?;
    if let Some(list) = v.key_list.as_ref().filter(|_| record) {
        // Key lists are versioned too: an older one is a rollback.
        signing::SeenVersions::check_and_record(&seen_path(home)?, KEY_LIST_CHANNEL, list.version, &list.sha256)?;
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

/// The pseudo-channel under which the newest key list version is recorded.
const KEY_LIST_CHANNEL: &str = "@keys";

fn seen_path(home: &Home) -> Result<PathBuf> {
    let path = home.seen_versions();
    if let Some(dir) = path.parent() {
        fsutil::create_dir_mode(dir, 0o700)?;
    }
    Ok(path)
}

/// Refuses a manifest older than one this home has seen for its channel, or
/// the same version with other bytes; records it otherwise.
pub fn check_not_rolled_back(home: &Home, m: &Manifest, bytes: &[u8]) -> Result<()> {
    signing::SeenVersions::check_and_record(&seen_path(home)?, &m.channel, m.version, &signing::sha256_hex(bytes))?;
    Ok(())
}
