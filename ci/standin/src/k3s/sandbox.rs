//! One real container, the way containerd and runc make one: the image's
//! layers unpacked from an archive in the images directory (what
//! `kubestrap image load` and the air-gap images place), its rootfs
//! mounted under /run/k3s/containerd (k3s's containerd state directory,
//! k3s pkg/agent/config/config_linux.go), a shim in a session of its own
//! that keeps the environment it was started with, and under it the
//! container's process: new mount, network, UTS and IPC namespaces, the
//! root made a slave mount, the rootfs bind-mounted onto itself and
//! `pivot_root(".", ".")` — the call that fails with EINVAL on an initramfs
//! root (containerd/cri#851), since k3s's containerd config never sets
//! `no_pivot`. The container then sleeps, as a pause container does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::{Check, Report, Status};

/// Where containerd mounts a task's rootfs (k3s's containerd state dir).
pub const TASKS: &str = "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io";

/// An image archive, decompressed by its magic bytes.
fn open_maybe_compressed(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(head)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(head)?),
        _ => Box::new(head),
    })
}

/// The layer files of an unpacked docker-archive or OCI image layout.
fn layers(dir: &Path) -> Result<Vec<PathBuf>> {
    let json = |p: PathBuf| -> Result<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))
    };
    let blob = |digest: &str| dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    if dir.join("manifest.json").is_file() {
        let m = json(dir.join("manifest.json"))?;
        let layers = m[0]["Layers"].as_array().ok_or_else(|| anyhow!("manifest.json names no Layers"))?;
        return Ok(layers.iter().filter_map(|l| l.as_str()).map(|l| dir.join(l)).collect());
    }
    if dir.join("index.json").is_file() {
        let index = json(dir.join("index.json"))?;
        let digest = index["manifests"][0]["digest"].as_str().ok_or_else(|| anyhow!("index.json names no manifest"))?;
        let manifest = json(blob(digest))?;
        let layers = manifest["layers"].as_array().ok_or_else(|| anyhow!("the image manifest names no layers"))?;
        return Ok(layers.iter().filter_map(|l| l["digest"].as_str()).map(blob).collect());
    }
    bail!("neither a docker-archive (manifest.json) nor an OCI image layout (index.json)")
}

/// Unpacks `archive`'s image into `rootfs` (layers in order; whiteouts and
/// device nodes left out).
fn unpack_image(archive: &Path, work: &Path, rootfs: &Path) -> Result<()> {
    let unpacked = work.join("archive");
    std::fs::create_dir_all(&unpacked)?;
    tar::Archive::new(open_maybe_compressed(archive)?)
        .unpack(&unpacked)
        .with_context(|| format!("unpacking {}", archive.display()))?;
    let layers = layers(&unpacked)?;
    std::fs::create_dir_all(rootfs)?;
    for layer in &layers {
        let mut ar = tar::Archive::new(open_maybe_compressed(layer)?);
        for entry in ar.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            let name = entry.path()?.to_string_lossy().into_owned();
            if name.rsplit('/').next().is_some_and(|n| n.starts_with(".wh."))
                || kind.is_block_special()
                || kind.is_character_special()
            {
                continue;
            }
            entry.unpack_in(rootfs)?;
        }
    }
    std::fs::remove_dir_all(&unpacked)?;
    if layers.is_empty() {
        bail!("the image has no layers");
    }
    Ok(())
}

/// The first archive in the images directory that holds an image, unpacked.
fn image_rootfs(data_dir: &Path) -> Result<Option<(String, PathBuf)>, String> {
    let images = data_dir.join("agent/images");
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&images).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.retain(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')));
    names.sort();
    let mut skipped = Vec::new();
    for archive in names {
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        let id: String = name.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        let work = data_dir.join("agent/containerd/standin").join(&id);
        let rootfs = work.join("rootfs");
        if work.join(".unpacked").is_file() {
            return Ok(Some((name, rootfs)));
        }
        let _ = std::fs::remove_dir_all(&work);
        match unpack_image(&archive, &work, &rootfs) {
            Ok(()) => {
                std::fs::write(work.join(".unpacked"), b"").map_err(|e| e.to_string())?;
                return Ok(Some((name, rootfs)));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                skipped.push(format!("{name}: {e:#}"));
            }
        }
    }
    if skipped.is_empty() { Ok(None) } else { Err(format!("no usable image archive ({})", skipped.join("; "))) }
}

/// Starts the container; returns its pid once it pivoted into the image.
pub fn run_container(data_dir: &Path, pods_cgroups: &[PathBuf], report: &mut Report) -> Option<i32> {
    let (image, rootfs) = match image_rootfs(data_dir) {
        Ok(Some(found)) => found,
        Ok(None) => {
            let dir = data_dir.join("agent/images");
            report.push(Check::new(
                "sandbox",
                Status::Warn,
                format!("no image archive in {}: nothing to run (`kubestrap image load` places one)", dir.display()),
            ));
            return None;
        }
        Err(why) => {
            report.push(Check::failed("sandbox", why));
            return None;
        }
    };
    let id = format!("{:016x}", crate::store::random_u64());
    let task = Path::new(TASKS).join(&id).join("rootfs");
    let result = (|| -> Result<(i32, String)> {
        std::fs::create_dir_all(&task)?;
        mount(Some(&rootfs), &task, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("bind-mounting the rootfs at {}", task.display()))?;
        let mut shim = Command::new("/proc/self/exe");
        shim.arg0("containerd-shim-runc-v2")
            .arg("__shim")
            .arg(&task)
            .arg(std::env::join_paths(pods_cgroups).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = shim.spawn().context("starting the shim")?;
        let out = child.stdout.take().expect("piped");
        // The shim lives on (k3s leaves it running); it is reaped by
        // whoever inherits it.
        std::thread::spawn(move || child.wait());
        let line = read_line_within(out, Duration::from_secs(20))?;
        match line.split_once(' ') {
            Some(("ok", rest)) => {
                let (pid, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                Ok((pid.parse()?, detail.to_string()))
            }
            Some((_, why)) => bail!("{why}"),
            None => bail!("the shim said {line:?}"),
        }
    })();
    match result {
        Ok((pid, detail)) => {
            report.push(Check::ok("sandbox", format!("container of {image} (pid {pid}): {detail}")));
            Some(pid)
        }
        Err(e) => {
            report.push(Check::failed("sandbox", format!("container of {image}: {e:#}")));
            None
        }
    }
}

fn read_line_within(r: impl Read + Send + 'static, deadline: Duration) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(r).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line =
        rx.recv_timeout(deadline).map_err(|_| anyhow!("no word from the shim within {}s", deadline.as_secs()))?;
    if line.is_empty() {
        bail!("the shim ended without a word");
    }
    Ok(line.trim().to_string())
}

/// Stops writing to the reader of our stdout (it read its one line).
fn close_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
}

/// Names this process as `ps` and /proc/PID/comm show it (a re-execution
/// of /proc/self/exe would be "exe").
fn set_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// `__shim ROOTFS CGROUPS`: a session of its own, the container under it,
/// placed in a pod cgroup under each of CGROUPS (':'-separated kubepods).
pub fn shim_main(rootfs: &Path, cgroups: &std::ffi::OsStr) -> ! {
    set_name(c"containerd-shim");
    let _ = nix::unistd::setsid();
    let started = Command::new("/proc/self/exe")
        .arg0("pause")
        .arg("__container")
        .arg(rootfs)
        // A container's environment is its image's, never the shim's.
        .env_clear()
        .env("PATH", "/bin:/usr/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            println!("failed starting the container: {e}");
            std::process::exit(1);
        }
    };
    let line = read_line_within(child.stdout.take().expect("piped"), Duration::from_secs(15))
        .unwrap_or_else(|e| format!("failed {e}"));
    let mut line = line;
    if line.starts_with("ok ") && !cgroups.is_empty() {
        for kubepods in std::env::split_paths(cgroups) {
            let pod = kubepods.join(format!("pod-{}", child.id()));
            let placed = std::fs::create_dir_all(&pod).and_then(|()| {
                // A v1 cpuset cgroup takes tasks only once it has cpus and mems.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(v) = std::fs::read(kubepods.join(f)) {
                        std::fs::write(pod.join(f), v)?;
                    }
                }
                std::fs::write(pod.join("cgroup.procs"), child.id().to_string())
            });
            if let Err(e) = placed {
                line = format!("failed placing the container in {}: {e}", pod.display());
                break;
            }
        }
        if line.starts_with("ok ") {
            line = format!("{line}; in pod cgroups under kubepods");
        }
    }
    let line = match line.strip_prefix("ok ") {
        Some(rest) => format!("ok {} {rest}", child.id()),
        None => line,
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    close_stdout();
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
    std::process::exit(code)
}

/// The filesystem type of this mount namespace's root.
fn root_fstype() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                (f.get(4) == Some(&"/")).then(|| f.get(sep + 1).map(|s| s.to_string()))?
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// `__container ROOTFS`: what runc does before it executes the image's
/// process. Says `ok <detail>` or `failed <why>` on stdout, then sleeps.
pub fn container_main(rootfs: &Path) -> ! {
    set_name(c"pause");
    // Opened before the pivot: the image has no /dev/null.
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null").ok();
    let fstype = root_fstype();
    let step = |what: &str, r: nix::Result<()>| {
        if let Err(e) = r {
            println!("failed {what}: {} (root fs: {fstype})", e.desc());
            std::process::exit(1);
        }
    };
    step(
        "unshare",
        unshare(
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC,
        ),
    );
    step(
        "making / a slave mount",
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>),
    );
    step(
        "bind-mounting the rootfs",
        mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>),
    );
    step("chdir", nix::unistd::chdir(rootfs));
    step("pivot_root", nix::unistd::pivot_root(".", "."));
    step("unmounting the old root", umount2(".", MntFlags::MNT_DETACH));
    step("chdir /", nix::unistd::chdir("/"));
    let mut names: Vec<String> = std::fs::read_dir("/")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    println!("ok pivot_root into the image: its root holds {} ({})", names.join(", "), names.len());
    let _ = std::io::stdout().flush();
    if let Some(null) = null {
        let _ = nix::unistd::dup2_stdout(null);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
