use super::*;
use sha2::Digest;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// An archive entry for tests, written with raw header names so that unsafe
/// paths the `tar` crate would refuse to build can be made.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(name, data, mode) => {
                let mut h = header(name, tar::EntryType::Regular, data.len() as u64, *mode);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Dir(name) => {
                let mut h = header(name, tar::EntryType::Directory, 0, 0o755);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Symlink(name, target) | E::Hardlink(name, target) => {
                let kind = if matches!(e, E::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                let mut h = header(name, kind, 0, 0o777);
                let t = target.as_bytes();
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Char(name) => {
                let mut h = header(name, tar::EntryType::Char, 0, 0o644);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(bytes: &[u8]) -> Sha256 {
    Sha256::from_bytes(sha2::Sha256::digest(bytes).into())
}

struct Case {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    digest: Sha256,
}

fn case(bytes: &[u8], name: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(name);
    fs::write(&archive, bytes).unwrap();
    // dest is nested so that `..` from it lands in a directory we can inspect.
    let outside = dir.path().join("outside");
    let dest = outside.join("dest");
    fs::create_dir_all(&dest).unwrap();
    Case { digest: sha(bytes), _dir: dir, archive, dest, outside }
}

fn run(c: &Case, kind: Unpack, bin: &str) -> Result<Vec<FileEntry>, UnpackError> {
    unpack(&c.archive, kind, c.digest, bin, &c.dest, Limits::for_size(1 << 20))
}

fn zst(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// Nothing but `dest` exists next to the destination.
fn assert_nothing_outside(c: &Case) {
    let names: Vec<_> =
        fs::read_dir(&c.outside).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["dest".to_string()], "something was written outside dest");
}

#[test]
fn tar_zst_happy_path_keeps_exec_drops_setuid() {
    let t = tar_bytes(&[
        E::Dir("bin/"),
        E::File("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755),
        E::File("README", b"hello", 0o644),
        E::Symlink("bin/alias", "tool"),
        E::Hardlink("bin/tool2", "bin/tool"),
    ]);
    let c = case(&zst(&t), "a.tar.zst");
    let files = run(&c, Unpack::TarZst, "bin/tool").unwrap();
    let mode = fs::metadata(c.dest.join("bin/tool")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "exec kept, setuid dropped");
    assert_eq!(fs::read_link(c.dest.join("bin/alias")).unwrap(), Path::new("tool"));
    assert_eq!(fs::read(c.dest.join("bin/tool2")).unwrap(), b"#!/bin/sh\necho hi\n");
    let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["README", "bin/tool", "bin/tool2"]);
    assert_eq!(files[0].sha256, sha(b"hello"));
}

#[test]
fn tar_gz_and_file_and_zip() {
    let t = tar_bytes(&[E::File("k3s", b"binary", 0o755)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    let c = case(&gz.finish().unwrap(), "a.tar.gz");
    run(&c, Unpack::TarGz, "k3s").unwrap();

    let c = case(b"\x7fELF...", "kubectl");
    run(&c, Unpack::File, "kubectl").unwrap();
    let mode = fs::metadata(c.dest.join("kubectl")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    z.start_file("bin/qemu", opts).unwrap();
    z.write_all(b"qemu").unwrap();
    let c = case(&z.finish().unwrap().into_inner(), "a.zip");
    run(&c, Unpack::Zip, "bin/qemu").unwrap();
    assert_eq!(fs::read(c.dest.join("bin/qemu")).unwrap(), b"qemu");
}

#[test]
fn parent_dir_refused() {
    let c = case(&zst(&tar_bytes(&[E::File("../x", b"evil", 0o644)])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("..")), "{e}");
    assert_nothing_outside(&c);
}

#[test]
fn absolute_path_refused() {
    let c = case(&zst(&tar_bytes(&[E::File("/tmp/kubestrap-abs-test", b"evil", 0o644)])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("absolute")), "{e}");
    assert!(!Path::new("/tmp/kubestrap-abs-test").exists());
}

#[test]
fn escaping_symlink_then_write_through_refused() {
    let c = case(&zst(&tar_bytes(&[E::Symlink("link", ".."), E::File("link/x", b"evil", 0o644)])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("outside")), "{e}");
    assert_nothing_outside(&c);

    // An inside-pointing symlink is fine, but writing through it is not.
    let c = case(
        &zst(&tar_bytes(&[E::Dir("d/"), E::Symlink("link", "d"), E::File("link/x", b"evil", 0o644)])),
        "a.tar.zst",
    );
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("through a symlink")), "{e}");

    // `..` after a name could climb out through a symlinked directory.
    let c = case(&zst(&tar_bytes(&[E::Symlink("self", "."), E::Symlink("up", "self/../x")])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("after a name")), "{e}");

    let c = case(&zst(&tar_bytes(&[E::Symlink("abs", "/etc/passwd")])), "a.tar.zst");
    assert!(run(&c, Unpack::TarZst, "x").is_err());
}

#[test]
fn escaping_hardlink_refused() {
    let c = case(&zst(&tar_bytes(&[E::Hardlink("h", "../../etc/passwd")])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { .. }), "{e}");
    assert_nothing_outside(&c);
    let c = case(&zst(&tar_bytes(&[E::Hardlink("h", "/etc/passwd")])), "a.tar.zst");
    assert!(matches!(run(&c, Unpack::TarZst, "x").unwrap_err(), UnpackError::Unsafe { .. }));
    assert!(!c.dest.join("h").exists());
}

#[test]
fn device_node_refused() {
    let c = case(&zst(&tar_bytes(&[E::Char("dev/null")])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "x").unwrap_err();
    assert!(matches!(e, UnpackError::Unsafe { ref reason, .. } if reason.contains("device")), "{e}");
}

#[test]
fn decompression_bomb_refused() {
    // 1 GiB of zeros in one entry, a few hundred KiB compressed.
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    {
        let mut b = tar::Builder::new(&mut enc);
        let mut h = header("zeros", tar::EntryType::Regular, 1 << 30, 0o644);
        h.set_cksum();
        b.append(&h, io::repeat(0).take(1 << 30)).unwrap();
        b.finish().unwrap();
    }
    let bytes = enc.finish().unwrap();
    assert!(bytes.len() < 4 << 20);
    let c = case(&bytes, "bomb.tar.zst");
    let limits = Limits::for_size(bytes.len() as u64);
    let e = unpack(&c.archive, Unpack::TarZst, c.digest, "zeros", &c.dest, limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { limit, .. } if limit == 256 << 20), "{e}");
}

#[test]
fn hash_mismatch_detected() {
    let c = case(&zst(&tar_bytes(&[E::File("k3s", b"binary", 0o755)])), "a.tar.zst");
    let e = unpack(&c.archive, Unpack::TarZst, sha(b"other"), "k3s", &c.dest, Limits::for_size(1 << 20)).unwrap_err();
    assert!(matches!(e, UnpackError::HashMismatch { .. }), "{e}");
}

#[test]
fn missing_bin_refused() {
    let c = case(&zst(&tar_bytes(&[E::File("other", b"binary", 0o755)])), "a.tar.zst");
    let e = run(&c, Unpack::TarZst, "k3s").unwrap_err();
    assert!(matches!(e, UnpackError::MissingBin { .. }), "{e}");
}

#[test]
fn damaged_cached_archive_is_reported_corrupt_not_unsafe() {
    // A blob verified at download, damaged on disk since: decoding fails
    // part-way, and the error says the file does not match its hash.
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    for (kind, bytes) in [
        (Unpack::TarZst, zst(&tar_bytes(&[E::File("k3s", &data, 0o755)]))),
        (Unpack::TarGz, {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar_bytes(&[E::File("k3s", &data, 0o755)])).unwrap();
            gz.finish().unwrap()
        }),
    ] {
        let c = case(&bytes, "a.tar");
        let mut damaged = bytes.clone();
        let mid = damaged.len() / 3;
        for b in &mut damaged[mid..mid + 64] {
            *b ^= 0xA5;
        }
        fs::write(&c.archive, &damaged).unwrap();
        let e = run(&c, kind, "k3s").unwrap_err();
        assert!(matches!(e, UnpackError::HashMismatch { .. }), "{kind:?}: {e}");
    }
}

/// A tar with one regular file whose name is these raw bytes (GNU long
/// name records for names over 100 bytes, as the tar crate writes them).
fn tar_named(name: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    if name.len() <= 100 {
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    } else {
        let path = std::ffi::OsStr::from_bytes(name);
        b.append_data(&mut h, path, &b"x"[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn names_that_cannot_be_listed_or_created_are_refused() {
    let long_part = "a".repeat(256);
    let long_path = format!("{}/x", ["d"; 2100].join("/"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("newline", b"bin/two\nlines".to_vec()),
        ("carriage return", b"bin/cr\r".to_vec()),
        ("not UTF-8", b"bin/\xff\xfe".to_vec()),
        ("NAME_MAX", format!("bin/{long_part}").into_bytes()),
        ("PATH_MAX", long_path.into_bytes()),
    ];
    for (what, name) in cases {
        let c = case(&zst(&tar_named(&name)), "a.tar.zst");
        let e = run(&c, Unpack::TarZst, "x").unwrap_err();
        assert!(matches!(e, UnpackError::Unsafe { .. }), "{what}: {e}");
        assert_nothing_outside(&c);
    }
}

#[test]
fn archives_that_do_not_decode_are_malformed() {
    let t = tar_bytes(&[E::File("k3s", b"binary", 0o755)]);
    let mut trailing = zst(&t);
    trailing.extend_from_slice(b"not a zstd frame");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    let mut gz_trailing = gz.finish().unwrap();
    gz_trailing.extend_from_slice(b"not gzip at all");
    let cases = [
        (Unpack::TarZst, trailing),
        (Unpack::TarZst, b"plain text, not zstd".to_vec()),
        (Unpack::TarGz, gz_trailing),
        (Unpack::Zip, b"PK\x03\x04 but not really".to_vec()),
    ];
    for (kind, bytes) in cases {
        let c = case(&bytes, "a");
        let e = run(&c, kind, "k3s").unwrap_err();
        assert!(matches!(e, UnpackError::Malformed { .. }), "{kind}: {e}");
    }
    // An encrypted zip entry (the flag bit set): malformed, not unpacked.
    let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    z.start_file("k3s", zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored))
        .unwrap();
    z.write_all(b"binary").unwrap();
    let mut bytes = z.finish().unwrap().into_inner();
    for sig in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
        let at = bytes.windows(4).position(|w| w == sig).unwrap();
        let flags = if sig[2] == 3 { at + 6 } else { at + 8 };
        bytes[flags] |= 1;
    }
    let c = case(&bytes, "enc.zip");
    let e = run(&c, Unpack::Zip, "k3s").unwrap_err();
    assert!(matches!(e, UnpackError::Malformed { .. }), "encrypted: {e}");
    assert!(!c.dest.join("k3s").exists());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![Just("..".to_string()), Just(".".to_string()), Just("".to_string()), "[ab]{1,2}"]
    }

    fn path() -> impl Strategy<Value = String> {
        (proptest::collection::vec(part(), 1..4), any::<bool>())
            .prop_map(|(parts, abs)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
    }

    #[derive(Debug, Clone)]
    enum Entry {
        File(String),
        Dir(String),
        Symlink(String, String),
        Hardlink(String, String),
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            path().prop_map(Entry::File),
            path().prop_map(Entry::Dir),
            (path(), path()).prop_map(|(a, b)| Entry::Symlink(a, b)),
            (path(), path()).prop_map(|(a, b)| Entry::Hardlink(a, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_archive_writes_outside_its_destination(entries in proptest::collection::vec(entry(), 1..8)) {
            let owned: Vec<(String, String)> = entries
                .iter()
                .map(|e| match e {
                    Entry::File(p) | Entry::Dir(p) => (p.clone(), String::new()),
                    Entry::Symlink(p, t) | Entry::Hardlink(p, t) => (p.clone(), t.clone()),
                })
                .collect();
            let es: Vec<E> = entries
                .iter()
                .zip(&owned)
                .filter(|(_, (p, t))| p.len() < 100 && t.len() < 100 && !p.is_empty())
                .map(|(e, (p, t))| match e {
                    Entry::File(_) => E::File(p, b"data", 0o644),
                    Entry::Dir(_) => E::Dir(p),
                    Entry::Symlink(..) => E::Symlink(p, t),
                    Entry::Hardlink(..) => E::Hardlink(p, t),
                })
                .collect();
            let c = case(&zst(&tar_bytes(&es)), "p.tar.zst");
            let result = unpack(&c.archive, Unpack::TarZst, c.digest, "x", &c.dest, Limits::for_size(1 << 20));
            assert_nothing_outside(&c);
            if let Ok(files) = result {
                let root = fs::canonicalize(&c.dest).unwrap();
                for f in files {
                    let p = fs::canonicalize(c.dest.join(&f.path)).unwrap();
                    prop_assert!(p.starts_with(&root), "{} escaped", f.path);
                }
            }
        }
    }
}
