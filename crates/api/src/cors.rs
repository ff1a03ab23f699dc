//! CORS headers, as the reference node sends them when started with `--api-cors-origin`.
//!
//! The reference (`codex/rest/api.nim` over `nim-presto` 0.1.0) has no single CORS policy:
//! the headers depend on the route, on the outcome and on who writes the response. With the
//! option set to `O`:
//!
//! * `set(M)` = `Access-Control-Allow-Origin: O`, `Access-Control-Allow-Methods: M, OPTIONS`,
//!   `Access-Control-Max-Age: 86400` — what the handlers add themselves, whatever the request's
//!   `Origin`. cairn differs in one case: when `O` has no scheme (`app.example`), which no
//!   browser accepts as it is, it sends the request's matching `Origin` instead (with `Vary:
//!   Origin`), as `reflect` does.
//! * `reflect` = what the server library adds to a handler's ordinary (non-error) answer: with
//!   one `Origin` header, `Access-Control-Allow-Origin: *` if `O` is `*`, or, if the origin
//!   matches `O` (equal; or equal after `http://`/`https://` when `O` has no scheme),
//!   `Vary: Origin` and `Access-Control-Allow-Origin: <that origin>`. Two or more `Origin`
//!   headers turn the answer into `400 Only a single Origin header must be specified`.
//!
//! | route | answer |
//! |---|---|
//! | `OPTIONS /data` | `204`, `set(POST)` + `Access-Control-Allow-Headers: content-type, content-disposition` |
//! | `OPTIONS /data/{cid}` | `204`, `set(GET,DELETE)` |
//! | `OPTIONS /sales/availability/{id}` | `204`, `set(PATCH)` |
//! | `OPTIONS` on any other route | `200`, empty `text/plain`, `reflect` |
//! | `GET /data/{cid}`, `GET /data/{cid}/network/stream` | `set(GET)` + `Access-Control-Headers: X-Requested-With` (sic); a bad CID (`400`): `set(GET)` only |
//! | `DELETE /data/{cid}` | `set(DELETE)` |
//! | `POST /data`, `GET /data`, `GET /space` | success: `reflect`; errors: none |
//! | `GET /data/{cid}/exists`, `POST /data/{cid}/network`, `GET /data/{cid}/network/manifest` | success: `reflect`; errors: `set(GET)` |
//! | `GET /peerid`, `GET /connect/{peer}`, `GET /debug/info` | success: `reflect`, then `set(GET)` for the headers `reflect` did not write; errors: `set(GET)` |
//! | `POST /debug/chronicles/loglevel` | success: `reflect`; errors: `set(POST)` |
//! | marketplace (`503`) | `set(<method>)`, except `PATCH /sales/availability/{id}`: none |
//!
//! The three explicit `OPTIONS` routes answer `204` without any CORS header when the option is
//! not set (they exist in the reference either way); without the option nothing else changes.
//! `GET /data/{cid}/network/stream` always carries `Access-Control-Expose-Headers:
//! Content-Disposition`, option or not, except on a bad CID — as the reference.
//!
//! cairn adds only what its range support needs from a browser, and only with the option set:
//! the download routes (`GET`/`HEAD`) expose `Content-Disposition, Content-Range,
//! Accept-Ranges, ETag`, and the preflights of the two download paths allow the request
//! headers `Range, If-None-Match, If-Range` (a suffix range or a conditional request is not a
//! CORS-safelisted request, so a browser asks first). `HEAD` (which the reference does not
//! serve) gets the headers of `GET`.
//!
//! `tower-http`'s `CorsLayer` cannot give these answers (one policy for every route, `200`
//! preflights, no per-route methods, no `Access-Control-Headers`), hence this middleware.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::routes::API_BASE;

/// `Access-Control-Max-Age` of the reference: one day, in seconds.
pub const CORS_MAX_AGE_SECS: u32 = 86_400;

/// The reference's `Access-Control-Allow-Headers` on `OPTIONS /data` (an upload's headers).
const UPLOAD_ALLOW_HEADERS: &str = "content-type, content-disposition";
/// What the reference's download answers expose (network stream only, option or not).
const STREAM_EXPOSE: &str = "Content-Disposition";
/// What cairn's download answers expose with the option set (see the module docs).
const DOWNLOAD_EXPOSE: &str = "Content-Disposition, Content-Range, Accept-Ranges, ETag";
/// Request headers a download preflight allows with the option set (a cairn addition).
const DOWNLOAD_ALLOW_HEADERS: &str = "Range, If-None-Match, If-Range";
/// The reference's answer to a request with several `Origin` headers.
const MULTIPLE_ORIGINS: &str = "Only a single Origin header must be specified";
/// The reference's misspelt header on download answers.
const ACCESS_CONTROL_HEADERS: HeaderName = HeaderName::from_static("access-control-headers");
/// Its value.
const REQUESTED_WITH: &str = "X-Requested-With";

/// A `--api-cors-origin` value: an origin (`https://app.example`), a host without scheme
/// (`app.example`, matching both schemes), `*`, or empty (no browser accepts it: "allow none",
/// as the reference documents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigin(HeaderValue);

/// A CORS origin that cannot be an HTTP header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' cannot be a CORS origin: it must be visible ASCII")]
pub struct InvalidCorsOrigin(pub String);

impl CorsOrigin {
    /// Checks `origin` can be sent as `Access-Control-Allow-Origin`.
    pub fn new(origin: &str) -> Result<CorsOrigin, InvalidCorsOrigin> {
        HeaderValue::from_str(origin)
            .ok()
            .filter(|_| origin.bytes().all(|b| b.is_ascii_graphic()))
            .map(CorsOrigin)
            .ok_or_else(|| InvalidCorsOrigin(origin.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Built from a `&str` of visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

/// The middleware's state: the configured origin, if any.
pub(crate) type CorsState = Arc<Option<CorsOrigin>>;

/// Which of the API's routes a path is (for the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Data,
    DataCid,
    Exists,
    NetworkBackground,
    NetworkStream,
    NetworkManifest,
    Space,
    NodeInfo,
    LogLevel,
    AvailabilityId,
    Marketplace,
    Other,
}

impl Route {
    fn of(path: &str) -> Route {
        let Some(rest) = path.strip_prefix(API_BASE) else {
            return Route::Other;
        };
        let mut segs = [""; 5];
        let mut n = 0;
        for s in rest.strip_prefix('/').unwrap_or(rest).split('/') {
            if n == segs.len() {
                return Route::Other;
            }
            segs[n] = s;
            n += 1;
        }
        match &segs[..n] {
            ["data"] => Route::Data,
            ["data", _] => Route::DataCid,
            ["data", _, "exists"] => Route::Exists,
            ["data", _, "network"] => Route::NetworkBackground,
            ["data", _, "network", "stream"] => Route::NetworkStream,
            ["data", _, "network", "manifest"] => Route::NetworkManifest,
            ["space"] => Route::Space,
            ["peerid"] | ["connect", _] | ["debug", "info"] => Route::NodeInfo,
            ["debug", "chronicles", "loglevel"] => Route::LogLevel,
            ["sales", "availability", _] => Route::AvailabilityId,
            ["sales", ..] | ["storage", ..] => Route::Marketplace,
            _ => Route::Other,
        }
    }

    fn is_download(self) -> bool {
        matches!(self, Route::DataCid | Route::NetworkStream)
    }
}

/// How an answer is decorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    None,
    Set(&'static str),
    /// `set(GET)` and `Access-Control-Headers: X-Requested-With`.
    Download,
    Reflect,
    ReflectThenSet(&'static str),
}

fn policy(route: Route, method: &Method, status: StatusCode) -> Policy {
    let ok = status.is_success();
    let get = method == Method::GET || method == Method::HEAD;
    match route {
        r if r.is_download() && get => {
            if status == StatusCode::BAD_REQUEST {
                Policy::Set("GET")
            } else {
                Policy::Download
            }
        }
        Route::DataCid if method == Method::DELETE => Policy::Set("DELETE"),
        Route::Data if (get || method == Method::POST) && ok => Policy::Reflect,
        Route::Space if get && ok => Policy::Reflect,
        Route::Exists | Route::NetworkManifest if get => {
            if ok {
                Policy::Reflect
            } else {
                Policy::Set("GET")
            }
        }
        Route::NetworkBackground if method == Method::POST => {
            if ok {
                Policy::Reflect
            } else {
                Policy::Set("GET")
            }
        }
        Route::NodeInfo if get => {
            if ok {
                Policy::ReflectThenSet("GET")
            } else {
                Policy::Set("GET")
            }
        }
        Route::LogLevel if method == Method::POST => {
            if ok {
                Policy::Reflect
            } else {
                Policy::Set("POST")
            }
        }
        Route::Marketplace if get => Policy::Set("GET"),
        Route::Marketplace if method == Method::POST => Policy::Set("POST"),
        _ => Policy::None,
    }
}

/// The request's `Origin` headers: none, one, or several.
enum Origins {
    None,
    One(HeaderValue),
    Several,
}

fn origins(headers: &HeaderMap) -> Origins {
    let mut all = headers.get_all(header::ORIGIN).iter();
    match (all.next(), all.next()) {
        (None, _) => Origins::None,
        (Some(o), None) => Origins::One(o.clone()),
        (Some(_), Some(_)) => Origins::Several,
    }
}

/// The reference's origin match (`originsMatch` in nim-presto).
pub(crate) fn origins_match(request: &str, allowed: &str) -> bool {
    if allowed.starts_with("http://") || allowed.starts_with("https://") {
        request == allowed
    } else if let Some(host) = request.strip_prefix("http://") {
        host == allowed
    } else if let Some(host) = request.strip_prefix("https://") {
        host == allowed
    } else {
        false
    }
}

/// Adds `reflect`'s headers to `h`; `Err` when the request had several `Origin` headers.
fn reflect(allowed: &CorsOrigin, origins: &Origins, h: &mut HeaderMap) -> Result<(), ()> {
    match origins {
        Origins::None => {}
        Origins::Several => return Err(()),
        Origins::One(origin) => {
            if allowed.as_str() == "*" {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            } else if origin
                .to_str()
                .is_ok_and(|o| origins_match(o, allowed.as_str()))
            {
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            }
        }
    }
    Ok(())
}

/// Whether `allowed` is a host without a scheme (`app.example`), which matches an origin of
/// either scheme.
fn schemeless(allowed: &CorsOrigin) -> bool {
    let o = allowed.as_str();
    !(o.is_empty() || o == "*" || o.starts_with("http://") || o.starts_with("https://"))
}

/// Adds `set(methods)`; with `keep`, headers already present are left as they are. The
/// allowed origin is the option's value, except that a value without a scheme names the
/// request's matching origin (with its scheme: a browser accepts nothing else), with `Vary:
/// Origin` (a cairn fix: the reference sends the value as it is, which no browser accepts).
fn set(allowed: &CorsOrigin, origins: &Origins, methods: &str, h: &mut HeaderMap, keep: bool) {
    let methods = HeaderValue::from_str(&format!("{methods}, OPTIONS"))
        .unwrap_or_else(|_| HeaderValue::from_static("OPTIONS"));
    let mut origin = allowed.0.clone();
    if schemeless(allowed) {
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Origins::One(o) = origins
            && o.to_str().is_ok_and(|o| origins_match(o, allowed.as_str()))
        {
            origin = o.clone();
        }
    }
    let entries = [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
        (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(CORS_MAX_AGE_SECS),
        ),
    ];
    for (name, value) in entries {
        if !(keep && h.contains_key(&name)) {
            h.insert(name, value);
        }
    }
}

fn several_origins() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        MULTIPLE_ORIGINS,
    )
        .into_response()
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = status;
    r
}

/// The middleware: answers the `OPTIONS` routes and decorates every other answer (see the
/// module docs).
pub(crate) async fn layer(State(cors): State<CorsState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = Route::of(req.uri().path());
    let origins = origins(req.headers());
    let allowed = cors.as_ref().as_ref();
    if method == Method::OPTIONS {
        let explicit = match route {
            Route::Data => Some(("POST", Some(UPLOAD_ALLOW_HEADERS))),
            Route::DataCid => Some(("GET,DELETE", Some(DOWNLOAD_ALLOW_HEADERS))),
            Route::AvailabilityId => Some(("PATCH", None)),
            _ => None,
        };
        if let Some((methods, allow_headers)) = explicit {
            let mut r = empty(StatusCode::NO_CONTENT);
            if let Some(o) = allowed {
                set(o, &origins, methods, r.headers_mut(), false);
                if let Some(v) = allow_headers {
                    r.headers_mut().insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static(v),
                    );
                }
            }
            return r;
        }
        let resp = next.run(req).await;
        // A route that exists for other methods: the server library's automatic preflight.
        return match allowed {
            Some(o) if resp.status() == StatusCode::METHOD_NOT_ALLOWED => {
                let mut r =
                    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "").into_response();
                if reflect(o, &origins, r.headers_mut()).is_err() {
                    return several_origins();
                }
                if route == Route::NetworkStream {
                    r.headers_mut().insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static(DOWNLOAD_ALLOW_HEADERS),
                    );
                }
                r
            }
            _ => resp,
        };
    }
    let mut resp = next.run(req).await;
    let status = resp.status();
    let p = policy(route, &method, status);
    let h = resp.headers_mut();
    if route == Route::NetworkStream && p == Policy::Download {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(STREAM_EXPOSE),
        );
    }
    let Some(o) = allowed else {
        return resp;
    };
    match p {
        Policy::None => {}
        Policy::Set(m) => set(o, &origins, m, h, false),
        Policy::Download => {
            set(o, &origins, "GET", h, false);
            h.insert(
                ACCESS_CONTROL_HEADERS,
                HeaderValue::from_static(REQUESTED_WITH),
            );
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(DOWNLOAD_EXPOSE),
            );
        }
        Policy::Reflect => {
            if reflect(o, &origins, h).is_err() {
                return several_origins();
            }
        }
        Policy::ReflectThenSet(m) => {
            if reflect(o, &origins, h).is_err() {
                return several_origins();
            }
            set(o, &origins, m, h, true);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        let r = |p: &str| Route::of(&format!("{API_BASE}{p}"));
        assert_eq!(r("/data"), Route::Data);
        assert_eq!(r("/data/zX"), Route::DataCid);
        assert_eq!(r("/data/zX/exists"), Route::Exists);
        assert_eq!(r("/data/zX/network"), Route::NetworkBackground);
        assert_eq!(r("/data/zX/network/stream"), Route::NetworkStream);
        assert_eq!(r("/data/zX/network/manifest"), Route::NetworkManifest);
        assert_eq!(r("/space"), Route::Space);
        assert_eq!(r("/peerid"), Route::NodeInfo);
        assert_eq!(r("/connect/p"), Route::NodeInfo);
        assert_eq!(r("/debug/info"), Route::NodeInfo);
        assert_eq!(r("/debug/chronicles/loglevel"), Route::LogLevel);
        assert_eq!(r("/sales/availability/1"), Route::AvailabilityId);
        assert_eq!(r("/sales/availability/1/reservations"), Route::Marketplace);
        assert_eq!(r("/storage/purchases"), Route::Marketplace);
        assert_eq!(r("/data/a/b/c/d/e/f"), Route::Other);
        assert_eq!(Route::of("/other"), Route::Other);
    }

    #[test]
    fn origin_matching_as_presto() {
        assert!(origins_match("https://a.example", "https://a.example"));
        assert!(!origins_match("http://a.example", "https://a.example"));
        assert!(origins_match("http://a.example", "a.example"));
        assert!(origins_match("https://a.example", "a.example"));
        assert!(!origins_match("a.example", "a.example"));
        assert!(!origins_match("https://b.example", "a.example"));
    }

    #[test]
    fn origin_values() {
        assert!(CorsOrigin::new("https://app.example").is_ok());
        assert!(CorsOrigin::new("*").is_ok());
        assert!(CorsOrigin::new("").is_ok());
        assert!(CorsOrigin::new("a b").is_err());
        assert!(CorsOrigin::new("a\nb").is_err());
    }
}
