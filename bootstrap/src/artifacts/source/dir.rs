//! A directory of artifacts as a catalog (`bundle create --artifacts DIR`):
//! a file is offered for an artifact when it is named by its sha256
//! (`DIR/<sha256>` or `DIR/artifacts/<sha256>`, as `bundle extract` writes
//! them) or by the last part of one of its URLs. Whatever it offers is
//! checked by the store like any download.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kubestrap_manifest::{Manifest, Sha256};

use super::{ArtifactSource, Catalog, FileSource};

pub struct DirCatalog {
    /// Candidate files per artifact.
    files: BTreeMap<Sha256, Vec<PathBuf>>,
}

impl DirCatalog {
    pub fn new(dir: PathBuf, m: &Manifest) -> DirCatalog {
        let mut files: BTreeMap<Sha256, Vec<PathBuf>> = BTreeMap::new();
        for (_, _, a) in m.all_artifacts() {
            let hex = a.sha256.hex();
            let mut c = vec![dir.join(&hex), dir.join("artifacts").join(&hex)];
            for u in &a.urls {
                let base = u.rsplit('/').next().unwrap_or_default();
                if !base.is_empty() && base != "." && base != ".." {
                    c.push(dir.join(base));
                }
            }
            files.entry(a.sha256).or_default().extend(c);
        }
        DirCatalog { files }
    }
}

impl Catalog for DirCatalog {
    fn source_for(&self, sha256: &Sha256, size: u64) -> Option<Box<dyn ArtifactSource>> {
        let found = self
            .files
            .get(sha256)?
            .iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size))?;
        Some(Box::new(FileSource::new(found.clone())))
    }
}
