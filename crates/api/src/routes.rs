//! Routes and handlers.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_core::{Cid, cid::parse_cid};
use cairn_node::Node;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    ApiError,
    admin::{self, LogLevelSetter},
    dto::{DataItem, DataList, SpaceJson},
    headers::{parse_content_disposition_filename, valid_filename, valid_mimetype},
    network,
};

/// The API's base path, as the reference's.
pub const API_BASE: &str = "/api/codex/v1";

/// What the API needs from the process besides the node.
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// Changes the log filter (`POST /debug/chronicles/loglevel`); without it that endpoint
    /// answers 503.
    pub log_level: Option<LogLevelSetter>,
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("log_level", &self.log_level.is_some())
            .finish()
    }
}

/// The API router over `node`, without process options.
pub fn router(node: Node) -> Router {
    router_with(node, ApiOptions::default())
}

/// The API router over `node`.
pub fn router_with(node: Node, options: ApiOptions) -> Router {
    let api = Router::new()
        .route("/data", get(list).post(upload))
        .route("/data/{cid}", get(download).delete(delete))
        .route("/data/{cid}/exists", get(exists))
        .route(
            "/data/{cid}/network",
            axum::routing::post(network::download_background),
        )
        .route("/data/{cid}/network/stream", get(network::network_stream))
        .route(
            "/data/{cid}/network/manifest",
            get(network::network_manifest),
        )
        .route("/connect/{peer}", get(network::connect))
        .route("/peerid", get(network::peer_id))
        .route("/debug/info", get(network::debug_info))
        .route("/space", get(space))
        .with_state(node)
        .merge(admin::routes(options.log_level));
    Router::new().nest(API_BASE, api)
}

/// Serves the API on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    options: ApiOptions,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "REST API listening");
    axum::serve(listener, router_with(node, options))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

pub(crate) fn cid_param(text: &str) -> Result<Cid, ApiError> {
    parse_cid(text).map_err(|_| ApiError::BadCid)
}

async fn upload(
    State(node): State<Node>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mimetype = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::Unprocessable("The MIME type is not valid.".into()))?;
            if text.is_empty() {
                None
            } else if valid_mimetype(text) {
                Some(text.to_owned())
            } else {
                return Err(ApiError::Unprocessable(format!(
                    "The MIME type '{text}' is not valid."
                )));
            }
        }
    };
    let filename = match headers.get(header::CONTENT_DISPOSITION) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::Unprocessable("The filename is not valid.".into()))?;
            match parse_content_disposition_filename(text) {
                Some(name) if !valid_filename(&name) => {
                    return Err(ApiError::Unprocessable("The filename is not valid.".into()));
                }
                other => other,
            }
        }
    };
    let stored = node
        .store_dataset(body.into_data_stream(), filename, mimetype)
        .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        stored.cid.to_string(),
    )
        .into_response())
}

async fn list(State(node): State<Node>) -> Result<Json<DataList>, ApiError> {
    let items = node.list().await?;
    Ok(Json(DataList {
        content: items.iter().map(|(c, m)| DataItem::new(c, m)).collect(),
    }))
}

async fn download(State(node): State<Node>, Path(cid): Path<String>) -> Result<Response, ApiError> {
    let cid = cid_param(&cid)?;
    let manifest = node.manifest(cid).await?;
    let body = Body::from_stream(node.stream_dataset(&manifest));
    Ok(dataset_response(&manifest, body))
}

/// A dataset download response: the reference's headers around `body`.
pub(crate) fn dataset_response(manifest: &cairn_core::Manifest, body: Body) -> Response {
    let content_type = manifest
        .mimetype
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let disposition = match &manifest.filename {
        Some(name) => format!("attachment; filename=\"{name}\""),
        None => "attachment".to_owned(),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    let value = |s: String| {
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, value(content_type));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition)
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(manifest.download_size()),
    );
    resp
}

async fn delete(State(node): State<Node>, Path(cid): Path<String>) -> Result<StatusCode, ApiError> {
    let cid = cid_param(&cid)?;
    node.delete(cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exists(
    State(node): State<Node>,
    Path(cid): Path<String>,
) -> Result<Json<BTreeMap<String, bool>>, ApiError> {
    let cid = cid_param(&cid)?;
    let has = node.has_block(cid).await?;
    Ok(Json(BTreeMap::from([(cid.to_string(), has)])))
}

async fn space(State(node): State<Node>) -> Result<Json<SpaceJson>, ApiError> {
    let s = node.space().await?;
    Ok(Json(SpaceJson {
        total_blocks: s.total_blocks,
        quota_max_bytes: s.quota_max_bytes,
        quota_used_bytes: s.quota_used_bytes,
        quota_reserved_bytes: s.quota_reserved_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use cairn_node::{NodeConfig, Store, StoreConfig};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        router(Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        ))
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    fn post(body: &'static [u8], headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::post(format!("{API_BASE}/data"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn upload_download_list_exists_delete() {
        let app = app();
        let (s, _, cid) = call(&app, post(b"some file contents", &[])).await;
        assert_eq!(s, StatusCode::OK);
        let cid = String::from_utf8(cid).unwrap();
        assert_eq!(cid, "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy");
        let get = |p: String| {
            Request::get(format!("{API_BASE}{p}"))
                .body(Body::empty())
                .unwrap()
        };
        let (s, h, body) = call(&app, get(format!("/data/{cid}"))).await;
        assert_eq!(
            (s, body.as_slice()),
            (StatusCode::OK, &b"some file contents"[..])
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
        assert_eq!(h[header::CONTENT_LENGTH], "18");
        let (_, _, list) = call(&app, get("/data".into())).await;
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        assert_eq!(v["content"][0]["cid"], cid);
        assert_eq!(
            v["content"][0]["manifest"]["treeCid"],
            "zDzSvJTezk7bJNQqFq8k1iHXY84psNuUfZVusA5bBQQUSuyzDSVL"
        );
        assert_eq!(v["content"][0]["manifest"]["datasetSize"], 18);
        assert_eq!(
            v["content"][0]["manifest"]["filename"],
            serde_json::Value::Null
        );
        let (_, _, ex) = call(&app, get(format!("/data/{cid}/exists"))).await;
        assert_eq!(
            String::from_utf8(ex).unwrap(),
            format!("{{\"{cid}\":true}}")
        );
        let (_, _, sp) = call(&app, get("/space".into())).await;
        let v: serde_json::Value = serde_json::from_slice(&sp).unwrap();
        assert_eq!(
            (v["quotaUsedBytes"].as_u64(), v["totalBlocks"].as_u64()),
            (Some(65592), Some(2))
        );
        let del = Request::delete(format!("{API_BASE}/data/{cid}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, del).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            call(&app, get(format!("/data/{cid}"))).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn bad_inputs_get_reference_answers() {
        let app = app();
        let (s, _, b) = call(
            &app,
            post(
                b"x",
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            b,
            b"The MIME type 'application/x-www-form-urlencoded' is not valid."
        );
        let (s, _, b) = call(
            &app,
            post(
                b"x",
                &[(
                    "content-disposition",
                    "attachment; filename=\"exam*ple.txt\"",
                )],
            ),
        )
        .await;
        assert_eq!(
            (s, b.as_slice()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                &b"The filename is not valid."[..]
            )
        );
        assert_eq!(call(&app, post(b"", &[])).await.0, StatusCode::BAD_REQUEST);
        let get = |p: &str| {
            Request::get(format!("{API_BASE}{p}"))
                .body(Body::empty())
                .unwrap()
        };
        let (s, _, b) = call(&app, get("/data/not-a-cid")).await;
        assert_eq!(
            (s, b.as_slice()),
            (StatusCode::BAD_REQUEST, &b"Incorrect Cid"[..])
        );
        let unknown = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy";
        let (s, _, b) = call(&app, get(&format!("/data/{unknown}"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(b, crate::error::NOT_FOUND_LOCAL.as_bytes());
        assert!(
            call(&app, get("/data"))
                .await
                .2
                .starts_with(b"{\"content\":[]")
        );
    }

    #[tokio::test]
    async fn filename_and_mimetype_round_trip() {
        let app = app();
        let (s, _, cid) = call(
            &app,
            post(
                b"hello",
                &[
                    ("content-type", "text/plain"),
                    ("content-disposition", "attachment; filename=\"hello.txt\""),
                ],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let cid = String::from_utf8(cid).unwrap();
        let req = Request::get(format!("{API_BASE}/data/{cid}"))
            .body(Body::empty())
            .unwrap();
        let (_, h, body) = call(&app, req).await;
        assert_eq!(body, b"hello");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(
            h[header::CONTENT_DISPOSITION],
            "attachment; filename=\"hello.txt\""
        );
    }
}
