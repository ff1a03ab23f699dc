//! The two download endpoints, `GET|HEAD /data/{cid}` (local: the manifest must be here, and
//! blocks that are not are fetched, as the reference does) and
//! `GET|HEAD /data/{cid}/network/stream` (fetching what is missing, the manifest too): the
//! reference's headers, plus ranges, entity tags and `HEAD` (see [`crate::range`] for the
//! rules).
//!
//! Order of evaluation, as RFC 9110 §13.2.2 wants it: the CID and the manifest first (a `400`
//! or `404` ignores every precondition), then `If-None-Match` (`304`), then `Range` with
//! `If-Range` (`206`/`416`). Only then is a body stream made, over the blocks that hold the
//! answer's bytes; a `HEAD`, a `304` and a `416` read or fetch no block at all (the network
//! endpoint does fetch the manifest, which every answer's headers need).

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::Response,
};
use cairn_core::{Cid, Manifest};
use cairn_node::{ByteRange, Node, NodeError};

use crate::{
    ApiError, disposition,
    network::network_error,
    range::{RangeAnswer, content_range, etag, none_match, range_answer, unsatisfied_range},
    routes::cid_param,
};

/// Where a download's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The manifest from the local store (`/data/{cid}`); blocks that are not stored here
    /// are fetched.
    Local,
    /// The local store, and peers for what is missing (`/data/{cid}/network/stream`).
    Network,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answers a download request for `cid`.
pub(crate) async fn serve(
    node: &Node,
    method: &Method,
    headers: &HeaderMap,
    cid: &str,
    source: Source,
) -> Result<Response, ApiError> {
    let cid = cid_param(cid)?;
    let manifest = match source {
        Source::Local => node.manifest(cid).await?,
        Source::Network => node.fetch_manifest(cid).await.map_err(network_error)?,
    };
    let tag = etag(&cid);
    if header_str(headers, &header::IF_NONE_MATCH).is_some_and(|v| none_match(v, &cid)) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert(header::ETAG, value(&tag));
        return Ok(r);
    }
    let size = manifest.download_size();
    let head = method == Method::HEAD;
    let answer = if head {
        RangeAnswer::Full // RFC 9110 §14.2: range handling is defined for GET only
    } else {
        range_answer(
            header_str(headers, &header::RANGE),
            header_str(headers, &header::IF_RANGE),
            &cid,
            size,
        )
    };
    let (status, range) = match answer {
        RangeAnswer::Unsatisfiable => return Ok(unsatisfiable(size, &tag)),
        RangeAnswer::Full => (StatusCode::OK, ByteRange::full(size)),
        RangeAnswer::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
    };
    // Whether blocks of the range must come from peers. On the local endpoint, a dataset whose
    // manifest is here but not every block the range needs (a background download still
    // running, or one that stopped) is streamed as the network endpoint streams it: the
    // reference's `/data/{cid}` checks only that the manifest is local and fetches the rest
    // (nim-codex `codex/node.nim`, `retrieve` and `streamEntireDataset`). A node without a
    // network answers 404 for it, up front, not with a body cut off later.
    let fetch = match source {
        Source::Network => true,
        Source::Local => match node.check_local(&manifest, range).await {
            Ok(()) => false,
            Err(NodeError::Incomplete { .. }) if node.net().is_some() => true,
            Err(e) => return Err(e.into()),
        },
    };
    // Refuse up front a fetch that does not fit in the quota left (the room is reserved for
    // this download). A refusal on the local endpoint leaves the manifest it found here.
    let mut reservation = None;
    if fetch && !head {
        let reserved = match source {
            Source::Local => node.reserve_room_for_stored(cid, &manifest, range).await,
            Source::Network => node.reserve_room(cid, &manifest, range).await,
        };
        reservation = Some(reserved.map_err(network_error)?);
    }
    let body = if head {
        Body::empty()
    } else if fetch {
        Body::from_stream(
            node.stream_network_of(cid, &manifest, range, reservation)
                .map_err(network_error)?,
        )
    } else {
        Body::from_stream(node.stream_dataset_range(&manifest, range)?)
    };
    let mut resp = dataset_response(&manifest, &cid, body, range.len());
    *resp.status_mut() = status;
    if status == StatusCode::PARTIAL_CONTENT {
        resp.headers_mut()
            .insert(header::CONTENT_RANGE, value(&content_range(&range, size)));
    }
    Ok(resp)
}

/// A header value made by cairn from a CID or numbers (always valid).
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn unsatisfiable(size: u64, tag: &str) -> Response {
    let mut r = Response::new(Body::from(format!(
        "The requested range is not satisfiable: the dataset has {size} bytes."
    )));
    *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_RANGE, value(&unsatisfied_range(size)));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(tag));
    r
}

/// A dataset download response: the reference's headers (`Content-Type`,
/// `Content-Disposition`, `Content-Length` of `len` bytes) plus `Accept-Ranges` and `ETag`,
/// around `body`.
fn dataset_response(manifest: &Manifest, cid: &Cid, body: Body, len: u64) -> Response {
    let content_type = manifest
        .mimetype
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    // The name comes from whoever uploaded the dataset, maybe to another node: see
    // `disposition.rs` for what of it may reach the header, and how.
    h.insert(
        header::CONTENT_DISPOSITION,
        disposition::attachment(manifest.filename.as_deref()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(&etag(cid)));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file name from a peer's manifest reaches `Content-Disposition` only when it is one the
    /// node would accept from an upload and holds nothing that ends or escapes the quoted name
    /// (`"`, `\`, a control character); else the header is plain `attachment`. A name beyond
    /// ASCII goes out as an ASCII fallback and an RFC 8187 `filename*`. A name like
    /// `x.a"; filename*=UTF-8''evil.sh` passed `valid_filename` (whose character check skips
    /// the extension) and added a parameter. Found by review.
    #[test]
    fn a_remote_file_name_cannot_add_header_parameters() {
        let cid: Cid = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy"
            .parse()
            .unwrap();
        let disposition = |name: Option<&str>| {
            let mut m = Manifest::new(cid, 10, 65536);
            m.filename = name.map(str::to_owned);
            let r = dataset_response(&m, &cid, Body::empty(), 10);
            r.headers()[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            disposition(Some("notes.txt")),
            "attachment; filename=\"notes.txt\""
        );
        assert_eq!(disposition(None), "attachment");
        assert_eq!(
            disposition(Some("\u{e9}t\u{e9}.txt")),
            "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
        );
        for bad in [
            "x.a\"; filename*=UTF-8''evil.sh",
            "x.a\\\"",
            "a\"b",
            "con.txt",
            "x.t\tt",
            "",
        ] {
            assert_eq!(disposition(Some(bad)), "attachment", "{bad:?}");
        }
    }
}
