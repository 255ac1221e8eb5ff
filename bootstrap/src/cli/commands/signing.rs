//! `manifest keygen|sign|verify`, `keys sign-list|verify-list`, `trust add|list|remove`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Result, bail};
use kubestrap_fskit::{self as fskit, caps};
use kubestrap_manifest::rfc3339;
use kubestrap_signing::{self as signing, KeyId, KeyListFile};
use serde_json::json;
use time::OffsetDateTime;

use crate::channel::{self, keys};
use crate::cli::args::{KeysCmd, ManifestCmd, TrustCmd};
use crate::cli::exit::{Code, UsageError};
use crate::cli::render::Ui;
use crate::home::Home;

const PASSWORD_ENV: &str = "KUBESTRAP_KEY_PASSWORD";

pub fn manifest(cmd: ManifestCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        ManifestCmd::Check { .. }
        | ManifestCmd::New(_)
        | ManifestCmd::Generate(_)
        | ManifestCmd::Index(_)
        | ManifestCmd::Default { .. } => {
            unreachable!("handled by commands::manifest")
        }
        ManifestCmd::Keygen { out, name, unencrypted } => {
            let password =
                if unencrypted { None } else { Some(password(&format!("Password for the new key {name}"), true)?) };
            fskit::create_dir_mode(&out, 0o700)?;
            let (key, public, id) = signing::generate_keypair(&out, &name, password.as_deref())?;
            ui.json(
                json!({"key_id": id.to_string(), "secret_key": key, "public_key": public, "encrypted": !unencrypted}),
            );
            ui.line(&format!(
                "key {id}\n  secret: {} (keep it offline; mode 0600{})\n  public: {}",
                key.display(),
                if unencrypted { ", NOT encrypted" } else { ", encrypted" },
                public.display()
            ));
            Ok(Code::Ok)
        }
        ManifestCmd::Sign { key, file, comment } => {
            let data = fskit::read_capped(&file, caps::DOCUMENT)?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let comment = comment.unwrap_or_else(|| signing::default_trusted_comment(&name, OffsetDateTime::now_utc()));
            let sig = with_password(&key, |pw| signing::sign(&key, pw, &data, &comment))?;
            let path = signing::write_signature_file(&file, &sig)?;
            let id = signing::parse_signatures(&path.display().to_string(), &sig)?[0].key_id();
            ui.json(json!({"signature": path, "key_id": id.to_string(), "trusted_comment": comment}));
            ui.line(&format!("signed {} with key {id}: {}", file.display(), path.display()));
            Ok(Code::Ok)
        }
        ManifestCmd::Verify { file, allow_expired } => verify(&file, allow_expired, home, ui),
    }
}

/// Verification without side effects: no rollback state is recorded.
fn verify(file: &Path, allow_expired: bool, home: &Home, ui: &Ui) -> Result<Code> {
    let v = channel::inspect(home, file, allow_expired)?;
    let (m, trusted) = (&v.manifest, &v.trusted);
    ui.json(json!({
        "file": file, "key_id": trusted.path.key_id().to_string(), "trust": trusted.path.to_string(),
        "pinned": trusted.path.via_pinned_key(), "trusted_comment": trusted.trusted_comment,
        "channel": m.channel, "version": m.version, "kubernetes": m.kubernetes.to_string(),
        "expires": rfc3339(m.expires), "highest_seen": v.highest_seen, "warnings": v.warnings,
    }));
    for w in &v.warnings {
        ui.warn(w);
    }
    if let Some(n) = trusted.pinned_notice() {
        ui.warn(&n);
    }
    ui.line(&format!("{}: good signature", file.display()));
    ui.line(&format!("  signer:          key {} — {}", trusted.path.key_id(), trusted.path));
    ui.line(&format!("  trusted comment: {}", trusted.trusted_comment));
    ui.line(&format!("  manifest:        channel {} version {}, Kubernetes {}", m.channel, m.version, m.kubernetes));
    ui.line(&format!("  expires:         {}", rfc3339(m.expires)));
    if let Some(seen) = v.highest_seen {
        let note = if m.version < seen { " — OLDER: start/upgrade would refuse it (rollback)" } else { "" };
        ui.line(&format!("  highest seen:    version {seen} on this machine{note}"));
    }
    Ok(Code::Ok)
}

pub fn keys(cmd: KeysCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        KeysCmd::SignList { keys, file } => {
            let bytes = fskit::read_capped(&file, caps::DOCUMENT)?;
            let sig_path = signing::signature_path(&file);
            let existing = match fskit::read_capped_text(&sig_path, caps::SIGNATURE) {
                Ok(text) => text,
                Err(e) if e.is_not_found() => String::new(),
                Err(e) => return Err(e.into()),
            };
            // Signatures by this list's roots over an earlier text are stale.
            let roots =
                signing::KeyList::parse(&file.display().to_string(), &bytes).map(|l| l.root_keys()).unwrap_or_default();
            let (mut sigs, dropped) = signing::drop_stale_signatures(&existing, &bytes, &roots)?;
            for id in dropped {
                ui.warn(&format!(
                    "dropped the signature by key {id} from {}: it was made over an earlier text of the list",
                    sig_path.display()
                ));
            }
            for key in &keys {
                let added = with_password(key, |pw| signing::sign_key_list(&bytes, &[(key.as_path(), pw)], ""))?;
                sigs = signing::merge_signatures(&sigs, &added)?;
            }
            signing::write_signature_file(&file, &sigs)?;
            let ids: Vec<String> = signing::parse_signatures(&sig_path.display().to_string(), &sigs)?
                .iter()
                .map(|b| b.key_id().to_string())
                .collect();
            ui.json(json!({"file": file, "signature": sig_path, "signed_by": ids}));
            ui.line(&format!("{}: now signed by {}", sig_path.display(), ids.join(", ")));
            Ok(Code::Ok)
        }
        KeysCmd::VerifyList { files, allow_expired } => {
            let chain = files.iter().map(|f| KeyListFile::from_path(f)).collect::<Result<Vec<_>, _>>()?;
            // Anchored in the built-in roots, or else in one pinned key.
            let now = OffsetDateTime::now_utc();
            let mut result = signing::KeyChain::verify(&chain, &signing::builtin_roots(), now, allow_expired);
            for pk in signing::pinned_keys(&home.trust())? {
                if matches!(result, Err(signing::Error::NotAnchored { .. })) {
                    result = signing::KeyChain::verify(&chain, std::slice::from_ref(&pk), now, allow_expired);
                }
            }
            let v = result?;
            for w in &v.warnings {
                ui.warn(w);
            }
            let release: Vec<String> = v.release.iter().map(|k| k.key.key_id().to_string()).collect();
            let revoked: Vec<String> = v.revoked.iter().map(|k| k.to_string()).collect();
            ui.json(json!({"version": v.version, "expires": rfc3339(v.expires), "release_keys": release, "revoked": revoked, "threshold": v.threshold, "anchored_by": v.anchored_by.iter().map(|k| k.to_string()).collect::<Vec<_>>()}));
            ui.line(&format!("{}: valid key list version {}, expires {}", v.label, v.version, rfc3339(v.expires)));
            ui.line(&format!(
                "  anchored by root key(s) {}",
                v.anchored_by.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            ));
            ui.line(&format!("  release keys: {}", release.join(", ")));
            if !revoked.is_empty() {
                ui.line(&format!("  revoked: {}", revoked.join(", ")));
            }
            Ok(Code::Ok)
        }
    }
}

pub fn trust_cmd(cmd: TrustCmd, home: &Home, ui: &Ui) -> Result<Code> {
    let dir = home.trust();
    match cmd {
        TrustCmd::Add { key } => {
            // A key file that is not one is the caller's mistake (exit 2).
            let id = signing::trust_add(&dir, &key).map_err(|e| match e {
                signing::Error::MalformedPublicKey { .. } => UsageError(e.to_string()).into(),
                other => anyhow::Error::from(other),
            })?;
            ui.json(json!({"pinned": id.to_string()}));
            ui.warn(&format!(
                "pinned key {id} in {}: manifests it signs (or key lists it roots) are now trusted by this kubestrap home, and say so when used",
                dir.display()
            ));
            Ok(Code::Ok)
        }
        TrustCmd::List => {
            for k in signing::builtin_roots() {
                ui.json(json!({"key_id": k.key_id().to_string(), "kind": "built-in root"}));
                ui.line(&format!("{}  built-in root", k.key_id()));
            }
            for k in signing::trust_list(&dir)? {
                ui.json(json!({"key_id": k.key_id.to_string(), "kind": "pinned", "path": k.path}));
                ui.line(&format!("{}  pinned ({})", k.key_id, k.path.display()));
            }
            let (chains, ignored) = keys::key_chains(home)?;
            for w in ignored {
                ui.warn(&w);
            }
            for c in chains {
                for f in &c.files {
                    let anchor = if c.anchor == keys::BUILTIN_ANCHOR {
                        "the built-in roots".to_string()
                    } else {
                        format!("pinned key {}", c.anchor)
                    };
                    ui.json(json!({"key_list": f.label, "anchor": c.anchor}));
                    ui.line(&format!("key list {} (rooted in {anchor})", f.label));
                }
            }
            Ok(Code::Ok)
        }
        TrustCmd::Remove { id } => {
            let key_id: KeyId = id.parse()?;
            let path = signing::trust_remove(&dir, key_id)?;
            ui.json(json!({"removed": key_id.to_string(), "path": path}));
            ui.line(&format!("unpinned key {key_id} ({})", path.display()));
            Ok(Code::Ok)
        }
    }
}

/// Runs `f` without a password first; if the key is encrypted, asks for one
/// (from KUBESTRAP_KEY_PASSWORD or the terminal).
fn with_password<T>(key: &Path, f: impl Fn(Option<&str>) -> signing::Result<T>) -> Result<T> {
    if let Ok(pw) = std::env::var(PASSWORD_ENV) {
        return Ok(f(Some(&pw))?);
    }
    match f(None) {
        Err(signing::Error::PasswordRequired { .. }) => {
            let pw = password(&format!("Password for {}", key.display()), false)?;
            Ok(f(Some(&pw))?)
        }
        other => Ok(other?),
    }
}

/// A password from KUBESTRAP_KEY_PASSWORD or typed at the terminal without echo.
fn password(prompt: &str, confirm: bool) -> Result<String> {
    let empty = || {
        UsageError(format!(
            "an empty password would leave the key unprotected; use --unencrypted if that is what you mean (from {PASSWORD_ENV} or the prompt)"
        ))
    };
    if let Ok(pw) = std::env::var(PASSWORD_ENV) {
        return if pw.is_empty() { Err(empty().into()) } else { Ok(pw) };
    }
    if !std::io::stdin().is_terminal() {
        bail!(UsageError(format!(
            "a password is needed: set {PASSWORD_ENV}, run in a terminal, or use --unencrypted for a development key"
        )));
    }
    let first = rpassword::prompt_password(format!("{prompt}: "))?;
    if confirm && rpassword::prompt_password("Again: ")? != first {
        bail!(UsageError("the passwords differ".into()));
    }
    if first.is_empty() {
        bail!(UsageError("an empty password; use --unencrypted if you mean no password".into()));
    }
    Ok(first)
}
