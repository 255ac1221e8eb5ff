//! The cluster lifecycle as steps: start, stop, delete, status. Logic only:
//! progress goes through [`Steps`], results are returned.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kubestrap_manifest::{Manifest, PkiFile};
use serde::Serialize;

use crate::apiserver::Probe;
use crate::driver::{self, HostState, StopOutcome};
use crate::fetch;
use crate::fsutil;
use crate::home::{Home, LockGuard};
use crate::kubeconfig;
use crate::pki::Pki;
use crate::profile::Profile;

mod start;
pub use start::{StartOptions, start};

/// Where lifecycle code reports progress (rendered by `ui`).
pub trait Steps {
    fn step(&self, name: &str, detail: &str, elapsed: Duration);
    fn warn(&self, msg: &str);
    fn fetch_reporter(&self) -> &dyn fetch::Reporter;
    fn ui(&self) -> &crate::ui::Ui;
}

/// Takes the profile's lock; says so if it has to wait.
pub fn lock_profile(home: &Home, p: &Profile, wait: bool, steps: &dyn Steps) -> Result<LockGuard> {
    home.lock(&format!("profile-{}", p.name), wait, || {
        steps.warn(&format!("another kubestrap command is working on profile {:?}; waiting for it to finish…", p.name))
    })
}

/// Parses a manifest kept in the home, for reading run settings (stop
/// signal, versions). Nothing from it is executed.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    Ok(Manifest::load(path)?)
}

pub fn stop(home: &Home, name: &str, wait: bool, steps: &dyn Steps) -> Result<StopOutcome> {
    let p = Profile::new(home, name)?;
    let _lock = lock_profile(home, &p, wait, steps)?;
    if !p.dir.exists() {
        p.load()?; // the "no such profile" error
    }
    Ok(stop_locked(&p)?.0)
}

/// Stops a profile's localkube with its manifest's signal and timeout. A
/// damaged or missing config must not leave localkube running: the native
/// driver finds it by its pid file and its processes' marker.
fn stop_locked(p: &Profile) -> Result<(StopOutcome, Box<dyn driver::Driver>)> {
    let (drv, signal, timeout) = match p.load() {
        Ok(cfg) => {
            let (signal, timeout) = match read_manifest(&cfg.manifest) {
                Ok(m) => (
                    m.component.localkube.run.stop_signal.number(),
                    Duration::from_secs(m.component.localkube.run.stop_timeout_s),
                ),
                Err(_) => (libc::SIGTERM, Duration::from_secs(30)),
            };
            (driver::for_kind(cfg.driver)?, signal, timeout)
        }
        Err(_) => (driver::for_kind(kubestrap_manifest::Driver::Native)?, libc::SIGTERM, Duration::from_secs(30)),
    };
    Ok((drv.stop(p, signal, timeout)?, drv))
}

/// Deletes profiles (stopping them first) and only our kubeconfig entries;
/// with `purge`, also the download cache. Returns the deleted names.
pub fn delete(home: &Home, names: &[String], purge: bool, wait: bool, steps: &dyn Steps) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for name in names {
        let p = Profile::new(home, name)?;
        let _lock = lock_profile(home, &p, wait, steps)?;
        let (_, drv) = stop_locked(&p)?;
        drv.delete(&p)?;
        let kc = kubeconfig::path()?;
        kubeconfig::remove(&kc, &kubeconfig::context_name(name))?;
        fsutil::remove_tree(&p.dir)?;
        fsutil::sync_dir(&home.profiles()).ok();
        deleted.push(name.clone());
    }
    // Trees a killed delete left behind (renamed first, so never half a profile).
    fsutil::sweep_trash(&home.profiles());
    if purge {
        let _store = home.store_lock(true, || steps.warn("waiting for other kubestrap commands using the cache…"))?;
        for dir in [home.root().join("blobs"), home.components()] {
            fsutil::remove_tree(&dir)?;
        }
    }
    Ok(deleted)
}

/// A component's state, minikube-style.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub driver: String,
    pub host: String,
    pub localkube: String,
    pub apiserver: String,
    pub kubeconfig: String,
    pub kubernetes: String,
    pub manifest: String,
    pub server: String,
    pub pid: Option<i32>,
    /// Why localkube is not running, when it should be.
    pub crash: Option<String>,
    pub log_tail: Vec<String>,
    pub warnings: Vec<String>,
    /// Bitmask: 1 host down, 2 localkube down, 4 apiserver not ready.
    pub exit_code: u8,
}

pub fn status(home: &Home, name: &str) -> Result<Status> {
    let p = Profile::new(home, name)?;
    let cfg = p.load()?;
    let drv = driver::for_kind(cfg.driver)?;
    let manifest = read_manifest(&cfg.manifest).ok();
    let mut st = Status {
        name: p.name.clone(),
        driver: cfg.driver.to_string(),
        host: "Stopped".into(),
        localkube: "Stopped".into(),
        apiserver: "Stopped".into(),
        kubeconfig: "Missing".into(),
        kubernetes: manifest.as_ref().map(|m| m.kubernetes.to_string()).unwrap_or_default(),
        manifest: manifest.as_ref().map(|m| m.id()).unwrap_or_else(|| cfg.manifest.display().to_string()),
        server: format!("https://127.0.0.1:{}", cfg.port),
        pid: None,
        crash: None,
        log_tail: Vec::new(),
        warnings: Vec::new(),
        exit_code: 0,
    };
    let pki = Pki::new(p.pki());
    match drv.status(&p)? {
        HostState::Running { pid, port } => {
            st.host = "Running".into();
            st.localkube = "Running".into();
            st.pid = Some(pid);
            st.server = format!("https://127.0.0.1:{port}");
            let probe = Probe::new(&pki, port, Duration::from_secs(2))?;
            let ready = manifest.as_ref().map_or("/readyz", |m| m.component.localkube.run.ready.as_str());
            match probe.get(ready) {
                Ok((200, _)) => {
                    st.apiserver = "Running".into();
                    if let Some(v) = probe.version() {
                        st.kubernetes = v;
                    }
                }
                Ok((code, _)) => st.apiserver = format!("Not ready (HTTP {code})"),
                Err(e) => st.apiserver = format!("Not answering ({e})"),
            }
        }
        HostState::Stopped => {}
        HostState::Crashed { how } => {
            st.host = "Running".into();
            st.localkube = "Crashed".into();
            st.crash = Some(how);
            st.log_tail = driver::native::tail(&drv.logs(&p), 20);
        }
    }
    st.exit_code = (u8::from(st.host != "Running"))
        | (u8::from(st.localkube != "Running") << 1)
        | (u8::from(st.apiserver != "Running") << 2);
    let kc = kubeconfig::path()?;
    st.kubeconfig = match kubeconfig::state(&kc, &kubeconfig::context_name(name), &st.server) {
        Ok(kubeconfig::State::Configured { current: true }) => "Configured (current context)".into(),
        Ok(kubeconfig::State::Configured { current: false }) => "Configured".into(),
        Ok(kubeconfig::State::Misconfigured { server }) => {
            st.warnings.push(format!(
                "kubeconfig points at {server}, the cluster is at {}; run `kubestrap start -p {name}` to fix it",
                st.server
            ));
            "Misconfigured".into()
        }
        Ok(kubeconfig::State::Missing) => "Missing".into(),
        Err(e) => format!("Unreadable ({e})"),
    };
    if let Ok(exp) = pki.expiries() {
        let soon = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        for (f, at) in exp {
            if at < soon {
                let how = if f == PkiFile::CaCert {
                    format!(
                        "the cluster CA cannot be renewed in place: keep what you need, then `kubestrap delete -p {name}` and start again"
                    )
                } else {
                    format!("`kubestrap stop -p {name}` then `kubestrap start -p {name}` renews it")
                };
                st.warnings.push(format!(
                    "certificate {} expires {}; {how}",
                    f.file_name(),
                    kubestrap_manifest::rfc3339(at)
                ));
            }
        }
    }
    Ok(st)
}
