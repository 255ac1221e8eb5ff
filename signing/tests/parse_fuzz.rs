//! Parsers never panic on arbitrary input.

use kubestrap_signing::{KeyChain, KeyList, KeyListFile, PublicKey, parse_signatures, verify};
use proptest::prelude::*;
use time::macros::datetime;

const PK: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
const SIG: &str = "untrusted comment: signature from minisign secret key\nRUQf6LRCGA9i559r3g7V1qNyJDApGip8MfqcadIgT9CuhV3EMhHoN1mGTkUidF/z7SrlQgXdy8ofjb7bNJJylDOocrCo8KLzZwo=\ntrusted comment: timestamp:1633700835\tfile:test\tprehashed\nwLMDjy9FLAuxZ3q4NlEvkgtyhrr0gtTu6KC4KBJdITbbOeAi1zBIYo0v4iTgt8jJpIidRJnp94ABQkJAgAooBQ==\n";

fn mutate(base: &str, pos: usize, bytes: &[u8]) -> String {
    let b = base.as_bytes();
    let pos = pos % (b.len() + 1);
    let mut v = b[..pos].to_vec();
    v.extend_from_slice(bytes);
    v.extend_from_slice(&b[(pos + bytes.len()).min(b.len())..]);
    String::from_utf8_lossy(&v).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn signature_parsing_never_panics(s in ".*", pos in 0usize..400, junk in proptest::collection::vec(any::<u8>(), 0..8)) {
        let key = PublicKey::from_base64(PK).unwrap();
        let _ = parse_signatures("f", &s);
        let _ = verify("f", b"test", &s, std::slice::from_ref(&key));
        let m = mutate(SIG, pos, &junk);
        let _ = verify("f", b"test", &m, &[key]);
    }

    #[test]
    fn public_key_parsing_never_panics(s in ".*", pos in 0usize..80, junk in proptest::collection::vec(any::<u8>(), 0..4)) {
        let _ = PublicKey::from_base64(&s);
        let _ = PublicKey::from_minisign_text(&s);
        let m = mutate(PK, pos, &junk);
        if let Ok(k) = PublicKey::from_base64(&m) {
            let _ = verify("f", b"test", SIG, &[k]);
        }
    }

    #[test]
    fn key_list_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), s in "[a-z \\[\\]=\"0-9\\n.:TZ-]{0,300}") {
        let _ = KeyList::parse("k", &bytes);
        let _ = KeyList::parse("k", s.as_bytes());
        let doc = format!("version = 1\nexpires = \"2030-01-01T00:00:00Z\"\nthreshold = 1\n{s}\n[[root]]\nid = \"E7620F1842B4E81F\"\nkey = \"{PK}\"\n");
        let _ = KeyList::parse("k", doc.as_bytes());
        let key = PublicKey::from_base64(PK).unwrap();
        let chain = [KeyListFile::new("k", bytes, SIG)];
        let _ = KeyChain::verify(&chain, &[key], datetime!(2026-01-01 0:00 UTC), false);
    }
}
