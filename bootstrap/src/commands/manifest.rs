use std::path::Path;

use anyhow::Result;
use kubestrap_manifest::Manifest;
use serde_json::json;

use crate::cli::ManifestCmd;
use crate::exit::Code;
use crate::home::Home;
use crate::ui::{Ui, human_bytes};

pub fn run(cmd: ManifestCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        ManifestCmd::Check { file } => check(&file, ui),
        other => super::signing::manifest(other, home, ui),
    }
}

fn check(file: &Path, ui: &Ui) -> Result<Code> {
    let m = Manifest::load(file)?;
    let s = m.summary();
    ui.json(serde_json::to_value(&s)?);
    ui.line(&format!("{}: valid manifest, schema {}", file.display(), m.schema));
    ui.line(&format!("  channel {} version {}, Kubernetes {}", s.channel, s.version, s.kubernetes));
    ui.line(&format!(
        "  published {}, expires {}, requires kubestrap {}",
        s.published, s.expires, s.requires_bootstrap
    ));
    for c in &s.components {
        ui.line(&format!(
            "  {:<11} {:<16} drivers: {:<12} targets: {} ({})",
            c.name,
            c.version,
            c.drivers.join(","),
            c.targets.join(", "),
            human_bytes(c.bytes)
        ));
    }
    ui.line(&format!("  total {} ({} bytes)", human_bytes(s.total_bytes), s.total_bytes));
    let _ = json!({});
    Ok(Code::Ok)
}
