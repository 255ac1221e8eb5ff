//! The one place that maps errors to exit codes (the codes themselves, one
//! block per source of failure, are in `code.rs` and documented in
//! README.md). Library code returns typed errors; only the CLI turns them
//! into a code.

use kubestrap_fskit::FsError;
use kubestrap_manifest::ManifestError;

use crate::artifacts::{FetchError, StoreError, UnpackError, source::ClientError};
use crate::channel::ChannelError;
use crate::channel::generate::GenerateError;
use crate::cluster::ClusterError;
use crate::cluster::images::ImageError;
use crate::cluster::kubeconfig::KubeconfigError;
use crate::cluster::service::ServiceError;
use crate::cluster::snapshot::SnapshotError;
use crate::cluster::upgrade::UpgradeError;
use crate::driver::DriverError;
use crate::home::HomeError;

pub use super::code::Code;

/// A mistake in what was asked that no layer below describes (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error and what to do about it, from one walk of its
/// chain. The code is the first cause's that has one. The hint is the first
/// cause's that carries one (errors keep their advice apart from what
/// happened), else the exit code's (a full disk: where to free space, under
/// `home` when it is known).
pub fn classify(err: &anyhow::Error, home: Option<&std::path::Path>) -> (Code, Option<String>) {
    let (mut code, mut hint) = (None, None);
    for cause in err.chain() {
        if code.is_none() {
            code = code_of(cause);
        }
        if hint.is_none() {
            hint = hint_of(cause);
        }
        if code.is_some() && hint.is_some() {
            break;
        }
    }
    let code = code.unwrap_or(Code::Internal);
    let hint = hint.or_else(|| match (code, home) {
        (Code::DiskFull, Some(home)) => Some(disk_full_advice(home)),
        (Code::Locked, _) => Some("wait for the other command to finish, or retry without --no-wait".into()),
        _ => None,
    });
    (code, hint)
}

use crate::profile::ProfileError;

/// The exit code one cause of an error stands for, if any. Long on purpose:
/// the one table from error kinds to exit codes, one arm per kind, read top
/// to bottom beside README's table.
fn code_of(cause: &(dyn std::error::Error + 'static)) -> Option<Code> {
    if let Some(e) = cause.downcast_ref::<ClusterError>() {
        return Some(cluster_code(e));
    }
    if let Some(e) = cause.downcast_ref::<ProfileError>() {
        return Some(profile_code(e));
    }
    if let Some(e) = cause.downcast_ref::<UpgradeError>() {
        return Some(match e {
            UpgradeError::Refused { .. } => Code::StepRefused,
            UpgradeError::Failed { .. } => Code::UpgradeRolledBack,
            UpgradeError::RollbackFailed { .. } => Code::RollbackFailed,
            UpgradeError::NoPrevious { .. } => Code::Usage,
        });
    }
    if let Some(e) = cause.downcast_ref::<GenerateError>() {
        return Some(match e {
            GenerateError::PinMismatch { .. }
            | GenerateError::SizeMismatch { .. }
            | GenerateError::HashMismatch { .. } => Code::Integrity,
            GenerateError::Http { .. } | GenerateError::NotListed { .. } | GenerateError::BadChecksums { .. } => {
                Code::Download
            }
            GenerateError::NoBuild { .. } | GenerateError::Usage(_) => Code::Usage,
        });
    }
    if let Some(e) = cause.downcast_ref::<ImageError>() {
        return Some(match e {
            ImageError::NotAnArchive { .. } | ImageError::TooLarge { .. } | ImageError::NoImagesDir { .. } => {
                Code::Usage
            }
            ImageError::Corrupt { .. } => Code::CorruptCache,
            ImageError::Fs(e) => fs_code(e),
        });
    }
    if let Some(e) = cause.downcast_ref::<ServiceError>() {
        return Some(match e {
            ServiceError::NoSuchService { .. } | ServiceError::NoSuchPort { .. } | ServiceError::NoNodePort { .. } => {
                Code::Usage
            }
            ServiceError::Unreachable { .. } => Code::Unfit,
            ServiceError::Api { .. } => Code::NotReady,
        });
    }
    if let Some(e) = cause.downcast_ref::<SnapshotError>() {
        return Some(match e {
            SnapshotError::NoSuchSnapshot { .. } => Code::Usage,
            SnapshotError::Fs(e) => fs_code(e),
            // A full disk while copying a node's state is said as one.
            SnapshotError::Driver(DriverError::Fs(e)) | SnapshotError::Node { source: DriverError::Fs(e), .. } => {
                fs_code(e)
            }
            SnapshotError::Driver(_) | SnapshotError::Node { .. } => Code::Driver,
        });
    }
    if cause.is::<KubeconfigError>() {
        return Some(Code::Kubeconfig);
    }
    if let Some(e) = cause.downcast_ref::<ChannelError>() {
        return channel_code(e);
    }
    if let Some(e) = cause.downcast_ref::<FetchError>() {
        return Some(match e {
            FetchError::Offline { .. } => Code::OfflineMissing,
            FetchError::AllFailed { .. } if e.is_integrity() => Code::Integrity,
            FetchError::AllFailed { .. } => Code::Download,
            FetchError::Local { source, .. } => fs_code(source),
            FetchError::NoArtifact { .. } | FetchError::Client(_) => Code::Usage,
        });
    }
    if let Some(e) = cause.downcast_ref::<StoreError>() {
        return match e {
            StoreError::Fs(e) => Some(fs_code(e)),
            StoreError::Unpack(e) => Some(unpack_code(e)),
            StoreError::Corrupt { .. } => Some(Code::CorruptCache),
        };
    }
    if let Some(e) = cause.downcast_ref::<UnpackError>() {
        return Some(unpack_code(e));
    }
    if let Some(e) = cause.downcast_ref::<DriverError>() {
        return Some(match e {
            DriverError::Unfit { .. } | DriverError::OneNode { .. } | DriverError::NoAgentLine { .. } => Code::Unfit,
            DriverError::Docker(d)
                if matches!(
                    d.kind,
                    crate::driver::DockerErrorKind::Unreachable
                        | crate::driver::DockerErrorKind::OtherEngine
                        | crate::driver::DockerErrorKind::Unfit
                ) =>
            {
                Code::Unfit
            }
            DriverError::DidNotStart { .. } => Code::LocalkubeExited,
            DriverError::ProgramMissing { .. } => Code::CorruptCache,
            DriverError::Fs(e) => fs_code(e),
            DriverError::Docker(_)
            | DriverError::Qemu(_)
            | DriverError::StillRunning { .. }
            | DriverError::Survived { .. }
            | DriverError::HostTool { .. }
            | DriverError::LeftOnHost { .. }
            | DriverError::NoReport(_)
            | DriverError::Spawn { .. } => Code::Driver,
        });
    }
    if cause.is::<ClientError>() || cause.is::<ManifestError>() || cause.is::<UsageError>() {
        return Some(Code::Usage);
    }
    if let Some(e) = cause.downcast_ref::<HomeError>() {
        return Some(match e {
            HomeError::Unknown => Code::Usage,
            HomeError::NewerLayout { .. } => Code::NewerHome,
        });
    }
    if let Some(e) = cause.downcast_ref::<kubestrap_bundle::BundleError>() {
        return Some(bundle_code(e));
    }
    if let Some(e) = cause.downcast_ref::<kubestrap_signing::Error>() {
        return Some(signing_code(e));
    }
    if let Some(e) = cause.downcast_ref::<FsError>() {
        return Some(fs_code(e));
    }
    if let Some(e) = cause.downcast_ref::<std::io::Error>() {
        return Some(if kubestrap_fskit::is_disk_full(e) { Code::DiskFull } else { Code::Disk });
    }
    None
}

fn profile_code(e: &ProfileError) -> Code {
    match e {
        ProfileError::NoProfile { .. } => Code::NoProfile,
        ProfileError::BadName { .. } => Code::Usage,
        ProfileError::DamagedConfig { .. } => Code::Disk,
    }
}

fn cluster_code(e: &ClusterError) -> Code {
    use ClusterError as E;
    match e {
        E::Profile(p) => profile_code(p),
        E::DriverMismatch { .. } | E::OtherRelease { .. } | E::PurgeInUse { .. } => Code::Usage,
        E::NoComponent { .. } => Code::Usage,
        E::Pki { .. } | E::PlacedPkiDiffers { .. } => Code::Disk,
        E::PortInUse { .. } | E::NoFreePort { .. } => Code::PortInUse,
        E::LocalkubeExited { .. } => Code::LocalkubeExited,
        E::NotReady { .. } => Code::NotReady,
        E::NotCached { .. } => Code::OfflineMissing,
        E::NodesUnsupported { .. } => Code::Unfit,
        E::JoinRefused { .. } => Code::JoinRefused,
        E::NotJoined { .. } | E::NotListening { .. } | E::IsJoined { .. } | E::NoRemoteJoin { .. } => Code::Usage,
        E::PublishNative { .. } => Code::Usage,
        E::PublishInUse { .. } => Code::PortInUse,
        E::TooManyNodes { .. }
        | E::BadNodeName { .. }
        | E::NoSuchNode { .. }
        | E::NotRunning { .. }
        | E::FewerNodes { .. } => Code::Usage,
    }
}

/// `None` where the cause carried inside decides.
fn channel_code(e: &ChannelError) -> Option<Code> {
    use ChannelError as E;
    Some(match e {
        E::NotFound { .. } => Code::Usage,
        E::Unreadable { source, .. } => match source {
            FsError::Io { .. } | FsError::Locked { .. } => fs_code(source),
            // Too big, not a file, not text: not a manifest.
            FsError::TooLarge { .. } | FsError::NotRegular { .. } | FsError::NotText { .. } => Code::Usage,
        },
        E::MissingSignature { .. } | E::NotOfficial { .. } | E::WrongChannel { .. } | E::NotAnchored { .. } => {
            Code::Signature
        }
        E::Download { .. } => Code::Download,
        E::Offline { .. } | E::NoneKept => Code::OfflineMissing,
        E::NeedsNewer { .. } => Code::NeedsNewerKubestrap,
        E::Expired { .. } => Code::Expired,
        E::KeyListReplaced { .. } => Code::Rollback,
        E::Signing(e) => signing_code(e),
        E::Bundle(e) => bundle_code(e),
        E::NotInIndex { .. } | E::NoExecutable { .. } | E::NoConfigDir => Code::Usage,
        E::IndexMismatch { .. } => Code::Integrity,
        E::Manifest(_) | E::Client(_) => Code::Usage,
        E::Fs(e) => fs_code(e),
    })
}

fn bundle_code(e: &kubestrap_bundle::BundleError) -> Code {
    use kubestrap_bundle::BundleError as E;
    match e {
        E::Io { source, .. } if kubestrap_fskit::is_disk_full(source) => Code::DiskFull,
        E::Io { .. } => Code::Disk,
        E::NotABundle { .. } | E::Malformed { .. } | E::Unexpected { .. } | E::TooLarge { .. } => Code::BadBundle,
    }
}

fn fs_code(e: &FsError) -> Code {
    match e {
        FsError::Locked { .. } => Code::Locked,
        FsError::Io { .. } if e.is_disk_full() => Code::DiskFull,
        FsError::Io { .. } | FsError::TooLarge { .. } | FsError::NotRegular { .. } | FsError::NotText { .. } => {
            Code::Disk
        }
    }
}

fn unpack_code(e: &UnpackError) -> Code {
    match e {
        UnpackError::Unsafe { .. }
        | UnpackError::TooLarge { .. }
        | UnpackError::TooManyEntries { .. }
        | UnpackError::Malformed { .. } => Code::UnsafeArchive,
        UnpackError::HashMismatch { .. } => Code::CorruptCache,
        // The archive matches its hash: the manifest names a bin it lacks.
        UnpackError::MissingBin { .. } => Code::Usage,
        UnpackError::Io { source, .. } if kubestrap_fskit::is_disk_full(source) => Code::DiskFull,
        UnpackError::Io { .. } => Code::Disk,
    }
}

fn signing_code(e: &kubestrap_signing::Error) -> Code {
    use kubestrap_signing::Error as E;
    match e {
        E::Expired { .. } => Code::Expired,
        E::Rollback { .. } | E::VersionReplaced { .. } => Code::Rollback,
        E::Io { source, .. } if kubestrap_fskit::is_disk_full(source) => Code::DiskFull,
        E::Io { .. } | E::StateCorrupt { .. } => Code::Disk,
        E::File(f) => match f {
            FsError::Io { .. } | FsError::Locked { .. } => fs_code(f),
            // A key or list file that is too big, not a file or not text.
            FsError::TooLarge { .. } | FsError::NotRegular { .. } | FsError::NotText { .. } => Code::Usage,
        },
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
        E::MalformedSignature { .. }
        | E::MalformedPublicKey { .. }
        | E::BadSignature { .. }
        | E::UnknownKey { .. }
        | E::Revoked { .. }
        | E::KeyListInvalid { .. }
        | E::Threshold { .. }
        | E::NotAnchored { .. }
        | E::KeyListVersion { .. } => Code::Signature,
    }
}

fn hint_of(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = cause.downcast_ref::<ClusterError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<ProfileError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<DriverError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<ChannelError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<FetchError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<KubeconfigError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<UpgradeError>() {
        return e.hint();
    }
    if let Some(e) = cause.downcast_ref::<HomeError>() {
        return Some(e.hint());
    }
    if let Some(e) = cause.downcast_ref::<ServiceError>() {
        return e.hint();
    }
    cause.downcast_ref::<FsError>().and_then(FsError::hint)
}

/// One line of advice for the disk-full case, naming where space is needed.
fn disk_full_advice(home: &std::path::Path) -> String {
    format!(
        "free some space on the filesystem of {} (or point KUBESTRAP_HOME elsewhere), then run the command again: it resumes",
        home.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, code)` of every variant of [`Code`], read from its file.
    fn defined() -> Vec<(String, u8)> {
        let src = include_str!("code.rs");
        let body = src.split("pub enum Code {").nth(1).and_then(|s| s.split("\n}").next()).expect("enum Code");
        body.lines()
            .filter_map(|l| {
                let (name, n) = l.trim().strip_suffix(',')?.split_once(" = ")?;
                Some((name.to_string(), n.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn readme_exit_code_table_matches_the_code() {
        let readme = include_str!("../../../README.md");
        let table = readme.split("## Exit codes").nth(1).expect("README has an Exit codes section");
        let documented: Vec<u8> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.trim_start_matches('|').split('|').next()?.trim().parse().ok())
            .collect();
        let defined = defined();
        assert!(defined.len() >= 25, "read {} codes from enum Code: the parser is broken", defined.len());
        let mut codes: Vec<u8> = defined.iter().map(|(_, n)| *n).collect();
        codes.sort();
        assert_eq!(documented, codes, "README's exit-code table and enum Code disagree");
        // The parse read the real values.
        assert!(defined.contains(&("Unfit".into(), Code::Unfit as u8)));
        assert!(defined.contains(&("Kubeconfig".into(), Code::Kubeconfig as u8)));
    }

    #[test]
    fn advice_travels_apart_from_what_happened() {
        let err = anyhow::Error::new(ClusterError::PortInUse { port: 6443 }).context("starting profile \"x\"");
        let (code, hint) = classify(&err, None);
        assert_eq!(code, Code::PortInUse);
        assert_eq!(hint.as_deref(), Some("free it, or choose another with --port"));
        assert!(!format!("{err:#}").contains("--port"), "{err:#}");
        let full = anyhow::Error::new(FsError::io(
            std::path::Path::new("/h/blobs/x"),
            "write",
            std::io::Error::from_raw_os_error(28),
        ));
        let (code, hint) = classify(&full, Some(std::path::Path::new("/h")));
        assert_eq!(code, Code::DiskFull);
        assert!(hint.unwrap().contains("/h"));
        assert_eq!(classify(&full, None), (Code::DiskFull, None));
    }
}
