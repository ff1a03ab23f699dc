//! Background downloads (`POST /data/{cid}/network`) outlast temporary conditions and keep
//! their resume record (found by review).

mod common;

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use cairn_core::{Block, BlockAddress};
use cairn_node::StoreConfig;
use common::{connect, data, metered_node, node, node_with, upload, wait_until};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait: a retry comes `BACKGROUND_RETRY_PAUSE` (5 s) after a failed attempt.
const WAIT: Duration = Duration::from_secs(30);

/// Checks the locally stored copy of dataset `cid` on `node` against `original`.
async fn stored_copy(node: &cairn_node::Node, cid: cairn_core::Cid, original: &[u8]) {
    use futures::TryStreamExt;
    let m = node.manifest(cid).await.unwrap();
    let got: Vec<Bytes> = node.stream_dataset(&m).try_collect().await.unwrap();
    assert_eq!(got.concat(), original);
}

/// A node whose engine holds `MAX_PENDING_WANTS` wants refuses more with `Busy`, a moment's
/// condition. A background download that met it used to fail for good (and forget its resume
/// record); it now waits for room (and past `BUSY_PATIENCE`, tries again as a whole), keeps its
/// record, and completes once the engine has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_engine_pauses_a_background_download() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let original = data(6 * 65536 + 1, 41);
    let cid = upload(&a, &original).await;
    let (b, nb, metrics) = metered_node(&cancel, StoreConfig::default()).await;
    connect(&nb, &na).await;
    b.fetch_manifest(cid).await.unwrap();
    let held = take_every_want_slot(&b).await;
    b.download(cid).await.unwrap();
    wait_until("the download wants its blocks", WAIT, || {
        metrics.downloads.blocks_network.get() > 0
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0, "the download gave up");
    assert_eq!(
        b.store().fetches(10).unwrap(),
        vec![cid],
        "its record is lost"
    );
    drop(held); // the engine drops wants nobody waits for
    wait_until("the download completes", WAIT, || {
        metrics.downloads.completed.count() == 1
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0);
    stored_copy(&b, cid, &original).await;
    assert!(b.store().fetches(10).unwrap().is_empty());
    cancel.cancel();
}

/// A streamed download (`GET /data/{cid}/network/stream`) whose blocks the engine refuses
/// for want of room (`Busy`) waits for room and completes. It used to fail mid-body at the
/// first refusal, though room comes back as other downloads' blocks arrive (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_engine_pauses_a_stream() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let original = data(6 * 65536 + 1, 45);
    let cid = upload(&a, &original).await;
    let (b, nb, metrics) = metered_node(&cancel, StoreConfig::default()).await;
    connect(&nb, &na).await;
    let manifest = b.fetch_manifest(cid).await.unwrap();
    let held = take_every_want_slot(&b).await;
    let stream = b.stream_network(&manifest).unwrap();
    let reading = tokio::spawn(stream.try_collect::<Vec<Bytes>>());
    // The stream asked for its blocks (the engine drops `held` only on its next tick, so
    // this ask meets a full engine).
    wait_until("the stream wants its blocks", WAIT, || {
        metrics.downloads.blocks_network.get() > 0
    })
    .await;
    drop(held);
    let got = tokio::time::timeout(WAIT, reading)
        .await
        .expect("the stream ends")
        .unwrap()
        .expect("the stream completes");
    assert_eq!(got.concat(), original);
    cancel.cancel();
}

/// Takes every want slot of `node`'s engine with blocks nobody has; they stay taken while the
/// receivers returned are held.
async fn take_every_want_slot(
    node: &cairn_node::Node,
) -> Vec<tokio::sync::oneshot::Receiver<Result<Block, cairn_node::engine::FetchError>>> {
    let fillers: Vec<_> = (0..cairn_node::engine::MAX_PENDING_WANTS as u64)
        .map(|i| {
            let block = Block::data_block(Bytes::copy_from_slice(&i.to_le_bytes()));
            (BlockAddress::Block(*block.cid()), None)
        })
        .collect();
    node.engine().unwrap().want_many(fillers).await
}

/// Free disk space the store of [`a_full_disk_pauses_a_background_download`] sees.
static FREE: AtomicU64 = AtomicU64::new(1 << 40);
/// Set: the next local check of a download (`get_leaves`) finds the disk full.
static FILL_AT_CHECK: AtomicBool = AtomicBool::new(false);

fn free_space() -> u64 {
    FREE.load(Ordering::SeqCst)
}

fn fill_disk(point: &'static str) {
    if point == "get_leaves" && FILL_AT_CHECK.swap(false, Ordering::SeqCst) {
        FREE.store(0, Ordering::SeqCst);
    }
}

/// The disk filling up (another program) while a background download runs stops it for the
/// moment; README promises the node carries on by itself once space is freed. The download
/// used to fail for good and forget its resume record; it now tries again and completes once
/// the disk has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_a_background_download() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let original = data(6 * 65536 + 1, 42);
    let cid = upload(&a, &original).await;
    let store = StoreConfig {
        free_space_hook: Some(free_space),
        crash_hook: Some(fill_disk),
        ..StoreConfig::default()
    };
    let (b, nb, metrics) = metered_node(&cancel, store).await;
    connect(&nb, &na).await;
    FILL_AT_CHECK.store(true, Ordering::SeqCst);
    b.download(cid).await.unwrap();
    paused_and_kept(&b, &metrics, cid, "disk space").await;
    FREE.store(1 << 40, Ordering::SeqCst);
    wait_until("the download completes", WAIT, || {
        metrics.downloads.completed.count() == 1
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0);
    stored_copy(&b, cid, &original).await;
    cancel.cancel();
}

/// A download resumed at start that does not fit in the quota now is kept for the next start,
/// as `resume_downloads` says: its manifest and its record stay. The refusal used to drop the
/// manifest of a dataset with no block here (as for a new request), and with it the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_refused_for_room_is_kept() {
    let cancel = CancellationToken::new();
    let (a, _) = node(&cancel).await;
    let cid = upload(&a, &data(10 * 65536, 43)).await;
    let quota = StoreConfig {
        quota_bytes: 100_000,
        ..StoreConfig::default()
    };
    let (b, _) = node_with(&cancel, quota).await;
    b.store()
        .put_block(&a.store().get_block(&cid).unwrap().unwrap())
        .unwrap();
    b.store().add_fetch(&cid).unwrap();
    assert_eq!(b.resume_downloads().await, 0);
    assert_eq!(
        b.store().fetches(10).unwrap(),
        vec![cid],
        "the record is lost"
    );
    assert!(b.manifest(cid).await.is_ok(), "the manifest is gone");
    cancel.cancel();
}

/// A protected (erasure-coded) dataset of 6 leaves (2 groups of 2 data blocks and 1 parity
/// block) over the tree of a 6-block upload on `a`, whose download yields its first 4 blocks
/// less 5 bytes; stored on `a`. Returns its manifest CID and the bytes a download yields.
async fn protected_dataset(a: &cairn_node::Node) -> (cairn_core::Cid, Vec<u8>) {
    let original = data(6 * 65536, 44);
    let plain = upload(a, &original).await;
    let m = a.manifest(plain).await.unwrap();
    let size = 4 * 65536 - 5;
    let protected = cairn_core::Manifest {
        erasure: Some(cairn_core::manifest::ErasureInfo {
            ec_k: 2,
            ec_m: 1,
            original_tree_cid: m.tree_cid,
            original_dataset_size: size,
            protected_strategy: 0,
            verification: None,
        }),
        ..m
    };
    assert_eq!(protected.blocks_count(), 6);
    let block = protected.to_block();
    a.store().put_block(&block).unwrap();
    (*block.cid(), original[..size as usize].to_vec())
}

/// A download of a protected dataset fetches the blocks its bytes come from (the data blocks,
/// `download_size`), and is complete once those are stored. It used to check every leaf of
/// the tree, parity included, when it ended, and so always failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_dataset_downloads() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (cid, bytes) = protected_dataset(&a).await;

    let (b, nb) = node(&cancel).await;
    connect(&nb, &na).await;
    let m = tokio::time::timeout(WAIT, b.download_and_wait(cid))
        .await
        .expect("the download hangs")
        .expect("the download failed");
    stored_copy(&b, cid, &bytes).await;
    assert!(
        !b.store().has_leaf(&m.tree_cid, 4).unwrap(),
        "a parity block was fetched"
    );

    let (c, nc, metrics) = metered_node(&cancel, StoreConfig::default()).await;
    connect(&nc, &na).await;
    c.download(cid).await.unwrap();
    wait_until("the background download ends", WAIT, || {
        metrics.downloads.active.get() == 0
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0, "the download failed");
    assert_eq!(metrics.downloads.completed.count(), 1);
    stored_copy(&c, cid, &bytes).await;
    assert!(c.store().fetches(10).unwrap().is_empty());
    cancel.cancel();
}

/// Waits (bounded) until `node`'s background download of `cid` has stalled for `what`, then
/// checks it has not given up and its resume record is kept.
async fn paused_and_kept(
    node: &cairn_node::Node,
    metrics: &cairn_node::metrics::NodeMetrics,
    cid: cairn_core::Cid,
    what: &str,
) {
    wait_until(&format!("the download waits for {what}"), WAIT, || {
        metrics.downloads.stalls.get() >= 1
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0, "the download gave up");
    assert_eq!(
        node.store().fetches(10).unwrap(),
        vec![cid],
        "its record is kept"
    );
}
