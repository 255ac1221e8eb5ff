//! A full disk: the store lives on a 1 MiB tmpfs in a private mount
//! namespace (needs root: fails without, unless KUBESTRAP_TEST_SKIP=root).

use std::process::Command;

use crate::support::{Code, Env, KUBESTRAP, ManifestSpec, file_artifact, is_root, need, pseudo_random};

#[test]
fn full_disk_is_a_clear_error_and_stores_nothing() {
    if !need("root", is_root) {
        return;
    }
    let env = Env::new();
    let big = file_artifact(&env.scratch("src"), "kubectl", &pseudo_random(4 << 20, 7));
    let small = file_artifact(&env.scratch("src"), "lk", &pseudo_random(1000, 8));
    let spec = ManifestSpec::new(
        (vec![big.path_url()], big.clone(), "file".into()),
        (vec![small.path_url()], small, "file".into(), "localkube-standin".into()),
    );
    let manifest = env.write_signed_manifest(&spec, "manifest.toml");
    let store = env.scratch("small-disk");
    std::fs::create_dir_all(&store).unwrap();
    // The trust store and seen-versions live in the home too: copy the pinned key over.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {store} || exit 77; cp -r {home}/trust {store}/; \
         {ks} fetch --manifest {m}; echo \"exit=$?\"; ls {store}/blobs/sha256 2>/dev/null",
        store = store.display(),
        home = env.home.display(),
        ks = KUBESTRAP,
        m = manifest.display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("KUBESTRAP_HOME", &store)
        .env("NO_COLOR", "1")
        .output()
        .expect("unshare");
    assert_ne!(out.status.code(), Some(77), "cannot mount a tmpfs here: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(&format!("exit={}", Code::DiskFull as i32)), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("free some space"), "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
    // The small artifact may have been verified and stored before the disk
    // filled up (downloads run in parallel); the one that did not fit is not there.
    assert!(!stdout.contains(&big.sha256), "a partial blob was stored: {stdout}");
}
