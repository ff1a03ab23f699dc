//! Node administration routes that need no dataset: the log level, and the marketplace
//! endpoints, which cairn does not implement.
//!
//! * `POST /debug/chronicles/loglevel?level=…` changes what the node logs while it runs, as the
//!   reference's endpoint does. The reference takes a chronicles level (`TRACE`, `DEBUG`,
//!   `INFO`, `NOTICE`, `WARN`, `ERROR`, `FATAL`, `NONE`), optionally with per-topic levels
//!   (`DEBUG;TRACE:blockexc,discv5`); cairn accepts those (a topic is a Rust module path here)
//!   and also any `RUST_LOG`-style filter (`info,cairn_node=debug`).
//! * The marketplace endpoints (`codex-protocol.md` §9.3) answer `503 Persistence is not
//!   enabled`, which is what the reference answers when started without persistence: scripts
//!   that probe them see the same answer from either node.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    extract::Query,
    http::StatusCode,
    routing::{get, post},
};

use crate::ApiError;

/// Sets the node's log filter from a `RUST_LOG`-style directive string, or says why it is
/// invalid. The binary passes one built over its `tracing` subscriber.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Longest `level` parameter accepted.
pub const MAX_LEVEL_LEN: usize = 1024;

/// The reference's answer to every marketplace endpoint without persistence.
pub(crate) const NO_PERSISTENCE: &str = "Persistence is not enabled";

/// The admin routes (to be nested under the API base).
pub(crate) fn routes(log_level: Option<LogLevelSetter>) -> Router {
    let unavailable = || async { ApiError::Unavailable(NO_PERSISTENCE.into()) };
    Router::new()
        .route(
            "/debug/chronicles/loglevel",
            post(move |q: Query<HashMap<String, String>>| {
                let answer = set_level(log_level.as_ref(), q);
                async move { answer }
            }),
        )
        .route("/sales/slots", get(unavailable))
        .route("/sales/slots/{id}", get(unavailable))
        .route("/sales/availability", get(unavailable).post(unavailable))
        .route(
            "/sales/availability/{id}",
            axum::routing::patch(unavailable),
        )
        .route("/sales/availability/{id}/reservations", get(unavailable))
        .route("/storage/request/{cid}", post(unavailable))
        .route("/storage/purchases", get(unavailable))
        .route("/storage/purchases/{id}", get(unavailable))
}

fn set_level(
    setter: Option<&LogLevelSetter>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let level = q
        .get("level")
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Missing the 'level' parameter.".into()))?;
    if level.len() > MAX_LEVEL_LEN {
        return Err(ApiError::BadRequest(format!(
            "The 'level' parameter is longer than {MAX_LEVEL_LEN} characters."
        )));
    }
    let setter = setter
        .ok_or_else(|| ApiError::Unavailable("This node's log level cannot be changed.".into()))?;
    let directives = to_directives(level);
    setter(&directives).map_err(|e| ApiError::BadRequest(format!("Invalid log level: {e}")))?;
    tracing::info!(level, filter = %directives, "log level changed");
    Ok(StatusCode::OK)
}

/// Translates a chronicles level expression into `RUST_LOG` directives; anything else passes
/// through unchanged. `DEBUG;TRACE:a,b` becomes `debug,a=trace,b=trace`.
pub(crate) fn to_directives(level: &str) -> String {
    let word = |w: &str| -> Option<&'static str> {
        Some(match w.trim().to_ascii_uppercase().as_str() {
            "TRACE" => "trace",
            "DEBUG" => "debug",
            "INFO" | "NOTICE" => "info",
            "WARN" => "warn",
            "ERROR" | "FATAL" => "error",
            "NONE" => "off",
            _ => return None,
        })
    };
    let mut out = Vec::new();
    for part in level.split(';') {
        match part.split_once(':') {
            None => match word(part) {
                Some(l) => out.push(l.to_owned()),
                None => return level.to_owned(),
            },
            Some((lvl, topics)) => {
                let Some(l) = word(lvl) else {
                    return level.to_owned();
                };
                out.extend(
                    topics
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(|t| format!("{t}={l}")),
                );
            }
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::{body::Body, http::Request};
    use cairn_node::{Node, NodeConfig, Store, StoreConfig};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::{API_BASE, ApiOptions, router_with};

    fn node() -> Node {
        Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        )
    }

    async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(format!("{API_BASE}{path}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn marketplace_endpoints_answer_like_a_reference_node_without_persistence() {
        let app = router_with(node(), ApiOptions::default());
        for (method, path) in [
            ("GET", "/sales/slots"),
            ("GET", "/sales/slots/0x12"),
            ("GET", "/sales/availability"),
            ("POST", "/sales/availability"),
            ("PATCH", "/sales/availability/0x12"),
            ("GET", "/sales/availability/0x12/reservations"),
            ("POST", "/storage/request/zDvZRwzm"),
            ("GET", "/storage/purchases"),
            ("GET", "/storage/purchases/0x12"),
        ] {
            let (status, body) = call(&app, method, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
            assert_eq!(body, NO_PERSISTENCE, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn log_level_endpoint_sets_the_filter_and_checks_its_input() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let setter: LogLevelSetter = {
            let seen = seen.clone();
            Arc::new(move |d: &str| {
                if d.contains("bogus") {
                    return Err("unknown level".into());
                }
                seen.lock().unwrap().push(d.to_owned());
                Ok(())
            })
        };
        let app = router_with(
            node(),
            ApiOptions {
                log_level: Some(setter),
                ..ApiOptions::default()
            },
        );
        let path = "/debug/chronicles/loglevel";
        let (status, _) = call(
            &app,
            "POST",
            &format!("{path}?level=DEBUG;TRACE:cairn_node"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["debug,cairn_node=trace".to_owned()]
        );
        assert_eq!(call(&app, "POST", path).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            call(&app, "POST", &format!("{path}?level=")).await.0,
            StatusCode::BAD_REQUEST
        );
        let (status, body) = call(&app, "POST", &format!("{path}?level=bogus")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown level"), "{body}");
        let long = "a".repeat(MAX_LEVEL_LEN + 1);
        assert_eq!(
            call(&app, "POST", &format!("{path}?level={long}")).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "rejected levels reached the setter"
        );
        // Without a setter (a node embedded without logging control) it says so.
        let app = router_with(node(), ApiOptions::default());
        assert_eq!(
            call(&app, "POST", &format!("{path}?level=INFO")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn chronicles_levels_become_directives() {
        assert_eq!(to_directives("TRACE"), "trace");
        assert_eq!(to_directives("notice"), "info");
        assert_eq!(to_directives("FATAL"), "error");
        assert_eq!(to_directives("NONE"), "off");
        assert_eq!(
            to_directives("DEBUG;TRACE:cairn_node,cairn_net"),
            "debug,cairn_node=trace,cairn_net=trace"
        );
        // RUST_LOG syntax passes through.
        assert_eq!(
            to_directives("info,cairn_node=debug"),
            "info,cairn_node=debug"
        );
        assert_eq!(to_directives("cairn_store=trace"), "cairn_store=trace");
    }
}
