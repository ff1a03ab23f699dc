//! The HTTP side of the client commands: URLs under the node's API base, sending requests with
//! one treatment of failures (a node that cannot be reached is [`exit::UNREACHABLE`]; an error
//! status goes through [`exit::for_status`], quoting the node's message), and the JSON the node
//! answers (`codex-protocol.md` §9), read leniently: unknown keys are ignored, keys that only
//! cairn or only the reference sends are optional.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    exit::{self, Failure},
    output,
};

/// The node's REST endpoint when neither `--api` nor `CAIRN_API` is given (the default
/// `--api-bindaddr` and `--api-port` of `cairn start`).
pub(crate) const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// How long opening the connection to the node may take before the node counts as
/// unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request that transfers no dataset (listing, deleting, info, connecting, …) may
/// take in all. Generous, because `connect` without addresses first looks the peer up in the
/// DHT. Uploads and downloads have no overall limit: they take as long as the data needs.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An upload or download in which nothing moves for this long fails as not answered in time
/// (exit 3): no answer to the request, no byte of the body from the node, no byte of an upload
/// taken by it. They have no overall limit, and a node that froze with its port still open
/// (stopped, its disk hung) held them for good (found by review). The node's own limits end
/// sooner: an upload that sends nothing for 30 s, a network stream whose next block no peer
/// has for 30 s.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Most characters of a node's error message quoted on stderr.
pub(crate) const MAX_ERROR_BODY_CHARS: usize = 300;

/// Parses `--api`: an `http://` URL naming a host (a path prefix is kept, for a node behind a
/// reverse proxy; the API base is appended to it). A URL that ends with the API base itself
/// (what `cairn start` prints) names the same node: the base is taken off.
pub(crate) fn parse_api_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim())
        .map_err(|e| format!("'{text}' is not a URL ({e}); expected e.g. {DEFAULT_API}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "'{text}': expected an http:// URL such as {DEFAULT_API} (the node's API speaks \
             plain HTTP)"
        ));
    }
    if url.host().is_none() || url.cannot_be_a_base() {
        return Err(format!("'{text}': the URL names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{text}': the URL must not have a query or fragment"
        ));
    }
    let base = cairn_api::API_BASE.trim_end_matches('/');
    if let Some(root) = url.path().trim_end_matches('/').strip_suffix(base) {
        let root = root.to_owned();
        url.set_path(if root.is_empty() { "/" } else { &root });
    }
    Ok(url)
}

/// Whether `url` names this machine: a loopback or unspecified address (`0.0.0.0`, `::`: what
/// `cairn start --api-bindaddr 0.0.0.0` prints, reached here as this machine), `localhost` or a
/// `*.localhost` name.
fn is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || ip.is_unspecified();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// A client of one node's REST API.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    root: Url,
    http: reqwest::Client,
}

impl Api {
    /// A client of the node at `root` (as `--api` gives it, without the API base).
    pub(crate) fn new(root: Url) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        // A node on this machine is reached directly, whatever `http_proxy` says: a proxy
        // would carry the data (and answer with its own errors) for a connection that never
        // leaves the host (found by review). A remote node still goes through the proxy the
        // environment names.
        if is_local(&root) {
            builder = builder.no_proxy();
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Api { root, http })
    }

    /// The node's address as given, for messages.
    pub(crate) fn shown(&self) -> &str {
        self.root.as_str().trim_end_matches('/')
    }

    /// The URL of the API path made of `segments` (each percent-encoded as one segment, so a
    /// CID or peer id typed by the user cannot change the path).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.root.clone();
        // `parse_api_url` only accepts URLs that can be a base, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(cairn_api::API_BASE.split('/').filter(|s| !s.is_empty()))
                .extend(segments);
        }
        url
    }

    /// A request to the API path made of `segments`.
    pub(crate) fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.request_to(method, self.url(segments))
    }

    /// A request to `url` (one of [`Api::url`]'s, with a query added).
    pub(crate) fn request_to(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends `req`. A transport failure is an error: [`exit::UNREACHABLE`] when the node could
    /// not be reached or did not answer in time. Any status is returned as it is.
    pub(crate) async fn send_raw(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> anyhow::Result<Response> {
        req.send().await.map_err(|e| self.transport_error(&e, what))
    }

    /// Sends `req` and fails unless the node answers with a success status (see
    /// [`Api::check`]).
    pub(crate) async fn send(&self, req: RequestBuilder, what: &str) -> anyhow::Result<Response> {
        let resp = self.send_raw(req, what).await?;
        Api::check(resp, what).await
    }

    /// `resp` if its status is a success; else an error with the status's exit code, naming
    /// `what` failed and quoting the node's message.
    pub(crate) async fn check(resp: Response, what: &str) -> anyhow::Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(status_error(what, status, &body).into())
    }

    /// `GET` the API path made of `segments` and decode its JSON answer.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        what: &str,
    ) -> anyhow::Result<T> {
        let req = self
            .request(Method::GET, segments)
            .header(header::ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT);
        let resp = self.send(req, what).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e, what))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{what}: the node's answer is not the JSON expected"))
    }

    /// The failure of a transfer in which nothing moved for [`STALL_TIMEOUT`].
    pub(crate) fn stalled(&self, what: &str) -> anyhow::Error {
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "{what}: the node at {} did not answer in time (nothing moved for {} s)",
                self.shown(),
                STALL_TIMEOUT.as_secs()
            ),
        )
        .into()
    }

    /// Classifies a failed request.
    fn transport_error(&self, e: &reqwest::Error, what: &str) -> anyhow::Error {
        let api = self.shown();
        let cause = cause(e);
        if e.is_connect() {
            Failure::new(
                exit::UNREACHABLE,
                format!("cannot reach the node at {api} ({cause}); is it running? (--api)"),
            )
            .into()
        } else if e.is_timeout() {
            Failure::new(
                exit::UNREACHABLE,
                format!("{what}: the node at {api} did not answer in time ({cause})"),
            )
            .into()
        } else {
            anyhow::anyhow!("{what}: the exchange with the node at {api} failed ({cause})")
        }
    }
}

/// The failure for an error `status` with `body`.
pub(crate) fn status_error(what: &str, status: StatusCode, body: &str) -> Failure {
    let body = output::one_line(body, MAX_ERROR_BODY_CHARS);
    let message = if body.is_empty() && status == StatusCode::NOT_FOUND {
        // The node's own 404s say what is missing; an empty one is a path it does not serve.
        format!(
            "{what}: the node answered {status} with no reason: no such API path there; is \
             --api the node's REST API address (e.g. {DEFAULT_API})?"
        )
    } else if body.is_empty() {
        format!("{what}: the node answered {status}")
    } else {
        format!("{what}: the node answered {status}: {body}")
    };
    Failure::new(exit::for_status(status), message)
}

/// The innermost cause of `e`, as a short phrase: "connection refused" rather than
/// "Connection refused (os error 111)".
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    short_cause(&inner.to_string())
}

/// Drops an ` (os error N)` suffix and lowercases a capital that starts a sentence.
pub(crate) fn short_cause(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => first
            .to_lowercase()
            .chain(text[first.len_utf8()..].chars())
            .collect(),
        _ => text.to_owned(),
    }
}

/// `GET /data`.
#[derive(Debug, Deserialize)]
pub(crate) struct DataList {
    /// The datasets.
    #[serde(default)]
    pub(crate) content: Vec<DataItem>,
}

/// One dataset: its manifest CID and manifest.
#[derive(Debug, Deserialize)]
pub(crate) struct DataItem {
    /// The manifest CID.
    pub(crate) cid: String,
    /// The manifest.
    pub(crate) manifest: ManifestJson,
}

/// A manifest, with the documented keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestJson {
    /// Root of the block tree.
    #[serde(default)]
    pub(crate) tree_cid: Option<String>,
    /// Bytes in the dataset.
    pub(crate) dataset_size: u64,
    /// Bytes per block.
    #[serde(default)]
    pub(crate) block_size: Option<u64>,
    /// File name recorded at upload.
    #[serde(default)]
    pub(crate) filename: Option<String>,
    /// MIME type recorded at upload.
    #[serde(default)]
    pub(crate) mimetype: Option<String>,
    /// Erasure-coded.
    #[serde(default)]
    pub(crate) protected: bool,
}

/// `GET /space`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpaceJson {
    /// Blocks stored.
    pub(crate) total_blocks: u64,
    /// The quota.
    pub(crate) quota_max_bytes: u64,
    /// Bytes stored.
    pub(crate) quota_used_bytes: u64,
    /// Bytes reserved by uploads and downloads in progress.
    pub(crate) quota_reserved_bytes: u64,
}

/// `GET /debug/info`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DebugInfo {
    /// The node's peer id.
    pub(crate) id: String,
    /// libp2p listen addresses.
    #[serde(default)]
    pub(crate) addrs: Vec<String>,
    /// Data directory.
    #[serde(default)]
    pub(crate) repo: Option<String>,
    /// Addresses announced to others.
    #[serde(default)]
    pub(crate) announce_addresses: Vec<String>,
    /// Connected peers (a cairn extension).
    #[serde(default)]
    pub(crate) peers: Vec<PeerJson>,
    /// Block-exchange counters (a cairn extension).
    #[serde(default)]
    pub(crate) exchange: Option<ExchangeJson>,
    /// The node's signed peer record.
    #[serde(default)]
    pub(crate) spr: Option<String>,
    /// The DHT routing table.
    #[serde(default)]
    pub(crate) table: Option<TableJson>,
    /// Version information.
    #[serde(default)]
    pub(crate) codex: Option<VersionJson>,
}

/// `codex` in `/debug/info`.
#[derive(Debug, Deserialize)]
pub(crate) struct VersionJson {
    /// The node's version.
    #[serde(default)]
    pub(crate) version: Option<String>,
    /// Its revision.
    #[serde(default)]
    pub(crate) revision: Option<String>,
}

/// A connected peer; read in the API's camelCase, printed by `--json` in snake_case.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase", serialize = "snake_case"))]
pub(crate) struct PeerJson {
    /// Its peer id.
    pub(crate) peer_id: String,
    /// The address of the connection.
    #[serde(default)]
    pub(crate) address: String,
    /// `inbound` or `outbound`.
    #[serde(default)]
    pub(crate) direction: String,
    /// Its agent version, when identified.
    #[serde(default)]
    pub(crate) agent: Option<String>,
    /// Its score (penalties from every protocol, decaying).
    #[serde(default)]
    pub(crate) score: f64,
    /// Seconds since it connected (from `/debug/peers`; absent from older `/debug/info`).
    #[serde(default)]
    pub(crate) connected_secs: Option<u64>,
    /// Its part in the block exchange (cairn only).
    #[serde(default)]
    pub(crate) exchange: Option<PeerExchangeJson>,
}

/// A peer's part in the block exchange; read in camelCase, printed in snake_case.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase", serialize = "snake_case"))]
pub(crate) struct PeerExchangeJson {
    /// Blocks accepted from it.
    pub(crate) blocks_received: u64,
    /// Blocks sent to it.
    pub(crate) blocks_sent: u64,
    /// Its deliveries dropped as duplicates.
    pub(crate) duplicates: u64,
    /// Its deliveries that failed verification.
    pub(crate) rejected: u64,
    /// Our requests it holds now.
    pub(crate) requests: usize,
    /// How many it may hold.
    pub(crate) request_limit: usize,
    /// Its measured delivery rate, in blocks per second.
    pub(crate) blocks_per_sec: Option<f64>,
    /// Blocks it asked for, not sent yet.
    pub(crate) wanted: usize,
}

/// `GET /debug/peers` (cairn only): connected peers and the peer manager's figures.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DebugPeers {
    /// Connected peers.
    pub(crate) peers: Vec<PeerJson>,
    /// The rest, printed as they came (in snake_case by `--json`).
    #[serde(flatten)]
    pub(crate) manager: ManagerJson,
}

/// The peer manager's figures; read in camelCase, printed in snake_case.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase", serialize = "snake_case"))]
pub(crate) struct ManagerJson {
    pub(crate) inbound: usize,
    pub(crate) outbound: usize,
    pub(crate) outbound_target: usize,
    pub(crate) max_inbound: u32,
    pub(crate) max_peers: u32,
    pub(crate) seed_mode: bool,
    /// Peers banned now for their score.
    pub(crate) banned: usize,
    pub(crate) book: BookJson,
    pub(crate) pex_bytes_sent: u64,
    pub(crate) pex_bytes_received: u64,
}

/// The address book's counts.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct BookJson {
    /// Heard of, never connected to.
    pub(crate) new: usize,
    /// Connected to before.
    pub(crate) old: usize,
    /// Bans the book holds.
    pub(crate) banned: usize,
    /// Addresses refused for a while for a peer (another peer answered there); absent from
    /// older nodes.
    #[serde(default, rename(deserialize = "wrongAddrs"))]
    pub(crate) wrong_addrs: usize,
}

/// Block-exchange counters; read in the API's camelCase, printed in snake_case.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(
    default,
    rename_all(deserialize = "camelCase", serialize = "snake_case")
)]
pub(crate) struct ExchangeJson {
    /// Blocks asked of peers.
    pub(crate) blocks_requested: u64,
    /// Blocks received.
    pub(crate) blocks_received: u64,
    /// Blocks received more than once.
    pub(crate) duplicates: u64,
    /// Blocks rejected (did not verify).
    pub(crate) rejected: u64,
    /// Blocks sent to peers.
    pub(crate) blocks_sent: u64,
    /// Requests that timed out.
    pub(crate) timeouts: u64,
    /// Requests also sent to a faster holder.
    pub(crate) hedged: u64,
    /// Requests outstanding.
    pub(crate) pending: u64,
}

/// The DHT routing table.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TableJson {
    /// This node.
    pub(crate) local_node: DhtNodeJson,
    /// The nodes in the table.
    #[serde(default)]
    pub(crate) nodes: Vec<DhtNodeJson>,
}

/// One DHT node; read in the API's camelCase, printed in snake_case.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase", serialize = "snake_case"))]
pub(crate) struct DhtNodeJson {
    /// Its DHT node id.
    pub(crate) node_id: String,
    /// Its peer id.
    #[serde(default)]
    pub(crate) peer_id: String,
    /// Its UDP address, when known: `null` for none (older cairn nodes sent `""`, also none).
    #[serde(default, deserialize_with = "non_empty")]
    pub(crate) address: Option<String>,
    /// Whether it has answered.
    #[serde(default)]
    pub(crate) seen: bool,
    /// Its signed peer record.
    #[serde(default)]
    pub(crate) record: String,
}

/// An optional string in which `null`, an absent key and `""` all mean none.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_nodes_are_known() {
        for (url, local) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.9.0.1", true),
            ("http://[::1]:8080", true),
            ("http://0.0.0.0:8080", true),
            ("http://[::]:8080", true),
            ("http://localhost:8080", true),
            ("http://Node.Localhost.", true),
            ("http://10.0.0.1:8080", false),
            ("http://[::2]:8080", false),
            ("http://example.org", false),
            ("http://localhost.example.org", false),
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert_eq!(super::is_local(&parsed), local, "{url}");
        }
    }

    use super::*;

    #[test]
    fn api_urls() {
        let api = Api::new(parse_api_url("http://127.0.0.1:8080").unwrap()).unwrap();
        assert_eq!(api.shown(), "http://127.0.0.1:8080");
        assert_eq!(
            api.url(&["data", "abc", "exists"]).as_str(),
            "http://127.0.0.1:8080/api/codex/v1/data/abc/exists"
        );
        // User input stays one segment.
        assert_eq!(
            api.url(&["data", "a/b?c"]).as_str(),
            "http://127.0.0.1:8080/api/codex/v1/data/a%2Fb%3Fc"
        );
        // A path prefix (reverse proxy) is kept, with or without a trailing slash.
        for root in ["http://host/cairn", "http://host/cairn/"] {
            let api = Api::new(parse_api_url(root).unwrap()).unwrap();
            assert_eq!(
                api.url(&["space"]).as_str(),
                "http://host/cairn/api/codex/v1/space"
            );
        }
        // The URL `cairn start` prints (the API base included) names the same node.
        for printed in [
            "http://127.0.0.1:8080/api/codex/v1",
            "http://127.0.0.1:8080/api/codex/v1/",
        ] {
            let api = Api::new(parse_api_url(printed).unwrap()).unwrap();
            assert_eq!(api.shown(), "http://127.0.0.1:8080");
            assert_eq!(
                api.url(&["space"]).as_str(),
                "http://127.0.0.1:8080/api/codex/v1/space"
            );
        }
        let api = Api::new(parse_api_url("http://host/cairn/api/codex/v1").unwrap()).unwrap();
        assert_eq!(
            api.url(&["space"]).as_str(),
            "http://host/cairn/api/codex/v1/space"
        );
        for bad in [
            "127.0.0.1:8080",
            "localhost",
            "https://host",
            "ftp://host",
            "http://host/?q=1",
            "",
        ] {
            assert!(parse_api_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn causes_are_short() {
        assert_eq!(
            short_cause("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(short_cause("dns error"), "dns error");
        assert_eq!(short_cause("IO error"), "IO error");
        assert_eq!(short_cause(""), "");
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(cause(&io), "connection refused");
    }

    #[test]
    fn error_statuses_name_what_failed() {
        let f = status_error(
            "deleting x",
            StatusCode::NOT_FOUND,
            "The requested CID could not be retrieved\n (Block not found).",
        );
        assert_eq!(f.code, exit::NOT_FOUND);
        assert_eq!(
            f.to_string(),
            "deleting x: the node answered 404 Not Found: The requested CID could not be \
             retrieved (Block not found)."
        );
        // An empty 404 is a path the node does not serve: likely a wrong --api.
        let f = status_error("listing the datasets", StatusCode::NOT_FOUND, "");
        assert_eq!(f.code, exit::NOT_FOUND);
        assert!(
            f.to_string()
                .contains("is --api the node's REST API address"),
            "{f}"
        );
        let f = status_error("x", StatusCode::INTERNAL_SERVER_ERROR, "  ");
        assert_eq!(
            (f.code, f.to_string()),
            (
                exit::FAILURE,
                "x: the node answered 500 Internal Server Error".into()
            )
        );
    }

    #[test]
    fn answers_are_read_leniently() {
        let info: DebugInfo = serde_json::from_str(
            r#"{"id":"16U","addrs":["/ip4/1.2.3.4/tcp/5"],"repo":"/d","spr":"spr:x",
                "announceAddresses":[],"codex":{"version":"0.1.0","revision":"r","contracts":{}},
                "table":{"localNode":{"nodeId":"ab","peerId":"16U","record":"spr:x",
                "address":"1.2.3.4:5","seen":false},"nodes":[]},"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(info.id, "16U");
        assert!(info.peers.is_empty() && info.exchange.is_none());
        assert_eq!(info.table.unwrap().local_node.node_id, "ab");
        let list: DataList = serde_json::from_str(
            r#"{"content":[{"cid":"z1","manifest":{"treeCid":"z2","datasetSize":5,
                "blockSize":65536,"filename":null,"mimetype":"text/plain","protected":false,
                "codec":"codex-manifest"}}]}"#,
        )
        .unwrap();
        assert_eq!(list.content[0].manifest.dataset_size, 5);
        assert_eq!(list.content[0].manifest.filename, None);
    }

    /// A reference node sends `"address": null` for a DHT node whose address it does not know
    /// (an `Option` in its JSON); `cairn info` and `cairn peers` read the table all the same
    /// (they failed: "invalid type: null, expected a string").
    #[test]
    fn a_dht_node_without_an_address_is_read() {
        let info: DebugInfo = serde_json::from_str(
            r#"{"id":"16U","addrs":[],"announceAddresses":[],
                "table":{"localNode":{"nodeId":"ab","peerId":"16U","record":"spr:x",
                "address":null,"seen":false},"nodes":[{"nodeId":"cd","peerId":"16V",
                "record":"spr:y","address":null,"seen":true},{"nodeId":"ef","peerId":"16W",
                "record":"spr:z","address":"1.2.3.4:5","seen":false},{"nodeId":"01",
                "peerId":"16X","record":"spr:w","address":"","seen":false},{"nodeId":"02",
                "peerId":"16Y","record":"spr:v","seen":false}]}}"#,
        )
        .unwrap();
        let table = info.table.unwrap();
        assert_eq!(table.local_node.address, None);
        let addresses: Vec<_> = table.nodes.iter().map(|n| n.address.as_deref()).collect();
        // Cairn's `""` and a missing key read as none too.
        assert_eq!(addresses, [None, Some("1.2.3.4:5"), None, None]);
    }
}
