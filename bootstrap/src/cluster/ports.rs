//! Choosing the apiserver port on 127.0.0.1.

use std::net::TcpListener;

use anyhow::Result;

use super::ClusterError;
use crate::home::Home;
use crate::profile::{self, Config, Profile};

/// The port tried first.
pub const DEFAULT_PORT: u16 = 8443;
/// How far past it to look for a free one.
const RANGE: u16 = 200;

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The port: the one asked for (must be free), else the profile's own if
/// free, else 8443 or the next free one not used by another profile. Call it
/// under the home's `ports` lock, and record the choice before releasing it.
pub fn choose(home: &Home, p: &Profile, asked: Option<u16>, existing: Option<&Config>) -> Result<u16> {
    if let Some(port) = asked {
        return if port_free(port) { Ok(port) } else { Err(ClusterError::PortInUse { port }.into()) };
    }
    if let Some(c) = existing {
        if port_free(c.port) {
            return Ok(c.port);
        }
        if c.port_pinned {
            return Err(ClusterError::PortInUse { port: c.port }.into());
        }
    }
    let taken: Vec<u16> = profile::names(home)?
        .into_iter()
        .filter(|n| *n != p.name)
        .filter_map(|n| Profile::new(home, &n).ok()?.load().ok().map(|c| c.port))
        .collect();
    (DEFAULT_PORT..=DEFAULT_PORT + RANGE)
        .find(|port| !taken.contains(port) && port_free(*port))
        .ok_or_else(|| ClusterError::NoFreePort { from: DEFAULT_PORT, to: DEFAULT_PORT + RANGE }.into())
}

/// Every `--publish` host port free on 127.0.0.1, none the API's, none twice.
pub fn check_published(publish: &[profile::Publish], api: u16) -> Result<()> {
    for (i, p) in publish.iter().enumerate() {
        let twice = publish[..i].iter().any(|q| q.host == p.host);
        if p.host == api || twice || !port_free(p.host) {
            return Err(ClusterError::PublishInUse { publish: p.to_string(), port: p.host }.into());
        }
    }
    Ok(())
}
