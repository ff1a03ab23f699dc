//! Helpers shared by the node's multi-node tests (`exchange.rs`, `bounds.rs`): loopback nodes
//! and swarms, pseudo-random data, uploads.

#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use bytes::Bytes;
use cairn_core::Cid;
use cairn_node::{
    Node, NodeConfig, Store, StoreConfig,
    metrics::NodeMetrics,
    net::{Keypair, NetConfig, NetEvent, NetworkHandle, start},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Network settings of every test node: one loopback TCP listener on a free port.
pub fn net_config() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    }
}

/// A node with an in-memory store configured by `store`, on loopback.
pub async fn node_with(cancel: &CancellationToken, store: StoreConfig) -> (Node, NetworkHandle) {
    let (net, events) = bare(cancel).await;
    let store = Store::in_memory(store).unwrap();
    let node = Node::with_network(
        store,
        NodeConfig::default(),
        net.clone(),
        events,
        cancel.clone(),
    );
    (node, net)
}

/// A node like [`node`] whose swarm and engine count in metric handles the test reads.
pub async fn node_with_metrics(
    cancel: &CancellationToken,
) -> (Node, NetworkHandle, cairn_node::net::Metrics, NodeMetrics) {
    let (net_metrics, node_metrics) = (cairn_node::net::Metrics::default(), NodeMetrics::default());
    let config = NetConfig {
        metrics: net_metrics.clone(),
        ..net_config()
    };
    let (net, events, _) = start(Keypair::generate_secp256k1(), config, cancel.clone())
        .await
        .unwrap();
    let node = Node::with_network(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig {
            metrics: node_metrics.clone(),
            ..NodeConfig::default()
        },
        net.clone(),
        events,
        cancel.clone(),
    );
    (node, net, net_metrics, node_metrics)
}

/// A node with a default in-memory store, on loopback.
pub async fn node(cancel: &CancellationToken) -> (Node, NetworkHandle) {
    node_with(cancel, StoreConfig::default()).await
}

/// A bare swarm (no engine) for a test double speaking the protocol itself.
pub async fn bare(cancel: &CancellationToken) -> (NetworkHandle, mpsc::Receiver<NetEvent>) {
    let (net, events, _) = start(Keypair::generate_secp256k1(), net_config(), cancel.clone())
        .await
        .unwrap();
    (net, events)
}

/// Connects `from` to `to` at `to`'s listen addresses.
pub async fn connect(from: &NetworkHandle, to: &NetworkHandle) {
    let addrs = to.listen_addrs().await.unwrap();
    from.connect(to.local_peer_id(), addrs).await.unwrap();
}

/// `len` pseudo-random bytes (xorshift64 from `seed`).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    // Spread the seed first: `seed | 1` alone gave seeds 2k and 2k + 1 the same bytes.
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Uploads `bytes` to `node` as a dataset named `f.bin`; returns the manifest CID.
pub async fn upload(node: &Node, bytes: &[u8]) -> Cid {
    let body = futures::stream::iter(
        bytes
            .chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    node.store_dataset(body, Some("f.bin".into()), None)
        .await
        .unwrap()
        .cid
}

/// Fetches manifest `cid` on `node`, which nobody has: asserts it is not found, sooner than the
/// engine's no-holder timeout (30 s), and returns how long that took.
pub async fn not_found_early(node: &Node, cid: Cid) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    let r = tokio::time::timeout(std::time::Duration::from_secs(60), node.fetch_manifest(cid))
        .await
        .expect("the fetch hangs");
    assert!(matches!(r, Err(cairn_node::NodeError::NotFound)), "{r:?}");
    let took = started.elapsed();
    assert!(
        took < cairn_node::engine::NO_HOLDER_TIMEOUT,
        "gave up after {took:?}"
    );
    took
}

/// A node on loopback with an in-memory store configured by `store` and node settings `config`.
pub async fn node_configured(
    cancel: &CancellationToken,
    store: StoreConfig,
    config: NodeConfig,
) -> (Node, NetworkHandle) {
    let (net, events) = bare(cancel).await;
    let node = Node::with_network(
        Store::in_memory(store).unwrap(),
        config,
        net.clone(),
        events,
        cancel.clone(),
    );
    (node, net)
}

/// A node like [`node_configured`] with default node settings, whose engine and downloads
/// count in the metric handles returned with it.
pub async fn metered_node(
    cancel: &CancellationToken,
    store: StoreConfig,
) -> (Node, NetworkHandle, NodeMetrics) {
    let metrics = NodeMetrics::default();
    let config = NodeConfig {
        metrics: metrics.clone(),
        ..NodeConfig::default()
    };
    let (node, net) = node_configured(cancel, store, config).await;
    (node, net, metrics)
}

/// Adds a loopback DHT that knows no other node to `node`, re-announcing every `reannounce`;
/// returns the node, the DHT and the DHT's metrics (`announcements` counts every `provide`).
pub async fn with_lone_dht(
    node: Node,
    cancel: &CancellationToken,
    reannounce: std::time::Duration,
) -> (
    Node,
    cairn_node::discovery::Discovery,
    cairn_node::discovery::Metrics,
) {
    let metrics = cairn_node::discovery::Metrics::default();
    let dht = cairn_node::discovery::Discovery::start(
        Keypair::generate_secp256k1(),
        cairn_node::discovery::DiscoveryConfig {
            metrics: metrics.clone(),
            ..cairn_node::discovery::DiscoveryConfig::new(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                0,
            )))
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let node = node.with_discovery(dht.clone(), reannounce, cancel.clone());
    (node, dht, metrics)
}

/// Polls `probe` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: std::time::Duration, mut probe: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !probe() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
