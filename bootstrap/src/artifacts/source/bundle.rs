//! An offline bundle as an artifact catalog: its `artifacts/<sha256>`
//! entries stream straight into the store (hashed as they are written: one
//! read of the bundle, no temporary copy).

use std::sync::Arc;

use kubestrap_bundle::{Entry, Payload, artifact_name};
use kubestrap_manifest::Sha256;

use super::{ArtifactSource, Attempt, Catalog, Ctx, FailureKind, SourceFailure, copy_capped};
use crate::artifacts::store::BlobWriter;

pub struct BundleCatalog(pub Arc<Payload>);

impl Catalog for BundleCatalog {
    fn source_for(&self, sha256: &Sha256, size: u64) -> Option<Box<dyn ArtifactSource>> {
        let e = self.0.entry(&artifact_name(&sha256.hex()))?;
        (e.size == size).then(|| Box::new(BundleSource { payload: self.0.clone(), entry: e.clone() }) as Box<_>)
    }
}

struct BundleSource {
    payload: Arc<Payload>,
    entry: Entry,
}

impl ArtifactSource for BundleSource {
    fn describe(&self) -> String {
        format!("bundle {} ({})", self.payload.path().display(), self.entry.name)
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn fetch_into(&self, w: &mut BlobWriter, size: u64, ctx: &Ctx<'_>) -> Result<(), Attempt> {
        let mut r = self.payload.reader(&self.entry).map_err(|e| {
            Attempt::Source(Box::new(SourceFailure::new(self, FailureKind::Unavailable, e.to_string())))
        })?;
        w.restart()?;
        copy_capped(self, &mut r, w, size, ctx)
    }
}
