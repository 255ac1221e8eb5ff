//! `stop` and `delete`. Neither needs a readable config or manifest: a
//! damaged profile must never leave a user unable to stop or remove it.

use anyhow::Result;
use kubestrap_fskit as fskit;

use super::{ClusterError, kubeconfig, lock_profile};
use crate::channel;
use crate::driver::{self, Driver, Stop, StopOutcome};
use crate::home::Home;
use crate::profile::Profile;
use crate::progress::Progress;

pub fn stop(home: &Home, name: &str, wait: bool, suspend: bool, progress: &dyn Progress) -> Result<StopOutcome> {
    let p = Profile::new(home, name)?;
    let _lock = lock_profile(home, &p, wait, progress)?;
    if !p.dir.exists() {
        return Err(crate::profile::ProfileError::NoProfile { profile: p.name }.into());
    }
    Ok(stop_locked(&p, suspend)?.0)
}

/// Stops a profile's localkube with its manifest's signal and timeout. A
/// damaged or missing config or manifest must not leave localkube running:
/// the driver is then told by what is legible or on disk
/// ([`Profile::driver_hint`]), finds localkube by its pid file and marker
/// (native, qemu) or its container's name (docker), and stops it with
/// SIGTERM and 30 s.
pub(super) fn stop_locked(p: &Profile, suspend: bool) -> Result<(StopOutcome, Box<dyn Driver>)> {
    let (drv, mut how) = match p.load() {
        Ok(cfg) => {
            let how = channel::peek(&cfg.manifest).map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
            (driver::for_kind(cfg.driver)?, how)
        }
        Err(_) => (driver::for_kind(p.driver_hint())?, Stop::DEFAULT),
    };
    how.suspend = suspend;
    Ok((drv.stop(p, how)?, drv))
}

/// Deletes profiles (stopping them first) and only our kubeconfig entries.
/// Returns the deleted names.
pub fn delete(home: &Home, names: &[String], wait: bool, force: bool, progress: &dyn Progress) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for name in names {
        let p = Profile::new(home, name)?;
        let _lock = lock_profile(home, &p, wait, progress)?;
        let stopped = stop_locked(&p, false).and_then(|(_, drv)| Ok(drv.delete(&p)?));
        match stopped {
            Ok(()) => {}
            Err(e) if force => progress.warn(format!(
                "profile {name:?}: {e:#}; its files are deleted anyway (--force); left behind: {}",
                driver::for_kind(p.driver_hint()).map_or_else(|_| "unknown".into(), |d| d.leftovers(&p))
            )),
            Err(e) => {
                return Err(e.context(format!(
                    "profile {name:?} was not deleted; fix the above, or `kubestrap delete -p {name} --force` deletes its files anyway"
                )));
            }
        }
        let kc = kubeconfig::path()?;
        kubeconfig::remove(&kc, &kubeconfig::context_name(name))?;
        fskit::remove_tree(&p.dir)?;
        fskit::sync_dir(&home.profiles()).ok();
        deleted.push(name.clone());
    }
    // Trees a killed delete left behind (renamed first, so never half a profile).
    fskit::sweep_trash(&home.profiles());
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
    fskit::sweep_trash(home.root());
    Ok(())
}
