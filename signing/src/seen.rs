//! Freshness: highest manifest version seen per channel (rollback and
//! replacement protection, stored crash-safely) and expiry checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};
use kubestrap_fskit::{self as fskit, caps};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Refuses `expires < now` unless `allow_expired`, in which case it returns
/// a warning for the caller to print. `what` names the thing in messages,
/// e.g. "manifest stable version 12".
pub fn check_expiry(
    what: &str,
    expires: OffsetDateTime,
    now: OffsetDateTime,
    allow_expired: bool,
) -> Result<Option<String>> {
    if expires >= now {
        return Ok(None);
    }
    if allow_expired {
        return Ok(Some(format!(
            "WARNING: {what} expired at {}; accepted only because expired data was explicitly allowed",
            rfc3339(expires)
        )));
    }
    Err(Error::Expired { what: what.to_string(), expires: rfc3339(expires), now: rfc3339(now) })
}

/// What was seen for one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeenEntry {
    /// Highest version accepted.
    pub version: u64,
    /// sha256 (hex) of that version's exact bytes.
    pub sha256: String,
    /// The key that signed it. The record binds only while that key is
    /// trusted for the channel (see [`SeenVersions::check_and_record_signed`]);
    /// records without one (written before keys were recorded) always bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What recording a version did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing seen for the channel before, or the same or a newer version.
    Accepted,
    /// The record it replaced was vouched for by a key no longer trusted
    /// (revoked, or rotated out of the key list): that record no longer
    /// binds, whatever version it named (recovery from a fast-forward by a
    /// compromised key).
    Superseded { version: u64, key: String },
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenFile {
    #[serde(default)]
    channel: BTreeMap<String, SeenEntry>,
}

/// The highest version seen per channel, stored in one TOML file
/// (`[channel.<name>] version = N, sha256 = "…"`).
#[derive(Debug)]
pub struct SeenVersions {
    path: PathBuf,
    channels: BTreeMap<String, SeenEntry>,
}

fn normalize_sha(sha256: &str) -> Result<String> {
    let s = sha256.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!("{sha256:?} is not a sha256 (64 hex digits)")));
    }
    Ok(s)
}

impl SeenVersions {
    /// Loads the state file; a missing file means nothing seen yet.
    pub fn load(path: &Path) -> Result<Self> {
        let channels = match fskit::read_capped_text(path, caps::DOCUMENT) {
            Ok(text) => {
                let f: SeenFile = toml::from_str(&text)
                    .map_err(|e| Error::StateCorrupt { path: path.into(), reason: e.to_string() })?;
                for (ch, e) in &f.channel {
                    normalize_sha(&e.sha256).map_err(|_| Error::StateCorrupt {
                        path: path.into(),
                        reason: format!("channel {ch}: bad sha256"),
                    })?;
                }
                f.channel
            }
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e @ fskit::FsError::Io { .. }) => return Err(e.into()),
            // Damaged (garbage, not text, huge): rollback state is only ever
            // written whole by kubestrap, so this is damage, said as such.
            Err(e) => return Err(Error::StateCorrupt { path: path.into(), reason: e.to_string() }),
        };
        Ok(SeenVersions { path: path.into(), channels })
    }

    /// What was seen for `channel`, if anything.
    pub fn get(&self, channel: &str) -> Option<&SeenEntry> {
        self.channels.get(channel)
    }

    /// All channels and what was seen.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &SeenEntry)> {
        self.channels.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Refuses a lower version than seen ([`Error::Rollback`]) and the same
    /// version with different bytes ([`Error::VersionReplaced`]).
    pub fn check(&self, channel: &str, version: u64, sha256: &str) -> Result<()> {
        let sha = normalize_sha(sha256)?;
        let Some(seen) = self.channels.get(channel) else {
            return Ok(());
        };
        if version < seen.version {
            return Err(Error::Rollback { channel: channel.into(), seen: seen.version, got: version });
        }
        if version == seen.version && sha != seen.sha256 {
            return Err(Error::VersionReplaced {
                channel: channel.into(),
                version,
                seen_sha256: seen.sha256.clone(),
                got_sha256: sha,
            });
        }
        Ok(())
    }

    /// Checks, then records `version` as seen (if higher) and saves the file
    /// crash-safely. Call after the manifest was fully accepted.
    pub fn record(&mut self, channel: &str, version: u64, sha256: &str) -> Result<()> {
        self.check(channel, version, sha256)?;
        let sha256 = normalize_sha(sha256)?;
        if self.channels.get(channel).map(|e| e.version) == Some(version) {
            return Ok(());
        }
        self.channels.insert(channel.into(), SeenEntry { version, sha256, key: None });
        self.save()
    }

    /// Writes the file: temp file in the same directory, fsync, rename,
    /// fsync the directory.
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        }
        let f = SeenFile { channel: self.channels.clone() };
        let body = toml::to_string(&f).map_err(|e| Error::Invalid(e.to_string()))?;
        let text = format!("# kubestrap: highest manifest version seen per channel (rollback protection)\n{body}");
        fskit::write_atomic(&self.path, text.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Under an exclusive lock on `PATH.lock`: load, then check and record a
    /// version signed by `signer`. A record vouched for by a key for which
    /// `still_trusted` says no does not bind: it is replaced (TUF's rule for
    /// version records when a signing key changes), so a compromised key
    /// that signed a huge version cannot block the channel once it is
    /// revoked or rotated out. Records whose key is still trusted, or that
    /// name none, bind as usual.
    pub fn check_and_record_signed(
        path: &Path,
        channel: &str,
        version: u64,
        sha256: &str,
        signer: &str,
        still_trusted: &dyn Fn(&str) -> bool,
    ) -> Result<Recorded> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        }
        let _lock = fskit::lock(&fskit::sidecar(path, ".lock"), fskit::Mode::Exclusive, true, || {})?;
        let mut seen = Self::load(path)?;
        let sha = normalize_sha(sha256)?;
        let superseded = match seen.channels.get(channel) {
            Some(old) if old.key.as_deref().is_some_and(|k| !still_trusted(k)) => {
                Some(Recorded::Superseded { version: old.version, key: old.key.clone().unwrap_or_default() })
            }
            _ => None,
        };
        if superseded.is_none() {
            seen.check(channel, version, &sha)?;
            if seen.channels.get(channel).is_some_and(|e| e.version == version && e.key.as_deref() == Some(signer)) {
                return Ok(Recorded::Accepted);
            }
        }
        seen.channels.insert(channel.into(), SeenEntry { version, sha256: sha, key: Some(signer.to_string()) });
        seen.save()?;
        Ok(superseded.unwrap_or(Recorded::Accepted))
    }

    /// Under an exclusive lock on `PATH.lock`: load, check, record, save.
    /// Safe against concurrent kubestrap processes sharing one home.
    pub fn check_and_record(path: &Path, channel: &str, version: u64, sha256: &str) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        }
        let _lock = fskit::lock(&fskit::sidecar(path, ".lock"), fskit::Mode::Exclusive, true, || {})?;
        let mut seen = Self::load(path)?;
        seen.record(channel, version, sha256)
        // `lock` is released when dropped.
    }
}
