//! Reading a signed document (manifest, key list) and its `.minisig` from
//! where it lives: a local file or an http(s) URL. Every read is capped.

use std::io::Read;

use kubestrap_fskit::{self as fskit, FsError, caps};

use super::ChannelError;
use crate::artifacts::{self, source};
use crate::urls::Location;

/// A document and its detached signature, as read.
pub struct Signed {
    pub bytes: Vec<u8>,
    pub sig: String,
}

/// Reads a document and its `.minisig` from a path or URL. A missing or
/// unreadable signature is a signature failure, like a bad one.
pub fn read_signed(at: &Location, opts: &artifacts::Options) -> Result<Signed, ChannelError> {
    let sig_at = at.with_suffix(".minisig");
    match at {
        Location::Http(_) => {
            if opts.offline {
                return Err(ChannelError::Offline { location: at.to_string() });
            }
            let client = source::client(opts)?;
            let bytes = http_get(&client, at, caps::DOCUMENT)?;
            let sig = http_get(&client, &sig_at, caps::SIGNATURE)
                .map_err(|e| ChannelError::MissingSignature { location: sig_at.to_string(), reason: e.to_string() })?;
            let sig = String::from_utf8(sig).map_err(|_| ChannelError::MissingSignature {
                location: sig_at.to_string(),
                reason: "the signature file is not text".into(),
            })?;
            Ok(Signed { bytes, sig })
        }
        Location::File(path) => {
            let bytes = fskit::read_capped(path, caps::DOCUMENT).map_err(|e| match e {
                e if e.is_not_found() => ChannelError::NotFound { path: path.clone() },
                source => ChannelError::Unreadable { what: "manifest".into(), source },
            })?;
            let sig = read_signature(&sig_at)?;
            Ok(Signed { bytes, sig })
        }
    }
}

/// Reads a local `.minisig` (capped; text only).
pub fn read_signature(at: &Location) -> Result<String, ChannelError> {
    let path = at.as_path().expect("a local signature");
    fskit::read_capped_text(path, caps::SIGNATURE)
        .map_err(|e| ChannelError::MissingSignature { location: at.to_string(), reason: e.to_string() })
}

/// A local file as a document: a manifest or key list read for inspection.
pub fn read_local(path: &std::path::Path) -> Result<Signed, ChannelError> {
    read_signed(&Location::File(path.to_path_buf()), &artifacts::Options::default())
}

fn http_get(client: &reqwest::blocking::Client, at: &Location, cap: u64) -> Result<Vec<u8>, ChannelError> {
    let Location::Http(url) = at else { unreachable!("http_get of a local path") };
    let fail = |reason: String| ChannelError::Download { location: at.to_string(), reason };
    let resp = client.get(url.clone()).send().map_err(|e| fail(source::describe_error(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut bytes = Vec::new();
    resp.take(cap + 1).read_to_end(&mut bytes).map_err(|e| fail(crate::urls::redact_text(&e.to_string())))?;
    if bytes.len() as u64 > cap {
        return Err(fail(format!("larger than {cap} bytes; not what kubestrap expects there")));
    }
    Ok(bytes)
}

/// Reads a file kubestrap keeps in its home (a stored manifest).
pub fn read_stored(path: &std::path::Path) -> Result<Signed, ChannelError> {
    let bytes = fskit::read_capped(path, caps::DOCUMENT)
        .map_err(|source: FsError| ChannelError::Unreadable { what: "stored manifest".into(), source })?;
    let sig = read_signature(&Location::File(fskit::signature_path(path)))?;
    Ok(Signed { bytes, sig })
}
