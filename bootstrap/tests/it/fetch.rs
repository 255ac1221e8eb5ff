//! Issue 2, end to end through the binary: verified downloads into the
//! content-addressed store, resume, retry, fallback, endless data, offline,
//! local sources, signatures, and the cache commands.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

/// A small kubectl-like file and a tar.zst localkube, both pseudo-random
/// (`seed` varies them between manifests).
fn small_artifacts(dir: &Path, seed: u64) -> (Artifact, Artifact) {
    let kubectl = file_artifact(dir, &format!("kubectl-{seed}"), &pseudo_random(300 * 1024, seed));
    let bin = pseudo_random(700 * 1024, seed + 1000);
    let lk = tar_zst_artifact(
        dir,
        &format!("localkube-{seed}.tar.zst"),
        &[("bin/localkube", &bin, 0o755), ("version.txt", b"v1.33.1+test\n", 0o644)],
    );
    (kubectl, lk)
}

fn spec(kubectl_urls: Vec<String>, kubectl: &Artifact, lk_urls: Vec<String>, lk: &Artifact) -> ManifestSpec {
    let mut s = ManifestSpec::new(
        (kubectl_urls, kubectl.clone(), "file".into()),
        (lk_urls, lk.clone(), "tar.zst".into(), "bin/localkube".into()),
    );
    s.program = "bin/localkube".into();
    s
}

/// A served pair of artifacts and a signed manifest pointing at the server.
/// A fresh home, a loopback server, and two small artifacts (not served yet).
fn served(seed: u64) -> (Env, Server, Artifact, Artifact) {
    let env = Env::new();
    let (kubectl, lk) = small_artifacts(&env.scratch("art"), seed);
    (env, Server::start(), kubectl, lk)
}

struct Fixture {
    env: Env,
    server: Server,
    kubectl: Artifact,
    lk: Artifact,
    manifest: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let (env, server, kubectl, lk) = served(1);
        let ku = server.add_artifact("dl/kubectl", &kubectl);
        let lu = server.add_artifact("dl/localkube.tar.zst", &lk);
        let manifest = env.write_signed_manifest(&spec(vec![ku], &kubectl, vec![lu], &lk), "m.toml");
        Fixture { env, server, kubectl, lk, manifest }
    }

    fn m(&self) -> &str {
        self.manifest.to_str().unwrap()
    }

    fn assert_blobs(&self, expect: &[&Artifact]) {
        let mut want: Vec<PathBuf> = expect.iter().map(|a| self.env.blob(&a.sha256)).collect();
        want.sort();
        assert_eq!(self.env.blobs(), want, "blobs/sha256 holds exactly the verified artifacts");
        for a in expect {
            assert_eq!(fs::read(self.env.blob(&a.sha256)).unwrap(), a.bytes(), "blob content matches the artifact");
        }
    }
}

#[test]
fn happy_path_then_second_fetch_downloads_nothing() {
    let f = Fixture::new();
    let out = f.env.ok(&["fetch", "--manifest", f.m()]);
    assert!(out.contains("fetched and verified"), "{out}");
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    assert!(f.env.partials().is_empty(), "no partial files left: {:?}", f.env.partials());
    let gets = f.server.requests();
    assert_eq!(gets.len(), 2, "one GET per artifact: {gets:?}");
    assert!(gets.iter().all(|r| r.method == "GET" && r.range.is_none()), "{gets:?}");

    // cache list shows both blobs, used by the manifest.
    let list = json_lines(&f.env.ok(&["-o", "json", "cache", "list"]));
    for a in [&f.kubectl, &f.lk] {
        let row = list
            .iter()
            .find(|v| v["sha256"] == a.sha256.as_str())
            .unwrap_or_else(|| panic!("cache list misses {}: {list:?}", a.sha256));
        assert_eq!(row["size"], a.size);
        let used_by = row["used_by"].to_string();
        assert!(used_by.contains("test-1"), "used by the manifest test-1: {used_by}");
    }
    let text = f.env.ok(&["cache", "list"]);
    assert!(text.contains(&f.kubectl.sha256[..12]) && text.contains("2 blob(s)"), "{text}");

    // Second fetch: everything cached, the server sees nothing new.
    let conns = f.server.connections();
    let out = f.env.ok(&["fetch", "--manifest", f.m()]);
    assert!(out.contains("cached"), "{out}");
    assert_eq!(f.server.requests().len(), 2, "no new request: {:?}", f.server.requests());
    assert_eq!(f.server.connections(), conns, "no new connection");
}

#[test]
fn warnings_from_deep_in_the_logic_are_json_events() {
    let f = Fixture::new();
    f.env.ok(&["fetch", "--manifest", f.m()]);
    // A damaged rollback record (rebuilt, deep in signature policy) and a
    // damaged key list (skipped, in the key chains): both only warnings,
    // both in -o json's stream, not only on stderr.
    let seen = f.env.home.join("state/seen-versions.toml");
    fs::write(&seen, "this is = [not toml").unwrap();
    let keys = f.env.home.join("keys/builtin");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("keys-1.toml"), "junk").unwrap();
    let out = f.env.run(&["-o", "json", "fetch", "--manifest", f.m()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    let warnings: Vec<&str> =
        lines.iter().filter(|v| v["event"] == "warning").filter_map(|v| v["message"].as_str()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("seen-versions.toml was damaged") && w.contains("rebuilt")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("ignoring the key list") && w.contains("keys-1.toml")), "{warnings:?}");
    // Rebuilt: the next run has nothing to say about it.
    let again = json_lines(&f.env.ok(&["-o", "json", "fetch", "--manifest", f.m()]));
    assert!(!again.iter().any(|v| v["message"].as_str().is_some_and(|m| m.contains("seen-versions"))), "{again:?}");
}

#[test]
fn json_output_names_each_blob() {
    let f = Fixture::new();
    let out = json_lines(&f.env.ok(&["-o", "json", "fetch", "--manifest", f.m()]));
    for a in [&f.kubectl, &f.lk] {
        let row = out
            .iter()
            .find(|v| v["sha256"] == a.sha256.as_str() && v.get("path").is_some())
            .unwrap_or_else(|| panic!("no result row for {}: {out:?}", a.sha256));
        assert_eq!(row["path"].as_str().unwrap(), f.env.blob(&a.sha256).to_str().unwrap());
    }
    assert!(out.iter().any(|v| v["event"] == "download-done"), "{out:?}");
}

#[test]
fn wrong_hash_is_refused_naming_url_and_both_hashes() {
    let (env, server, kubectl, lk) = served(2);
    let ku = server.add_artifact("kubectl", &kubectl);
    let lu = server.add_artifact("lk.tar.zst", &lk);
    // The server's kubectl is one bit off what the manifest pins (same size).
    let mut evil = kubectl.bytes();
    evil[1000] ^= 0x40;
    server.add("kubectl", evil.clone());
    let err = env.fail(
        &[
            "fetch",
            "--jobs",
            "1",
            "--manifest",
            env.write_signed_manifest(&spec(vec![ku.clone()], &kubectl, vec![lu], &lk), "m.toml").to_str().unwrap(),
        ],
        Code::Integrity,
    );
    assert!(err.contains(&ku), "names the URL: {err}");
    assert!(err.contains(&kubectl.sha256), "names the expected hash: {err}");
    assert!(err.contains(&sha256_hex(&evil)), "names the actual hash: {err}");
    assert!(!env.blob(&kubectl.sha256).exists(), "nothing under blobs/sha256 for it");
    assert!(env.partials().is_empty(), "the bad download is not kept: {:?}", env.partials());
    // A mismatching body is not retried from the same URL.
    assert_eq!(server.requests_for("kubectl").len(), 1, "{:?}", server.requests());
}

#[test]
fn dropped_connection_resumes_with_range() {
    let f = Fixture::new();
    let cut = 100 * 1024;
    f.server.script("dl/kubectl", [Reply::DropAfter(cut)]);
    f.env.ok(&["fetch", "--manifest", f.m()]);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    let reqs = f.server.requests_for("dl/kubectl");
    assert_eq!(reqs.len(), 2, "one cut attempt and one resumed: {reqs:?}");
    assert_eq!(reqs[0].range, None);
    let resumed = reqs[1].range.as_deref().expect("the retry sends Range");
    let offset: usize = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Range is `bytes=N-`: {resumed}"));
    assert!(offset > 0 && offset <= cut, "resumes from what arrived (1..={cut}), got {offset}");
}

#[test]
fn dropped_twice_and_range_ignored_still_correct() {
    // Cut, resume cut again, then a server that ignores Range: the partial
    // file must be restarted, not appended to.
    let f = Fixture::new();
    f.server.script("dl/kubectl", [Reply::DropAfter(64 * 1024), Reply::DropAfter(32 * 1024), Reply::IgnoreRange]);
    f.env.ok(&["fetch", "--manifest", f.m()]);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    let reqs = f.server.requests_for("dl/kubectl");
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[1].range.is_some() && reqs[2].range.is_some(), "{reqs:?}");
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let f = Fixture::new();
    // A first run whose kubectl source is cut every time (no retries left).
    f.server.script("dl/kubectl", std::iter::repeat_n(Reply::DropAfter(50 * 1024), 5));
    let err = f.env.fail(&["fetch", "--manifest", f.m()], Code::Download);
    assert!(err.contains("connection lost") || err.contains("ended after"), "{err}");
    assert!(!f.env.blob(&f.kubectl.sha256).exists());
    assert_eq!(f.env.partials().len(), 1, "the partial download is kept for resuming");
    let before = f.server.requests_for("dl/kubectl").len();
    // Second run: resumes from the partial file with Range.
    f.env.ok(&["fetch", "--manifest", f.m()]);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    let reqs = f.server.requests_for("dl/kubectl");
    assert_eq!(reqs.len(), before + 1, "{reqs:?}");
    assert!(reqs.last().unwrap().range.as_deref().is_some_and(|r| r != "bytes=0-"), "{reqs:?}");
}

fn assert_too_long_refused(reply: Reply) {
    let f = Fixture::new();
    f.server.script("dl/kubectl", [reply.clone()]);
    let err = f.env.fail(&["fetch", "--jobs", "1", "--manifest", f.m()], Code::Integrity);
    assert!(err.contains(&f.server.url("dl/kubectl")), "{reply:?}: names the URL: {err}");
    assert!(err.contains(&f.kubectl.size.to_string()), "{reply:?}: names the limit: {err}");
    assert!(!f.env.blob(&f.kubectl.sha256).exists(), "{reply:?}: nothing in blobs");
    assert!(f.env.blobs().iter().all(|p| !p.ends_with(&f.kubectl.sha256)));
    assert!(f.env.partials().is_empty(), "{reply:?}: the over-long body is discarded: {:?}", f.env.partials());
    // Not retried: an endless body is not transient.
    assert_eq!(f.server.requests_for("dl/kubectl").len(), 1, "{reply:?}: {:?}", f.server.requests());
}

#[test]
fn body_longer_than_size_close_delimited_is_cut_off() {
    assert_too_long_refused(Reply::Extra(pseudo_random(512 * 1024, 9)));
}

#[test]
fn body_longer_than_size_chunked_is_cut_off() {
    assert_too_long_refused(Reply::ExtraChunked(pseudo_random(512 * 1024, 9)));
}

#[test]
fn body_longer_than_size_announced_is_refused() {
    assert_too_long_refused(Reply::ExtraAnnounced(vec![0; 10]));
}

#[test]
fn body_shorter_than_size_is_refused() {
    let f = Fixture::new();
    let short = f.kubectl.bytes()[..1000].to_vec();
    // A complete response (Content-Length matches) that is too short, every time.
    f.server.script("dl/kubectl", std::iter::repeat_n(Reply::Body(short), 10));
    let out = f.env.run(&["fetch", "--jobs", "1", "--manifest", f.m()]);
    assert!(!out.status.success());
    assert!(!f.env.blob(&f.kubectl.sha256).exists());
}

#[test]
fn first_url_404_second_url_used() {
    let (env, server, kubectl, lk) = served(3);
    let ku = server.add_artifact("mirror/kubectl", &kubectl);
    let lu = server.add_artifact("lk.tar.zst", &lk);
    let missing = server.url("gone/kubectl");
    let m = env.write_signed_manifest(&spec(vec![missing.clone(), ku], &kubectl, vec![lu], &lk), "m.toml");
    let out = env.run(&["fetch", "--manifest", m.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "fallback"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing) && stderr.contains("404"), "the fallback is reported: {stderr}");
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    assert_eq!(server.requests_for("gone/kubectl").len(), 1, "404 is not retried");
    assert_eq!(server.requests_for("mirror/kubectl").len(), 1);
}

#[test]
fn every_url_failing_is_a_download_error() {
    let (env, server, kubectl, lk) = served(4);
    let lu = server.add_artifact("lk.tar.zst", &lk);
    let (a, b) = (server.url("a/kubectl"), server.url("b/kubectl"));
    let m = env.write_signed_manifest(&spec(vec![a.clone(), b.clone()], &kubectl, vec![lu], &lk), "m.toml");
    let err = env.fail(&["fetch", "--manifest", m.to_str().unwrap()], Code::Download);
    assert!(err.contains(&a) && err.contains(&b), "lists every URL tried: {err}");
    assert!(env.blobs().iter().all(|p| !p.ends_with(&kubectl.sha256)));
}

#[test]
fn transient_503_twice_then_200_succeeds() {
    let f = Fixture::new();
    f.server.script("dl/kubectl", [Reply::Status(503), Reply::Status(503)]);
    let out = f.env.run(&["fetch", "--manifest", f.m()]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "503 retried"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503") && stderr.contains("retry"), "retries are reported: {stderr}");
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    assert_eq!(f.server.requests_for("dl/kubectl").len(), 3);
}

#[test]
fn offline_with_cold_cache_lists_missing_and_never_connects() {
    let f = Fixture::new();
    let err = f.env.fail(&["fetch", "--offline", "--manifest", f.m()], Code::OfflineMissing);
    assert!(err.contains("2 artifact(s) are not in the cache"), "{err}");
    for a in [&f.kubectl, &f.lk] {
        assert!(err.contains(&a.sha256), "lists {}: {err}", a.sha256);
    }
    assert!(err.contains("kubectl 1.33.1") && err.contains("localkube 1.33.1+standin"), "names the components: {err}");
    assert_eq!(f.server.connections(), 0, "no connection attempted");
    assert!(f.env.blobs().is_empty());

    // Warm one artifact; offline then lists exactly the other.
    f.env.ok(&["fetch", "--manifest", f.m()]);
    fs::remove_file(f.env.blob(&f.lk.sha256)).unwrap();
    let conns = f.server.connections();
    let err = f.env.fail(&["fetch", "--offline", "--manifest", f.m()], Code::OfflineMissing);
    assert!(err.contains("1 artifact(s)") && err.contains(&f.lk.sha256) && !err.contains(&f.kubectl.sha256), "{err}");
    assert_eq!(f.server.connections(), conns);
}

#[test]
fn offline_with_warm_cache_succeeds_without_network() {
    let f = Fixture::new();
    f.env.ok(&["fetch", "--manifest", f.m()]);
    let conns = f.server.connections();
    let out = f.env.ok(&["fetch", "--offline", "--manifest", f.m()]);
    assert!(out.contains("fetched and verified"), "{out}");
    assert_eq!(f.server.connections(), conns, "no connection");
}

#[test]
fn file_url_and_plain_path_sources() {
    let env = Env::new();
    let (kubectl, lk) = small_artifacts(&env.scratch("art"), 5);
    let m = env.write_signed_manifest(&spec(vec![kubectl.file_url()], &kubectl, vec![lk.path_url()], &lk), "m.toml");
    env.ok(&["fetch", "--manifest", m.to_str().unwrap()]);
    for a in [&kubectl, &lk] {
        assert_eq!(fs::read(env.blob(&a.sha256)).unwrap(), a.bytes());
    }
    // A missing local file falls over to the next source.
    let env = Env::new();
    let (kubectl, lk) = small_artifacts(&env.scratch("art"), 6);
    let nowhere = env.path().join("nowhere/kubectl").display().to_string();
    let m = env
        .write_signed_manifest(&spec(vec![nowhere, kubectl.path_url()], &kubectl, vec![lk.file_url()], &lk), "m.toml");
    env.ok(&["fetch", "--manifest", m.to_str().unwrap()]);
    assert!(env.blob(&kubectl.sha256).is_file());
}

#[test]
fn local_file_with_wrong_content_is_refused() {
    let env = Env::new();
    let (kubectl, lk) = small_artifacts(&env.scratch("art"), 7);
    let m = env.write_signed_manifest(&spec(vec![kubectl.path_url()], &kubectl, vec![lk.path_url()], &lk), "m.toml");
    flip_byte(&kubectl.path, 10);
    let err = env.fail(&["fetch", "--manifest", m.to_str().unwrap()], Code::Integrity);
    assert!(err.contains(&kubectl.sha256), "{err}");
    assert!(!env.blob(&kubectl.sha256).exists());
}

#[test]
fn manifest_over_http_with_signature_beside_it() {
    let f = Fixture::new();
    f.server.add("channel/m.toml", fs::read(&f.manifest).unwrap());
    let sig = format!("{}.minisig", f.manifest.display());
    f.server.add("channel/m.toml.minisig", fs::read(sig).unwrap());
    f.env.ok(&["fetch", "--manifest", &f.server.url("channel/m.toml")]);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    let paths: Vec<String> = f.server.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/channel/m.toml.minisig".to_string()), "{paths:?}");
}

#[test]
fn tampered_manifest_refused_before_any_download() {
    let f = Fixture::new();
    // One flipped byte in the URL path: still a valid manifest, but not the signed one.
    let text = fs::read_to_string(&f.manifest).unwrap();
    let at = text.find("/dl/kubectl").unwrap() + 1;
    flip_byte(&f.manifest, at);
    assert_ne!(fs::read_to_string(&f.manifest).unwrap(), text);
    let err = f.env.fail(&["fetch", "--manifest", f.m()], Code::Signature);
    assert!(err.to_lowercase().contains("signature"), "{err}");
    assert_eq!(f.server.connections(), 0, "nothing downloaded");
    assert!(f.env.blobs().is_empty());
}

#[test]
fn unsigned_manifest_refused() {
    let f = Fixture::new();
    fs::remove_file(format!("{}.minisig", f.manifest.display())).unwrap();
    let err = f.env.fail(&["fetch", "--manifest", f.m()], Code::Signature);
    assert!(err.contains("must be signed"), "{err}");
    assert_eq!(f.server.connections(), 0);
}

#[test]
fn cache_verify_detects_and_removes_a_corrupt_blob() {
    let f = Fixture::new();
    f.env.ok(&["fetch", "--manifest", f.m()]);
    let out = f.env.ok(&["cache", "verify"]);
    assert!(out.contains("all good"), "{out}");
    let blob = f.env.blob(&f.kubectl.sha256);
    flip_byte(&blob, 4242);
    let err = f.env.fail(&["cache", "verify"], Code::CorruptCache);
    assert!(err.contains(&f.kubectl.sha256) && err.contains("corrupt"), "{err}");
    assert!(!blob.exists(), "the corrupt blob is removed");
    assert!(f.env.blob(&f.lk.sha256).is_file(), "the good one stays");
    f.env.ok(&["cache", "verify"]);
    // A later fetch downloads it again.
    let before = f.server.requests_for("dl/kubectl").len();
    f.env.ok(&["fetch", "--manifest", f.m()]);
    assert_eq!(f.server.requests_for("dl/kubectl").len(), before + 1);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
}

#[test]
fn cache_prune_dry_run_then_prune() {
    let env = Env::new();
    let server = Server::start();
    let dir = env.scratch("art");
    let (kubectl, lk1) = small_artifacts(&dir, 10);
    let (_, lk2) = small_artifacts(&dir, 11);
    let ku = server.add_artifact("kubectl", &kubectl);
    let l1 = server.add_artifact("lk1.tar.zst", &lk1);
    let l2 = server.add_artifact("lk2.tar.zst", &lk2);
    let m1 = env.write_signed_manifest(&spec(vec![ku.clone()], &kubectl, vec![l1], &lk1), "m1.toml");
    let mut s2 = spec(vec![ku], &kubectl, vec![l2], &lk2);
    s2.version = 2;
    let m2 = env.write_signed_manifest(&s2, "m2.toml");
    env.ok(&["fetch", "--manifest", m1.to_str().unwrap()]);
    env.ok(&["fetch", "--manifest", m2.to_str().unwrap()]);
    assert_eq!(env.blobs().len(), 3);
    // A stray partial file: prune removes it too.
    fs::create_dir_all(env.home.join("blobs/partial")).unwrap();
    let stray = env.home.join("blobs/partial").join(format!("{}.partial", "ab".repeat(32)));
    fs::write(&stray, b"half").unwrap();

    let old_blob = env.blob(&lk1.sha256);
    // Trusted through the pinned dev key: kept as `test@<key id>-<version>.toml`.
    let kept = |version: u32| {
        fs::read_dir(env.home.join("manifests"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("test@") && n.ends_with(&format!("-{version}.toml"))
            })
            .unwrap_or_else(|| panic!("no kept manifest test version {version}"))
    };
    let old_manifest = kept(1);
    assert!(old_manifest.is_file());
    let out = env.ok(&["cache", "prune", "--dry-run"]);
    for p in [&old_blob, &old_manifest, &stray] {
        assert!(out.contains(&format!("would remove {}", p.display())), "lists {}: {out}", p.display());
    }
    assert!(!out.contains(&kubectl.sha256) && !out.contains(&lk2.sha256), "keeps what the newest manifest uses: {out}");
    assert!(old_blob.is_file() && old_manifest.is_file() && stray.is_file(), "dry run removes nothing");

    let out = env.ok(&["cache", "prune"]);
    assert!(out.contains(&format!("removed {}", old_blob.display())), "{out}");
    assert!(!old_blob.exists() && !old_manifest.exists() && !stray.exists());
    let mut want = vec![env.blob(&kubectl.sha256), env.blob(&lk2.sha256)];
    want.sort();
    assert_eq!(env.blobs(), want);
    assert!(kept(2).is_file());
    // Nothing more to prune; the newest manifest still fetches offline.
    let out = env.ok(&["cache", "prune", "--dry-run"]);
    assert!(!out.contains("would remove"), "{out}");
    env.ok(&["fetch", "--offline", "--manifest", m2.to_str().unwrap()]);
}

#[test]
fn manifest_check_reports_file_line_column() {
    let env = Env::new();
    let (kubectl, lk) = small_artifacts(&env.scratch("art"), 12);
    let good = spec(vec![kubectl.path_url()], &kubectl, vec![lk.path_url()], &lk).to_toml();
    let path = env.path().join("good.toml");
    fs::write(&path, &good).unwrap();
    let out = env.ok(&["manifest", "check", path.to_str().unwrap()]);
    assert!(out.contains("valid manifest") && out.contains(&format!("({} bytes)", kubectl.size + lk.size)), "{out}");

    // sha256 one character short, on a known line and column.
    let bad = good.replacen(&kubectl.sha256, &kubectl.sha256[1..], 1);
    let line = bad.lines().position(|l| l.starts_with("sha256 = ")).unwrap() + 1;
    let path = env.path().join("bad.toml");
    fs::write(&path, &bad).unwrap();
    let err = env.fail(&["manifest", "check", path.to_str().unwrap()], Code::Usage);
    let loc = format!("{}:{line}:10", path.display());
    assert!(err.contains(&loc), "names {loc}: {err}");
    assert!(err.contains("component.kubectl.target.linux-x86_64.sha256"), "names the field: {err}");

    // An unknown template in the run args.
    let bad = good.replacen("{port}", "{portt}", 1);
    fs::write(&path, &bad).unwrap();
    let err = env.fail(&["manifest", "check", path.to_str().unwrap()], Code::Usage);
    assert!(err.contains("bad.toml:") && err.contains("{portt}"), "{err}");
}

#[test]
fn fetch_of_an_invalid_signed_manifest_is_a_usage_error() {
    let (env, server, kubectl, lk) = served(13);
    let s = spec(vec![server.url("kubectl")], &kubectl, vec![server.url("lk")], &lk);
    let text = s.to_toml().replace("\"--https-listen-port={port}\"", "\"--port={nope}\"");
    let m = env.write_signed_text(&text, "m.toml");
    let err = env.fail(&["fetch", "--manifest", m.to_str().unwrap()], Code::Usage);
    assert!(err.contains("{nope}"), "{err}");
    assert_eq!(server.connections(), 0);
}

#[test]
fn parallel_downloads_of_many_artifacts_complete() {
    // jobs=1 and jobs=4 both fetch the same set correctly.
    for jobs in ["1", "4"] {
        let f = Fixture::new();
        f.server.script("dl/kubectl", [Reply::Delay(std::time::Duration::from_millis(200))]);
        f.env.ok(&["fetch", "--jobs", jobs, "--manifest", f.m()]);
        f.assert_blobs(&[&f.kubectl, &f.lk]);
    }
}

#[test]
fn wrong_hash_from_first_mirror_then_good_second_mirror() {
    let (env, server, kubectl, lk) = served(14);
    let mut evil = kubectl.bytes();
    evil[7] ^= 1;
    server.add("bad/kubectl", evil);
    let good = server.add_artifact("good/kubectl", &kubectl);
    let lu = server.add_artifact("lk.tar.zst", &lk);
    let m = env.write_signed_manifest(&spec(vec![server.url("bad/kubectl"), good], &kubectl, vec![lu], &lk), "m.toml");
    let out = env.run(&["fetch", "--manifest", m.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "second mirror used"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"), "the bad mirror is reported");
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    // The bad bytes were not resumed from: the good mirror was asked from 0.
    let reqs = server.requests_for("good/kubectl");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].range, None, "{reqs:?}");
}

#[test]
fn cut_on_first_mirror_resumes_from_second_mirror() {
    let (env, server, kubectl, lk) = served(15);
    server.add("a/kubectl", kubectl.bytes());
    server.script("a/kubectl", std::iter::repeat_n(Reply::DropAfter(40 * 1024), 5));
    let b = server.add_artifact("b/kubectl", &kubectl);
    let lu = server.add_artifact("lk.tar.zst", &lk);
    let m = env.write_signed_manifest(&spec(vec![server.url("a/kubectl"), b], &kubectl, vec![lu], &lk), "m.toml");
    env.ok(&["fetch", "--manifest", m.to_str().unwrap()]);
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    let reqs = server.requests_for("b/kubectl");
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].range.is_some(), "bytes from the first mirror are kept (same sha256): {reqs:?}");
}

#[test]
fn same_artifact_twice_in_one_manifest() {
    // kubectl and localkube pinned to the same blob: two workers, one download.
    let env = Env::new();
    let server = Server::start();
    let (kubectl, _) = small_artifacts(&env.scratch("art"), 16);
    let u = server.add_artifact("same", &kubectl);
    server.script("same", [Reply::Delay(std::time::Duration::from_millis(300))]);
    let mut s = spec(vec![u.clone()], &kubectl, vec![u], &kubectl);
    s.localkube.2 = "file".into();
    s.localkube.3 = "localkube".into();
    s.program = "localkube".into();
    let m = env.write_signed_manifest(&s, "m.toml");
    env.ok(&["fetch", "--jobs", "4", "--manifest", m.to_str().unwrap()]);
    assert_eq!(env.blobs(), vec![env.blob(&kubectl.sha256)]);
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    assert_eq!(server.requests_for("same").len(), 1, "the second worker waits and finds it cached");
}

#[test]
fn two_processes_fetching_at_once_share_the_download() {
    let f = Fixture::new();
    f.server.script("dl/kubectl", [Reply::Delay(std::time::Duration::from_millis(500))]);
    let spawn = || {
        f.env
            .cmd(&["fetch", "--manifest", f.m()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for child in [spawn(), spawn()] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&["fetch"], &out, "concurrent fetch"));
    }
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    assert_eq!(f.server.requests_for("dl/kubectl").len(), 1, "{:?}", f.server.requests());
}

#[test]
fn http_proxy_is_used_and_no_proxy_bypasses_it() {
    let f = Fixture::new();
    let proxy = Server::start();
    proxy.add("dl/kubectl", f.kubectl.bytes());
    proxy.add("dl/localkube.tar.zst", f.lk.bytes());
    let proxy_url = format!("http://{}", proxy.addr());
    let out = f
        .env
        .cmd(&["fetch", "--manifest", f.m()])
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "via proxy"));
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    assert!(f.server.requests().is_empty(), "the origin is reached only through the proxy: {:?}", f.server.requests());
    let via = proxy.requests();
    assert_eq!(via.len(), 2, "{via:?}");
    assert!(
        via.iter().all(|r| r.target.starts_with(&format!("http://{}/", f.server.addr()))),
        "absolute-form requests: {via:?}"
    );

    // NO_PROXY names the origin: straight there.
    let env2 = Fixture::new();
    let out = env2
        .env
        .cmd(&["fetch", "--manifest", env2.m()])
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "NO_PROXY"));
    assert_eq!(env2.server.requests().len(), 2);
    assert_eq!(proxy.requests().len(), 2, "the proxy saw nothing new");
}

/// A mirror behind HTTPS whose certificate a test CA issued, serving two
/// small artifacts at `ku` and `lu`.
struct TlsMirror {
    ca: TestCa,
    server: Server,
    kubectl: Artifact,
    lk: Artifact,
    ku: String,
    lu: String,
}

impl TlsMirror {
    fn new(env: &Env, seed: u64) -> Self {
        let ca = TestCa::new();
        let server = Server::start_tls(ca.server_config.clone());
        let (kubectl, lk) = small_artifacts(&env.scratch("art"), seed);
        let ku = server.add_artifact("kubectl", &kubectl);
        let lu = server.add_artifact("lk.tar.zst", &lk);
        TlsMirror { ca, server, kubectl, lk, ku, lu }
    }
}

#[test]
fn https_mirror_needs_its_ca_via_flag_or_env() {
    let env = Env::new();
    let TlsMirror { ca, server, kubectl, lk, ku, lu } = TlsMirror::new(&env, 17);
    assert!(ku.starts_with("https://127.0.0.1:"), "{ku}");
    let m = env.write_signed_manifest(&spec(vec![ku], &kubectl, vec![lu], &lk), "m.toml");
    let m = m.to_str().unwrap();
    // Unknown CA: refused, not retried forever, nothing stored.
    let t = std::time::Instant::now();
    let err = env.fail(&["fetch", "--manifest", m], Code::Download);
    assert!(
        err.to_lowercase().contains("certificate") && err.contains("--ca-cert"),
        "names the cause and the fix: {err}"
    );
    assert!(!err.contains("retry"), "a certificate error is not retried: {err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(server.requests().len(), 0, "no request got through the handshake");
    assert!(env.blobs().is_empty());
    // --ca-cert FILE.
    let ca_file = env.path().join("mirror-ca.pem");
    fs::write(&ca_file, &ca.ca_pem).unwrap();
    env.ok(&["fetch", "--ca-cert", ca_file.to_str().unwrap(), "--manifest", m]);
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    // KUBESTRAP_CA_CERT, in a fresh home.
    let served_manifest = |e: &Env| {
        e.write_signed_manifest(
            &spec(vec![server.url("kubectl")], &kubectl, vec![server.url("lk.tar.zst")], &lk),
            "m.toml",
        )
    };
    let env2 = Env::new();
    let m2 = served_manifest(&env2);
    let out =
        env2.cmd(&["fetch", "--manifest", m2.to_str().unwrap()]).env("KUBESTRAP_CA_CERT", &ca_file).output().unwrap();
    assert!(out.status.success(), "{}", describe(&["fetch"], &out, "KUBESTRAP_CA_CERT"));
    assert!(env2.blob(&lk.sha256).is_file());
    // A file that is not PEM is a clear error.
    let junk = env.path().join("junk.pem");
    fs::write(&junk, "not a certificate").unwrap();
    let env3 = Env::new();
    let m3 = served_manifest(&env3);
    let out = env3.run(&["fetch", "--ca-cert", junk.to_str().unwrap(), "--manifest", m3.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.pem"), "{}", describe(&["fetch"], &out, "junk CA"));
}

#[test]
fn https_mirror_cut_mid_body_resumes() {
    let env = Env::new();
    let TlsMirror { ca, server, kubectl, lk, ku, lu } = TlsMirror::new(&env, 18);
    server.script("kubectl", [Reply::DropAfter(120 * 1024)]);
    let ca_file = env.path().join("ca.pem");
    fs::write(&ca_file, &ca.ca_pem).unwrap();
    let m = env.write_signed_manifest(&spec(vec![ku], &kubectl, vec![lu], &lk), "m.toml");
    env.ok(&["fetch", "--ca-cert", ca_file.to_str().unwrap(), "--manifest", m.to_str().unwrap()]);
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    let reqs = server.requests_for("kubectl");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].range.is_some(), "{reqs:?}");
}

#[test]
fn standin_manifest_fetches_and_unpacks_into_the_store() {
    // The lifecycle tests' manifest: real kubectl (path), stand-in tar.zst (path).
    let env = Env::new();
    let spec = ManifestSpec::standin(&env.scratch("art"), "v1.33.1+standin");
    let m = env.write_signed_manifest(&spec, "m.toml");
    let m = m.to_str().unwrap();
    env.ok(&["manifest", "check", m]);
    env.ok(&["fetch", "--manifest", m]);
    let (kubectl, lk) = (&spec.kubectl.1, &spec.localkube.1);
    assert!(env.blob(&kubectl.sha256).is_file() && env.blob(&lk.sha256).is_file());

    let out = json_lines(&env.ok(&["-o", "json", "cache", "unpack", "--manifest", m]));
    let dirs: Vec<PathBuf> = out.iter().filter_map(|v| v["dir"].as_str().map(PathBuf::from)).collect();
    assert_eq!(dirs.len(), 2, "{out:?}");
    let lk_dir = env.home.join("components").join(&lk.sha256);
    let kubectl_dir = env.home.join("components").join(&kubectl.sha256);
    assert!(dirs.contains(&lk_dir) && dirs.contains(&kubectl_dir), "{dirs:?}");
    use std::os::unix::fs::PermissionsExt;
    let bin = lk_dir.join("localkube-standin");
    assert_eq!(fs::metadata(&bin).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(&bin).unwrap(), fs::read(standin_binary()).unwrap());
    assert_eq!(fs::read_to_string(lk_dir.join("version.txt")).unwrap().trim(), "v1.33.1+standin");
    assert!(lk_dir.join(".complete").is_file() && kubectl_dir.join(".complete").is_file());
    assert_eq!(fs::metadata(kubectl_dir.join("kubectl")).unwrap().permissions().mode() & 0o111, 0o111);
    assert!(env.ok(&["cache", "verify"]).contains("all good"));

    // A changed file in an unpacked tree: verify removes the tree (exit 33)
    // but keeps the verified blob; unpack rebuilds it offline.
    flip_byte(&lk_dir.join("version.txt"), 0);
    let err = env.fail(&["cache", "verify"], Code::CorruptCache);
    assert!(err.contains("version.txt"), "{err}");
    assert!(!lk_dir.exists() && env.blob(&lk.sha256).is_file());
    env.ok(&["cache", "unpack", "--offline", "--manifest", m]);
    assert_eq!(fs::read_to_string(lk_dir.join("version.txt")).unwrap().trim(), "v1.33.1+standin");
}

#[test]
fn a_bad_partial_from_an_earlier_run_is_redone_from_zero_not_blamed_on_the_mirror() {
    let f = Fixture::new();
    // Garbage left in the partial file (a previous run, a broken mirror).
    let partial = f.env.home.join("blobs/partial").join(format!("{}.partial", f.kubectl.sha256));
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, pseudo_random(10 * 1024, 99)).unwrap();
    f.env.ok(&["fetch", "--manifest", f.m()]);
    f.assert_blobs(&[&f.kubectl, &f.lk]);
    let reqs = f.server.requests_for("dl/kubectl");
    assert_eq!(reqs.len(), 2, "a resumed try, then one from zero: {reqs:?}");
    assert!(reqs[0].range.is_some() && reqs[1].range.is_none(), "{reqs:?}");
}
