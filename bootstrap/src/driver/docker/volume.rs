//! The data volume as a snapshot and back, on every engine. Nothing here
//! attaches to a container (Podman's Docker-compatible API refuses the
//! docker CLI's attached `run`, "unable to upgrade to tcp, received 409"):
//! the volume is mounted in a throwaway container of the profile's own
//! image that is only created, and copied out or in with `docker cp` (the
//! engine's archive API); a restore's swap runs in one that is started
//! detached and waited for.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use kubestrap_fskit as fskit;

use super::engine::{Engine, failed};
use super::{CALL, IMPORT, LABEL};
use crate::driver::Result;

/// The snapshot, as the engine's archive API writes it (entries under
/// `from/`). A snapshot of an earlier kubestrap is `volume.tar` (entries
/// under `./`); a restore reads either.
const SNAPSHOT: &str = "volume.cp.tar";
const EARLIER: &str = "volume.tar";

/// A created container of the profile's image with a volume mounted
/// (`mount`), labelled as the profile's, removed when dropped.
struct Throwaway<'a> {
    eng: &'a Engine,
    id: String,
}

/// What the throwaway containers of one profile are made with: the image,
/// the profile's mark (`owner`, its node container's name: a delete removes
/// one a killed command left) and what the engine needs besides (Podman's
/// limits).
pub struct Throwaways<'a> {
    pub owner: &'a str,
    pub image: &'a str,
    pub extra: &'a [String],
}

impl<'a> Throwaway<'a> {
    fn create(eng: &'a Engine, b: &Throwaways<'_>, mount: &str, cmd: &[&str]) -> Result<Throwaway<'a>> {
        let label = format!("{LABEL}.throwaway={}", b.owner);
        let mut args =
            vec!["create", "--pull", "never", "--label", &label, "--mount", mount, "--entrypoint", "/bin/sh"];
        args.extend(b.extra.iter().map(String::as_str));
        args.push(b.image);
        args.extend(cmd);
        let id = eng.docker(&args, CALL)?.trim().to_string();
        if id.is_empty() {
            return Err(failed("`docker create` printed no container id"));
        }
        Ok(Throwaway { eng, id })
    }
}

impl Drop for Throwaway<'_> {
    fn drop(&mut self) {
        let _ = self.eng.docker(&["rm", "-f", &self.id], CALL);
    }
}

/// The volume's files into `dest` (owners and modes kept inside the tar, a
/// file of the user's).
pub fn snapshot(eng: &Engine, b: &Throwaways<'_>, volume: &str, dest: &Path) -> Result<fskit::Copied> {
    fskit::create_dir_mode(dest, 0o700)?;
    let tar = dest.join(SNAPSHOT);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tar)
        .map_err(|e| fskit::FsError::io(&tar, "create", e))?;
    let mount = format!("type=volume,source={volume},target=/from,readonly");
    let made = Throwaway::create(eng, b, &mount, &["-c", "true"])?;
    let from = format!("{}:/from", made.id);
    let args = ["cp", from.as_str(), "-"];
    let ran = eng.run(&args, None::<fn(_)>, Some(file), IMPORT)?;
    if !ran.status.success() {
        return Err(eng.explain(&args, &ran.stderr));
    }
    fskit::sync_fs(dest)?;
    let bytes = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    Ok(fskit::Copied { files: 1, bytes, reflinked: 0 })
}

/// The snapshot in `src` in place of the volume's files: unpacked beside
/// them first (`.restoring`), then swapped in, so a restore cut short
/// leaves the data as it was until the swap.
pub fn restore(eng: &Engine, b: &Throwaways<'_>, volume: &str, src: &Path) -> Result<()> {
    let (tar, strip) = match src.join(SNAPSHOT) {
        t if t.is_file() => (t, "from"),
        _ => (src.join(EARLIER), "."),
    };
    let file = fskit::open_regular(&tar)?;
    let mount = format!("type=volume,source={volume},target=/to");
    let script = "set -e; cd /to; find . -mindepth 1 -maxdepth 1 ! -name .restoring -exec rm -rf {} +; \
                  cd /to/.restoring; find . -mindepth 1 -maxdepth 1 -exec mv {} /to/ \\; ; cd /; rmdir /to/.restoring";
    // Whatever an earlier restore cut short left is cleared first.
    let clear = Throwaway::create(eng, b, &mount, &["-c", "rm -rf /to/.restoring"])?;
    run_to_end(eng, &clear.id)?;
    drop(clear);
    let swap = Throwaway::create(eng, b, &mount, &["-c", script])?;
    let to = format!("{}:/to", swap.id);
    let args = ["cp", "-a", "-", to.as_str()];
    let strip = strip.to_string();
    let feed = move |stdin: std::process::ChildStdin| rename_entries(file, stdin, &strip, ".restoring");
    let ran = eng.run(&args, Some(feed), None, IMPORT)?;
    let fed = ran.fed.unwrap_or_else(|| Err("the feeding thread failed".into()));
    if !ran.status.success() || fed.is_err() {
        return Err(eng.explain(&args, &format!("{} {}", ran.stderr, fed.err().unwrap_or_default())));
    }
    run_to_end(eng, &swap.id)
}

/// Removes the throwaway containers of `owner` a killed command left.
pub fn remove_throwaways(eng: &Engine, owner: &str) -> Result<()> {
    let filter = format!("label={LABEL}.throwaway={owner}");
    let ids = eng.docker(&["ps", "-a", "-q", "--filter", &filter], CALL)?;
    for id in ids.split_whitespace() {
        eng.docker(&["rm", "-f", id], CALL)?;
    }
    Ok(())
}

/// Starts a created container without attaching and waits for it: its
/// exit code 0, or its log said.
fn run_to_end(eng: &Engine, id: &str) -> Result<()> {
    eng.docker(&["start", id], CALL)?;
    let code = eng.docker(&["wait", id], IMPORT)?;
    if code.trim() != "0" {
        let log = eng.run(&["logs", "--tail", "20", id], None::<fn(_)>, None, CALL).map(|r| r.stderr + &r.stdout);
        return Err(failed(format!(
            "the volume restore step exited with {}: {}",
            code.trim(),
            log.unwrap_or_default().trim()
        )));
    }
    Ok(())
}

/// Copies the tar `from` into `to` with each entry's first component
/// `strip` (`from`, `.`) replaced by `prefix`; hard links' targets too.
/// Entries outside it are refused.
fn rename_entries(from: impl Read, to: impl Write, strip: &str, prefix: &str) -> std::result::Result<(), String> {
    let renamed = |p: &Path| -> std::result::Result<PathBuf, String> {
        let mut parts = p.components().filter(|c| *c != Component::CurDir).peekable();
        if parts.peek() == Some(&Component::RootDir) {
            // Podman's archive API names entries from the copied directory
            // down, rooted (`/`, `/server/db`).
            parts.next();
        } else if strip != "." {
            // Docker's names them under the directory's own name (`from/…`);
            // an earlier snapshot's `./x` reads as `x` (the tar reader drops `./`).
            match parts.next() {
                Some(Component::Normal(first)) if first == strip => {}
                _ => return Err(format!("{}: not under {strip}/ in the snapshot", p.display())),
            }
        }
        let rest: PathBuf = parts.collect();
        if rest.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("{}: leaves the snapshot", p.display()));
        }
        Ok(Path::new(prefix).join(rest))
    };
    let mut archive = tar::Archive::new(from);
    let mut out = tar::Builder::new(to);
    out.mode(tar::HeaderMode::Complete);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = renamed(&entry.path().map_err(|e| e.to_string())?)?;
        let mut header = entry.header().clone();
        match header.entry_type() {
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(|e| e.to_string())?.ok_or("a hard link without a target")?;
                let target = renamed(&target)?;
                out.append_link(&mut header, &path, &target).map_err(|e| e.to_string())?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| e.to_string())?.ok_or("a symlink without a target")?;
                out.append_link(&mut header, &path, &target).map_err(|e| e.to_string())?;
            }
            _ => out.append_data(&mut header, &path, &mut entry).map_err(|e| e.to_string())?,
        }
    }
    out.into_inner().and_then(|mut w| w.flush()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, target, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o640);
            h.set_uid(1234);
            h.set_size(data.len() as u64);
            if kind.is_hard_link() || kind.is_symlink() {
                b.append_link(&mut h, path, target).unwrap();
            } else if path.starts_with('/') {
                // Rooted, as Podman writes them (the writer refuses to).
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            } else {
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn entries_move_under_the_prefix_with_owners_and_links_kept() {
        let src = tar_of(&[
            ("from", tar::EntryType::Directory, "", b""),
            ("from/server/db", tar::EntryType::Regular, "", b"state"),
            ("from/server/db.link", tar::EntryType::Link, "from/server/db", b""),
            ("from/cur", tar::EntryType::Symlink, "/data/server", b""),
        ]);
        let mut out = Vec::new();
        rename_entries(&src[..], &mut out, "from", ".restoring").unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let got: Vec<(String, u64, Option<String>)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (e.path().unwrap().display().to_string(), e.header().uid().unwrap(), link)
            })
            .collect();
        assert_eq!(
            got,
            [
                (".restoring/".into(), 1234, None),
                (".restoring/server/db".into(), 1234, None),
                (".restoring/server/db.link".into(), 1234, Some(".restoring/server/db".into())),
                (".restoring/cur".into(), 1234, Some("/data/server".into())),
            ]
        );
        // Podman's archive API: entries rooted at the copied directory.
        let podman =
            tar_of(&[("/", tar::EntryType::Directory, "", b""), ("/server/db", tar::EntryType::Regular, "", b"s")]);
        let mut out = Vec::new();
        rename_entries(&podman[..], &mut out, "from", ".restoring").unwrap();
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".restoring/", ".restoring/server/db"]);
        // An earlier kubestrap's snapshot: entries under ./
        let old = tar_of(&[("./server/db", tar::EntryType::Regular, "", b"state")]);
        let mut out = Vec::new();
        rename_entries(&old[..], &mut out, ".", ".restoring").unwrap();
        assert!(String::from_utf8_lossy(&out).contains(".restoring/server/db"));
    }

    #[test]
    fn entries_that_would_leave_are_refused() {
        let mut raw = tar_of(&[("from/x", tar::EntryType::Regular, "", b"x")]);
        // A name the tar crate's writer refuses to make: patched in.
        let name = b"from/../../etc/x";
        raw[..name.len()].copy_from_slice(name);
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(rename_entries(&raw[..], &mut Vec::new(), "from", ".restoring").unwrap_err().contains("leaves"));
        let other = tar_of(&[("elsewhere/x", tar::EntryType::Regular, "", b"x")]);
        assert!(rename_entries(&other[..], &mut Vec::new(), "from", ".restoring").is_err());
    }
}
