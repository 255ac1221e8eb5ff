//! start, stop, delete, status, profile list, kubectl, logs.

use std::os::unix::process::CommandExt;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::cli::args::{DeleteArgs, StartArgs};
use crate::cli::exit::Code;
use crate::cli::render::{Ui, human_duration};
use crate::cluster::session::{Ending, Force, Wait};
use crate::cluster::{self, ClusterError, StartOptions, kubeconfig};
use crate::driver::{self, Node, StopOutcome};
use crate::home::Home;
use crate::profile::{self, Profile};

pub fn start(a: StartArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let o = StartOptions {
        profile: a.profile.profile,
        driver: a.driver,
        release: super::release_request(&a.source, &a.net),
        port: a.port,
        wait_timeout: a.wait_timeout,
        keep_context: a.keep_context,
        system: if a.no_wait_system { crate::cluster::System::Skip } else { crate::cluster::System::Wait },
        wait: Wait::from_no_wait(a.no_wait),
        cert_validity: time::Duration::days(a.cert_days.into()),
        vm: (a.cpus.is_some() || a.memory.is_some() || a.accel.is_some()).then_some(crate::profile::VmSettings {
            cpus: a.cpus,
            memory_mib: a.memory,
            accel: a.accel,
        }),
        nodes: a.nodes.map(usize::from),
        listen: a.listen,
        publish: if a.no_publish { Some(Vec::new()) } else { Some(a.publish.clone()).filter(|p| !p.is_empty()) },
    };
    if let Some(at) = a.listen {
        ui.warn(&format!(
            "--listen {at}: the cluster's API is reachable at {at} from other machines. Its certificates and tokens \
             guard it: whoever holds the kubeconfig is cluster-admin, whoever holds the join token \
             (`kubestrap node join-command`) can add nodes"
        ));
    }
    let s = cluster::start(home, &o, ui)?;
    ui.json(json!({"event": "done", "profile": s.profile, "context": s.context, "server": s.server, "kubeconfig": s.kubeconfig,
        "host": s.host.id, "pid": s.host.pid, "kubernetes": s.kubernetes, "manifest": s.manifest, "already_running": s.already_running,
        "created": s.created, "elapsed_ms": t.elapsed().as_millis() as u64}));
    let what = if s.already_running {
        "was already running"
    } else if s.created {
        "is up"
    } else {
        "is up again"
    };
    ui.line(&format!(
        "\nCluster {:?} {what} ({} at {}) in {}.",
        s.profile,
        s.kubernetes,
        s.server,
        human_duration(t.elapsed())
    ));
    let ctx = if o.keep_context { format!(" --context {}", s.context) } else { String::new() };
    ui.line(&format!("Try:  kubectl{ctx} get ns      (or: kubestrap kubectl -p {} -- get ns)", s.profile));
    Ok(Code::Ok)
}

pub fn stop(name: String, shutdown: bool, force: bool, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let ending = if shutdown { Ending::Shutdown } else { Ending::Suspend };
    let outcome = cluster::stop(home, &name, Wait::Yes, ending, Force::from_flag(force), ui)?;
    let what = match &outcome {
        StopOutcome::Stopped => "stopped",
        StopOutcome::Suspended => "suspended (start resumes it)",
        StopOutcome::Killed => "killed after the stop timeout",
        StopOutcome::WasNotRunning => "was not running",
        StopOutcome::Unreached { .. } => "not reached (--force)",
    };
    let left = match &outcome {
        StopOutcome::Unreached { left } => Some(left.as_str()),
        _ => None,
    };
    ui.json(json!({"profile": name, "result": what, "left": left}));
    ui.result(&format!("profile {name:?} {what}"), "state kept", t.elapsed());
    Ok(Code::Ok)
}

pub fn delete(a: DeleteArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let names = if a.all {
        profile::names(home)?
    } else {
        let p = Profile::new(home, &a.profile.profile)?;
        match (p.dir.exists(), a.purge) {
            (true, _) => vec![p.name],
            // Only the cache to purge.
            (false, true) => Vec::new(),
            (false, false) => return Err(crate::profile::ProfileError::NoProfile { profile: p.name }.into()),
        }
    };
    if a.purge {
        // The cache holds what the other clusters run: purge only with them.
        let others: Vec<String> = profile::names(home)?.into_iter().filter(|n| !names.contains(n)).collect();
        if !others.is_empty() {
            return Err(ClusterError::PurgeInUse { others: others.join(", ") }.into());
        }
    }
    let deleted = cluster::delete(home, &names, Wait::Yes, Force::from_flag(a.force), ui)?;
    for name in &deleted {
        ui.json(json!({"deleted": name}));
        ui.result(&format!("deleted profile {name:?}"), "cluster state and kubeconfig entries removed", t.elapsed());
    }
    if a.purge {
        cluster::purge(home, ui)?;
        ui.json(json!({"purged": home.root().join("blobs")}));
        ui.result("purged the download cache", &home.root().display().to_string(), t.elapsed());
    }
    Ok(Code::Ok)
}

/// Returns the status bitmask (1 host down, 2 localkube down, 4 apiserver
/// not ready, 8 an agent node down or not Ready) as the exit code.
pub fn status(name: String, home: &Home, ui: &Ui) -> Result<u8> {
    let st = cluster::status(home, &name, ui)?;
    ui.json(serde_json::to_value(&st)?);
    ui.line(&st.name);
    ui.line(&format!("driver: {}", st.driver));
    ui.line(&format!("host: {}", st.host));
    let id = st.host_id.as_ref().map(|h| format!(" ({h})")).unwrap_or_default();
    ui.line(&format!("localkube: {}{id}", st.localkube));
    ui.line(&format!("apiserver: {}", st.apiserver));
    ui.line(&format!("kubeconfig: {}", st.kubeconfig));
    ui.line(&format!("kubernetes: {}", st.kubernetes));
    ui.line(&format!("manifest: {}", st.manifest));
    ui.line(&format!("server: {}", st.server));
    if st.nodes.len() > 1 {
        ui.line(&format!("nodes: {}", st.nodes.len()));
        for n in &st.nodes {
            let why = n.crash.as_ref().map(|c| format!(" ({c})")).unwrap_or_default();
            ui.line(&format!("  {:<36} {:<7} host {:<10} {}{why}", n.name, n.role, n.host, n.ready));
        }
    }
    if let Some(c) = &st.crash {
        ui.line(&format!("\nlocalkube crashed: {c}. Last lines of its log:"));
        for l in &st.log_tail {
            ui.line(&format!("  | {l}"));
        }
        ui.line(&format!("Run `kubestrap start -p {name}` to start it again."));
    }
    if !ui.is_json() {
        for w in &st.warnings {
            ui.warn(w);
        }
    }
    Ok(st.exit_code)
}

pub fn profile_list(home: &Home, ui: &Ui) -> Result<Code> {
    let names = profile::names(home)?;
    if names.is_empty() {
        ui.line("no profiles; create one with `kubestrap start`");
    } else {
        ui.line(&format!(
            "{:<20} {:<8} {:<10} {:<10} {:<26} {}",
            "PROFILE", "DRIVER", "LOCALKUBE", "APISERVER", "SERVER", "KUBERNETES"
        ));
    }
    for n in names {
        let st = match cluster::status(home, &n, ui) {
            Ok(st) => st,
            // One damaged profile does not hide the others.
            Err(e) => {
                ui.json(json!({"name": n, "error": format!("{e:#}")}));
                ui.line(&format!("{n:<20} damaged: {e:#}"));
                continue;
            }
        };
        ui.json(serde_json::to_value(&st)?);
        let apiserver = st.apiserver.to_string();
        ui.line(&format!(
            "{:<20} {:<8} {:<10} {:<10} {:<26} {}",
            st.name,
            st.driver,
            st.localkube.to_string(),
            apiserver.split(' ').next().unwrap_or(""),
            st.server,
            st.kubernetes
        ));
    }
    Ok(Code::Ok)
}

/// Runs the profile's pinned kubectl with its context — re-verified (and
/// repaired from its blob if it no longer matches) right before it runs.
pub fn kubectl(name: String, args: Vec<String>, home: &Home, ui: &Ui) -> Result<Code> {
    let p = Profile::new(home, &name)?;
    let cfg = p.load()?;
    let bin = cluster::pinned_kubectl(home, &p, &cfg, ui)?;
    let mut cmd = std::process::Command::new(&bin);
    if !args.iter().any(|a| a == "--context" || a.starts_with("--context=")) {
        cmd.arg(format!("--context={}", kubeconfig::context_name(&name)));
    }
    cmd.args(&args);
    let err = cmd.exec();
    Err(crate::driver::DriverError::Spawn { what: "run the pinned kubectl", source: err }.into())
}

pub fn logs(name: String, follow: bool, lines: usize, home: &Home, ui: &Ui) -> Result<Code> {
    use std::io::Write;
    let p = Profile::new(home, &name)?;
    if !p.exists() {
        return Err(crate::profile::ProfileError::NoProfile { profile: p.name }.into());
    }
    // A damaged config does not hide the log.
    let settings = p.load().ok().and_then(|c| c.vm).unwrap_or_default();
    let drv = cluster::session::unlocked_driver(home, driver::kind_of(&p), settings, ui);
    let mut out = std::io::stdout().lock();
    for l in drv.log_tail(&p, Node::Server, lines) {
        if writeln!(out, "{l}").is_err() {
            return Ok(Code::Ok); // broken pipe (e.g. `| head`) is a normal end
        }
    }
    if follow {
        drv.follow_log(&p, Node::Server, &mut out)?;
    }
    Ok(Code::Ok)
}
