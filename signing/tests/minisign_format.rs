//! minisign format: our files work with the `minisign` tool and back;
//! tampering is refused; key files are handled safely.

mod common;

use std::process::Command;

use common::{flip, key, minisign_bin};
use kubestrap_signing::{
    Error, PublicKey, generate_keypair, merge_signatures, parse_signatures, secret_key_id, sign, sign_file,
    signature_path, verify,
};

#[test]
fn our_signature_verifies_with_minisign() {
    let Some(bin) = minisign_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "release");
    let file = dir.path().join("manifest.toml");
    std::fs::write(&file, b"schema = 1\nchannel = \"stable\"\n").unwrap();
    let sig = sign_file(&k.sk, None, &file, "timestamp:1\tfile:manifest.toml\thashed").unwrap();
    assert_eq!(sig, signature_path(&file));
    let out = Command::new(&bin).arg("-Vm").arg(&file).arg("-p").arg(dir.path().join("release.pub")).output().unwrap();
    assert!(out.status.success(), "minisign -V failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("file:manifest.toml"), "{stdout}");

    // A flipped byte is refused by minisign too.
    std::fs::write(&file, b"schema = 2\nchannel = \"stable\"\n").unwrap();
    let out = Command::new(&bin).arg("-Vm").arg(&file).arg("-p").arg(dir.path().join("release.pub")).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn minisign_signature_verifies_with_ours() {
    let Some(bin) = minisign_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("m.key"), dir.path().join("m.pub"));
    let st = Command::new(&bin).args(["-G", "-W", "-s"]).arg(&sk).arg("-p").arg(&pk).output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let file = dir.path().join("data.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let st = Command::new(&bin)
        .args(["-S", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(&file)
        .args(["-t", "made by minisign"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let key = PublicKey::from_file(&pk).unwrap();
    let sig = std::fs::read_to_string(signature_path(&file)).unwrap();
    let v = verify("data.bin", &data, &sig, std::slice::from_ref(&key)).unwrap();
    assert_eq!(v.key_id, key.key_id());
    assert_eq!(v.trusted_comment, "made by minisign");
    // Key id displays as minisign prints it in the .pub comment (minisign
    // does not pad with leading zeros; we always print 16 digits).
    let pub_text = std::fs::read_to_string(&pk).unwrap();
    let id = key.key_id().to_string();
    assert!(pub_text.contains(id.trim_start_matches('0')), "{pub_text} vs {id}");

    // An unencrypted key made by minisign signs with our code too.
    assert_eq!(secret_key_id(&sk, None).unwrap(), key.key_id());
    let ours = sign(&sk, None, &data, "ours").unwrap();
    verify("data.bin", &data, &ours, std::slice::from_ref(&key)).unwrap();

    // And our unencrypted key signs with minisign.
    let k = common::key(dir.path(), "ours");
    let st = Command::new(&bin)
        .args(["-S", "-s"])
        .arg(&k.sk)
        .arg("-m")
        .arg(&file)
        .args(["-x"])
        .arg(dir.path().join("x.minisig"))
        .output()
        .unwrap();
    assert!(st.status.success(), "minisign -S with our key: {st:?}");
    let sig = std::fs::read_to_string(dir.path().join("x.minisig")).unwrap();
    verify("data.bin", &data, &sig, &[k.pk]).unwrap();
}

#[test]
fn multi_block_signature_blocks_verify_alone_with_minisign() {
    let Some(bin) = minisign_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(dir.path(), "a"), key(dir.path(), "b"));
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, b"version = 1\n").unwrap();
    let data = std::fs::read(&file).unwrap();
    let both =
        merge_signatures(&sign(&a.sk, None, &data, "a").unwrap(), &sign(&b.sk, None, &data, "b").unwrap()).unwrap();
    let blocks = parse_signatures("keys.toml.minisig", &both).unwrap();
    assert_eq!(blocks.len(), 2);
    for (block, name) in blocks.iter().zip(["a", "b"]) {
        let sig = dir.path().join(format!("{name}.minisig"));
        std::fs::write(&sig, block.text()).unwrap();
        let out = Command::new(&bin)
            .arg("-Vm")
            .arg(&file)
            .arg("-x")
            .arg(&sig)
            .arg("-p")
            .arg(dir.path().join(format!("{name}.pub")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn flipped_byte_in_data_or_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "k");
    let data = b"version = 12\nchannel = \"stable\"\n".to_vec();
    let sig = sign(&k.sk, None, &data, "tc").unwrap();
    let keys = [k.pk.clone()];
    verify("m", &data, &sig, &keys).unwrap();
    for at in 0..data.len() {
        let e = verify("m", &flip(&data, at), &sig, &keys).unwrap_err();
        assert!(matches!(e, Error::BadSignature { key_id, .. } if key_id == k.id), "{e}");
    }
    // Flip bits all over the signature text: never accepted.
    let sb = sig.as_bytes();
    for at in 0..sb.len() {
        let Ok(text) = String::from_utf8(flip(sb, at)) else {
            continue;
        };
        if text == sig {
            continue;
        }
        // A flip may keep the text meaningfully the same only in the untrusted comment.
        let untrusted_len = sig.lines().next().unwrap().len();
        let r = verify("m", &data, &text, &keys);
        if at < untrusted_len && at >= "untrusted comment:".len() {
            continue;
        }
        assert!(r.is_err(), "flip at {at} accepted: {text}");
    }
    // The trusted comment is signed.
    let forged = sig.replace("trusted comment: tc", "trusted comment: td");
    assert!(matches!(verify("m", &data, &forged, &keys), Err(Error::BadSignature { .. })));
}

#[test]
fn error_names_file_and_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let (k, other) = (key(dir.path(), "k"), key(dir.path(), "other"));
    let sig = sign(&k.sk, None, b"x", "tc").unwrap();
    let e = verify("/srv/stable/manifest.toml", b"x", &sig, &[other.pk]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/srv/stable/manifest.toml"), "{msg}");
    assert!(msg.contains(&k.id.to_string()), "{msg}");
    assert!(matches!(e, Error::UnknownKey { .. }));
    let e = verify("m", b"x", "garbage", &[k.pk]).unwrap_err();
    assert!(matches!(e, Error::MalformedSignature { .. }), "{e}");
    assert!(e.to_string().contains("m.minisig"));
}

#[test]
fn encrypted_key_round_trip_and_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk, id) = generate_keypair(dir.path(), "enc", Some("s3cret")).unwrap();
    let pk = PublicKey::from_file(&pk).unwrap();
    assert_eq!(pk.key_id(), id);
    let sig = sign(&sk, Some("s3cret"), b"data", "tc").unwrap();
    verify("d", b"data", &sig, &[pk]).unwrap();
    assert!(matches!(sign(&sk, Some("nope"), b"data", "tc"), Err(Error::WrongPassword { .. })));
    assert!(matches!(sign(&sk, None, b"data", "tc"), Err(Error::PasswordRequired { .. })));
    assert!(matches!(sign(&sk, Some("s3cret"), b"data", "two\nlines"), Err(Error::Invalid(_))));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn encrypted_key_signs_with_minisign() {
    let Some(bin) = minisign_bin() else {
        return;
    };
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk, _) = generate_keypair(dir.path(), "enc", Some("pw")).unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"hello").unwrap();
    let mut child = Command::new(&bin)
        .args(["-S", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let sig = std::fs::read_to_string(signature_path(&file)).unwrap();
    verify("f", b"hello", &sig, &[PublicKey::from_file(&pk).unwrap()]).unwrap();
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    generate_keypair(dir.path(), "k", None).unwrap();
    let before = std::fs::read(dir.path().join("k.key")).unwrap();
    assert!(matches!(generate_keypair(dir.path(), "k", None), Err(Error::AlreadyExists { .. })));
    assert_eq!(std::fs::read(dir.path().join("k.key")).unwrap(), before);
    // Only the .pub left over: still refused, nothing written.
    std::fs::remove_file(dir.path().join("k.key")).unwrap();
    assert!(matches!(generate_keypair(dir.path(), "k", None), Err(Error::AlreadyExists { .. })));
    assert!(!dir.path().join("k.key").exists());
    assert!(generate_keypair(dir.path(), "../x", None).is_err());
}

#[test]
fn legacy_signature_is_refused() {
    let Some(bin) = minisign_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "k");
    let file = dir.path().join("f");
    std::fs::write(&file, b"legacy").unwrap();
    let out = Command::new(&bin).args(["-S", "-l", "-s"]).arg(&k.sk).arg("-m").arg(&file).output().unwrap();
    assert!(out.status.success(), "minisign -S -l (a legacy signature): {}", String::from_utf8_lossy(&out.stderr));
    let sig = std::fs::read_to_string(signature_path(&file)).unwrap();
    let e = verify("f", b"legacy", &sig, &[k.pk]).unwrap_err();
    assert!(e.to_string().contains("legacy"), "{e}");
}
