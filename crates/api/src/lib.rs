//! # cairn-api: the REST API
//!
//! Routes under `/api/codex/v1` with the reference node's paths, status codes and JSON shapes
//! (`codex-protocol.md` §9), so scripts written for the reference work against cairn. Handlers are
//! thin: parse and check the request, call [`cairn_node::Node`], map the result. All HTTP mapping
//! of errors lives in [`ApiError`]. Bodies stream both ways: an upload is never buffered whole,
//! and a download is read from the store a few blocks ahead of the client.
//!
//! Both download endpoints serve HTTP ranges (`206`/`416`), `HEAD`, and entity tags (the
//! manifest CID; `If-None-Match` → `304`, `If-Range`), reading or fetching only the blocks that
//! hold the requested bytes (`range.rs`, `download.rs`). With `--api-cors-origin` the API adds
//! the reference's CORS headers (`cors.rs`). Requests that web pages send behind the user's back
//! (cross-site requests, DNS rebinding) are refused (`guard.rs`). A dataset's file name goes in `Content-Disposition`
//! as the reference sends it when it is plain ASCII, and as an ASCII fallback plus an RFC 8187
//! `filename*` when it is not (`disposition.rs`; [`download_filename`] reads either back).
//!
//! The node's Prometheus metrics are served apart from the API, on a listener of their own
//! (`metrics.rs`: [`serve_metrics`]). Both listeners bound their connections: a head-read
//! timeout, a write deadline and a connection limit (`server.rs`).
//! The API is described by `docs/openapi.yaml` (OpenAPI 3.0), which the node serves at
//! `GET /api/codex/v1/openapi.yaml` and whose agreement with the router is tested (`openapi.rs`).
//!
//! Where the reference answers badly, cairn answers better and says so: an empty upload is `400`
//! (the reference answers `500`), a full store is `507 Insufficient Storage` (the reference
//! answers `500`), deleting a block that a dataset holds is `409 Conflict` (the reference
//! answers `500`).

mod admin;
mod cors;
mod disposition;
mod download;
mod dto;
mod error;
mod guard;
mod headers;
mod metrics;
mod network;
mod openapi;
mod range;
mod routes;
mod server;

pub use crate::{
    admin::{LogLevelSetter, MAX_LEVEL_LEN},
    cors::{CORS_MAX_AGE_SECS, CorsOrigin, InvalidCorsOrigin},
    disposition::download_filename,
    error::ApiError,
    guard::{AllowedHosts, InvalidAllowedHost, MAX_ALLOWED_HOSTS, MAX_HOST_NAME_LEN},
    headers::{
        MAX_FILENAME_LEN, MAX_FILENAME_PATH_LEN, parse_content_disposition_filename,
        valid_filename, valid_mimetype,
    },
    metrics::{
        MAX_CONCURRENT_SCRAPES, METRICS_PATH, OPENMETRICS_CONTENT_TYPE, metrics_router,
        serve_metrics,
    },
    network::{MAX_CONCURRENT_CONNECTS, MAX_CONNECT_ADDRS},
    openapi::{OPENAPI_CONTENT_TYPE, OPENAPI_YAML},
    range::{
        MAX_RANGE_HEADER_LEN, MAX_RANGE_SPECS, RangeAnswer, RangeRequest, RangeSpec, content_range,
        etag, none_match, parse_range, range_answer, unsatisfied_range,
    },
    routes::{
        API_BASE, ApiOptions, MAX_CONCURRENT_UPLOADS, UPLOAD_SLOT_WAIT, UploadLimits, router,
        router_with, serve,
    },
    server::{HEADER_READ_TIMEOUT, MAX_HTTP_CONNECTIONS, WRITE_STALL_TIMEOUT},
};
