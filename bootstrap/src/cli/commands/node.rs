//! `node add|list|delete|logs`: a cluster's nodes.

use anyhow::Result;
use serde_json::json;

use crate::cli::args::NodeCmd;
use crate::cli::exit::Code;
use crate::cli::render::Ui;
use crate::cluster::session::{Force, Wait};
use crate::cluster::{join, node_cmd};
use crate::home::Home;

pub fn run(c: NodeCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match c {
        NodeCmd::Add { profile, count, wait_timeout } => {
            let added = node_cmd::add(home, &profile.profile, count.into(), wait_timeout, ui)?;
            ui.json(json!({"event": "done", "profile": profile.profile, "added": added}));
            ui.line(&format!("\n{} node(s) joined cluster {:?}: {}.", added.len(), profile.profile, added.join(", ")));
        }
        NodeCmd::List { profile } => {
            let list = node_cmd::list(home, &profile.profile, ui)?;
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
            let removed = node_cmd::remove(home, &profile.profile, &name, Force::from_flag(force), ui)?;
            ui.json(json!({"event": "done", "profile": profile.profile, "removed": removed, "drained": !force}));
            ui.line(&format!("\nNode {removed} is removed from cluster {:?}.", profile.profile));
        }
        NodeCmd::JoinCommand { profile } => {
            let line = crate::cluster::join::join_command(home, &profile.profile)?;
            ui.json(json!({"profile": profile.profile, "command": line}));
            ui.line(&line);
        }
        NodeCmd::Join { profile, server, token_file, ca_sha256, name, driver, source, net, wait_timeout, no_wait } => {
            let token = read_token(&token_file, ui)?;
            let o = join::JoinOptions {
                profile: profile.profile.clone(),
                release: super::release_request(&source, &net),
                driver,
                wait: Wait::from_no_wait(no_wait),
                wait_timeout,
                server,
                token,
                ca_sha256,
                node: name,
            };
            let j = join::join(home, &o, ui)?;
            ui.json(json!({"event": "done", "profile": j.profile, "node": j.node, "server": j.server, "host": j.host,
                "ready": j.ready}));
            let how = match j.ready {
                Some(true) => "is Ready",
                _ => "runs (the server's `kubectl get nodes` shows its state)",
            };
            ui.line(&format!("\nNode {} joined {} and {how}.", j.node, j.server));
        }
        NodeCmd::Leave { profile, force } => {
            let node = join::leave(home, &profile.profile, Force::from_flag(force), ui)?;
            ui.json(json!({"event": "done", "profile": profile.profile, "left": node}));
            ui.line(&format!("\nNode {node} left its cluster; profile {:?} is deleted.", profile.profile));
        }
        NodeCmd::Logs { profile, name, lines } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in node_cmd::log_tail(home, &profile.profile, &name, lines, ui)? {
                if writeln!(out, "{l}").is_err() {
                    break;
                }
            }
        }
    }
    Ok(Code::Ok)
}

/// The join token from a file or standard input (`-`), capped; a file
/// others can read is said.
fn read_token(path: &std::path::Path, ui: &Ui) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(4096).read_to_string(&mut text)?;
    } else {
        text = kubestrap_fskit::read_capped_text(path, 4096)?;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            ui.warn(&format!(
                "{} (mode {:04o}) can be read by users other than its owner: the join token is a secret (chmod 600 it)",
                path.display(),
                m.permissions().mode() & 0o7777
            ));
        }
    }
    Ok(text)
}
