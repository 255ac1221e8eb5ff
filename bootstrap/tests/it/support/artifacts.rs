//! Artifacts for manifests: files with their sha256, tar.zst archives, the
//! stand-in localkube and this machine's real kubectl.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A file on disk with its sha256 (lowercase hex) and size.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl Artifact {
    /// Describes an existing file (hashes it).
    pub fn of(path: impl Into<PathBuf>) -> Artifact {
        let path = path.into();
        let (sha256, size) = sha256_file(&path);
        Artifact { path, sha256, size }
    }

    /// The artifact's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }

    /// `file://` URL of the artifact.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Plain path, as a manifest source.
    pub fn path_url(&self) -> String {
        self.path.display().to_string()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> (String, u64) {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (hex::encode(h.finalize()), n)
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for tests.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `bytes` to `dir/name` (mode 0755: usable as a `file` artifact).
pub fn file_artifact(dir: &Path, name: &str, bytes: &[u8]) -> Artifact {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    Artifact { path, sha256: sha256_hex(bytes), size: bytes.len() as u64 }
}

/// Writes a tar.zst `dir/name` with regular-file `entries` (path, bytes, mode).
/// Parent directories are implied; metadata is fixed (reproducible).
pub fn tar_zst_artifact(dir: &Path, name: &str, entries: &[(&str, &[u8], u32)]) -> Artifact {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    let file = fs::File::create(&path).unwrap();
    let enc = zstd::stream::write::Encoder::new(file, 3).unwrap();
    let mut tar = tar::Builder::new(enc);
    for (p, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, p, *data).unwrap();
    }
    let enc = tar.into_inner().unwrap();
    enc.finish().unwrap().sync_all().unwrap();
    Artifact::of(path)
}

/// The stand-in localkube binary built beside the test executable.
pub fn standin_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/localkube-standin
    let bin = exe.parent().and_then(Path::parent).unwrap().join("localkube-standin");
    if !bin.is_file() {
        panic!("{} is missing: run `cargo build -p localkube-standin` first", bin.display());
    }
    bin
}

/// A tar.zst holding `localkube-standin` (0755) and `version.txt` (`version`,
/// e.g. `v1.33.1+standin`), written as `dir/localkube-standin-<version>.tar.zst`.
pub fn standin_artifact(dir: &Path, version: &str) -> Artifact {
    let bin = fs::read(standin_binary()).unwrap();
    let name = format!("localkube-standin-{}.tar.zst", version.replace(['/', '+'], "_"));
    tar_zst_artifact(
        dir,
        &name,
        &[("localkube-standin", &bin, 0o755), ("version.txt", format!("{version}\n").as_bytes(), 0o644)],
    )
}

/// The real kubectl as an artifact, referenced in place (nothing copied;
/// hashed once per test process).
pub fn kubectl_artifact(_dir: &Path) -> Artifact {
    static HASHED: OnceLock<(String, u64)> = OnceLock::new();
    let path = PathBuf::from(&*super::KUBECTL);
    let (sha256, size) = HASHED.get_or_init(|| sha256_file(&path)).clone();
    Artifact { path, sha256, size }
}

/// The qemu driver's two artifacts: (hypervisor, base image).
#[derive(Clone, Debug)]
pub struct VmArtifacts {
    pub hypervisor: Artifact,
    pub base_image: Artifact,
}

/// `target/` of this build (the test executable is `target/<profile>/deps/it-…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The qemu driver's artifacts, built once by `ci/vm/build.sh` into
/// `target/vm/` (`ci/test.sh` builds them first; a test process builds them
/// if they are missing). Callers check `need("qemu", qemu_installed)` first.
pub fn vm_artifacts() -> VmArtifacts {
    static BUILT: OnceLock<VmArtifacts> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Err(why) = super::qemu_installed() {
                panic!("{why}");
            }
            let out = target_dir().join("vm");
            let find = |prefix: &str| {
                fs::read_dir(&out).ok()?.flatten().map(|e| e.path()).find(|p| {
                    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                        && p.extension().is_some_and(|x| x == "zst")
                })
            };
            if find("hypervisor-").is_none() || find("base-").is_none() {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/vm/build.sh");
                let run = std::process::Command::new(&script).arg(&out).output().unwrap();
                assert!(run.status.success(), "ci/vm/build.sh failed: {}", String::from_utf8_lossy(&run.stderr));
            }
            VmArtifacts {
                hypervisor: Artifact::of(find("hypervisor-").unwrap()),
                base_image: Artifact::of(find("base-").unwrap()),
            }
        })
        .clone()
}

/// The docker driver's base rootfs, built once by `ci/docker/build.sh` into
/// `target/docker/`. Callers check `need("docker", docker_engine)` first.
/// The docker driver's rootfs with one file more (`etc/kubestrap-test`
/// holding `mark`), in `dir`: an image of its own (its tag follows its
/// sha256), which no test running beside this one uses, so what becomes of
/// it is this test's alone.
pub fn docker_rootfs_of_its_own(dir: &Path, mark: &str) -> Artifact {
    let base = docker_rootfs();
    let raw = zstd::decode_all(fs::File::open(&base.path).unwrap()).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&raw[..]);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let path = e.path().unwrap().into_owned();
        if h.entry_type().is_symlink() || h.entry_type().is_hard_link() {
            let target = e.link_name().unwrap().unwrap().into_owned();
            out.append_link(&mut h, &path, &target).unwrap();
        } else {
            out.append_data(&mut h, &path, &mut e).unwrap();
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(mark.len() as u64);
    h.set_mode(0o644);
    out.append_data(&mut h, "etc/kubestrap-test", mark.as_bytes()).unwrap();
    let tar = out.into_inner().unwrap();
    let name = format!("rootfs-{mark}.tar.zst");
    file_artifact(dir, &name, &zstd::encode_all(&tar[..], 3).unwrap())
}

pub fn docker_rootfs() -> Artifact {
    static BUILT: OnceLock<Artifact> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Err(why) = super::docker_engine() {
                panic!("{why}");
            }
            let out = target_dir().join("docker");
            let find = || {
                fs::read_dir(&out)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("rootfs-")))
            };
            if find().is_none() {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/docker/build.sh");
                let run = std::process::Command::new(&script).arg(&out).output().unwrap();
                assert!(run.status.success(), "ci/docker/build.sh failed: {}", String::from_utf8_lossy(&run.stderr));
            }
            Artifact::of(find().unwrap())
        })
        .clone()
}

/// The development localkube (upstream Kubernetes v1.20.2 built from
/// Debian's source package), built once by `ci/localkube/build.sh` into
/// `target/localkube/` (`ci/test.sh` builds it first; its own cache makes a
/// rebuild of unchanged inputs a copy). Callers check
/// `need("localkube", localkube_buildable)` first.
pub fn localkube_artifact() -> Artifact {
    static BUILT: OnceLock<Artifact> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = target_dir().join("localkube");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/localkube/build.sh");
            let run = std::process::Command::new(&script).arg(&out).output().unwrap();
            assert!(run.status.success(), "ci/localkube/build.sh failed: {}", String::from_utf8_lossy(&run.stderr));
            Artifact::of(String::from_utf8_lossy(&run.stdout).trim().to_string())
        })
        .clone()
}

/// The project's busybox image archive (`ci/images/build.sh`):
/// `localhost/kubestrap/busybox:<version>`, and that name.
pub fn busybox_image() -> (PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = target_dir().join("images");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/images/build.sh");
            let run = std::process::Command::new(&script).arg(&out).output().unwrap();
            assert!(run.status.success(), "ci/images/build.sh failed: {}", String::from_utf8_lossy(&run.stderr));
            let line =
                String::from_utf8_lossy(&run.stdout).lines().find(|l| l.contains("busybox")).unwrap().to_string();
            let mut f = line.split_whitespace();
            (PathBuf::from(f.next().unwrap()), f.next().unwrap().to_string())
        })
        .clone()
}
