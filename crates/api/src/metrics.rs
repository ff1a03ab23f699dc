//! `GET /metrics`: the node's metrics for Prometheus, on a listener of their own
//! (`--metrics-address`:`--metrics-port`), apart from the REST API.
//!
//! `prometheus-client` writes the OpenMetrics text format (counters as `name_total`, `# UNIT`
//! lines, a final `# EOF`), so answers carry its media type, [`OPENMETRICS_CONTENT_TYPE`];
//! Prometheus asks for it first and parses it. Encoding the registry runs the store collector,
//! which reads the store's index, so it runs on a blocking thread; at most
//! [`MAX_CONCURRENT_SCRAPES`] run at once and more are answered `503`.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_node::metrics::Registry;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// The media type of the OpenMetrics text format, which `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes encoded at once. Prometheus scrapes a target one at a time; a few more allow a
/// person with `curl` beside it, and the bound keeps a flood of scrapes off the blocking pool.
pub const MAX_CONCURRENT_SCRAPES: usize = 4;

#[derive(Clone)]
struct Scrape {
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
}

/// The router of the metrics server: `GET /metrics` and nothing else.
pub fn metrics_router(registry: Registry) -> Router {
    let state = Scrape {
        registry: Arc::new(registry),
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES)),
    };
    Router::new()
        .route(METRICS_PATH, get(scrape))
        .with_state(state)
}

/// Serves [`metrics_router`] on `listener` until `cancel` fires.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "metrics listening");
    crate::server::serve_router(listener, metrics_router(registry), cancel).await
}

async fn scrape(State(s): State<Scrape>) -> Response {
    let Ok(permit) = s.permits.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many scrapes at once").into_response();
    };
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &s.registry).map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => {
            warn!(error = %e, "metrics not encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            warn!(error = %e, "metrics encoding task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    use super::*;

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_registry_as_openmetrics_text() {
        let mut registry = Registry::default();
        let c = Counter::<u64>::default();
        registry.register("cairn_test_things", "Things", c.clone());
        c.inc_by(7);
        let app = metrics_router(registry);
        let get = || Request::get(METRICS_PATH).body(Body::empty()).unwrap();
        let (status, ct, body) = call(&app, get()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(body.contains("\ncairn_test_things_total 7\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // Read at every scrape.
        c.inc();
        assert!(
            call(&app, get())
                .await
                .2
                .contains("cairn_test_things_total 8\n")
        );

        let (status, _, _) = call(&app, Request::get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let post = Request::post(METRICS_PATH).body(Body::empty()).unwrap();
        assert_eq!(call(&app, post).await.0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
