//! The config disk: a plain tar the guest's init extracts at boot (no
//! filesystem driver, no shared folder: the same on every host OS).
//! Written the same way every time for the same inputs, so its sha256 tells
//! whether a suspended VM still matches what a start would boot.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kubestrap_fskit as fskit;
use kubestrap_manifest::Sha256;

/// What goes on the disk.
pub struct ConfigDisk<'a> {
    /// localkube's command line as the guest runs it.
    pub args: &'a [String],
    /// localkube's environment (NAME, value): all it gets besides PATH and HOME.
    pub env: &'a [(String, String)],
    pub stop_signal: i32,
    pub stop_timeout_s: u64,
    /// The unpacked localkube tree → `component/`.
    pub component: &'a Path,
    /// The profile's PKI → `pki/`.
    pub pki: &'a Path,
    /// Files placed under localkube's `{data}` → `data/` (copied in at boot).
    pub stage: &'a Path,
    /// The node's `address/prefix` on its cluster's L2 segment (eth1).
    pub l2: Option<&'a str>,
}

struct Hashing<W> {
    inner: W,
    hasher: crate::artifacts::hash::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, bytes.len() as u64, mode);
    b.append_data(&mut h, name, bytes)
}

/// Adds `dir` under `prefix`, sorted, with fixed metadata (modes kept:
/// keys stay 0600, programs 0755). `.complete` (the store's record) is left out.
fn add_tree<W: Write>(b: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".complete" {
            continue;
        }
        let path = e.path();
        let rel = format!("{prefix}/{name}");
        let meta = fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            b.append_link(&mut h, &rel, fs::read_link(&path)?)?;
        } else if meta.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0, mode | 0o700);
            b.append_data(&mut h, &rel, io::empty())?;
            add_tree(b, &path, &rel)?;
        } else if meta.is_file() {
            let mut h = header(tar::EntryType::Regular, meta.len(), mode);
            b.append_data(&mut h, &rel, File::open(&path)?)?;
        }
    }
    Ok(())
}

/// Writes the disk to `dest` atomically; returns its sha256.
pub fn write(c: &ConfigDisk, dest: &Path) -> Result<Sha256, fskit::FsError> {
    for a in c.args.iter().chain(c.env.iter().map(|(_, v)| v)) {
        if a.contains('\n') {
            let why = io::Error::other(format!("localkube's argument or environment value {a:?} holds a newline"));
            return Err(fskit::FsError::io(dest, "write", why));
        }
    }
    fskit::write_atomic_with(dest, 0o600, |file| {
        let mut b = tar::Builder::new(Hashing {
            inner: io::BufWriter::new(file),
            hasher: crate::artifacts::hash::Hasher::new(),
        });
        b.follow_symlinks(false);
        add_bytes(&mut b, "args", format!("{}\n", c.args.join("\n")).as_bytes(), 0o644)?;
        add_bytes(&mut b, "stop", format!("{} {}\n", c.stop_signal, c.stop_timeout_s).as_bytes(), 0o644)?;
        let env: String = c.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        add_bytes(&mut b, "env", env.as_bytes(), 0o644)?;
        if let Some(l2) = c.l2 {
            // The node's address on the cluster's L2 segment (eth1).
            add_bytes(&mut b, "l2", format!("{l2}\n").as_bytes(), 0o644)?;
        }
        add_tree(&mut b, c.component, "component")?;
        add_tree(&mut b, c.pki, "pki")?;
        add_tree(&mut b, c.stage, "data")?;
        let mut hashing = b.into_inner()?;
        hashing.flush()?;
        Ok(hashing.hasher.finish())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_inputs_give_the_same_disk() {
        let d = tempfile::tempdir().unwrap();
        let comp = d.path().join("c");
        fs::create_dir_all(comp.join("bin")).unwrap();
        fs::write(comp.join("bin/lk"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(comp.join("bin/lk"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(comp.join(".complete"), b"x").unwrap();
        let pki = d.path().join("pki");
        fs::create_dir_all(&pki).unwrap();
        fs::write(pki.join("ca.key"), b"k").unwrap();
        fs::set_permissions(pki.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let args = vec!["server".to_string(), "--port=6443".into()];
        let c = ConfigDisk {
            args: &args,
            env: &[],
            stop_signal: 15,
            stop_timeout_s: 10,
            component: &comp,
            pki: &pki,
            stage: &d.path().join("none"),
            l2: None,
        };
        let (a, b) = (d.path().join("a.tar"), d.path().join("b.tar"));
        let sa = write(&c, &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(comp.join("bin/lk"), b"#!/bin/sh\n").unwrap(); // new mtime, same bytes
        let sb = write(&c, &b).unwrap();
        assert_eq!(sa, sb);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&a).unwrap());
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            names.push((e.path().unwrap().display().to_string(), e.header().mode().unwrap()));
        }
        assert_eq!(
            names,
            [
                ("args".to_string(), 0o644),
                ("stop".into(), 0o644),
                ("env".into(), 0o644),
                ("component/bin".into(), 0o755),
                ("component/bin/lk".into(), 0o755),
                ("pki/ca.key".into(), 0o600)
            ]
        );
        let bad = vec!["a\nb".to_string()];
        assert!(write(&ConfigDisk { args: &bad, ..c }, &d.path().join("c.tar")).is_err());
    }
}
