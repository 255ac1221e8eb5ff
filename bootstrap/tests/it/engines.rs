//! The docker driver on the engines people run: rootful Docker, rootful
//! Podman (its Docker-compatible socket), rootless Podman and rootless
//! Docker, the rootless ones for a user of their own with kubestrap running
//! as that user (ci/engines.sh brings them up). The same lifecycle on each;
//! then two engines at once, a profile asked for on the engine it does not
//! live on, and a rootless engine with a release that needs real root.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::*;

/// Everything under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// What the engine holds with `id` (this home's suffix) in its name:
/// containers, volumes, networks.
fn ours_on(e: &TestEngine, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["ps", "-a", "--format", "{{.Names}}"][..],
        &["volume", "ls", "--format", "{{.Name}}"],
        &["network", "ls", "--format", "{{.Name}}"],
    ] {
        out.extend(e.docker(args).1.lines().filter(|l| l.contains(id)).map(str::to_string));
    }
    out
}

/// start → the real kubectl → stop → start (data kept) → upgrade →
/// rollback → delete (nothing of ours left on that engine, the bystander
/// untouched), kubestrap running as the engine's user.
fn lifecycle_on(e: &TestEngine) {
    let rootfs = docker_rootfs();
    let env = Env::on(e);
    let with = |s: &mut ManifestSpec| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs.clone())]);
    };
    let m32 = crate::upgrade::release(&env, 32, 1, with);
    let m33 = crate::upgrade::release(&env, 33, 2, with);
    let c = Cluster { env, manifest: m32 };
    let other = e.bystander(c.env.path());
    let id = c.env.home_id();
    let what = e.name;

    let port = free_port().to_string();
    let out = c.env.ok(&["start", "-p", "e2e", "--driver", "docker", "--manifest", c.m(), "--port", &port]);
    assert!(out.contains("Cluster \"e2e\" is up"), "{what}: {out}");
    let doctor = c.env.ok(&["doctor", "-p", "e2e"]);
    let kind = if e.podman { "Podman" } else { "Docker" };
    let rootless = if e.user.is_some() { "rootless " } else { "" };
    assert!(doctor.contains(&format!("{rootless}{kind} ")) && doctor.contains(&e.host), "{what}: {doctor}");
    let ctx = ["--context", "kubestrap-e2e"];
    let kubectl = |a: &[&str]| c.kubectl_ok(&KUBECTL, &[&ctx[..], a].concat());
    assert!(kubectl(&["get", "ns", "-o", "name"]).contains("namespace/default"), "{what}");
    kubectl(&["create", "configmap", "kept", "--from-literal=k=v"]);
    let kept = || kubectl(&["get", "configmap", "kept", "-o", "jsonpath={.data.k}"]);
    // Only on 127.0.0.1, on the engine's own network and volume.
    let name = format!("kubestrap-e2e-{id}");
    let ports = e.docker(&["inspect", "--format", "{{json .HostConfig.PortBindings}}", &name]).1;
    assert!(ports.contains("\"HostIp\":\"127.0.0.1\"") && ports.contains(&port), "{what}: {ports}");

    c.env.ok(&["stop", "-p", "e2e"]);
    let (code, st) = c.status("e2e");
    assert_eq!((code, st["host"].as_str()), (7, Some("Stopped")), "{what}: {st}");
    c.env.ok(&["start", "-p", "e2e"]);
    assert_eq!(kept(), "v", "{what}: the data after a stop");
    let logs = c.env.ok(&["logs", "-p", "e2e", "--lines", "50"]);
    assert!(logs.contains("standin"), "{what}: {logs}");

    c.env.ok(&["upgrade", "-p", "e2e", "--manifest", m33.to_str().unwrap()]);
    let (_, st) = c.status("e2e");
    assert!(st["kubernetes"].as_str().unwrap().starts_with("v1.33.4"), "{what}: {st}");
    assert_eq!(kept(), "v", "{what}: the data after the upgrade");
    // The snapshot is a file of the user's; the volume's files are too.
    let owner = e.user.as_ref().map_or(0, |u| u.uid);
    let snap = walk(&c.env.home.join("profiles/e2e/snapshots"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "tar"))
        .unwrap_or_else(|| panic!("{what}: no snapshot tar under the profile"));
    assert_eq!(fs::metadata(&snap).unwrap().uid(), owner, "{what}: {}", snap.display());
    let volume = format!("{name}-data");
    let mountpoint = e.docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]).1;
    let mountpoint = Path::new(mountpoint.trim());
    let files = walk(mountpoint);
    assert!(!files.is_empty(), "{what}: the volume at {} is empty", mountpoint.display());
    for f in &files {
        assert_eq!(fs::symlink_metadata(f).unwrap().uid(), owner, "{what}: {}", f.display());
    }

    c.env.ok(&["rollback", "-p", "e2e"]);
    let (_, st) = c.status("e2e");
    assert!(st["kubernetes"].as_str().unwrap().starts_with("v1.32.4"), "{what}: {st}");
    assert_eq!(kept(), "v", "{what}: the data after the rollback");

    c.env.ok(&["delete", "-p", "e2e"]);
    assert_eq!(ours_on(e, &id), Vec::<String>::new(), "{what}: left on the engine");
    assert!(!c.env.home.join("profiles/e2e").exists(), "{what}");
    assert!(e.docker(&["inspect", &other]).0, "{what}: someone else's container is untouched");
    e.docker(&["rm", "-f", &other]);
    e.docker(&["image", "rm", &format!("{other}:1")]);
}

#[test]
fn the_docker_driver_on_rootful_docker() {
    if let Some(e) = wanted("docker", rootful_docker) {
        lifecycle_on(&e);
    }
}

#[test]
fn the_docker_driver_on_rootful_podman() {
    if let Some(e) = wanted("podman", rootful_podman) {
        lifecycle_on(&e);
    }
}

#[test]
fn the_docker_driver_on_rootless_podman() {
    if let Some(e) = wanted("rootless", rootless_podman) {
        lifecycle_on(&e);
    }
}

#[test]
fn the_docker_driver_on_rootless_docker() {
    if let Some(e) = wanted("rootless", rootless_docker) {
        lifecycle_on(&e);
    }
}

#[test]
fn two_engines_at_once_and_a_profile_is_never_run_on_another() {
    let (Some(docker), Some(podman)) = (wanted("docker", rootful_docker), wanted("podman", rootful_podman)) else {
        return;
    };
    let rootfs = docker_rootfs();
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Docker(rootfs)]);
    });
    let on = |e: &TestEngine, args: &[&str]| c.env.cmd(args).env("DOCKER_HOST", &e.host).output().unwrap();
    for (p, e) in [("on-docker", &docker), ("on-podman", &podman)] {
        let port = free_port().to_string();
        let out = on(e, &["start", "-p", p, "--driver", "docker", "--manifest", c.m(), "--port", &port]);
        assert!(out.status.success(), "{p}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for p in ["on-docker", "on-podman"] {
        let (code, st) = c.status(p);
        assert_eq!(code, 0, "{p}: {st}");
    }
    let id = c.env.home_id();
    assert!(docker.docker(&["ps", "--format", "{{.Names}}"]).1.contains(&format!("kubestrap-on-docker-{id}")));
    assert!(podman.docker(&["ps", "--format", "{{.Names}}"]).1.contains(&format!("kubestrap-on-podman-{id}")));
    // Pointed at the other engine: refused before anything changes, both named.
    for args in [&["stop", "-p", "on-docker"][..], &["delete", "-p", "on-docker"], &["start", "-p", "on-docker"]] {
        let out = on(&podman, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), exit(Code::Unfit), "{args:?}: {err}");
        assert!(
            err.contains("profile \"on-docker\" lives on the engine at unix:///var/run/docker.sock (Docker ")
                && err.contains(&format!("pointed at {} (DOCKER_HOST)", podman.host)),
            "{args:?}: {err}"
        );
    }
    assert_eq!(c.status("on-docker").0, 0, "still running where it lives");
    // With nothing asked, each profile's own engine is used.
    c.env.ok(&["stop", "-p", "on-podman"]);
    c.env.ok(&["start", "-p", "on-podman"]);
    c.env.ok(&["delete", "--all"]);
    assert_eq!(ours_on(&docker, &id), Vec::<String>::new());
    assert_eq!(ours_on(&podman, &id), Vec::<String>::new());
}

#[test]
fn a_rootless_engine_refuses_a_release_that_needs_root_before_fetching() {
    let Some(e) = wanted("rootless", rootless_podman) else { return };
    let rootfs = docker_rootfs();
    let c = Cluster::on(&e, |s| {
        s.run_on([TestDriver::Docker(rootfs)]);
        s.needs_root = true;
    });
    let port = free_port().to_string();
    let err =
        c.env.fail(&["start", "-p", "k3", "--driver", "docker", "--manifest", c.m(), "--port", &port], Code::Unfit);
    assert!(err.contains("rootless Podman") && err.contains("needs-root"), "{err}");
    assert!(err.contains("rootful engine") && err.contains("--driver qemu"), "the alternative: {err}");
    assert!(c.env.blobs().is_empty() && c.env.partials().is_empty(), "nothing fetched");
    // Nothing asked: the user cannot use the machine's Docker socket, so
    // kubestrap finds the user's Podman by itself, and says so.
    let out = c.env.cmd(&["doctor", "--driver", "docker"]).env_remove("DOCKER_HOST").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rootless Podman 4.")
            && said.contains(
                "(rootless Podman's socket; no engine this user may use answers at unix:///var/run/docker.sock)"
            ),
        "{said}"
    );
}

#[test]
fn the_engine_is_the_docker_clis_current_context() {
    let Some(podman) = wanted("podman", rootful_podman) else { return };
    let rootfs = docker_rootfs();
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Docker(rootfs)]);
    });
    // A context made and chosen with the real CLI, in a config of the test's own.
    let config = c.env.scratch("docker-config");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("docker").args(args).env("DOCKER_CONFIG", &config).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    cli(&["context", "create", "ks-podman", "--docker", &format!("host={}", podman.host)]);
    cli(&["context", "use", "ks-podman"]);
    let port = free_port().to_string();
    let args = ["start", "-p", "ctx", "--driver", "docker", "--manifest", c.m(), "--port", &port];
    let out = c.env.cmd(&args).env("DOCKER_CONFIG", &config).env_remove("DOCKER_HOST").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = c.env.home_id();
    assert!(podman.docker(&["ps", "--format", "{{.Names}}"]).1.contains(&format!("kubestrap-ctx-{id}")), "on Podman");
    let doctor = c.env.cmd(&["doctor", "-p", "ctx"]).env("DOCKER_CONFIG", &config).output().unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(said.contains("Podman 4.") && said.contains("(docker context \"ks-podman\")"), "{said}");
    // Another context chosen later: the profile's engine is not that one.
    cli(&["context", "use", "default"]);
    cli(&["context", "create", "ks-other", "--docker", "host=unix:///var/run/docker.sock"]);
    cli(&["context", "use", "ks-other"]);
    let out = c.env.cmd(&["stop", "-p", "ctx"]).env("DOCKER_CONFIG", &config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), exit(Code::Unfit), "{err}");
    assert!(
        err.contains(&format!("lives on the engine at {} (Podman", podman.host))
            && err.contains("docker context \"ks-other\""),
        "{err}"
    );
    // DOCKER_CONTEXT names one for a single command, as for the CLI.
    let out = c
        .env
        .cmd(&["stop", "-p", "ctx"])
        .env("DOCKER_CONFIG", &config)
        .env("DOCKER_CONTEXT", "ks-podman")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = c
        .env
        .cmd(&["delete", "-p", "ctx"])
        .env("DOCKER_CONFIG", &config)
        .env("DOCKER_CONTEXT", "ks-podman")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ours_on(&podman, &id), Vec::<String>::new());
}
