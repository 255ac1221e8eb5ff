//! The engine, through the `docker` CLI: every call under a deadline, its
//! output capped, its failure said with what to do; and the import of the
//! release's rootfs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command};
use std::time::Duration;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Sha256;

use super::{CALL, IMPORT, LABEL};
use crate::artifacts::hash::HashingReader;
use crate::driver::{DockerError, DockerErrorKind as Kind, DriverError, Result};

/// The lowest engine API version this driver is tested against (Docker 20.10).
const MIN_API: (u32, u32) = (1, 41);

/// Where the engine is, for messages (a password in `DOCKER_HOST` is not shown).
pub fn engine_address() -> String {
    let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    crate::urls::redact(&host.unwrap_or_else(|| "unix:///var/run/docker.sock".into()))
}

/// A `docker` command's stdout, bounded in time; a failure explained.
pub(super) fn docker(args: &[&str], deadline: Duration) -> Result<String> {
    let ran = run(args, None::<fn(ChildStdin)>, None, deadline)?;
    if !ran.status.success() {
        return Err(explain(args, &ran.stderr));
    }
    Ok(ran.stdout)
}

pub(super) use crate::proc::Ran;

/// Runs `docker ARGS` under a deadline ([`crate::proc::run_bounded`]); its
/// stderr with any URL password taken out.
pub(super) fn run<T: Send + 'static>(
    args: &[&str],
    feed: Option<impl FnOnce(ChildStdin) -> T + Send + 'static>,
    to: Option<File>,
    deadline: Duration,
) -> Result<Ran<T>> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    let ran = crate::proc::run_bounded(cmd, feed, to, deadline).map_err(|e| {
        failed(format!(
            "cannot run the `docker` command ({e}): install the Docker CLI (or podman-docker) and make sure it is on PATH"
        ))
    })?;
    let Some(mut ran) = ran else {
        return Err(failed(format!(
            "`docker {}` did not finish within {}s (engine at {}); check the engine (`docker info`)",
            args.first().unwrap_or(&""),
            deadline.as_secs(),
            engine_address()
        )));
    };
    ran.stderr = crate::urls::redact_text(&ran.stderr);
    Ok(ran)
}

/// A failed engine call, said with what to do. Only errors about reaching
/// the engine itself read as "unreachable" (exit 44); a container's own
/// failure (a mount refused, say) is said as the engine said it.
pub(super) fn explain(args: &[&str], stderr: &str) -> DriverError {
    let what = format!("`docker {}`", args.iter().take(2).copied().collect::<Vec<_>>().join(" "));
    let about_daemon = stderr.contains("Cannot connect to the Docker daemon")
        || stderr.contains("Is the docker daemon running")
        || stderr.contains("error during connect")
        || (stderr.contains("dial unix") && (stderr.contains("no such file") || stderr.contains("connection refused")));
    if stderr.contains("permission denied") && stderr.contains("connect to the Docker daemon") {
        return unreachable(format!(
            "no permission to use the Docker engine at {}: add yourself to the `docker` group (then log in again), \
             or use rootless Docker / Podman through DOCKER_HOST",
            engine_address()
        ));
    }
    if about_daemon {
        return unreachable(format!(
            "cannot reach the Docker engine at {} ({}): start it (`sudo systemctl start docker`, Docker Desktop, or \
             `systemctl --user start podman.socket`), or point DOCKER_HOST at a running one",
            engine_address(),
            stderr.lines().last().unwrap_or(stderr)
        ));
    }
    // What is not there, told apart once, here.
    let lower = stderr.to_lowercase();
    let kind = if lower.contains("no such container") {
        Kind::NoSuchContainer
    } else if lower.contains("no such image") {
        Kind::NoSuchImage
    } else if lower.contains("no such network") || (lower.contains("network") && lower.contains("not found")) {
        Kind::NoSuchNetwork
    } else {
        Kind::Failed
    };
    DockerError::new(kind, format!("{what} failed: {stderr}")).into()
}

fn unreachable(message: String) -> DriverError {
    DockerError::new(Kind::Unreachable, message).into()
}

/// A failure of the engine or of its CLI that is not the engine's refusal.
pub(super) fn failed(message: impl Into<String>) -> DriverError {
    DockerError::failed(message).into()
}

/// An engine on another machine cannot see the host paths kubestrap
/// bind-mounts, and would publish the apiserver on its own 127.0.0.1.
fn local_engine(host: &str) -> bool {
    match url::Url::parse(host) {
        Ok(u) if matches!(u.scheme(), "tcp" | "http" | "https" | "ssh") => {
            matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"))
        }
        _ => true,
    }
}

/// The engine answers, is on this machine, with an API version this driver
/// supports.
pub fn engine() -> Result<(String, String)> {
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && !local_engine(&host)
    {
        return Err(unreachable(format!(
            "the engine at {} is on another machine: the docker driver bind-mounts this machine's files and publishes \
             the apiserver on 127.0.0.1, so it needs an engine here; unset DOCKER_HOST (or point it at a local socket)",
            engine_address()
        )));
    }
    let out = docker(&["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"], Duration::from_secs(10))?;
    let mut parts = out.split_whitespace();
    let (version, api) = (parts.next().unwrap_or("?").to_string(), parts.next().unwrap_or("0.0").to_string());
    let mut nums = api.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let have = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if have < MIN_API {
        return Err(unreachable(format!(
            "the engine at {} speaks API {api} (version {version}); kubestrap needs API {}.{} or newer (Docker 20.10+, \
             Podman 4+): upgrade the engine",
            engine_address(),
            MIN_API.0,
            MIN_API.1
        )));
    }
    Ok((version, api))
}

pub(super) fn image_tag(sha: &str) -> String {
    format!("kubestrap-rootfs:{sha}")
}

/// Imports the verified rootfs blob unless the engine has it: decompressed
/// as it streams into `docker import`, hashed on the way. The import is
/// untagged until its hash has matched, so the tag only ever names verified
/// content; when another kubestrap tagged the same rootfs meanwhile, ours is
/// dropped and theirs used.
/// The node image made from rootfs `blob`, imported unless the engine
/// already has it; and whether it was imported now.
pub(super) fn ensure_image(blob: &Path) -> Result<(String, bool)> {
    let sha = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = image_tag(&sha);
    let tagged = || docker(&["image", "inspect", "--format", "{{.Id}}", &tag], CALL).is_ok();
    if tagged() {
        return Ok((tag, false));
    }
    let want: Sha256 = sha.parse().map_err(|_| failed(format!("{}: not a store blob", blob.display())))?;
    // Checked before the engine sees a byte, and hashed again as it streams
    // (the file could change in between).
    let corrupt = |got: &dyn std::fmt::Display| {
        failed(format!(
            "the rootfs {} no longer matches its manifest (sha256 {got}); run `kubestrap cache verify`",
            blob.display()
        ))
    };
    let (before, _) = crate::artifacts::hash::hash_file(blob).map_err(|e| fskit::FsError::io(blob, "read", e))?;
    if before != want {
        return Err(corrupt(&before));
    }
    let file = fskit::open_regular(blob)?;
    let feed = move |mut stdin: ChildStdin| {
        let mut hashing = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
        let copied = (|| -> std::io::Result<()> {
            let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
            std::io::copy(&mut decoder, &mut stdin)?;
            stdin.flush()
        })();
        drop(stdin);
        (copied.map_err(|e| e.to_string()), hashing.finish().ok().map(|(h, _)| h))
    };
    let label = format!("LABEL {LABEL}.rootfs={sha}");
    let ran = run(&["import", "--change", &label, "-"], Some(feed), None, IMPORT)?;
    let (copied, got) = ran.fed.unwrap_or((Err("the feeding thread failed".into()), None));
    let id = ran.stdout.trim().to_string();
    let drop_ours = || {
        if id.starts_with("sha256:") {
            let _ = docker(&["image", "rm", &id], CALL);
        }
    };
    if got != Some(want) {
        drop_ours();
        return Err(match got {
            Some(got) => corrupt(&got),
            None => failed(format!("cannot read the rootfs {}", blob.display())),
        });
    }
    if !ran.status.success() || copied.is_err() || !id.starts_with("sha256:") {
        drop_ours();
        return Err(explain(&["import"], &format!("{} {}", ran.stderr, copied.err().unwrap_or_default())));
    }
    if tagged() {
        drop_ours();
    } else {
        docker(&["tag", &id, &tag], CALL)?;
        // Two imports may both have found the tag free: the later tag wins,
        // and the earlier import goes (the engine keeps it while a container
        // already uses it; that container's delete removes it).
        let now = docker(&["image", "inspect", "--format", "{{.Id}}", &tag], CALL).unwrap_or_default();
        if now.trim() != id {
            drop_ours();
        }
    }
    Ok((tag, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_the_daemon_read_as_unreachable() {
        let unreachable = |e: &str| explain(&["start"], e).is_docker(Kind::Unreachable);
        assert!(unreachable("Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?"));
        assert!(unreachable(
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
        ));
        assert!(unreachable(
            "error during connect: Get \"http://%2Fx/v1.41/version\": dial unix /x: connect: no such file"
        ));
        // A container's own failure is not the engine's.
        assert!(!unreachable(
            "Error response from daemon: error while creating mount source path '/x': permission denied"
        ));
        assert!(!unreachable(
            "Error response from daemon: driver failed programming external connectivity: connection refused"
        ));
    }

    #[test]
    fn engines_on_other_machines_are_told_apart() {
        for local in [
            "unix:///run/user/1000/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2376",
            "npipe:////./pipe/docker_engine",
        ] {
            assert!(local_engine(local), "{local}");
        }
        for remote in ["tcp://10.0.0.5:2376", "ssh://me@build-box", "tcp://docker.example.com:2375"] {
            assert!(!local_engine(remote), "{remote}");
        }
    }
}
