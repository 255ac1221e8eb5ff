//! A local file as an artifact source (`file://` URLs and paths).

use std::path::PathBuf;

use super::{ArtifactSource, Attempt, Ctx, FailureKind, SourceFailure, copy_capped};
use crate::artifacts::store::BlobWriter;

pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource { path }
    }
}

impl ArtifactSource for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn fetch_into(&self, w: &mut BlobWriter, size: u64, ctx: &Ctx<'_>) -> Result<(), Attempt> {
        let mut f = kubestrap_fskit::open_regular(&self.path).map_err(|e| {
            Attempt::Source(Box::new(SourceFailure::new(self, FailureKind::Unavailable, e.to_string())))
        })?;
        // A file is read from its start: cheap, and never mixes two files.
        w.restart()?;
        copy_capped(self, &mut f, w, size, ctx)
    }
}
