//! `kubestrap manifest generate`: a release manifest from upstream's own
//! checksum files (`kubectl.sha256` beside each kubectl, k3s's
//! `sha256sum-<arch>.txt`) and sizes (HTTP HEAD; a full download, hashed
//! end to end, with `--verify` or when HEAD gives none). Against a mirror
//! laid out like upstream (`{base}/dl.k8s.io/...`, `{base}/github.com/...`)
//! with a base URL. Every value is checked against the channel's pins when
//! given. Written by the one manifest writer; unsigned.

use std::collections::BTreeMap;
use std::io::Read;

use kubestrap_manifest::pins::{self, Pins};
use kubestrap_manifest::{Artifact, Component, Components, Localkube, Manifest, Run, Sha256, Target, Unpack};
use reqwest::blocking::Client;
use reqwest::header::CONTENT_LENGTH;
use url::Url;

use crate::artifacts::hash::HashingReader;
use crate::artifacts::source::describe_error;
use crate::urls;

/// A checksum file is small; anything bigger is not one.
const CHECKSUMS_CAP: u64 = 1 << 20;
/// The biggest artifact `--verify` downloads.
const ARTIFACT_CAP: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{what} has no {target} build upstream: {url} answers 404; check the version and --target")]
    NoBuild { what: String, target: String, url: String },
    #[error("{url} lists no {name:?} (it lists: {}); is the release name right?", listed.join(", "))]
    NotListed { url: String, name: String, listed: Vec<String> },
    #[error("{url}: not a checksum file ({reason})")]
    BadChecksums { url: String, reason: String },
    #[error(
        "{url}: upstream says {what} {upstream}, but the channel pins say {pinned} ({sources}); do not sign \
         this: find out which is wrong first"
    )]
    PinMismatch { url: String, what: &'static str, upstream: String, pinned: String, sources: String },
    #[error("{url}: the server announced {announced} bytes, but the download was {got} bytes")]
    SizeMismatch { url: String, announced: u64, got: u64 },
    #[error("{url}: the download has sha256 {got}, but upstream's checksum file says {want}")]
    HashMismatch { url: String, want: Sha256, got: Sha256 },
    #[error("{0}")]
    Usage(String),
}

type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// What to generate.
pub struct Request {
    pub kubernetes: semver::Version,
    /// `vX.Y.Z+k3sN`.
    pub k3s: String,
    /// `vX.Y.Z`.
    pub kubectl: String,
    /// Host targets; localkube (and its images) are for `linux-<arch>`.
    pub targets: Vec<Target>,
    pub base_url: Option<Url>,
    pub images: bool,
    pub verify: bool,
    /// The project's own hypervisor, base image and rootfs.
    pub driver_artifacts: Option<DriverArtifacts>,
    pub pins: Option<Pins>,
    pub run: Run,
    pub channel: String,
    pub version: u64,
    pub published: time::OffsetDateTime,
    pub valid_for: std::time::Duration,
    pub requires_bootstrap: semver::VersionReq,
}

/// The docker and qemu drivers' artifacts, which kubestrap builds itself
/// (ci/vm/build.sh, ci/docker/build.sh) and a release serves beside its
/// manifests: pinned from the files, served from `url`.
pub struct DriverArtifacts {
    pub dir: std::path::PathBuf,
    pub url: Url,
}

/// (component, file name prefix, unpack, bin, driver)
const DRIVER_ARTIFACTS: [(&str, &str, Unpack, &str, kubestrap_manifest::Driver); 3] = [
    ("hypervisor", "hypervisor-", Unpack::TarZst, "bin/qemu-system-x86_64", kubestrap_manifest::Driver::Qemu),
    ("base-image", "base-", Unpack::TarZst, "vmlinuz", kubestrap_manifest::Driver::Qemu),
    ("rootfs", "rootfs-", Unpack::File, "", kubestrap_manifest::Driver::Docker),
];

/// The driver artifacts in `d.dir`, for the machines they were built for
/// (`<name>-linux-<arch>.tar.zst`): component → (version, target, artifact).
fn driver_components(d: &DriverArtifacts, report: Report) -> Result<BTreeMap<&'static str, Component>> {
    let usage = |m: String| GenerateError::Usage(m);
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&d.dir)
        .map_err(|e| usage(format!("--driver-artifacts {}: {e}", d.dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    names.sort();
    let mut out = BTreeMap::new();
    for (component, prefix, unpack, bin, driver) in DRIVER_ARTIFACTS {
        let mut found = false;
        for path in names.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix))) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(".tar.zst").trim_start_matches(prefix);
            // `<version>-linux-<arch>`
            let Some((version, target)) = stem.rsplit_once("-linux-").map(|(v, a)| (v, format!("linux-{a}"))) else {
                return Err(usage(format!("{}: expected <name>-<version>-linux-<arch>.tar.zst", path.display())));
            };
            let target: Target = target.parse().map_err(usage)?;
            let file = std::fs::File::open(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let (sha, size) =
                HashingReader::new(file).finish().map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let url = d.url.join(&name).map_err(|e| usage(format!("--driver-artifacts-url: {e}")))?;
            let bin = if bin.is_empty() { name.as_str() } else { bin };
            let artifact = Manifest::artifact(vec![url.to_string()], sha, size, unpack, bin).map_err(usage)?;
            report(&format!("{component} {version} {target}: {} {size} bytes, built by the project", sha.short()));
            let c = out.entry(component).or_insert_with(|| Component {
                version: version.to_string(),
                drivers: Some(vec![driver]),
                target: BTreeMap::new(),
            });
            c.target.insert(target, artifact);
            found = true;
        }
        if !found {
            return Err(usage(format!("--driver-artifacts {}: no {prefix}*.tar.zst", d.dir.display())));
        }
    }
    Ok(out)
}

/// One line of progress for each artifact measured.
pub type Report<'a> = &'a dyn Fn(&str);

/// One artifact to measure: where upstream has it, which checksum file
/// lists it under which name, and the name it is saved as.
#[derive(Clone, Copy)]
struct Wanted<'a> {
    component: &'static str,
    version: &'a str,
    target: &'a Target,
    upstream: &'a str,
    sum_file: &'a str,
    name: &'a str,
    bin: &'a str,
}

struct Fetcher<'a> {
    client: &'a Client,
    base: Option<&'a Url>,
    verify: bool,
    pins: Option<&'a Pins>,
    /// Checksum files read once each.
    sums: BTreeMap<String, BTreeMap<String, Sha256>>,
}

impl Fetcher<'_> {
    /// Where an upstream URL is read from: the mirror when there is one.
    fn at(&self, upstream: &str) -> Result<Url> {
        let u = Url::parse(upstream).map_err(|e| GenerateError::Usage(format!("{upstream}: {e}")))?;
        match self.base {
            None => Ok(u),
            Some(base) => {
                let rel = format!("{}{}", u.host_str().unwrap_or_default(), u.path());
                let mut b = base.clone();
                if !b.path().ends_with('/') {
                    b.set_path(&format!("{}/", b.path()));
                }
                b.join(&rel).map_err(|e| GenerateError::Usage(format!("--base-url {base}: {e}")))
            }
        }
    }

    fn get(&self, url: &Url, cap: u64) -> Result<Vec<u8>> {
        let shown = urls::redact(url.as_str());
        let resp = self
            .client
            .get(url.clone())
            .send()
            .map_err(|e| GenerateError::Http { url: shown.clone(), reason: describe_error(&e) })?;
        if !resp.status().is_success() {
            return Err(GenerateError::Http { url: shown, reason: format!("HTTP {}", resp.status()) });
        }
        let mut bytes = Vec::new();
        resp.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| GenerateError::Http { url: shown.clone(), reason: urls::redact_text(&e.to_string()) })?;
        if bytes.len() as u64 > cap {
            return Err(GenerateError::Http { url: shown, reason: format!("larger than {cap} bytes") });
        }
        Ok(bytes)
    }

    /// The size a HEAD announces; `None` when the server gives none. A 404
    /// is `Ok(Err(()))`: the caller names what is missing.
    fn head(&self, url: &Url) -> Result<Result<Option<u64>, ()>> {
        let shown = urls::redact(url.as_str());
        let resp = self
            .client
            .head(url.clone())
            .send()
            .map_err(|e| GenerateError::Http { url: shown.clone(), reason: describe_error(&e) })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Err(()));
        }
        if !resp.status().is_success() {
            return Err(GenerateError::Http { url: shown, reason: format!("HTTP {} to HEAD", resp.status()) });
        }
        let len = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Ok(Ok(len.filter(|n| *n > 0)))
    }

    /// Downloads an artifact, hashing it: (sha256, size).
    fn download(&self, url: &Url) -> Result<(Sha256, u64)> {
        let shown = urls::redact(url.as_str());
        let resp = self
            .client
            .get(url.clone())
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| GenerateError::Http { url: shown.clone(), reason: describe_error(&e) })?;
        let (sha, size) = HashingReader::new(resp.take(ARTIFACT_CAP + 1))
            .finish()
            .map_err(|e| GenerateError::Http { url: shown.clone(), reason: urls::redact_text(&e.to_string()) })?;
        if size > ARTIFACT_CAP {
            return Err(GenerateError::Http { url: shown, reason: format!("larger than {ARTIFACT_CAP} bytes") });
        }
        Ok((sha, size))
    }

    /// A `sha256sum`-style file: `<hex>  <name>` per line (a name may be
    /// `*name` for binary mode). A file of one bare hash (kubectl.sha256)
    /// maps `""` to it.
    fn checksums(&mut self, upstream: &str) -> Result<&BTreeMap<String, Sha256>> {
        if !self.sums.contains_key(upstream) {
            let at = self.at(upstream)?;
            let bytes = self.get(&at, CHECKSUMS_CAP)?;
            let shown = urls::redact(at.as_str());
            let bad = |reason: String| GenerateError::BadChecksums { url: shown.clone(), reason };
            let text = String::from_utf8(bytes).map_err(|_| bad("not text".into()))?;
            let mut map = BTreeMap::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let mut parts = line.split_whitespace();
                let hex = parts.next().unwrap_or_default();
                let sha: Sha256 = hex.parse().map_err(|_| bad(format!("line {}: {hex:?} is not a sha256", i + 1)))?;
                let name = parts.next().unwrap_or_default().trim_start_matches('*').to_string();
                map.insert(name, sha);
            }
            if map.is_empty() {
                return Err(bad("empty".into()));
            }
            self.sums.insert(upstream.to_string(), map);
        }
        Ok(&self.sums[upstream])
    }

    /// Measures one artifact: its sha256 from `sum_file` (entry `name`),
    /// its size, each checked against the pins.
    fn artifact(&mut self, w: &Wanted, report: Report) -> Result<Artifact> {
        let Wanted { component, version, target, upstream, sum_file, name, bin } = *w;
        let at = self.at(upstream)?;
        let shown = urls::redact(at.as_str());
        let size = match self.head(&at)? {
            Ok(size) => size,
            Err(()) => {
                let (what, target) = (format!("{component} {version}"), target.to_string());
                return Err(GenerateError::NoBuild { what, target, url: shown });
            }
        };
        let sum_at = urls::redact(self.at(sum_file)?.as_str());
        let sums = self.checksums(sum_file)?;
        let sha = match sums.get(name).or_else(|| (sums.len() == 1).then(|| sums.get("")).flatten()) {
            Some(s) => *s,
            None => {
                return Err(GenerateError::NotListed {
                    url: sum_at,
                    name: name.into(),
                    listed: sums.keys().filter(|k| !k.is_empty()).cloned().collect(),
                });
            }
        };
        let size = match (size, self.verify) {
            (Some(announced), false) => announced,
            (announced, _) => {
                let (got_sha, got) = self.download(&at)?;
                if let Some(announced) = announced.filter(|a| *a != got) {
                    return Err(GenerateError::SizeMismatch { url: shown, announced, got });
                }
                if got_sha != sha {
                    return Err(GenerateError::HashMismatch { url: shown, want: sha, got: got_sha });
                }
                got
            }
        };
        if let Some(pin) = self.pins.and_then(|p| p.find(upstream)) {
            let sources = pin.sources.join("; ");
            if pin.sha256 != sha {
                return Err(GenerateError::PinMismatch {
                    url: upstream.into(),
                    what: "sha256",
                    upstream: sha.to_string(),
                    pinned: pin.sha256.to_string(),
                    sources,
                });
            }
            if let Some(pinned) = pin.size.filter(|p| *p != size) {
                return Err(GenerateError::PinMismatch {
                    url: upstream.into(),
                    what: "size",
                    upstream: size.to_string(),
                    pinned: pinned.to_string(),
                    sources,
                });
            }
        }
        report(&format!(
            "{component} {version} {target}: {} {size} bytes{}",
            sha.short(),
            if self.verify { ", downloaded and verified" } else { "" }
        ));
        let mut list = Vec::new();
        if self.base.is_some() {
            list.push(at.to_string());
        }
        list.push(upstream.to_string());
        Manifest::artifact(list, sha, size, Unpack::File, bin).map_err(GenerateError::Usage)
    }
}

/// Builds the manifest (unsigned). Long on purpose: the manifest field by
/// field, in the order the file has them.
pub fn generate(req: &Request, client: &Client, report: Report) -> Result<Manifest> {
    let usage = |m: String| GenerateError::Usage(m);
    match (pins::version_core(&req.k3s), req.k3s.split_once("+k3s")) {
        (Some(v), Some(_)) if v == req.kubernetes => {}
        _ => return Err(usage(format!("--k3s {:?}: expected v{}+k3sN", req.k3s, req.kubernetes))),
    }
    match pins::version_core(&req.kubectl) {
        Some(k) if k.major == req.kubernetes.major && k.minor.abs_diff(req.kubernetes.minor) <= 1 => {}
        _ => {
            return Err(usage(format!(
                "--kubectl {:?}: expected vX.Y.Z within one minor of Kubernetes {} (the skew policy)",
                req.kubectl, req.kubernetes
            )));
        }
    }
    if req.targets.is_empty() {
        return Err(usage("at least one --target".into()));
    }
    let mut f = Fetcher {
        client,
        base: req.base_url.as_ref(),
        verify: req.verify,
        pins: req.pins.as_ref(),
        sums: BTreeMap::new(),
    };
    let mut kubectl = BTreeMap::new();
    let mut localkube = BTreeMap::new();
    let mut images = BTreeMap::new();
    for t in &req.targets {
        let url = pins::upstream_url("kubectl", &req.kubectl, t)
            .ok_or_else(|| usage(format!("--target {t}: upstream builds no kubectl for it")))?;
        let bin = if t.os == "windows" { "kubectl.exe" } else { "kubectl" };
        let sum_file = format!("{url}.sha256");
        let w = Wanted {
            component: "kubectl",
            version: &req.kubectl,
            target: t,
            upstream: &url,
            sum_file: &sum_file,
            name: bin,
            bin,
        };
        let a = f.artifact(&w, report)?;
        kubectl.insert(t.clone(), a);
        // localkube runs on Linux: on the host (native) or in a guest.
        let guest = Target { os: "linux".into(), arch: t.arch.clone() };
        if localkube.contains_key(&guest) {
            continue;
        }
        let arch = pins::go_arch(&t.arch).ok_or_else(|| usage(format!("--target {t}: k3s has no build for it")))?;
        let sums = pins::upstream_url("localkube", &req.k3s, &guest)
            .ok_or_else(|| usage(format!("--target {t}: k3s has no build for it")))?;
        let sum_file = format!("{}/sha256sum-{arch}.txt", sums.rsplit_once('/').map_or("", |x| x.0));
        let asset = pins::k3s_asset(&t.arch).unwrap_or("k3s");
        let k3s = Wanted {
            component: "localkube",
            version: &req.k3s,
            target: &guest,
            upstream: &sums,
            sum_file: &sum_file,
            name: asset,
            bin: &req.run.program,
        };
        let a = f.artifact(&k3s, report)?;
        localkube.insert(guest.clone(), a);
        if req.images {
            let url = pins::upstream_url("images", &req.k3s, &guest).expect("a linux target");
            let name = format!("k3s-airgap-images-{arch}.tar.zst");
            let w = Wanted { component: "images", upstream: &url, name: &name, bin: &name, ..k3s };
            let a = f.artifact(&w, report)?;
            images.insert(guest, a);
        }
    }
    let k3s_version = req.k3s.trim_start_matches('v').to_string();
    let expires = req.published + req.valid_for;
    let mut driver = match &req.driver_artifacts {
        Some(d) => driver_components(d, report)?,
        None => BTreeMap::new(),
    };
    let m = Manifest {
        schema: kubestrap_manifest::SCHEMA,
        channel: req.channel.clone(),
        version: req.version,
        kubernetes: req.kubernetes.clone(),
        published: req.published,
        expires,
        requires_bootstrap: req.requires_bootstrap.clone(),
        component: Components {
            kubectl: Component { version: req.kubectl.trim_start_matches('v').into(), drivers: None, target: kubectl },
            localkube: Localkube {
                version: k3s_version.clone(),
                // With the driver artifacts, every driver; bundles carry them all.
                drivers: req.driver_artifacts.as_ref().map(|_| kubestrap_manifest::Driver::ALL.to_vec()),
                target: localkube,
                run: req.run.clone(),
            },
            hypervisor: driver.remove("hypervisor"),
            base_image: driver.remove("base-image"),
            images: req.images.then_some(Component { version: k3s_version, drivers: None, target: images }),
            rootfs: driver.remove("rootfs"),
        },
    };
    // What was built must read back as a valid manifest.
    Manifest::parse(m.to_toml().as_bytes(), std::path::Path::new("generated manifest"))
        .map_err(|e| usage(e.to_string()))?;
    Ok(m)
}
