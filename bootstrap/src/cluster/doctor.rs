//! `kubestrap doctor`: what a start needs of this machine, checked without
//! changing anything, each failure with what to do. The driver adds its own
//! checks (the native driver with k3s: root, cgroups, kernel modules, no
//! other Kubernetes).

use std::net::TcpListener;
use std::path::Path;

use kubestrap_manifest::Manifest;
use time::OffsetDateTime;

use super::ports::DEFAULT_PORT;
use crate::driver::{Check, Driver, Gate};
use crate::home::Home;
use crate::profile::Config;

/// This kubestrap's release date: a clock before it is certainly wrong.
const RELEASED: OffsetDateTime = time::macros::datetime!(2026-11-01 00:00 UTC);
/// Room a start needs beyond its artifacts (unpacked trees, logs, data).
const SPARE_BYTES: u64 = 1 << 30;

/// What doctor looks at.
pub struct Subject<'a> {
    pub home: &'a Home,
    pub config: Option<&'a Config>,
    /// The release a start would run, when known.
    pub manifest: Option<&'a Manifest>,
    /// Whether the profile's localkube runs now (its port is then its own).
    pub running: bool,
    /// The port a start would be asked to use (`--port`).
    pub port: Option<u16>,
    pub kubeconfig: &'a Path,
    pub now: OffsetDateTime,
}

/// Every check, in order: the machine's, then the driver's.
pub fn checks(s: &Subject, drv: &dyn Driver) -> Vec<Check> {
    let mut out =
        vec![home_writable(s.home.root()), disk_space(s), port(s), kubeconfig_writable(s.kubeconfig), clock(s)];
    out.extend(drv.check(s.manifest));
    out
}

fn home_writable(root: &Path) -> Check {
    let probe = || -> std::io::Result<()> {
        std::fs::create_dir_all(root)?;
        let f = tempfile::NamedTempFile::new_in(root)?;
        f.as_file().sync_all()
    };
    let result = probe();
    Check::new(
        "home writable",
        result.is_ok(),
        &match &result {
            Ok(()) => format!("{} is writable", root.display()),
            Err(e) => format!("cannot write in {}: {e}", root.display()),
        },
        "make it writable by you, or point KUBESTRAP_HOME at a directory that is",
        Gate::Blocking,
    )
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

fn disk_space(s: &Subject) -> Check {
    let need = s
        .manifest
        .map(|m| {
            let host = kubestrap_manifest::Target::host();
            let kind = s.config.map_or(kubestrap_manifest::Driver::Native, |c| c.driver);
            let artifacts: u64 = m
                .needs(&host, kind)
                .unwrap_or_default()
                .iter()
                .filter(|n| !s.home.blob(&n.artifact.sha256).is_file())
                .map(|n| n.artifact.size.get())
                .sum();
            // A blob and its unpacked tree.
            artifacts.saturating_mul(2)
        })
        .unwrap_or(0)
        + SPARE_BYTES;
    let human = crate::progress::human_bytes;
    match free_bytes(s.home.root()) {
        Some(free) => Check::new(
            "disk space",
            free >= need,
            &format!("{} free in {}, a start needs about {}", human(free), s.home.root().display(), human(need)),
            "free some space (`kubestrap cache prune` removes what no profile uses), or move KUBESTRAP_HOME",
            Gate::Blocking,
        ),
        None => Check::new(
            "disk space",
            false,
            &format!("cannot read the free space of {}", s.home.root().display()),
            "check that the home's filesystem is mounted",
            Gate::Advisory,
        ),
    }
}

fn port(s: &Subject) -> Check {
    let (port, pinned) = match (s.port, s.config) {
        (Some(asked), _) => (asked, true),
        (None, Some(c)) => (c.port, c.port_pinned),
        (None, None) => (DEFAULT_PORT, false),
    };
    // A port asked for (or kept as asked) that is taken blocks a start; one
    // kubestrap chose is chosen again.
    let gate = if pinned { Gate::Blocking } else { Gate::Advisory };
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    if s.running && s.config.is_some_and(|c| c.port == port) {
        return Check::new(
            "port",
            true,
            &format!("127.0.0.1:{port} is this profile's running apiserver"),
            "",
            Gate::Blocking,
        );
    }
    if free(port) {
        return Check::new("port", true, &format!("127.0.0.1:{port} is free"), "", gate);
    }
    let next = (port.saturating_add(1)..=port.saturating_add(200)).find(|p| free(*p));
    let fallback = match (pinned, next) {
        (false, Some(n)) => format!("; otherwise start takes the next free port, {n}"),
        _ => String::new(),
    };
    Check::new(
        "port",
        false,
        &format!("127.0.0.1:{port} is in use by another program"),
        &format!("stop what listens there (`ss -ltnp 'sport = :{port}'` names it), or start with --port N{fallback}"),
        gate,
    )
}

fn kubeconfig_writable(path: &Path) -> Check {
    use nix::unistd::{AccessFlags, access};
    let result = if path.exists() {
        access(path, AccessFlags::W_OK).map_err(|e| format!("{} is not writable: {e}", path.display()))
    } else {
        let dir = path.ancestors().skip(1).find(|p| p.exists()).unwrap_or(Path::new("/"));
        if dir.is_dir() {
            access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
                .map_err(|e| format!("{} does not exist and {} is not writable: {e}", path.display(), dir.display()))
        } else {
            Err(format!("{} cannot be created: {} is not a directory", path.display(), dir.display()))
        }
    };
    Check::new(
        "kubeconfig writable",
        result.is_ok(),
        &result.clone().err().unwrap_or_else(|| format!("{} is writable", path.display())),
        "fix its permissions, or point KUBECONFIG at a file you can write",
        Gate::Blocking,
    )
}

fn clock(s: &Subject) -> Check {
    let now = s.now;
    let fmt = kubestrap_manifest::rfc3339;
    let (ok, detail) = if now < RELEASED {
        (false, format!("the clock says {}, before this kubestrap was released ({})", fmt(now), fmt(RELEASED)))
    } else if let Some(m) = s.manifest {
        if now + time::Duration::minutes(5) < m.published {
            (
                false,
                format!("the clock says {}, before release {} was published ({})", fmt(now), m.id(), fmt(m.published)),
            )
        } else if now >= m.expires {
            (false, format!("release {} expired at {} (the clock says {})", m.id(), fmt(m.expires), fmt(now)))
        } else {
            (true, format!("{} (release {} is valid until {})", fmt(now), m.id(), fmt(m.expires)))
        }
    } else {
        (true, fmt(now))
    };
    Check::new(
        "clock",
        ok,
        &detail,
        "set the clock (e.g. `timedatectl set-ntp true`): manifests and certificates expire by it; an expired \
         release is replaced with `kubestrap upgrade`",
        Gate::Advisory,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_in_a_read_only_place_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ok = kubeconfig_writable(&dir.path().join("new/.kube/config"));
        assert!(ok.ok, "{ok:?}");
        let file = dir.path().join("config");
        std::fs::write(&file, "").unwrap();
        assert!(kubeconfig_writable(&file).ok);
        let c = kubeconfig_writable(&file.join(".kube/config"));
        assert!(!c.ok && c.detail.contains("is not a directory"), "{c:?}");
        assert!(c.advice.as_deref().unwrap().contains("KUBECONFIG"), "{c:?}");
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(&dir.path().join("not/yet/there")).is_some_and(|b| b > 0));
    }
}
