use super::*;
use crate::progress::Silent;
use std::os::unix::fs::PermissionsExt;

fn entry(name: &str, port: u16) -> Entry {
    Entry {
        name: name.into(),
        server: format!("https://127.0.0.1:{port}"),
        ca_pem: b"CA".to_vec(),
        client_cert_pem: b"CERT".to_vec(),
        client_key_pem: b"KEY".to_vec(),
    }
}

const OTHER: &str = "apiVersion: v1\nkind: Config\npreferences:\n  colors: true\nclusters:\n- name: prod\n  cluster:\n    server: https://prod.example:6443\n    extensions:\n    - name: x\n      extension: {a: 1}\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\n    namespace: web\nusers:\n- name: prod\n  user:\n    token: secret\ncurrent-context: prod\n";

#[test]
fn merge_preserves_others_and_remove_restores() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config");
    fs::write(&p, OTHER).unwrap();
    merge(&p, &entry("kubestrap", 8443), true, &Silent).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(doc["current-context"], key("kubestrap"));
    assert_eq!(doc["preferences"]["colors"], Value::Bool(true));
    assert_eq!(doc["contexts"][0]["context"]["namespace"], key("web"));
    assert_eq!(doc["clusters"][0]["cluster"]["extensions"][0]["name"], key("x"));
    assert_eq!(state(&p, "kubestrap", "https://127.0.0.1:8443").unwrap(), State::Configured { current: true });
    assert!(matches!(state(&p, "kubestrap", "https://127.0.0.1:9999").unwrap(), State::Misconfigured { .. }));
    // Updating in place keeps one entry.
    merge(&p, &entry("kubestrap", 8444), false, &Silent).unwrap();
    let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(doc["clusters"].as_sequence().unwrap().len(), 2);
    assert!(remove(&p, "kubestrap", &Silent).unwrap());
    let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    let original: Value = serde_norway::from_str(OTHER).unwrap();
    assert_eq!(doc["clusters"], original["clusters"]);
    assert_eq!(doc["users"], original["users"]);
    assert_eq!(doc["contexts"], original["contexts"]);
    assert_eq!(state(&p, "kubestrap", "x").unwrap(), State::Missing);
}

#[test]
fn malformed_kubeconfig_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config");
    let bad = "clusters: [\n  - name: oops\n";
    fs::write(&p, bad).unwrap();
    let e = merge(&p, &entry("kubestrap", 8443), true, &Silent).unwrap_err();
    assert!(e.to_string().contains("left it untouched"), "{e}");
    assert_eq!(fs::read_to_string(&p).unwrap(), bad);
    fs::write(&p, "clusters: 5\n").unwrap();
    assert!(merge(&p, &entry("kubestrap", 8443), true, &Silent).is_err());
    assert_eq!(fs::read_to_string(&p).unwrap(), "clusters: 5\n");
}

#[test]
fn creates_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nested/config");
    merge(&p, &entry("kubestrap-dev", 9443), true, &Silent).unwrap();
    // No lock file or temp file is left beside it.
    let names: Vec<String> =
        fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["config"]);
    let doc: Value = serde_norway::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(doc["kind"], key("Config"));
    assert_eq!(doc["users"][0]["user"]["client-key-data"], key("S0VZ"));
}

/// Values a YAML 1.1 reader (kubectl's) would take for bools, numbers or
/// timestamps unless they are quoted.
const TRICKY: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: odd\n  cluster:\n    server: 'https://odd.example:6443'\n    tls-server-name: 'on'\n    proxy-url: 'y'\n- name: kubestrap\n  cluster:\n    server: https://old:1\n    certificate-authority: /old/ca.crt\n    extensions:\n    - name: keep\n      extension: {a: b}\ncontexts:\n- name: odd\n  context:\n    cluster: odd\n    user: odd\n    namespace: 'no'\n- name: times\n  context:\n    cluster: odd\n    user: odd\n    namespace: '2001-12-14'\n- name: sexagesimal\n  context:\n    cluster: odd\n    user: odd\n    namespace: '1:20'\nusers:\n- name: odd\n  user:\n    username: 'off'\n    password: 'null'\n- name: kubestrap\n  user:\n    token: stale\ncurrent-context: odd\n";

/// `kubectl config view -o json --raw` of a kubeconfig file.
fn kubectl_view(kubectl: &Path, p: &Path) -> serde_json::Value {
    let out = std::process::Command::new(kubectl)
        .args(["config", "view", "-o", "json", "--raw"])
        .env("KUBECONFIG", p)
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl config view: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn named<'a>(v: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    v[list].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or(&serde_json::Value::Null)
}

#[test]
fn kubectl_reads_every_other_entry_unchanged_after_a_merge() {
    // The real kubectl (the test fails where there is none).
    let kubectl = kubestrap_testkit::kubectl();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config");
    fs::write(&p, TRICKY).unwrap();
    let before = kubectl_view(&kubectl, &p);
    merge(&p, &entry("kubestrap", 8443), false, &Silent).unwrap();
    let after = kubectl_view(&kubectl, &p);
    assert_eq!(named(&after, "clusters", "odd"), named(&before, "clusters", "odd"));
    assert_eq!(named(&after, "users", "odd"), named(&before, "users", "odd"));
    for ctx in ["odd", "times", "sexagesimal"] {
        assert_eq!(named(&after, "contexts", ctx), named(&before, "contexts", ctx));
    }
    assert_eq!(after["current-context"], "odd");
    // A namespace set on our context survives the next start.
    let out = std::process::Command::new(&kubectl)
        .args(["config", "set-context", "kubestrap", "--namespace=team"])
        .env("KUBECONFIG", &p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    merge(&p, &entry("kubestrap", 8443), false, &Silent).unwrap();
    let after = kubectl_view(&kubectl, &p);
    assert_eq!(named(&after, "contexts", "kubestrap")["context"]["namespace"], "team");
    // Our cluster and user were replaced whole: no stale token or CA path, extensions kept.
    let ours = &named(&after, "users", "kubestrap")["user"];
    assert!(ours.get("token").is_none() && ours["client-key-data"] == "S0VZ", "{ours}");
    let ours = &named(&after, "clusters", "kubestrap")["cluster"];
    assert!(ours.get("certificate-authority").is_none(), "{ours}");
    assert_eq!(ours["server"], "https://127.0.0.1:8443");
    assert_eq!(ours["extensions"][0]["name"], "keep", "{ours}");
    // And the same after our entries are removed again.
    assert!(remove(&p, "kubestrap", &Silent).unwrap());
    let removed = kubectl_view(&kubectl, &p);
    assert_eq!(named(&removed, "contexts", "odd"), named(&before, "contexts", "odd"));
    assert_eq!(named(&removed, "users", "odd"), named(&before, "users", "odd"));
    assert_eq!(named(&removed, "clusters", "kubestrap"), &serde_json::Value::Null);
}

#[test]
fn temp_files_left_by_a_killed_write_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config");
    let stale = dir.path().join(".config.4242.abc.tmp");
    fs::write(&stale, "client-key-data: secret").unwrap();
    let unrelated = dir.path().join(".other.1.tmp");
    fs::write(&unrelated, "x").unwrap();
    merge(&p, &entry("kubestrap", 8443), true, &Silent).unwrap();
    assert!(!stale.exists());
    assert!(unrelated.exists());
}

#[test]
fn a_relative_or_symlinked_kubeconfig_is_locked_once_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-config");
    let link = dir.path().join("config");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    merge(&link, &entry("kubestrap", 8443), true, &Silent).unwrap();
    // Now the target exists: both locks (link and target) are taken and released.
    merge(&link, &entry("kubestrap", 8444), true, &Silent).unwrap();
    assert!(!dir.path().join("config.lock").exists() && !dir.path().join("real-config.lock").exists());
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is kept");
    assert_eq!(state(&real, "kubestrap", "https://127.0.0.1:8444").unwrap(), State::Configured { current: true });
    // Another spelling of one file (through a linked directory) is one
    // file, one lock: no waiting on our own lock.
    std::os::unix::fs::symlink(dir.path(), dir.path().join("same-dir")).unwrap();
    let other = dir.path().join("same-dir/plain-config");
    merge(&other, &entry("kubestrap", 8443), true, &Silent).unwrap();
    let t = std::time::Instant::now();
    merge(&other, &entry("kubestrap", 8444), true, &Silent).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "waited on its own lock: {:?}", t.elapsed());
}

#[test]
fn waits_for_kubectls_lock_and_clears_a_dead_kubestraps() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config");
    let lock = dir.path().join("config.lock");
    // Held by kubectl (empty file, as client-go makes it): we wait for it.
    fs::write(&lock, "").unwrap();
    let l2 = lock.clone();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        fs::remove_file(l2).unwrap();
    });
    let t = std::time::Instant::now();
    merge(&p, &entry("kubestrap", 8443), true, &Silent).unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_millis(250), "did not wait for kubectl's lock");
    releaser.join().unwrap();
    assert!(!lock.exists(), "our lock is released");
    // Left by a kubestrap that died: removed, and the write goes ahead.
    fs::write(&lock, "kubestrap 999999 1\n").unwrap();
    merge(&p, &entry("kubestrap", 8444), true, &Silent).unwrap();
    assert!(!lock.exists());
    assert_eq!(state(&p, "kubestrap", "https://127.0.0.1:8444").unwrap(), State::Configured { current: true });
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Strings a YAML 1.1 reader would misread unless quoted, and others.
    fn tricky() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("on".to_string()),
            Just("no".to_string()),
            Just("y".to_string()),
            Just("~".to_string()),
            Just("null".to_string()),
            Just("1:20".to_string()),
            Just("0x1f".to_string()),
            Just("2001-12-14".to_string()),
            Just("- a".to_string()),
            Just("#x".to_string()),
            Just("".to_string()),
            "[a-zA-Z0-9 _.:/@#'\"-]{1,20}",
            "\\PC{1,12}",
        ]
    }

    /// A kubeconfig with foreign clusters, users and contexts.
    fn config() -> impl Strategy<Value = (Mapping, Vec<String>)> {
        proptest::collection::btree_map("[a-z][a-z0-9-]{0,8}", (tricky(), tricky(), tricky()), 0..5).prop_map(
            |entries| {
                let mut doc = Mapping::new();
                doc.insert(key("apiVersion"), key("v1"));
                doc.insert(key("kind"), key("Config"));
                let mut names = Vec::new();
                for (list, item) in LISTS {
                    let seq: Vec<Value> = entries
                        .iter()
                        .filter(|(n, _)| !n.starts_with("kubestrap"))
                        .map(|(name, (a, b, c))| {
                            let mut body = Mapping::new();
                            match item {
                                "cluster" => {
                                    body.insert(key("server"), key(&format!("https://{name}.example:6443")));
                                    body.insert(key("tls-server-name"), key(a));
                                }
                                "user" => {
                                    body.insert(key("username"), key(b));
                                }
                                _ => {
                                    body.insert(key("cluster"), key(name));
                                    body.insert(key("user"), key(name));
                                    body.insert(key("namespace"), key(c));
                                }
                            }
                            let mut e = Mapping::new();
                            e.insert(key("name"), key(name));
                            e.insert(key(item), Value::Mapping(body));
                            Value::Mapping(e)
                        })
                        .collect();
                    doc.insert(key(list), Value::Sequence(seq));
                }
                for n in entries.keys() {
                    if !n.starts_with("kubestrap") {
                        names.push(n.clone());
                    }
                }
                doc.insert(key("current-context"), key(names.first().map_or("", String::as_str)));
                (doc, names)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_kubeconfig_keeps_every_foreign_entry_through_merge_and_remove((doc, _names) in config(), port in 1024u16..65535) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("config");
            fs::write(&p, to_yaml(&doc)).unwrap();
            let before = read(&p).unwrap();
            merge(&p, &entry("kubestrap", port), true, &Silent).unwrap();
            let merged = read(&p).unwrap();
            for (list, _) in LISTS {
                let ours = |v: &&Value| v.get("name").and_then(Value::as_str) == Some("kubestrap");
                let foreign: Vec<&Value> = merged[list].as_sequence().unwrap().iter().filter(|v| !ours(v)).collect();
                let original: Vec<&Value> = before[list].as_sequence().unwrap().iter().collect();
                prop_assert_eq!(foreign, original, "{} changed", list);
            }
            prop_assert_eq!(state(&p, "kubestrap", &format!("https://127.0.0.1:{port}")).unwrap(), State::Configured { current: true });
            remove(&p, "kubestrap", &Silent).unwrap();
            let after = read(&p).unwrap();
            for (list, _) in LISTS {
                prop_assert_eq!(&after[list], &before[list]);
            }
        }
    }

    #[test]
    fn kubectl_reads_what_the_merge_writes() {
        let kubectl = kubestrap_testkit::kubectl();
        // A few generated kubeconfigs through the real kubectl (slow, so few).
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
        runner
            .run(&config(), |(doc, names)| {
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("config");
                fs::write(&p, to_yaml(&doc)).unwrap();
                let before = kubectl_view(&kubectl, &p);
                merge(&p, &entry("kubestrap", 8443), false, &Silent).unwrap();
                let after = kubectl_view(&kubectl, &p);
                for n in &names {
                    for list in ["clusters", "users", "contexts"] {
                        prop_assert_eq!(named(&after, list, n), named(&before, list, n));
                    }
                }
                prop_assert_eq!(&after["current-context"], &before["current-context"]);
                Ok(())
            })
            .unwrap();
    }
}
