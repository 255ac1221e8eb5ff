//! `{name}` templates in localkube's arguments and paths: a closed set,
//! checked when the manifest is parsed.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The names a template may use, and what each becomes.
pub const NAMES: &[(&str, &str)] = &[
    ("data", "localkube's data directory (kept across stop/start)"),
    ("pki", "the profile's PKI directory"),
    ("port", "the apiserver's HTTPS port"),
    ("bind", "the address the apiserver binds to"),
    ("profile", "the profile (cluster) name"),
    ("node", "the node name"),
    ("node-ip", "the node's own address: where pods and other nodes reach it (the apiserver is advertised there)"),
    ("component", "the unpacked localkube component directory"),
    ("server", "the server node's address, as the other nodes reach it (an agent's `--server`)"),
    ("token", "the file holding the cluster's join token (server and agents)"),
    (
        "node-iface",
        "the network interface that holds {node-ip}: the one other nodes reach this node's pods through (k3s's --flannel-iface)",
    ),
    (
        "listen",
        "the address of this machine other machines reach the API at (`start --listen`), else 127.0.0.1: a name the apiserver's certificate must carry",
    ),
];

/// The values templates render with.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub data: String,
    pub pki: String,
    pub port: u16,
    pub bind: String,
    pub profile: String,
    pub node: String,
    pub node_ip: String,
    pub component: String,
    /// The server node's address as nodes reach it (the server's own node
    /// address on the server).
    pub server: String,
    /// The join token's file as localkube sees it.
    pub token: String,
    /// The interface holding `node_ip`, as localkube sees it.
    pub node_iface: String,
    /// `--listen`'s address, else 127.0.0.1.
    pub listen: String,
}

impl Vars {
    fn get(&self, name: &str) -> String {
        match name {
            "data" => self.data.clone(),
            "pki" => self.pki.clone(),
            "port" => self.port.to_string(),
            "bind" => self.bind.clone(),
            "profile" => self.profile.clone(),
            "node" => self.node.clone(),
            "node-ip" => self.node_ip.clone(),
            "component" => self.component.clone(),
            "server" => self.server.clone(),
            "token" => self.token.clone(),
            "node-iface" => self.node_iface.clone(),
            "listen" => self.listen.clone(),
            // Parsing admits only the names above.
            _ => unreachable!("template name {name} was checked at parse time"),
        }
    }
}

/// A string with `{name}` placeholders from [`NAMES`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Template(String);

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Refuses control characters (a NUL, a newline, an escape...) in a name,
/// path or argument: nothing a manifest names may hold one.
pub fn check_no_control(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("control character U+{:04X} in {s:?}", c as u32)),
        None => Ok(()),
    }
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    check_no_control(s)?;
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("unmatched '}}' in {s:?}"));
        }
        out.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
        let name = &after[..close];
        if !NAMES.iter().any(|(n, _)| *n == name) {
            let known: Vec<String> = NAMES.iter().map(|(n, _)| format!("{{{n}}}")).collect();
            return Err(format!("unknown template {{{name}}} in {s:?}; expected one of {}", known.join(", ")));
        }
        out.push(Piece::Var(name));
        rest = &after[close + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

impl Template {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Substitutes every placeholder.
    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::with_capacity(self.0.len() + 32);
        for piece in pieces(&self.0).expect("checked at parse time") {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(name) => out.push_str(&vars.get(name)),
            }
        }
        out
    }

    /// A `{data}/REST` path's REST (empty for any other template): what
    /// the run section's paths under the data directory are relative to it.
    pub fn data_relative(&self) -> &str {
        self.0.strip_prefix("{data}/").unwrap_or_default()
    }

    /// Whether the template uses `{name}`.
    pub fn uses(&self, name: &str) -> bool {
        pieces(&self.0).expect("checked at parse time").iter().any(|p| matches!(p, Piece::Var(n) if *n == name))
    }
}

impl FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        pieces(s)?;
        Ok(Template(s.to_string()))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_name() {
        let t: Template = "--data-dir={data} --port={port} {profile}/{node} --node-ip={node-ip}".parse().unwrap();
        let vars = Vars {
            data: "/d".into(),
            port: 8443,
            profile: "p".into(),
            node: "n".into(),
            node_ip: "198.18.0.9".into(),
            ..Vars::default()
        };
        assert_eq!(t.render(&vars), "--data-dir=/d --port=8443 p/n --node-ip=198.18.0.9");
        assert!(t.uses("port"));
        assert!(!t.uses("pki"));
    }

    #[test]
    fn refuses_unknown_and_unbalanced() {
        assert!("{home}".parse::<Template>().unwrap_err().contains("unknown template {home}"));
        assert!("{data".parse::<Template>().unwrap_err().contains("unclosed"));
        assert!("data}".parse::<Template>().unwrap_err().contains("unmatched"));
    }
}
