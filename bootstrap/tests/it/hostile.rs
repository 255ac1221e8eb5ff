//! The hostile corpus: inputs a hostile user tries — malformed manifests and
//! signatures, lying servers, hostile archives, a corrupted store, damaged
//! state files, kubeconfig permissions, hostile URLs and flags — each with
//! the exit code it must give and what must not happen (nothing written
//! outside, nothing lost, nothing executed). Every command runs under an
//! address-space limit (512 MiB) and a deadline, so an unbounded read or a
//! hang shows as a failure. The corpus size by category is printed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::support::*;

const ADDRESS_SPACE: u64 = 512 << 20;
const DEADLINE_S: u32 = 60;

struct Corpus {
    env: Env,
    server: Server,
    dir: PathBuf,
    next_version: Cell<u64>,
    tally: std::cell::RefCell<BTreeMap<&'static str, usize>>,
}

impl Corpus {
    fn new() -> Corpus {
        let env = Env::new();
        let dir = env.scratch("corpus");
        Corpus { env, server: Server::start(), dir, next_version: Cell::new(1), tally: Default::default() }
    }

    /// kubestrap under the address-space limit and a deadline.
    fn run_with(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let c = self.env.cmd(args);
        let program = c.get_program().to_owned();
        let mut cmd = Command::new("timeout");
        cmd.arg(DEADLINE_S.to_string()).arg(program).args(args);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("MALLOC_ARENA_MAX", "2").stdin(Stdio::null());
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
        cmd.output().unwrap()
    }

    /// One case: the command must exit with `code`, say why (no panic, no
    /// silence), and never print a secret.
    fn case(&self, category: &'static str, name: &str, args: &[&str], code: Code) -> Output {
        self.case_with(category, name, args, &[], code)
    }

    fn case_with(
        &self,
        category: &'static str,
        name: &str,
        args: &[&str],
        env: &[(&str, &Path)],
        code: Code,
    ) -> Output {
        let t = Instant::now();
        let out = self.run_with(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(124), "{category}/{name}: hit the {DEADLINE_S}s deadline");
        assert_eq!(
            out.status.code(),
            exit(code),
            "{category}/{name} ({:?}): {}",
            t.elapsed(),
            self.env.report(args, &out, &format!("expected {} ({code:?})", code as i32))
        );
        assert!(!stderr.contains("panicked"), "{category}/{name}: {stderr}");
        if code != Code::Ok {
            assert!(stderr.contains("error:"), "{category}/{name}: no error message: {stderr}");
        }
        assert!(!stderr.contains("s3cret"), "{category}/{name}: a secret was shown: {stderr}");
        *self.tally.borrow_mut().entry(category).or_default() += 1;
        out
    }

    fn version(&self) -> u64 {
        let v = self.next_version.get();
        self.next_version.set(v + 1);
        v
    }

    /// A small manifest (two local files), edited, signed, under `name`.
    fn manifest(&self, name: &str, edit: impl FnOnce(&mut ManifestSpec)) -> PathBuf {
        let d = self.dir.join("art");
        let kubectl = file_artifact(&d, "kubectl", &pseudo_random(4096, 1));
        let lk = file_artifact(&d, "lk", &pseudo_random(4096, 2));
        let mut s = ManifestSpec::new(
            (vec![kubectl.path_url()], kubectl, "file".into()),
            (vec![lk.path_url()], lk, "file".into(), "localkube".into()),
        );
        s.program = "localkube".into();
        s.version = self.version();
        edit(&mut s);
        self.env.write_signed_manifest(&s, &format!("corpus/{name}.toml"))
    }

    /// A manifest whose localkube is the archive `bytes` (a tar.zst).
    fn archive_manifest(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let a = file_artifact(&self.dir.join("archives"), &format!("{name}.tar.zst"), bytes);
        self.manifest(name, |s| {
            s.localkube = (vec![a.path_url()], a.clone(), "tar.zst".into(), "bin/localkube".into());
            s.program = "bin/localkube".into();
        })
    }
}

/// One raw tar entry: name, type, data, link target (all as bytes).
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A raw tar stream (names as bytes, GNU headers, no checks), zstd-compressed.
fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

#[test]
fn the_hostile_corpus() {
    let c = Corpus::new();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // --- manifests (unsigned: `manifest check`; signed: `fetch`) -----------
    let base = fs::read_to_string(c.manifest("base", |_| {})).unwrap();
    let bad_texts: Vec<(&str, String)> = vec![
        ("not TOML", "this is [not toml".into()),
        ("unknown field", base.replace("schema = 1", "schema = 1\nsurprise = true")),
        ("unknown template", base.replace("{port}", "{portt}")),
        (
            "pki-files into {pki}",
            format!("{base}\n[component.localkube.run.pki-files]\n\"{{pki}}/ca.crt\" = \"ca.key\"\n"),
        ),
        ("schema 2", base.replace("schema = 1", "schema = 2")),
        ("version 0", base.replacen("version = ", "version = 0\n#", 1)),
        ("ftp URL", base.replacen("urls = [\"", "urls = [\"ftp://x/", 1)),
        ("bin with ..", base.replace("bin = \"kubectl\"", "bin = \"../kubectl\"")),
        ("negative size", base.replacen("size = ", "size = -", 1)),
        ("bad sha256", base.replacen("sha256 = \"", "sha256 = \"Z", 1)),
        ("empty", String::new()),
    ];
    for (name, text) in &bad_texts {
        let p = c.dir.join(format!("bad-{}.toml", name.replace(' ', "-")));
        fs::write(&p, text).unwrap();
        c.case("manifest", name, &["manifest", "check", &s(&p)], Code::Usage);
        let signed = c.env.write_signed_text(text, &format!("corpus/signed-bad-{}.toml", name.replace(' ', "-")));
        c.case("manifest", name, &["fetch", "--manifest", &s(&signed)], Code::Usage);
    }
    let binary = c.dir.join("binary.toml");
    fs::write(&binary, pseudo_random(5000, 3)).unwrap();
    c.case("manifest", "binary garbage", &["manifest", "check", &s(&binary)], Code::Usage);
    let huge = c.dir.join("huge.toml");
    fs::write(&huge, vec![b'#'; 5 << 20]).unwrap();
    c.case("manifest", "5 MiB", &["manifest", "check", &s(&huge)], Code::Usage);
    let zero = c.dir.join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    c.case("manifest", "/dev/zero", &["manifest", "check", &s(&zero)], Code::Usage);
    c.case("manifest", "/dev/zero as --manifest", &["fetch", "--manifest", &s(&zero)], Code::Usage);
    c.case("manifest", "missing file", &["fetch", "--manifest", "/no/such/manifest.toml"], Code::Usage);
    let expired = c.manifest("expired", |m| {
        m.published = time::OffsetDateTime::now_utc() - time::Duration::days(20);
        m.expires = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    });
    c.case("manifest", "expired", &["fetch", "--manifest", &s(&expired)], Code::Expired);
    let newer = c.manifest("newer", |m| m.requires_bootstrap = ">=99.0.0".into());
    c.case("manifest", "needs a newer kubestrap", &["fetch", "--manifest", &s(&newer)], Code::NeedsNewerKubestrap);

    // --- signatures ---------------------------------------------------------
    let good = c.manifest("sig-good", |_| {});
    let sig = fskit_sig(&good);
    let sig_text = fs::read_to_string(&sig).unwrap();
    let sig_cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing", None),
        ("empty", Some(Vec::new())),
        ("garbage", Some(pseudo_random(300, 4))),
        ("three lines", Some(sig_text.lines().take(3).collect::<Vec<_>>().join("\n").into_bytes())),
        ("another file's", Some(fs::read(fskit_sig(&c.manifest("sig-other", |_| {}))).unwrap())),
        ("10 000 blocks", Some(sig_text.repeat(10_000).into_bytes())),
    ];
    for (name, content) in sig_cases {
        let m = c.manifest(&format!("sig-{}", name.replace(' ', "-")), |_| {});
        let sp = fskit_sig(&m);
        match content {
            None => fs::remove_file(&sp).unwrap(),
            Some(b) => fs::write(&sp, b).unwrap(),
        }
        c.case("signature", name, &["fetch", "--manifest", &s(&m)], Code::Signature);
    }
    for (name, target) in [("/dev/zero", Path::new("/dev/zero")), ("a directory", Path::new("/"))] {
        let m = c.manifest(&format!("sig-link-{}", name.replace('/', "")), |_| {});
        let sp = fskit_sig(&m);
        fs::remove_file(&sp).unwrap();
        std::os::unix::fs::symlink(target, &sp).unwrap();
        c.case("signature", name, &["fetch", "--manifest", &s(&m)], Code::Signature);
    }
    let untrusted_keys = c.env.scratch("untrusted");
    c.env.ok(&["manifest", "keygen", "--out", &s(&untrusted_keys), "--name", "x", "--unencrypted"]);
    let m = c.manifest("sig-untrusted", |_| {});
    c.env.ok(&["manifest", "sign", "--key", &s(&untrusted_keys.join("x.key")), &s(&m)]);
    c.case("signature", "untrusted key", &["fetch", "--manifest", &s(&m)], Code::Signature);
    let flipped = c.manifest("sig-flipped-body", |_| {});
    let text = fs::read_to_string(&flipped).unwrap().replace("channel = \"test\"", "channel = \"tesT\"");
    fs::write(&flipped, text).unwrap();
    c.case("signature", "a byte of the manifest changed", &["fetch", "--manifest", &s(&flipped)], Code::Signature);

    // --- servers ------------------------------------------------------------
    let d = c.dir.join("served");
    let body = file_artifact(&d, "body", &pseudo_random(50_000, 5));
    let served = |name: &str, reply: Option<Reply>| {
        let url = c.server.add_artifact(name, &body);
        if let Some(r) = reply {
            c.server.script(name, std::iter::repeat_n(r, 10));
        }
        c.manifest(&format!("srv-{name}"), |m| m.kubectl = (vec![url], body.clone(), "file".into()))
    };
    let cases: Vec<(&str, Option<Reply>, Code)> = vec![
        ("404", Some(Reply::Status(404)), Code::Download),
        ("403", Some(Reply::Status(403)), Code::Download),
        ("wrong bytes", Some(Reply::Body(pseudo_random(50_000, 6))), Code::Integrity),
        ("endless body", Some(Reply::Extra(pseudo_random(100_000, 7))), Code::Integrity),
        ("endless chunked body", Some(Reply::ExtraChunked(pseudo_random(100_000, 8))), Code::Integrity),
        ("announces too much", Some(Reply::ExtraAnnounced(vec![0; 10])), Code::Integrity),
        ("short body", Some(Reply::Body(pseudo_random(10, 9))), Code::Download),
    ];
    for (name, reply, code) in cases {
        let m = served(&name.replace(' ', "-"), reply);
        c.case("server", name, &["fetch", "--manifest", &s(&m)], code);
        assert!(!c.env.blob(&body.sha256).exists(), "server/{name}: a bad body was stored");
    }
    let refused = format!("http://127.0.0.1:{}/m.toml", free_port());
    c.case("server", "connection refused", &["fetch", "--manifest", &refused], Code::Download);

    // --- hostile URLs -------------------------------------------------------
    let secret = format!("http://user:s3cret@127.0.0.1:{}/m.toml?token=s3cret", free_port());
    c.case("url", "password and token", &["fetch", "--manifest", &secret], Code::Download);
    c.case("url", "password and token, JSON", &["-o", "json", "fetch", "--manifest", &secret], Code::Download);
    let long = format!("http://127.0.0.1:{}/{}", free_port(), "a".repeat(20_000));
    c.case("url", "20 000 characters", &["fetch", "--manifest", &long], Code::Download);
    c.case("url", "file:///dev/zero", &["fetch", "--manifest", "file:///dev/zero"], Code::Usage);
    c.case("url", "unknown scheme", &["fetch", "--manifest", "gopher://x/m.toml"], Code::Usage);

    // --- archives: nothing written outside, nothing from them used ----------
    let outside = c.dir.join("archives/escaped");
    let archives: Vec<(&str, Vec<u8>)> = vec![
        ("parent path", raw_tar(&[(b"../escaped", tar::EntryType::Regular, b"x", b"")])),
        ("absolute path", raw_tar(&[(outside.to_str().unwrap().as_bytes(), tar::EntryType::Regular, b"x", b"")])),
        ("symlink out", raw_tar(&[(b"bin", tar::EntryType::Symlink, b"", b"../../..")])),
        (
            "write through a symlink",
            raw_tar(&[
                (b"bin", tar::EntryType::Symlink, b"", b"/tmp"),
                (b"bin/localkube", tar::EntryType::Regular, b"x", b""),
            ]),
        ),
        ("hard link out", raw_tar(&[(b"bin/localkube", tar::EntryType::Link, b"", b"/etc/passwd")])),
        ("device node", raw_tar(&[(b"bin/localkube", tar::EntryType::Char, b"", b"")])),
        ("newline in a name", raw_tar(&[(b"bin/local\nkube", tar::EntryType::Regular, b"x", b"")])),
        ("name not UTF-8", raw_tar(&[(b"bin/\xff", tar::EntryType::Regular, b"x", b"")])),
        ("not zstd", pseudo_random(3000, 10)),
        ("bomb", {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_path("bin/localkube").unwrap();
            h.set_size(300 << 20);
            h.set_mode(0o755);
            h.set_cksum();
            std::io::Write::write_all(&mut e, h.as_bytes()).unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..300 {
                std::io::Write::write_all(&mut e, &zeros).unwrap();
            }
            e.finish().unwrap()
        }),
    ];
    for (name, bytes) in &archives {
        let m = c.archive_manifest(&format!("arc-{}", name.replace(' ', "-")), bytes);
        c.case("archive", name, &["cache", "unpack", "--manifest", &s(&m)], Code::UnsafeArchive);
        assert!(!outside.exists() && !Path::new("/tmp/localkube").exists(), "archive/{name}: wrote outside");
        assert!(
            fs::read_dir(c.env.home.join("components")).map(|d| d.count()).unwrap_or(0) <= 1,
            "archive/{name}: a tree of it was kept"
        );
    }

    // --- values a user cannot mean ------------------------------------------
    for (name, args) in [
        ("port 0", &["start", "--port", "0"][..]),
        ("jobs 0", &["fetch", "--jobs", "0", "--manifest", "m.toml"]),
        ("no wait", &["start", "--wait-timeout", "0s"]),
        ("bad duration", &["start", "--wait-timeout", "soon"]),
        ("bad profile name", &["start", "-p", "../../etc"]),
        ("bad target", &["fetch", "--target", "plan9-mips", "--manifest", "m.toml"]),
    ] {
        c.case("flags", name, args, Code::Usage);
    }

    let tally = c.tally.borrow();
    let total: usize = tally.values().sum();
    println!("hostile corpus: {total} cases: {tally:?}");
}

/// The `.minisig` beside a manifest.
fn fskit_sig(m: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", m.display()))
}

#[test]
fn the_hostile_corpus_against_a_cluster() {
    // Store corruption, damaged state and kubeconfig permissions, on a
    // running cluster: every case leaves stop and delete working.
    let cl = Cluster::new();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut count = |cat: &'static str| *tally.entry(cat).or_default() += 1;
    cl.start("kubestrap");
    let home = cl.env.home.clone();

    // Store corruption.
    let blob = cl.env.blobs().into_iter().next().unwrap();
    flip_byte(&blob, 10);
    cl.env.fail(&["cache", "verify"], Code::CorruptCache);
    assert!(!blob.exists(), "the corrupt blob was removed");
    count("store");
    cl.env.ok(&["stop"]);
    cl.env.ok(&["start"]);
    count("store");
    let tree = fs::read_dir(home.join("components")).unwrap().flatten().find(|e| e.path().join("version.txt").exists());
    let tree = tree.unwrap().path();
    fs::write(tree.join("version.txt"), "v9.9.9+evil\n").unwrap();
    cl.env.ok(&["stop"]);
    let out = cl.env.ok(&["start"]);
    assert!(out.contains("component repaired"), "{out}");
    assert_eq!(fs::read_to_string(tree.join("version.txt")).unwrap(), "v1.33.1+standin\n");
    count("store");
    fs::remove_file(tree.join(".complete")).unwrap();
    cl.env.fail(&["cache", "verify"], Code::CorruptCache);
    cl.env.ok(&["stop"]);
    cl.env.ok(&["start"]);
    count("store");

    // Damaged state files: status, stop and delete keep working.
    let run = home.join("profiles/kubestrap/run");
    for (name, path) in [
        ("pid file", run.join("localkube.pid")),
        ("launch spec", run.join("launch.toml")),
        ("exit record", run.join("last-exit.toml")),
        ("stop marker", run.join("stopping")),
    ] {
        fs::write(&path, pseudo_random(100, 12)).unwrap();
        let st = cl.env.run(&["status"]);
        assert!(matches!(st.status.code(), Some(0..=7)), "{name}: {}", cl.env.report(&["status"], &st, "status"));
        cl.env.ok(&["stop"]);
        assert!(cl.localkubes("kubestrap").is_empty(), "{name}: stop left localkube running");
        cl.env.ok(&["start"]);
        count("state");
    }

    // Kubeconfig permissions and shapes: refused before anything runs.
    cl.env.ok(&["stop"]);
    let kc_dir = cl.env.scratch("kc");
    let cases: Vec<(&str, PathBuf)> = vec![
        ("a directory", kc_dir.clone()),
        ("not YAML", {
            let p = kc_dir.join("bad");
            fs::write(&p, "clusters: [\n").unwrap();
            p
        }),
        ("clusters not a list", {
            let p = kc_dir.join("shape");
            fs::write(&p, "clusters: 5\n").unwrap();
            p
        }),
        ("symlink loop", {
            let p = kc_dir.join("loop");
            std::os::unix::fs::symlink(&p, &p).unwrap();
            p
        }),
        ("read-only", {
            let p = kc_dir.join("ro");
            fs::write(&p, "apiVersion: v1\nkind: Config\n").unwrap();
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
            p
        }),
    ];
    for (name, kc) in cases {
        let before = fs::read(&kc).ok();
        let out = cl.env.cmd(&["start"]).env("KUBECONFIG", &kc).output().unwrap();
        assert_eq!(
            out.status.code(),
            exit(Code::Kubeconfig),
            "kubeconfig {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(&kc).ok(), before, "kubeconfig {name}: changed");
        assert!(cl.localkubes("kubestrap").is_empty(), "kubeconfig {name}: localkube was started");
        count("kubeconfig");
    }
    cl.env.ok(&["start"]);
    let total: usize = tally.values().sum();
    println!("hostile corpus against a cluster: {total} cases: {tally:?}");
}
