//! The manifest parser never panics, and what the writer writes parses back
//! to the same manifest.

use std::path::Path;

use kubestrap_manifest::Manifest;
use proptest::prelude::*;

const GOOD: &str = include_str!("fixtures/good.toml");

fn parse(s: &str) -> Result<Manifest, kubestrap_manifest::ManifestError> {
    Manifest::parse(s.as_bytes(), Path::new("m.toml"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = Manifest::parse(&bytes, Path::new("m.toml"));
    }

    #[test]
    fn mutated_manifests_never_panic_and_errors_name_a_position(pos in 0usize..1500, junk in "[\\PC\\n\"\\[\\]={}.-]{0,12}") {
        let pos = pos.min(GOOD.len());
        let pos = (0..=pos).rev().find(|p| GOOD.is_char_boundary(*p)).unwrap_or(0);
        let text = format!("{}{junk}{}", &GOOD[..pos], &GOOD[pos..]);
        if let Err(e) = parse(&text) {
            prop_assert!(e.to_string().starts_with("m.toml"), "{e}");
        }
    }

    #[test]
    fn what_the_writer_writes_parses_back(
        channel in "[a-z][a-z0-9._-]{0,20}",
        version in 1u64..u64::MAX / 2,
        minor in 20u64..40,
        arg in "[a-z-]{1,10}(=\\{(data|pki|port|bind|profile|node|component)\\})?",
        url in "(https|http)://[a-z]{1,10}\\.example/[a-z0-9/._-]{1,30}",
        size in 1u64..i64::MAX as u64,
        timeout in 1u64..=600,
    ) {
        let base = parse(GOOD).unwrap();
        let mut m = base.clone();
        m.channel = channel;
        m.version = version;
        m.kubernetes = semver::Version::new(1, minor, 0);
        m.component.localkube.run.args.push(arg.parse().unwrap());
        m.component.localkube.run.stop_timeout_s = timeout;
        let a = m.component.kubectl.target.values_mut().next().unwrap();
        *a = Manifest::artifact(vec![url], a.sha256, size, a.unpack, &a.bin).unwrap();
        let text = m.to_toml();
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back.to_toml(), text);
        prop_assert_eq!(back.version, version);
    }
}
