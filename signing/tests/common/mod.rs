//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kubestrap_signing::{KeyId, KeyListFile, PublicKey, sign, sign_key_list};
use time::OffsetDateTime;
use time::macros::datetime;

/// The injected "now" of the tests.
pub const NOW: OffsetDateTime = datetime!(2026-11-24 12:00 UTC);

/// A test key pair (unencrypted secret key).
pub struct Key {
    pub sk: PathBuf,
    pub pk: PublicKey,
    pub id: KeyId,
}

pub fn key(dir: &Path, name: &str) -> Key {
    let (sk, pub_path, id) = kubestrap_signing::generate_keypair(dir, name, None).unwrap();
    let pk = PublicKey::from_file(&pub_path).unwrap();
    assert_eq!(pk.key_id(), id);
    Key { sk, pk, id }
}

/// A `keys.toml` text.
pub fn list_toml(
    version: u64,
    expires: &str,
    threshold: usize,
    roots: &[&Key],
    release: &[&Key],
    revoked: &[KeyId],
) -> String {
    let mut s = format!("version = {version}\nexpires = \"{expires}\"\nthreshold = {threshold}\n");
    let ids: Vec<String> = revoked.iter().map(|k| format!("\"{k}\"")).collect();
    s.push_str(&format!("revoked = [{}]\n", ids.join(", ")));
    for r in roots {
        s.push_str(&format!("[[root]]\nid = \"{}\"\nkey = \"{}\"\n", r.id, r.pk.to_base64()));
    }
    for r in release {
        s.push_str(&format!(
            "[[release]]\nid = \"{}\"\nkey = \"{}\"\ncomment = \"release key\"\n",
            r.id,
            r.pk.to_base64()
        ));
    }
    s
}

/// A key list signed by `signers`.
pub fn signed_list(label: &str, toml: &str, signers: &[&Key]) -> KeyListFile {
    let keys: Vec<(&Path, Option<&str>)> = signers.iter().map(|k| (k.sk.as_path(), None)).collect();
    let sigs = sign_key_list(toml.as_bytes(), &keys, "").unwrap();
    KeyListFile::new(label, toml.as_bytes().to_vec(), sigs)
}

/// A manifest signature by `k`.
pub fn sign_with(k: &Key, data: &[u8]) -> String {
    sign(&k.sk, None, data, "test manifest").unwrap()
}

/// Flips one bit of `data` at `at`.
pub fn flip(data: &[u8], at: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at] ^= 0x01;
    d
}

/// The `minisign` binary. Missing, the test fails, unless
/// KUBESTRAP_TEST_SKIP names `minisign` (then `None`: skipped, counted).
pub fn minisign_bin() -> Option<PathBuf> {
    let found = kubestrap_testkit::which("minisign");
    let there = || {
        found.clone().map(drop).ok_or_else(|| "the minisign binary is not installed (apt-get install minisign)".into())
    };
    kubestrap_testkit::need("minisign", there).then(|| found.clone()).flatten()
}

/// The same key material as `k` under another key id (ids are not signed:
/// anyone can relabel a key or a signature block).
pub fn twin(k: &Key, id_byte: u8) -> Key {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let mut blob = STANDARD.decode(k.pk.to_base64()).unwrap();
    blob[2..10].copy_from_slice(&[id_byte; 8]);
    let pk = PublicKey::from_base64(&STANDARD.encode(&blob)).unwrap();
    assert!(pk.same_key(&k.pk) && pk.key_id() != k.id);
    Key { sk: k.sk.clone(), id: pk.key_id(), pk }
}
