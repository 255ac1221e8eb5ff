//! The qemu driver for real (TCG here): the stand-in localkube in a VM of
//! the hypervisor and base image `ci/vm/build.sh` makes from Debian's
//! packages, driven by the real kubectl through qemu's port forward.
//! Where qemu is not installed these tests fail, unless
//! `KUBESTRAP_TEST_SKIP=qemu` asks for them to be skipped.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::scenarios::{OnDriver, upgrade_and_rollback};
use crate::support::*;

fn vm_cluster() -> Cluster {
    let vm = vm_artifacts();
    Cluster::with(|s| {
        s.run_on([TestDriver::Native, TestDriver::Qemu(vm)]);
    })
}

/// `start --driver qemu` with a small VM; `accel`: TCG, or the machine's choice.
fn start_vm(c: &Cluster, profile: &str, tcg: bool) -> String {
    let port = free_port().to_string();
    let mut args = vec!["start", "-p", profile, "--driver", "qemu", "--manifest", c.m(), "--port", &port];
    args.extend(["--memory", "512", "--cpus", "1"]);
    if tcg {
        args.extend(["--accel", "tcg"]);
    }
    c.env.ok(&args)
}

fn configmap(c: &Cluster, name: &str) -> String {
    c.kubectl_ok(&KUBECTL, &["get", "configmap", name, "-o", "jsonpath={.data.k}"])
}

#[test]
fn a_vm_cluster_suspends_resumes_shuts_down_recovers_and_deletes() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let c = vm_cluster();
    // The machine's own accelerator choice (KVM where it really runs a
    // guest, else TCG, said in the log).
    let t = Instant::now();
    let out = start_vm(&c, "vm", false);
    println!("cold start to ready: {:?}", t.elapsed());
    assert!(out.contains("qemu driver"), "{out}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=k=v"]);
    let (code, st) = c.status("vm");
    assert_eq!((code, st["host"].as_str()), (0, Some("Running")), "{st}");
    assert_eq!(st["driver"], "qemu", "{st}");

    // stop suspends; start resumes the running state.
    let out = c.env.ok(&["stop", "-p", "vm"]);
    assert!(out.contains("suspended"), "{out}");
    let (code, st) = c.status("vm");
    assert_eq!((code, st["host"].as_str()), (7, Some("Suspended")), "{st}");
    let t = Instant::now();
    let out = c.env.ok(&["start", "-p", "vm"]);
    println!("resume to ready: {:?}", t.elapsed());
    assert!(out.contains("is up again"), "{out}");
    assert_eq!(configmap(&c, "kept"), "v");
    let log = c.env.ok(&["logs", "-p", "vm", "-n", "400"]);
    assert!(log.contains("resuming the suspended VM"), "{log}");

    // stop --shutdown powers off through ACPI: localkube is stopped by the
    // guest, the data disk unmounted; the next start boots afresh.
    let out = c.env.ok(&["stop", "-p", "vm", "--shutdown"]);
    assert!(out.contains("stopped"), "{out}");
    let log = c.env.ok(&["logs", "-p", "vm", "-n", "400"]);
    assert!(log.contains("power off: stopping localkube") && log.contains("halted"), "{log}");
    let (code, st) = c.status("vm");
    assert_eq!((code, st["host"].as_str()), (7, Some("Stopped")), "{st}");
    c.env.ok(&["start", "-p", "vm"]);
    assert_eq!(configmap(&c, "kept"), "v");

    // qemu killed with SIGKILL: status says so, start recovers with the data.
    let pid = c.localkube_pid("vm");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(std::time::Duration::from_secs(10), || !alive(pid)));
    let (code, st) = c.status("vm");
    assert_eq!(st["localkube"], "Crashed", "{st}");
    // qemu is the VM: the host is down with it.
    assert_eq!((code, st["host"].as_str()), (7, Some("Stopped")), "{st}");
    let out = c.env.ok(&["start", "-p", "vm"]);
    assert!(out.contains("is up again"), "{out}");
    assert_eq!(configmap(&c, "kept"), "v");
    c.env.ok(&["kubectl", "-p", "vm", "--", "get", "ns", "default"]);

    // delete leaves nothing: no process, no file, no kubeconfig entry.
    c.env.ok(&["delete", "-p", "vm"]);
    assert!(c.localkubes("vm").is_empty());
    assert!(!c.env.home.join("profiles/vm").exists());
    let kc = fs::read_to_string(&c.env.kubeconfig).unwrap_or_default();
    assert!(!kc.contains("kubestrap-vm"), "{kc}");
}

#[test]
fn two_vm_profiles_run_at_once() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let c = vm_cluster();
    // The longest profile name: its control socket's path is longer than a
    // socket address holds.
    let vb = "vb-".to_string() + &"x".repeat(60);
    let vb = vb.as_str();
    assert!(c.env.home.join("profiles").join(vb).join("vm/qmp.sock").as_os_str().len() > 108);
    start_vm(&c, "va", true);
    start_vm(&c, vb, true);
    for p in ["va", vb] {
        let (code, st) = c.status(p);
        assert_eq!(code, 0, "{st}");
        c.env.ok(&["kubectl", "-p", p, "--", "create", "configmap", &format!("own-{}", &p[..2]), "--from-literal=k=v"]);
    }
    // Each VM has its own data disk.
    let out = c.env.ok(&["kubectl", "-p", "va", "--", "get", "configmap", "-o", "name"]);
    assert!(out.contains("own-va") && !out.contains("own-vb"), "{out}");
    // Suspend and resume go through the control socket.
    c.env.ok(&["stop", "-p", vb]);
    assert_eq!(c.status(vb).1["host"], "Suspended");
    c.env.ok(&["start", "-p", vb]);
    let out = c.env.ok(&["kubectl", "-p", vb, "--", "get", "configmap", "-o", "name"]);
    assert!(out.contains("own-vb"), "{out}");
    c.env.ok(&["delete", "--all"]);
    assert!(c.localkubes("va").is_empty() && c.localkubes(vb).is_empty());
}

#[test]
fn a_corrupted_base_image_or_hypervisor_never_boots() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let c = vm_cluster();
    c.env.ok(&["fetch", "--manifest", c.m(), "--driver", "qemu"]);
    let vm = vm_artifacts();
    // The cached blob of the base image and of the hypervisor, damaged (and
    // not unpacked yet): refused before qemu starts, and nothing runs.
    for (what, a) in [("base image", &vm.base_image), ("hypervisor", &vm.hypervisor)] {
        let blob = c.env.blob(&a.sha256);
        assert!(blob.is_file(), "{what} was fetched");
        flip_byte(&blob, 1000);
        let _ = fs::remove_dir_all(c.env.home.join("components").join(&a.sha256));
        let port = free_port().to_string();
        let args = ["start", "-p", "bad", "--driver", "qemu", "--manifest", c.m(), "--port", &port, "--accel", "tcg"];
        let out = c.env.run(&args);
        assert!(!out.status.success(), "{what}: {}", c.env.report(&args, &out, "expected a refusal"));
        assert!(c.localkubes("bad").is_empty(), "{what}: nothing may run");
        let log = c.env.home.join("profiles/bad/logs/localkube.log");
        assert!(!fs::read_to_string(&log).unwrap_or_default().contains("booting"), "{what}: qemu never started");
        fs::write(&blob, a.bytes()).unwrap();
    }
    // A damaged file in an unpacked tree is repaired from the verified blob
    // before it is used, and said.
    start_vm(&c, "bad", true);
    c.env.ok(&["stop", "-p", "bad", "--shutdown"]);
    let comp = c.env.home.join("components").join(&vm.base_image.sha256).join("initrd.img");
    assert!(comp.is_file(), "{}", comp.display());
    flip_byte(&comp, 4096);
    let out = c.env.ok(&["start", "-p", "bad"]);
    assert!(out.contains("component repaired") && out.contains("initrd.img"), "{out}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    c.env.ok(&["delete", "-p", "bad"]);
}

#[test]
fn the_vm_artifacts_build_reproducibly() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let vm = vm_artifacts();
    let out = tempfile::tempdir().unwrap();
    let debs = target_dir().join("vm/debs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/vm/build.sh");
    let run = Command::new(&script).arg(out.path()).arg(&debs).current_dir("/").output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8_lossy(&run.stdout);
    for a in [&vm.hypervisor, &vm.base_image] {
        let name = a.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(text.contains(&format!("{name} {}", a.sha256)), "{name} rebuilt with another sha256: {text}");
    }
}

#[test]
fn a_bundle_with_the_hypervisor_starts_a_vm_in_a_namespace_with_only_loopback() {
    if !need("qemu", qemu_installed) || !need("netns", netns_possible) {
        return;
    }
    let c = vm_cluster();
    let ns = Netns::new("qemu");
    let bundle = c.env.path().join("kubestrap-vm-bundle");
    c.env.ok(&["bundle", "create", "--manifest", c.m(), "--driver", "qemu", "--out", bundle.to_str().unwrap()]);
    let listed = Command::new("unzip").arg("-l").arg(&bundle).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&vm_artifacts().base_image.sha256));

    let user = Env::new();
    user.ok(&["trust", "add", c.env.keys.join("dev.pub").to_str().unwrap()]);
    let port = free_port().to_string();
    let args = ["start", "--driver", "qemu", "--port", &port, "--memory", "512", "--cpus", "1", "--accel", "tcg"];
    let out = ns.wrap(user.cmd_of(&bundle, &args)).output().unwrap();
    let cleanup = || {
        let _ = ns.wrap(user.cmd(&["delete", "--all"])).output();
    };
    if !out.status.success() {
        cleanup();
        panic!("{}", user.report(&args, &out, "bundle start in the namespace"));
    }
    let mut k = Command::new(&*KUBECTL);
    k.args(["get", "ns", "kube-system", "-o", "name"]).env("KUBECONFIG", &user.kubeconfig).env("HOME", user.path());
    let got = ns.wrap(k).output().unwrap();
    cleanup();
    assert!(String::from_utf8_lossy(&got.stdout).contains("namespace/kube-system"), "{got:?}");
    assert_eq!(user.partials(), Vec::<std::path::PathBuf>::new(), "nothing was downloaded");
}

#[test]
fn a_vm_cluster_upgrades_with_its_data_disk_as_the_snapshot_and_rolls_back() {
    if !need("qemu", qemu_installed) {
        return;
    }
    let start = |c: &Cluster| {
        start_vm(c, "kubestrap", true);
    };
    upgrade_and_rollback(&OnDriver { driver: TestDriver::Qemu(vm_artifacts()), start, placed_images: None });
}

/// A qemu release whose VM artifacts are never needed (the tests below
/// fail before any fetch): small files of the right kind, unbuilt.
fn unfetched_vm_cluster() -> Cluster {
    Cluster::with(|s| {
        let dir = s.localkube.1.path.parent().unwrap().join("vm-unfetched");
        s.run_on([
            TestDriver::Native,
            TestDriver::Qemu(VmArtifacts {
                hypervisor: tar_zst_artifact(
                    &dir,
                    "hv.tar.zst",
                    &[("bin/qemu-system-x86_64", b"#!/bin/false\n", 0o755)],
                ),
                base_image: tar_zst_artifact(&dir, "base.tar.zst", &[("vmlinuz", b"not a kernel", 0o644)]),
            }),
        ]);
    })
}

/// Where a test's `HOME` would put the default kubestrap home.
fn default_home(env: &Env) -> std::path::PathBuf {
    env.path().join(".local/share/kubestrap")
}

fn kvm_device() -> Result<(), String> {
    fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop).map_err(|e| format!("/dev/kvm: {e}"))
}

#[test]
fn doctor_keeps_its_kvm_probe_in_the_home_it_was_given() {
    if !need("kvm", kvm_device) {
        return;
    }
    let c = unfetched_vm_cluster();
    let out = c.env.run(&["doctor", "--driver", "qemu", "--manifest", c.m(), "-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("accelerator"), "{text}");
    let probe = c.env.home.join("state/kvm-probe.toml");
    let kept = fs::read_to_string(&probe).unwrap_or_else(|e| panic!("{}: {e}\n{text}", probe.display()));
    assert!(kept.contains("usable"), "{kept}");
    assert!(!default_home(&c.env).exists(), "doctor wrote into the default home, not KUBESTRAP_HOME");
}

#[test]
fn accel_kvm_without_kvm_is_refused_before_anything_is_fetched() {
    if !need("kvm", kvm_device) {
        return;
    }
    let c = unfetched_vm_cluster();
    // This home's probe record says KVM does not run guests here (this
    // boot): the start's preflight must read it, from this home, and honour
    // the profile's --accel before fetching anything.
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let state = c.env.home.join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(
        state.join("kvm-probe.toml"),
        format!("boot = {:?}\nusable = false\nwhy = \"the test says KVM halts nothing here\"\n", boot.trim()),
    )
    .unwrap();
    let port = free_port().to_string();
    let err = c.env.fail(
        &["start", "-p", "k", "--driver", "qemu", "--accel", "kvm", "--manifest", c.m(), "--port", &port],
        Code::Unfit,
    );
    assert!(err.contains("the test says KVM halts nothing here"), "{err}");
    assert!(c.env.blobs().is_empty(), "artifacts were fetched before the refusal: {:?}", c.env.blobs());
    assert!(!default_home(&c.env).exists(), "the preflight used the default home, not KUBESTRAP_HOME");
    // The machine's choice (no --accel) goes on with TCG: past the
    // preflight, into the fetch.
    let out = c.env.run(&["start", "-p", "k2", "--driver", "qemu", "--manifest", c.m(), "--port", &port]);
    assert_ne!(out.status.code(), exit(Code::Unfit), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!c.env.blobs().is_empty(), "the start without --accel kvm did not get to fetching");
}

/// The real hypervisor with the stand-in in front of its qemu, failing as
/// qemu fails where KVM aborts at once (`fail`: "kvm" or "always"; see
/// ci/standin/src/qemu.rs).
fn aborting_hypervisor(dir: &Path, fail: &str) -> Artifact {
    let real = vm_artifacts().hypervisor;
    let tree = dir.join(format!("hv-{fail}"));
    fs::create_dir_all(&tree).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("tar").arg("--zstd").arg("-xf").arg(&real.path).arg("-C").arg(&tree));
    let bin = tree.join("bin");
    fs::rename(bin.join("qemu-system-x86_64"), bin.join("qemu-system-x86_64.real")).unwrap();
    fs::copy(standin_binary(), bin.join("qemu-system-x86_64")).unwrap();
    fs::write(bin.join("qemu-fail"), fail).unwrap();
    let out = dir.join(format!("hypervisor-{fail}.tar.zst"));
    run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name -C '{}' -cf - . | zstd -q -3 -f -o '{}'",
        tree.display(),
        out.display()
    )));
    Artifact::of(out)
}

/// This home's KVM record says what a probe would: KVM usable, no guest
/// booted with it yet (so the first boot is watched).
fn kvm_probe_passed(env: &Env) {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    fs::create_dir_all(env.home.join("state")).unwrap();
    fs::write(
        env.home.join("state/kvm-probe.toml"),
        format!("boot = {:?}\nusable = true\nwhy = \"the one-instruction guest halted\"\n", boot.trim()),
    )
    .unwrap();
}

#[test]
fn kvm_that_aborts_at_once_falls_back_to_tcg_and_is_remembered() {
    if !need("qemu", qemu_installed) || !need("kvm", kvm_device) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let hv = aborting_hypervisor(scratch.path(), "kvm");
    let c = Cluster::with(|s| {
        s.run_on([
            TestDriver::Native,
            TestDriver::Qemu(VmArtifacts { hypervisor: hv, base_image: vm_artifacts().base_image }),
        ]);
    });
    kvm_probe_passed(&c.env);
    // The machine's choice: KVM (the probe passed); qemu aborts at once;
    // the same start boots again with TCG and says so.
    let out = start_vm(&c, "vm", false);
    assert!(out.contains("accelerator fallback") && out.contains("failed to set MSR"), "{out}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
    let kept = fs::read_to_string(c.env.home.join("state/kvm-probe.toml")).unwrap();
    assert!(kept.contains("usable = false") && kept.contains("MSR"), "{kept}");
    // doctor says what was learnt.
    let doc = c.env.run(&["doctor", "-p", "vm", "--driver", "qemu"]);
    let said = String::from_utf8_lossy(&doc.stdout);
    assert!(said.contains("tcg") && said.contains("MSR"), "{said}");
    // Remembered for this boot of the machine: the next start goes to TCG
    // directly.
    c.env.ok(&["stop", "-p", "vm", "--shutdown"]);
    let out = c.env.ok(&["start", "-p", "vm"]);
    assert!(!out.contains("accelerator fallback"), "{out}");
    c.kubectl_ok(&KUBECTL, &["get", "ns"]);
}

#[test]
fn kvm_then_tcg_failing_names_both_attempts() {
    if !need("qemu", qemu_installed) || !need("kvm", kvm_device) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let hv = aborting_hypervisor(scratch.path(), "always");
    let c = Cluster::with(|s| {
        s.run_on([
            TestDriver::Native,
            TestDriver::Qemu(VmArtifacts { hypervisor: hv, base_image: vm_artifacts().base_image }),
        ]);
    });
    kvm_probe_passed(&c.env);
    let port = free_port().to_string();
    let out = c.env.run(&["start", "-p", "vm", "--driver", "qemu", "--manifest", c.m(), "--port", &port]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), exit(Code::Driver), "{err}");
    assert!(err.contains("with KVM") && err.contains("then with TCG"), "{err}");
    assert!(err.contains("failed to set MSR"), "{err}");
    let (code, st) = c.status("vm");
    assert_eq!((code, st["host"].as_str(), st["localkube"].as_str()), (7, Some("Stopped"), Some("Crashed")), "{st}");
}
