//! `kubestrap doctor`: every check reported, failures with advice and exit 44.

use std::collections::BTreeMap;
use std::net::TcpListener;

use crate::support::*;

/// check name → (ok, detail, advice)
fn checks(stdout: &str) -> BTreeMap<String, (bool, String, String)> {
    json_lines(stdout)
        .into_iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("check"), (v["ok"].as_bool().unwrap(), s("detail"), s("advice")))
        })
        .collect()
}

#[test]
fn doctor_reports_each_check_and_what_to_do() {
    let c = Cluster::new();
    let port = free_port().to_string();
    let out = c.env.cmd(&["doctor", "--port", &port, "-o", "json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), exit(Code::Ok), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let all = checks(&stdout);
    for name in ["home writable", "disk space", "port", "kubeconfig writable", "clock", "procfs"] {
        assert!(all.get(name).is_some_and(|c| c.0), "{name}: {all:?}");
    }

    // A busy port and an unwritable kubeconfig fail, each with advice.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let blocker = c.env.path().join("kubeconfig-is-a-file");
    std::fs::write(&blocker, "").unwrap();
    let out = c
        .env
        .cmd(&["doctor", "--port", &busy_port, "-o", "json"])
        .env("KUBECONFIG", blocker.join("config"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), exit(Code::Unfit));
    let all = checks(&String::from_utf8_lossy(&out.stdout));
    let (ok, detail, advice) = &all["port"];
    assert!(!ok && detail.contains(&busy_port) && advice.contains("--port"), "{detail} / {advice}");
    let (ok, detail, advice) = &all["kubeconfig writable"];
    assert!(!ok && detail.contains("is not a directory") && advice.contains("KUBECONFIG"), "{detail} / {advice}");
    // In text, each failure is marked and followed by its advice.
    let out = c.env.cmd(&["doctor", "--port", &busy_port]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL port") && text.contains("→ stop what listens there"), "{text}");
    assert!(text.contains("1 of 6 checks fail"), "{text}");
    drop(busy);

    // A running profile's port is its own.
    c.start("doc");
    let out = c.env.cmd(&["doctor", "-p", "doc", "-o", "json"]).output().unwrap();
    let all = checks(&String::from_utf8_lossy(&out.stdout));
    assert!(all["port"].0 && all["port"].1.contains("running apiserver"), "{:?}", all["port"]);
    assert!(all["clock"].1.contains("is valid until"), "{:?}", all["clock"]);
    c.env.ok(&["delete", "-p", "doc"]);
}

#[test]
fn doctor_adds_the_checks_k3s_needs_on_the_host() {
    let run =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/channel/k3s-run.toml")).unwrap();
    let c = Cluster::with(|s| s.run_from(&toml::from_str(&run).unwrap()));
    let port = free_port().to_string();
    let out = c.env.cmd(&["doctor", "--port", &port, "--manifest", c.m(), "-o", "json"]).output().unwrap();
    let all = checks(&String::from_utf8_lossy(&out.stdout));
    for name in ["root", "cgroups", "module overlay", "module br_netfilter", "other kubernetes"] {
        assert!(all.contains_key(name), "{name} missing: {all:?}");
    }
    assert!(all["root"].0, "the tests run as root");
    // 44 when a check that blocks a start fails; a warning alone is 0.
    let blocking_failure = json_lines(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .any(|v| v["check"].is_string() && v["ok"] == false && v["blocking"] == true);
    assert_eq!(out.status.code(), exit(if blocking_failure { Code::Unfit } else { Code::Ok }));
}
