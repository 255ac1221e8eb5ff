//! kubestrap: a local Kubernetes cluster in one command, from one file.
//!
//! Layers, dependencies pointing down only:
//! `cli` (clap, commands, rendering, exit codes) → `cluster` (lifecycle
//! steps, profile, PKI, kubeconfig, apiserver probe) → `driver` (how
//! localkube runs), `channel` (where a manifest comes from and whether it is
//! accepted), `artifacts` (store, fetch, unpack, sources) → the `signing`,
//! `manifests`, `bundle` and `fskit` crates. `home`, `progress`, `retry`,
//! `urls`, `state` and `proc` are small shared pieces below them all.

mod artifacts;
mod channel;
mod cli;
mod cluster;
mod driver;
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
