//! Server-side printing (`meta.k8s.io/v1 Table`), ages and selectors.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::Res;

/// What a Table row carries in `object` (the `includeObject` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Include {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// True when the Accept header asks for a server-side printed Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && !params.contains(&"v=v1beta1")
    })
}

fn column(name: &str, typ: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": description, "priority": 0})
}

fn columns(res: Res) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    );
    let age = column(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let middle = match res {
        Res::Namespaces => column("Status", "string", "", "The status of the namespace"),
        Res::ConfigMaps => column("Data", "integer", "", "Data contains the configuration data."),
        Res::ServiceAccounts => column(
            "Secrets",
            "integer",
            "",
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        Res::Pods => column("Status", "string", "", "The aggregate status of the containers in this pod."),
        Res::Nodes => {
            let status = column("Status", "string", "", "The status of the node");
            let roles = column("Roles", "string", "", "The roles of the node");
            let version = column("Version", "string", "", "Kubelet Version reported by the node.");
            return vec![name, status, roles, age, version];
        }
    };
    vec![name, middle, age]
}

fn len_of(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    }
}

/// The age column: the apiserver's `translateTimestampSince`.
pub fn age(obj: &Value, now: OffsetDateTime) -> String {
    let Some(ts) = obj["metadata"]["creationTimestamp"].as_str() else {
        return "<unknown>".into();
    };
    match OffsetDateTime::parse(ts, &Rfc3339) {
        Ok(t) => human_duration((now - t).whole_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let (minutes, hours) = (s / 60, s / 3600);
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 { format!("{a}{ua}") } else { format!("{a}{ua}{b}{ub}") }
    };
    if minutes < 10 {
        pair(minutes, "m", s % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        pair(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        pair(hours / 24, "d", hours % 24, "h")
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        pair(hours / 24 / 365, "y", (hours / 24) % 365, "d")
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn cells(res: Res, obj: &Value, now: OffsetDateTime) -> Value {
    let name = obj["metadata"]["name"].clone();
    let middle = match res {
        Res::Namespaces => obj["status"]["phase"].as_str().map_or(json!("Active"), |p| json!(p)),
        Res::ConfigMaps => json!(len_of(&obj["data"]) + len_of(&obj["binaryData"])),
        Res::ServiceAccounts => json!(len_of(&obj["secrets"])),
        Res::Pods => obj["status"]["phase"].clone(),
        Res::Nodes => {
            let n = crate::nodes::summary(obj);
            return json!([name, n.status, n.roles, age(obj, now), n.version]);
        }
    };
    json!([name, middle, age(obj, now)])
}

/// A `meta.k8s.io/v1 Table` of `objs`.
pub fn table(res: Res, objs: &[&Value], include: Include, resource_version: &str, now: OffsetDateTime) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(res, obj, now)});
            match include {
                Include::None => {}
                Include::Object => row["object"] = (*obj).clone(),
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(res),
        "rows": rows,
    })
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated.
pub fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

/// Field selectors on `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`).
/// Unsupported fields are an error message.
pub fn fields_match(obj: &Value, selector: &str) -> Result<bool, String> {
    let mut ok = true;
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, want, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v.trim_start_matches('='), false)
        } else {
            return Err(format!("invalid field selector {term:?}"));
        };
        let have = match field.trim() {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            "spec.nodeName" => obj["spec"]["nodeName"].as_str(),
            other => return Err(format!("field label not supported: {other}")),
        };
        ok &= (have.unwrap_or("") == want.trim()) != negate;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn cm(name: &str, ns: &str) -> Value {
        json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": "x"}},
            "data": {"a": "b", "c": "d"}, "binaryData": {"e": "AA=="}})
    }

    #[test]
    fn renders_configmap_table() {
        let a = cm("a", "default");
        let now = datetime!(2025-01-01 00:05:30 UTC);
        let t = table(Res::ConfigMaps, &[&a], Include::Metadata, "7", now);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"], json!(["a", 3, "5m30s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");

        let full = table(Res::ConfigMaps, &[&a], Include::Object, "7", now);
        assert_eq!(full["rows"][0]["object"], a);
        let none = table(Res::ConfigMaps, &[&a], Include::None, "7", now);
        assert!(none["rows"][0].get("object").is_none());
    }

    #[test]
    fn renders_namespace_and_sa_columns() {
        let ns = json!({"metadata": {"name": "default", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": {"phase": "Active"}});
        let now = datetime!(2025-01-03 05:00:00 UTC);
        let t = table(Res::Namespaces, &[&ns], Include::Metadata, "1", now);
        assert_eq!(t["rows"][0]["cells"], json!(["default", "Active", "2d5h"]));
        assert_eq!(t["columnDefinitions"][1]["name"], "Status");
        let t = table(Res::ServiceAccounts, &[&ns], Include::Metadata, "1", now);
        assert_eq!(t["rows"][0]["cells"][1], 0);
        assert_eq!(t["columnDefinitions"][1]["name"], "Secrets");
    }

    #[test]
    fn detects_table_accept() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
    }

    #[test]
    fn human_durations() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (700, "11m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s}");
        }
        assert_eq!(human_duration(10 * 86400), "10d");
    }

    #[test]
    fn selectors() {
        let a = cm("a", "default");
        assert!(labels_match(&a, "app=x"));
        assert!(labels_match(&a, "app==x,!missing"));
        assert!(!labels_match(&a, "app!=x"));
        assert!(fields_match(&a, "metadata.name=a").unwrap());
        assert!(!fields_match(&a, "metadata.name=b").unwrap());
        assert!(fields_match(&a, "metadata.namespace!=kube-system").unwrap());
        assert!(fields_match(&a, "spec.x=1").is_err());
    }
}
