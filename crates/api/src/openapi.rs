//! The API's OpenAPI document, `docs/openapi.yaml`, served at `GET /api/codex/v1/openapi.yaml`.
//!
//! The document is embedded with `include_str!`, so a binary always serves the copy of the
//! repository it was built from. The tests below keep the document and the router in step:
//!
//! * the served bytes are the file's, and the file parses as OpenAPI 3.0 whose every `$ref`
//!   resolves and whose operation ids are unique;
//! * every route the sources register (each `.route(path, method(…)…)` in `src/*.rs`) is an
//!   operation of the document, so adding a route without documenting it fails a test;
//! * every operation of the document is answered by the router (not `404`/`405`), with a status
//!   the document lists for it, so a stale operation fails too.
//!
//! Whether the live node's answers match the document's schemas is checked by
//! `.ci/schemathesis`, which runs schemathesis against a real node.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

/// The OpenAPI document (`docs/openapi.yaml`), as built into this binary.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// The media type the document is served with (YAML, RFC 9512).
pub const OPENAPI_CONTENT_TYPE: &str = "application/yaml";

/// `GET /openapi.yaml`.
pub(crate) fn document() -> std::future::Ready<Response> {
    std::future::ready(
        ([(header::CONTENT_TYPE, OPENAPI_CONTENT_TYPE)], OPENAPI_YAML).into_response(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::{
        Router,
        body::Body,
        http::{Request, StatusCode},
    };
    use cairn_node::{Node, NodeConfig, Store, StoreConfig};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::{API_BASE, router};

    /// The methods an OpenAPI path item can hold.
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn doc() -> Value {
        serde_norway::from_str(OPENAPI_YAML).expect("docs/openapi.yaml does not parse as YAML")
    }

    /// `(METHOD, path)` of every operation, with path parameters written `{}` (the router and
    /// the document may name them differently).
    fn doc_operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("no paths") {
            for method in METHODS {
                if item.get(*method).is_some() {
                    ops.insert((method.to_ascii_uppercase(), anonymous(path)));
                }
            }
        }
        ops
    }

    /// `/a/{x}/b` → `/a/{}/b`.
    fn anonymous(path: &str) -> String {
        let mut out = String::new();
        let mut in_param = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push_str("{}");
                }
                '}' => in_param = false,
                c if !in_param => out.push(c),
                _ => {}
            }
        }
        out
    }

    fn node() -> Node {
        Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        )
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, content_type, body)
    }

    #[tokio::test]
    async fn the_node_serves_the_repository_file() {
        let file = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.yaml"
        ))
        .unwrap();
        let req = Request::get(format!("{API_BASE}/openapi.yaml"))
            .body(Body::empty())
            .unwrap();
        let (status, content_type, body) = call(&router(node()), req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, OPENAPI_CONTENT_TYPE);
        assert!(
            body == file,
            "the served document differs from docs/openapi.yaml"
        );
    }

    /// Every `{"$ref": "#/…"}` in `v` points at something in `doc`.
    fn check_refs(doc: &Value, v: &Value, at: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "$ref" {
                        let target = child.as_str().expect("$ref is not a string");
                        let pointer = target
                            .strip_prefix('#')
                            .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
                        assert!(
                            doc.pointer(pointer).is_some(),
                            "{at}: $ref {target} points at nothing"
                        );
                    } else {
                        check_refs(doc, child, &format!("{at}/{k}"));
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    check_refs(doc, child, &format!("{at}/{i}"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_with_resolvable_refs_and_unique_ids() {
        let doc = doc();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.0.")),
            "openapi: {}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        check_refs(&doc, &doc, "");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with('/'), "{path}");
            for method in METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_owned()), "operationId {id} used twice");
                let responses = op["responses"].as_object();
                assert!(
                    responses.is_some_and(|r| !r.is_empty()),
                    "{method} {path}: no responses"
                );
                for code in responses.into_iter().flat_map(|r| r.keys()) {
                    assert!(
                        code.len() == 3 && code.parse::<u16>().is_ok(),
                        "{method} {path}: status {code}"
                    );
                }
            }
        }
    }

    /// `(METHOD, path)` of every route registered in this crate's sources (outside tests and
    /// `metrics.rs`, which serves its own listener): each `.route("<path>", <method>(…))`, under
    /// [`API_BASE`] (where `routes.rs` nests every route). Routing the sources cannot be read this
    /// way fails the test.
    fn source_routes() -> BTreeSet<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut routes = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            // The metrics endpoint is served on its own listener (`--metrics-port`), outside the
            // REST API and its document.
            if path.file_name().is_some_and(|n| n == "metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .flat_map(|l| [l, "\n"])
                .collect();
            let name = path.display();
            for unsupported in [".route_service(", ".nest_service(", ".fallback("] {
                assert!(
                    !code.contains(unsupported),
                    "{name} uses {unsupported}: teach this test to read it"
                );
            }
            let needle = ".route(";
            let mut rest = code.as_str();
            while let Some(at) = rest.find(needle) {
                let args = &rest[at + needle.len()..];
                let (route, len) = route_call(args)
                    .unwrap_or_else(|| panic!("{name}: cannot read the route at {:.60}", args));
                for method in route.1 {
                    routes.insert((method, anonymous(&route.0)));
                }
                rest = &args[len..];
            }
        }
        assert!(!routes.is_empty(), "no route found in {dir}");
        routes
    }

    /// Reads the arguments of a `.route(` call (`args` starts after the parenthesis): the path
    /// (a string literal) and the methods named at the call's top level; and the length read.
    fn route_call(args: &str) -> Option<((String, Vec<String>), usize)> {
        let open = args.find('"')?;
        if !args[..open].trim().is_empty() {
            return None; // the path is not a literal
        }
        let close = open + 1 + args[open + 1..].find('"')?;
        let path = &args[open + 1..close];
        let mut methods = Vec::new();
        let bytes = args.as_bytes();
        let mut depth = 1;
        let mut i = close + 1;
        let mut in_str = false;
        while i < bytes.len() {
            let c = bytes[i];
            if in_str {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    in_str = false;
                }
            } else if c == b'"' {
                in_str = true;
            } else if c == b'(' {
                if depth == 1 {
                    let start = args[..i]
                        .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                        .map_or(0, |p| p + 1);
                    let word = &args[start..i];
                    if METHODS.contains(&word) {
                        methods.push(word.to_ascii_uppercase());
                    }
                }
                depth += 1;
            } else if c == b')' {
                depth -= 1;
                if depth == 0 {
                    if methods.is_empty() {
                        return None;
                    }
                    return Some(((format!("{API_BASE}{path}"), methods), i + 1));
                }
            }
            i += 1;
        }
        None
    }

    #[test]
    fn every_route_is_documented() {
        let doc = doc();
        let documented: BTreeSet<_> = doc_operations(&doc)
            .into_iter()
            .map(|(m, p)| (m, format!("{API_BASE}{p}")))
            .collect();
        let routed = source_routes();
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from docs/openapi.yaml: {missing:?}"
        );
        // The document may add what the router answers without a `.route` of its own: `HEAD`
        // of a `GET` route, and the explicit preflights of `cors.rs` (checked to be answered by
        // `every_operation_is_answered_as_documented`).
        for (method, path) in documented.difference(&routed) {
            let implied = match method.as_str() {
                "HEAD" => routed.contains(&("GET".to_owned(), path.clone())),
                "OPTIONS" => true,
                _ => false,
            };
            assert!(implied, "{method} {path} is documented but not routed");
        }
    }

    /// Each operation, called on a node without network with every path parameter `x` and no
    /// parameters or body, gets an answer from its handler (not the router's `404`/`405`) whose
    /// status the document lists.
    #[tokio::test]
    async fn every_operation_is_answered_as_documented() {
        let doc = doc();
        let app = router(node());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let uri = format!("{API_BASE}{}", anonymous(path).replace("{}", "x"));
                let req = Request::builder()
                    .method(method.to_ascii_uppercase().as_str())
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap();
                let (status, _, body) = call(&app, req).await;
                let routed = status != StatusCode::METHOD_NOT_ALLOWED
                    && !(status == StatusCode::NOT_FOUND && body.is_empty() && *method != "head");
                assert!(routed, "{method} {uri}: {status}, not routed");
                assert!(
                    op["responses"].get(status.as_str()).is_some(),
                    "{method} {uri}: {status} is not documented"
                );
            }
        }
    }
}
