//! Scenarios written once and run on each driver: a function that takes
//! the driver, called from one short test per driver (in the driver's own
//! file, which says what the driver needs to run).

use crate::support::*;

/// What a scenario needs of the driver it runs on.
pub struct OnDriver {
    /// The driver with its artifacts (the releases run natively too).
    pub driver: TestDriver,
    /// Starts profile `kubestrap` on the driver from the cluster's manifest.
    pub start: fn(&Cluster),
    /// The image archives placed where localkube imports them, read where
    /// the driver keeps them (the docker driver: the container's volume);
    /// `None` where a test cannot read them from outside.
    pub placed_images: Option<fn(&Cluster) -> Vec<String>>,
}

fn configmap(c: &Cluster, name: &str) -> String {
    c.kubectl_ok(&KUBECTL, &["get", "configmap", name, "-o", "jsonpath={.data.k}"])
}

/// 1.32 → upgrade to 1.33 → rollback to 1.32, with a configmap kept each
/// way and the older release's data snapshotted. Each release places
/// air-gap images of its own: what the one before placed goes from the
/// driver's data (a volume, a data disk) too, not only from the stage, and
/// the guest's place-data says so in the log.
pub fn upgrade_and_rollback(on: &OnDriver) {
    let env = Env::new();
    let with = |images: &'static str| {
        let driver = on.driver.clone();
        let dir = env.scratch(images);
        move |s: &mut ManifestSpec| {
            s.run_on([TestDriver::Native, driver]);
            s.own_images(&dir, images);
        }
    };
    let m32 = crate::upgrade::release(&env, 32, 1, with("images-32.tar.zst"));
    let m33 = crate::upgrade::release(&env, 33, 2, with("images-33.tar.zst"));
    let c = Cluster { env, manifest: m32 };
    let placed = |want: &str, why: &str| {
        if let Some(placed) = on.placed_images {
            assert_eq!(placed(&c), [want], "{why}");
        }
    };
    let version = |c: &Cluster| c.status("kubestrap").1["kubernetes"].as_str().unwrap_or_default().to_string();

    (on.start)(&c);
    placed("images-32.tar.zst", "the first release's images");
    c.kubectl_ok(&KUBECTL, &["create", "configmap", "kept", "--from-literal=k=v"]);
    assert!(version(&c).starts_with("v1.32.4"), "{}", version(&c));

    let out = c.env.ok(&["upgrade", "--manifest", m33.to_str().unwrap()]);
    assert!(out.contains("1.33.4"), "{out}");
    assert!(version(&c).starts_with("v1.33.4"), "{}", version(&c));
    assert_eq!(configmap(&c, "kept"), "v");
    placed("images-33.tar.zst", "the earlier release's images are gone");
    let snaps = json_lines(&c.env.ok(&["-o", "json", "snapshot", "list"]));
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0]["bytes"].as_u64().unwrap() > 0, "the data (volume, data disk) was copied: {snaps:?}");
    let logs = c.env.ok(&["logs", "--lines", "400"]);
    assert!(logs.contains("place-data: removed agent/images/images-32.tar.zst (no longer placed)"), "{logs}");

    c.env.ok(&["rollback"]);
    assert!(version(&c).starts_with("v1.32.4"), "{}", version(&c));
    assert_eq!(configmap(&c, "kept"), "v");
    placed("images-32.tar.zst", "the rolled-back release's images are back");
    c.env.ok(&["delete", "-p", "kubestrap"]);
}
