//! The release a command asks for (`--manifest`, `--bundle`,
//! `--allow-expired` and the network settings), shared by `start` and
//! `node join`, and resolved to a verified manifest the same way for both.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::ClusterError;
use crate::artifacts;
use crate::channel::{self, Loaded};
use crate::home::Home;
use crate::profile::{Config, Profile};
use crate::progress::{Progress, Step};

/// Which release to run, and how its artifacts are fetched.
#[derive(Clone, Default)]
pub struct ReleaseRequest {
    /// `--manifest`: a channel name, file or URL (None: the profile's, or
    /// the home's default).
    pub manifest: Option<String>,
    /// An offline bundle to start from (its manifest and artifacts; no network).
    pub bundle: Option<PathBuf>,
    pub allow_expired: bool,
    pub fetch: artifacts::Options,
}

/// Step "resolve → verify": the manifest to run, verified before anything
/// else happens, and where its artifacts come from (a bundle's payload
/// first, and then no network at all). A different release than the
/// profile runs is an upgrade.
pub fn resolve(
    home: &Home,
    o: &ReleaseRequest,
    p: &Profile,
    existing: Option<&Config>,
    again: Option<&std::path::Path>,
    progress: &dyn Progress,
) -> Result<(Loaded, artifacts::Options)> {
    let t = Instant::now();
    let mut fetch = o.fetch.clone();
    let loaded = match &o.bundle {
        Some(b) => {
            let (loaded, payload) = channel::bundle::load(home, b, o.allow_expired, progress)?;
            fetch.offline = true;
            fetch.catalogs.push(std::sync::Arc::new(artifacts::source::BundleCatalog(payload)));
            loaded
        }
        None => {
            let want = channel::Want {
                spec: o.manifest.as_deref(),
                current: existing.map(|c| c.manifest.as_path()),
                again,
                allow_expired: o.allow_expired,
                fetch: &o.fetch,
            };
            channel::resolve(home, &want, progress)?
        }
    };
    let named = o.manifest.clone().or_else(|| o.bundle.as_ref().map(|b| b.display().to_string()));
    if let (Some(spec), Some(cfg)) = (&named, existing)
        && loaded.path != cfg.manifest
    {
        let current = channel::peek(&cfg.manifest).map_or_else(|| cfg.manifest.display().to_string(), |m| m.id());
        return Err(ClusterError::OtherRelease {
            profile: p.name.clone(),
            current,
            spec: crate::urls::redact(spec),
            candidate: loaded.manifest.id(),
        }
        .into());
    }
    if let Some(n) = loaded.trusted.pinned_notice() {
        progress.warn(n);
    }
    let m = &loaded.manifest;
    progress.step(
        Step::ManifestVerified {
            manifest: m.id(),
            kubernetes: m.kubernetes.to_string(),
            trust: loaded.trusted.path.to_string(),
        },
        t.elapsed(),
    );
    Ok((loaded, fetch))
}
