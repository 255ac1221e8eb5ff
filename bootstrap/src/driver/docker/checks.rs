//! What the docker driver needs on this machine, as checks.

use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest};

use super::engine::{Engine, Info};
use crate::driver::{Check, Gate};

/// The engine, as a check: whether it answers (and how), blocking.
pub(super) fn engine_check(eng: &Engine) -> (Check, Option<Info>) {
    match eng.info() {
        Ok(info) => {
            let detail = format!("{} answers at {}: API {}", info.name(), eng.describe(), info.api);
            (Check::new("engine", true, &detail, "", Gate::Blocking), Some(info))
        }
        Err(e) => {
            let advice = "start the engine or set DOCKER_HOST (or `docker context use`); or use --driver native or \
                          --driver qemu";
            (Check::new("engine", false, &e.to_string(), advice, Gate::Blocking), None)
        }
    }
}

/// A rootless engine cannot give a localkube that needs real root (k3s:
/// containerd, cgroups, iptables of the machine's own) what it needs.
pub(super) fn rootless_check(info: &Info, m: &Manifest) -> Option<Check> {
    let run = &m.component.localkube.run;
    (info.rootless && run.needs_root).then(|| {
        Check::new(
            "rootless engine",
            false,
            &format!(
                "the engine is {} and release {} runs {} as real root (needs-root): a rootless engine cannot give it \
                 the machine's cgroups, iptables and devices",
                info.name(),
                m.id(),
                run.program
            ),
            "use a rootful engine (the system's Docker or Podman, with sudo), or --driver qemu (no root needed)",
            Gate::Blocking,
        )
    })
}

/// The engine's storage driver: `vfs` copies every layer in full (slow,
/// and a node image takes its whole size again per container), flagged
/// though not blocking.
pub(super) fn storage_check(driver: &str) -> Check {
    let vfs = driver == "vfs";
    let detail = if vfs {
        "vfs: every container gets a full copy of its image (slow starts, large disk use)".to_string()
    } else {
        driver.to_string()
    };
    let advice = "configure the engine for overlay2 (Docker: \"storage-driver\" in daemon.json; Podman: driver = \"overlay\" in storage.conf, with fuse-overlayfs when rootless on an older kernel)";
    Check::new("storage driver", !vfs, &detail, if vfs { advice } else { "" }, Gate::Advisory)
}

/// Whether the release pins a base rootfs for this machine, blocking.
pub(super) fn rootfs_check(m: &Manifest) -> Check {
    let has = m
        .needs(&kubestrap_manifest::Target::host(), Kind::Docker)
        .is_ok_and(|n| n.iter().any(|n| n.component == ComponentName::Rootfs));
    let pins = if has { "pins a" } else { "pins no" };
    let detail = format!("release {} {pins} base rootfs for the docker driver", m.id());
    Check::new("rootfs", has, &detail, "use a release made for the docker driver, or another driver", Gate::Blocking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vfs_storage_driver_is_flagged() {
        assert!(storage_check("overlay2").ok);
        let vfs = storage_check("vfs");
        assert!(!vfs.ok && !vfs.blocking && vfs.advice.as_deref().is_some_and(|a| a.contains("overlay")), "{vfs:?}");
    }
}
