//! The trust store: public keys pinned in a kubestrap home (private
//! channels). Each key is a minisign `.pub` file named `<KEYID>.pub`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey};
use kubestrap_fskit::{sync_dir, write_atomic};

/// A key pinned in a trust store.
#[derive(Clone, Debug)]
pub struct PinnedKey {
    /// Its id.
    pub key_id: KeyId,
    /// The key.
    pub key: PublicKey,
    /// Its file in the store.
    pub path: PathBuf,
}

fn key_file(dir: &Path, id: KeyId) -> PathBuf {
    dir.join(format!("{id}.pub"))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, "chmod", e))?;
    }
    Ok(())
}

/// Pins the minisign public key at `pub_path` in the store `dir` (created if
/// needed). Pinning the same key again is a no-op; a different key with the
/// same id is refused.
pub fn trust_add(dir: &Path, pub_path: &Path) -> Result<KeyId> {
    let key = PublicKey::from_file(pub_path)?;
    let id = key.key_id();
    create_dir(dir)?;
    let path = key_file(dir, id);
    if path.exists() {
        let existing = PublicKey::from_file(&path)?;
        if existing.same_key(&key) {
            return Ok(id);
        }
        return Err(Error::PinConflict { path, key_id: id });
    }
    let comment = key
        .comment()
        .filter(|c| !c.is_empty())
        .map(|c| c.to_string())
        .unwrap_or_else(|| format!("minisign public key {id}"));
    let text = format!("untrusted comment: {comment}\n{}\n", key.to_base64());
    write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(id)
}

/// Lists the pinned keys, sorted by id. A missing store is empty; a
/// malformed or misnamed `.pub` file in it is an error.
pub fn trust_list(dir: &Path) -> Result<Vec<PinnedKey>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "list", e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".pub") else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let key = PublicKey::from_file(&path)?;
        let key_id = key.key_id();
        if stem.parse::<KeyId>().ok() != Some(key_id) {
            return Err(Error::MalformedPublicKey {
                file: path.display().to_string(),
                reason: format!("file name does not match the key id {key_id}"),
            });
        }
        out.push(PinnedKey { key_id, key, path });
    }
    out.sort_by_key(|p| p.key_id);
    Ok(out)
}

/// The pinned public keys (for [`crate::TrustContext::pinned_keys`]).
pub fn pinned_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    Ok(trust_list(dir)?.into_iter().map(|p| p.key).collect())
}

/// Unpins `id`; returns the removed file.
pub fn trust_remove(dir: &Path, id: KeyId) -> Result<PathBuf> {
    let path = key_file(dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotPinned { dir: dir.into(), key_id: id }),
        Err(e) => Err(Error::io(&path, "remove", e)),
    }
}
