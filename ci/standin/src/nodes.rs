//! Nodes, in the shape k3s gives them: the server registers its own node
//! (`--node-name`), agents register theirs through the API with the join
//! token and then renew it (a heartbeat, as the kubelet's node lease). A
//! node whose heartbeat is older than the grace period reads as Ready
//! "Unknown" — `kubectl get nodes` shows NotReady — as the node lifecycle
//! controller marks it (kube-controller-manager `--node-monitor-grace-period`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::store::now_rfc3339;

/// Kubernetes' default `--node-monitor-grace-period`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);

/// The grace period in a k3s-style `--kube-controller-manager-arg`
/// (`node-monitor-grace-period=5s`), if one names it.
pub fn grace_from_args(args: &[String]) -> Result<Option<Duration>, String> {
    for a in args {
        let Some(v) = a.strip_prefix("node-monitor-grace-period=") else { continue };
        let secs = v.strip_suffix('s').and_then(|n| n.parse::<u64>().ok());
        return match secs {
            Some(s) if s > 0 => Ok(Some(Duration::from_secs(s))),
            _ => Err(format!("node-monitor-grace-period={v}: expected whole seconds such as 5s")),
        };
    }
    Ok(None)
}

/// Heartbeats, kept in memory: a restarted server sees every node stale
/// until it renews, as a real one does.
pub struct Nodes {
    pub grace: Duration,
    /// The server's own node: always fresh while the server runs.
    pub own: Option<String>,
    beats: Mutex<HashMap<String, (Instant, String)>>,
}

impl Nodes {
    pub fn new(grace: Duration, own: Option<String>) -> Nodes {
        Nodes { grace, own, beats: Mutex::new(HashMap::new()) }
    }

    pub fn beat(&self, name: &str) {
        let mut b = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        b.insert(name.to_string(), (Instant::now(), now_rfc3339()));
    }

    pub fn forget(&self, name: &str) {
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The node as clients see it: its Ready condition from its heartbeat.
    pub fn view(&self, obj: &Value) -> Value {
        let mut out = obj.clone();
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let beat = if self.own.as_deref() == Some(name) {
            Some((Instant::now(), now_rfc3339()))
        } else {
            self.beats.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
        };
        let since = out["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string();
        let ready = match &beat {
            Some((at, when)) if at.elapsed() <= self.grace => json!({
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": when, "lastTransitionTime": since,
            }),
            Some((_, when)) => json!({
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": when,
                "lastTransitionTime": when,
            }),
            None => json!({
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.", "lastHeartbeatTime": since,
                "lastTransitionTime": since,
            }),
        };
        out["status"]["conditions"] = json!([ready]);
        out
    }
}

/// A new node object as its kubelet registers it.
pub fn node_object(name: &str, address: Option<&str>, version: &str, control_plane: bool) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    });
    if control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("true");
        labels["node-role.kubernetes.io/master"] = json!("true");
    }
    let addresses: Vec<Value> = address
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .into_iter()
        .chain([json!({"type": "Hostname", "address": name})])
        .collect();
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "addresses": addresses,
            "nodeInfo": {
                "kubeletVersion": version, "kubeProxyVersion": version, "operatingSystem": "linux",
                "architecture": "amd64", "containerRuntimeVersion": "standin://0",
            },
        },
    })
}

/// What `kubectl get nodes` shows of a node (its view).
pub struct Summary {
    pub status: String,
    pub roles: String,
    pub version: String,
}

pub fn summary(obj: &Value) -> Summary {
    let ready = obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
    if obj["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<&str> = obj["metadata"]["labels"]
        .as_object()
        .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
        .unwrap_or_default();
    roles.sort();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let version = obj["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("").to_string();
    Summary { status, roles, version }
}

/// RFC 7386 JSON merge patch (also what a strategic merge patch of plain
/// fields, such as kubectl cordon's `spec.unschedulable`, amounts to).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if k.starts_with("$") {
            continue; // strategic-merge directives ($setElementOrder, $patch)
        }
        if v.is_null() {
            target.as_object_mut().map(|m| m.remove(k));
        } else {
            merge_patch(&mut target[k.as_str()], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_ready_while_it_beats_and_unknown_after_the_grace() {
        let nodes = Nodes::new(Duration::from_millis(50), Some("server".into()));
        let agent = node_object("agent", Some("10.0.0.3"), "v1.33.1", false);
        assert_eq!(summary(&nodes.view(&agent)).status, "NotReady");
        nodes.beat("agent");
        assert_eq!(summary(&nodes.view(&agent)).status, "Ready");
        std::thread::sleep(Duration::from_millis(80));
        let v = nodes.view(&agent);
        assert_eq!(summary(&v).status, "NotReady");
        assert_eq!(v["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
        let server = node_object("server", None, "v1.33.1", true);
        let s = summary(&nodes.view(&server));
        assert_eq!((s.status.as_str(), s.roles.as_str()), ("Ready", "control-plane,master"));
    }

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut n = node_object("a", None, "v1", false);
        merge_patch(&mut n, &json!({"spec": {"unschedulable": true}, "$setElementOrder/x": []}));
        assert_eq!(summary(&n).status, "NotReady,SchedulingDisabled");
        merge_patch(&mut n, &json!({"spec": {"unschedulable": null}}));
        assert!(n["spec"].get("unschedulable").is_none());
    }

    #[test]
    fn grace_is_read_from_the_controller_manager_args() {
        let args = vec!["a=b".to_string(), "node-monitor-grace-period=6s".to_string()];
        assert_eq!(grace_from_args(&args), Ok(Some(Duration::from_secs(6))));
        assert!(grace_from_args(&["node-monitor-grace-period=x".into()]).is_err());
        assert_eq!(grace_from_args(&[]), Ok(None));
    }
}
