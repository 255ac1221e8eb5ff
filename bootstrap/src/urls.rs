//! Where things come from — a URL or a local path — and how they are shown:
//! passwords in URLs and tokens in query strings never reach output or logs.

use std::fmt;
use std::path::{Path, PathBuf};

use url::Url;

/// A manifest, key list or artifact location: an http(s) URL, or a local
/// file (a path, or a `file://` URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Http(Url),
    File(PathBuf),
}

impl Location {
    /// Parses what a user or a manifest gave. Anything that is not an
    /// http(s) or file URL is a path.
    pub fn parse(spec: &str) -> Location {
        match Url::parse(spec) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Location::Http(u),
            Ok(u) if u.scheme() == "file" => {
                Location::File(u.to_file_path().unwrap_or_else(|_| PathBuf::from(&spec["file://".len()..])))
            }
            _ => Location::File(PathBuf::from(spec)),
        }
    }

    /// A file with another name in the same directory (`keys.toml` beside a
    /// manifest).
    pub fn sibling(&self, name: &str) -> Location {
        match self {
            Location::Http(u) => u.join(name).map(Location::Http).unwrap_or_else(|_| self.clone()),
            Location::File(p) => Location::File(match p.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) => dir.join(name),
                None => PathBuf::from(name),
            }),
        }
    }

    /// Where a reference found in a document at this location points: an
    /// absolute URL or path as it is, anything else relative to this one.
    pub fn resolve(&self, reference: &str) -> Location {
        if reference.starts_with('/') || Url::parse(reference).is_ok() {
            Location::parse(reference)
        } else {
            self.sibling(reference)
        }
    }

    /// The location with `suffix` appended (`.minisig`).
    pub fn with_suffix(&self, suffix: &str) -> Location {
        match self {
            Location::Http(u) => {
                let mut u = u.clone();
                u.set_path(&format!("{}{suffix}", u.path()));
                Location::Http(u)
            }
            Location::File(p) => Location::File(kubestrap_fskit::sidecar(p, suffix)),
        }
    }

    /// The location as given, unredacted: for fetching, never for showing.
    pub fn spec(&self) -> String {
        match self {
            Location::Http(u) => u.to_string(),
            Location::File(p) => p.display().to_string(),
        }
    }

    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::Http(_) => None,
        }
    }
}

impl fmt::Display for Location {
    /// Redacted: safe for messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Http(u) => f.write_str(&redact_url(u)),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Query parameters whose values are secrets (presigned URLs, API tokens).
fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "sig", "key", "secret", "pass", "auth", "credential", "session", "code"].iter().any(|s| n.contains(s))
        || n.starts_with("x-amz-")
        || n.starts_with("x-goog-")
}

fn redact_url(u: &Url) -> String {
    let mut u = u.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("***");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A URL (or path) as it may be shown: no password, no query-string token.
/// Text that is not a URL is returned as it is.
pub fn redact(spec: &str) -> String {
    match Url::parse(spec) {
        Ok(u) if u.has_host() => redact_url(&u),
        _ => spec.to_string(),
    }
}

/// Redacts every URL inside a longer text (an error from a library that
/// quotes the URL it failed on).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["http://", "https://", "tcp://", "ssh://"].iter().filter_map(|p| rest.find(p)).min() {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>' | ','))
            .map_or(rest.len(), |e| at + e);
        out.push_str(&redact(&rest[at..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_shown() {
        assert_eq!(redact("https://user:hunter2@mirror.example/a/m.toml"), "https://***@mirror.example/a/m.toml");
        assert_eq!(
            redact("https://m.example/x?X-Amz-Signature=abc&part=1"),
            "https://m.example/x?X-Amz-Signature=***&part=1"
        );
        assert_eq!(redact("https://m.example/x?access_token=abc"), "https://m.example/x?access_token=***");
        assert_eq!(redact("/plain/path"), "/plain/path");
        let t = redact_text("error sending request for url (http://a:b@h:1/x?token=t): refused");
        assert!(!t.contains("b@") && !t.contains("token=t"), "{t}");
        assert_eq!(Location::parse("http://u:p@h/m.toml").to_string(), "http://***@h/m.toml");
    }

    #[test]
    fn locations() {
        let m = Location::parse("https://h/c/stable/manifest.toml");
        assert_eq!(m.sibling("keys.toml").to_string(), "https://h/c/stable/keys.toml");
        assert_eq!(m.with_suffix(".minisig").to_string(), "https://h/c/stable/manifest.toml.minisig");
        assert_eq!(Location::parse("manifest.toml").sibling("keys.toml"), Location::File("keys.toml".into()));
        assert_eq!(Location::parse("file:///a/b.toml"), Location::File("/a/b.toml".into()));
    }
}
