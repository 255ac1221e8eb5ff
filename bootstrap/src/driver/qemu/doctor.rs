//! What `kubestrap doctor --driver qemu` (and start's preflight) checks:
//! the accelerator, the release's VM artifacts, and that the cached
//! hypervisor runs.

use std::path::Path;
use std::time::Duration;

use kubestrap_manifest::{ComponentName, Driver as Kind, Manifest};

use super::Hypervisor;
use super::cmdline::{self, HostCaps};
use crate::driver::{Check, Gate};
use crate::profile::VmSettings;

/// Whether the release's hypervisor, when cached, runs here (`--version`).
pub(super) fn hypervisor_runs(home: &Path, m: &Manifest) -> Option<Check> {
    let need = m.needs(&kubestrap_manifest::Target::host(), Kind::Qemu).ok()?;
    let hv = need.iter().find(|n| n.component == ComponentName::Hypervisor)?;
    let tree = home.join("components").join(hv.artifact.sha256.to_string());
    if !tree.is_dir() {
        let detail = format!("hypervisor {} is not cached yet (start fetches and verifies it)", hv.version);
        return Some(Check::new("qemu runs", true, &detail, "", Gate::Advisory));
    }
    // Nothing of the tree runs unless it still matches its signed artifact.
    match crate::artifacts::store::verify_component(&tree) {
        Ok(bad) if bad.is_empty() => {}
        Ok(bad) => {
            let detail = format!(
                "the cached hypervisor {} no longer matches its manifest ({} file(s) differ, e.g. {}); not run — \
                 `kubestrap start` repairs it from the verified download",
                hv.version,
                bad.len(),
                bad[0]
            );
            return Some(Check::new("qemu runs", true, &detail, "", Gate::Advisory));
        }
        Err(e) => {
            let detail = format!("the cached hypervisor cannot be checked ({e}); not run");
            return Some(Check::new("qemu runs", true, &detail, "", Gate::Advisory));
        }
    }
    let result = Hypervisor { tree }.run("qemu-system-x86_64", &["--version"], Duration::from_secs(10));
    Some(match result {
        Ok(text) => Check::new("qemu runs", true, text.lines().next().unwrap_or("qemu"), "", Gate::Blocking),
        Err(e) => Check::new(
            "qemu runs",
            false,
            &e.to_string(),
            "run `kubestrap cache verify`; if it still fails, this machine lacks what the hypervisor needs",
            Gate::Blocking,
        ),
    })
}

/// The qemu driver's checks: the release carries a hypervisor and a base
/// image for this machine, and which accelerator it will get.
pub fn checks(host: &HostCaps, m: Option<&Manifest>, set: VmSettings) -> Vec<Check> {
    let mut out = Vec::new();
    let (ok, detail) = match cmdline::select_accel(host, set.accel) {
        Ok((_, why)) => (true, why),
        Err(e) => (false, e),
    };
    out.push(Check::new(
        "accelerator",
        ok,
        &detail,
        "pick one this machine has with --accel (tcg always works), or enable virtualization",
        Gate::Blocking,
    ));
    if let Some(m) = m {
        let target = kubestrap_manifest::Target::host();
        let vm = [ComponentName::Hypervisor, ComponentName::BaseImage];
        let missing: Vec<&str> = match m.needs(&target, Kind::Qemu) {
            Ok(needs) => {
                vm.into_iter().filter(|c| !needs.iter().any(|n| n.component == *c)).map(|c| c.as_str()).collect()
            }
            Err(_) => vm.map(|c| c.as_str()).to_vec(),
        };
        out.push(Check::new(
            "vm artifacts",
            missing.is_empty(),
            &if missing.is_empty() {
                format!("release {} pins a hypervisor and a base image for {target}", m.id())
            } else {
                format!("release {} pins no {} for {target} and the qemu driver", m.id(), missing.join(" or "))
            },
            "use a release made for the qemu driver, or another driver",
            Gate::Blocking,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Accel;

    #[test]
    fn checks_name_the_accelerator_and_missing_artifacts() {
        let linux = HostCaps { os: "linux".into(), kvm: false, kvm_why: String::new(), hvf: false, whpx: false };
        let c = checks(&linux, None, VmSettings::default());
        assert!(c[0].ok && c[0].detail.contains("tcg"), "{c:?}");
        let asked = VmSettings { accel: Some(Accel::Kvm), ..Default::default() };
        let c = checks(&linux, None, asked);
        assert!(!c[0].ok && c[0].advice.as_deref().unwrap().contains("--accel"), "{c:?}");
        let good = include_str!("../../../../manifests/tests/fixtures/good.toml");
        let m = Manifest::parse(good.as_bytes(), Path::new("good.toml")).unwrap();
        let c = checks(&linux, Some(&m), VmSettings::default());
        let art = c.iter().find(|c| c.name == "vm artifacts").unwrap();
        assert_eq!(art.ok, m.component.hypervisor.is_some() && m.component.base_image.is_some(), "{art:?}");
    }
}
