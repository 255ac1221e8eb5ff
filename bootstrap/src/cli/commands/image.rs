//! `kubestrap image load|list`: a user's image archives into localkube's
//! images directory, the offline way to run one's own images.

use anyhow::Result;
use serde_json::json;

use crate::channel;
use crate::cli::args::ImageCmd;
use crate::cli::exit::{Code, UsageError};
use crate::cli::render::{Ui, human_bytes};
use crate::cluster::images;
use crate::driver::{Delivery, Node};

use crate::home::Home;
use crate::profile::Profile;

pub fn run(cmd: ImageCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        ImageCmd::Load { profile, files } => {
            let p = Profile::new(home, &profile.profile)?;
            let _lock = crate::cluster::lock_profile(home, &p, true, ui)?;
            let (dir, running, drv) = target(home, &p, ui)?;
            let mut live_anywhere = false;
            sweep_saves(&p);
            for file in &files {
                let saved = from_engine(home, &p, file)?;
                let (e, new) = images::load(&p, &dir, saved.as_ref().map_or(file.as_path(), |s| s.path()), ui)?;
                drop(saved);
                // Into every running node now, not only at the next start.
                let live = if running { deliver(drv.as_ref(), &p, &dir.join(&e.file))? } else { Vec::new() };
                live_anywhere |= !live.is_empty();
                ui.json(json!({"file": file, "placed": dir.join(&e.file), "sha256": e.sha256.hex(), "bytes": e.size,
                    "format": e.format, "images": e.images, "new": new, "running_nodes": live}));
                let names = if e.images.is_empty() { String::new() } else { format!(" ({})", e.images.join(", ")) };
                ui.line(&format!(
                    "{} {}{names}: {} as {}",
                    if new { "loaded" } else { "already loaded" },
                    file.display(),
                    human_bytes(e.size),
                    e.file
                ));
            }
            if live_anywhere {
                ui.line(
                    "placed in the running node(s) too: localkube imports new archives while it runs (k3s v1.30.9 \
                     and later; the development localkube within 2 s) and at every start",
                );
            } else if running {
                ui.line(&format!(
                    "staged: the {} driver copies it into the node when profile {:?} next starts",
                    drv.kind(),
                    p.name
                ));
            } else {
                ui.line(&format!("localkube imports them when profile {:?} starts", p.name));
            }
            Ok(Code::Ok)
        }
        ImageCmd::List(profile) => {
            let p = Profile::new(home, &profile.profile)?;
            let (dir, _, _) = target(home, &p, ui)?;
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

/// The profile's images directory (from its verified release), whether its
/// localkube runs, and its driver.
fn target<'a>(
    home: &'a Home,
    p: &Profile,
    ui: &'a Ui,
) -> Result<(std::path::PathBuf, bool, Box<dyn crate::driver::Driver + 'a>)> {
    let cfg = p.load()?;
    let loaded = channel::load_stored(home, &cfg.manifest, channel::Stored::RUNNING)?;
    let drv = crate::cluster::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), ui);
    let dir = images::dir_of(&drv.host_data(p), p, &loaded.manifest)?;
    let running = drv.running(p, Node::Server).unwrap_or(false);
    Ok((dir, running, drv))
}

/// An argument that is no file but names an image of the local engine:
/// `docker save`d into a hidden file of the profile's (removed when dropped).
fn from_engine(home: &Home, p: &Profile, arg: &std::path::Path) -> Result<Option<tempfile::NamedTempFile>> {
    if arg.exists() {
        return Ok(None);
    }
    let name = arg.to_string_lossy();
    let is_ref = !name.is_empty()
        && !name.starts_with(['/', '.', '-'])
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if !is_ref {
        return Err(UsageError(format!("{}: no such file (nor an image name)", arg.display())).into());
    }
    let tmp = tempfile::Builder::new()
        .prefix(SAVE_PREFIX)
        .suffix(".tar")
        .tempfile_in(&p.dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot make a file for the saved image: {e}", p.dir.display()))?;
    match crate::driver::docker::save_image(&home.env().docker, &name, tmp.path()) {
        Ok(()) => Ok(Some(tmp)),
        Err(e) if e.is_docker(crate::driver::DockerErrorKind::NoSuchImage) => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

/// Where an image saved from the engine is kept while it is loaded.
const SAVE_PREFIX: &str = ".image-save-";

/// Saves a killed `image load` left behind.
fn sweep_saves(p: &Profile) {
    for e in kubestrap_fskit::list_dir(&p.dir).unwrap_or_default() {
        if e.file_name().to_string_lossy().starts_with(SAVE_PREFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// An archive placed in the stage, put into every running node of the
/// profile (the server, and its agents where the driver runs them): the
/// nodes' names that have it now.
fn deliver(drv: &dyn crate::driver::Driver, p: &Profile, placed: &std::path::Path) -> Result<Vec<String>> {
    let rel = placed.strip_prefix(drv.host_data(p)).unwrap_or(placed);
    let mut nodes = vec![Node::Server];
    if drv.runs_agents()
        && let Ok(cfg) = p.load()
    {
        nodes.extend(crate::cluster::nodes::as_nodes(&crate::cluster::nodes::agents_of(p, &cfg)));
    }
    let mut live = Vec::new();
    for n in nodes {
        if drv.deliver(p, n, rel)? == Delivery::Live {
            live.push(n.name(&p.name));
        }
    }
    Ok(live)
}
