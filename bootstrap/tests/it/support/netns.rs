//! A network namespace with only loopback: commands run in it have no way
//! to reach any other host (what "offline" means, proven).

use std::process::{Command, Stdio};

/// Whether network namespaces can be made here (root and iproute2).
pub fn netns_possible() -> Result<(), String> {
    kubestrap_testkit::is_root()?;
    kubestrap_testkit::which("ip").map(drop).ok_or_else(|| "iproute2's `ip` is not installed".into())
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up. Callers check `need("netns",
    /// netns_possible)` first.
    pub fn new(tag: &str) -> Netns {
        let name = format!("ks-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let made = Command::new("ip").args(["netns", "add", &name]).output().expect("`ip` runs");
        assert!(made.status.success(), "cannot make a network namespace: {}", String::from_utf8_lossy(&made.stderr));
        let ns = Netns { name };
        let up =
            Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]).status().unwrap();
        assert!(up.success(), "cannot bring lo up in {}", ns.name);
        ns
    }

    /// The same command, run inside the namespace (environment kept).
    pub fn wrap(&self, c: Command) -> Command {
        let mut w = Command::new("ip");
        w.args(["netns", "exec", &self.name]).arg(c.get_program()).args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(dir) = c.get_current_dir() {
            w.current_dir(dir);
        }
        w.stdin(Stdio::null());
        w
    }

    /// The interfaces the namespace has (for the record: only `lo`).
    pub fn links(&self) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "ip", "-o", "link"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair: `a` gets `a_ip`/24, `b` gets
/// `b_ip`/24 (two machines on one network).
pub fn link_pair(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    let tag = &format!("{:x}", std::process::id() & 0xffff);
    let (la, lb) = (format!("ksa{tag}"), format!("ksb{tag}"));
    let script = format!(
        "ip link add {la} type veth peer name {lb} && ip link set {la} netns {na} && ip link set {lb} netns {nb} \
         && ip -n {na} addr add {a_ip}/24 dev {la} && ip -n {na} link set {la} up \
         && ip -n {nb} addr add {b_ip}/24 dev {lb} && ip -n {nb} link set {lb} up",
        na = a.name,
        nb = b.name
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "cannot link {} and {}: {}", a.name, b.name, String::from_utf8_lossy(&out.stderr));
}
