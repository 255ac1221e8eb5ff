//! minisign signature files: parsing (one or several blocks back to back)
//! and verification over the exact bytes of the signed file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey};

const UNTRUSTED: &str = "untrusted comment:";
const TRUSTED: &str = "trusted comment: ";

/// One minisign signature block (4 lines) of a `.minisig` file.
#[derive(Clone, Debug)]
pub struct SignatureBlock {
    key_id: KeyId,
    prehashed: bool,
    trusted_comment: String,
    /// The block's text, normalised to 4 `\n`-terminated lines.
    text: String,
}

impl SignatureBlock {
    /// The key id that made this signature.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Whether this is the prehashed (`ED`, BLAKE2b-512) variant.
    pub fn is_prehashed(&self) -> bool {
        self.prehashed
    }

    /// The trusted comment (signed, without the `trusted comment: ` prefix).
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// The block as text: verifiable alone by `minisign -V`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Checks this block against `key` over `data`; `false` when the key
    /// id matches but the signature does not (or is not prehashed).
    pub(crate) fn verify_with(&self, key: &PublicKey, data: &[u8]) -> bool {
        if !self.prehashed || key.key_id() != self.key_id {
            return false;
        }
        match minisign_verify::Signature::decode(&self.text) {
            Ok(sig) => key.to_verifier().verify(data, &sig, false).is_ok(),
            Err(_) => false,
        }
    }
}

/// Parses a `.minisig` text holding one or more signature blocks back to
/// back (blank lines between blocks are allowed). `file` names it in errors.
pub fn parse_signatures(file: &str, text: &str) -> Result<Vec<SignatureBlock>> {
    let bad = |reason: String| Error::MalformedSignature { file: file.to_string(), reason };
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err(bad("empty".into()));
    }
    if !lines.len().is_multiple_of(4) {
        return Err(bad(format!("{} non-empty lines; each signature block has exactly 4", lines.len())));
    }
    let mut out = Vec::with_capacity(lines.len() / 4);
    for (n, block) in lines.chunks(4).enumerate() {
        let n = n + 1;
        let [untrusted, sig_b64, trusted, global_b64] = block else {
            unreachable!("chunks of 4");
        };
        if !untrusted.starts_with(UNTRUSTED) {
            return Err(bad(format!("block {n}: line 1 does not start with `{UNTRUSTED}`")));
        }
        let sig = STANDARD.decode(sig_b64).map_err(|e| bad(format!("block {n}: signature line is not base64: {e}")))?;
        if sig.len() != 74 {
            return Err(bad(format!("block {n}: signature is {} bytes, expected 74", sig.len())));
        }
        let prehashed = match &sig[0..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => return Err(bad(format!("block {n}: unknown signature algorithm"))),
        };
        let Some(tc) = trusted.strip_prefix(TRUSTED) else {
            return Err(bad(format!("block {n}: line 3 does not start with `{TRUSTED}`")));
        };
        let global =
            STANDARD.decode(global_b64).map_err(|e| bad(format!("block {n}: global signature is not base64: {e}")))?;
        if global.len() != 64 {
            return Err(bad(format!("block {n}: global signature is {} bytes, expected 64", global.len())));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&sig[2..10]);
        out.push(SignatureBlock {
            key_id: KeyId(id),
            prehashed,
            trusted_comment: tc.to_string(),
            text: format!("{untrusted}\n{sig_b64}\n{trusted}\n{global_b64}\n"),
        });
    }
    Ok(out)
}

/// A successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The key that signed.
    pub key_id: KeyId,
    /// The signed trusted comment.
    pub trusted_comment: String,
}

/// Outcome of checking every block of a signature file against a key set.
pub(crate) struct Checked {
    /// Blocks that verified, with the key that verified them (distinct keys).
    pub valid: Vec<(KeyId, String)>,
    /// Key ids of blocks whose key is a candidate but which did not verify.
    pub bad: Vec<KeyId>,
    /// Key ids of legacy (non-prehashed) blocks by a candidate key.
    pub legacy: Vec<KeyId>,
    /// Key ids of all blocks.
    pub all: Vec<KeyId>,
}

pub(crate) fn check_all(blocks: &[SignatureBlock], data: &[u8], keys: &[PublicKey]) -> Checked {
    let mut c = Checked { valid: Vec::new(), bad: Vec::new(), legacy: Vec::new(), all: Vec::new() };
    // Keys counted so far: one key counts once toward a threshold, even if
    // listed under two ids (a block's key id can be relabelled by anyone).
    let mut counted: Vec<&PublicKey> = Vec::new();
    for b in blocks {
        if !c.all.contains(&b.key_id) {
            c.all.push(b.key_id);
        }
        let Some(key) = keys.iter().find(|k| k.key_id() == b.key_id) else {
            continue;
        };
        if !b.prehashed {
            c.legacy.push(b.key_id);
        } else if b.verify_with(key, data) {
            if !counted.iter().any(|k| k.same_key(key)) {
                counted.push(key);
                c.valid.push((b.key_id, b.trusted_comment.clone()));
            }
        } else if !c.bad.contains(&b.key_id) {
            c.bad.push(b.key_id);
        }
    }
    c
}

/// Verifies `sig_text` (one or more minisign blocks) over the exact bytes
/// `data` against `candidate_keys`; succeeds on the first block made by a
/// candidate key that verifies. Only prehashed (`ED`) signatures are accepted.
/// `file` names the signed file in errors.
pub fn verify(file: &str, data: &[u8], sig_text: &str, candidate_keys: &[PublicKey]) -> Result<Verified> {
    let blocks = parse_signatures(&format!("{file}.minisig"), sig_text)?;
    let c = check_all(&blocks, data, candidate_keys);
    if let Some((key_id, trusted_comment)) = c.valid.first().cloned() {
        return Ok(Verified { key_id, trusted_comment });
    }
    no_valid_signature(file, &c, candidate_keys.len())
}

/// The error for a signature file without any valid block.
pub(crate) fn no_valid_signature<T>(file: &str, c: &Checked, candidates: usize) -> Result<T> {
    if let Some(key_id) = c.bad.first() {
        return Err(Error::BadSignature { file: file.to_string(), key_id: *key_id });
    }
    if let Some(key_id) = c.legacy.first() {
        return Err(Error::MalformedSignature {
            file: format!("{file}.minisig"),
            reason: format!(
                "the signature by key {key_id} is a legacy (non-prehashed) one; re-sign with a current minisign or kubestrap"
            ),
        });
    }
    Err(Error::UnknownKey {
        file: file.to_string(),
        key_ids: c.all.clone(),
        hint: format!("none of the {candidates} candidate key(s) made it"),
    })
}
