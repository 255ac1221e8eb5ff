//! The apiserver endpoints: health, version, discovery and the three resources.
//! Everything here is plain data in, plain data out; `server.rs` does HTTP.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::render::{self, Include};
use crate::store::{self, Res, SYSTEM_NAMESPACES, Store};

/// One authenticated request, with its body already read.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub accept: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(code: u16, v: &Value) -> Reply {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Reply { code, content_type: "application/json", body }
    }
    pub fn text(code: u16, s: &str) -> Reply {
        Reply { code, content_type: "text/plain; charset=utf-8", body: s.as_bytes().to_vec() }
    }
    /// A `v1 Status` failure.
    pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Reply {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        });
        if let Some(d) = details {
            s["details"] = d;
        }
        Reply::json(code, &s)
    }
    fn not_found(res: Res, name: &str) -> Reply {
        let msg = format!("{} \"{name}\" not found", res.plural());
        Reply::status(404, "NotFound", &msg, Some(json!({"name": name, "kind": res.plural()})))
    }
    fn bad_request(msg: &str) -> Reply {
        Reply::status(400, "BadRequest", msg, None)
    }
    fn method_not_allowed(method: &str) -> Reply {
        let msg = format!("the server does not allow this method on the requested resource ({method})");
        Reply::status(405, "MethodNotAllowed", &msg, None)
    }
}

pub struct Api {
    pub store: Mutex<Store>,
    pub version: Value,
    pub started: Instant,
    pub ready_delay: Duration,
    pub never_ready: bool,
    /// Not ready until set (the k3s mode's node steps are done).
    pub gate: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    pub nodes: crate::nodes::Nodes,
    /// k3s mode: the system Deployments it deploys (k3s's CoreDNS), with
    /// whether each becomes available (one whose pods can never run, with
    /// no images, does not).
    pub system: Vec<(String, bool)>,
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        let pairs = q.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Api {
    pub fn ready(&self) -> bool {
        !self.never_ready
            && self.started.elapsed() >= self.ready_delay
            && self.gate.as_ref().is_none_or(|g| g.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// A system Deployment of k3s mode: deployed once the node's steps
    /// are done (as k3s applies its manifests after start), Available or not.
    fn system(&self, name: &str) -> Reply {
        let deployed = self.gate.as_ref().is_some_and(|g| g.load(std::sync::atomic::Ordering::SeqCst));
        match self.system.iter().find(|(n, _)| n == name) {
            Some((_, available)) if deployed => {
                let (status, reason) = if *available {
                    ("True", "MinimumReplicasAvailable")
                } else {
                    ("False", "MinimumReplicasUnavailable")
                };
                Reply::json(
                    200,
                    &json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": name, "namespace": "kube-system"},
                        "spec": {"replicas": 1},
                        "status": {
                            "replicas": 1,
                            "availableReplicas": u32::from(*available),
                            "conditions": [{"type": "Available", "status": status, "reason": reason}],
                        },
                    }),
                )
            }
            _ => Reply::status(404, "NotFound", &format!("deployments.apps \"{name}\" not found"), None),
        }
    }

    pub fn handle(&self, req: &Request) -> Reply {
        let q = Query::parse(req.query);
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let get_only = |r: Reply| {
            if req.method == "GET" { r } else { Reply::method_not_allowed(req.method) }
        };
        match segs.as_slice() {
            ["ping"] => get_only(Reply::text(200, "pong")),
            ["healthz" | "livez", ..] => get_only(Reply::text(200, "ok")),
            ["readyz", ..] => get_only(if self.ready() {
                Reply::text(200, "ok")
            } else {
                Reply::text(500, "[-]standin-ready failed: reason withheld\nreadyz check failed\n")
            }),
            ["version"] => get_only(Reply::json(200, &self.version)),
            ["api"] => get_only(Reply::json(200, &json!({"kind": "APIVersions", "versions": ["v1"]}))),
            ["apis"] => get_only(Reply::json(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))),
            ["api", "v1"] => get_only(Reply::json(200, &discovery())),
            ["api", "v1", "namespaces", name] => self.object(req, &q, Res::Namespaces, "", name),
            ["apis", "apps", "v1", "namespaces", "kube-system", "deployments", name] => get_only(self.system(name)),
            // A node's status: its kubelet's heartbeat (a PATCH), or read.
            ["api", "v1", "nodes", name, "status"] => match req.method {
                "PATCH" => self.patch(req, Res::Nodes, name, true),
                _ => self.object(req, &q, Res::Nodes, "", name),
            },
            ["api", "v1", plural, name] => match Res::from_plural(plural).filter(|r| !r.namespaced()) {
                Some(res) => self.object(req, &q, res, "", name),
                None => not_found_path(req.path),
            },
            ["api", "v1", "namespaces", ns, plural] => match Res::from_plural(plural).filter(|r| r.namespaced()) {
                Some(res) => self.collection(req, &q, res, Some(ns)),
                None => not_found_path(req.path),
            },
            ["api", "v1", "namespaces", ns, plural, name] => {
                match Res::from_plural(plural).filter(|r| r.namespaced()) {
                    Some(res) => self.object(req, &q, res, ns, name),
                    None => not_found_path(req.path),
                }
            }
            ["api", "v1", plural] => match Res::from_plural(plural) {
                Some(res) if res.namespaced() && req.method != "GET" => Reply::method_not_allowed(req.method),
                Some(res) => self.collection(req, &q, res, None),
                None => not_found_path(req.path),
            },
            _ => not_found_path(req.path),
        }
    }

    /// `.../<plural>`: list (GET) or create (POST).
    fn collection(&self, req: &Request, q: &Query, res: Res, ns: Option<&str>) -> Reply {
        match req.method {
            "GET" => self.list(req, q, res, ns),
            "POST" if res.verbs().contains(&"create") => {
                let obj = match decode_body(req.content_type, req.body) {
                    Ok(o) => o,
                    Err(r) => return r,
                };
                self.create(res, ns.unwrap_or(""), obj, q.dry_run())
            }
            m => Reply::method_not_allowed(m),
        }
    }

    /// `.../<plural>/<name>`: get (GET) or delete (DELETE).
    fn object(&self, req: &Request, q: &Query, res: Res, ns: &str, name: &str) -> Reply {
        let st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if res.namespaced() && st.state.get(Res::Namespaces, "", ns).is_none() {
            return Reply::not_found(Res::Namespaces, ns);
        }
        let Some(obj) = st.state.get(res, ns, name).cloned() else {
            return Reply::not_found(res, name);
        };
        drop(st);
        let obj = if res == Res::Nodes { self.nodes.view(&obj) } else { obj };
        match req.method {
            "PATCH" if res.verbs().contains(&"patch") => self.patch(req, res, name, false),
            "GET" if render::wants_table(req.accept) => {
                let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
                let include = Include::parse(q.get("includeObject"));
                Reply::json(200, &render::table(res, &[&obj], include, &rv, OffsetDateTime::now_utc()))
            }
            "GET" => Reply::json(200, &obj),
            "DELETE" if res.verbs().contains(&"delete") => {
                let body_dry_run = serde_json::from_slice::<Value>(req.body)
                    .ok()
                    .and_then(|o| o["dryRun"].as_array().map(|a| a.iter().any(|v| v == "All")))
                    .unwrap_or(false);
                self.delete(res, ns, name, obj, q.dry_run() || body_dry_run)
            }
            m => Reply::method_not_allowed(m),
        }
    }

    fn list(&self, req: &Request, q: &Query, res: Res, ns: Option<&str>) -> Reply {
        if matches!(q.get("watch"), Some("true" | "1")) {
            return Reply::method_not_allowed("watch (not supported by the stand-in)");
        }
        let st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        // Like the real apiserver, a missing namespace lists as empty.
        let rv = st.state.resource_version.to_string();
        let mut items = Vec::new();
        let views: Vec<Value> = if res == Res::Nodes {
            st.state.list(res, ns).into_iter().map(|n| self.nodes.view(n)).collect()
        } else {
            Vec::new()
        };
        let objs: Vec<&Value> = if res == Res::Nodes { views.iter().collect() } else { st.state.list(res, ns) };
        for obj in objs {
            if let Some(sel) = q.get("labelSelector")
                && !render::labels_match(obj, sel)
            {
                continue;
            }
            if let Some(sel) = q.get("fieldSelector") {
                match render::fields_match(obj, sel) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(msg) => return Reply::bad_request(&msg),
                }
            }
            items.push(obj);
        }
        if render::wants_table(req.accept) {
            let include = Include::parse(q.get("includeObject"));
            return Reply::json(200, &render::table(res, &items, include, &rv, OffsetDateTime::now_utc()));
        }
        Reply::json(
            200,
            &json!({
                "kind": format!("{}List", res.kind()),
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }),
        )
    }

    fn create(&self, res: Res, ns: &str, mut obj: Value, dry_run: bool) -> Reply {
        if !obj.is_object() {
            return Reply::bad_request("the request body is not an object");
        }
        let kind = obj["kind"].as_str().unwrap_or(res.kind());
        let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
        if kind != res.kind() || api_version != "v1" {
            let msg =
                format!("the API version in the data ({api_version}) and kind ({kind}) do not match v1 {}", res.kind());
            return Reply::bad_request(&msg);
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        // Server-set fields are never taken from the client.
        if let Some(m) = meta.as_object_mut() {
            for f in ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "managedFields", "selfLink"] {
                m.remove(f);
            }
        }
        let mut name = meta["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            match meta["generateName"].as_str() {
                Some(g) if !g.is_empty() => name = format!("{g}{}", store::generate_suffix()),
                _ => {
                    let msg = format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        res.kind()
                    );
                    return Reply::status(422, "Invalid", &msg, Some(json!({"kind": res.kind()})));
                }
            }
        }
        let valid = if res == Res::Namespaces { store::is_dns_label(&name) } else { store::is_dns_subdomain(&name) };
        if !valid {
            let msg = format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": must be a lowercase RFC 1123 {}",
                res.kind(),
                if res == Res::Namespaces { "label" } else { "subdomain" }
            );
            return Reply::status(422, "Invalid", &msg, Some(json!({"name": name, "kind": res.kind()})));
        }
        meta["name"] = json!(name);
        if res.namespaced() {
            match meta["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != ns => {
                    return Reply::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    );
                }
                _ => meta["namespace"] = json!(ns),
            }
        }
        if res == Res::ConfigMaps {
            for field in ["data", "binaryData"] {
                let v = &obj[field];
                let ok = v.is_null() || v.as_object().is_some_and(|m| m.values().all(Value::is_string));
                if !ok {
                    return Reply::bad_request(&format!("ConfigMap {field} must map strings to strings"));
                }
            }
        }
        if res == Res::Namespaces {
            obj = store::namespace_object(&name, Some(&obj["metadata"]));
        }
        obj["kind"] = json!(res.kind());
        obj["apiVersion"] = json!("v1");

        let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if res.namespaced() && st.state.get(Res::Namespaces, "", ns).is_none() {
            return Reply::not_found(Res::Namespaces, ns);
        }
        if st.state.get(res, ns, &name).is_some() {
            let msg = format!("{} \"{name}\" already exists", res.plural());
            return Reply::status(409, "AlreadyExists", &msg, Some(json!({"name": name, "kind": res.plural()})));
        }
        if dry_run {
            store::stamp(&mut obj, "");
            obj["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
            return Reply::json(201, &obj);
        }
        let stored = st.state.insert(res, obj);
        if res == Res::Namespaces {
            st.state.ensure_namespace(&name);
        }
        let stored = if res == Res::Nodes {
            // A node registers as its kubelet starts: its first heartbeat.
            self.nodes.beat(&name);
            self.nodes.view(&stored)
        } else {
            stored
        };
        save(&st, Reply::json(201, &stored))
    }

    fn delete(&self, res: Res, ns: &str, name: &str, obj: Value, dry_run: bool) -> Reply {
        if res == Res::Namespaces && SYSTEM_NAMESPACES.contains(&name) {
            let msg = format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted");
            return Reply::status(403, "Forbidden", &msg, Some(json!({"name": name, "kind": "namespaces"})));
        }
        let mut reply_obj = obj;
        if res == Res::Namespaces {
            reply_obj["metadata"]["deletionTimestamp"] = json!(store::now_rfc3339());
            reply_obj["status"]["phase"] = json!("Terminating");
        }
        let reply = if res == Res::Namespaces {
            Reply::json(200, &reply_obj)
        } else {
            let uid = reply_obj["metadata"]["uid"].clone();
            Reply::json(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "kind": res.plural(), "uid": uid}}),
            )
        };
        if dry_run {
            return reply;
        }
        let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if res == Res::Namespaces {
            st.state.remove_namespace(name);
        } else if res == Res::Nodes {
            st.state.map_mut(res).remove(&store::key(res, ns, name));
            st.state.next_resource_version();
            self.nodes.forget(name);
        } else {
            st.state.map_mut(res).remove(&store::key(res, ns, name));
            st.state.next_resource_version();
        }
        save(&st, reply)
    }
}

impl Api {
    /// A merge patch of a cluster-scoped object; `heartbeat`: a kubelet's
    /// status update, kept in memory (not written each second).
    fn patch(&self, req: &Request, res: Res, name: &str, heartbeat: bool) -> Reply {
        let ct = req.content_type.split(';').next().unwrap_or("").trim();
        if !matches!(ct, "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/json")
        {
            return Reply::status(
                415,
                "UnsupportedMediaType",
                &format!("the stand-in takes merge and strategic merge patches, not {ct:?}"),
                None,
            );
        }
        let patch: Value = match serde_json::from_slice(req.body) {
            Ok(p) => p,
            Err(e) => return Reply::bad_request(&format!("decoding the patch: {e}")),
        };
        let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let key = store::key(res, "", name);
        let Some(obj) = st.state.map_mut(res).get_mut(&key) else {
            return Reply::not_found(res, name);
        };
        let mut patched = obj.clone();
        crate::nodes::merge_patch(&mut patched, &patch);
        // What the server sets is the server's.
        patched["metadata"]["name"] = json!(name);
        for f in ["uid", "creationTimestamp", "resourceVersion"] {
            patched["metadata"][f] = obj["metadata"][f].clone();
        }
        *obj = patched.clone();
        if heartbeat {
            self.nodes.beat(name);
            return Reply::json(200, &self.nodes.view(&patched));
        }
        let rv = st.state.next_resource_version();
        if let Some(o) = st.state.map_mut(res).get_mut(&key) {
            o["metadata"]["resourceVersion"] = json!(rv);
        }
        let out = st.state.map(res).get(&key).cloned().unwrap_or_default();
        let out = if res == Res::Nodes { self.nodes.view(&out) } else { out };
        save(&st, Reply::json(200, &out))
    }
}

fn save(st: &Store, ok: Reply) -> Reply {
    match st.save() {
        Ok(()) => ok,
        Err(e) => {
            eprintln!("standin: saving state failed: {e:#}");
            Reply::status(500, "InternalError", &format!("saving state: {e:#}"), None)
        }
    }
}

fn not_found_path(path: &str) -> Reply {
    Reply::status(404, "NotFound", &format!("the server could not find the requested resource ({path})"), None)
}

/// The JSON object in a create body, from JSON or Kubernetes protobuf.
fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, Reply> {
    let ct = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/vnd.kubernetes.protobuf" => {
            crate::proto::decode_object(body).map_err(|e| Reply::bad_request(&format!("decoding protobuf body: {e}")))
        }
        "application/json" | "" => {
            serde_json::from_slice(body).map_err(|e| Reply::bad_request(&format!("decoding JSON body: {e}")))
        }
        other => Err(Reply::status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (got {other})"
            ),
            None,
        )),
    }
}

fn discovery() -> Value {
    let resources: Vec<Value> = Res::ALL
        .iter()
        .map(|r| {
            json!({
                "name": r.plural(), "singularName": r.singular(), "namespaced": r.namespaced(),
                "kind": r.kind(), "verbs": r.verbs(), "shortNames": [r.short_name()],
            })
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources})
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
