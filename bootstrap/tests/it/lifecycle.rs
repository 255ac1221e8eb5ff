//! End to end: `kubestrap start/stop/delete/status/...` on the native driver,
//! with the stand-in localkube and the real kubectl on this machine.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    AUTO_PORT, Cluster, Code, KUBECTL, alive, free_port, json_lines, kubectls, wait_until, wrap_standin,
};

/// The oldest real kubectl on the machine (1.27 here): it POSTs JSON where
/// the newest (1.33) POSTs protobuf.
fn kubectl_old() -> String {
    kubectls().first().map(|(_, k)| k.display().to_string()).expect("a kubectl")
}

fn kubeconfig_doc(path: &Path) -> serde_norway::Value {
    serde_norway::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn names(doc: &serde_norway::Value, list: &str) -> Vec<String> {
    doc[list].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn start_use_stop_resume_delete_with_real_kubectl() {
    let c = Cluster::new();
    // An unrelated cluster in the same kubeconfig must survive everything.
    fs::create_dir_all(c.env.kubeconfig.parent().unwrap()).unwrap();
    fs::write(
        &c.env.kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod.example:6443\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\n    namespace: web\nusers:\n- name: prod\n  user:\n    token: secret\ncurrent-context: prod\n",
    )
    .unwrap();

    let out = c.start("kubestrap");
    assert!(out.contains("✓ apiserver ready"), "{out}");
    assert!(out.contains("kubectl get ns"), "{out}");
    let doc = kubeconfig_doc(&c.env.kubeconfig);
    assert_eq!(doc["current-context"].as_str(), Some("kubestrap"));

    // The real kubectl, old and new (1.33 POSTs protobuf).
    let ns = c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(c.kubectl_ok(&kubectl_old(), &["get", "ns", "-o", "name"]).contains("namespace/default"));
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "demo", "--from-literal=a=b"]);
    c.kubectl_ok(&kubectl_old(), &["create", "configmap", "old", "--from-literal=x=y"]);
    assert!(c.kubectl_ok(&KUBECTL, &["get", "sa", "default", "-o", "name"]).contains("serviceaccount/default"));
    assert!(c.kubectl_ok(&KUBECTL, &["version", "-o", "json"]).contains("v1.33.1+standin"));
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["apiserver"], "Running");
    assert_eq!(st["kubernetes"], "v1.33.1+standin");

    // The pinned kubectl, through kubestrap, with the profile's context.
    let out = c.env.ok(&["kubectl", "--", "get", "configmap", "demo", "-o", "jsonpath={.data.a}"]);
    assert_eq!(out, "b");

    // stop: state kept, status says stopped.
    let saved = c.env.path().join("kubeconfig-before-stop");
    fs::copy(&c.env.kubeconfig, &saved).unwrap();
    let pid = c.localkube_pid("kubestrap");
    c.env.ok(&["stop"]);
    assert!(!alive(pid), "localkube still running after stop");
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 7, "{st}");
    assert_eq!(st["host"], "Stopped");
    assert_eq!(st["localkube"], "Stopped");

    // start again (no --manifest: the profile remembers), same port and certs: data still there.
    let out = c.env.ok(&["start"]);
    assert!(out.contains("up again"), "{out}");
    assert_eq!(c.kubectl_ok(&KUBECTL, &["get", "configmap", "demo", "-o", "jsonpath={.data.a}"]), "b");
    assert_eq!(c.kubectl_ok(&KUBECTL, &["get", "configmap", "old", "-o", "jsonpath={.data.x}"]), "y");
    // A kubeconfig copied before the stop still works: same CA, same admin cert.
    let out = Command::new(&*KUBECTL)
        .args(["--kubeconfig", saved.to_str().unwrap(), "get", "configmap", "demo", "-o", "name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // start while running is a no-op that keeps it running.
    let pid = c.localkube_pid("kubestrap");
    assert!(c.env.ok(&["start"]).contains("already running"));
    assert_eq!(c.localkube_pid("kubestrap"), pid);
    // …and says so when asked for another port.
    let other = free_port().to_string();
    let out = c.env.run(&["start", "--port", &other]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("--port {other} is ignored")));
    assert_eq!(c.localkube_pid("kubestrap"), pid);

    // delete: profile gone, our kubeconfig entries gone, prod intact.
    c.env.ok(&["delete"]);
    assert!(!alive(pid));
    assert!(!c.env.home.join("profiles/kubestrap").exists());
    let doc = kubeconfig_doc(&c.env.kubeconfig);
    assert_eq!(names(&doc, "clusters"), ["prod"]);
    assert_eq!(names(&doc, "contexts"), ["prod"]);
    assert_eq!(names(&doc, "users"), ["prod"]);
    assert_eq!(doc["contexts"][0]["context"]["namespace"].as_str(), Some("web"));
    assert_eq!(doc["current-context"].as_str(), Some(""));
    c.env.fail(&["status"], Code::NoProfile);
}

#[test]
fn two_profiles_run_at_once_on_their_own_ports() {
    let _serial = AUTO_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::new();
    c.env.ok(&["start", "-p", "one", "--manifest", c.m()]);
    c.env.ok(&["start", "-p", "two", "--manifest", c.m(), "--keep-context"]);
    let (_, one) = c.status("one");
    let (_, two) = c.status("two");
    assert_ne!(one["server"], two["server"]);
    let doc = kubeconfig_doc(&c.env.kubeconfig);
    assert_eq!(doc["current-context"].as_str(), Some("kubestrap-one"), "--keep-context left it alone");
    c.kubectl_ok(&KUBECTL, &["--context", "kubestrap-one", "create", "configmap", "only-in-one"]);
    let out = c.kubectl(&KUBECTL, &["--context", "kubestrap-two", "get", "configmap", "only-in-one"]);
    assert!(!out.status.success(), "clusters share state");
    let list = c.env.ok(&["profile", "list"]);
    assert!(list.contains("one") && list.contains("two"), "{list}");
    c.env.ok(&["delete", "--all"]);
    assert!(c.env.ok(&["profile", "list"]).contains("no profiles"));
}

#[test]
fn default_port_taken_means_next_free_one_and_asked_port_in_use_is_an_error() {
    let _serial = AUTO_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::new();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let err = c.env.fail(&["start", "--manifest", c.m(), "--port", &port], Code::PortInUse);
    assert!(err.contains(&format!("port {port}")) && err.contains("in use"), "{err}");
    assert!(!c.pid_file("kubestrap").exists(), "nothing was launched");

    // Hold 8443 (or find it held by someone else): kubestrap picks another.
    let _hold = TcpListener::bind("127.0.0.1:8443");
    c.env.ok(&["start", "--manifest", c.m()]);
    let (_, st) = c.status("kubestrap");
    assert_ne!(st["server"], "https://127.0.0.1:8443", "{st}");
}

#[test]
fn killed_localkube_is_reported_and_start_recovers() {
    let c = Cluster::new();
    c.start("kubestrap");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "keep", "--from-literal=k=v"]);
    let pid = c.localkube_pid("kubestrap");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || c.status("kubestrap").1["localkube"] == "Crashed"));
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 6, "{st}");
    assert!(st["crash"].as_str().unwrap().contains("signal 9"), "{st}");
    assert!(!st["log_tail"].as_array().unwrap().is_empty(), "{st}");
    let text = c.env.run(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("localkube crashed: killed by signal 9"));

    let out = c.env.run(&["start"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("had stopped unexpectedly"));
    assert_eq!(c.kubectl_ok(&KUBECTL, &["get", "cm", "keep", "-o", "jsonpath={.data.k}"]), "v");
}

/// `/proc/<pid>/stat`'s start time (clock ticks after boot).
fn start_time(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..].split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string()
}

/// A pid file in kubestrap's format naming `pid` (with `start`) as localkube
/// and as its monitor.
fn fake_pid_file(pid: u32, start: u64, boot: &str) -> String {
    format!(
        "port = 1\nstarted = \"2026-01-01T00:00:00Z\"\nboot = \"{boot}\"\n[localkube]\npid = {pid}\nstart_time = {start}\n[monitor]\npid = {pid}\nstart_time = {start}\n"
    )
}

#[test]
fn stale_pid_file_never_signals_an_unrelated_process() {
    use std::os::unix::process::CommandExt;
    let c = Cluster::new();
    c.start("kubestrap");
    c.env.ok(&["stop"]);
    // The unrelated process leads its own process group, like a monitor did.
    let mut victim = Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
    let pid = victim.id();
    let run = c.pid_file("kubestrap");
    // 1. A crash left a pid file whose pid now belongs to an unrelated process.
    fs::write(&run, fake_pid_file(pid, 1, &boot_id())).unwrap();
    let (code, _) = c.status("kubestrap");
    assert_eq!(code & 2, 2, "the unrelated process is not our localkube");
    c.env.ok(&["stop"]);
    assert!(victim.try_wait().unwrap().is_none(), "the unrelated process was signalled by stop");
    // 2. A pid file from before a reboot: even pid and start time matching
    // prove nothing, so nothing is signalled.
    fs::write(&run, fake_pid_file(pid, start_time(pid), "another-boot")).unwrap();
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 7, "stopped by the reboot: {st}");
    c.env.ok(&["stop"]);
    assert!(victim.try_wait().unwrap().is_none(), "the unrelated process was signalled after a reboot");
    fs::write(&run, fake_pid_file(pid, 1, &boot_id())).unwrap();
    c.start("kubestrap");
    assert!(victim.try_wait().unwrap().is_none(), "the unrelated process was signalled by start");
    c.env.ok(&["delete"]);
    assert!(victim.try_wait().unwrap().is_none(), "the unrelated process was signalled by delete");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn damaged_pid_file_never_leads_to_a_second_localkube() {
    let c = Cluster::new();
    c.start("kubestrap");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "keep", "--from-literal=k=v"]);
    let old = c.localkube_pid("kubestrap");
    fs::write(c.pid_file("kubestrap"), "garbage = [").unwrap();
    let (code, st) = c.status("kubestrap");
    assert_eq!(code & 2, 2, "{st}");
    assert!(st["crash"].as_str().unwrap().contains("damaged"), "{st}");
    // start stops what runs of the cluster (found by its marker), then starts it once.
    c.start("kubestrap");
    assert!(!alive(old), "the old localkube still runs beside the new one");
    assert_eq!(c.kubectl_ok(&KUBECTL, &["get", "cm", "keep", "-o", "jsonpath={.data.k}"]), "v");
    // Pid file gone and config gone: delete still stops localkube.
    let pid = c.localkube_pid("kubestrap");
    fs::remove_file(c.pid_file("kubestrap")).unwrap();
    let (code, st) = c.status("kubestrap");
    assert_eq!(code & 2, 2, "processes without a pid file are reported: {st}");
    fs::remove_file(c.env.home.join("profiles/kubestrap/config.toml")).unwrap();
    // stop finds and stops it without config or pid file.
    c.env.ok(&["stop"]);
    assert!(!alive(pid), "stop left localkube running");
    c.env.ok(&["delete"]);
    assert!(!c.env.home.join("profiles/kubestrap").exists());
}

#[test]
fn profiles_started_at_once_get_different_ports() {
    let _serial = AUTO_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::new();
    let spawn = |name: &str| {
        c.env
            .cmd(&["start", "-p", name, "--manifest", c.m(), "--keep-context"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("aa"), spawn("bb"));
    for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (ca, aa) = c.status("aa");
    let (cb, bb) = c.status("bb");
    assert_eq!((ca, cb), (0, 0));
    assert_ne!(aa["server"], bb["server"]);
}

#[test]
fn concurrent_starts_wait_for_each_other_and_no_wait_fails_fast() {
    // A slow apiserver keeps the first start busy for a while.
    let c = Cluster::with(|s| s.args.push("--ready-delay-ms=1500".into()));
    let port = free_port().to_string();
    let args = ["start", "--manifest", c.m(), "--port", port.as_str()];
    let mut first = c.env.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Its first step line means it holds the profile lock (taken before the
    // manifest is read) and, with the slow apiserver, keeps it a while.
    let mut first_out = std::io::BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut first_out, &mut line).unwrap();
    assert!(line.contains("manifest verified"), "{line}");
    let err = c.env.fail(&["start", "--no-wait"], Code::Locked);
    assert!(err.contains("locked by another kubestrap"), "{err}");
    let second = c.env.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut first_out, &mut rest).unwrap();
    let (mut a, b) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    a.stdout = format!("{line}{rest}").into_bytes();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let both = format!("{}{}", String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout));
    assert_eq!(both.matches("already running").count(), 1, "{both}");
    assert!(String::from_utf8_lossy(&b.stderr).contains("waiting"), "the second start said it waits");
}

#[test]
fn malformed_kubeconfig_is_left_untouched_and_nothing_starts() {
    let c = Cluster::new();
    fs::create_dir_all(c.env.kubeconfig.parent().unwrap()).unwrap();
    let bad = "apiVersion: v1\nclusters: [\n  - name: broken\n";
    fs::write(&c.env.kubeconfig, bad).unwrap();
    let port = free_port().to_string();
    let err = c.env.fail(&["start", "--manifest", c.m(), "--port", &port], Code::Kubeconfig);
    assert!(err.contains("left it untouched"), "{err}");
    assert_eq!(fs::read_to_string(&c.env.kubeconfig).unwrap(), bad);
    assert!(!c.pid_file("kubestrap").exists());
}

#[test]
fn not_ready_in_time_stops_localkube_and_shows_its_log() {
    let c = Cluster::with(|s| s.args.push("--never-ready".into()));
    let port = free_port().to_string();
    let err = c.env.fail(&["start", "--manifest", c.m(), "--port", &port, "--wait-timeout", "2s"], Code::NotReady);
    assert!(err.contains("not ready after 2s"), "{err}");
    assert!(err.contains("standin: listening"), "the log tail is shown: {err}");
    assert!(!c.pid_file("kubestrap").exists(), "localkube was stopped");
}

#[test]
fn localkube_that_exits_at_once_is_reported() {
    let c = Cluster::with(|s| s.args.push("--no-such-flag".into()));
    let port = free_port().to_string();
    let err = c.env.fail(&["start", "--manifest", c.m(), "--port", &port], Code::LocalkubeExited);
    assert!(err.contains("exited with code 2"), "{err}");
}

#[test]
fn json_output_and_logs() {
    let c = Cluster::new();
    let port = free_port().to_string();
    let out = c.env.ok(&["start", "--manifest", c.m(), "--port", &port, "-o", "json"]);
    let lines = json_lines(&out);
    let steps: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert!(steps.contains(&"manifest verified") && steps.contains(&"apiserver ready"), "{steps:?}");
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["server"], format!("https://127.0.0.1:{port}"));
    let logs = c.env.ok(&["logs", "-n", "5"]);
    assert!(logs.contains("standin:"), "{logs}");
    let list = c.env.ok(&["profile", "list", "-o", "json"]);
    assert_eq!(json_lines(&list)[0]["name"], "kubestrap");
}

#[test]
fn pki_is_private_and_reused() {
    let c = Cluster::new();
    c.start("kubestrap");
    let pki = c.env.home.join("profiles/kubestrap/pki");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&pki).unwrap().permissions().mode() & 0o777, 0o700);
    for f in ["ca.key", "apiserver.key", "admin.key", "sa.key", "token.csv"] {
        assert_eq!(fs::metadata(pki.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    let ca = fs::read(pki.join("ca.crt")).unwrap();
    c.env.ok(&["stop"]);
    c.env.ok(&["start"]);
    assert_eq!(fs::read(pki.join("ca.crt")).unwrap(), ca, "the CA is reused");
    // The static admin token works too.
    let token = fs::read_to_string(pki.join("token.csv")).unwrap().split(',').next().unwrap().to_string();
    let server = c.status("kubestrap").1["server"].as_str().unwrap().to_string();
    let ca_flag = format!("--certificate-authority={}", pki.join("ca.crt").display());
    let out = c.kubectl_ok(
        &KUBECTL,
        &["--kubeconfig=/dev/null", "--server", &server, &ca_flag, "--token", &token, "get", "ns", "-o", "name"],
    );
    assert!(out.contains("namespace/default"), "{out}");
}

#[test]
fn start_killed_mid_way_is_finished_by_the_next_start() {
    let c = Cluster::with(|s| s.args.push("--ready-delay-ms=2000".into()));
    let port = free_port().to_string();
    let mut first = c
        .env
        .cmd(&["start", "--manifest", c.m(), "--port", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it after localkube was launched, while it waits for ready.
    assert!(wait_until(Duration::from_secs(20), || c.pid_file("kubestrap").exists()));
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    let out = c.env.ok(&["start"]);
    assert!(out.contains("already running") && out.contains("apiserver ready"), "{out}");
    assert_eq!(c.status("kubestrap").0, 0);
    assert!(c.kubectl_ok(&KUBECTL, &["get", "ns", "-o", "name"]).contains("namespace/default"));
}

#[test]
fn stop_kills_what_localkube_left_in_its_process_group() {
    // A localkube that starts a helper process (as k3s starts containerd).
    let c = Cluster::with(|s| {
        wrap_standin(s, "with-helper", "sleep 300 &\necho $! > \"$1\"\nshift");
        s.args.insert(0, "{data}/helper.pid".into());
    });
    c.start("kubestrap");
    let helper_file = c.env.home.join("profiles/kubestrap/data/helper.pid");
    let helper: i32 = fs::read_to_string(&helper_file).unwrap().trim().parse().unwrap();
    assert!(alive(helper));
    c.env.ok(&["stop"]);
    assert!(wait_until(Duration::from_secs(5), || !alive(helper)), "the helper outlived stop");
}

#[test]
fn kept_manifests_need_the_same_consent_and_a_private_stable_is_no_fallback() {
    let c = Cluster::with(|s| {
        s.channel = "stable".into();
        s.published = time::OffsetDateTime::now_utc() - time::Duration::days(400);
        s.expires = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    });
    // Kept in the home knowingly…
    c.env.ok(&["fetch", "--manifest", c.m(), "--allow-expired"]);
    // …but a new cluster from it needs the same explicit consent.
    let err =
        c.env.fail(&["start", "-p", "fresh", "--manifest", c.m(), "--port", &free_port().to_string()], Code::Expired);
    assert!(err.contains("--allow-expired"), "{err}");
    assert!(!c.env.home.join("profiles/fresh/run/localkube.pid").exists());
    // A manifest that calls itself "stable" but is trusted through a pinned
    // key is never taken for the official channel when it is unreachable.
    let err = c.env.fail(&["start", "-p", "other", "--offline"], Code::OfflineMissing);
    assert!(err.contains("no manifest of the stable channel"), "{err}");
}

#[test]
fn delete_with_a_damaged_config_still_stops_localkube() {
    let c = Cluster::new();
    c.start("kubestrap");
    let pid = c.localkube_pid("kubestrap");
    fs::write(c.env.home.join("profiles/kubestrap/config.toml"), "this is not toml [").unwrap();
    c.env.fail(&["status"], Code::Disk);
    c.env.ok(&["delete"]);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)), "localkube outlived delete");
    assert!(!c.env.home.join("profiles/kubestrap").exists());
}

#[test]
fn an_interrupted_stop_reads_as_stopped_not_crashed() {
    let c = Cluster::new();
    c.start("kubestrap");
    // What a stop killed right after localkube ended leaves behind: the
    // marker naming the localkube it stops.
    let marker = c.env.home.join("profiles/kubestrap/run/stopping");
    let pid = c.localkube_pid("kubestrap");
    let stopping = format!("pid = {pid}\nstart_time = {}\n", start_time(pid as u32));
    fs::write(&marker, &stopping).unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 7, "{st}");
    assert_eq!(st["localkube"], "Stopped");
    let out = c.env.run(&["start"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("unexpectedly"));

    // A stop killed around its signal (localkube may be on its way down):
    // the start finishes the stop and starts localkube again, and a later
    // crash of the new one is a crash.
    let old = c.localkube_pid("kubestrap");
    fs::write(&marker, format!("pid = {old}\nstart_time = {}\n", start_time(old as u32))).unwrap();
    assert_eq!(c.status("kubestrap").1["localkube"], "Stopping");
    assert!(c.env.ok(&["start"]).contains("interrupted stop finished"));
    assert!(!alive(old));
    let pid = c.localkube_pid("kubestrap");
    assert_ne!(pid, old);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let (code, st) = c.status("kubestrap");
    assert_eq!((code, &st["localkube"]), (6, &serde_json::json!("Crashed")), "{st}");
}

#[test]
fn every_kubectl_from_1_27_to_1_33_works_against_the_cluster() {
    let c = Cluster::new();
    c.start("kubestrap");
    let mut tried = Vec::new();
    for (minor, kubectl) in kubectls() {
        let k = kubectl.to_str().unwrap();
        let cm = format!("cm-{minor}");
        assert!(c.kubectl_ok(k, &["get", "ns", "-o", "name"]).contains("namespace/kube-system"), "{k}");
        c.kubectl_ok(k, &["create", "configmap", &cm, "--from-literal=minor=1", "-n", "kube-public"]);
        let got = c.kubectl_ok(k, &["get", "configmap", &cm, "-n", "kube-public", "-o", "jsonpath={.data.minor}"]);
        assert_eq!(got, "1", "{k}");
        assert!(c.kubectl_ok(k, &["get", "sa", "default", "-n", "kube-public", "-o", "name"]).contains("default"));
        c.kubectl_ok(k, &["delete", "configmap", &cm, "-n", "kube-public"]);
        assert!(!c.kubectl(k, &["get", "configmap", &cm, "-n", "kube-public"]).status.success(), "{k}: still there");
        tried.push(minor);
    }
    // The machine image ships 1.27 to 1.33; elsewhere, the kubectl there is.
    assert!(!tried.is_empty());
    if Path::new("/usr/lib/google-cloud-sdk/bin").is_dir() {
        assert!(tried.contains(&27) && tried.contains(&33), "kubectl 1.27 and 1.33 must be on the machine: {tried:?}");
    }
    println!("kubectl minors tried: {tried:?}");
}

#[test]
fn purge_only_with_every_profile_and_profile_list_survives_a_damaged_one() {
    let c = Cluster::new();
    c.start("one");
    c.start("two");
    let blobs = c.env.home.join("blobs/sha256");
    assert!(fs::read_dir(&blobs).unwrap().count() > 0);
    // --purge while another cluster still uses the cache: refused, nothing removed.
    let err = c.env.fail(&["delete", "-p", "one", "--purge"], Code::Usage);
    assert!(err.contains("two") && err.contains("--all --purge"), "{err}");
    assert!(c.env.home.join("profiles/one").is_dir());
    // A damaged profile is listed as such; the others still are.
    fs::write(c.env.home.join("profiles/two/config.toml"), "not toml [").unwrap();
    let list = c.env.ok(&["profile", "list"]);
    assert!(list.contains("two") && list.contains("damaged"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("one") && l.contains("Running")), "{list}");
    // With every profile: everything goes, the cache too.
    c.env.ok(&["delete", "--all", "--purge"]);
    assert!(!blobs.exists() || fs::read_dir(&blobs).unwrap().count() == 0);
    assert!(c.env.ok(&["profile", "list"]).contains("no profiles"));
    // A profile that does not exist: purge still works, and says nothing about deleting it.
    let out = c.env.ok(&["delete", "-p", "nosuch", "--purge"]);
    assert!(!out.contains("deleted profile"), "{out}");
    c.env.fail(&["delete", "-p", "nosuch"], Code::NoProfile);
}

#[test]
fn status_warns_before_the_certificates_expire() {
    let c = Cluster::new();
    let port = free_port().to_string();
    c.env.ok(&["start", "--manifest", c.m(), "--port", &port, "--cert-days", "10"]);
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 0, "a warning is not a failure: {st}");
    let warnings = st["warnings"].to_string();
    assert!(warnings.contains("apiserver.crt") && warnings.contains("renews it"), "{st}");
    let text = String::from_utf8_lossy(&c.env.run(&["status"]).stderr).into_owned();
    assert!(text.contains("apiserver.crt expires"), "a warning on stderr: {text}");
}

#[test]
fn monitor_caps_the_log_and_logs_follow_carries_on() {
    // A localkube that writes 17 MiB of output first (the cap is 16 MiB).
    let c = Cluster::with(|s| wrap_standin(s, "chatty", "yes 'chatty localkube line' | head -c 17000000"));
    c.start("kubestrap");
    let mut follow = c.env.cmd(&["logs", "-f", "-n", "3"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let logs = c.env.home.join("profiles/kubestrap/logs");
    let (log, rotated) = (logs.join("localkube.log"), logs.join("localkube.log.1"));
    // The monitor checks every 5 s.
    assert!(
        wait_until(Duration::from_secs(15), || rotated.is_file()
            && fs::metadata(&log).is_ok_and(|m| m.len() < 16 << 20)),
        "the log was not cut back"
    );
    let old = fs::read(&rotated).unwrap();
    assert_eq!(old.len(), 8 << 20, "the newest half is kept");
    assert!(String::from_utf8_lossy(&old[old.len() - 4096..]).contains("chatty localkube line"));
    // Lines after the cut still reach `logs -f` and the new log.
    c.kubectl(&KUBECTL, &["get", "configmap", "after-the-cut"]);
    assert!(wait_until(Duration::from_secs(5), || fs::read_to_string(&log).unwrap().contains("after-the-cut")));
    std::thread::sleep(Duration::from_millis(600));
    follow.kill().unwrap();
    follow.wait().unwrap();
    let shown = reader.join().unwrap();
    assert!(
        shown.contains("after-the-cut"),
        "logs -f stopped at the cut: {}",
        &shown[shown.len().saturating_sub(500)..]
    );
    assert!(shown.len() < 1 << 20, "logs -f replayed the rotated part: {} bytes", shown.len());
}

#[test]
fn a_relative_home_means_the_same_cluster_from_any_directory() {
    let c = Cluster::new();
    let port = free_port().to_string();
    // Started with a relative KUBESTRAP_HOME from the test directory…
    let out = c
        .env
        .cmd(&["start", "--manifest", c.m(), "--port", &port])
        .env("KUBESTRAP_HOME", "home")
        .current_dir(c.env.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.env.home, c.env.path().join("home"), "the harness's home is <dir>/home");
    // …it is the same cluster for the absolute spelling, from elsewhere.
    let (code, st) = c.status("kubestrap");
    assert_eq!(code, 0, "{st}");
    let pid = c.localkube_pid("kubestrap");
    c.env.ok(&["stop"]);
    assert!(!alive(pid), "stop with another spelling of the home missed localkube");
    // The paths it recorded (the manifest it runs) hold from here too.
    c.env.ok(&["start"]);
}
