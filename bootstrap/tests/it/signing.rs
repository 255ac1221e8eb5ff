//! End-to-end tests of signed manifests (issue 3) through the real
//! `kubestrap` binary: keygen/sign/verify, tampering, untrusted and removed
//! keys, expiry, rollback, `requires-bootstrap`, key lists with rotation and
//! revocation, and minisign interoperability both ways.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The built-in root key's id (signing/keys/root-1.pub).
const BUILTIN_ROOT: &str = "D2F3155BC513B327";

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A manifest whose artifacts are small local files (fetch is fast).
fn small_spec(env: &Env, version: u64) -> ManifestSpec {
    let dir = env.scratch("artifacts");
    let kubectl = file_artifact(&dir, "kubectl", &pseudo_random(64 * 1024, 7));
    let lk = tar_zst_artifact(&dir, "localkube.tar.zst", &[("bin/localkube", &pseudo_random(64 * 1024, 8), 0o755)]);
    let mut s = ManifestSpec::new(
        (vec![kubectl.path_url()], kubectl, "file".into()),
        (vec![lk.path_url()], lk, "tar.zst".into(), "bin/localkube".into()),
    );
    s.program = "bin/localkube".into();
    s.version = version;
    s
}

/// Writes `spec` at `path` and signs it with the secret key `key`.
fn write_signed_with(env: &Env, spec: &ManifestSpec, path: &Path, key: &Path) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, spec.to_toml()).unwrap();
    env.ok(&["manifest", "sign", "--key", s(key), s(path)]);
    path.to_path_buf()
}

/// `manifest keygen --unencrypted` into `dir`; returns (secret, public, key id).
fn keygen(env: &Env, dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    fs::create_dir_all(dir).unwrap();
    let out = env.ok(&["-o", "json", "manifest", "keygen", "--out", s(dir), "--name", name, "--unencrypted"]);
    let v = &json_lines(&out)[0];
    let id = v["key_id"].as_str().expect("key_id").to_string();
    assert_eq!(id.len(), 16, "{v}");
    (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")), id)
}

/// The key id of a minisign public key file, as `trust add -o json` reports it
/// (pinning it as a side effect).
fn pin(env: &Env, public: &Path) -> String {
    let out = env.ok(&["-o", "json", "trust", "add", s(public)]);
    json_lines(&out)[0]["pinned"].as_str().unwrap().to_string()
}

/// Ids of the keys pinned in the home (`trust list -o json`).
fn pinned_ids(env: &Env) -> Vec<String> {
    json_lines(&env.ok(&["-o", "json", "trust", "list"]))
        .into_iter()
        .filter(|v| v["kind"] == "pinned")
        .map(|v| v["key_id"].as_str().unwrap().to_string())
        .collect()
}

/// The dev key's id.
fn dev_id(env: &Env) -> String {
    let ids = pinned_ids(env);
    assert_eq!(ids.len(), 1, "expected only the dev key pinned: {ids:?}");
    ids[0].clone()
}

/// The base64 key line of a minisign `.pub` file.
fn pub_line(public: &Path) -> String {
    fs::read_to_string(public).unwrap().lines().nth(1).expect("key line").trim().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

/// Flips one bit of a byte in line `line` (0-based) of a signature file,
/// choosing a byte that stays a base64 letter, so the change is a wrong
/// signature rather than a syntax error.
fn flip_in_line(path: &Path, line: usize) {
    let text = fs::read_to_string(path).unwrap();
    let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
    let this = text.split_inclusive('\n').nth(line).unwrap();
    let mid = this.len() / 2;
    let off = (mid..this.len())
        .find(|&i| {
            let c = this.as_bytes()[i];
            c.is_ascii_alphanumeric() && (c ^ 1).is_ascii_alphanumeric()
        })
        .expect("a flippable byte");
    flip_byte(path, start + off);
}

/// A key list (`keys.toml`) with one root key and the given release keys.
fn key_list(version: u64, root: (&str, &Path), release: &[(&str, &Path)], revoked: &[&str]) -> String {
    let expires = rfc3339(now() + time::Duration::days(30));
    let mut t = format!("version = {version}\nexpires = \"{expires}\"\nthreshold = 1\n");
    if !revoked.is_empty() {
        let r: Vec<String> = revoked.iter().map(|id| format!("\"{id}\"")).collect();
        t.push_str(&format!("revoked = [{}]\n", r.join(", ")));
    }
    t.push_str(&format!("\n[[root]]\nid = \"{}\"\nkey = \"{}\"\n", root.0, pub_line(root.1)));
    for (id, public) in release {
        t.push_str(&format!(
            "\n[[release]]\nid = \"{id}\"\nkey = \"{}\"\ncomment = \"release key\"\n",
            pub_line(public)
        ));
    }
    t
}

/// A private channel's keys, made in `private-keys/`: a root key pinned in
/// `env`'s home and one release key.
struct PrivateKeys {
    root_key: PathBuf,
    root_pub: PathBuf,
    root_id: String,
    rel_key: PathBuf,
    rel_pub: PathBuf,
    rel_id: String,
}

impl PrivateKeys {
    fn new(env: &Env) -> Self {
        Self::named(env, "private-keys")
    }

    /// Another private channel's keys, in `dir`.
    fn named(env: &Env, dir: &str) -> Self {
        let kdir = env.scratch(dir);
        let (root_key, root_pub, root_id) = keygen(env, &kdir, "root");
        let (rel_key, rel_pub, rel_id) = keygen(env, &kdir, "release");
        assert_eq!(pin(env, &root_pub), root_id);
        PrivateKeys { root_key, root_pub, root_id, rel_key, rel_pub, rel_id }
    }

    /// Version 1 of the key list: the root and the one release key.
    fn list(&self) -> String {
        key_list(1, (&self.root_id, &self.root_pub), &[(&self.rel_id, &self.rel_pub)], &[])
    }
}

/// Writes `dir/keys.toml` and signs it with `root_key` via `keys sign-list`.
fn publish_key_list(env: &Env, dir: &Path, text: &str, root_key: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("keys.toml");
    fs::write(&path, text).unwrap();
    let _ = fs::remove_file(dir.join("keys.toml.minisig"));
    env.ok(&["keys", "sign-list", "--key", s(root_key), s(&path)]);
    path
}

/// The `minisign` binary; missing, the test fails unless skipped by name.
fn minisign() -> Option<PathBuf> {
    need("minisign", minisign_installed).then(|| which("minisign")).flatten()
}

// ---------------------------------------------------------------------------
// keygen, sign, verify
// ---------------------------------------------------------------------------

#[test]
fn keygen_sign_verify_shows_signer_and_pinned_warning() {
    let env = Env::new();
    let id = dev_id(&env);
    let spec = small_spec(&env, 4);
    let path = env.path().join("m/manifest.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, spec.to_toml()).unwrap();
    let key = env.keys.join("dev.key");
    let out =
        env.ok(&["-o", "json", "manifest", "sign", "--key", s(&key), "--comment", "test channel, build 42", s(&path)]);
    let v = &json_lines(&out)[0];
    assert_eq!(v["key_id"], id.as_str(), "{v}");
    let sig = path.with_file_name("manifest.toml.minisig");
    assert!(sig.is_file());
    let text = fs::read_to_string(&sig).unwrap();
    assert!(text.contains("trusted comment: test channel, build 42"), "{text}");

    // Human output.
    let out = env.run(&["manifest", "verify", s(&path)]);
    assert!(out.status.success(), "{}", describe(&["manifest", "verify"], &out, "expected success"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = stderr_of(&out);
    assert!(stdout.contains("good signature"), "{stdout}");
    assert!(stdout.contains(&id), "signer key id missing: {stdout}");
    assert!(stdout.contains("test channel, build 42"), "trusted comment missing: {stdout}");
    assert!(stdout.contains("channel test version 4"), "version missing: {stdout}");
    let expires = rfc3339(spec.expires);
    assert!(stdout.contains(&expires[..10]), "expiry {expires} missing: {stdout}");
    assert!(stderr.contains("NOT the official kubestrap channel"), "no loud pinned-key warning: {stderr}");
    assert!(stderr.contains(&id), "{stderr}");

    // JSON output.
    let out = env.run(&["-o", "json", "manifest", "verify", s(&path)]);
    assert!(out.status.success());
    assert!(stderr_of(&out).contains("NOT the official kubestrap channel"));
    let v = &json_lines(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(v["key_id"], id.as_str(), "{v}");
    assert_eq!(v["pinned"], true, "{v}");
    assert_eq!(v["trusted_comment"], "test channel, build 42", "{v}");
    assert_eq!(v["channel"], "test", "{v}");
    assert_eq!(v["version"], 4, "{v}");
    assert_eq!(v["kubernetes"], "1.33.1", "{v}");
    assert!(v["expires"].as_str().unwrap().starts_with(&expires[..10]), "{v}");
    assert!(v["trust"].as_str().unwrap().contains("pinned"), "{v}");
    assert!(v["highest_seen"].is_null(), "{v}");

    // verify records nothing; the default trusted comment names the file.
    assert!(!env.home.join("state/seen-versions.toml").exists(), "manifest verify recorded rollback state");
    let path2 = env.write_signed_manifest(&spec, "m2/manifest.toml");
    let v = &json_lines(&env.ok(&["-o", "json", "manifest", "verify", s(&path2)]))[0];
    assert!(v["trusted_comment"].as_str().unwrap().contains("manifest.toml"), "{v}");

    // The secret key is private, and keygen refuses to overwrite a key.
    let mode = fs::metadata(&key).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0, "secret key readable by others");
    let out = env.run(&["manifest", "keygen", "--out", s(&env.keys), "--name", "dev", "--unencrypted"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("already exists"), "{}", stderr_of(&out));
}

#[test]
fn keygen_encrypted_with_password_from_env() {
    let env = Env::new();
    let dir = env.scratch("enc");
    // No password and no terminal: a clear usage error.
    let out = env.run(&["manifest", "keygen", "--out", s(&dir), "--name", "rel"]);
    assert_eq!(out.status.code(), exit(Code::Usage), "{}", describe(&["manifest", "keygen"], &out, "expected 2"));
    assert!(stderr_of(&out).contains("KUBESTRAP_KEY_PASSWORD"), "{}", stderr_of(&out));

    // An empty password would leave the key unprotected: refused, nothing written.
    let out = env
        .cmd(&["manifest", "keygen", "--out", s(&dir), "--name", "rel"])
        .env("KUBESTRAP_KEY_PASSWORD", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), exit(Code::Usage), "{}", describe(&["manifest", "keygen"], &out, "empty password"));
    assert!(stderr_of(&out).contains("--unencrypted"), "{}", stderr_of(&out));
    assert!(!dir.join("rel.key").exists());

    let out = env
        .cmd(&["-o", "json", "manifest", "keygen", "--out", s(&dir), "--name", "rel"])
        .env("KUBESTRAP_KEY_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&["manifest", "keygen"], &out, "expected success"));
    let v = &json_lines(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(v["encrypted"], true, "{v}");
    let id = v["key_id"].as_str().unwrap().to_string();
    let key = dir.join("rel.key");
    let public = dir.join("rel.pub");

    let spec = small_spec(&env, 1);
    let path = env.path().join("enc-manifest.toml");
    fs::write(&path, spec.to_toml()).unwrap();
    // Without the password (stdin is not a terminal): refused, nothing written.
    let out = env.run(&["manifest", "sign", "--key", s(&key), s(&path)]);
    assert_eq!(out.status.code(), exit(Code::Usage), "{}", describe(&["manifest", "sign"], &out, "expected 2"));
    assert!(stderr_of(&out).contains("KUBESTRAP_KEY_PASSWORD"), "{}", stderr_of(&out));
    assert!(!env.path().join("enc-manifest.toml.minisig").exists());
    // A wrong password: refused.
    let out = env
        .cmd(&["manifest", "sign", "--key", s(&key), s(&path)])
        .env("KUBESTRAP_KEY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("wrong password"), "{}", stderr_of(&out));
    assert!(!env.path().join("enc-manifest.toml.minisig").exists());
    // The right one: signed, and verifiable once the key is pinned.
    let out = env
        .cmd(&["manifest", "sign", "--key", s(&key), s(&path)])
        .env("KUBESTRAP_KEY_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&["manifest", "sign"], &out, "expected success"));
    let err = env.fail(&["manifest", "verify", s(&path)], Code::Signature);
    assert!(err.contains(&id), "{err}");
    assert_eq!(pin(&env, &public), id);
    let stdout = env.ok(&["manifest", "verify", s(&path)]);
    assert!(stdout.contains(&id), "{stdout}");
}

// ---------------------------------------------------------------------------
// Tampering and missing signatures
// ---------------------------------------------------------------------------

#[test]
fn flipped_manifest_byte_is_refused_before_any_download() {
    let env = Env::new();
    let id = dev_id(&env);
    let path = env.write_signed_manifest(&small_spec(&env, 1), "manifest.toml");
    let len = fs::metadata(&path).unwrap().len() as usize;
    flip_byte(&path, len / 2);
    let err = env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    assert!(err.contains(s(&path)), "error does not name the file: {err}");
    assert!(err.contains(&id), "error does not name the key id: {err}");
    assert!(err.contains("bad signature"), "{err}");
    assert!(env.blobs().is_empty(), "downloaded despite a bad signature: {:?}", env.blobs());
    assert!(!env.home.join("manifests").exists() || fs::read_dir(env.home.join("manifests")).unwrap().next().is_none());
    env.fail(&["manifest", "verify", s(&path)], Code::Signature);

    // A flip at the very start (before anything a parser would accept) too.
    let path = env.write_signed_manifest(&small_spec(&env, 1), "manifest2.toml");
    flip_byte(&path, 0);
    env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    assert!(env.blobs().is_empty());
}

#[test]
fn flipped_signature_byte_is_refused_before_any_download() {
    let env = Env::new();
    let id = dev_id(&env);
    // Line 1: the signature; line 3: the global signature over the trusted
    // comment; line 2: the trusted comment itself.
    for line in [1, 2, 3] {
        let path = env.write_signed_manifest(&small_spec(&env, 1), &format!("sig{line}/manifest.toml"));
        let sig = PathBuf::from(format!("{}.minisig", path.display()));
        flip_in_line(&sig, line);
        let err = env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
        assert!(err.contains("manifest.toml"), "line {line}: {err}");
        if line != 1 {
            assert!(err.contains(&id), "line {line}: error does not name the key: {err}");
        }
        assert!(env.blobs().is_empty(), "line {line}: downloaded despite a bad signature");
        env.fail(&["manifest", "verify", s(&path)], Code::Signature);
    }
    assert!(!env.home.join("state/seen-versions.toml").exists());
}

#[test]
fn missing_signature_is_a_clear_error() {
    let env = Env::new();
    let dir = env.scratch("unsigned");
    let path = dir.join("manifest.toml");
    fs::write(&path, small_spec(&env, 1).to_toml()).unwrap();
    let sig = format!("{}.minisig", path.display());
    let err = env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    assert!(err.contains(&sig), "error does not name the signature file: {err}");
    assert!(env.blobs().is_empty());
    let err = env.fail(&["manifest", "verify", s(&path)], Code::Signature);
    assert!(err.contains(&sig), "error does not name the signature file: {err}");
    // An empty signature file is no better.
    fs::write(&sig, "").unwrap();
    env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    env.fail(&["manifest", "verify", s(&path)], Code::Signature);
}

// ---------------------------------------------------------------------------
// Which keys are trusted
// ---------------------------------------------------------------------------

#[test]
fn untrusted_key_is_refused_naming_its_id() {
    let env = Env::new();
    let (other_key, _other_pub, other_id) = keygen(&env, &env.scratch("other"), "other");
    let path = write_signed_with(&env, &small_spec(&env, 1), &env.path().join("manifest.toml"), &other_key);
    let err = env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    assert!(err.contains(&other_id), "error does not name the key id: {err}");
    assert!(err.contains("trust add"), "no advice: {err}");
    assert!(env.blobs().is_empty());
    let err = env.fail(&["manifest", "verify", s(&path)], Code::Signature);
    assert!(err.contains(&other_id), "{err}");
}

#[test]
fn trust_list_and_remove() {
    let env = Env::new();
    let id = dev_id(&env);
    let text = env.ok(&["trust", "list"]);
    assert!(text.contains(BUILTIN_ROOT) && text.contains("built-in root"), "{text}");
    assert!(text.lines().any(|l| l.contains(&id) && l.contains("pinned")), "{text}");
    let all = json_lines(&env.ok(&["-o", "json", "trust", "list"]));
    assert!(all.iter().any(|v| v["key_id"] == BUILTIN_ROOT && v["kind"] == "built-in root"), "{all:?}");

    // Pinning the same key again is harmless.
    assert_eq!(pin(&env, &env.keys.join("dev.pub")), id);
    assert_eq!(pinned_ids(&env), vec![id.clone()]);

    let path = env.write_signed_manifest(&small_spec(&env, 1), "manifest.toml");
    env.ok(&["manifest", "verify", s(&path)]);

    let out = env.ok(&["trust", "remove", &id]);
    assert!(out.contains(&id), "{out}");
    assert!(pinned_ids(&env).is_empty());
    let text = env.ok(&["trust", "list"]);
    assert!(!text.contains(&id) && text.contains(BUILTIN_ROOT), "{text}");
    let err = env.fail(&["manifest", "verify", s(&path)], Code::Signature);
    assert!(err.contains(&id), "{err}");
    env.fail(&["fetch", "--manifest", s(&path)], Code::Signature);
    assert!(env.blobs().is_empty());

    // Removing it again, or a malformed id, fails clearly.
    let out = env.run(&["trust", "remove", &id]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains(&id), "{}", stderr_of(&out));
    env.fail(&["trust", "remove", "not-a-key-id"], Code::Usage);
}

// ---------------------------------------------------------------------------
// Freshness
// ---------------------------------------------------------------------------

#[test]
fn expired_manifest_refused_unless_allowed() {
    let env = Env::new();
    let mut spec = small_spec(&env, 1);
    spec.published = now() - time::Duration::days(10);
    spec.expires = now() - time::Duration::days(1);
    let path = env.write_signed_manifest(&spec, "manifest.toml");
    let err = env.fail(&["fetch", "--manifest", s(&path)], Code::Expired);
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("--allow-expired"), "{err}");
    assert!(env.blobs().is_empty());
    env.fail(&["manifest", "verify", s(&path)], Code::Expired);

    let out = env.run(&["fetch", "--manifest", s(&path), "--allow-expired"]);
    assert!(out.status.success(), "{}", describe(&["fetch", "--allow-expired"], &out, "expected success"));
    let err = stderr_of(&out);
    assert!(err.contains("warning:") && err.contains("expired"), "no warning: {err}");
    assert_eq!(env.blobs().len(), 2);

    let out = env.run(&["manifest", "verify", "--allow-expired", s(&path)]);
    assert!(out.status.success());
    assert!(stderr_of(&out).contains("expired"), "{}", stderr_of(&out));
}

#[test]
fn rollback_and_replay_are_refused() {
    let env = Env::new();
    let v2 = env.write_signed_manifest(&small_spec(&env, 2), "v2/manifest.toml");
    env.ok(&["fetch", "--manifest", s(&v2)]);
    let seen = fs::read_to_string(env.home.join("state/seen-versions.toml")).unwrap();
    assert!(seen.contains("test"), "{seen}");

    // Fetching the same bytes again is fine.
    env.ok(&["fetch", "--manifest", s(&v2)]);

    let v1 = env.write_signed_manifest(&small_spec(&env, 1), "v1/manifest.toml");
    let err = env.fail(&["fetch", "--manifest", s(&v1)], Code::Rollback);
    assert!(err.contains("version 1 is older than version 2"), "{err}");
    // manifest verify does not refuse (it records nothing) but says so.
    let out = env.ok(&["manifest", "verify", s(&v1)]);
    assert!(out.contains("OLDER"), "{out}");

    let mut other = small_spec(&env, 2);
    other.published -= time::Duration::hours(1);
    let v2b = env.write_signed_manifest(&other, "v2b/manifest.toml");
    assert_ne!(fs::read(&v2).unwrap(), fs::read(&v2b).unwrap());
    env.fail(&["fetch", "--manifest", s(&v2b)], Code::Rollback);

    let v3 = env.write_signed_manifest(&small_spec(&env, 3), "v3/manifest.toml");
    env.ok(&["fetch", "--manifest", s(&v3)]);
    env.fail(&["fetch", "--manifest", s(&v2)], Code::Rollback);

    // Another channel has its own record.
    let mut c = small_spec(&env, 1);
    c.channel = "other".into();
    let c1 = env.write_signed_manifest(&c, "c1/manifest.toml");
    env.ok(&["fetch", "--manifest", s(&c1)]);
}

#[test]
fn requires_newer_kubestrap_advises_self_update() {
    let env = Env::new();
    let mut spec = small_spec(&env, 1);
    spec.requires_bootstrap = ">=99.0.0".into();
    let path = env.write_signed_manifest(&spec, "manifest.toml");
    let err = env.fail(&["fetch", "--manifest", s(&path)], Code::NeedsNewerKubestrap);
    assert!(err.contains("self-update"), "{err}");
    assert!(err.contains("99.0.0"), "{err}");
    assert!(env.blobs().is_empty());
    let err = env.fail(&["manifest", "verify", s(&path)], Code::NeedsNewerKubestrap);
    assert!(err.contains("self-update"), "{err}");
    // Not recorded: a later, satisfiable version 1 is still accepted.
    let ok = env.write_signed_manifest(&small_spec(&env, 1), "ok/manifest.toml");
    env.ok(&["fetch", "--manifest", s(&ok)]);
}

// ---------------------------------------------------------------------------
// Key lists through the CLI
// ---------------------------------------------------------------------------

#[test]
fn key_list_rooted_in_a_pinned_key_rotates_and_revokes_release_keys() {
    let env = Env::new();
    let kdir = env.scratch("private-keys");
    let (root_key, root_pub, root_id) = keygen(&env, &kdir, "root");
    let (rel_key, rel_pub, rel_id) = keygen(&env, &kdir, "release");
    let (rel2_key, rel2_pub, rel2_id) = keygen(&env, &kdir, "release2");
    assert_eq!(pin(&env, &root_pub), root_id);

    // Without a key list, the release key is just an unknown key.
    let lone = write_signed_with(&env, &small_spec(&env, 1), &env.path().join("lone/manifest.toml"), &rel_key);
    let err = env.fail(&["fetch", "--manifest", s(&lone)], Code::Signature);
    assert!(err.contains(&rel_id), "{err}");

    // Version 1: the release key.
    let chan1 = env.scratch("chan1");
    let text1 = key_list(1, (&root_id, &root_pub), &[(&rel_id, &rel_pub)], &[]);
    let list1 = publish_key_list(&env, &chan1, &text1, &root_key);
    let out = env.ok(&["keys", "verify-list", s(&list1)]);
    assert!(out.contains("version 1") && out.contains(&rel_id) && out.contains(&root_id), "{out}");
    let v = &json_lines(&env.ok(&["-o", "json", "keys", "verify-list", s(&list1)]))[0];
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["release_keys"], serde_json::json!([rel_id]), "{v}");
    assert_eq!(v["anchored_by"], serde_json::json!([root_id]), "{v}");

    let m1 = write_signed_with(&env, &small_spec(&env, 1), &chan1.join("manifest.toml"), &rel_key);
    let out = env.run(&["fetch", "--manifest", s(&m1)]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "expected success"));
    assert!(!stderr_of(&out).contains("ignoring"), "{}", stderr_of(&out));
    assert!(env.home.join(format!("keys/{root_id}/keys-1.toml")).is_file(), "key list not kept in the home");
    let v = &json_lines(&env.ok(&["-o", "json", "manifest", "verify", s(&m1)]))[0];
    assert_eq!(v["key_id"], rel_id.as_str(), "{v}");
    let trust = v["trust"].as_str().unwrap();
    assert!(trust.contains("key list version 1") && trust.contains(&root_id), "{trust}");
    assert_eq!(v["pinned"], true, "{v}");
    // The key list stays trusted once kept: the manifest alone verifies too.
    fs::remove_file(&list1).unwrap();
    fs::remove_file(chan1.join("keys.toml.minisig")).unwrap();
    env.ok(&["fetch", "--manifest", s(&m1)]);
    let list1 = publish_key_list(&env, &chan1, &text1, &root_key);
    // Seeing the same list again is quiet.
    let out = env.run(&["fetch", "--manifest", s(&m1)]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "expected success"));
    assert!(!stderr_of(&out).contains("ignoring"), "the same key list again gave a warning: {}", stderr_of(&out));

    // A list signed by a key that is not a (pinned) root is not imported.
    let forged_dir = env.scratch("forged");
    let forged = publish_key_list(&env, &forged_dir, &key_list(5, (&rel2_id, &rel2_pub), &[], &[]), &rel2_key);
    let err = env.fail(&["keys", "verify-list", s(&forged)], Code::Signature);
    assert!(err.contains("keys.toml"), "{err}");

    // Version 2 rotates: release2 in, release revoked.
    let chan2 = env.scratch("chan2");
    let list2 = publish_key_list(
        &env,
        &chan2,
        &key_list(2, (&root_id, &root_pub), &[(&rel2_id, &rel2_pub)], &[&rel_id]),
        &root_key,
    );
    let v = &json_lines(&env.ok(&["-o", "json", "keys", "verify-list", s(&list1), s(&list2)]))[0];
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["revoked"], serde_json::json!([rel_id]), "{v}");
    // An older list after a newer one: refused.
    let err = env.fail(&["keys", "verify-list", s(&list2), s(&list1)], Code::Signature);
    assert!(err.contains("version 1") && err.contains("version 2"), "{err}");

    let m2 = write_signed_with(&env, &small_spec(&env, 2), &chan2.join("manifest.toml"), &rel_key);
    let err = env.fail(&["fetch", "--manifest", s(&m2)], Code::Signature);
    assert!(err.contains(&rel_id) && err.contains("revoke"), "{err}");
    assert!(env.home.join(format!("keys/{root_id}/keys-2.toml")).is_file());
    // The newly listed key signs.
    let m2 = write_signed_with(&env, &small_spec(&env, 2), &chan2.join("manifest.toml"), &rel2_key);
    env.ok(&["fetch", "--manifest", s(&m2)]);
    let v = &json_lines(&env.ok(&["-o", "json", "manifest", "verify", s(&m2)]))[0];
    assert!(v["trust"].as_str().unwrap().contains("key list version 2"), "{v}");

    // The older list (version 1, still naming the revoked key) beside a
    // manifest by the revoked key: the list is ignored, the manifest refused.
    let chan3 = env.scratch("chan3");
    fs::copy(&list1, chan3.join("keys.toml")).unwrap();
    fs::copy(chan1.join("keys.toml.minisig"), chan3.join("keys.toml.minisig")).unwrap();
    let m3 = write_signed_with(&env, &small_spec(&env, 3), &chan3.join("manifest.toml"), &rel_key);
    let out = env.run(&["fetch", "--manifest", s(&m3)]);
    assert_eq!(out.status.code(), exit(Code::Signature), "{}", describe(&["fetch"], &out, "expected 10"));
    assert!(stderr_of(&out).contains("revoke"), "{}", stderr_of(&out));
    assert!(env.home.join(format!("keys/{root_id}/keys-2.toml")).is_file(), "the newer list is still the one kept");
    // Deleting the newer list from the home does not roll the keys back.
    fs::remove_file(env.home.join(format!("keys/{root_id}/keys-2.toml"))).unwrap();
    fs::remove_file(env.home.join(format!("keys/{root_id}/keys-2.toml.minisig"))).unwrap();
    let m4 = write_signed_with(&env, &small_spec(&env, 4), &env.path().join("m4/manifest.toml"), &rel_key);
    let out = env.run(&["fetch", "--manifest", s(&m4)]);
    assert!(
        !out.status.success(),
        "a rolled-back key list was used: {}",
        describe(&["fetch"], &out, "expected failure")
    );
    assert_eq!(out.status.code(), exit(Code::Rollback), "{}", describe(&["fetch"], &out, "expected 12"));

    // Unpinning the root: nothing its key lists allow is trusted any more.
    env.ok(&["trust", "remove", &root_id]);
    let m5 = write_signed_with(&env, &small_spec(&env, 5), &env.path().join("m5/manifest.toml"), &rel2_key);
    env.fail(&["fetch", "--manifest", s(&m5)], Code::Signature);
}

#[test]
fn sign_list_drops_signatures_over_an_earlier_text() {
    let env = Env::new();
    let kdir = env.scratch("roots");
    let (r1_key, r1_pub, r1_id) = keygen(&env, &kdir, "r1");
    let (r2_key, r2_pub, r2_id) = keygen(&env, &kdir, "r2");
    let (_, rel_pub, rel_id) = keygen(&env, &kdir, "rel");
    pin(&env, &r1_pub);
    let two_roots = |version: u64| {
        key_list(version, (&r1_id, &r1_pub), &[(&rel_id, &rel_pub)], &[]).replace("threshold = 1", "threshold = 2")
            + &format!("\n[[root]]\nid = \"{r2_id}\"\nkey = \"{}\"\n", pub_line(&r2_pub))
    };
    let dir = env.scratch("list");
    let list = publish_key_list(&env, &dir, &two_roots(1), &r1_key);
    env.ok(&["keys", "sign-list", "--key", s(&r2_key), s(&list)]);
    env.ok(&["keys", "verify-list", s(&list)]);
    // The list is edited; only r1 signs the new text: r2's old block goes.
    fs::write(&list, two_roots(2)).unwrap();
    let out = env.run(&["keys", "sign-list", "--key", s(&r1_key), s(&list)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&format!("dropped the signature by key {r2_id}")), "{}", stderr_of(&out));
    let sigs = fs::read_to_string(dir.join("keys.toml.minisig")).unwrap();
    assert_eq!(sigs.matches("untrusted comment").count(), 1, "{sigs}");
    // Short of signatures, not "bad signature".
    let err = env.fail(&["keys", "verify-list", s(&list)], Code::Signature);
    assert!(!err.contains("bad signature"), "{err}");
}

#[test]
fn private_channels_keep_their_own_key_list_chains() {
    let env = Env::new();
    let (a, b) = (PrivateKeys::named(&env, "keys-a"), PrivateKeys::named(&env, "keys-b"));
    let publish = |k: &PrivateKeys, chan: &str, version: u64| {
        let dir = env.scratch(chan);
        publish_key_list(&env, &dir, &k.list(), &k.root_key);
        write_signed_with(&env, &small_spec(&env, version), &dir.join("manifest.toml"), &k.rel_key)
    };
    // Each channel's key list starts its own chain, anchored in its pinned root.
    let ma = publish(&a, "chan-a", 1);
    env.ok(&["fetch", "--manifest", s(&ma)]);
    let mb = publish(&b, "chan-b", 2);
    let out = env.run(&["fetch", "--manifest", s(&mb)]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "the second private channel"));
    assert!(!stderr_of(&out).contains("ignoring"), "{}", stderr_of(&out));
    for k in [&a, &b] {
        assert!(env.home.join(format!("keys/{}/keys-1.toml", k.root_id)).is_file());
    }
    // Both stay usable, each through its own chain.
    for (m, k) in [(&ma, &a), (&mb, &b)] {
        let v = &json_lines(&env.ok(&["-o", "json", "manifest", "verify", s(m)]))[0];
        assert!(v["trust"].as_str().unwrap().contains(&k.root_id), "{v}");
    }
    let listed = env.ok(&["trust", "list"]);
    assert!(listed.contains(&format!("rooted in pinned key {}", a.root_id)), "{listed}");
    // Another version 1 of a's chain with other contents: never replaces the kept one.
    let other = env.scratch("chan-a2");
    let text = key_list(1, (&a.root_id, &a.root_pub), &[(&a.rel_id, &a.rel_pub), (&b.rel_id, &b.rel_pub)], &[]);
    publish_key_list(&env, &other, &text, &a.root_key);
    let m = write_signed_with(&env, &small_spec(&env, 3), &other.join("manifest.toml"), &b.rel_key);
    let out = env.run(&["fetch", "--manifest", s(&m)]);
    assert!(stderr_of(&out).contains("ignoring the key list"), "{}", stderr_of(&out));
    let published = fs::read_to_string(env.path().join("chan-a/keys.toml")).unwrap();
    assert_eq!(fs::read_to_string(env.home.join(format!("keys/{}/keys-1.toml", a.root_id))).unwrap(), published);
    // …and both channels still work afterwards. Their manifests' versions are
    // recorded per trust root, so one private channel (or a pinned key
    // claiming the official channel's name) never blocks another as a rollback.
    // (the version 3 signed by b's release key went to b's record, not a's).
    env.ok(&["fetch", "--manifest", s(&ma)]);
    env.fail(&["fetch", "--manifest", s(&mb)], Code::Rollback);
    env.ok(&["manifest", "verify", s(&mb)]);
    let seen = fs::read_to_string(env.home.join("state/seen-versions.toml")).unwrap();
    for k in [&a, &b] {
        assert!(seen.contains(&format!("test@{}", k.root_id)), "{seen}");
        assert!(seen.contains(&format!("@keys/{}", k.root_id)), "{seen}");
    }
}

#[test]
fn key_list_beside_a_relative_manifest_path_is_imported() {
    let env = Env::new();
    let keys = PrivateKeys::new(&env);
    let chan = env.scratch("chan");
    publish_key_list(&env, &chan, &keys.list(), &keys.root_key);
    write_signed_with(&env, &small_spec(&env, 1), &chan.join("manifest.toml"), &keys.rel_key);
    let out = env.cmd(&["fetch", "--manifest", "manifest.toml"]).current_dir(&chan).output().unwrap();
    assert!(out.status.success(), "{}", describe(&["fetch", "--manifest", "manifest.toml"], &out, "expected success"));
}

// ---------------------------------------------------------------------------
// minisign interoperability
// ---------------------------------------------------------------------------

#[test]
fn minisign_interop_both_ways() {
    let Some(minisign) = minisign() else { return };
    let env = Env::new();

    // minisign verifies what kubestrap signed.
    let ours = env.write_signed_manifest(&small_spec(&env, 1), "ours/manifest.toml");
    let out = Command::new(&minisign)
        .args(["-V", "-m", s(&ours), "-p", s(&env.keys.join("dev.pub"))])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "minisign -V refused our signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Trusted comment"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // kubestrap verifies what minisign signed.
    let dir = env.scratch("minisign");
    let (pk, sk) = (dir.join("x.pub"), dir.join("x.key"));
    let out = Command::new(&minisign)
        .args(["-G", "-W", "-p", s(&pk), "-s", s(&sk)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "minisign -G: {}", stderr_of(&out));
    let theirs = env.path().join("theirs/manifest.toml");
    fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    fs::write(&theirs, small_spec(&env, 1).to_toml()).unwrap();
    let out = Command::new(&minisign)
        .args(["-S", "-s", s(&sk), "-m", s(&theirs), "-t", "signed by minisign"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "minisign -S: {}", stderr_of(&out));
    env.fail(&["manifest", "verify", s(&theirs)], Code::Signature);
    let id = pin(&env, &pk);
    let out = env.ok(&["manifest", "verify", s(&theirs)]);
    assert!(out.contains(&id) && out.contains("signed by minisign"), "{out}");
    env.ok(&["fetch", "--manifest", s(&theirs)]);
    // A minisign signature over a modified file is refused.
    flip_byte(&theirs, 10);
    env.fail(&["manifest", "verify", s(&theirs)], Code::Signature);
}

#[test]
fn expired_key_list_refused_unless_allowed() {
    let env = Env::new();
    let keys = PrivateKeys::new(&env);
    let chan = env.scratch("chan");
    let text = keys.list();
    let past = rfc3339(now() - time::Duration::days(2));
    let text = text
        .lines()
        .map(|l| if l.starts_with("expires") { format!("expires = \"{past}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let list = publish_key_list(&env, &chan, &text, &keys.root_key);
    let err = env.fail(&["keys", "verify-list", s(&list)], Code::Expired);
    assert!(err.contains("expired"), "{err}");
    let out = env.run(&["keys", "verify-list", "--allow-expired", s(&list)]);
    assert!(out.status.success(), "{}", describe(&["keys", "verify-list"], &out, "expected success"));
    assert!(stderr_of(&out).contains("expired"), "{}", stderr_of(&out));

    let m = write_signed_with(&env, &small_spec(&env, 1), &chan.join("manifest.toml"), &keys.rel_key);
    let out = env.run(&["fetch", "--manifest", s(&m)]);
    assert_eq!(out.status.code(), exit(Code::Signature), "{}", describe(&["fetch"], &out, "expected 10"));
    let err = stderr_of(&out);
    assert!(err.contains("ignoring the key list") && err.contains("expired"), "{err}");
    assert!(env.blobs().is_empty());
    let out = env.run(&["fetch", "--manifest", s(&m), "--allow-expired"]);
    assert!(out.status.success(), "{}", describe(&["fetch", "--allow-expired"], &out, "expected success"));
    assert!(stderr_of(&out).contains("expired"), "no warning: {}", stderr_of(&out));
    // Kept, but still refused whenever expired data is not allowed.
    let err = env.fail(&["fetch", "--manifest", s(&m)], Code::Expired);
    assert!(err.contains("key list") && err.contains("--allow-expired"), "{err}");
    env.fail(&["manifest", "verify", s(&m)], Code::Expired);
    env.ok(&["manifest", "verify", "--allow-expired", s(&m)]);
}

#[test]
fn channel_over_http_with_key_list() {
    let env = Env::new();
    let keys = PrivateKeys::new(&env);
    let server = Server::start();
    let dir = env.scratch("served");
    let list = publish_key_list(&env, &dir, &keys.list(), &keys.root_key);
    let mut spec = small_spec(&env, 1);
    spec.kubectl.0 = vec![server.add_artifact("a/kubectl", &spec.kubectl.1)];
    spec.localkube.0 = vec![server.add_artifact("a/localkube.tar.zst", &spec.localkube.1)];
    let m = write_signed_with(&env, &spec, &dir.join("manifest.toml"), &keys.rel_key);
    let sig = |p: &Path| fs::read(format!("{}.minisig", p.display())).unwrap();
    server.add("stable/manifest.toml", fs::read(&m).unwrap());
    server.add("stable/manifest.toml.minisig", sig(&m));
    let url = server.url("stable/manifest.toml");

    // No keys.toml served (404): the release key is unknown.
    env.fail(&["fetch", "--manifest", &url], Code::Signature);
    assert!(env.blobs().is_empty());

    server.add("stable/keys.toml", fs::read(&list).unwrap());
    server.add("stable/keys.toml.minisig", sig(&list));
    env.ok(&["fetch", "--manifest", &url]);
    assert_eq!(env.blobs().len(), 2);
    assert!(env.home.join(format!("keys/{}/keys-1.toml", keys.root_id)).is_file());

    // A tampered manifest from the server: refused before downloading.
    let env2 = Env::new();
    pin(&env2, &keys.root_pub);
    let mut bytes = fs::read(&m).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 1;
    server.add("stable/manifest.toml", bytes);
    let requests = server.requests().len();
    env2.fail(&["fetch", "--manifest", &url], Code::Signature);
    assert!(env2.blobs().is_empty());
    assert!(
        server.requests()[requests..].iter().all(|r| !r.path.starts_with("/a/")),
        "artifacts requested despite a bad signature: {:?}",
        &server.requests()[requests..]
    );
}

#[test]
fn manifest_verify_applies_a_revocation_in_the_key_list_beside_it() {
    let env = Env::new();
    let keys = PrivateKeys::new(&env);
    let chan1 = env.scratch("v1");
    publish_key_list(&env, &chan1, &keys.list(), &keys.root_key);
    let m1 = write_signed_with(&env, &small_spec(&env, 1), &chan1.join("manifest.toml"), &keys.rel_key);
    env.ok(&["fetch", "--manifest", s(&m1)]);
    // Version 2 revokes the release key, and sits beside a manifest it signed.
    let (_, rel2_pub, rel2_id) = keygen(&env, &env.scratch("k2"), "release2");
    let chan2 = env.scratch("v2");
    let v2 = key_list(2, (&keys.root_id, &keys.root_pub), &[(&rel2_id, &rel2_pub)], &[&keys.rel_id]);
    publish_key_list(&env, &chan2, &v2, &keys.root_key);
    let m2 = write_signed_with(&env, &small_spec(&env, 2), &chan2.join("manifest.toml"), &keys.rel_key);
    let err = env.fail(&["manifest", "verify", s(&m2)], Code::Signature);
    assert!(err.contains("revoke"), "{err}");
}

#[test]
fn a_fast_forward_by_a_compromised_key_is_undone_by_revoking_it() {
    // A compromised release key signs a huge version: while the key is
    // trusted that record binds (rollback protection), so the channel is
    // blocked; once the key list revokes it, the record no longer binds and
    // the next manifest by a trusted key replaces it.
    let env = Env::new();
    let keys = PrivateKeys::new(&env);
    let (rel2_key, rel2_pub, rel2_id) = keygen(&env, &env.scratch("rel2"), "release2");
    let chan1 = env.scratch("ff1");
    publish_key_list(&env, &chan1, &keys.list(), &keys.root_key);
    let huge = write_signed_with(&env, &small_spec(&env, 1_000_000), &chan1.join("manifest.toml"), &keys.rel_key);
    env.ok(&["fetch", "--manifest", s(&huge)]);
    let blocked = write_signed_with(&env, &small_spec(&env, 5), &chan1.join("m5/manifest.toml"), &keys.rel_key);
    env.fail(&["fetch", "--manifest", s(&blocked)], Code::Rollback);

    let chan2 = env.scratch("ff2");
    let list2 = key_list(2, (&keys.root_id, &keys.root_pub), &[(&rel2_id, &rel2_pub)], &[&keys.rel_id]);
    publish_key_list(&env, &chan2, &list2, &keys.root_key);
    let m5 = write_signed_with(&env, &small_spec(&env, 5), &chan2.join("manifest.toml"), &rel2_key);
    let out = env.run(&["fetch", "--manifest", s(&m5)]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "expected success"));
    let err = stderr_of(&out);
    assert!(err.contains("no longer trusted") && err.contains("1000000"), "{err}");
    // The new record binds: an older version by the trusted key is refused,
    // and the compromised key's manifests are refused outright.
    let m4 = write_signed_with(&env, &small_spec(&env, 4), &chan2.join("m4/manifest.toml"), &rel2_key);
    env.fail(&["fetch", "--manifest", s(&m4)], Code::Rollback);
    let replay = write_signed_with(&env, &small_spec(&env, 2_000_000), &chan2.join("r/manifest.toml"), &keys.rel_key);
    env.fail(&["fetch", "--manifest", s(&replay)], Code::Signature);
    let seen = fs::read_to_string(env.home.join("state/seen-versions.toml")).unwrap();
    assert!(seen.contains("version = 5") && seen.contains(&rel2_id), "{seen}");
}
