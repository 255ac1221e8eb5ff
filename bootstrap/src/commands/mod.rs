//! The CLI layer: each command turns arguments into calls and prints results.

use anyhow::Result;

use crate::cli::{Cmd, NetArgs, ProfileCmd};
use crate::exit::Code;
use crate::home::Home;
use crate::ui::Ui;

mod cache;
mod cluster;
mod fetch;
mod manifest;
mod signing;

/// Runs a command; returns the process exit code.
pub fn run(cmd: Cmd, home: &Home, ui: &Ui) -> Result<u8> {
    let code = match cmd {
        Cmd::Start(a) => cluster::start(a, home, ui)?,
        Cmd::Stop(a) => cluster::stop(a.profile, home, ui)?,
        Cmd::Delete(a) => cluster::delete(a, home, ui)?,
        Cmd::Status(a) => return cluster::status(a.profile, home, ui),
        Cmd::Profile(ProfileCmd::List) => cluster::profile_list(home, ui)?,
        Cmd::Kubectl { profile, args } => cluster::kubectl(profile, args, home)?,
        Cmd::Logs { profile, follow, lines } => cluster::logs(profile, follow, lines, home)?,
        Cmd::Fetch(args) => fetch::run(args, home, ui)?,
        Cmd::Cache(c) => cache::run(c, home, ui)?,
        Cmd::Manifest(c) => manifest::run(c, home, ui)?,
        Cmd::Keys(c) => signing::keys(c, home, ui)?,
        Cmd::Trust(c) => signing::trust_cmd(c, home, ui)?,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "kubestrap", &mut std::io::stdout());
            Code::Ok
        }
        Cmd::Monitor { run_dir } => {
            crate::driver::monitor::main(&run_dir)?;
            Code::Ok
        }
    };
    Ok(code as u8)
}

/// Download options from the command line.
pub fn fetch_options(net: &NetArgs) -> crate::fetch::Options {
    crate::fetch::Options {
        offline: net.offline,
        ca_cert: net.ca_cert.clone(),
        jobs: net.jobs.max(1),
        ..Default::default()
    }
}
