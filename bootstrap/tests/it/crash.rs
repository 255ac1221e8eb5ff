//! The kill -9 matrix: each mutating command is killed with SIGKILL at a
//! random moment, many times over (seeded; the seed is printed, and set
//! with KUBESTRAP_CRASH_SEED to replay a run), and the next command must
//! recover: `start` exits 0 and the cluster answers the real kubectl,
//! exactly one localkube runs, `cache verify` is clean, kubectl still reads
//! the kubeconfig, and no state a user kept is lost.
//! KUBESTRAP_CRASH_ITERATIONS sets the kills per command (default 6).

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// xorshift64*: a small seeded generator, enough to pick kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("KUBESTRAP_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    })
}

fn iterations() -> usize {
    std::env::var("KUBESTRAP_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(6)
}

/// What the matrix found, printed at the end (and on failure).
#[derive(Default)]
struct Tally {
    runs: Vec<String>,
}

impl Tally {
    fn note(&mut self, line: String) {
        println!("{line}");
        self.runs.push(line);
    }
}

/// Checks everything a recovered cluster must satisfy. `kept`: the
/// configmap made before the kill must still be there.
fn recovered(c: &Cluster, port: &str, kept: bool, what: &str) {
    let args = ["start", "--manifest", c.m(), "--port", port];
    let out = c.env.run(&args);
    assert!(out.status.success(), "{what}: {}", c.env.report(&args, &out, "recovery start failed"));
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    let lks = c.localkubes("kubestrap");
    assert_eq!(lks.len(), 1, "{what}: localkubes {lks:?}");
    if kept {
        let got = c.kubectl_ok(&KUBECTL, &["get", "configmap", "kept", "-o", "jsonpath={.data.n}"]);
        assert_eq!(got, "1", "{what}: the configmap made before the kill is gone");
    }
    let verify = c.env.run(&["cache", "verify"]);
    assert!(verify.status.success(), "{what}: {}", c.env.report(&["cache", "verify"], &verify, "cache not clean"));
    let view = Command::new(&*KUBECTL)
        .args(["config", "view", "-o", "json"])
        .env("KUBECONFIG", &c.env.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(view.status.success(), "{what}: kubectl cannot read the kubeconfig");
    // A configmap to keep across the next kill.
    if !kept {
        c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=n=1"]);
    }
}

#[test]
fn kill_9_at_any_moment_of_start_stop_or_delete_is_recovered_by_the_next_start() {
    let seed = seed();
    let n = iterations();
    println!("kill -9 matrix: seed {seed}, {n} kills per command (replay with KUBESTRAP_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    // A localkube that takes 600 ms to stop after its signal.
    let c = Cluster::with(|s| s.args.push("--stop-delay-ms=600".into()));
    let port = free_port().to_string();
    let mut tally = Tally::default();
    recovered(&c, &port, false, "first start");
    let t = Instant::now();
    for cmd in ["start", "stop", "delete"] {
        for i in 0..n {
            // Preconditions: stop and delete run on a running cluster; start
            // resumes a stopped one, or (every other time) creates one from
            // nothing, downloading and unpacking everything first.
            let fresh = cmd == "start" && i % 2 == 1;
            if fresh {
                c.env.ok(&["delete", "--all", "--purge"]);
            } else if cmd == "start" {
                c.env.ok(&["stop"]);
            }
            let window = match (cmd, fresh) {
                ("start", false) => 150,
                ("start", true) => 600,
                _ => 750,
            };
            let at = Duration::from_millis(rng.below(window));
            let args: Vec<&str> = match cmd {
                "start" => vec!["start", "--manifest", c.m(), "--port", &port],
                other => vec![other],
            };
            let mut child = c.spawn(&args);
            std::thread::sleep(at);
            let finished = child.try_wait().unwrap().is_some();
            kill9(&mut child);
            // A delete cut short is finished by the next start (its data
            // goes, as asked).
            let dir = c.env.home.join("profiles/kubestrap");
            let profile_left = dir.join("config.toml").exists() && !dir.join("deleting").exists();
            let what = format!(
                "{cmd}{} killed at {}ms (iteration {i}, seed {seed})",
                if fresh { " (from nothing)" } else { "" },
                at.as_millis()
            );
            // A configmap exists to be kept unless this iteration removed
            // the cluster (a fresh start, or a delete that got that far).
            recovered(&c, &port, profile_left && !fresh, &what);
            tally.note(format!(
                "{what}: recovered{}{}",
                if finished { " (it had finished)" } else { "" },
                if profile_left { "" } else { " (profile had been deleted)" }
            ));
        }
    }
    let midway = tally.runs.iter().filter(|r| !r.contains("it had finished")).count();
    println!(
        "kill -9 matrix: {} kills ({midway} before the command finished), {} recovered, in {:?}",
        tally.runs.len(),
        tally.runs.len(),
        t.elapsed()
    );
}

#[test]
fn kill_9_during_the_fetch_of_a_large_artifact_is_resumed_by_the_next_fetch() {
    let seed = seed() ^ 0x5eed;
    let n = iterations();
    println!("kill -9 fetch matrix: seed {seed}, {n} kills");
    let mut rng = Rng(seed);
    let env = Env::new();
    let server = Server::start();
    let dir = env.scratch("a");
    let big = file_artifact(&dir, "big", &pseudo_random(48 << 20, 21));
    let lk = file_artifact(&dir, "lk", &pseudo_random(1000, 22));
    let url = server.add_artifact("big", &big);
    let mut s = ManifestSpec::new(
        (vec![url], big.clone(), "file".into()),
        (vec![lk.path_url()], lk, "file".into(), "localkube".into()),
    );
    s.program = "localkube".into();
    let m = env.write_signed_manifest(&s, "m.toml");
    let m = m.to_str().unwrap();
    let mut resumed = 0;
    for i in 0..n {
        let _ = fs::remove_file(env.blob(&big.sha256));
        // About 1 s for the whole body: 1 MiB every 20 ms.
        server.script("big", [Reply::Trickle { bytes: 1 << 20, every: Duration::from_millis(20) }]);
        let mut child =
            env.cmd(&["fetch", "--manifest", m]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let at = Duration::from_millis(rng.below(1200));
        std::thread::sleep(at);
        kill9(&mut child);
        let partial = env.partials().first().map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).unwrap_or(0);
        let before = server.requests_for("big").len();
        let out = env.run(&["fetch", "--manifest", m]);
        let what = format!("fetch killed at {}ms (iteration {i}, seed {seed}), {partial} bytes kept", at.as_millis());
        assert!(out.status.success(), "{what}: {}", env.report(&["fetch"], &out, "recovery fetch failed"));
        assert_eq!(fs::read(env.blob(&big.sha256)).unwrap(), big.bytes(), "{what}");
        let verify = env.run(&["cache", "verify"]);
        assert!(verify.status.success(), "{what}: {}", env.report(&["cache", "verify"], &verify, "not clean"));
        if partial > 0 && server.requests_for("big")[before..].iter().any(|r| r.range.is_some()) {
            resumed += 1;
        }
        println!("{what}: recovered");
    }
    println!("kill -9 fetch matrix: {n} kills, {n} recovered, {resumed} resumed with a Range request");
}

// ---------------------------------------------------------------------------
// Kills that land in every phase. A debug build of kubestrap has kill points
// (bootstrap/src/killpoint.rs): KUBESTRAP_TEST_KILL_AT=<point>@<µs> sends it
// SIGKILL that long after it reaches <point>, while the step goes on. Each
// phase gets KUBESTRAP_CRASH_ITERATIONS seeded kills (CI: 4, 2 for the VM;
// README's figures: 20), and the next command must repair or resume.

/// Recovered/total per phase, printed as a table with the seed.
struct Matrix {
    seed: u64,
    /// Where a killed command writes the points it reached since the armed one.
    log: tempfile::NamedTempFile,
    rows: Vec<Row>,
}

struct Row {
    phase: String,
    /// Kills sent (each followed by a recovery).
    kills: usize,
    /// Kills that landed in the armed step.
    in_step: usize,
    /// Kills that landed in a later step.
    later: usize,
    /// Kills sent after the command had finished.
    finished: usize,
}

impl Matrix {
    fn new(name: &str, salt: u64) -> Matrix {
        let seed = seed() ^ salt;
        println!("{name}: seed {seed} (replay with KUBESTRAP_CRASH_SEED, the salt {salt:#x} is xored in)");
        let log = tempfile::NamedTempFile::new().unwrap();
        Matrix { seed, log, rows: Vec::new() }
    }

    /// Kills the command `kill.run` makes, armed at `kill.point`, until `n`
    /// kills have landed in that step (at most 4n kills): `setup` before
    /// each, `recover` after each, whatever the kill hit. A delay is drawn
    /// below the window, which halves after a kill that came too late (the
    /// step was over, or the command had finished).
    fn phase(
        &mut self,
        name: &str,
        n: usize,
        kill: Kill<impl FnMut() -> Command>,
        mut setup: impl FnMut(usize),
        mut recover: impl FnMut(&str),
    ) {
        use std::os::unix::process::ExitStatusExt;
        let Kill { point, window_us, later: steps, mut run } = kill;
        let mut rng = Rng(self.seed
            ^ name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
        let mut row = Row { phase: name.to_string(), kills: 0, in_step: 0, later: 0, finished: 0 };
        let mut window = window_us.max(1);
        while row.in_step < n && row.kills < 4 * n {
            let i = row.kills;
            setup(i);
            let us = rng.below(window);
            fs::write(self.log.path(), "").unwrap();
            let out = run()
                .env("KUBESTRAP_TEST_KILL_AT", format!("{point}@{us}"))
                .env("KUBESTRAP_TEST_KILL_LOG", self.log.path())
                .output()
                .unwrap();
            row.kills += 1;
            let trail = fs::read_to_string(self.log.path()).unwrap_or_default();
            let trail = trail.trim();
            let later = trail.split(',').skip(1).filter(|p| *p != point && steps.contains(p)).last();
            let verdict = match (out.status.signal() == Some(libc::SIGKILL), later) {
                (false, _) => {
                    row.finished += 1;
                    "after the command finished".to_string()
                }
                (true, Some(step)) => {
                    row.later += 1;
                    format!("in the later step {step:?}")
                }
                (true, None) => {
                    row.in_step += 1;
                    "in the step".to_string()
                }
            };
            if verdict != "in the step" {
                window = (window / 2).max(1);
            }
            recover(&format!("{name}: kill {i} at +{us}µs, {verdict} (trail {trail:?}, seed {})", self.seed));
        }
        println!(
            "  {name:<28} {:>3} kills: {:>3} in the step, {:>2} in a later one, {:>2} after it finished; {:>3} recovered",
            row.kills, row.in_step, row.later, row.finished, row.kills
        );
        assert_eq!(
            row.in_step, n,
            "{name}: fewer than {n} of {} kills landed in the step (seed {})",
            row.kills, self.seed
        );
        self.rows.push(row);
    }

    fn done(&self) {
        let kills: usize = self.rows.iter().map(|r| r.kills).sum();
        let in_step: usize = self.rows.iter().map(|r| r.in_step).sum();
        println!("  | phase | kills | in the step | in a later step | after it finished | recovered |");
        for r in &self.rows {
            println!("  | {} | {} | {} | {} | {} | {} |", r.phase, r.kills, r.in_step, r.later, r.finished, r.kills);
        }
        println!("  total: {kills} kills, {in_step} in their step, {kills} recovered (seed {})", self.seed);
    }
}

/// What a phase kills: the command `run` makes, armed at kill point `point`
/// with a delay drawn below `window_us`. `later`: the kill points that
/// begin the steps after it (a kill after one of them landed there).
struct Kill<'a, F> {
    point: String,
    window_us: u64,
    later: &'a [&'a str],
    run: F,
}

fn kill<F: FnMut() -> Command>(point: &str, window_us: u64, run: F) -> Kill<'static, F> {
    Kill { point: point.to_string(), window_us, later: &[], run }
}

impl<'a, F> Kill<'a, F> {
    fn before(self, later: &'a [&'a str]) -> Kill<'a, F> {
        Kill { later, ..self }
    }
}

/// The kill points of a start's steps, in order.
const START_STEPS: [&str; 6] = ["fetch", "unpack", "configure", "launch", "ready", "kubeconfig"];

/// Kills per phase: KUBESTRAP_CRASH_ITERATIONS when set (README's figures:
/// 20), else `ci`.
fn per_phase(ci: usize) -> usize {
    std::env::var("KUBESTRAP_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(ci)
}

#[test]
fn kills_that_land_in_every_phase_native() {
    let n = per_phase(4);
    let mut mx = Matrix::new("kill -9 per phase, native driver", 0x6e61);
    let c = Cluster::with(|s| {
        s.args.push("--stop-delay-ms=600".into());
        s.images_dir = Some("{data}/agent/images".into());
    });
    let port = free_port().to_string();
    recovered(&c, &port, false, "first start");
    let start = || c.env.cmd(&["start", "--manifest", c.m(), "--port", &port]);
    // A profile whose delete was cut short is finished off by the next
    // start: its data is not expected back.
    let exists = || {
        let dir = c.env.home.join("profiles/kubestrap");
        dir.join("config.toml").exists() && !dir.join("deleting").exists()
    };

    // start: fetch and unpack from nothing (the cache purged first).
    for (point, window) in [("fetch", 80_000), ("unpack", 80_000)] {
        mx.phase(
            &format!("start: {point}"),
            n,
            kill(point, window, start).before(&START_STEPS),
            |_| drop(c.env.ok(&["delete", "--all", "--purge"])),
            |what| recovered(&c, &port, false, what),
        );
    }
    // The later steps of a start that creates the profile (even kills) or
    // resumes a stopped one (odd: its configmap must survive).
    for (point, window) in [("configure", 3_000), ("launch", 30_000), ("ready", 8_000), ("kubeconfig", 3_000)] {
        let resumed = std::cell::Cell::new(false);
        mx.phase(
            &format!("start: {point}"),
            n,
            kill(point, window, start).before(&START_STEPS),
            |i| {
                resumed.set(i % 2 == 1);
                drop(c.env.ok(if resumed.get() { &["stop"][..] } else { &["delete"][..] }));
            },
            |what| recovered(&c, &port, resumed.get(), what),
        );
    }
    // stop and delete of a running cluster (localkube takes 600 ms to stop).
    mx.phase(
        "stop",
        n,
        kill("stop", 800_000, || c.env.cmd(&["stop"])),
        |_| {},
        |what| recovered(&c, &port, true, what),
    );
    mx.phase(
        "delete",
        n,
        kill("delete", 800_000, || c.env.cmd(&["delete"])),
        |_| {},
        |what| {
            let left = exists();
            recovered(&c, &port, left, what)
        },
    );

    // image load: the archive is placed whole or not at all, never half.
    let archive = image_archive(&c.env.scratch("images"));
    let archive = archive.to_str().unwrap();
    let data = c.env.home.join("profiles/kubestrap/data");
    mx.phase(
        "image load",
        n,
        kill("image load", 1_500, || c.env.cmd(&["image", "load", archive])),
        |_| {},
        |what| {
            c.env.ok(&["image", "load", archive]);
            let listed = c.env.ok(&["image", "list", "-o", "json"]);
            assert_eq!(json_lines(&listed).iter().filter(|v| v.get("sha256").is_some()).count(), 1, "{what}: {listed}");
            let stray: Vec<_> = walk(&data).into_iter().filter(|p| p.to_string_lossy().contains(".tmp")).collect();
            assert!(stray.is_empty(), "{what}: temp files left: {stray:?}");
        },
    );
    mx.done();
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn kills_that_land_in_every_upgrade_phase_are_finished_or_undone() {
    let n = per_phase(4);
    const UPGRADE_STEPS: [&str; 7] = [
        "upgrade planned",
        "upgrade fetched",
        "upgrade stopped",
        "upgrade snapshotted",
        "upgrade swapped",
        "upgrade verified",
        "upgrade rolling back",
    ];
    let mut mx = Matrix::new("kill -9 per upgrade phase", 0x7570);
    let env = Env::new();
    let m32 = crate::upgrade::release(&env, 32, 1, |_| {});
    let m33 = crate::upgrade::release(&env, 33, 2, |_| {});
    let c = Cluster { env, manifest: m32 };
    let port = free_port().to_string();
    let m33 = m33.to_str().unwrap().to_string();
    c.env.ok(&["start", "--manifest", c.m(), "--port", &port]);
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=n=1"]);
    // Back to 1.32 before each kill: a rollback (the rollback protection
    // refuses starting the older manifest afresh once the newer was seen).
    let fresh = || {
        let (_, st) = c.status("kubestrap");
        if st["kubernetes"].as_str().is_some_and(|k| k.starts_with("v1.33")) {
            c.env.ok(&["rollback"]);
        }
    };
    let recover = |what: &str| {
        // The next start finishes the upgrade or undoes it: one release
        // runs, with the data, and no journal is left.
        let out = c.env.run(&["start"]);
        assert!(out.status.success(), "{what}: {}", c.env.report(&["start"], &out, "recovery start failed"));
        assert!(!c.env.home.join("profiles/kubestrap/upgrade.toml").exists(), "{what}: journal left");
        let (code, st) = c.status("kubestrap");
        assert_eq!(code, 0, "{what}: {st}");
        let k = st["kubernetes"].as_str().unwrap_or_default().to_string();
        assert!(k.starts_with("v1.32.4") || k.starts_with("v1.33.4"), "{what}: runs {k}");
        assert_eq!(c.localkubes("kubestrap").len(), 1, "{what}");
        let got = c.kubectl_ok(&KUBECTL, &["get", "configmap", "kept", "-o", "jsonpath={.data.n}"]);
        assert_eq!(got, "1", "{what}: the data did not survive");
    };
    for (phase, window) in [
        ("planned", 20_000),
        ("fetched", 5_000),
        ("stopped", 10_000),
        ("snapshotted", 5_000),
        ("swapped", 40_000),
        ("verified", 1), // right after the record: what follows is shorter than a timer
    ] {
        mx.phase(
            &format!("upgrade: {phase}"),
            n,
            kill(&format!("upgrade {phase}"), window, || c.env.cmd(&["upgrade", "--manifest", &m33]))
                .before(&UPGRADE_STEPS),
            |_| fresh(),
            recover,
        );
    }
    // Going back from a release that never gets ready (last: its newer
    // version number makes the one above a rollback from then on).
    let broken = crate::upgrade::release(&c.env, 33, 3, |s| wrap_standin(s, "broken", "exit 1"));
    let broken = broken.to_str().unwrap();
    let args = ["upgrade", "--manifest", broken, "--wait-timeout", "10s"];
    mx.phase(
        "upgrade: rolling back",
        n,
        kill("upgrade rolling back", 60_000, || c.env.cmd(&args)).before(&UPGRADE_STEPS),
        |_| fresh(),
        recover,
    );
    mx.done();
}

#[test]
fn kills_that_land_in_a_bundle_import_are_resumed() {
    let n = per_phase(4);
    let mut mx = Matrix::new("kill -9 during a bundle import", 0x6275);
    let c = Cluster::new();
    c.start("kubestrap");
    let bundle = c.env.path().join("b");
    c.env.ok(&["bundle", "create", "--manifest", c.m(), "--from-cache", "--out", bundle.to_str().unwrap()]);
    let user = Env::new();
    user.ok(&["trust", "add", c.env.keys.join("dev.pub").to_str().unwrap()]);
    let b = bundle.to_str().unwrap();
    mx.phase(
        "bundle import",
        n,
        kill("fetch", 150_000, || user.cmd(&["fetch", "--from-bundle", b])),
        |_| drop(user.ok(&["delete", "--all", "--purge"])),
        |what| {
            let out = user.run(&["fetch", "--from-bundle", b]);
            assert!(out.status.success(), "{what}: {}", user.report(&["fetch"], &out, "recovery import failed"));
            let verify = user.run(&["cache", "verify"]);
            assert!(verify.status.success(), "{what}: {}", user.report(&["cache", "verify"], &verify, "not clean"));
            assert!(user.partials().is_empty(), "{what}: partial downloads left: {:?}", user.partials());
        },
    );
    mx.done();
}

/// stop (and, for a VM, stop --shutdown) and delete of a running cluster
/// on a container or VM driver, each killed mid-way — armed where the
/// driver's own step begins (`savevm`, the ACPI power button, `docker
/// stop`) — and the next start resumes with the data; one container or
/// VM runs. A phase: (command, kill point, window in µs, the point where
/// its step ends).
type DriverPhase<'a> = (&'a str, &'a str, u64, &'a [&'a str]);

fn driver_matrix(mx: &mut Matrix, c: &Cluster, driver: &str, extra: &[&str], n: usize, phases: &[DriverPhase<'_>]) {
    let port = free_port().to_string();
    let mut args = vec!["start", "-p", "k", "--driver", driver, "--manifest", c.m(), "--port", &port];
    args.extend(extra);
    let args = &args;
    c.env.ok(args);
    let ctx = ["--context", "kubestrap-k"];
    let kubectl = |a: &[&str]| c.kubectl_ok(&KUBECTL, &[&ctx[..], a].concat());
    kubectl(&["create", "configmap", "kept", "--from-literal=n=1"]);
    let exists = || {
        let dir = c.env.home.join("profiles/k");
        dir.join("config.toml").exists() && !dir.join("deleting").exists()
    };
    let recover = |what: &str, kept: bool| {
        let out = c.env.run(args);
        assert!(out.status.success(), "{what}: {}", c.env.report(args, &out, "recovery start failed"));
        let (code, st) = c.status("k");
        assert_eq!(code, 0, "{what}: {st}");
        kubectl(&["get", "ns"]);
        if kept {
            assert_eq!(kubectl(&["get", "configmap", "kept", "-o", "jsonpath={.data.n}"]), "1", "{what}: data lost");
        } else {
            kubectl(&["create", "configmap", "kept", "--from-literal=n=1"]);
        }
        let verify = c.env.run(&["cache", "verify"]);
        assert!(verify.status.success(), "{what}: {}", c.env.report(&["cache", "verify"], &verify, "not clean"));
    };
    for (cmd, point, window, later) in phases {
        let cmd: Vec<&str> = cmd.split(' ').collect();
        mx.phase(
            &format!("{driver}: {} (in {point})", cmd.join(" ")),
            n,
            kill(point, *window, || c.env.cmd(&[&cmd[..], &["-p", "k"]].concat())).before(later),
            |_| {},
            |what| {
                let kept = exists();
                recover(what, kept)
            },
        );
    }
}

#[test]
fn kills_that_land_in_stop_and_delete_of_a_container() {
    if !need("docker", docker_engine) {
        return;
    }
    let n = per_phase(4);
    let mut mx = Matrix::new("kill -9 per phase, docker driver", 0x646b);
    let rootfs = docker_rootfs();
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs)]);
        s.args.push("--stop-delay-ms=600".into());
    });
    let phases: [DriverPhase; 2] =
        [("stop", "container stop", 700_000, &["container stopped"]), ("delete", "delete", 1_000_000, &[])];
    driver_matrix(&mut mx, &c, "docker", &[], n, &phases);
    mx.done();
}

#[test]
fn kills_that_land_in_suspend_shutdown_and_delete_of_a_vm() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let n = per_phase(2);
    let mut mx = Matrix::new("kill -9 per phase, qemu driver", 0x716d);
    let vm = vm_artifacts();
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Qemu(vm)]);
    });
    let phases: [DriverPhase; 3] = [
        ("stop", "savevm", 1_000_000, &["savevm done"]),
        ("stop --shutdown", "powerdown", 800_000, &[]),
        ("delete", "delete", 1_000_000, &[]),
    ];
    driver_matrix(&mut mx, &c, "qemu", &["--accel", "tcg", "--memory", "512", "--cpus", "1"], n, &phases);
    mx.done();
}
