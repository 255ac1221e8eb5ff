//! The kubelet's `kubepods` cgroup. On cgroup v2 the kubelet enables the
//! controllers for the children of its cgroup namespace's root, which the
//! kernel refuses (EBUSY) while processes sit in that root, unless it is the
//! machine's real root cgroup: in a container, k3s moves its processes out
//! only when it runs as PID 1 (k3s pkg/cli/cmds/init_linux.go), otherwise the
//! kubelet fails with "cannot enter cgroupv2 .../kubepods" and k3s exits
//! (k3s issue #4085). On cgroup v1 the kubelet makes `kubepods` in each
//! controller's hierarchy.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{Check, Status};

const ROOT: &str = "/sys/fs/cgroup";

pub struct Kubepods {
    pub check: Check,
    /// Where a pod's cgroups go: `kubepods` of the v2 hierarchy, or of each
    /// v1 hierarchy.
    pub pods: Vec<PathBuf>,
}

/// Makes `kubepods` as the kubelet does. `Err` is the kubelet's fatal error.
pub fn kubepods() -> Result<Kubepods> {
    let root = Path::new(ROOT);
    let controllers_file = root.join("cgroup.controllers");
    if !controllers_file.is_file() {
        let mut made = Vec::new();
        let mut pods = Vec::new();
        for c in ["cpu", "memory", "pids", "cpuset", "blkio"] {
            let h = root.join(c);
            if h.join("cgroup.procs").is_file() && std::fs::create_dir_all(h.join("kubepods")).is_ok() {
                if c == "cpuset" {
                    // A cpuset cgroup takes tasks only once it has cpus and mems.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let _ = std::fs::read(h.join(f)).and_then(|v| std::fs::write(h.join("kubepods").join(f), v));
                    }
                }
                made.push(c);
                pods.push(h.join("kubepods"));
            }
        }
        if made.is_empty() {
            return Ok(Kubepods {
                check: Check::failed("cgroup", "no cgroup filesystem the kubelet can use at /sys/fs/cgroup"),
                pods,
            });
        }
        return Ok(Kubepods {
            check: Check::new(
                "cgroup",
                Status::Ok,
                format!("cgroup v1: kubepods made in the {} hierarchies", made.join(", ")),
            ),
            pods,
        });
    }
    let controllers = std::fs::read_to_string(&controllers_file)?;
    let enable: String = controllers.split_whitespace().map(|c| format!("+{c} ")).collect();
    let ns_root = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
        .unwrap_or_else(|| "?".into());
    if !enable.is_empty()
        && let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), enable.trim())
    {
        let procs = std::fs::read_to_string(root.join("cgroup.procs")).unwrap_or_default();
        bail!(
            "kubelet: cannot enter cgroupv2 \"{ROOT}/kubepods\" with domain controllers -- enabling {} in \
             {ROOT}/cgroup.subtree_control failed: {e} (this process's cgroup is {ns_root}; {} process(es) in the \
             root of the cgroup namespace: k3s moves them out only when it is PID 1)",
            enable.trim(),
            procs.lines().count()
        );
    }
    let kubepods = root.join("kubepods");
    std::fs::create_dir_all(&kubepods)?;
    if !enable.is_empty()
        && let Err(e) = std::fs::write(kubepods.join("cgroup.subtree_control"), enable.trim())
    {
        bail!("kubelet: cannot enable {} in {}/cgroup.subtree_control: {e}", enable.trim(), kubepods.display());
    }
    Ok(Kubepods {
        check: Check::ok(
            "cgroup",
            format!("cgroup v2: kubepods made with {} (namespace root {ns_root})", controllers.trim()),
        ),
        pods: vec![kubepods],
    })
}

/// `__kubepods`: just the kubelet's cgroup step, said on stdout; exit 1 if
/// it fails as the kubelet would.
pub fn kubepods_main() -> ! {
    match kubepods() {
        Ok(k) => {
            println!("kubepods: {}", k.check.detail);
            std::process::exit(0)
        }
        Err(e) => {
            println!("kubepods: {e:#}");
            std::process::exit(1)
        }
    }
}

/// `__container-cgroup NAME CMD...`: runs CMD the way a container engine on
/// a cgroup v2 host places a container: in a child cgroup NAME of this
/// hierarchy's root, in a cgroup namespace of its own rooted there, with
/// /sys/fs/cgroup mounted afresh in a new mount namespace. (What Docker
/// and Podman do with `--cgroupns=private`, their default on cgroup v2.)
pub fn container_cgroup_main(name: &str, cmd: &[std::ffi::OsString]) -> ! {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    use std::os::unix::process::CommandExt;
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        println!("container cgroup: {what}: {e}");
        std::process::exit(125)
    };
    let dir = Path::new(ROOT).join(name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fail("mkdir", &e);
    }
    if let Err(e) = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()) {
        fail("entering the cgroup", &e);
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWNS) {
        fail("unshare", &e);
    }
    let _ = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>);
    // The hierarchy as seen from the new namespace: its root is NAME.
    let _ = nix::mount::umount2(ROOT, nix::mount::MntFlags::MNT_DETACH);
    if let Err(e) = mount(Some("cgroup2"), ROOT, Some("cgroup2"), MsFlags::empty(), None::<&str>) {
        fail("mounting cgroup2", &e);
    }
    let Some((program, args)) = cmd.split_first() else { fail("no command", &"") };
    let e = std::process::Command::new(program).args(args).exec();
    fail("exec", &e)
}
