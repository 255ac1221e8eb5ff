//! `kubestrap doctor`.

use anyhow::Result;
use serde_json::json;

use crate::channel;
use crate::cli::args::DoctorArgs;
use crate::cli::exit::Code;
use crate::cli::render::Ui;
use crate::cluster::doctor::{self, Subject};
use crate::cluster::kubeconfig;

use crate::home::Home;
use crate::profile::Profile;

pub fn run(a: DoctorArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let p = Profile::new(home, &a.profile.profile)?;
    // A damaged config is itself worth saying, not a reason to stop.
    let config = if p.exists() {
        match p.load() {
            Ok(c) => Some(c),
            Err(e) => {
                ui.warn(&format!("{e}"));
                None
            }
        }
    } else {
        None
    };
    let kind = a.driver.or(config.as_ref().map(|c| c.driver)).unwrap_or(kubestrap_manifest::Driver::Native);
    let settings = config.as_ref().and_then(|c| c.vm).unwrap_or_default();
    let drv = crate::cluster::session::unlocked_driver(home, kind, settings, ui);
    let loaded = match (&a.manifest, &config) {
        (Some(spec), _) => Some(channel::verify_only(home, spec, &super::fetch_options(&a.net), true)?),
        (None, Some(c)) => channel::load_stored(home, &c.manifest, channel::Stored::RUNNING).ok(),
        (None, None) => channel::default_manifest(home)
            .or_else(|| channel::stored(home).ok()?.into_iter().next().map(|(path, _)| path))
            .and_then(|path| channel::load_stored(home, &path, channel::Stored::fresh(true)).ok()),
    };
    let manifest = loaded.as_ref().map(|l| &l.manifest);
    let kubeconfig = kubeconfig::path(home.env())?;
    let running = config.is_some() && drv.running(&p, crate::driver::Node::Server).unwrap_or(false);
    let subject = Subject {
        home,
        config: config.as_ref(),
        manifest,
        running,
        port: a.port,
        kubeconfig: &kubeconfig,
        now: time::OffsetDateTime::now_utc(),
    };
    let checks = doctor::checks(&subject, drv.as_ref());
    ui.line(&format!(
        "profile {:?}, {} driver, {}",
        p.name,
        kind,
        manifest.map_or_else(
            || "no release known yet (checks that need one are left out)".into(),
            |m| format!(
                "release {} (Kubernetes {}, {} {})",
                m.id(),
                m.kubernetes,
                m.component.localkube.run.program,
                m.component.localkube.version
            )
        )
    ));
    for c in &checks {
        ui.json(json!({"check": c.name, "ok": c.ok, "detail": c.detail, "advice": c.advice, "blocking": c.blocking}));
        let mark = match (c.ok, c.blocking) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            // Not in the way of a start, but worth fixing.
            (false, false) => "WARN",
        };
        ui.line(&format!("{mark} {:<19} {}", c.name, c.detail));
        if let Some(advice) = &c.advice {
            ui.line(&format!("     {:<19} → {advice}", ""));
        }
    }
    let failed = checks.iter().filter(|c| !c.ok && c.blocking).count();
    let warned = checks.iter().filter(|c| !c.ok && !c.blocking).count();
    let warnings = if warned == 0 { String::new() } else { format!(", {warned} warn") };
    if failed == 0 && warned == 0 {
        ui.line(&format!("all {} checks pass", checks.len()));
        Ok(Code::Ok)
    } else if failed == 0 {
        ui.line(&format!("{} of {} checks pass{warnings}", checks.len() - warned, checks.len()));
        Ok(Code::Ok)
    } else {
        ui.line(&format!("{failed} of {} checks fail{warnings}", checks.len()));
        Ok(Code::Unfit)
    }
}
