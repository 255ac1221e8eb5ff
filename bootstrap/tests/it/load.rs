//! Load on the container and VM drivers: clusters of both started at once,
//! `status` of all of them called concurrently, two `start`s of one profile
//! at once, an engine or a VM that hangs, and everything deleted at once —
//! with nothing left in the engine, in the process table or on disk.
//!
//! Counts: 4 containers, 2 VMs, 100 concurrent `status` calls (what CI
//! runs); KUBESTRAP_LOAD=full doubles the containers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

fn full() -> bool {
    std::env::var("KUBESTRAP_LOAD").is_ok_and(|v| v == "full")
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the engine holds of this home's profiles named `load-*`:
/// containers, volumes and networks.
fn in_engine(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["ps", "-a", "--format", "{{.Names}}"][..],
        &["volume", "ls", "--format", "{{.Name}}"][..],
        &["network", "ls", "--format", "{{.Name}}"][..],
    ] {
        out.extend(
            docker(args).lines().filter(|l| l.starts_with("kubestrap-load-") && l.contains(id)).map(str::to_string),
        );
    }
    out
}

/// Sets its flag when dropped, a panic included (so a sampling thread
/// stops and the test's clean-up runs).
struct Raise<'a>(&'a AtomicBool);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Processes carrying the marker of the profile whose run directory is
/// `run` (qemu and its helpers, the monitor).
fn marked(run: &Path) -> Vec<(i32, String)> {
    let want = format!("KUBESTRAP_RUN_DIR={}", run.display());
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if alive(pid) && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

fn qemus(run: &Path) -> Vec<i32> {
    marked(run).into_iter().filter(|(_, cmd)| cmd.contains("-accel")).map(|(pid, _)| pid).collect()
}

/// The resident memory of every kubestrap process (commands and monitors),
/// in KiB, and how many there are.
fn kubestrap_rss_kib() -> (u64, u64) {
    let me = fs::canonicalize(KUBESTRAP).unwrap();
    let (mut sum, mut n) = (0, 0);
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == me) {
            n += 1;
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            sum += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (sum, n)
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn containers_and_vms_at_once_answer_under_load_and_leave_nothing() {
    if !need("docker", docker_engine) || !need("qemu", qemu_installed) {
        return;
    }
    let (rootfs, vm) = (docker_rootfs(), vm_artifacts());
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs), TestDriver::Qemu(vm)]);
    });
    let containers: Vec<String> = (1..=if full() { 8 } else { 4 }).map(|i| format!("load-d{i}")).collect();
    let vms: Vec<String> = (1..=2).map(|i| format!("load-v{i}")).collect();
    let all: Vec<&String> = containers.iter().chain(&vms).collect();
    let statuses = 100;

    // Peak memory of kubestrap's own processes while all this runs.
    let (done, peak, most) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let (kib, n) = kubestrap_rss_kib();
                if peak.fetch_max(kib, Ordering::Relaxed) < kib {
                    most.store(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        let _stop_sampling = Raise(&done);
        // Every cluster started at once.
        let t = Instant::now();
        std::thread::scope(|s| {
            for p in &all {
                let port = free_port().to_string();
                let c = &c;
                s.spawn(move || {
                    let mut args = vec!["start", "-p", p, "--manifest", c.m(), "--port", &port];
                    if p.starts_with("load-v") {
                        args.extend(["--driver", "qemu", "--accel", "tcg", "--memory", "512", "--cpus", "1"]);
                    } else {
                        args.extend(["--driver", "docker"]);
                    }
                    ok(&c.env.run(&args), &format!("start -p {p}"));
                });
            }
        });
        let started = t.elapsed();
        let runs: Vec<PathBuf> = all.iter().map(|p| c.run_dir(p)).collect();
        let run_of = |p: &String| runs[all.iter().position(|q| *q == p).unwrap()].clone();

        // `status` of all of them, concurrently: every call answers, all up.
        let t = Instant::now();
        std::thread::scope(|s| {
            for i in 0..statuses {
                let (c, p) = (&c, all[i % all.len()]);
                s.spawn(move || {
                    let out = c.env.run(&["status", "-p", p, "-o", "json"]);
                    ok(&out, &format!("status -p {p}"));
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    assert_eq!(v["apiserver"], "Running", "{v}");
                });
            }
        });
        let answered = t.elapsed();

        // Two starts of one profile at once, running and from nothing
        // (deleted first: both race to create it): one container, one VM.
        for p in [&containers[0], &vms[0]] {
            for fresh in [false, true] {
                if fresh {
                    ok(&c.env.run(&["delete", "-p", p]), &format!("delete -p {p}"));
                }
                let port = free_port().to_string();
                let mut args = vec!["start", "-p", p, "--manifest", c.m(), "--port", &port];
                if p.starts_with("load-v") {
                    args.extend(["--driver", "qemu", "--accel", "tcg", "--memory", "512", "--cpus", "1"]);
                } else {
                    args.extend(["--driver", "docker"]);
                }
                let args = &args;
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        s.spawn(|| ok(&c.env.run(args), &format!("two starts -p {p} (fresh: {fresh})")));
                    }
                });
            }
        }
        let id = c.env.home_id();
        let named = docker(&["ps", "-a", "--format", "{{.Names}}"]);
        let ours: Vec<&str> = named.lines().filter(|n| n.contains(&id)).collect();
        assert_eq!(ours.len(), containers.len(), "one container per profile: {ours:?}");
        assert!(ours.contains(&format!("kubestrap-{}-{id}", containers[0]).as_str()), "{ours:?}");
        let v1 = run_of(&vms[0]);
        assert_eq!(qemus(&v1).len(), 1, "one qemu for {}: {:?}", vms[0], marked(&v1));

        // An engine that hangs on a container (paused) and a VM that hangs
        // (qemu stopped): status answers within its deadline, and says the
        // apiserver does not.
        let paused = format!("kubestrap-{}-{id}", containers[1]);
        let paused = paused.as_str();
        assert!(Command::new("docker").args(["pause", paused]).output().unwrap().status.success());
        let frozen = qemus(&run_of(&vms[1]));
        for pid in &frozen {
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        for p in [&containers[1], &vms[1]] {
            let t = Instant::now();
            let out = c.env.run(&["status", "-p", p, "-o", "json"]);
            let took = t.elapsed();
            // Its deadline is 5 s for the apiserver (and each engine call's
            // own): a second more for the rest.
            assert!(took < Duration::from_secs(7), "status -p {p} took {took:?}");
            assert_ne!(out.status.code(), Some(0), "a hung {p} reads as ready");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_ne!(v["apiserver"], "Running", "{v}");
            println!("status of a hung {p}: {took:?}, exit {:?}", out.status.code());
        }
        assert!(Command::new("docker").args(["unpause", paused]).output().unwrap().status.success());
        for pid in &frozen {
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }

        // Everything deleted at once.
        let t = Instant::now();
        std::thread::scope(|s| {
            for p in &all {
                let c = &c;
                s.spawn(move || ok(&c.env.run(&["delete", "-p", p]), &format!("delete -p {p}")));
            }
        });
        let deleted = t.elapsed();
        done.store(true, Ordering::Relaxed);
        for (p, run) in all.iter().zip(&runs) {
            assert!(marked(run).is_empty(), "processes of {p} left: {:?}", marked(run));
        }
        println!(
            "load: {} containers + {} VMs started at once in {started:?}; {statuses} concurrent status in {answered:?}; deleted at once in {deleted:?}; peak RSS of kubestrap processes {} MiB ({} processes then)",
            containers.len(),
            vms.len(),
            peak.load(Ordering::Relaxed) / 1024,
            most.load(Ordering::Relaxed)
        );
    });

    let left = in_engine(&c.env.home_id());
    assert!(left.is_empty(), "left in the engine: {left:?}");
    for p in &all {
        assert!(!c.env.home.join("profiles").join(p).exists(), "{p}'s files left");
    }
}
