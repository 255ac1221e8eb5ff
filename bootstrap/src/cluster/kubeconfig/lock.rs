//! kubectl's own lock on a kubeconfig, taken while kubestrap writes it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubestrap_fskit::{self as fskit, caps};

use super::KubeconfigError;
use crate::proc::ProcId;
use crate::progress::Progress;
use crate::retry::Backoff;

/// kubectl's own lock on a kubeconfig (client-go): `<file>.lock`, created
/// exclusively for the length of a write and removed after. Taking it too
/// means a `kubectl config ...` running at the same moment never loses its
/// change or ours. Ours records who holds it, so one left by a killed
/// kubestrap is recognised and removed (only one kubestrap at a time gets
/// here: see `with_locked`); kubectl's is waited for.
pub(super) struct KubectlLock(PathBuf);

impl KubectlLock {
    const WAIT: Duration = Duration::from_secs(5);

    pub(super) fn take(kubeconfig: &Path, progress: &dyn Progress) -> Result<KubectlLock, KubeconfigError> {
        let path = fskit::sidecar(kubeconfig, ".lock");
        let cannot = |e: &dyn std::fmt::Display, p: &Path| KubeconfigError::DirNotWritable {
            dir: p.parent().unwrap_or(Path::new(".")).into(),
            reason: format!("cannot create {}: {e}", p.display()),
        };
        let me = ProcId::of(std::process::id() as i32).expect("this process is alive");
        // The lock appears with its owner already written in it (a hard link
        // to a finished temp file), so a kill can never leave an empty lock
        // that looks like kubectl's.
        let owner = fskit::temp_sibling(&path);
        fs::write(&owner, format!("kubestrap {} {}\n", me.pid, me.start_time)).map_err(|e| cannot(&e, &owner))?;
        let mut backoff = Backoff::fixed(Duration::from_millis(50)).for_at_most(Self::WAIT);
        let taken = loop {
            match fs::hard_link(&owner, &path) {
                Ok(()) => break Ok(KubectlLock(path.clone())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::left_by_dead_kubestrap(&path) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e) => break Err(cannot(&e, &path)),
            }
            if !backoff.wait() {
                // kubectl's lock is empty and held for milliseconds; one
                // holding anything else is damaged, and is replaced.
                if Self::damaged(&path) {
                    progress.warn(format!(
                        "{} held no kubectl or kubestrap owner for {} s: removed it as damaged",
                        path.display(),
                        Self::WAIT.as_secs()
                    ));
                    let _ = fs::remove_file(&path);
                    backoff = Backoff::fixed(Duration::from_millis(50)).for_at_most(Self::WAIT);
                    continue;
                }
                break Err(KubeconfigError::Busy { lock: path.clone(), secs: Self::WAIT.as_secs() });
            }
        };
        let _ = fs::remove_file(&owner);
        taken
    }

    /// Neither kubectl's (empty) nor a kubestrap's record.
    fn damaged(path: &Path) -> bool {
        match fskit::read_capped(path, caps::STATE) {
            Ok(b) => !b.is_empty() && !b.starts_with(b"kubestrap "),
            Err(e) => !e.is_not_found(),
        }
    }

    fn left_by_dead_kubestrap(path: &Path) -> bool {
        // What kubectl or a damaged lock holds is no kubestrap's: waited for.
        let Ok(text) = fskit::read_capped_text(path, caps::STATE) else { return false };
        let mut w = text.split_whitespace();
        match (w.next(), w.next().and_then(|p| p.parse().ok()), w.next().and_then(|t| t.parse().ok())) {
            (Some("kubestrap"), Some(pid), Some(start_time)) => !ProcId { pid, start_time }.alive(),
            _ => false,
        }
    }
}

impl Drop for KubectlLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
