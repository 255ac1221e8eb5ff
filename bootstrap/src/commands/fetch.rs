use anyhow::Result;
use kubestrap_manifest::Target;
use serde_json::json;

use crate::cli::FetchArgs;
use crate::exit::Code;
use crate::fetch;
use crate::home::Home;
use crate::source;
use crate::ui::{Ui, human_bytes};

pub fn run(args: FetchArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let started = std::time::Instant::now();
    let _store =
        home.store_lock(false, || ui.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let opts = super::fetch_options(&args.net);
    let loaded = source::load(home, args.source.manifest.as_deref(), &opts, args.source.allow_expired, ui)?;
    let target = args.target.unwrap_or_else(Target::host);
    let jobs = fetch::jobs_for(&loaded.manifest, &target, args.driver)?;
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
    Ok(Code::Ok)
}
