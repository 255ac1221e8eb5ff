//! `kubestrap manifest generate` against a loopback mirror laid out like
//! upstream (dl.k8s.io and k3s's GitHub releases, with their checksum files).

use std::fs;

use crate::support::*;

const K8S: &str = "1.34.3";
const K3S: &str = "v1.34.3+k3s1";
const K3S_PATH: &str = "/github.com/k3s-io/k3s/releases/download/v1.34.3%2Bk3s1";

struct Mirror {
    server: Server,
    /// (upstream-relative path, bytes) of every artifact served.
    files: Vec<(String, Vec<u8>)>,
}

impl Mirror {
    /// kubectl for linux amd64/arm64 with `.sha256` beside each; k3s, k3s-arm64
    /// and the amd64 air-gap images with `sha256sum-<arch>.txt` listing them
    /// (and, like upstream, other files too).
    fn new() -> Mirror {
        let server = Server::start();
        let mut files = Vec::new();
        for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
            let bytes = pseudo_random(20_000 + i * 1000, 11 + i as u64);
            let path = format!("/dl.k8s.io/release/v{K8S}/bin/linux/{arch}/kubectl");
            server.add(&format!("{path}.sha256"), sha256_hex(&bytes).into_bytes());
            server.add(&path, bytes.clone());
            files.push((path, bytes));
        }
        for (i, (arch, assets)) in [
            ("amd64", ["k3s", "k3s-airgap-images-amd64.tar.zst"]),
            ("arm64", ["k3s-arm64", "k3s-airgap-images-arm64.tar.zst"]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut sums =
                String::from("0000000000000000000000000000000000000000000000000000000000000000  k3s-images.txt\n");
            for (j, asset) in assets.iter().enumerate() {
                let bytes = pseudo_random(30_000 + j * 500 + i * 100, 21 + j as u64 + 10 * i as u64);
                sums.push_str(&format!("{}  {asset}\n", sha256_hex(&bytes)));
                let path = format!("{K3S_PATH}/{asset}");
                server.add(&path, bytes.clone());
                files.push((path, bytes));
            }
            server.add(&format!("{K3S_PATH}/sha256sum-{arch}.txt"), sums.into_bytes());
        }
        Mirror { server, files }
    }

    fn base(&self) -> String {
        self.server.url("/")
    }

    fn bytes(&self, suffix: &str) -> &[u8] {
        &self.files.iter().find(|(p, _)| p.ends_with(suffix)).unwrap().1
    }
}

fn generate(env: &Env, m: &Mirror, extra: &[&str]) -> std::process::Output {
    let out = env.path().join("generated.toml");
    let base = m.base();
    let mut args = vec![
        "manifest",
        "generate",
        "--kubernetes",
        K8S,
        "--k3s",
        K3S,
        "--base-url",
        &base,
        "--out",
        out.to_str().unwrap(),
        "--channel",
        "stable",
        "--manifest-version",
        "3",
    ];
    args.extend_from_slice(extra);
    env.run(&args)
}

#[test]
fn generates_a_verified_manifest_from_upstreams_checksum_files() {
    let env = Env::new();
    let m = Mirror::new();
    // Pins that agree with upstream (one with its size, one without).
    let amd64 = m.bytes("linux/amd64/kubectl");
    let k3s = m.bytes("/k3s");
    let pins = env.path().join("pins.toml");
    fs::write(
        &pins,
        format!(
            r#"[[release]]
kubernetes = "{K8S}"
k3s = "{K3S}"
kubectl = "v{K8S}"
[[release.pin]]
component = "kubectl"
target = "linux-x86_64"
url = "https://dl.k8s.io/release/v{K8S}/bin/linux/amd64/kubectl"
sha256 = "{}"
size = {}
sources = ["a test mirror of upstream"]
[[release.pin]]
component = "localkube"
target = "linux-x86_64"
url = "https://github.com/k3s-io/k3s/releases/download/v1.34.3%2Bk3s1/k3s"
sha256 = "{}"
sources = ["a test mirror of upstream"]
"#,
            sha256_hex(amd64),
            amd64.len(),
            sha256_hex(k3s)
        ),
    )
    .unwrap();
    let out = generate(&env, &m, &["--images", "--verify", "--pins", pins.to_str().unwrap()]);
    assert!(out.status.success(), "{}", env.report(&[], &out, "generate"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("downloaded and verified") && stdout.contains("unsigned"), "{stdout}");
    let path = env.path().join("generated.toml");
    let text = fs::read_to_string(&path).unwrap();
    let manifest = kubestrap_manifest::Manifest::parse(text.as_bytes(), &path).unwrap();
    let lk = &manifest.component.localkube;
    assert_eq!((lk.version.as_str(), lk.run.program.as_str(), lk.run.needs_root), ("1.34.3+k3s1", "k3s", true));
    let x86: kubestrap_manifest::Target = "linux-x86_64".parse().unwrap();
    let a = &lk.target[&x86];
    assert_eq!((a.sha256.to_string(), a.size.get(), a.bin.as_str()), (sha256_hex(k3s), k3s.len() as u64, "k3s"));
    assert_eq!(
        a.urls,
        [
            m.server.url(&format!("{K3S_PATH}/k3s")),
            "https://github.com/k3s-io/k3s/releases/download/v1.34.3%2Bk3s1/k3s".into()
        ],
        "the mirror first, then upstream"
    );
    let arm = &lk.target[&"linux-aarch64".parse().unwrap()];
    assert_eq!(arm.sha256.to_string(), sha256_hex(m.bytes("/k3s-arm64")));
    let k = &manifest.component.kubectl.target[&x86];
    assert_eq!((k.sha256.to_string(), k.size.get()), (sha256_hex(amd64), amd64.len() as u64));
    let images = manifest.component.images.as_ref().expect("--images adds the images component");
    assert_eq!(images.target[&x86].bin, "k3s-airgap-images-amd64.tar.zst");
    assert_eq!(images.target.len(), 2);
    env.ok(&["manifest", "check", path.to_str().unwrap()]);

    // Signed, it is a manifest kubestrap fetches from the mirror, verified.
    let key = env.keys.join("dev.key");
    env.ok(&["manifest", "sign", "--key", key.to_str().unwrap(), path.to_str().unwrap()]);
    env.ok(&["fetch", "--manifest", path.to_str().unwrap()]);
    assert!(env.blob(&sha256_hex(k3s)).is_file());
}

#[test]
fn a_checksum_file_that_lists_other_files_is_a_clear_error() {
    let env = Env::new();
    let m = Mirror::new();
    m.server.add(&format!("{K3S_PATH}/sha256sum-arm64.txt"), format!("{}  k3s-arm\n", "ab".repeat(32)).into_bytes());
    let out = generate(&env, &m, &[]);
    assert_eq!(out.status.code(), exit(Code::Download), "{}", env.report(&[], &out, "generate"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256sum-arm64.txt lists no \"k3s-arm64\"") && err.contains("it lists: k3s-arm"), "{err}");
}

#[test]
fn a_target_upstream_does_not_build_is_named() {
    let env = Env::new();
    let m = Mirror::new();
    let out = generate(&env, &m, &["--target", "linux-x86_64", "--target", "darwin-aarch64"]);
    assert_eq!(out.status.code(), exit(Code::Usage), "{}", env.report(&[], &out, "generate"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kubectl v1.34.3 has no darwin-aarch64 build upstream") && err.contains("404"), "{err}");
    assert!(!env.path().join("generated.toml").exists(), "nothing is written on failure");
}

#[test]
fn sizes_and_hashes_that_do_not_match_are_refused() {
    let env = Env::new();
    let m = Mirror::new();
    // HEAD announces a size the download does not have.
    let path = format!("/dl.k8s.io/release/v{K8S}/bin/linux/amd64/kubectl");
    m.server.script(&path, [Reply::Body(vec![0; 12_345])]);
    let out = generate(&env, &m, &["--verify"]);
    assert_eq!(out.status.code(), exit(Code::Integrity), "{}", env.report(&[], &out, "generate"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("announced 12345 bytes, but the download was 20000 bytes"), "{err}");

    // A checksum file that disagrees with the artifact.
    let m = Mirror::new();
    m.server.add(&format!("{path}.sha256"), "cd".repeat(32).into_bytes());
    let out = generate(&env, &m, &["--verify"]);
    assert_eq!(out.status.code(), exit(Code::Integrity));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream's checksum file says cdcd"));

    // Pins that disagree with upstream.
    let m = Mirror::new();
    let pins = env.path().join("bad-pins.toml");
    fs::write(
        &pins,
        format!(
            "[[release]]\nkubernetes = \"{K8S}\"\nk3s = \"{K3S}\"\nkubectl = \"v{K8S}\"\n[[release.pin]]\ncomponent = \"kubectl\"\ntarget = \"linux-x86_64\"\nurl = \"https://dl.k8s.io/release/v{K8S}/bin/linux/amd64/kubectl\"\nsha256 = \"{}\"\nsize = 1\nsources = [\"KS kubespray checksums.yml@0\"]\n",
            sha256_hex(m.bytes("linux/amd64/kubectl"))
        ),
    )
    .unwrap();
    let out = generate(&env, &m, &["--pins", pins.to_str().unwrap()]);
    assert_eq!(out.status.code(), exit(Code::Integrity));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream says size 20000, but the channel pins say 1 (KS kubespray"), "{err}");
}

#[test]
fn a_generated_release_carries_the_projects_own_artifacts_for_docker_and_qemu() {
    let env = Env::new();
    let m = Mirror::new();
    // As ci/vm/build.sh and ci/docker/build.sh name them, served by the mirror.
    let dir = env.scratch("built");
    let built = [
        ("hypervisor-qemu-7.2-linux-x86_64.tar.zst", &[("bin/qemu-system-x86_64", &b"qemu"[..], 0o755)][..]),
        ("base-6.1.0-57-cloud-amd64-linux-x86_64.tar.zst", &[("vmlinuz", &b"kernel"[..], 0o644)][..]),
    ];
    for (name, files) in built {
        let a = tar_zst_artifact(&dir, name, files);
        m.server.add(&format!("/artifacts/{name}"), a.bytes());
    }
    let rootfs = file_artifact(&dir, "rootfs-busybox-1.35.0-linux-x86_64.tar.zst", &pseudo_random(5000, 3));
    m.server.add("/artifacts/rootfs-busybox-1.35.0-linux-x86_64.tar.zst", rootfs.bytes());
    let url = m.server.url("/artifacts/");
    let out = generate(&env, &m, &["--driver-artifacts", dir.to_str().unwrap(), "--driver-artifacts-url", &url]);
    assert!(out.status.success(), "{}", env.report(&[], &out, "generate"));
    let path = env.path().join("generated.toml");
    let manifest = kubestrap_manifest::Manifest::parse(&fs::read(&path).unwrap(), &path).unwrap();
    let x86: kubestrap_manifest::Target = "linux-x86_64".parse().unwrap();
    let c = &manifest.component;
    let rootfs_pin = &c.rootfs.as_ref().expect("a rootfs for the docker driver").target[&x86];
    assert_eq!((rootfs_pin.sha256.to_string(), rootfs_pin.size.get()), (rootfs.sha256.clone(), rootfs.size));
    assert_eq!(rootfs_pin.urls, [format!("{url}rootfs-busybox-1.35.0-linux-x86_64.tar.zst")]);
    let hv = c.hypervisor.as_ref().expect("a hypervisor for the qemu driver");
    assert_eq!(
        (hv.version.as_str(), hv.drivers.as_deref()),
        ("qemu-7.2", Some(&[kubestrap_manifest::Driver::Qemu][..]))
    );
    assert_eq!(c.base_image.as_ref().unwrap().target[&x86].bin, "vmlinuz");
    // Signed, each driver's needs are fetched and verified from the mirror.
    let key = env.keys.join("dev.key");
    env.ok(&["manifest", "sign", "--key", key.to_str().unwrap(), path.to_str().unwrap()]);
    for driver in ["docker", "qemu"] {
        env.ok(&["fetch", "--manifest", path.to_str().unwrap(), "--driver", driver, "--target", "linux-x86_64"]);
    }
    assert!(env.blob(&rootfs.sha256).is_file());
    // A directory without them is named.
    let empty = env.scratch("empty");
    let out = generate(&env, &m, &["--driver-artifacts", empty.to_str().unwrap(), "--driver-artifacts-url", &url]);
    assert_eq!(out.status.code(), exit(Code::Usage));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hypervisor-*.tar.zst"));
}
