//! The native driver: localkube as a host process under the shared
//! supervisor (`super::supervisor`: its monitor, pid file and marker), and,
//! for a localkube that needs root (k3s), the machine it shares: a node
//! address of the profile's own (`node`), and the cleanup after it (`host`).

use std::io::Write;

use kubestrap_fskit as fskit;
use kubestrap_manifest::{Driver as Kind, Vars};

use super::supervisor::{self, logs, monitor::LaunchSpec, process};
use super::{
    Check, Context, Delivery, Description, Driver, DriverError, Host, HostState, Launch, Node, Result, Stop,
    StopOutcome,
};
use crate::profile::Profile;
use crate::progress::Step;

pub mod checks;
pub mod host;
pub mod node;

pub const DESCRIPTION: Description = Description {
    kind: Kind::Native,
    needs: &[],
    marks: None,
    here: |_| {
        if cfg!(target_os = "linux") {
            Ok("localkube runs as a host process".into())
        } else {
            Err("localkube runs natively on Linux only".into())
        }
    },
    make: |ctx| Box::new(Native { ctx }),
};

pub struct Native<'a> {
    ctx: Context<'a>,
}

impl Driver for Native<'_> {
    fn kind(&self) -> Kind {
        Kind::Native
    }

    fn check(&self, manifest: Option<&kubestrap_manifest::Manifest>) -> Vec<Check> {
        checks::checks(&checks::Machine::probe(self.tools(), self.ctx.home), manifest)
    }

    /// What `check` says, and that no other native k3s holds the machine.
    fn prerequisites(&self, p: &Profile, manifest: &kubestrap_manifest::Manifest) -> Vec<Check> {
        let mut out = self.check(Some(manifest));
        let run = &manifest.component.localkube.run;
        if run.needs_root && nix::unistd::geteuid().is_root() {
            out.push(host::check(p, &run.program));
        }
        out
    }

    fn extra_sans(&self, _p: &Profile) -> Vec<String> {
        Vec::new()
    }

    fn address(&self, p: &Profile, run: &kubestrap_manifest::Run) -> std::net::Ipv4Addr {
        if node::wanted(run) { node::NodeNet::of(p).address } else { std::net::Ipv4Addr::LOCALHOST }
    }

    /// The node is this machine: its own address (the profile's node
    /// address, where it has one).
    fn node_reach(
        &self,
        _p: &Profile,
        cfg: &crate::profile::Config,
    ) -> std::result::Result<std::net::Ipv4Addr, String> {
        Ok(cfg.listen.or(cfg.address).unwrap_or(std::net::Ipv4Addr::LOCALHOST))
    }

    fn vars(&self, launch: &Launch) -> Vars {
        let p = &launch.profile;
        // `--listen`: the apiserver binds that address (local clients reach it there too).
        let address = launch.listen.unwrap_or_else(|| self.address(p, &launch.run));
        // Where the node address is: the profile's bridge, else the
        // interface holding the `--listen` address.
        let node_iface = launch.listen.and_then(node::iface_of).unwrap_or_else(|| node::NodeNet::of(p).link);
        let address = address.to_string();
        let vars = Vars {
            data: p.data().display().to_string(),
            pki: p.pki().display().to_string(),
            port: launch.port,
            bind: address.clone(),
            profile: p.name.clone(),
            node: format!("kubestrap-{}", p.name),
            node_ip: address.clone(),
            component: launch.component.display().to_string(),
            server: address,
            token: p.join_token().display().to_string(),
            node_iface,
            listen: launch.listen.unwrap_or(std::net::Ipv4Addr::LOCALHOST).to_string(),
        };
        launch.joined(vars)
    }

    fn create(&self, launch: &Launch, node: Node) -> Result<()> {
        let p = server(&launch.profile, node)?;
        for dir in [p.run(), p.logs(), p.data()] {
            fskit::create_dir_mode(&dir, 0o700)?;
        }
        Ok(())
    }

    fn start(&self, launch: &Launch, node: Node) -> Result<Host> {
        let p = server(&launch.profile, node)?;
        let vars = self.vars(launch);
        let program = launch.component.join(&launch.run.program);
        if !program.is_file() {
            return Err(DriverError::ProgramMissing { path: program });
        }
        if launch.run.needs_root {
            // Refused while another profile's k3s holds the machine; what a
            // killed run of this one left is cleaned first.
            host::claim(p, &launch.run.program)?;
            if process::owned_by(&p.run()).is_empty() {
                self.clean_host(p, false)?;
                host::claim(p, &launch.run.program)?;
            }
        }
        if node::wanted(&launch.run) {
            node::NodeNet::of(p).up(self.tools())?;
        }
        let spec = LaunchSpec {
            program,
            sha256: launch.program_sha256,
            args: launch.run.args.iter().map(|a| a.render(&vars)).collect(),
            cwd: p.data(),
            log: p.log_file(),
            port: launch.port,
            env: launch.run.env.iter().map(|(k, v)| (k.clone(), v.render(&vars))).collect(),
        };
        supervisor::launch_monitored(p, &spec)
    }

    fn running(&self, profile: &Profile, node: Node) -> Result<bool> {
        supervisor::running(server(profile, node)?)
    }

    /// Stops localkube and every process of the profile (and their whole
    /// trees: a k3s's shims and pods), then cleans what it left on the machine.
    fn stop(&self, profile: &Profile, node: Node, how: Stop) -> Result<StopOutcome> {
        let profile = server(profile, node)?;
        let outcome = supervisor::stop(profile, how)?;
        self.clean_host(profile, false)?;
        Ok(outcome)
    }

    fn adopt(&self, profile: &Profile) -> Result<()> {
        supervisor::adopt(profile)
    }

    fn status(&self, profile: &Profile, node: Node) -> Result<HostState> {
        supervisor::status(server(profile, node)?)
    }

    fn delete(&self, profile: &Profile, node: Node) -> Result<()> {
        let profile = server(profile, node)?;
        supervisor::kill_all(profile)?;
        self.clean_host(profile, true)
    }

    /// The data directory, copied (reflinked where the filesystem can).
    /// The caller has stopped localkube, so the directory is at rest.
    fn snapshot(&self, profile: &Profile, node: Node, dest: &std::path::Path) -> Result<fskit::Copied> {
        let copied = fskit::copy_tree(&server(profile, node)?.data(), dest)?;
        fskit::sync_fs(dest)?;
        Ok(copied)
    }

    /// Puts a copy of `src` in place of the data directory: built beside
    /// it, then swapped in by rename, so a kill leaves one or the other.
    fn restore(&self, profile: &Profile, node: Node, src: &std::path::Path) -> Result<()> {
        let profile = server(profile, node)?;
        supervisor::swap_in_copy(src, &profile.data(), &profile.dir.join(".data-restoring"))
    }

    /// The stage is the data directory itself: what is placed there is
    /// where localkube reads it.
    fn deliver(&self, profile: &Profile, node: Node, _rel: &std::path::Path) -> Result<Delivery> {
        server(profile, node)?;
        Ok(Delivery::Live)
    }

    fn log_tail(&self, profile: &Profile, node: Node, n: usize) -> Vec<String> {
        server(profile, node).map_or_else(|_| Vec::new(), |p| logs::tail(&p.log_file(), n))
    }

    fn follow_log(&self, profile: &Profile, node: Node, out: &mut dyn Write) -> Result<()> {
        Ok(logs::follow(&server(profile, node)?.log_file(), out)?)
    }
}

/// The profile, for its one node: the native driver runs no agents.
fn server(p: &Profile, node: Node) -> Result<&Profile> {
    match node {
        Node::Server => Ok(p),
        Node::Agent(_) => Err(DriverError::OneNode { driver: Kind::Native }),
    }
}

impl Native<'_> {
    /// The host programs, on the command's PATH.
    fn tools(&self) -> node::Tools<'_> {
        node::Tools::new(&self.ctx.env.path)
    }

    /// [`host::clean`]: what it removed reported (and in the profile's
    /// log), what it could not as the error.
    fn clean_host(&self, p: &Profile, delete: bool) -> Result<()> {
        let t = std::time::Instant::now();
        let done = host::clean(p, delete, self.tools())?;
        if !done.removed.is_empty() {
            if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(p.log_file()) {
                let _ = writeln!(log, "kubestrap: removed from the machine: {}", done.removed.join(", "));
            }
            self.ctx.progress.step(Step::HostCleaned { removed: done.removed }, t.elapsed());
        }
        if done.left.is_empty() {
            Ok(())
        } else {
            Err(DriverError::LeftOnHost { profile: p.name.clone(), left: done.left.join("; ") })
        }
    }
}
