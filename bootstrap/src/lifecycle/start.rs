//! `start`: idempotent; creates the profile if absent, resumes it if stopped,
//! recovers it if localkube crashed.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kubestrap_manifest::{Driver as DriverKind, Manifest, Target};

use super::{Steps, lock_profile, read_manifest};
use crate::apiserver::{Probe, WaitError};
use crate::driver::{self, HostState, Launch};
use crate::exit::{Code, coded};
use crate::fetch;
use crate::home::Home;
use crate::kubeconfig;
use crate::pki::{self, Pki};
use crate::profile::{self, Config, Profile};
use crate::source::{self, Loaded};
use crate::store;

/// The port tried first.
pub const DEFAULT_PORT: u16 = 8443;

pub struct StartOptions {
    pub profile: String,
    pub driver: Option<DriverKind>,
    pub manifest: Option<String>,
    pub allow_expired: bool,
    pub fetch: fetch::Options,
    pub port: Option<u16>,
    pub wait_timeout: Duration,
    pub keep_context: bool,
    pub no_wait: bool,
    pub cert_validity: time::Duration,
}

#[derive(Debug)]
pub struct Started {
    pub profile: String,
    pub context: String,
    pub server: String,
    pub kubeconfig: std::path::PathBuf,
    pub pid: i32,
    pub kubernetes: String,
    pub manifest: String,
    pub already_running: bool,
    pub created: bool,
}

pub fn start(home: &Home, o: &StartOptions, steps: &dyn Steps) -> Result<Started> {
    let p = Profile::new(home, &o.profile)?;
    let _lock = lock_profile(home, &p, !o.no_wait, steps)?;
    let _store =
        home.store_lock(false, || steps.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let existing = if p.exists() { Some(p.load()?) } else { None };
    let driver_kind = match (&existing, o.driver) {
        (Some(c), Some(d)) if c.driver != d => {
            return Err(coded(
                Code::Usage,
                format!("profile {:?} uses the {} driver; delete it first to use {d}", p.name, c.driver),
            ));
        }
        (Some(c), _) => c.driver,
        (None, d) => d.unwrap_or(DriverKind::Native),
    };
    let drv = driver::for_kind(driver_kind)?;
    // A kubeconfig we could not update later is refused before anything runs.
    kubeconfig::check(&kubeconfig::path()?)?;

    // 1. The manifest: verified before anything else happens.
    let t = Instant::now();
    let loaded = resolve_manifest(home, o, existing.as_ref(), steps)?;
    let m = &loaded.manifest;
    if let Some(n) = loaded.trusted.pinned_notice() {
        steps.warn(&n);
    }
    steps.step(
        "manifest verified",
        &format!("{} (Kubernetes {}), {}", m.id(), m.kubernetes, loaded.trusted.path),
        t.elapsed(),
    );

    // Already running (or launched by a start that was interrupted)? Then
    // wait until it is ready and make sure kubeconfig points at it.
    let state = drv.status(&p)?;
    if let (HostState::Running { pid, port }, Some(_)) = (&state, &existing) {
        drv.resume(&p)?;
        if let Some(asked) = o.port.filter(|asked| asked != port) {
            steps.warn(&format!(
                "profile {:?} is already running on port {port}; --port {asked} is ignored (stop it first to move it)",
                p.name
            ));
        }
        let pki = Pki::new(p.pki());
        wait_ready(drv.as_ref(), &p, &pki, *port, &m.component.localkube.run, o.wait_timeout, false, steps)?;
        let started = finish(&p, &pki, *port, o.keep_context, steps)?;
        return Ok(Started {
            pid: *pid,
            kubernetes: started,
            manifest: m.id(),
            already_running: true,
            created: false,
            ..result(&p, *port)?
        });
    }
    if let HostState::Crashed { how } = &state {
        steps.warn(&format!("localkube of profile {:?} had stopped unexpectedly ({how}); starting it again", p.name));
        // What is left of it (helpers; all of it when only the pid file was
        // lost) is stopped the way the manifest says.
        let run = &m.component.localkube.run;
        drv.stop(&p, run.stop_signal.number(), Duration::from_secs(run.stop_timeout_s))?;
    }

    // 2. Artifacts: from the cache or downloaded, every byte verified.
    let t = Instant::now();
    let host = Target::host();
    let jobs = fetch::jobs_for(m, &host, driver_kind)?;
    fetch::fetch_all(home, &jobs, &o.fetch, steps.fetch_reporter())?;
    let total: u64 = jobs.iter().map(|j| j.artifact.size.get()).sum();
    steps.step(
        "artifacts verified",
        &format!("{} artifact(s), {}", jobs.len(), crate::ui::human_bytes(total)),
        t.elapsed(),
    );
    let t = Instant::now();
    let lk = m.needs(&host, driver_kind).map_err(|e| coded(Code::Usage, e))?;
    let mut component = None;
    for need in &lk {
        let dir = store::ensure_component(home, &need.artifact)?;
        if need.component == "localkube" {
            component = Some(dir);
        }
    }
    let component = component.context("the manifest has no localkube for this machine")?;
    steps.step("components unpacked", "", t.elapsed());

    // 3. Profile config: port, driver, manifest pointer. Ports are chosen
    // under a home-wide lock and recorded before it is released, so two
    // profiles starting at once never pick the same one.
    let ports_lock = home.lock("ports", true, || {})?;
    let port = choose_port(home, &p, o.port, existing.as_ref())?;
    let created = existing.is_none();
    let cfg = Config {
        name: p.name.clone(),
        driver: driver_kind,
        manifest: loaded.path.clone(),
        port,
        port_pinned: o.port.is_some() || existing.as_ref().is_some_and(|c| c.port_pinned),
        created: existing.as_ref().map_or_else(crate::driver::monitor::now, |c| c.created.clone()),
    };
    if existing.as_ref() != Some(&cfg) {
        p.save(&cfg)?;
    }
    drop(ports_lock);

    // 4. PKI, made once, placed where localkube expects it.
    let t = Instant::now();
    drv.create(&p)?;
    let pki = Pki::new(p.pki());
    let made = pki
        .ensure(&pki::Options { profile: p.name.clone(), validity: o.cert_validity, extra_sans: drv.extra_sans() })
        .with_context(|| {
            format!(
                "the cluster certificates in {} cannot be used; restore them from a backup, or `kubestrap delete -p {}` and start again (its data goes with it)",
                p.pki().display(),
                p.name
            )
        })?;
    let launch = Launch { profile: p.clone(), run: m.component.localkube.run.clone(), component, port };
    let vars = launch.vars();
    for (dest, file) in &launch.run.pki_files {
        pki.place(std::path::Path::new(&dest.render(&vars)), *file)?;
    }
    steps.step("certificates", if made { "created" } else { "reused" }, t.elapsed());

    // 5. Launch and wait for ready.
    let t = Instant::now();
    let pid = drv.start(&launch)?;
    steps.step("localkube started", &format!("pid {pid}, {} driver", drv.name()), t.elapsed());
    wait_ready(drv.as_ref(), &p, &pki, port, &m.component.localkube.run, o.wait_timeout, true, steps)?;
    let version = finish(&p, &pki, port, o.keep_context, steps)?;
    Ok(Started { pid, kubernetes: version, manifest: m.id(), already_running: false, created, ..result(&p, port)? })
}

fn result(p: &Profile, port: u16) -> Result<Started> {
    Ok(Started {
        profile: p.name.clone(),
        context: kubeconfig::context_name(&p.name),
        server: format!("https://127.0.0.1:{port}"),
        kubeconfig: kubeconfig::path()?,
        pid: 0,
        kubernetes: String::new(),
        manifest: String::new(),
        already_running: false,
        created: false,
    })
}

/// Polls the apiserver until ready. Not ready in time: localkube is stopped
/// if this start launched it (one that was running already is left alone);
/// exited: how it ended. Either way with the last log lines.
#[allow(clippy::too_many_arguments)]
fn wait_ready(
    drv: &dyn crate::driver::Driver,
    p: &Profile,
    pki: &Pki,
    port: u16,
    run: &kubestrap_manifest::Run,
    timeout: Duration,
    launched: bool,
    steps: &dyn Steps,
) -> Result<()> {
    let t = Instant::now();
    let probe = Probe::new(pki, port, Duration::from_secs(2))?;
    let deadline = Instant::now() + timeout;
    if let Err(e) = probe.wait_ready(&run.ready, deadline, || drv.running(p).unwrap_or(false)) {
        let log = drv.logs(p);
        let tail = crate::driver::native::tail(&log, 20);
        let (code, what, advice) = match &e {
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
                (Code::LocalkubeExited, format!("localkube {how} before the apiserver became ready"), advice)
            }
            WaitError::Timeout { last } => {
                let stopped = if !launched {
                    "it was running before this start, so it was left running".to_string()
                } else {
                    match drv.stop(p, run.stop_signal.number(), Duration::from_secs(run.stop_timeout_s)) {
                        Ok(_) => "localkube was stopped".to_string(),
                        Err(stop) => format!("stopping localkube failed too: {stop:#}"),
                    }
                };
                (
                    Code::NotReady,
                    format!(
                        "the apiserver was not ready after {}s (last answer: {last}); {stopped}",
                        timeout.as_secs()
                    ),
                    format!("Retry with a longer --wait-timeout, or see `kubestrap logs -p {}`", p.name),
                )
            }
        };
        return Err(coded(
            code,
            format!(
                "{what}.\nLast lines of {}:\n{}\n{advice}",
                log.display(),
                tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n"),
            ),
        ));
    }
    steps.step("apiserver ready", probe.server(), t.elapsed());
    Ok(())
}

/// Writes the kubeconfig context; returns the apiserver's version.
fn finish(p: &Profile, pki: &Pki, port: u16, keep_context: bool, steps: &dyn Steps) -> Result<String> {
    use kubestrap_manifest::PkiFile;
    let t = Instant::now();
    let path = kubeconfig::path()?;
    let entry = kubeconfig::Entry {
        name: kubeconfig::context_name(&p.name),
        server: format!("https://127.0.0.1:{port}"),
        ca_pem: pki.read(PkiFile::CaCert)?,
        client_cert_pem: pki.read(PkiFile::AdminCert)?,
        client_key_pem: pki.read(PkiFile::AdminKey)?,
    };
    kubeconfig::merge(&path, &entry, !keep_context)?;
    let ctx = if keep_context { "added" } else { "current context" };
    steps.step("kubeconfig", &format!("{} in {} ({ctx})", entry.name, path.display()), t.elapsed());
    let probe = Probe::new(pki, port, Duration::from_secs(2))?;
    Ok(probe.version().unwrap_or_default())
}

fn resolve_manifest(home: &Home, o: &StartOptions, existing: Option<&Config>, steps: &dyn Steps) -> Result<Loaded> {
    match (&o.manifest, existing) {
        (Some(spec), Some(cfg)) => {
            let loaded = source::load(home, Some(spec), &o.fetch, o.allow_expired, steps.ui())?;
            if loaded.path != cfg.manifest {
                let current =
                    read_manifest(&cfg.manifest).map(|m| m.id()).unwrap_or_else(|_| cfg.manifest.display().to_string());
                return Err(coded(
                    Code::Usage,
                    format!(
                        "profile {:?} runs manifest {current}; {spec} is {}. Changing a cluster's release is an upgrade; delete the profile to start over with it",
                        cfg.name,
                        loaded.manifest.id()
                    ),
                ));
            }
            Ok(loaded)
        }
        (Some(spec), None) => source::load(home, Some(spec), &o.fetch, o.allow_expired, steps.ui()),
        (None, Some(cfg)) => stored(home, &cfg.manifest, o.allow_expired, true, steps),
        (None, None) => {
            if !o.fetch.offline {
                match source::load(home, None, &o.fetch, o.allow_expired, steps.ui()) {
                    Ok(l) => return Ok(l),
                    // Only an unreachable channel falls back; a bad, old or expired
                    // manifest is an answer, not an outage (freeze protection).
                    Err(e) if crate::exit::classify(&e) == Code::Download => match newest_stored(home)? {
                        Some(path) => steps.warn(&format!(
                            "{e:#}; using the newest {} manifest kept here, {}",
                            source::DEFAULT_CHANNEL,
                            path.display()
                        )),
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
            match newest_stored(home)? {
                Some(path) => stored(home, &path, o.allow_expired, false, steps),
                None => Err(coded(
                    Code::OfflineMissing,
                    "--offline, and no manifest of the stable channel is kept in this kubestrap home: name one with --manifest, or use an offline bundle",
                )),
            }
        }
    }
}

/// A manifest kept in the home, re-verified; its warnings shown.
fn stored(
    home: &Home,
    path: &std::path::Path,
    allow_expired: bool,
    running: bool,
    steps: &dyn Steps,
) -> Result<Loaded> {
    let loaded = source::load_stored(home, path, allow_expired, running)?;
    for w in &loaded.trusted.warnings {
        steps.warn(w);
    }
    Ok(loaded)
}

fn newest_stored(home: &Home) -> Result<Option<std::path::PathBuf>> {
    let all: Vec<(std::path::PathBuf, Manifest)> = source::stored(home)?;
    Ok(all
        .into_iter()
        // The official record only (`stable-<v>.toml`), never a private
        // channel that calls itself stable (`stable@<key>-<v>.toml`).
        .filter(|(p, m)| {
            m.channel == source::DEFAULT_CHANNEL
                && p.file_name().is_some_and(|n| *n == *format!("{}-{}.toml", source::DEFAULT_CHANNEL, m.version))
        })
        .max_by_key(|(_, m)| m.version)
        .map(|(p, _)| p))
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The port: the one asked for (must be free), else the profile's own if
/// free, else 8443 or the next free one not used by another profile.
fn choose_port(home: &Home, p: &Profile, asked: Option<u16>, existing: Option<&Config>) -> Result<u16> {
    let in_use = |port: u16| {
        coded(
            Code::PortInUse,
            format!("port {port} on 127.0.0.1 is in use by another program; free it, or choose another with --port"),
        )
    };
    if let Some(port) = asked {
        return if port_free(port) { Ok(port) } else { Err(in_use(port)) };
    }
    if let Some(c) = existing {
        if port_free(c.port) {
            return Ok(c.port);
        }
        if c.port_pinned {
            return Err(in_use(c.port));
        }
    }
    let taken: Vec<u16> = profile::names(home)?
        .into_iter()
        .filter(|n| *n != p.name)
        .filter_map(|n| Profile::new(home, &n).ok()?.load().ok().map(|c| c.port))
        .collect();
    (DEFAULT_PORT..=DEFAULT_PORT + 200).find(|port| !taken.contains(port) && port_free(*port)).ok_or_else(|| {
        coded(Code::PortInUse, format!("no free port in {DEFAULT_PORT}-{}; choose one with --port", DEFAULT_PORT + 200))
    })
}
