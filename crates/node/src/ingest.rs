//! The ingest pipeline (see the crate docs for the picture).

use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use cairn_core::{Block, Chunker, DEFAULT_BLOCK_SIZE};
use cairn_store::{DatasetMeta, DatasetWriter, Store, StoreError};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{NodeError, node::StoredDataset};

/// Blocks queued between the chunker and the hasher: 16 × 64 KiB = 1 MiB, enough to absorb
/// jitter between the stages without letting a slow disk grow memory.
pub const INGEST_QUEUE_BLOCKS: usize = 16;

/// Blocks queued between the hasher and the writer: 64 × 64 KiB = 4 MiB. The store hands an
/// upload's bytes to the device in 4 MiB direct writes, and the writer thread waits for each one;
/// this queue lets the hasher keep going meanwhile (measured before the store's I/O thread
/// existed: with 16 blocks a quiet 1 GiB run reached 0.70 of the SHA-256 rate, with 64 blocks
/// 0.82–0.83).
pub const WRITE_QUEUE_BLOCKS: usize = 64;

/// What the uploader says besides the bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadInfo {
    pub(crate) filename: Option<String>,
    pub(crate) mimetype: Option<String>,
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
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.begin_dataset()).await??
    };
    let (raw_tx, mut raw_rx) = mpsc::channel::<Bytes>(INGEST_QUEUE_BLOCKS);
    let (hashed_tx, hashed_rx) = std_mpsc::sync_channel::<Block>(WRITE_QUEUE_BLOCKS);

    // Stage 2: hash each block (the CPU floor) on its own thread.
    let hasher = tokio::task::spawn_blocking(move || {
        while let Some(data) = raw_rx.blocking_recv() {
            if hashed_tx.send(Block::data_block(data)).is_err() {
                break; // the writer stopped; its error is reported from there
            }
        }
    });
    // Stage 3: append to the store on another thread.
    let writer_task = tokio::task::spawn_blocking(move || {
        let mut writer: DatasetWriter = writer;
        let mut result: Result<(), StoreError> = Ok(());
        for block in hashed_rx {
            if let Err(e) = writer.write(&block) {
                result = Err(e);
                break;
            }
        }
        (writer, result)
    });

    // Stage 1: read the body and cut blocks, here on the runtime (it is I/O bound).
    let mut chunker = Chunker::new(DEFAULT_BLOCK_SIZE);
    let mut body = std::pin::pin!(body);
    let mut body_error = None;
    let mut blocks = Vec::with_capacity(2);
    'read: while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => {
                chunker.push_bytes(&bytes, |b| blocks.push(b));
                for b in blocks.drain(..) {
                    if raw_tx.send(b).await.is_err() {
                        break 'read; // a later stage stopped
                    }
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
        let _ = raw_tx.send(b).await;
    }
    drop(raw_tx);
    hasher.await?;
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
