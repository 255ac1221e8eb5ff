//! Key ids and minisign public keys.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, Result};

/// Bytes of a minisign public key blob: algorithm (2) + key id (8) + Ed25519 key (32).
const PK_BLOB: usize = 42;

/// A minisign key id: 8 bytes, shown as 16 upper-case hex digits exactly
/// like `minisign` prints it (the bytes read as a little-endian integer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The raw key number as stored in key and signature blobs.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;
    /// Parses 16 hex digits (either case), as printed by minisign.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.len() != 16 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadKeyId { input: s.into() });
        }
        let n = u64::from_str_radix(t, 16).map_err(|_| Error::BadKeyId { input: s.into() })?;
        Ok(KeyId(n.to_le_bytes()))
    }
}

/// A minisign Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    blob: [u8; PK_BLOB],
    comment: Option<String>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Parses the base64 line of a minisign public key (56 characters).
    pub fn from_base64(b64: &str) -> Result<Self> {
        Self::parse_b64("public key", b64)
    }

    fn parse_b64(label: &str, b64: &str) -> Result<Self> {
        let bad = |reason: &str| Error::MalformedPublicKey { file: label.to_string(), reason: reason.to_string() };
        let raw = STANDARD.decode(b64.trim()).map_err(|e| bad(&format!("not base64: {e}")))?;
        let blob: [u8; PK_BLOB] =
            raw.as_slice().try_into().map_err(|_| bad(&format!("{} bytes, expected {PK_BLOB}", raw.len())))?;
        if &blob[0..2] != b"Ed" {
            return Err(bad("not an Ed25519 minisign key (algorithm is not `Ed`)"));
        }
        Ok(PublicKey { blob, comment: None })
    }

    /// Parses the text of a minisign `.pub` file (`untrusted comment:` line
    /// then the base64 key). A bare base64 line is accepted too.
    pub fn from_minisign_text(text: &str) -> Result<Self> {
        Self::parse_text("public key", text)
    }

    pub(crate) fn parse_text(label: &str, text: &str) -> Result<Self> {
        let lines: Vec<&str> =
            text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
        match lines.as_slice() {
            [b64] => Self::parse_b64(label, b64),
            [comment, b64] => {
                let Some(c) = comment.strip_prefix("untrusted comment:") else {
                    return Err(Error::MalformedPublicKey {
                        file: label.to_string(),
                        reason: "first line does not start with `untrusted comment:`".into(),
                    });
                };
                let mut pk = Self::parse_b64(label, b64)?;
                pk.comment = Some(c.trim().to_string());
                Ok(pk)
            }
            _ => Err(Error::MalformedPublicKey {
                file: label.to_string(),
                reason: format!("{} non-empty lines, expected 2", lines.len()),
            }),
        }
    }

    /// Reads a minisign `.pub` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = kubestrap_fskit::read_capped_text(path, kubestrap_fskit::caps::KEY).map_err(|e| match e {
            kubestrap_fskit::FsError::NotText { .. } | kubestrap_fskit::FsError::TooLarge { .. } => {
                Error::MalformedPublicKey {
                    file: path.display().to_string(),
                    reason: "not a minisign public key file".into(),
                }
            }
            other => other.into(),
        })?;
        Self::parse_text(&path.display().to_string(), &text)
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.blob[2..10]);
        KeyId(id)
    }

    /// The base64 line (as in `.pub` files and key lists).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.blob)
    }

    /// The untrusted comment of the `.pub` file it came from, if any.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// The full `.pub` file text, as `minisign -G` writes it.
    pub fn to_minisign_text(&self) -> String {
        format!("untrusted comment: minisign public key {}\n{}\n", self.key_id(), self.to_base64())
    }

    /// Same Ed25519 key material, whatever key id and comment it carries.
    /// The id is not covered by any signature: anyone can relabel a
    /// signature block, so keys are told apart by their material only.
    pub fn same_key(&self, other: &PublicKey) -> bool {
        self.blob[10..] == other.blob[10..]
    }

    pub(crate) fn to_verifier(&self) -> minisign_verify::PublicKey {
        // The blob was validated at construction: 42 bytes, algorithm "Ed".
        minisign_verify::PublicKey::from_base64(&self.to_base64()).expect("validated public key blob")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_display_matches_minisign() {
        // minisign prints load_u64_le(keynum) as %016llX
        let id = KeyId([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xAB]);
        assert_eq!(id.to_string(), "AB07060504030201");
        assert_eq!("ab07060504030201".parse::<KeyId>().unwrap(), id);
        assert!("xyz".parse::<KeyId>().is_err());
        assert!("+B07060504030201".parse::<KeyId>().is_err());
    }

    #[test]
    fn parses_minisign_pub() {
        let text = "untrusted comment: minisign public key E7620F1842B4E81F\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        let pk = PublicKey::from_minisign_text(text).unwrap();
        assert_eq!(pk.key_id().to_string(), "E7620F1842B4E81F");
        assert_eq!(pk.to_minisign_text(), text);
        assert_eq!(
            PublicKey::from_base64("RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3").unwrap().key_id(),
            pk.key_id()
        );
    }
}
