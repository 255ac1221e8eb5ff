//! `service NAME`: a Service's URLs on this machine.

use anyhow::Result;
use serde_json::json;

use crate::cli::args::ServiceArgs;
use crate::cli::exit::Code;
use crate::cli::render::Ui;
use crate::cluster::service::{self, Wanted};
use crate::home::Home;

pub fn run(a: ServiceArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let want = Wanted { profile: a.profile.profile, namespace: a.namespace, name: a.name, port: a.port };
    let r = service::reach(home, &want, ui)?;
    ui.json(json!(r));
    if a.url {
        for u in &r.urls {
            ui.line(&u.url);
        }
    } else {
        ui.line(&format!("{:<12} {:<10} {:<10} {}", "PORT", "TARGET", "NODEPORT", "URL"));
        for u in &r.urls {
            let port = if u.name.is_empty() { u.port.to_string() } else { format!("{}/{}", u.name, u.port) };
            ui.line(&format!("{:<12} {:<10} {:<10} {}", port, r.service, u.node_port, u.url));
        }
    }
    if a.open {
        let opener = std::env::split_paths(&home.env().path).map(|d| d.join("xdg-open")).find(|p| p.is_file());
        match opener {
            None => ui.warn("no xdg-open on PATH to open a browser with: the URL is above"),
            Some(o) => {
                for u in &r.urls {
                    let opened = std::process::Command::new(&o)
                        .arg(&u.url)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn();
                    if let Err(e) = opened {
                        ui.warn(&format!("{} {}: {e}", o.display(), u.url));
                    }
                }
            }
        }
    }
    Ok(Code::Ok)
}
