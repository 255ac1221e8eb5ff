//! Validated value types. Each one checks itself while it is deserialized, so
//! a bad value is reported by the TOML parser with its line and column.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// A SHA-256 digest written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The lowercase hex form, as used in file names and manifests.
    pub fn hex(&self) -> String {
        self.to_string()
    }
    /// The first 12 hex characters, for humans.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl FromStr for Sha256 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!("expected 64 lowercase hex characters, got {} characters", s.len()));
        }
        // Lowercase only: the form file names and manifests use.
        if let Some(at) = s.find(|c: char| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!(
                "expected 64 lowercase hex characters, found {:?} at position {at}",
                &s[at..].chars().next().unwrap_or(' ')
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("expected 64 lowercase hex characters: {e}"))?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// Deserializes a value through `FromStr`, turning its error into a serde error
/// (which the TOML parser decorates with the value's line and column).
macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

deserialize_from_str!(Sha256);

/// An exact artifact size in bytes, greater than zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Size(u64);

impl Size {
    pub fn new(n: u64) -> Option<Size> {
        (n > 0).then_some(Size(n))
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if n <= 0 {
            return Err(de::Error::custom(format!("expected a size in bytes greater than 0, got {n}")));
        }
        Ok(Size(n as u64))
    }
}

/// How an artifact becomes a component tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unpack {
    /// The artifact is the binary itself, saved as `bin`.
    File,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar.zst")]
    TarZst,
    Zip,
}

impl fmt::Display for Unpack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unpack::File => "file",
            Unpack::TarGz => "tar.gz",
            Unpack::TarZst => "tar.zst",
            Unpack::Zip => "zip",
        })
    }
}

/// The machine an artifact runs on: `<os>-<arch>`, e.g. `linux-x86_64`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub os: String,
    pub arch: String,
}

pub const OSES: &[&str] = &["linux", "darwin", "windows"];
pub const ARCHES: &[&str] = &["x86_64", "aarch64", "armv7"];

impl Target {
    /// The target of the machine running this code.
    pub fn host() -> Target {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let arch = match std::env::consts::ARCH {
            "arm" => "armv7",
            other => other,
        };
        Target { os: os.into(), arch: arch.into() }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "expected a target \"<os>-<arch>\" with os one of {} and arch one of {}, got {s:?}",
                OSES.join("|"),
                ARCHES.join("|")
            )
        };
        let (os, arch) = s.split_once('-').ok_or_else(expected)?;
        if !OSES.contains(&os) || !ARCHES.contains(&arch) {
            return Err(expected());
        }
        Ok(Target { os: os.into(), arch: arch.into() })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.os, self.arch)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

deserialize_from_str!(Target);

/// The ways kubestrap can run a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    Native,
    Docker,
    Qemu,
}

impl Driver {
    pub const ALL: [Driver; 3] = [Driver::Native, Driver::Docker, Driver::Qemu];
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Native => "native",
            Driver::Docker => "docker",
            Driver::Qemu => "qemu",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Driver::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("expected a driver (native|docker|qemu), got {s:?}"))
    }
}

/// The signal that asks localkube to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    Hup,
}

impl StopSignal {
    /// The POSIX signal number.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => 15,
            StopSignal::Int => 2,
            StopSignal::Quit => 3,
            StopSignal::Hup => 1,
        }
    }
}

/// A file of the PKI kubestrap makes for a cluster, which localkube may be
/// told to find at a path of its own (`run.pki-files`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum PkiFile {
    #[serde(rename = "ca.crt")]
    CaCert,
    #[serde(rename = "ca.key")]
    CaKey,
    #[serde(rename = "apiserver.crt")]
    ApiserverCert,
    #[serde(rename = "apiserver.key")]
    ApiserverKey,
    #[serde(rename = "admin.crt")]
    AdminCert,
    #[serde(rename = "admin.key")]
    AdminKey,
    #[serde(rename = "sa.key")]
    ServiceAccountKey,
    #[serde(rename = "sa.pub")]
    ServiceAccountPub,
    #[serde(rename = "token.csv")]
    TokenCsv,
    /// The CA of the front proxy's request-header client certificates: its
    /// own CA, so that a client certificate from `ca` cannot assert headers.
    #[serde(rename = "request-header-ca.crt")]
    RequestHeaderCaCert,
    #[serde(rename = "request-header-ca.key")]
    RequestHeaderCaKey,
    /// The CA of etcd's peer and server certificates.
    #[serde(rename = "etcd-ca.crt")]
    EtcdCaCert,
    #[serde(rename = "etcd-ca.key")]
    EtcdCaKey,
}

impl PkiFile {
    /// The files every PKI has since its first start.
    pub const CORE: [PkiFile; 9] = [
        PkiFile::CaCert,
        PkiFile::CaKey,
        PkiFile::ApiserverCert,
        PkiFile::ApiserverKey,
        PkiFile::AdminCert,
        PkiFile::AdminKey,
        PkiFile::ServiceAccountKey,
        PkiFile::ServiceAccountPub,
        PkiFile::TokenCsv,
    ];
    /// The extra CAs (certificate, key) a localkube such as k3s needs; added
    /// to an existing PKI without touching its core.
    pub const EXTRA_CAS: [(PkiFile, PkiFile, &'static str); 2] = [
        (PkiFile::RequestHeaderCaCert, PkiFile::RequestHeaderCaKey, "request-header-ca"),
        (PkiFile::EtcdCaCert, PkiFile::EtcdCaKey, "etcd-ca"),
    ];
    /// The file's name inside the profile's `pki/` directory.
    pub fn file_name(self) -> &'static str {
        match self {
            PkiFile::CaCert => "ca.crt",
            PkiFile::CaKey => "ca.key",
            PkiFile::ApiserverCert => "apiserver.crt",
            PkiFile::ApiserverKey => "apiserver.key",
            PkiFile::AdminCert => "admin.crt",
            PkiFile::AdminKey => "admin.key",
            PkiFile::ServiceAccountKey => "sa.key",
            PkiFile::ServiceAccountPub => "sa.pub",
            PkiFile::TokenCsv => "token.csv",
            PkiFile::RequestHeaderCaCert => "request-header-ca.crt",
            PkiFile::RequestHeaderCaKey => "request-header-ca.key",
            PkiFile::EtcdCaCert => "etcd-ca.crt",
            PkiFile::EtcdCaKey => "etcd-ca.key",
        }
    }
    /// Whether the file holds a secret (written 0600).
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            PkiFile::CaKey
                | PkiFile::ApiserverKey
                | PkiFile::AdminKey
                | PkiFile::ServiceAccountKey
                | PkiFile::TokenCsv
                | PkiFile::RequestHeaderCaKey
                | PkiFile::EtcdCaKey
        )
    }
}
