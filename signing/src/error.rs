//! The one error type of this crate: every variant names the file (or label),
//! the key id where there is one, what went wrong and what to do.

use std::path::PathBuf;

use crate::KeyId;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn ver(v: &Option<u64>) -> String {
    v.map(|v| format!(" version {v}")).unwrap_or_default()
}

fn ids(v: &[KeyId]) -> String {
    if v.is_empty() {
        return "(none)".to_string();
    }
    v.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

/// Everything that can go wrong while handling keys, signatures and trust.
/// Exhaustive on purpose: kubestrap's exit-code mapping names every variant,
/// so a new one cannot land without a code of its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing ("read", "write", "rename", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A file could not be read (too large, not a regular file, not text).
    #[error(transparent)]
    File(#[from] kubestrap_fskit::FsError),

    /// A file that must not be overwritten already exists.
    #[error("{}: already exists; refusing to overwrite it (move it away or choose another name)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A `.minisig` text is not in the minisign signature format.
    #[error(
        "{file}: malformed signature file: {reason} (expected minisign blocks: `untrusted comment:` line, base64 signature, `trusted comment:` line, base64 global signature)"
    )]
    MalformedSignature {
        /// The signature file (or label).
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A public key is not in the minisign public key format.
    #[error("{file}: malformed public key: {reason} (expected a minisign .pub file or its 56-character base64 line)")]
    MalformedPublicKey {
        /// The key file (or label).
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A secret key file is not a minisign secret key.
    #[error("{file}: malformed secret key: {reason}")]
    MalformedSecretKey {
        /// The key file.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// The secret key is encrypted and no password was given.
    #[error("{file}: the secret key is encrypted; a password is required")]
    PasswordRequired {
        /// The key file.
        file: String,
    },

    /// The password does not decrypt the secret key.
    #[error("{file}: wrong password for this secret key")]
    WrongPassword {
        /// The key file.
        file: String,
    },

    /// Signing failed inside the minisign library.
    #[error("{file}: cannot sign: {reason}")]
    Sign {
        /// The secret key file.
        file: String,
        /// What the library said.
        reason: String,
    },

    /// A signature by a known key does not match the data: the file or its
    /// signature was altered (or the signature belongs to another file).
    #[error(
        "{file}: bad signature by key {key_id}: the file or its signature was modified; do not use this file, fetch it again from a trusted source"
    )]
    BadSignature {
        /// The signed file.
        file: String,
        /// The key that should have signed it.
        key_id: KeyId,
    },

    /// No signature in the signature file is by a key we trust.
    #[error("{file}: signed by unknown key id(s) {}: {hint}", ids(key_ids))]
    UnknownKey {
        /// The signed file.
        file: String,
        /// The key ids found in the signature file.
        key_ids: Vec<KeyId>,
        /// What could be done about it.
        hint: String,
    },

    /// The signing key was revoked by a trusted key list.
    #[error(
        "{file}: signed by key {key_id}, which key list version {list_version} revokes; refusing it (get a file signed by a current release key)"
    )]
    Revoked {
        /// The signed file.
        file: String,
        /// The revoked key.
        key_id: KeyId,
        /// The key list that revokes it.
        list_version: u64,
    },

    /// A key list is syntactically or semantically invalid.
    #[error("{file}: invalid key list: {reason}")]
    KeyListInvalid {
        /// The key list file.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A key list is not signed by enough keys of a root set.
    #[error(
        "{file}: key list{} has {got} valid signature(s) from {by}, needs {need} (signature blocks by: {}); get it signed by enough root keys",
        ver(version),
        ids(signers)
    )]
    Threshold {
        /// The key list file.
        file: String,
        /// Its version (`None` when it is not parsed yet: lists are parsed
        /// only after the previous roots' signatures check out).
        version: Option<u64>,
        /// Which key set ("the built-in root keys", "the roots of key list version 2", ...).
        by: String,
        /// How many signatures are needed.
        need: usize,
        /// How many valid ones were found.
        got: usize,
        /// Key ids of all its signature blocks.
        signers: Vec<KeyId>,
    },

    /// The key list chain does not start at a list signed by the anchor keys.
    #[error(
        "{file}: no key list in the chain is signed by {anchor} ({}); this key list cannot be trusted by this kubestrap (update kubestrap, or pin the channel's root key with `kubestrap trust add`)",
        ids(anchor_ids)
    )]
    NotAnchored {
        /// The first key list file.
        file: String,
        /// Which anchor set was tried.
        anchor: String,
        /// The anchor key ids.
        anchor_ids: Vec<KeyId>,
    },

    /// Key list versions must strictly increase along the chain.
    #[error("{file}: key list version {version} does not follow version {previous} (versions must strictly increase)")]
    KeyListVersion {
        /// The offending key list.
        file: String,
        /// Its version.
        version: u64,
        /// The previous list's version.
        previous: u64,
    },

    /// Something expired (key list, manifest) and expired data was not allowed.
    #[error(
        "{what} expired at {expires} (now {now}); refusing it as possibly frozen (get a fresh one, or pass --allow-expired to accept it knowingly)"
    )]
    Expired {
        /// What expired, e.g. "key list keys.toml version 3".
        what: String,
        /// When it expired (RFC 3339).
        expires: String,
        /// The time of the check (RFC 3339).
        now: String,
    },

    /// A manifest older than one already seen for the channel: rollback.
    #[error(
        "channel {channel}: manifest version {got} is older than version {seen} already seen here; refusing a rollback"
    )]
    Rollback {
        /// The channel.
        channel: String,
        /// Highest version seen.
        seen: u64,
        /// The offered version.
        got: u64,
    },

    /// Same version as seen before but different bytes: a replaced manifest.
    #[error(
        "channel {channel}: manifest version {version} differs from the version {version} seen before (sha256 {seen_sha256}, now {got_sha256}); refusing it (a published version must never change)"
    )]
    VersionReplaced {
        /// The channel.
        channel: String,
        /// The version.
        version: u64,
        /// sha256 recorded before.
        seen_sha256: String,
        /// sha256 offered now.
        got_sha256: String,
    },

    /// The seen-versions state file is corrupt.
    #[error("{}: corrupt state file: {reason} (inspect or remove it; removing it drops rollback protection until the next manifest)", path.display())]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The key id is not pinned in the trust store.
    #[error("key {key_id} is not pinned in {}", dir.display())]
    NotPinned {
        /// The trust store directory.
        dir: PathBuf,
        /// The key id.
        key_id: KeyId,
    },

    /// A different key with the same id is already pinned.
    #[error("{}: a different key with id {key_id} is already pinned; remove it first with `kubestrap trust remove {key_id}`", path.display())]
    PinConflict {
        /// The pinned key file.
        path: PathBuf,
        /// The key id.
        key_id: KeyId,
    },

    /// A string is not a key id.
    #[error("{input:?} is not a key id (expected 16 hexadecimal digits, as minisign prints)")]
    BadKeyId {
        /// The offending text.
        input: String,
    },

    /// Invalid argument given by the caller.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), op, source }
    }
}
