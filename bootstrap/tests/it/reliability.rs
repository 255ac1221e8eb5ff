//! The defects a hostile tester found, each with the test that failed
//! before it was fixed: interrupted stops, what runs being verified, damaged
//! state files, secrets in URLs, unbounded reads, leftovers of killed
//! unpacks, values a user cannot mean, read-only kubeconfigs, honest exit
//! codes, trickling servers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::*;

/// The stand-in that keeps serving for a while after SIGTERM (a localkube
/// that takes time to stop).
fn slow_stopping(ms: u64) -> Cluster {
    Cluster::with(|s| s.args.push(format!("--stop-delay-ms={ms}")))
}

/// Waits for the stop marker of a profile (a stop has signalled localkube).
fn wait_for_stop_marker(c: &Cluster) {
    let marker = c.env.home.join("profiles/kubestrap/run/stopping");
    assert!(wait_until(Duration::from_secs(10), || marker.exists()), "the stop never began");
}

#[test]
fn a_stop_or_delete_killed_while_localkube_shuts_down_is_finished_by_start() {
    let c = slow_stopping(1500);
    c.start("kubestrap");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=a=1"]);
    for cmd in ["stop", "delete"] {
        let old = c.localkube_pid("kubestrap");
        let mut child = c.spawn(&[cmd]);
        wait_for_stop_marker(&c);
        kill9(&mut child);
        assert!(alive(old), "localkube is still shutting down ({cmd} was killed)");
        let (_, st) = c.status("kubestrap");
        assert_eq!(st["localkube"], "Stopping", "{st}");
        // No --manifest: a stop resumes the profile's release; a delete cut
        // short is finished, and the fresh profile runs the release it ran.
        let run = c.env.run(&["start"]);
        let out = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success() && !out.contains("already running"), "{out}");
        assert!(!alive(old), "the old localkube was waited for");
        // Later than the old one's stop delay, the cluster still answers.
        std::thread::sleep(Duration::from_millis(1800));
        let got = c.kubectl(&KUBECTL, &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"]);
        if cmd == "stop" {
            assert!(out.contains("interrupted stop finished"), "{out}");
            assert_eq!(String::from_utf8_lossy(&got.stdout), "1", "after an interrupted stop: {got:?}");
        } else {
            assert!(out.contains("was cut short; finishing it") && out.contains("driver native"), "{out}");
            let err = String::from_utf8_lossy(&got.stderr);
            assert!(!got.status.success() && err.contains("not found"), "the delete was finished: {got:?}");
        }
        assert_eq!(c.localkubes("kubestrap").len(), 1);
        assert_eq!(c.status("kubestrap").0, 0);
        assert!(!c.env.home.join("profiles/kubestrap/deleting").exists());
    }
}

/// The unpacked stand-in binary of the cluster's localkube component.
fn unpacked_program(c: &Cluster) -> std::path::PathBuf {
    let comps = c.env.home.join("components");
    fs::read_dir(&comps)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("localkube-standin"))
        .find(|p| p.is_file())
        .expect("an unpacked localkube")
}

#[test]
fn what_start_runs_matches_the_manifest_or_is_restored_first() {
    let c = Cluster::new();
    c.start("kubestrap");
    c.env.ok(&["stop"]);
    let program = unpacked_program(&c);
    let original = fs::read(&program).unwrap();
    let ran = c.env.path().join("the-swapped-file-ran");
    // Replaced by a script.
    fs::remove_file(&program).unwrap();
    fs::write(&program, format!("#!/bin/sh\ntouch {}\nsleep 600\n", ran.display())).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let out = c.env.ok(&["start"]);
    assert!(out.contains("component repaired"), "{out}");
    assert!(!ran.exists(), "the swapped-in script ran");
    assert_eq!(fs::read(&program).unwrap(), original, "the tree was restored from the verified blob");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    // One byte flipped in the binary.
    c.env.ok(&["stop"]);
    flip_byte(&program, original.len() / 2);
    let out = c.env.ok(&["-o", "json", "start"]);
    let repaired: Vec<_> = json_lines(&out).into_iter().filter(|v| v["step"] == "component repaired").collect();
    assert_eq!(repaired.len(), 1, "{out}");
    assert_eq!(repaired[0]["files"], serde_json::json!(["localkube-standin"]), "{out}");
    assert_eq!(fs::read(&program).unwrap(), original);
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
}

#[test]
fn the_monitor_refuses_a_program_that_does_not_match_its_hash() {
    // The last check, made on the open file that is then executed: a file
    // swapped after start checked the tree still never runs.
    let env = Env::new();
    let run = env.scratch("run");
    let ran = env.path().join("ran");
    let program = env.path().join("prog.sh");
    fs::write(&program, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let spec = format!(
        "program = \"{}\"\nsha256 = \"{}\"\nargs = []\ncwd = \"{}\"\nlog = \"{}\"\nport = 1\n",
        program.display(),
        "0".repeat(64),
        env.path().display(),
        env.path().join("log").display()
    );
    fs::write(run.join("launch.toml"), spec).unwrap();
    let out = env.run(&["__monitor", run.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!ran.exists(), "a program that does not match its hash ran");
    let record = fs::read_to_string(run.join("last-exit.toml")).unwrap();
    assert!(record.contains("code = 126"), "{record}");
    let log = fs::read_to_string(env.path().join("log")).unwrap();
    assert!(log.contains("does not match the signed manifest"), "{log}");
}

#[test]
fn damaged_state_files_never_leave_the_user_without_stop_and_delete() {
    let c = Cluster::new();
    let garbage: Vec<u8> = pseudo_random(300, 99).into_iter().chain([0xff, 0xfe, 0x00]).collect();
    let profile = c.env.home.join("profiles/kubestrap");
    // The pid file.
    c.start("kubestrap");
    fs::write(profile.join("run/localkube.pid"), &garbage).unwrap();
    let (code, st) = c.status("kubestrap");
    assert_eq!((code, &st["localkube"]), (6, &serde_json::json!("Crashed")), "{st}");
    assert!(st["crash"].as_str().unwrap().contains("damaged"), "{st}");
    c.env.ok(&["stop"]);
    assert!(c.localkubes("kubestrap").is_empty(), "stop found localkube by its marker");
    c.env.ok(&["start"]);
    fs::write(profile.join("run/localkube.pid"), &garbage).unwrap();
    c.env.ok(&["delete"]);
    assert!(!profile.exists());
    // The profile's config.
    c.start("kubestrap");
    let lk = c.localkubes("kubestrap");
    fs::write(profile.join("config.toml"), &garbage).unwrap();
    let err = c.env.fail(&["status"], Code::Disk);
    assert!(err.contains("damaged") && err.contains("kubestrap delete"), "{err}");
    c.env.ok(&["stop"]);
    assert!(lk.iter().all(|p| !alive(*p)));
    c.env.ok(&["delete"]);
    assert!(!profile.exists());
    // The exit record, the stop marker, the layout record, the rollback
    // record and kubectl's lock file.
    c.start("kubestrap");
    c.env.ok(&["stop"]);
    fs::write(profile.join("run/last-exit.toml"), &garbage).unwrap();
    fs::write(profile.join("run/stopping"), &garbage).unwrap();
    fs::write(c.env.home.join("state/layout.toml"), &garbage).unwrap();
    fs::write(c.env.home.join("state/seen-versions.toml"), &garbage).unwrap();
    fs::write(c.env.kubeconfig.with_file_name("config.lock"), &garbage).unwrap();
    c.env.ok(&["start"]);
    // The rollback record is rebuilt (and said so) when it is next needed.
    let args = ["fetch", "--manifest", c.m()];
    let out = c.env.run(&args);
    assert!(out.status.success(), "{}", c.env.report(&args, &out, "expected success"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rebuilt"), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = fs::read_to_string(c.env.home.join("state/seen-versions.toml")).unwrap();
    assert!(seen.contains("version = 1"), "{seen}");
    assert!(fs::read_to_string(c.env.home.join("state/layout.toml")).unwrap().contains("layout = 1"));
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
}

#[test]
fn passwords_and_tokens_in_urls_are_never_shown() {
    let env = Env::new();
    let port = free_port();
    let url = format!("http://someone:s3cr3t-pw@127.0.0.1:{port}/m.toml?token=t0ken-xyz&part=1");
    for args in [vec!["fetch", "--manifest", &url], vec!["-o", "json", "-vv", "fetch", "--manifest", &url]] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), exit(Code::Download), "{}", env.report(&args, &out, "expected 20"));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!all.contains("s3cr3t-pw") && !all.contains("t0ken-xyz"), "a secret was shown:\n{all}");
        assert!(all.contains("127.0.0.1") && all.contains("part=1"), "the URL is still named:\n{all}");
    }
    // An artifact URL with a password, failing on a live server.
    let server = Server::start();
    let dir = env.scratch("a");
    let kubectl = file_artifact(&dir, "kubectl", &pseudo_random(1000, 1));
    let lk = file_artifact(&dir, "lk", &pseudo_random(1000, 2));
    let secret_url = server.url("missing").replace("http://", "http://user:hunter2-pw@");
    let mut s = ManifestSpec::new(
        (vec![secret_url], kubectl, "file".into()),
        (vec![lk.path_url()], lk, "file".into(), "localkube".into()),
    );
    s.program = "localkube".into();
    let m = env.write_signed_manifest(&s, "m.toml");
    let out = env.run(&["-o", "json", "fetch", "--manifest", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), exit(Code::Download));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("hunter2-pw"), "{all}");
    assert!(all.contains("***@"), "{all}");
}

/// Runs a command that must fail with `code` quickly, whatever the input.
fn fails_fast(env: &Env, args: &[&str], code: Code) -> String {
    let t = Instant::now();
    let err = env.fail(args, code);
    assert!(t.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", t.elapsed());
    err
}

#[test]
fn every_read_of_an_outside_file_is_capped() {
    let env = Env::new();
    let dir = env.scratch("caps");
    let zero = dir.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.join("big.toml");
    fs::write(&big, vec![b'#'; 3 << 20]).unwrap();
    // A signature that never ends, or never comes.
    let s = ManifestSpec::standin(&env.scratch("art"), "v1.33.1+standin");
    let m = env.write_signed_manifest(&s, "m/manifest.toml");
    let sig = fs::read(m.with_extension("toml.minisig")).unwrap();
    for target in [&zero, &fifo] {
        fs::remove_file(m.with_extension("toml.minisig")).unwrap();
        std::os::unix::fs::symlink(target, m.with_extension("toml.minisig")).unwrap();
        fails_fast(&env, &["fetch", "--manifest", m.to_str().unwrap()], Code::Signature);
    }
    fs::remove_file(m.with_extension("toml.minisig")).unwrap();
    fs::write(m.with_extension("toml.minisig"), sig).unwrap();
    // Manifests, keys, key lists, CA bundles, kubeconfigs.
    for f in [&zero, &fifo, &big] {
        let f = f.to_str().unwrap();
        fails_fast(&env, &["manifest", "check", f], Code::Usage);
        fails_fast(&env, &["fetch", "--manifest", f], Code::Usage);
        fails_fast(&env, &["trust", "add", f], Code::Usage);
        fails_fast(&env, &["keys", "verify-list", f], Code::Usage);
        fails_fast(&env, &["fetch", "--ca-cert", f, "--manifest", "https://127.0.0.1:1/m.toml"], Code::Usage);
    }
    // A kubeconfig may be big, but not endless.
    let huge = dir.join("huge-kubeconfig");
    fs::File::create(&huge).unwrap().set_len(40 << 20).unwrap();
    for f in [&zero, &fifo, &huge] {
        let out = env.cmd(&["start", "--manifest", m.to_str().unwrap()]).env("KUBECONFIG", f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), exit(Code::Kubeconfig), "KUBECONFIG={}: {err}", f.display());
    }
    assert!(!env.home.join("profiles/kubestrap/run/localkube.pid").exists(), "nothing ran");
}

#[test]
fn leftovers_of_a_killed_unpack_are_swept_quietly() {
    let env = Env::new();
    let s = ManifestSpec::standin(&env.scratch("art"), "v1.33.1+standin");
    let m = env.write_signed_manifest(&s, "m.toml");
    env.ok(&["cache", "unpack", "--manifest", m.to_str().unwrap()]);
    let left = env.home.join(format!("components/.tmp-{}-999999", s.localkube.1.sha256));
    fs::create_dir_all(left.join("bin")).unwrap();
    fs::write(left.join("bin/half"), b"half an unpack").unwrap();
    let out = env.ok(&["cache", "verify"]);
    assert!(out.contains("all good"), "{out}");
    assert!(!left.exists());
}

#[test]
fn values_a_user_cannot_mean_are_usage_errors() {
    let env = Env::new();
    for args in [
        &["start", "--port", "0"][..],
        &["start", "--port", "70000"],
        &["start", "--jobs", "0"],
        &["start", "--wait-timeout", "0s"],
        &["start", "--wait-timeout", "3d"],
        &["fetch", "--jobs", "1000", "--manifest", "m.toml"],
    ] {
        env.fail(args, Code::Usage);
    }
    assert!(!env.home.join("profiles").exists());
    // KUBESTRAP_HOME set but empty is unset: the home under $HOME is used.
    let out = env.cmd(&["profile", "list"]).env("KUBESTRAP_HOME", "").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_read_only_kubeconfig_is_refused_before_anything_runs() {
    let c = Cluster::new();
    fs::create_dir_all(c.env.kubeconfig.parent().unwrap()).unwrap();
    let text = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n";
    fs::write(&c.env.kubeconfig, text).unwrap();
    fs::set_permissions(&c.env.kubeconfig, fs::Permissions::from_mode(0o444)).unwrap();
    let port = free_port().to_string();
    let err = c.env.fail(&["start", "--manifest", c.m(), "--port", &port], Code::Kubeconfig);
    assert!(err.contains("read-only") && err.contains("KUBECONFIG"), "{err}");
    assert_eq!(fs::read_to_string(&c.env.kubeconfig).unwrap(), text);
    assert_eq!(fs::metadata(&c.env.kubeconfig).unwrap().permissions().mode() & 0o777, 0o444);
    assert!(c.localkubes("kubestrap").is_empty(), "nothing was started");
    // Made writable again: the start goes ahead.
    fs::set_permissions(&c.env.kubeconfig, fs::Permissions::from_mode(0o600)).unwrap();
    c.start("kubestrap");
}

#[test]
fn a_kubeconfig_in_a_directory_that_cannot_be_written_is_refused_before_anything_runs() {
    // A read-only mount needs root (a non-root owner could write anyway).
    if !need("root", is_root) {
        return;
    }
    let c = Cluster::new();
    let ro = c.env.scratch("ro");
    let port = free_port();
    // A read-only filesystem, mounted in a mount namespace of the command's own.
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {ro} || exit 77; KUBECONFIG={ro}/config {ks} start --manifest {m} --port {port}",
        ro = ro.display(),
        ks = KUBESTRAP,
        m = c.m(),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script])
        .env("KUBESTRAP_HOME", &c.env.home)
        .env("HOME", c.env.path())
        .env("NO_COLOR", "1");
    let out = cmd.output().unwrap();
    assert_ne!(out.status.code(), Some(77), "cannot mount a read-only tmpfs: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), exit(Code::Kubeconfig), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the kubeconfig"));
    assert!(c.localkubes("kubestrap").is_empty(), "nothing was started");
}

#[test]
fn archives_that_match_their_hash_but_are_broken_are_unsafe_not_disk_errors() {
    let env = Env::new();
    let dir = env.scratch("arch");
    let kubectl = file_artifact(&dir, "kubectl", &pseudo_random(1000, 3));
    let mut good = tar_zst_artifact(&dir, "good.tar.zst", &[("bin/localkube", &pseudo_random(1000, 4), 0o755)]).bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not-zstd", pseudo_random(5000, 5)),
        ("trailing-garbage", {
            good.extend_from_slice(b"garbage after the zstd frame");
            good.clone()
        }),
        ("truncated", good[..good.len() / 2].to_vec()),
    ];
    for (version, (name, bytes)) in (1..).zip(cases) {
        let lk = file_artifact(&dir, &format!("{name}.tar.zst"), &bytes);
        let mut s = ManifestSpec::new(
            (vec![kubectl.path_url()], kubectl.clone(), "file".into()),
            (vec![lk.path_url()], lk, "tar.zst".into(), "bin/localkube".into()),
        );
        s.program = "bin/localkube".into();
        s.version = version;
        let m = env.write_signed_manifest(&s, &format!("{name}.toml"));
        let err = env.fail(&["cache", "unpack", "--manifest", m.to_str().unwrap()], Code::UnsafeArchive);
        assert!(err.contains("not a valid tar.zst"), "{name}: {err}");
    }
}

#[test]
fn bad_key_and_certificate_files_are_usage_errors() {
    let env = Env::new();
    let dir = env.scratch("bad");
    let garbage = dir.join("garbage.key");
    fs::write(&garbage, pseudo_random(200, 9)).unwrap();
    let file = dir.join("f.toml");
    fs::write(&file, "x = 1\n").unwrap();
    env.fail(&["manifest", "sign", "--key", garbage.to_str().unwrap(), file.to_str().unwrap()], Code::Usage);
    let not_pem = dir.join("ca.pem");
    fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let err = env.fail(
        &["fetch", "--ca-cert", not_pem.to_str().unwrap(), "--manifest", "https://127.0.0.1:1/m.toml"],
        Code::Usage,
    );
    assert!(err.contains("--ca-cert"), "{err}");
}

#[test]
fn a_trickling_server_is_given_up_on_and_the_download_resumed() {
    let env = Env::new();
    let server = Server::start();
    let dir = env.scratch("a");
    let kubectl = file_artifact(&dir, "kubectl", &pseudo_random(200_000, 11));
    let lk = file_artifact(&dir, "lk", &pseudo_random(1000, 12));
    let url = server.add_artifact("kubectl", &kubectl);
    server.script("kubectl", [Reply::Trickle { bytes: 1, every: Duration::from_millis(300) }]);
    let mut s = ManifestSpec::new(
        (vec![url], kubectl.clone(), "file".into()),
        (vec![lk.path_url()], lk, "file".into(), "localkube".into()),
    );
    s.program = "localkube".into();
    let m = env.write_signed_manifest(&s, "m.toml");
    let t = Instant::now();
    let out = env.ok(&[
        "-o",
        "json",
        "fetch",
        "--speed-limit",
        "1000",
        "--speed-time",
        "2s",
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let retries: Vec<_> = json_lines(&out).into_iter().filter(|v| v["event"] == "download-retry").collect();
    assert!(retries.iter().any(|v| v["error"].as_str().unwrap().contains("too slow")), "{out}");
    assert_eq!(fs::read(env.blob(&kubectl.sha256)).unwrap(), kubectl.bytes());
    // The retry resumed where the trickle stopped.
    assert!(server.requests().iter().any(|r| r.range.is_some()), "{:?}", server.requests());
}

#[test]
fn pki_files_never_point_into_kubestraps_own_pki() {
    let c = Cluster::with(|s| s.pki_files.push(("{data}/ca.crt".into(), "ca.key".into())));
    let text = fs::read_to_string(&c.manifest).unwrap().replace("\"{data}/ca.crt\"", "\"{pki}/ca.crt\"");
    let m = c.env.write_signed_text(&text, "into-pki.toml");
    let err = c.env.fail(&["manifest", "check", m.to_str().unwrap()], Code::Usage);
    assert!(err.contains("pki-files") && err.contains("{pki}"), "{err}");
    c.env.fail(&["start", "--manifest", m.to_str().unwrap()], Code::Usage);
    assert!(!c.env.home.join("profiles/kubestrap/pki").exists());
}

#[test]
fn manifest_check_of_sizes_that_overflow_does_not_panic() {
    let env = Env::new();
    let s = ManifestSpec::standin(&env.scratch("art"), "v1.33.1+standin");
    let text = s.to_toml();
    let huge = i64::MAX.to_string();
    let mut extra = String::new();
    for t in ["linux-aarch64", "darwin-x86_64", "darwin-aarch64"] {
        let block = text.split("[component.kubectl.target.linux-x86_64]").nth(1).unwrap().split("\n\n").next().unwrap();
        let block = block.lines().map(|l| if l.starts_with("size") { format!("size = {huge}") } else { l.to_string() });
        extra.push_str(&format!("\n[component.kubectl.target.{t}]{}\n", block.collect::<Vec<_>>().join("\n")));
    }
    let text = text.replace("\n[component.localkube]", &format!("{extra}\n[component.localkube]"));
    let path = env.path().join("huge.toml");
    fs::write(&path, text).unwrap();
    let out = env.ok(&["-o", "json", "manifest", "check", path.to_str().unwrap()]);
    assert_eq!(json_lines(&out)[0]["total_bytes"], u64::MAX, "{out}");
}
