//! k3s on the native driver, proven on this machine's kernel: the stand-in
//! in k3s mode (see support/k3s.rs) does to the host what k3s would — a pod
//! namespace on cni0 that must reach the advertised API address, a
//! container that pivots into an image, shims and pods left running,
//! mounts under /run/k3s and /var/lib/kubelet, links, iptables chains, its
//! config read from wherever k3s reads it, its CAs checked against a
//! datastore copy. Each test also shows the failure the fix prevents.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// A native k3s cluster (the machine's turn held), with a real image
/// archive loaded and the cluster restarted so the container runs.
fn k3s_cluster_with_image(c: &Cluster, profile: &str) -> String {
    c.start(profile);
    let image = image_archive(&c.env.scratch("images"));
    c.env.ok(&["image", "load", "-p", profile, image.to_str().unwrap()]);
    c.env.ok(&["stop", "-p", profile]);
    c.start(profile)
}

fn server_of(c: &Cluster, profile: &str) -> String {
    c.status(profile).1["server"].as_str().unwrap().to_string()
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A "LAN neighbour": a network namespace on a veth link to this machine,
/// with a route to `address` through it. Removed on drop.
struct Neighbour {
    ns: String,
    link: String,
}

impl Neighbour {
    fn new(address: &str) -> Neighbour {
        let id = std::process::id() % 100_000;
        let (ns, link) = (format!("ks-lan-{id}"), format!("kslan{id}"));
        let script = format!(
            "ip netns add {ns} && ip link add {link} type veth peer name {link}p && ip link set {link}p netns {ns} \
             && ip addr add 203.0.113.1/30 dev {link} && ip link set {link} up \
             && ip netns exec {ns} ip addr add 203.0.113.2/30 dev {link}p \
             && ip netns exec {ns} ip link set {link}p up && ip netns exec {ns} ip link set lo up \
             && ip netns exec {ns} ip route add {address}/32 via 203.0.113.1"
        );
        let n = Neighbour { ns, link };
        let (ok, out) = sh(&script);
        assert!(ok, "cannot make the neighbour: {out}");
        n
    }
    /// Whether a TCP connection from the neighbour reaches `addr:port`.
    fn connects(&self, addr: &str, port: u16) -> bool {
        sh(&format!("ip netns exec {} timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}'", self.ns)).0
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}; ip link del {} 2>/dev/null", self.ns, self.link));
    }
}

#[test]
fn pods_reach_the_native_api_and_the_network_does_not() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    // Without the fix: the apiserver on 127.0.0.1, advertised (k3s's default)
    // on the address of the default route's interface. The host's /readyz
    // works, so the start succeeds; no pod reaches the API.
    let mut loopback = k3s_run();
    loopback.args.retain(|a| !a.uses("node-ip") && !a.uses("node-iface"));
    for a in loopback.args.iter_mut() {
        if a.as_str() == "--bind-address={bind}" {
            *a = "--bind-address=127.0.0.1".parse().unwrap();
        }
    }
    let c = Cluster::with(|s| k3s_standin(s, &loopback, &[]));
    k3s_cluster_with_image(&c, "lo");
    let report = k3s_report(&c, "lo");
    assert_ok(&report, &["sandbox"]);
    let pod = &report["pod network"];
    assert!(pod.starts_with("failed: ") && pod.contains("could not reach the API"), "{pod}");
    assert!(pod.contains("the API listens on 127.0.0.1:"), "{pod}");
    c.env.ok(&["delete", "-p", "lo"]);

    // With it: node, advertised and bind address are the profile's own.
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    k3s_cluster_with_image(&c, "nat");
    let report = k3s_report(&c, "nat");
    assert_ok(&report, &["config", "datastore", "cgroup", "modules", "sandbox", "pod network", "flannel", "host"]);
    let server = server_of(&c, "nat");
    let (address, port) = server.trim_start_matches("https://").split_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert!(address.starts_with("198.18.") || address.starts_with("198.19."), "{server}");
    assert!(report["pod network"].contains(&format!("reached the API at {address}:{port}")), "{report:#?}");
    // The kubeconfig points there, and the real kubectl works through it.
    let kc = fs::read_to_string(&c.env.kubeconfig).unwrap();
    assert!(kc.contains(&server), "{kc}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);

    // A neighbour on the network that routes the address to this machine
    // reaches this machine (a listener of its own) but not the API.
    let lan = Neighbour::new(address);
    let listener = TcpListener::bind("203.0.113.1:0").unwrap();
    assert!(lan.connects("203.0.113.1", listener.local_addr().unwrap().port()), "the neighbour's link works");
    assert!(!lan.connects(address, port), "the API is reachable from the network");
    // It is the guard that keeps it out: without it the neighbour gets in.
    let rule = sh(&format!("iptables -w -S INPUT 2>/dev/null | grep -- '-d {address}/32'")).1;
    let chain = rule.split_whitespace().last().unwrap().to_string();
    assert!(sh(&format!("iptables -w -D INPUT -d {address}/32 -j {chain}")).0);
    assert!(lan.connects(address, port), "without the guard the neighbour connects");
    assert!(sh(&format!("iptables -w -I INPUT 1 -d {address}/32 -j {chain}")).0);
    assert!(!lan.connects(address, port));
    c.env.ok(&["delete", "-p", "nat"]);
    assert_eq!(machine_leftovers(), Vec::<String>::new());
}

#[test]
fn native_stop_and_delete_leave_nothing_of_k3s_on_the_machine() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    let persistent = ["/etc/rancher", "/etc/rancher/node", "/var/lib/kubelet", "/var/lib/rancher"];
    let before: Vec<bool> = persistent.iter().map(|p| Path::new(p).exists()).collect();
    // The kernel settings k3s changes for the whole machine: put to other
    // values than k3s's first, so that the change shows.
    let sysctls = ["kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "net/ipv4/conf/all/route_localnet"];
    let read = || -> Vec<String> {
        sysctls.iter().map(|s| fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap().trim().to_string()).collect()
    };
    let original = read();
    for (s, v) in sysctls.iter().zip(["0", "0", "0", "0"]) {
        fs::write(Path::new("/proc/sys").join(s), v).unwrap();
    }
    struct Put(Vec<(&'static str, String)>);
    impl Drop for Put {
        fn drop(&mut self) {
            for (s, v) in &self.0 {
                let _ = fs::write(Path::new("/proc/sys").join(s), v);
            }
        }
    }
    let _put_back = Put(sysctls.iter().copied().zip(original).collect());
    let sysctls_before = read();
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    k3s_cluster_with_image(&c, "kill");
    assert_ok(&k3s_report(&c, "kill"), &["sandbox", "pod network", "host", "sysctls"]);
    assert_eq!(read(), ["10", "1", "1", "1"], "k3s's kernel settings while it runs");
    let running = machine_leftovers();
    for what in ["process", "mount /run/k3s/", "mount /var/lib/kubelet/pods/", "mount /run/netns/cni-", "link cni0"] {
        assert!(running.iter().any(|l| l.starts_with(what)), "{what}: {running:#?}");
    }
    for what in [
        "link flannel.1",
        "link veth",
        "link kubestrap-",
        "chain KUBE-",
        "chain CNI-",
        "chain FLANNEL",
        "chain KUBESTRAP-",
    ] {
        assert!(running.iter().any(|l| l.contains(what)), "{what}: {running:#?}");
    }
    // What k3s leaves when it exits: localkube killed behind kubestrap's
    // back, the shim and the pod run on, and everything else stays.
    let pid = c.localkube_pid("kill");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let left = machine_leftovers();
    assert!(
        left.iter().any(|l| l.contains("containerd-shim")) && left.iter().any(|l| l.contains("pause")),
        "{left:#?}"
    );
    assert!(left.len() >= running.len() - 1, "{left:#?}");

    // stop: nothing of it is left.
    let t = std::time::Instant::now();
    c.env.ok(&["stop", "-p", "kill"]);
    eprintln!("stop with {} leftovers: {:?}", left.len(), t.elapsed());
    assert_eq!(machine_leftovers(), Vec::<String>::new());
    let log = c.env.ok(&["logs", "-p", "kill", "--lines", "400"]);
    assert!(log.contains("kubestrap: removed from the machine:") && log.contains("mount /run/k3s/"), "{log}");

    // Again, then delete: what k3s made that outlives a stop (the node
    // password, /var/lib/kubelet) goes too — where it was not there before.
    c.start("kill");
    assert!(Path::new("/etc/rancher/node/password").exists());
    c.env.ok(&["delete", "-p", "kill"]);
    assert_eq!(machine_leftovers(), Vec::<String>::new());
    let after: Vec<bool> = persistent.iter().map(|p| Path::new(p).exists()).collect();
    assert_eq!(after, before, "{persistent:?}");
    assert_eq!(read(), sysctls_before, "the kernel settings k3s changed are put back: {sysctls:?}");
}

#[test]
fn a_second_native_k3s_is_refused_and_the_hosts_k3s_settings_change_nothing() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    // The host's own k3s settings, and a user's environment.
    let etc = Path::new("/etc/rancher/k3s");
    let had_etc = etc.exists();
    fs::create_dir_all(etc).unwrap();
    fs::write(etc.join("config.yaml"), "cluster-cidr: 10.99.0.0/16\ntoken: from-the-host\n").unwrap();
    fs::write(etc.join("registries.yaml"), "mirrors:\n  docker.io:\n    endpoint: [\"https://mirror.example\"]\n")
        .unwrap();
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let etc = Path::new("/etc/rancher/k3s");
            let _ = fs::remove_file(etc.join("config.yaml"));
            let _ = fs::remove_file(etc.join("registries.yaml"));
            if !self.0 {
                let _ = fs::remove_dir(etc);
                let _ = fs::remove_dir("/etc/rancher");
            }
        }
    }
    let _restore = Restore(had_etc);

    // Without its own config file and registries, k3s reads the host's.
    let mut leaky = k3s_run();
    leaky.env.clear();
    leaky.args.retain(|a| !a.as_str().starts_with("--private-registry"));
    let c = Cluster::with(|s| k3s_standin(s, &leaky, &[]));
    c.start("leak");
    let config = &k3s_report(&c, "leak")["config"];
    assert!(
        config.contains("read /etc/rancher/k3s/config.yaml") && config.contains("cluster-cidr 10.99.0.0/16"),
        "{config}"
    );
    assert!(config.contains("registries from /etc/rancher/k3s/registries.yaml (1 mirrors)"), "{config}");
    c.env.ok(&["delete", "-p", "leak"]);

    // The release's run section, started from a shell with K3S_ variables
    // (the release runs in a container too).
    let docker = need("docker", docker_engine);
    let c = Cluster::with(|s| {
        k3s_standin(s, &k3s_run(), &[]);
        if docker {
            s.run_on([TestDriver::Native, TestDriver::Docker(docker_rootfs())]);
        }
    });
    let port = free_port().to_string();
    let out = c
        .env
        .cmd(&["start", "-p", "one", "--driver", "native", "--manifest", c.m(), "--port", &port])
        .env("K3S_TOKEN", "from-the-shell")
        .env("K3S_NODE_NAME", "from-the-shell")
        .env("K3S_CONFIG_FILE", "/etc/rancher/k3s/config.yaml")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = &k3s_report(&c, "one")["config"];
    assert!(
        // The cluster's own file (empty, written by kubestrap), not the shell's.
        config.contains("read ") && config.contains("/profiles/one/data/config.yaml ()"),
        "{config}"
    );
    let only_ours = "environment: K3S_CONFIG_FILE";
    for want in
        ["cluster-cidr 10.42.0.0/16", "token: none", "node-name: kubestrap-one", "no registries file", only_ours]
    {
        assert!(config.contains(want), "{want}: {config}");
    }

    // A second native k3s on this machine — another home, another release
    // not yet downloaded — is refused before anything is fetched.
    let other = Cluster::with(|s| {
        k3s_standin(s, &k3s_run(), &[]);
        s.localkube.0 = vec!["http://127.0.0.1:9/k3s.tar.zst".into()];
    });
    let port = free_port().to_string();
    let err = other.env.fail(&["start", "-p", "two", "--manifest", other.m(), "--port", &port], Code::Unfit);
    assert!(err.contains("profile \"one\"") && err.contains(&c.env.home.display().to_string()), "{err}");
    assert!(err.contains("--driver docker") && err.contains("--driver qemu"), "{err}");
    assert!(other.env.blobs().is_empty() && other.env.partials().is_empty(), "nothing fetched");
    // A k3s in a container has paths and ports of its own: not refused.
    if docker {
        let port = free_port().to_string();
        c.env.ok(&["start", "-p", "boxed", "--driver", "docker", "--manifest", c.m(), "--port", &port]);
        assert_ok(&k3s_report(&c, "boxed"), &["config", "datastore"]);
        c.env.ok(&["delete", "-p", "boxed"]);
    }
    // Once the first one stops, the machine is free.
    c.env.ok(&["stop", "-p", "one"]);
    let err = other.env.fail(&["start", "-p", "two", "--manifest", other.m(), "--port", &port], Code::Download);
    assert!(!err.contains("profile \"one\""), "{err}");
    c.env.ok(&["delete", "-p", "one"]);
    assert_eq!(machine_leftovers(), Vec::<String>::new());
}

#[test]
fn a_different_ca_is_never_placed_over_the_one_k3s_keeps() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    c.start("ca");
    c.env.ok(&["stop", "-p", "ca"]);
    let profile = c.env.home.join("profiles/ca");
    let (pki, tls) = (profile.join("pki"), profile.join("data/server/tls"));
    let placed = fs::read(tls.join("server-ca.crt")).unwrap();
    // The PKI is made again (a lost or damaged one is remade at start).
    fs::rename(&pki, profile.join("pki.kept")).unwrap();
    let err = c.env.fail(&["start", "-p", "ca", "--manifest", c.m()], Code::Disk);
    assert!(err.contains("holds another") && err.contains("server-ca") && err.contains("Nothing was changed"), "{err}");
    assert_eq!(fs::read(tls.join("server-ca.crt")).unwrap(), placed, "never overwritten");
    assert_ne!(c.status("ca").1["localkube"], "Running");

    // What an overwrite does: k3s's datastore keeps the CAs it first started
    // with, and a different file on disk, newer than the datastore's copy by
    // more than k3s's 3 s allowance, stops it for good.
    let place_all = |from: &Path| {
        for (dest, f) in &k3s_run().pki_files {
            let dest = profile.join("data").join(dest.as_str().trim_start_matches("{data}/"));
            fs::write(&dest, fs::read(from.join(f.file_name())).unwrap()).unwrap();
            assert!(sh(&format!("touch -d '+1 minute' {}", dest.display())).0);
        }
    };
    place_all(&pki);
    let err = c.env.fail(&["start", "-p", "ca", "--manifest", c.m()], Code::LocalkubeExited);
    assert!(err.contains("newer than datastore and could cause a cluster outage"), "{err}");

    // The profile's own PKI back (and the files it placed): it starts again.
    fs::remove_dir_all(&pki).unwrap();
    fs::rename(profile.join("pki.kept"), &pki).unwrap();
    place_all(&pki);
    c.start("ca");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.env.ok(&["delete", "-p", "ca"]);
}

#[test]
fn the_k3s_smoke_script_passes_against_the_standin_on_every_driver() {
    // Each driver the machine can run; a missing one fails unless skipped by name.
    let mut drivers = Vec::new();
    for (driver, group, check) in [
        ("native", "root", is_root as fn() -> Result<(), String>),
        ("docker", "docker", docker_engine),
        ("qemu", "qemu", qemu_installed),
    ] {
        if need(group, check) {
            drivers.push(driver);
        }
    }
    if drivers.is_empty() {
        return;
    }
    let _machine = machine();
    // The script lets kubestrap choose each profile's port (8443, else the
    // next free one): one at a time with the other tests that do.
    let _port = AUTO_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let mut built = Vec::new();
    if drivers.contains(&"qemu") {
        built.push(vm_artifacts().hypervisor.path);
    }
    if drivers.contains(&"docker") {
        built.push(docker_rootfs().path);
    }
    let env = Env::new();
    let out = env.scratch("smoke");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/k3s-smoke.sh");
    let mut cmd = Command::new(script);
    cmd.args(["--standin", "--profile", "debug", "--no-build", "--drivers", &drivers.join(","), "--out"])
        .arg(&out)
        .env_remove("KUBESTRAP_HOME")
        .env_remove("KUBECONFIG");
    for file in &built {
        cmd.arg("--driver-artifacts").arg(file.parent().unwrap());
    }
    let run = cmd.output().unwrap();
    let table = fs::read_to_string(out.join("table.txt")).unwrap_or_default();
    // Each failed step's own log (`<driver>-<step>.log`), so a failure says why.
    let mut failed_logs = String::new();
    for line in table.lines().filter(|l| l.contains("FAILED")) {
        let step = line.split_whitespace().next().unwrap_or_default();
        for (i, cell) in line.split(" | ").skip(1).enumerate() {
            if cell.contains("FAILED") {
                let log = out.join(format!("{}-{step}.log", drivers[i]));
                let text = fs::read_to_string(&log).unwrap_or_default();
                failed_logs.push_str(&format!("--- {} ---\n{text}\n", log.display()));
            }
        }
    }
    assert!(
        run.status.success(),
        "{table}\n{failed_logs}\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    for row in ["start", "ready", "pod", "image-load", "restart-kept", "upgrade", "delete", "leftovers"] {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row}: {table}"));
        assert_eq!(line.matches(" ok ").count(), drivers.len(), "{table}");
    }
    assert_eq!(machine_leftovers(), Vec::<String>::new());
}

/// Unmounts `path` when dropped (a failed assertion included).
struct Unmount(&'static str);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).output();
    }
}

#[test]
fn what_a_native_stop_cannot_remove_is_named_and_the_next_stop_removes_it() {
    if !need("root", is_root) {
        return;
    }
    let _machine = machine();
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    c.start("held");
    // Something of k3s's that cannot go: /run/flannel made a mount point
    // (busy, and read-only), as a mount another program holds would be.
    fs::create_dir_all("/run/flannel").unwrap();
    let _unmount = Unmount("/run/flannel");
    let mount = ["-t", "tmpfs", "-o", "ro,size=1m", "kubestrap-test", "/run/flannel"];
    assert!(Command::new("mount").args(mount).status().unwrap().success());
    let err = c.env.fail(&["stop", "-p", "held"], Code::Driver);
    assert!(err.contains("/run/flannel") && err.contains("busy"), "{err}");
    assert!(err.contains("run the command again"), "{err}");
    // Everything else went; only what it named is left.
    let left = machine_leftovers();
    assert_eq!(left, vec!["path /run/flannel".to_string()], "{left:#?}");
    let (_, st) = c.status("held");
    assert_eq!(st["localkube"], "Stopped", "{st}");
    // Once it can go, the next stop removes it.
    assert!(Command::new("umount").arg("/run/flannel").status().unwrap().success());
    c.env.ok(&["stop", "-p", "held"]);
    assert_eq!(machine_leftovers(), Vec::<String>::new());
    c.env.ok(&["delete", "-p", "held"]);
}

#[test]
fn native_k3s_starts_on_a_machine_with_no_default_route() {
    if !need("root", is_root) || !need("netns", netns_possible) {
        return;
    }
    let _machine = machine();
    // An offline laptop: a network namespace with loopback alone.
    let ns = Netns::new("noroute");
    let run = |c: &Cluster, args: &[&str]| ns.wrap(c.env.cmd(args)).output().unwrap();
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    // Without the fix: flannel takes the default route's interface, finds
    // none, and k3s exits (pkg/agent/flannel/setup.go).
    let mut unpinned = k3s_run();
    unpinned.args.retain(|a| !a.as_str().starts_with("--flannel-iface"));
    let c = Cluster::with(|s| k3s_standin(s, &unpinned, &[]));
    let out = run(&c, &["start", "-p", "off", "--manifest", c.m()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("failed to get default interface"), "{}", text(&out));
    let out = run(&c, &["delete", "-p", "off"]);
    assert!(out.status.success(), "{}", text(&out));

    // With it: flannel on the profile's own bridge, which holds the node address.
    let c = Cluster::with(|s| k3s_standin(s, &k3s_run(), &[]));
    let out = run(&c, &["start", "-p", "off", "--manifest", c.m()]);
    assert!(out.status.success(), "{}", text(&out));
    let get = ["kubectl", "-p", "off", "--", "get", "configmap", "-n", "kube-system", "standin-k3s", "-o", "json"];
    let out = run(&c, &get);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flannel = v["data"]["flannel"].as_str().unwrap_or_default().to_string();
    assert!(flannel.starts_with("ok: ") && flannel.contains("on kubestrap-"), "{v:#}");
    let out = run(&c, &["delete", "-p", "off"]);
    assert!(out.status.success(), "{}", text(&out));
}
