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
            let profile_left = c.env.home.join("profiles/kubestrap/config.toml").exists();
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
