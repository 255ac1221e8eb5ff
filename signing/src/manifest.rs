//! Top-level check of a manifest (or channel index) signature: which key
//! signed it, and how that key is trusted.

use std::fmt;

use time::OffsetDateTime;

use crate::chain::{KeyChain, KeyListFile, TrustedKeyList};
use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey};
use crate::minisig::{check_all, no_valid_signature, parse_signatures};

/// Everything trust decisions depend on.
#[derive(Clone, Copy, Debug)]
pub struct TrustContext<'a> {
    /// Root keys compiled into the binary ([`crate::builtin_roots`]).
    pub builtin_roots: &'a [PublicKey],
    /// The channel's key lists, oldest first (may be empty).
    pub key_chain: &'a [KeyListFile],
    /// Keys pinned in this kubestrap home ([`crate::pinned_keys`]).
    pub pinned_keys: &'a [PublicKey],
    /// Accept expired key lists, with a warning.
    pub allow_expired: bool,
    /// The current time (injected by tests).
    pub now: OffsetDateTime,
}

/// How a signed file came to be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustPath {
    /// Release key of a key list rooted in the built-in root keys.
    Release {
        /// The release key.
        key_id: KeyId,
        /// The key list version that names it.
        list_version: u64,
    },
    /// Release key of a key list rooted in a key pinned in this home.
    PinnedRelease {
        /// The release key.
        key_id: KeyId,
        /// The key list version that names it.
        list_version: u64,
        /// The pinned key the key list chain is anchored in.
        pinned_root: KeyId,
    },
    /// Signed directly by a key pinned in this home.
    Pinned {
        /// The pinned key.
        key_id: KeyId,
    },
}

impl TrustPath {
    /// True when trust comes from a key pinned in this kubestrap home (the
    /// CLI should say so loudly).
    pub fn via_pinned_key(&self) -> bool {
        !matches!(self, TrustPath::Release { .. })
    }

    /// The key that signed the file.
    pub fn key_id(&self) -> KeyId {
        match self {
            TrustPath::Release { key_id, .. }
            | TrustPath::PinnedRelease { key_id, .. }
            | TrustPath::Pinned { key_id } => *key_id,
        }
    }
}

impl fmt::Display for TrustPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustPath::Release { key_id, list_version } => write!(
                f,
                "signed by release key {key_id} of key list version {list_version} (rooted in kubestrap's built-in root keys)"
            ),
            TrustPath::PinnedRelease { key_id, list_version, pinned_root } => write!(
                f,
                "signed by release key {key_id} of key list version {list_version}, trusted through key {pinned_root} pinned in this kubestrap home"
            ),
            TrustPath::Pinned { key_id } => {
                write!(f, "signed by key {key_id}, trusted through a key pinned in this kubestrap home")
            }
        }
    }
}

/// A manifest whose signature and signer are trusted.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    /// How it was trusted.
    pub trust_path: TrustPath,
    /// The signed trusted comment.
    pub trusted_comment: String,
    /// Warnings to print (e.g. an expired key list accepted knowingly).
    pub warnings: Vec<String>,
    /// The verified key list used, if any (record its version and sha256
    /// in `SeenVersions` to refuse key list rollbacks).
    pub key_list: Option<TrustedKeyList>,
}

/// Verifies the signature of a manifest (or channel index) over its exact
/// bytes, before anyone parses it: accepted when a block of `sig_text` is a
/// valid signature by a release key of the verified key list chain
/// (anchored in the built-in roots, or else in a pinned key) or by a pinned
/// key, and that key is not revoked. Root keys never sign manifests.
/// `file` names the manifest in errors. Version/expiry of the manifest itself
/// are the caller's job (see [`crate::SeenVersions`], [`crate::check_expiry`]).
pub fn verify_manifest(file: &str, bytes: &[u8], sig_text: &str, ctx: &TrustContext<'_>) -> Result<VerifiedManifest> {
    let blocks = parse_signatures(&format!("{file}.minisig"), sig_text)?;
    let (list, pinned_root, chain_err) = trusted_list(ctx);

    let revoked = |id: &KeyId| list.as_ref().is_some_and(|l| l.revoked.contains(id));
    let release: Vec<PublicKey> =
        list.as_ref().map(|l| l.release.iter().map(|k| k.key.clone()).collect()).unwrap_or_default();
    let revoked_key = |k: &PublicKey| list.as_ref().is_some_and(|l| l.is_revoked(k));
    let pinned: Vec<PublicKey> = ctx.pinned_keys.iter().filter(|k| !revoked_key(k)).cloned().collect();
    let candidates: Vec<PublicKey> = release.iter().chain(&pinned).cloned().collect();
    let c = check_all(&blocks, bytes, &candidates);

    let is_release = |id: &KeyId| release.iter().any(|k| k.key_id() == *id);
    let chosen = c.valid.iter().find(|(id, _)| is_release(id)).or_else(|| c.valid.first());
    if let Some((key_id, tc)) = chosen {
        let key_id = *key_id;
        let trust_path = match (&list, is_release(&key_id), pinned_root) {
            (Some(l), true, None) => TrustPath::Release { key_id, list_version: l.version },
            (Some(l), true, Some(root)) => {
                TrustPath::PinnedRelease { key_id, list_version: l.version, pinned_root: root }
            }
            _ => TrustPath::Pinned { key_id },
        };
        let mut warnings = list.as_ref().map(|l| l.warnings.clone()).unwrap_or_default();
        if let Some(e) = &chain_err {
            warnings.push(format!(
                "WARNING: the key list was not trusted ({e}); the file is trusted only through the pinned key"
            ));
        }
        return Ok(VerifiedManifest { trust_path, trusted_comment: tc.clone(), warnings, key_list: list });
    }
    if !c.bad.is_empty() || !c.legacy.is_empty() {
        return no_valid_signature(file, &c, candidates.len());
    }
    // Revoked by id, or a pinned key whose material the list revoked under another id.
    let revoked_pinned = |id: &KeyId| ctx.pinned_keys.iter().any(|k| k.key_id() == *id && revoked_key(k));
    if let (Some(l), Some(id)) = (&list, c.all.iter().find(|id| revoked(id) || revoked_pinned(id))) {
        return Err(Error::Revoked { file: file.to_string(), key_id: *id, list_version: l.version });
    }
    if let Some(e) = chain_err {
        return Err(e);
    }
    let roots: Vec<KeyId> = ctx
        .builtin_roots
        .iter()
        .map(|k| k.key_id())
        .chain(list.iter().flat_map(|l| l.roots.iter().map(|k| k.key.key_id())))
        .collect();
    let hint = if let Some(id) = c.all.iter().find(|id| roots.contains(id)) {
        format!("key {id} is a root key; root keys sign key lists only, manifests must be signed by a release key")
    } else if let Some(l) = &list {
        format!(
            "not a release key of key list {} version {} nor a key pinned in this kubestrap home",
            l.label, l.version
        )
    } else {
        "no key list (keys.toml) was given and no key pinned in this kubestrap home made it; fetch the channel's keys.toml, or pin the signer's public key with `kubestrap trust add`".into()
    };
    Err(Error::UnknownKey { file: file.to_string(), key_ids: c.all, hint })
}

/// Verifies the key list chain against the built-in roots, then against each
/// pinned key. Returns the list, the pinned anchor if one was used, and the
/// most telling error when none worked.
fn trusted_list(ctx: &TrustContext<'_>) -> (Option<TrustedKeyList>, Option<KeyId>, Option<Error>) {
    if ctx.key_chain.is_empty() {
        return (None, None, None);
    }
    let verify = |anchors: &[PublicKey]| KeyChain::verify(ctx.key_chain, anchors, ctx.now, ctx.allow_expired);
    let mut err = match verify(ctx.builtin_roots) {
        Ok(l) => return (Some(l), None, None),
        Err(e) => e,
    };
    for pk in ctx.pinned_keys {
        match verify(std::slice::from_ref(pk)) {
            Ok(l) => return (Some(l), Some(pk.key_id()), None),
            // Prefer an error from a chain that was anchored over "not anchored".
            Err(e) if matches!(err, Error::NotAnchored { .. }) && !matches!(e, Error::NotAnchored { .. }) => err = e,
            Err(_) => {}
        }
    }
    (None, None, Some(err))
}
