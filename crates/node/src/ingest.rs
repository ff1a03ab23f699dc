//! The ingest pipeline (see the crate docs for the picture).

use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use cairn_core::{Block, Chunker, DEFAULT_BLOCK_SIZE};
use cairn_store::{DatasetMeta, DatasetWriter, Store, StoreError};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{NodeError, node::StoredDataset};

/// Blocks queued between the chunker and the hashers (split evenly over the lanes): 16 × 64 KiB = 1 MiB, enough to absorb
/// jitter between the stages without letting a slow disk grow memory.
pub const INGEST_QUEUE_BLOCKS: usize = 16;

/// Blocks queued between the hasher and the writer: 64 × 64 KiB = 4 MiB. The store hands an
/// upload's bytes to the device in 4 MiB direct writes, and the writer thread waits for each one;
/// this queue lets the hasher keep going meanwhile (measured before the store's I/O thread
/// existed: with 16 blocks a quiet 1 GiB run reached 0.70 of the SHA-256 rate, with 64 blocks
/// 0.82–0.83).
pub const WRITE_QUEUE_BLOCKS: usize = 64;

/// Most hashing threads one upload uses. SHA-256 is the CPU floor of ingest and blocks hash
/// independently, so an upload hashes on up to this many threads (fewer when the machine has
/// fewer cores); beyond four, one upload would only take cores from the rest of the node.
pub const MAX_INGEST_HASHERS: usize = 4;

/// How many hashing lanes an upload uses: one per available core, at most
/// [`MAX_INGEST_HASHERS`].
fn hasher_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_INGEST_HASHERS)
}

/// What the uploader says besides the bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadInfo {
    pub(crate) filename: Option<String>,
    pub(crate) mimetype: Option<String>,
    /// The body's length when the client said it (`Content-Length`): the room for it is then
    /// reserved before the first byte is read.
    pub(crate) size: Option<u64>,
}

/// Room an upload's manifest takes beside its blocks: its fixed fields take under 200 bytes,
/// plus the filename (at most 4,096 bytes in the API, directories included) and the mimetype
/// (under 100 bytes for every type the API takes).
pub(crate) const MANIFEST_ROOM: u64 = 8192;

/// Bytes an upload of `size` bytes of data takes in the store at most: whole blocks (the last
/// one is zero-padded) and its manifest.
pub(crate) fn stored_size(size: u64) -> u64 {
    size.div_ceil(DEFAULT_BLOCK_SIZE as u64)
        .saturating_mul(DEFAULT_BLOCK_SIZE as u64)
        .saturating_add(MANIFEST_ROOM)
}

/// Runs the pipeline over `body` and stores the dataset.
pub(crate) async fn ingest<S, E>(
    store: &Store,
    body: S,
    info: UploadInfo,
) -> Result<StoredDataset, NodeError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ingest_with_lanes(store, body, info, hasher_lanes()).await
}

/// [`ingest`] with `lanes` hashing threads (at least one).
async fn ingest_with_lanes<S, E>(
    store: &Store,
    body: S,
    info: UploadInfo,
    lanes: usize,
) -> Result<StoredDataset, NodeError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let lanes = lanes.max(1);
    let writer = {
        let store = store.clone();
        let size = info.size;
        tokio::task::spawn_blocking(move || {
            let mut w = store.begin_dataset()?;
            if let Some(size) = size {
                w.reserve(stored_size(size))?;
            }
            Ok::<_, cairn_store::StoreError>(w)
        })
        .await??
    };
    let mut raw_txs = Vec::with_capacity(lanes);
    let mut hashed_rxs = Vec::with_capacity(lanes);
    let mut hashers = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (raw_tx, mut raw_rx) = mpsc::channel::<Bytes>(INGEST_QUEUE_BLOCKS.div_ceil(lanes));
        let (hashed_tx, hashed_rx) =
            std_mpsc::sync_channel::<Block>(WRITE_QUEUE_BLOCKS.div_ceil(lanes));
        // Stage 2: hash each block (the CPU floor) on a blocking thread per lane.
        hashers.push(tokio::task::spawn_blocking(move || {
            while let Some(data) = raw_rx.blocking_recv() {
                if hashed_tx.send(Block::data_block(data)).is_err() {
                    break; // the writer stopped; its error is reported from there
                }
            }
        }));
        raw_txs.push(raw_tx);
        hashed_rxs.push(hashed_rx);
    }
    // Stage 3: append to the store on another thread, taking block k from lane k mod lanes so
    // the blocks reach the segment in upload order. The first lane that has nothing more marks
    // the end: blocks were dealt out in order, so no later block exists either.
    // Set when the writer fails, so that the body is not waited for any more: a client that
    // paused (or waits for an answer) got it only when it sent more, or at the idle limit
    // (found by review).
    let failed = tokio_util::sync::CancellationToken::new();
    let writer_task = {
        let failed = failed.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer: DatasetWriter = writer;
            let mut result: Result<(), StoreError> = Ok(());
            for lane in (0..hashed_rxs.len()).cycle() {
                let Ok(block) = hashed_rxs[lane].recv() else {
                    break;
                };
                if let Err(e) = writer.write(&block) {
                    result = Err(e);
                    failed.cancel();
                    break;
                }
            }
            (writer, result)
        })
    };

    // Stage 1: read the body and cut blocks, here on the runtime (it is I/O bound).
    let mut chunker = Chunker::new(DEFAULT_BLOCK_SIZE);
    let mut body = std::pin::pin!(body);
    let mut body_error = None;
    let mut blocks = Vec::with_capacity(2);
    let mut next_lane = 0usize;
    'read: loop {
        let item = tokio::select! {
            biased;
            () = failed.cancelled() => break 'read,
            item = body.next() => item,
        };
        let Some(item) = item else {
            break;
        };
        match item {
            Ok(bytes) => {
                chunker.push_bytes(&bytes, |b| blocks.push(b));
                for b in blocks.drain(..) {
                    if raw_txs[next_lane].send(b).await.is_err() {
                        break 'read; // a later stage stopped
                    }
                    next_lane = (next_lane + 1) % lanes;
                }
            }
            Err(e) => {
                body_error = Some(NodeError::Body(e.into()));
                break;
            }
        }
    }
    let (last, dataset_size) = chunker.finish();
    if body_error.is_none()
        && let Some(b) = last
    {
        let _ = raw_txs[next_lane].send(b).await;
    }
    drop(raw_txs);
    for hasher in hashers {
        hasher.await?;
    }
    let (writer, result) = writer_task.await?;

    let failure = match (body_error, result) {
        (Some(e), _) => Some(e),
        (None, Err(e)) => Some(NodeError::Store(e)),
        (None, Ok(())) if dataset_size == 0 => Some(NodeError::EmptyUpload),
        (None, Ok(())) => None,
    };
    if let Some(e) = failure {
        // Rolling back does I/O: keep it off the runtime.
        tokio::task::spawn_blocking(move || writer.abort()).await?;
        return Err(e);
    }
    let meta = DatasetMeta {
        dataset_size,
        block_size: DEFAULT_BLOCK_SIZE as u64,
        filename: info.filename,
        mimetype: info.mimetype,
    };
    let stored = tokio::task::spawn_blocking(move || writer.finish(meta)).await??;
    Ok(StoredDataset {
        cid: stored.manifest_cid,
        manifest: stored.manifest,
    })
}

#[cfg(test)]
mod tests {
    use cairn_core::Manifest;
    use cairn_store::StoreConfig;

    use super::*;

    /// Deterministic, block-distinct bytes (xorshift).
    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn body(data: &[u8], part: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        let parts: Vec<_> = data
            .chunks(part)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts)
    }

    /// Blocks dealt out over several hashing lanes reach the store in upload order: every lane
    /// count gives the CID of one lane, and each leaf holds the bytes at its offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_lane_count_stores_the_same_dataset() {
        let bytes = data(37 * DEFAULT_BLOCK_SIZE + 1234);
        let mut cids = Vec::new();
        for lanes in [1, 2, 3, 4, 7] {
            let store = Store::in_memory(StoreConfig::default()).unwrap();
            let stored =
                ingest_with_lanes(&store, body(&bytes, 50_000), UploadInfo::default(), lanes)
                    .await
                    .unwrap();
            let m: &Manifest = &stored.manifest;
            assert_eq!(m.dataset_size, bytes.len() as u64);
            for (i, want) in bytes.chunks(DEFAULT_BLOCK_SIZE).enumerate() {
                let (block, _) = store.get_leaf(&m.tree_cid, i as u64).unwrap().unwrap();
                assert_eq!(
                    &block.data()[..want.len()],
                    want,
                    "lanes {lanes}, block {i}"
                );
            }
            cids.push(stored.cid);
        }
        assert!(cids.windows(2).all(|w| w[0] == w[1]), "{cids:?}");
    }

    /// A store refusal in the writer stops every lane and rolls the upload back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quota_refusal_with_several_lanes_leaves_nothing() {
        let bytes = data(40 * DEFAULT_BLOCK_SIZE);
        let cfg = StoreConfig {
            quota_bytes: 10 * DEFAULT_BLOCK_SIZE as u64,
            ..StoreConfig::default()
        };
        let store = Store::in_memory(cfg).unwrap();
        let err = ingest_with_lanes(&store, body(&bytes, 70_000), UploadInfo::default(), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NodeError::Store(StoreError::QuotaExceeded { .. })),
            "{err}"
        );
        assert!(store.list_manifests().unwrap().is_empty());
        let space = store.space().unwrap();
        assert_eq!((space.quota_used_bytes, space.quota_reserved_bytes), (0, 0));
    }

    /// Two uploads that do not both fit in a 60-block quota (40 blocks each), sent at once and
    /// interleaved chunk by chunk; `sized` says whether each gives its size (`Content-Length`).
    /// Exactly one is stored, the other is refused, and nothing of it stays.
    async fn two_uploads_that_do_not_both_fit(sized: bool) {
        let bs = DEFAULT_BLOCK_SIZE;
        let (one, two) = (data(40 * bs), data(40 * bs + 7));
        let cfg = StoreConfig {
            quota_bytes: 60 * bs as u64,
            ..StoreConfig::default()
        };
        let store = Store::in_memory(cfg).unwrap();
        let info = |len: usize| UploadInfo {
            size: sized.then_some(len as u64),
            ..UploadInfo::default()
        };
        let (r1, r2) = tokio::join!(
            ingest_with_lanes(&store, body(&one, 70_000), info(one.len()), 2),
            ingest_with_lanes(&store, body(&two, 70_000), info(two.len()), 2),
        );
        let refused = |r: &Result<_, NodeError>| {
            matches!(r, Err(NodeError::Store(StoreError::QuotaExceeded { .. })))
        };
        assert!(
            (r1.is_ok() && refused(&r2)) || (refused(&r1) && r2.is_ok()),
            "sized {sized}: {:?} / {:?}",
            r1.as_ref().map(|s| s.cid),
            r2.as_ref().map(|s| s.cid)
        );
        assert_eq!(store.list_manifests().unwrap().len(), 1);
        let space = store.space().unwrap();
        assert_eq!(space.quota_reserved_bytes, 0);
        // The winner's blocks (at most 41) and its manifest, nothing of the other.
        assert!(space.quota_used_bytes <= 41 * bs as u64 + 1024, "{space:?}");
    }

    /// Uploads of known size: the first to reserve its room goes on and is stored, the second
    /// is refused before it reads a byte. Before, each reserved block by block, both ran out of
    /// room part-way and both failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_sized_uploads_that_do_not_both_fit_one_is_stored() {
        two_uploads_that_do_not_both_fit(true).await;
    }

    /// Uploads of unknown size (chunked, no `Content-Length`), which reserve block by block and
    /// so both run out of room part-way: the older one waits while the younger holds room, the
    /// younger gives way, and the older is stored. Before, both failed in 6 runs of 10 (the
    /// second refusal came while the first upload's room was still held).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_growing_uploads_that_do_not_both_fit_one_is_stored() {
        two_uploads_that_do_not_both_fit(false).await;
    }

    /// An upload of known size whose blocks would exactly fill the quota has no room for its
    /// manifest: it is refused before its body is read, not after every block went in. With
    /// room for the manifest too, it is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_manifest_is_part_of_an_uploads_room() {
        let bs = DEFAULT_BLOCK_SIZE as u64;
        let bytes = data(5 * DEFAULT_BLOCK_SIZE);
        let info = UploadInfo {
            size: Some(bytes.len() as u64),
            ..UploadInfo::default()
        };
        let tight = Store::in_memory(StoreConfig {
            quota_bytes: 5 * bs,
            ..StoreConfig::default()
        })
        .unwrap();
        assert!(tight.has_room(stored_size(5 * bs)).is_err());
        // Refused by the reservation, before the body: no block was written.
        let err = ingest_with_lanes(&tight, body(&bytes, 70_000), info.clone(), 2)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NodeError::Store(StoreError::QuotaExceeded { needed, .. }) if needed == stored_size(5 * bs)),
            "{err}"
        );
        let enough = Store::in_memory(StoreConfig {
            quota_bytes: stored_size(5 * bs),
            ..StoreConfig::default()
        })
        .unwrap();
        ingest_with_lanes(&enough, body(&bytes, 70_000), info, 2)
            .await
            .unwrap();
        assert_eq!(enough.space().unwrap().quota_reserved_bytes, 0);
    }
}
