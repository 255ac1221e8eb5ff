//! Decoding of the few Kubernetes protobuf messages the stand-in accepts.
//!
//! kubectl 1.32+ POSTs built-in objects as `application/vnd.kubernetes.protobuf`:
//! the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose `raw` field holds the
//! object's own proto message. Only the fields the stand-in uses are declared
//! here; prost skips the others. Decoded objects are turned into the same JSON
//! shape a JSON client would have sent, so the create path is shared.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value, json};

/// The 4-byte prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// `k8s.io.apimachinery.pkg.runtime.TypeMeta`
#[derive(Clone, PartialEq, Message)]
pub struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    pub api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub kind: Option<String>,
}

/// `k8s.io.apimachinery.pkg.runtime.Unknown`
#[derive(Clone, PartialEq, Message)]
pub struct Unknown {
    #[prost(message, optional, tag = "1")]
    pub type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    pub content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub content_type: Option<String>,
}

/// `k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta` (only the fields used).
#[derive(Clone, PartialEq, Message)]
pub struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    pub annotations: BTreeMap<String, String>,
}

/// `k8s.io.api.core.v1.ConfigMap`
#[derive(Clone, PartialEq, Message)]
pub struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    pub data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    pub binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    pub immutable: Option<bool>,
}

/// `k8s.io.api.core.v1.Namespace` (spec and status are ignored).
#[derive(Clone, PartialEq, Message)]
pub struct Namespace {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
}

/// Decodes a `k8s\0` + `runtime.Unknown` body into the JSON object a JSON
/// client would have sent. The error is a human-readable reason (for a 400).
pub fn decode_object(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or("protobuf body does not start with the k8s\\0 magic")?;
    let unknown = Unknown::decode(rest).map_err(|e| format!("runtime.Unknown: {e}"))?;
    if let Some(enc) = unknown.content_encoding.as_deref().filter(|e| !e.is_empty()) {
        return Err(format!("unsupported contentEncoding {enc:?}"));
    }
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut obj = match kind.as_str() {
        "ConfigMap" => {
            let cm = ConfigMap::decode(raw.as_slice()).map_err(|e| format!("v1.ConfigMap: {e}"))?;
            let mut o = Map::new();
            o.insert("metadata".into(), meta_json(cm.metadata.unwrap_or_default()));
            if !cm.data.is_empty() {
                o.insert("data".into(), json!(cm.data));
            }
            if !cm.binary_data.is_empty() {
                let b64 = base64::engine::general_purpose::STANDARD;
                let bin: BTreeMap<_, _> = cm.binary_data.into_iter().map(|(k, v)| (k, b64.encode(v))).collect();
                o.insert("binaryData".into(), json!(bin));
            }
            if let Some(i) = cm.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        "Namespace" => {
            let ns = Namespace::decode(raw.as_slice()).map_err(|e| format!("v1.Namespace: {e}"))?;
            let mut o = Map::new();
            o.insert("metadata".into(), meta_json(ns.metadata.unwrap_or_default()));
            o
        }
        other => {
            return Err(format!("protobuf kind {other:?} is not supported by the stand-in"));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn meta_json(m: ObjectMeta) -> Value {
    let mut o = Map::new();
    let fields = [("name", m.name), ("generateName", m.generate_name), ("namespace", m.namespace)];
    for (k, v) in fields {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            o.insert(k.into(), json!(v));
        }
    }
    if !m.labels.is_empty() {
        o.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        o.insert("annotations".into(), json!(m.annotations));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf length-delimited field, written by hand (wire type 2).
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128 && tag < 16);
        let mut v = vec![(tag << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [field(1, k.as_bytes()), field(2, v)].concat()
    }

    #[test]
    fn decodes_hand_made_configmap() {
        // ObjectMeta: name=demo, namespace=default, an unknown field 4 (selfLink),
        // labels {app: x}.
        let meta =
            [field(1, b"demo"), field(3, b"default"), field(4, b"ignored"), field(11, &entry("app", b"x"))].concat();
        let cm = [
            field(1, &meta),
            field(2, &entry("a", b"b")),
            field(2, &entry("c", b"d")),
            field(3, &entry("bin", &[0, 1, 2])),
            vec![4 << 3, 1], // immutable = true (varint)
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let unknown = [field(1, &type_meta), field(2, &cm), field(3, b""), field(4, b"")].concat();
        let body = [MAGIC.as_slice(), &unknown].concat();

        let v = decode_object(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "demo", "namespace": "default", "labels": {"app": "x"}},
                "data": {"a": "b", "c": "d"},
                "binaryData": {"bin": "AAEC"},
                "immutable": true,
            })
        );
    }

    #[test]
    fn decodes_prost_encoded_namespace() {
        let ns = Namespace { metadata: Some(ObjectMeta { generate_name: Some("t-".into()), ..Default::default() }) };
        let unknown = Unknown {
            type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some("Namespace".into()) }),
            raw: Some(ns.encode_to_vec()),
            content_encoding: None,
            content_type: None,
        };
        let body = [MAGIC.as_slice(), &unknown.encode_to_vec()].concat();
        let v = decode_object(&body).unwrap();
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "t-"}}));
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(decode_object(b"{}").unwrap_err().contains("magic"));
        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.as_slice(), &field(1, &tm)].concat();
        assert!(decode_object(&body).unwrap_err().contains("Secret"));
    }
}
