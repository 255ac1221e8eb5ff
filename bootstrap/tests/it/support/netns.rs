//! A network namespace with only loopback: commands run in it have no way
//! to reach any other host (what "offline" means, proven).

use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up; `None` (with the reason printed) on a
    /// machine where one cannot be made.
    pub fn new(tag: &str) -> Option<Netns> {
        let name = format!("ks-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let made = Command::new("ip").args(["netns", "add", &name]).output();
        match made {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                println!("SKIPPED: cannot make a network namespace: {}", String::from_utf8_lossy(&o.stderr));
                return None;
            }
            Err(e) => {
                println!("SKIPPED: cannot run `ip netns add`: {e}");
                return None;
            }
        }
        let ns = Netns { name };
        let up =
            Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]).status().unwrap();
        assert!(up.success(), "cannot bring lo up in {}", ns.name);
        Some(ns)
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
