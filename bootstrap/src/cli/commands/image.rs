//! `kubestrap image load|list`: a user's image archives into localkube's
//! images directory, the offline way to run one's own images.

use anyhow::Result;
use serde_json::json;

use crate::channel;
use crate::cli::args::ImageCmd;
use crate::cli::exit::Code;
use crate::cli::render::{Ui, human_bytes};
use crate::cluster::images;

use crate::home::Home;
use crate::profile::Profile;

pub fn run(cmd: ImageCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        ImageCmd::Load { profile, files } => {
            let p = Profile::new(home, &profile.profile)?;
            let _lock = crate::cluster::lock_profile(home, &p, true, ui)?;
            let (dir, running) = target(home, &p, ui)?;
            for file in &files {
                let (e, new) = images::load(&p, &dir, file, ui)?;
                ui.json(json!({"file": file, "placed": dir.join(&e.file), "sha256": e.sha256.hex(), "bytes": e.size,
                    "format": e.format, "images": e.images, "new": new}));
                let names = if e.images.is_empty() { String::new() } else { format!(" ({})", e.images.join(", ")) };
                ui.line(&format!(
                    "{} {}{names}: {} as {}",
                    if new { "loaded" } else { "already loaded" },
                    file.display(),
                    human_bytes(e.size),
                    e.file
                ));
            }
            if running {
                ui.line("localkube imports new archives while it runs (k3s v1.30.9 and later) and at every start");
            } else {
                ui.line(&format!("localkube imports them when profile {:?} starts", p.name));
            }
            Ok(Code::Ok)
        }
        ImageCmd::List(profile) => {
            let p = Profile::new(home, &profile.profile)?;
            let (dir, _) = target(home, &p, ui)?;
            let all = images::list(&p, &dir, ui);
            if all.is_empty() {
                ui.line(&format!("profile {:?} has no image archives in {}", p.name, dir.display()));
            }
            for (e, intact) in &all {
                ui.json(json!({"file": e.file, "sha256": e.sha256.hex(), "bytes": e.size, "origin": e.origin,
                    "format": e.format, "images": e.images, "intact": intact}));
                ui.line(&format!(
                    "{}  {:?}  {:?}  {}  {}{}",
                    e.file,
                    e.origin,
                    e.format,
                    human_bytes(e.size),
                    e.images.join(","),
                    if *intact { "" } else { "  (changed or missing: the next start repairs it)" }
                ));
            }
            Ok(Code::Ok)
        }
    }
}

/// The profile's images directory (from its verified release), and whether
/// its localkube runs.
fn target(home: &Home, p: &Profile, ui: &Ui) -> Result<(std::path::PathBuf, bool)> {
    let cfg = p.load()?;
    let loaded = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let drv = crate::cluster::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), ui);
    let dir = images::dir_of(&drv.host_data(p), p, &loaded.manifest)?;
    let running = drv.running(p, crate::driver::Node::Server).unwrap_or(false);
    Ok((dir, running))
}
