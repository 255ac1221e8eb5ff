//! `bundle create|inspect|verify|extract` and `install`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use kubestrap_bundle::{self as bundle, Name, Payload, Writer};
use kubestrap_fskit::{self as fskit, caps};
use kubestrap_manifest::{Driver, Manifest, Sha256, Target};
use kubestrap_signing::TrustPath;
use serde_json::json;

use crate::artifacts::hash::HashingReader;
use crate::artifacts::source::{BundleCatalog, DirCatalog, FailureKind, SourceFailure};
use crate::artifacts::{self, FetchError, Job, StoreError};
use crate::channel::{self, BUILTIN_ANCHOR, Inspected};
use crate::cli::args::{BundleCmd, BundleCreateArgs, InstallArgs};
use crate::cli::exit::{Code, UsageError};
use crate::cli::render::{Ui, human_bytes};
use crate::home::Home;
use crate::progress::{Download, Event, Progress};

pub fn run(cmd: BundleCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        BundleCmd::Create(a) => create(*a, home, ui),
        BundleCmd::Inspect { file, allow_expired } => {
            let (payload, i) = open_and_inspect(home, &file, allow_expired)?;
            show(&payload, &i, ui);
            Ok(Code::Ok)
        }
        BundleCmd::Verify { file, allow_expired } => {
            let t = Instant::now();
            let (payload, i) = open_and_inspect(home, &file, allow_expired)?;
            let n = verify_artifacts(&payload, &i.manifest, ui)?;
            ui.json(json!({"bundle": file, "verified": true, "artifacts": n, "manifest": i.manifest.id()}));
            ui.result(
                &format!("bundle {} verified", file.display()),
                &format!("{} signed manifest, {n} artifact(s) match it", i.manifest.id()),
                t.elapsed(),
            );
            Ok(Code::Ok)
        }
        BundleCmd::Extract { file, dir, allow_expired } => extract(home, &file, &dir, allow_expired, ui),
    }
}

fn open_and_inspect(home: &Home, file: &Path, allow_expired: bool) -> Result<(Payload, Inspected)> {
    let payload = channel::bundle::open(file)?;
    let i = channel::bundle::inspect(home, &payload, allow_expired)?;
    Ok((payload, i))
}

/// The artifacts of a manifest for some targets and drivers, by sha256.
fn jobs(m: &Manifest, targets: &[Target], drivers: &[Driver]) -> Result<BTreeMap<Sha256, Job>> {
    let mut out = BTreeMap::new();
    for t in targets {
        for d in drivers {
            for j in artifacts::jobs_for(m, t, *d)? {
                out.insert(j.artifact.sha256, j);
            }
        }
    }
    Ok(out)
}

/// The key lists (oldest first) of the chain a manifest was trusted through.
fn chain_files(home: &Home, path: &TrustPath) -> Result<Vec<(u64, PathBuf)>> {
    let anchor = match path {
        TrustPath::Release { .. } => BUILTIN_ANCHOR.to_string(),
        TrustPath::PinnedRelease { pinned_root, .. } => pinned_root.to_string(),
        TrustPath::Pinned { .. } => return Ok(Vec::new()),
    };
    let mut out: Vec<(u64, PathBuf)> = fskit::list_dir(&home.keys().join(anchor))?
        .into_iter()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            Some((n.strip_prefix("keys-")?.strip_suffix(".toml")?.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Where the executable in front of a bundle ends: the whole file, or up
/// to its own payload.
fn stub_of(path: &Path) -> Result<u64> {
    if Payload::detect(path) {
        return Ok(Payload::open(path)?.stub_len());
    }
    Ok(std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len())
}

/// Reports bytes of one entry being written or checked, as a download.
fn entry_progress<'a>(ui: &'a Ui, label: &'a str) -> impl FnMut(u64) + 'a {
    let mut last = Instant::now();
    move |done| {
        if last.elapsed().as_millis() >= 100 {
            ui.report(Event::Download(Download::Progress { label, done }));
            last = Instant::now();
        }
    }
}

/// `bundle create`. Long on purpose: the manifest, its artifacts and the
/// payload are gathered and written as one sequence the reader follows.
fn create(a: BundleCreateArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let _store =
        home.store_lock(false, || ui.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let mut opts = super::fetch_options(&a.net);
    let loaded = channel::load(home, Some(&a.manifest), &opts, a.allow_expired, ui)?;
    let m = &loaded.manifest;
    let targets = if a.targets.is_empty() { vec![Target::host()] } else { a.targets.clone() };
    let drivers = if a.drivers.is_empty() {
        m.component.localkube.drivers.clone().unwrap_or_else(|| vec![Driver::Native])
    } else {
        a.drivers.clone()
    };
    let jobs = jobs(m, &targets, &drivers)?;
    if let Some(dir) = &a.artifacts {
        opts.catalogs.push(Arc::new(DirCatalog::new(dir.clone(), m)));
    }
    opts.offline |= a.from_cache;
    let list: Vec<Job> = jobs.values().cloned().collect();
    artifacts::fetch_all(home, &list, &opts, ui)?;

    let stub = match &a.stub {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this kubestrap's executable")?,
    };
    let stub_len = stub_of(&stub)?;
    let mut w = Writer::create(
        &a.out,
        &mut File::open(&stub).with_context(|| format!("cannot read {}", stub.display()))?,
        stub_len,
    )?;
    let small = |w: &mut Writer, name: &str, path: &Path, cap: u64| -> Result<()> {
        let bytes = fskit::read_capped(path, cap)?;
        w.add(name, &mut &bytes[..], bytes.len() as u64, &mut |_| {})?;
        Ok(())
    };
    small(&mut w, bundle::MANIFEST, &loaded.path, caps::DOCUMENT)?;
    small(&mut w, bundle::SIGNATURE, &fskit::signature_path(&loaded.path), caps::SIGNATURE)?;
    let chain = chain_files(home, &loaded.trusted.path)?;
    for (v, p) in &chain {
        let name = bundle::key_list_name(*v);
        small(&mut w, &name, p, caps::DOCUMENT)?;
        small(&mut w, &format!("{name}.minisig"), &fskit::signature_path(p), caps::SIGNATURE)?;
    }
    let mut payload_bytes = 0;
    for (sha, job) in &jobs {
        let size = job.artifact.size.get();
        let label = format!("bundle: {}", job.label);
        ui.report(Event::Download(Download::Start { label: &label, size, cached: false }));
        let started = Instant::now();
        let blob = home.blob(sha);
        // Hashed again as it is copied: a store damaged since it was
        // verified never ends up in a bundle.
        let mut r = HashingReader::new(File::open(&blob).with_context(|| format!("cannot read {}", blob.display()))?);
        w.add(&bundle::artifact_name(&sha.hex()), &mut r, size, &mut entry_progress(ui, &label))?;
        let (actual, _) = r.finish()?;
        if actual != *sha {
            return Err(StoreError::Corrupt { path: blob, reason: format!("its sha256 is now {actual}") }.into());
        }
        ui.report(Event::Download(Download::Done { label: &label, downloaded: size, elapsed: started.elapsed() }));
        payload_bytes += size;
    }
    w.finish()?;
    let total = std::fs::metadata(&a.out)?.len();
    let overhead = total - stub_len - payload_bytes;
    ui.json(json!({"bundle": a.out, "manifest": m.id(), "size": total, "stub": stub_len, "artifacts": jobs.len(),
        "artifact_bytes": payload_bytes, "key_lists": chain.len(), "overhead_bytes": overhead, "elapsed_ms": t.elapsed().as_millis() as u64}));
    ui.result(
        &format!("bundle {} written", a.out.display()),
        &format!(
            "{}: kubestrap {} + {} artifact(s) {} + manifest and {} key list(s): {} in all",
            m.id(),
            human_bytes(stub_len),
            jobs.len(),
            human_bytes(payload_bytes),
            chain.len(),
            human_bytes(total)
        ),
        t.elapsed(),
    );
    Ok(Code::Ok)
}

fn show(payload: &Payload, i: &Inspected, ui: &Ui) {
    let m = &i.manifest;
    let entries: Vec<_> = payload.entries().iter().map(|e| json!({"name": e.name, "size": e.size})).collect();
    let size = std::fs::metadata(payload.path()).map(|m| m.len()).unwrap_or(0);
    ui.json(json!({
        "bundle": payload.path(), "size": size, "stub": payload.stub_len(), "manifest": m.id(), "channel": m.channel,
        "version": m.version, "kubernetes": m.kubernetes.to_string(), "expires": kubestrap_manifest::rfc3339(m.expires),
        "signer": i.trusted.path.key_id().to_string(), "trust": i.trusted.path.to_string(),
        "pinned": i.trusted.path.via_pinned_key(), "warnings": i.warnings, "entries": entries,
        "summary": m.summary(),
    }));
    for w in &i.warnings {
        ui.warn(w);
    }
    ui.line(&format!("{}: kubestrap bundle, {}", payload.path().display(), human_bytes(size)));
    ui.line(&format!("  kubestrap:  {} (the executable in front)", human_bytes(payload.stub_len())));
    ui.line(&format!(
        "  manifest:   channel {} version {}, Kubernetes {}, expires {}",
        m.channel,
        m.version,
        m.kubernetes,
        kubestrap_manifest::rfc3339(m.expires)
    ));
    ui.line(&format!("  signed:     key {} — {}", i.trusted.path.key_id(), i.trusted.path));
    let pinned = m.all_artifacts();
    for e in payload.entries() {
        let what = match Name::parse(&e.name) {
            Some(Name::Artifact(hex)) => pinned
                .iter()
                .find(|(_, _, a)| a.sha256.hex() == hex)
                .map(|(label, t, _)| format!("{label} ({t})"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        ui.line(&format!("  {:<80} {:>10}  {what}", e.name, human_bytes(e.size)));
    }
}

/// Hashes every artifact entry against the manifest's pin. Returns how many.
fn verify_artifacts(payload: &Payload, m: &Manifest, ui: &Ui) -> Result<usize> {
    let pinned = m.all_artifacts();
    let mut n = 0;
    for e in payload.entries() {
        let Some(Name::Artifact(hex)) = Name::parse(&e.name) else { continue };
        let label = format!("verify: {}", e.name);
        ui.report(Event::Download(Download::Start { label: &label, size: e.size, cached: false }));
        let t = Instant::now();
        let mut r = HashingReader::new(payload.reader(e)?);
        let mut progress = entry_progress(ui, &label);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = r.read(&mut buf).with_context(|| format!("cannot read {}", payload.path().display()))?;
            if k == 0 {
                break;
            }
            progress(r.count);
        }
        let (actual, size) = r.finish()?;
        let want = pinned.iter().find(|(_, _, a)| a.sha256.hex() == hex).map(|(_, _, a)| a.sha256);
        if want != Some(actual) || size != e.size {
            let source = channel::bundle::label(payload, &e.name);
            let expected: Sha256 = hex.parse().map_err(anyhow::Error::msg)?;
            return Err(FetchError::AllFailed {
                label: e.name.clone(),
                failures: vec![SourceFailure {
                    source,
                    kind: FailureKind::HashMismatch { expected, actual },
                    message: format!("sha256 mismatch: the manifest says {expected}, the bundle holds {actual}; the bundle is damaged or tampered with"),
                }],
            }
            .into());
        }
        ui.report(Event::Download(Download::Done { label: &label, downloaded: size, elapsed: t.elapsed() }));
        n += 1;
    }
    Ok(n)
}

fn extract(home: &Home, file: &Path, dir: &Path, allow_expired: bool, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let (payload, i) = open_and_inspect(home, file, allow_expired)?;
    verify_artifacts(&payload, &i.manifest, ui)?;
    // Every name was checked against the few a bundle holds: relative,
    // no `..`, at most one directory deep.
    for e in payload.entries() {
        let dest = dir.join(&e.name);
        if let Some(parent) = dest.parent() {
            fskit::create_dir_mode(parent, 0o755)?;
        }
        let mut entry = payload.reader(e)?;
        fskit::write_atomic_with(&dest, 0o644, |out| std::io::copy(&mut entry, out))?;
        ui.json(json!({"extracted": dest, "size": e.size}));
    }
    fskit::sync_dir(dir)?;
    ui.result(
        &format!("extracted {}", file.display()),
        &format!("{} entries into {}", payload.entries().len(), dir.display()),
        t.elapsed(),
    );
    Ok(Code::Ok)
}

/// `~/.local/bin` (the XDG bin directory).
fn default_bin_dir() -> Result<PathBuf> {
    directories::BaseDirs::new()
        .and_then(|d| d.executable_dir().map(Path::to_path_buf))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin")))
        .ok_or_else(|| UsageError("cannot find a bin directory: set HOME, or pass --bin-dir".into()).into())
}

pub fn install(a: InstallArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let path = a.from_bundle.clone().or_else(super::own_bundle).ok_or_else(|| {
        UsageError(
            "install takes everything from an offline bundle: run it from one (./kubestrap-<release>-<os>-<arch> install), or name one with --from-bundle FILE".into(),
        )
    })?;
    let _store =
        home.store_lock(false, || ui.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let (loaded, payload) = channel::bundle::load(home, &path, a.allow_expired, ui)?;
    // Everything the bundle carries goes into the store (it is for this
    // machine's targets and drivers), streamed and verified in one pass.
    let m = &loaded.manifest;
    let jobs: Vec<Job> = m
        .all_artifacts()
        .into_iter()
        .filter(|(_, _, art)| payload.entry(&bundle::artifact_name(&art.sha256.hex())).is_some())
        .map(|(label, target, artifact)| Job { label: format!("{label} ({target})"), artifact })
        .collect();
    let opts = artifacts::Options {
        offline: true,
        catalogs: vec![Arc::new(BundleCatalog(payload.clone()))],
        ..Default::default()
    };
    artifacts::fetch_all(home, &jobs, &opts, ui)?;
    channel::set_default(home, &loaded.path)?;

    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => default_bin_dir()?,
    };
    fskit::create_dir_mode(&bin_dir, 0o755)?;
    let mut stub = Vec::new();
    File::open(&path)?.take(payload.stub_len()).read_to_end(&mut stub)?;
    let exe = bin_dir.join("kubestrap");
    fskit::write_atomic(&exe, &stub, 0o755)?;
    // The manual beside the executable, where man finds it (PREFIX/bin →
    // PREFIX/share/man: ~/.local/share/man for ~/.local/bin).
    let man_dir = bin_dir.parent().unwrap_or(&bin_dir).join("share/man/man1");
    let man = match super::write_man_pages(&man_dir) {
        Ok(pages) => Some(pages.len()),
        Err(e) => {
            ui.warn(&format!("the manual pages were not installed: {e:#} (`kubestrap man --out DIR` writes them)"));
            None
        }
    };
    ui.json(json!({"installed": exe, "manifest": m.id(), "artifacts": jobs.len(), "man_dir": man.map(|_| &man_dir),
        "elapsed_ms": t.elapsed().as_millis() as u64}));
    ui.result(
        &format!("installed {}", exe.display()),
        &format!(
            "{} and its {} artifact(s) are in {}; `kubestrap start` uses them offline",
            m.id(),
            jobs.len(),
            home.root().display()
        ),
        t.elapsed(),
    );
    let on_path = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == bin_dir));
    if !on_path {
        ui.line(&format!(
            "\n{} is not on your PATH. Add it (bash/zsh: `echo 'export PATH=\"{}:$PATH\"' >> ~/.bashrc`, then open a new shell).",
            bin_dir.display(),
            bin_dir.display()
        ));
    }
    if let Some(n) = man {
        ui.line(&format!("Manual: man kubestrap ({n} pages in {})", man_dir.display()));
    }
    ui.line(
        "Shell completions: kubestrap completions bash > ~/.local/share/bash-completion/completions/kubestrap\n                   (zsh: a directory on $fpath as _kubestrap; fish: ~/.config/fish/completions/kubestrap.fish)",
    );
    Ok(Code::Ok)
}
