//! What a node's container may do: privileged (or the machine's whole
//! capability set where it lacks one), and a Podman engine's limits.

use std::path::Path;

use super::engine::{Engine, Info};

/// Capability names by number, as the engines know them (Docker 20.10
/// knows up to CAP_AUDIT_READ, 37, and refuses later names).
pub(super) const CAPABILITIES: [&str; 38] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

/// This machine's capability bounding set (what a process here, and so a
/// container of its engine, can ever hold), and the kernel's highest
/// capability number.
pub(super) fn capability_bounding_set() -> (u64, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    let last =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    (bnd, last)
}

/// What a localkube that needs root (k3s) gets, as k3d's and kind's nodes:
/// `--privileged`. Where this machine's bounding set lacks a capability (a
/// confined machine: runc refuses every privileged container there,
/// "unable to apply caps"), the same less that: every capability it has,
/// no seccomp or AppArmor confinement, /proc and /sys unmasked, /dev/kmsg
/// (the kubelet reads it); the entrypoint makes /sys and the cgroup
/// filesystems writable, as they are in a privileged container.
pub(super) fn privilege_args((bnd, last): &(u64, u32)) -> Vec<String> {
    let all = (0..=*last).all(|c| bnd & (1 << c) != 0);
    if all {
        return vec!["--privileged".into()];
    }
    let mut out: Vec<String> = CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(c, _)| bnd & (1 << c) != 0)
        .flat_map(|(_, name)| ["--cap-add".to_string(), name.to_string()])
        .collect();
    for opt in ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"] {
        out.extend(["--security-opt".into(), opt.into()]);
    }
    if Path::new("/dev/kmsg").exists() {
        out.extend(["--device".into(), "/dev/kmsg".into()]);
    }
    out
}

/// What a Podman engine is asked for: open files and processes no higher
/// than its own process may have (Podman's defaults, 1048576, are higher:
/// a machine without CAP_SYS_RESOURCE refuses them, "error setting rlimit
/// type 7"). Docker passes its own limits on by itself: nothing to ask.
pub(super) fn podman_limits(eng: &Engine, info: &Info) -> Vec<String> {
    if !info.podman {
        return Vec::new();
    }
    // The engine's own, else this process's (the same machine, most often
    // the same limits), never above what k3s asks of a node.
    let own = || {
        let hard = |r| nix::sys::resource::getrlimit(r).map(|(_, h)| h).unwrap_or(1 << 20);
        (hard(nix::sys::resource::Resource::RLIMIT_NOFILE), hard(nix::sys::resource::Resource::RLIMIT_NPROC))
    };
    let (nofile, nproc) = eng.process_limits().unwrap_or_else(own);
    let (nofile, nproc) = (nofile.min(1 << 20), nproc.min(1 << 20));
    vec!["--ulimit".into(), format!("nofile={nofile}:{nofile}"), "--ulimit".into(), format!("nproc={nproc}:{nproc}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_unless_the_machine_lacks_a_capability() {
        assert_eq!(privilege_args(&(0x1ff_ffff_ffff, 40)), ["--privileged"]);
        // A machine without CAP_SYS_RESOURCE (24): every other capability.
        let args = privilege_args(&(0x1ff_feff_ffff, 40));
        assert!(!args.contains(&"--privileged".to_string()));
        let caps: Vec<&str> = args.chunks(2).filter(|p| p[0] == "--cap-add").map(|p| p[1].as_str()).collect();
        assert_eq!(caps.len(), 37, "{caps:?}");
        assert!(caps.contains(&"SYS_ADMIN") && caps.contains(&"NET_ADMIN") && !caps.contains(&"SYS_RESOURCE"));
        assert!(args.contains(&"seccomp=unconfined".to_string()));
    }
}
