//! TEST ONLY: the stand-in as `qemu-system-x86_64` (chosen by argv0, like
//! its k3s mode), in front of the real qemu it is packed beside
//! (`bin/qemu-system-x86_64.real`). It fails the way qemu fails on
//! machines where KVM passes a one-instruction probe and then aborts
//! (`failed to set MSR 0x10a to 0x69`, then `kvm_buf_set_msrs: Assertion
//! … failed` and SIGABRT, at once), so the qemu driver's fallback to TCG is
//! tested on any machine. `bin/qemu-fail` says when to fail: `kvm` (only
//! with `-accel kvm`) or `always`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this stand-in runs as qemu.
pub fn mode() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == "qemu-system-x86_64"))
        .unwrap_or(false)
}

pub fn main() -> ! {
    let argv: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(&argv[0]).parent().map(Path::to_path_buf).unwrap_or_default();
    let fail = std::fs::read_to_string(bin.join("qemu-fail")).unwrap_or_default();
    let kvm = argv.windows(2).any(|w| w[0] == "-accel" && w[1].starts_with("kvm"));
    if fail.trim() == "always" || (fail.trim() == "kvm" && kvm) {
        eprintln!("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69");
        eprintln!(
            "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3296: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."
        );
        std::process::abort();
    }
    // The real qemu, run the way kubestrap runs the hypervisor tree's
    // programs: through the tree's own loader and libraries.
    let tree = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let loader = tree.join("lib/ld-linux-x86-64.so.2");
    let real = bin.join("qemu-system-x86_64.real");
    let err = if loader.is_file() {
        Command::new(&loader).arg("--library-path").arg(tree.join("lib")).arg(&real).args(&argv[1..]).exec()
    } else {
        Command::new(&real).args(&argv[1..]).exec()
    };
    eprintln!("qemu-system-x86_64 (stand-in): cannot run {}: {err}", real.display());
    std::process::exit(1);
}
