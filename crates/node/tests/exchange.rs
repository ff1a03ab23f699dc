//! Multi-node block exchange in one process, over loopback TCP with the real swarm: downloads
//! from one and several providers, a provider killed mid-transfer, and a malicious peer that
//! speaks the real protocol (a bare `cairn-net` swarm driven by the test).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use cairn_blockexc::{Delivery, Frame, Message, WantEntry, WantType};
use cairn_core::{Block, BlockAddress};
use cairn_node::{
    Node, NodeConfig, Store, StoreConfig, StoreError,
    net::{NetEvent, NetworkHandle},
    pace::INITIAL_OUTSTANDING,
};
use futures::TryStreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

mod common;
use common::{bare, connect, data, node, node_with, node_with_metrics, upload};

const WAIT: Duration = Duration::from_secs(60);

async fn network_bytes(node: &Node, cid: cairn_core::Cid) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        let m = node.fetch_manifest(cid).await.unwrap();
        let parts: Vec<Bytes> = node
            .stream_network(&m)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        parts.concat()
    })
    .await
    .expect("download timed out")
}

/// Waits (up to [`WAIT`]) until `node` holds dataset `cid` whole; fails with `what` if not.
async fn whole_here(node: &Node, cid: cairn_core::Cid, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(m) = node.manifest(cid).await
            && node
                .check_local(&m, cairn_node::ByteRange::full(m.download_size()))
                .await
                .is_ok()
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn local_bytes(node: &Node, cid: cairn_core::Cid) -> Vec<u8> {
    let m = node.manifest(cid).await.unwrap();
    let parts: Vec<Bytes> = node.stream_dataset(&m).try_collect().await.unwrap();
    parts.concat()
}

/// Upload on A; B downloads; C downloads from A and B at once; all bytes equal, and both A and
/// B served blocks to C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_download_from_one_and_two_providers() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let (c, nc) = node(&cancel).await;
    let original = data(300 * 65536 + 12345, 1);
    let cid = upload(&a, &original).await;

    connect(&nb, &na).await;
    let got_b = tokio::time::timeout(WAIT, b.download_and_wait(cid))
        .await
        .expect("B timed out")
        .unwrap();
    assert_eq!(got_b.dataset_size, original.len() as u64);
    assert_eq!(local_bytes(&b, cid).await, original, "B's stored copy");
    assert_eq!(b.list().await.unwrap().len(), 1, "B lists the dataset");
    // B holds the whole dataset, so it keeps the tree once instead of the proofs the leaves
    // came with; what it serves C below comes from that tree (C checks every proof).
    settled(&b).await;

    let sent_a_before = a.engine().unwrap().stats().await.unwrap().blocks_sent;
    let sent_b_before = b.engine().unwrap().stats().await.unwrap().blocks_sent;
    connect(&nc, &na).await;
    connect(&nc, &nb).await;
    assert_eq!(network_bytes(&c, cid).await, original, "C's stream");
    assert_eq!(local_bytes(&c, cid).await, original, "C's stored copy");
    let sent_a = a.engine().unwrap().stats().await.unwrap().blocks_sent - sent_a_before;
    let sent_b = b.engine().unwrap().stats().await.unwrap().blocks_sent - sent_b_before;
    assert!(
        sent_a > 0 && sent_b > 0,
        "C fetched from both: A sent {sent_a}, B sent {sent_b}"
    );
    let stats = c.engine().unwrap().stats().await.unwrap();
    assert_eq!(
        stats.blocks_received, 302,
        "300 full blocks + 1 partial + the manifest"
    );
    assert_eq!(stats.rejected, 0);
    // Each side's per-peer figures agree: what C accepted from A and from B adds up to every
    // block it accepted, and neither accepted more from a provider than that provider says it
    // sent C (a hedged request may have been sent by both, the copy that lost a duplicate), nor
    // did a provider send C more than it sent in all; each provider was measured.
    let c_peers = c.engine().unwrap().peers().await.unwrap();
    let at_c = |n: &cairn_node::net::NetworkHandle| {
        c_peers
            .iter()
            .find(|p| p.peer == n.local_peer_id())
            .unwrap_or_else(|| panic!("not among C's exchange peers: {c_peers:?}"))
    };
    let to_c = |x: &Node| {
        let (engine, nc_id) = (x.engine().unwrap().clone(), nc.local_peer_id());
        async move {
            let peers = engine.peers().await.unwrap();
            peers
                .into_iter()
                .find(|p| p.peer == nc_id)
                .expect("C among the provider's exchange peers")
        }
    };
    let (from_a, from_b) = (at_c(&na), at_c(&nb));
    assert_eq!(from_a.blocks_received + from_b.blocks_received, 302);
    for (x, from_x, before) in [(&a, from_a, sent_a_before), (&b, from_b, sent_b_before)] {
        let to = to_c(x).await.blocks_sent;
        let all = x.engine().unwrap().stats().await.unwrap().blocks_sent - before;
        assert!(
            from_x.blocks_received <= to && to <= all,
            "C accepted {}, the provider sent C {to} of {all}",
            from_x.blocks_received
        );
    }
    for p in [from_a, from_b] {
        assert_eq!((p.requests, p.rejected, p.blocks_sent), (0, 0, 0), "{p:?}");
        assert!(p.blocks_per_sec.is_some_and(|r| r > 0.0), "{p:?}");
        let limits = cairn_node::pace::MIN_OUTSTANDING..=cairn_node::pace::MAX_OUTSTANDING;
        assert!(limits.contains(&p.request_limit), "{p:?}");
    }
    settled(&c).await;
    cancel.cancel();
}

/// A download that cannot fit in the quota left is refused before any block is fetched, with
/// the quota error (HTTP 507 in the API), instead of fetching most of the dataset and failing
/// at the end; a dataset that fits downloads on the same node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_does_not_fit_is_refused_up_front() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node_with(
        &cancel,
        StoreConfig {
            quota_bytes: 1 << 20,
            ..StoreConfig::default()
        },
    )
    .await;
    let big = upload(&a, &data(40 * 65536, 7)).await;
    let small_bytes = data(5 * 65536, 8);
    let small = upload(&a, &small_bytes).await;
    connect(&nb, &na).await;
    let r = tokio::time::timeout(WAIT, b.download_and_wait(big))
        .await
        .expect("B timed out");
    assert!(
        matches!(
            r,
            Err(cairn_node::NodeError::Store(StoreError::QuotaExceeded { needed, .. }))
                if needed == 40 * 65536
        ),
        "{r:?}"
    );
    let stats = b.engine().unwrap().stats().await.unwrap();
    assert_eq!(stats.blocks_received, 1, "only the manifest was fetched");
    // Nothing of the refused dataset stays listed (its manifest was fetched for the request).
    assert!(
        b.list().await.unwrap().is_empty(),
        "the refused dataset is listed"
    );
    assert_eq!(b.space().await.unwrap().quota_used_bytes, 0);
    tokio::time::timeout(WAIT, b.download_and_wait(small))
        .await
        .expect("B timed out")
        .unwrap();
    assert_eq!(local_bytes(&b, small).await, small_bytes);
    cancel.cancel();
}

/// A client that stops reading a network stream does not hold the download's room (and
/// memory) for good: after the stall limit the download stops and its reservation goes back,
/// and another download of the dataset then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_reader_gives_the_room_back() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (net, events) = common::bare(&cancel).await;
    let b = Node::with_network(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig {
            reader_stall_timeout: Duration::from_millis(300),
            ..NodeConfig::default()
        },
        net.clone(),
        events,
        cancel.clone(),
    );
    let original = data(200 * 65536, 12);
    let cid = upload(&a, &original).await;
    connect(&net, &na).await;
    let m = b.fetch_manifest(cid).await.unwrap();
    let mut stalled = b.stream_network(&m).unwrap();
    // One chunk read, then nothing: the reservation is held while the stream is live...
    let first = tokio::time::timeout(WAIT, stalled.try_next())
        .await
        .expect("no first chunk");
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    assert!(b.space().await.unwrap().quota_reserved_bytes > 0);
    // ...and goes back once the reader has taken nothing for the stall limit.
    tokio::time::timeout(WAIT, async {
        while b.space().await.unwrap().quota_reserved_bytes > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled stream kept its reservation");
    drop(stalled);
    assert_eq!(network_bytes(&b, cid).await, original);
    cancel.cancel();
}

/// A store too full for even the manifest answers a network download with the quota error
/// (HTTP 507), as an upload would, not with an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_does_not_fit_is_the_quota_error() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node_with(
        &cancel,
        StoreConfig {
            quota_bytes: 16,
            ..StoreConfig::default()
        },
    )
    .await;
    let cid = upload(&a, &data(3 * 65536, 9)).await;
    connect(&nb, &na).await;
    let r = tokio::time::timeout(WAIT, b.download_and_wait(cid))
        .await
        .expect("B timed out");
    assert!(
        matches!(
            r,
            Err(cairn_node::NodeError::Store(StoreError::QuotaExceeded {
                quota: 16,
                ..
            }))
        ),
        "{r:?}"
    );
    assert!(b.list().await.unwrap().is_empty());
    cancel.cancel();
}

/// Two downloads that each fit in the quota left, but not both: one gets the room and
/// completes, the other is refused before it fetches anything. Before, both started on the same
/// free space, both failed, and the partial data of both filled the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_that_do_not_both_fit_do_not_both_fail() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node_with(
        &cancel,
        StoreConfig {
            quota_bytes: 60 * 65536,
            ..StoreConfig::default()
        },
    )
    .await;
    let one = data(40 * 65536, 21);
    let two = data(40 * 65536, 22);
    let (c1, c2) = (upload(&a, &one).await, upload(&a, &two).await);
    connect(&nb, &na).await;
    let (r1, r2) = tokio::time::timeout(WAIT, async {
        tokio::join!(b.download_and_wait(c1), b.download_and_wait(c2))
    })
    .await
    .expect("B timed out");
    let refused = |r: &Result<_, cairn_node::NodeError>| {
        matches!(
            r,
            Err(cairn_node::NodeError::Store(
                StoreError::QuotaExceeded { .. }
            ))
        )
    };
    assert!(
        (r1.is_ok() && refused(&r2)) || (refused(&r1) && r2.is_ok()),
        "{r1:?} / {r2:?}"
    );
    let (won, bytes) = if r1.is_ok() { (c1, &one) } else { (c2, &two) };
    assert_eq!(&local_bytes(&b, won).await, bytes);
    let space = b.space().await.unwrap();
    assert_eq!(space.quota_reserved_bytes, 0);
    assert!(
        space.quota_used_bytes < 41 * 65536,
        "only the winner's blocks (and two manifests) are stored: {space:?}"
    );
    cancel.cancel();
}

/// A dataset deleted on the downloading node stops its download with a clear error, and
/// nothing of it stays: before, the leaves still arriving made the dataset anew with no
/// manifest naming it, which no delete or maintenance pass could reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_deleted_while_it_downloads_stops_and_leaves_nothing() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let cid = upload(&a, &data(60 * 65536, 9)).await;
    connect(&nb, &na).await;
    // The manifest is stored (so the dataset is listed), then deleted before the blocks come.
    let m = tokio::time::timeout(WAIT, b.fetch_manifest(cid))
        .await
        .expect("B timed out")
        .unwrap();
    b.delete(cid).await.unwrap();
    let r: Result<Vec<Bytes>, _> = tokio::time::timeout(WAIT, async {
        b.stream_network(&m).unwrap().try_collect().await
    })
    .await
    .expect("B timed out");
    assert!(
        matches!(
            r,
            Err(cairn_node::NodeError::Store(
                StoreError::DatasetNotStored { .. }
            ))
        ),
        "{r:?}"
    );
    let stats = b.engine().unwrap().stats().await.unwrap();
    assert_eq!(stats.blocks_received, 1, "only the manifest was fetched");
    let store = b.store().clone();
    tokio::task::spawn_blocking(move || store.reclaim_now())
        .await
        .unwrap()
        .unwrap();
    let space = b.space().await.unwrap();
    assert_eq!((space.quota_used_bytes, space.total_blocks), (0, 0));
    assert!(b.list().await.unwrap().is_empty());
    cancel.cancel();
}

/// Waits until `node`'s store keeps no proof in a leaf row and some tree: a finished download
/// stores its dataset's tree once, in the background, after the last block.
async fn settled(node: &Node) {
    tokio::time::timeout(WAIT, async {
        loop {
            let store = node.store().clone();
            let (chunks, proof_bytes) = tokio::task::spawn_blocking(move || store.proof_storage())
                .await
                .unwrap()
                .unwrap();
            if chunks > 0 && proof_bytes == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the downloaded dataset's tree was not stored once");
}

/// A provider is stopped mid-transfer while another holds the data: the download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_killed_mid_transfer() {
    let cancel = CancellationToken::new();
    let a_cancel = CancellationToken::new();
    let (a, na) = node(&a_cancel).await;
    let (b, nb) = node(&cancel).await;
    let (c, nc) = node(&cancel).await;
    let original = data(400 * 65536, 2);
    let cid = upload(&a, &original).await;
    connect(&nb, &na).await;
    tokio::time::timeout(WAIT, b.download_and_wait(cid))
        .await
        .expect("B timed out")
        .unwrap();

    connect(&nc, &na).await;
    connect(&nc, &nb).await;
    let m = c.fetch_manifest(cid).await.unwrap();
    let mut stream = c.stream_network(&m).unwrap();
    let mut got = Vec::new();
    let result = tokio::time::timeout(WAIT, async {
        let mut killed = false;
        while let Some(part) = stream.try_next().await.unwrap() {
            got.extend_from_slice(&part);
            if !killed && got.len() >= 50 * 65536 {
                killed = true;
                a_cancel.cancel(); // A's swarm and engine stop; its connections drop
            }
        }
        killed
    })
    .await;
    assert_eq!(result, Ok(true), "download did not finish after the kill");
    assert_eq!(got, original);
    drop(a);
    cancel.cancel();
}

/// What the malicious peer does when asked for a block.
#[derive(Debug, Clone, Copy)]
enum Attack {
    WrongData,
    BadProof,
    ProofForOtherIndex,
    OversizedFrame,
    GarbageProtobuf,
    WantListFlood,
    /// Claims every block and never delivers: its requests go to the honest peer too once they
    /// have waited (hedging), and it is penalised after the engine's activity timeout, although
    /// the honest peer's deliveries took every request away from it.
    Silent,
}

/// A test double: a bare swarm that claims to have everything and answers block requests with
/// `attack`. It holds a real copy of the dataset so its lies are well-formed.
async fn malicious_peer(
    mut events: mpsc::Receiver<NetEvent>,
    net: NetworkHandle,
    honest: Store,
    attack: Attack,
    asked: Arc<Notify>,
) {
    while let Some(ev) = events.recv().await {
        let NetEvent::Message { peer, message } = ev else {
            continue;
        };
        let haves: Vec<_> = message
            .wantlist
            .iter()
            .filter(|e| e.want_type == WantType::Have && !e.cancel)
            .map(|e| cairn_blockexc::BlockPresence {
                address: e.address,
                presence: cairn_blockexc::Presence::Have,
            })
            .collect();
        if !haves.is_empty() {
            let _ = net.send(peer, &Message::presences(haves)).await;
        }
        for e in message
            .wantlist
            .iter()
            .filter(|e| e.want_type == WantType::Block && !e.cancel)
        {
            let BlockAddress::Leaf { tree, index } = e.address else {
                // Serve the manifest honestly so the victim proceeds to leaves.
                if let BlockAddress::Block(cid) = e.address
                    && let Ok(Some(b)) = honest.get_block(&cid)
                {
                    let _ = net
                        .send(
                            peer,
                            &Message::deliveries(vec![Delivery {
                                block: b,
                                address: e.address,
                                proof: None,
                            }]),
                        )
                        .await;
                }
                continue;
            };
            let Ok(Some((block, proof))) = honest.get_leaf(&tree, index) else {
                continue;
            };
            // Asked for a leaf: the honest node may join now (an attack may block this task,
            // e.g. writing an oversized frame the victim stopped reading).
            asked.notify_one();
            let lie = match attack {
                Attack::Silent => None,
                Attack::WrongData => Some(Delivery {
                    block: Block::from_parts_unchecked(
                        *block.cid(),
                        Bytes::from(vec![0xee; 65536]),
                    ),
                    address: e.address,
                    proof: Some(proof),
                }),
                Attack::BadProof => {
                    let mut p = proof.clone();
                    if let Some(n) = p.path.first_mut() {
                        n[0] ^= 1;
                    } else {
                        p.path.push([7; 32]);
                    }
                    Some(Delivery {
                        block,
                        address: e.address,
                        proof: Some(p),
                    })
                }
                Attack::ProofForOtherIndex => {
                    // A valid block and proof, but of another index, under this address.
                    let other = (index + 1) % proof.nleaves;
                    let Ok(Some((ob, op))) = honest.get_leaf(&tree, other) else {
                        continue;
                    };
                    Some(Delivery {
                        block: ob,
                        address: e.address,
                        proof: Some(op),
                    })
                }
                Attack::OversizedFrame => {
                    let _ = net
                        .send_frame(
                            peer,
                            Frame::from_body(&vec![0u8; cairn_blockexc::MAX_FRAME_BYTES + 1]),
                        )
                        .await;
                    None
                }
                Attack::GarbageProtobuf => {
                    let _ = net
                        .send_frame(peer, Frame::from_body(&[0x0f, 0xff, 0xff, 0xff, 0x0a]))
                        .await;
                    None
                }
                Attack::WantListFlood => {
                    let entries = cairn_blockexc::MAX_WANTLIST_ENTRIES_RECEIVED as u64 + 1;
                    let flood: Vec<WantEntry> = (0..entries)
                        .map(|i| {
                            WantEntry::block(BlockAddress::Leaf {
                                tree,
                                index: 1_000_000 + i,
                            })
                        })
                        .collect();
                    let body = Message::wants(flood, false).encode();
                    let _ = net.send_frame(peer, Frame::from_body(&body)).await;
                    None
                }
            };
            if let Some(d) = lie {
                let _ = net.send(peer, &Message::deliveries(vec![d])).await;
            }
        }
    }
}

/// Connects the honest provider `na` to the victim `nv` once the liar has answered a leaf
/// request.
async fn honest_joins(asked: &Notify, nv: &NetworkHandle, na: &NetworkHandle) {
    tokio::time::timeout(WAIT, asked.notified())
        .await
        .expect("the liar was never asked for a leaf");
    connect(nv, na).await;
}

async fn run_attack(attack: Attack) {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (v, nv) = node(&cancel).await;
    let original = data(40 * 65536 + 7, 3);
    let cid = upload(&a, &original).await;

    let (nm, m_events) = bare(&cancel).await;
    let asked = Arc::new(Notify::new());
    tokio::spawn(malicious_peer(
        m_events,
        nm.clone(),
        a.store().clone(),
        attack,
        asked.clone(),
    ));
    // The victim meets the liar first and alone, so the liar is asked for leaves; the honest
    // node joins once it has been (had both been there from the start, the honest node could
    // answer every `WantHave` first and the liar never be asked).
    connect(&nv, &nm).await;
    let (got, ()) = tokio::join!(network_bytes(&v, cid), honest_joins(&asked, &nv, &na));
    assert_eq!(got, original, "{attack:?}: download");
    assert_eq!(
        local_bytes(&v, cid).await,
        original,
        "{attack:?}: stored copy"
    );
    // Nothing but the dataset was stored: 41 leaves and the manifest, counters exact.
    let audit = v.store().audit().unwrap();
    assert_eq!(audit.blocks_actual, 42, "{attack:?}: {audit:?}");
    assert_eq!(
        audit.used_actual, audit.used_recorded,
        "{attack:?}: {audit:?}"
    );
    // The liar was penalised.
    let score = tokio::time::timeout(WAIT, async {
        loop {
            let peers = nv.peers().await.unwrap();
            match peers.iter().find(|p| p.peer == nm.local_peer_id()) {
                None => return f64::NEG_INFINITY, // disconnected (banned)
                Some(p) if p.score < 0.0 => return p.score,
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{attack:?}: liar never penalised"));
    assert!(score < 0.0);
    let stats = v.engine().unwrap().stats().await.unwrap();
    if matches!(attack, Attack::BadProof | Attack::ProofForOtherIndex) {
        assert!(
            stats.rejected > 0,
            "{attack:?}: rejected {}",
            stats.rejected
        );
    }
    cancel.cancel();
}

/// The metric handles see what the engine and the swarm see: a download from an honest
/// provider beside a liar sending bad proofs counts its blocks as accepted (as many as the
/// engine's own counter) and the lies as rejected, a request latency per answered request, the
/// liar's fatal penalty, two outbound peers, one completed download with every block from the
/// network; the provider counts the blocks it sent and its inbound peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_download_beside_a_liar() {
    let cancel = CancellationToken::new();
    let (a, na, a_net, a_node) = node_with_metrics(&cancel).await;
    let (v, nv, v_net, v_node) = node_with_metrics(&cancel).await;
    let original = data(40 * 65536 + 7, 5);
    let cid = upload(&a, &original).await;
    let (nm, m_events) = bare(&cancel).await;
    let asked = Arc::new(Notify::new());
    tokio::spawn(malicious_peer(
        m_events,
        nm.clone(),
        a.store().clone(),
        Attack::BadProof,
        asked.clone(),
    ));
    connect(&nv, &nm).await;
    let (got, ()) = tokio::join!(network_bytes(&v, cid), honest_joins(&asked, &nv, &na));
    assert_eq!(got, original);

    let stats = v.engine().unwrap().stats().await.unwrap();
    assert_eq!(v_node.blocks_accepted.get(), stats.blocks_received);
    assert_eq!(stats.blocks_received, 42, "41 leaves and the manifest");
    assert_eq!(v_node.blocks_rejected.get(), stats.rejected);
    assert!(stats.rejected > 0, "the liar's proofs were not rejected");
    assert_eq!(v_node.block_requests.get(), stats.blocks_requested);
    assert!(
        v_node.block_request_duration.count() >= stats.blocks_received + stats.rejected,
        "a latency per answered request"
    );
    assert_eq!(v_node.downloads.completed.count(), 1);
    assert_eq!(v_node.downloads.failed.count(), 0);
    assert_eq!(v_node.downloads.active.get(), 0);
    assert_eq!(v_node.downloads.blocks_network.get(), 41);
    assert_eq!(v_node.downloads.blocks_local.get(), 0);
    assert!(v_net.penalties.fatal.get() >= 1);
    assert_eq!(v_net.peers_inbound.get(), 0);
    assert!(v_net.blockexc.bytes_received.get() >= original.len() as u64);
    // The liar may be banned and disconnected by now.
    let outbound = v_net.peers_outbound.get();
    assert!((1..=2).contains(&outbound), "{outbound}");
    assert_eq!(a_net.peers_inbound.get(), 1);
    assert_eq!(a_net.peers_outbound.get(), 0);
    // Every leaf came from the provider (the liar's were all rejected); its count of blocks
    // sent lands when each write completes.
    tokio::time::timeout(WAIT, async {
        while a_node.blocks_sent.get() < 41 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the provider never counted its blocks");
    assert!(a_net.blockexc.bytes_sent.get() > 0);
    assert_eq!(a_node.blocks_accepted.get(), 0);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_wrong_data() {
    run_attack(Attack::WrongData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_bad_proof() {
    run_attack(Attack::BadProof).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_proof_for_other_index() {
    run_attack(Attack::ProofForOtherIndex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_oversized_frame() {
    run_attack(Attack::OversizedFrame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_garbage_protobuf() {
    run_attack(Attack::GarbageProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_loses_its_requests() {
    run_attack(Attack::Silent).await;
}

/// A test double for an honest but slow provider: it claims every block, then delivers what
/// it was asked for (real blocks, leaves with their proofs) in the order asked, one block every
/// `every`, and drops what is cancelled before its turn, as a node behind a slow link would.
/// `delivered` counts what it sent.
async fn slow_peer(
    mut events: mpsc::Receiver<NetEvent>,
    net: NetworkHandle,
    honest: Store,
    every: Duration,
    delivered: Arc<AtomicUsize>,
) {
    let mut queue: VecDeque<BlockAddress> = VecDeque::new();
    let mut asker = None;
    let mut turn = tokio::time::interval(every);
    turn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                let NetEvent::Message { peer, message } = ev else { continue };
                asker = Some(peer);
                let mut haves = Vec::new();
                for e in &message.wantlist {
                    if e.cancel {
                        queue.retain(|a| *a != e.address);
                    } else if e.want_type == WantType::Block {
                        queue.push_back(e.address);
                    } else {
                        haves.push(cairn_blockexc::BlockPresence {
                            address: e.address,
                            presence: cairn_blockexc::Presence::Have,
                        });
                    }
                }
                if !haves.is_empty() {
                    let _ = net.send(peer, &Message::presences(haves)).await;
                }
            }
            _ = turn.tick() => {
                let (Some(peer), Some(address)) = (asker, queue.pop_front()) else { continue };
                let delivery = match address {
                    BlockAddress::Leaf { tree, index } => match honest.get_leaf(&tree, index) {
                        Ok(Some((block, proof))) => Delivery { block, address, proof: Some(proof) },
                        _ => continue,
                    },
                    BlockAddress::Block(cid) => match honest.get_block(&cid) {
                        Ok(Some(block)) => Delivery { block, address, proof: None },
                        _ => continue,
                    },
                };
                if net.send(peer, &Message::deliveries(vec![delivery])).await.is_ok() {
                    delivered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A slow provider does not set the pace of a download that a fast one can serve: the
/// downloader asks the slow peer for only a few blocks (it is unmeasured at first, so it gets
/// some), asks the fast one again for those that wait too long there (hedging), and finishes
/// long before the slow peer could have delivered its share. The slow peer is not penalised.
/// Before pacing and hedging, the slow peer got about as many requests as the fast one and the
/// in-order download waited for each of them, at one block a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_does_not_hold_up_a_download() {
    const SLOW_EVERY: Duration = Duration::from_secs(1);
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (v, nv) = node(&cancel).await;
    let original = data(200 * 65536 + 99, 8);
    let cid = upload(&a, &original).await;
    let (ns, s_events) = bare(&cancel).await;
    let delivered = Arc::new(AtomicUsize::new(0));
    tokio::spawn(slow_peer(
        s_events,
        ns.clone(),
        a.store().clone(),
        SLOW_EVERY,
        delivered.clone(),
    ));
    connect(&nv, &ns).await;
    connect(&nv, &na).await;
    assert_eq!(network_bytes(&v, cid).await, original);
    assert_eq!(local_bytes(&v, cid).await, original, "stored copy");
    let slow = delivered.load(Ordering::SeqCst);
    let stats = v.engine().unwrap().stats().await.unwrap();
    assert!(
        slow <= 3,
        "the slow peer delivered {slow} blocks at one a second: the download waited for it \
         ({stats:?})"
    );
    // It was asked for what an unmeasured peer may hold (and the manifest, maybe) and for a
    // few more while its estimate came down; those went to the fast peer too (25 in the runs I
    // made). Without pacing it kept getting requests that then had to be hedged (184).
    assert!(
        stats.hedged > 0 && stats.hedged <= 3 * INITIAL_OUTSTANDING as u64,
        "{stats:?}"
    );
    assert_eq!(stats.rejected, 0, "{stats:?}");
    let peers = nv.peers().await.unwrap();
    let s = peers
        .iter()
        .find(|p| p.peer == ns.local_peer_id())
        .expect("the slow peer was disconnected");
    assert!(s.score >= 0.0, "the slow peer was penalised: {}", s.score);
    cancel.cancel();
}

/// Two concurrent downloads of one dataset on the same node share every fetch: each block
/// crosses the network once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requesters_share_fetches() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let original = data(120 * 65536, 5);
    let cid = upload(&a, &original).await;
    connect(&nb, &na).await;
    let (x, y) = tokio::join!(network_bytes(&b, cid), network_bytes(&b, cid));
    assert_eq!(x, original);
    assert_eq!(y, original);
    let stats = b.engine().unwrap().stats().await.unwrap();
    assert_eq!(
        stats.blocks_received, 121,
        "120 leaves + the manifest, each once"
    );
    assert_eq!(stats.duplicates, 0);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_want_list_flood() {
    run_attack(Attack::WantListFlood).await;
}

/// A `WantBlock` for a block the node does not have yet is remembered and answered when the
/// block arrives (the reference's behaviour, `blockexc-verified.md` §3.3). A bare swarm asks A
/// for a manifest A will only get later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanted_block_is_sent_when_it_arrives() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (nm, mut m_events) = bare(&cancel).await;
    connect(&nm, &na).await;
    let original = data(3 * 65536, 4);
    // The manifest CID A will have, computed on a scratch node.
    let scratch = Node::new(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig::default(),
    );
    let cid = upload(&scratch, &original).await;
    let address = BlockAddress::Block(cid);
    // WantBlock, then a WantHave that asks for DontHave: A's DontHave proves it processed the
    // WantBlock (messages from one peer are handled in order) before the upload below.
    let mut probe = WantEntry::have(address);
    probe.send_dont_have = true;
    nm.send(
        na.local_peer_id(),
        &Message::wants(vec![WantEntry::block(address), probe], false),
    )
    .await
    .unwrap();
    let m = next_message(&mut m_events)
        .await
        .expect("no presence reply");
    assert_eq!(m.presences[0].presence, cairn_blockexc::Presence::DontHave);
    assert!(m.deliveries.is_empty());
    upload(&a, &original).await;
    let m = next_message(&mut m_events)
        .await
        .expect("parked want not served");
    assert_eq!(m.deliveries.len(), 1);
    assert_eq!(*m.deliveries[0].block.cid(), cid);
    cancel.cancel();
}

async fn next_message(
    events: &mut mpsc::Receiver<NetEvent>,
) -> Result<Message, tokio::time::error::Elapsed> {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(NetEvent::Message { message, .. }) => return *message,
                Some(_) => continue,
                None => panic!("events closed"),
            }
        }
    })
    .await
}

/// A node with no peer and no DHT node has nobody to ask: a manifest it does not hold is not
/// found after `ISOLATED_GIVE_UP`, not after the full 30 s search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_nobody_to_ask_gives_up_on_a_manifest_early() {
    let cancel = CancellationToken::new();
    let (alone, _net) = node(&cancel).await;
    let unknown = upload(&node(&cancel).await.0, &data(1000, 77)).await;
    let took = common::not_found_early(&alone, unknown).await;
    assert!(
        took >= cairn_node::ISOLATED_GIVE_UP,
        "gave up after {took:?}"
    );
    cancel.cancel();
}

/// A manifest no connected peer holds: B asks A and C with `sendDontHave`, both say
/// `DontHave`, and B answers "not found" then, not after the engine's 30 s no-holder timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_every_peer_lacks_is_not_found_early() {
    let cancel = CancellationToken::new();
    let (_a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let (_c, nc) = node(&cancel).await;
    connect(&nb, &na).await;
    connect(&nb, &nc).await;
    let unknown = upload(&node(&cancel).await.0, &data(1000, 78)).await;
    common::not_found_early(&b, unknown).await;
    cancel.cancel();
}

/// One peer says `DontHave` at once, another says nothing to B's first queries and only then
/// `Have`: B keeps asking while a peer has not answered, and gets the manifest from the late
/// one. B's queries for the manifest ask for `DontHave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_has_not_answered_keeps_the_manifest_search_going() {
    let cancel = CancellationToken::new();
    let (_a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let (nm, mut m_events) = bare(&cancel).await;
    let holder = node(&cancel).await.0;
    let cid = upload(&holder, &data(3 * 65536, 79)).await;
    let Ok(Some(manifest)) = holder.store().get_block(&cid) else {
        panic!("the holder lacks its manifest");
    };
    connect(&nb, &na).await;
    connect(&nb, &nm).await;
    let fetch = tokio::spawn({
        let b = b.clone();
        async move { b.fetch_manifest(cid).await }
    });
    // M stays silent through B's first two queries (the engine asks again every
    // `REQUERY_INTERVAL`; A has said `DontHave` to each by then), then answers `Have` and
    // serves the manifest when B asks for it.
    let address = BlockAddress::Block(cid);
    let mut queries = 0;
    let served = tokio::time::timeout(WAIT, async {
        while let Some(ev) = m_events.recv().await {
            let NetEvent::Message { peer, message } = ev else {
                continue;
            };
            for e in message
                .wantlist
                .iter()
                .filter(|e| e.address == address && !e.cancel)
            {
                match e.want_type {
                    WantType::Have => {
                        assert!(e.send_dont_have, "a manifest query without sendDontHave");
                        queries += 1;
                        if queries > 2 {
                            let have = cairn_blockexc::BlockPresence {
                                address,
                                presence: cairn_blockexc::Presence::Have,
                            };
                            nm.send(peer, &Message::presences(vec![have]))
                                .await
                                .unwrap();
                        }
                    }
                    WantType::Block => {
                        let d = Delivery {
                            block: manifest.clone(),
                            address,
                            proof: None,
                        };
                        nm.send(peer, &Message::deliveries(vec![d])).await.unwrap();
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(served.is_ok(), "B stopped asking M after {queries} queries");
    let got = tokio::time::timeout(WAIT, fetch)
        .await
        .expect("the fetch hangs")
        .unwrap();
    assert!(got.is_ok(), "{got:?}");
    cancel.cancel();
}

/// A background download outlasts a provider's absence: B gets the manifest from M (a test
/// double that has nothing else), so no peer has any leaf and the engine's no-holder timeout
/// (30 s) passes. B keeps looking (it gave up for good there before) and completes once a
/// peer with the data connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_download_waits_out_a_missing_provider() {
    let cancel = CancellationToken::new();
    let (b, nb, _, metrics) = common::node_with_metrics(&cancel).await;
    let (c, nc) = node(&cancel).await;
    let original = data(40 * 65536 + 5, 80);
    let cid = upload(&c, &original).await;
    let nm = manifest_only_peer(&cancel, &c, &[cid]).await;
    connect(&nb, &nm).await;
    tokio::time::timeout(WAIT, b.download(cid))
        .await
        .expect("the manifest fetch hangs")
        .unwrap();

    // Wait (bounded) for B's first attempt to run out of holders.
    let deadline = tokio::time::Instant::now() + cairn_node::engine::NO_HOLDER_TIMEOUT + WAIT;
    while metrics.downloads.stalls.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt of the download ran out of holders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    connect(&nb, &nc).await;
    whole_here(
        &b,
        cid,
        "the download did not resume once a provider connected",
    )
    .await;
    assert_eq!(local_bytes(&b, cid).await, original);
    assert_eq!(metrics.downloads.failed.count(), 0, "the download failed");
    cancel.cancel();
}

/// A bare swarm that has the manifests of datasets `cids` (taken from `holder`) and nothing
/// else ([`serve_manifests_only`]); its handle.
async fn manifest_only_peer(
    cancel: &CancellationToken,
    holder: &Node,
    cids: &[cairn_core::Cid],
) -> NetworkHandle {
    let manifests = cids
        .iter()
        .map(|cid| match holder.store().get_block(cid) {
            Ok(Some(m)) => m,
            other => panic!("the holder lacks manifest {cid}: {other:?}"),
        })
        .collect();
    let (nm, m_events) = bare(cancel).await;
    serve_manifests_only(nm.clone(), m_events, manifests);
    nm
}

/// Makes the bare swarm `net` (its events on `events`) a peer that has the dataset manifests
/// `manifests` and nothing else: it answers `Have` and delivers a manifest, and ignores every
/// other want.
fn serve_manifests_only(
    net: NetworkHandle,
    mut events: mpsc::Receiver<NetEvent>,
    manifests: Vec<Block>,
) {
    let manifests: std::collections::HashMap<BlockAddress, Block> = manifests
        .into_iter()
        .map(|m| (BlockAddress::Block(*m.cid()), m))
        .collect();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let NetEvent::Message { peer, message } = ev else {
                continue;
            };
            for e in message.wantlist.iter().filter(|e| !e.cancel) {
                let Some(manifest) = manifests.get(&e.address) else {
                    continue;
                };
                let address = e.address;
                let reply = match e.want_type {
                    WantType::Have => Message::presences(vec![cairn_blockexc::BlockPresence {
                        address,
                        presence: cairn_blockexc::Presence::Have,
                    }]),
                    WantType::Block => Message::deliveries(vec![Delivery {
                        block: manifest.clone(),
                        address,
                        proof: None,
                    }]),
                };
                let _ = net.send(peer, &reply).await;
            }
        }
    });
}

/// A background download the node was running when it stopped is resumed at its next start:
/// B asks for a dataset whose only peer (M) has nothing but the manifest, and stops. A new
/// node over B's store, connected to a provider, resumes it and completes it; then the request
/// is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_download_is_resumed_after_a_restart() {
    let cancel = CancellationToken::new();
    let (c, nc) = node(&cancel).await;
    let original = data(30 * 65536 + 9, 81);
    let cid = upload(&c, &original).await;
    let nm = manifest_only_peer(&cancel, &c, &[cid]).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let first_life = cancel.child_token();
    let metrics = cairn_node::metrics::NodeMetrics::default();
    let (nb, events) = bare(&first_life).await;
    let b = Node::with_network(
        store.clone(),
        NodeConfig {
            metrics: metrics.clone(),
            ..NodeConfig::default()
        },
        nb.clone(),
        events,
        first_life.clone(),
    );
    connect(&nb, &nm).await;
    tokio::time::timeout(WAIT, b.download(cid))
        .await
        .expect("the manifest fetch hangs")
        .unwrap();
    assert_eq!(
        store.fetches(10).unwrap(),
        vec![cid],
        "the request is recorded"
    );
    // Stop B, and wait (bounded) for its download to end.
    first_life.cancel();
    b.stopped().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.downloads.active.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.fetches(10).unwrap(),
        vec![cid],
        "kept when the node stops"
    );

    let (nb2, events) = bare(&cancel).await;
    let b2 = Node::with_network(
        store.clone(),
        NodeConfig::default(),
        nb2.clone(),
        events,
        cancel.clone(),
    );
    connect(&nb2, &nc).await;
    assert_eq!(b2.resume_downloads().await, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = b2.manifest(cid).await.unwrap();
        if b2
            .check_local(&m, cairn_node::ByteRange::full(m.download_size()))
            .await
            .is_ok()
            && store.fetches(10).unwrap().is_empty()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resumed download did not complete and forget its request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(local_bytes(&b2, cid).await, original);
    cancel.cancel();
}

/// Deleting a dataset stops its background download at once, even while the download waits
/// for a provider: before, it went on until the engine's no-holder timeout (30 s), and a
/// provider that came back meanwhile was asked for up to a window of blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_dataset_stops_its_waiting_background_download() {
    let cancel = CancellationToken::new();
    let (b, nb, _, metrics) = common::node_with_metrics(&cancel).await;
    let holder = node(&cancel).await.0;
    let cid = upload(&holder, &data(20 * 65536, 82)).await;
    let nm = manifest_only_peer(&cancel, &holder, &[cid]).await;
    connect(&nb, &nm).await;
    tokio::time::timeout(WAIT, b.download(cid))
        .await
        .expect("the manifest fetch hangs")
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.downloads.active.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no download started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.delete(cid).await.unwrap();
    let deadline = tokio::time::Instant::now() + cairn_node::engine::NO_HOLDER_TIMEOUT;
    while metrics.downloads.active.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download went on after its dataset was deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped on purpose: cancelled, not failed.
    assert_eq!(metrics.downloads.cancelled.count(), 1);
    assert_eq!(metrics.downloads.failed.count(), 0);
    assert!(b.store().fetches(10).unwrap().is_empty());
    assert_eq!(b.engine().unwrap().stats().await.unwrap().pending, 0);
    cancel.cancel();
}

/// A dataset asked for again right after its delete is downloaded: the deleted download's place
/// among the running ones is given up (or, when the request comes while it is still ending,
/// the download starts over), so the request is not answered by a download that is gone. (The
/// window in which the request meets the ending download is short; this test does not force
/// it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_asked_for_again_right_after_its_delete_downloads() {
    let cancel = CancellationToken::new();
    let (b, nb) = node(&cancel).await;
    let (holder, nh) = node(&cancel).await;
    let original = data(20 * 65536 + 11, 83);
    let cid = upload(&holder, &original).await;
    let nm = manifest_only_peer(&cancel, &holder, &[cid]).await;
    connect(&nb, &nm).await;
    let ask = || async {
        tokio::time::timeout(WAIT, b.download(cid))
            .await
            .expect("the manifest fetch hangs")
            .unwrap()
    };
    ask().await;
    b.delete(cid).await.unwrap();
    ask().await;
    connect(&nb, &nh).await;
    whole_here(&b, cid, "the dataset asked for again was not downloaded").await;
    assert_eq!(local_bytes(&b, cid).await, original);
    cancel.cancel();
}

/// One connection to a peer closes while another stays (a reconnect that overlapped the old
/// connection; the swarm's side is `cairn-net`'s `closing_a_used_one_of_two_connections_…` test): the
/// peer never disconnects as far as the engine can tell, but what was in flight on the closed
/// connection is gone. Here B's events pass through the test, which drops one message of
/// deliveries from A mid-download (lost with the connection) and then reports the lost
/// connection. B asks again for what has not come after
/// [`cairn_node::engine::LOST_CONNECTION_GRACE`] (1 s), instead of leaving those requests to the
/// silent-peer timeout ([`cairn_node::engine::ACTIVITY_TIMEOUT`]), which A, busy delivering
/// everything else, would not even trip until the rest was done. A's events pass through the
/// test too, which checks that B never follows a `WantBlock` with a `WantHave` for the same
/// block (older reference engines let the second replace the first, and never sent the block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_lost_with_a_connection_are_asked_again_soon() {
    let cancel = CancellationToken::new();
    let (na, mut a_events) = bare(&cancel).await;
    let (a_tx, a_rx) = mpsc::channel(64);
    let a = Node::with_network(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig::default(),
        na.clone(),
        a_rx,
        cancel.clone(),
    );
    // What B asked A, in order: (address, want type, cancel).
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked_in = asked.clone();
    tokio::spawn(async move {
        while let Some(ev) = a_events.recv().await {
            if let NetEvent::Message { message, .. } = &ev {
                asked_in.lock().unwrap().extend(
                    message
                        .wantlist
                        .iter()
                        .map(|e| (e.address, e.want_type, e.cancel)),
                );
            }
            if a_tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    let (nb, mut real_events) = bare(&cancel).await;
    let (tx, events) = mpsc::channel(64);
    let b = Node::with_network(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig::default(),
        nb.clone(),
        events,
        cancel.clone(),
    );
    let a_id = na.local_peer_id();
    let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lost_in = lost.clone();
    tokio::spawn(async move {
        let mut delivered = 0;
        while let Some(ev) = real_events.recv().await {
            if let NetEvent::Message { peer, message } = &ev
                && *peer == a_id
                && !message.deliveries.is_empty()
            {
                delivered += message.deliveries.len();
                if delivered > 100 && lost_in.lock().unwrap().is_empty() {
                    lost_in
                        .lock()
                        .unwrap()
                        .extend(message.deliveries.iter().map(|d| d.address));
                    if tx
                        .send(NetEvent::ConnectionLost { peer: a_id })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            }
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });

    let original = data(600 * 65536, 7);
    let cid = upload(&a, &original).await;
    connect(&nb, &na).await;
    assert_eq!(network_bytes(&b, cid).await, original);
    assert!(!lost.lock().unwrap().is_empty(), "no delivery was dropped");
    let stats = b.engine().unwrap().stats().await.unwrap();
    assert_eq!(
        stats.timeouts, 0,
        "lost requests waited for the silent-peer timeout: {stats:?}"
    );
    let mut asked_for_block = std::collections::HashSet::new();
    for (address, want, cancel) in asked.lock().unwrap().iter() {
        match (want, cancel) {
            (_, true) => {
                asked_for_block.remove(address);
            }
            (WantType::Block, false) => {
                asked_for_block.insert(*address);
            }
            (WantType::Have, false) => assert!(
                !asked_for_block.contains(address),
                "WantHave after WantBlock for {address}"
            ),
        }
    }
    cancel.cancel();
}

/// Asking for a dataset that is already downloading in the background does not start a second
/// download of it: both requests answer the manifest, one download runs (and completes), and
/// the request is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_twice_for_a_background_download_runs_it_once() {
    let cancel = CancellationToken::new();
    let (b, nb, _, metrics) = common::node_with_metrics(&cancel).await;
    let (c, nc) = node(&cancel).await;
    let original = data(20 * 65536 + 3, 82);
    let cid = upload(&c, &original).await;
    let nm = manifest_only_peer(&cancel, &c, &[cid]).await;
    connect(&nb, &nm).await;
    for _ in 0..3 {
        let m = tokio::time::timeout(WAIT, b.download(cid))
            .await
            .expect("the manifest fetch hangs")
            .unwrap();
        assert_eq!(m.dataset_size, original.len() as u64);
        // Counted as running by the time the request is answered (M has no leaf, so it
        // cannot have ended).
        assert_eq!(metrics.downloads.active.get(), 1);
    }
    assert_eq!(b.store().fetches(10).unwrap(), vec![cid]);
    connect(&nb, &nc).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.downloads.completed.count() == 0 || metrics.downloads.active.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download did not complete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(local_bytes(&b, cid).await, original);
    assert_eq!(metrics.downloads.completed.count(), 1, "downloads run");
    assert_eq!(metrics.downloads.failed.count(), 0);
    assert!(
        b.store().fetches(10).unwrap().is_empty(),
        "forgotten once done"
    );
    // Once it has ended, asking again starts a download again (it finds everything here).
    b.download(cid).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.downloads.completed.count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second download");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
}

/// At most `MAX_BACKGROUND_DOWNLOADS` background downloads run at once: with that many waiting
/// for blocks no peer has, one more is refused with `TooManyDownloads` (a `503` in the API),
/// and a dataset already among them is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_downloads_are_bounded() {
    let max = cairn_node::MAX_BACKGROUND_DOWNLOADS;
    let cancel = CancellationToken::new();
    let (c, _nc) = node(&cancel).await;
    let mut cids = Vec::new();
    for i in 0..=max {
        // (`data` sets the seed's low bit: odd seeds keep them apart.)
        cids.push(upload(&c, &data(1000, 1001 + 2 * i as u64)).await);
    }
    let nm = manifest_only_peer(&cancel, &c, &cids).await;
    let (b, nb) = node(&cancel).await;
    connect(&nb, &nm).await;
    tokio::time::timeout(WAIT, async {
        for cid in &cids[..max] {
            b.download(*cid).await.unwrap();
        }
    })
    .await
    .expect("the manifest fetches hang");
    let r = tokio::time::timeout(WAIT, b.download(cids[max]))
        .await
        .expect("the manifest fetch hangs");
    assert!(
        matches!(r, Err(cairn_node::NodeError::TooManyDownloads { max: m }) if m == max),
        "{r:?}"
    );
    b.download(cids[0]).await.unwrap();
    cancel.cancel();
}

/// At most `MAX_NETWORK_STREAMS` network streams run at once: with that many waiting for
/// blocks no peer has, one more is refused with `TooManyStreams` (a `503` in the API), and once
/// one's reader goes away its turn comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_streams_are_bounded() {
    let max = cairn_node::MAX_NETWORK_STREAMS;
    let cancel = CancellationToken::new();
    let (c, _nc) = node(&cancel).await;
    let mut cids = Vec::new();
    for i in 0..=max {
        cids.push(upload(&c, &data(1000, 3001 + 2 * i as u64)).await);
    }
    let nm = manifest_only_peer(&cancel, &c, &cids).await;
    let (b, nb) = node(&cancel).await;
    connect(&nb, &nm).await;
    let open = |cid: cairn_core::Cid| {
        let b = b.clone();
        async move {
            let m = tokio::time::timeout(WAIT, b.fetch_manifest(cid))
                .await
                .expect("the manifest fetch hangs")
                .unwrap();
            b.stream_network_of(
                cid,
                &m,
                cairn_node::ByteRange::full(m.download_size()),
                None,
            )
        }
    };
    let mut streams = Vec::new();
    for cid in &cids[..max] {
        streams.push(open(*cid).await.unwrap());
    }
    let r = open(cids[max]).await;
    assert!(
        matches!(r, Err(cairn_node::NodeError::TooManyStreams { max: m }) if m == max),
        "{:?}",
        r.err()
    );
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(cids[max]).await {
            Ok(s) => {
                streams.push(s);
                break;
            }
            Err(cairn_node::NodeError::TooManyStreams { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a stream whose reader went away kept its turn"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    cancel.cancel();
}

/// The disk space of a deleted download comes back soon after the delete, not at the next
/// maintenance interval: downloaded leaves share a segment that only compaction frees, and a
/// delete brings the maintenance pass forward (`maintenance_after_delete`). Here the interval is
/// an hour, so without that the bytes would stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_download_gives_its_disk_space_back_soon() {
    deleted_download_gives_disk_space_back(16 << 20).await;
}

/// The same when both datasets are in the shared segment the node still appends to (the
/// default 1 GiB segments): it is sealed and compacted once mostly dead, not left until full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_download_in_the_open_segment_gives_its_disk_space_back_soon() {
    deleted_download_gives_disk_space_back(StoreConfig::default().segment_roll_bytes).await;
}

/// Downloads two datasets into a store whose segments roll over at `roll` bytes, deletes the
/// larger and waits until less than 15 MiB is left on disk.
async fn deleted_download_gives_disk_space_back(roll: u64) {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    // B keeps a small dataset and deletes a larger one fetched after it (the small one is the
    // large one's first 80 blocks, which the store keeps once). With 16 MiB segments the first
    // segment holds those 80 blocks and at least 176 more of the large one: mostly dead after
    // the delete, which only compaction frees. A segment rolls over at the first write batch
    // (at most 256 blocks) that finds it at 16 MiB, so it holds at most 511 blocks and the
    // large one's 600 surely reach a second segment. That one stays open; it is freed when it
    // holds at least `COMPACT_MIN_DEAD_BYTES` (8 MiB), and otherwise kept for the next writes.
    // With 1 GiB segments, all of it is in the open segment: 13 % live after the delete.
    const ROLL: u64 = 16 << 20;
    assert!(roll >= ROLL);
    let original = data(600 * 65536, 84);
    let kept = upload(&a, &original[..80 * 65536]).await;
    let cid = upload(&a, &original).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            segment_roll_bytes: roll,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let (nb, events) = bare(&cancel).await;
    let b = Node::with_network(
        store.clone(),
        NodeConfig {
            maintenance_interval: Duration::from_secs(3600),
            maintenance_after_delete: Duration::from_millis(100),
            ..NodeConfig::default()
        },
        nb.clone(),
        events,
        cancel.clone(),
    );
    {
        let (b, cancel) = (b.clone(), cancel.clone());
        tokio::spawn(async move { b.run_maintenance(cancel).await });
    }
    connect(&nb, &na).await;
    for c in [kept, cid] {
        tokio::time::timeout(WAIT, b.download_and_wait(c))
            .await
            .expect("download timed out")
            .unwrap();
    }
    let held = store.disk_bytes().unwrap();
    assert!(held >= original.len() as u64, "{held} bytes on disk");
    b.delete(cid).await.unwrap();
    // Once the first segment is compacted, the kept dataset (80 blocks, 5.2 MB) is left, and
    // at most 8 MiB of the open segment: 13.6 MB at most. Without the compaction, at least the
    // first segment (16 MiB) stays.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = store.disk_bytes().unwrap();
        if now < ROLL * 15 / 16 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} bytes still on disk ({held} before the delete)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The kept dataset, moved by the compaction, reads back whole and right.
    assert!(
        local_bytes(&b, kept).await == original[..80 * 65536],
        "the kept dataset differs after the compaction"
    );
    assert!(store.audit().unwrap().segments_consistent);
    cancel.cancel();
}

/// A manifest that names a real dataset's tree with another size (anyone can make one, and its
/// CID differs from the real manifest's) makes every holder's proof fail the leaf count it
/// gives, though the proof checks out against the tree for the tree's own size
/// (`codex-protocol.md` §3: a proof carries its tree's leaf count, `CodexProof.nleaves`). The
/// holder is not penalised (review: each honest holder was banned in turn); as no holder sends
/// a proof that agrees with the manifest, the download fails with the manifest's error once
/// the want has had no holder for `NO_HOLDER_TIMEOUT` (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_the_wrong_size_blames_the_manifest_not_the_holder() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (v, nv) = node(&cancel).await;
    let cid = upload(&a, &data(5 * 65536, 91)).await;
    let real = a.manifest(cid).await.unwrap();
    let forged = cairn_core::Manifest::new(real.tree_cid, 3 * 65536, 65536);
    let forged_cid = *forged.to_block().cid();
    assert_ne!(forged_cid, cid);
    v.store().put_block(&forged.to_block()).unwrap();
    connect(&nv, &na).await;
    let m = v.fetch_manifest(forged_cid).await.unwrap();
    assert_eq!(m.blocks_count(), 3);
    let got: Result<Vec<Bytes>, _> = tokio::time::timeout(WAIT, async {
        v.stream_network(&m).unwrap().try_collect().await
    })
    .await
    .expect("the download hangs");
    let e = got.expect_err("a download of the forged manifest fails");
    assert!(
        matches!(
            e,
            cairn_node::NodeError::Fetch(cairn_node::engine::FetchError::ManifestMismatch {
                manifest_blocks: 3,
                tree_leaves: 5
            })
        ),
        "{e:?}"
    );
    // The holder is neither banned nor penalised, and still connected.
    assert!(!nv.is_banned(na.local_peer_id()).await.unwrap());
    let peers = nv.peers().await.unwrap();
    let holder = peers
        .iter()
        .find(|p| p.peer == na.local_peer_id())
        .expect("the holder is still connected");
    assert!(holder.score >= 0.0, "score {}", holder.score);
    let stats = v.engine().unwrap().stats().await.unwrap();
    assert_eq!(stats.rejected, 0);
    // The real dataset still downloads from it, though the forged manifest listed the dataset
    // first with its size: the tree kept is the real one's (store: `Tables::add_manifest`).
    assert_eq!(network_bytes(&v, cid).await, local_bytes(&a, cid).await);
    v.store().settle_tree(&real.tree_cid).unwrap();
    assert_eq!(v.store().proof_storage().unwrap().1, 0, "not settled");
    // Whole here now: a manifest with yet another size, offered by a third node, fails at once
    // (well within NO_HOLDER_TIMEOUT) and is not listed.
    let (w, nw) = node(&cancel).await;
    let other = cairn_core::Manifest::new(real.tree_cid, 7 * 65536, 65536).to_block();
    w.store().put_block(&other).unwrap();
    connect(&nv, &nw).await;
    let e = tokio::time::timeout(Duration::from_secs(10), v.fetch_manifest(*other.cid()))
        .await
        .expect("the refusal waits")
        .expect_err("a manifest that contradicts a whole dataset is refused");
    assert!(
        matches!(
            e,
            cairn_node::NodeError::Fetch(cairn_node::engine::FetchError::ManifestMismatch {
                manifest_blocks: 7,
                tree_leaves: 5
            })
        ),
        "{e:?}"
    );
    assert!(!v.store().has_block(other.cid()).unwrap());
    assert!(!nv.is_banned(nw.local_peer_id()).await.unwrap());
    cancel.cancel();
}
