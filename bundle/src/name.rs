//! The names a bundle holds, and nothing else.

pub const MANIFEST: &str = "manifest.toml";
pub const SIGNATURE: &str = "manifest.toml.minisig";
/// Key lists: `keys/keys-<version>.toml` and their `.minisig`.
pub const KEYS: &str = "keys/";
/// Artifacts: `artifacts/<sha256>`.
pub const ARTIFACTS: &str = "artifacts/";

/// What an entry of a bundle is, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    Manifest,
    Signature,
    KeyList {
        version: u64,
    },
    KeyListSignature {
        version: u64,
    },
    /// The lowercase hex sha256 it is named by.
    Artifact(String),
}

impl Name {
    /// Reads an entry name; `None` for any name a bundle does not hold.
    pub fn parse(name: &str) -> Option<Name> {
        match name {
            MANIFEST => return Some(Name::Manifest),
            SIGNATURE => return Some(Name::Signature),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix(KEYS) {
            let (v, sig) = match rest.strip_suffix(".toml.minisig") {
                Some(v) => (v, true),
                None => (rest.strip_suffix(".toml")?, false),
            };
            let v = v.strip_prefix("keys-")?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
                return None;
            }
            let version = v.parse().ok()?;
            return Some(if sig { Name::KeyListSignature { version } } else { Name::KeyList { version } });
        }
        let hex = name.strip_prefix(ARTIFACTS)?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Name::Artifact(hex.into()))
    }
}

pub fn artifact_name(sha256_hex: &str) -> String {
    format!("{ARTIFACTS}{sha256_hex}")
}

/// `keys/keys-<v>.toml`; its signature is this plus `.minisig`.
pub fn key_list_name(version: u64) -> String {
    format!("{KEYS}keys-{version}.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_names() {
        assert_eq!(Name::parse("manifest.toml"), Some(Name::Manifest));
        assert_eq!(Name::parse("keys/keys-12.toml.minisig"), Some(Name::KeyListSignature { version: 12 }));
        assert_eq!(Name::parse(&artifact_name(&"a".repeat(64))), Some(Name::Artifact("a".repeat(64))));
        for bad in [
            "../manifest.toml",
            "/manifest.toml",
            "artifacts/ABC",
            "artifacts/../x",
            "keys/keys-01.toml",
            "keys/keys-.toml",
            "other",
            "artifacts/",
            &format!("artifacts/{}/x", "a".repeat(64)),
        ] {
            assert_eq!(Name::parse(bad), None, "{bad}");
        }
    }
}
