//! The command line: clap definitions ([`args`]), one function per command
//! ([`commands`]), the renderer of progress and results ([`render`]) and the
//! one place errors become exit codes ([`exit`]).

use std::process::ExitCode;

use clap::Parser;

pub mod args;
mod code;
mod commands;
mod env;
pub mod exit;
pub mod render;

use args::Cli;
use exit::Code;
use render::Ui;

use crate::home::Home;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let ui = Ui::new(cli.output);
    let environment = env::read();
    if let Some((at, log)) = env::kill_point() {
        crate::killpoint::arm(at, log);
    }
    let home = match cli.home.clone().filter(|h| !h.as_os_str().is_empty()).or_else(env::home_dir) {
        Some(h) => Home::open(h, environment),
        None => Err(crate::home::HomeError::Unknown),
    };
    let home = match home {
        Ok(h) => h,
        Err(err) => {
            let err = anyhow::Error::new(err);
            let (code, hint) = exit::classify(&err, None);
            report_error(&ui, &err, code, hint);
            return ExitCode::from(code as u8);
        }
    };
    tracing::debug!("kubestrap {} (home {})", env!("CARGO_PKG_VERSION"), home.root().display());
    let ran = commands::run(cli.cmd, &home, &ui);
    for note in home.take_notes() {
        ui.warn(&note);
    }
    match ran {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let (code, hint) = exit::classify(&err, Some(home.root()));
            report_error(&ui, &err, code, hint);
            ExitCode::from(code as u8)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "kubestrap=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBESTRAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(render::stderr_color())
        .with_target(false)
        .init();
}

/// Prints an error (and its causes, and a hint) on stderr, and as one JSON
/// object with `-o json`. Any URL in it is shown without its secrets.
fn report_error(ui: &Ui, err: &anyhow::Error, code: Code, hint: Option<String>) {
    let redact = crate::urls::redact_text;
    let top = redact(&err.to_string());
    let causes: Vec<String> = err.chain().skip(1).map(|c| redact(&c.to_string())).collect();
    ui.json(serde_json::json!({"error": top, "causes": causes, "hint": hint, "exit_code": code as u8}));
    let mut msg = format!("error: {top}");
    for c in &causes {
        if !msg.contains(c.as_str()) {
            msg.push_str(&format!("\n  caused by: {c}"));
        }
    }
    if let Some(h) = hint {
        msg.push_str(&format!("\nhint: {h}"));
    }
    eprintln!("{msg}");
}
