//! One command's hold on a profile: the profile's lock, the store's lock
//! (shared: nothing is pruned from under it), and the driver, handed its
//! context. Every mutating command opens one; an upgrade a killed command
//! left is finished or undone through it before anything else.

use anyhow::Result;
use kubestrap_fskit::Lock;
use kubestrap_manifest::Driver as Kind;

use super::lock_profile;
use crate::driver::{self, Context, Driver};
use crate::home::Home;
use crate::profile::{Profile, ProfileError, VmSettings};
use crate::progress::Progress;

/// Whether a command waits for another that holds the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Yes,
    /// `--no-wait`: fail at once (exit 40).
    No,
}

/// `--force`: what the command cannot do (a driver that cannot act, a
/// node that cannot be drained, a server that cannot be told) is warned
/// about and the rest is done, rather than nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Force {
    No,
    Yes,
}

impl Force {
    pub fn from_flag(force: bool) -> Force {
        if force { Force::Yes } else { Force::No }
    }
}

/// How `stop` ends a node: its running state saved where the driver can
/// (a VM's RAM: `start` resumes it), or shut down (`--shutdown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Suspend,
    Shutdown,
}

impl Wait {
    pub fn from_no_wait(no_wait: bool) -> Wait {
        if no_wait { Wait::No } else { Wait::Yes }
    }
}

pub struct Session<'a> {
    pub home: &'a Home,
    pub profile: Profile,
    pub progress: &'a dyn Progress,
    /// The profile's driver: as its config says (a damaged config: what is
    /// legible or on disk, see [`driver::kind_of`]); the one a start or
    /// join chooses for a new profile once it is chosen ([`Session::with_driver`]).
    driver: Box<dyn Driver + 'a>,
    _profile: Lock,
    _store: Lock,
}

impl<'a> Session<'a> {
    /// Locks profile `name` and shares the store.
    pub fn open(home: &'a Home, name: &str, wait: Wait, progress: &'a dyn Progress) -> Result<Session<'a>> {
        let profile = Profile::new(home, name)?;
        let locked = lock_profile(home, &profile, wait == Wait::Yes, progress)?;
        let store = home.store_lock(false, || {
            progress.warn("waiting for another kubestrap command that is cleaning the cache…".into())
        })?;
        let (kind, settings) = match profile.load() {
            Ok(cfg) => (cfg.driver, cfg.vm.unwrap_or_default()),
            Err(_) => (driver::kind_of(&profile), VmSettings::default()),
        };
        let driver = unlocked_driver(home, kind, settings, progress);
        Ok(Session { home, profile, progress, driver, _profile: locked, _store: store })
    }

    /// [`Session::open`] for a profile that must exist: its directory, not
    /// a legible config (a damaged config must not stop `stop`).
    pub fn open_existing(home: &'a Home, name: &str, wait: Wait, progress: &'a dyn Progress) -> Result<Session<'a>> {
        let s = Session::open(home, name, wait, progress)?;
        if !s.profile.dir.exists() {
            return Err(ProfileError::NoProfile { profile: s.profile.name.clone() }.into());
        }
        Ok(s)
    }

    /// The session's driver.
    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }

    /// The session with the driver of kind `kind` and these settings (a new
    /// profile's chosen driver, or the settings a start asked for).
    pub fn with_driver(mut self, kind: Kind, settings: VmSettings) -> Session<'a> {
        self.driver = unlocked_driver(self.home, kind, settings, self.progress);
        self
    }
}

/// A driver for a command that holds no lock (status, logs, doctor).
pub fn unlocked_driver<'a>(
    home: &'a Home,
    kind: Kind,
    settings: VmSettings,
    progress: &'a dyn Progress,
) -> Box<dyn Driver + 'a> {
    driver::for_kind(kind, Context { home: home.root(), env: home.env(), settings, progress })
}
