//! Tests of the endpoints, driven through `Api::handle` without HTTP.

use super::*;
use crate::proto;
use prost::Message;

const TABLE: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

fn api(tag: &str) -> (Api, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("standin-api-{tag}-{}-{:x}", std::process::id(), store::random_u64()));
    let api = Api {
        store: Mutex::new(Store::load(&dir).unwrap()),
        version: json!({"gitVersion": "v1.33.1+standin"}),
        started: Instant::now(),
        ready_delay: Duration::ZERO,
        never_ready: false,
        gate: None,
        nodes: crate::nodes::Nodes::new(crate::nodes::DEFAULT_GRACE, None),
        system: Vec::new(),
    };
    (api, dir)
}

fn call(api: &Api, method: &str, target: &str, accept: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request { method, path, query, accept, content_type, body };
    let reply = api.handle(&req);
    let v = serde_json::from_slice(&reply.body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&reply.body)));
    (reply.code, v)
}

fn get(api: &Api, target: &str) -> (u16, Value) {
    call(api, "GET", target, "application/json", "", b"")
}

/// What kubectl 1.32+ sends for `kubectl create configmap demo --from-literal=a=b`.
fn protobuf_configmap(name: &str) -> Vec<u8> {
    let cm = proto::ConfigMap {
        metadata: Some(proto::ObjectMeta { name: Some(name.into()), ..Default::default() }),
        data: [("a".to_string(), "b".to_string())].into(),
        ..Default::default()
    };
    let unknown = proto::Unknown {
        type_meta: Some(proto::TypeMeta { api_version: Some("v1".into()), kind: Some("ConfigMap".into()) }),
        raw: Some(cm.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [proto::MAGIC.as_slice(), &unknown.encode_to_vec()].concat()
}

#[test]
fn configmap_lifecycle_over_protobuf_and_json() {
    let (api, dir) = api("cm");
    let pb = "application/vnd.kubernetes.protobuf";
    let target = "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create&fieldValidation=Strict";
    let (code, obj) = call(&api, "POST", target, "application/json", pb, &protobuf_configmap("demo"));
    assert_eq!(code, 201, "{obj}");
    assert_eq!(obj["kind"], "ConfigMap");
    assert_eq!(obj["data"], json!({"a": "b"}));
    assert_eq!(obj["metadata"]["namespace"], "default");
    for f in ["uid", "resourceVersion", "creationTimestamp"] {
        assert!(obj["metadata"][f].is_string(), "{f}");
    }

    let (code, st) = call(&api, "POST", target, "application/json", pb, &protobuf_configmap("demo"));
    assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")));

    let body = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"gen-"},"data":{"x":"y"}}"#;
    let (code, gen_obj) = call(&api, "POST", target, "", "application/json", body);
    assert_eq!(code, 201);
    assert!(gen_obj["metadata"]["name"].as_str().unwrap().starts_with("gen-"));

    let (code, one) = get(&api, "/api/v1/namespaces/default/configmaps/demo");
    assert_eq!((code, &one), (200, &obj));

    let (code, list) = get(&api, "/api/v1/configmaps");
    assert_eq!((code, list["kind"].as_str(), list["items"].as_array().unwrap().len()), (200, Some("ConfigMapList"), 2));
    let (_, list) = get(&api, "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Ddemo");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (code, table) = call(&api, "GET", "/api/v1/namespaces/default/configmaps?limit=500", TABLE, "", b"");
    assert_eq!((code, table["kind"].as_str()), (200, Some("Table")));
    assert_eq!(table["rows"][0]["cells"][0], "demo");
    assert_eq!(table["rows"][0]["cells"][1], 1);

    let (code, _) = call(&api, "DELETE", "/api/v1/namespaces/default/configmaps/demo?dryRun=All", "", "", b"");
    assert_eq!(code, 200);
    let (code, st) = call(&api, "DELETE", "/api/v1/namespaces/default/configmaps/demo", "", "application/json", b"{}");
    assert_eq!((code, st["status"].as_str()), (200, Some("Success")));
    let (code, st) = get(&api, "/api/v1/namespaces/default/configmaps/demo");
    assert_eq!((code, st["reason"].as_str(), st["kind"].as_str()), (404, Some("NotFound"), Some("Status")));

    // Everything above was persisted.
    let reloaded = Store::load(&dir).unwrap();
    assert_eq!(reloaded.state, api.store.lock().unwrap().state);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dry_run_create_does_not_persist() {
    let (api, dir) = api("dry");
    let body = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}}"#;
    let (code, _) =
        call(&api, "POST", "/api/v1/namespaces/default/configmaps?dryRun=All", "", "application/json", body);
    assert_eq!(code, 201);
    assert_eq!(get(&api, "/api/v1/namespaces/default/configmaps/d").0, 404);
    let (code, st) = call(&api, "POST", "/api/v1/namespaces/nope/configmaps", "", "application/json", body);
    assert_eq!((code, st["message"].as_str()), (404, Some("namespaces \"nope\" not found")));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn namespaces_and_service_accounts() {
    let (api, dir) = api("ns");
    let body = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}"#;
    assert_eq!(call(&api, "POST", "/api/v1/namespaces", "", "application/json", body).0, 201);
    let (code, sa) = get(&api, "/api/v1/namespaces/team/serviceaccounts/default");
    assert_eq!((code, sa["kind"].as_str()), (200, Some("ServiceAccount")));
    let (_, table) = call(&api, "GET", "/api/v1/serviceaccounts?limit=500", TABLE, "", b"");
    assert_eq!(table["rows"].as_array().unwrap().len(), 5);
    assert_eq!(table["rows"][0]["object"]["metadata"]["namespace"], "default");
    let (code, table) = call(&api, "GET", "/api/v1/namespaces/default", TABLE, "", b"");
    assert_eq!((code, &table["rows"][0]["cells"][1]), (200, &json!("Active")));
    assert_eq!(call(&api, "DELETE", "/api/v1/namespaces/kube-system", "", "", b"").0, 403);
    assert_eq!(call(&api, "DELETE", "/api/v1/namespaces/team", "", "", b"").0, 200);
    assert_eq!(get(&api, "/api/v1/namespaces/team/serviceaccounts/default").0, 404);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn discovery_health_and_errors() {
    let (mut api, dir) = api("misc");
    let (code, res) = get(&api, "/api/v1");
    assert_eq!(code, 200);
    let ns = res["resources"].as_array().unwrap().iter().find(|r| r["name"] == "namespaces").unwrap();
    assert_eq!((ns["namespaced"].as_bool(), &ns["shortNames"]), (Some(false), &json!(["ns"])));
    assert_eq!(get(&api, "/api").1["versions"], json!(["v1"]));
    assert_eq!(get(&api, "/apis").1["kind"], "APIGroupList");
    assert_eq!(get(&api, "/readyz"), (200, json!("ok")));
    assert_eq!(get(&api, "/version").1["gitVersion"], "v1.33.1+standin");
    assert_eq!(get(&api, "/apis/apps/v1/deployments").0, 404);
    assert_eq!(call(&api, "PUT", "/api/v1/namespaces/default", "", "", b"").0, 405);
    let (code, _) = call(&api, "POST", "/api/v1/namespaces/default/configmaps", "", "text/plain", b"x");
    assert_eq!(code, 415);
    api.never_ready = true;
    assert_eq!(get(&api, "/readyz").0, 500);
    assert_eq!(get(&api, "/livez").0, 200);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("metadata.name%3Ddemo"), "metadata.name=demo");
    assert_eq!(percent_decode("a+b%2"), "a b%2");
}
