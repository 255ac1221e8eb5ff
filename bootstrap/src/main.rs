//! kubestrap: a local Kubernetes cluster in one command, from one file.

use std::process::ExitCode;

use clap::Parser;

mod apiserver;
mod cli;
mod commands;
mod driver;
mod exit;
mod fetch;
mod fsutil;
mod home;
mod kubeconfig;
mod lifecycle;
mod pki;
mod profile;
mod source;
mod store;
mod trust;
mod ui;
mod unpack;

use cli::Cli;
use exit::Code;
use ui::Ui;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let ui = Ui::new(cli.output);
    let home = match &cli.home {
        Some(h) => Ok(home::Home::new(h.clone())),
        None => home::Home::from_env(),
    };
    let home = match home {
        Ok(h) => h,
        Err(err) => {
            report_error(&ui, &err, Code::Usage, None);
            return ExitCode::from(Code::Usage as u8);
        }
    };
    match commands::run(cli.cmd, &home, &ui) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit::classify(&err);
            let hint = (code == Code::DiskFull).then(|| exit::disk_full_advice(home.root()));
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
        .with_ansi(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .with_target(false)
        .init();
}

fn report_error(ui: &Ui, err: &anyhow::Error, code: Code, hint: Option<String>) {
    if ui.is_json() {
        let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
        ui.json(serde_json::json!({"error": err.to_string(), "causes": causes, "hint": hint, "exit_code": code as u8}));
    }
    let mut msg = format!("error: {err}");
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(&format!("\n  caused by: {c}"));
        }
    }
    if let Some(h) = hint {
        msg.push_str(&format!("\nhint: {h}"));
    }
    eprintln!("{msg}");
}
