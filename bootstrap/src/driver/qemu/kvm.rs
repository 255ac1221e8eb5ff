//! Whether KVM really runs a guest here. `/dev/kvm` can exist, open and
//! create VMs on a host whose nested virtualization then never runs a
//! vCPU (qemu starts, the guest prints nothing, ever). So the probe runs a
//! one-instruction guest (`hlt`) in a child process (`kubestrap
//! __kvm-probe`) under a deadline: KVM counts as usable only if the vCPU
//! comes back with a HLT exit. Even that is not enough on some nested hosts
//! (the test guest halts, a Linux guest hangs), so the first VM started with
//! KVM is watched too ([`record_boot`]): one that shows no sign of life in
//! its console is restarted with TCG. The answers are kept per boot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retry::Backoff;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_GET_REGS: libc::c_ulong = 0x8090_AE81;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// Runs `hlt` at 0x1000 in real mode; Ok when the vCPU exits with HLT.
/// Runs in the probe child only: a broken KVM may never return. Long on
/// purpose: the KVM ioctls in the order the kernel's API takes them.
pub fn probe_in_this_process() -> Result<(), String> {
    // SAFETY: plain ioctls and mmaps on descriptors this function owns;
    // every result is checked before use.
    unsafe {
        let kvm = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if kvm < 0 {
            return Err("cannot open /dev/kvm".into());
        }
        if libc::ioctl(kvm, KVM_GET_API_VERSION, 0) != 12 {
            return Err("unexpected KVM API version".into());
        }
        let vm = libc::ioctl(kvm, KVM_CREATE_VM, 0);
        if vm < 0 {
            return Err("KVM_CREATE_VM failed".into());
        }
        let mem = libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return Err("mmap failed".into());
        }
        *(mem as *mut u8) = 0xf4; // hlt
        let region = MemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0x1000,
            memory_size: 0x1000,
            userspace_addr: mem as u64,
        };
        if libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0 {
            return Err("KVM_SET_USER_MEMORY_REGION failed".into());
        }
        let vcpu = libc::ioctl(vm, KVM_CREATE_VCPU, 0);
        if vcpu < 0 {
            return Err("KVM_CREATE_VCPU failed".into());
        }
        let run_size = libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
        if run_size <= 0 {
            return Err("KVM_GET_VCPU_MMAP_SIZE failed".into());
        }
        let run = libc::mmap(
            std::ptr::null_mut(),
            run_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        );
        if run == libc::MAP_FAILED {
            return Err("mmap of kvm_run failed".into());
        }
        // Code segment base 0, selector 0 (struct kvm_sregs starts with cs:
        // base u64 at 0, selector u16 at 12).
        let mut sregs = [0u8; 312];
        if libc::ioctl(vcpu, KVM_GET_SREGS, sregs.as_mut_ptr()) < 0 {
            return Err("KVM_GET_SREGS failed".into());
        }
        sregs[0..8].fill(0);
        sregs[12..14].fill(0);
        if libc::ioctl(vcpu, KVM_SET_SREGS, sregs.as_ptr()) < 0 {
            return Err("KVM_SET_SREGS failed".into());
        }
        // struct kvm_regs: 18 u64, rip at 16, rflags at 17.
        let mut regs = [0u64; 18];
        if libc::ioctl(vcpu, KVM_GET_REGS, regs.as_mut_ptr()) < 0 {
            return Err("KVM_GET_REGS failed".into());
        }
        regs[16] = 0x1000;
        regs[17] = 0x2;
        if libc::ioctl(vcpu, KVM_SET_REGS, regs.as_ptr()) < 0 {
            return Err("KVM_SET_REGS failed".into());
        }
        if libc::ioctl(vcpu, KVM_RUN, 0) < 0 {
            return Err("KVM_RUN failed".into());
        }
        let exit_reason = *((run as *const u8).add(8) as *const u32);
        if exit_reason != KVM_EXIT_HLT {
            return Err(format!("the test guest exited with reason {exit_reason}, not HLT"));
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Probed {
    boot: String,
    usable: bool,
    why: String,
    /// A real guest booted with KVM since this boot.
    #[serde(default)]
    booted: bool,
}

/// What is known of KVM on this machine since it booted.
pub struct Known {
    pub usable: bool,
    pub why: String,
    /// A real guest has booted with it (no need to watch the next one).
    pub booted: bool,
}

/// Whether KVM runs guests on this machine, and why not; probed once per
/// boot (the answer kept in `record`).
pub fn usable(record: &Path) -> Known {
    if !cfg!(target_os = "linux") || std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Known { usable: false, why: "no usable /dev/kvm".into(), booted: false };
    }
    let boot = crate::driver::supervisor::process::boot_id();
    if let Ok(Some(p)) = crate::state::read::<Probed>(record)
        && p.boot == boot
    {
        return Known { usable: p.usable, why: p.why, booted: p.booted };
    }
    let (usable, why) = run_probe();
    let _ = crate::state::write(record, &Probed { boot, usable, why: why.clone(), booted: false });
    Known { usable, why, booted: false }
}

/// Records whether a real guest booted with KVM (until the next reboot).
/// A verdict that cannot be kept is an error: the next start would try KVM
/// again and again.
pub fn record_boot(record: &Path, booted: bool, why: &str) -> Result<(), kubestrap_fskit::FsError> {
    let boot = crate::driver::supervisor::process::boot_id();
    crate::state::write(record, &Probed { boot, usable: booted, why: why.to_string(), booted })
}

fn run_probe() -> (bool, String) {
    let Ok(exe) = std::env::current_exe() else { return (false, "cannot find kubestrap to probe KVM".into()) };
    let child =
        Command::new(exe).arg("__kvm-probe").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let Ok(mut child) = child else { return (false, "cannot run the KVM probe".into()) };
    let done = Backoff::fixed(Duration::from_millis(5))
        .for_at_most(Duration::from_secs(2))
        .poll(|| child.try_wait().ok().flatten());
    match done {
        Some(s) if s.success() => (true, "KVM runs a test guest".into()),
        Some(_) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut e, 4096), &mut err);
            }
            (false, format!("/dev/kvm is there but {}", err.trim().trim_start_matches("error: ")))
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (false, "/dev/kvm is there but a test guest never ran (nested virtualization off?)".into())
        }
    }
}
