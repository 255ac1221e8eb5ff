//! Root public keys compiled into the binary (`signing/keys/*.pub`).

use crate::keys::PublicKey;

/// The root key files, by name. Add a file here when a root key is added.
const ROOT_KEY_FILES: &[(&str, &str)] = &[("root-1.pub", include_str!("../keys/root-1.pub"))];

/// The built-in root public keys: they anchor the first key list of a chain.
pub fn builtin_roots() -> Vec<PublicKey> {
    ROOT_KEY_FILES
        .iter()
        .map(|(name, text)| {
            PublicKey::from_minisign_text(text).unwrap_or_else(|e| panic!("built-in root key {name} is malformed: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_roots_parse() {
        let roots = super::builtin_roots();
        assert_eq!(roots.len(), super::ROOT_KEY_FILES.len());
        assert_eq!(roots[0].key_id().to_string(), "D2F3155BC513B327");
    }
}
