//! TEST ONLY: a stand-in localkube. A tiny HTTPS apiserver that follows the
//! localkube contract closely enough for the real kubectl to `get ns`,
//! `create configmap`, `get configmap` and `get sa` against it.

mod agent;
mod api;
mod k3s;
mod nodes;
mod proto;
mod qemu;
mod render;
mod server;
mod store;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "localkube-standin", about = "TEST ONLY: a tiny apiserver following the localkube contract")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API over HTTPS until SIGTERM/SIGINT.
    Server(Box<ServerArgs>),
    /// Join a server as a node (k3s's `agent`) and keep its node Ready.
    Agent(Box<agent::AgentArgs>),
}

#[derive(Args)]
struct ServerArgs {
    /// Where standin-state.json lives (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    https_listen_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: String,
    /// Serving certificate. Without it the stand-in behaves like k3s with a
    /// custom CA: it issues its own from `<data-dir>/server/tls/server-ca.*`
    /// and trusts clients of `<data-dir>/server/tls/client-ca.crt`.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// PEM CA that signs accepted client certificates.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// k3s-style: extra names of the serving certificate (repeat).
    #[arg(long)]
    tls_san: Vec<String>,
    /// k3s-style flags accepted for their shape only.
    #[arg(long)]
    node_name: Option<String>,
    /// k3s: the node's address (also the advertised one unless given).
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// k3s: the address the `kubernetes` Service sends pods to.
    #[arg(long)]
    advertise_address: Option<std::net::Ipv4Addr>,
    /// k3s: the config file (else K3S_CONFIG_FILE, else /etc/rancher/k3s/config.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// k3s: registries.yaml (else /etc/rancher/k3s/registries.yaml).
    #[arg(long)]
    private_registry: Option<PathBuf>,
    /// k3s: `KEY=VALUE` for the apiserver; `token-auth-file=` is honoured.
    #[arg(long)]
    kube_apiserver_arg: Vec<String>,
    #[arg(long)]
    token: Option<String>,
    /// k3s: the join token's file (agents present its secret).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// k3s: `KEY=VALUE` for the controller manager;
    /// `node-monitor-grace-period=Ns` is honoured.
    #[arg(long)]
    kube_controller_manager_arg: Vec<String>,
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// k3s: the interface flannel's VXLAN uses (else the default route's).
    #[arg(long)]
    flannel_iface: Option<String>,
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    #[arg(long)]
    write_kubeconfig_mode: Option<String>,
    #[arg(long)]
    disable: Vec<String>,
    /// Kubernetes static token CSV: token,user,uid,"groups".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// /readyz answers 500 until this long after start.
    #[arg(long, default_value_t = 0)]
    ready_delay_ms: u64,
    /// /readyz always answers 500.
    #[arg(long)]
    never_ready: bool,
    /// k3s mode: this system Deployment never becomes available (repeat),
    /// as CoreDNS does where its images can be neither found nor pulled.
    #[arg(long)]
    standin_unavailable: Vec<String>,
    /// After SIGTERM/SIGINT, keep serving this long before shutting down
    /// (a localkube that takes time to stop).
    #[arg(long, default_value_t = 0)]
    stop_delay_ms: u64,
}

/// The `/version` document for a gitVersion like `v1.33.1+standin`.
fn version_info(git_version: &str) -> Value {
    let mut parts = git_version.trim_start_matches('v').split('.');
    let mut num = || parts.next().unwrap_or("").chars().take_while(char::is_ascii_digit).collect::<String>();
    let (major, minor) = (num(), num());
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `version.txt` beside the (canonicalized) executable.
fn read_version() -> Result<String> {
    let exe = std::env::current_exe().and_then(|p| p.canonicalize()).context("locating the stand-in executable")?;
    let path = exe.parent().unwrap_or(Path::new("/")).join("version.txt");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading the stand-in version from {} (it must exist beside the binary)", path.display())
    })?;
    let v = text.trim().to_string();
    anyhow::ensure!(!v.is_empty(), "{} is empty", path.display());
    Ok(v)
}

/// k3s imports the image archives in `<data-dir>/agent/images` at start:
/// the stand-in names each, so tests can see what was placed.
fn report_images(dir: &Path) {
    for n in image_archives(dir) {
        eprintln!("standin: image archive {n}");
    }
}

/// The archives in an images directory, by name (hidden files left out).
fn image_archives(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Whether this stand-in runs as `k3s` (see the `k3s` module).
fn k3s_mode() -> bool {
    std::env::args_os().next().and_then(|a| Path::new(&a).file_name().map(|n| n == "k3s")).unwrap_or(false)
}

async fn run(args: ServerArgs) -> Result<()> {
    let started = Instant::now();
    let git_version = read_version()?;
    let k3s = k3s_mode().then(|| k3s::Flags {
        data_dir: args.data_dir.clone(),
        port: args.https_listen_port,
        bind: args.bind_address.clone(),
        node_ip: args.node_ip,
        advertise_address: args.advertise_address,
        node_name: args.node_name.clone(),
        config: args.config.clone(),
        private_registry: args.private_registry.clone(),
        token: args.token.clone(),
        cluster_cidr: args.cluster_cidr.clone(),
        flannel_iface: args.flannel_iface.clone(),
    });
    let mut report = k3s::Report::default();
    let effective = k3s.as_ref().map(k3s::config::effective);
    if let Some(cfg) = &effective {
        // As the release it stands in for would: fatal before anything.
        cfg.refuse_missing(&git_version)?;
    }
    if let (Some(flags), Some(cfg)) = (&k3s, &effective) {
        report.push(cfg.check());
        // Before the certificates: the datastore's CAs are the ones used.
        report.push(k3s::datastore::reconcile(&flags.data_dir)?);
    }
    let (cert, key, client_ca) = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => {
            let ca = args.client_ca_file.clone().context("--client-ca-file is required with --tls-cert-file")?;
            (c.clone(), k.clone(), ca)
        }
        _ => {
            let names = [args.bind_address.as_str(), "127.0.0.1", "localhost"]
                .into_iter()
                .map(String::from)
                .chain(args.tls_san.iter().cloned())
                .chain(args.node_ip.iter().chain(args.advertise_address.iter()).map(|a| a.to_string()))
                .collect::<Vec<_>>();
            tls::k3s_style(&args.data_dir, &names)?
        }
    };
    let (tls, client_certs) = tls::server_config(&cert, &key, &client_ca)?;
    report_images(&args.data_dir.join("agent/images"));
    // k3s passes `--kube-apiserver-arg=token-auth-file=F` to its apiserver.
    let token_file = args
        .token_auth_file
        .clone()
        .or_else(|| args.kube_apiserver_arg.iter().find_map(|a| a.strip_prefix("token-auth-file=").map(PathBuf::from)));
    let tokens = server::Server::load_tokens(token_file.as_deref())?;
    let join_secret = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(server::token_secret(t).to_string()),
        (None, Some(f)) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
            Some(server::token_secret(&t).to_string())
        }
        (None, None) => None,
    };
    let cacerts = std::fs::read(&client_ca).with_context(|| format!("reading {}", client_ca.display()))?;
    let grace = nodes::grace_from_args(&args.kube_controller_manager_arg)
        .map_err(anyhow::Error::msg)?
        .unwrap_or(nodes::DEFAULT_GRACE);
    let mut store = store::Store::load(&args.data_dir)?;
    // The server is a node too (k3s runs an agent in its server).
    // Registered once; its version follows the binary (a kubelet reports
    // its own at each start).
    if let Some(name) = &args.node_name {
        let key = store::key(store::Res::Nodes, "", name);
        match store.state.map_mut(store::Res::Nodes).get_mut(&key) {
            Some(n) => {
                for f in ["kubeletVersion", "kubeProxyVersion"] {
                    n["status"]["nodeInfo"][f] = serde_json::json!(git_version);
                }
            }
            None => {
                let addr = args.node_ip.map(|a| a.to_string());
                store.state.insert(store::Res::Nodes, nodes::node_object(name, addr.as_deref(), &git_version, true));
            }
        }
        store.save()?;
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let listener = tokio::net::TcpListener::bind((args.bind_address.as_str(), args.https_listen_port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind_address, args.https_listen_port))?;
    let addr = listener.local_addr()?;

    let server = Arc::new(server::Server {
        api: api::Api {
            store: Mutex::new(store),
            version: version_info(&git_version),
            started,
            ready_delay: Duration::from_millis(args.ready_delay_ms),
            never_ready: args.never_ready,
            gate: k3s.as_ref().map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false))),
            nodes: nodes::Nodes::new(grace, args.node_name.clone()),
            // k3s deploys CoreDNS (manifests/coredns.yaml) unless disabled.
            system: if k3s.is_some() && !args.disable.iter().any(|d| d.split(',').any(|x| x == "coredns")) {
                vec![("coredns".into(), !args.standin_unavailable.iter().any(|u| u == "coredns"))]
            } else {
                Vec::new()
            },
        },
        tokens,
        client_certs,
        join_secret,
        cacerts,
    });
    eprintln!("standin: listening on https://{addr} (version {git_version})");
    if let (Some(flags), Some(cfg)) = (k3s, effective) {
        // The node's steps once the API listens (a pod connects to it); not
        // ready before they are done, so the report is whole when a start
        // returns. A fatal one ends the process, as it ends k3s.
        let server = server.clone();
        std::thread::spawn(move || {
            if let Err(e) = k3s::node_steps(&flags, &cfg, &mut report) {
                eprintln!("standin-k3s: fatal: {e:#}");
                let _ = report.save(&flags.data_dir);
                std::process::exit(1);
            }
            let _ = report.save(&flags.data_dir);
            let mut st = server.api.store.lock().unwrap_or_else(|e| e.into_inner());
            st.state.insert(store::Res::ConfigMaps, report.configmap());
            let _ = st.save();
            drop(st);
            if let Some(g) = &server.api.gate {
                g.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let stop_delay = Duration::from_millis(args.stop_delay_ms);
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => eprintln!("standin: SIGTERM, shutting down"),
            _ = sigint.recv() => eprintln!("standin: SIGINT, shutting down"),
        }
        tokio::time::sleep(stop_delay).await;
    };
    server.clone().run(listener, tokio_rustls::TlsAcceptor::from(tls), shutdown).await;
    let st = server.api.store.lock().unwrap_or_else(|e| e.into_inner());
    st.save().context("saving state on shutdown")?;
    eprintln!("standin: state saved, exiting");
    Ok(())
}

fn main() {
    if qemu::mode() {
        qemu::main();
    }
    // The k3s mode's shim and container (re-executions of this binary).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("__shim") if argv.len() == 4 => k3s::sandbox::shim_main(Path::new(&argv[2]), &argv[3]),
        Some("__container") if argv.len() == 3 => k3s::sandbox::container_main(Path::new(&argv[2])),
        // For tests: the kubelet's cgroup step alone, and a container's
        // cgroup placement (see k3s::cgroup).
        Some("__kubepods") => k3s::cgroup::kubepods_main(),
        Some("__container-cgroup") if argv.len() > 3 => {
            k3s::cgroup::container_cgroup_main(&argv[2].to_string_lossy(), &argv[3..])
        }
        _ => {}
    }
    let args = match Cli::parse().cmd {
        Cmd::Server(args) => *args,
        Cmd::Agent(args) => {
            if let Err(e) = agent::main(*args) {
                eprintln!("standin-agent: error: {e:#}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("standin: error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(args));
    // Don't wait for open connections: they are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("standin: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_document() {
        let v = version_info("v1.33.1+standin");
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        assert_eq!(v["gitVersion"], "v1.33.1+standin");
        assert_eq!(v["platform"], "linux/amd64");
    }

    #[test]
    fn cli_accepts_both_flag_forms() {
        let cli = Cli::try_parse_from([
            "localkube-standin",
            "server",
            "--data-dir=/d",
            "--https-listen-port",
            "6443",
            "--tls-cert-file=c",
            "--tls-private-key-file",
            "k",
            "--client-ca-file=ca",
            "--never-ready",
        ])
        .unwrap();
        let Cmd::Server(a) = cli.cmd else { panic!("a server command line") };
        assert_eq!((a.https_listen_port, a.bind_address.as_str(), a.never_ready), (6443, "127.0.0.1", true));
        assert_eq!(a.data_dir, PathBuf::from("/d"));
    }
}
