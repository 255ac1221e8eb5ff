//! `stop` and `delete`. Neither needs a readable config or manifest: a
//! damaged profile must never leave a user unable to stop or remove it.

use anyhow::Result;
use kubestrap_fskit as fskit;

use super::session::{Session, Wait};
use super::{ClusterError, kubeconfig};
use crate::channel;
use crate::driver::{Driver, Stop, StopOutcome};
use crate::home::Home;
use crate::progress::Progress;

pub fn stop(home: &Home, name: &str, wait: Wait, suspend: bool, progress: &dyn Progress) -> Result<StopOutcome> {
    let s = Session::open_existing(home, name, wait, progress)?;
    let drv = s.profile_driver();
    stop_with(&s, drv.as_ref(), suspend)
}

/// Stops a profile's localkube with its manifest's signal and timeout. A
/// damaged or missing config or manifest must not leave localkube running:
/// the session's driver is then told by what is legible or on disk
/// ([`crate::driver::kind_of`]), finds localkube by its pid file and marker
/// (native, qemu) or its container's name (docker), and stops it with
/// SIGTERM and 30 s.
fn stop_with(s: &Session, drv: &dyn Driver, suspend: bool) -> Result<StopOutcome> {
    let mut how = s
        .profile
        .load()
        .ok()
        .and_then(|cfg| channel::peek(&cfg.manifest))
        .map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
    how.suspend = suspend;
    Ok(drv.stop(&s.profile, how)?)
}

/// Deletes profiles (stopping them first) and only our kubeconfig entries.
/// Returns the deleted names.
pub fn delete(home: &Home, names: &[String], wait: Wait, force: bool, progress: &dyn Progress) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for name in names {
        let s = Session::open(home, name, wait, progress)?;
        let drv = s.profile_driver();
        let stopped = stop_with(&s, drv.as_ref(), false).and_then(|_| Ok(drv.delete(&s.profile)?));
        match stopped {
            Ok(()) => {}
            Err(e) if force => progress.warn(format!(
                "profile {name:?}: {e:#}; its files are deleted anyway (--force); left behind: {}",
                drv.leftovers(&s.profile)
            )),
            Err(e) => {
                return Err(e.context(format!(
                    "profile {name:?} was not deleted; fix the above, or `kubestrap delete -p {name} --force` deletes its files anyway"
                )));
            }
        }
        let kc = kubeconfig::path()?;
        kubeconfig::remove(&kc, &kubeconfig::context_name(name), progress)?;
        fskit::remove_tree(&s.profile.dir)?;
        fskit::sync_dir(&home.profiles()).ok();
        deleted.push(name.clone());
    }
    // Trees a killed delete left behind (renamed first, so never half a profile).
    progress.unswept(fskit::sweep_trash(&home.profiles()));
    Ok(deleted)
}

/// Removes the download cache (blobs and component trees) with the store
/// lock held exclusively. Only once no profile is left to use it.
pub fn purge(home: &Home, progress: &dyn Progress) -> Result<()> {
    let left = crate::profile::names(home)?;
    if !left.is_empty() {
        return Err(ClusterError::PurgeInUse { others: left.join(", ") }.into());
    }
    let _store =
        home.store_lock(true, || progress.warn("waiting for other kubestrap commands using the cache…".into()))?;
    for dir in [home.root().join("blobs"), home.components()] {
        fskit::remove_tree(&dir)?;
    }
    progress.unswept(fskit::sweep_trash(home.root()));
    Ok(())
}
