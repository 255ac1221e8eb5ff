//! Where a manifest comes from, and the checks it passes before anything
//! acts on it: signature over the exact bytes (before parsing), then schema,
//! expiry, `requires-bootstrap` and rollback. An accepted manifest is kept in
//! `manifests/<channel>-<version>.toml` (with its signature) for offline use.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kubestrap_manifest::Manifest;

use crate::exit::{Code, coded};
use crate::fetch;
use crate::fsutil;
use crate::home::Home;
use crate::trust::{self, Trusted};
use crate::ui::Ui;

/// The channel kubestrap follows when no manifest is named.
pub const DEFAULT_CHANNEL_URL: &str = "https://kubestrap.dev/channels/stable/manifest.toml";
/// The `channel` a manifest served at [`DEFAULT_CHANNEL_URL`] must declare.
pub const DEFAULT_CHANNEL: &str = "stable";

/// A manifest is small; anything bigger is refused before it is read whole.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A verified, parsed manifest.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Manifest,
    /// Where it is kept in the home.
    pub path: PathBuf,
    pub trusted: Trusted,
}

/// Loads, verifies and records the manifest named by `spec` (a path or URL),
/// or, with none named, the channel's.
pub fn load(home: &Home, spec: Option<&str>, opts: &fetch::Options, allow_expired: bool, ui: &Ui) -> Result<Loaded> {
    let spec = spec.unwrap_or(DEFAULT_CHANNEL_URL);
    let (bytes, sig) = read_pair(spec, opts)?;
    import_channel_keys(home, spec, opts, allow_expired, ui)?;
    let loaded = accept(home, spec, &bytes, &sig, allow_expired)?;
    for w in &loaded.trusted.warnings {
        ui.warn(w);
    }
    Ok(loaded)
}

/// Re-verifies a manifest already kept in the home (a profile's pointer).
/// `running`: the manifest a profile already runs (expiry then only warns);
/// otherwise an expired one is refused like a downloaded one.
pub fn load_stored(home: &Home, path: &Path, allow_expired: bool, running: bool) -> Result<Loaded> {
    let bytes = fs::read(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
    let sig_path = signature_path(path);
    let sig = fs::read_to_string(&sig_path).with_context(|| format!("cannot read signature {}", sig_path.display()))?;
    let label = path.display().to_string();
    let mut trusted = trust::verify_manifest(home, &label, &bytes, &sig, allow_expired, None, true)?;
    let manifest = Manifest::parse(&bytes, path)?;
    trusted.warnings.extend(trust::check_fresh(&manifest, &label, allow_expired, running)?);
    Ok(Loaded { manifest, path: path.to_path_buf(), trusted })
}

/// Verifies bytes + signature and records the manifest (rollback state and a
/// copy in the home).
pub fn accept(home: &Home, label: &str, bytes: &[u8], sig: &str, allow_expired: bool) -> Result<Loaded> {
    // Signature first, over the exact bytes; nothing is parsed before it holds.
    let mut trusted = trust::verify_manifest(home, label, bytes, sig, allow_expired, None, true)?;
    let manifest = Manifest::parse(bytes, Path::new(label))?;
    if label == DEFAULT_CHANNEL_URL && trusted.path.via_pinned_key() {
        return Err(coded(
            Code::Signature,
            format!(
                "{label} served a manifest that is not signed through kubestrap's built-in root keys ({}); refusing it: the official channel is trusted only that way",
                trusted.path
            ),
        ));
    }
    if label == DEFAULT_CHANNEL_URL && manifest.channel != DEFAULT_CHANNEL {
        // A validly signed manifest of another channel (an old beta, say)
        // served in its place: refused before anything is recorded.
        return Err(coded(
            Code::Signature,
            format!(
                "{label} served a manifest of channel {:?}, not {DEFAULT_CHANNEL:?}; refusing it (a mirror or proxy may be tampering)",
                manifest.channel
            ),
        ));
    }
    trusted.warnings.extend(trust::check_fresh(&manifest, label, allow_expired, false)?);
    trust::check_not_rolled_back(home, &manifest, &trusted, bytes)?;
    // Named by its rollback record, so two private channels of one name (or
    // a private one named like the official) never overwrite each other.
    let path = home.manifests().join(format!("{}-{}.toml", trust::seen_channel(&manifest, &trusted), manifest.version));
    if fs::read(&path).ok().as_deref() != Some(bytes) {
        fsutil::write_atomic(&signature_path(&path), sig.as_bytes(), 0o644)?;
        fsutil::write_atomic(&path, bytes, 0o644)?;
    }
    Ok(Loaded { manifest, path, trusted })
}

/// A channel may publish its newest key list as `keys.toml` (+ `.minisig`)
/// beside the manifest; if so it is verified against the chain this home
/// trusts and kept, so release keys can rotate without a new kubestrap.
fn import_channel_keys(home: &Home, spec: &str, opts: &fetch::Options, allow_expired: bool, ui: &Ui) -> Result<()> {
    let keys_spec = match spec.rsplit_once('/') {
        Some((base, _)) => format!("{base}/keys.toml"),
        // A bare file name (`--manifest manifest.toml`): its directory is the current one.
        None => "keys.toml".to_string(),
    };
    let Ok((bytes, sigs)) = read_pair(&keys_spec, opts) else { return Ok(()) };
    let file = kubestrap_signing::KeyListFile::new(keys_spec.clone(), bytes, sigs);
    match trust::import_key_list(home, file, allow_expired) {
        Ok(v) => tracing::debug!(version = v, "key list {keys_spec} accepted"),
        Err(e) => ui.warn(&format!("ignoring the key list {keys_spec}: {e:#}")),
    }
    Ok(())
}

pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Reads a manifest and its `.minisig` from a path or URL.
fn read_pair(spec: &str, opts: &fetch::Options) -> Result<(Vec<u8>, String)> {
    let sig_spec = format!("{spec}.minisig");
    if spec.starts_with("http://") || spec.starts_with("https://") {
        if opts.offline {
            return Err(coded(
                Code::OfflineMissing,
                format!(
                    "--offline: cannot download the manifest {spec}; name a manifest file with --manifest, or use an offline bundle"
                ),
            ));
        }
        let client = fetch::client(opts)?;
        let bytes = http_get(&client, spec)?;
        let sig = http_get(&client, &sig_spec)?;
        let sig = String::from_utf8(sig)
            .map_err(|_| coded(Code::Signature, format!("{sig_spec}: the signature file is not text")))?;
        Ok((bytes, sig))
    } else {
        read_local(Path::new(spec.strip_prefix("file://").unwrap_or(spec)))
    }
}

/// Reads a manifest file (size-capped) and its `.minisig`; a missing
/// signature is a signature failure, like a bad one.
pub fn read_local(path: &Path) -> Result<(Vec<u8>, String)> {
    let bytes = read_capped(path)?;
    let sig_path = signature_path(path);
    let sig = fs::read_to_string(&sig_path).map_err(|e| {
        coded(
            Code::Signature,
            format!(
                "cannot read the signature {}: {e}; every manifest must be signed (`kubestrap manifest sign`)",
                sig_path.display()
            ),
        )
    })?;
    Ok((bytes, sig))
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let f = fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            coded(
                Code::Usage,
                format!("manifest {} does not exist; check the path given to --manifest", path.display()),
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot read manifest {}", path.display()))
        }
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(coded(
            Code::Usage,
            format!("{}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest", path.display()),
        ));
    }
    Ok(bytes)
}

fn http_get(client: &reqwest::blocking::Client, url: &str) -> Result<Vec<u8>> {
    let fail = |m: String| {
        coded(
            Code::Download,
            format!(
                "cannot download {url}: {m}; check the network and HTTPS_PROXY, or name a manifest file with --manifest"
            ),
        )
    };
    let resp = client.get(url).send().map_err(|e| fail(fetch::describe(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut bytes = Vec::new();
    resp.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(fail(format!("larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")));
    }
    Ok(bytes)
}

/// Stored manifests, newest version first per channel.
pub fn stored(home: &Home) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    for e in fsutil::list_dir(&home.manifests())? {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml")
            && let Ok(m) = Manifest::load(&p)
        {
            out.push((p, m));
        }
    }
    out.sort_by(|a, b| {
        (&a.1.channel, std::cmp::Reverse(a.1.version)).cmp(&(&b.1.channel, std::cmp::Reverse(b.1.version)))
    });
    Ok(out)
}
