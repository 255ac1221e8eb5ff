//! Joining a second machine: two network namespaces joined by a veth pair,
//! each with a kubestrap home of its own. The first serves its cluster on
//! its address there (`--listen`); the second runs the line `node
//! join-command` printed, and its node shows up in the first's kubectl.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const A_IP: &str = "10.213.7.1";
const B_IP: &str = "10.213.7.2";

fn multi_node(env: Env) -> Cluster {
    Cluster::in_env(env, |s| s.multi_node())
}

/// kubestrap in a namespace; (exit code, stdout, stderr).
fn run_in(ns: &Netns, c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = ns.wrap(c.env.cmd(args)).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn ok_in(ns: &Netns, c: &Cluster, args: &[&str]) -> String {
    let (code, out, err) = run_in(ns, c, args);
    assert_eq!(code, Code::Ok as i32, "kubestrap {args:?} in {}:\n{out}\n{err}", ns.name);
    out
}

/// A shell line (the join command, as printed) run in a namespace with `c`'s environment.
fn sh_in(ns: &Netns, c: &Cluster, line: &str) -> (i32, String, String) {
    let mut sh = c.env.cmd_of(std::path::Path::new("sh"), &["-c", line]);
    sh.env(
        "PATH",
        format!(
            "{}:{}",
            std::path::Path::new(KUBESTRAP).parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let out = ns.wrap(sh).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The server's nodes as the real kubectl in its namespace reads them: (name, Ready).
fn nodes_in(ns: &Netns, c: &Cluster) -> Vec<(String, String)> {
    let mut k = Command::new(&*KUBECTL);
    k.args([
        "--context",
        "kubestrap-srv",
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
    ])
    .env("KUBECONFIG", &c.env.kubeconfig);
    let out = ns.wrap(k).output().unwrap();
    assert!(out.status.success(), "kubectl get nodes: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_machine_joins_with_the_printed_line_a_wrong_ca_or_token_is_refused_and_leave_removes_it() {
    if !need("netns", netns_possible) {
        return;
    }
    let (a, b) = (Netns::new("srv"), Netns::new("lap"));
    link_pair(&a, A_IP, &b, B_IP);
    let server = multi_node(Env::new());
    let laptop = multi_node(Env::new());
    let port = free_port().to_string();

    // The server's machine: its API on its address there too (warned).
    let (code, _, err) = run_in(
        &a,
        &server,
        &["start", "-p", "srv", "--manifest", server.m(), "--driver", "native", "--port", &port, "--listen", A_IP],
    );
    assert_eq!(code, Code::Ok as i32, "{err}");
    assert!(err.contains(&format!("--listen {A_IP}")) && err.contains("join token"), "warned: {err}");
    // Without --listen there is no line to print.
    let line = ok_in(&a, &server, &["node", "join-command", "-p", "srv"]);
    let line = line.trim().to_string();
    let token = std::fs::read_to_string(server.env.home.join("profiles/srv/pki/join/token")).unwrap();
    assert!(line.contains(token.trim()) && line.contains(&format!("https://{A_IP}:{port}")), "{line}");
    assert!(line.contains("--ca-sha256 ") && line.contains("--token-file -"), "{line}");
    let (cmd, _) = line.split_once(" # ").unwrap();
    let join = |extra: &str| format!("{cmd} -p work --manifest {} --driver native --name laptop{extra}", laptop.m());

    // A wrong CA fingerprint: refused before the token is sent.
    let ca = line.split("--ca-sha256 ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let wrong_ca = join("").replace(&ca, &"0".repeat(64));
    let (code, _, err) = sh_in(&b, &laptop, &wrong_ca);
    assert_eq!(code, Code::JoinRefused as i32, "{err}");
    assert!(err.contains("not that cluster's server") && !err.contains(token.trim()), "{err}");
    // A wrong token, from a file others can read (said): the server refuses it.
    let secret = token.trim().rsplit(':').next().unwrap();
    let file = laptop.env.dir.path().join("token");
    std::fs::write(&file, token.replace(secret, &"f".repeat(secret.len()))).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let from_file =
        join("").split_once("| ").unwrap().1.replace("--token-file -", &format!("--token-file {}", file.display()));
    let (code, _, err) = sh_in(&b, &laptop, &from_file);
    assert_eq!(code, Code::JoinRefused as i32, "{err}");
    assert!(err.contains("refused the join token"), "{err}");
    assert!(err.contains("(mode 0644) can be read by users other than its owner"), "{err}");
    assert!(!laptop.env.home.join("profiles/work").exists(), "nothing was made on a refusal");

    // The line as printed: the laptop's node joins and is Ready on the server.
    let (code, out, err) = sh_in(&b, &laptop, &join(""));
    assert_eq!(code, Code::Ok as i32, "{out}\n{err}");
    assert!(out.contains("server checked") && out.contains("node ready: laptop"), "{out}");
    assert!(!out.contains(token.trim()) && !err.contains(token.trim()), "the token is never printed");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(laptop.env.home.join("profiles/work/pki/join/token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(nodes_in(&a, &server), [("kubestrap-srv".into(), "True".into()), ("laptop".into(), "True".into())]);
    let list = json_lines(&ok_in(&a, &server, &["node", "list", "-p", "srv", "-o", "json"])).pop().unwrap();
    assert!(list["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "laptop" && n["role"] == "joined"), "{list}");
    let st = json_lines(&ok_in(&b, &laptop, &["status", "-p", "work", "-o", "json"])).pop().unwrap();
    assert_eq!((st["localkube"].as_str(), st["nodes"][0]["ready"].as_str()), (Some("Running"), Some("Ready")), "{st}");

    // stop → start on the laptop: the node comes back.
    ok_in(&b, &laptop, &["stop", "-p", "work"]);
    let lost =
        wait_until(Duration::from_secs(15), || nodes_in(&a, &server).contains(&("laptop".into(), "Unknown".into())));
    assert!(lost, "{:?}", nodes_in(&a, &server));
    ok_in(&b, &laptop, &["start", "-p", "work"]);
    assert!(nodes_in(&a, &server).contains(&("laptop".into(), "True".into())));

    // node leave: its agent, its node object and the profile gone.
    let out = ok_in(&b, &laptop, &["node", "leave", "-p", "work"]);
    assert!(out.contains("left its cluster"), "{out}");
    assert_eq!(nodes_in(&a, &server), [("kubestrap-srv".to_string(), "True".to_string())]);
    assert!(!laptop.env.home.join("profiles/work").exists());
    ok_in(&a, &server, &["delete", "-p", "srv"]);
}
