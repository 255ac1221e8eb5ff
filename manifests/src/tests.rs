use super::*;

const GOOD: &str = include_str!("../tests/fixtures/good.toml");

fn parse(s: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(s.as_bytes(), Path::new("m.toml"))
}

fn err(s: &str) -> ManifestError {
    parse(s).expect_err("manifest should be refused")
}

#[test]
fn good_manifest_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.version, 12);
    assert_eq!(m.kubernetes, semver::Version::new(1, 33, 1));
    assert_eq!(m.component.localkube.run.stop_signal, StopSignal::Term);
    let needs = m.needs(&"linux-x86_64".parse().unwrap(), Driver::Native).unwrap();
    assert_eq!(needs.len(), 2);
    assert_eq!(m.summary().total_bytes, 117_000_000);
    // docker is not among localkube's drivers: only kubectl is needed.
    let needs = m.needs(&"linux-x86_64".parse().unwrap(), Driver::Docker).unwrap();
    assert_eq!(needs.len(), 1);
    let e = m.needs(&"darwin-aarch64".parse().unwrap(), Driver::Native).unwrap_err();
    assert!(e.contains("no artifact for target darwin-aarch64"), "{e}");
}

#[test]
fn sha256_wrong_length_names_line_column_and_field() {
    let e = err(&GOOD.replace("2ffd0237", "2ffd023"));
    assert_eq!(e.line, 13);
    assert_eq!(e.column, 10);
    assert_eq!(e.field, "component.kubectl.target.linux-x86_64.sha256");
    assert!(e.message.contains("expected 64 lowercase hex characters"), "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("m.toml:13:10: field `component.kubectl.target.linux-x86_64.sha256`"), "{shown}");
}

#[test]
fn sha256_uppercase_refused() {
    let e = err(&GOOD.replace("2ffd0237", "2FFD0237"));
    assert!(e.message.contains("lowercase hex"), "{e}");
}

#[test]
fn size_must_be_positive() {
    let e = err(&GOOD.replace("size = 57000000", "size = 0"));
    assert!(e.message.contains("greater than 0"), "{e}");
    assert_eq!(e.field, "component.kubectl.target.linux-x86_64.size");
}

#[test]
fn unknown_unpack_kind() {
    let e = err(&GOOD.replace("unpack = \"tar.zst\"", "unpack = \"rar\""));
    assert!(e.message.contains("rar"), "{e}");
    assert!(e.message.contains("tar.zst"), "{e}");
}

#[test]
fn unknown_fields_refused() {
    let e = err(&GOOD.replace("bin = \"kubectl\"", "bin = \"kubectl\"\nmode = 7"));
    assert!(e.message.contains("unknown field `mode`"), "{e}");
    let e = err(&format!("{GOOD}\n[component.dashboard]\nversion = \"1\"\n"));
    assert!(e.message.contains("unknown field `dashboard`"), "{e}");
}

#[test]
fn missing_field_named() {
    let e = err(&GOOD.replace("size = 57000000\n", ""));
    assert!(e.message.contains("missing field `size`"), "{e}");
}

#[test]
fn bad_kubernetes_semver() {
    let e = err(&GOOD.replace("kubernetes = \"1.33.1\"", "kubernetes = \"1.33\""));
    assert_eq!(e.field, "kubernetes");
    assert_eq!(e.line, 4);
}

#[test]
fn bad_requires_bootstrap() {
    let e = err(&GOOD.replace(">=0.1.0", "at least 0.1"));
    assert_eq!(e.field, "requires-bootstrap");
}

#[test]
fn bad_timestamps() {
    let e = err(&GOOD.replace("2027-05-20T00:00:00Z", "next year"));
    assert_eq!(e.field, "expires");
    let e = err(&GOOD.replace("2027-05-20T00:00:00Z", "2026-01-01T00:00:00Z"));
    assert!(e.message.contains("expected a time after published"), "{e}");
}

#[test]
fn version_is_an_integer() {
    let e = err(&GOOD.replace("version = 12", "version = \"12\""));
    assert_eq!(e.field, "version");
    let e = err(&GOOD.replace("version = 12", "version = 0"));
    assert!(e.message.contains("greater than 0"), "{e}");
}

#[test]
fn wrong_schema_refused() {
    let e = err(&GOOD.replace("schema = 1", "schema = 2"));
    assert!(e.message.contains("schema: expected 1, got 2"), "{e}");
}

#[test]
fn unknown_template_refused() {
    let e = err(&GOOD.replace("--data-dir={data}", "--data-dir={home}"));
    assert!(e.message.contains("unknown template {home}"), "{e}");
    assert_eq!(e.field, "component.localkube.run.args");
}

#[test]
fn run_needs_port_template() {
    let e = err(&GOOD.replace("\"--https-listen-port={port}\"", "\"--https-listen-port=6443\""));
    assert!(e.message.contains("{port}"), "{e}");
}

#[test]
fn unknown_pki_file_and_path() {
    let e = err(&GOOD.replace("= \"ca.crt\"", "= \"root.crt\""));
    assert!(e.message.contains("root.crt"), "{e}");
    let e = err(&GOOD.replace("\"{data}/server/tls/server-ca.crt\"", "\"/etc/ca.crt\""));
    assert!(e.message.contains("under {data}/"), "{e}");
    let e = err(&GOOD.replace("\"{data}/server/tls/server-ca.crt\"", "\"{data}/../ca.crt\""));
    assert!(e.message.contains("'..'"), "{e}");
}

#[test]
fn bad_target_and_driver() {
    let e = err(&GOOD.replace(
        "target.linux-x86_64]\nurls = [\"https://dl.example/kubectl\"",
        "target.plan9-mips]\nurls = [\"https://dl.example/kubectl\"",
    ));
    assert!(e.message.contains("plan9-mips"), "{e}");
    let e = err(&GOOD.replace("[\"native\", \"qemu\"]", "[\"vbox\"]"));
    assert!(e.message.contains("vbox"), "{e}");
}

#[test]
fn bad_urls_and_bin() {
    let e = err(&GOOD.replace("urls = [\"https://dl.example/k3s.tar.zst\"]", "urls = []"));
    assert!(e.message.contains("at least one URL"), "{e}");
    let e = err(&GOOD.replace("\"https://dl.example/kubectl\"", "\"ftp://x/kubectl\""));
    assert!(e.message.contains("ftp://x/kubectl"), "{e}");
    let e = err(&GOOD.replace("bin = \"bin/k3s\"", "bin = \"../k3s\""));
    assert!(e.message.contains("bin: expected a relative path"), "{e}");
    let e = err(&GOOD.replace("bin = \"kubectl\"", "bin = \"x/kubectl\""));
    assert!(e.message.contains("plain file name"), "{e}");
}

#[test]
fn control_characters_are_refused_in_every_name_and_path() {
    // TOML escapes: a NUL, a newline, an escape, a DEL in each path-like field.
    let cases = [
        ("bin = \"bin/k3s\"", "bin = \"bin/k\\u0000s\"", "bin", "U+0000"),
        ("bin = \"kubectl\"", "bin = \"kube\\u0000ctl\"", "bin", "U+0000"),
        ("program = \"bin/k3s\"", "program = \"bin/k3s\\n\"", "program", "U+000A"),
        ("version = \"1.33.1\"", "version = \"1.33.1\\u001b[31m\"", "version", "U+001B"),
        ("\"--data-dir={data}\"", "\"--data-dir={data}\\u007f\"", "args", "U+007F"),
        ("\"{data}/server/tls/server-ca.crt\"", "\"{data}/server/tls/ser\\u0000ver-ca.crt\"", "pki-files", "U+0000"),
        ("\"https://dl.example/k3s.tar.zst\"", "\"https://dl.example/k3s\\u0009.tar.zst\"", "urls", "U+0009"),
        (
            "stop-signal = \"TERM\"",
            "stop-signal = \"TERM\"\nimages-dir = \"{data}/agent/\\u001bimages\"",
            "images-dir",
            "U+001B",
        ),
    ];
    for (from, to, field, shown) in cases {
        assert!(GOOD.contains(from), "fixture lacks {from}");
        let e = err(&GOOD.replacen(from, to, 1));
        assert!(e.message.contains("control character") && e.message.contains(shown), "{to}: {e}");
        assert!(e.field.contains(field) || e.message.starts_with(field), "{to}: {}: {e}", e.field);
        assert!(!e.to_string().contains(|c: char| c.is_control() && c != '\n'), "a raw control character in: {e:?}");
        assert!(e.line > 0 && e.column > 0, "{e}");
    }
}

#[test]
fn bad_stop_signal_and_timeout() {
    let e = err(&GOOD.replace("stop-signal = \"TERM\"", "stop-signal = \"KILL9\""));
    assert!(e.message.contains("KILL9"), "{e}");
    let e = err(&GOOD.replace("stop-timeout-s = 30", "stop-timeout-s = 0"));
    assert!(e.message.contains("1 to 600"), "{e}");
}

#[test]
fn not_toml_at_all() {
    let e = err("schema = = 1");
    assert_eq!(e.line, 1);
    let e = Manifest::parse(&[0xff, 0xfe], Path::new("m.toml")).unwrap_err();
    assert!(e.message.contains("UTF-8"), "{e}");
}

#[test]
fn the_writer_round_trips() {
    let m = parse(GOOD).unwrap();
    let text = m.to_toml();
    let again = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again.to_toml(), text);
    assert_eq!(again.component.localkube.run.pki_files.len(), 1);
    assert_eq!(again.id(), "stable-12");
    let a = Manifest::artifact(
        vec!["/x".into()],
        again.component.kubectl.target.values().next().unwrap().sha256,
        5,
        Unpack::File,
        "kubectl",
    )
    .unwrap();
    assert_eq!(a.size.get(), 5);
    assert!(Manifest::artifact(vec![], a.sha256, 5, Unpack::File, "kubectl").is_err());
}

#[test]
fn channel_index_parses_validates_and_round_trips() {
    let text = r#"schema = 1
version = 7
published = "2026-11-20T00:00:00Z"
expires = "2026-12-20T00:00:00Z"
[channel.stable]
version = 12
url = "stable/12/manifest.toml"
sha256 = "2ffd023712bbc1a9390dbd8c0c15201c165a69d394787ef03eda3eccb4b9ac06"
size = 2048
[kubestrap.linux-x86_64]
version = "0.2.0"
urls = ["https://dl.example/kubestrap-0.2.0-linux-x86_64"]
sha256 = "89eb5f3d12524d0a9d5b56ba3e2707b106e1731dd0e6d2e7b898ac585f4959df"
size = 12345678
"#;
    let i = ChannelIndex::parse(text.as_bytes(), Path::new("index.toml")).unwrap();
    assert_eq!(i.channel["stable"].version, 12);
    assert_eq!(i.kubestrap[&"linux-x86_64".parse().unwrap()].version, semver::Version::new(0, 2, 0));
    let again = ChannelIndex::parse(i.to_toml().as_bytes(), Path::new("index.toml")).unwrap();
    assert_eq!(again.to_toml(), i.to_toml());
    let bad = text.replace("schema = 1", "schema = 1\nsurprise = 1");
    let e = ChannelIndex::parse(bad.as_bytes(), Path::new("index.toml")).unwrap_err();
    assert!(e.to_string().starts_with("index.toml:2:"), "{e}");
    let bad = text.replace("size = 2048", "size = 0");
    assert!(ChannelIndex::parse(bad.as_bytes(), Path::new("index.toml")).is_err());
}

#[test]
fn index_header_checked_like_a_manifest_header() {
    let text = "schema = 1\nversion = 7\npublished = \"2026-11-20T00:00:00Z\"\nexpires = \"2026-12-20T00:00:00Z\"\n";
    let index = |s: String| ChannelIndex::parse(s.as_bytes(), Path::new("index.toml")).unwrap_err().message;
    assert_eq!(
        index(text.replace("schema = 1", "schema = 2")),
        "schema: expected 1, got 2; run `kubestrap self-update` for newer schemas"
    );
    assert_eq!(index(text.replace("version = 7", "version = 0")), "version: expected an integer greater than 0");
    assert_eq!(
        index(text.replace("2026-12-20", "2026-11-19")),
        "expires: expected a time after published (2026-11-20T00:00:00Z), got 2026-11-19T00:00:00Z"
    );
    assert_eq!(
        err(&GOOD.replace("schema = 1", "schema = 2")).message,
        "schema: expected 1, got 2; this kubestrap reads schema 1 only (run `kubestrap self-update` for newer schemas)"
    );
    assert_eq!(
        err(&GOOD.replace("version = 12", "version = 0")).message,
        "version: expected an integer greater than 0"
    );
}

#[test]
fn an_agent_section_round_trips_and_must_join_with_server_token_and_node() {
    let agent = "\n[component.localkube.run.agent]\nargs = [\"agent\", \"--server=https://{server}:{port}\", \
                 \"--token-file={token}\", \"--node-name={node}\"]\nready-timeout-s = 90\n";
    let with = format!("{GOOD}{agent}");
    let m = parse(&with).unwrap_or_else(|e| panic!("{e}"));
    let a = m.component.localkube.run.agent.clone().expect("an agent section");
    assert_eq!((a.args.len(), a.ready_timeout_s), (4, 90));
    let again = parse(&m.to_toml()).unwrap();
    assert_eq!(again.component.localkube.run.agent, Some(a));
    // Without one a release runs a single node.
    assert!(parse(GOOD).unwrap().component.localkube.run.agent.is_none());
    for (cut, name) in [("\"--token-file={token}\", ", "{token}"), ("https://{server}:{port}", "{server}")] {
        let e = err(&with.replace(cut, if name == "{server}" { "https://x:1" } else { "" }));
        assert!(e.message.contains(name), "{e}");
    }
    let e = err(&with.replace("ready-timeout-s = 90", "ready-timeout-s = 0"));
    assert!(e.message.contains("ready-timeout-s"), "{e}");
}
