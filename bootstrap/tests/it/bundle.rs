//! Offline bundles: one file that carries kubestrap and every pinned
//! artifact, run inside a network namespace that has nothing but loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kubestrap_bundle::Writer;

use crate::support::*;

/// Where the manifest says artifacts are: a host that does not exist.
const NOWHERE: &str = "http://kubestrap-unreachable.invalid/dl";

/// A dev manifest (stand-in + real kubectl) whose URLs point nowhere, the
/// artifacts in `art/` under their URL names, signed with `env`'s dev key.
fn offline_manifest(env: &Env, version: u64, edit: impl FnOnce(&mut ManifestSpec)) -> (PathBuf, PathBuf) {
    let art = env.scratch("art");
    let mut s = ManifestSpec::standin(&art, "v1.33.1+standin");
    fs::copy(&s.kubectl.1.path, art.join("kubectl")).unwrap();
    let lk_name = s.localkube.1.path.file_name().unwrap().to_string_lossy().into_owned();
    s.kubectl.0 = vec![format!("{NOWHERE}/kubectl")];
    s.localkube.0 = vec![format!("{NOWHERE}/{lk_name}")];
    s.version = version;
    edit(&mut s);
    (env.write_signed_manifest(&s, &format!("m{version}/manifest.toml")), art)
}

fn create(env: &Env, manifest: &Path, art: &Path, out: &Path) {
    env.ok(&["bundle", "create", "--manifest", s(manifest), "--artifacts", s(art), "--out", s(out)]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha(p: &Path) -> String {
    sha256_file(p).0
}

/// A second home that trusts the dev key (the bundle's signer) and nothing else.
fn target_env(from: &Env) -> Env {
    let t = Env::new();
    t.ok(&["trust", "add", s(&from.keys.join("dev.pub"))]);
    t
}

fn run_in(ns: &Netns, c: Command) -> Output {
    ns.wrap(c).output().unwrap()
}

fn ok_in(ns: &Netns, env: &Env, c: Command, what: &str) -> String {
    let out = run_in(ns, c);
    assert!(out.status.success(), "{}", env.report(&[what], &out, "expected success"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_in(ns: &Netns, env: &Env, args: &[&str]) -> String {
    let mut c = Command::new(&*KUBECTL);
    c.args(args).env("KUBECONFIG", &env.kubeconfig).env("HOME", env.path());
    ok_in(ns, env, c, &format!("kubectl {args:?}"))
}

/// Deletes every profile of `env` inside the namespace on drop.
struct Cleanup<'a>(&'a Netns, &'a Env);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.wrap(self.1.cmd(&["delete", "--all"])).output();
    }
}

#[test]
fn a_bundle_starts_a_cluster_in_a_namespace_with_only_loopback() {
    if !need("netns", netns_possible) {
        return;
    }
    let ns = Netns::new("bundle");
    assert!(!ns.links().contains("eth"), "{}", ns.links());
    let maker = Env::new();
    let (m, art) = offline_manifest(&maker, 1, |_| {});
    let bundle = maker.path().join("kubestrap-bundle");
    create(&maker, &m, &art, &bundle);

    let user = target_env(&maker);
    let _cleanup = Cleanup(&ns, &user);
    let port = free_port().to_string();
    let out = ok_in(&ns, &user, user.cmd_of(&bundle, &["start", "--port", &port]), "bundle start");
    assert!(out.contains("apiserver ready"), "{out}");
    kubectl_in(&ns, &user, &["get", "ns"]);
    kubectl_in(&ns, &user, &["create", "configmap", "offline", "--from-literal=a=1"]);
    ok_in(&ns, &user, user.cmd_of(&bundle, &["stop"]), "bundle stop");
    ok_in(&ns, &user, user.cmd_of(&bundle, &["start"]), "bundle start again");
    let got = kubectl_in(&ns, &user, &["get", "configmap", "offline", "-o", "jsonpath={.data.a}"]);
    assert_eq!(got, "1");
    // Nothing was downloaded: every blob came from the bundle.
    assert_eq!(user.partials(), Vec::<PathBuf>::new());
    ok_in(&ns, &user, user.cmd_of(&bundle, &["delete"]), "bundle delete");

    // Install it, then the plain kubestrap starts offline from what it imported.
    let installer = target_env(&maker);
    let _cleanup2 = Cleanup(&ns, &installer);
    let bin = installer.scratch("bin");
    let out = ok_in(&ns, &installer, installer.cmd_of(&bundle, &["install", "--bin-dir", s(&bin)]), "install");
    assert!(out.contains("not on your PATH") && out.contains("completions"), "{out}");
    // The manual, made from the command line's definitions, where man looks
    // for a PREFIX/bin program's pages.
    let man = installer.path().join("share/man/man1");
    assert!(out.contains("man kubestrap"), "{out}");
    let page = fs::read_to_string(man.join("kubestrap.1")).unwrap();
    assert!(page.contains(".TH kubestrap 1") && page.contains("start"), "{page}");
    let start = fs::read_to_string(man.join("kubestrap-start.1")).unwrap();
    assert!(start.contains("\\-\\-manifest") && start.contains("kubestrap start"), "{start}");
    let installed = bin.join("kubestrap");
    let stub_len = kubestrap_bundle::Payload::open(&bundle).unwrap().stub_len();
    assert_eq!(fs::metadata(&installed).unwrap().len(), stub_len, "installed without its payload");
    assert!(!kubestrap_bundle::Payload::detect(&installed));
    let port = free_port().to_string();
    ok_in(&ns, &installer, installer.cmd_of(&installed, &["start", "--port", &port]), "installed start");
    kubectl_in(&ns, &installer, &["get", "ns"]);
    ok_in(&ns, &installer, installer.cmd_of(&installed, &["delete"]), "installed delete");
}

#[test]
fn bundles_are_reproducible_listed_by_unzip_and_inspectable() {
    let maker = Env::new();
    let (m, art) = offline_manifest(&maker, 1, |_| {});
    let (d1, d2) = (maker.scratch("one"), maker.scratch("two"));
    for d in [&d1, &d2] {
        let out = maker
            .cmd(&["bundle", "create", "--manifest", s(&m), "--artifacts", s(&art), "--out", "b"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", maker.report(&["bundle", "create"], &out, "expected success"));
    }
    assert_eq!(sha(&d1.join("b")), sha(&d2.join("b")), "the same inputs give the same bundle");
    let b = d1.join("b");
    let listed = Command::new("unzip").arg("-l").arg(&b).output().unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("manifest.toml") && text.contains("manifest.toml.minisig") && text.contains("artifacts/"),
        "{text}"
    );
    let v = &json_lines(&maker.ok(&["-o", "json", "bundle", "inspect", s(&b)]))[0];
    assert_eq!(v["manifest"], "test-1", "{v}");
    assert_eq!(v["entries"].as_array().unwrap().len(), 4, "{v}");
    assert!(v["trust"].as_str().unwrap().contains("pinned"), "{v}");
    maker.ok(&["bundle", "verify", s(&b)]);
    let out = maker.scratch("out");
    maker.ok(&["bundle", "extract", s(&b), s(&out)]);
    assert_eq!(fs::read(out.join("manifest.toml")).unwrap(), fs::read(&m).unwrap());
    assert_eq!(fskit_artifacts(&out).len(), 2);
    // Overhead over the executable and the artifacts.
    let stub = kubestrap_bundle::Payload::open(&b).unwrap().stub_len();
    let payload: u64 = fskit_artifacts(&out).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let total = fs::metadata(&b).unwrap().len();
    let overhead = (total - stub - payload) as f64 / total as f64;
    assert!(overhead < 0.001, "overhead {overhead}");
}

fn fskit_artifacts(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir.join("artifacts")).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn a_tampered_or_damaged_bundle_is_refused_before_anything_is_used() {
    let maker = Env::new();
    let (m, art) = offline_manifest(&maker, 1, |_| {});
    let good = maker.path().join("good");
    create(&maker, &m, &art, &good);
    let payload = kubestrap_bundle::Payload::open(&good).unwrap();
    let lk = payload.entries().iter().find(|e| e.name.starts_with("artifacts/") && e.size < 20 << 20).unwrap().clone();
    let kc = payload.entries().iter().find(|e| e.name.starts_with("artifacts/") && e.name != lk.name).unwrap().clone();
    let bytes = fs::read(&good).unwrap();
    let try_start = |name: &str, b: &[u8], code: Code| -> String {
        // A fresh home each time: nothing of an earlier case in its cache.
        let user = target_env(&maker);
        let path = user.path().join(name);
        fs::write(&path, b).unwrap();
        let port = free_port().to_string();
        let out = user.run(&["start", "--from-bundle", s(&path), "--port", &port]);
        let _ = user.run(&["delete", "--all"]);
        assert_eq!(out.status.code(), exit(code), "{}", user.report(&[name], &out, &format!("expected {code:?}")));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !user.home.join("components").exists() || fs::read_dir(user.home.join("components")).unwrap().count() == 0,
            "{name}: something was unpacked"
        );
        assert!(!user.home.join("profiles/kubestrap/run/localkube.pid").exists(), "{name}: something ran");
        err
    };
    // One flipped byte in the localkube artifact (then in kubectl's).
    for e in [&lk, &kc] {
        let mut flipped = bytes.clone();
        flipped[(e.data + e.size / 2) as usize] ^= 0x20;
        let err = try_start("flipped", &flipped, Code::Integrity);
        assert!(err.contains(&e.name[10..]) && err.contains("sha256"), "{err}");
    }
    // Truncated; junk appended.
    try_start("truncated", &bytes[..bytes.len() - 100], Code::BadBundle);
    let mut junk = bytes.clone();
    junk.extend_from_slice(b"appended junk");
    let err = try_start("junk", &junk, Code::BadBundle);
    assert!(err.contains("junk"), "{err}");
    // The central directory pointing past the end.
    let mut past = bytes.clone();
    let end = past.len() - 22;
    let off = u32::from_le_bytes(past[end + 16..end + 20].try_into().unwrap()) + 4096;
    past[end + 16..end + 20].copy_from_slice(&off.to_le_bytes());
    try_start("past-the-end", &past, Code::BadBundle);
    // Overlapping entries: the last artifact's header moved onto the first's.
    let mut over = bytes.clone();
    let cd = u32::from_le_bytes(over[end + 16..end + 20].try_into().unwrap()) as usize;
    let first = payload.entries()[0].header as u32;
    let last_entry = (0..payload.entries().len() - 1).fold(cd, |at, _| {
        at + 46
            + u16::from_le_bytes([over[at + 28], over[at + 29]]) as usize
            + u16::from_le_bytes([over[at + 30], over[at + 31]]) as usize
    });
    over[last_entry + 42..last_entry + 46].copy_from_slice(&(first + 1).to_le_bytes());
    try_start("overlap", &over, Code::BadBundle);

    // Bundles built with entries a kubestrap bundle does not hold.
    let stub = payload.stub_len();
    let build = |name: &str, entries: &[(&str, Vec<u8>)]| -> Vec<u8> {
        let out = maker.path().join(name);
        let mut w = Writer::create(&out, &mut fs::File::open(&good).unwrap(), stub).unwrap();
        for (n, b) in entries {
            w.add(n, &mut &b[..], b.len() as u64, &mut |_| {}).unwrap();
        }
        w.finish().unwrap();
        fs::read(&out).unwrap()
    };
    let manifest = fs::read(&m).unwrap();
    let sig = fs::read(format!("{}.minisig", m.display())).unwrap();
    let dup = build(
        "dup",
        &[
            ("manifest.toml", manifest.clone()),
            ("manifest.toml", manifest.clone()),
            ("manifest.toml.minisig", sig.clone()),
        ],
    );
    let err = try_start("dup", &dup, Code::BadBundle);
    assert!(err.contains("twice"), "{err}");
    let evil = build(
        "evil",
        &[
            ("manifest.toml", manifest.clone()),
            ("manifest.toml.minisig", sig.clone()),
            ("run-me.sh", b"#!/bin/sh\n".to_vec()),
        ],
    );
    let err = try_start("unexpected", &evil, Code::BadBundle);
    assert!(err.contains("run-me.sh"), "{err}");
    let unpinned = build(
        "unpinned",
        &[
            ("manifest.toml", manifest),
            ("manifest.toml.minisig", sig),
            (&format!("artifacts/{}", "a".repeat(64)), b"x".to_vec()),
        ],
    );
    try_start("unpinned", &unpinned, Code::BadBundle);
}

#[test]
fn an_untrusted_or_expired_bundle_says_so() {
    let maker = Env::new();
    let (m, art) = offline_manifest(&maker, 1, |s| {
        s.published = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        s.expires = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    });
    let b = maker.path().join("expired-bundle");
    maker.ok(&["bundle", "create", "--allow-expired", "--manifest", s(&m), "--artifacts", s(&art), "--out", s(&b)]);
    // A home that does not trust the signer.
    let stranger = Env::new();
    let err = stranger.fail(&["bundle", "verify", s(&b)], Code::Signature);
    assert!(err.contains("untrusted") || err.contains("not trusted") || err.contains("unknown"), "{err}");
    stranger.fail(&["fetch", "--from-bundle", s(&b)], Code::Signature);
    // Expired: said with the date, and accepted knowingly.
    let user = target_env(&maker);
    let err = user.fail(&["fetch", "--from-bundle", s(&b)], Code::Expired);
    assert!(err.contains("expired") && err.contains("--allow-expired"), "{err}");
    user.ok(&["fetch", "--from-bundle", s(&b), "--allow-expired"]);
    user.ok(&["-o", "json", "bundle", "verify", s(&b), "--allow-expired"]);
}
