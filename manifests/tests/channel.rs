//! The release channel data in `manifests/channel/`: the k3s run section
//! renders to exactly the command line and file placements k3s needs, and
//! the pins keep the channel's rules (sources, skew, no skipped minor, no
//! stand-in).

use std::fs;
use std::path::{Path, PathBuf};

use kubestrap_manifest::pins::Pins;
use kubestrap_manifest::{Manifest, Run, Vars};

fn channel() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("channel")
}

fn k3s_run() -> Run {
    let text = fs::read_to_string(channel().join("k3s-run.toml")).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("k3s-run.toml: {e}"))
}

fn vars(bind: &str, node_ip: &str) -> Vars {
    Vars {
        data: "/home/u/.local/share/kubestrap/profiles/dev/data".into(),
        pki: "/home/u/.local/share/kubestrap/profiles/dev/pki".into(),
        port: 41234,
        bind: bind.into(),
        profile: "dev".into(),
        node: "kubestrap-dev".into(),
        node_ip: node_ip.into(),
        component: "/home/u/.local/share/kubestrap/components/abc".into(),
        server: "198.18.4.5".into(),
        token: "/home/u/.local/share/kubestrap/profiles/dev/pki/join/token".into(),
        node_iface: "kubestrap-ab12c".into(),
        listen: "192.168.1.20".into(),
    }
}

#[test]
fn k3s_run_section_renders_the_exact_command_line() {
    let run = k3s_run();
    // The native driver: the node's own address is node, advertised and bind address.
    let v = vars("198.18.4.5", "198.18.4.5");
    let args: Vec<String> = run.args.iter().map(|a| a.render(&v)).collect();
    let d = "/home/u/.local/share/kubestrap/profiles/dev/data";
    assert_eq!(run.program, "k3s");
    assert_eq!(
        args,
        [
            "server".to_string(),
            format!("--data-dir={d}"),
            "--https-listen-port=41234".into(),
            "--bind-address=198.18.4.5".into(),
            "--node-ip=198.18.4.5".into(),
            "--advertise-address=198.18.4.5".into(),
            "--tls-san=198.18.4.5".into(),
            "--tls-san=localhost".into(),
            "--tls-san=192.168.1.20".into(),
            "--flannel-iface=kubestrap-ab12c".into(),
            "--node-name=kubestrap-dev".into(),
            "--token-file=/home/u/.local/share/kubestrap/profiles/dev/pki/join/token".into(),
            format!("--write-kubeconfig={d}/k3s.yaml"),
            "--write-kubeconfig-mode=600".into(),
            format!("--private-registry={d}/registries.yaml"),
            format!("--kube-apiserver-arg=token-auth-file={d}/server/kubestrap/token.csv"),
            "--disable=traefik,servicelb,metrics-server".into(),
        ]
    );
    // In a guest, it listens everywhere and advertises the guest's address.
    let guest: Vec<String> = run.args.iter().map(|a| a.render(&vars("0.0.0.0", "10.0.2.15"))).collect();
    for want in ["--bind-address=0.0.0.0", "--advertise-address=10.0.2.15", "--node-ip=10.0.2.15"] {
        assert!(guest.contains(&want.to_string()), "{want}: {guest:?}");
    }
    assert_eq!((run.ready.as_str(), run.stop_timeout_s, run.needs_root), ("/readyz", 60, true));
    assert_eq!(run.images_dir.as_ref().unwrap().render(&v), format!("{d}/agent/images"));
    // k3s's own config file, never the host's /etc/rancher/k3s/config.yaml.
    let env: Vec<(String, String)> = run.env.iter().map(|(k, t)| (k.clone(), t.render(&v))).collect();
    assert_eq!(env, [("K3S_CONFIG_FILE".to_string(), format!("{d}/config.yaml"))]);
    // ... which kubestrap makes (empty): k3s before v1.29.8 refuses to start
    // when the file K3S_CONFIG_FILE names is missing.
    let files: Vec<(String, &str)> = run.files.iter().map(|(p, c)| (p.render(&v), c.as_str())).collect();
    assert_eq!(files, [(format!("{d}/config.yaml"), "")]);
    // Ready means the server's node is Ready too, and CoreDNS runs.
    assert!(run.node_ready);
    assert_eq!(run.ready_deployments, ["kube-system/coredns"]);
}

#[test]
fn k3s_agent_section_joins_the_server_with_the_token() {
    let run = k3s_run();
    let agent = run.agent.as_ref().expect("k3s-run.toml has an agent section");
    let v = Vars { node: "kubestrap-dev-m02".into(), node_ip: "172.30.0.4".into(), ..vars("0.0.0.0", "x") };
    let v = Vars { server: "172.30.0.3".into(), port: 6443, data: "/data".into(), token: "/t".into(), ..v };
    let args: Vec<String> = agent.args.iter().map(|a| a.render(&v)).collect();
    assert_eq!(
        args,
        [
            "agent",
            "--server=https://172.30.0.3:6443",
            "--token-file=/t",
            "--node-name=kubestrap-dev-m02",
            "--node-ip=172.30.0.4",
            "--flannel-iface=kubestrap-ab12c",
            "--data-dir=/data",
            "--private-registry=/data/registries.yaml",
        ]
    );
    assert_eq!(agent.ready_timeout_s, 120);
}

#[test]
fn k3s_run_section_places_kubestraps_pki_where_k3s_expects_a_custom_ca() {
    let run = k3s_run();
    let v = vars("127.0.0.1", "127.0.0.1");
    let placed: Vec<(String, &str)> = run.pki_files.iter().map(|(dest, f)| (dest.render(&v), f.file_name())).collect();
    let tls = "/home/u/.local/share/kubestrap/profiles/dev/data/server/tls";
    let want: Vec<(String, &str)> = [
        ("client-ca.crt", "ca.crt"),
        ("client-ca.key", "ca.key"),
        ("etcd/peer-ca.crt", "etcd-ca.crt"),
        ("etcd/peer-ca.key", "etcd-ca.key"),
        ("etcd/server-ca.crt", "etcd-ca.crt"),
        ("etcd/server-ca.key", "etcd-ca.key"),
        ("request-header-ca.crt", "request-header-ca.crt"),
        ("request-header-ca.key", "request-header-ca.key"),
        ("server-ca.crt", "ca.crt"),
        ("server-ca.key", "ca.key"),
        ("service.key", "sa.key"),
    ]
    .iter()
    .map(|(at, f)| (format!("{tls}/{at}"), *f))
    .chain([(format!("{}/server/kubestrap/token.csv", tls.trim_end_matches("/server/tls")), "token.csv")])
    .collect();
    let mut placed = placed;
    placed.sort();
    let mut want = want;
    want.sort();
    assert_eq!(placed, want);
    // Every secret lands as a secret (0600).
    for (dest, f) in &run.pki_files {
        let secret = dest.as_str().ends_with(".key") || dest.as_str().ends_with("token.csv");
        assert_eq!(secret, f.is_secret(), "{}", dest.as_str());
    }
}

fn pins() -> Pins {
    Pins::load(&channel().join("pins.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pins_keep_the_channel_rules() {
    let pins = pins();
    assert!(pins.release.len() >= 4, "the channel covers several releases");
    let problems = pins.problems();
    assert!(problems.is_empty(), "{problems:#?}");
    // Consecutive releases never skip a minor: upgrade can walk the chain.
    let mut minors: Vec<u64> = pins.release.iter().map(|r| r.kubernetes.minor).collect();
    minors.sort();
    minors.dedup();
    for w in minors.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the channel skips from 1.{} to 1.{}", w[0], w[1]);
    }
    // Every release pins kubectl and k3s for linux on both architectures.
    for r in &pins.release {
        for t in ["linux-x86_64", "linux-aarch64"] {
            for c in ["kubectl", "localkube"] {
                assert!(
                    r.pin.iter().any(|p| p.component == c && p.target.to_string() == t),
                    "release {} pins no {c} for {t}",
                    r.kubernetes
                );
            }
        }
        assert_eq!(r.complete(), r.missing.is_empty() && r.pin.iter().all(|p| p.size.is_some()));
    }
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let good = fs::read_to_string(channel().join("pins.toml")).unwrap();
    for (edit, want) in [
        (good.replacen("kubectl = \"v1.29.6\"", "kubectl = \"v1.31.0\"", 1), "skew policy"),
        (good.replacen("k3s = \"v1.29.6+k3s1\"", "k3s = \"v1.29.7+k3s1\"", 1), "is not v1.29.6+k3sN"),
        (
            good.replacen("https://dl.k8s.io/release/v1.29.6/bin/linux/amd64", "https://evil.test/kubectl", 1),
            "not upstream",
        ),
        (
            good.replacen("sources = [\"HM cashapp/hermit-packages kubectl.hcl@0e4549be\"]", "sources = []", 1),
            "names the public file",
        ),
        (good.replacen("k3s = \"v1.29.6+k3s1\"", "k3s = \"v1.29.6+standin\"", 1), "names the test stand-in"),
        (good.replacen("kubectl = \"v1.29.6\"", "kubectl = \"v1.29.6\"\nmirror = 1", 1), "unknown field"),
    ] {
        let dir = std::env::temp_dir().join(format!("kubestrap-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pins.toml");
        fs::write(&path, &edit).unwrap();
        let found = match Pins::load(&path) {
            Ok(p) => p.problems().join("\n"),
            Err(e) => e.to_string(),
        };
        assert!(found.contains(want), "{want}: {found}");
    }
}

#[test]
fn release_channel_data_never_names_the_stand_in() {
    for e in fs::read_dir(channel()).unwrap().flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default().to_lowercase();
        assert!(!text.contains("standin") && !text.contains("stand-in"), "{} names the stand-in", e.path().display());
    }
}

/// Signed release manifests, when a release is complete enough to commit
/// one (`manifests/channel/stable/*.toml`), parse and pin exactly what
/// pins.toml pins.
#[test]
fn committed_release_manifests_match_the_pins() {
    let pins = pins();
    let dir = channel().join("stable");
    let mut checked = 0;
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        for (what, target, a) in m.all_artifacts() {
            let pin = a.urls.iter().find_map(|u| pins.find(u));
            let pin = pin.unwrap_or_else(|| panic!("{}: {what} {target} has no pin", path.display()));
            assert_eq!((pin.sha256, pin.size), (a.sha256, Some(a.size.get())), "{}: {what} {target}", path.display());
        }
        checked += 1;
    }
    let complete = pins.release.iter().filter(|r| r.complete()).count();
    assert!(checked >= complete, "{complete} complete release(s) in pins.toml but {checked} committed manifest(s)");
}

#[test]
fn every_release_pins_its_air_gap_images_or_says_why_not() {
    for r in &pins().release {
        let pinned = ["linux-x86_64", "linux-aarch64"]
            .iter()
            .all(|t| r.pin.iter().any(|p| p.component == "images" && p.target.to_string() == *t));
        let said = r.missing.iter().any(|m| m.contains("air-gap images (no public pin file"));
        assert!(pinned != said, "release {}: pin both air-gap images or say in `missing` why not", r.kubernetes);
    }
}
