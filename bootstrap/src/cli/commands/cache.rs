use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use anyhow::Result;
use kubestrap_manifest::Sha256;
use serde_json::json;

use kubestrap_fskit as fskit;

use crate::artifacts::{self, hash, store};
use crate::channel;
use crate::cli::args::CacheCmd;
use crate::cli::exit::Code;
use crate::cli::render::{Ui, human_bytes};
use crate::home::Home;
use crate::progress::Progress;

pub fn run(cmd: CacheCmd, home: &Home, ui: &Ui) -> Result<Code> {
    // Removing from the cache waits for (and blocks) commands using it.
    let removes = matches!(cmd, CacheCmd::Verify | CacheCmd::Prune { dry_run: false });
    let _store = home.store_lock(removes, || ui.warn("waiting for other kubestrap commands using the cache…"))?;
    match cmd {
        CacheCmd::List => list(home, ui),
        CacheCmd::Verify => verify(home, ui),
        CacheCmd::Prune { dry_run } => prune(home, ui, dry_run),
        CacheCmd::Unpack { source, driver, net } => unpack(home, ui, source, driver, &net),
    }
}

fn unpack(
    home: &Home,
    ui: &Ui,
    src: crate::cli::args::ManifestSource,
    driver: kubestrap_manifest::Driver,
    net: &crate::cli::args::NetArgs,
) -> Result<Code> {
    let (loaded, opts) = super::load_manifest(home, &src, net, ui)?;
    let jobs = artifacts::jobs_for(&loaded.manifest, &kubestrap_manifest::Target::host(), driver)?;
    artifacts::fetch_all(home, &jobs, &opts, ui)?;
    for job in &jobs {
        let t = std::time::Instant::now();
        let dir = store::ensure_component(home, &job.artifact)?;
        ui.json(json!({"artifact": job.label, "dir": dir, "elapsed_ms": t.elapsed().as_millis() as u64}));
        ui.result(&format!("unpacked {}", job.label), &dir.display().to_string(), t.elapsed());
    }
    Ok(Code::Ok)
}

/// For every blob hash: which manifests use it, as `component version (target) in channel-version`.
fn references(home: &Home) -> Result<BTreeMap<Sha256, Vec<String>>> {
    let mut refs: BTreeMap<Sha256, Vec<String>> = BTreeMap::new();
    for (_, m) in channel::stored(home)? {
        for (label, target, a) in m.all_artifacts() {
            refs.entry(a.sha256).or_default().push(format!("{label} ({target}) in {}", m.id()));
        }
    }
    Ok(refs)
}

fn list(home: &Home, ui: &Ui) -> Result<Code> {
    let refs = references(home)?;
    let blobs = store::list_blobs(home)?;
    let mut total = 0;
    for (sha, size) in &blobs {
        let unpacked = home.component(sha).join(store::COMPLETE).is_file();
        let tree = if unpacked { fskit::tree_size(&home.component(sha)) } else { 0 };
        total += size + tree;
        let used_by = refs.get(sha).cloned().unwrap_or_default();
        ui.json(json!({"sha256": sha.hex(), "size": size, "unpacked_size": tree, "used_by": used_by}));
        let uses = if used_by.is_empty() { "unreferenced".to_string() } else { used_by.join("; ") };
        let tree = if unpacked { format!(" + {} unpacked", human_bytes(tree)) } else { String::new() };
        ui.line(&format!("{}  {:>10}{tree}  {uses}", sha.short(), human_bytes(*size)));
    }
    ui.line(&format!("{} blob(s), {} in {}", blobs.len(), human_bytes(total), home.root().display()));
    Ok(Code::Ok)
}

fn verify(home: &Home, ui: &Ui) -> Result<Code> {
    // What killed unpacks and removals left is not corruption: swept quietly.
    store::sweep_unpacking(home, None);
    ui.unswept(fskit::sweep_trash(&home.components()));
    let mut bad = 0;
    let blobs = store::list_blobs(home)?;
    for (sha, _) in &blobs {
        let path = home.blob(sha);
        let ok = hash::hash_file(&path).is_ok_and(|(actual, _)| actual == *sha);
        if !ok {
            bad += 1;
            fskit::remove_tree(&path)?;
            fskit::remove_tree(&home.component(sha))?;
            ui.warn(&format!("{}: corrupt, removed (it will be downloaded again when needed)", path.display()));
        }
        ui.json(json!({"blob": sha.hex(), "ok": ok}));
    }
    let components = store::list_components(home)?;
    for (name, complete) in &components {
        let dir = home.components().join(name);
        let problems = if *complete {
            store::verify_component(&dir).unwrap_or_else(|e| vec![e.to_string()])
        } else {
            vec!["no .complete marker (interrupted unpack)".to_string()]
        };
        if !problems.is_empty() {
            bad += 1;
            fskit::remove_tree(&dir)?;
            ui.warn(&format!(
                "{}: {} damaged, removed (it will be unpacked again): {}",
                dir.display(),
                problems.len(),
                problems.join(", ")
            ));
        }
        ui.json(json!({"component": name, "ok": problems.is_empty()}));
    }
    ui.line(&format!(
        "checked {} blob(s) and {} component tree(s): {}",
        blobs.len(),
        components.len(),
        if bad == 0 { "all good".to_string() } else { format!("{bad} removed") }
    ));
    Ok(if bad == 0 { Code::Ok } else { Code::CorruptCache })
}

fn prune(home: &Home, ui: &Ui, dry_run: bool) -> Result<Code> {
    if !dry_run {
        store::sweep_unpacking(home, None);
        ui.unswept(fskit::sweep_trash(&home.components()));
        ui.unswept(fskit::sweep_trash(home.root()));
    }
    // Keep: every manifest a profile uses, and the newest of each channel.
    let stored = channel::stored(home)?;
    let in_use: BTreeSet<_> = crate::cluster::snapshot::all_manifest_paths(home)?;
    let mut newest_seen = BTreeSet::new();
    let mut keep_manifests = Vec::new();
    let mut removed = Vec::new();
    for (path, m) in &stored {
        let newest = newest_seen.insert(m.channel.clone());
        if newest || in_use.contains(path) {
            keep_manifests.push(m);
        } else {
            removed.push(path.clone());
            removed.push(fskit::signature_path(path));
        }
    }
    let keep: BTreeSet<Sha256> =
        keep_manifests.iter().flat_map(|m| m.all_artifacts()).map(|(_, _, a)| a.sha256).collect();
    let mut freed = 0;
    for (sha, size) in store::list_blobs(home)? {
        if !keep.contains(&sha) {
            freed += size + fskit::tree_size(&home.component(&sha));
            removed.push(home.blob(&sha));
            removed.push(home.component(&sha));
        }
    }
    for (name, _) in store::list_components(home)? {
        let keep_tree = name.parse::<Sha256>().is_ok_and(|s| keep.contains(&s));
        if !keep_tree && !removed.contains(&home.components().join(&name)) {
            freed += fskit::tree_size(&home.components().join(&name));
            removed.push(home.components().join(&name));
        }
    }
    if let Ok(rd) = fs::read_dir(home.partials()) {
        for e in rd.flatten() {
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            removed.push(e.path());
        }
    }
    for path in &removed {
        if path.exists() || fs::symlink_metadata(path).is_ok() {
            ui.json(json!({"remove": path, "dry_run": dry_run}));
            ui.line(&format!("{} {}", if dry_run { "would remove" } else { "removed" }, path.display()));
            if !dry_run {
                fskit::remove_tree(path)?;
            }
        }
    }
    ui.line(&format!("{} {}", if dry_run { "would free" } else { "freed" }, human_bytes(freed)));
    Ok(Code::Ok)
}
