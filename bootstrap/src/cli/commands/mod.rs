//! One function per command: arguments in, calls into the layers below,
//! results rendered. Returns the process exit code.

use anyhow::Result;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::{Cmd, ManifestSource, NetArgs, ProfileCmd};
use super::exit::Code;
use super::render::Ui;
use crate::home::Home;

mod bundle;
mod cache;
mod cluster;
mod doctor;
mod fetch;
mod image;
mod manifest;
mod node;
mod service;
mod signing;
mod upgrade;

/// Runs a command; returns the process exit code.
pub fn run(cmd: Cmd, home: &Home, ui: &Ui) -> Result<u8> {
    let code = match cmd {
        Cmd::Start(a) => cluster::start(a, home, ui)?,
        Cmd::Stop(a) => cluster::stop(a.profile.profile, a.shutdown, a.force, home, ui)?,
        Cmd::Delete(a) => cluster::delete(a, home, ui)?,
        Cmd::Status(a) => return cluster::status(a.profile, home, ui),
        Cmd::Doctor(a) => doctor::run(a, home, ui)?,
        Cmd::Profile(ProfileCmd::List) => cluster::profile_list(home, ui)?,
        Cmd::Node(c) => node::run(c, home, ui)?,
        Cmd::Kubectl { profile, args } => cluster::kubectl(profile, args, home, ui)?,
        Cmd::Logs { profile, follow, lines } => cluster::logs(profile, follow, lines, home, ui)?,
        Cmd::Fetch(args) => fetch::run(args, home, ui)?,
        Cmd::Cache(c) => cache::run(c, home, ui)?,
        Cmd::Manifest(c) => manifest::run(c, home, ui)?,
        Cmd::Keys(c) => signing::keys(c, home, ui)?,
        Cmd::Trust(c) => signing::trust_cmd(c, home, ui)?,
        Cmd::Bundle(c) => bundle::run(c, home, ui)?,
        Cmd::Image(c) => image::run(c, home, ui)?,
        Cmd::Service(a) => service::run(a, home, ui)?,
        Cmd::Install(a) => bundle::install(a, home, ui)?,
        Cmd::Upgrade(a) => upgrade::upgrade(*a, home, ui)?,
        Cmd::Rollback(a) => upgrade::rollback(a, home, ui)?,
        Cmd::Snapshot(c) => upgrade::snapshot(c, home, ui)?,
        Cmd::SelfUpdate(a) => upgrade::self_update(a, home, ui)?,
        Cmd::Config(c) => upgrade::config(c, home, ui)?,
        Cmd::Layout => {
            println!("{}", crate::home::LAYOUT);
            Code::Ok
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut super::args::Cli::command(), "kubestrap", &mut std::io::stdout());
            Code::Ok
        }
        Cmd::Man { out: None } => {
            let (_, page) = man_pages()?.swap_remove(0);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &page)?;
            Code::Ok
        }
        Cmd::Man { out: Some(dir) } => {
            let written = write_man_pages(&dir)?;
            ui.json(serde_json::json!({"man_pages": written.len(), "dir": dir}));
            ui.line(&format!("wrote {} manual pages to {}", written.len(), dir.display()));
            Code::Ok
        }
        Cmd::HashInfo => {
            println!("sha256: {}", crate::artifacts::hash::backend());
            Code::Ok
        }
        Cmd::KvmProbe => match crate::driver::qemu::kvm::probe_in_this_process() {
            Ok(()) => Code::Ok,
            Err(e) => {
                eprintln!("{e}");
                Code::Internal
            }
        },
        Cmd::Monitor { run_dir } => {
            crate::driver::supervisor::monitor::main(&run_dir, &home.env().vars)?;
            Code::Ok
        }
    };
    Ok(code as u8)
}

/// Download options from the command line.
pub fn fetch_options(net: &NetArgs) -> crate::artifacts::Options {
    crate::artifacts::Options {
        offline: net.offline,
        ca_cert: net.ca_cert.clone(),
        jobs: net.jobs.into(),
        speed_limit: net.speed_limit,
        speed_time: net.speed_time,
        ..Default::default()
    }
}

/// This kubestrap's own executable, when it carries a bundle's payload (a
/// cheap check of its last bytes, made on every run that could use one).
pub fn own_bundle() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    kubestrap_bundle::Payload::detect(&exe).then_some(exe)
}

/// The bundle a command starts from: `--from-bundle`, else this
/// kubestrap's own payload unless a manifest is named.
pub fn bundle_of(src: &ManifestSource) -> Option<PathBuf> {
    src.from_bundle.clone().or_else(|| if src.manifest.is_none() { own_bundle() } else { None })
}

/// The release `start` or `node join` asks for.
pub fn release_request(src: &ManifestSource, net: &NetArgs) -> crate::cluster::ReleaseRequest {
    crate::cluster::ReleaseRequest {
        manifest: src.manifest.clone(),
        bundle: bundle_of(src),
        allow_expired: src.allow_expired,
        fetch: fetch_options(net),
    }
}

/// The manifest a command names (or its bundle's), verified and recorded,
/// and the download options for its artifacts: a bundle's payload is asked
/// first, and then nothing is downloaded.
pub fn load_manifest(
    home: &Home,
    src: &ManifestSource,
    net: &NetArgs,
    ui: &Ui,
) -> Result<(crate::channel::Loaded, crate::artifacts::Options)> {
    let mut opts = fetch_options(net);
    match bundle_of(src) {
        Some(path) => {
            let (loaded, payload) = crate::channel::bundle::load(home, &path, src.allow_expired, ui)?;
            opts.offline = true;
            opts.catalogs.push(Arc::new(crate::artifacts::source::BundleCatalog(payload)));
            Ok((loaded, opts))
        }
        None => Ok((crate::channel::load(home, src.manifest.as_deref(), &opts, src.allow_expired, ui)?, opts)),
    }
}

/// The manual pages made from the command line's own definitions:
/// `kubestrap.1` first, then `kubestrap-<command>[-<sub>].1` for each
/// command that is not hidden.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    use clap::CommandFactory;
    fn walk(cmd: clap::Command, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let name = if prefix.is_empty() { cmd.get_name().to_string() } else { format!("{prefix}-{}", cmd.get_name()) };
        let subs: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone().display_name(name.clone()).bin_name(name.replace('-', " ")))
            .render(&mut page)?;
        out.push((format!("{name}.1"), page));
        for sub in subs {
            walk(sub, &name, out)?;
        }
        Ok(())
    }
    let mut cmd = super::args::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, "", &mut out)?;
    Ok(out)
}

/// Writes [`man_pages`] into `dir` (each atomically); returns their paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    kubestrap_fskit::create_dir_mode(dir, 0o755)?;
    man_pages()?
        .into_iter()
        .map(|(name, page)| {
            let path = dir.join(name);
            kubestrap_fskit::write_atomic(&path, &page, 0o644)?;
            Ok(path)
        })
        .collect()
}
