//! The node's use of the DHT beyond what the end-to-end tests cover: what it answers as its
//! own provider records follows what it stores.

mod common;

use std::{net::SocketAddr, time::Duration};

use cairn_node::{
    Node,
    discovery::{Discovery, DiscoveryConfig},
    net::Keypair,
};
use common::{data, node, upload};
use tokio_util::sync::CancellationToken;

/// How long the background announcement of an upload may take on loopback.
const ANNOUNCE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a node may take to join the DHT through a bootstrap node on loopback (a dial, a
/// peer-exchange round and a ping).
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// An uploaded dataset is announced, so GETPROVIDERS to this node answers its own record for
/// the manifest and the tree; deleting the dataset withdraws the manifest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dataset_is_no_longer_answered_as_ours() {
    let cancel = CancellationToken::new();
    let (node, _net) = node(&cancel).await;
    let dht = Discovery::start(
        Keypair::generate_secp256k1(),
        DiscoveryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        cancel.clone(),
    )
    .await
    .unwrap();
    let node = node.with_discovery(dht.clone(), Duration::from_secs(3600), cancel.clone());
    let cid = upload(&node, &data(200_000, 7)).await;
    let tree = node.manifest(cid).await.unwrap().tree_cid;
    let deadline = tokio::time::Instant::now() + ANNOUNCE_DEADLINE;
    while !(dht.announced(&cid.to_bytes()) && dht.announced(&tree.to_bytes())) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload was not announced within {ANNOUNCE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.delete(cid).await.unwrap();
    assert!(!dht.announced(&cid.to_bytes()), "the manifest is withdrawn");
    cancel.cancel();
}

/// A dataset announced while the routing table was empty reached nobody. It used to wait for
/// the next re-announce round (30 minutes by default; an hour here), so a restarted node was not
/// findable for that long. Once the table holds a node the node announces what it stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_announced_to_nobody_is_announced_once_the_table_fills() {
    let cancel = CancellationToken::new();
    let (node, _net) = node(&cancel).await;
    let local = || DiscoveryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    let dht = Discovery::start(Keypair::generate_secp256k1(), local(), cancel.clone())
        .await
        .unwrap();
    let node = node.with_discovery(dht.clone(), Duration::from_secs(3600), cancel.clone());
    let cid = upload(&node, &data(200_000, 11)).await;
    let deadline = tokio::time::Instant::now() + ANNOUNCE_DEADLINE;
    while !dht.announced(&cid.to_bytes()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload was not announced within {ANNOUNCE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dht.table_len(), 0, "nobody to tell yet");

    // The new node's held records are read from its metrics: a lookup from it would also reach
    // the announcing node, which answers its own record whether or not it announced it.
    let metrics = cairn_node::discovery::Metrics::default();
    let other = Discovery::start(
        Keypair::generate_secp256k1(),
        DiscoveryConfig {
            metrics: metrics.clone(),
            ..local()
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    dht.add_node(other.local_spr()).await.unwrap();
    let wait = ANNOUNCE_DEADLINE + cairn_node::JOIN_CHECK_INTERVAL;
    let deadline = tokio::time::Instant::now() + wait;
    // The manifest's record and the tree's.
    while metrics.provider_records.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dataset was not announced to the new node within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
}

/// A node with one key for libp2p and the DHT (as `cairn start` runs), bootstrapping through
/// `bootstrap` (libp2p multiaddrs ending in `/p2p/<peer id>`).
async fn dht_node(
    bootstrap: Vec<cairn_node::net::Multiaddr>,
    cancel: &CancellationToken,
) -> (Node, cairn_node::net::NetworkHandle, Discovery) {
    let key = Keypair::generate_secp256k1();
    // One outbound peer (the bootstrap node): nodes do not dial each other through peer
    // exchange, so what they find of each other they find through the DHT.
    let config = cairn_node::net::NetConfig {
        bootstrap,
        outbound_target: 1,
        ..common::net_config()
    };
    let (net, events, _) = cairn_node::net::start(key.clone(), config, cancel.clone())
        .await
        .unwrap();
    // Its provider records carry its libp2p addresses, as `cairn start` sets them.
    let dht = Discovery::start(
        key,
        DiscoveryConfig {
            provider_addrs: net.listen_addrs().await.unwrap(),
            ..DiscoveryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let node = Node::with_network(
        cairn_node::Store::in_memory(cairn_node::StoreConfig::default()).unwrap(),
        cairn_node::NodeConfig::default(),
        net.clone(),
        events,
        cancel.clone(),
    )
    .with_discovery(dht.clone(), Duration::from_secs(3600), cancel.clone());
    (node, net, dht)
}

/// A seed node ([`dht_node`] with no bootstrap) and its libp2p address with `/p2p/<id>`.
async fn seed(cancel: &CancellationToken) -> (Node, Discovery, cairn_node::net::Multiaddr) {
    let (seed, net, dht) = dht_node(Vec::new(), cancel).await;
    let addr = net
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .with(cairn_node::net::Protocol::P2p(net.local_peer_id()));
    (seed, dht, addr)
}

/// A node told of a bootstrap node by its libp2p address alone used to reach it over libp2p
/// but never join the DHT (which runs over UDP, on a port that address does not give). Peer
/// exchange now carries the answerer's signed DHT record, and the new node joins through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiaddr_bootstrap_node_also_joins_the_dht() {
    let cancel = CancellationToken::new();
    let (_seed, seed_dht, addr) = seed(&cancel).await;
    let (_node, _net, dht) = dht_node(vec![addr], &cancel).await;
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    while !dht.table().iter().any(|n| n.node_id == seed_dht.local_id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the DHT knows {} nodes after {JOIN_DEADLINE:?}, not the bootstrap node",
            dht.table_len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
}

/// Waits until `dht`'s routing table holds the node `id`.
async fn wait_joined(dht: &Discovery, id: cairn_node::discovery::NodeId) {
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    while !dht.table().iter().any(|n| n.node_id == id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not joined within {JOIN_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A manifest fetch gives up early once every connected peer lacks the manifest and the DHT
/// search came up empty; that must not cut short a fetch the DHT can answer. B and P join
/// through the seed (which lacks everything): B finds a dataset uploaded on P a moment before
/// (its search may run before P's announcement lands), and a CID nobody has is answered "not
/// found" before the engine's 30 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_gives_up_early_only_when_the_dht_knows_no_provider_either() {
    let cancel = CancellationToken::new();
    let (_seed, seed_dht, addr) = seed(&cancel).await;
    let (p, _p_net, p_dht) = dht_node(vec![addr.clone()], &cancel).await;
    let (b, _b_net, b_dht) = dht_node(vec![addr], &cancel).await;
    wait_joined(&p_dht, seed_dht.local_id()).await;
    wait_joined(&b_dht, seed_dht.local_id()).await;

    let original = data(5 * 65536 + 3, 12);
    let cid = upload(&p, &original).await;
    let m = tokio::time::timeout(ANNOUNCE_DEADLINE * 3, b.fetch_manifest(cid))
        .await
        .expect("the fetch hangs")
        .expect("B did not find P's dataset through the DHT");
    assert_eq!(m.dataset_size, original.len() as u64);

    let unknown = upload(&node(&cancel).await.0, &data(1000, 13)).await;
    common::not_found_early(&b, unknown).await;
    cancel.cancel();
}

/// A node in the DHT but with no libp2p peer (bootstrapped by a DHT record only) answers "not
/// found" for a CID the DHT knows no provider of once its searches came up empty, not after
/// the engine's 30 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_dht_but_no_peer_gives_up_early_too() {
    let cancel = CancellationToken::new();
    let (_seed, seed_dht, _) = seed(&cancel).await;
    let (b, b_net, b_dht) = dht_node(Vec::new(), &cancel).await;
    b_dht.add_node(seed_dht.local_spr()).await.unwrap();
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    while !b_dht.table().iter().any(|n| n.seen) {
        assert!(tokio::time::Instant::now() < deadline, "B did not join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        b_net.peers().await.unwrap().is_empty(),
        "B has a libp2p peer"
    );
    let unknown = upload(&node(&cancel).await.0, &data(1000, 14)).await;
    common::not_found_early(&b, unknown).await;
    cancel.cancel();
}
