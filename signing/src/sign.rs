//! Key generation and signing (prehashed minisign signatures), interoperable
//! with the `minisign` tool.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey};
use crate::minisig::parse_signatures;
use kubestrap_fskit::{self as fskit, caps};

/// Secret key blob size: sig_alg, kdf_alg, chk_alg (2 each), salt (32),
/// opslimit, memlimit, keynum (8 each), secret key (64), checksum (32).
const SK_BLOB: usize = 158;

/// Generates a key pair as `out_dir/NAME.key` (mode 0600) and
/// `out_dir/NAME.pub`, in the `minisign -G` format. With a password the
/// secret key is encrypted (scrypt), without one it is stored unencrypted
/// like `minisign -G -W` (for CI). Existing files are never overwritten.
pub fn generate_keypair(out_dir: &Path, name: &str, password: Option<&str>) -> Result<(PathBuf, PathBuf, KeyId)> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Invalid(format!(
            "{name:?} is not a usable key name (no slashes, not empty, no leading dot)"
        )));
    }
    let key_path = out_dir.join(format!("{name}.key"));
    let pub_path = out_dir.join(format!("{name}.pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(Error::AlreadyExists { path: p.clone() });
        }
    }
    let label = key_path.display().to_string();
    let sign_err = |e: minisign::PError| Error::Sign { file: label.clone(), reason: e.to_string() };
    let (sk, pk, comment) = match password {
        Some(pw) if !pw.is_empty() => {
            let kp = minisign::KeyPair::generate_encrypted_keypair(Some(pw.to_string())).map_err(sign_err)?;
            (kp.sk, kp.pk, "minisign encrypted secret key")
        }
        _ => {
            // An empty password yields a checksummed, unencrypted key; mark its
            // KDF as "none" (two zero bytes) as `minisign -G -W` does.
            let kp = minisign::KeyPair::generate_encrypted_keypair(Some(String::new())).map_err(sign_err)?;
            let mut bytes = kp.sk.to_bytes();
            bytes[2..4].copy_from_slice(&[0, 0]);
            (minisign::SecretKey::from_bytes(&bytes).map_err(sign_err)?, kp.pk, "minisign secret key (unencrypted)")
        }
    };
    let public = PublicKey::from_base64(&pk.to_base64())?;
    let sk_text = sk.to_box(Some(comment)).map_err(sign_err)?.into_string();
    create_new(&key_path, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = create_new(&pub_path, public.to_minisign_text().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    fskit::sync_dir(out_dir)?;
    Ok((key_path, pub_path, public.key_id()))
}

/// Loads a minisign secret key file (encrypted or not).
fn load_secret_key(path: &Path, password: Option<&str>) -> Result<minisign::SecretKey> {
    let file = path.display().to_string();
    let bad = |reason: &str| Error::MalformedSecretKey { file: file.clone(), reason: reason.to_string() };
    let text = fskit::read_capped_text(path, caps::KEY).map_err(|e| match e {
        fskit::FsError::NotText { .. } | fskit::FsError::TooLarge { .. } => bad("not a minisign secret key file"),
        other => other.into(),
    })?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
    let [comment, b64] = lines.as_slice() else {
        return Err(bad("expected 2 lines: `untrusted comment:` and the base64 key"));
    };
    if !comment.starts_with("untrusted comment:") {
        return Err(bad("first line does not start with `untrusted comment:`"));
    }
    let raw = STANDARD.decode(b64.trim()).map_err(|_| bad("key line is not base64"))?;
    if raw.len() != SK_BLOB {
        return Err(bad(&format!("{} bytes, expected {SK_BLOB}", raw.len())));
    }
    if &raw[0..2] != b"Ed" || &raw[4..6] != b"B2" {
        return Err(bad("not an Ed25519 minisign secret key"));
    }
    let pw = match &raw[2..4] {
        b"Sc" => match password {
            Some(p) => p.to_string(),
            None => return Err(Error::PasswordRequired { file }),
        },
        // Unencrypted (`minisign -G -W`): minisign leaves the checksum zero,
        // so take the key as is; `sign` checks the pair by verifying.
        [0, 0] => return minisign::SecretKey::from_bytes(&raw).map_err(|e| bad(&e.to_string())),
        _ => return Err(bad("unsupported key derivation function")),
    };
    let sk_box = minisign::SecretKeyBox::from_string(&format!("{comment}\n{}\n", b64.trim()))
        .map_err(|e| bad(&e.to_string()))?;
    minisign::SecretKey::from_box(sk_box, Some(pw)).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("Wrong password") { Error::WrongPassword { file: file.clone() } } else { bad(&msg) }
    })
}

/// The key id of a secret key file (decrypts it, hence the password).
pub fn secret_key_id(secret_key_path: &Path, password: Option<&str>) -> Result<KeyId> {
    let sk = load_secret_key(secret_key_path, password)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(sk.keynum());
    Ok(KeyId(id))
}

/// Signs `data` with the secret key at `secret_key_path` (prehashed,
/// algorithm `ED`) and returns the `.minisig` text (one block).
/// `trusted_comment` must be a single line.
pub fn sign(secret_key_path: &Path, password: Option<&str>, data: &[u8], trusted_comment: &str) -> Result<String> {
    if trusted_comment.contains(['\n', '\r']) {
        return Err(Error::Invalid("the trusted comment must be a single line".into()));
    }
    let sk = load_secret_key(secret_key_path, password)?;
    let file = secret_key_path.display().to_string();
    let err = |e: minisign::PError| Error::Sign { file: file.clone(), reason: e.to_string() };
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(err)?;
    let id = PublicKey::from_base64(&pk.to_base64())?.key_id();
    let untrusted = format!("signature from minisign secret key {id}");
    let text = sign_deterministic(&sk, data, trusted_comment, &untrusted)
        .map_err(|reason| Error::Sign { file: file.clone(), reason })?;
    // What was written must verify with the key's public half.
    let check = minisign_verify::PublicKey::from_base64(&pk.to_base64())
        .and_then(|pk| pk.verify(data, &minisign_verify::Signature::decode(&text)?, false));
    check.map_err(|e| Error::Sign { file, reason: format!("the new signature does not verify: {e}") })?;
    Ok(text)
}

/// minisign's prehashed signature (algorithm `ED`): Ed25519 over the
/// BLAKE2b-512 of the data, then over the signature and the trusted comment.
/// Plain (deterministic) Ed25519, where minisign's own signer adds random
/// noise: the same key, bytes and comment give the same signature, so a
/// release built twice from the same inputs is byte-identical. Any minisign
/// verifier accepts both.
fn sign_deterministic(sk: &minisign::SecretKey, data: &[u8], trusted: &str, untrusted: &str) -> Result<String, String> {
    use blake2::Digest;
    // SecretKey::to_bytes: sig_alg, kdf_alg, chk_alg (2 each), kdf salt (32),
    // opslimit, memlimit (8 each), keynum (8), Ed25519 seed + public key (64),
    // checksum (32); decrypted once loaded.
    const KEYNUM: std::ops::Range<usize> = 54..62;
    const SEED: std::ops::Range<usize> = 62..94;
    const PUBLIC: std::ops::Range<usize> = 94..126;
    let raw = sk.to_bytes();
    if raw.len() < PUBLIC.end {
        return Err("unexpected secret key layout".into());
    }
    let kp = ring::signature::Ed25519KeyPair::from_seed_and_public_key(&raw[SEED], &raw[PUBLIC])
        .map_err(|e| format!("the secret key is not an Ed25519 key pair: {e}"))?;
    let prehash = blake2::Blake2b512::digest(data);
    let sig = kp.sign(&prehash);
    let mut line = Vec::with_capacity(74);
    line.extend_from_slice(b"ED");
    line.extend_from_slice(&raw[KEYNUM]);
    line.extend_from_slice(sig.as_ref());
    let mut global_input = sig.as_ref().to_vec();
    global_input.extend_from_slice(trusted.as_bytes());
    let global = kp.sign(&global_input);
    Ok(format!(
        "untrusted comment: {untrusted}\n{}\ntrusted comment: {trusted}\n{}\n",
        STANDARD.encode(&line),
        STANDARD.encode(global.as_ref())
    ))
}

/// The trusted comment `minisign -S` writes by default:
/// `timestamp:<unix>\tfile:<name>\thashed`.
pub fn default_trusted_comment(file_name: &str, now: time::OffsetDateTime) -> String {
    let name: String = file_name.chars().filter(|c| !c.is_control()).collect();
    format!("timestamp:{}\tfile:{name}\thashed", now.unix_timestamp())
}

/// Writes `sig_text` to `FILE.minisig` atomically; returns that path.
pub fn write_signature_file(file: &Path, sig_text: &str) -> Result<PathBuf> {
    let path = fskit::signature_path(file);
    fskit::write_atomic(&path, sig_text.as_bytes(), 0o644)?;
    Ok(path)
}

/// Signs the exact bytes of `file` and writes `FILE.minisig` atomically.
/// Returns the signature path.
pub fn sign_file(
    secret_key_path: &Path,
    password: Option<&str>,
    file: &Path,
    trusted_comment: &str,
) -> Result<PathBuf> {
    let data = fskit::read_capped(file, caps::DOCUMENT)?;
    let sig = sign(secret_key_path, password, &data, trusted_comment)?;
    write_signature_file(file, &sig)
}

/// Merges two `.minisig` texts into one multi-block text; a block from
/// `added` replaces a block of `existing` made by the same key. Lets root
/// key holders sign a key list one after another.
pub fn merge_signatures(existing: &str, added: &str) -> Result<String> {
    let new = parse_signatures("added signature", added)?;
    let mut out = String::new();
    if !existing.trim().is_empty() {
        for b in parse_signatures("existing signature", existing)? {
            if !new.iter().any(|n| n.key_id() == b.key_id()) {
                out.push_str(b.text());
            }
        }
    }
    for b in &new {
        out.push_str(b.text());
    }
    Ok(out)
}

/// Drops the blocks of `sigs` made by one of `keys` that do not verify over
/// `data`: signatures over an earlier text of the file, which would only
/// fail later as "bad signature". Blocks by other keys are kept unchecked.
/// Returns the text kept and the key ids dropped.
pub fn drop_stale_signatures(sigs: &str, data: &[u8], keys: &[PublicKey]) -> Result<(String, Vec<KeyId>)> {
    let mut kept = String::new();
    let mut dropped = Vec::new();
    if sigs.trim().is_empty() {
        return Ok((kept, dropped));
    }
    for b in parse_signatures("existing signature", sigs)? {
        match keys.iter().find(|k| k.key_id() == b.key_id()) {
            Some(k) if !b.verify_with(k, data) => dropped.push(b.key_id()),
            _ => kept.push_str(b.text()),
        }
    }
    Ok((kept, dropped))
}

/// Creates a key file that must not exist yet.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fskit::create_new(path, bytes, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists { path: path.into() }
        } else {
            Error::io(path, "create", e)
        }
    })
}
