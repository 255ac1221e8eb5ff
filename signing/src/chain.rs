//! Key list chains: root rotation (each list signed by a threshold of the
//! previous roots and of its own), anchored in built-in or pinned root keys.

use kubestrap_fskit::{self as fskit, caps};
use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::keylist::{KeyList, ListedKey};
use crate::keys::{KeyId, PublicKey};
use crate::minisig::{check_all, parse_signatures};
use crate::seen::check_expiry;
use crate::sign::sign;
use kubestrap_fskit::signature_path;

/// A key list file as shipped: its exact bytes and its `.minisig` text
/// (one or several signature blocks back to back).
#[derive(Clone, Debug)]
pub struct KeyListFile {
    /// Names the file in errors (path or URL).
    pub label: String,
    /// The exact bytes of `keys.toml`.
    pub bytes: Vec<u8>,
    /// The text of `keys.toml.minisig`.
    pub sigs: String,
}

impl KeyListFile {
    /// Builds one from bytes and signature text.
    pub fn new(label: impl Into<String>, bytes: Vec<u8>, sigs: impl Into<String>) -> Self {
        KeyListFile { label: label.into(), bytes, sigs: sigs.into() }
    }

    /// Reads `path` and `path.minisig`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let bytes = fskit::read_capped(path, caps::DOCUMENT)?;
        let sp = signature_path(path);
        let sigs = fskit::read_capped_text(&sp, caps::SIGNATURE).map_err(|e| match e {
            fskit::FsError::NotText { .. } => {
                Error::MalformedSignature { file: sp.display().to_string(), reason: "not text".into() }
            }
            other => other.into(),
        })?;
        Ok(Self::new(path.display().to_string(), bytes, sigs))
    }
}

/// The outcome of a verified chain: the newest key list and what it allows.
#[derive(Clone, Debug)]
pub struct TrustedKeyList {
    /// Label of the newest list.
    pub label: String,
    /// Its version.
    pub version: u64,
    /// Its expiry.
    pub expires: OffsetDateTime,
    /// sha256 (hex) of its exact bytes, for rollback records.
    pub sha256: String,
    /// Its root keys and threshold (they must sign the next list).
    pub roots: Vec<ListedKey>,
    /// Threshold of `roots`.
    pub threshold: usize,
    /// Keys allowed to sign manifests and channel indexes.
    pub release: Vec<ListedKey>,
    /// Revoked key ids, accumulated along the chain.
    pub revoked: BTreeSet<KeyId>,
    /// The revoked keys the chain had listed before: a revocation holds for
    /// the key material, whatever id it is later presented under.
    pub revoked_keys: Vec<PublicKey>,
    /// The anchor keys that signed the first list used.
    pub anchored_by: Vec<KeyId>,
    /// Warnings for the user (e.g. expired but allowed).
    pub warnings: Vec<String>,
}

impl TrustedKeyList {
    /// Whether `key` is revoked by this chain: by its id, or as key material
    /// the chain listed under a revoked id.
    pub fn is_revoked(&self, key: &PublicKey) -> bool {
        self.revoked.contains(&key.key_id()) || self.revoked_keys.iter().any(|k| k.same_key(key))
    }
}

/// Verification of key list chains.
pub struct KeyChain;

impl KeyChain {
    /// Signatures needed from `anchors` keys (the built-in roots, or one
    /// pinned key) on the first list of the chain that is used: a majority,
    /// so that with several built-in roots no single one can start a chain
    /// on its own (one of one today; two of three when roots are added).
    pub fn anchor_threshold(anchors: usize) -> usize {
        anchors / 2 + 1
    }

    /// Verifies a chain of key lists, oldest first, and returns the newest.
    ///
    /// The chain starts at the oldest list signed by
    /// [`Self::anchor_threshold`] of `anchors` (the built-in roots, or a
    /// pinned key); lists before it are ignored (a binary built with newer
    /// roots starts where those roots were introduced). From there every step
    /// is checked, so later lists cannot escape an earlier list's threshold. That list and every later one
    /// must be signed by `threshold` of their own `[[root]]` keys; every later
    /// list also by the previous list's `threshold` of its roots, and have a
    /// higher version. Signatures are checked over the exact bytes before a
    /// list is parsed. Only the newest list's `expires` counts: expired →
    /// refused, or accepted with a warning when `allow_expired`. Long on
    /// purpose: the chain is one walk, list by list, so no list is used
    /// before the one before it vouched for it.
    pub fn verify(
        chain: &[KeyListFile],
        anchors: &[PublicKey],
        now: OffsetDateTime,
        allow_expired: bool,
    ) -> Result<TrustedKeyList> {
        let Some(first) = chain.first() else {
            return Err(Error::Invalid("the key list chain is empty".into()));
        };
        let mut start = None;
        for (i, f) in chain.iter().enumerate() {
            let blocks = parse_signatures(&format!("{}.minisig", f.label), &f.sigs)?;
            let c = check_all(&blocks, &f.bytes, anchors);
            if c.valid.len() >= Self::anchor_threshold(anchors.len()) {
                start = Some((i, c.valid.iter().map(|(id, _)| *id).collect::<Vec<_>>()));
                break;
            }
        }
        let Some((start, anchored_by)) = start else {
            return Err(Error::NotAnchored {
                file: first.label.clone(),
                anchor: "the trusted root keys".into(),
                anchor_ids: anchors.iter().map(|k| k.key_id()).collect(),
            });
        };
        let f = &chain[start];
        let mut list = KeyList::parse(&f.label, &f.bytes)?;
        let mut revoked: BTreeSet<KeyId> = BTreeSet::new();
        require(
            f,
            &list.root_keys(),
            list.threshold,
            &format!("its own [[root]] keys (version {})", list.version),
            Some(list.version),
        )?;
        revoked.extend(list.revoked.iter().copied());
        let mut known: Vec<PublicKey> = list.roots.iter().chain(&list.release).map(|k| k.key.clone()).collect();
        let mut last = f;
        for f in &chain[start + 1..] {
            require(
                f,
                &list.root_keys(),
                list.threshold,
                &format!("the roots of key list version {}", list.version),
                None,
            )?;
            let next = KeyList::parse(&f.label, &f.bytes)?;
            if next.version <= list.version {
                return Err(Error::KeyListVersion {
                    file: f.label.clone(),
                    version: next.version,
                    previous: list.version,
                });
            }
            let revoked_material =
                |k: &PublicKey| known.iter().any(|old| revoked.contains(&old.key_id()) && old.same_key(k));
            if let Some(k) = next
                .roots
                .iter()
                .chain(&next.release)
                .find(|k| revoked.contains(&k.key.key_id()) || revoked_material(&k.key))
            {
                return Err(Error::KeyListInvalid {
                    file: f.label.clone(),
                    reason: format!("lists key {}, which an earlier key list revoked", k.key.key_id()),
                });
            }
            require(
                f,
                &next.root_keys(),
                next.threshold,
                &format!("its own [[root]] keys (version {})", next.version),
                Some(next.version),
            )?;
            revoked.extend(next.revoked.iter().copied());
            known.extend(next.roots.iter().chain(&next.release).map(|k| k.key.clone()));
            list = next;
            last = f;
        }
        let mut warnings = Vec::new();
        let what = format!("key list {} version {}", last.label, list.version);
        if let Some(w) = check_expiry(&what, list.expires, now, allow_expired)? {
            warnings.push(w);
        }
        let mut revoked_keys: Vec<PublicKey> = Vec::new();
        for k in known.iter().filter(|k| revoked.contains(&k.key_id())) {
            if !revoked_keys.iter().any(|r| r.same_key(k)) {
                revoked_keys.push(k.clone());
            }
        }
        Ok(TrustedKeyList {
            label: last.label.clone(),
            version: list.version,
            expires: list.expires,
            sha256: hex::encode(Sha256::digest(&last.bytes)),
            roots: list.roots,
            threshold: list.threshold,
            release: list.release,
            revoked,
            revoked_keys,
            anchored_by,
            warnings,
        })
    }
}

/// Requires `need` distinct valid signatures by `keys` on `f`.
fn require(f: &KeyListFile, keys: &[PublicKey], need: usize, by: &str, version: Option<u64>) -> Result<()> {
    let blocks = parse_signatures(&format!("{}.minisig", f.label), &f.sigs)?;
    let c = check_all(&blocks, &f.bytes, keys);
    if c.valid.len() >= need {
        return Ok(());
    }
    if let Some(key_id) = c.bad.first() {
        return Err(Error::BadSignature { file: f.label.clone(), key_id: *key_id });
    }
    Err(Error::Threshold {
        file: f.label.clone(),
        version,
        by: by.to_string(),
        need,
        got: c.valid.len(),
        signers: c.all,
    })
}

/// Signs key list bytes with several secret keys (`(path, password)`) and
/// returns the concatenated `.minisig` blocks, for `keys sign-list`. The
/// bytes are checked to be a valid key list first.
pub fn sign_key_list(bytes: &[u8], secret_keys: &[(&Path, Option<&str>)], trusted_comment: &str) -> Result<String> {
    let list = KeyList::parse("key list", bytes)?;
    if secret_keys.is_empty() {
        return Err(Error::Invalid("no secret key given to sign the key list".into()));
    }
    let tc = if trusted_comment.is_empty() {
        format!("kubestrap key list version {}", list.version)
    } else {
        trusted_comment.to_string()
    };
    let mut out = String::new();
    for (path, pw) in secret_keys {
        out = crate::sign::merge_signatures(&out, &sign(path, *pw, bytes, &tc)?)?;
    }
    Ok(out)
}
