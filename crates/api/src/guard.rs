//! Refusing the requests that web pages make behind the user's back.
//!
//! The API has no authentication, as the reference's: it trusts whoever can reach it, which by
//! default means the programs of the machine (it listens on 127.0.0.1). A web browser on that
//! machine is one of them, and every page it shows can send requests to the API:
//!
//! * **Cross-site requests.** A page on `evil.example` can `POST /data/{cid}/network` (the node
//!   fetches what the page names, up to its quota), `POST /data` with a `text/plain` body, or
//!   `GET /connect/{peer}`. These are "simple" requests: the browser sends them without asking
//!   first and only hides the answer from the page. Browsers say who sent them: `Origin` on
//!   every `POST` and every `fetch`, and `Sec-Fetch-Site` on every request to a potentially
//!   trustworthy address, which `http://127.0.0.1` and `http://localhost` are.
//! * **DNS rebinding.** `evil.example`'s name is made to resolve to 127.0.0.1 after the page
//!   has loaded. The page's requests to `http://evil.example:8080/` then reach the node and are
//!   same-origin for the browser, so the page reads the answers: the list of datasets and their
//!   content. The `Host` header still names `evil.example`.
//!
//! The layer refuses (`403`, with a plain-text reason that names the option to change):
//!
//! 1. a request whose `Host` names something other than an IP address, `localhost`, a name
//!    under `.localhost`, or a name given with `--api-allowed-hosts` ([`AllowedHosts`]). This
//!    is the default when the API listens on a loopback address or on all addresses
//!    (`0.0.0.0`, `::`, which include loopback); on one other address every name is allowed
//!    unless names are given (the operator exposed the API there on purpose, and its clients
//!    may know it by any name). A request without `Host` (HTTP/1.0) passes: browsers always
//!    send one.
//! 2. a request (other than a preflight `OPTIONS`) whose `Origin` is neither the API's own
//!    (the same host and port as `Host`) nor allowed by `--api-cors-origin` (matched as
//!    `cors.rs` matches it; `*` allows every origin). `Origin: null` (sandboxed frames, local
//!    files) is never the API's own. Several `Origin` headers, which no browser sends, pass on
//!    to the handlers as before.
//! 3. without `--api-cors-origin` (or with it empty), a request without `Origin` that
//!    `Sec-Fetch-Site` says comes from another site (`cross-site`, `same-site`), unless the
//!    user clicked a link to a download: a `GET` or `HEAD` of `/data/{cid}` or
//!    `/data/{cid}/network/stream` with `Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest: document`
//!    and `Sec-Fetch-User: ?1` (frames, `<object>` and navigations by script without a click
//!    send other values). The rest is an `<img>`, `<script>`, frame or `no-cors` fetch, none of
//!    which a page has any business sending to the node. With `--api-cors-origin` set the
//!    operator runs a web application on the API, whose media elements send such requests
//!    without `Origin`, so they pass.
//!
//! Browsers send `Sec-Fetch-*` only to potentially trustworthy addresses (loopback, HTTPS): an
//! API exposed over plain HTTP on a LAN address gets none, so there rule 3 does not apply and
//! only rules 1 and 2 protect it.
//!
//! Programs that are not browsers (the CLI, curl, scripts written for the reference) send
//! neither `Origin` nor `Sec-Fetch-Site`, and address the API by IP address or `localhost`:
//! nothing changes for them. The reference node has no such checks.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::debug;

use crate::{
    cors::{CorsOrigin, origins_match},
    routes::API_BASE,
};

/// Most names `--api-allowed-hosts` may list.
pub const MAX_ALLOWED_HOSTS: usize = 64;
/// Longest name `--api-allowed-hosts` accepts (the longest DNS name).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// The `Sec-Fetch-Site` request header (not in `http`'s list).
const SEC_FETCH_SITE: &str = "sec-fetch-site";
/// The `Sec-Fetch-Mode` request header.
const SEC_FETCH_MODE: &str = "sec-fetch-mode";
/// The `Sec-Fetch-Dest` request header.
const SEC_FETCH_DEST: &str = "sec-fetch-dest";
/// The `Sec-Fetch-User` request header (`?1`: a navigation the user started).
const SEC_FETCH_USER: &str = "sec-fetch-user";

/// The names requests may address the API by (rule 1 of the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Every name (the API listens beyond loopback, or `--api-allowed-hosts '*'`).
    Any,
    /// IP addresses, `localhost`, names under `.localhost`, and these names (lowercase,
    /// without a trailing dot or a port).
    Local(Vec<String>),
}

impl Default for AllowedHosts {
    /// Only IP addresses and `localhost`: what a node listening on loopback allows.
    fn default() -> AllowedHosts {
        AllowedHosts::Local(Vec::new())
    }
}

/// A value of `--api-allowed-hosts` that cannot be a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAllowedHost {
    /// Not a DNS name (letters, digits, `-`, `.`; at most [`MAX_HOST_NAME_LEN`] bytes).
    #[error(
        "'{0}' is not a host name (letters, digits, '-' and '.', at most {MAX_HOST_NAME_LEN} bytes, no port), nor '*'"
    )]
    Name(String),
    /// More than [`MAX_ALLOWED_HOSTS`] names.
    #[error("{0} allowed hosts given; at most {MAX_ALLOWED_HOSTS}")]
    TooMany(usize),
}

impl AllowedHosts {
    /// The hosts allowed by `names` (the values of `--api-allowed-hosts`) for an API listening
    /// on `bind`: with no names, [`AllowedHosts::default`] on a loopback or unspecified
    /// address and [`AllowedHosts::Any`] on any other; `*` among them allows every name.
    pub fn for_bind(bind: IpAddr, names: &[String]) -> Result<AllowedHosts, InvalidAllowedHost> {
        if names.len() > MAX_ALLOWED_HOSTS {
            return Err(InvalidAllowedHost::TooMany(names.len()));
        }
        if names.iter().any(|n| n == "*") {
            return Ok(AllowedHosts::Any);
        }
        if names.is_empty() && !bind.is_loopback() && !bind.is_unspecified() {
            return Ok(AllowedHosts::Any);
        }
        let mut list = Vec::with_capacity(names.len());
        for name in names {
            let n = name.trim_end_matches('.').to_ascii_lowercase();
            let valid = !n.is_empty()
                && n.len() <= MAX_HOST_NAME_LEN
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(InvalidAllowedHost::Name(name.clone()));
            }
            list.push(n);
        }
        Ok(AllowedHosts::Local(list))
    }

    /// Whether a request whose `Host` header is `host` may be answered.
    fn allows(&self, host: &str) -> bool {
        let names = match self {
            AllowedHosts::Any => return true,
            AllowedHosts::Local(names) => names,
        };
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.starts_with('[') {
            // `host_name` checked that it is an IPv6 address.
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || names.contains(&name)
    }
}

/// The name part of a `Host` header value (`name`, `name:port`, `[v6]`, `[v6]:port`), or
/// `None` when it is malformed.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        rest[..end].parse::<Ipv6Addr>().ok()?;
        let port = &rest[end + 1..];
        return (port.is_empty() || valid_port(port.strip_prefix(':')?))
            .then_some(&host[..end + 2]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => valid_port(port).then_some(name),
        None => Some(host),
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A lowercase origin's `host[:port]`, without the scheme's default port; `None` for
/// `null` and anything that is not `http://…` or `https://…`.
fn origin_authority(origin: &str) -> Option<String> {
    let (rest, default_port) = if let Some(r) = origin.strip_prefix("http://") {
        (r, ":80")
    } else if let Some(r) = origin.strip_prefix("https://") {
        (r, ":443")
    } else {
        return None;
    };
    Some(rest.strip_suffix(default_port).unwrap_or(rest).to_owned())
}

/// Whether `origin` names the API itself, as the request's `Host` does. The scheme is not
/// compared: behind a proxy that ends TLS the page is `https://` while the API speaks HTTP, and
/// no page can be served over HTTPS from the port where the API speaks plain HTTP. (With a
/// `Host` without port, a page served over the other scheme's default port of the same host
/// counts as the API's own: that takes a server of the attacker's on the node's machine.)
fn own_origin(origin: &str, host: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let Some(authority) = origin_authority(&origin) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    // The `Host` of a request to a default port may or may not carry the port.
    authority == host
        || ((origin.starts_with("http://") && host.strip_suffix(":80") == Some(&authority))
            || (origin.starts_with("https://") && host.strip_suffix(":443") == Some(&authority)))
}

/// Whether `path` is one of the two downloads a user may follow a link to: `/data/{cid}` or
/// `/data/{cid}/network/stream` under the API's base.
fn download_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(API_BASE) else {
        return false;
    };
    let segs: Vec<&str> = rest.splitn(6, '/').collect();
    matches!(
        segs.as_slice(),
        ["", "data", cid] | ["", "data", cid, "network", "stream"] if !cid.is_empty()
    )
}

/// What the layer needs: the allowed names and the CORS option.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) hosts: AllowedHosts,
    pub(crate) cors: Option<CorsOrigin>,
}

/// Why a request was refused: the answer's text.
fn verdict(guard: &Guard, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), String> {
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Err("the Host header is not ASCII".to_owned()),
    };
    if let Some(h) = host
        && !guard.hosts.allows(h)
    {
        return Err(format!(
            "Host '{h}' is not allowed: the API answers requests addressed to an IP address or \
             localhost only (protection against DNS rebinding); start the node with \
             --api-allowed-hosts {} to allow this name",
            host_name(h).unwrap_or("NAME")
        ));
    }
    if method == Method::OPTIONS {
        return Ok(());
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    if let (Some(origin), None) = (origins.next(), origins.next()) {
        let origin = origin.to_str().unwrap_or("");
        let allowed = match &guard.cors {
            Some(o) => o.as_str() == "*" || origins_match(origin, o.as_str()),
            None => false,
        };
        if allowed || host.is_some_and(|h| own_origin(origin, h)) {
            return Ok(());
        }
        return Err(format!(
            "requests from the web page at origin '{origin}' are not allowed: start the node \
             with --api-cors-origin naming that origin to let it use the API"
        ));
    }
    if guard.cors.as_ref().is_none_or(|o| o.as_str().is_empty()) {
        let site = headers.get(SEC_FETCH_SITE).map(|v| v.as_bytes());
        let is =
            |name: &str, value: &[u8]| headers.get(name).is_some_and(|v| v.as_bytes() == value);
        let clicked = is(SEC_FETCH_MODE, b"navigate")
            && is(SEC_FETCH_DEST, b"document")
            && is(SEC_FETCH_USER, b"?1");
        let get = method == Method::GET || method == Method::HEAD;
        if matches!(site, Some(b"cross-site" | b"same-site"))
            && !(clicked && get && download_path(path))
        {
            return Err(
                "requests from other web sites are not allowed: start the node with \
                        --api-cors-origin naming the site's origin to let it use the API"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// The middleware: refuses what the module docs list, passes the rest on.
pub(crate) async fn layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match verdict(&guard, req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            debug!(method = %req.method(), path = req.uri().path(), %why, "request refused");
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                why,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn local(names: &[&str]) -> AllowedHosts {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        AllowedHosts::for_bind("127.0.0.1".parse().unwrap(), &names).unwrap()
    }

    #[test]
    fn allowed_hosts_depend_on_the_bind_address_and_the_names() {
        // All addresses include loopback: as strict as loopback. One other address: open.
        for all in ["0.0.0.0", "::"] {
            let all: IpAddr = all.parse().unwrap();
            assert_eq!(
                AllowedHosts::for_bind(all, &[]),
                Ok(AllowedHosts::default())
            );
        }
        let any: IpAddr = "192.168.1.2".parse().unwrap();
        assert_eq!(AllowedHosts::for_bind(any, &[]), Ok(AllowedHosts::Any));
        assert_eq!(local(&[]), AllowedHosts::default());
        assert_eq!(local(&["*"]), AllowedHosts::Any);
        assert_eq!(
            AllowedHosts::for_bind(any, &["Node.Example.".into()]),
            Ok(AllowedHosts::Local(vec!["node.example".into()]))
        );
        assert_eq!(
            AllowedHosts::for_bind("::1".parse().unwrap(), &["::1".into()]),
            Err(InvalidAllowedHost::Name("::1".into()))
        );
        for bad in ["", "a b", "host:8080", "é.example", &"a".repeat(254)] {
            assert!(
                matches!(
                    AllowedHosts::for_bind(any, &[bad.to_owned()]),
                    Err(InvalidAllowedHost::Name(_))
                ),
                "{bad:?}"
            );
        }
        let many = vec!["a".to_owned(); MAX_ALLOWED_HOSTS + 1];
        assert_eq!(
            AllowedHosts::for_bind(any, &many),
            Err(InvalidAllowedHost::TooMany(MAX_ALLOWED_HOSTS + 1))
        );
    }

    #[test]
    fn host_names_that_cannot_be_rebound_pass() {
        let hosts = local(&["node.example"]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "app.localhost:3000",
            "node.example",
            "Node.Example:8080",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "node.example.evil",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil]:80",
            "127.0.0.1:port",
            "127.0.0.1:999999",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(AllowedHosts::Any.allows("evil.example"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn guard(cors: Option<&str>) -> Guard {
        Guard {
            hosts: AllowedHosts::default(),
            cors: cors.map(|o| CorsOrigin::new(o).unwrap()),
        }
    }

    const HOST: (&str, &str) = ("host", "127.0.0.1:8080");
    /// A path the verdicts below do not depend on.
    const P: &str = "/api/codex/v1/space";

    #[test]
    fn origins_other_than_the_api_itself_need_the_cors_option() {
        let post = Method::POST;
        let g = guard(None);
        // Not a browser: no Origin, no Sec-Fetch-Site.
        assert_eq!(verdict(&g, &post, P, &headers(&[HOST])), Ok(()));
        assert_eq!(verdict(&g, &post, P, &headers(&[])), Ok(()));
        // The API's own page.
        for own in ["http://127.0.0.1:8080", "HTTP://127.0.0.1:8080"] {
            assert_eq!(
                verdict(&g, &post, P, &headers(&[HOST, ("origin", own)])),
                Ok(())
            );
        }
        let default_port = headers(&[("host", "127.0.0.1"), ("origin", "http://127.0.0.1:80")]);
        assert_eq!(verdict(&g, &post, P, &default_port), Ok(()));
        let default_port = headers(&[("host", "127.0.0.1:80"), ("origin", "http://127.0.0.1")]);
        assert_eq!(verdict(&g, &post, P, &default_port), Ok(()));
        // Behind a proxy that ends TLS, the page's scheme is not the API's: the authority
        // decides (no page can be served over HTTPS on the port where the API speaks HTTP).
        let tls = headers(&[("host", "node.example"), ("origin", "https://node.example")]);
        let open = Guard {
            hosts: AllowedHosts::Any,
            cors: None,
        };
        assert_eq!(verdict(&open, &post, P, &tls), Ok(()));
        // Another page: refused, whatever the method, but for a preflight.
        for other in [
            "http://evil.example",
            "http://127.0.0.1:3000",
            "http://127.0.0.1:8080.evil.example",
            "null",
            "",
        ] {
            let h = headers(&[HOST, ("origin", other)]);
            for m in [Method::POST, Method::GET, Method::DELETE] {
                let e = verdict(&g, &m, P, &h).unwrap_err();
                assert!(e.contains("--api-cors-origin"), "{e}");
            }
            assert_eq!(verdict(&g, &Method::OPTIONS, P, &h), Ok(()));
        }
        // Without Host, only the CORS option lets an origin in.
        let no_host = headers(&[("origin", "http://127.0.0.1:8080")]);
        assert!(verdict(&g, &post, P, &no_host).is_err());
        // The option: its origin passes (as cors.rs matches it), others do not; `*` lets all in.
        let g = guard(Some("https://app.example"));
        let app = headers(&[HOST, ("origin", "https://app.example")]);
        assert_eq!(verdict(&g, &post, P, &app), Ok(()));
        let evil = headers(&[HOST, ("origin", "https://evil.example")]);
        assert!(verdict(&g, &post, P, &evil).is_err());
        let g = guard(Some("app.example"));
        let app = headers(&[HOST, ("origin", "http://app.example")]);
        assert_eq!(verdict(&g, &post, P, &app), Ok(()));
        assert_eq!(verdict(&guard(Some("*")), &post, P, &evil), Ok(()));
        // Several Origin headers (no browser sends them) pass on as before.
        let two = headers(&[HOST, ("origin", "http://a.example"), ("origin", "http://b")]);
        assert_eq!(verdict(&guard(None), &post, P, &two), Ok(()));
    }

    #[test]
    fn requests_from_other_sites_without_origin_pass_only_as_clicks_on_download_links() {
        let g = guard(None);
        let h = |site: &str, mode: &str, dest: &str, user: Option<&str>| {
            let mut h = headers(&[
                HOST,
                ("sec-fetch-site", site),
                ("sec-fetch-mode", mode),
                ("sec-fetch-dest", dest),
            ]);
            if let Some(u) = user {
                h.insert("sec-fetch-user", HeaderValue::from_str(u).unwrap());
            }
            h
        };
        let cid = "zDvZRwzkzdhL6T7rNyU3K5NhnMxuWJTqPLU6TMGbw1LJw4tRyhnf";
        let data = format!("{API_BASE}/data/{cid}");
        let stream = format!("{data}/network/stream");
        let click = |site| h(site, "navigate", "document", Some("?1"));
        for site in ["cross-site", "same-site"] {
            for path in [&data, &stream] {
                // A user's click on a download link: passes (GET and HEAD only).
                assert_eq!(verdict(&g, &Method::GET, path, &click(site)), Ok(()));
                assert_eq!(verdict(&g, &Method::HEAD, path, &click(site)), Ok(()));
                assert!(verdict(&g, &Method::POST, path, &click(site)).is_err());
                assert!(verdict(&g, &Method::DELETE, path, &click(site)).is_err());
                // An <img>, a frame, a navigation by script (no click): refused.
                for other in [
                    h(site, "no-cors", "image", None),
                    h(site, "navigate", "iframe", None),
                    h(site, "navigate", "iframe", Some("?1")),
                    h(site, "navigate", "document", None),
                    h(site, "navigate", "document", Some("?0")),
                ] {
                    assert!(
                        verdict(&g, &Method::GET, path, &other).is_err(),
                        "{other:?}"
                    );
                }
            }
            // A click on a link to anything but a download: refused.
            for path in [
                format!("{API_BASE}/connect/16Uiu2HAm9MVtPwkuZTxHCeKnBu7vQP5VQkvT184L3ZLzt4NXsMaF"),
                format!("{data}/network/manifest"),
                format!("{data}/network"),
                format!("{API_BASE}/data/"),
                format!("{API_BASE}/data"),
                format!("{API_BASE}/debug/info"),
                format!("{stream}/more"),
            ] {
                assert!(
                    verdict(&g, &Method::GET, &path, &click(site)).is_err(),
                    "{path}"
                );
            }
            // With the CORS option, the operator's web application may embed downloads; an
            // empty option allows no origin and so changes nothing.
            let app = guard(Some("https://app.example"));
            let img = h(site, "no-cors", "image", None);
            assert_eq!(verdict(&app, &Method::GET, &data, &img), Ok(()));
            assert!(verdict(&guard(Some("")), &Method::GET, &data, &img).is_err());
        }
        for site in ["same-origin", "none"] {
            let h = h(site, "cors", "empty", None);
            assert_eq!(verdict(&g, &Method::POST, P, &h), Ok(()));
        }
    }

    #[test]
    fn a_rebound_name_is_refused_before_anything_else() {
        let g = guard(Some("*"));
        let h = headers(&[
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
        ]);
        let e = verdict(&g, &Method::GET, P, &h).unwrap_err();
        assert!(e.contains("--api-allowed-hosts evil.example"), "{e}");
        assert!(verdict(&g, &Method::OPTIONS, P, &h).is_err());
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert!(verdict(&g, &Method::GET, P, &h).is_err());
        let open = Guard {
            hosts: AllowedHosts::Any,
            cors: None,
        };
        let h = headers(&[
            ("host", "node.example:8080"),
            ("origin", "http://node.example:8080"),
        ]);
        assert_eq!(verdict(&open, &Method::POST, P, &h), Ok(()));
    }
}
