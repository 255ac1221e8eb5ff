//! Artifacts: where verified blobs come from ([`source`]), how they get into
//! the content-addressed store ([`fetch`], [`store`]) and how they become
//! component trees ([`unpack`]). Every byte is checked against the signed
//! manifest's sha256 and size before it is used.

pub mod fetch;
pub mod hash;
pub mod source;
mod spool;
pub mod store;
pub mod unpack;

pub use fetch::Job;
pub use fetch::{FetchError, Options, fetch_all, jobs_for};
pub use store::StoreError;
pub use unpack::UnpackError;
