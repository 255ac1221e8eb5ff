//! `stop` and `delete`. Neither needs a readable config or manifest: a
//! damaged profile must never leave a user unable to stop or remove it.

use anyhow::Result;
use kubestrap_fskit as fskit;

use super::session::{Ending, Force, Session, Wait};
use super::{ClusterError, kubeconfig};
use crate::channel;
use crate::driver::{Node, Stop, StopOutcome};
use crate::home::Home;
use crate::progress::Progress;

/// Stops a profile; with `force`, a driver that cannot act (its engine is
/// gone, or the profile lives on another) is a warning naming what may
/// still run where, not an error.
pub fn stop(
    home: &Home,
    name: &str,
    wait: Wait,
    ending: Ending,
    force: Force,
    progress: &dyn Progress,
) -> Result<StopOutcome> {
    let s = Session::open_existing(home, name, wait, progress)?;
    let drv = s.driver();
    match stop_with(&s, ending) {
        Err(e) if force == Force::Yes => {
            let left = drv.leftovers(&s.profile);
            progress.warn(format!("profile {name:?}: {e:#}; not stopped (--force), and it may still run: {left}"));
            Ok(StopOutcome::Unreached { left })
        }
        other => other,
    }
}

/// Stops a profile's localkube with its manifest's signal and timeout. A
/// damaged or missing config or manifest must not leave localkube running:
/// the session's driver is then told by what is legible or on disk
/// ([`crate::driver::kind_of`]), finds localkube by its pid file and marker
/// (native, qemu) or its container's name (docker), and stops it with
/// SIGTERM and 30 s.
fn stop_with(s: &Session, ending: Ending) -> Result<StopOutcome> {
    let drv = s.driver();
    let cfg = s.profile.load().ok();
    let mut how = cfg
        .as_ref()
        .and_then(|cfg| channel::peek(&cfg.manifest))
        .map_or(Stop::DEFAULT, |m| Stop::of(&m.component.localkube.run));
    how.suspend = ending == Ending::Suspend;
    crate::killpoint::reached("stop");
    // The agents first, so none is left reconnecting to a server that is gone.
    super::nodes::stop_cluster(drv, &s.profile, how)
}

/// Deletes profiles (stopping them first) and only our kubeconfig entries.
/// Returns the deleted names.
pub fn delete(home: &Home, names: &[String], wait: Wait, force: Force, progress: &dyn Progress) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for name in names {
        let s = Session::open(home, name, wait, progress)?;
        delete_locked(&s, force)?;
        deleted.push(name.clone());
    }
    // Trees a killed delete left behind (renamed first, so never half a profile).
    progress.unswept(fskit::sweep_trash(&home.profiles()));
    Ok(deleted)
}

/// Deletes the session's profile: stops it, has the driver remove what it
/// made (a container, volume and network; a VM's processes; what a native
/// k3s left), then the profile's files and kubeconfig entries. A mark
/// written first makes a delete that is killed part-way one that the next
/// `start` or `delete` finishes (see [`crate::profile::Profile::deleting`]).
pub(super) fn delete_locked(s: &Session, force: Force) -> Result<()> {
    let (p, name, progress) = (&s.profile, &s.profile.name, s.progress);
    let drv = s.driver();
    if p.dir.is_dir() {
        // Best effort: a full disk must not stop a delete (that frees it).
        if let Err(e) = fskit::write_atomic(&p.deleting(), crate::state::now().as_bytes(), 0o600) {
            tracing::debug!("cannot mark profile {name:?} as being deleted: {e}");
        }
    }
    crate::killpoint::reached("delete");
    let left = |e: anyhow::Error| {
        progress.warn(format!(
            "profile {name:?}: {e:#}; its files are deleted anyway (--force); left behind: {}",
            drv.leftovers(p)
        ))
    };
    match stop_with(s, Ending::Shutdown) {
        Ok(_) => {}
        Err(e) if force == Force::Yes => left(e),
        Err(e) => {
            // Nothing is destroyed yet: the profile stays as it was.
            let _ = fskit::remove_any(&p.deleting());
            return Err(e.context(format!(
                "profile {name:?} was not deleted; fix the above, or `kubestrap delete -p {name} --force` deletes its files anyway"
            )));
        }
    }
    // Every agent's host and state, then the server's (and, for docker, any
    // agent container of the profile's the config no longer names).
    let agents = p.load().map(|c| super::nodes::agents_of(p, &c)).unwrap_or_default();
    let agents = if drv.runs_agents() { super::nodes::as_nodes(&agents) } else { Vec::new() };
    let removed = agents.into_iter().try_for_each(|n| drv.delete(p, n));
    match removed.and_then(|()| drv.delete(p, Node::Server)) {
        Ok(()) => {}
        Err(e) if force == Force::Yes => left(e.into()),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "profile {name:?} is stopped and partly deleted; fix the above and run `kubestrap delete -p {name}` again (a `start` finishes the delete first), or add --force to delete its files anyway"
            )));
        }
    }
    let kc = kubeconfig::path(s.home.env())?;
    kubeconfig::remove(&kc, &kubeconfig::context_name(name), progress)?;
    fskit::remove_tree(&p.dir)?;
    fskit::sync_dir(&s.home.profiles()).ok();
    Ok(())
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
