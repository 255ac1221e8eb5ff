//! Container image archives localkube imports (k3s: `{data}/agent/images`):
//! the release's air-gap images, placed by `start` from the verified store,
//! and a user's own archives, placed by `kubestrap image load`. Every file
//! lands atomically (a hidden `.tmp` sibling, fsync, rename: localkube never
//! sees half a file), and a record beside the profile's config remembers
//! each file's sha256 and where it came from, so a later start replaces a
//! changed file, removes an old release's images after an upgrade and keeps
//! the user's.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kubestrap_fskit::{self as fskit, FsError};
use kubestrap_manifest::{Manifest, Sha256};
use serde::{Deserialize, Serialize};

use crate::artifacts::hash::HashingReader;
use crate::profile::Profile;
use crate::progress::Progress;
use crate::state;

/// The biggest archive `image load` accepts.
pub const ARCHIVE_CAP: u64 = 64 << 30;
/// At most this many entries are read from an archive while checking it.
const MAX_ENTRIES: u64 = 1 << 20;
/// `manifest.json`, `index.json`, `oci-layout` inside an archive.
const JSON_CAP: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{}: not a container image archive ({reason}); expected a tarball written by `docker save`, \
         `podman save`, `nerdctl save` or an OCI image layout (`skopeo copy ... oci-archive:FILE`), plain or \
         compressed with gzip or zstd",
        file.display()
    )]
    NotAnArchive { file: PathBuf, reason: String },
    #[error("{}: larger than {} GiB, the most `image load` accepts", file.display(), ARCHIVE_CAP >> 30)]
    TooLarge { file: PathBuf },
    #[error(
        "the release's image archive {} does not match its manifest (sha256 {got}, expected {want}); \
         run `kubestrap cache verify` and start again",
        file.display()
    )]
    Corrupt { file: PathBuf, want: Sha256, got: Sha256 },
    #[error(
        "the release {release} of profile {profile:?} names no images directory (run.images-dir): its \
         localkube does not import image archives"
    )]
    NoImagesDir { profile: String, release: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl ImageError {
    fn io(path: &Path, what: &'static str, e: io::Error) -> ImageError {
        ImageError::Fs(FsError::io(path, what, e))
    }
}

type Result<T, E = ImageError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The release's `images` component, placed by `start`.
    Release,
    /// `kubestrap image load`.
    User,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    DockerArchive,
    OciLayout,
    /// A release archive: trusted by its signed sha256, not opened.
    Release,
}

/// What identifies the bytes a record entry was made from, cheaply: a file
/// whose size, mtime or inode changed is hashed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    mtime_ns: i64,
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = fs::symlink_metadata(path).ok().filter(|m| m.is_file())?;
        Some(Stamp { len: m.len(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(), ino: m.ino() })
    }
}

/// One archive in the images directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// Its file name in the images directory.
    pub file: String,
    pub sha256: Sha256,
    pub size: u64,
    pub origin: Origin,
    pub format: Format,
    /// The image names inside (`RepoTags`, OCI ref names), when it says.
    #[serde(default)]
    pub images: Vec<String>,
    stamp: Stamp,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    archive: Vec<Entry>,
}

fn record_path(p: &Profile) -> PathBuf {
    p.config_path().with_file_name("images.toml")
}

fn read_record(p: &Profile, warn: &mut Vec<String>) -> Record {
    match state::read::<Record>(&record_path(p)) {
        Ok(r) => r.unwrap_or_default(),
        Err(why) => {
            // Every file is then checked again from scratch: nothing is lost.
            warn.push(format!("{} is damaged ({why}); checking every image archive again", record_path(p).display()));
            Record::default()
        }
    }
}

/// The host directory localkube imports archives from, if its release has
/// one; `data` is the host directory that becomes localkube's `{data}`.
pub fn dir_of(data: &Path, p: &Profile, m: &Manifest) -> Result<PathBuf> {
    let run = &m.component.localkube.run;
    let dir =
        run.images_dir.as_ref().ok_or_else(|| ImageError::NoImagesDir { profile: p.name.clone(), release: m.id() })?;
    // Parsing admits only `{data}/<relative path>`.
    let rest = dir.as_str().strip_prefix("{data}/").unwrap_or_default();
    Ok(data.join(rest))
}

/// Hidden temp files an interrupted copy left (`.NAME.PID.NONCE.tmp`):
/// localkube ignores them; the next placement removes them. Call under the
/// profile lock.
fn sweep(dir: &Path) {
    for e in fskit::list_dir(dir).unwrap_or_default() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".tmp") {
            tracing::debug!("removing {} left by an interrupted image copy", e.path().display());
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Copies `src` into a hidden temp file in `dir`, hashing it on the way;
/// the caller renames it into place or removes it.
fn copy_in(src: &mut dyn Read, dir: &Path, name: &str) -> Result<(PathBuf, Sha256, u64)> {
    let tmp = fskit::temp_sibling(&dir.join(name));
    let result = (|| -> io::Result<(Sha256, u64)> {
        let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut hashing = HashingReader::new(src);
        io::copy(&mut hashing, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        hashing.finish()
    })();
    match result {
        Ok((sha, size)) => Ok((tmp, sha, size)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(ImageError::io(&tmp, "write", e))
        }
    }
}

/// Moves a finished temp file to its name, durably.
fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    fs::rename(tmp, dest).map_err(|e| ImageError::io(dest, "write", e))?;
    fskit::sync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(ImageError::Fs)
}

/// A release image archive to place: the verified file in the store and
/// the name it gets.
pub struct Wanted {
    pub src: PathBuf,
    pub name: String,
    pub sha256: Sha256,
    pub size: u64,
}

/// What a placement did.
#[derive(Debug, Default, Serialize)]
pub struct Placed {
    pub copied: Vec<String>,
    pub kept: usize,
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
}

/// Brings the images directory in line with the release: its archives
/// present and intact, an earlier release's gone, the user's kept (and
/// dropped, with a warning, if changed since they were loaded).
pub fn place_release(p: &Profile, dir: &Path, wanted: &[Wanted]) -> Result<Placed> {
    let mut done = Placed::default();
    fskit::create_dir_mode(dir, 0o700)?;
    sweep(dir);
    let record = read_record(p, &mut done.warnings);
    let mut out: Vec<Entry> = Vec::new();
    for e in record.archive {
        let path = dir.join(&e.file);
        let wanted_now = wanted.iter().any(|w| w.name == e.file && w.sha256 == e.sha256);
        match e.origin {
            Origin::Release if !wanted_now => {
                if fs::remove_file(&path).is_ok() {
                    done.removed.push(e.file.clone());
                }
            }
            Origin::Release => out.push(e),
            Origin::User => match Stamp::of(&path) {
                None => {}
                Some(s) if s == e.stamp => out.push(e),
                Some(s) => match crate::artifacts::hash::hash_file(&path) {
                    Ok((sha, _)) if sha == e.sha256 => out.push(Entry { stamp: s, ..e }),
                    _ => {
                        let _ = fs::remove_file(&path);
                        done.warnings.push(format!(
                            "{} changed after `kubestrap image load` placed it; removed it (load the archive again)",
                            path.display()
                        ));
                    }
                },
            },
        }
    }
    for w in wanted {
        let dest = dir.join(&w.name);
        let known = out.iter().any(|e| e.file == w.name && e.sha256 == w.sha256 && Stamp::of(&dest) == Some(e.stamp));
        if known {
            done.kept += 1;
            continue;
        }
        out.retain(|e| e.file != w.name);
        let mut src = BufReader::with_capacity(1 << 20, fskit::open_regular(&w.src)?);
        let (tmp, sha, size) = copy_in(&mut src, dir, &w.name)?;
        if sha != w.sha256 || size != w.size {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::Corrupt { file: w.src.clone(), want: w.sha256, got: sha });
        }
        commit(&tmp, &dest)?;
        let stamp = Stamp::of(&dest).ok_or_else(|| ImageError::io(&dest, "read", io::ErrorKind::NotFound.into()))?;
        out.push(Entry {
            file: w.name.clone(),
            sha256: sha,
            size,
            origin: Origin::Release,
            format: Format::Release,
            images: Vec::new(),
            stamp,
        });
        done.copied.push(w.name.clone());
    }
    state::write(&record_path(p), &Record { archive: out })?;
    Ok(done)
}

/// `kubestrap image load`: checks that `file` is an image archive, then
/// places it as `<sha256>.tar[.gz|.zst]`. Loading the same bytes again
/// changes nothing.
pub fn load(p: &Profile, dir: &Path, file: &Path, progress: &dyn Progress) -> Result<(Entry, bool)> {
    crate::killpoint::reached("image load");
    fskit::create_dir_mode(dir, 0o700)?;
    sweep(dir);
    let src = fskit::open_regular(file)?;
    let len = src.metadata().map_err(|e| ImageError::io(file, "read", e))?.len();
    if len > ARCHIVE_CAP {
        return Err(ImageError::TooLarge { file: file.to_path_buf() });
    }
    let mut capped = BufReader::with_capacity(1 << 20, src).take(ARCHIVE_CAP + 1);
    let (tmp, sha, size) = copy_in(&mut capped, dir, "image-load")?;
    let checked = inspect(&tmp).map_err(|reason| ImageError::NotAnArchive { file: file.to_path_buf(), reason });
    let (format, compression, images) = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let name = format!("{}.tar{}", sha.hex(), compression);
    let dest = dir.join(&name);
    let mut warn = Vec::new();
    let mut record = read_record(p, &mut warn);
    warn.into_iter().for_each(|w| progress.warn(w));
    let already = record.archive.iter().any(|e| e.file == name) && Stamp::of(&dest).is_some();
    if already {
        let _ = fs::remove_file(&tmp);
    } else {
        commit(&tmp, &dest)?;
    }
    let stamp = Stamp::of(&dest).ok_or_else(|| ImageError::io(&dest, "read", io::ErrorKind::NotFound.into()))?;
    let entry = Entry { file: name.clone(), sha256: sha, size, origin: Origin::User, format, images, stamp };
    record.archive.retain(|e| e.file != name);
    record.archive.push(entry.clone());
    state::write(&record_path(p), &record)?;
    Ok((entry, !already))
}

/// The archives of a profile's images directory, as recorded.
pub fn list(p: &Profile, dir: &Path, progress: &dyn Progress) -> Vec<(Entry, bool)> {
    let mut warn = Vec::new();
    let record = read_record(p, &mut warn);
    warn.into_iter().for_each(|w| progress.warn(w));
    record
        .archive
        .into_iter()
        .map(|e| {
            let intact = Stamp::of(&dir.join(&e.file)) == Some(e.stamp);
            (e, intact)
        })
        .collect()
}

/// Reads an archive (plain, gzip or zstd tar) far enough to tell a
/// docker-archive (`manifest.json`) or an OCI image layout (`oci-layout` and
/// `index.json`) from anything else. Returns the format, the compression
/// suffix and the image names it declares.
fn inspect(path: &Path) -> std::result::Result<(Format, &'static str, Vec<String>), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| e.to_string())?;
    f.rewind().map_err(|e| e.to_string())?;
    let buffered = BufReader::with_capacity(1 << 20, f);
    let (reader, suffix): (Box<dyn Read>, &str) = match &magic[..n] {
        [0x1f, 0x8b, ..] => (Box::new(flate2::read::GzDecoder::new(buffered)), ".gz"),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            (Box::new(zstd::stream::read::Decoder::new(buffered).map_err(|e| e.to_string())?), ".zst")
        }
        _ => (Box::new(buffered), ""),
    };
    let mut archive = tar::Archive::new(reader);
    let (mut docker, mut layout, mut index) = (None, None, None);
    let mut count = 0u64;
    for entry in archive.entries().map_err(|e| format!("not a tar archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().trim_start_matches("./").to_string();
        let slot = match name.as_str() {
            "manifest.json" => &mut docker,
            "oci-layout" => &mut layout,
            "index.json" => &mut index,
            _ => continue,
        };
        let mut bytes = Vec::new();
        (&mut entry).take(JSON_CAP + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > JSON_CAP {
            return Err(format!("{name} is larger than {} MiB", JSON_CAP >> 20));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{name} is not JSON: {e}"))?;
        *slot = Some(json);
    }
    if count == 0 {
        return Err("an empty archive".into());
    }
    if let Some(m) = docker {
        let images = m.as_array().filter(|a| !a.is_empty()).ok_or("manifest.json is not a list of images")?;
        let mut names = Vec::new();
        for i in images {
            if !i.get("Config").is_some_and(|c| c.is_string()) || !i.get("Layers").is_some_and(|l| l.is_array()) {
                return Err("manifest.json lists an image without Config and Layers".into());
            }
            let tags = i.get("RepoTags").and_then(|t| t.as_array()).into_iter().flatten();
            names.extend(tags.filter_map(|t| t.as_str().map(String::from)));
        }
        return Ok((Format::DockerArchive, suffix, names));
    }
    match (layout, index) {
        (Some(l), Some(i)) => {
            if !l.get("imageLayoutVersion").is_some_and(|v| v.is_string()) {
                return Err("oci-layout has no imageLayoutVersion".into());
            }
            let manifests = i.get("manifests").and_then(|m| m.as_array()).ok_or("index.json has no manifests")?;
            let names = manifests
                .iter()
                .filter_map(|m| {
                    let a = m.get("annotations")?;
                    a.get("io.containerd.image.name").or_else(|| a.get("org.opencontainers.image.ref.name"))?.as_str()
                })
                .map(String::from)
                .collect();
            Ok((Format::OciLayout, suffix, names))
        }
        _ => Err("no manifest.json (docker-archive) and no oci-layout with index.json (OCI layout)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn inspect_bytes(bytes: &[u8]) -> std::result::Result<(Format, &'static str, Vec<String>), String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        fs::write(&p, bytes).unwrap();
        inspect(&p)
    }

    #[test]
    fn tells_archives_from_anything_else() {
        let docker = tar_of(&[
            ("manifest.json", br#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":["l/layer.tar"]}]"#),
            ("c.json", b"{}"),
        ]);
        assert_eq!(inspect_bytes(&docker).unwrap(), (Format::DockerArchive, "", vec!["app:1".to_string()]));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&docker).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(inspect_bytes(&gz).unwrap().1, ".gz");
        let zst = zstd::encode_all(&docker[..], 1).unwrap();
        assert_eq!(inspect_bytes(&zst).unwrap().1, ".zst");
        let oci = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            (
                "index.json",
                br#"{"schemaVersion":2,"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}"#,
            ),
        ]);
        assert_eq!(inspect_bytes(&oci).unwrap(), (Format::OciLayout, "", vec!["v1".to_string()]));
        for (bad, why) in [
            (b"hello world, not a tar".to_vec(), "not a tar"),
            (Vec::new(), "empty"),
            (tar_of(&[("readme.txt", b"hi")]), "no manifest.json"),
            (tar_of(&[("manifest.json", b"{not json")]), "not JSON"),
            (tar_of(&[("manifest.json", b"[]")]), "not a list"),
            (tar_of(&[("oci-layout", b"{}"), ("index.json", br#"{"manifests":[]}"#)]), "imageLayoutVersion"),
        ] {
            let err = inspect_bytes(&bad).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
