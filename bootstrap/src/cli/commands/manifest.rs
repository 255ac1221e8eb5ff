//! `manifest check` and `manifest new`; signing subcommands live in `signing`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use kubestrap_fskit::{self as fskit, caps};
use kubestrap_manifest::{Component, Components, Driver, Localkube, Manifest, Run, Target, Unpack};
use serde_json::json;

use crate::artifacts::hash;
use crate::channel::{self, ChannelError};
use crate::cli::args::{GenerateArgs, IndexArgs, ManifestCmd, NetArgs, NewManifestArgs};
use crate::cli::exit::Code;
use crate::cli::render::{Ui, human_bytes};
use crate::home::Home;

pub fn run(cmd: ManifestCmd, home: &Home, ui: &Ui) -> Result<Code> {
    match cmd {
        ManifestCmd::Check { file } => check(&file, ui),
        ManifestCmd::New(a) => new(*a, ui),
        ManifestCmd::Generate(a) => generate(*a, ui),
        ManifestCmd::Index(a) => index(*a, ui),
        ManifestCmd::Default { manifest, allow_expired, net } => {
            default(manifest.as_deref(), allow_expired, &net, home, ui)
        }
        other => super::signing::manifest(other, home, ui),
    }
}

/// `manifest default`: sets (after verifying and keeping it) or shows the
/// home's default manifest.
fn default(spec: Option<&str>, allow_expired: bool, net: &NetArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let Some(spec) = spec else {
        match channel::default_manifest(home) {
            Some(path) => {
                let m = channel::peek(&path);
                let id = m.as_ref().map_or_else(|| "unreadable".into(), Manifest::id);
                ui.json(json!({"default": path, "manifest": id}));
                ui.line(&format!("{id} ({})", path.display()));
            }
            None => {
                ui.json(json!({"default": null}));
                ui.line("none: `start` with no --manifest uses the stable channel");
            }
        }
        return Ok(Code::Ok);
    };
    let _store =
        home.store_lock(false, || ui.warn("waiting for another kubestrap command that is cleaning the cache…"))?;
    let loaded = channel::load(home, Some(spec), &super::fetch_options(net), allow_expired, ui)?;
    channel::set_default(home, &loaded.path)?;
    ui.json(json!({"default": loaded.path, "manifest": loaded.manifest.id()}));
    ui.line(&format!(
        "default manifest: {} (Kubernetes {}), kept as {}",
        loaded.manifest.id(),
        loaded.manifest.kubernetes,
        loaded.path.display()
    ));
    Ok(Code::Ok)
}

/// Reads and parses a manifest file named on the command line (capped).
pub fn read_manifest(file: &Path) -> Result<Manifest> {
    let bytes = fskit::read_capped(file, caps::DOCUMENT).map_err(|e| match e {
        e if e.is_not_found() => ChannelError::NotFound { path: file.into() },
        source => ChannelError::Unreadable { what: "manifest".into(), source },
    })?;
    Ok(Manifest::parse(&bytes, file)?)
}

fn check(file: &Path, ui: &Ui) -> Result<Code> {
    let m = read_manifest(file)?;
    let s = m.summary();
    ui.json(serde_json::to_value(&s)?);
    ui.line(&format!("{}: valid manifest, schema {}", file.display(), m.schema));
    ui.line(&format!("  channel {} version {}, Kubernetes {}", s.channel, s.version, s.kubernetes));
    ui.line(&format!(
        "  published {}, expires {}, requires kubestrap {}",
        s.published, s.expires, s.requires_bootstrap
    ));
    for c in &s.components {
        ui.line(&format!(
            "  {:<11} {:<16} drivers: {:<12} targets: {} ({})",
            c.name,
            c.version,
            c.drivers.join(","),
            c.targets.join(", "),
            human_bytes(c.bytes)
        ));
    }
    ui.line(&format!("  total {} ({} bytes)", human_bytes(s.total_bytes), s.total_bytes));
    Ok(Code::Ok)
}

/// The k3s run section every release manifest carries.
pub const K3S_RUN: &str = include_str!("../../../../manifests/channel/k3s-run.toml");

fn generate(a: GenerateArgs, ui: &Ui) -> Result<Code> {
    use crate::channel::generate;
    let run_text = match &a.run {
        Some(path) => fskit::read_capped_text(path, caps::DOCUMENT)?,
        None => K3S_RUN.to_string(),
    };
    let run: Run = toml::from_str(&run_text).map_err(|e| anyhow::anyhow!("run section: {e}"))?;
    let pins = match &a.pins {
        Some(p) => Some(kubestrap_manifest::pins::Pins::load(p)?),
        None => None,
    };
    let base_url = match &a.base_url {
        Some(u) => Some(url::Url::parse(u).map_err(|e| anyhow::anyhow!("--base-url {}: {e}", crate::urls::redact(u)))?),
        None => None,
    };
    let targets = if a.targets.is_empty() {
        vec![
            "linux-x86_64".parse::<Target>().map_err(anyhow::Error::msg)?,
            "linux-aarch64".parse().map_err(anyhow::Error::msg)?,
        ]
    } else {
        a.targets.clone()
    };
    let this = semver::Version::parse(env!("CARGO_PKG_VERSION"))?;
    let req = generate::Request {
        kubectl: a.kubectl.clone().unwrap_or_else(|| format!("v{}", a.kubernetes)),
        kubernetes: a.kubernetes,
        k3s: a.k3s,
        targets,
        base_url,
        images: a.images,
        verify: a.verify,
        driver_artifacts: match (&a.driver_artifacts, &a.driver_artifacts_url) {
            (Some(dir), Some(url)) => Some(generate::DriverArtifacts {
                dir: dir.clone(),
                url: url::Url::parse(url).map_err(|e| anyhow::anyhow!("--driver-artifacts-url {url}: {e}"))?,
            }),
            _ => None,
        },
        pins,
        run,
        channel: a.channel,
        version: a.manifest_version,
        published: published_now()?,
        valid_for: a.valid_for,
        requires_bootstrap: a
            .requires_bootstrap
            .unwrap_or_else(|| format!(">={this}").parse().expect("a version requirement")),
    };
    let client = crate::artifacts::source::client(&super::fetch_options(&a.net))?;
    let m = generate::generate(&req, &client, &|line| ui.line(line))?;
    let text = m.to_toml();
    fskit::write_atomic(&a.out, text.as_bytes(), 0o644)?;
    ui.json(serde_json::json!({"manifest": a.out, "id": m.id(), "summary": m.summary()}));
    ui.line(&format!(
        "wrote {} ({}, Kubernetes {}, unsigned); check it with `kubestrap manifest check`, sign it with `kubestrap manifest sign --key KEY {}`",
        a.out.display(),
        m.id(),
        m.kubernetes,
        a.out.display()
    ));
    Ok(Code::Ok)
}

/// A file inside the index's directory, as a URL relative to the index.
fn relative_to(dir: &Path, file: &Path) -> Result<String> {
    let file = std::path::absolute(file)?;
    let rel = file
        .strip_prefix(dir)
        .map_err(|_| anyhow::anyhow!("{} is not inside {}, the index's directory", file.display(), dir.display()))?;
    let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    Ok(parts.join("/"))
}

fn index(a: IndexArgs, ui: &Ui) -> Result<Code> {
    use kubestrap_manifest::{ChannelEntry, ChannelIndex, Executable, Size};
    let out = std::path::absolute(&a.out)?;
    let dir = out.parent().context("--out needs a directory")?.to_path_buf();
    let size = |n: u64| Size::new(n).context("an empty file");
    let mut channel = BTreeMap::new();
    for path in &a.channels {
        let m = read_manifest(path)?;
        let (sha256, bytes) = hash::hash_file(path)?;
        let entry = ChannelEntry { version: m.version, url: relative_to(&dir, path)?, sha256, size: size(bytes)? };
        if channel.insert(m.channel.clone(), entry).is_some() {
            bail!("--channel: two manifests of channel {:?}", m.channel);
        }
    }
    let version = match a.kubestrap_version {
        Some(v) => v,
        None => semver::Version::parse(env!("CARGO_PKG_VERSION"))?,
    };
    let mut kubestrap = BTreeMap::new();
    for spec in &a.executables {
        let (target, file) = spec.split_once('=').context("--kubestrap: expected TARGET=FILE")?;
        let target: Target = target.parse().map_err(anyhow::Error::msg)?;
        let file = Path::new(file);
        let (sha256, bytes) = hash::hash_file(file).with_context(|| format!("--kubestrap {spec:?}"))?;
        let urls = vec![relative_to(&dir, file)?];
        kubestrap.insert(target, Executable { version: version.clone(), urls, sha256, size: size(bytes)? });
    }
    let published = published_now()?;
    let text = ChannelIndex {
        schema: kubestrap_manifest::INDEX_SCHEMA,
        version: a.index_version,
        published,
        expires: published + a.valid_for,
        channel,
        kubestrap,
    }
    .to_toml();
    // What was written must read back as a valid index.
    ChannelIndex::parse(text.as_bytes(), &out)?;
    fskit::write_atomic(&out, text.as_bytes(), 0o644)?;
    ui.json(serde_json::json!({"index": out, "version": a.index_version}));
    ui.line(&format!(
        "wrote {} (version {}); sign it with `kubestrap manifest sign --key KEY {}`",
        out.display(),
        a.index_version,
        out.display()
    ));
    Ok(Code::Ok)
}

/// `NAME@VERSION=FILE[#BIN]`.
struct ComponentSpec {
    name: String,
    version: String,
    file: std::path::PathBuf,
    bin: Option<String>,
}

fn parse_component(s: &str) -> Result<ComponentSpec> {
    let usage = || format!("--component {s:?}: expected NAME@VERSION=FILE[#BIN]");
    let (name, rest) = s.split_once('@').with_context(usage)?;
    let (version, file) = rest.split_once('=').with_context(usage)?;
    let (file, bin) = match file.rsplit_once('#') {
        Some((f, b)) => (f, Some(b.to_string())),
        None => (file, None),
    };
    if name.is_empty() || version.is_empty() || file.is_empty() {
        bail!(usage());
    }
    Ok(ComponentSpec { name: name.into(), version: version.into(), file: file.into(), bin })
}

/// `NAME=VALUE` options, grouped by name.
fn by_name(opts: &[String], flag: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in opts {
        let (k, v) = o.split_once('=').with_context(|| format!("--{flag} {o:?}: expected NAME=VALUE"))?;
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    Ok(out)
}

fn unpack_of(file: &Path) -> Unpack {
    let name = file_name(file);
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Unpack::TarGz
    } else if name.ends_with(".tar.zst") {
        Unpack::TarZst
    } else if name.ends_with(".zip") {
        Unpack::Zip
    } else {
        Unpack::File
    }
}

/// The component names `--component` takes.
const COMPONENTS: [&str; 6] = ["kubectl", "localkube", "hypervisor", "base-image", "images", "rootfs"];

fn file_name(file: &Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Now, or `SOURCE_DATE_EPOCH` when set (reproducible release builds).
pub fn published_now() -> Result<time::OffsetDateTime> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            let secs: i64 = v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?}: expected seconds"))?;
            time::OffsetDateTime::from_unix_timestamp(secs)
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?}: out of range"))
        }
        Err(_) => Ok(time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 is a valid nanosecond")),
    }
}

fn new(a: NewManifestArgs, ui: &Ui) -> Result<Code> {
    let target = a.target.clone().unwrap_or_else(Target::host);
    let urls = by_name(&a.urls, "url")?;
    let drivers = by_name(&a.drivers, "drivers")?;
    let mut components: BTreeMap<String, Component> = BTreeMap::new();
    for spec in &a.components {
        let c = parse_component(spec)?;
        if !COMPONENTS.contains(&c.name.as_str()) {
            bail!("--component {spec:?}: NAME must be one of {}", COMPONENTS.join(", "));
        }
        let file = std::path::absolute(&c.file)?;
        let (sha256, size) =
            hash::hash_file(&file).with_context(|| format!("--component {spec:?}: cannot read {}", file.display()))?;
        // Image archives and the docker driver's rootfs are used as they
        // are (placed for localkube; imported into the engine).
        let whole = matches!(c.name.as_str(), "images" | "rootfs");
        let unpack = if whole { Unpack::File } else { unpack_of(&file) };
        let bin = match (&c.bin, unpack) {
            (Some(b), _) => b.clone(),
            (None, Unpack::File) if whole => file_name(&file),
            (None, Unpack::File) => c.name.clone(),
            (None, _) => bail!("--component {spec:?}: an archive needs #BIN, the executable inside it"),
        };
        let urls = urls.get(&c.name).cloned().unwrap_or_else(|| vec![format!("file://{}", file.display())]);
        let artifact = Manifest::artifact(urls, sha256, size, unpack, &bin)
            .map_err(|e| anyhow::anyhow!("--component {spec:?}: {e}"))?;
        let drivers = match drivers.get(&c.name) {
            Some(list) => Some(
                list.iter()
                    .flat_map(|l| l.split(','))
                    .map(|d| d.parse::<Driver>().map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let entry = components.entry(c.name.clone()).or_insert_with(|| Component {
            version: c.version.clone(),
            drivers,
            target: BTreeMap::new(),
        });
        entry.target.insert(target.clone(), artifact);
    }
    let run_text = fskit::read_capped_text(&a.run, caps::DOCUMENT)?;
    let run: Run = toml::from_str(&run_text).map_err(|e| anyhow::anyhow!("--run {}: {e}", a.run.display()))?;
    let mut take = |name: &str| components.remove(name);
    let kubectl = take("kubectl").context("--component kubectl@VERSION=FILE is required")?;
    let lk = take("localkube").context("--component localkube@VERSION=FILE#BIN is required")?;
    let now = published_now()?;
    let m = Manifest {
        schema: kubestrap_manifest::SCHEMA,
        channel: a.channel,
        version: a.manifest_version,
        kubernetes: a.kubernetes,
        published: now,
        expires: now + a.valid_for,
        requires_bootstrap: a.requires_bootstrap,
        component: Components {
            kubectl,
            localkube: Localkube { version: lk.version, drivers: lk.drivers, target: lk.target, run },
            hypervisor: take("hypervisor"),
            base_image: take("base-image"),
            images: take("images"),
            rootfs: take("rootfs"),
        },
    };
    let text = m.to_toml();
    // What was written must read back as a valid manifest.
    Manifest::parse(text.as_bytes(), &a.out)?;
    fskit::write_atomic(&a.out, text.as_bytes(), 0o644)?;
    ui.json(serde_json::json!({"manifest": a.out, "id": m.id()}));
    ui.line(&format!(
        "wrote {} ({}); sign it with `kubestrap manifest sign --key KEY {}`",
        a.out.display(),
        m.id(),
        a.out.display()
    ));
    Ok(Code::Ok)
}
