//! The key list (`keys.toml`): root keys, release keys and revocations,
//! signed by root keys. Parsed only after its signatures were checked.

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyList {
    version: u64,
    expires: String,
    threshold: usize,
    #[serde(default)]
    root: Vec<RawKey>,
    #[serde(default)]
    release: Vec<RawKey>,
    #[serde(default)]
    revoked: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    key: String,
    #[serde(default)]
    comment: Option<String>,
}

/// A key named in a key list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedKey {
    /// The public key (its id was checked against the list's `id`).
    pub key: PublicKey,
    /// The list's comment for it.
    pub comment: Option<String>,
}

/// A parsed, validated key list (`keys.toml`).
///
/// ```toml
/// version = 3                      # strictly increasing along the chain
/// expires = "2027-06-01T00:00:00Z" # RFC 3339
/// threshold = 1                    # signatures needed from `root` keys
/// [[root]]
/// id = "E7620F1842B4E81F"
/// key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
/// [[release]]
/// id = "…"
/// key = "…"
/// comment = "release key 2026"
/// revoked = ["0123456789ABCDEF"]
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyList {
    /// Version, strictly increasing along a chain.
    pub version: u64,
    /// After this the list is refused unless expired data is allowed.
    pub expires: OffsetDateTime,
    /// How many of `roots` must sign this list and the next one.
    pub threshold: usize,
    /// The root key set this list establishes.
    pub roots: Vec<ListedKey>,
    /// Keys allowed to sign manifests and channel indexes.
    pub release: Vec<ListedKey>,
    /// Revoked key ids: never accepted for anything.
    pub revoked: Vec<KeyId>,
}

impl KeyList {
    /// Parses and validates key list bytes; `file` names it in errors.
    /// Call only on bytes whose signatures were verified.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<KeyList> {
        let bad = |reason: String| Error::KeyListInvalid { file: file.to_string(), reason };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let raw: RawKeyList = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.version == 0 {
            return Err(bad("`version` must be at least 1".into()));
        }
        let expires = OffsetDateTime::parse(&raw.expires, &Rfc3339).map_err(|e| {
            bad(format!("`expires` = {:?} is not an RFC 3339 time like \"2027-06-01T00:00:00Z\": {e}", raw.expires))
        })?;
        let roots = keys(file, "root", raw.root)?;
        let release = keys(file, "release", raw.release)?;
        if roots.is_empty() {
            return Err(bad("no [[root]] key: a key list must name its root keys".into()));
        }
        if raw.threshold == 0 || raw.threshold > roots.len() {
            return Err(bad(format!(
                "`threshold` = {} must be between 1 and the number of [[root]] keys ({})",
                raw.threshold,
                roots.len()
            )));
        }
        let mut seen: Vec<KeyId> = Vec::new();
        let all: Vec<&ListedKey> = roots.iter().chain(&release).collect();
        for (i, k) in all.iter().enumerate() {
            let id = k.key.key_id();
            if seen.contains(&id) {
                return Err(bad(format!("key {id} is listed twice (a key is either a root or a release key, once)")));
            }
            // The same key under another id would count twice toward a threshold.
            if let Some(twin) = all[..i].iter().find(|o| o.key.same_key(&k.key)) {
                return Err(bad(format!(
                    "keys {} and {id} are the same key under two ids (a key is listed once)",
                    twin.key.key_id()
                )));
            }
            seen.push(id);
        }
        let mut revoked = Vec::new();
        for r in &raw.revoked {
            let id: KeyId =
                r.parse().map_err(|_| bad(format!("`revoked` entry {r:?} is not a 16-hex-digit key id")))?;
            if seen.contains(&id) {
                return Err(bad(format!("key {id} is both listed and revoked")));
            }
            if !revoked.contains(&id) {
                revoked.push(id);
            }
        }
        Ok(KeyList { version: raw.version, expires, threshold: raw.threshold, roots, release, revoked })
    }

    /// The root public keys.
    pub fn root_keys(&self) -> Vec<PublicKey> {
        self.roots.iter().map(|k| k.key.clone()).collect()
    }

    /// Renders a key list in the `keys.toml` format (parses back to itself).
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "version = {}\nexpires = \"{}\"\nthreshold = {}\n",
            self.version,
            self.expires.format(&Rfc3339).unwrap_or_default(),
            self.threshold
        );
        if !self.revoked.is_empty() {
            let ids: Vec<String> = self.revoked.iter().map(|k| format!("\"{k}\"")).collect();
            s.push_str(&format!("revoked = [{}]\n", ids.join(", ")));
        }
        for (section, list) in [("root", &self.roots), ("release", &self.release)] {
            for k in list {
                s.push_str(&format!("\n[[{section}]]\nid = \"{}\"\nkey = \"{}\"\n", k.key.key_id(), k.key.to_base64()));
                if let Some(c) = &k.comment {
                    s.push_str(&format!("comment = {}\n", toml_string(c)));
                }
            }
        }
        s
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn keys(file: &str, section: &str, raw: Vec<RawKey>) -> Result<Vec<ListedKey>> {
    raw.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let bad = |reason: String| Error::KeyListInvalid {
                file: file.to_string(),
                reason: format!("[[{section}]] #{}: {reason}", i + 1),
            };
            let key = PublicKey::from_base64(&k.key).map_err(|e| bad(e.to_string()))?;
            let id: KeyId = k.id.parse().map_err(|_| bad(format!("`id` = {:?} is not a 16-hex-digit key id", k.id)))?;
            if id != key.key_id() {
                return Err(bad(format!("`id` = {id} does not match the key, whose id is {}", key.key_id())));
            }
            Ok(ListedKey { key, comment: k.comment })
        })
        .collect()
}
