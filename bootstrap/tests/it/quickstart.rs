//! What a newcomer meets right after the quickstart: README's "Using it"
//! block, run top to bottom in a home set up the way `ci/quickstart.sh`
//! sets up its own (the development manifest from `ci/dev-manifest.sh`,
//! pinning every driver's artifacts, made the home's default), with no
//! `--manifest` anywhere.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// README's "Using it" block: one command per line, its comment cut off.
fn using_it_lines() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let block = readme
        .split("## Using it")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a \"Using it\" sh block");
    block.lines().map(|l| l.split("  #").next().unwrap().trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// A line as run: optional parts (`[...]`) left out, so `logs [-f]` does
/// not follow for ever and `delete [--all] ...` deletes the one cluster.
fn as_run(line: &str) -> Vec<String> {
    let mut out = String::new();
    let mut depth = 0;
    for c in line.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().map(str::to_string).collect()
}

/// The lines that need what a quickstart home cannot have: a release
/// channel with a newer release. (The files lines name, `app.tar` and
/// `./m.toml`, are made in the directory the block runs in.)
const NOT_RUN: [(&str, &str); 3] = [
    ("kubestrap upgrade", "needs a release channel (not reachable from the build machines)"),
    ("kubestrap rollback", "needs an upgrade first"),
    (
        "kubestrap service",
        "needs a NodePort Service, which the stand-in cannot run: real.rs runs it against real Kubernetes on the native and docker drivers",
    ),
];

#[test]
fn readme_using_it_runs_top_to_bottom_in_the_quickstart_home() {
    if !need("qemu", qemu_installed) || !need("docker", docker_engine) {
        return;
    }
    let vm = vm_artifacts();
    let rootfs = docker_rootfs();
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let env = Env::new();
    // The quickstart's manifest, made by the quickstart's own script from
    // the binaries under test.
    let out = Command::new(top.join("ci/dev-manifest.sh"))
        .args([env.scratch("artifacts").to_str().unwrap(), "v1.33.1+standin", "auto", "debug"])
        .env("KUBESTRAP_DEV_BIN", Path::new(KUBESTRAP).parent().unwrap())
        .env("KUBESTRAP_VM_ARTIFACTS", vm.hypervisor.path.parent().unwrap())
        .env("KUBESTRAP_DOCKER_ARTIFACTS", rootfs.path.parent().unwrap())
        .env("KUBESTRAP_HOME", &env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "ci/dev-manifest.sh: {}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let text = std::fs::read_to_string(&manifest).unwrap();
    for pinned in ["[component.hypervisor", "[component.base-image", "[component.rootfs"] {
        assert!(text.contains(pinned), "the development manifest pins no {pinned}: {text}");
    }
    env.ok(&["trust", "add", top.join("ci/dev-keys/dev.pub").to_str().unwrap()]);
    let set = env.ok(&["manifest", "default", &manifest]);
    assert!(set.contains("default manifest"), "{set}");
    assert!(env.ok(&["manifest", "default"]).contains(".toml"), "the default is not shown");

    // The user's own files the block names, in the directory it runs in:
    // an image archive (`docker save`) and a signed manifest.
    let cwd = env.scratch("cwd");
    std::fs::copy(image_archive(&cwd), cwd.join("app.tar")).unwrap();
    std::fs::copy(&manifest, cwd.join("m.toml")).unwrap();
    std::fs::copy(format!("{manifest}.minisig"), cwd.join("m.toml.minisig")).unwrap();
    // The engine image the block loads by name (`image load myapp:1.0`):
    // the same archive, in the machine's engine under that name.
    let _engine_image = EngineImage::tagged(&cwd.join("app.tar"), "myapp:1.0");

    let lines = using_it_lines();
    let mut skipped = 0;
    // The block lets kubestrap choose ports (8443, else the next free one):
    // one at a time with the other tests that do.
    let _port = AUTO_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = Deleter(&env);
    let port = free_port().to_string();
    // The block's `--publish 8080:…`: a host port that is free here.
    let published = free_port().to_string();
    for line in &lines {
        if let Some((_, why)) = NOT_RUN.iter().find(|(key, _)| line.contains(key)) {
            println!("not run: {line} ({why})");
            skipped += 1;
            continue;
        }
        let words: Vec<String> = as_run(line)
            .into_iter()
            .map(|w| match w.as_str() {
                "9443" => port.clone(),
                _ => match w.strip_prefix("8080:") {
                    Some(node) => format!("{published}:{node}"),
                    None => w,
                },
            })
            .collect();
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let out = match words[0].as_str() {
            "kubestrap" => env.cmd(&args).current_dir(&cwd).output().unwrap(),
            "kubectl" => Command::new(&*KUBECTL)
                .args(&args)
                .env("KUBECONFIG", &env.kubeconfig)
                .env("HOME", env.path())
                .output()
                .unwrap(),
            other => panic!("README's Using it runs {other:?}: only kubestrap and kubectl are expected"),
        };
        println!("ran: {line}");
        assert!(
            out.status.success(),
            "README line `{line}` failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        if line.starts_with("kubestrap start -p vm") {
            assert!(said.contains("qemu"), "{said}");
        }
        if line.starts_with("kubestrap start -p c") || line.starts_with("kubestrap start -p web") {
            assert!(said.contains("docker"), "{said}");
        }
        if line.starts_with("kubestrap image list") {
            assert!(said.contains("kubestrap-test/app"), "the loaded image is not listed: {said}");
        }
    }
    assert_eq!(skipped, NOT_RUN.len(), "a line NOT_RUN names is gone from README: update the list");
    assert!(lines.len() >= 15, "README's Using it block was not read: {lines:?}");
    // What the block left: `stop` then `delete` took the default cluster.
    let listed = env.ok(&["profile", "list"]);
    assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some("kubestrap")), "{listed}");
}

/// Deletes every profile of the home when the test ends, however it ends.
/// An image put in the machine's engine under a name for the block, gone
/// again with the test.
struct EngineImage(String);

impl EngineImage {
    fn tagged(archive: &Path, name: &str) -> EngineImage {
        let out = Command::new("docker").args(["load", "-q", "-i", archive.to_str().unwrap()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let loaded = text.lines().find_map(|l| l.strip_prefix("Loaded image: ")).unwrap_or_else(|| {
            panic!("docker load {}: {text}{}", archive.display(), String::from_utf8_lossy(&out.stderr))
        });
        assert!(Command::new("docker").args(["tag", loaded.trim(), name]).status().unwrap().success());
        let _ = Command::new("docker").args(["image", "rm", loaded.trim()]).output();
        EngineImage(name.to_string())
    }
}

impl Drop for EngineImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["image", "rm", &self.0]).output();
    }
}

struct Deleter<'a>(&'a Env);

impl Drop for Deleter<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["delete", "--all"]);
    }
}
