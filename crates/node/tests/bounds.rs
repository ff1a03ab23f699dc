//! Limits of the block-exchange engine, each driven past its bound over loopback TCP with the
//! real swarm, and what a stop does to the blocks waiting behind them:
//!
//! * [`MAX_UNSTORED_BLOCKS`]: a node whose store writes are held (a slow disk) downloading
//!   from a provider stops requesting blocks once that many verified blocks wait for the disk,
//!   and finishes with the right bytes once the disk catches up.
//! * A node stopped while verified blocks wait for its disk writes them all before its engine
//!   ends.
//! * [`REFILL_DIVISOR`]: a download tops its window up in runs, one local check and one
//!   engine command for several blocks rather than one of each per block.
//! * [`MAX_QUEUED_HAVE_QUERIES`]: a peer flooding `WantHave` faster than they are answered gets
//!   at most that many queued; the rest are dropped unanswered and each over-limit want list
//!   is penalised, while an honest peer downloads from the same node.
//!
//! Store operations are held with the store's test hook ([`StoreConfig::crash_hook`]), which
//! runs on the store caller's thread; a hook is a plain `fn`, so each test has its own static
//! [`Gate`]. Every wait is on a condition, with a deadline.

use std::{
    collections::HashMap,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use cairn_blockexc::{
    BlockPresence, Delivery, MAX_BLOCKS_PER_MESSAGE, MAX_PRESENCES_PER_MESSAGE,
    MAX_WANTLIST_ENTRIES, Message, Presence, WantEntry, WantType,
};
use cairn_core::{Block, BlockAddress, Cid};
use cairn_node::{
    Node, NodeConfig, Store, StoreConfig,
    engine::{
        FetchError, MAX_OUTSTANDING_PER_PEER, MAX_QUEUED_HAVE_QUERIES, MAX_UNSTORED_BLOCKS,
        STORE_TASKS,
    },
    fetch::{MIN_WINDOW, REFILL_DIVISOR},
    net::{NetEvent, NetworkHandle, reputation::DISCONNECT_SCORE},
};
use futures::TryStreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod common;
use common::{bare, connect, data, node_with as node, upload};

/// Deadline of every wait (and of a store call held by a [`Gate`]).
const WAIT: Duration = Duration::from_secs(60);
/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(10);
/// Block size of uploaded datasets.
const BLOCK: usize = 64 * 1024;
/// Score lost per `PeerAction::LowTolerance` report (`cairn-net`'s `reputation.rs`).
const LOW_TOLERANCE_PENALTY: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Holding store calls

/// Holds the store calls that pass it while it is closed (each for at most [`WAIT`]).
#[derive(Debug)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Calls held now.
    held: AtomicUsize,
}

impl Gate {
    const fn closed() -> Gate {
        Gate {
            closed: Mutex::new(true),
            opened: Condvar::new(),
            held: AtomicUsize::new(0),
        }
    }

    /// Called on a store thread: returns once the gate is open or after [`WAIT`].
    fn pass(&self) {
        let deadline = Instant::now() + WAIT;
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        self.held.fetch_add(1, Ordering::SeqCst);
        while *closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            closed = self
                .opened
                .wait_timeout(closed, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    fn open(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.opened.notify_all();
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// Opens a gate when dropped, so a failing test does not leave store threads held.
struct OpenOnDrop(&'static Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// The slow disk of [`paused_while_the_disk_is_behind`]: every leaf write waits. (The manifest
/// is stored before its leaves are asked for: `fetch_manifest` returns once it is, since leaves
/// are only taken for a listed dataset.)
static DISK: Gate = Gate::closed();

fn slow_disk(point: &'static str) {
    if point == "put_leaves" {
        DISK.pass();
    }
}

/// The stalled presence lookup of [`have_query_flood_is_bounded`]: the first lookup after
/// [`LOOKUP_ARMED`] is set waits.
static LOOKUP: Gate = Gate::closed();
static LOOKUP_ARMED: AtomicBool = AtomicBool::new(false);

fn stall_one_lookup(point: &'static str) {
    if (point == "has_leaf" || point == "has_block") && LOOKUP_ARMED.swap(false, Ordering::SeqCst) {
        LOOKUP.pass();
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes, data

/// Polls `probe` every [`POLL`] until it returns `Some`; panics naming `what` after [`WAIT`].
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks the locally stored copy of dataset `cid` against `original`, block by block.
async fn check_stored_copy(node: &Node, cid: Cid, original: &[u8]) {
    let m = node.manifest(cid).await.unwrap();
    let mut stream = Box::pin(node.stream_dataset(&m));
    let mut at = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(part) = stream.try_next().await.unwrap() {
            assert_eq!(
                &part[..],
                &original[at..at + part.len()],
                "stored bytes at {at}"
            );
            at += part.len();
        }
    })
    .await
    .expect("reading the stored copy timed out");
    assert_eq!(at, original.len(), "stored copy length");
}

// ---------------------------------------------------------------------------------------------
// MAX_UNSTORED_BLOCKS

/// What the honest provider double was asked for.
#[derive(Debug, Default)]
struct Asked {
    /// `WantBlock` entries received.
    blocks: AtomicU64,
}

/// A test double that serves `store` honestly over the real protocol (presences for what it
/// holds, deliveries with proofs) and counts the block requests it receives.
async fn counting_provider(
    mut events: mpsc::Receiver<NetEvent>,
    net: NetworkHandle,
    store: Store,
    asked: Arc<Asked>,
) {
    while let Some(ev) = events.recv().await {
        let NetEvent::Message { peer, message } = ev else {
            continue;
        };
        let haves: Vec<BlockPresence> = message
            .wantlist
            .iter()
            .filter(|e| e.want_type == WantType::Have && !e.cancel)
            .filter(|e| match e.address {
                BlockAddress::Block(cid) => store.has_block(&cid).unwrap_or(false),
                BlockAddress::Leaf { tree, index } => store.has_leaf(&tree, index).unwrap_or(false),
            })
            .map(|e| BlockPresence {
                address: e.address,
                presence: Presence::Have,
            })
            .collect();
        for chunk in haves.chunks(MAX_PRESENCES_PER_MESSAGE) {
            let _ = net.send(peer, &Message::presences(chunk.to_vec())).await;
        }
        let mut deliveries = Vec::new();
        for e in message
            .wantlist
            .iter()
            .filter(|e| e.want_type == WantType::Block && !e.cancel)
        {
            asked.blocks.fetch_add(1, Ordering::SeqCst);
            let found = match e.address {
                BlockAddress::Block(cid) => store
                    .get_block(&cid)
                    .ok()
                    .flatten()
                    .map(|block| (block, None)),
                BlockAddress::Leaf { tree, index } => store
                    .get_leaf(&tree, index)
                    .ok()
                    .flatten()
                    .map(|(block, proof)| (block, Some(proof))),
            };
            if let Some((block, proof)) = found {
                deliveries.push(Delivery {
                    block,
                    address: e.address,
                    proof,
                });
            }
        }
        for chunk in deliveries.chunks(MAX_BLOCKS_PER_MESSAGE) {
            let _ = net.send(peer, &Message::deliveries(chunk.to_vec())).await;
        }
    }
}

/// A download whose store calls pass `hook`: a node on `cancel` connected to an honest provider
/// double (on `provider_cancel`) that holds `blocks` blocks of fresh data; the manifest is
/// fetched (and stored) and every leaf is wanted.
struct HeldDownload {
    node: Node,
    cid: Cid,
    original: Vec<u8>,
    asked: Arc<Asked>,
    tree: Cid,
    wants: Vec<oneshot::Receiver<Result<Block, FetchError>>>,
}

/// A node on `cancel` (its store calls pass `hook`) connected to an honest, counting provider
/// double (on `provider_cancel`) that holds `blocks` blocks of fresh data; returns the node,
/// the dataset's CID, its bytes and the provider's counts.
async fn provided(
    blocks: usize,
    seed: u64,
    hook: fn(&'static str),
    cancel: &CancellationToken,
    provider_cancel: &CancellationToken,
) -> (Node, Cid, Vec<u8>, Arc<Asked>) {
    let original = data(blocks * BLOCK, seed);
    let provider_store = Store::in_memory(StoreConfig::default()).unwrap();
    let cid = upload(
        &Node::new(provider_store.clone(), NodeConfig::default()),
        &original,
    )
    .await;
    let (np, p_events) = bare(provider_cancel).await;
    let asked = Arc::new(Asked::default());
    tokio::spawn(counting_provider(
        p_events,
        np.clone(),
        provider_store,
        asked.clone(),
    ));
    let (node, nv) = node(
        cancel,
        StoreConfig {
            crash_hook: Some(hook),
            ..StoreConfig::default()
        },
    )
    .await;
    connect(&nv, &np).await;
    (node, cid, original, asked)
}

async fn held_download(
    blocks: usize,
    seed: u64,
    hook: fn(&'static str),
    cancel: &CancellationToken,
    provider_cancel: &CancellationToken,
) -> HeldDownload {
    let (node, cid, original, asked) = provided(blocks, seed, hook, cancel, provider_cancel).await;
    let manifest = tokio::time::timeout(WAIT, node.fetch_manifest(cid))
        .await
        .expect("manifest timed out")
        .unwrap();
    assert_eq!(manifest.blocks_count(), blocks as u64);
    let tree = manifest.tree_cid;
    let count = Some(manifest.blocks_count());
    let wants = node
        .engine()
        .unwrap()
        .want_many(
            (0..blocks as u64)
                .map(|index| (BlockAddress::Leaf { tree, index }, count))
                .collect(),
        )
        .await;
    HeldDownload {
        node,
        cid,
        original,
        asked,
        tree,
        wants,
    }
}

/// A node downloading over a disk that takes no writes requests at most
/// `MAX_UNSTORED_BLOCKS + MAX_OUTSTANDING_PER_PEER` blocks (requests stop once
/// `MAX_UNSTORED_BLOCKS` wait for the disk; those already out still arrive), then none, however
/// many it still wants; once the disk takes writes the download completes with the right bytes.
///
/// Fails if the pause is removed or weakened: the engine would request every block of a dataset
/// twice the limit, and `blocks_requested` passes the bound. Fails too if it pauses below the
/// limit: the engine then settles with fewer than `MAX_UNSTORED_BLOCKS` received and the wait
/// for that times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_while_the_disk_is_behind() {
    const BLOCKS: usize = 2 * MAX_UNSTORED_BLOCKS;
    const BOUND: usize = MAX_UNSTORED_BLOCKS + MAX_OUTSTANDING_PER_PEER;
    const { assert!(BLOCKS > BOUND + 1, "the dataset must outgrow the bound") };
    let bound = BOUND as u64;
    let _open = OpenOnDrop(&DISK);
    let cancel = CancellationToken::new();
    let HeldDownload {
        node: v,
        cid,
        original,
        asked,
        wants: rxs,
        ..
    } = held_download(BLOCKS, 7, slow_disk, &cancel, &cancel).await;
    let engine = v.engine().unwrap().clone();

    // Every block asked for has arrived, at least the limit's worth waits for the disk, and
    // both store tasks are held: nothing can change until a write completes.
    let paused = eventually("the download to pause", async || {
        let s = engine.stats().await.unwrap();
        assert!(
            s.blocks_requested <= bound,
            "{} blocks requested while none could be stored (bound {bound})",
            s.blocks_requested
        );
        (s.blocks_received >= MAX_UNSTORED_BLOCKS as u64
            && s.blocks_received == s.blocks_requested
            && DISK.held() == STORE_TASKS)
            .then_some(s)
    })
    .await;
    assert!(
        paused.blocks_requested < BLOCKS as u64,
        "paused with blocks left to fetch"
    );
    assert_eq!(paused.store_failures, 0);
    assert_eq!(
        asked.blocks.load(Ordering::SeqCst),
        paused.blocks_requested,
        "the provider saw exactly the requests the engine counted"
    );

    // The disk catches up: the download completes, every block once, bytes exact.
    DISK.open();
    tokio::time::timeout(WAIT, async {
        for (i, (rx, expected)) in rxs.into_iter().zip(original.chunks(BLOCK)).enumerate() {
            let block = rx.await.expect("engine stopped").expect("fetch failed");
            assert_eq!(&block.data()[..], expected, "block {i}");
        }
    })
    .await
    .expect("download did not finish after the disk caught up");
    tokio::time::timeout(WAIT, engine.flush())
        .await
        .expect("writes did not finish")
        .unwrap();
    let s = engine.stats().await.unwrap();
    let total = BLOCKS as u64 + 1; // and the manifest
    assert_eq!(
        (s.blocks_received, s.blocks_requested, s.duplicates),
        (total, total, 0),
        "{s:?}"
    );
    assert_eq!(
        (s.store_failures, s.rejected, s.pending),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(asked.blocks.load(Ordering::SeqCst), total);
    check_stored_copy(&v, cid, &original).await;
    let audit = v.store().audit().unwrap();
    assert_eq!(audit.blocks_actual, total, "{audit:?}");
    assert_eq!(audit.used_actual, audit.used_recorded, "{audit:?}");
    cancel.cancel();
}

/// The held disk of [`a_stopping_engine_writes_the_blocks_it_verified`].
static STOP_DISK: Gate = Gate::closed();

fn disk_held_at_stop(point: &'static str) {
    if point == "put_leaves" {
        STOP_DISK.pass();
    }
}

/// A node stopped while verified blocks wait for its disk (both store writes held, the rest
/// queued behind them) writes every one of them before its engine stops: a graceful stop loses
/// none of the blocks it has verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_engine_writes_the_blocks_it_verified() {
    const BLOCKS: usize = 300;
    const { assert!(BLOCKS < MAX_UNSTORED_BLOCKS, "every block must be received") };
    let _open = OpenOnDrop(&STOP_DISK);
    let (cancel, provider_cancel) = (CancellationToken::new(), CancellationToken::new());
    let HeldDownload {
        node: v,
        cid,
        original,
        tree,
        wants: _wants,
        ..
    } = held_download(BLOCKS, 11, disk_held_at_stop, &cancel, &provider_cancel).await;
    let engine = v.engine().unwrap().clone();
    // Everything verified, both writes held, the rest queued: nothing is stored yet.
    eventually("every block to be verified", async || {
        let s = engine.stats().await.unwrap();
        (s.blocks_received == BLOCKS as u64 + 1 && STOP_DISK.held() == STORE_TASKS).then_some(())
    })
    .await;
    assert_eq!(
        v.store()
            .first_missing_leaf(&tree, 0..BLOCKS as u64)
            .unwrap(),
        Some(0)
    );

    // Stop, then let the disk go: the engine writes everything before it ends.
    cancel.cancel();
    STOP_DISK.open();
    tokio::time::timeout(WAIT, v.stopped())
        .await
        .expect("the engine did not stop");
    assert_eq!(
        v.store()
            .first_missing_leaf(&tree, 0..BLOCKS as u64)
            .unwrap(),
        None,
        "verified blocks were lost when the node stopped"
    );
    assert!(v.store().get_manifest(&cid).unwrap().is_some());
    check_stored_copy(&v, cid, &original).await;
    provider_cancel.cancel();
}

// ---------------------------------------------------------------------------------------------
// REFILL_DIVISOR

/// Local checks (`Store::get_leaves` calls) made by the node of
/// [`a_download_asks_for_blocks_in_runs`].
static LOCAL_CHECKS: AtomicU64 = AtomicU64::new(0);

fn count_local_checks(point: &'static str) {
    if point == "get_leaves" {
        LOCAL_CHECKS.fetch_add(1, Ordering::SeqCst);
    }
}

/// A download tops its window up in runs: once `1 / REFILL_DIVISOR` of the window is free
/// (at least 2 blocks at the smallest window), it checks the run against its store in one
/// call and wants the missing blocks in one engine command. A download of `BLOCKS` blocks from
/// an empty store therefore makes at most about half as many local checks as blocks; the
/// bytes arrive whole, each block asked for once.
///
/// Fails if the window is refilled block by block again: every completed block after the
/// first window then costs its own local check (and its own engine command and want-list),
/// about as many checks as blocks. (Counting want-lists at the provider would not tell: the
/// engine merges wants queued while a message is in flight.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_asks_for_blocks_in_runs() {
    const BLOCKS: usize = 600;
    const {
        assert!(
            BLOCKS > 4 * MIN_WINDOW,
            "the download must outlast its first window"
        )
    };
    const {
        assert!(
            MIN_WINDOW / REFILL_DIVISOR >= 2,
            "runs of at least 2 blocks"
        )
    };
    let cancel = CancellationToken::new();
    let provider_cancel = CancellationToken::new();
    let (v, cid, original, asked) =
        provided(BLOCKS, 61, count_local_checks, &cancel, &provider_cancel).await;
    let manifest = tokio::time::timeout(WAIT, v.fetch_manifest(cid))
        .await
        .expect("manifest timed out")
        .unwrap();
    let before = LOCAL_CHECKS.load(Ordering::SeqCst);
    let mut stream = v.stream_network(&manifest).unwrap();
    let mut got = Vec::with_capacity(original.len());
    tokio::time::timeout(WAIT, async {
        while let Some(part) = stream.try_next().await.unwrap() {
            got.extend_from_slice(&part);
        }
    })
    .await
    .expect("the download timed out");
    assert!(got == original, "downloaded bytes differ");
    // The manifest and each leaf exactly once: one provider, nothing lost.
    assert_eq!(
        asked.blocks.load(Ordering::SeqCst),
        BLOCKS as u64 + 1,
        "WantBlock entries"
    );
    let checks = LOCAL_CHECKS.load(Ordering::SeqCst) - before;
    assert!(checks >= 1, "the download never checked its store");
    assert!(
        checks <= (BLOCKS / 2) as u64,
        "{checks} local checks for {BLOCKS} blocks: the window is refilled block by block"
    );
    cancel.cancel();
    provider_cancel.cancel();
}

// ---------------------------------------------------------------------------------------------
// MAX_QUEUED_HAVE_QUERIES

/// What the flooding double heard back.
#[derive(Debug, Default)]
struct Heard {
    /// Presences received, by address, in order of arrival.
    presences: Mutex<HashMap<BlockAddress, Vec<Presence>>>,
    answers: AtomicUsize,
    deliveries: AtomicUsize,
}

/// Drains the flooding double's events into `heard` (so its swarm never waits on the test).
async fn listen(mut events: mpsc::Receiver<NetEvent>, heard: Arc<Heard>) {
    while let Some(ev) = events.recv().await {
        let NetEvent::Message { message, .. } = ev else {
            continue;
        };
        if !message.presences.is_empty() {
            let mut map = heard
                .presences
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for p in &message.presences {
                map.entry(p.address).or_default().push(p.presence);
            }
            heard
                .answers
                .fetch_add(message.presences.len(), Ordering::SeqCst);
        }
        heard
            .deliveries
            .fetch_add(message.deliveries.len(), Ordering::SeqCst);
    }
}

/// `WantHave` entries asking for an answer either way, for leaves `range` of `tree`.
fn have_queries(tree: Cid, range: std::ops::Range<u64>) -> Message {
    Message::wants(
        range
            .map(|index| {
                let mut e = WantEntry::have(BlockAddress::Leaf { tree, index });
                e.send_dont_have = true;
                e
            })
            .collect(),
        false,
    )
}

/// A peer sends `WantHave` lists while the node's lookups for it are stalled: exactly
/// `MAX_QUEUED_HAVE_QUERIES` entries are queued, the rest are dropped unanswered, each want list
/// that did not fit is penalised once (and the peer stays connected), and an honest peer
/// downloads from the node meanwhile. Once lookups resume, every queued entry is answered once
/// and no dropped one is.
///
/// The first list (one lookup's worth) is taken by a lookup the store hook holds, so the queue
/// is empty and stays unanswered while the flood arrives. Fails if the limit is removed or
/// changed (the entries answered are not exactly the first `MAX_QUEUED_HAVE_QUERIES` after
/// that lookup), if over-limit lists are not penalised or penalised more than once each, or if
/// the flood blocks the honest download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn have_query_flood_is_bounded() {
    /// Entries per flood list; the last two lists do not fit.
    const LIST: usize = 1000;
    const LISTS: usize = MAX_QUEUED_HAVE_QUERIES / LIST + 2;
    const FIRST: u64 = MAX_PRESENCES_PER_MESSAGE as u64;
    const FLOOD: u64 = (LIST * LISTS) as u64;
    const QUEUED: u64 = MAX_QUEUED_HAVE_QUERIES as u64;
    const { assert!(LIST <= MAX_WANTLIST_ENTRIES && FIRST as usize <= MAX_WANTLIST_ENTRIES) };
    let over_limit_lists = (1..=LISTS)
        .filter(|k| k * LIST > MAX_QUEUED_HAVE_QUERIES)
        .count();
    assert_eq!(over_limit_lists, 2);
    let _open = OpenOnDrop(&LOOKUP);
    let cancel = CancellationToken::new();

    let (v, nv) = node(
        &cancel,
        StoreConfig {
            crash_hook: Some(stall_one_lookup),
            ..StoreConfig::default()
        },
    )
    .await;
    let original = data(64 * BLOCK + 99, 11);
    let cid = upload(&v, &original).await;
    let manifest = v.manifest(cid).await.unwrap();
    let tree = manifest.tree_cid;
    let nleaves = manifest.blocks_count();

    let (nf, f_events) = bare(&cancel).await;
    let heard = Arc::new(Heard::default());
    tokio::spawn(listen(f_events, heard.clone()));
    connect(&nf, &nv).await;
    let victim = nv.local_peer_id();

    // The first list goes to a lookup that stalls.
    LOOKUP_ARMED.store(true, Ordering::SeqCst);
    nf.send(victim, &have_queries(tree, 0..FIRST))
        .await
        .unwrap();
    eventually("the first lookup to stall", async || {
        (LOOKUP.held() == 1).then_some(())
    })
    .await;

    // The flood, then a block request: once it is served, every list before it was handled.
    for k in 0..LISTS as u64 {
        let start = FIRST + k * LIST as u64;
        nf.send(victim, &have_queries(tree, start..start + LIST as u64))
            .await
            .unwrap();
    }
    nf.send(
        victim,
        &Message::wants(
            vec![WantEntry::block(BlockAddress::Leaf { tree, index: 0 })],
            false,
        ),
    )
    .await
    .unwrap();
    eventually("the block request after the flood", async || {
        (heard.deliveries.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(
        heard.answers.load(Ordering::SeqCst),
        0,
        "nothing answered while the lookup is held"
    );

    // One penalty per list that did not fit; the flooder is not disconnected for it.
    let flooder = nf.local_peer_id();
    let expected = -LOW_TOLERANCE_PENALTY * over_limit_lists as f64;
    let score = eventually("the flooder's penalties", async || {
        let peers = nv.peers().await.unwrap();
        let p = peers
            .iter()
            .find(|p| p.peer == flooder)
            .expect("the flooder was disconnected");
        (p.score <= 0.9 * expected).then_some(p.score)
    })
    .await;
    assert!(
        score >= expected - 0.5 && score > DISCONNECT_SCORE,
        "score {score}, expected {expected}"
    );

    // The node stays responsive: an honest peer downloads from it meanwhile.
    let (h, nh) = node(&cancel, StoreConfig::default()).await;
    connect(&nh, &nv).await;
    let got = tokio::time::timeout(WAIT, async {
        let m = h.fetch_manifest(cid).await.unwrap();
        let parts: Vec<Bytes> = h.stream_network(&m).unwrap().try_collect().await.unwrap();
        parts.concat()
    })
    .await
    .expect("the honest download timed out during the flood");
    assert_eq!(got, original, "the honest download");
    assert_eq!(LOOKUP.held(), 1, "the flooder's lookup was held throughout");

    // Lookups resume: the held list and the queue are answered. A last query, answered after
    // everything queued before it, marks the end.
    LOOKUP.open();
    let answered = FIRST + QUEUED;
    eventually("the queued queries' answers", async || {
        (heard.answers.load(Ordering::SeqCst) as u64 >= answered).then_some(())
    })
    .await;
    let last = FIRST + FLOOD;
    nf.send(victim, &have_queries(tree, last..last + 1))
        .await
        .unwrap();
    eventually("the last query's answer", async || {
        let map = heard
            .presences
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.contains_key(&BlockAddress::Leaf { tree, index: last })
            .then_some(())
    })
    .await;
    assert_eq!(heard.answers.load(Ordering::SeqCst) as u64, answered + 1);
    let map = heard
        .presences
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for index in 0..=last {
        let got = map.get(&BlockAddress::Leaf { tree, index });
        if index < answered || index == last {
            let want = if index < nleaves {
                Presence::Have
            } else {
                Presence::DontHave
            };
            assert_eq!(got, Some(&vec![want]), "leaf {index}: answered once");
        } else {
            assert_eq!(got, None, "leaf {index} was over the limit: dropped");
        }
    }
    drop(map);
    cancel.cancel();
}
