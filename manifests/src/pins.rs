//! Release channel pins (`manifests/channel/pins.toml`): upstream k3s,
//! kubectl and air-gap image artifacts with the sha256 (and size, where a
//! public source gives one) a maintainer found, each with its sources.
//! `kubestrap manifest generate --pins` refuses upstream checksums that
//! disagree with them; a release whose every pin has a size is complete.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{ManifestError, Sha256, Target, load_toml};

/// The upstream URL patterns (from the projects' own release pages).
pub const KUBECTL_URL: &str = "https://dl.k8s.io/release/{version}/bin/{os}/{arch}/kubectl";
pub const K3S_URL: &str = "https://github.com/k3s-io/k3s/releases/download/{version}/{asset}";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pins {
    #[serde(default)]
    pub release: Vec<PinnedRelease>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PinnedRelease {
    pub kubernetes: semver::Version,
    /// `vX.Y.Z+k3sN`.
    pub k3s: String,
    /// `vX.Y.Z`.
    pub kubectl: String,
    /// What is still missing before this release can be signed, in words.
    #[serde(default)]
    pub missing: Vec<String>,
    #[serde(default)]
    pub pin: Vec<Pin>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pin {
    /// kubectl, localkube or images.
    pub component: String,
    pub target: Target,
    pub url: String,
    pub sha256: Sha256,
    pub size: Option<u64>,
    /// Where each value was found: `owner/repo path@commit (what it says)`.
    pub sources: Vec<String>,
}

impl Pins {
    pub fn load(path: &Path) -> Result<Pins, ManifestError> {
        load_toml(path)
    }

    /// The pin of an upstream URL, if any.
    pub fn find(&self, url: &str) -> Option<&Pin> {
        self.release.iter().flat_map(|r| &r.pin).find(|p| p.url == url)
    }

    /// Every way the data breaks the channel's rules; empty when it holds.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<&str, &Pin> = BTreeMap::new();
        for r in &self.release {
            let name = format!("release {}", r.kubernetes);
            out.extend(r.problems().into_iter().map(|p| format!("{name}: {p}")));
            for p in &r.pin {
                if let Some(q) = seen.insert(&p.url, p)
                    && (q.sha256 != p.sha256 || q.size != p.size)
                {
                    out.push(format!("{name}: {} is pinned twice with different values", p.url));
                }
            }
        }
        out
    }
}

/// `vX.Y.Z` (or `vX.Y.Z+k3sN`) → X.Y.Z.
pub fn version_core(v: &str) -> Option<semver::Version> {
    let v = v.strip_prefix('v')?;
    semver::Version::parse(v.split('+').next()?).ok()
}

/// The k3s asset of an architecture (k3s is Linux only).
pub fn k3s_asset(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("k3s"),
        "aarch64" => Some("k3s-arm64"),
        "armv7" => Some("k3s-armhf"),
        _ => None,
    }
}

/// The Go architecture name upstream uses in file names.
pub fn go_arch(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "armv7" => Some("arm"),
        _ => None,
    }
}

/// The upstream URL of a component's artifact for a target.
pub fn upstream_url(component: &str, version: &str, target: &Target) -> Option<String> {
    let arch = go_arch(&target.arch)?;
    match component {
        "kubectl" => Some(
            KUBECTL_URL.replace("{version}", version).replace("{os}", &target.os).replace("{arch}", arch)
                + if target.os == "windows" { ".exe" } else { "" },
        ),
        "localkube" if target.os == "linux" => Some(
            K3S_URL.replace("{version}", &version.replace('+', "%2B")).replace("{asset}", k3s_asset(&target.arch)?),
        ),
        "images" if target.os == "linux" => Some(
            K3S_URL
                .replace("{version}", &version.replace('+', "%2B"))
                .replace("{asset}", &format!("k3s-airgap-images-{arch}.tar.zst")),
        ),
        _ => None,
    }
}

impl PinnedRelease {
    /// Complete: every pin has a size and nothing is listed as missing.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.pin.iter().all(|p| p.size.is_some())
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match (version_core(&self.k3s), self.k3s.split_once("+k3s")) {
            (Some(v), Some((_, n))) if v == self.kubernetes && n.parse::<u32>().is_ok() => {}
            _ => out.push(format!("k3s {:?} is not v{}+k3sN", self.k3s, self.kubernetes)),
        }
        match version_core(&self.kubectl) {
            // kubectl is supported within one minor of the apiserver.
            Some(k) if k.major == self.kubernetes.major && k.minor.abs_diff(self.kubernetes.minor) <= 1 => {}
            _ => out.push(format!(
                "kubectl {:?} is not within one minor of Kubernetes {} (the skew policy)",
                self.kubectl, self.kubernetes
            )),
        }
        let text = format!("{self:?}").to_lowercase();
        if text.contains("standin") || text.contains("stand-in") {
            out.push("names the test stand-in, which never belongs in release channel data".into());
        }
        for p in &self.pin {
            let what = format!("{} {}", p.component, p.target);
            let version = match p.component.as_str() {
                "kubectl" => &self.kubectl,
                "localkube" | "images" => &self.k3s,
                other => {
                    out.push(format!("{what}: unknown component {other:?}"));
                    continue;
                }
            };
            if upstream_url(&p.component, version, &p.target).as_deref() != Some(p.url.as_str()) {
                out.push(format!("{what}: url {} is not upstream's URL for {version}", p.url));
            }
            if p.sources.is_empty() || p.sources.iter().any(|s| s.trim().len() < 10) {
                out.push(format!("{what}: every pin names the public file(s) its values were found in"));
            }
            if p.size == Some(0) {
                out.push(format!("{what}: size 0"));
            }
        }
        if !self.pin.iter().any(|p| p.component == "kubectl") || !self.pin.iter().any(|p| p.component == "localkube") {
            out.push("pins no kubectl or no localkube (k3s)".into());
        }
        out
    }
}
