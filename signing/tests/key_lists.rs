//! Key lists and root rotation chains.

mod common;

use common::{NOW, key, list_toml, signed_list};
use kubestrap_signing::{Error, KeyChain, KeyList, KeyListFile, merge_signatures, sign};

const FAR: &str = "2030-01-01T00:00:00Z";

#[test]
fn single_list_signed_by_builtin_root() {
    let d = tempfile::tempdir().unwrap();
    let (root, rel) = (key(d.path(), "root"), key(d.path(), "rel"));
    let l = signed_list("keys.toml", &list_toml(1, FAR, 1, &[&root], &[&rel], &[]), &[&root]);
    let t = KeyChain::verify(&[l], std::slice::from_ref(&root.pk), NOW, false).unwrap();
    assert_eq!(t.version, 1);
    assert_eq!(t.release.len(), 1);
    assert_eq!(t.release[0].key.key_id(), rel.id);
    assert_eq!(t.release[0].comment.as_deref(), Some("release key"));
    assert_eq!(t.anchored_by, vec![root.id]);
    assert!(t.warnings.is_empty());
    assert_eq!(t.sha256.len(), 64);
}

#[test]
fn list_not_signed_by_builtin_root_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (root, evil, rel) = (key(d.path(), "root"), key(d.path(), "evil"), key(d.path(), "rel"));
    let l = signed_list("keys.toml", &list_toml(1, FAR, 1, &[&evil], &[&rel], &[]), &[&evil]);
    let e = KeyChain::verify(&[l], std::slice::from_ref(&root.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::NotAnchored { .. }), "{e}");
    assert!(e.to_string().contains(&root.id.to_string()), "{e}");
}

#[test]
fn flipped_byte_in_key_list_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (root, rel) = (key(d.path(), "root"), key(d.path(), "rel"));
    let mut l = signed_list("keys.toml", &list_toml(1, FAR, 1, &[&root], &[&rel], &[]), &[&root]);
    l.bytes[3] ^= 1;
    let e = KeyChain::verify(&[l], std::slice::from_ref(&root.pk), NOW, false).unwrap_err();
    // Not a valid anchor signature: nothing in the chain is anchored.
    assert!(matches!(e, Error::NotAnchored { .. }), "{e}");
}

#[test]
fn expired_list_refused_or_accepted_with_warning() {
    let d = tempfile::tempdir().unwrap();
    let (root, rel) = (key(d.path(), "root"), key(d.path(), "rel"));
    let toml = list_toml(1, "2026-01-01T00:00:00Z", 1, &[&root], &[&rel], &[]);
    let l = signed_list("keys.toml", &toml, &[&root]);
    let chain = [l];
    let e = KeyChain::verify(&chain, std::slice::from_ref(&root.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
    assert!(e.to_string().contains("--allow-expired"), "{e}");
    let t = KeyChain::verify(&chain, std::slice::from_ref(&root.pk), NOW, true).unwrap();
    assert_eq!(t.warnings.len(), 1);
    assert!(t.warnings[0].contains("expired"), "{:?}", t.warnings);
}

#[test]
fn root_rotation_chain_is_accepted() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r2, r3) = (key(d.path(), "r1"), key(d.path(), "r2"), key(d.path(), "r3"));
    let (rel1, rel2) = (key(d.path(), "rel1"), key(d.path(), "rel2"));
    // v1: root r1; v2: roots r2+r3 threshold 2, signed by r1 (old) and r2+r3 (new);
    // v3: same roots, new release key, signed by r2+r3.
    let v1 = signed_list("v1", &list_toml(1, "2026-02-01T00:00:00Z", 1, &[&r1], &[&rel1], &[]), &[&r1]);
    let v2 = signed_list("v2", &list_toml(2, FAR, 2, &[&r2, &r3], &[&rel1], &[]), &[&r1, &r2, &r3]);
    let v3 = signed_list("v3", &list_toml(5, FAR, 2, &[&r2, &r3], &[&rel2], &[rel1.id]), &[&r3, &r2]);
    let chain = [v1, v2, v3];
    let t = KeyChain::verify(&chain, std::slice::from_ref(&r1.pk), NOW, false).unwrap();
    assert_eq!(t.version, 5);
    assert_eq!(t.release[0].key.key_id(), rel2.id);
    assert!(t.revoked.contains(&rel1.id));
    // v1 expired long ago: only the newest list's expiry counts.
    assert!(t.warnings.is_empty());
    // A newer binary built with the new roots starts at the first list they sign.
    let t = KeyChain::verify(&chain, std::slice::from_ref(&r2.pk), NOW, false).unwrap();
    assert_eq!(t.version, 5);
    assert_eq!(t.anchored_by, vec![r2.id]);
}

#[test]
fn chain_step_missing_old_threshold_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r2) = (key(d.path(), "r1"), key(d.path(), "r2"));
    let rel = key(d.path(), "rel");
    let v1 = signed_list("v1", &list_toml(1, FAR, 1, &[&r1], &[&rel], &[]), &[&r1]);
    // v2 is signed only by its new root, not by the old one.
    let v2 = signed_list("v2", &list_toml(2, FAR, 1, &[&r2], &[&rel], &[]), &[&r2]);
    let e = KeyChain::verify(&[v1, v2], std::slice::from_ref(&r1.pk), NOW, false).unwrap_err();
    match &e {
        Error::Threshold { file, need, got, by, .. } => {
            assert_eq!(file, "v2");
            assert_eq!((*need, *got), (1, 0));
            assert!(by.contains("version 1"), "{by}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(e.to_string().contains(&r2.id.to_string()), "{e}");
}

#[test]
fn chain_step_missing_new_threshold_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r2, r3) = (key(d.path(), "r1"), key(d.path(), "r2"), key(d.path(), "r3"));
    let rel = key(d.path(), "rel");
    let v1 = signed_list("v1", &list_toml(1, FAR, 1, &[&r1], &[&rel], &[]), &[&r1]);
    // v2 declares threshold 2 of r2,r3 but only r2 signed (plus the old root).
    let v2 = signed_list("v2", &list_toml(2, FAR, 2, &[&r2, &r3], &[&rel], &[]), &[&r1, &r2]);
    let e = KeyChain::verify(&[v1, v2], std::slice::from_ref(&r1.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::Threshold { need: 2, got: 1, version: Some(2), .. }), "{e}");
}

#[test]
fn old_threshold_two_needs_two_old_signatures() {
    let d = tempfile::tempdir().unwrap();
    let (a, b, c) = (key(d.path(), "a"), key(d.path(), "b"), key(d.path(), "c"));
    let rel = key(d.path(), "rel");
    let v1 = signed_list("v1", &list_toml(1, FAR, 2, &[&a, &b], &[&rel], &[]), &[&a, &b]);
    // Signed by a twice (duplicate block) and by c: duplicates count once.
    let toml = list_toml(2, FAR, 1, &[&c], &[&rel], &[]);
    let sa = sign(&a.sk, None, toml.as_bytes(), "x").unwrap();
    let sc = sign(&c.sk, None, toml.as_bytes(), "x").unwrap();
    let sigs = format!("{sa}{sa}{sc}");
    let v2 = KeyListFile::new("v2", toml.clone().into_bytes(), sigs);
    let e = KeyChain::verify(&[v1.clone(), v2], std::slice::from_ref(&a.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::Threshold { need: 2, got: 1, .. }), "{e}");
    // Adding b's signature afterwards (another root holder) fixes it.
    let sb = sign(&b.sk, None, toml.as_bytes(), "x").unwrap();
    let sigs = merge_signatures(&format!("{sa}{sc}"), &sb).unwrap();
    let v2 = KeyListFile::new("v2", toml.into_bytes(), sigs);
    KeyChain::verify(&[v1, v2], std::slice::from_ref(&a.pk), NOW, false).unwrap();
}

#[test]
fn versions_must_increase() {
    let d = tempfile::tempdir().unwrap();
    let (anchor, r1, rel) = (key(d.path(), "anchor"), key(d.path(), "r1"), key(d.path(), "rel"));
    // The chain starts at the first list the anchor signed;
    // the next one repeats its version.
    let a = signed_list("a", &list_toml(3, FAR, 1, &[&r1], &[&rel], &[]), &[&anchor, &r1]);
    let b = signed_list("b", &list_toml(3, FAR, 1, &[&r1], &[], &[]), &[&r1]);
    let e = KeyChain::verify(&[a, b], std::slice::from_ref(&anchor.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::KeyListVersion { version: 3, previous: 3, .. }), "{e}");
}

#[test]
fn revoked_key_cannot_come_back() {
    let d = tempfile::tempdir().unwrap();
    let (r1, p, rel) = (key(d.path(), "r1"), key(d.path(), "p"), key(d.path(), "rel"));
    let v1 = signed_list("v1", &list_toml(1, FAR, 1, &[&r1], &[], &[rel.id]), &[&r1, &p]);
    let v2 = signed_list("v2", &list_toml(2, FAR, 1, &[&r1], &[&rel], &[]), &[&r1]);
    let e = KeyChain::verify(&[v1, v2], std::slice::from_ref(&p.pk), NOW, false).unwrap_err();
    assert!(matches!(e, Error::KeyListInvalid { .. }), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
}

#[test]
fn key_list_validation() {
    let d = tempfile::tempdir().unwrap();
    let (r, rel) = (key(d.path(), "r"), key(d.path(), "rel"));
    let good = list_toml(1, FAR, 1, &[&r], &[&rel], &[]);
    let parsed = KeyList::parse("k", good.as_bytes()).unwrap();
    assert_eq!(KeyList::parse("k", parsed.to_toml().as_bytes()).unwrap(), parsed);
    let cases = [
        (good.replace("threshold = 1", "threshold = 2"), "threshold"),
        (good.replace("threshold = 1", "threshold = 0"), "threshold"),
        (format!("{good}\nextra = 1\n"), "extra"),
        (good.replace("version = 1", "version = 0"), "version"),
        (good.replace(FAR, "next year"), "expires"),
        (good.replace(&format!("id = \"{}\"", rel.id), &format!("id = \"{}\"", r.id)), "does not match"),
        (list_toml(1, FAR, 1, &[&r], &[&rel], &[rel.id]), "both listed and revoked"),
        (list_toml(1, FAR, 1, &[&r], &[&r], &[]), "twice"),
        (list_toml(1, FAR, 1, &[], &[&rel], &[]), "root"),
        (good.replace("comment = ", "commentary = "), "commentary"),
    ];
    for (text, needle) in cases {
        let e = KeyList::parse("keys.toml", text.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::KeyListInvalid { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(needle) && msg.contains("keys.toml"), "{needle}: {msg}");
    }
}

#[test]
fn one_key_under_two_ids_is_refused() {
    // Key ids are not covered by signatures: a list naming one key twice,
    // under two ids, would let its holder count twice toward a threshold.
    let d = tempfile::tempdir().unwrap();
    let (a, rel) = (key(d.path(), "a"), key(d.path(), "rel"));
    let twin = common::twin(&a, 0x11);
    let toml = list_toml(1, FAR, 2, &[&a, &twin], &[&rel], &[]);
    let e = KeyList::parse("keys.toml", toml.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("same key under two ids"), "{e}");
    // Nor as root and release at once.
    let toml = list_toml(1, FAR, 1, &[&a], &[&twin], &[]);
    assert!(KeyList::parse("keys.toml", toml.as_bytes()).is_err());
}

#[test]
fn several_anchor_keys_need_a_majority_to_start_a_chain() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r2, r3, rel) = (key(d.path(), "r1"), key(d.path(), "r2"), key(d.path(), "r3"), key(d.path(), "rel"));
    let anchors = [r1.pk.clone(), r2.pk.clone(), r3.pk.clone()];
    // One compromised built-in root names itself the only root: not enough.
    let alone = signed_list("keys.toml", &list_toml(1, FAR, 1, &[&r1], &[&rel], &[]), &[&r1]);
    let e = KeyChain::verify(&[alone], &anchors, NOW, false).unwrap_err();
    assert!(matches!(e, Error::NotAnchored { .. }), "{e}");
    // Two of three: a chain.
    let two = signed_list("keys.toml", &list_toml(1, FAR, 1, &[&r1], &[&rel], &[]), &[&r1, &r2]);
    assert_eq!(KeyChain::verify(&[two], &anchors, NOW, false).unwrap().version, 1);
    assert_eq!(KeyChain::anchor_threshold(1), 1);
}

#[test]
fn a_revoked_key_stays_revoked_under_another_id() {
    let d = tempfile::tempdir().unwrap();
    let (root, rel, rel2) = (key(d.path(), "root"), key(d.path(), "rel"), key(d.path(), "rel2"));
    let v1 = signed_list("v1", &list_toml(1, FAR, 1, &[&root], &[&rel], &[]), &[&root]);
    let v2 = signed_list("v2", &list_toml(2, FAR, 1, &[&root], &[&rel2], &[rel.id]), &[&root]);
    let t = KeyChain::verify(&[v1.clone(), v2.clone()], std::slice::from_ref(&root.pk), NOW, false).unwrap();
    let relabelled = common::twin(&rel, 0x22);
    assert!(t.is_revoked(&rel.pk) && t.is_revoked(&relabelled.pk) && !t.is_revoked(&rel2.pk));
    // A later list cannot bring it back under a new id.
    let v3 = signed_list("v3", &list_toml(3, FAR, 1, &[&root], &[&rel2, &relabelled], &[]), &[&root]);
    let e = KeyChain::verify(&[v1, v2, v3], std::slice::from_ref(&root.pk), NOW, false).unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
}
