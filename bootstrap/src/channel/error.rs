use std::path::PathBuf;

use kubestrap_fskit::FsError;
use kubestrap_manifest::ManifestError;

/// Why a manifest (or key list) was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("manifest {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{what}: {source}")]
    Unreadable {
        what: String,
        #[source]
        source: FsError,
    },
    #[error("cannot read the signature {location}: {reason}")]
    MissingSignature { location: String, reason: String },
    #[error("cannot download {location}: {reason}")]
    Download { location: String, reason: String },
    #[error("--offline: cannot download the manifest {location}")]
    Offline { location: String },
    #[error("--offline, and no manifest of the stable channel is kept in this kubestrap home")]
    NoneKept,
    #[error(
        "{location} served a manifest that is not signed through kubestrap's built-in root keys ({trust}); refusing it: the official channel is trusted only that way"
    )]
    NotOfficial { location: String, trust: String },
    #[error(
        "{location} served a manifest of channel {got:?}, not {want:?}; refusing it (a mirror or proxy may be tampering)"
    )]
    WrongChannel { location: String, got: String, want: &'static str },
    #[error("{what} requires kubestrap {req}, this is {me}")]
    NeedsNewer { what: String, req: String, me: String },
    #[error("{source}; refusing an expired manifest (a frozen or replayed channel)")]
    Expired {
        #[source]
        source: kubestrap_signing::Error,
    },
    #[error(
        "{label}: version {version} of this key list chain is kept already with other contents ({}); refusing to replace it",
        path.display()
    )]
    KeyListReplaced { label: String, version: u64, path: PathBuf },
    #[error("{label}: no trusted key anchors this key list")]
    NotAnchored { label: String },
    #[error("the channel index {index} names no channel {channel:?} (it has: {known})")]
    NotInIndex { index: String, channel: String, known: String },
    #[error("the channel index {index} names no kubestrap for {target} (it has: {known})")]
    NoExecutable { index: String, target: String, known: String },
    #[error(
        "{location}: {what} (the signed channel index pins {expected}); a mirror or proxy may be tampering, or the channel is being updated"
    )]
    IndexMismatch { location: String, what: String, expected: String },
    #[error("cannot find a directory for kubestrap's config: set HOME (or XDG_CONFIG_HOME)")]
    NoConfigDir,
    #[error(transparent)]
    Bundle(#[from] kubestrap_bundle::BundleError),
    #[error(transparent)]
    Signing(#[from] kubestrap_signing::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Client(#[from] crate::artifacts::source::ClientError),
}

impl ChannelError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        use ChannelError as E;
        Some(match self {
            E::NotFound { .. } => "check the path given to --manifest".into(),
            E::MissingSignature { .. } => "every manifest must be signed (`kubestrap manifest sign`)".into(),
            E::Download { .. } => "check the network and HTTPS_PROXY, or name a manifest file with --manifest".into(),
            E::Offline { .. } | E::NoneKept => "name a manifest file with --manifest, or use an offline bundle".into(),
            E::NeedsNewer { .. } => "run `kubestrap self-update` (or download a newer kubestrap) and try again".into(),
            E::Expired { .. } => "get a current manifest, or pass --allow-expired to accept it knowingly".into(),
            E::IndexMismatch { .. } => "try again later".into(),
            E::NoConfigDir => "set HOME (or XDG_CONFIG_HOME)".into(),
            E::Unreadable { source, .. } | E::Fs(source) => return source.hint(),
            _ => return None,
        })
    }
}
