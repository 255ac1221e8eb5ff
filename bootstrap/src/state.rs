//! Small TOML state files kubestrap writes itself (pid files, profile
//! configs, records): written atomically, read capped, and any damage read
//! as damage (`Err(why)`), never as a reason to lock the user out.

use std::path::Path;

use kubestrap_fskit::{self as fskit, FsError, caps};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `None` if the file is absent, `Err(why)` if it is damaged in any way
/// (garbage, not text, too big, not a regular file).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match fskit::read_capped_text(path, caps::STATE) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| e.message().to_string()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the file atomically, mode 0600.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    let text = toml::to_string(value).expect("state serializes to TOML");
    fskit::write_atomic(path, text.as_bytes(), 0o600)
}

/// The current time as RFC 3339 (UTC), as state files record it.
pub fn now() -> String {
    kubestrap_manifest::rfc3339(time::OffsetDateTime::now_utc())
}
