//! `start --publish HOST_PORT:NODE_PORT`: a port of the server node on this
//! machine's 127.0.0.1, on the docker and qemu drivers, kept across stop and
//! start. The stand-in's API port (6443 in the node) plays the NodePort:
//! it answers `/ping` without credentials. (A real NodePort through it, and
//! `kubestrap service` pointing there: real.rs, docker.)

use std::net::TcpListener;
use std::process::Command;

use crate::support::*;

/// What `https://127.0.0.1:port/ping` answers ("" when nothing does).
fn ping(port: &str) -> String {
    let out = Command::new("curl").args(["-sk", "--max-time", "5", &format!("https://127.0.0.1:{port}/ping")]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

#[test]
fn a_published_port_reaches_the_docker_node_is_kept_and_a_busy_one_is_refused() {
    if !need("docker", docker_engine) {
        return;
    }
    let rootfs = docker_rootfs();
    let c = Cluster::with(|s| s.run_on([TestDriver::Native, TestDriver::Docker(rootfs)]));
    let (api, host) = (free_port().to_string(), free_port().to_string());
    let published = format!("{host}:6443");
    c.env.ok(&[
        "start",
        "-p",
        "pub",
        "--driver",
        "docker",
        "--manifest",
        c.m(),
        "--port",
        &api,
        "--publish",
        &published,
    ]);
    assert_eq!(ping(&host), "pong", "the published port");
    // Kept across a stop and a start that does not name it.
    c.env.ok(&["stop", "-p", "pub"]);
    assert_eq!(ping(&host), "", "published while stopped");
    c.env.ok(&["start", "-p", "pub"]);
    assert_eq!(ping(&host), "pong", "not kept");
    let cfg = std::fs::read_to_string(c.env.home.join("profiles/pub/config.toml")).unwrap();
    assert!(cfg.contains(&format!("publish = [\"{published}\"]")), "{cfg}");
    // A host port another program holds: refused before anything changes.
    c.env.ok(&["stop", "-p", "pub"]);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("{}:6443", busy.local_addr().unwrap().port());
    let err = c.env.fail(&["start", "-p", "pub", "--publish", &taken], Code::PortInUse);
    assert!(err.contains(&format!("--publish {taken}")) && err.contains("in use"), "{err}");
    let err = c.env.fail(&["start", "-p", "pub", "--publish", &format!("{api}:6443")], Code::PortInUse);
    assert!(err.contains("or is the API's"), "{err}");
    // --no-publish: none any more.
    c.env.ok(&["start", "-p", "pub", "--no-publish"]);
    assert_eq!(ping(&host), "", "still published");
    assert_eq!(ping(&api), "pong", "the API is");
    c.env.ok(&["delete", "-p", "pub"]);
}

#[test]
fn a_published_port_reaches_the_vm_and_the_native_driver_refuses_one() {
    // Natively the node is this machine: nothing to publish, said before anything is fetched.
    let c = Cluster::new();
    let err = c.env.fail(&["start", "-p", "nat", "--manifest", c.m(), "--publish", "18080:30080"], Code::Usage);
    assert!(err.contains("node is this machine") && err.contains("kubestrap service"), "{err}");
    assert!(c.env.blobs().is_empty(), "fetched before refusing");
    if !need("qemu", qemu_installed) {
        return;
    }
    let vm = vm_artifacts();
    let c = Cluster::with(|s| s.run_on([TestDriver::Native, TestDriver::Qemu(vm)]));
    let (api, host) = (free_port().to_string(), free_port().to_string());
    let args = ["start", "-p", "pv", "--driver", "qemu", "--manifest", c.m(), "--port", &api, "--accel", "tcg"];
    let mut args = args.to_vec();
    let published = format!("{host}:6443");
    args.extend(["--memory", "512", "--cpus", "1", "--publish", &published]);
    c.env.ok(&args);
    assert_eq!(ping(&host), "pong", "the published port");
    c.env.ok(&["delete", "-p", "pv"]);
}
