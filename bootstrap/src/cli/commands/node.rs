//! `node add|list|delete|logs`: a cluster's nodes.

use anyhow::Result;
use serde_json::json;

use crate::cli::args::NodeCmd;
use crate::cli::exit::Code;
use crate::cli::render::Ui;
use crate::cluster::nodes;
use crate::home::Home;

pub fn run(c: NodeCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match c {
        NodeCmd::Add { profile, count, wait_timeout } => {
            let added = nodes::add(home, &profile.profile, count.into(), wait_timeout, ui)?;
            ui.json(json!({"event": "done", "profile": profile.profile, "added": added}));
            ui.line(&format!("\n{} node(s) joined cluster {:?}: {}.", added.len(), profile.profile, added.join(", ")));
        }
        NodeCmd::List { profile } => {
            let list = nodes::list(home, &profile.profile, ui)?;
            ui.json(json!({"profile": profile.profile, "nodes": list}));
            ui.line(&format!("{:<36} {:<7} {:<10} {}", "NAME", "ROLE", "HOST", "READY"));
            for n in &list {
                ui.line(&format!("{:<36} {:<7} {:<10} {}", n.name, n.role, n.host, n.ready));
                if let Some(c) = &n.crash {
                    ui.line(&format!("  {c}"));
                }
            }
        }
        NodeCmd::Delete { profile, name, force } => {
            let removed = nodes::remove(home, &profile.profile, &name, force, ui)?;
            ui.json(json!({"event": "done", "profile": profile.profile, "removed": removed, "drained": !force}));
            ui.line(&format!("\nNode {removed} is removed from cluster {:?}.", profile.profile));
        }
        NodeCmd::Logs { profile, name, lines } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in nodes::log_tail(home, &profile.profile, &name, lines, ui)? {
                if writeln!(out, "{l}").is_err() {
                    break;
                }
            }
        }
    }
    Ok(Code::Ok)
}
