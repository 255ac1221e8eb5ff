//! kubestrap: a local Kubernetes cluster in one command, from one file.
//!
//! Layers, dependencies pointing down only:
//! `cli` (clap, commands, rendering, exit codes, and the one read of the
//! process environment) → `cluster` (the lifecycle as named steps: start,
//! stop, delete, status, upgrade and rollback, the nodes of a cluster and
//! joining another machine's, PKI, kubeconfig, the apiserver probe) →
//! `driver` (how each node runs: a host process, a container, a VM; every
//! method names the node), `channel` (where a manifest comes from and
//! whether it is accepted), `artifacts` (store, fetch, unpack, sources) →
//! `profile`, `home` and `env` (the command's environment, as the CLI read
//! it) → the `signing`, `manifests`, `bundle` and `fskit` crates.
//! `progress`, `retry`, `urls`, `state`, `proc` and `killpoint` are small
//! shared pieces below them all.

mod artifacts;
mod channel;
mod cli;
mod cluster;
mod driver;
mod env;
mod home;
mod killpoint;
mod proc;
mod profile;
mod progress;
mod retry;
mod state;
mod urls;

fn main() -> std::process::ExitCode {
    cli::main()
}
