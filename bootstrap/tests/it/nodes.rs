//! Clusters of more than one node on the docker driver, against the real
//! engine: the stand-in server and agents that join it with the join token
//! (`ci/standin` agent mode), seen through the real kubectl's `get nodes`.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

use crate::docker::docker;

/// Every node named, Ready (as [`kubectl_nodes`] lists them).
fn all_ready(names: &[&str]) -> Vec<(String, String)> {
    names.iter().map(|n| (n.to_string(), "True".to_string())).collect()
}

fn multi_node() -> Cluster {
    let rootfs = docker_rootfs();
    Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(rootfs)]);
        s.multi_node();
    })
}

/// Node name → Ready status ("True", "Unknown"…), as kubectl reads them.
fn kubectl_nodes(c: &Cluster, context: &str) -> Vec<(String, String)> {
    let out = c.kubectl_ok(&KUBECTL, &["--context", context, "get", "nodes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut nodes: Vec<(String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map_or("none".into(), |c| c["status"].as_str().unwrap().to_string());
            (n["metadata"]["name"].as_str().unwrap().to_string(), ready)
        })
        .collect();
    nodes.sort();
    nodes
}

/// The containers of this test's home (by the home label).
fn containers(c: &Cluster) -> Vec<String> {
    let filter = format!("label=dev.kubestrap.home={}", c.env.home_id());
    let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).1;
    let mut v: Vec<String> = out.lines().map(String::from).collect();
    v.sort();
    v
}

fn volumes(c: &Cluster) -> String {
    docker(&["volume", "ls", "--format", "{{.Name}}"]).1.lines().filter(|l| l.contains(&c.env.home_id())).collect()
}

#[test]
fn a_docker_cluster_of_three_nodes_grows_loses_a_node_repairs_it_shrinks_and_is_deleted_whole() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = multi_node();
    let ctx = "kubestrap-mn";
    let port = free_port().to_string();
    let out =
        c.env.ok(&["start", "-p", "mn", "--manifest", c.m(), "--driver", "docker", "--nodes", "3", "--port", &port]);
    assert!(out.contains("node ready") && out.contains("kubestrap-mn-m03"), "{out}");
    assert_eq!(kubectl_nodes(&c, ctx), all_ready(&["kubestrap-mn", "kubestrap-mn-m02", "kubestrap-mn-m03"]));
    // kubectl's own table says Ready, with the server's role.
    let table = c.kubectl_ok(&KUBECTL, &["--context", ctx, "get", "nodes"]);
    assert!(table.contains("kubestrap-mn-m02   Ready") && table.contains("control-plane"), "{table}");
    let (code, st) = c.status("mn");
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3, "{st}");
    // One container per node, only the server's port published, on 127.0.0.1.
    let names = containers(&c);
    assert_eq!(names.len(), 3, "{names:?}");
    for n in &names {
        let ports = docker(&["inspect", "--format", "{{json .HostConfig.PortBindings}}", n]).1;
        if n.ends_with("-m02") || n.ends_with("-m03") {
            assert!(ports.trim() == "{}" || ports.trim() == "null", "{n}: {ports}");
        } else {
            assert!(ports.contains("127.0.0.1") && ports.contains(&port), "{n}: {ports}");
        }
    }
    c.kubectl_ok(&KUBECTL, &["--context", ctx, "create", "configmap", "kept", "--from-literal=k=v"]);

    // node add → 4, listed by `node list -o json`.
    let out = c.env.ok(&["node", "add", "-p", "mn"]);
    assert!(out.contains("kubestrap-mn-m04"), "{out}");
    let list = json_lines(&c.env.ok(&["node", "list", "-p", "mn", "-o", "json"])).pop().unwrap();
    let listed: Vec<(&str, &str, &str)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["host"].as_str().unwrap(), n["ready"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 4, "{list}");
    assert!(listed.iter().all(|(_, h, r)| *h == "Running" && *r == "Ready"), "{list}");

    // An agent killed behind kubestrap's back: Crashed in status, NotReady in kubectl.
    let m03 = names.iter().find(|n| n.ends_with("-m03")).unwrap().clone();
    assert!(docker(&["kill", &m03]).0);
    let (code, st) = c.status("mn");
    assert_eq!(code & 8, 8, "an agent down sets bit 8: {st}");
    let node = st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "kubestrap-mn-m03").unwrap().clone();
    assert_eq!(node["host"], "Crashed", "{st}");
    let not_ready = wait_until(Duration::from_secs(20), || {
        kubectl_nodes(&c, ctx).iter().any(|(n, r)| n == "kubestrap-mn-m03" && r == "Unknown")
    });
    assert!(not_ready, "kubectl sees the node NotReady: {:?}", kubectl_nodes(&c, ctx));
    let table = c.kubectl_ok(&KUBECTL, &["--context", ctx, "get", "node", "kubestrap-mn-m03"]);
    assert!(table.contains("NotReady"), "{table}");
    // start repairs it: every node Ready again.
    let out = c.env.run(&["start", "-p", "mn"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("m03 of profile \"mn\" are not running; starting them again"),
        "{err}"
    );
    assert_eq!(
        kubectl_nodes(&c, ctx),
        all_ready(&["kubestrap-mn", "kubestrap-mn-m02", "kubestrap-mn-m03", "kubestrap-mn-m04"])
    );

    // node delete: drained by the pinned kubectl, then its container, volume and node object gone.
    let out = c.env.ok(&["node", "delete", "-p", "mn", "m02"]);
    assert!(out.contains("drained first"), "{out}");
    assert_eq!(kubectl_nodes(&c, ctx), all_ready(&["kubestrap-mn", "kubestrap-mn-m03", "kubestrap-mn-m04"]));
    assert!(!containers(&c).iter().any(|n| n.ends_with("-m02")), "{:?}", containers(&c));
    assert!(!volumes(&c).contains("-m02-data"), "{}", volumes(&c));
    // The server is not an agent, and an unknown node is said.
    let err = c.env.fail(&["node", "delete", "-p", "mn", "kubestrap-mn"], Code::Usage);
    assert!(err.contains("no agent node") && err.contains("m03"), "{err}");

    // stop → start keeps every node and the configmap.
    c.env.ok(&["stop", "-p", "mn"]);
    let stopped = containers(&c)
        .iter()
        .map(|n| docker(&["inspect", "--format", "{{.State.Status}}", n]).1.trim().to_string())
        .collect::<Vec<_>>();
    assert_eq!(stopped, ["exited", "exited", "exited"], "every node is stopped");
    c.env.ok(&["start", "-p", "mn"]);
    assert_eq!(kubectl_nodes(&c, ctx), all_ready(&["kubestrap-mn", "kubestrap-mn-m03", "kubestrap-mn-m04"]));
    let kept = c.kubectl_ok(&KUBECTL, &["--context", ctx, "get", "configmap", "kept", "-o", "jsonpath={.data.k}"]);
    assert_eq!(kept, "v");

    // delete: no container, network or volume of ours.
    c.env.ok(&["delete", "-p", "mn"]);
    assert!(containers(&c).is_empty(), "{:?}", containers(&c));
    assert!(volumes(&c).is_empty(), "{}", volumes(&c));
    let nets = docker(&["network", "ls", "--format", "{{.Name}}"]).1;
    assert!(!nets.contains(&format!("kubestrap-mn-{}", c.env.home_id())), "{nets}");
}

#[test]
fn more_nodes_than_one_are_refused_where_the_driver_or_release_cannot_run_them() {
    if !need("docker", docker_engine) {
        return;
    }
    // The native driver: its host is this machine.
    let c = multi_node();
    let err =
        c.env.fail(&["start", "-p", "nat", "--manifest", c.m(), "--driver", "native", "--nodes", "2"], Code::Unfit);
    assert!(err.contains("cannot have 2 nodes") && err.contains("native driver runs one node"), "{err}");
    assert!(!c.env.path().join("profiles/nat/config.toml").exists(), "nothing was made");
    // A release without run.agent runs one node.
    let rootfs = docker_rootfs();
    let one = Cluster::with(|s| {
        s.run_on([TestDriver::Docker(rootfs)]);
    });
    let err =
        one.env.fail(&["start", "-p", "one", "--manifest", one.m(), "--driver", "docker", "--nodes", "2"], Code::Unfit);
    assert!(err.contains("has no agent command line"), "{err}");
    // Started with one node, it stays one (and `node add` says why not).
    one.env.ok(&[
        "start",
        "-p",
        "one",
        "--manifest",
        one.m(),
        "--driver",
        "docker",
        "--port",
        &free_port().to_string(),
    ]);
    let err = one.env.fail(&["node", "add", "-p", "one"], Code::Unfit);
    assert!(err.contains("has no agent command line"), "{err}");
    one.env.ok(&["delete", "-p", "one"]);
}

/// Each node's kubelet version, as kubectl reads them.
fn kubelet_versions(c: &Cluster, context: &str) -> Vec<String> {
    let out = c.kubectl_ok(
        &KUBECTL,
        &[
            "--context",
            context,
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.status.nodeInfo.kubeletVersion} {end}",
        ],
    );
    out.split_whitespace().map(String::from).collect()
}

#[test]
fn a_three_node_upgrade_moves_every_node_and_agents_that_never_get_ready_roll_the_cluster_back() {
    if !need("docker", docker_engine) {
        return;
    }
    let env = Env::new();
    let rootfs = docker_rootfs();
    let docker_multi = |s: &mut ManifestSpec| {
        s.run_on([TestDriver::Docker(rootfs.clone())]);
        s.multi_node();
    };
    let m32 = crate::upgrade::release(&env, 32, 1, docker_multi);
    // A candidate whose agents never join (the server's port is wrong).
    let bad = crate::upgrade::release(&env, 33, 2, |s| {
        docker_multi(s);
        s.agent.as_mut().unwrap().0[1] = "--server=https://{server}:1".into();
        s.agent.as_mut().unwrap().1 = 5;
    });
    let good = crate::upgrade::release(&env, 33, 3, docker_multi);
    let c = Cluster { env, manifest: m32 };
    let port = free_port().to_string();
    c.env.ok(&["start", "-p", "up", "--manifest", c.m(), "--nodes", "3", "--port", &port]);
    let ctx = "kubestrap-up";
    c.kubectl_ok(&KUBECTL, &["--context", ctx, "create", "configmap", "before", "--from-literal=k=v"]);
    let labels = |c: &Cluster| {
        containers(c)
            .iter()
            .map(|n| docker(&["inspect", "--format", "{{index .Config.Labels \"dev.kubestrap.release\"}}", n]).1)
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&c), ["test-1", "test-1", "test-1"]);

    // The candidate's agents never get Ready: the whole cluster goes back.
    // Its agents wrote their state before they failed to join, a state the
    // old agents refuse (as a store a newer containerd migrated): the
    // rollback brings every node's state back, not the server's alone.
    let err = c.env.fail(&["upgrade", "-p", "up", "--manifest", bad.to_str().unwrap()], Code::UpgradeRolledBack);
    assert!(err.contains("rolled back") && err.contains("m02"), "{err}");
    let snaps = c.env.ok(&["snapshot", "list", "-p", "up", "-o", "json"]);
    assert!(snaps.contains(r#""nodes":3"#), "the snapshot holds every node's state: {snaps}");
    let m02 = containers(&c).into_iter().find(|n| n.ends_with("-m02")).unwrap();
    let (_, state) = docker(&["exec", &m02, "cat", "/data/agent/state"]);
    assert_eq!(state.trim(), "v1.32.4+standin");
    assert_eq!(labels(&c), ["test-1", "test-1", "test-1"], "every node runs the old release again");
    assert_eq!(kubelet_versions(&c, ctx), ["v1.32.4+standin"; 3]);
    let nodes = kubectl_nodes(&c, ctx);
    assert!(nodes.iter().all(|(_, r)| r == "True") && nodes.len() == 3, "{nodes:?}");

    // The good one: the server first, then each agent, each Ready before the next.
    let out = c.env.ok(&["upgrade", "-p", "up", "--manifest", good.to_str().unwrap()]);
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s} in {out}"));
    assert!(at("apiserver ready") < at("node started: kubestrap-up-m02"), "{out}");
    assert!(at("node ready: kubestrap-up-m02") < at("node started: kubestrap-up-m03"), "one at a time: {out}");
    assert_eq!(labels(&c), ["test-3", "test-3", "test-3"]);
    assert_eq!(kubelet_versions(&c, ctx), ["v1.33.4+standin"; 3]);
    let kept = c.kubectl_ok(&KUBECTL, &["--context", ctx, "get", "configmap", "before", "-o", "jsonpath={.data.k}"]);
    assert_eq!(kept, "v");
    c.env.ok(&["delete", "-p", "up"]);
    assert!(containers(&c).is_empty(), "{:?}", containers(&c));
}

#[test]
fn a_qemu_cluster_of_two_vms_joins_on_its_own_l2_segment_and_suspends_and_resumes_both() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let vm = vm_artifacts();
    let c = Cluster::with(|s| {
        s.run_on([TestDriver::Qemu(vm)]);
        s.multi_node();
        // Two VMs under TCG on two cores: room to boot.
        s.agent.as_mut().unwrap().1 = 120;
    });
    let ctx = "kubestrap-qn";
    let port = free_port().to_string();
    let start = ["start", "-p", "qn", "--manifest", c.m(), "--driver", "qemu", "--nodes", "2", "--port", &port];
    let out = c.env.ok(&[&start[..], &["--memory", "512", "--cpus", "1", "--accel", "tcg"]].concat());
    assert!(out.contains("node ready: kubestrap-qn-m02"), "{out}");
    assert_eq!(
        kubectl_nodes(&c, ctx),
        [("kubestrap-qn".to_string(), "True".to_string()), ("kubestrap-qn-m02".to_string(), "True".to_string())]
    );
    // The agent's VM joined over the L2 segment, at its own address there.
    let log = c.env.ok(&["node", "logs", "-p", "qn", "m02"]);
    assert!(log.contains("nodes' network: 198.19.77.2/24 on eth1"), "{log}");
    c.kubectl_ok(&KUBECTL, &["--context", ctx, "create", "configmap", "kept", "--from-literal=k=v"]);

    // stop suspends both VMs; start resumes both, every node Ready.
    let out = c.env.ok(&["stop", "-p", "qn"]);
    assert!(out.contains("suspended"), "{out}");
    let (_, st) = c.status("qn");
    let hosts: Vec<&str> = st["nodes"].as_array().unwrap().iter().filter_map(|n| n["host"].as_str()).collect();
    assert_eq!(st["host"], "Suspended", "{st}");
    assert_eq!(hosts[1], "Suspended", "{st}");
    c.env.ok(&["start", "-p", "qn"]);
    let log = c.env.ok(&["node", "logs", "-p", "qn", "m02", "-n", "400"]);
    assert!(log.contains("resuming the suspended VM"), "the agent's VM was resumed: {log}");
    // The server's VM resumes first: until the agent's first heartbeat after
    // its own resume, the server may see it lapse (3 s grace here).
    let both = wait_until(Duration::from_secs(20), || {
        let nodes = kubectl_nodes(&c, ctx);
        nodes.len() == 2 && nodes.iter().all(|(_, r)| r == "True")
    });
    assert!(both, "{:?}", kubectl_nodes(&c, ctx));
    let kept = c.kubectl_ok(&KUBECTL, &["--context", ctx, "get", "configmap", "kept", "-o", "jsonpath={.data.k}"]);
    assert_eq!(kept, "v");
    c.env.ok(&["delete", "-p", "qn"]);
    let left = Command::new("pgrep").args(["-f", "kubestrap-qn"]).output().unwrap();
    assert!(left.stdout.is_empty(), "no VM of the cluster is left: {}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn a_docker_cluster_serves_its_api_where_listen_says_and_node_names_are_checked() {
    if !need("docker", docker_engine) {
        return;
    }
    // An address of this machine's own that is not loopback: the engine's bridge.
    let addr = Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]).output().unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    let ip =
        addr.split_whitespace().nth(3).and_then(|a| a.split('/').next()).expect("docker0 has an address").to_string();
    let c = multi_node();
    let port = free_port().to_string();
    c.env.ok(&["start", "-p", "ls", "--manifest", c.m(), "--driver", "docker", "--port", &port]);
    // Loopback only: no line another machine could use.
    let err = c.env.fail(&["node", "join-command", "-p", "ls"], Code::Usage);
    assert!(err.contains("127.0.0.1 only") && err.contains("--listen"), "{err}");
    let err = c.env.fail(&["start", "-p", "ls", "--listen", "0.0.0.0"], Code::Usage);
    assert!(err.contains("not 0.0.0.0"), "{err}");
    // Stopped and started with --listen: the container is made again, published there too.
    c.env.ok(&["stop", "-p", "ls"]);
    let out = c.env.run(&["start", "-p", "ls", "--listen", &ip]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("reachable at"), "{out:?}");
    let name = containers(&c).into_iter().next().unwrap();
    let ports = docker(&["inspect", "--format", "{{json .HostConfig.PortBindings}}", &name]).1;
    assert!(ports.contains("127.0.0.1") && ports.contains(&ip), "{ports}");
    // The real kubectl at that address: the certificate names it.
    let server = format!("https://{ip}:{port}");
    c.kubectl_ok(&KUBECTL, &["--context", "kubestrap-ls", "--server", &server, "get", "ns"]);
    let line = c.env.ok(&["node", "join-command", "-p", "ls"]);
    assert!(line.contains(&format!("kubestrap node join {server} --ca-sha256 ")), "{line}");
    // A node name is one path segment of the API, never more.
    for bad in ["../namespaces/default", "M02", "a/b", "x-"] {
        let err = c.env.fail(&["node", "delete", "-p", "ls", bad], Code::Usage);
        assert!(err.contains("is not a node name"), "{bad}: {err}");
    }
    c.env.ok(&["delete", "-p", "ls"]);
}

/// kubestrap killed with SIGKILL as it reaches kill point `point` (a debug build's).
fn killed_at(c: &Cluster, point: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let out = c.env.cmd(args).env("KUBESTRAP_TEST_KILL_AT", format!("{point}@0")).output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{args:?} was not killed at {point}: {out:?}");
}

#[test]
fn nodes_a_killed_start_add_or_delete_left_are_brought_up_or_removed_by_the_next_command() {
    if !need("docker", docker_engine) {
        return;
    }
    let c = multi_node();
    let ctx = "kubestrap-kn";
    let port = free_port().to_string();
    // A start killed as its agents were about to start: the next start starts them.
    killed_at(
        &c,
        "node start",
        &["start", "-p", "kn", "--manifest", c.m(), "--driver", "docker", "--nodes", "3", "--port", &port],
    );
    let (code, _) = c.status("kn");
    assert_eq!(code & 8, 8, "the agents are recorded but not running");
    c.env.ok(&["start", "-p", "kn"]);
    assert_eq!(kubectl_nodes(&c, ctx), all_ready(&["kubestrap-kn", "kubestrap-kn-m02", "kubestrap-kn-m03"]));
    // A node add killed once it recorded the node (made nothing of it yet),
    // then an upgrade: its snapshot holds the recorded node's (empty) state,
    // and it brings the node up with the others on the new release.
    killed_at(&c, "node add", &["node", "add", "-p", "kn"]);
    let next = crate::upgrade::release(&c.env, 33, 2, |s| {
        s.run_on([TestDriver::Native, TestDriver::Docker(docker_rootfs())]);
        s.multi_node();
    });
    c.env.ok(&["upgrade", "-p", "kn", "--manifest", next.to_str().unwrap()]);
    assert_eq!(
        kubectl_nodes(&c, ctx),
        all_ready(&["kubestrap-kn", "kubestrap-kn-m02", "kubestrap-kn-m03", "kubestrap-kn-m04"])
    );
    assert_eq!(kubelet_versions(&c, ctx), ["v1.33.4+standin"; 4]);
    let m04 = containers(&c).into_iter().find(|n| n.ends_with("-m04")).unwrap();
    let label = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"dev.kubestrap.profile\"}}",
        &format!("{m04}-data"),
    ]);
    assert_eq!(label.1.trim(), "kn", "the volume the snapshot made is labelled, so delete finds it");
    // A node delete killed after the drain: running it again finishes it.
    killed_at(&c, "node delete", &["node", "delete", "-p", "kn", "m04"]);
    c.env.ok(&["node", "delete", "-p", "kn", "m04"]);
    assert_eq!(kubectl_nodes(&c, ctx), all_ready(&["kubestrap-kn", "kubestrap-kn-m02", "kubestrap-kn-m03"]));
    assert!(!containers(&c).iter().any(|n| n.ends_with("-m04")), "{:?}", containers(&c));
    c.env.ok(&["delete", "-p", "kn"]);
    assert!(containers(&c).is_empty());
    assert_eq!(volumes(&c), "", "every volume, the snapshot's made ones too, was labelled and removed");
}
