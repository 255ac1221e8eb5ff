//! The CLI layer: each command turns arguments into calls and prints results.

use anyhow::Result;

use crate::cli::{Cmd, NetArgs};
use crate::exit::Code;
use crate::home::Home;
use crate::ui::Ui;

mod cache;
mod fetch;
mod manifest;
mod signing;

pub fn run(cmd: Cmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        Cmd::Fetch(args) => fetch::run(args, home, ui),
        Cmd::Cache(c) => cache::run(c, home, ui),
        Cmd::Manifest(c) => manifest::run(c, home, ui),
        Cmd::Keys(c) => signing::keys(c, home, ui),
        Cmd::Trust(c) => signing::trust_cmd(c, home, ui),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "kubestrap", &mut std::io::stdout());
            Ok(Code::Ok)
        }
        other => anyhow::bail!("{other:?}: in progress"),
    }
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
