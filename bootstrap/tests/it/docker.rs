//! The docker driver against the real Docker engine on this machine: the
//! stand-in localkube in a container of the base rootfs `ci/docker/build.sh`
//! makes, imported under a content-derived tag (no registry). Without an
//! engine they fail, unless KUBESTRAP_TEST_SKIP=docker.

use std::fs;
use std::process::Command;

use crate::scenarios::{OnDriver, upgrade_and_rollback};
use crate::support::*;

pub(crate) fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn docker_cluster() -> Cluster {
    let rootfs = docker_rootfs();
    Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs)]);
    })
}

/// Containers, volumes and images of kubestrap's (by name).
fn ours() -> (String, String, String) {
    let c = docker(&["ps", "-a", "--filter", "label=dev.kubestrap.profile", "--format", "{{.Names}}"]).1;
    let v = docker(&["volume", "ls", "--format", "{{.Name}}"]).1;
    let i = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).1;
    (c, v, i)
}

fn configmap(c: &Cluster, name: &str) -> String {
    c.kubectl_ok(&KUBECTL, &["get", "configmap", name, "-o", "jsonpath={.data.k}"])
}

/// The node's container carries what pulls need (the CA bundle, the
/// caller's proxies) and keeps k3s's node password on its volume, so a node
/// made again (new settings, an upgrade) is still the node the server knows.
#[test]
fn a_node_container_has_the_ca_bundle_the_proxies_and_keeps_its_node_password() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = docker_cluster();
    let port = free_port().to_string();
    let args = ["start", "-p", "np", "--driver", "docker", "--manifest", c.m(), "--port", &port];
    let out = c
        .env
        .cmd(&args)
        .env("HTTPS_PROXY", "http://user:s3cret@proxy.invalid:3128")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", c.env.report(&args, &out, "start failed"));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!shown.contains("s3cret"), "a proxy password was shown: {shown}");
    let name = docker(&["ps", "--filter", "label=dev.kubestrap.profile=np", "--format", "{{.Names}}"]).1;
    let name = name.trim().to_string();
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &name]).1;
    assert!(env.contains("HTTPS_PROXY=http://user:s3cret@proxy.invalid:3128") && env.contains("NO_PROXY="), "{env}");
    let (ok, ca) =
        docker(&["exec", &name, "sh", "-c", "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt"]);
    assert!(ok && ca.trim().parse::<u32>().unwrap_or(0) > 50, "the node has no CA bundle: {ca}");

    // k3s's node password, then the container made again from scratch.
    assert!(docker(&["exec", &name, "sh", "-c", "echo p4ss > /etc/rancher/node/password"]).0);
    c.env.ok(&["stop", "-p", "np"]);
    assert!(docker(&["rm", "-f", &name]).0);
    c.env.ok(&["start", "-p", "np", "--manifest", c.m()]);
    let (ok, kept) = docker(&["exec", &name, "cat", "/etc/rancher/node/password"]);
    assert!(ok && kept == "p4ss\n", "the node password did not survive a new container: {kept}");
    c.env.ok(&["delete", "-p", "np"]);
}

#[test]
fn docker_is_chosen_stops_keep_the_volume_and_delete_leaves_nothing_of_ours() {
    if !need("docker", docker_engine) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = docker_rootfs_of_its_own(scratch.path(), "chosen-and-deleted");
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs.clone())]);
    });
    // Someone else's container on the same engine, left alone throughout.
    let bystander = rootful_docker().unwrap().bystander(c.env.path());

    // No --driver: docker, because an engine answers and the release has a rootfs.
    let port = free_port().to_string();
    let out = c.env.ok(&["start", "-p", "dk", "--manifest", c.m(), "--port", &port]);
    assert!(
        out.contains("driver chosen") && out.contains("docker: Docker ") && out.contains(" answers at unix://"),
        "{out}"
    );
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=k=v"]);
    let (code, st) = c.status("dk");
    assert_eq!((code, st["driver"].as_str()), (0, Some("docker")), "{st}");
    let (containers, volumes, images) = ours();
    let name = containers.lines().find(|l| l.starts_with("kubestrap-dk-")).expect("our container").to_string();
    assert!(volumes.contains(&format!("{name}-data")), "{volumes}");
    assert!(images.contains(&format!("kubestrap-rootfs:{}", rootfs.sha256)), "content-derived tag: {images}");
    let labels = docker(&["inspect", "--format", "{{json .Config.Labels}} {{json .HostConfig.PortBindings}}", &name]).1;
    assert!(labels.contains("\"dev.kubestrap.profile\":\"dk\"") && labels.contains("127.0.0.1"), "{labels}");
    assert!(labels.contains("\"dev.kubestrap.release\":\"test-"), "the release is labelled: {labels}");

    // stop: container stopped, volume kept; start: the data is there.
    c.env.ok(&["stop", "-p", "dk"]);
    let state = docker(&["inspect", "--format", "{{.State.Status}}", &name]).1;
    assert_eq!(state.trim(), "exited");
    let (code, st) = c.status("dk");
    assert_eq!((code, st["localkube"].as_str()), (7, Some("Stopped")), "{st}");
    c.env.ok(&["start", "-p", "dk"]);
    assert_eq!(configmap(&c, "kept"), "v");
    let logs = c.env.ok(&["logs", "-p", "dk", "-n", "50"]);
    assert!(logs.contains("standin"), "{logs}");
    c.env.ok(&["kubectl", "-p", "dk", "--", "get", "configmap", "kept"]);

    // A container killed behind kubestrap's back reads as crashed and recovers.
    assert!(docker(&["kill", &name]).0);
    let (code, st) = c.status("dk");
    assert_eq!(st["localkube"], "Crashed", "{st}");
    assert_eq!((code, st["host"].as_str()), (7, Some("Stopped")), "the container is the host: {st}");
    c.env.ok(&["start", "-p", "dk"]);
    assert_eq!(configmap(&c, "kept"), "v");

    // delete: no container, volume or image of ours; the bystander stays.
    c.env.ok(&["delete", "-p", "dk"]);
    let (containers, volumes, images) = ours();
    assert!(!containers.contains("kubestrap-dk-"), "{containers}");
    assert!(!volumes.contains(&format!("{name}-data")), "{volumes}");
    // The image goes with its last container (a rootfs of this test's own:
    // no test beside it uses that image).
    let tag = format!("kubestrap-rootfs:{}", rootfs.sha256);
    assert!(!images.contains(&tag), "{images}");
    assert!(docker(&["inspect", &bystander]).0, "someone else's container is untouched");
    docker(&["rm", "-f", &bystander]);
    docker(&["image", "rm", &format!("{bystander}:1")]);
}

#[test]
fn two_docker_profiles_run_at_once_and_an_unreachable_engine_is_said_clearly() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = docker_cluster();
    for p in ["da", "db"] {
        let port = free_port().to_string();
        c.env.ok(&["start", "-p", p, "--driver", "docker", "--manifest", c.m(), "--port", &port]);
        c.env.ok(&["kubectl", "-p", p, "--", "create", "configmap", &format!("own-{p}"), "--from-literal=k=v"]);
    }
    let out = c.env.ok(&["kubectl", "-p", "da", "--", "get", "configmap", "-o", "name"]);
    assert!(out.contains("own-da") && !out.contains("own-db"), "{out}");

    // Pointed at another engine than the one the profiles live on: refused
    // before anything is changed, both engines named.
    let cfg = fs::read(c.env.home.join("profiles/da/config.toml")).unwrap();
    let elsewhere =
        |args: &[&str]| c.env.cmd(args).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap();
    for cmd in [&["start", "-p", "da"][..], &["stop", "-p", "da"], &["status", "-p", "da"], &["delete", "-p", "da"]] {
        let out = elsewhere(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), exit(Code::Unfit), "{cmd:?}: {err}");
        assert!(
            err.contains("lives on the engine at unix:///var/run/docker.sock (Docker ")
                && err.contains("pointed at unix:///nonexistent/docker.sock (DOCKER_HOST)"),
            "{cmd:?}: {err}"
        );
    }
    assert_eq!(fs::read(c.env.home.join("profiles/da/config.toml")).unwrap(), cfg);
    let (code, _) = c.status("da");
    assert_eq!(code, 0);

    // The profile's own engine out of reach (gone from where it was): a
    // clear error naming it; delete refuses (nothing is lost) and says how
    // to go on; --force deletes the profile's files and names what is left
    // where.
    let record = c.env.home.join("profiles/db/container/engine.toml");
    let kept = fs::read_to_string(&record).unwrap();
    fs::write(&record, kept.replace("unix:///var/run/docker.sock", "unix:///nonexistent/docker.sock")).unwrap();
    let err = c.env.fail(&["status", "-p", "db"], Code::Unfit);
    assert!(
        err.contains("cannot reach the engine at unix:///nonexistent/docker.sock (where the profile was created)"),
        "{err}"
    );
    c.env.fail(&["stop", "-p", "db"], Code::Unfit);
    let out = c.env.run(&["stop", "-p", "db", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("not stopped (--force)"), "{err}");
    assert!(err.contains("on the engine at unix:///nonexistent/docker.sock") && err.contains("kubestrap-db-"), "{err}");
    let out = c.env.run(&["delete", "-p", "db"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), exit(Code::Unfit), "{err}");
    assert!(err.contains("--force") && c.env.home.join("profiles/db/config.toml").is_file(), "{err}");
    let container = ours().0.lines().find(|l| l.starts_with("kubestrap-db-")).expect("db's container").to_string();
    let out = c.env.run(&["delete", "-p", "db", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&container) && err.contains(&format!("{container}-data")), "names what is left: {err}");
    assert!(err.contains("on the engine at unix:///nonexistent/docker.sock"), "says where: {err}");
    assert!(!c.env.home.join("profiles/db").exists());
    // What --force named as left is there, and goes by the commands it gave.
    assert!(docker(&["rm", "-f", &container]).0 && docker(&["volume", "rm", &format!("{container}-data")]).0);
    assert!(docker(&["network", "rm", &container]).0, "the profile's network was not left as said");
    c.env.ok(&["delete", "--all"]);
}

/// The archives under the container's images directory (its volume), as
/// the engine lists them.
fn placed_images(container: &str) -> Vec<String> {
    let out = Command::new("docker").args(["cp", &format!("{container}:/data/agent/images"), "-"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = tar::Archive::new(&out.stdout[..])
        .entries()
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let p = e.path().unwrap().into_owned();
            (e.header().entry_type().is_file()).then(|| p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_docker_cluster_upgrades_and_keeps_its_volume() {
    if !need("docker", docker_engine) {
        return;
    }
    let start = |c: &Cluster| {
        let port = free_port().to_string();
        c.env.ok(&["start", "--driver", "docker", "--manifest", c.m(), "--port", &port]);
    };
    let placed = |c: &Cluster| placed_images(&format!("kubestrap-kubestrap-{}", c.env.home_id()));
    upgrade_and_rollback(&OnDriver { driver: TestDriver::Docker(docker_rootfs()), start, placed_images: Some(placed) });
}

#[test]
fn a_bundle_starts_a_docker_cluster_with_no_download_and_no_registry() {
    if !need("docker", docker_engine) {
        return;
    }
    let rootfs = docker_rootfs();
    let maker = Env::new();
    // Every URL points at a host that does not answer: only the bundle and
    // the engine can be used.
    let dir = maker.scratch("artifacts");
    let lk = standin_artifact(&dir, "v1.33.1+standin");
    let kubectl = kubectl_artifact(&dir);
    for a in [&kubectl, &rootfs] {
        fs::copy(&a.path, dir.join(a.path.file_name().unwrap())).unwrap();
    }
    let nowhere = |a: &Artifact| vec![format!("http://127.0.0.1:9/{}", a.path.file_name().unwrap().to_string_lossy())];
    let mut spec = ManifestSpec::new(
        (nowhere(&kubectl), kubectl.clone(), "file".into()),
        (nowhere(&lk), lk.clone(), "tar.zst".into(), "localkube-standin".into()),
    );
    spec.run_on([TestDriver::Docker(Artifact { path: dir.join(rootfs.path.file_name().unwrap()), ..rootfs.clone() })]);
    let mut m = spec.manifest();
    if let Some(r) = m.component.rootfs.as_mut() {
        for a in r.target.values_mut() {
            a.urls = nowhere(&rootfs);
        }
    }
    let path = maker.write_signed_text(&m.to_toml(), "nowhere/manifest.toml");
    let bundle = maker.path().join("kubestrap-docker-bundle");
    maker.ok(&[
        "bundle",
        "create",
        "--manifest",
        path.to_str().unwrap(),
        "--driver",
        "docker",
        "--artifacts",
        dir.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);

    let user = Env::new();
    user.ok(&["trust", "add", maker.keys.join("dev.pub").to_str().unwrap()]);
    let port = free_port().to_string();
    let out = user.cmd_of(&bundle, &["start", "--driver", "docker", "--port", &port]).output().unwrap();
    let cleanup = || {
        let _ = user.cmd(&["delete", "--all"]).output();
    };
    if !out.status.success() {
        cleanup();
        panic!("{}", user.report(&["start", "--driver", "docker"], &out, "bundle start"));
    }
    let got = Command::new(&*KUBECTL)
        .args(["get", "ns", "default", "-o", "name"])
        .env("KUBECONFIG", &user.kubeconfig)
        .env("HOME", user.path())
        .output()
        .unwrap();
    cleanup();
    assert!(String::from_utf8_lossy(&got.stdout).contains("namespace/default"), "{got:?}");
    assert_eq!(user.partials(), Vec::<std::path::PathBuf>::new(), "nothing was downloaded");
}

#[test]
fn a_home_with_a_comma_a_lost_container_record_and_logs_follow() {
    if !need("docker", docker_engine) {
        return;
    }
    let mut c = docker_cluster();
    // A home whose path would split a `--mount` value if it were not quoted.
    c.env.home = c.env.path().join("a,b \"home\"");
    c.env.ok(&["trust", "add", c.env.keys.join("dev.pub").to_str().unwrap()]);
    let port = free_port().to_string();
    c.env.ok(&["start", "-p", "dc", "--driver", "docker", "--manifest", c.m(), "--port", &port]);
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=k=v"]);

    // `logs -f` carries what localkube logs from now on, stdout and stderr alike.
    let mut follow = c.env.cmd(&["logs", "-f", "-p", "dc"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let got = wait_until(std::time::Duration::from_secs(20), || {
        c.kubectl_ok(&KUBECTL, &["get", "configmap", "kept"]);
        String::from_utf8_lossy(&seen.lock().unwrap()).contains("/configmaps/kept")
    });
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(got, "logs -f showed: {}", String::from_utf8_lossy(&seen.lock().unwrap()));

    // The container's record lost (a kill -9 between `docker create` and
    // the record's rename): start replaces the container and keeps the data.
    let record = c.env.home.join("profiles/dc/container/created.toml");
    c.env.ok(&["stop", "-p", "dc"]);
    fs::remove_file(&record).unwrap();
    c.env.ok(&["start", "-p", "dc"]);
    assert_eq!(configmap(&c, "kept"), "v");

    // A damaged record and a damaged config: stop still stops the
    // container, and delete still removes container, volume and image.
    fs::write(&record, "not toml [").unwrap();
    fs::write(c.env.home.join("profiles/dc/config.toml"), b"\xff\xfe garbage").unwrap();
    c.env.ok(&["stop", "-p", "dc"]);
    let name = ours().0.lines().find(|l| l.starts_with("kubestrap-dc-")).expect("our container").to_string();
    assert_eq!(docker(&["inspect", "--format", "{{.State.Status}}", &name]).1.trim(), "exited");
    c.env.ok(&["delete", "-p", "dc"]);
    let (containers, volumes, _) = ours();
    let home_id = containers.lines().chain(volumes.lines()).find(|l| l.starts_with("kubestrap-dc-"));
    assert_eq!(home_id, None, "{containers}\n{volumes}");
}

#[test]
fn the_rootfs_builds_reproducibly() {
    if !need("docker", docker_engine) {
        return;
    }
    let rootfs = docker_rootfs();
    let out = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/docker/build.sh");
    let run = Command::new(&script).arg(out.path()).current_dir("/").output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let name = rootfs.path.file_name().unwrap().to_string_lossy().into_owned();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains(&format!("{name} {}", rootfs.sha256)), "{name} rebuilt with another sha256: {text}");
}
