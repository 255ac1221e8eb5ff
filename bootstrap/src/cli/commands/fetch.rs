use anyhow::Result;
use kubestrap_manifest::Target;
use serde_json::json;

use crate::artifacts;
use crate::cli::args::FetchArgs;
use crate::cli::exit::Code;
use crate::cli::render::{Ui, human_bytes};
use crate::home::Home;

pub fn run(args: FetchArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let started = std::time::Instant::now();
    let _store =
        home.store_lock(false, || ui.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let (loaded, opts) = super::load_manifest(home, &args.source, &args.net, ui)?;
    let target = args.target.unwrap_or_else(Target::host);
    let jobs = artifacts::jobs_for(&loaded.manifest, &target, args.driver)?;
    let total: u64 = jobs.iter().map(|j| j.artifact.size.get()).sum();
    ui.line(&format!(
        "Fetching {} artifact(s), {} in all, for {target} ({} driver) from manifest {}",
        jobs.len(),
        human_bytes(total),
        args.driver,
        loaded.manifest.id()
    ));
    let paths = artifacts::fetch_all(home, &jobs, &opts, ui)?;
    for (job, path) in jobs.iter().zip(&paths) {
        ui.json(json!({"artifact": job.label, "sha256": job.artifact.sha256.hex(), "size": job.artifact.size.get(), "path": path}));
    }
    ui.result(
        "fetched and verified",
        &format!("{} artifact(s), {}", jobs.len(), human_bytes(total)),
        started.elapsed(),
    );
    Ok(Code::Ok)
}
