//! The CLI layer: each command turns arguments into calls and prints results.

use anyhow::Result;

use crate::cli::Cmd;
use crate::exit::Code;
use crate::home::Home;
use crate::ui::Ui;

mod cache;
mod fetch;
mod manifest;

pub fn run(cmd: Cmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        Cmd::Fetch(args) => fetch::run(args, home, ui),
        Cmd::Cache(c) => cache::run(c, home, ui),
        Cmd::Manifest(c) => manifest::run(c, home, ui),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "kubestrap", &mut std::io::stdout());
            Ok(Code::Ok)
        }
        other => anyhow::bail!("{other:?}: in progress"),
    }
}
