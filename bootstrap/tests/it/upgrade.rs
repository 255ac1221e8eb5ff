//! Upgrades as manifest swaps: two stand-in releases reporting Kubernetes
//! 1.32 and 1.33, with the real kubectl 1.32 and 1.33 pinned beside them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A release: stand-in `v1.<minor>.4+standin` and the real kubectl 1.<minor>.
pub fn release(env: &Env, minor: u32, version: u64, edit: impl FnOnce(&mut ManifestSpec)) -> PathBuf {
    let dir = env.scratch(&format!("rel-{minor}-{version}"));
    let lk = standin_artifact(&dir, &format!("v1.{minor}.4+standin"));
    let kubectl =
        Artifact::of(kubectl_of(minor).unwrap_or_else(|| panic!("upgrade tests switch kubectl: 1.{minor} is needed")));
    let mut spec = ManifestSpec::new(
        (vec![kubectl.path_url()], kubectl, "file".into()),
        (vec![lk.path_url()], lk, "tar.zst".into(), "localkube-standin".into()),
    );
    spec.kubernetes = format!("1.{minor}.4");
    spec.kubectl_version = format!("1.{minor}.0");
    spec.localkube_version = format!("1.{minor}.4+standin");
    spec.version = version;
    edit(&mut spec);
    env.write_signed_manifest(&spec, &format!("rel-{minor}-{version}/manifest.toml"))
}

/// A cluster on release 1.32 (manifest version 1), with a configmap in it.
struct Upgradable {
    c: Cluster,
    m33: PathBuf,
}

impl Upgradable {
    fn new(edit33: impl FnOnce(&mut ManifestSpec)) -> Upgradable {
        let env = Env::new();
        let m32 = release(&env, 32, 1, |_| {});
        let m33 = release(&env, 33, 2, edit33);
        let c = Cluster { env, manifest: m32 };
        c.start("kubestrap");
        c.kubectl_ok(&KUBECTL, &["create", "configmap", "before", "--from-literal=k=v"]);
        Upgradable { c, m33 }
    }

    fn server_version(&self) -> String {
        let (_, st) = self.c.status("kubestrap");
        st["kubernetes"].as_str().unwrap_or_default().to_string()
    }

    fn before_is_there(&self) {
        let got = self.c.kubectl_ok(&KUBECTL, &["get", "configmap", "before", "-o", "jsonpath={.data.k}"]);
        assert_eq!(got, "v");
    }
}

#[test]
fn upgrade_keeps_the_data_switches_kubectl_and_rollback_goes_back() {
    let u = Upgradable::new(|_| {});
    let c = &u.c;
    let cfg_before = fs::read(c.env.home.join("profiles/kubestrap/config.toml")).unwrap();
    // A dry run plans and changes nothing.
    let out = c.env.ok(&["upgrade", "--dry-run", "--manifest", s(&u.m33)]);
    assert!(out.contains("1.32.4") && out.contains("1.33.4") && out.contains("to download"), "{out}");
    let v = &json_lines(&c.env.ok(&["-o", "json", "upgrade", "--dry-run", "--manifest", s(&u.m33)]))[0];
    assert_eq!(v["result"], "dry-run", "{v}");
    assert!(v["plan"]["download_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(fs::read(c.env.home.join("profiles/kubestrap/config.toml")).unwrap(), cfg_before);
    assert!(!fs::read_to_string(c.env.home.join("state/seen-versions.toml")).unwrap().contains("version = 2"));
    assert!(u.server_version().starts_with("v1.32.4"));

    let out = c.env.ok(&["upgrade", "--manifest", s(&u.m33)]);
    assert!(out.contains("upgrade done") && out.contains("snapshot"), "{out}");
    assert!(u.server_version().starts_with("v1.33.4"), "{}", u.server_version());
    u.before_is_there();
    let kv = c.env.ok(&["kubectl", "--", "version", "--client", "-o", "json"]);
    assert!(kv.contains("v1.33."), "the pinned kubectl is the new one: {kv}");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "after", "--from-literal=k=2"]);
    let snaps = json_lines(&c.env.ok(&["-o", "json", "snapshot", "list"]));
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["kubernetes"], "1.32.4");

    // Going down by upgrade is refused; rollback does it, with the state of then.
    let m32b = release(&c.env, 32, 3, |_| {});
    let err = c.env.fail(&["upgrade", "--manifest", s(&m32b)], Code::StepRefused);
    assert!(err.contains("downgrade") && err.contains("kubestrap rollback"), "{err}");
    let out = c.env.ok(&["rollback"]);
    assert!(out.contains("rollback done"), "{out}");
    assert!(u.server_version().starts_with("v1.32.4"));
    u.before_is_there();
    let after = c.kubectl(&KUBECTL, &["get", "configmap", "after"]);
    assert!(!after.status.success(), "the state is the one before the upgrade");
    // The state of the newer release was snapshotted first, and rolling back
    // again (forward) brings it back.
    c.env.ok(&["rollback"]);
    assert!(u.server_version().starts_with("v1.33.4"));
    c.kubectl_ok(&KUBECTL, &["get", "configmap", "after"]);
    assert_eq!(c.localkubes("kubestrap").len(), 1);
}

#[test]
fn skew_rules_refuse_a_skipped_minor_unless_forced() {
    let env = Env::new();
    let m31 = release(&env, 31, 1, |_| {});
    let m33 = release(&env, 33, 2, |_| {});
    let c = Cluster { env, manifest: m31 };
    c.start("kubestrap");
    let err = c.env.fail(&["upgrade", "--manifest", s(&m33)], Code::StepRefused);
    assert!(err.contains("skips 1 minor") && err.contains("--force"), "{err}");
    assert_eq!(c.status("kubestrap").1["kubernetes"].as_str().unwrap()[..7], *"v1.31.4");
    let out = c.env.run(&["upgrade", "--force", "--manifest", s(&m33)]);
    assert!(out.status.success(), "{}", c.env.report(&["upgrade", "--force"], &out, "expected success"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forced"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_release_that_never_gets_ready_is_rolled_back_with_its_data() {
    let u = Upgradable::new(|s| wrap_standin(s, "broken", "echo 'broken localkube: refusing to start' >&2; exit 1"));
    let c = &u.c;
    let err = c.env.fail(&["upgrade", "--manifest", s(&u.m33), "--wait-timeout", "20s"], Code::UpgradeRolledBack);
    assert!(err.contains("rolled back") && err.contains("broken localkube: refusing to start"), "{err}");
    assert!(u.server_version().starts_with("v1.32.4"));
    u.before_is_there();
    assert_eq!(c.localkubes("kubestrap").len(), 1);
    assert!(!c.env.home.join("profiles/kubestrap/upgrade.toml").exists(), "the journal is closed");
    let cfg = fs::read_to_string(c.env.home.join("profiles/kubestrap/config.toml")).unwrap();
    assert!(cfg.contains("-1.toml"), "the profile points at the old release: {cfg}");
}

/// The journal's phase, if an upgrade is under way.
fn phase(c: &Cluster) -> Option<String> {
    let text = fs::read_to_string(c.env.home.join("profiles/kubestrap/upgrade.toml")).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v["phase"].as_str().map(str::to_string)
}

#[test]
fn kill_9_at_each_phase_of_an_upgrade_leaves_one_release_running_with_its_data() {
    // A slow new release (ready after 1.5 s) and a slow-stopping old one,
    // so every phase lasts long enough to be caught.
    let mut results = Vec::new();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let targets: Vec<Option<&str>> =
        vec![Some("fetched"), Some("stopped"), Some("snapshotted"), Some("swapped"), None, None];
    for (i, target) in targets.into_iter().enumerate() {
        let env = Env::new();
        let m32 = release(&env, 32, 1, |s| s.args.push("--stop-delay-ms=400".into()));
        let m33 = release(&env, 33, 2, |s| s.args.push("--ready-delay-ms=1500".into()));
        let c = Cluster { env, manifest: m32 };
        c.start("kubestrap");
        c.kubectl_ok(&KUBECTL, &["create", "configmap", "before", "--from-literal=k=v"]);
        let mut child = c.spawn(&["upgrade", "--manifest", s(&m33)]);
        let t = Instant::now();
        match target {
            Some(want) => {
                while phase(&c).as_deref() != Some(want)
                    && child.try_wait().unwrap().is_none()
                    && t.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            None => std::thread::sleep(Duration::from_millis((seed >> (i * 8)) % 4500)),
        }
        let at = phase(&c);
        kill9(&mut child);
        let port = free_port().to_string();
        let args = ["start", "--port", &port];
        let out = c.env.run(&args);
        assert!(out.status.success(), "killed at {at:?}: {}", c.env.report(&args, &out, "recovery start failed"));
        let (code, st) = c.status("kubestrap");
        let version = st["kubernetes"].as_str().unwrap().to_string();
        assert_eq!(code, 0, "killed at {at:?}: {st}");
        assert!(version.starts_with("v1.32.4") || version.starts_with("v1.33.4"), "{version}");
        assert_eq!(c.localkubes("kubestrap").len(), 1, "killed at {at:?}");
        let got = c.kubectl_ok(&KUBECTL, &["get", "configmap", "before", "-o", "jsonpath={.data.k}"]);
        assert_eq!(got, "v", "killed at {at:?}: the data is gone");
        assert!(phase(&c).is_none(), "killed at {at:?}: the journal was not closed");
        println!("upgrade killed at phase {at:?} after {:?}: start recovered on {version}", t.elapsed());
        results.push((at, version));
    }
    println!("kill -9 during upgrades: {} kills, {} recovered: {results:?}", results.len(), results.len());
}

/// A channel served over loopback HTTP: the index names release `m33`.
fn channel(env: &Env, server: &Server, m33: &Path, index_version: u64) -> String {
    let index = env.path().join(format!("index-{index_version}.toml"));
    let (sha, size) = sha256_file(m33);
    let now = time::OffsetDateTime::now_utc();
    let ts = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    fs::write(
        &index,
        format!(
            "schema = 1\nversion = {index_version}\npublished = \"{}\"\nexpires = \"{}\"\n[channel.test]\nversion = 2\nurl = \"stable/manifest.toml\"\nsha256 = \"{sha}\"\nsize = {size}\n",
            ts(now - time::Duration::hours(1)),
            ts(now + time::Duration::days(7))
        ),
    )
    .unwrap();
    env.ok(&["manifest", "sign", "--key", s(&env.keys.join("dev.key")), s(&index)]);
    server.add("index.toml", fs::read(&index).unwrap());
    server.add("index.toml.minisig", fs::read(format!("{}.minisig", index.display())).unwrap());
    server.add("stable/manifest.toml", fs::read(m33).unwrap());
    server.add("stable/manifest.toml.minisig", fs::read(format!("{}.minisig", m33.display())).unwrap());
    server.url("index.toml")
}

#[test]
fn upgrade_from_a_signed_channel_index_and_check() {
    let u = Upgradable::new(|_| {});
    let c = &u.c;
    let server = Server::start();
    let url = channel(&c.env, &server, &u.m33, 5);
    let out = c.env.run(&["upgrade", "--check", "--channel-url", &url]);
    assert_eq!(
        out.status.code(),
        exit(Code::Available),
        "{}",
        c.env.report(&["upgrade", "--check"], &out, "expected 3")
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-2 is available"));
    assert!(u.server_version().starts_with("v1.32.4"), "--check changed nothing");
    // Through the config file, as a user sets it once.
    c.env.ok(&["config", "set", "channel-url", &url]);
    assert_eq!(c.env.ok(&["config", "get", "channel-url"]).trim(), url);
    c.env.ok(&["upgrade"]);
    assert!(u.server_version().starts_with("v1.33.4"));
    u.before_is_there();
    c.env.ok(&["upgrade", "--check"]);
    // A rolled-back index (older version), and a tampered one.
    let old = channel(&c.env, &server, &u.m33, 4);
    c.env.fail(&["upgrade", "--check", "--channel-url", &old], Code::Rollback);
    server.add("index.toml", b"schema = 1\nversion = 9\n".to_vec());
    c.env.fail(&["upgrade", "--check", "--channel-url", &url], Code::Signature);
}

#[test]
fn upgrade_from_a_bundle() {
    let u = Upgradable::new(|_| {});
    let c = &u.c;
    let b = c.env.path().join("bundle-1.33");
    c.env.ok(&["bundle", "create", "--manifest", s(&u.m33), "--out", s(&b)]);
    c.env.ok(&["upgrade", "--from-bundle", s(&b)]);
    assert!(u.server_version().starts_with("v1.33.4"));
    u.before_is_there();
}

/// An index naming a kubestrap executable.
fn exe_index(env: &Env, dir: &Path, exe: &Path, version: &str, sign: bool) -> PathBuf {
    let (sha, size) = sha256_file(exe);
    let now = time::OffsetDateTime::now_utc();
    let ts = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let index = dir.join(format!("index-{version}.toml"));
    let v = dir.read_dir().unwrap().count() as u64 + 1;
    fs::write(
        &index,
        format!(
            "schema = 1\nversion = {v}\npublished = \"{}\"\nexpires = \"{}\"\n[kubestrap.linux-x86_64]\nversion = \"{version}\"\nurls = [\"{}\"]\nsha256 = \"{sha}\"\nsize = {size}\n",
            ts(now - time::Duration::hours(1)),
            ts(now + time::Duration::days(7)),
            exe.display()
        ),
    )
    .unwrap();
    if sign {
        env.ok(&["manifest", "sign", "--key", s(&env.keys.join("dev.key")), s(&index)]);
    }
    index
}

#[test]
fn self_update_replaces_the_executable_verified_and_can_go_back() {
    let env = Env::new();
    let dir = env.scratch("selfupdate");
    // The kubestrap that updates itself: a copy, so the build is never touched.
    let me = dir.join("kubestrap");
    fs::copy(KUBESTRAP, &me).unwrap();
    let original = fs::read(&me).unwrap();
    // The "newer" kubestrap: the same program with bytes appended (it runs alike).
    let newer = env.scratch("dl").join("kubestrap-0.2.0");
    let mut bytes = original.clone();
    bytes.extend_from_slice(b"\n# kubestrap 0.2.0 test build\n");
    fs::write(&newer, &bytes).unwrap();
    let run = |args: &[&str]| env.cmd_of(&me, args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    let idx_dir = env.scratch("idx");
    let index = exe_index(&env, &idx_dir, &newer, "0.2.0", true);
    let out = run(&["self-update", "--check", "--channel-url", s(&index)]);
    assert_eq!(out.status.code(), exit(Code::Available), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&me).unwrap(), original, "--check changed nothing");
    let out = run(&["self-update", "--channel-url", s(&index)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&me).unwrap(), bytes, "the verified download replaced the executable");
    let v = Command::new(&me).arg("--version").output().unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).contains("kubestrap"), "the new binary runs");
    let out = run(&["self-update", "--rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&me).unwrap(), original, "the previous executable is back");

    // Refused: an older version, a tampered download, an unsigned index.
    let older = exe_index(&env, &idx_dir, &newer, "0.0.9", true);
    assert_eq!(run(&["self-update", "--channel-url", s(&older)]).status.code(), exit(Code::StepRefused));
    let newest = env.scratch("dl").join("kubestrap-0.3.0");
    fs::write(&newest, [&bytes[..], b"# 0.3.0\n"].concat()).unwrap();
    let tampered = exe_index(&env, &idx_dir, &newest, "0.3.0", true);
    fs::write(&newest, [&bytes[..], b"# 0.3.1\n"].concat()).unwrap();
    let out = run(&["self-update", "--channel-url", s(&tampered)]);
    assert_eq!(out.status.code(), exit(Code::Integrity), "{}", String::from_utf8_lossy(&out.stderr));
    let unsigned = exe_index(&env, &idx_dir, &me, "0.4.0", false);
    assert_eq!(run(&["self-update", "--channel-url", s(&unsigned)]).status.code(), exit(Code::Signature));
    assert_eq!(fs::read(&me).unwrap(), original, "nothing refused was installed");
}

#[test]
fn a_kill_between_the_config_swap_and_the_journal_is_rolled_back() {
    // The state a kill right after the config's rename leaves (the window is
    // a millisecond, too short to hit from outside): the journal still at
    // "snapshotted", the config already naming the new release.
    let env = Env::new();
    let m32 = release(&env, 32, 1, |_| {});
    let m33 = release(&env, 33, 2, |_| {});
    let c = Cluster { env, manifest: m32 };
    c.start("kubestrap");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "before", "--from-literal=k=v"]);
    c.env.ok(&["upgrade", "--manifest", s(&m33)]);
    c.env.ok(&["stop"]);
    let dir = c.env.home.join("profiles/kubestrap");
    let cfg: toml::Value = toml::from_str(&fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
    let snapshot = fs::read_dir(dir.join("snapshots")).unwrap().next().unwrap().unwrap().file_name();
    let journal = format!(
        "kind = \"upgrade\"\nphase = \"snapshotted\"\nold = {}\nnew = {}\nsnapshot = {:?}\nstarted = \"2026-11-30T00:00:00Z\"\n",
        cfg["previous"],
        cfg["manifest"],
        snapshot.to_string_lossy()
    );
    fs::write(dir.join("upgrade.toml"), journal).unwrap();

    let out = c.env.run(&["start"]);
    assert!(out.status.success(), "{}", c.env.report(&["start"], &out, "recovery start failed"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("interrupted during the swap"), "{said}");
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 0, "{st}");
    assert!(st["kubernetes"].as_str().unwrap().starts_with("v1.32.4"), "rolled back: {st}");
    let got = c.kubectl_ok(&KUBECTL, &["get", "configmap", "before", "-o", "jsonpath={.data.k}"]);
    assert_eq!(got, "v");
    assert!(phase(&c).is_none(), "the journal was closed");
}
