//! k3s's bootstrap data: after the first start the datastore's copy of the
//! CAs and the service-account key is authoritative (k3s
//! pkg/cluster/bootstrap.go). At each start every file is compared with it:
//! the same bytes are fine; a different file that is not newer is replaced
//! from the datastore; a different file at least 3 s newer than the
//! datastore's copy stops k3s ("newer than datastore and could cause a
//! cluster outage"). The stand-in's datastore is one JSON file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::Check;

/// The files k3s keeps in its datastore, under `<data-dir>/server`.
const FILES: &[&str] = &[
    "tls/server-ca.crt",
    "tls/server-ca.key",
    "tls/client-ca.crt",
    "tls/client-ca.key",
    "tls/request-header-ca.crt",
    "tls/request-header-ca.key",
    "tls/service.key",
    "tls/etcd/server-ca.crt",
    "tls/etcd/server-ca.key",
    "tls/etcd/peer-ca.crt",
    "tls/etcd/peer-ca.key",
];

/// k3s's allowance for clocks (systemTimeSkew).
const SKEW_S: i64 = 3;

#[derive(Serialize, Deserialize)]
struct Entry {
    content: String,
    timestamp: i64,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn reconcile(data_dir: &Path) -> Result<Check> {
    let server = data_dir.join("server");
    let db = server.join("db/standin-bootstrap.json");
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(text) = std::fs::read(&db) else {
        // First start: what is on disk goes into the datastore.
        let mut store = BTreeMap::new();
        for f in FILES {
            if let Ok(bytes) = std::fs::read(server.join(f)) {
                store.insert(f.to_string(), Entry { content: b64.encode(&bytes), timestamp: unix(SystemTime::now()) });
            }
        }
        std::fs::create_dir_all(db.parent().unwrap())?;
        std::fs::write(&db, serde_json::to_vec(&store)?).with_context(|| format!("writing {}", db.display()))?;
        return Ok(Check::ok("datastore", format!("{} bootstrap files saved to the datastore", store.len())));
    };
    let store: BTreeMap<String, Entry> =
        serde_json::from_slice(&text).with_context(|| format!("reading {}", db.display()))?;
    let mut newer = Vec::new();
    let mut updated = Vec::new();
    for (f, e) in &store {
        let path = server.join(f);
        let want = b64.decode(&e.content)?;
        match (std::fs::read(&path), std::fs::metadata(&path).and_then(|m| m.modified())) {
            (Ok(disk), _) if disk == want => {}
            (Ok(_), Ok(mtime)) if unix(mtime) - e.timestamp >= SKEW_S => newer.push(path.display().to_string()),
            _ => {
                eprintln!("standin-k3s: {} will be updated from the datastore", path.display());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&path, &want)?;
                updated.push(f.clone());
            }
        }
    }
    if !newer.is_empty() {
        bail!(
            "{} newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to \
             be recreated from datastore.",
            newer.join(", ")
        );
    }
    Ok(Check::ok(
        "datastore",
        if updated.is_empty() {
            format!("the {} bootstrap files on disk match the datastore", store.len())
        } else {
            format!("updated from the datastore: {}", updated.join(", "))
        },
    ))
}
