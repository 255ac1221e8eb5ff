//! `start`: idempotent; creates the profile if absent, resumes it if stopped,
//! recovers it if localkube crashed or was left stopping. Its named steps —
//! resolve → verify → fetch → unpack → configure → PKI → launch → ready →
//! kubeconfig — are functions `upgrade` reuses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use kubestrap_manifest::{Driver as Kind, Manifest, PkiFile, Target};

use super::apiserver::{Probe, WaitError};
use super::components::{fetch_and_unpack, place_images};
use super::pki::{self, Pki};
use super::{ClusterError, kubeconfig, lock_profile, ports};
use crate::artifacts;
use crate::channel::{self, Loaded};
use crate::driver::{self, Driver, Host, HostState, Launch, Stop};
use crate::home::Home;
use crate::profile::{Config, Endpoint, Profile, VmSettings};
use crate::progress::{Progress, Step};

pub struct StartOptions {
    pub profile: String,
    pub driver: Option<Kind>,
    pub manifest: Option<String>,
    /// An offline bundle to start from (its manifest and artifacts; no network).
    pub bundle: Option<std::path::PathBuf>,
    pub allow_expired: bool,
    pub fetch: artifacts::Options,
    pub port: Option<u16>,
    pub wait_timeout: Duration,
    pub keep_context: bool,
    pub no_wait: bool,
    pub cert_validity: time::Duration,
    /// `--cpus`, `--memory`, `--accel` (qemu driver).
    pub vm: Option<VmSettings>,
}

#[derive(Debug)]
pub struct Started {
    pub profile: String,
    pub context: String,
    pub server: String,
    pub kubeconfig: PathBuf,
    /// The driver's name for the running localkube (`pid 1234`).
    pub host: String,
    pub kubernetes: String,
    pub manifest: String,
    pub already_running: bool,
    pub created: bool,
}

pub fn start(home: &Home, o: &StartOptions, progress: &dyn Progress) -> Result<Started> {
    let p = Profile::new(home, &o.profile)?;
    let _lock = lock_profile(home, &p, !o.no_wait, progress)?;
    let _store = home.store_lock(false, || {
        progress.warn("waiting for another kubestrap command that is cleaning the cache…".into())
    })?;
    let tuning = Tuning {
        wait_timeout: o.wait_timeout,
        keep_context: o.keep_context,
        cert_validity: o.cert_validity,
        vm: o.vm.clone(),
    };
    // An upgrade a killed command left is finished or undone first.
    if p.exists()
        && let Ok(cfg) = p.load()
    {
        let drv = driver::for_kind(cfg.driver)?;
        if let Some(msg) = super::upgrade::resume_locked(home, &p, drv.as_ref(), &o.fetch, &tuning, progress)? {
            progress.warn(msg);
        }
    }
    let existing = if p.exists() { Some(p.load()?) } else { None };
    let kind = match (&existing, o.driver) {
        (Some(c), Some(d)) if c.driver != d => {
            return Err(ClusterError::DriverMismatch {
                profile: p.name.clone(),
                has: c.driver.to_string(),
                asked: d.to_string(),
            }
            .into());
        }
        (Some(c), _) => Some(c.driver),
        (None, d) => d,
    };
    // A kubeconfig we could not update later is refused before anything runs.
    kubeconfig::check(&kubeconfig::path()?)?;

    let (loaded, fetch) = resolve(home, o, &p, existing.as_ref(), progress)?;
    // A new profile with no --driver: the best this machine and release allow.
    let kind = match kind {
        Some(k) => k,
        None => {
            let (k, why) = default_driver(&loaded.manifest);
            progress.step(Step::DriverChosen { driver: k.as_str(), why }, Duration::ZERO);
            k
        }
    };
    let drv = driver::for_kind(kind)?;
    let run = &loaded.manifest.component.localkube.run;
    match drv.status(&p)? {
        HostState::Running(host) if existing.is_some() => {
            if let Some(started) = rejoin(drv.as_ref(), &p, &host, &loaded, o, progress)? {
                return Ok(started);
            }
        }
        HostState::Stopping(_) => {
            // A stop (or delete) was cut short while localkube shut down:
            // finish it, then start afresh.
            let t = Instant::now();
            drv.stop(&p, Stop::of(run))?;
            progress.step(Step::StopFinished { profile: p.name.clone() }, t.elapsed());
        }
        HostState::Crashed { how } => {
            progress
                .warn(format!("localkube of profile {:?} had stopped unexpectedly ({how}); starting it again", p.name));
            // What is left of it (helpers; all of it when only the pid file was
            // lost) is stopped the way the manifest says.
            drv.stop(&p, Stop::of(run))?;
        }
        HostState::Running(_) | HostState::Stopped | HostState::Suspended => {}
    }

    bring_up(home, &p, drv.as_ref(), kind, &loaded, &fetch, existing.as_ref(), o.port, &tuning, progress)
}

/// How a cluster is brought up, beyond which release.
pub struct Tuning {
    pub wait_timeout: Duration,
    pub keep_context: bool,
    pub cert_validity: time::Duration,
    /// A VM's size and accelerator, when asked (kept in the profile).
    pub vm: Option<VmSettings>,
}

/// Steps "fetch → unpack → configure → PKI → launch → ready → kubeconfig"
/// for a stopped profile and a verified manifest (start, and upgrade's
/// start of the new release or of the old one when it rolls back). A
/// localkube this launched is stopped again if a later step fails.
#[allow(clippy::too_many_arguments)]
pub fn bring_up(
    home: &Home,
    p: &Profile,
    drv: &dyn Driver,
    kind: Kind,
    loaded: &Loaded,
    fetch: &artifacts::Options,
    existing: Option<&Config>,
    port: Option<u16>,
    t: &Tuning,
    progress: &dyn Progress,
) -> Result<Started> {
    let run = &loaded.manifest.component.localkube.run;
    preflight(drv, p, &loaded.manifest)?;
    let components = fetch_and_unpack(home, &loaded.manifest, kind, fetch, progress)?;
    let asked = Asked { port, vm: t.vm.as_ref() };
    let (at, created) = configure(home, p, drv, asked, existing, loaded, progress)?;
    let port = at.port;
    let launch = Launch {
        profile: p.clone(),
        release: loaded.manifest.id(),
        run: run.clone(),
        program_sha256: components.program_sha256,
        component: components.localkube,
        port,
        trees: components.trees,
    };
    let pki = certificates(drv, &launch, t.cert_validity, progress)?;
    place_images(&drv.host_data(p), p, &loaded.manifest, components.images, progress)?;
    let host = launch_localkube(drv, &launch, progress)?;
    let version = (|| {
        wait_ready(drv, p, &pki, at, &launch.run, t.wait_timeout, true, progress)?;
        write_kubeconfig(p, &pki, at, t.keep_context, progress)
    })();
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            // Nothing this start launched is left running behind a failure.
            if drv.running(p).unwrap_or(false) {
                let _ = drv.stop(p, Stop::of(&launch.run));
            }
            return Err(e);
        }
    };
    Ok(Started {
        host: host.id,
        kubernetes: version,
        manifest: loaded.manifest.id(),
        already_running: false,
        created,
        ..result(p, at)?
    })
}

/// The driver a new profile gets when none is asked for: docker when an
/// engine answers and the release has a rootfs for it; else native on Linux
/// (when the release runs there); else qemu when the release has a VM for
/// this machine. Returns it and why.
fn default_driver(m: &Manifest) -> (Kind, String) {
    let host = Target::host();
    let supports = |k: Kind, extra: Option<&str>| {
        m.needs(&host, k).is_ok_and(|needs| extra.is_none_or(|c| needs.iter().any(|n| n.component == c)))
            && m.component.localkube.drivers.as_ref().is_none_or(|d| d.contains(&k))
    };
    let not_docker = if supports(Kind::Docker, Some("rootfs")) {
        match driver::docker::engine() {
            Ok((version, _)) => {
                let at = driver::docker::engine_address();
                return (
                    Kind::Docker,
                    format!("a Docker engine answers at {at} (version {version}) and the release has a rootfs for it"),
                );
            }
            Err(e) => {
                tracing::debug!("docker driver not chosen: {e}");
                "no usable Docker engine answers"
            }
        }
    } else {
        "the release has no base rootfs for the docker driver"
    };
    if host.os == "linux" && supports(Kind::Native, None) {
        return (Kind::Native, format!("{not_docker}; localkube runs as a host process"));
    }
    if supports(Kind::Qemu, Some("hypervisor")) {
        return (Kind::Qemu, "the release brings a VM for this machine".into());
    }
    (Kind::Native, "the release names no other driver for this machine".into())
}

/// The driver's blocking checks for this release (k3s on the host needs
/// root, say), before anything is fetched: `kubestrap doctor` shows them all.
fn preflight(drv: &dyn Driver, p: &Profile, m: &Manifest) -> Result<()> {
    let failures: Vec<String> = drv
        .prerequisites(p, m)
        .into_iter()
        .filter(|c| c.blocking && !c.ok)
        .map(|c| format!("{} ({}); {}", c.name, c.detail, c.advice.unwrap_or_default()))
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    Err(driver::DriverError::Unfit { driver: drv.kind(), failures: failures.join("; ") }.into())
}

/// Step "resolve → verify": the manifest to run, verified before anything
/// else happens, and where its artifacts come from (a bundle's payload
/// first, and then no network at all). A different release than the
/// profile runs is an upgrade.
fn resolve(
    home: &Home,
    o: &StartOptions,
    p: &Profile,
    existing: Option<&Config>,
    progress: &dyn Progress,
) -> Result<(Loaded, artifacts::Options)> {
    let t = Instant::now();
    let mut fetch = o.fetch.clone();
    let loaded = match &o.bundle {
        Some(b) => {
            let (loaded, payload) = channel::bundle::load(home, b, o.allow_expired, progress)?;
            fetch.offline = true;
            fetch.catalogs.push(std::sync::Arc::new(artifacts::source::BundleCatalog(payload)));
            loaded
        }
        None => {
            let want = channel::Want {
                spec: o.manifest.as_deref(),
                current: existing.map(|c| c.manifest.as_path()),
                allow_expired: o.allow_expired,
                fetch: &o.fetch,
            };
            channel::resolve(home, &want, progress)?
        }
    };
    let named = o.manifest.clone().or_else(|| o.bundle.as_ref().map(|b| b.display().to_string()));
    if let (Some(spec), Some(cfg)) = (&named, existing)
        && loaded.path != cfg.manifest
    {
        let current = channel::peek(&cfg.manifest).map_or_else(|| cfg.manifest.display().to_string(), |m| m.id());
        return Err(ClusterError::OtherRelease {
            profile: p.name.clone(),
            current,
            spec: crate::urls::redact(spec),
            candidate: loaded.manifest.id(),
        }
        .into());
    }
    if let Some(n) = loaded.trusted.pinned_notice() {
        progress.warn(n);
    }
    let m = &loaded.manifest;
    progress.step(
        Step::ManifestVerified {
            manifest: m.id(),
            kubernetes: m.kubernetes.to_string(),
            trust: loaded.trusted.path.to_string(),
        },
        t.elapsed(),
    );
    Ok((loaded, fetch))
}

/// A start found localkube running: wait until it is ready and make sure
/// kubeconfig points at it. `None` when it ended meanwhile (it was going
/// down): the caller starts it again.
fn rejoin(
    drv: &dyn Driver,
    p: &Profile,
    host: &Host,
    loaded: &Loaded,
    o: &StartOptions,
    progress: &dyn Progress,
) -> Result<Option<Started>> {
    drv.adopt(p)?;
    if let Some(asked) = o.port.filter(|asked| *asked != host.port) {
        progress.warn(format!(
            "profile {:?} is already running on port {}; --port {asked} is ignored (stop it first to move it)",
            p.name, host.port
        ));
    }
    let pki = Pki::new(p.pki());
    let run = &loaded.manifest.component.localkube.run;
    let at = Endpoint { port: host.port, ..p.load()?.endpoint() };
    match wait_ready(drv, p, &pki, at, run, o.wait_timeout, false, progress) {
        Ok(()) => {}
        Err(e) if !drv.running(p).unwrap_or(true) => {
            progress.warn(format!(
                "localkube of profile {:?} ended while this start waited for it ({e}); starting it again",
                p.name
            ));
            drv.stop(p, Stop::of(run))?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let version = write_kubeconfig(p, &pki, at, o.keep_context, progress)?;
    Ok(Some(Started {
        host: host.id.clone(),
        kubernetes: version,
        manifest: loaded.manifest.id(),
        already_running: true,
        created: false,
        ..result(p, at)?
    }))
}

/// Step "configure": port, driver, manifest pointer. Ports are chosen under
/// a home-wide lock and recorded before it is released, so two profiles
/// starting at once never pick the same one. Returns where the apiserver will answer and whether
/// the profile is new.
/// What a start asked of the profile's settings.
struct Asked<'a> {
    port: Option<u16>,
    vm: Option<&'a VmSettings>,
}

fn configure(
    home: &Home,
    p: &Profile,
    drv: &dyn Driver,
    asked: Asked,
    existing: Option<&Config>,
    loaded: &Loaded,
    progress: &dyn Progress,
) -> Result<(Endpoint, bool)> {
    let Asked { port: asked, vm } = asked;
    let t = Instant::now();
    let ports_lock = home.lock("ports", true, || {})?;
    let port = ports::choose(home, p, asked, existing)?;
    let created = existing.is_none();
    let cfg = Config {
        name: p.name.clone(),
        driver: drv.kind(),
        manifest: loaded.path.clone(),
        port,
        port_pinned: asked.is_some() || existing.is_some_and(|c| c.port_pinned),
        created: existing.map_or_else(crate::state::now, |c| c.created.clone()),
        previous: existing.and_then(|c| c.previous.clone()),
        // Each setting asked for replaces that one; the others are kept.
        vm: match (vm, existing.and_then(|c| c.vm.as_ref())) {
            (Some(asked), Some(kept)) => Some(VmSettings {
                cpus: asked.cpus.or(kept.cpus),
                memory_mib: asked.memory_mib.or(kept.memory_mib),
                accel: asked.accel.or(kept.accel),
            }),
            (asked, kept) => asked.or(kept).cloned(),
        },
        address: Some(drv.address(p, &loaded.manifest.component.localkube.run)).filter(|a| !a.is_loopback()),
    };
    if existing != Some(&cfg) {
        p.save(&cfg)?;
    }
    drop(ports_lock);
    progress.step(Step::Configured { profile: p.name.clone(), port, created }, t.elapsed());
    Ok((cfg.endpoint(), created))
}

/// Step "PKI": made once, reused after, placed where localkube expects it.
fn certificates(drv: &dyn Driver, launch: &Launch, validity: time::Duration, progress: &dyn Progress) -> Result<Pki> {
    let t = Instant::now();
    let p = &launch.profile;
    drv.create(p)?;
    let pki = Pki::new(p.pki());
    let made = pki
        .ensure(&pki::Options { profile: p.name.clone(), validity, extra_sans: drv.extra_sans() })
        .map_err(|e| ClusterError::Pki { dir: p.pki(), profile: p.name.clone(), reason: format!("{e:#}") })?;
    let vars = drv.host_vars(launch);
    // Every file is checked before one is written: all or nothing.
    let placed: Vec<(std::path::PathBuf, PkiFile)> =
        launch.run.pki_files.iter().map(|(dest, f)| (std::path::PathBuf::from(dest.render(&vars)), *f)).collect();
    let differ: Vec<String> =
        placed.iter().filter_map(|(dest, f)| pki.check_placed(dest, *f).err()).map(|e| e.to_string()).collect();
    if !differ.is_empty() {
        return Err(ClusterError::PlacedPkiDiffers { profile: p.name.clone(), placed: differ.join("; ") }.into());
    }
    for (dest, file) in &placed {
        pki.place(dest, *file).map_err(|e| ClusterError::Pki {
            dir: p.pki(),
            profile: p.name.clone(),
            reason: e.to_string(),
        })?;
    }
    progress.step(Step::Certificates { created: made }, t.elapsed());
    Ok(pki)
}

/// Step "launch".
fn launch_localkube(drv: &dyn Driver, launch: &Launch, progress: &dyn Progress) -> Result<Host> {
    let t = Instant::now();
    let host = drv.start(launch)?;
    progress.step(Step::LocalkubeStarted { host: host.id.clone(), driver: drv.kind().as_str() }, t.elapsed());
    Ok(host)
}

fn result(p: &Profile, at: Endpoint) -> Result<Started> {
    Ok(Started {
        profile: p.name.clone(),
        context: kubeconfig::context_name(&p.name),
        server: at.url(),
        kubeconfig: kubeconfig::path()?,
        host: String::new(),
        kubernetes: String::new(),
        manifest: String::new(),
        already_running: false,
        created: false,
    })
}

/// Step "ready": polls the apiserver until ready. Not ready in time:
/// localkube is stopped if this start launched it (one that was running
/// already is left alone); exited: how it ended. Either way with the last
/// log lines.
#[allow(clippy::too_many_arguments)]
pub fn wait_ready(
    drv: &dyn Driver,
    p: &Profile,
    pki: &Pki,
    at: Endpoint,
    run: &kubestrap_manifest::Run,
    timeout: Duration,
    launched: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let t = Instant::now();
    let port = at.port;
    let probe = Probe::new(pki, at, Duration::from_secs(2))?;
    let deadline = Instant::now() + timeout;
    let Err(e) = probe.wait_ready(&run.ready, deadline, || drv.running(p).unwrap_or(false)) else {
        progress.step(Step::ApiserverReady { server: probe.server().to_string() }, t.elapsed());
        return Ok(());
    };
    let tail = drv.log_tail(p, 20);
    let log = p.log_file().display().to_string();
    let tail_text = tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n");
    Err(match e {
        WaitError::Exited => {
            let how = match drv.status(p)? {
                HostState::Crashed { how } => how,
                _ => "exited".into(),
            };
            let advice = if tail.iter().any(|l| l.to_lowercase().contains("address already in use")) {
                format!(
                    "Its port {port} was taken by another program after kubestrap chose it: start again, or pick one with --port"
                )
            } else {
                format!("The log above says why; see also `kubestrap logs -p {}`", p.name)
            };
            ClusterError::LocalkubeExited {
                what: format!("localkube {how} before the apiserver became ready"),
                log,
                tail: tail_text,
                advice,
            }
        }
        WaitError::Timeout { last } => {
            let stopped = if !launched {
                "it was running before this start, so it was left running".to_string()
            } else {
                match drv.stop(p, Stop::of(run)) {
                    Ok(_) => "localkube was stopped".to_string(),
                    Err(stop) => format!("stopping localkube failed too: {stop}"),
                }
            };
            ClusterError::NotReady {
                what: format!(
                    "the apiserver was not ready after {}s (last answer: {last}); {stopped}",
                    timeout.as_secs()
                ),
                log,
                tail: tail_text,
                advice: format!("Retry with a longer --wait-timeout, or see `kubestrap logs -p {}`", p.name),
            }
        }
    }
    .into())
}

/// Step "kubeconfig": writes the context; returns the apiserver's version.
pub fn write_kubeconfig(
    p: &Profile,
    pki: &Pki,
    at: Endpoint,
    keep_context: bool,
    progress: &dyn Progress,
) -> Result<String> {
    let t = Instant::now();
    let path = kubeconfig::path()?;
    let entry = kubeconfig::Entry {
        name: kubeconfig::context_name(&p.name),
        server: at.url(),
        ca_pem: pki.read(PkiFile::CaCert)?,
        client_cert_pem: pki.read(PkiFile::AdminCert)?,
        client_key_pem: pki.read(PkiFile::AdminKey)?,
    };
    kubeconfig::merge(&path, &entry, !keep_context)?;
    progress.step(Step::Kubeconfig { context: entry.name.clone(), path, current: !keep_context }, t.elapsed());
    let probe = Probe::new(pki, at, Duration::from_secs(2))?;
    Ok(probe.version().unwrap_or_default())
}
