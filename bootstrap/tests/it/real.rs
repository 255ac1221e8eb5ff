//! Real Kubernetes: the development localkube (`ci/localkube/build.sh`:
//! upstream v1.20.2's kube-apiserver, controller-manager, scheduler,
//! kubelet and kube-proxy from Debian's source package, with Debian's etcd,
//! containerd, runc and CNI plugins) started by kubestrap from a signed
//! development manifest (`ci/dev-manifest.sh`), running real pods from an
//! image the project builds (`ci/images/build.sh`), on the native and
//! docker drivers. Every check here would fail if the wiring broke: the
//! node's kubelet version, pods Running from a loaded image, logs and exec
//! through the kubelet, a Service by its DNS name through kube-proxy's
//! rules, a NodePort from the host, a service account token the apiserver
//! accepts, state across stop/start, upgrade and rollback, a killed
//! component named and repaired, and a delete that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The kubectl the real cluster is driven with: this machine's oldest (the
/// nearest to the apiserver's v1.20).
fn kubectl() -> String {
    kubectls().first().expect("a real kubectl").1.display().to_string()
}

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A signed development manifest pinning the real localkube (and, for the
/// docker driver, the rootfs), made by `ci/dev-manifest.sh` as the
/// quickstart makes it; `run` replaces its run section.
pub fn real_manifest(env: &Env, name: &str, version: u64, docker: bool, run: Option<&Path>) -> PathBuf {
    let lk = localkube_artifact();
    let mut cmd = Command::new(top().join("ci/dev-manifest.sh"));
    cmd.args([env.scratch(name).to_str().unwrap(), "v0", &version.to_string(), "debug"])
        .env("KUBESTRAP_DEV_BIN", Path::new(KUBESTRAP).parent().unwrap())
        .env("KUBESTRAP_LOCALKUBE", &lk.path)
        .env("KUBESTRAP_HOME", &env.home);
    if docker {
        cmd.env("KUBESTRAP_DOCKER_ARTIFACTS", docker_rootfs().path.parent().unwrap());
    }
    if let Some(run) = run {
        cmd.env("KUBESTRAP_LOCALKUBE_RUN", run);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ci/dev-manifest.sh: {}", String::from_utf8_lossy(&out.stderr));
    env.ok(&["trust", "add", top().join("ci/dev-keys/dev.pub").to_str().unwrap()]);
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A real cluster of one profile, driven with the pinned-near kubectl.
pub struct Real {
    pub c: Cluster,
    pub profile: String,
    pub driver: &'static str,
    pub kubectl: String,
}

impl Real {
    pub fn new(driver: &'static str, profile: &str) -> Real {
        let env = Env::new();
        let manifest = real_manifest(&env, "release", 1, driver == "docker", None);
        Real { c: Cluster { env, manifest }, profile: profile.into(), driver, kubectl: kubectl() }
    }

    pub fn start(&self) -> String {
        self.start_with(&[])
    }

    /// `start` with `extra` arguments.
    pub fn start_with(&self, extra: &[&str]) -> String {
        let port = free_port().to_string();
        let mut args = vec![
            "start",
            "-p",
            &self.profile,
            "--manifest",
            self.c.m(),
            "--driver",
            self.driver,
            "--port",
            &port,
            "--wait-timeout",
            "300s",
        ];
        args.extend_from_slice(extra);
        self.c.env.ok(&args)
    }

    pub fn k(&self, args: &[&str]) -> String {
        self.c.kubectl_ok(&self.kubectl, args)
    }

    pub fn k_try(&self, args: &[&str]) -> (bool, String) {
        let out = self.c.kubectl(&self.kubectl, args);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub fn apply(&self, yaml: &str) {
        let file = self.c.env.scratch("yaml").join(format!("{}.yaml", sha256_hex(yaml.as_bytes())));
        std::fs::write(&file, yaml).unwrap();
        self.k(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Waits until every pod matching `selector` is Ready (and there are `n`).
    pub fn wait_ready(&self, selector: &str, n: usize) {
        let ok = wait_until(Duration::from_secs(240), || {
            let (ok, out) = self.k_try(&[
                "get",
                "pods",
                "-l",
                selector,
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            ok && out.lines().filter(|l| *l == "True").count() == n && out.lines().count() == n
        });
        if !ok {
            let pods = self.k_try(&["get", "pods", "-A", "-o", "wide"]).1;
            let describe = self.k_try(&["describe", "pods", "-l", selector]).1;
            let events = self.k_try(&["get", "events", "-A"]).1;
            panic!("pods {selector} were not {n} Ready within 240s:\n{pods}\n{describe}\n{events}\n{}", self.logs());
        }
    }

    /// The tail of the localkube components' logs (for failure reports).
    pub fn logs(&self) -> String {
        let out = self.c.env.run(&["logs", "-p", &self.profile]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The node's kubelet version and Ready condition: `v1.20.2 True`.
    pub fn node_summary(&self) -> String {
        self.k(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.nodeInfo.kubeletVersion} \
             {.items[0].status.conditions[?(@.type==\"Ready\")].status}",
        ])
    }

    /// The node's address, as the kubelet reports it.
    pub fn node_ip(&self) -> String {
        self.k(&["get", "nodes", "-o", "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}"])
    }

    /// Runs `sh -c script` in the client pod.
    pub fn in_client(&self, script: &str) -> String {
        self.k(&["exec", "client", "--", "sh", "-c", script])
    }
}

/// The app under test: busybox httpd serving a ConfigMap's page, two
/// replicas, behind a ClusterIP Service, a headless Service and a NodePort;
/// and a client pod to reach them from.
fn app_yaml(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: page}}
data: {{index.html: "hello from a real pod\n"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {image}
        imagePullPolicy: Never
        command: ["sh", "-c", "echo serving; exec httpd -f -v -p 8080 -h /page"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: page, mountPath: /page}}]
      volumes: [{{name: page, configMap: {{name: page}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-nodeport}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {image}
    imagePullPolicy: Never
    command: ["sleep", "86400"]
"#
    )
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The pods, the Services, DNS and the service account token: what a
/// running real cluster must do, checked from the pods and from the host.
fn check_workloads(r: &Real) {
    let (_, image) = busybox_image();
    r.apply(&app_yaml(&image));
    r.wait_ready("app=web", 2);
    r.wait_ready("app=client", 1);

    // logs and exec go through the kubelet's authenticated port.
    let logs = r.k(&["logs", "deployment/web"]);
    assert!(logs.contains("serving"), "kubectl logs: {logs}");
    let page = r.k(&["exec", "deployment/web", "--", "cat", "/page/index.html"]);
    assert_eq!(page, "hello from a real pod\n");

    // A ClusterIP Service by its DNS name, from another pod: cluster DNS,
    // then kube-proxy's iptables rules to a backend.
    let cluster_ip = r.k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // (kube-proxy writes a new Service's rules within a few seconds.)
    let reached = wait_until(Duration::from_secs(60), || {
        r.k_try(&[
            "exec",
            "client",
            "--",
            "timeout",
            "10",
            "wget",
            "-q",
            "-O",
            "-",
            "http://web.default.svc.cluster.local/",
        ])
        .1 == "hello from a real pod\n"
    });
    assert!(
        reached,
        "the Service by name from a pod: {}",
        r.k_try(&["exec", "client", "--", "wget", "-q", "-O", "-", "http://web.default.svc.cluster.local/"]).1
    );
    let got = r.in_client("timeout 10 wget -q -O - http://web/");
    assert_eq!(got, "hello from a real pod\n", "the short name through the pod's search path");
    let ns = r.in_client("nslookup web.default.svc.cluster.local");
    assert!(ns.contains(&cluster_ip), "nslookup from a pod: {ns}");
    // A headless Service: the ready pods' own addresses.
    let pod_ips = r.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ns = r.in_client("nslookup web-headless.default.svc.cluster.local");
    for ip in pod_ips.split_whitespace() {
        assert!(ns.contains(ip), "headless answer lacks {ip}: {ns}");
    }
    let missing = r.k_try(&["exec", "client", "--", "nslookup", "nothing-here.default.svc.cluster.local"]);
    assert!(!missing.0, "a missing Service resolved: {}", missing.1);

    // A NodePort from the host.
    let node_ip = r.node_ip();
    let port = r.k(&["get", "service", "web-nodeport", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let (ok, out) = sh(&format!("curl -s --max-time 5 http://{node_ip}:{port}/"));
    assert!(ok && out == "hello from a real pod\n", "NodePort {node_ip}:{port} from the host: {out}");
    // `kubestrap service` says where: that URL, which answers.
    let url = r.c.env.ok(&["service", "-p", &r.profile, "web-nodeport", "--url"]);
    assert_eq!(url, format!("http://{node_ip}:{port}\n"));
    let (ok, out) = sh(&format!("curl -s --max-time 5 {}/", url.trim()));
    assert!(ok && out == "hello from a real pod\n", "{url}: {out}");
    let json = r.c.env.ok(&["-o", "json", "service", "-p", &r.profile, "web-nodeport"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((v["type"].as_str(), v["urls"][0]["node_port"].as_u64()), (Some("NodePort"), port.parse().ok()), "{v}");
    // A ClusterIP Service is reached from pods only: how to expose it.
    let err = r.c.env.fail(&["service", "-p", &r.profile, "web"], Code::Usage);
    assert!(err.contains("no NodePort") && err.contains("port-forward service/web"), "{err}");
    let err = r.c.env.fail(&["service", "-p", &r.profile, "nothing-here"], Code::Usage);
    assert!(err.contains("has no Service default/nothing-here"), "{err}");
    let err = r.c.env.fail(&["service", "-p", &r.profile, "web-nodeport", "--port", "9"], Code::Usage);
    assert!(err.contains("has no port \"9\""), "{err}");

    // A service account token mounted in a pod is accepted by the
    // apiserver: it knows who the pod is (and RBAC says no).
    let token = r.in_client("cat /var/run/secrets/kubernetes.io/serviceaccount/token");
    let server = r.c.status(&r.profile).1["server"].as_str().unwrap().to_string();
    let (_, answer) = sh(&format!(
        "curl -s -k --max-time 5 -H 'Authorization: Bearer {token}' {server}/api/v1/namespaces/kube-system/secrets"
    ));
    assert!(answer.contains("system:serviceaccount:default:default"), "the token was not accepted: {answer}");
    let (_, answer) = sh(&format!("curl -s -k --max-time 5 -H 'Authorization: Bearer x{token}' {server}/api"));
    assert!(answer.contains("Unauthorized"), "a bad token was accepted: {answer}");
}

/// Cluster DNS against the specification's records, from the host with dig.
fn check_dns_from_host(r: &Real) {
    let node_ip = r.node_ip();
    let dig = |args: &str| {
        let (ok, out) = sh(&format!("dig @{node_ip} -p 10053 +time=3 +tries=2 {args}"));
        assert!(ok, "dig {args}: {out}");
        out
    };
    let cluster_ip = r.k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(dig("+short web.default.svc.cluster.local A").trim(), cluster_ip);
    let srv = dig("+short _http._tcp.web.default.svc.cluster.local SRV");
    assert_eq!(srv.trim(), "0 100 80 web.default.svc.cluster.local.", "SRV of a named port");
    let rev: Vec<&str> = cluster_ip.split('.').rev().collect();
    let ptr = dig(&format!("+short {}.in-addr.arpa PTR", rev.join(".")));
    assert_eq!(ptr.trim(), "web.default.svc.cluster.local.");
    assert_eq!(dig("+short kube-dns.kube-system.svc.cluster.local").trim(), "10.43.0.10");
    assert_eq!(dig("+short dns-version.cluster.local TXT").trim(), "\"1.1.0\"");
    assert!(dig("nothing.default.svc.cluster.local").contains("NXDOMAIN"));
    let headless = dig("+short _http._tcp.web-headless.default.svc.cluster.local SRV");
    assert_eq!(headless.lines().count(), 2, "one SRV per ready endpoint: {headless}");
    assert!(dig("kubernetes.default.svc.cluster.local AAAA").contains("NOERROR"), "NODATA for a type it lacks");
}

/// kill -9 of one component: `status` names it, `start` repairs it.
fn kill_component(r: &Real, name: &str, pid_of: impl Fn() -> Option<i32>) {
    let pid = pid_of().unwrap_or_else(|| panic!("no {name} process"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let down = wait_until(Duration::from_secs(60), || r.c.status(&r.profile).0 & 2 != 0);
    let out = r.c.env.run(&["status", "-p", &r.profile]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(down, "status after kill -9 of {name}: {text}");
    assert!(text.contains(name), "status does not name {name}: {text}");
    r.start();
    r.wait_ready("app=web", 2);
}

/// Processes named `comm` carrying the profile's marker (native).
fn native_pid(c: &Cluster, profile: &str, comm: &str) -> Option<i32> {
    let run = c.run_dir(profile);
    let marker = format!("KUBESTRAP_RUN_DIR={}", run.display());
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is = args.first().is_some_and(|a| a.ends_with(b"localkube")) && args.get(1) == Some(&comm.as_bytes());
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        (is && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())).then_some(pid)
    })
}

#[test]
fn real_kubernetes_runs_pods_on_the_native_driver() {
    if !need("localkube", localkube_buildable) {
        return;
    }
    let _machine = machine();
    let r = Real::new("native", "real");
    let started = r.start();
    assert!(started.contains("node ready"), "start did not wait for the node: {started}");

    assert_eq!(r.node_summary(), "v1.20.2 True", "the node's kubelet and Ready");

    // `image load` into the running node: imported while it runs.
    let (archive, _) = busybox_image();
    r.c.env.ok(&["image", "load", "-p", "real", archive.to_str().unwrap()]);
    check_workloads(&r);
    check_dns_from_host(&r);

    // stop → start: real etcd data and the same Deployment back Running.
    r.k(&["create", "configmap", "kept", "--from-literal=k=v"]);
    r.c.env.ok(&["stop", "-p", "real"]);
    assert!(
        machine_leftovers().iter().all(|l| !l.starts_with("process")),
        "pods outlived stop: {:?}",
        machine_leftovers()
    );
    r.start();
    r.wait_ready("app=web", 2);
    assert_eq!(r.k(&["get", "configmap", "kept", "-o", "jsonpath={.data.k}"]), "v");

    // A killed component is named, and start repairs it.
    kill_component(&r, "kube-apiserver", || native_pid(&r.c, "real", "kube-apiserver"));
    kill_component(&r, "kubelet", || native_pid(&r.c, "real", "kubelet"));

    r.c.env.ok(&["delete", "-p", "real"]);
    let left = machine_leftovers();
    assert!(left.is_empty(), "delete left on the machine: {left:?}");
    assert!(!Path::new("/run/localkube").exists(), "/run/localkube is still there");
}

/// The profile's container (docker driver).
fn container_of(r: &Real) -> String {
    let (_, names) = crate::docker::docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dev.kubestrap.profile={}", r.profile),
        "--format",
        "{{.Names}}",
    ]);
    names
        .lines()
        .find(|n| n.starts_with(&format!("kubestrap-{}-", r.profile)))
        .expect("the profile's container")
        .to_string()
}

fn docker_pid(r: &Real, comm: &str) -> Option<i32> {
    let c = container_of(r);
    let script = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^[^ ]*/bin/localkube {comm} ' && echo ${{p#/proc/}}; done; true"
    );
    let (ok, out) = crate::docker::docker(&["exec", &c, "sh", "-c", &script]);
    // The pid in the container's namespace: killed from inside it.
    ok.then(|| out.lines().next()?.trim().parse().ok()).flatten()
}

/// `image load NAME:TAG` from the machine's own engine (`docker save`), into
/// the running node, and a pod from it; a name the engine does not have is
/// refused as a usage error.
fn check_load_from_engine(r: &Real) {
    let (archive, image) = busybox_image();
    let tagged = "localhost/kubestrap/busybox:from-engine";
    assert!(crate::docker::docker(&["load", "-i", archive.to_str().unwrap()]).0);
    assert!(crate::docker::docker(&["tag", &image, tagged]).0);
    let out = r.c.env.ok(&["-o", "json", "image", "load", "-p", &r.profile, tagged]);
    assert!(out.contains(tagged) && out.contains("running_nodes"), "{out}");
    r.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: from-engine\n  labels: {{app: from-engine}}\nspec:\n  \
         containers:\n  - name: c\n    image: {tagged}\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \
         \"echo loaded-by-name; sleep 3600\"]\n"
    ));
    r.wait_ready("app=from-engine", 1);
    assert_eq!(r.k(&["logs", "from-engine"]), "loaded-by-name\n");
    r.c.env.fail(&["image", "load", "-p", &r.profile, "localhost/kubestrap/no-such:image"], Code::Usage);
    let _ = crate::docker::docker(&["rmi", tagged, &image]);
}

#[test]
fn real_kubernetes_runs_pods_on_the_docker_driver() {
    if !need("localkube", localkube_buildable) || !need("docker", docker_engine) {
        return;
    }
    let r = Real::new("docker", "realdk");
    let started = r.start();
    assert!(started.contains("node ready"), "{started}");
    assert_eq!(r.node_summary(), "v1.20.2 True", "the node's kubelet and Ready");
    // `image load` into the running container: imported while it runs, no
    // restart (the pods below run from it).
    let (archive, _) = busybox_image();
    let out = r.c.env.ok(&["-o", "json", "image", "load", "-p", "realdk", archive.to_str().unwrap()]);
    assert!(out.contains("\"running_nodes\":[\"kubestrap-realdk\"]"), "{out}");
    let loaded: serde_json::Value =
        serde_json::from_str(out.lines().find(|l| l.contains("running_nodes")).unwrap()).unwrap();
    let sha = loaded["sha256"].as_str().unwrap().to_string();
    let imported = wait_until(Duration::from_secs(60), || {
        String::from_utf8_lossy(&r.c.env.run(&["logs", "-p", "realdk"]).stdout).contains(&format!("imported {sha}"))
    });
    assert!(imported, "localkube did not import {sha} while it ran");
    check_workloads(&r);
    check_load_from_engine(&r);
    check_dns_from_host(&r);

    r.k(&["create", "configmap", "kept", "--from-literal=k=v"]);
    r.c.env.ok(&["stop", "-p", "realdk"]);
    // Started again with the NodePort published on 127.0.0.1: `service`
    // points there now, and it answers.
    let published = free_port().to_string();
    r.start_with(&["--publish", &format!("{published}:30080")]);
    r.wait_ready("app=web", 2);
    assert_eq!(r.k(&["get", "configmap", "kept", "-o", "jsonpath={.data.k}"]), "v");
    let url = r.c.env.ok(&["service", "-p", "realdk", "web-nodeport", "--url"]);
    assert_eq!(url, format!("http://127.0.0.1:{published}\n"));
    // (kube-proxy writes the NodePort's rules again within seconds of its start.)
    let mut out = String::new();
    let answered = wait_until(Duration::from_secs(60), || {
        out = sh(&format!("curl -s --max-time 5 {}/", url.trim())).1;
        out == "hello from a real pod\n"
    });
    assert!(answered, "the published NodePort {url}: {out}");

    // kill -9 of a component inside the container: named, then repaired.
    for comm in ["kube-apiserver", "kubelet"] {
        let pid = docker_pid(&r, comm).unwrap_or_else(|| panic!("no {comm} in the container"));
        let c = container_of(&r);
        assert!(crate::docker::docker(&["exec", &c, "kill", "-9", &pid.to_string()]).0);
        let down = wait_until(Duration::from_secs(60), || r.c.status(&r.profile).0 & 2 != 0);
        let out = r.c.env.run(&["status", "-p", &r.profile]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(down && text.contains(comm), "status after kill -9 of {comm}: {text}");
        r.start();
        r.wait_ready("app=web", 2);
    }

    let name = container_of(&r);
    r.c.env.ok(&["delete", "-p", "realdk"]);
    let (_, left) = crate::docker::docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!left.contains(&name), "the container is still there: {left}");
    let (_, vols) = crate::docker::docker(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!vols.contains(&name), "its volume is still there: {vols}");
    let (_, nets) = crate::docker::docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("kubestrap-realdk"), "its network is still there: {nets}");
}

/// A run section like the development one with `extra` arguments for
/// localkube (a changed component flag).
fn run_with(env: &Env, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(top().join("ci/localkube/run.toml")).unwrap();
    let changed = text.replace("  \"--kube-apiserver-arg=event-ttl=1h\",\n", &format!("  {extra},\n"));
    assert_ne!(changed, text, "the run section's event-ttl line moved");
    let path = env.scratch("runs").join(format!("{name}.toml"));
    std::fs::write(&path, changed).unwrap();
    path
}

#[test]
fn real_kubernetes_upgrades_with_its_pods_and_rolls_back_a_broken_apiserver() {
    if !need("localkube", localkube_buildable) {
        return;
    }
    let _machine = machine();
    let r = Real::new("native", "realup");
    r.start();
    let (archive, _) = busybox_image();
    r.c.env.ok(&["image", "load", "-p", "realup", archive.to_str().unwrap()]);
    let (_, image) = busybox_image();
    r.apply(&app_yaml(&image));
    r.wait_ready("app=web", 2);
    r.k(&["create", "configmap", "before", "--from-literal=k=v"]);
    let pods_before = r.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]);

    // The same build with a changed apiserver flag: an upgrade.
    let run2 = run_with(&r.c.env, "ttl2h", "\"--kube-apiserver-arg=event-ttl=2h\"");
    let m2 = real_manifest(&r.c.env, "release2", 2, false, Some(&run2));
    let out = r.c.env.ok(&["upgrade", "-p", "realup", "--manifest", m2.to_str().unwrap(), "--wait-timeout", "300s"]);
    assert!(out.contains("upgrade"), "{out}");
    r.wait_ready("app=web", 2);
    assert_eq!(
        r.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]),
        pods_before,
        "the same pods"
    );
    assert_eq!(r.k(&["get", "configmap", "before", "-o", "jsonpath={.data.k}"]), "v");
    // The snapshot the upgrade took holds the real etcd and containerd state.
    let snaps = r.c.env.home.join("profiles/realup/snapshots");
    let snap = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("data").is_dir())
        .expect("a snapshot");
    for d in ["data/etcd/member", "data/containerd"] {
        assert!(snap.join(d).is_dir(), "the snapshot has no {d}: {}", snap.display());
    }

    // A candidate whose apiserver cannot start: rolled back to the running pods.
    let run3 = run_with(&r.c.env, "broken", "\"--kube-apiserver-arg=no-such-flag=1\"");
    let m3 = real_manifest(&r.c.env, "release3", 3, false, Some(&run3));
    let err = r.c.env.fail(
        &["upgrade", "-p", "realup", "--manifest", m3.to_str().unwrap(), "--wait-timeout", "120s"],
        Code::UpgradeRolledBack,
    );
    assert!(err.contains("rolled back") && err.contains("no-such-flag"), "{err}");
    r.wait_ready("app=web", 2);
    assert_eq!(r.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]), pods_before);
    assert_eq!(r.k(&["get", "configmap", "before", "-o", "jsonpath={.data.k}"]), "v");
    let (code, st) = r.c.status("realup");
    assert_eq!(code, 0, "{st}");
    r.c.env.ok(&["delete", "-p", "realup"]);
}
