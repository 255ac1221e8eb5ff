//! Shared harness for kubestrap's integration tests: a temp kubestrap home
//! with a pinned dev signing key, the real binary, artifact and manifest
//! builders, and a scripted HTTP/1.1 server on 127.0.0.1.
//!
//! Every test file does `mod common;` and uses what it needs, so unused
//! items are allowed here.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The kubestrap binary under test.
pub const KUBESTRAP: &str = env!("CARGO_BIN_EXE_kubestrap");

/// The target every generated manifest is for (the test machines' own).
pub const TARGET: &str = "linux-x86_64";

/// Environment variables that would leak the caller's setup into a test.
const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "XDG_DATA_HOME",
    "KUBESTRAP_MANIFEST",
    "KUBESTRAP_CA_CERT",
    "KUBESTRAP_KEY_PASSWORD",
    "KUBESTRAP_LOG",
    "KUBESTRAP_HOME",
    "KUBECONFIG",
];

// ---------------------------------------------------------------------------
// Env: a temp home + the binary
// ---------------------------------------------------------------------------

/// A kubestrap home in a temp dir, with an unencrypted dev key pair
/// (`keys/dev.key`, `keys/dev.pub`) pinned by `trust add`.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// `KUBESTRAP_HOME`.
    pub home: PathBuf,
    /// `KUBECONFIG` (does not exist until something writes it).
    pub kubeconfig: PathBuf,
    /// Holds `dev.key` and `dev.pub`.
    pub keys: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("kubestrap-test-").tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let env = Env { home: root.join("home"), kubeconfig: root.join(".kube/config"), keys: root.join("keys"), dir };
        // keygen does not create its --out directory.
        fs::create_dir_all(&env.keys).unwrap();
        let keys = env.keys.to_str().unwrap().to_string();
        env.ok(&["manifest", "keygen", "--out", &keys, "--name", "dev", "--unencrypted"]);
        let public = env.keys.join("dev.pub");
        assert!(public.is_file(), "keygen did not write {}", public.display());
        env.ok(&["trust", "add", public.to_str().unwrap()]);
        env
    }

    /// The temp dir's path (a scratch area beside the home).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory `name` under the temp dir, created if needed.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// The kubestrap binary with this env's home, kubeconfig and HOME, no
    /// colours, no proxies, stdin closed.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBESTRAP);
        for k in SCRUBBED_ENV {
            c.env_remove(k);
        }
        c.args(args)
            .env("KUBESTRAP_HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs kubestrap; returns its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap_or_else(|e| panic!("cannot run {KUBESTRAP}: {e}"))
    }

    /// Runs kubestrap, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!("{}", describe(args, &out, "expected success"));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubestrap, expecting exit code `code`; returns stderr.
    pub fn fail(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        if out.status.code() != Some(code) {
            panic!("{}", describe(args, &out, &format!("expected exit code {code}")));
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes `spec` as `<temp>/<name>` and signs it with the dev key
    /// (`<name>.minisig` beside it). Returns the manifest's path.
    pub fn write_signed_manifest(&self, spec: &ManifestSpec, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, spec.to_toml()).unwrap();
        let key = self.keys.join("dev.key");
        self.ok(&["manifest", "sign", "--key", key.to_str().unwrap(), path.to_str().unwrap()]);
        path
    }

    /// Paths of every verified blob in the store (`blobs/sha256/*`).
    pub fn blobs(&self) -> Vec<PathBuf> {
        list_dir(&self.home.join("blobs/sha256"))
    }

    /// Where the store keeps the blob with this sha256.
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.home.join("blobs/sha256").join(sha256)
    }

    /// Partial downloads (`blobs/partial/*`).
    pub fn partials(&self) -> Vec<PathBuf> {
        list_dir(&self.home.join("blobs/partial"))
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// A readable account of a finished command, for assertion messages.
pub fn describe(args: &[&str], out: &Output, why: &str) -> String {
    format!(
        "{why}: `kubestrap {}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Artifacts
// ---------------------------------------------------------------------------

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

/// The machine's real kubectl 1.33, referenced in place (nothing copied).
pub const KUBECTL_PATH: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/// The real kubectl as an artifact (hashed once per test process).
pub fn kubectl_artifact(_dir: &Path) -> Artifact {
    static HASHED: OnceLock<(String, u64)> = OnceLock::new();
    let path = PathBuf::from(KUBECTL_PATH);
    assert!(path.is_file(), "{KUBECTL_PATH} is missing (the build image ships it)");
    let (sha256, size) = HASHED.get_or_init(|| sha256_file(&path)).clone();
    Artifact { path, sha256, size }
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// Everything a test manifest says; [`ManifestSpec::new`] fills the defaults
/// (stand-in localkube's run section, expiry 180 days ahead).
#[derive(Clone, Debug)]
pub struct ManifestSpec {
    pub channel: String,
    pub version: u64,
    pub kubernetes: String,
    pub published: time::OffsetDateTime,
    pub expires: time::OffsetDateTime,
    pub requires_bootstrap: String,
    pub target: String,
    pub kubectl_version: String,
    /// (urls, artifact, unpack); `bin` is `kubectl`.
    pub kubectl: (Vec<String>, Artifact, String),
    pub localkube_version: String,
    /// (urls, artifact, unpack, bin).
    pub localkube: (Vec<String>, Artifact, String, String),
    pub localkube_drivers: Vec<String>,
    pub program: String,
    pub args: Vec<String>,
    pub ready: String,
    pub stop_signal: String,
    pub stop_timeout_s: u64,
    /// `[component.localkube.run.pki-files]`: (path template, PKI file name).
    pub pki_files: Vec<(String, String)>,
}

/// The stand-in's command line (see ci/standin).
pub fn standin_args() -> Vec<String> {
    [
        "server",
        "--data-dir={data}",
        "--https-listen-port={port}",
        "--bind-address={bind}",
        "--tls-cert-file={pki}/apiserver.crt",
        "--tls-private-key-file={pki}/apiserver.key",
        "--client-ca-file={pki}/ca.crt",
        "--token-auth-file={pki}/token.csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl ManifestSpec {
    /// Channel `test`, version 1, Kubernetes 1.33.1; `kubectl` and
    /// `localkube` as given; the stand-in's run section.
    pub fn new(
        kubectl: (Vec<String>, Artifact, String),
        localkube: (Vec<String>, Artifact, String, String),
    ) -> ManifestSpec {
        let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        ManifestSpec {
            channel: "test".into(),
            version: 1,
            kubernetes: "1.33.1".into(),
            published: now - time::Duration::days(1),
            expires: now + time::Duration::days(180),
            requires_bootstrap: ">=0.1.0".into(),
            target: TARGET.into(),
            kubectl_version: "1.33.1".into(),
            kubectl,
            localkube_version: "1.33.1+standin".into(),
            localkube,
            localkube_drivers: vec!["native".into()],
            program: "localkube-standin".into(),
            args: standin_args(),
            ready: "/readyz".into(),
            stop_signal: "TERM".into(),
            stop_timeout_s: 10,
            pki_files: Vec::new(),
        }
    }

    /// The usual pair for lifecycle tests: the real kubectl (path URL) and
    /// the stand-in localkube tar.zst written in `dir` (path URL).
    pub fn standin(dir: &Path, standin_version: &str) -> ManifestSpec {
        let kubectl = kubectl_artifact(dir);
        let lk = standin_artifact(dir, standin_version);
        ManifestSpec::new(
            (vec![kubectl.path_url()], kubectl, "file".into()),
            (vec![lk.path_url()], lk, "tar.zst".into(), "localkube-standin".into()),
        )
    }

    /// Schema-1 TOML.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml_string(s);
        let list = |v: &[String]| format!("[{}]", v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "));
        let ts = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
        let mut s = String::new();
        writeln!(s, "schema = 1").unwrap();
        writeln!(s, "channel = {}", q(&self.channel)).unwrap();
        writeln!(s, "version = {}", self.version).unwrap();
        writeln!(s, "kubernetes = {}", q(&self.kubernetes)).unwrap();
        writeln!(s, "published = {}", q(&ts(self.published))).unwrap();
        writeln!(s, "expires = {}", q(&ts(self.expires))).unwrap();
        writeln!(s, "requires-bootstrap = {}", q(&self.requires_bootstrap)).unwrap();
        let (urls, a, unpack) = &self.kubectl;
        writeln!(s, "\n[component.kubectl]\nversion = {}", q(&self.kubectl_version)).unwrap();
        writeln!(s, "[component.kubectl.target.{}]", self.target).unwrap();
        write_artifact(&mut s, urls, a, unpack, "kubectl");
        let (urls, a, unpack, bin) = &self.localkube;
        writeln!(s, "\n[component.localkube]\nversion = {}", q(&self.localkube_version)).unwrap();
        writeln!(s, "drivers = {}", list(&self.localkube_drivers)).unwrap();
        writeln!(s, "[component.localkube.target.{}]", self.target).unwrap();
        write_artifact(&mut s, urls, a, unpack, bin);
        writeln!(s, "[component.localkube.run]").unwrap();
        writeln!(s, "program = {}", q(&self.program)).unwrap();
        writeln!(s, "args = {}", list(&self.args)).unwrap();
        writeln!(s, "ready = {}", q(&self.ready)).unwrap();
        writeln!(s, "stop-signal = {}", q(&self.stop_signal)).unwrap();
        writeln!(s, "stop-timeout-s = {}", self.stop_timeout_s).unwrap();
        if !self.pki_files.is_empty() {
            writeln!(s, "[component.localkube.run.pki-files]").unwrap();
            for (path, file) in &self.pki_files {
                writeln!(s, "{} = {}", q(path), q(file)).unwrap();
            }
        }
        s
    }
}

fn write_artifact(s: &mut String, urls: &[String], a: &Artifact, unpack: &str, bin: &str) {
    let urls: Vec<String> = urls.iter().map(|u| toml_string(u)).collect();
    writeln!(s, "urls = [{}]", urls.join(", ")).unwrap();
    writeln!(s, "sha256 = {}", toml_string(&a.sha256)).unwrap();
    writeln!(s, "size = {}", a.size).unwrap();
    writeln!(s, "unpack = {}", toml_string(unpack)).unwrap();
    writeln!(s, "bin = {}", toml_string(bin)).unwrap();
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

// ---------------------------------------------------------------------------
// Scripted HTTP server
// ---------------------------------------------------------------------------

/// What the server does for one request to a path. A path's queue is used
/// first; when it is empty the path's bytes are served (404 if it has none).
#[derive(Clone, Debug)]
pub enum Reply {
    /// The path's bytes: 200, or 206 + Content-Range for `Range: bytes=N-`.
    Serve,
    /// The path's bytes with 200, ignoring any Range header.
    IgnoreRange,
    /// A bare status with a short body.
    Status(u16),
    /// 404.
    NotFound,
    /// Headers with the full Content-Length (honouring Range), then the
    /// connection is closed after this many body bytes.
    DropAfter(usize),
    /// The path's bytes followed by these extra ones, close-delimited (no
    /// Content-Length): an endless-data server.
    Extra(Vec<u8>),
    /// As `Extra`, in chunked transfer encoding.
    ExtraChunked(Vec<u8>),
    /// The path's bytes followed by these, with a Content-Length that
    /// announces them all.
    ExtraAnnounced(Vec<u8>),
    /// These bytes instead of the path's (200, exact Content-Length).
    Body(Vec<u8>),
    /// Sleep this long before answering as `Serve` (for timeouts).
    Delay(Duration),
}

/// One request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The request target as sent: the path, or an absolute URL via a proxy.
    pub target: String,
    /// The Range header's value, if any (e.g. `bytes=1000-`).
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    content: HashMap<String, Arc<Vec<u8>>>,
    scripts: HashMap<String, VecDeque<Reply>>,
    log: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// An HTTP/1.1 server on 127.0.0.1 (an ephemeral port), a thread per
/// connection, every blocking call bounded. Stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// No single read or write on a connection may block longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection thread gives up after this long whatever happens.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

impl Server {
    /// A plain HTTP server.
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// An HTTPS server with `tls`'s certificate (see [`TestCa`]).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Server {
        Server::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (sh, wk) = (shared.clone(), workers.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let acceptor = std::thread::Builder::new()
            .name("test-http-accept".into())
            .spawn(move || {
                while !sh.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            sh.connections.fetch_add(1, Ordering::SeqCst);
                            let sh2 = sh.clone();
                            let tls = tls.clone();
                            let h = std::thread::Builder::new()
                                .name("test-http-conn".into())
                                .spawn(move || {
                                    let _ = serve_connection(stream, &sh2, tls);
                                })
                                .unwrap();
                            let mut w = wk.lock().unwrap();
                            w.retain(|h| !h.is_finished());
                            w.push(h);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .unwrap();
        Server { addr, scheme, shared, acceptor: Some(acceptor), workers }
    }

    /// `http://127.0.0.1:PORT/path` (path with or without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}/{}", self.scheme, self.addr, path.trim_start_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `bytes` at `path`.
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        self.shared.state.lock().unwrap().content.insert(norm(path), Arc::new(bytes));
    }

    /// Serves an artifact's file at `path`; returns its URL.
    pub fn add_artifact(&self, path: &str, a: &Artifact) -> String {
        self.add(path, a.bytes());
        self.url(path)
    }

    /// Appends replies to `path`'s queue (used before the default `Serve`).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state.lock().unwrap().scripts.entry(norm(path)).or_default().extend(replies);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Requests so far for one path.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        let p = norm(path);
        self.requests().into_iter().filter(|r| r.path == p).collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Connection threads notice `stop` within one poll interval.
        for h in self.workers.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn norm(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// Reads one request head; `None` on EOF, stop or timeout.
fn read_head(stream: &mut Conn, shared: &Shared, deadline: Instant) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if shared.stop.load(Ordering::SeqCst) || Instant::now() > deadline || buf.len() > 64 * 1024 {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve_connection(tcp: TcpStream, shared: &Shared, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    // Short read timeouts so every wait can notice `stop`.
    tcp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut stream = match tls {
        None => Conn::Plain(tcp),
        Some(cfg) => {
            let sc = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(sc, tcp)))
        }
    };
    let born = Instant::now();
    // Idle keep-alive connections are closed after IO_TIMEOUT.
    let Some(head) = read_head(&mut stream, shared, born + IO_TIMEOUT)? else {
        return Ok(());
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    // A proxy gets the absolute form (`GET http://host:port/path`): serve
    // it by path, and log the full target so tests can tell.
    let path = match target.strip_prefix("http://").and_then(|r| r.find('/').map(|i| r[i..].to_string())) {
        Some(p) => p,
        None => target.clone(),
    };
    let mut range = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let (reply, content) = {
        let mut st = shared.state.lock().unwrap();
        st.log.push(Request {
            method: method.clone(),
            path: path.clone(),
            target: target.clone(),
            range: range.clone(),
        });
        let reply = st.scripts.get_mut(&path).and_then(|q| q.pop_front()).unwrap_or(Reply::Serve);
        (reply, st.content.get(&path).cloned())
    };
    let head_only = method == "HEAD";
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let w = &mut stream;
    let mut clean_close = true;
    match (reply, content) {
        (Reply::Status(code), _) => simple(w, code)?,
        (Reply::NotFound, _) | (_, None) => simple(w, 404)?,
        (Reply::Body(b), _) => full(w, 200, &[], &b, head_only)?,
        (Reply::Serve, Some(c)) => ranged(w, &c, start, None, head_only)?,
        (Reply::IgnoreRange, Some(c)) => full(w, 200, &[], &c, head_only)?,
        (Reply::Delay(d), Some(c)) => {
            sleep_unless_stopped(d, shared);
            ranged(w, &c, start, None, head_only)?
        }
        (Reply::DropAfter(n), Some(c)) => {
            clean_close = false;
            ranged(w, &c, start, Some(n), head_only)?
        }
        (Reply::Extra(extra), Some(c)) => {
            write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
            w.write_all(&c)?;
            w.write_all(&extra)?;
        }
        (Reply::ExtraChunked(extra), Some(c)) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            for part in [&c[..], &extra[..]] {
                for piece in part.chunks(64 * 1024) {
                    write!(w, "{:x}\r\n", piece.len())?;
                    w.write_all(piece)?;
                    w.write_all(b"\r\n")?;
                }
            }
            w.write_all(b"0\r\n\r\n")?;
        }
        (Reply::ExtraAnnounced(extra), Some(c)) => {
            let mut all = c.to_vec();
            all.extend_from_slice(&extra);
            full(w, 200, &[], &all, head_only)?
        }
    }
    if clean_close && let Conn::Tls(t) = w {
        t.conn.send_close_notify();
    }
    let _ = w.flush();
    let _ = w.tcp().shutdown(Shutdown::Write);
    // Let the client read everything before the socket goes (avoids a RST
    // that could drop data still in flight), bounded.
    let mut sink = [0u8; 1024];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && born.elapsed() < CONNECTION_LIFETIME && !shared.stop.load(Ordering::SeqCst) {
        match stream.tcp().read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A plain or TLS connection.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

fn sleep_unless_stopped(d: Duration, shared: &Shared) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn simple(w: &mut Conn, code: u16) -> io::Result<()> {
    let body = format!("{code} {}\n", reason(code));
    full(w, code, &[], body.as_bytes(), false)
}

fn full(w: &mut Conn, code: u16, headers: &[String], body: &[u8], head_only: bool) -> io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    for x in headers {
        h.push_str(x);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    w.write_all(h.as_bytes())?;
    if !head_only {
        w.write_all(body)?;
    }
    Ok(())
}

/// Serves `c` from `start` (206) or whole (200); with `drop_after`, stops
/// after that many body bytes although the headers announced more.
fn ranged(w: &mut Conn, c: &[u8], start: Option<usize>, drop_after: Option<usize>, head_only: bool) -> io::Result<()> {
    let (code, body, headers) = match start {
        Some(s) if s >= c.len() => {
            let h = vec![format!("Content-Range: bytes */{}", c.len())];
            return full(w, 416, &h, b"", head_only);
        }
        Some(s) => (
            206,
            &c[s..],
            vec![format!("Content-Range: bytes {s}-{}/{}", c.len() - 1, c.len()), "Accept-Ranges: bytes".to_string()],
        ),
        None => (200, c, vec!["Accept-Ranges: bytes".to_string()]),
    };
    match drop_after {
        None => full(w, code, &headers, body, head_only),
        Some(n) => {
            let mut h = format!(
                "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
                reason(code),
                body.len()
            );
            for x in &headers {
                h.push_str(x);
                h.push_str("\r\n");
            }
            h.push_str("\r\n");
            w.write_all(h.as_bytes())?;
            if !head_only {
                w.write_all(&body[..n.min(body.len())])?;
            }
            Ok(())
        }
    }
}

/// A throw-away CA and a server certificate for 127.0.0.1 / localhost
/// signed by it, for HTTPS mirrors (`--ca-cert`).
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// A server config presenting the leaf certificate.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "kubestrap test mirror CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(leaf.der().to_vec())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                    leaf_key.serialize_der(),
                )),
            )
            .unwrap();
        TestCa { ca_pem: ca.pem(), server_config: Arc::new(config) }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Parses `-o json` output: one JSON object per non-empty line.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Flips one bit of the byte at `offset` in a file.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut b = fs::read(path).unwrap();
    b[offset] ^= 0x01;
    // Blobs are read-only in the store on some setups: make it writable.
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o644));
    fs::write(path, b).unwrap();
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
