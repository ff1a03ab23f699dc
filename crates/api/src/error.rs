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
    /// 422: an unacceptable header value.
    Unprocessable(String),
    /// 507: the store is full.
    InsufficientStorage(String),
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
            NodeError::Body(e) => ApiError::BadRequest(format!("Reading the upload failed: {e}")),
            NodeError::Store(StoreError::QuotaExceeded {
                needed,
                used,
                quota,
            }) => ApiError::InsufficientStorage(format!(
                "Storage quota exceeded: {used} of {quota} bytes used, {needed} more needed."
            )),
            NodeError::Store(StoreError::InUse { .. }) => ApiError::Internal(
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
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::InsufficientStorage(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
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
