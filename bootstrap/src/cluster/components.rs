//! Steps "fetch → unpack" of `start` (and `upgrade`): every artifact the
//! driver needs from the cache or downloaded and verified, component trees
//! unpacked and re-hashed before anything of them runs; and step "images":
//! the release's image archives placed where localkube imports them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use kubestrap_manifest::{ComponentName as Component, Driver as Kind, Manifest, Target};

use super::ClusterError;
use super::images;
use crate::artifacts::{self, store};
use crate::driver;
use crate::home::Home;
use crate::profile::Profile;
use crate::progress::{Progress, Step};

/// Step "images": the release's image archives (verified blobs) copied into
/// localkube's images directory, an earlier release's removed.
pub(super) fn place_images(
    data: &std::path::Path,
    p: &Profile,
    m: &Manifest,
    wanted: Vec<images::Wanted>,
    progress: &dyn Progress,
) -> Result<()> {
    let t = Instant::now();
    let Ok(dir) = images::dir_of(data, p, m) else {
        // A localkube that imports no archives: the component is unused.
        return Ok(());
    };
    if wanted.is_empty() && !dir.exists() {
        return Ok(());
    }
    let placed = images::place_release(p, &dir, &wanted)?;
    for w in placed.warnings {
        progress.warn(w);
    }
    progress
        .step(Step::ImagesPlaced { copied: placed.copied, kept: placed.kept, removed: placed.removed }, t.elapsed());
    Ok(())
}

/// The unpacked, verified trees a launch needs.
pub struct Components {
    /// The release's image archives, to place before localkube starts.
    pub images: Vec<images::Wanted>,
    pub localkube: PathBuf,
    /// The other trees the driver runs (hypervisor, base image), by name.
    pub trees: std::collections::BTreeMap<Component, PathBuf>,
    /// What localkube's program hashes to (from its tree's `.complete`).
    pub program_sha256: kubestrap_manifest::Sha256,
}

/// Steps "fetch → unpack": every artifact from the cache or downloaded,
/// every byte verified; trees unpacked, and what will run re-hashed now
/// (repaired from the verified blob if it no longer matches).
pub fn fetch_and_unpack(
    home: &Home,
    m: &Manifest,
    kind: Kind,
    fetch: &artifacts::Options,
    progress: &dyn Progress,
) -> Result<Components> {
    let t = Instant::now();
    let host = Target::host();
    let jobs = artifacts::jobs_for(m, &host, kind)?;
    artifacts::fetch_all(home, &jobs, fetch, progress)?;
    let bytes = jobs.iter().map(|j| j.artifact.size.get()).sum();
    progress.step(Step::ArtifactsVerified { count: jobs.len(), bytes }, t.elapsed());

    let t = Instant::now();
    crate::killpoint::reached("unpack");
    let needs =
        m.needs(&host, kind).map_err(|reason| artifacts::FetchError::NoArtifact { manifest: m.id(), reason })?;
    let mut localkube = None;
    let mut images = Vec::new();
    let mut trees = std::collections::BTreeMap::new();
    for need in &needs {
        // The docker driver imports its rootfs from the verified blob.
        if need.component == Component::Rootfs {
            trees.insert(Component::Rootfs, home.blob(&need.artifact.sha256));
            continue;
        }
        // Image archives are used as downloaded (the verified blob), copied
        // into place by the "images" step.
        if need.component == Component::Images {
            let a = &need.artifact;
            images.push(images::Wanted {
                src: home.blob(&a.sha256),
                name: a.bin.clone(),
                sha256: a.sha256,
                size: a.size.get(),
            });
            continue;
        }
        // kubectl is checked when `kubestrap kubectl` runs it; what the
        // driver runs is checked now.
        if need.component == Component::Kubectl {
            store::ensure_component(home, &need.artifact)?;
            continue;
        }
        let (dir, repaired) = store::ensure_intact(home, &need.artifact)?;
        if !repaired.is_empty() {
            progress.step(
                Step::ComponentRepaired { component: format!("{} {}", need.component, need.version), files: repaired },
                t.elapsed(),
            );
        }
        if need.component == Component::Localkube {
            localkube = Some(dir);
        } else {
            trees.insert(need.component, dir);
        }
    }
    let localkube = localkube.ok_or(ClusterError::NoComponent { component: Component::Localkube })?;
    let program = &m.component.localkube.run.program;
    let program_sha256 = store::complete_list(&localkube)?
        .remove(program)
        .and_then(Result::ok)
        .ok_or_else(|| driver::DriverError::ProgramMissing { path: localkube.join(program) })?;
    progress.step(Step::ComponentsUnpacked { count: needs.len() }, t.elapsed());
    Ok(Components { images, localkube, trees, program_sha256 })
}
