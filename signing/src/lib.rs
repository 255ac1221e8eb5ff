//! kubestrap signatures.
//!
//! - **minisign format** ([`generate_keypair`], [`sign`], [`verify`]):
//!   Ed25519 over BLAKE2b-512 (prehashed, algorithm `ED`), files
//!   interoperable with the `minisign` tool both ways. Signatures are checked
//!   over the exact bytes of a file before anyone parses it.
//! - **two tiers of keys** (after TUF): root keys compiled in
//!   ([`builtin_roots`]) sign key lists ([`KeyList`], `keys.toml`); release
//!   keys named there sign manifests and channel indexes. Roots rotate by a
//!   chain of key lists ([`KeyChain::verify`]).
//! - **pinned keys** ([`trust_add`], [`trust_list`], [`trust_remove`]) for
//!   private channels: sign manifests directly or anchor their own key list.
//! - **freshness**: [`SeenVersions`] (rollback, replaced versions) and
//!   [`check_expiry`].
//! - [`verify_manifest`] ties it together and reports the [`TrustPath`].

mod builtin;
mod chain;
mod error;
mod keylist;
mod keys;
mod manifest;
mod minisig;
mod seen;
mod sign;
mod trust;

pub use builtin::builtin_roots;
pub use chain::{KeyChain, KeyListFile, TrustedKeyList, sign_key_list};
pub use error::{Error, Result};
pub use keylist::{KeyList, ListedKey};
pub use keys::{KeyId, PublicKey};
pub use kubestrap_fskit::signature_path;
pub use manifest::{TrustContext, TrustPath, VerifiedManifest, verify_manifest};
pub use minisig::{SignatureBlock, Verified, parse_signatures, verify};
pub use seen::{Recorded, SeenEntry, SeenVersions, check_expiry, sha256_hex};
pub use sign::{
    default_trusted_comment, drop_stale_signatures, generate_keypair, merge_signatures, secret_key_id, sign, sign_file,
    write_signature_file,
};
pub use trust::{PinnedKey, pinned_keys, trust_add, trust_list, trust_remove};
