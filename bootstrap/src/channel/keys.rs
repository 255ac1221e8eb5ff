//! Which keys this home trusts: the built-in roots, the key list chains
//! kept under `keys/<anchor>/` (anchored in the built-in roots or in a key
//! pinned under `trust/`), and the pinned keys themselves.

use std::path::PathBuf;

use kubestrap_fskit::{self as fskit, caps};
use kubestrap_signing::{self as signing, KeyListFile, PublicKey, TrustPath, TrustedKeyList};
use time::OffsetDateTime;

use super::ChannelError;
use crate::home::Home;

type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// How a manifest came to be trusted, for humans and `-o json`.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub path: TrustPath,
    pub trusted_comment: String,
    pub warnings: Vec<String>,
    /// The keys that may sign for this trust path now (the release keys of
    /// the key list used, less revoked ones; or the pinned keys): a rollback
    /// record vouched for by any other key no longer binds.
    pub current_keys: Vec<String>,
}

impl Trusted {
    /// The loud notice for manifests trusted through a key pinned here.
    pub fn pinned_notice(&self) -> Option<String> {
        self.path.via_pinned_key().then(|| {
            format!("NOT the official kubestrap channel: this manifest is {}. Remove the key with `kubestrap trust remove {}` if you did not mean to trust it.", self.path, pinned_id(&self.path))
        })
    }
}

pub(super) fn pinned_id(p: &TrustPath) -> String {
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
pub fn key_chains(home: &Home) -> Result<(Vec<Chain>, Vec<String>)> {
    let mut chains = Vec::new();
    let mut ignored = Vec::new();
    for dir in fskit::list_dir(&home.keys())?.into_iter().filter(|e| e.path().is_dir()) {
        let anchor = dir.file_name().to_string_lossy().into_owned();
        let mut files: Vec<(u64, PathBuf)> = fskit::list_dir(&dir.path())?
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v = name.strip_prefix("keys-")?.strip_suffix(".toml")?.parse().ok()?;
                Some((v, e.path()))
            })
            .collect();
        files.sort();
        // A damaged file in a chain is left out, so the chain ends at the
        // last good list (a newer list from the channel extends it again).
        let files: Vec<KeyListFile> = files
            .into_iter()
            .map_while(|(_, p)| match KeyListFile::from_path(&p) {
                Ok(f) => Some(f),
                Err(e) => {
                    ignored.push(format!(
                        "ignoring the key list {}: {e}; its chain ends at the last good list until the channel or a bundle brings a newer one (delete the file to silence this)",
                        p.display()
                    ));
                    None
                }
            })
            .collect();
        if !files.is_empty() {
            chains.push(Chain { anchor, files });
        }
    }
    chains.sort_by_key(|c| (c.anchor != BUILTIN_ANCHOR, c.anchor.clone()));
    Ok((chains, ignored))
}

/// The keys that anchor a chain: the built-in roots, or the pinned key of
/// that id (none if it was unpinned: the chain is then not trusted).
pub(super) fn anchor_keys(anchor: &str, pinned: &[PublicKey]) -> Vec<PublicKey> {
    if anchor == BUILTIN_ANCHOR {
        signing::builtin_roots()
    } else {
        pinned.iter().filter(|k| k.key_id().to_string() == anchor).cloned().collect()
    }
}

pub(super) fn verify_chain(
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
pub(super) fn place(
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
    let mut best: Option<ChannelError> = None;
    let mut keep = |e: ChannelError| {
        // An error from a chain the list belongs to beats "not anchored".
        let anchored = !matches!(e, ChannelError::Signing(signing::Error::NotAnchored { .. }));
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
    Err(best.unwrap_or_else(|| ChannelError::NotAnchored { label: file.label.clone() }))
}

/// Whether a key list would be accepted into one of this home's chains
/// (nothing is kept): `manifest verify` uses a list beside the manifest
/// only then.
pub fn check_key_list(home: &Home, file: &KeyListFile, allow_expired: bool) -> Result<()> {
    let pinned = signing::pinned_keys(&home.trust())?;
    place(&key_chains(home)?.0, file, &pinned, allow_expired).map(|_| ())
}

/// Adds a key list (verified against the chain it extends) to the home.
pub fn import_key_list(home: &Home, file: KeyListFile, allow_expired: bool) -> Result<u64> {
    let _lock = home.lock("keys", true, || {})?;
    let pinned = signing::pinned_keys(&home.trust())?;
    let (chain, verified, known) = place(&key_chains(home)?.0, &file, &pinned, allow_expired)?;
    if !known {
        let dir = home.keys().join(&chain.anchor);
        fskit::create_dir_mode(&dir, 0o755)?;
        let path = dir.join(format!("keys-{}.toml", verified.version));
        if fskit::read_capped(&path, caps::DOCUMENT).is_ok_and(|b| b != file.bytes) {
            return Err(ChannelError::KeyListReplaced { label: file.label.clone(), version: verified.version, path });
        }
        fskit::write_atomic(&fskit::signature_path(&path), file.sigs.as_bytes(), 0o644)?;
        fskit::write_atomic(&path, &file.bytes, 0o644)?;
    }
    Ok(verified.version)
}
