//! Trust store and freshness state.

mod common;

use common::{NOW, key};
use kubestrap_signing::{
    Error, KeyId, SeenVersions, check_expiry, pinned_keys, sha256_hex, trust_add, trust_list, trust_remove,
};
use time::Duration;

#[test]
fn trust_add_list_remove() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("home/trust");
    assert!(trust_list(&store).unwrap().is_empty());
    let (a, b) = (key(d.path(), "a"), key(d.path(), "b"));
    assert_eq!(trust_add(&store, &d.path().join("a.pub")).unwrap(), a.id);
    assert_eq!(trust_add(&store, &d.path().join("b.pub")).unwrap(), b.id);
    // Idempotent.
    assert_eq!(trust_add(&store, &d.path().join("a.pub")).unwrap(), a.id);
    let listed = trust_list(&store).unwrap();
    let mut ids = vec![a.id, b.id];
    ids.sort();
    assert_eq!(listed.iter().map(|p| p.key_id).collect::<Vec<_>>(), ids);
    assert!(listed.iter().all(|p| p.path.starts_with(&store)));
    assert_eq!(pinned_keys(&store).unwrap().len(), 2);
    // The stored file is a minisign .pub the tool can read back.
    let text = std::fs::read_to_string(store.join(format!("{}.pub", a.id))).unwrap();
    assert!(text.starts_with("untrusted comment: "));
    trust_remove(&store, a.id).unwrap();
    assert_eq!(trust_list(&store).unwrap().len(), 1);
    let e = trust_remove(&store, a.id).unwrap_err();
    assert!(matches!(e, Error::NotPinned { .. }), "{e}");
    // A malformed .pub is refused, and so is a file named after another id.
    std::fs::write(d.path().join("junk.pub"), "nope").unwrap();
    assert!(trust_add(&store, &d.path().join("junk.pub")).is_err());
    std::fs::copy(d.path().join("a.pub"), store.join(format!("{}.pub", "0000000000000000"))).unwrap();
    assert!(matches!(trust_list(&store), Err(Error::MalformedPublicKey { .. })));
}

#[test]
fn trust_conflicting_key_with_same_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("trust");
    let a = key(d.path(), "a");
    let b = key(d.path(), "b");
    std::fs::create_dir_all(&store).unwrap();
    // Forge a store entry named after a's id but holding b's key material with a's id bytes.
    let mut blob = base64_decode(&b.pk.to_base64());
    blob[2..10].copy_from_slice(a.id.as_bytes());
    let forged = format!("untrusted comment: forged\n{}\n", base64_encode(&blob));
    std::fs::write(store.join(format!("{}.pub", a.id)), forged).unwrap();
    let e = trust_add(&store, &d.path().join("a.pub")).unwrap_err();
    assert!(matches!(e, Error::PinConflict { .. }), "{e}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn rollback_and_replaced_version_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("state/seen.toml");
    let v12 = sha256_hex(b"manifest 12");
    let v13 = sha256_hex(b"manifest 13");
    let mut seen = SeenVersions::load(&path).unwrap();
    seen.check("stable", 12, &v12).unwrap();
    seen.record("stable", 12, &v12).unwrap();
    // Same version, same bytes: fine (re-verification).
    seen.check("stable", 12, &v12).unwrap();
    // Survives a reload.
    let mut seen = SeenVersions::load(&path).unwrap();
    assert_eq!(seen.get("stable").unwrap().version, 12);
    let e = seen.check("stable", 11, &v12).unwrap_err();
    assert!(matches!(&e, Error::Rollback { channel, seen: 12, got: 11 } if channel == "stable"), "{e}");
    let e = seen.check("stable", 12, &v13).unwrap_err();
    assert!(matches!(e, Error::VersionReplaced { version: 12, .. }), "{e}");
    // Other channels are independent.
    seen.check("beta", 1, &v13).unwrap();
    seen.record("stable", 13, &v13).unwrap();
    let seen = SeenVersions::load(&path).unwrap();
    assert_eq!(seen.get("stable").unwrap().version, 13);
    assert!(seen.check("stable", 12, &v12).is_err());
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("seen.toml")]);
}

#[test]
fn check_and_record_under_lock() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("seen.toml");
    let h = |s: &str| sha256_hex(s.as_bytes());
    SeenVersions::check_and_record(&path, "stable", 3, &h("3")).unwrap();
    let threads: Vec<_> = (4..12u64)
        .map(|v| {
            let path = path.clone();
            std::thread::spawn(move || {
                SeenVersions::check_and_record(&path, "stable", v, &sha256_hex(v.to_string().as_bytes()))
            })
        })
        .collect();
    for t in threads {
        // Some may lose the race (rollback), none may corrupt the file.
        let _ = t.join().unwrap();
    }
    let seen = SeenVersions::load(&path).unwrap();
    assert_eq!(seen.get("stable").unwrap().version, 11);
    assert!(matches!(SeenVersions::check_and_record(&path, "stable", 2, &h("2")), Err(Error::Rollback { .. })));
}

#[test]
fn corrupt_state_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("seen.toml");
    std::fs::write(&path, "[channel.stable]\nversion = \"x\"\n").unwrap();
    let e = SeenVersions::load(&path).unwrap_err();
    assert!(matches!(e, Error::StateCorrupt { .. }), "{e}");
    let seen = SeenVersions::load(&d.path().join("missing.toml")).unwrap();
    assert!(seen.check("stable", 1, "zz").is_err());
}

#[test]
fn expiry_helper() {
    let past = NOW - Duration::days(1);
    let future = NOW + Duration::days(1);
    assert_eq!(check_expiry("manifest stable 12", future, NOW, false).unwrap(), None);
    assert_eq!(check_expiry("manifest stable 12", NOW, NOW, false).unwrap(), None);
    let e = check_expiry("manifest stable 12", past, NOW, false).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }));
    assert!(e.to_string().contains("manifest stable 12"), "{e}");
    let w = check_expiry("manifest stable 12", past, NOW, true).unwrap().unwrap();
    assert!(w.contains("expired"), "{w}");
}

#[test]
fn key_id_parse_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let k = key(d.path(), "k");
    let s = k.id.to_string();
    assert_eq!(s.len(), 16);
    assert_eq!(s, s.to_uppercase());
    assert_eq!(s.parse::<KeyId>().unwrap(), k.id);
    assert_eq!(s.to_lowercase().parse::<KeyId>().unwrap(), k.id);
}
