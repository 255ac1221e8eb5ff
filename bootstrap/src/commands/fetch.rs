use anyhow::{Context, Result};
use kubestrap_manifest::Target;
use serde_json::json;

use crate::cli::FetchArgs;
use crate::exit::Code;
use crate::fetch::{self, Job};
use crate::home::Home;
use crate::source;
use crate::ui::{Ui, human_bytes, human_duration};

pub fn run(args: FetchArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let started = std::time::Instant::now();
    let opts = super::fetch_options(&args.net);
    let loaded = source::load(home, args.source.manifest.as_deref(), &opts, args.source.allow_expired, ui)?;
    let target = args.target.unwrap_or_else(Target::host);
    let jobs = jobs_for(&loaded.manifest, &target, args.driver)?;
    let total: u64 = jobs.iter().map(|j| j.artifact.size.get()).sum();
    ui.line(&format!(
        "Fetching {} artifact(s), {} in all, for {target} ({} driver) from manifest {}",
        jobs.len(),
        human_bytes(total),
        args.driver,
        loaded.manifest.id()
    ));
    let paths = fetch::fetch_all(home, &jobs, &opts, ui)?;
    for (job, path) in jobs.iter().zip(&paths) {
        ui.json(json!({"artifact": job.label, "sha256": job.artifact.sha256.hex(), "size": job.artifact.size.get(), "path": path}));
    }
    ui.step("fetched and verified", &format!("{} artifact(s), {}", jobs.len(), human_bytes(total)), started.elapsed());
    let _ = human_duration;
    Ok(Code::Ok)
}

/// The download jobs for a manifest on a target and driver.
pub fn jobs_for(m: &kubestrap_manifest::Manifest, target: &Target, driver: kubestrap_manifest::Driver) -> Result<Vec<Job>> {
    let needs = m
        .needs(target, driver)
        .map_err(|e| crate::exit::coded(Code::Usage, format!("manifest {}: {e}", m.id())))
        .context("cannot choose artifacts")?;
    Ok(needs
        .into_iter()
        .map(|n| Job {
            label: format!("{} {} ({})", n.component, n.version, n.target),
            artifact: n.artifact,
        })
        .collect())
}
