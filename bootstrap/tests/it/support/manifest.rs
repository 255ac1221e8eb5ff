//! Test manifests, written through the manifest crate's own writer
//! (`Manifest::to_toml`), the one kubestrap and ci/ use too.

use std::collections::BTreeMap;
use std::path::Path;

use kubestrap_manifest::{Component, Components, Localkube, Manifest, Run, Target};

use super::TARGET;
use super::artifacts::{Artifact, VmArtifacts, kubectl_artifact, standin_artifact};

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
    /// `run.node-ready` and `run.ready-deployments`.
    pub node_ready: bool,
    pub ready_deployments: Vec<String>,
    /// `run.images-dir` and `run.needs-root`.
    pub images_dir: Option<String>,
    pub needs_root: bool,
    /// `[component.localkube.run.env]`: (name, template).
    pub env: Vec<(String, String)>,
    /// `[component.localkube.run.files]`: (path template, content).
    pub files: Vec<(String, String)>,
    /// The `images` component: (urls, artifact, file name).
    pub images: Option<(Vec<String>, Artifact, String)>,
    /// The qemu driver's hypervisor and base image (path URLs; drivers = qemu).
    pub vm: Option<VmArtifacts>,
    /// The docker driver's base rootfs (path URL; drivers = docker).
    pub rootfs: Option<Artifact>,
    /// `run.agent`: (args, ready-timeout-s); none: one node.
    pub agent: Option<(Vec<String>, u64)>,
    /// `run.agent.no-remote-join`.
    pub no_remote_join: Option<String>,
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

/// A driver a test release runs localkube on, with what that driver needs
/// beside localkube.
#[derive(Clone, Debug)]
pub enum TestDriver {
    Native,
    /// In a container of this base rootfs.
    Docker(Artifact),
    /// In a VM of this hypervisor and base image.
    Qemu(VmArtifacts),
}

impl TestDriver {
    /// The driver's name, as in a manifest's `drivers` and `--driver`.
    pub fn name(&self) -> &'static str {
        match self {
            TestDriver::Native => "native",
            TestDriver::Docker(_) => "docker",
            TestDriver::Qemu(_) => "qemu",
        }
    }
}

impl ManifestSpec {
    /// An `images` component of its own (a file named `name` in `dir`,
    /// content derived from the name) placed in `{data}/agent/images`.
    pub fn own_images(&mut self, dir: &std::path::Path, name: &str) {
        let a = super::file_artifact(dir, name, &super::pseudo_random(40_000, name.bytes().map(u64::from).sum()));
        self.images = Some((vec![a.path_url()], a, name.into()));
        self.images_dir = Some("{data}/agent/images".into());
    }

    /// localkube runs on these drivers (in this order) and no other; each
    /// brings its artifacts (the docker driver's rootfs, qemu's VM).
    pub fn run_on(&mut self, drivers: impl IntoIterator<Item = TestDriver>) {
        self.localkube_drivers.clear();
        for d in drivers {
            self.localkube_drivers.push(d.name().into());
            match d {
                TestDriver::Native => {}
                TestDriver::Docker(rootfs) => self.rootfs = Some(rootfs),
                TestDriver::Qemu(vm) => self.vm = Some(vm),
            }
        }
    }

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
            images_dir: None,
            needs_root: false,
            node_ready: false,
            ready_deployments: Vec::new(),
            env: Vec::new(),
            files: Vec::new(),
            images: None,
            vm: None,
            rootfs: None,
            agent: None,
            no_remote_join: None,
        }
    }

    /// A release that runs several nodes: the stand-in server names its own
    /// node and takes the join token, and agents join it (`agent` mode),
    /// marked NotReady 3 s after their heartbeats stop.
    pub fn multi_node(&mut self) {
        self.args.extend(
            [
                "--node-name={node}",
                "--token-file={token}",
                "--kube-controller-manager-arg=node-monitor-grace-period=3s",
            ]
            .map(String::from),
        );
        let agent = [
            "agent",
            "--server=https://{server}:{port}",
            "--token-file={token}",
            "--node-name={node}",
            "--node-ip={node-ip}",
            "--data-dir={data}",
        ];
        self.agent = Some((agent.map(String::from).to_vec(), 30));
    }

    /// Takes a run section as written in a file (k3s's, say), keeping this
    /// spec's program: the stand-in runs it.
    pub fn run_from(&mut self, run: &Run) {
        self.args = run.args.iter().map(|a| a.as_str().to_string()).collect();
        self.ready = run.ready.clone();
        self.stop_timeout_s = run.stop_timeout_s;
        self.pki_files =
            run.pki_files.iter().map(|(p, f)| (p.as_str().to_string(), f.file_name().to_string())).collect();
        self.images_dir = run.images_dir.as_ref().map(|d| d.as_str().to_string());
        self.needs_root = run.needs_root;
        self.env = run.env.iter().map(|(k, v)| (k.clone(), v.as_str().to_string())).collect();
        self.files = run.files.iter().map(|(p, c)| (p.as_str().to_string(), c.clone())).collect();
        self.agent =
            run.agent.as_ref().map(|a| (a.args.iter().map(|t| t.as_str().to_string()).collect(), a.ready_timeout_s));
        self.no_remote_join = run.agent.as_ref().and_then(|a| a.no_remote_join.clone());
        self.node_ready = run.node_ready;
        self.ready_deployments = run.ready_deployments.clone();
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

    /// Schema-1 TOML, through the manifest crate's writer. Values a
    /// manifest cannot hold (an unknown template, say) cannot be written
    /// this way: tests of such manifests edit the text.
    pub fn to_toml(&self) -> String {
        self.manifest().to_toml()
    }

    /// The manifest this spec describes.
    pub fn manifest(&self) -> Manifest {
        let target: Target = self.target.parse().unwrap();
        let artifact = |urls: &[String], a: &Artifact, unpack: &str, bin: &str| {
            let sha = a.sha256.parse().unwrap();
            Manifest::artifact(urls.to_vec(), sha, a.size, value(unpack), bin).unwrap_or_else(|e| panic!("{e}"))
        };
        let (urls, a, unpack) = &self.kubectl;
        let kubectl = Component {
            version: self.kubectl_version.clone(),
            drivers: None,
            target: BTreeMap::from([(target.clone(), artifact(urls, a, unpack, "kubectl"))]),
        };
        let (urls, a, unpack, bin) = &self.localkube;
        let run = Run {
            program: self.program.clone(),
            args: self.args.iter().map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}"))).collect(),
            ready: self.ready.clone(),
            node_ready: self.node_ready,
            ready_deployments: self.ready_deployments.clone(),
            stop_signal: value(&self.stop_signal),
            stop_timeout_s: self.stop_timeout_s,
            pki_files: self.pki_files.iter().map(|(p, f)| (p.parse().unwrap(), value(f))).collect(),
            images_dir: self.images_dir.as_ref().map(|d| d.parse().unwrap()),
            needs_root: self.needs_root,
            env: self.env.iter().map(|(k, v)| (k.clone(), v.parse().unwrap())).collect(),
            files: self.files.iter().map(|(p, c)| (p.parse().unwrap(), c.clone())).collect(),
            agent: self.agent.as_ref().map(|(args, secs)| kubestrap_manifest::Agent {
                args: args.iter().map(|a| a.parse().unwrap()).collect(),
                ready_timeout_s: *secs,
                no_remote_join: self.no_remote_join.clone(),
            }),
        };
        let images = self.images.as_ref().map(|(urls, a, name)| Component {
            version: self.localkube_version.clone(),
            drivers: None,
            target: BTreeMap::from([(target.clone(), artifact(urls, a, "file", name))]),
        });
        Manifest {
            schema: 1,
            channel: self.channel.clone(),
            version: self.version,
            kubernetes: self.kubernetes.parse().unwrap(),
            published: self.published,
            expires: self.expires,
            requires_bootstrap: self.requires_bootstrap.parse().unwrap(),
            component: Components {
                kubectl,
                localkube: Localkube {
                    version: self.localkube_version.clone(),
                    drivers: Some(self.localkube_drivers.iter().map(|d| d.parse().unwrap()).collect()),
                    target: BTreeMap::from([(target.clone(), artifact(urls, a, unpack, bin))]),
                    run,
                },
                hypervisor: self.vm.as_ref().map(|v| vm_component(&target, &v.hypervisor, "bin/qemu-system-x86_64")),
                base_image: self.vm.as_ref().map(|v| vm_component(&target, &v.base_image, "vmlinuz")),
                images,
                rootfs: self.rootfs.as_ref().map(|r| {
                    let name = r.path.file_name().unwrap().to_string_lossy().into_owned();
                    let artifact =
                        Manifest::artifact(vec![r.path_url()], r.sha256.parse().unwrap(), r.size, value("file"), &name)
                            .unwrap_or_else(|e| panic!("{e}"));
                    Component {
                        version: "test".into(),
                        drivers: Some(vec![kubestrap_manifest::Driver::Docker]),
                        target: BTreeMap::from([(target.clone(), artifact)]),
                    }
                }),
            },
        }
    }
}

/// A qemu-only component of a tar.zst artifact.
fn vm_component(target: &Target, a: &Artifact, bin: &str) -> Component {
    let artifact = Manifest::artifact(vec![a.path_url()], a.sha256.parse().unwrap(), a.size, value("tar.zst"), bin)
        .unwrap_or_else(|e| panic!("{e}"));
    Component {
        version: "test".into(),
        drivers: Some(vec![kubestrap_manifest::Driver::Qemu]),
        target: BTreeMap::from([(target.clone(), artifact)]),
    }
}

/// A manifest value from its TOML spelling (`"tar.zst"`, `"TERM"`, `"ca.crt"`).
fn value<T: serde::de::DeserializeOwned>(s: &str) -> T {
    toml::Value::String(s.to_string()).try_into().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}
