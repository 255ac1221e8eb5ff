//! `ci/release --dry-run`: a channel laid out to be served statically, signed
//! with the development key, that kubestrap accepts, byte-identical when
//! built twice from the same inputs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn release(out: &Path) {
    // The binaries the tests run (ci/test.sh built them), not a new build.
    // The driver artifacts ci/test.sh built (ci/release builds them otherwise).
    let (vm, docker) = (vm_artifacts(), docker_rootfs());
    let dirs = [vm.hypervisor.path.parent().unwrap().to_path_buf(), docker.path.parent().unwrap().to_path_buf()];
    let run = Command::new(top().join("ci/release"))
        .args(["--dry-run", "--no-build", "--profile", "debug", "--out", out.to_str().unwrap()])
        .args(dirs.iter().flat_map(|d| [std::ffi::OsStr::new("--driver-artifacts"), d.as_os_str()]))
        .env("SOURCE_DATE_EPOCH", "1795000000")
        .output()
        .unwrap();
    assert!(run.status.success(), "ci/release --dry-run failed: {}", String::from_utf8_lossy(&run.stderr));
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn release_dry_run_is_signed_verifiable_and_reproducible() {
    // A release carries the VM and rootfs artifacts (ci/test.sh builds them).
    if !need("qemu", qemu_installed) || !need("docker", docker_engine) || !need("minisign", minisign_installed) {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.scratch("release-a"), env.scratch("release-b"));
    release(&a);
    release(&b);
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ta {
        assert!(tb[name] == *bytes, "{name} differs between two runs with the same inputs");
    }
    for want in [
        "index.toml",
        "index.toml.minisig",
        "dev/1/manifest.toml",
        "dev/1/manifest.toml.minisig",
        "SHA256SUMS",
        "SHA256SUMS.minisig",
    ] {
        assert!(ta.contains_key(want), "{want} missing: {:?}", ta.keys());
    }
    // SHA256SUMS names every other file with its hash.
    let sums = String::from_utf8(ta["SHA256SUMS"].clone()).unwrap();
    let listed: BTreeMap<&str, &str> = sums.lines().map(|l| (l[66..].trim(), &l[..64])).collect();
    for (name, bytes) in ta.iter().filter(|(n, _)| !n.starts_with("SHA256SUMS")) {
        assert_eq!(listed.get(name.as_str()).copied(), Some(sha256_hex(bytes).as_str()), "{name}");
    }

    // kubestrap accepts what it made, trusting the development key.
    let dev_pub = top().join("ci/dev-keys/dev.pub");
    env.ok(&["trust", "add", dev_pub.to_str().unwrap()]);
    let manifest = a.join("dev/1/manifest.toml");
    env.ok(&["manifest", "verify", manifest.to_str().unwrap()]);
    let bundle = ta.keys().find(|n| n.starts_with("bundles/")).expect("a bundle");
    let out = env.ok(&["bundle", "verify", a.join(bundle).to_str().unwrap()]);
    assert!(out.contains("dev-1") || out.contains("dev"), "{out}");
    // The release carries the docker and qemu drivers' artifacts, pinned.
    let m = kubestrap_manifest::Manifest::parse(&ta["dev/1/manifest.toml"], Path::new("manifest.toml")).unwrap();
    for (c, name) in
        [(&m.component.hypervisor, "hypervisor-"), (&m.component.base_image, "base-"), (&m.component.rootfs, "rootfs-")]
    {
        let pinned = c.as_ref().unwrap_or_else(|| panic!("no {name} component"));
        let a = pinned.target.values().next().unwrap();
        let file = a.urls[0].rsplit('/').next().unwrap();
        assert!(file.starts_with(name), "{file}");
        assert_eq!(a.sha256.to_string(), sha256_hex(&ta[&format!("artifacts/{file}")]), "{file}");
    }
    let index = fs::read(a.join("index.toml")).unwrap();
    let parsed = kubestrap_manifest::ChannelIndex::parse(&index, Path::new("index.toml")).unwrap();
    assert_eq!(parsed.channel["dev"].url, "dev/1/manifest.toml");
    assert_eq!(parsed.channel["dev"].sha256.to_string(), sha256_hex(&ta["dev/1/manifest.toml"]));
    assert_eq!(parsed.published.unix_timestamp(), 1_795_000_000, "times come from SOURCE_DATE_EPOCH");
    // The real minisign agrees with the signatures.
    let out = Command::new("minisign")
        .args(["-Vm", a.join("index.toml").to_str().unwrap(), "-p", dev_pub.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "minisign: {}", String::from_utf8_lossy(&out.stderr));
}
