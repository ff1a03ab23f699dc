//! Network routes: fetching datasets from peers, connecting, and the node's identity
//! (`codex-protocol.md` §9.1–9.2).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use cairn_node::{
    Node, NodeError,
    engine::PeerExchange,
    net::{Multiaddr, PeerId},
};
use serde::Serialize;

use crate::{
    ApiError,
    download::{self, Source},
    dto::DataItem,
    routes::cid_param,
};

/// The reference's 404 body when a manifest cannot be fetched from the network.
const NOT_FOUND_NETWORK: &str = "The requested CID could not be retrieved from the network.";

pub(crate) fn network_error(e: NodeError) -> ApiError {
    match e {
        NodeError::NotFound => ApiError::NotFound(NOT_FOUND_NETWORK),
        NodeError::NoNetwork => ApiError::Unavailable("This node has no network.".into()),
        // The block exchange's limit on pending wants: a load a client can cause, not a failure.
        NodeError::Fetch(cairn_node::engine::FetchError::Busy) => {
            ApiError::Unavailable("Too many blocks are being fetched; try again later.".into())
        }
        e @ NodeError::Fetch(cairn_node::engine::FetchError::ManifestMismatch { .. }) => {
            ApiError::Unprocessable(format!("{e}."))
        }
        e @ (NodeError::TooManyDownloads { .. } | NodeError::TooManyStreams { .. }) => {
            ApiError::Unavailable(format!("{e}; try again when one has ended."))
        }
        // Deleted between reading its manifest and reserving room for its blocks.
        NodeError::Store(cairn_node::StoreError::DatasetNotStored { .. }) => {
            ApiError::NotFound(NOT_FOUND_NETWORK)
        }
        other => other.into(),
    }
}

/// `POST /data/{cid}/network`: fetch the manifest, start a background download, answer the
/// manifest at once.
pub(crate) async fn download_background(
    State(node): State<Node>,
    Path(cid): Path<String>,
) -> Result<Json<DataItem>, ApiError> {
    let cid = cid_param(&cid)?;
    let manifest = node.download(cid).await.map_err(network_error)?;
    Ok(Json(DataItem::new(&cid, &manifest)))
}

/// `GET /data/{cid}/network/manifest`.
pub(crate) async fn network_manifest(
    State(node): State<Node>,
    Path(cid): Path<String>,
) -> Result<Json<DataItem>, ApiError> {
    let cid = cid_param(&cid)?;
    let manifest = node.fetch_manifest(cid).await.map_err(network_error)?;
    Ok(Json(DataItem::new(&cid, &manifest)))
}

/// `GET|HEAD /data/{cid}/network/stream`: stream the dataset (or the requested range) in
/// order, fetching what is missing.
pub(crate) async fn network_stream(
    State(node): State<Node>,
    Path(cid): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    download::serve(&node, &method, &headers, &cid, Source::Network).await
}

/// Addresses one `GET /connect` may give. libp2p tries a peer's addresses 8 at a time, each for
/// up to the transport's 20 s upgrade timeout, and the dial goes on after the client hung up:
/// unbounded, one request of a few thousand addresses that drop their SYNs kept 8 sockets busy
/// for over an hour (review). Sixteen bound a dial at about 40 s; a peer has a handful.
pub const MAX_CONNECT_ADDRS: usize = 16;

/// `GET /connect` calls dialling at once; one more is answered `503` at once. With
/// [`MAX_CONNECT_ADDRS`] they hold at most 64 sockets, whatever the number of clients.
pub const MAX_CONCURRENT_CONNECTS: usize = 8;

/// `GET /connect/{peerId}?addrs=<multiaddr>&addrs=…`.
pub(crate) async fn connect(
    State(node): State<Node>,
    Path(peer): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    dials: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Response, ApiError> {
    // The reference's text (its path decoder's error, seen on a live node).
    let peer: PeerId = peer
        .parse()
        .map_err(|_| ApiError::BadRequest("peerid: incorrect PeerId string".into()))?;
    if node.net().is_some_and(|n| n.local_peer_id() == peer) {
        return Err(ApiError::BadRequest(
            "Unable to dial peer: that is this node's own peer id".into(),
        ));
    }
    let mut addrs = Vec::new();
    for (k, v) in query {
        if k == "addrs" {
            if addrs.len() == MAX_CONNECT_ADDRS {
                return Err(ApiError::BadRequest(format!(
                    "Too many addresses: at most {MAX_CONNECT_ADDRS}"
                )));
            }
            let a: Multiaddr = v
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("Invalid address: {v}")))?;
            addrs.push(a);
        }
    }
    // Held until the dial has ended, by a task of its own: a client that hangs up drops this
    // handler, but not the dial, which the turn must go on counting.
    let Ok(turn) = dials.try_acquire_owned() else {
        return Err(ApiError::Unavailable(format!(
            "{MAX_CONCURRENT_CONNECTS} connects are in progress, the most this node runs at once; try again when one has ended."
        )));
    };
    if addrs.is_empty() {
        // Without addresses, ask the DHT for the peer's record (as the reference's findPeer).
        // That record carries the UDP discovery address; only its TCP addresses can be dialled,
        // so without any the swarm tries the addresses it already knows for the peer.
        let Some(dht) = node.discovery() else {
            return Err(ApiError::BadRequest("Unable to find Peer!".into()));
        };
        let Some(record) = dht.find_peer(&peer).await else {
            return Err(ApiError::BadRequest("Unable to find Peer!".into()));
        };
        addrs = record
            .addrs()
            .iter()
            .filter(|a| {
                a.iter()
                    .any(|p| matches!(p, cairn_node::net::Protocol::Tcp(_)))
            })
            .cloned()
            .collect();
    }
    let dial = {
        let node = node.clone();
        tokio::spawn(async move {
            let r = node.connect(peer, addrs).await;
            drop(turn);
            r
        })
    };
    let connected = dial
        .await
        .map_err(|e| ApiError::Internal(format!("the dial task failed: {e}")))?;
    match connected {
        Ok(()) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Successfully connected to peer",
        )
            .into_response()),
        Err(NodeError::NoNetwork) => Err(ApiError::Unavailable("This node has no network.".into())),
        Err(e) => {
            // The reference's answer, with the reason (a muxer or protocol mismatch, a refused
            // connection, a wrong peer id), which is also logged.
            tracing::info!(%peer, error = %e, "connect failed");
            Err(ApiError::BadRequest(format!("Unable to dial peer: {e}")))
        }
    }
}

/// Whether `Accept` prefers `text/plain`: the media range of the highest quality (`q`, 1 when
/// absent; of equal ones, the first) is `text/plain`. The reference answers text exactly then
/// (`preferredContentType()` of nim-chronos `httpserver.nim`, which orders by quality); taking
/// the first range listed answered text to `text/plain;q=0.5, application/json` (found by
/// review).
fn wants_text(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut best: Option<(f32, &str)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        if media.is_empty() {
            continue;
        }
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q.is_nan() || q <= 0.0 {
            continue; // not acceptable
        }
        if best.is_none_or(|(top, _)| q > top) {
            best = Some((q, media));
        }
    }
    best.is_some_and(|(_, media)| media.eq_ignore_ascii_case("text/plain"))
}

/// `GET /spr`: the node's DHT record (`spr:…`), text/plain when preferred by `Accept`, else
/// JSON `{"spr": …}`; 503 when the node runs no DHT (the reference: not ready).
pub(crate) async fn spr(
    State(node): State<Node>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let spr = node
        .discovery()
        .ok_or_else(|| {
            ApiError::Unavailable("No signed peer record: the DHT is not running.".into())
        })?
        .local_spr()
        .to_uri();
    if wants_text(&headers) {
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], spr).into_response())
    } else {
        Ok(Json(HashMap::from([("spr", spr)])).into_response())
    }
}

/// `GET /peerid`: text/plain when preferred by `Accept`, else JSON `{"id": …}`.
pub(crate) async fn peer_id(
    State(node): State<Node>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = node
        .net()
        .ok_or_else(|| ApiError::Unavailable("This node has no network.".into()))?
        .local_peer_id()
        .to_string();
    if wants_text(&headers) {
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], id).into_response())
    } else {
        Ok(Json(HashMap::from([("id", id)])).into_response())
    }
}

/// Block-exchange counters in `/debug/info` (a cairn extension).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExchangeJson {
    blocks_requested: u64,
    blocks_received: u64,
    duplicates: u64,
    rejected: u64,
    blocks_sent: u64,
    timeouts: u64,
    hedged: u64,
    pending: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerJson {
    peer_id: String,
    address: String,
    direction: &'static str,
    agent: Option<String>,
    score: f64,
    /// Seconds since the first connection to it.
    connected_secs: u64,
    /// Its part in the block exchange, when the node runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange: Option<PeerExchangeJson>,
}

/// One peer's part in the block exchange (a cairn extension; see
/// [`cairn_node::engine::PeerExchange`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerExchangeJson {
    blocks_received: u64,
    blocks_sent: u64,
    duplicates: u64,
    rejected: u64,
    requests: usize,
    request_limit: usize,
    blocks_per_sec: Option<f64>,
    wanted: usize,
}

impl From<PeerExchange> for PeerExchangeJson {
    fn from(e: PeerExchange) -> Self {
        PeerExchangeJson {
            blocks_received: e.blocks_received,
            blocks_sent: e.blocks_sent,
            duplicates: e.duplicates,
            rejected: e.rejected,
            requests: e.requests,
            request_limit: e.request_limit,
            // Tenths are all a reader needs; a raw estimate prints 17 digits.
            blocks_per_sec: e.blocks_per_sec.map(|r| (r * 10.0).round() / 10.0),
            wanted: e.wanted,
        }
    }
}

impl PeerJson {
    fn new(p: cairn_node::net::PeerInfo, exchange: &mut HashMap<PeerId, PeerExchange>) -> Self {
        PeerJson {
            peer_id: p.peer.to_string(),
            address: p.address.to_string(),
            direction: direction(p.direction),
            agent: p.agent,
            score: p.score,
            connected_secs: p.connected_for.as_secs(),
            exchange: exchange.remove(&p.peer).map(Into::into),
        }
    }
}

/// Each peer's part in the block exchange, by peer (empty for a node without an engine).
async fn exchange_by_peer(node: &Node) -> Result<HashMap<PeerId, PeerExchange>, ApiError> {
    let Some(engine) = node.engine() else {
        return Ok(HashMap::new());
    };
    let peers = engine
        .peers()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(peers.into_iter().map(|p| (p.peer, p)).collect())
}

fn direction(d: cairn_node::net::Direction) -> &'static str {
    match d {
        cairn_node::net::Direction::Inbound => "inbound",
        cairn_node::net::Direction::Outbound => "outbound",
    }
}

/// `GET /debug/peers` (a cairn extension): the peer manager's view.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugPeers {
    peers: Vec<PeerJson>,
    inbound: usize,
    outbound: usize,
    outbound_target: usize,
    max_inbound: u32,
    max_peers: u32,
    seed_mode: bool,
    /// Peers banned now for their score.
    banned: usize,
    book: BookJson,
    pex_bytes_sent: u64,
    pex_bytes_received: u64,
}

/// The address book's figures.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BookJson {
    /// Peers heard of, never connected to.
    new: usize,
    /// Peers connected to before.
    old: usize,
    /// Bans held by the book.
    banned: usize,
    /// Addresses refused for a while for a peer: another peer answered there.
    wrong_addrs: usize,
}

/// `GET /debug/peers`.
pub(crate) async fn debug_peers(State(node): State<Node>) -> Result<Response, ApiError> {
    let net = node
        .net()
        .ok_or_else(|| ApiError::Unavailable("This node has no network.".into()))?;
    let s = net
        .status()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut exchange = exchange_by_peer(&node).await?;
    let count = |d| s.peers.iter().filter(|p| p.direction == d).count();
    let out = DebugPeers {
        inbound: count(cairn_node::net::Direction::Inbound),
        outbound: count(cairn_node::net::Direction::Outbound),
        outbound_target: s.outbound_target,
        max_inbound: s.max_inbound,
        max_peers: s.max_peers,
        seed_mode: s.seed_mode,
        banned: s.banned,
        book: BookJson {
            new: s.book.new,
            old: s.book.old,
            banned: s.book.banned,
            wrong_addrs: s.book.wrong_addrs,
        },
        pex_bytes_sent: s.pex_bytes.0,
        pex_bytes_received: s.pex_bytes.1,
        peers: s
            .peers
            .into_iter()
            .map(|p| PeerJson::new(p, &mut exchange))
            .collect(),
    };
    let body = serde_json::to_string_pretty(&out).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugInfo {
    id: String,
    addrs: Vec<String>,
    repo: Option<String>,
    announce_addresses: Vec<String>,
    peers: Vec<PeerJson>,
    exchange: ExchangeJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    spr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<TableJson>,
    codex: HashMap<&'static str, &'static str>,
}

/// The DHT routing table in `/debug/info` (codex-protocol.md §9.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TableJson {
    local_node: DhtNodeJson,
    nodes: Vec<DhtNodeJson>,
}

/// One DHT node, with the reference's keys.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DhtNodeJson {
    node_id: String,
    peer_id: String,
    record: String,
    /// `ip:port`, or `null` when unknown (the reference's `Option[Address]`).
    address: Option<String>,
    seen: bool,
}

/// A DHT node's UDP address as the reference writes it: its `$` of `Address` is the IP's own
/// text, a colon and the port, with no brackets around an IPv6 address.
fn reference_address(addr: std::net::SocketAddr) -> String {
    format!("{}:{}", addr.ip(), addr.port())
}

fn table_json(dht: &cairn_node::discovery::Discovery) -> TableJson {
    let own = dht.local_spr();
    TableJson {
        local_node: DhtNodeJson {
            node_id: dht.local_id().to_reference_hex(),
            peer_id: dht.peer_id().to_string(),
            record: own.to_uri(),
            address: Some(reference_address(dht.dht_addr())),
            seen: false,
        },
        nodes: dht
            .table()
            .into_iter()
            .map(|n| DhtNodeJson {
                node_id: n.node_id.to_reference_hex(),
                peer_id: n.peer_id.to_string(),
                record: n.record.to_uri(),
                address: n.address.map(reference_address),
                seen: n.seen,
            })
            .collect(),
    }
}

/// `GET /debug/info`.
pub(crate) async fn debug_info(State(node): State<Node>) -> Result<Response, ApiError> {
    let unavailable = || ApiError::Unavailable("This node has no network.".into());
    let net = node.net().ok_or_else(unavailable)?;
    let engine = node.engine().ok_or_else(unavailable)?;
    let addrs: Vec<String> = net
        .listen_addrs()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut exchange = exchange_by_peer(&node).await?;
    let peers = net
        .peers()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into_iter()
        .map(|p| PeerJson::new(p, &mut exchange))
        .collect();
    let s = engine
        .stats()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // What the node announces: the addresses of its provider record, as the reference's
    // `node.discovery.announceAddrs` (with `--nat extip:` they carry that IP, not the
    // interface's). A node without the DHT announces nothing.
    let announce_addresses = node
        .discovery()
        .map(|d| {
            d.local_records()
                .provider
                .addrs()
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let info = DebugInfo {
        id: net.local_peer_id().to_string(),
        announce_addresses,
        addrs,
        repo: node.data_dir().map(|d| d.display().to_string()),
        peers,
        exchange: ExchangeJson {
            blocks_requested: s.blocks_requested,
            blocks_received: s.blocks_received,
            duplicates: s.duplicates,
            rejected: s.rejected,
            blocks_sent: s.blocks_sent,
            timeouts: s.timeouts,
            hedged: s.hedged,
            pending: s.pending,
        },
        spr: node.discovery().map(|d| d.local_spr().to_uri()),
        table: node.discovery().map(table_json),
        codex: HashMap::from([
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("CAIRN_GIT_REVISION")),
        ]),
    };
    let body =
        serde_json::to_string_pretty(&info).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Bytes a perf run moves each way when the request does not say: 64 MiB, a quarter of a
/// second or more on a path of up to 250 MB/s, and well within [`PERF_MAX_BYTES`].
pub(crate) const PERF_DEFAULT_BYTES: u64 = 64 * 1024 * 1024;

/// The query of `POST /debug/perf/{peerId}`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PerfQuery {
    upload: Option<u64>,
    download: Option<u64>,
}

/// The answer of `POST /debug/perf/{peerId}` (a cairn extension).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PerfJson {
    peer_id: String,
    upload_bytes: u64,
    download_bytes: u64,
    upload_seconds: f64,
    download_seconds: f64,
    /// Megabytes (10^6 bytes) per second.
    upload_mbps: f64,
    download_mbps: f64,
}

/// `POST /debug/perf/{peerId}?upload=BYTES&download=BYTES`: runs the `/perf/1.0.0` self-test
/// against a peer ([`cairn_node::net::perf`]) and answers what it measured.
pub(crate) async fn perf(
    State(node): State<Node>,
    Path(peer): Path<String>,
    Query(query): Query<PerfQuery>,
) -> Result<Response, ApiError> {
    use cairn_node::net::perf::PerfError;
    let peer: PeerId = peer
        .parse()
        .map_err(|_| ApiError::BadRequest("peerid: incorrect PeerId string".into()))?;
    let net = node
        .net()
        .ok_or_else(|| ApiError::Unavailable("This node has no network.".into()))?;
    if net.local_peer_id() == peer {
        return Err(ApiError::BadRequest(
            "That is this node's own peer id.".into(),
        ));
    }
    let upload = query.upload.unwrap_or(PERF_DEFAULT_BYTES);
    let download = query.download.unwrap_or(PERF_DEFAULT_BYTES);
    let report = net
        .perf(peer, upload, download)
        .await
        .map_err(|e| match e {
            PerfError::TooLarge => ApiError::BadRequest(format!("{e}.")),
            PerfError::Busy => ApiError::Unavailable(format!("{e}.")),
            other => ApiError::BadGateway(format!("{other}.")),
        })?;
    let out = PerfJson {
        peer_id: peer.to_string(),
        upload_bytes: report.uploaded,
        download_bytes: report.downloaded,
        upload_seconds: report.upload_time.as_secs_f64(),
        download_seconds: report.download_time.as_secs_f64(),
        upload_mbps: report.upload_rate() / 1e6,
        download_mbps: report.download_rate() / 1e6,
    };
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn the_highest_quality_media_range_decides() {
        assert!(wants_text(&accept("text/plain")));
        assert!(wants_text(&accept(
            "text/plain; charset=utf-8, application/json"
        )));
        assert!(!wants_text(&accept("application/json, text/plain")));
        // Quality first, then order.
        assert!(!wants_text(&accept("text/plain;q=0.5, application/json")));
        assert!(wants_text(&accept("application/json;q=0.1, text/plain")));
        assert!(wants_text(&accept(
            "application/json;q=0.4, TEXT/PLAIN;q=0.5;x=1, */*;q=0.2"
        )));
        assert!(!wants_text(&accept(
            "application/json;q=0.5, text/plain;q=0.5"
        )));
        assert!(!wants_text(&accept("*/*")));
        assert!(!wants_text(&accept("text/plain;q=0")));
        assert!(!wants_text(&accept("text/plainx")));
        assert!(!wants_text(&HeaderMap::new()));
    }
}
