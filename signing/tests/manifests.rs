//! verify_manifest: release keys, revocation, rotation, expiry, pinned keys.

mod common;

use common::{Key, NOW, flip, key, list_toml, sign_with, signed_list};
use kubestrap_signing::{
    Error, KeyListFile, PublicKey, TrustContext, TrustPath, VerifiedManifest, builtin_roots, verify_manifest,
};

const FAR: &str = "2030-01-01T00:00:00Z";
const MANIFEST: &[u8] = b"schema = 1\nchannel = \"stable\"\nversion = 12\n";

struct Setup {
    _dir: tempfile::TempDir,
    root: Key,
    rel: Key,
    other: Key,
    chain: Vec<KeyListFile>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (root, rel, other) = (key(dir.path(), "root"), key(dir.path(), "rel"), key(dir.path(), "other"));
    let chain = vec![signed_list("keys.toml", &list_toml(1, FAR, 1, &[&root], &[&rel], &[]), &[&root])];
    Setup { _dir: dir, root, rel, other, chain }
}

fn check(
    bytes: &[u8],
    sig: &str,
    roots: &[PublicKey],
    chain: &[KeyListFile],
    pinned: &[PublicKey],
    allow_expired: bool,
) -> Result<VerifiedManifest, Error> {
    let ctx = TrustContext { builtin_roots: roots, key_chain: chain, pinned_keys: pinned, allow_expired, now: NOW };
    verify_manifest("stable.toml", bytes, sig, &ctx)
}

#[test]
fn release_key_signature_is_accepted() {
    let s = setup();
    let sig = sign_with(&s.rel, MANIFEST);
    let v = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &s.chain, &[], false).unwrap();
    assert_eq!(v.trust_path, TrustPath::Release { key_id: s.rel.id, list_version: 1 });
    assert!(!v.trust_path.via_pinned_key());
    assert_eq!(v.trusted_comment, "test manifest");
    assert!(v.warnings.is_empty());
    assert_eq!(v.key_list.unwrap().version, 1);
}

#[test]
fn flipped_byte_in_manifest_or_signature_is_refused() {
    let s = setup();
    let sig = sign_with(&s.rel, MANIFEST);
    let roots = [s.root.pk.clone()];
    for at in [0, 10, MANIFEST.len() - 1] {
        let e = check(&flip(MANIFEST, at), &sig, &roots, &s.chain, &[], false).unwrap_err();
        assert!(matches!(e, Error::BadSignature { key_id, .. } if key_id == s.rel.id), "{e}");
        assert!(e.to_string().contains("stable.toml"));
    }
    let line2 = sig.lines().next().unwrap().len() + 1;
    for at in [line2 + 20, line2 + 60, sig.len() - 10] {
        let bad = String::from_utf8(flip(sig.as_bytes(), at)).unwrap();
        assert!(check(MANIFEST, &bad, &roots, &s.chain, &[], false).is_err());
    }
}

#[test]
fn untrusted_key_is_refused() {
    let s = setup();
    let sig = sign_with(&s.other, MANIFEST);
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &s.chain, &[], false).unwrap_err();
    assert!(matches!(&e, Error::UnknownKey { key_ids, .. } if key_ids == &[s.other.id]), "{e}");
    assert!(e.to_string().contains(&s.other.id.to_string()));
    // Without any key list, the hint says what to do.
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &[], &[], false).unwrap_err();
    assert!(e.to_string().contains("trust add"), "{e}");
}

#[test]
fn root_key_cannot_sign_manifests() {
    let s = setup();
    let sig = sign_with(&s.root, MANIFEST);
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &s.chain, &[], false).unwrap_err();
    assert!(e.to_string().contains("root keys sign key lists only"), "{e}");
}

#[test]
fn revoked_release_key_is_refused() {
    let s = setup();
    let d = tempfile::tempdir().unwrap();
    let rel2 = key(d.path(), "rel2");
    let chain = vec![signed_list("keys.toml", &list_toml(2, FAR, 1, &[&s.root], &[&rel2], &[s.rel.id]), &[&s.root])];
    let sig = sign_with(&s.rel, MANIFEST);
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &chain, &[], false).unwrap_err();
    assert!(matches!(e, Error::Revoked { key_id, list_version: 2, .. } if key_id == s.rel.id), "{e}");
    // Even when the revoked key is pinned.
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &chain, std::slice::from_ref(&s.rel.pk), false)
        .unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
}

#[test]
fn release_key_rotation() {
    let s = setup();
    let d = tempfile::tempdir().unwrap();
    let rel2 = key(d.path(), "rel2");
    let v2 = signed_list("keys-2.toml", &list_toml(2, FAR, 1, &[&s.root], &[&rel2], &[]), &[&s.root]);
    let chain = vec![s.chain[0].clone(), v2];
    let roots = [s.root.pk.clone()];
    let v = check(MANIFEST, &sign_with(&rel2, MANIFEST), &roots, &chain, &[], false).unwrap();
    assert_eq!(v.trust_path, TrustPath::Release { key_id: rel2.id, list_version: 2 });
    let e = check(MANIFEST, &sign_with(&s.rel, MANIFEST), &roots, &chain, &[], false).unwrap_err();
    assert!(matches!(e, Error::UnknownKey { .. }), "{e}");
    // Overlap: a manifest carrying signatures by the old and the new key passes.
    let both = format!("{}{}", sign_with(&s.rel, MANIFEST), sign_with(&rel2, MANIFEST));
    check(MANIFEST, &both, &roots, &chain, &[], false).unwrap();
}

#[test]
fn expired_key_list() {
    let s = setup();
    let chain = vec![signed_list(
        "keys.toml",
        &list_toml(1, "2026-06-01T00:00:00Z", 1, &[&s.root], &[&s.rel], &[]),
        &[&s.root],
    )];
    let sig = sign_with(&s.rel, MANIFEST);
    let roots = [s.root.pk.clone()];
    let e = check(MANIFEST, &sig, &roots, &chain, &[], false).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
    let v = check(MANIFEST, &sig, &roots, &chain, &[], true).unwrap();
    assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    assert!(v.warnings[0].contains("expired"));
}

#[test]
fn pinned_key_signs_manifests_directly() {
    let s = setup();
    let sig = sign_with(&s.other, MANIFEST);
    let roots = [s.root.pk.clone()];
    let pinned = [s.other.pk.clone()];
    let v = check(MANIFEST, &sig, &roots, &[], &pinned, false).unwrap();
    assert_eq!(v.trust_path, TrustPath::Pinned { key_id: s.other.id });
    assert!(v.trust_path.via_pinned_key());
    assert!(v.trust_path.to_string().contains("pinned in this kubestrap home"));
    // With the official chain present too.
    let v = check(MANIFEST, &sig, &roots, &s.chain, &pinned, false).unwrap();
    assert_eq!(v.trust_path, TrustPath::Pinned { key_id: s.other.id });
    // Tampered: refused.
    assert!(matches!(check(&flip(MANIFEST, 3), &sig, &roots, &[], &pinned, false), Err(Error::BadSignature { .. })));
}

#[test]
fn pinned_key_as_root_of_its_own_key_list() {
    let d = tempfile::tempdir().unwrap();
    let (private_root, private_rel) = (key(d.path(), "proot"), key(d.path(), "prel"));
    let chain = vec![signed_list(
        "private/keys.toml",
        &list_toml(7, FAR, 1, &[&private_root], &[&private_rel], &[]),
        &[&private_root],
    )];
    let sig = sign_with(&private_rel, MANIFEST);
    let builtin = builtin_roots();
    let pinned = [private_root.pk.clone()];
    let v = check(MANIFEST, &sig, &builtin, &chain, &pinned, false).unwrap();
    assert_eq!(
        v.trust_path,
        TrustPath::PinnedRelease { key_id: private_rel.id, list_version: 7, pinned_root: private_root.id }
    );
    assert!(v.trust_path.via_pinned_key());
    // Not pinned: the private list is not anchored anywhere.
    let e = check(MANIFEST, &sig, &builtin, &chain, &[], false).unwrap_err();
    assert!(matches!(e, Error::NotAnchored { .. }), "{e}");
    // Pinned but its list expired: the expiry is what is reported.
    let chain = vec![signed_list(
        "private/keys.toml",
        &list_toml(7, "2020-01-01T00:00:00Z", 1, &[&private_root], &[&private_rel], &[]),
        &[&private_root],
    )];
    let e = check(MANIFEST, &sig, &builtin, &chain, &pinned, false).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
}

#[test]
fn malformed_signature_file_is_refused() {
    let s = setup();
    let roots = [s.root.pk.clone()];
    for bad in ["", "untrusted comment: x\n", "hello\nworld\nfoo\nbar\n"] {
        let e = check(MANIFEST, bad, &roots, &s.chain, &[], false).unwrap_err();
        assert!(matches!(e, Error::MalformedSignature { .. }), "{e}");
        assert!(e.to_string().contains("stable.toml.minisig"), "{e}");
    }
}

#[test]
fn a_pinned_key_revoked_under_another_id_is_refused() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let s = setup();
    let d = tempfile::tempdir().unwrap();
    let rel2 = key(d.path(), "rel2");
    let v2 = signed_list("v2", &list_toml(2, FAR, 1, &[&s.root], &[&rel2], &[s.rel.id]), &[&s.root]);
    let chain = [s.chain[0].clone(), v2];
    // The revoked release key, pinned under another id, signs a manifest
    // whose signature block is relabelled to that id.
    let relabelled = common::twin(&s.rel, 0x33);
    let sig = sign_with(&s.rel, MANIFEST);
    let mut lines: Vec<String> = sig.lines().map(str::to_string).collect();
    let mut raw = STANDARD.decode(&lines[1]).unwrap();
    raw[2..10].copy_from_slice(relabelled.pk.key_id().as_bytes());
    lines[1] = STANDARD.encode(&raw);
    let sig = lines.join("\n") + "\n";
    let pinned = std::slice::from_ref(&relabelled.pk);
    // Valid on its own: a pinned key's signature…
    let v = check(MANIFEST, &sig, &[], &[], pinned, false).unwrap();
    assert_eq!(v.trust_path, TrustPath::Pinned { key_id: relabelled.id });
    // …but the chain revoked that key material.
    let e = check(MANIFEST, &sig, std::slice::from_ref(&s.root.pk), &chain, pinned, false).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
}
