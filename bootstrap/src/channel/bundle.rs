//! An offline bundle as a manifest source: its key lists are imported, its
//! manifest verified and recorded like any other, and its entries checked
//! to be exactly what a bundle of that manifest holds — before any artifact
//! in it is read.

use std::path::Path;
use std::sync::Arc;

use kubestrap_bundle::{self as bundle, BundleError, Name, Payload};
use kubestrap_fskit::caps;
use kubestrap_manifest::Manifest;
use kubestrap_signing::KeyListFile;

use super::{ChannelError, Inspected, Loaded, keys};
use crate::home::Home;
use crate::progress::Progress;

type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// A bundle opened and checked for structure and entry names.
pub fn open(path: &Path) -> Result<Payload> {
    let payload = Payload::open(path)?;
    for e in payload.entries() {
        if Name::parse(&e.name).is_none() {
            return Err(BundleError::Unexpected { path: path.into(), name: e.name.clone() }.into());
        }
    }
    for required in [bundle::MANIFEST, bundle::SIGNATURE] {
        if payload.entry(required).is_none() {
            return Err(BundleError::Malformed { path: path.into(), reason: format!("it has no {required}") }.into());
        }
    }
    Ok(payload)
}

/// The manifest, its signature and the key lists (oldest first) a bundle carries.
pub fn signed_parts(payload: &Payload) -> Result<(Vec<u8>, String, Vec<KeyListFile>)> {
    let bytes = payload.read(bundle::MANIFEST, caps::DOCUMENT)?;
    let sig = text(payload, bundle::SIGNATURE, caps::SIGNATURE)?;
    let mut versions: Vec<u64> = payload
        .entries()
        .iter()
        .filter_map(|e| match Name::parse(&e.name) {
            Some(Name::KeyList { version }) => Some(version),
            _ => None,
        })
        .collect();
    versions.sort();
    let mut lists = Vec::new();
    for v in versions {
        let name = bundle::key_list_name(v);
        let list = payload.read(&name, caps::DOCUMENT)?;
        let sigs = text(payload, &format!("{name}.minisig"), caps::SIGNATURE)?;
        lists.push(KeyListFile::new(label(payload, &name), list, sigs));
    }
    Ok((bytes, sig, lists))
}

fn text(payload: &Payload, name: &str, cap: u64) -> Result<String> {
    String::from_utf8(payload.read(name, cap)?).map_err(|_| {
        BundleError::Malformed { path: payload.path().into(), reason: format!("{name} is not text") }.into()
    })
}

/// How an entry of a bundle is named in messages.
pub fn label(payload: &Payload, name: &str) -> String {
    format!("{} ({name})", payload.path().display())
}

/// Every artifact entry must be one the manifest pins, with its size.
pub fn check_artifacts(payload: &Payload, m: &Manifest) -> Result<()> {
    let pinned = m.all_artifacts();
    for e in payload.entries() {
        if let Some(Name::Artifact(hex)) = Name::parse(&e.name) {
            let ok = pinned.iter().any(|(_, _, a)| a.sha256.hex() == hex && a.size.get() == e.size);
            if !ok {
                return Err(BundleError::Unexpected { path: payload.path().into(), name: e.name.clone() }.into());
            }
        }
    }
    Ok(())
}

/// Opens a bundle, imports its key lists, verifies and records its
/// manifest, and checks its artifact entries against it. Returns the
/// manifest and the payload (an artifact catalog).
pub fn load(home: &Home, path: &Path, allow_expired: bool, progress: &dyn Progress) -> Result<(Loaded, Arc<Payload>)> {
    let payload = open(path)?;
    let (bytes, sig, lists) = signed_parts(&payload)?;
    for list in lists {
        let l = list.label.clone();
        if let Err(e) = keys::import_key_list(home, list, allow_expired) {
            progress.warn(format!("ignoring the key list {l}: {e}"));
        }
    }
    let loaded = super::accept(home, &label(&payload, bundle::MANIFEST), false, &bytes, &sig, allow_expired)?;
    for w in &loaded.trusted.warnings {
        progress.warn(w.clone());
    }
    check_artifacts(&payload, &loaded.manifest)?;
    Ok((loaded, Arc::new(payload)))
}

/// Verifies a bundle's manifest without recording anything (`bundle
/// inspect` and `bundle verify`).
pub fn inspect(home: &Home, payload: &Payload, allow_expired: bool) -> Result<Inspected> {
    let (bytes, sig, lists) = signed_parts(payload)?;
    // The bundled key lists count (in order), as they would on import.
    let i =
        super::inspect_bytes(home, &label(payload, bundle::MANIFEST), &bytes, &sig, &lists, allow_expired, Vec::new())?;
    check_artifacts(payload, &i.manifest)?;
    Ok(i)
}
