//! The channel index (schema 1): one small signed file per channel host
//! naming the newest manifest of each channel and the newest kubestrap
//! executable per target. `upgrade` and `self-update` read it.
//!
//! ```toml
//! schema = 1
//! version = 7                        # strictly increasing: rollback protection
//! published = "2026-11-20T00:00:00Z"
//! expires = "2026-12-20T00:00:00Z"
//! [channel.stable]
//! version = 12                       # the manifest's own version
//! url = "stable/12/manifest.toml"    # relative to the index, or absolute
//! sha256 = "…"
//! size = 2048
//! [kubestrap.linux-x86_64]
//! version = "0.2.0"
//! urls = ["https://…/kubestrap-0.2.0-linux-x86_64"]
//! sha256 = "…"
//! size = 12345678
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::header::Header;
use crate::{ManifestError, Sha256, Size, Target};

/// The only index schema this code reads.
pub const INDEX_SCHEMA: u32 = 1;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawIndex")]
pub struct ChannelIndex {
    pub schema: u32,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub published: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(default)]
    pub channel: BTreeMap<String, ChannelEntry>,
    #[serde(default)]
    pub kubestrap: BTreeMap<Target, Executable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIndex {
    schema: u32,
    version: u64,
    #[serde(with = "time::serde::rfc3339")]
    published: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
    #[serde(default)]
    channel: BTreeMap<String, ChannelEntry>,
    #[serde(default)]
    kubestrap: BTreeMap<Target, Executable>,
}

impl TryFrom<RawIndex> for ChannelIndex {
    type Error = String;
    fn try_from(r: RawIndex) -> Result<Self, String> {
        let header =
            Header { schema: r.schema, channel: None, version: r.version, published: r.published, expires: r.expires };
        header.check(INDEX_SCHEMA, "run `kubestrap self-update` for newer schemas")?;
        for (name, e) in &r.channel {
            if e.url.is_empty() || e.url.contains(char::is_whitespace) {
                return Err(format!("channel.{name}.url: expected a URL or a path relative to the index"));
            }
        }
        Ok(ChannelIndex {
            schema: r.schema,
            version: r.version,
            published: r.published,
            expires: r.expires,
            channel: r.channel,
            kubestrap: r.kubestrap,
        })
    }
}

/// The newest manifest of one channel, pinned by the index.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChannelEntry {
    /// The manifest's own `version`.
    pub version: u64,
    /// Where it is: absolute, or relative to the index's URL.
    pub url: String,
    pub sha256: Sha256,
    pub size: Size,
}

/// The newest kubestrap executable for one target.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Executable {
    pub version: semver::Version,
    /// Tried in order; absolute, or relative to the index's URL.
    pub urls: Vec<String>,
    pub sha256: Sha256,
    pub size: Size,
}

impl ChannelIndex {
    /// Parses and validates index bytes; `file` names them in errors.
    pub fn parse(bytes: &[u8], file: &Path) -> Result<ChannelIndex, ManifestError> {
        crate::parse_toml(bytes, file)
    }

    /// The index as TOML (the one writer, as for manifests).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("an index serializes to TOML");
        format!("# kubestrap channel index, schema {INDEX_SCHEMA}\n{body}")
    }
}
