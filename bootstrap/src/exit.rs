//! Exit codes, one block per source of failure (documented in README.md),
//! and the mapping from errors to them. Library code returns structured
//! errors; only `main` turns them into a code.

use std::path::Path;

use kubestrap_manifest::ManifestError;

use crate::fetch::FetchError;
use crate::home::Locked;
use crate::unpack::UnpackError;

/// Exit codes. Keep in sync with README.md ("Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    /// Anything not classified below.
    Internal = 1,
    /// Bad command line, or a manifest that does not parse or validate.
    Usage = 2,
    /// Manifest signature bad, key untrusted or revoked.
    Signature = 10,
    /// Manifest or key list expired.
    Expired = 11,
    /// Manifest older than one already seen (rollback), or replayed with other bytes.
    Rollback = 12,
    /// The manifest needs a newer kubestrap.
    NeedsNewerKubestrap = 13,
    /// A download failed from every source.
    Download = 20,
    /// A download did not match its sha256 or size.
    Integrity = 21,
    /// `--offline` and artifacts are missing from the cache.
    OfflineMissing = 22,
    /// Local disk: cannot read or write the store.
    Disk = 30,
    /// The disk is full.
    DiskFull = 31,
    /// An archive tried to write outside its destination, or expands too far.
    UnsafeArchive = 32,
    /// A cached blob or component tree is corrupt.
    CorruptCache = 33,
    /// The profile is locked by another kubestrap command (`--no-wait`).
    Locked = 40,
    /// The requested port is in use.
    PortInUse = 41,
    /// The profile does not exist.
    NoProfile = 42,
    /// The driver could not create, start or stop the host.
    Driver = 43,
    /// localkube exited while starting.
    LocalkubeExited = 50,
    /// The apiserver did not become ready in time.
    NotReady = 51,
    /// The kubeconfig cannot be read or written.
    Kubeconfig = 60,
}

/// An error that carries its own exit code (raised by lifecycle code for
/// conditions no lower-level error type describes).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: Code,
    pub message: String,
}

pub fn coded(code: Code, message: impl Into<String>) -> anyhow::Error {
    Coded { code, message: message.into() }.into()
}

/// The exit code for an error: the first cause in its chain that has one.
pub fn classify(err: &anyhow::Error) -> Code {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if cause.is::<ManifestError>() {
            return Code::Usage;
        }
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return match e {
                FetchError::Offline { .. } => Code::OfflineMissing,
                FetchError::AllFailed { .. } if e.is_integrity() => Code::Integrity,
                FetchError::AllFailed { .. } => Code::Download,
                FetchError::Local { source, .. } => disk_code(source),
            };
        }
        if let Some(e) = cause.downcast_ref::<UnpackError>() {
            return match e {
                UnpackError::Unsafe { .. } | UnpackError::TooLarge { .. } | UnpackError::TooManyEntries { .. } => {
                    Code::UnsafeArchive
                }
                UnpackError::HashMismatch { .. } => Code::CorruptCache,
                // The archive matches its hash: the manifest names a bin it lacks.
                UnpackError::MissingBin { .. } => Code::Usage,
                UnpackError::Io { source, .. } if crate::fsutil::is_disk_full(source) => Code::DiskFull,
                UnpackError::Io { .. } => Code::Disk,
            };
        }
        if let Some(e) = cause.downcast_ref::<kubestrap_signing::Error>() {
            return signing_code(e);
        }
        if cause.is::<Locked>() {
            return Code::Locked;
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return if crate::fsutil::is_disk_full(e) { Code::DiskFull } else { Code::Disk };
        }
    }
    Code::Internal
}

fn disk_code(e: &anyhow::Error) -> Code {
    let full = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(crate::fsutil::is_disk_full));
    if full { Code::DiskFull } else { Code::Disk }
}

fn signing_code(e: &kubestrap_signing::Error) -> Code {
    use kubestrap_signing::Error as E;
    match e {
        E::Expired { .. } => Code::Expired,
        E::Rollback { .. } | E::VersionReplaced { .. } => Code::Rollback,
        E::Io { source, .. } if crate::fsutil::is_disk_full(source) => Code::DiskFull,
        E::Io { .. } | E::StateCorrupt { .. } => Code::Disk,
        // Mistakes in what the user asked for, not verdicts on a signature.
        E::AlreadyExists { .. }
        | E::MalformedSecretKey { .. }
        | E::PasswordRequired { .. }
        | E::WrongPassword { .. }
        | E::Sign { .. }
        | E::NotPinned { .. }
        | E::PinConflict { .. }
        | E::BadKeyId { .. }
        | E::Invalid(_) => Code::Usage,
        _ => Code::Signature,
    }
}

/// One line of advice for the disk-full case, naming where space is needed.
pub fn disk_full_advice(home: &Path) -> String {
    format!(
        "free some space on the filesystem of {} (or point KUBESTRAP_HOME elsewhere), then run the command again: it resumes",
        home.display()
    )
}
