//! # cairn-api: the REST API
//!
//! Routes under `/api/codex/v1` with the reference node's paths, status codes and JSON shapes
//! (`codex-protocol.md` §9), so scripts written for the reference work against cairn. Handlers are
//! thin: parse and check the request, call [`cairn_node::Node`], map the result. All HTTP mapping
//! of errors lives in [`ApiError`]. Bodies stream both ways: an upload is never buffered whole,
//! and a download is read from the store a few blocks ahead of the client.
//!
//! Where the reference answers badly, cairn answers better and says so: an empty upload is `400`
//! (the reference answers `500`), a full store is `507 Insufficient Storage` (the reference
//! answers `500`).

mod admin;
mod dto;
mod error;
mod headers;
mod network;
mod routes;

pub use crate::{
    admin::{LogLevelSetter, MAX_LEVEL_LEN},
    error::ApiError,
    headers::{
        MAX_FILENAME_LEN, parse_content_disposition_filename, valid_filename, valid_mimetype,
    },
    routes::{API_BASE, ApiOptions, router, router_with, serve},
};
