//! [`ApiError`]: the one place that maps failures to HTTP.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use cairn_node::{NodeError, StoreError};

/// An API failure: a status and a plain-text message (the reference answers errors as text).
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the path's CID does not parse.
    BadCid,
    /// 400: anything else wrong with the request.
    BadRequest(String),
    /// 404 with the reference's message.
    NotFound(&'static str),
    /// 409: the request conflicts with what is stored (deleting a block a dataset holds).
    Conflict(String),
    /// 408: the client stopped sending the request body.
    RequestTimeout(String),
    /// 422: the request cannot be done as asked: an unacceptable header value, or a manifest
    /// that does not match its dataset.
    Unprocessable(String),
    /// 507: the store is full.
    InsufficientStorage(String),
    /// 502: a peer the request needed failed (a perf run).
    BadGateway(String),
    /// 503.
    Unavailable(String),
    /// 500.
    Internal(String),
}

/// The reference's 404 body for a CID not in the local store.
pub(crate) const NOT_FOUND_LOCAL: &str =
    "The requested CID could not be retrieved (Block not found in local store).";

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::NotFound => ApiError::NotFound(NOT_FOUND_LOCAL),
            NodeError::NotAManifest => ApiError::NotFound("Unable to decode as manifest"),
            NodeError::EmptyUpload => {
                ApiError::BadRequest("The request body is empty: nothing to store.".into())
            }
            NodeError::Body(e) if e.is::<crate::routes::UploadIdle>() => ApiError::RequestTimeout(
                format!("The upload stopped: {e}; nothing of it was stored."),
            ),
            NodeError::Body(e) => ApiError::BadRequest(format!("Reading the upload failed: {e}")),
            NodeError::Store(StoreError::QuotaExceeded {
                needed,
                used,
                quota,
            }) => ApiError::InsufficientStorage(format!(
                "Storage quota exceeded: {needed} more bytes needed, and {used} of {quota} bytes are taken (stored, or reserved by uploads and downloads in progress)."
            )),
            // Its own words: the index may have failed for another I/O error than a full disk.
            NodeError::Store(e @ StoreError::IndexUnavailable(_)) => {
                ApiError::InsufficientStorage(format!("The node cannot store anything now: {e}"))
            }
            NodeError::Store(e) if e.is_disk_full() => {
                ApiError::InsufficientStorage(format!("The node's disk is full: {e}"))
            }
            NodeError::Fetch(cairn_node::engine::FetchError::DiskFull(m)) => {
                ApiError::InsufficientStorage(format!("The node's disk is full: {m}"))
            }
            e @ (NodeError::BlockTooLarge { .. } | NodeError::LongBlock { .. }) => {
                ApiError::Unprocessable(format!("{e}."))
            }
            NodeError::Incomplete { .. } => ApiError::NotFound(
                "The dataset is not complete on this node (a download stopped, or fetched only a \
                 range); fetch it with /data/{cid}/network/stream.",
            ),
            // The reference answers 500; it is the client's request that cannot be done.
            NodeError::Store(StoreError::InUse { .. }) => ApiError::Conflict(
                "Directly deleting a block that is part of a dataset is not allowed.".into(),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::BadCid => (StatusCode::BAD_REQUEST, "Incorrect Cid".to_owned()),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.to_owned()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::InsufficientStorage(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(m) => {
                tracing::warn!(error = %m, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            msg,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{Request, StatusCode},
    };
    use cairn_core::cid::block_cid;
    use cairn_node::{Node, NodeConfig, Store, StoreConfig};
    use tower::ServiceExt;

    use crate::{API_BASE, router};

    /// Deleting a block that a dataset holds is the client's mistake: `409`, not a server error.
    #[tokio::test]
    async fn deleting_a_block_of_a_dataset_is_a_conflict() {
        let app = router(Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        ));
        let send = |req: Request<Body>| {
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status() }
        };
        let upload = Request::post(format!("{API_BASE}/data"))
            .body(Body::from("some file contents"))
            .unwrap();
        assert_eq!(send(upload).await, StatusCode::OK);
        let mut block = b"some file contents".to_vec();
        block.resize(65536, 0);
        let delete = |cid: String| {
            Request::delete(format!("{API_BASE}/data/{cid}"))
                .body(Body::empty())
                .unwrap()
        };
        let held = block_cid(&block).to_string();
        assert_eq!(send(delete(held)).await, StatusCode::CONFLICT);
        let manifest = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy";
        assert_eq!(send(delete(manifest.into())).await, StatusCode::NO_CONTENT);
    }

    /// An upload the quota allows but the disk cannot take is `507` with a message that names
    /// the disk (it was a `500` "No space left on device" once the disk had filled).
    #[tokio::test]
    async fn an_upload_the_disk_cannot_take_is_insufficient_storage() {
        let app = router(Node::new(
            Store::in_memory(StoreConfig {
                free_space_hook: Some(|| cairn_node::MIN_DISK_HEADROOM + 1000),
                ..StoreConfig::default()
            })
            .unwrap(),
            NodeConfig::default(),
        ));
        let upload = Request::post(format!("{API_BASE}/data"))
            .header("content-length", "100000")
            .body(Body::from(vec![7u8; 100_000]))
            .unwrap();
        let answer = app.oneshot(upload).await.unwrap();
        assert_eq!(answer.status(), StatusCode::INSUFFICIENT_STORAGE);
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("disk is full"), "{text}");
    }

    /// A block exchange at its limit of pending wants is a temporary overload: `503`.
    #[test]
    fn a_busy_block_exchange_is_unavailable() {
        use axum::response::IntoResponse;
        use cairn_node::{NodeError, engine::FetchError};
        let answer = crate::network::network_error(NodeError::Fetch(FetchError::Busy));
        assert_eq!(
            answer.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// A manifest whose size its dataset's tree contradicts (a holder's proof shows the tree's
    /// real size) cannot be downloaded as asked: `422` with both sizes, not a `500`.
    #[test]
    fn a_manifest_that_does_not_match_its_dataset_is_unprocessable() {
        use axum::response::IntoResponse;
        use cairn_node::{NodeError, engine::FetchError};
        let answer =
            crate::network::network_error(NodeError::Fetch(FetchError::ManifestMismatch {
                manifest_blocks: 3,
                tree_leaves: 5,
            }));
        assert_eq!(
            answer.into_response().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
