//! k3s in a container (docker driver) and in a VM (qemu driver), proven with
//! the stand-in in k3s mode inside them: the same run section as natively,
//! the node address each driver gives, a container that pivots into an
//! image placed by `image load`, a pod that reaches the advertised API,
//! the modules loaded through modprobe, and the docker entrypoint's cgroup
//! v2 work where cgroup v2 exists (this machine's Docker runs on v1: the
//! VM's kernel, on v2, plays the container engine there).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::*;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The release's k3s run section, the stand-in in k3s mode, on the docker driver.
fn k3s_in_docker() -> Cluster {
    let rootfs = docker_rootfs();
    Cluster::with(|s| {
        k3s_standin(s, &k3s_run(), &[]);
        s.run_on([TestDriver::Docker(rootfs)]);
    })
}

/// `image load`, then a fresh start of the host, so the container runs.
fn load_image_and_restart(c: &Cluster, profile: &str, stop: &[&str]) {
    let image = image_archive(&c.env.scratch("images"));
    c.env.ok(&["image", "load", "-p", profile, image.to_str().unwrap()]);
    let mut args = vec!["stop", "-p", profile];
    args.extend_from_slice(stop);
    c.env.ok(&args);
    c.env.ok(&["start", "-p", profile, "--manifest", c.m()]);
}

#[test]
fn k3s_in_a_container_runs_a_pod_that_reaches_its_api() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = k3s_in_docker();
    let port = free_port().to_string();
    c.env.ok(&["start", "-p", "kd", "--driver", "docker", "--manifest", c.m(), "--port", &port]);
    load_image_and_restart(&c, "kd", &[]);
    let report = k3s_report(&c, "kd");
    // cgroup: v1 on this machine's engine (kubepods in each hierarchy); the
    // v2 path is the VM test's. Mounts: the entrypoint made / shared.
    assert_ok(
        &report,
        &[
            "config",
            "datastore",
            "cgroup",
            "modules",
            "mounts",
            "kubelet root",
            "dns",
            "sandbox",
            "pod network",
            "flannel",
        ],
    );
    // Pods' upstream DNS: this machine's nameservers, not Docker's 127.0.0.11 (or 8.8.8.8).
    assert!(report["dns"].contains("/run/kubestrap/upstream-resolv.conf"), "{report:#?}");
    // The node address is fixed on the profile's own network.
    let net = fs::read_to_string(c.env.home.join("profiles/kd/container/network.toml")).unwrap();
    let node = net.lines().find_map(|l| l.strip_prefix("node = ")).unwrap().trim_matches('"').to_string();
    assert!(report["pod network"].contains(&format!("reached the API at {node}:6443")), "{report:#?}");
    let name = net.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_string();
    let inspect = docker(&["inspect", "--format", "{{json .NetworkSettings.Networks}}", &name]);
    assert!(inspect.contains(&format!("\"IPAddress\":\"{node}\"")), "{inspect}");
    // The API is published on 127.0.0.1 only; kubectl goes through it.
    assert_eq!(c.status("kd").1["server"], format!("https://127.0.0.1:{port}"));
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    // The kubelet's root and pod logs outlive the container (kept on the volume).
    let ctr = docker(&["ps", "--filter", "label=dev.kubestrap.profile=kd", "--format", "{{.Names}}"]);
    let ctr = ctr.trim().to_string();
    docker(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "echo k > /var/lib/kubelet/probe && mkdir -p /var/log/pods && echo l > /var/log/pods/probe",
    ]);
    c.env.ok(&["stop", "-p", "kd"]);
    docker(&["rm", "-f", &ctr]);
    c.env.ok(&["start", "-p", "kd", "--manifest", c.m()]);
    let kept = docker(&["exec", &ctr, "cat", "/var/lib/kubelet/probe", "/var/log/pods/probe"]);
    assert_eq!(kept, "k\nl\n", "not kept across a new container");
    c.env.ok(&["delete", "-p", "kd"]);
    assert!(!docker(&["network", "ls", "--format", "{{.Name}}"]).contains(&name), "the network is deleted");
}

/// The VM's localkube: first what a container engine on a cgroup v2 host
/// does to a container (a child cgroup, a cgroup namespace rooted there),
/// with and without the docker driver's entrypoint, then k3s itself.
const IN_VM: &str = r#"#!/bin/sh
cd "$(dirname "$0")"
# A cgroup v2 host gives its containers the controllers (systemd does).
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control; done
./k3s __container-cgroup ctr-plain ./k3s __kubepods
echo "cgroup v2 container without the entrypoint: exit $?"
./k3s __container-cgroup ctr-entry ./entrypoint ./k3s __kubepods
echo "cgroup v2 container with the entrypoint: exit $?"
exec ./k3s "$@"
"#;

#[test]
fn k3s_in_a_vm_runs_a_pod_and_the_docker_entrypoint_works_on_cgroup_v2() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let vm = vm_artifacts();
    let entrypoint = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/docker/entrypoint")).unwrap();
    let c = Cluster::with(|s| {
        k3s_standin(s, &k3s_run(), &[("in-vm.sh", IN_VM.as_bytes(), 0o755), ("entrypoint", &entrypoint, 0o755)]);
        s.localkube.3 = "in-vm.sh".into();
        s.program = "in-vm.sh".into();
        s.run_on([TestDriver::Qemu(vm)]);
    });
    let port = free_port().to_string();
    let start = ["start", "-p", "kv", "--driver", "qemu", "--accel", "tcg", "--manifest", c.m(), "--port", &port];
    c.env.ok(&start);
    load_image_and_restart(&c, "kv", &["--shutdown"]);
    let log = c.env.ok(&["logs", "-p", "kv", "--lines", "2000"]);
    // The initramfs root refuses pivot_root; the guest moves to a tmpfs root first.
    assert!(log.contains("pivot_root on the initramfs root: Invalid argument (root fs: rootfs)"), "{log}");
    // Without the entrypoint the kubelet cannot enter kubepods; with it, it can.
    assert!(log.contains("cgroup v2 container without the entrypoint: exit 1"), "{log}");
    assert!(log.contains("cannot enter cgroupv2") && log.contains("Device or resource busy"), "{log}");
    assert!(log.contains("cgroup v2 container with the entrypoint: exit 0"), "{log}");
    let report = k3s_report(&c, "kv");
    assert_ok(
        &report,
        &["config", "datastore", "cgroup", "modules", "mounts", "kubelet root", "sandbox", "pod network", "flannel"],
    );
    assert!(report["cgroup"].contains("cgroup v2"), "{report:#?}");
    assert!(report["modules"].contains("modules loaded or built in"), "{report:#?}");
    // What kube-proxy's and flannel's rules need was not in the kernel at
    // boot: only the image's module tree and modprobe brought it (the base
    // image before them had neither).
    for m in ["xt_statistic", "xt_comment", "nft_chain_nat", "vxlan"] {
        let now = report["modules"].split("loaded now by modprobe: ").nth(1).unwrap_or_default();
        assert!(now.split(' ').any(|x| x == m), "{m} not loaded on demand: {report:#?}");
    }
    // A release that runs agents puts every VM on the nodes' segment (eth1),
    // where it is known: the advertised address, and flannel's interface
    // (the default route's, eth0, would be unreachable from other VMs).
    assert!(report["pod network"].contains("reached the API at 198.19.77.1:6443"), "{report:#?}");
    assert!(report["flannel"].contains("on eth1, local 198.19.77.1"), "{report:#?}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.env.ok(&["delete", "-p", "kv"]);
}

/// An address of this machine other than loopback (the first global one).
fn host_address() -> String {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap_or_default();
    let addr = addr.split('/').next().unwrap_or_default().to_string();
    assert!(!addr.is_empty(), "this machine has no global IPv4 address: {text}");
    addr
}

#[test]
fn k3s_in_a_container_serves_its_listen_address_and_refuses_a_join_from_afar() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = k3s_in_docker();
    let (addr, port) = (host_address(), free_port().to_string());
    let start = ["start", "-p", "kl", "--driver", "docker", "--manifest", c.m(), "--port", &port, "--listen", &addr];
    let mut start = start.to_vec();
    start.extend(["--memory", "1536"]);
    c.env.ok(&start);
    // The node's /proc/meminfo says its limit, not the machine's (the
    // kubelet's capacity comes from it).
    let ctr = docker(&["ps", "--filter", "label=dev.kubestrap.profile=kl", "--format", "{{.Names}}"]);
    let meminfo = docker(&["exec", ctr.trim(), "head", "-n", "1", "/proc/meminfo"]);
    assert_eq!(meminfo.split_whitespace().collect::<Vec<_>>(), ["MemTotal:", "1572864", "kB"], "{meminfo}");
    // Another machine's kubectl reaches the API at the --listen address, and
    // k3s's own serving certificate names it (--tls-san={listen}).
    let server = format!("https://{addr}:{port}");
    let ns = c.kubectl_ok(&KUBECTL, &["--context", "kubestrap-kl", "--server", &server, "get", "ns", "-o", "name"]);
    assert!(ns.contains("namespace/default"), "{ns}");
    // A k3s agent needs more than that port: a join from afar is refused, saying why.
    let err = c.env.fail(&["node", "join-command", "-p", "kl"], Code::Usage);
    assert!(err.contains("cannot join across machines") && err.contains("8472/udp"), "{err}");
    assert!(err.contains("kubestrap node add -p kl"), "{err}");
    c.env.ok(&["delete", "-p", "kl"]);
}
