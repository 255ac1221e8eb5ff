//! `kubestrap service NAME`: where this machine reaches a Service of the
//! cluster. A Service with a NodePort answers on every node's address at
//! that port (kube-proxy's rules); the driver says where this machine
//! reaches the server node directly: natively its own address, in a
//! container of a rootful engine the container's address. A Service
//! without a NodePort (ClusterIP) is reached from pods only, and the error
//! says how to expose it.

use anyhow::Result;
use serde::Serialize;

use super::ClusterError;
use crate::driver::{HostState, Node};
use crate::home::Home;
use crate::profile::Profile;

/// One port of the Service, reached from this machine.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceUrl {
    /// The Service port's name ("" when it has none).
    pub name: String,
    pub port: u16,
    pub node_port: u16,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct Reached {
    pub profile: String,
    pub namespace: String,
    pub service: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub urls: Vec<ServiceUrl>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("profile {profile:?} has no Service {namespace}/{name}")]
    NoSuchService { profile: String, namespace: String, name: String },
    #[error("Service {namespace}/{name} has no port {port:?} (its ports: {ports})")]
    NoSuchPort { namespace: String, name: String, port: String, ports: String },
    #[error("Service {namespace}/{name} is of type {kind}: it has no NodePort, so only pods reach it")]
    NoNodePort { namespace: String, name: String, kind: String },
    #[error(
        "the {driver} driver's nodes of profile {profile:?} cannot be reached from this machine ({why}), and \
         NodePort {node_port} is not published"
    )]
    Unreachable { profile: String, driver: String, why: String, node_port: u16 },
    #[error("asking the apiserver of profile {profile:?} for Service {namespace}/{name}: {why}")]
    Api { profile: String, namespace: String, name: String, why: String },
}

impl ServiceError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ServiceError::NoSuchService { profile, namespace, .. } => {
                format!("`kubestrap kubectl -p {profile} -- get services -n {namespace}` lists them")
            }
            ServiceError::NoSuchPort { .. } => "give --port a port name or number from the list".into(),
            ServiceError::NoNodePort { namespace, name, .. } => format!(
                "give it a NodePort: `kubectl -n {namespace} patch service {name} -p '{{\"spec\":{{\"type\":\"NodePort\"}}}}'`, \
                 or forward a port for as long as you need it: `kubectl -n {namespace} port-forward service/{name} 8080:PORT`"
            ),
            ServiceError::Unreachable { profile, node_port, .. } => format!(
                "publish it: `kubestrap stop -p {profile} && kubestrap start -p {profile} --publish 8080:{node_port}`, \
                 or forward a port for as long as you need it: `kubectl port-forward service/NAME 8080:PORT`"
            ),
            ServiceError::Api { .. } => return None,
        })
    }
}

/// A Service port as the API returns it.
struct Port {
    name: String,
    port: u16,
    node_port: Option<u16>,
    protocol: String,
}

fn ports_of(v: &serde_json::Value) -> Vec<Port> {
    let n = |x: &serde_json::Value| x.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
    v["spec"]["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    Some(Port {
                        name: p["name"].as_str().unwrap_or_default().to_string(),
                        port: n(&p["port"])?,
                        node_port: n(&p["nodePort"]),
                        protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// http, unless the port says TLS (its name starts with "https", or it is 443).
fn scheme(p: &Port) -> &'static str {
    if p.name.starts_with("https") || p.port == 443 { "https" } else { "http" }
}

/// Which Service, of which profile; `port`: one of its ports, by name or number.
pub struct Wanted {
    pub profile: String,
    pub namespace: String,
    pub name: String,
    pub port: Option<String>,
}

/// The URLs of a Service.
pub fn reach(home: &Home, want: &Wanted, progress: &dyn crate::progress::Progress) -> Result<Reached> {
    let Wanted { profile, namespace: ns, name, port } = want;
    let (ns, name, port) = (ns.as_str(), name.as_str(), port.as_deref());
    let p = Profile::new(home, profile)?;
    let cfg = p.load()?;
    let drv = super::session::unlocked_driver(home, cfg.driver, cfg.vm.unwrap_or_default(), progress);
    if !matches!(drv.status(&p, Node::Server)?, HostState::Running(_)) {
        return Err(ClusterError::NotRunning { profile: p.name.clone() }.into());
    }
    let probe = super::nodes::probe(&p, cfg.endpoint())?;
    let api = |why: String| ServiceError::Api { profile: p.name.clone(), namespace: ns.into(), name: name.into(), why };
    let body = match probe.get(&format!("/api/v1/namespaces/{ns}/services/{name}")).map_err(api)? {
        (200, body) => body,
        (404, _) => {
            let (profile, namespace, name) = (p.name.clone(), ns.to_string(), name.to_string());
            return Err(ServiceError::NoSuchService { profile, namespace, name }.into());
        }
        (code, body) => {
            return Err(api(format!("HTTP {code}: {}", body.trim().chars().take(200).collect::<String>())).into());
        }
    };
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| api(e.to_string()))?;
    let kind = v["spec"]["type"].as_str().unwrap_or("ClusterIP").to_string();
    let all = ports_of(&v);
    let chosen: Vec<&Port> = match port {
        None => all.iter().filter(|p| p.protocol == "TCP").collect(),
        Some(want) => all.iter().filter(|p| p.name == want || p.port.to_string() == want).collect(),
    };
    if chosen.is_empty() {
        let ports: Vec<String> = all
            .iter()
            .map(|p| if p.name.is_empty() { p.port.to_string() } else { format!("{} ({})", p.name, p.port) })
            .collect();
        let (namespace, name) = (ns.to_string(), name.to_string());
        let port = port.unwrap_or("any TCP port").to_string();
        return Err(ServiceError::NoSuchPort { namespace, name, port, ports: ports.join(", ") }.into());
    }
    if chosen.iter().all(|p| p.node_port.is_none()) {
        return Err(ServiceError::NoNodePort { namespace: ns.into(), name: name.into(), kind }.into());
    }
    // A port `--publish` put on this machine first (127.0.0.1 on every
    // driver); else the node's own address, where the driver reaches it.
    let reach = drv.node_reach(&p, &cfg);
    let mut urls = Vec::new();
    for port in &chosen {
        let Some(node_port) = port.node_port else { continue };
        let at = match cfg.publish.iter().find(|x| x.node == node_port) {
            Some(published) => format!("127.0.0.1:{}", published.host),
            None => match &reach {
                Ok(addr) => format!("{addr}:{node_port}"),
                Err(why) => {
                    return Err(ServiceError::Unreachable {
                        profile: p.name.clone(),
                        driver: cfg.driver.as_str().to_string(),
                        why: why.clone(),
                        node_port,
                    }
                    .into());
                }
            },
        };
        let url = format!("{}://{at}", scheme(port));
        urls.push(ServiceUrl { name: port.name.clone(), port: port.port, node_port, url });
    }
    Ok(Reached { profile: p.name.clone(), namespace: ns.into(), service: name.into(), kind, urls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_schemes() {
        let v = serde_json::json!({"spec": {"type": "NodePort", "ports": [
            {"name": "web", "port": 80, "nodePort": 30080, "protocol": "TCP"},
            {"name": "https-admin", "port": 8443, "nodePort": 30443},
            {"port": 53, "protocol": "UDP"},
            {"port": 0, "nodePort": 30000},
        ]}});
        let ports = ports_of(&v);
        assert_eq!(ports.len(), 3, "a port 0 is no port");
        assert_eq!((ports[0].node_port, scheme(&ports[0])), (Some(30080), "http"));
        assert_eq!((ports[1].protocol.as_str(), scheme(&ports[1])), ("TCP", "https"));
        assert_eq!((ports[2].node_port, ports[2].protocol.as_str()), (None, "UDP"));
    }
}
