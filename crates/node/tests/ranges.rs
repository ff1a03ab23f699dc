//! Range reads touch only the blocks that hold the range: locally (a store holding only those
//! blocks serves the range, and fails for a range one byte wider), and over the network (the
//! downloader receives, and the provider sends, exactly the covering blocks; nothing else is
//! stored).

use std::time::Duration;

use bytes::Bytes;
use cairn_core::{Cid, VerifiedLeaf};
use cairn_node::{ByteRange, Node, NodeConfig, NodeError, Store, StoreConfig};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

mod common;
use common::{connect, data, node, upload};

const WAIT: Duration = Duration::from_secs(60);
const BS: u64 = 65536;
/// Interval between two looks at a counter that is expected to change.
const POLL: Duration = Duration::from_millis(5);

fn range(start: u64, end: u64) -> ByteRange {
    ByteRange::new(start, end).unwrap()
}

async fn collect(s: cairn_node::ByteStream) -> Result<Vec<u8>, NodeError> {
    let parts: Vec<Bytes> = tokio::time::timeout(WAIT, s.try_collect())
        .await
        .expect("stream timed out")?;
    Ok(parts.concat())
}

fn slice(bytes: &[u8], r: ByteRange) -> &[u8] {
    &bytes[r.start() as usize..r.end() as usize]
}

/// A node whose store holds dataset `cid` of `from` but only its leaves `keep`.
async fn partial_copy(from: &Node, cid: Cid, keep: std::ops::Range<u64>) -> Node {
    let to = Node::new(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig::default(),
    );
    let m = from.manifest(cid).await.unwrap();
    to.store()
        .put_block(&from.store().get_block(&cid).unwrap().unwrap())
        .unwrap();
    let leaves: Vec<_> = keep
        .map(|i| {
            let (b, p) = from.store().get_leaf(&m.tree_cid, i).unwrap().unwrap();
            VerifiedLeaf::verify(m.tree_cid, i, m.blocks_count(), b, p).unwrap()
        })
        .collect();
    to.store().put_leaves(&m.tree_cid, &leaves).unwrap();
    to
}

/// Blocks 2..=4 of 7 are all the store has: every range inside them streams (first, middle and
/// last of those blocks, across their boundaries); a range reaching one byte into block 1 or 5
/// fails, so a read outside the covering blocks cannot go unnoticed.
#[tokio::test]
async fn local_range_reads_only_the_covering_blocks() {
    let full = Node::new(
        Store::in_memory(StoreConfig::default()).unwrap(),
        NodeConfig::default(),
    );
    let original = data(6 * BS as usize + 1000, 5);
    let cid = upload(&full, &original).await;
    let node = partial_copy(&full, cid, 2..5).await;
    let m = node.manifest(cid).await.unwrap();
    for r in [
        range(2 * BS, 5 * BS),          // exactly the three blocks
        range(2 * BS, 2 * BS + 1),      // first byte of the first
        range(3 * BS + 7, 3 * BS + 99), // inside the middle one
        range(3 * BS - 5, 3 * BS + 5),  // across a boundary
        range(5 * BS - 1, 5 * BS),      // last byte of the last
    ] {
        let got = collect(node.stream_dataset_range(&m, r).unwrap()).await;
        assert_eq!(got.unwrap(), slice(&original, r), "{r:?}");
    }
    for r in [range(2 * BS - 1, 3 * BS), range(4 * BS, 5 * BS + 1)] {
        let got = collect(node.stream_dataset_range(&m, r).unwrap()).await;
        assert!(matches!(got, Err(NodeError::NotFound)), "{r:?}: {got:?}");
    }
    // The last, partial block of the full copy; and past the end.
    let m = full.manifest(cid).await.unwrap();
    let size = original.len() as u64;
    let tail = range(size - 1500, size);
    let got = collect(full.stream_dataset_range(&m, tail).unwrap()).await;
    assert_eq!(got.unwrap(), slice(&original, tail));
    assert!(matches!(
        full.stream_dataset_range(&m, range(0, size + 1)),
        Err(NodeError::RangeOutOfBounds { .. })
    ));
}

/// B streams ranges of a dataset only A holds: B receives and A sends exactly the blocks that
/// cover each range (a block B already has is not fetched again), B stores those and no other,
/// and the bytes are the original's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_range_fetches_only_the_covering_blocks() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let (b, nb) = node(&cancel).await;
    let original = data(10 * BS as usize + 4321, 6);
    let size = original.len() as u64;
    let cid = upload(&a, &original).await;
    connect(&nb, &na).await;
    let m = tokio::time::timeout(WAIT, b.fetch_manifest(cid))
        .await
        .expect("manifest timed out")
        .unwrap();
    // A counts a block as sent when its serving task ends, which can be after B has it: wait
    // for A's count to reach what is expected, then check it went no further.
    let sent_reaches = |want: u64| {
        let a = a.clone();
        async move {
            let sent = || async { a.engine().unwrap().stats().await.unwrap().blocks_sent };
            tokio::time::timeout(WAIT, async {
                while sent().await < want {
                    tokio::time::sleep(POLL).await;
                }
            })
            .await
            .expect("A's sent count did not reach the expected value");
            sent().await
        }
    };
    let received = || {
        let b = b.clone();
        async move { b.engine().unwrap().stats().await.unwrap().blocks_received }
    };
    let stored = || {
        let s = b.store().clone();
        let tree = m.tree_cid;
        async move {
            tokio::task::spawn_blocking(move || {
                (0..11)
                    .filter(|i| s.has_leaf(&tree, *i).unwrap())
                    .collect::<Vec<u64>>()
            })
            .await
            .unwrap()
        }
    };
    // The manifest.
    assert_eq!(sent_reaches(1).await, 1);
    assert_eq!(received().await, 1);

    let mut total = 1;
    // Across two block boundaries, in the middle: blocks 2..=5.
    for (r, new_blocks, now_stored) in [
        (range(3 * BS - 10, 5 * BS + 20), 4, vec![2, 3, 4, 5]),
        // The first block and into the third, which B has: blocks 0 and 1 are fetched.
        (range(0, 2 * BS + 1), 2, vec![0, 1, 2, 3, 4, 5]),
        // A suffix inside the last, partial block.
        (range(size - 100, size), 1, vec![0, 1, 2, 3, 4, 5, 10]),
    ] {
        let got = collect(b.stream_network_range(&m, r).unwrap()).await;
        assert_eq!(got.unwrap(), slice(&original, r), "{r:?}");
        total += new_blocks;
        assert_eq!(received().await, total, "B received for {r:?}");
        assert_eq!(sent_reaches(total).await, total, "A sent for {r:?}");
        assert_eq!(stored().await, now_stored, "B's leaves after {r:?}");
    }
    // The rest, then all of it from B's own store.
    let all = collect(b.stream_network(&m).unwrap()).await.unwrap();
    assert_eq!(all, original);
    assert_eq!(stored().await, (0..11).collect::<Vec<_>>());
    assert!(matches!(
        b.stream_network_range(&m, range(size, size + 1)),
        Err(NodeError::RangeOutOfBounds { .. })
    ));
    cancel.cancel();
}
