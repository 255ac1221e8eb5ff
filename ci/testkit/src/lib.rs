//! TEST ONLY: what kubestrap's test suites share.
//!
//! A test whose prerequisite is missing (qemu, a Docker engine, root,
//! network namespaces, minisign) **fails**, unless `KUBESTRAP_TEST_SKIP`
//! names the prerequisite's group on purpose: then it is recorded as
//! skipped, in `KUBESTRAP_TEST_SKIPPED_LOG` when set (`ci/test.sh` counts
//! them in its last line). No test passes by returning early otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether a test may go on: `check` says whether the prerequisite of
/// `group` is there. See the crate's documentation.
pub fn need(group: &str, check: impl FnOnce() -> Result<(), String>) -> bool {
    let asked = std::env::var("KUBESTRAP_TEST_SKIP").unwrap_or_default();
    let log = std::env::var_os("KUBESTRAP_TEST_SKIPPED_LOG").map(PathBuf::from);
    need_in(group, check, &asked, log.as_deref())
}

/// [`need`] with the skip list and the log given.
pub fn need_in(group: &str, check: impl FnOnce() -> Result<(), String>, skip: &str, log: Option<&Path>) -> bool {
    let Err(why) = check() else { return true };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if !skip.split(',').any(|g| g.trim() == group) {
        panic!("{test} needs {group}: {why} (KUBESTRAP_TEST_SKIP={group} skips such tests on purpose)");
    }
    eprintln!("SKIPPED {test}: {group}: {why}");
    if let Some(log) = log {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test} ({group}: {why})");
        }
    }
    false
}

/// Root, for tests that change the machine (a native k3s, mounts, namespaces).
pub fn is_root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 { Ok(()) } else { Err(format!("runs as uid {uid}, not root")) }
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Where the machine image keeps one kubectl per minor.
const GCLOUD_KUBECTLS: &str = "/usr/lib/google-cloud-sdk/bin";

/// The minor version a kubectl binary says it is.
fn minor_of(kubectl: &Path) -> Option<u32> {
    let out = Command::new(kubectl).args(["version", "--client", "-o", "json"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"minor\"")?;
    text[at..].split('"').nth(3)?.trim_end_matches('+').parse().ok()
}

/// A real kubectl of minor `1.<minor>`: the machine image's versioned one,
/// else `kubectl` on PATH if it is that minor.
pub fn kubectl_of(minor: u32) -> Option<PathBuf> {
    let versioned = Path::new(GCLOUD_KUBECTLS).join(format!("kubectl.1.{minor}"));
    if versioned.is_file() {
        return Some(versioned);
    }
    which("kubectl").filter(|k| minor_of(k) == Some(minor))
}

/// Every real kubectl on this machine, by minor (oldest first).
pub fn kubectls() -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = (20..=40).filter_map(|m| kubectl_of(m).map(|k| (m, k))).collect();
    out.dedup_by_key(|(m, _)| *m);
    out
}

/// The newest real kubectl on this machine (the tests' kubectl).
pub fn kubectl() -> PathBuf {
    kubectls().pop().map(|(_, k)| k).expect(
        "no kubectl on this machine: the tests drive the real one (ci/test.sh checks for it; \
         /usr/lib/google-cloud-sdk/bin/kubectl.1.* or kubectl on PATH)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_prerequisite_fails_unless_its_group_is_skipped() {
        let missing = || Err("not here".to_string());
        assert!(need_in("qemu", || Ok(()), "", None), "present: go on");
        let failed = std::panic::catch_unwind(|| need_in("qemu", missing, "docker", None));
        let msg = *failed.expect_err("missing and not skipped: the test fails").downcast::<String>().unwrap();
        assert!(msg.contains("needs qemu: not here") && msg.contains("KUBESTRAP_TEST_SKIP=qemu"), "{msg}");
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skipped");
        assert!(!need_in("qemu", missing, "docker, qemu", Some(&log)), "skipped on purpose");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("(qemu: not here)"), "{logged}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
