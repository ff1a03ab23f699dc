//! A network stream's resources (its reservation, provider watch, buffers and task) are held
//! only while its reader reads, and a stream of a manifest that does not fit its tree, or the
//! network, fails with a clear error (found by review).

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn_node::{NodeConfig, StoreConfig, metrics::NodeMetrics};
use common::{connect, data, node, node_configured, upload, wait_until};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(30);

/// The reader stall limit of these tests (60 s by default).
const STALL: Duration = Duration::from_millis(300);

/// A stream whose reader takes nothing is stopped after the stall limit also when what waits
/// is its last chunk: the dataset has one block more than the stream's channel holds, so every
/// block but the last fits in the channel and the last chunk was sent without a time limit,
/// holding the stream's task, its reservation and its provider watch for as long as the
/// client kept the connection open. The stopped stream counts as cancelled, and its reader
/// later gets the chunks that were buffered, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_releases_a_stream_waiting_to_send_its_last_chunk() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let buffered = cairn_node::DOWNLOAD_READAHEAD_BLOCKS;
    let original = data(buffered * 65536 + 100, 31);
    let cid = upload(&a, &original).await;
    let metrics = NodeMetrics::default();
    let config = NodeConfig {
        metrics: metrics.clone(),
        reader_stall_timeout: STALL,
        ..NodeConfig::default()
    };
    let (b, nb) = node_configured(&cancel, StoreConfig::default(), config).await;
    connect(&nb, &na).await;
    let m = b.fetch_manifest(cid).await.unwrap();
    let s = b.stream_network(&m).unwrap();
    wait_until("the stream stops for its stalled reader", WAIT, || {
        metrics.downloads.cancelled.count() == 1 && metrics.downloads.active.get() == 0
    })
    .await;
    assert_eq!(metrics.downloads.completed.count(), 0);
    let got: Vec<Bytes> = tokio::time::timeout(WAIT, s.try_collect())
        .await
        .expect("the stopped stream does not end")
        .unwrap();
    assert_eq!(got.len(), buffered, "only the buffered chunks");
    assert_eq!(got.concat(), original[..buffered * 65536]);
    cancel.cancel();
}

/// Local downloads whose clients read nothing hold no blocking thread: the node's store calls
/// (which all run on tokio's blocking pool) still get one. Each local stream used to read on a
/// blocking thread and wait there for its reader (review: enough stalled clients used up the
/// pool, and the whole node hung). Here the pool has two threads and four streams wait.
#[test]
fn stalled_local_readers_do_not_hold_blocking_threads() {
    const BLOCKS: usize = 40;
    let store = cairn_node::Store::in_memory(StoreConfig::default()).unwrap();
    let original = data(BLOCKS * 65536, 57);
    // Stored through the store itself: an upload would need more blocking threads than two.
    let mut w = store.begin_dataset().unwrap();
    for chunk in original.chunks(65536) {
        w.write(&cairn_core::Block::data_block(Bytes::copy_from_slice(
            chunk,
        )))
        .unwrap();
    }
    let stored = w
        .finish(cairn_node::DatasetMeta {
            dataset_size: original.len() as u64,
            block_size: 65536,
            filename: None,
            mimetype: None,
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let node = cairn_node::Node::new(store, NodeConfig::default());
        let m = stored.manifest;
        let streams: Vec<_> = (0..4).map(|_| node.stream_dataset(&m)).collect();
        tokio::time::timeout(WAIT, node.space())
            .await
            .expect("a store call waited for a thread held by a stalled stream")
            .unwrap();
        // The streams still read whole and right.
        for s in streams {
            let parts: Vec<Bytes> = tokio::time::timeout(WAIT, s.try_collect())
                .await
                .expect("stream")
                .unwrap();
            assert_eq!(parts.concat(), original);
        }
    });
}

/// A stream whose reader hangs up while the download waits for a block (nobody has it) stops
/// at once: its wants, reservation and provider watch go with it. Before, the download noticed
/// only when the block came or failed (`NO_HOLDER_TIMEOUT`, 30 s), and a client that opened
/// and dropped streams in a loop could fill the engine's want list (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_hangs_up_stops_while_waiting_for_a_block() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let cid = upload(&a, &data(3 * 65536, 32)).await;
    let metrics = NodeMetrics::default();
    let config = NodeConfig {
        metrics: metrics.clone(),
        ..NodeConfig::default()
    };
    let (b, nb) = node_configured(&cancel, StoreConfig::default(), config).await;
    connect(&nb, &na).await;
    let m = b.fetch_manifest(cid).await.unwrap();
    // Nobody has the blocks now.
    a.delete(cid).await.unwrap();
    let s = b.stream_network(&m).unwrap();
    wait_until("the stream waits for its first block", WAIT, || {
        metrics.downloads.active.get() == 1
    })
    .await;
    drop(s);
    // Well within the time the want would take to fail.
    let limit = cairn_node::engine::NO_HOLDER_TIMEOUT / 3;
    wait_until("the stream stops for its gone reader", limit, || {
        metrics.downloads.cancelled.count() == 1 && metrics.downloads.active.get() == 0
    })
    .await;
    assert_eq!(metrics.downloads.failed.count(), 0);
    cancel.cancel();
}

/// A manifest that claims smaller blocks than its tree's (here 64 KiB for 128 KiB leaves)
/// fails the download with `LongBlock` as the first leaf arrives. Before, leaves were cut to
/// the claimed size and the download "succeeded" with the first half of each, while the
/// window, sized for the claimed blocks, could hold far more memory than it was meant to
/// (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_claiming_smaller_blocks_than_its_tree_fails_the_download() {
    const CLAIMED: usize = 65536;
    let cancel = CancellationToken::new();
    let blocks = [data(2 * CLAIMED, 40), data(2 * CLAIMED, 41)];
    let got = stream_of_made_up_dataset(&cancel, &blocks, 2 * CLAIMED as u64, CLAIMED as u64).await;
    match got {
        Err(cairn_node::NodeError::LongBlock {
            index: 0,
            len,
            block_size,
        }) => {
            assert_eq!(len, 2 * CLAIMED as u64);
            assert_eq!(block_size, CLAIMED as u64);
        }
        other => panic!(
            "expected LongBlock for block 0, got {:?}",
            other.map(|chunks| chunks.iter().map(Bytes::len).collect::<Vec<_>>())
        ),
    }
    cancel.cancel();
}

/// A network stream of a dataset whose blocks no block-exchange message could carry fails at
/// once with `BlockTooLarge`, as the API's downloads do; the node's own stream methods used to
/// fetch it anyway (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_blocks_too_large_for_the_network_is_refused() {
    let cancel = CancellationToken::new();
    let block_size = cairn_node::MAX_NETWORK_BLOCK_SIZE + 1;
    let got = stream_of_made_up_dataset(&cancel, &[data(100, 50)], 100, block_size).await;
    assert!(
        matches!(got, Err(cairn_node::NodeError::BlockTooLarge { .. })),
        "{:?}",
        got.map(|chunks| chunks.len())
    );
    cancel.cancel();
}

/// Stores `blocks` on a node as a dataset whose manifest says `dataset_size` and `block_size`
/// (whatever the blocks are), and streams it from a second node over the network.
async fn stream_of_made_up_dataset(
    cancel: &CancellationToken,
    blocks: &[Vec<u8>],
    dataset_size: u64,
    block_size: u64,
) -> Result<Vec<Bytes>, cairn_node::NodeError> {
    let (a, na) = node(cancel).await;
    let mut w = a.store().begin_dataset().unwrap();
    for b in blocks {
        w.write(&cairn_core::Block::data_block(Bytes::from(b.clone())))
            .unwrap();
    }
    let cid = w
        .finish(cairn_store::DatasetMeta {
            dataset_size,
            block_size,
            filename: None,
            mimetype: None,
        })
        .unwrap()
        .manifest_cid;
    let (b, nb) = node(cancel).await;
    connect(&nb, &na).await;
    let m = b.fetch_manifest(cid).await.unwrap();
    let s = b.stream_network(&m).unwrap();
    tokio::time::timeout(WAIT, s.try_collect())
        .await
        .expect("the stream does not end")
}
