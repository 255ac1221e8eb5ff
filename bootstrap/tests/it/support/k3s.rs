//! The stand-in in k3s mode (`ci/standin/src/k3s`): localkube named `k3s`,
//! run with the release channel's own run section, doing for real what k3s
//! does to the machine it runs on. Its report (one line per step) is the
//! ConfigMap `kube-system/standin-k3s`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use kubestrap_manifest::Run;

use super::{Cluster, ManifestSpec, standin_binary, tar_zst_artifact};

/// A native k3s holds the whole machine (/run/k3s, cni0, the kubelet's
/// ports): the tests that run one take turns.
static MACHINE: Mutex<()> = Mutex::new(());

pub fn machine() -> MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The release channel's k3s run section (`manifests/channel/k3s-run.toml`).
pub fn k3s_run() -> Run {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/channel/k3s-run.toml");
    toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// localkube = the stand-in named `k3s` (its k3s mode), running `run`, with
/// `extra` files (name, bytes, mode) beside it in the component.
pub fn k3s_standin(s: &mut ManifestSpec, run: &Run, extra: &[(&str, &[u8], u32)]) {
    let dir = s.localkube.1.path.parent().unwrap().to_path_buf();
    let standin = fs::read(standin_binary()).unwrap();
    let mut files: Vec<(&str, &[u8], u32)> = vec![("k3s", &standin, 0o755), ("version.txt", b"v1.33.1+k3s1\n", 0o644)];
    files.extend_from_slice(extra);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tag = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let a = tar_zst_artifact(&dir, &format!("k3s-standin-{tag}.tar.zst"), &files);
    s.localkube = (vec![a.path_url()], a, "tar.zst".into(), "k3s".into());
    s.localkube_version = "1.33.1+k3s1".into();
    s.run_from(run);
    s.program = run.program.clone();
}

/// The k3s mode's report for `profile`: step → "status: detail".
pub fn k3s_report(c: &Cluster, profile: &str) -> BTreeMap<String, String> {
    let context = if profile == "kubestrap" { profile.to_string() } else { format!("kubestrap-{profile}") };
    let out = c.kubectl_ok(
        &super::KUBECTL,
        &["--context", &context, "get", "configmap", "-n", "kube-system", "standin-k3s", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

/// Asserts every named step of the report is `ok`.
pub fn assert_ok(report: &BTreeMap<String, String>, steps: &[&str]) {
    for s in steps {
        let line = report.get(*s).unwrap_or_else(|| panic!("no step {s} in the report: {report:#?}"));
        assert!(line.starts_with("ok: "), "step {s}: {line}\n(report: {report:#?})");
    }
}

/// A tar (fixed metadata) of `files`.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A docker-archive of a one-file image (`hello.txt`): from the real
/// `docker save` where the engine runs, else written the same way.
pub fn image_archive(dir: &Path) -> PathBuf {
    let out = dir.join("app.docker.tar");
    let rootfs = tar_of(&[("hello.txt", b"hello from kubestrap's test image\n")]);
    let docker = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    if docker.is_ok_and(|o| o.status.success()) {
        // A tag of this test's own, removed once saved.
        let tag = format!("kubestrap-test/app:{}-{:?}", std::process::id(), std::thread::current().id())
            .replace(['(', ')'], "")
            .to_lowercase();
        let mut import = Command::new("docker")
            .args(["import", "-", &tag])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(import.stdin.as_mut().unwrap(), &rootfs).unwrap();
        drop(import.stdin.take());
        assert!(import.wait().unwrap().success(), "docker import failed");
        let saved = Command::new("docker").args(["save", "-o", out.to_str().unwrap(), &tag]).status().unwrap();
        let _ = Command::new("docker").args(["image", "rm", &tag]).output();
        assert!(saved.success(), "docker save failed");
        return out;
    }
    let manifest = br#"[{"Config":"c.json","RepoTags":["kubestrap-test/app:1"],"Layers":["l/layer.tar"]}]"#;
    fs::write(&out, tar_of(&[("manifest.json", manifest), ("c.json", b"{}"), ("l/layer.tar", &rootfs)])).unwrap();
    out
}

/// What a native k3s leaves on the machine, as the machine shows it:
/// processes (shims and pods), mounts, links, iptables chains and paths.
pub fn machine_leftovers() -> Vec<String> {
    let mut out = Vec::new();
    // A native k3s's shims (their address under /run/k3s, in this mount
    // namespace: not a container's) and pods (in the machine's own kubepods
    // cgroup), never another engine's.
    let mnt = fs::read_link("/proc/self/ns/mnt").ok();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !super::alive(pid) {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let shim = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == mnt
            && ["/run/k3s/", "/run/localkube/"].iter().any(|d| String::from_utf8_lossy(&cmdline).contains(d));
        let pod = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default().contains(":/kubepods");
        if shim || pod {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(format!("process {pid} {}", comm.trim()));
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if ["/run/k3s", "/run/localkube", "/var/lib/kubelet", "/run/netns/cni-"].iter().any(|p| m.starts_with(p)) {
            out.push(format!("mount {m}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l.split(": ").nth(1).unwrap_or_default().split('@').next().unwrap_or_default();
        let pod = l.contains(" master cni0 ");
        if name == "cni0" || name.starts_with("flannel") || pod || name.starts_with("kubestrap-") {
            out.push(format!("link {name}"));
        }
    }
    for save in ["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"] {
        let Ok(o) = Command::new(save).output() else { continue };
        for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with(':')) {
            let chain = l[1..].split(' ').next().unwrap_or_default();
            if ["KUBE-", "CNI-", "FLANNEL", "KUBESTRAP-"].iter().any(|p| chain.starts_with(p)) {
                out.push(format!("{save}: chain {chain}"));
            }
        }
    }
    for p in [
        "/run/k3s",
        "/run/localkube",
        "/var/lib/cni",
        "/run/flannel",
        "/sys/fs/cgroup/kubepods",
        "/sys/fs/cgroup/memory/kubepods",
    ] {
        if Path::new(p).exists() {
            out.push(format!("path {p}"));
        }
    }
    out
}
