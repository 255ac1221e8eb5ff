use super::*;

fn write_bundle(dir: &Path, name: &str, stub: &[u8], entries: &[(&str, &[u8])]) -> PathBuf {
    let out = dir.join(name);
    let mut w = Writer::create(&out, &mut &stub[..], stub.len() as u64).unwrap();
    for (n, data) in entries {
        w.add(n, &mut &data[..], data.len() as u64, &mut |_| {}).unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn round_trip_reproducible_and_listed_by_unzip() {
    let dir = tempfile::tempdir().unwrap();
    let stub = b"\x7fELF a stub executable".to_vec();
    let entries: [(&str, &[u8]); 2] = [("manifest.toml", b"schema = 1\n"), ("artifacts/aa", b"bytes")];
    let a = write_bundle(dir.path(), "a", &stub, &entries);
    let b = write_bundle(dir.path(), "b", &stub, &entries);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "reproducible");
    assert!(Payload::detect(&a));
    assert!(!Payload::detect(&dir.path().join("missing")));
    let p = Payload::open(&a).unwrap();
    assert_eq!(p.stub_len(), stub.len() as u64);
    assert_eq!(p.read("manifest.toml", 100).unwrap(), b"schema = 1\n");
    assert!(matches!(p.read("manifest.toml", 5), Err(BundleError::TooLarge { .. })));
    let e = p.entry("artifacts/aa").unwrap().clone();
    let mut got = Vec::new();
    p.reader(&e).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bytes");
    if let Ok(out) = std::process::Command::new("unzip").arg("-l").arg(&a).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("manifest.toml") && text.contains("artifacts/aa"), "{text}");
    }
    let plain = dir.path().join("plain");
    std::fs::write(&plain, &stub).unwrap();
    assert!(!Payload::detect(&plain));
    assert!(matches!(Payload::open(&plain), Err(BundleError::NotABundle { .. })));
}

fn malformed(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    match Payload::open(&p) {
        Err(BundleError::Malformed { reason, .. }) => reason,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn damaged_bundles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(write_bundle(
        dir.path(),
        "g",
        b"STUB",
        &[("manifest.toml", b"0123456789"), ("keys/keys-1.toml", b"abc")],
    ))
    .unwrap();
    // Junk appended after the zip.
    let mut junk = good.clone();
    junk.extend_from_slice(b"junk");
    assert!(malformed(&junk).contains("follow the end"));
    // Truncated: the end record is gone.
    let dir2 = tempfile::tempdir().unwrap();
    let t = dir2.path().join("t");
    std::fs::write(&t, &good[..good.len() - 30]).unwrap();
    assert!(matches!(Payload::open(&t), Err(BundleError::NotABundle { .. } | BundleError::Malformed { .. })));
    // The central directory pointing past the end.
    let mut past = good.clone();
    let end = past.len() - 22;
    let off = le32(&past, end + 16) + 1000;
    past[end + 16..end + 20].copy_from_slice(&off.to_le_bytes());
    assert!(malformed(&past).contains("central directory"));
    // A local header that disagrees with the central directory (size).
    let mut lying = good.clone();
    lying[4 + 18] ^= 1;
    assert!(malformed(&lying).contains("disagrees"));
    // Duplicate names.
    let dup = std::fs::read(write_bundle(dir.path(), "d", b"S", &[("manifest.toml", b"a"), ("manifest.toml", b"b")]))
        .unwrap();
    assert!(malformed(&dup).contains("twice"));
    // Overlapping entries: a second entry whose local header (a valid
    // one, planted in the first entry's data) lies inside the first's data.
    let planted_data = b"y";
    let crc = crc32fast::hash(planted_data);
    let mut fake = Vec::new();
    fake.extend(LOCAL.to_le_bytes());
    fake.extend(20u16.to_le_bytes());
    fake.extend(FLAG_UTF8.to_le_bytes());
    fake.extend(0u16.to_le_bytes());
    fake.extend(0u16.to_le_bytes());
    fake.extend(DOS_DATE.to_le_bytes());
    fake.extend(crc.to_le_bytes());
    fake.extend(1u32.to_le_bytes());
    fake.extend(1u32.to_le_bytes());
    fake.extend(4u16.to_le_bytes());
    fake.extend(0u16.to_le_bytes());
    fake.extend(b"bbbb");
    fake.extend(planted_data);
    let mut host = b"12345".to_vec();
    host.extend(&fake);
    let two = std::fs::read(write_bundle(dir.path(), "o", b"S", &[("aaaa", &host), ("bbbb", planted_data)])).unwrap();
    let p = Payload::open(&{
        let f = dir.path().join("two");
        std::fs::write(&f, &two).unwrap();
        f
    })
    .unwrap();
    let planted_at = p.entry("aaaa").unwrap().data + 5;
    let cd = le32(&two, two.len() - 22 + 16) as usize;
    let second = cd + 46 + 4;
    let mut over = two.clone();
    over[second + 42..second + 46].copy_from_slice(&(planted_at as u32).to_le_bytes());
    assert!(malformed(&over).contains("overlap"), "{}", malformed(&over));
}

/// Writes a 4.1 GiB bundle (a sparse artifact read back as zeros): zip64
/// at work, checked by `unzip -l` too. About half a minute.
#[test]
fn zip64_for_bundles_over_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let f = File::create(&big).unwrap();
    f.set_len((4u64 << 30) + 4096).unwrap();
    let size = f.metadata().unwrap().len();
    let out = dir.path().join("bundle");
    let t = std::time::Instant::now();
    let mut w = Writer::create(&out, &mut &b"STUB"[..], 4).unwrap();
    w.add("artifacts/big", &mut File::open(&big).unwrap(), size, &mut |_| {}).unwrap();
    w.add("manifest.toml", &mut &b"after 4 GiB"[..], 11, &mut |_| {}).unwrap();
    w.finish().unwrap();
    let p = Payload::open(&out).unwrap();
    assert_eq!(p.entry("artifacts/big").unwrap().size, size);
    assert_eq!(p.read("manifest.toml", 100).unwrap(), b"after 4 GiB");
    let out2 =
        std::process::Command::new("unzip").arg("-l").arg(&out).output().expect("unzip (ci/test.sh installs it)");
    let listing = String::from_utf8_lossy(&out2.stdout);
    assert!(out2.status.success(), "unzip -l: {}", String::from_utf8_lossy(&out2.stderr));
    assert!(listing.contains(&format!("{size}")) && listing.contains("artifacts/big"), "{listing}");
    assert!(listing.contains("manifest.toml"), "{listing}");
    println!("zip64 bundle of {size} bytes written and read in {:?}\n{listing}", t.elapsed());
}
