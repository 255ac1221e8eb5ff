//! k3s as localkube, through the release channel's own run section
//! (`manifests/channel/k3s-run.toml`) run by the stand-in in k3s's shape: it
//! finds kubestrap's CAs where k3s looks for a custom CA, issues its own
//! serving certificate from them as k3s does, and the kubeconfig kubestrap
//! writes works unchanged. Then the images directory: the release's air-gap
//! archive placed by `start`, a user's archives by `image load`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn public_key_of(file: &Path) -> String {
    let f = file.to_str().unwrap();
    let (ok, out) = if f.ends_with(".crt") {
        openssl(&["x509", "-noout", "-pubkey", "-in", f])
    } else {
        openssl(&["pkey", "-pubout", "-in", f])
    };
    assert!(ok, "{f}: {out}");
    out
}

/// An OCI image layout tarball (oci-layout, index.json, blobs).
fn oci_layout_tar(payload: &[u8]) -> Vec<u8> {
    let layer = sha256_hex(payload);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{layer}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"example.test/tools:2"}}}}]}}"#,
        payload.len()
    );
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.as_bytes()),
        (&format!("blobs/sha256/{layer}"), payload),
    ])
}

/// Files in the images directory a localkube would import (not hidden).
fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| !n.starts_with('.'));
    v.sort();
    v
}

#[test]
fn k3s_run_section_brings_up_a_cluster_on_kubestraps_pki_with_images() {
    let scratch = tempfile::tempdir().unwrap();
    let airgap = file_artifact(scratch.path(), "k3s-airgap-images-amd64.tar.zst", &pseudo_random(300_000, 7));
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    let c = Cluster::with(|s| {
        k3s_standin(s, &k3s_run(), &[]);
        s.images = Some((vec![airgap.path_url()], airgap.clone(), "k3s-airgap-images-amd64.tar.zst".into()));
    });
    let out = c.start("k3");
    assert!(out.contains("images placed"), "{out}");
    let ns = c.kubectl_ok(&KUBECTL, &["get", "ns", "-o", "name"]);
    assert!(ns.contains("namespace/default"), "{ns}");

    let profile = c.env.home.join("profiles/k3");
    let (pki, tls) = (profile.join("pki"), profile.join("data/server/tls"));
    let p = |d: &Path, f: &str| d.join(f).to_str().unwrap().to_string();
    // The kubeconfig's client certificate is trusted by k3s's client CA; the
    // certificate it served was issued by its server CA; both are kubestrap's.
    let (ok, why) = openssl(&["verify", "-CAfile", &p(&tls, "client-ca.crt"), &p(&pki, "admin.crt")]);
    assert!(ok, "admin.crt against client-ca.crt: {why}");
    let (ok, why) = openssl(&["verify", "-CAfile", &p(&tls, "server-ca.crt"), &p(&tls, "serving-kube-apiserver.crt")]);
    assert!(ok, "the served certificate against server-ca.crt: {why}");
    assert_eq!(fs::read(tls.join("server-ca.crt")).unwrap(), fs::read(pki.join("ca.crt")).unwrap());
    // The request-header CA is a CA of its own: a client certificate of the
    // cluster CA cannot pose as the front proxy.
    let (ok, _) = openssl(&["verify", "-CAfile", &p(&tls, "request-header-ca.crt"), &p(&pki, "admin.crt")]);
    assert!(!ok, "admin.crt must not verify against the request-header CA");
    for (crt, key) in [
        ("server-ca.crt", "server-ca.key"),
        ("client-ca.crt", "client-ca.key"),
        ("request-header-ca.crt", "request-header-ca.key"),
        ("etcd/peer-ca.crt", "etcd/peer-ca.key"),
        ("etcd/server-ca.crt", "etcd/server-ca.key"),
    ] {
        assert_eq!(public_key_of(&tls.join(crt)), public_key_of(&tls.join(key)), "{crt} and {key} are a pair");
        let (ok, why) = openssl(&["verify", "-CAfile", &p(&tls, crt), &p(&tls, crt)]);
        assert!(ok, "{crt} is a self-signed CA: {why}");
        let mode = fs::metadata(tls.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    assert_eq!(fs::read(tls.join("service.key")).unwrap(), fs::read(pki.join("sa.key")).unwrap());
    assert_eq!(fs::metadata(tls.join("service.key")).unwrap().permissions().mode() & 0o777, 0o600);

    // The release's image archive, byte for byte, before localkube started.
    let images = profile.join("data/agent/images");
    assert_eq!(fs::read(images.join("k3s-airgap-images-amd64.tar.zst")).unwrap(), airgap.bytes());
    let log = c.env.ok(&["logs", "-p", "k3", "--lines", "200"]);
    assert!(log.contains("image archive k3s-airgap-images-amd64.tar.zst"), "{log}");

    // A user's archives: a docker-archive and an OCI layout (zstd), placed
    // byte-identical and named by their sha256.
    let docker = image_archive(scratch.path());
    let oci = scratch.path().join("tools.oci.tar.zst");
    fs::write(&oci, zstd::encode_all(&oci_layout_tar(&pseudo_random(4096, 3))[..], 3).unwrap()).unwrap();
    let out = c.env.ok(&["image", "load", "-p", "k3", docker.to_str().unwrap(), oci.to_str().unwrap()]);
    assert!(out.contains("kubestrap-test/app:") && out.contains("example.test/tools:2"), "{out}");
    let (docker_sha, _) = sha256_file(&docker);
    let (oci_sha, _) = sha256_file(&oci);
    assert_eq!(fs::read(images.join(format!("{docker_sha}.tar"))).unwrap(), fs::read(&docker).unwrap());
    assert_eq!(fs::read(images.join(format!("{oci_sha}.tar.zst"))).unwrap(), fs::read(&oci).unwrap());
    let again = c.env.ok(&["image", "load", "-p", "k3", docker.to_str().unwrap()]);
    assert!(again.contains("already loaded"), "{again}");

    // Anything else is refused, and nothing of it is left.
    let junk = scratch.path().join("notes.tar");
    fs::write(&junk, tar_of(&[("readme.txt", b"not an image")])).unwrap();
    let before = fs::read_dir(&images).unwrap().count();
    let err = c.env.fail(&["image", "load", "-p", "k3", junk.to_str().unwrap()], Code::Usage);
    assert!(err.contains("notes.tar") && err.contains("not a container image archive"), "{err}");
    assert_eq!(fs::read_dir(&images).unwrap().count(), before, "a refused archive leaves nothing");

    let listed = json_lines(&c.env.ok(&["image", "list", "-p", "k3", "-o", "json"]));
    let mut rows: Vec<(String, String)> =
        listed.iter().map(|v| (v["origin"].as_str().unwrap().into(), v["format"].as_str().unwrap().into())).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("release".to_string(), "release".to_string()),
            ("user".into(), "docker-archive".into()),
            ("user".into(), "oci-layout".into())
        ]
    );

    // Across stop/start: the release archive is kept (not copied again), a
    // damaged one is replaced, the user's stay.
    c.env.ok(&["stop", "-p", "k3"]);
    flip_byte(&images.join("k3s-airgap-images-amd64.tar.zst"), 100);
    let port = free_port().to_string();
    let out = c.env.ok(&["start", "-p", "k3", "--manifest", c.m(), "--port", &port]);
    assert!(out.contains("copied k3s-airgap-images-amd64.tar.zst"), "{out}");
    assert_eq!(fs::read(images.join("k3s-airgap-images-amd64.tar.zst")).unwrap(), airgap.bytes());
    assert_eq!(visible(&images).len(), 3, "{:?}", visible(&images));
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.env.ok(&["delete", "-p", "k3"]);
}

#[test]
fn image_load_killed_midway_leaves_nothing_half_written() {
    let c = Cluster::with(|s| s.images_dir = Some("{data}/agent/images".into()));
    c.start("ik");
    let scratch = c.env.scratch("archives");
    let big = scratch.join("big.oci.tar");
    fs::write(&big, oci_layout_tar(&pseudo_random(48 << 20, 9))).unwrap();
    let (sha, _) = sha256_file(&big);
    let images = c.env.home.join("profiles/ik/data/agent/images");
    let mut seen_partial = 0;
    for i in 0..6u64 {
        let mut child = c.spawn(&["image", "load", "-p", "ik", big.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(40 + 45 * i));
        kill9(&mut child);
        // What a localkube would import is either nothing or the whole file.
        for name in visible(&images) {
            assert_eq!(name, format!("{sha}.tar"), "only the finished archive is ever visible");
            assert_eq!(sha256_file(&images.join(&name)).0, sha, "{name} is whole");
        }
        seen_partial += fs::read_dir(&images).map(|rd| rd.count()).unwrap_or(0) - visible(&images).len();
    }
    eprintln!("hidden partial files seen after kills: {seen_partial}");
    // The next command sweeps what a killed one left.
    c.env.ok(&["image", "load", "-p", "ik", big.to_str().unwrap()]);
    let all: Vec<String> =
        fs::read_dir(&images).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    assert_eq!(all, [format!("{sha}.tar")], "hidden temp files are swept ({seen_partial} were seen)");
    let listed = json_lines(&c.env.ok(&["image", "list", "-p", "ik", "-o", "json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["intact"], true);
    c.env.ok(&["delete", "-p", "ik"]);
}

#[test]
fn a_release_without_an_images_dir_says_so() {
    let c = Cluster::new();
    c.start("noimg");
    let f = c.env.scratch("x").join("a.tar");
    fs::write(&f, tar_of(&[("manifest.json", b"[]")])).unwrap();
    let err = c.env.fail(&["image", "load", "-p", "noimg", f.to_str().unwrap()], Code::Usage);
    assert!(err.contains("names no images directory"), "{err}");
    c.env.ok(&["delete", "-p", "noimg"]);
}

#[test]
fn k3s_on_the_host_without_root_is_refused_before_anything_is_fetched() {
    // Drops root with setpriv (util-linux): root is needed to drop it.
    if !need("root", is_root) {
        return;
    }
    let setpriv = which("setpriv").expect("setpriv (util-linux) is installed");
    let c = Cluster::with(|s| s.run_from(&k3s_run()));
    // A world-readable manifest and artifacts, and a home for uid 65534.
    for dir in [c.env.path().to_path_buf(), c.env.keys.clone()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let home = c.env.scratch("nobody-home");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(&setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_kubestrap")])
            .args(args)
            .env("KUBESTRAP_HOME", home.join("ks"))
            .env("KUBECONFIG", home.join("kubeconfig"))
            .env("HOME", &home)
            .env("NO_COLOR", "1");
        cmd.output().unwrap()
    };
    let pubkey = c.env.keys.join("dev.pub");
    fs::set_permissions(&pubkey, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(as_nobody(&["trust", "add", pubkey.to_str().unwrap()]).status.success());
    let out = as_nobody(&["start", "--manifest", c.m()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), exit(Code::Unfit), "{err}");
    assert!(err.contains("needs root") && err.contains("--driver qemu") && err.contains("sudo -E"), "{err}");
    assert!(!home.join("ks/blobs/sha256").exists() || fs::read_dir(home.join("ks/blobs/sha256")).unwrap().count() == 0);
}

/// A cluster whose pods cannot run (CoreDNS never Available: no images
/// there, none pullable) is not reported ready; `--no-wait-system` takes
/// the apiserver and the node alone.
#[test]
fn a_cluster_whose_coredns_never_runs_is_not_ready() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    let mut run = k3s_run();
    run.args.push("--standin-unavailable=coredns".parse().unwrap());
    let c = Cluster::with(|s| k3s_standin(s, &run, &[]));
    let port = free_port().to_string();
    let start = ["start", "-p", "nodns", "--manifest", c.m(), "--port", &port, "--wait-timeout", "5s"];
    let err = c.env.fail(&start, Code::NotReady);
    assert!(err.contains("system workloads (kube-system/coredns"), "{err}");
    assert!(err.contains("not Available") && err.contains("MinimumReplicasUnavailable"), "{err}");
    let mut skip = start.to_vec();
    skip.push("--no-wait-system");
    let out = c.env.ok(&skip);
    assert!(!out.contains("system workloads available"), "{out}");
    c.env.ok(&["delete", "-p", "nodns"]);

    // Where it runs, start says so.
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    let out = c.env.ok(&["start", "-p", "dns", "--manifest", c.m(), "--port", &port]);
    assert!(out.contains("system workloads available: kube-system/coredns"), "{out}");
    c.env.ok(&["delete", "-p", "dns"]);
}
