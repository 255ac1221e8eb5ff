//! The command line itself: help with examples, completions, version, errors.

use crate::support::{Code, Env, exit};

#[test]
fn help_has_examples_and_every_command() {
    let env = Env::new();
    let help = env.ok(&["--help"]);
    assert!(help.contains("Examples:"), "{help}");
    for cmd in [
        "start",
        "stop",
        "delete",
        "status",
        "profile",
        "kubectl",
        "logs",
        "fetch",
        "cache",
        "manifest",
        "keys",
        "trust",
        "completions",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    assert!(!help.contains("__monitor"), "the internal monitor is hidden");
    assert!(env.ok(&["start", "--help"]).contains("kubestrap start -p dev"));
    assert!(env.ok(&["--version"]).starts_with("kubestrap "));
}

#[test]
fn completions_for_each_shell() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.ok(&["completions", shell]);
        assert!(out.contains("kubestrap") && out.contains("start"), "{shell}");
    }
}

#[test]
fn usage_errors_exit_2_and_unknown_drivers_are_refused() {
    let env = Env::new();
    env.fail(&["start", "--bogus"], Code::Usage);
    let err = env.fail(&["start", "--driver", "xen"], Code::Usage);
    assert!(err.contains("expected a driver (native|docker|qemu)"), "{err}");
    let err = env.fail(&["start", "-p", "Bad_Name"], Code::Usage);
    assert!(err.contains("invalid profile name"), "{err}");
}

#[test]
fn errors_in_json_mode_are_json() {
    let env = Env::new();
    let out = env.run(&["status", "-p", "nope", "-o", "json"]);
    assert_eq!(out.status.code(), exit(Code::NoProfile));
    let v = crate::support::json_lines(&String::from_utf8_lossy(&out.stdout)).pop().unwrap();
    assert_eq!(v["exit_code"], Code::NoProfile as i32);
    assert!(v["error"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn logs_and_warnings_off_a_terminal_are_plain_text() {
    let env = Env::new();
    // A damaged key list (a warning) and -v (debug logs), stderr a pipe,
    // NO_COLOR unset: no escape sequence may reach it.
    let keys = env.home.join("keys/builtin");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("keys-1.toml"), "junk").unwrap();
    let out = env.cmd(&["-v", "trust", "list"]).env_remove("NO_COLOR").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: ignoring the key list"), "{err}");
    assert!(err.contains("DEBUG"), "no debug log line to check: {err}");
    assert!(!err.contains('\u{1b}'), "escape sequences off a terminal: {err:?}");
}

#[test]
fn colour_is_decided_for_each_stream_and_never_with_no_color() {
    use crate::support::{Cluster, KUBESTRAP};
    let c = Cluster::new();
    // A damaged key list: a warning on stderr, which stays the terminal.
    let keys = c.env.home.join("keys/builtin");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("keys-1.toml"), "junk").unwrap();
    let file = c.env.path().join("start.out");
    // `script` gives kubestrap a terminal; stdout goes to a file from it.
    let run = |no_color: bool| {
        let line = format!("{KUBESTRAP} start --manifest {} > {}", c.m(), file.display());
        let mut cmd = c.env.cmd_of(std::path::Path::new("script"), &["-qec", &line, "/dev/null"]);
        if !no_color {
            cmd.env_remove("NO_COLOR");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), std::fs::read_to_string(&file).unwrap())
    };
    let (terminal, written) = run(false);
    assert!(terminal.contains("\u{1b}[33mwarning:"), "a warning on a terminal is coloured: {terminal:?}");
    assert!(written.contains("✓ apiserver ready") && !written.contains('\u{1b}'), "the file: {written:?}");
    c.env.ok(&["stop"]);
    let (terminal, written) = run(true);
    assert!(terminal.contains("warning:") && !terminal.contains("\u{1b}[33m"), "NO_COLOR: {terminal:?}");
    assert!(!written.contains('\u{1b}'), "{written:?}");
}

#[test]
fn manifest_check_refuses_a_control_character_with_its_place() {
    let env = Env::new();
    let good = include_str!("../../../manifests/tests/fixtures/good.toml");
    let path = env.path().join("m.toml");
    std::fs::write(&path, good.replacen("bin = \"kubectl\"", "bin = \"kube\\u0000ctl\"", 1)).unwrap();
    let err = env.fail(&["manifest", "check", path.to_str().unwrap()], Code::Usage);
    assert!(
        err.contains("control character U+0000") && err.contains("m.toml:11:1") && err.contains("bin: control"),
        "{err}"
    );
    assert!(!err.contains('\0'), "the NUL itself is never printed: {err:?}");
    std::fs::write(&path, good).unwrap();
    env.ok(&["manifest", "check", path.to_str().unwrap()]);
}
