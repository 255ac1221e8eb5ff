//! The exit codes, one block per source of failure. This file stands alone
//! (it uses nothing of the crate): the integration tests include it to name
//! the codes they expect.

/// Exit codes. Keep in sync with README.md ("Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    /// Anything not classified below.
    Internal = 1,
    /// Bad command line, or a manifest that does not parse or validate.
    Usage = 2,
    /// `upgrade --check`, `self-update --check`: a newer release is available.
    Available = 3,
    /// Manifest signature bad, key untrusted or revoked.
    Signature = 10,
    /// Manifest or key list expired.
    Expired = 11,
    /// Manifest older than one already seen (rollback), or replayed with other bytes.
    Rollback = 12,
    /// The manifest needs a newer kubestrap.
    NeedsNewerKubestrap = 13,
    /// The release is not an allowed step from the one running (skew,
    /// downgrade, no snapshot to roll back to); `--force` overrides.
    StepRefused = 14,
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
    /// An archive tried to write outside its destination, expands too far,
    /// or is not the archive its manifest says.
    UnsafeArchive = 32,
    /// A cached blob or component tree is corrupt.
    CorruptCache = 33,
    /// The home was written by a newer kubestrap.
    NewerHome = 34,
    /// Not a kubestrap bundle, or a damaged one.
    BadBundle = 35,
    /// The profile is locked by another kubestrap command (`--no-wait`).
    Locked = 40,
    /// The requested port is in use.
    PortInUse = 41,
    /// `node join`: the server is not the one the join line names (its CA
    /// fingerprint differs), refused the token, or cannot be reached.
    JoinRefused = 45,
    /// The profile does not exist.
    NoProfile = 42,
    /// The driver could not create, start or stop the host.
    Driver = 43,
    /// This machine cannot run the cluster as asked (`doctor` says why).
    Unfit = 44,
    /// localkube exited while starting.
    LocalkubeExited = 50,
    /// The apiserver did not become ready in time.
    NotReady = 51,
    /// The new release did not come up; it was rolled back and the old one runs.
    UpgradeRolledBack = 52,
    /// The new release did not come up, and putting the old one back failed
    /// too (the journal keeps where it got to; `start` retries).
    RollbackFailed = 53,
    /// The kubeconfig cannot be read or written.
    Kubeconfig = 60,
}
