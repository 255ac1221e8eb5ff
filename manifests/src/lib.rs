//! kubestrap manifest, schema 1: what a cluster release is made of.
//!
//! A manifest pins every artifact by URL list, sha256 and exact size, and says
//! how localkube runs. Parsing checks every value as it is read, so an error
//! names the file, line:column, the field and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

mod error;
mod header;
mod index;
pub mod pins;
mod run;
mod template;
mod types;

pub use error::ManifestError;
use header::Header;

pub use index::{ChannelEntry, ChannelIndex, Executable, INDEX_SCHEMA};
pub use run::{Agent, MAX_FILE_BYTES, Run};
pub use template::{NAMES as TEMPLATE_NAMES, Template, Vars};
pub use types::{ARCHES, Driver, OSES, PkiFile, Sha256, Size, StopSignal, Target, Unpack};

/// The only schema this code reads.
pub const SCHEMA: u32 = 1;

/// A parsed, validated manifest.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawManifest")]
pub struct Manifest {
    pub schema: u32,
    pub channel: String,
    pub version: u64,
    pub kubernetes: semver::Version,
    #[serde(with = "time::serde::rfc3339")]
    pub published: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub requires_bootstrap: semver::VersionReq,
    pub component: Components,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    schema: u32,
    channel: String,
    version: u64,
    kubernetes: semver::Version,
    #[serde(with = "time::serde::rfc3339")]
    published: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
    requires_bootstrap: semver::VersionReq,
    component: Components,
}

impl TryFrom<RawManifest> for Manifest {
    type Error = String;
    fn try_from(r: RawManifest) -> Result<Self, String> {
        let header = Header {
            schema: r.schema,
            channel: Some(&r.channel),
            version: r.version,
            published: r.published,
            expires: r.expires,
        };
        header.check(
            SCHEMA,
            &format!("this kubestrap reads schema {SCHEMA} only (run `kubestrap self-update` for newer schemas)"),
        )?;
        Ok(Manifest {
            schema: r.schema,
            channel: r.channel,
            version: r.version,
            kubernetes: r.kubernetes,
            published: r.published,
            expires: r.expires,
            requires_bootstrap: r.requires_bootstrap,
            component: r.component,
        })
    }
}

/// The components a release is made of. Unknown component names are errors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Components {
    pub kubectl: Component,
    pub localkube: Localkube,
    pub hypervisor: Option<Component>,
    pub base_image: Option<Component>,
    /// Container image archives localkube imports at start (k3s's air-gap
    /// images), placed into `run.images-dir`. Per target like localkube.
    pub images: Option<Component>,
    /// The docker driver's base root filesystem (a tar.zst imported into the
    /// engine as an image). Per target like localkube.
    pub rootfs: Option<Component>,
}

/// One component: a version and an artifact per target.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawComponent")]
pub struct Component {
    pub version: String,
    /// Drivers that need this component; absent means every driver.
    pub drivers: Option<Vec<Driver>>,
    pub target: BTreeMap<Target, Artifact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawComponent {
    version: String,
    drivers: Option<Vec<Driver>>,
    target: BTreeMap<Target, Artifact>,
}

impl TryFrom<RawComponent> for Component {
    type Error = String;
    fn try_from(r: RawComponent) -> Result<Self, String> {
        check_component(&r.version, &r.drivers, &r.target)?;
        Ok(Component { version: r.version, drivers: r.drivers, target: r.target })
    }
}

fn check_component(
    version: &str,
    drivers: &Option<Vec<Driver>>,
    target: &BTreeMap<Target, Artifact>,
) -> Result<(), String> {
    if version.is_empty() {
        return Err("version: expected a non-empty version string".into());
    }
    // Shown, logged and used in labels and file names.
    template::check_no_control(version).map_err(|e| format!("version: {e}"))?;
    if drivers.as_ref().is_some_and(|d| d.is_empty()) {
        return Err("drivers: expected at least one of native|docker|qemu, or no `drivers` key for all".into());
    }
    if target.is_empty() {
        return Err("target: expected at least one [component.NAME.target.<os>-<arch>] table".into());
    }
    Ok(())
}

/// localkube: a component plus how to run it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawLocalkube")]
pub struct Localkube {
    pub version: String,
    pub drivers: Option<Vec<Driver>>,
    pub target: BTreeMap<Target, Artifact>,
    pub run: Run,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLocalkube {
    version: String,
    drivers: Option<Vec<Driver>>,
    target: BTreeMap<Target, Artifact>,
    run: Run,
}

impl TryFrom<RawLocalkube> for Localkube {
    type Error = String;
    fn try_from(r: RawLocalkube) -> Result<Self, String> {
        check_component(&r.version, &r.drivers, &r.target)?;
        Ok(Localkube { version: r.version, drivers: r.drivers, target: r.target, run: r.run })
    }
}

impl Localkube {
    /// This component seen as a plain component (for fetching and caching).
    pub fn as_component(&self) -> Component {
        Component { version: self.version.clone(), drivers: self.drivers.clone(), target: self.target.clone() }
    }
}

/// One downloadable artifact.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawArtifact")]
pub struct Artifact {
    /// Tried in order.
    pub urls: Vec<String>,
    pub sha256: Sha256,
    pub size: Size,
    pub unpack: Unpack,
    /// The executable inside the unpacked tree (for `file`, the name it is saved as).
    pub bin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawArtifact {
    urls: Vec<String>,
    sha256: Sha256,
    size: Size,
    unpack: Unpack,
    bin: String,
}

impl TryFrom<RawArtifact> for Artifact {
    type Error = String;
    fn try_from(r: RawArtifact) -> Result<Self, String> {
        if r.urls.is_empty() {
            return Err("urls: expected at least one URL".into());
        }
        for url in &r.urls {
            template::check_no_control(url).map_err(|e| format!("urls: {e}"))?;
            check_url(url)?;
        }
        check_rel_path("bin", &r.bin)?;
        if r.unpack == Unpack::File && r.bin.contains('/') {
            return Err(format!("bin: expected a plain file name for unpack = \"file\", got {:?}", r.bin));
        }
        Ok(Artifact { urls: r.urls, sha256: r.sha256, size: r.size, unpack: r.unpack, bin: r.bin })
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let ok = match url::Url::parse(url) {
        Ok(u) => match u.scheme() {
            "http" | "https" => u.has_host(),
            "file" => u.path().len() > 1,
            _ => false,
        },
        Err(_) => url.starts_with('/'),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("urls: expected https://, http://, file:// URLs or absolute paths, got {url:?}"))
    }
}

pub(crate) fn check_rel_path(field: &str, p: &str) -> Result<(), String> {
    template::check_no_control(p).map_err(|e| format!("{field}: {e}"))?;
    let bad = p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(format!("{field}: expected a relative path without '.', '..' or empty parts, got {p:?}"))
    } else {
        Ok(())
    }
}

/// The components a manifest can pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComponentName {
    Kubectl,
    Localkube,
    Hypervisor,
    BaseImage,
    Images,
    Rootfs,
}

impl ComponentName {
    /// The name in a manifest (`[component.<name>]`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ComponentName::Kubectl => "kubectl",
            ComponentName::Localkube => "localkube",
            ComponentName::Hypervisor => "hypervisor",
            ComponentName::BaseImage => "base-image",
            ComponentName::Images => "images",
            ComponentName::Rootfs => "rootfs",
        }
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One artifact a machine needs, with the component it belongs to.
#[derive(Clone, Debug)]
pub struct Need {
    pub component: ComponentName,
    pub version: String,
    pub target: Target,
    pub artifact: Artifact,
}

impl Manifest {
    /// Parses and validates manifest bytes; `file` names them in errors.
    pub fn parse(bytes: &[u8], file: &Path) -> Result<Manifest, ManifestError> {
        parse_toml(bytes, file)
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        load_toml(path)
    }

    /// Every component with its name, localkube included.
    pub fn components(&self) -> Vec<(ComponentName, Component)> {
        let c = &self.component;
        let mut out =
            vec![(ComponentName::Kubectl, c.kubectl.clone()), (ComponentName::Localkube, c.localkube.as_component())];
        let optional = [
            (ComponentName::Hypervisor, &c.hypervisor),
            (ComponentName::BaseImage, &c.base_image),
            (ComponentName::Images, &c.images),
            (ComponentName::Rootfs, &c.rootfs),
        ];
        out.extend(optional.into_iter().filter_map(|(n, c)| c.clone().map(|c| (n, c))));
        out
    }

    /// The artifacts a machine of `host` needs to run `driver`. localkube runs
    /// on the host for native, and in a `linux-<arch>` guest otherwise.
    pub fn needs(&self, host: &Target, driver: Driver) -> Result<Vec<Need>, String> {
        let mut out = Vec::new();
        for (name, comp) in self.components() {
            if comp.drivers.as_ref().is_some_and(|d| !d.contains(&driver)) {
                continue;
            }
            // localkube and the images it imports run where localkube runs.
            let runs_with_localkube =
                matches!(name, ComponentName::Localkube | ComponentName::Images | ComponentName::Rootfs);
            let want = if runs_with_localkube && driver != Driver::Native {
                Target { os: "linux".into(), arch: host.arch.clone() }
            } else {
                host.clone()
            };
            let artifact = comp.target.get(&want).cloned().ok_or_else(|| {
                format!(
                    "component {name} has no artifact for target {want} (it has: {})",
                    comp.target.keys().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
                )
            })?;
            out.push(Need { component: name, version: comp.version, target: want, artifact });
        }
        Ok(out)
    }

    /// Every artifact of every component and target.
    pub fn all_artifacts(&self) -> Vec<(String, Target, Artifact)> {
        let mut out = Vec::new();
        for (name, comp) in self.components() {
            for (t, a) in comp.target {
                out.push((format!("{name} {}", comp.version), t, a));
            }
        }
        out
    }

    /// The manifest as schema-1 TOML. The one manifest writer: `kubestrap
    /// manifest new`, the tests, `bench/` and `ci/` all write through it.
    /// The text parses back to an equal manifest (checked by `parse`).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a manifest serializes to TOML");
        format!("# kubestrap manifest, schema {SCHEMA}\n{body}")
    }

    /// Builds an artifact, checked like one read from a manifest.
    pub fn artifact(
        urls: Vec<String>,
        sha256: Sha256,
        size: u64,
        unpack: Unpack,
        bin: &str,
    ) -> Result<Artifact, String> {
        let size = Size::new(size).ok_or("size: expected a size in bytes greater than 0")?;
        Artifact::try_from(RawArtifact { urls, sha256, size, unpack, bin: bin.to_string() })
    }

    /// A short name for the manifest: `<channel>-<version>`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.channel, self.version)
    }
}

/// The most a manifest, index or pins file may hold.
pub const DOCUMENT_CAP: u64 = 1 << 20;

/// Reads a document file (at most [`DOCUMENT_CAP`] bytes) and parses it.
pub(crate) fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ManifestError> {
    // Capped, and only a regular file: a FIFO or device is refused at once.
    let bytes = kubestrap_fskit::read_capped(path, DOCUMENT_CAP).map_err(|e| ManifestError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
        snippet: String::new(),
    })?;
    parse_toml(&bytes, path)
}

/// Parses UTF-8 TOML into a validated document; errors name file:line:column.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(bytes: &[u8], file: &Path) -> Result<T, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("expected UTF-8 text: {e}"),
        snippet: String::new(),
    })?;
    toml::from_str::<T>(text).map_err(|e| ManifestError::from_toml(file, text, &e))
}

/// Formats a time as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Human summary for `kubestrap manifest check`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub channel: String,
    pub version: u64,
    pub kubernetes: String,
    pub published: String,
    pub expires: String,
    pub requires_bootstrap: String,
    pub components: Vec<ComponentSummary>,
    pub total_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ComponentSummary {
    pub name: String,
    pub version: String,
    pub drivers: Vec<String>,
    pub targets: Vec<String>,
    pub bytes: u64,
}

impl Manifest {
    pub fn summary(&self) -> Summary {
        let components: Vec<ComponentSummary> = self
            .components()
            .into_iter()
            .map(|(name, c)| ComponentSummary {
                name: name.to_string(),
                version: c.version.clone(),
                drivers: match &c.drivers {
                    Some(d) => d.iter().map(|d| d.to_string()).collect(),
                    None => vec!["all".into()],
                },
                targets: c.target.keys().map(|t| t.to_string()).collect(),
                bytes: c.target.values().fold(0u64, |n, a| n.saturating_add(a.size.get())),
            })
            .collect();
        Summary {
            channel: self.channel.clone(),
            version: self.version,
            kubernetes: self.kubernetes.to_string(),
            published: rfc3339(self.published),
            expires: rfc3339(self.expires),
            requires_bootstrap: self.requires_bootstrap.to_string(),
            total_bytes: components.iter().fold(0u64, |n, c| n.saturating_add(c.bytes)),
            components,
        }
    }
}

#[cfg(test)]
mod tests;
