//! The [`Node`] handle.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use cairn_core::{BlockAddress, Cid, Manifest, cid::Codec};
use cairn_net::{Multiaddr, NetEvent, NetworkHandle, PeerId};
use cairn_store::{Reservation, Space, Store};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use cairn_discovery::Discovery;

use crate::{
    NodeError,
    discover::{Discoverer, ProviderSearch},
    engine::{self, EngineHandle, FetchError},
    fetch,
    ingest::{UploadInfo, ingest},
    metrics::{Download, DownloadOutcome, NodeMetrics},
    range::ByteRange,
};

/// The largest block a network download takes: one block, its CID, its proof and the message
/// framing must fit a block-exchange frame ([`cairn_blockexc::MAX_FRAME_BYTES`]). A manifest
/// naming larger blocks (valid, up to 100 MiB) is refused before anything is fetched
/// ([`NodeError::BlockTooLarge`]): each peer that sent one would have been blamed for an
/// oversized frame, and the download could never end (found by review).
pub const MAX_NETWORK_BLOCK_SIZE: u64 = (cairn_blockexc::MAX_FRAME_BYTES
    - cairn_core::merkle::MAX_PROOF_BYTES
    - BLOCK_FRAMING_BYTES) as u64;

/// Bytes of a delivery message besides its block and proof: CIDs, the block address and the
/// protobuf field headers (well under this).
const BLOCK_FRAMING_BYTES: usize = 1024;

/// Blocks read ahead of a streaming download: 8 × 64 KiB keeps the disk busy while the client
/// drains the previous blocks, and bounds memory per download to half a MiB. Datasets of larger
/// blocks get fewer ([`DOWNLOAD_READAHEAD_BYTES`]).
pub const DOWNLOAD_READAHEAD_BLOCKS: usize = 8;
/// Bytes read ahead of a streaming download at most (one block at least, whatever its size): a
/// manifest may give blocks of megabytes, and eight of them per stream would be tens of MiB
/// (noticed in review).
pub const DOWNLOAD_READAHEAD_BYTES: u64 = 512 * 1024;

/// Blocks read ahead of a streaming download of blocks of `block_size` bytes.
fn readahead_blocks(block_size: u64) -> usize {
    let fit = DOWNLOAD_READAHEAD_BYTES / block_size.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, DOWNLOAD_READAHEAD_BLOCKS)
}

/// A manifest fetch gives up after this long with no connected peer and no DHT node that ever
/// answered: there is nobody to ask, and the full search ([`crate::engine::NO_HOLDER_TIMEOUT`],
/// 30 s) would only keep the client waiting. Long enough for a node that just started to reach
/// its bootstrap nodes.
pub const ISOLATED_GIVE_UP: Duration = Duration::from_secs(5);

/// A background download (`POST /data/{cid}/network`) gives up after this long while no peer
/// has its next missing block (the first one not stored; blocks stored after it do not count,
/// as the download is in order), or while it cannot go on for another passing reason (the
/// engine holds as many wants as it takes, the disk is full). A client streaming a download is
/// told after the engine's [`crate::engine::NO_HOLDER_TIMEOUT`]; nobody waits on a background
/// one, so it outlasts a provider's restart or a short outage.
pub const BACKGROUND_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// Pause between a background download's attempts while no peer has its next block (each
/// attempt itself waits up to [`crate::engine::NO_HOLDER_TIMEOUT`] for a holder).
pub const BACKGROUND_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Background downloads running at once ([`Node::download`]); one more is refused with
/// [`NodeError::TooManyDownloads`] (`503`) until one ends. Each holds a task, a quota
/// reservation and a provider watch; the engine's limit on pending wants bounds their blocks.
pub const MAX_BACKGROUND_DOWNLOADS: usize = 256;

/// Network streams running at once ([`Node::stream_network_of`]: `GET
/// /data/{cid}/network/stream`, and `GET /data/{cid}` of a dataset held in part); one more is
/// refused with [`NodeError::TooManyStreams`] (`503`) until one ends. Unlike a background
/// download, a stream holds the blocks of its window that arrived until its reader takes them:
/// up to [`crate::fetch::MAX_WINDOW_BYTES`] for a reader that slows down, as long as it reads
/// within the stall limit. Sixteen bound that at 512 MiB, and their windows at 8,192 of the
/// engine's 16,384 pending wants, so streams alone cannot make every other download `Busy`
/// (review: nothing bounded them but the API's 256 connections, about 8 GiB).
pub const MAX_NETWORK_STREAMS: usize = 16;

/// Background downloads resumed at start ([`Node::resume_downloads`]): as many as may run, so
/// a restart resumes every one that was running.
pub const MAX_RESUMED_DOWNLOADS: usize = MAX_BACKGROUND_DOWNLOADS;

/// After a delete the maintenance pass (reclaim, compaction) runs this much later instead of
/// at its next interval, so the disk space of deleted data comes back within a minute, not up to
/// ten. Deletes within this time share one pass. Bytes of downloaded datasets share a segment
/// that only compaction frees: a node that deleted and fetched data again every few seconds held
/// 4.2 GiB on disk for 0.46 GiB of data until the 10-minute pass.
pub const MAINTENANCE_AFTER_DELETE: Duration = Duration::from_secs(30);

/// How often a manifest fetch checks whether it still has anybody to ask: a node alone, or one
/// whose peers all said they lack the manifest after the DHT search came up empty.
const NOBODY_CHECK: Duration = Duration::from_millis(250);

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How often the maintenance worker expires blocks (`--block-mi`).
    pub maintenance_interval: Duration,
    /// The node's data directory, for diagnostics (`/debug/info`).
    pub data_dir: Option<std::path::PathBuf>,
    /// Where the engine and downloads count (see [`crate::metrics`]); by default handles
    /// registered nowhere.
    pub metrics: NodeMetrics,
    /// A network stream whose reader takes nothing for this long is stopped
    /// ([`crate::fetch::READER_STALL_TIMEOUT`] by default).
    pub reader_stall_timeout: Duration,
    /// After a delete, the maintenance pass runs this much later rather than at its next
    /// interval ([`MAINTENANCE_AFTER_DELETE`] by default).
    pub maintenance_after_delete: Duration,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            maintenance_interval: cairn_store::DEFAULT_MAINTENANCE_INTERVAL,
            data_dir: None,
            metrics: NodeMetrics::default(),
            reader_stall_timeout: crate::fetch::READER_STALL_TIMEOUT,
            maintenance_after_delete: MAINTENANCE_AFTER_DELETE,
        }
    }
}

/// A stored dataset: its manifest CID and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    /// Manifest CID.
    pub cid: Cid,
    /// Manifest.
    pub manifest: Manifest,
}

/// A cheap-to-clone handle to a running node.
#[derive(Debug, Clone)]
pub struct Node {
    store: Store,
    config: NodeConfig,
    network: Option<Network>,
    /// Told by a delete, so the maintenance pass runs soon ([`MAINTENANCE_AFTER_DELETE`]).
    deleted: Arc<tokio::sync::Notify>,
}

/// The node's network side: the swarm handle, the block-exchange engine and, when the node
/// runs the DHT, the discovery glue.
#[derive(Debug, Clone)]
struct Network {
    net: NetworkHandle,
    engine: EngineHandle,
    /// The engine's task, until [`Node::stopped`] takes it.
    engine_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    discoverer: Option<Discoverer>,
    /// The background downloads running, by manifest CID, each with its flags.
    background: Arc<Mutex<HashMap<Cid, Arc<RunFlags>>>>,
    /// The turns of the network streams ([`MAX_NETWORK_STREAMS`]).
    streams: Arc<tokio::sync::Semaphore>,
}

/// What happened to a running background download's dataset meanwhile.
#[derive(Debug, Default)]
struct RunFlags {
    /// Set when the dataset is asked for again while the download runs.
    asked_again: AtomicBool,
    /// Set when the dataset is deleted while the download runs.
    deleted: AtomicBool,
    /// Wakes an attempt waiting on its blocks when `deleted` is set.
    deleted_signal: tokio::sync::Notify,
}

impl RunFlags {
    /// Returns once `deleted` is set (at once if it is). A delete drops the engine's wants for
    /// the dataset, but an attempt that registers its wants just after that would otherwise
    /// wait for them until the engine's no-holder timeout (found in CI, under load).
    async fn until_deleted(&self) {
        loop {
            let signal = self.deleted_signal.notified();
            tokio::pin!(signal);
            // Registered before the flag is read, so a delete in between is not missed.
            signal.as_mut().enable();
            if self.deleted.load(Ordering::Relaxed) {
                return;
            }
            signal.await;
        }
    }
}

/// A background download's place among the running ones, given back when it ends.
struct Running {
    set: Arc<Mutex<HashMap<Cid, Arc<RunFlags>>>>,
    cid: Cid,
    flags: Arc<RunFlags>,
}

impl Running {
    /// Ends this download's place unless, with `restart`, it was asked for again meanwhile
    /// (then it stays, and the download starts over). Returns whether it ended. Checked and
    /// given up under one lock, so a request either sees it running (and is served by the
    /// restart) or finds it gone (and starts a download of its own).
    fn end(&self, restart: bool) -> bool {
        let mut running = self.set.lock();
        if restart && self.flags.asked_again.swap(false, Ordering::Relaxed) {
            return false;
        }
        Running::remove(&mut running, self.cid, &self.flags);
        true
    }

    /// Removes `cid`'s entry if it is still `mine` (a new download may hold it by now).
    fn remove(running: &mut HashMap<Cid, Arc<RunFlags>>, cid: Cid, mine: &Arc<RunFlags>) {
        if running.get(&cid).is_some_and(|a| Arc::ptr_eq(a, mine)) {
            running.remove(&cid);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        Running::remove(&mut self.set.lock(), self.cid, &self.flags);
    }
}

/// Streamed dataset bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, NodeError>> + Send>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, cairn_store::StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Whether a background download that met error `e` may try again (within
/// [`BACKGROUND_PATIENCE`]): no peer had its next block, the engine held as many wants as it
/// takes ([`FetchError::Busy`]), or the disk was full (the node carries on once space is
/// freed). Anything else ends it.
fn retryable(e: &NodeError) -> bool {
    matches!(e, NodeError::NotFound | NodeError::Fetch(FetchError::Busy)) || disk_full(e)
}

/// Whether `e` says the disk is full.
fn disk_full(e: &NodeError) -> bool {
    match e {
        NodeError::Fetch(FetchError::DiskFull(_)) => true,
        NodeError::Store(e) => e.is_disk_full(),
        _ => false,
    }
}

/// Whether a download ended because its dataset was deleted here: the engine dropped its wants
/// ([`FetchError::Deleted`]), or the store found the dataset gone as the download went on.
fn deleted(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Fetch(FetchError::Deleted)
            | NodeError::Store(cairn_store::StoreError::DatasetNotStored { .. })
    )
}

/// The blocks a download of dataset `manifest` fetches: those its bytes
/// ([`Manifest::download_size`]) come from. All of its tree's leaves, except for a protected
/// (erasure-coded) dataset: its data blocks, not its parity blocks.
fn data_blocks(manifest: &Manifest) -> std::ops::Range<u64> {
    ByteRange::full(manifest.download_size()).blocks(manifest.block_size)
}

/// The index of the first of the [`data_blocks`] of dataset `manifest` not stored here (their
/// end when all are; 0 when the store cannot say): how far a download in order has come.
async fn first_missing(store: &Store, manifest: &Manifest) -> u64 {
    let store = store.clone();
    let tree = manifest.tree_cid;
    let blocks = data_blocks(manifest);
    let end = blocks.end;
    blocking(move || store.first_missing_leaf(&tree, blocks))
        .await
        .map_or(0, |first| first.unwrap_or(end))
}

impl Node {
    /// A node over `store`.
    pub fn new(store: Store, config: NodeConfig) -> Node {
        Node {
            store,
            config,
            network: None,
            deleted: Arc::default(),
        }
    }

    /// A node over `store` that exchanges blocks over the swarm behind `net`, whose events
    /// arrive on `events`. The block-exchange engine runs until `cancel`.
    pub fn with_network(
        store: Store,
        config: NodeConfig,
        net: NetworkHandle,
        events: mpsc::Receiver<NetEvent>,
        cancel: CancellationToken,
    ) -> Node {
        let (engine, engine_task) = engine::spawn(
            store.clone(),
            net.clone(),
            events,
            config.metrics.clone(),
            cancel,
        );
        Node {
            store,
            config,
            deleted: Arc::default(),
            network: Some(Network {
                net,
                engine,
                engine_task: Arc::new(Mutex::new(Some(engine_task))),
                discoverer: None,
                background: Arc::default(),
                streams: Arc::new(tokio::sync::Semaphore::new(MAX_NETWORK_STREAMS)),
            }),
        }
    }

    /// Waits until the block-exchange engine has stopped (after its `cancel` fired), which
    /// includes writing the verified blocks it still held. Returns at once for a node without
    /// a network, or when another caller already waited.
    pub async fn stopped(&self) {
        let task = self
            .network
            .as_ref()
            .and_then(|n| n.engine_task.lock().take());
        if let Some(task) = task
            && let Err(e) = task.await
        {
            warn!(error = %e, "block-exchange engine failed");
        }
    }

    /// Adds the discovery DHT: stored datasets are announced (again every `reannounce`), and
    /// downloads search it for providers (see `discover.rs`). Needs a network.
    pub fn with_discovery(
        mut self,
        dht: Discovery,
        reannounce: Duration,
        cancel: CancellationToken,
    ) -> Node {
        if let Some(n) = &mut self.network {
            n.discoverer = Some(Discoverer::spawn(
                dht,
                n.net.clone(),
                self.store.clone(),
                reannounce,
                cancel,
            ));
        }
        self
    }

    /// The discovery DHT, if the node runs it.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.discoverer().map(Discoverer::dht)
    }

    fn discoverer(&self) -> Option<&Discoverer> {
        self.network.as_ref().and_then(|n| n.discoverer.as_ref())
    }

    /// Announces a stored dataset to the DHT, if the node runs it.
    fn announce(&self, manifest_cid: Cid, manifest: &Manifest) {
        if let Some(d) = self.discoverer() {
            d.announce(manifest_cid, manifest.tree_cid);
        }
    }

    /// Announces dataset `manifest` under `manifest_cid` after a download, if this node holds
    /// it whole: the manifest block `manifest_cid` itself (not a CID of the decoded manifest
    /// encoded again, which decoding's tolerance can make another) and every leaf of its tree.
    /// A provider must serve every block; a download stopped part-way, a range, or the data
    /// blocks of a protected dataset without its parity are not announced.
    async fn announce_if_whole(&self, manifest_cid: Cid, manifest: &Manifest) {
        if self.discoverer().is_none() {
            return;
        }
        let store = self.store.clone();
        let tree = manifest.tree_cid;
        let leaves = 0..manifest.blocks_count();
        let whole = blocking(move || {
            Ok(store.has_block(&manifest_cid)?
                && store.first_missing_leaf(&tree, leaves)?.is_none())
        })
        .await;
        match whole {
            Ok(true) => self.announce(manifest_cid, manifest),
            Ok(false) => debug!(%manifest_cid, "not announced: the dataset is not all here"),
            Err(e) => warn!(%manifest_cid, error = %e, "not announced: cannot check the dataset"),
        }
    }

    /// While the returned guard lives, a download of `manifest` searches the DHT for more
    /// providers when it has too few.
    fn watch_providers(&self, manifest: &Manifest) -> Option<DropGuard> {
        let n = self.network.as_ref()?;
        let d = n.discoverer.as_ref()?;
        Some(d.watch(n.engine.clone(), manifest.tree_cid))
    }

    fn network(&self) -> Result<&Network, NodeError> {
        self.network.as_ref().ok_or(NodeError::NoNetwork)
    }

    /// The data directory, if configured.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.config.data_dir.as_deref()
    }

    /// The swarm handle, if the node has a network.
    pub fn net(&self) -> Option<&NetworkHandle> {
        self.network.as_ref().map(|n| &n.net)
    }

    /// The block-exchange engine, if the node has a network.
    pub fn engine(&self) -> Option<&EngineHandle> {
        self.network.as_ref().map(|n| &n.engine)
    }

    /// The manifest `cid`: from the store, or else fetched from connected peers (and stored).
    pub async fn fetch_manifest(&self, cid: Cid) -> Result<Manifest, NodeError> {
        match self.manifest(cid).await {
            Err(NodeError::NotFound) => {}
            other => return other,
        }
        if cid.codec() != Codec::Manifest.code() {
            return Err(NodeError::NotAManifest);
        }
        // Search the DHT beside asking the connected peers, until the want ends; a provider it
        // dials gets the want as soon as it connects.
        let search = self.discoverer().map(|d| d.search_until_found(cid));
        let network = self.network()?;
        let want = network.engine.want(BlockAddress::Block(cid), None);
        let block = tokio::select! {
            got = want => got.map_err(|e| match e {
                FetchError::NotFound => NodeError::NotFound,
                e => e.into(),
            })?,
            () = self.nobody_to_ask(cid, search.as_ref()) => {
                return Err(NodeError::NotFound);
            }
        };
        // The engine answers a manifest once it is stored (and so its dataset listed), before
        // any of its leaves are asked for: leaves are only taken for a listed dataset.
        Manifest::from_block(&block).map_err(|e| NodeError::Store(e.into()))
    }

    /// Returns when nobody can be asked for block `cid` any more (checked every
    /// [`NOBODY_CHECK`]), never while somebody can:
    /// * the node has had no connected peer and no DHT node that ever answered for
    ///   [`ISOLATED_GIVE_UP`] without a break; or
    /// * at two checks in a row, every connected peer had answered that it lacks the block
    ///   ([`EngineHandle::denied_by_all`]), or the node had no peer but a joined DHT, and the
    ///   provider search, if the node has a DHT, had come up empty
    ///   ([`ProviderSearch::came_up_empty`]).
    ///
    /// Otherwise the want runs until the engine's [`crate::engine::NO_HOLDER_TIMEOUT`]: a peer
    /// that never answers (or an older node that sends no `DontHave`) is waited for.
    async fn nobody_to_ask(&self, cid: Cid, search: Option<&ProviderSearch>) {
        let Ok(network) = self.network() else {
            return;
        };
        let mut alone_since: Option<tokio::time::Instant> = None;
        let mut denied_checks = 0u32;
        loop {
            let now = tokio::time::Instant::now();
            let joined = network.discoverer.as_ref().is_some_and(|d| d.joined());
            let peers = network.net.peers().await.map(|p| p.len()).unwrap_or(0);
            alone_since = if peers == 0 && !joined {
                alone_since.or(Some(now))
            } else {
                None
            };
            if alone_since.is_some_and(|t| now.duration_since(t) >= ISOLATED_GIVE_UP) {
                info!(%cid, "no peer and no DHT node to ask for the manifest; giving up");
                return;
            }
            // Nobody connected (but the DHT joined), or every connected peer said no; and the
            // DHT knows no provider to dial.
            let denied = search.is_none_or(ProviderSearch::came_up_empty)
                && if peers == 0 {
                    joined
                } else {
                    network
                        .engine
                        .denied_by_all(BlockAddress::Block(cid))
                        .await
                        .unwrap_or(false)
                };
            // Twice in a row: a peer that connected just now may not have reached the engine
            // at the first check; by the second it has been asked and has not answered yet.
            denied_checks = if denied { denied_checks + 1 } else { 0 };
            if denied_checks >= 2 {
                info!(%cid, peers, "no connected peer has the manifest and the DHT knows no other provider; giving up");
                return;
            }
            tokio::time::sleep(NOBODY_CHECK).await;
        }
    }

    /// Streams dataset `manifest` in order, fetching the blocks that are not stored locally
    /// from peers (and storing them) as it goes.
    pub fn stream_network(&self, manifest: &Manifest) -> Result<ByteStream, NodeError> {
        self.stream_network_range(manifest, ByteRange::full(manifest.download_size()))
    }

    /// Streams the bytes `range` of dataset `manifest`, fetching the blocks that hold them and
    /// are not stored locally from peers (verified, and stored) as it goes. No other block is
    /// read or fetched. A range past the dataset's end is [`NodeError::RangeOutOfBounds`].
    pub fn stream_network_range(
        &self,
        manifest: &Manifest,
        range: ByteRange,
    ) -> Result<ByteStream, NodeError> {
        self.stream_network_with(manifest, range, None)
    }

    /// [`Node::stream_network_range`] with the room for it already reserved
    /// ([`Node::reserve_room`]), as the REST API does so that a download that cannot fit is
    /// refused before the response starts. Without one, the download reserves it first (and
    /// the stream fails at once when there is no room).
    ///
    /// The dataset is announced (when it is then held whole) under the CID of `manifest`
    /// encoded again; [`Node::stream_network_of`] takes the CID that was asked for instead.
    pub fn stream_network_with(
        &self,
        manifest: &Manifest,
        range: ByteRange,
        reservation: Option<Reservation>,
    ) -> Result<ByteStream, NodeError> {
        self.stream_network_of(manifest.cid(), manifest, range, reservation)
    }

    /// [`Node::stream_network_with`] of the dataset whose manifest block `cid` was fetched (or
    /// found) as `manifest`. Once every block of the dataset is stored here (the stream
    /// reached its end, and the range or what was already here covers the whole tree) the
    /// dataset is announced as `cid`, the block this node holds: decoding a manifest is
    /// tolerant, so `manifest` encoded again may have another CID. A stream stopped early (its
    /// reader went away or stalled) or that failed announces nothing.
    pub fn stream_network_of(
        &self,
        cid: Cid,
        manifest: &Manifest,
        range: ByteRange,
        reservation: Option<Reservation>,
    ) -> Result<ByteStream, NodeError> {
        check_range(manifest, &range)?;
        let network = self.network()?;
        let engine = network.engine.clone();
        // Held by the task until the stream has ended.
        let turn =
            network
                .streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| NodeError::TooManyStreams {
                    max: MAX_NETWORK_STREAMS,
                })?;
        let (tx, rx) = mpsc::channel(readahead_blocks(manifest.block_size));
        let store = self.store.clone();
        let manifest = manifest.clone();
        let node = self.clone();
        let metrics = self.config.metrics.downloads.clone();
        let reader = fetch::Reader {
            tx,
            stall: self.config.reader_stall_timeout,
        };
        tokio::spawn(async move {
            let _watch = node.watch_providers(&manifest);
            let started = std::time::Instant::now();
            let mut download = Download::start(&metrics);
            // The last chunk goes out only once every block of the range is stored, so a client
            // that got every byte finds them local (a later `GET /data/{cid}` serves them).
            let mut reservation = reservation;
            let r = match fetch::fetch_dataset(
                store.clone(),
                engine.clone(),
                manifest.clone(),
                range,
                Some(reader.clone()),
                &mut reservation,
                &metrics,
            )
            .await
            {
                Ok(Some(last)) => fetch::check_stored(
                    &store,
                    &engine,
                    &manifest,
                    range.blocks(manifest.block_size),
                )
                .await
                .map(|()| Some(last)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let mut outcome = match &r {
                Ok(Some(_)) => DownloadOutcome::Completed,
                Ok(None) => DownloadOutcome::Cancelled,
                Err(_) => DownloadOutcome::Failed,
            };
            match &r {
                Ok(Some(_)) => info!(
                    %cid,
                    bytes = range.len(),
                    elapsed = ?started.elapsed(),
                    "network stream finished"
                ),
                Ok(None) => debug!(
                    %cid,
                    elapsed = ?started.elapsed(),
                    "network stream stopped early: its reader went away or stalled"
                ),
                Err(_) => {} // said below, with the reason
            }
            // Only a stream that reached its end, of a dataset now held whole: a stream whose
            // reader went away (`Ok(None)`) stored only part of it.
            if matches!(r, Ok(Some(_))) {
                node.announce_if_whole(cid, &manifest).await;
            }
            // The last chunk and the error go out within the stall limit too: a reader that
            // takes nothing does not keep this task, its reservation and provider watch.
            match r {
                Ok(Some(last)) if !last.is_empty() => {
                    if !reader.send(Ok(last)).await {
                        outcome = DownloadOutcome::Cancelled;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // The client only sees its response end early; say why here.
                    if matches!(e, NodeError::NotFound) {
                        warn!(
                            %cid,
                            "network stream failed: no connected peer had the next block in time \
                             (a provider left, or none has it)"
                        );
                    } else {
                        warn!(%cid, error = %e, "network stream failed");
                    }
                    reader.send(Err(e)).await;
                }
            }
            // Counted as running until here: a download holds its resources until its reader
            // took its end (or stalled), and the stream ends only after this.
            download.finish(outcome);
            drop(download);
            drop(turn);
        });
        Ok(Box::pin(tokio_stream_from(rx)))
    }

    /// Fetches dataset `cid` (manifest and every data block) in the background; returns the
    /// manifest once it is known. The request is kept in the store until the download completes or gives
    /// up, so a node stopped meanwhile resumes it at its next start
    /// ([`Node::resume_downloads`]). A dataset already downloading in the background is not
    /// fetched twice: asking again answers its manifest and gives the running download its full
    /// patience again ([`BACKGROUND_PATIENCE`]). At most [`MAX_BACKGROUND_DOWNLOADS`] run at once.
    pub async fn download(&self, cid: Cid) -> Result<Manifest, NodeError> {
        self.start_download(cid, true).await
    }

    /// [`Node::download`]; with `forget_refused`, a dataset refused for want of room that has
    /// no block here is not left listed ([`Node::reserve_room`]). A download resumed at start
    /// keeps it: its record goes with its manifest, and it is to be tried again at the next
    /// start.
    async fn start_download(&self, cid: Cid, forget_refused: bool) -> Result<Manifest, NodeError> {
        {
            // Refused before the manifest is fetched (and stored); checked again below.
            let running = self.network()?.background.lock();
            if running.len() >= MAX_BACKGROUND_DOWNLOADS && !running.contains_key(&cid) {
                return Err(NodeError::TooManyDownloads {
                    max: MAX_BACKGROUND_DOWNLOADS,
                });
            }
        }
        let manifest = self.fetch_manifest(cid).await?;
        let running = {
            let set = &self.network()?.background;
            let mut running = set.lock();
            if let Some(flags) = running.get(&cid) {
                flags.asked_again.store(true, Ordering::Relaxed);
                debug!(%cid, "a background download of this dataset is running already");
                return Ok(manifest);
            }
            if running.len() >= MAX_BACKGROUND_DOWNLOADS {
                return Err(NodeError::TooManyDownloads {
                    max: MAX_BACKGROUND_DOWNLOADS,
                });
            }
            let flags = Arc::new(RunFlags::default());
            running.insert(cid, flags.clone());
            Running {
                set: set.clone(),
                cid,
                flags,
            }
        };
        let reservation = self
            .reserve(
                cid,
                &manifest,
                ByteRange::full(manifest.download_size()),
                forget_refused,
            )
            .await?;
        {
            let store = self.store.clone();
            if let Err(e) = blocking(move || store.add_fetch(&cid)).await {
                // The download runs all the same; only a restart would not resume it.
                warn!(%cid, error = %e, "cannot record the background download");
            }
        }
        // Counted as running before the answer goes out: a client that reads the metrics
        // right after it must not see the download as done before it began.
        let download = Download::start(&self.config.metrics.downloads);
        tokio::spawn(
            self.clone()
                .background(running, manifest.clone(), reservation, download),
        );
        Ok(manifest)
    }

    /// Runs the background download of [`Node::download`] until it completes, gives up, the
    /// dataset is deleted or the node stops. One that ends while it was asked for again (as it
    /// gave up, or after a delete when the request stored the manifest again) starts over.
    async fn background(
        self,
        running: Running,
        m: Manifest,
        reservation: Reservation,
        first: Download,
    ) {
        let cid = running.cid;
        let store = self.store.clone();
        let Ok(engine) = self.network().map(|n| n.engine.clone()) else {
            return;
        };
        let metrics = self.config.metrics.downloads.clone();
        let _watch = self.watch_providers(&m);
        let mut reservation = Some(reservation);
        let mut first = Some(first);
        loop {
            let started = std::time::Instant::now();
            let mut download = first.take().unwrap_or_else(|| Download::start(&metrics));
            running.flags.deleted.store(false, Ordering::Relaxed);
            let r = self
                .background_attempts(&engine, &m, &mut reservation, &running)
                .await;
            // A download that fails after a delete failed because of it, however it showed:
            // blocks it had stored reclaimed before its last check, while a request made after
            // the delete stored the dataset's manifest again, read as blocks "fetched but not
            // stored" (seen once in a soak). It is stopped by the delete, and may start over.
            let r = match r {
                Err(e)
                    if running.flags.deleted.load(Ordering::Relaxed)
                        && !matches!(e, NodeError::Fetch(FetchError::Stopped)) =>
                {
                    debug!(%cid, error = %e, "background download ended by a delete");
                    Err(NodeError::Fetch(FetchError::Deleted))
                }
                r => r,
            };
            // Kept only when the node is stopping, to be resumed at its next start.
            let stopping = matches!(r, Err(NodeError::Fetch(FetchError::Stopped)));
            if !stopping {
                let s = store.clone();
                if let Err(e) = blocking(move || s.remove_fetch(&cid)).await {
                    debug!(%cid, error = %e, "cannot forget the background download");
                }
            }
            let outcome = match &r {
                Ok(()) => DownloadOutcome::Completed,
                // Stopped on purpose (a delete, the node stopping), not a failure.
                Err(e) if deleted(e) || stopping => DownloadOutcome::Cancelled,
                Err(_) => DownloadOutcome::Failed,
            };
            match r {
                Ok(()) => {
                    info!(%cid, elapsed = ?started.elapsed(), "dataset downloaded");
                    self.announce_if_whole(cid, &m).await;
                }
                Err(NodeError::NotFound) => warn!(
                    %cid,
                    "background download stopped: no peer had its next missing block for {} s \
                     (its providers left, or none has it); ask again to resume it",
                    BACKGROUND_PATIENCE.as_secs()
                ),
                Err(ref e) if deleted(e) => {
                    info!(%cid, "background download stopped: the dataset was deleted here");
                }
                Err(NodeError::Fetch(FetchError::Stopped)) => info!(
                    %cid,
                    "background download paused: the node is stopping; it resumes at the next start"
                ),
                Err(ref e) => warn!(%cid, error = %e, "background download failed"),
            }
            let may_restart = match &r {
                Err(NodeError::NotFound) => true,
                // Asked for again after the delete: that request stored the manifest again.
                Err(e) if deleted(e) => {
                    let s = store.clone();
                    matches!(blocking(move || s.get_manifest(&cid)).await, Ok(Some(_)))
                }
                _ => false,
            };
            // Ended (and free for a new request) before the metrics say so, so that whoever
            // sees the download end can ask for it again.
            let ended = running.end(may_restart);
            download.finish(outcome);
            drop(download);
            if ended {
                return;
            }
            info!(%cid, "background download asked for again as it ended; starting over");
            reservation = None; // reserved again for what is missing now
            let s = store.clone();
            if let Err(e) = blocking(move || s.add_fetch(&cid)).await {
                warn!(%cid, error = %e, "cannot record the background download");
            }
        }
    }

    /// One run of a background download: attempts until every block is stored, or no peer had
    /// the next missing block for [`BACKGROUND_PATIENCE`], or another error.
    async fn background_attempts(
        &self,
        engine: &EngineHandle,
        m: &Manifest,
        reservation: &mut Option<Reservation>,
        running: &Running,
    ) -> Result<(), NodeError> {
        let cid = running.cid;
        let store = &self.store;
        let metrics = &self.config.metrics.downloads;
        let all = ByteRange::full(m.download_size());
        // Nobody waits on a background download, so it outlasts a provider's absence: when no
        // peer has had its next block for the engine's no-holder timeout it looks again (the
        // provider watcher searches the DHT meanwhile), and gives up only after
        // `BACKGROUND_PATIENCE` without its next missing block arriving.
        // Each attempt starts at the first block not stored yet: one after a stall, or a
        // download resumed at start, does not read back what is already here.
        let mut next = first_missing(store, m).await;
        let mut progress = (std::time::Instant::now(), next);
        loop {
            let from = next.saturating_mul(m.block_size);
            let range = ByteRange::new(from.min(all.end()), all.end()).unwrap_or(all);
            let attempt = tokio::select! {
                r = fetch::fetch_dataset(
                    store.clone(),
                    engine.clone(),
                    m.clone(),
                    range,
                    None,
                    reservation,
                    metrics,
                ) => r,
                () = running.flags.until_deleted() => Err(NodeError::Fetch(FetchError::Deleted)),
            };
            match attempt {
                Ok(_) => {
                    // What was fetched: a protected dataset's parity blocks are not.
                    return fetch::check_stored(store, engine, m, data_blocks(m)).await;
                }
                // A moment's condition (no holder, the engine's wants full, the disk full):
                // tried again until `BACKGROUND_PATIENCE` passed without progress.
                Err(e) if retryable(&e) => {
                    next = first_missing(store, m).await;
                    if next > progress.1 {
                        // The attempt moved on, then stopped: a missing holder shows only
                        // after the no-holder timeout, so that long without progress.
                        let now = std::time::Instant::now();
                        let since = if matches!(e, NodeError::NotFound) {
                            now.checked_sub(engine::NO_HOLDER_TIMEOUT).unwrap_or(now)
                        } else {
                            now
                        };
                        progress = (since, next);
                    }
                    if running.flags.asked_again.swap(false, Ordering::Relaxed) {
                        // Somebody still wants it: wait for it as long as for a new one.
                        progress.0 = std::time::Instant::now();
                    }
                    let idle = progress.0.elapsed();
                    if idle >= BACKGROUND_PATIENCE {
                        return Err(e);
                    }
                    if disk_full(&e) {
                        // Reserved again at the next attempt: the store goes on refusing a
                        // dataset whose write failed for want of disk until a reservation
                        // finds the room back.
                        *reservation = None;
                    }
                    metrics.stalls.inc();
                    if matches!(e, NodeError::NotFound) {
                        info!(%cid, block = next, idle = ?idle, "background download: no peer has the next block yet; still looking");
                    } else {
                        info!(%cid, block = next, idle = ?idle, error = %e, "background download: cannot go on for the moment; trying again");
                    }
                    tokio::time::sleep(BACKGROUND_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Resumes the background downloads that were running when the node last stopped
    /// ([`Node::download`]; at most [`MAX_RESUMED_DOWNLOADS`], oldest first): each continues
    /// from the blocks already stored. Returns how many were resumed. A request whose manifest
    /// is gone is forgotten; one that cannot start now (no room, a store error) is kept for the
    /// next start.
    pub async fn resume_downloads(&self) -> usize {
        let store = self.store.clone();
        let cids = match blocking(move || store.fetches(MAX_RESUMED_DOWNLOADS)).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the background downloads to resume");
                return 0;
            }
        };
        let mut resumed = 0;
        for cid in cids {
            match self.start_download(cid, false).await {
                Ok(_) => {
                    info!(%cid, "background download resumed");
                    resumed += 1;
                }
                // Its manifest is gone (deleted, or expired): nothing to resume.
                Err(e @ (NodeError::NotFound | NodeError::NotAManifest)) => {
                    warn!(%cid, error = %e, "cannot resume a background download; forgetting it");
                    let store = self.store.clone();
                    let _ = blocking(move || store.remove_fetch(&cid)).await;
                }
                // No room now, the store failing: the next start tries again.
                Err(e) => {
                    warn!(%cid, error = %e, "cannot resume a background download now");
                }
            }
        }
        resumed
    }

    /// Fetches dataset `cid` and waits until every block its bytes come from is stored (of a
    /// protected dataset, its data blocks; parity blocks are not fetched).
    pub async fn download_and_wait(&self, cid: Cid) -> Result<Manifest, NodeError> {
        let manifest = self.fetch_manifest(cid).await?;
        let reservation = self
            .reserve_room(cid, &manifest, ByteRange::full(manifest.download_size()))
            .await?;
        let engine = self.network()?.engine.clone();
        let _watch = self.watch_providers(&manifest);
        let metrics = &self.config.metrics.downloads;
        let mut download = Download::start(metrics);
        let all = ByteRange::full(manifest.download_size());
        let r = async {
            let mut reservation = Some(reservation);
            fetch::fetch_dataset(
                self.store.clone(),
                engine.clone(),
                manifest.clone(),
                all,
                None,
                &mut reservation,
                metrics,
            )
            .await?;
            fetch::check_stored(&self.store, &engine, &manifest, data_blocks(&manifest)).await
        }
        .await;
        download.finish(match &r {
            Ok(()) => DownloadOutcome::Completed,
            Err(_) => DownloadOutcome::Failed,
        });
        drop(download);
        r?;
        self.announce_if_whole(cid, &manifest).await;
        Ok(manifest)
    }

    /// Connects to `peer` at `addrs`.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NodeError> {
        Ok(self.network()?.net.connect(peer, addrs).await?)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores the dataset read from `body` (see the ingest pipeline in the crate docs).
    pub async fn store_dataset<S, E>(
        &self,
        body: S,
        filename: Option<String>,
        mimetype: Option<String>,
    ) -> Result<StoredDataset, NodeError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.store_dataset_sized(body, filename, mimetype, None)
            .await
    }

    /// [`Node::store_dataset`] of a body whose length the client gave: the room for it is
    /// reserved before the first byte is read, so a second upload that does not fit beside it
    /// is refused at once instead of both failing part-way.
    pub async fn store_dataset_sized<S, E>(
        &self,
        body: S,
        filename: Option<String>,
        mimetype: Option<String>,
        size: Option<u64>,
    ) -> Result<StoredDataset, NodeError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let info = UploadInfo {
            filename,
            mimetype,
            size,
        };
        let stored = ingest(&self.store, body, info).await?;
        info!(cid = %stored.cid, size = stored.manifest.dataset_size, "stored dataset");
        if let Some(n) = &self.network {
            n.engine
                .stored_locally(stored.manifest.tree_cid, stored.cid)
                .await;
        }
        self.announce(stored.cid, &stored.manifest);
        Ok(stored)
    }

    /// Whether an upload of `size` bytes fits in the quota left now (used bytes and every
    /// reservation count): [`cairn_store::StoreError::QuotaExceeded`] if not.
    pub fn has_room_for_upload(&self, size: u64) -> Result<(), NodeError> {
        Ok(self.store.has_room(crate::ingest::stored_size(size))?)
    }

    /// The manifest `cid`, if stored locally. A stored block that is not a manifest is
    /// [`NodeError::NotAManifest`].
    pub async fn manifest(&self, cid: Cid) -> Result<Manifest, NodeError> {
        let store = self.store.clone();
        let block = blocking(move || store.get_block(&cid))
            .await?
            .ok_or(NodeError::NotFound)?;
        if cid.codec() != Codec::Manifest.code() {
            return Err(NodeError::NotAManifest);
        }
        Manifest::from_block(&block).map_err(|e| NodeError::Store(e.into()))
    }

    /// Streams the bytes of a locally stored dataset in order, truncated to its size. Blocks are
    /// read (and verified) on a blocking thread, [`DOWNLOAD_READAHEAD_BLOCKS`] ahead.
    pub fn stream_dataset(&self, manifest: &Manifest) -> ByteStream {
        self.read_blocks(manifest, ByteRange::full(manifest.download_size()))
    }

    /// Checks that every block holding `range` of dataset `manifest` is stored locally, before a
    /// local read answers: a partly stored dataset is [`NodeError::Incomplete`], not a response
    /// cut off where the first missing block is. A dataset whose tree is kept once is whole, so
    /// this is one seek for it; otherwise one scan of the range's leaf rows.
    pub async fn check_local(
        &self,
        manifest: &Manifest,
        range: ByteRange,
    ) -> Result<(), NodeError> {
        check_range(manifest, &range)?;
        let store = self.store.clone();
        let tree = manifest.tree_cid;
        let blocks = range.blocks(manifest.block_size);
        match blocking(move || store.first_missing_leaf(&tree, blocks)).await? {
            None => Ok(()),
            Some(index) => Err(NodeError::Incomplete {
                index,
                blocks: manifest.blocks_count(),
            }),
        }
    }

    /// Reserves room in the quota for the blocks holding `range` of dataset `manifest` that are
    /// not stored yet, before a download starts ([`Store::reserve_room`]): a client that asks
    /// for more than fits hears so at once ([`cairn_store::StoreError::QuotaExceeded`], HTTP
    /// 507), and downloads and uploads running together cannot each take part of the same free
    /// space and all fail. A refused dataset that has no block here and no other download
    /// (its manifest `cid` came with this request) is not left listed.
    pub async fn reserve_room(
        &self,
        cid: Cid,
        manifest: &Manifest,
        range: ByteRange,
    ) -> Result<Reservation, NodeError> {
        self.reserve(cid, manifest, range, true).await
    }

    /// [`Node::reserve_room`] for a dataset whose manifest was stored here before this request
    /// (`GET /data/{cid}` of a dataset held in part): a refusal changes nothing. Dropping the
    /// manifest then would have taken a pending background download's record, or a manifest
    /// fetched alone, away on a plain `GET` (found by review).
    pub async fn reserve_room_for_stored(
        &self,
        cid: Cid,
        manifest: &Manifest,
        range: ByteRange,
    ) -> Result<Reservation, NodeError> {
        self.reserve(cid, manifest, range, false).await
    }

    /// [`Node::reserve_room`]; the manifest of a refused bare dataset is dropped only with
    /// `forget_refused`.
    async fn reserve(
        &self,
        cid: Cid,
        manifest: &Manifest,
        range: ByteRange,
        forget_refused: bool,
    ) -> Result<Reservation, NodeError> {
        if manifest.block_size > crate::MAX_NETWORK_BLOCK_SIZE {
            return Err(NodeError::BlockTooLarge {
                block_size: manifest.block_size,
                max: crate::MAX_NETWORK_BLOCK_SIZE,
            });
        }
        check_range(manifest, &range)?;
        let store = self.store.clone();
        let tree = manifest.tree_cid;
        let blocks = range.blocks(manifest.block_size);
        let block_size = manifest.block_size;
        blocking(move || match store.reserve_room(&tree, blocks, block_size) {
            Err(e)
                if forget_refused
                    && (matches!(e, cairn_store::StoreError::QuotaExceeded { .. })
                        || e.is_disk_full()) =>
            {
                if let Err(f) = store.forget_bare(&cid) {
                    warn!(%cid, error = %f, "could not drop the manifest of a refused download");
                }
                Err(e)
            }
            other => other,
        })
        .await
    }

    /// Streams the bytes `range` of a locally stored dataset: reads (and verifies) only the
    /// blocks that hold them, [`DOWNLOAD_READAHEAD_BLOCKS`] ahead, on a blocking thread. A range
    /// past the dataset's end is [`NodeError::RangeOutOfBounds`].
    pub fn stream_dataset_range(
        &self,
        manifest: &Manifest,
        range: ByteRange,
    ) -> Result<ByteStream, NodeError> {
        check_range(manifest, &range)?;
        Ok(self.read_blocks(manifest, range))
    }

    /// The blocks of `range`, read from the store [`DOWNLOAD_READAHEAD_BLOCKS`] at a time on
    /// the blocking pool and handed to the reader from an async task. Waiting for a slow
    /// reader holds no blocking thread (review: each local download held one until its client
    /// read or closed, so enough stalled clients used up the pool every store call needs), and
    /// a reader that takes nothing for the stall limit stops the stream, as on the network
    /// path.
    fn read_blocks(&self, manifest: &Manifest, range: ByteRange) -> ByteStream {
        let ahead = readahead_blocks(manifest.block_size);
        let (tx, rx) = mpsc::channel(ahead);
        let reader = fetch::Reader {
            tx,
            stall: self.config.reader_stall_timeout,
        };
        let store = self.store.clone();
        let tree = manifest.tree_cid;
        let block_size = manifest.block_size;
        tokio::spawn(async move {
            let mut blocks = range.blocks(block_size);
            loop {
                let batch: Vec<u64> = blocks.by_ref().take(ahead).collect();
                if batch.is_empty() {
                    return;
                }
                let store = store.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let results = match store.get_leaves(&tree, &batch) {
                        Ok(results) => results,
                        Err(e) => return vec![Err(NodeError::Store(e))],
                    };
                    batch
                        .iter()
                        .zip(results)
                        .map(|(&index, r)| match r {
                            Ok(Some((block, _))) => {
                                fetch::block_part(block.data(), &range, index, block_size)
                            }
                            Ok(None) => Err(NodeError::NotFound),
                            Err(e) => Err(NodeError::Store(e)),
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                let items = read.unwrap_or_else(|e| vec![Err(NodeError::from(e))]);
                for item in items {
                    let stop = item.is_err();
                    if !reader.send(item).await || stop {
                        return; // the reader went away or stalled, or we reported an error
                    }
                }
            }
        });
        Box::pin(tokio_stream_from(rx))
    }

    /// Every locally listed dataset.
    pub async fn list(&self) -> Result<Vec<(Cid, Manifest)>, NodeError> {
        let store = self.store.clone();
        blocking(move || store.list_manifests()).await
    }

    /// One page of [`Node::list`]: the datasets after key `after` (from the first when `None`),
    /// looking at up to `limit` of them ([`Store::manifest_page`], which says how to page on).
    pub async fn list_page(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<cairn_store::ManifestPage, NodeError> {
        let store = self.store.clone();
        blocking(move || store.manifest_page(after.as_deref(), limit)).await
    }

    /// Deletes `cid` (a whole dataset when it is a manifest).
    ///
    /// A deleted manifest stops being answered as ours in the DHT at once. Its tree CID is left
    /// to expire with our record (24 h): another dataset may share the tree, and a downloader
    /// starts from the manifest anyway.
    pub async fn delete(&self, cid: Cid) -> Result<(), NodeError> {
        let store = self.store.clone();
        // The dataset's tree, when `cid` was its last manifest: downloads of it stop now.
        let gone = blocking(move || {
            let tree = store.get_manifest(&cid).ok().flatten().map(|m| m.tree_cid);
            store.delete(&cid)?;
            Ok(match tree {
                Some(tree) if !store.dataset_stored(&tree)? => Some(tree),
                _ => None,
            })
        })
        .await?;
        // Only a request made after the delete may start its background download over.
        if let Some(flags) = self
            .network
            .as_ref()
            .and_then(|n| n.background.lock().get(&cid).cloned())
        {
            flags.asked_again.store(false, Ordering::Relaxed);
            flags.deleted.store(true, Ordering::Relaxed);
            flags.deleted_signal.notify_waiters();
        }
        if let (Some(tree), Some(engine)) = (gone, self.engine()) {
            engine.forget(tree, cid).await;
        }
        if let Some(d) = self.discovery() {
            d.withdraw(&cid.to_bytes());
        }
        self.deleted.notify_one();
        Ok(())
    }

    /// Whether block `cid` is stored locally.
    pub async fn has_block(&self, cid: Cid) -> Result<bool, NodeError> {
        let store = self.store.clone();
        blocking(move || store.has_block(&cid)).await
    }

    /// Space accounting.
    pub async fn space(&self) -> Result<Space, NodeError> {
        let store = self.store.clone();
        blocking(move || store.space()).await
    }

    /// Runs the maintenance worker until `cancel` fires: every `maintenance_interval` it expires
    /// blocks whose TTL passed, reclaims deleted datasets and compacts mostly dead segments.
    pub async fn run_maintenance(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.maintenance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                () = self.deleted.notified() => {
                    // Deletes that follow within the delay share the pass.
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(self.config.maintenance_after_delete) => {}
                    }
                    tick.reset();
                }
            }
            let store = self.store.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match blocking(move || store.maintenance(now)).await {
                Ok(r)
                    if r.expired > 0
                        || r.reclaimed > 0
                        || r.compacted.moved_blocks > 0
                        || r.compacted.segments_freed > 0
                        || r.settled > 0 =>
                {
                    info!(
                        expired = r.expired,
                        reclaimed = r.reclaimed,
                        compacted_bytes = r.compacted.moved_bytes,
                        freed_bytes = r.compacted.freed_bytes,
                        settled_proofs = r.settled,
                        "maintenance pass"
                    );
                }
                Ok(_) => debug!("maintenance pass: nothing to do"),
                Err(e) => warn!(error = %e, "maintenance pass failed"),
            }
        }
    }
}

/// Checks `range` lies within the bytes a download of `manifest` yields.
fn check_range(manifest: &Manifest, range: &ByteRange) -> Result<(), NodeError> {
    let size = manifest.download_size();
    if range.end() > size {
        return Err(NodeError::RangeOutOfBounds {
            start: range.start(),
            end: range.end(),
            size,
        });
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use cairn_store::StoreConfig;
    use futures::{StreamExt, TryStreamExt};

    use super::*;

    fn node() -> Node {
        Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        )
    }

    fn body(
        parts: Vec<Result<Bytes, std::io::Error>>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::iter(parts)
    }

    #[tokio::test]
    async fn upload_then_stream_back() {
        let n = node();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let parts = data
            .chunks(7777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let s = n
            .store_dataset(body(parts), Some("x.bin".into()), None)
            .await
            .unwrap();
        assert_eq!(s.manifest.dataset_size, data.len() as u64);
        let m = n.manifest(s.cid).await.unwrap();
        let got: Vec<Bytes> = n.stream_dataset(&m).try_collect().await.unwrap();
        assert_eq!(got.concat(), data);
    }

    /// codex-protocol.md §11.2: the reference's CID for "some file contents".
    #[tokio::test]
    async fn reference_cid_through_the_pipeline() {
        let n = node();
        let s = n
            .store_dataset(
                body(vec![Ok(Bytes::from_static(b"some file contents"))]),
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            s.cid.to_string(),
            "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy"
        );
    }

    #[tokio::test]
    async fn failing_body_leaves_nothing() {
        let n = node();
        let parts = vec![
            Ok(Bytes::from(vec![1u8; 200_000])),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "gone",
            )),
        ];
        let err = n.store_dataset(body(parts), None, None).await.unwrap_err();
        assert!(matches!(err, NodeError::Body(_)), "{err}");
        assert!(n.list().await.unwrap().is_empty());
        let s = n.space().await.unwrap();
        assert_eq!((s.quota_used_bytes, s.quota_reserved_bytes), (0, 0));
    }

    #[tokio::test]
    async fn empty_upload_is_refused() {
        let n = node();
        let err = n.store_dataset(body(vec![]), None, None).await.unwrap_err();
        assert!(matches!(err, NodeError::EmptyUpload));
        assert_eq!(n.space().await.unwrap().quota_used_bytes, 0);
    }

    /// A refused reservation for a manifest stored before keeps it listed; one for a manifest
    /// that came with the request (`reserve_room`) drops it when it has no block here.
    #[tokio::test]
    async fn a_refused_reservation_keeps_a_manifest_stored_before() {
        let n = Node::new(
            Store::in_memory(StoreConfig {
                quota_bytes: 4096,
                ..StoreConfig::default()
            })
            .unwrap(),
            NodeConfig::default(),
        );
        let tree = cairn_core::cid::cid_from_digest(cairn_core::Codec::Root, &[7; 32]);
        let m = Manifest::new(tree, 3 * 65536, 65536);
        let block = m.to_block();
        n.store().put_block(&block).unwrap();
        let cid = *block.cid();
        let all = ByteRange::full(m.download_size());
        let listed = || async { n.list().await.unwrap().len() };
        assert_eq!(listed().await, 1);
        let refused = n.reserve_room_for_stored(cid, &m, all).await;
        assert!(
            matches!(
                refused,
                Err(NodeError::Store(
                    cairn_store::StoreError::QuotaExceeded { .. }
                ))
            ),
            "{refused:?}"
        );
        assert_eq!(listed().await, 1, "the manifest stored before went");
        assert!(n.reserve_room(cid, &m, all).await.is_err());
        assert_eq!(listed().await, 0);
    }

    #[tokio::test]
    async fn not_found_and_not_a_manifest() {
        let n = node();
        let block = cairn_core::Block::data_block(Bytes::from_static(b"b"));
        assert!(matches!(
            n.manifest(*block.cid()).await,
            Err(NodeError::NotFound)
        ));
        n.store().put_block(&block).unwrap();
        assert!(matches!(
            n.manifest(*block.cid()).await,
            Err(NodeError::NotAManifest)
        ));
        let s = n.stream_dataset(&Manifest::default()).next().await;
        assert!(matches!(s, None | Some(Err(NodeError::NotFound))));
    }
}

#[cfg(test)]
mod readahead_tests {
    use super::*;

    #[test]
    fn readahead_is_bounded_in_bytes_and_at_least_one_block() {
        assert_eq!(readahead_blocks(64 * 1024), DOWNLOAD_READAHEAD_BLOCKS);
        assert_eq!(readahead_blocks(128 * 1024), 4);
        assert_eq!(readahead_blocks(8 * 1024 * 1024), 1);
        assert_eq!(readahead_blocks(1), DOWNLOAD_READAHEAD_BLOCKS);
        assert_eq!(readahead_blocks(0), DOWNLOAD_READAHEAD_BLOCKS);
    }
}
