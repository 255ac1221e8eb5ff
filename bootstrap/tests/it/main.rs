//! kubestrap's integration tests, one binary: they run the `kubestrap`
//! binary the way a user does, against servers on loopback, the stand-in
//! localkube and the real kubectl on this machine.

mod support;

mod bundle;
mod cli;
mod crash;
mod disk;
mod docker;
mod doctor;
mod engines;
mod fetch;
mod generate;
mod hostile;
mod join;
mod k3s;
mod k3s_guest;
mod k3s_native;
mod lifecycle;
mod load;
mod nodes;
mod publish;
mod qemu;
mod quickstart;
mod real;
mod release;
mod reliability;
mod scenarios;
mod signing;
mod upgrade;
