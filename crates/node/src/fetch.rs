//! Downloading a dataset from the network: a window of blocks in flight, sized from what the
//! network actually delivers.
//!
//! Blocks are requested in index order. Those already stored are read locally (in batches, on
//! a blocking thread); the rest are wanted from the engine. The window is topped up in runs
//! ([`REFILL_DIVISOR`]): one local check, one engine command and one want-list for many blocks,
//! not one of each per completed block. The window — how many blocks are
//! requested and not yet handed on — is sized from what the download measures every
//! [`RATE_INTERVAL`]: its delivery rate and the fastest want-to-arrival time seen. Two rules
//! decide it, and the larger answer wins:
//!
//! * **Bandwidth-delay floor**, as BBR sizes a congestion window: `WINDOW_GAIN × rate × minimum
//!   latency`. This is what a long network path needs: with 100 ms between request and
//!   arrival, a window of a few blocks would cap the download at a few MB/s. The minimum
//!   latency never expires within a download: later samples include the queue the window
//!   itself builds at the providers, and feeding that back would grow the window without
//!   bound (the reason BBR needs its "probe RTT" phase).
//! * **Throughput probing.** On a short path the minimum latency is measured while the
//!   pipeline is idle, and it badly underestimates the time a block takes when both nodes are
//!   busy: each hop (store read, encryption, the peer's connection task, verification, the
//!   engine) then waits for a CPU, and larger messages make each hop cheaper per block. The
//!   bandwidth-delay floor alone held downloads on loopback at 16–32 blocks and 0.27 of the
//!   link's ceiling, while a window of 128 gave 0.4 (`BENCHMARKS.md`). So the window also
//!   follows what the transfer measures when the window changes. It starts by doubling every
//!   interval while that raises the rate by at least [`PROBE_MIN_GAIN`] (slow start). Then it
//!   alternates a base interval with a probe interval: usually twice the window, kept if the
//!   rate rose by [`PROBE_MIN_GAIN`]; every [`DOWN_PROBE_EVERY`]th probe half the window, kept
//!   if the rate fell by less than that. Each probe is judged against the interval just
//!   before it, so slow drift in the rate does not read as a gain or a loss. A window where
//!   doubling gains nothing and halving loses settles at the knee: the smallest window that
//!   gets the rate. A consumer-limited download (the rate does not depend on the window)
//!   shrinks to the minimum.
//!
//! The window stays within [`MIN_WINDOW`]..=[`MAX_WINDOW`] blocks and [`MAX_WINDOW_BYTES`], and
//! grows at most twofold per interval; these bound memory per download (`MAX_WINDOW` × 64 KiB
//! at the default block size, and never more than `MAX_WINDOW_BYTES`, or one block when a
//! manifest gives a block larger than that), and the engine caps what one provider is asked for
//! at once. A local read batch fits in the window, so it is bounded the same way.
//!
//! The engine hands over each block as soon as it is verified and writes it behind; a
//! background download ends with `check_stored`, which waits for those writes.
//!
//! A download covers a [`ByteRange`] of the dataset (all of it, or what an HTTP `Range` asks
//! for): only the blocks that hold those bytes are read or wanted, and only their parts inside
//! the range are handed on.
//!
//! Blocks are handed on in order; the consumer (an HTTP body, or nothing for a background
//! download) pulls through a bounded channel, so a slow reader slows the download instead of
//! buffering it.

use std::{
    ops::Range,
    time::{Duration, Instant},
};

use bytes::Bytes;
use cairn_core::{BlockAddress, Manifest};
use cairn_store::{Reservation, Store};
use futures::{StreamExt, future::BoxFuture, stream::FuturesOrdered};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    NodeError,
    engine::{EngineHandle, FetchError},
    metrics::DownloadMetrics,
    range::ByteRange,
};

/// A stream whose reader takes nothing for this long is stopped, and the room and memory its
/// download held go back: a client that stops reading cannot hold them for good (as an upload
/// that sends nothing fails after the API's idle limit).
pub const READER_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Window at the start of a download.
pub const INITIAL_WINDOW: usize = 32;
/// Smallest window.
pub const MIN_WINDOW: usize = 16;
/// Largest window: 512 blocks, 32 MiB in flight per download at the default block size.
pub const MAX_WINDOW: usize = 512;
/// Largest window in bytes, whatever the block size: a manifest may give blocks of up to
/// `MAX_BLOCK_SIZE` (100 MiB; about 8 MiB can be delivered in one frame), and [`MAX_WINDOW`] of
/// them held 4 GiB per download. 32 MiB is what `MAX_WINDOW` blocks of 64 KiB take, so the
/// default block size keeps its window (and its measured throughput); a larger block size gets
/// fewer blocks, at least one. Found by review.
pub const MAX_WINDOW_BYTES: u64 = MAX_WINDOW as u64 * 64 * 1024;
/// Window gain over the estimated bandwidth-delay product.
pub const WINDOW_GAIN: f64 = 2.0;
/// Interval over which the delivery rate is measured and the window re-sized.
pub const RATE_INTERVAL: Duration = Duration::from_millis(100);
/// A doubled window is kept when its interval delivers at least this much more than the
/// interval before it; a halved one when its rate falls by less than this. 5 %: above the interval-to-interval noise of a steady loopback
/// transfer (2–3 %), below the gain of the last useful doubling there (15 %).
pub const PROBE_MIN_GAIN: f64 = 0.05;
/// One probe in this many tries half the window (the others try double): shrinking costs
/// throughput while it is tried, growing only memory.
pub const DOWN_PROBE_EVERY: u32 = 4;
/// Indices checked against the local store per blocking call.
pub const LOCAL_CHECK_BATCH: usize = 64;
/// The window is refilled once `1 / REFILL_DIVISOR` of it is free, not whenever one block
/// completes. Refilling block by block cost, per block, a blocking-pool round trip for the local
/// check, an engine command and a one-entry want-list on the wire (and at the provider a
/// wake-up and a store read for that one want): about two context switches per block on each
/// node. 8: a window of 128 asks 16 blocks at a time while keeping at least 7/8 of it in flight.
pub const REFILL_DIVISOR: usize = 8;
/// A block the engine refused for want of room ([`FetchError::Busy`]: it holds
/// `MAX_PENDING_WANTS` wants across all downloads) is wanted again after this pause. Room comes
/// back as other downloads' blocks arrive, within a block's round trip.
pub const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A block refused as `Busy` for this long fails the download with `Busy` (HTTP 503): as long
/// as the engine waits for a block nobody holds (`NO_HOLDER_TIMEOUT`). Before, a streamed
/// download failed mid-body at the first refusal (found by review).
pub const BUSY_PATIENCE: Duration = Duration::from_secs(30);

/// What the current interval measures (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Doubling while it pays; `prev` is the rate of the previous interval.
    SlowStart { prev: f64 },
    /// An interval at the current window, the reference for the next probe.
    Base,
    /// A probe interval at a changed window; `base` is the window and rate before it.
    Probe { base: usize, base_rate: f64 },
}

/// Sizes the window. See the module docs.
#[derive(Debug)]
pub(crate) struct WindowEstimator {
    window: usize,
    interval_start: Instant,
    completed_in_interval: u64,
    min_latency: Option<Duration>,
    phase: Phase,
    probes: u32,
    /// The smallest and largest window for the download's block size (blocks).
    min: usize,
    max: usize,
}

impl WindowEstimator {
    /// An estimator for blocks of 64 KiB (the default block size).
    #[cfg(test)]
    pub(crate) fn new(now: Instant) -> WindowEstimator {
        WindowEstimator::for_block_size(now, 64 * 1024)
    }

    /// An estimator for a download of blocks of `block_size` bytes: its window holds at most
    /// [`MAX_WINDOW_BYTES`] of them (at least one).
    pub(crate) fn for_block_size(now: Instant, block_size: u64) -> WindowEstimator {
        let fit = MAX_WINDOW_BYTES / block_size.max(1);
        let max = usize::try_from(fit)
            .unwrap_or(MAX_WINDOW)
            .clamp(1, MAX_WINDOW);
        WindowEstimator {
            window: INITIAL_WINDOW.min(max),
            min: MIN_WINDOW.min(max),
            max,
            interval_start: now,
            completed_in_interval: 0,
            min_latency: None,
            phase: Phase::SlowStart { prev: 0.0 },
            probes: 0,
        }
    }

    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// Records a network block that took `latency` from want to arrival, completed at `now`.
    pub(crate) fn record(&mut self, latency: Duration, now: Instant) {
        self.completed_in_interval += 1;
        if self.min_latency.is_none_or(|l| latency < l) {
            self.min_latency = Some(latency);
        }
        let elapsed = now.duration_since(self.interval_start);
        if elapsed < RATE_INTERVAL {
            return;
        }
        let rate = self.completed_in_interval as f64 / elapsed.as_secs_f64();
        self.interval_start = now;
        self.completed_in_interval = 0;
        let w = self.window;
        let (next, phase) = match self.phase {
            Phase::SlowStart { prev } if rate > prev * (1.0 + PROBE_MIN_GAIN) => {
                (w.saturating_mul(2), Phase::SlowStart { prev: rate })
            }
            // The last doubling did not pay: back to the window before it.
            Phase::SlowStart { .. } => (w / 2, Phase::Base),
            Phase::Base => {
                self.probes = self.probes.wrapping_add(1);
                let probe = if self.probes.is_multiple_of(DOWN_PROBE_EVERY) {
                    w / 2
                } else {
                    w.saturating_mul(2)
                };
                (
                    probe,
                    Phase::Probe {
                        base: w,
                        base_rate: rate,
                    },
                )
            }
            Phase::Probe { base, base_rate } => {
                let keep = if w > base {
                    rate >= base_rate * (1.0 + PROBE_MIN_GAIN)
                } else {
                    rate >= base_rate * (1.0 - PROBE_MIN_GAIN)
                };
                (if keep { w } else { base }, Phase::Base)
            }
        };
        self.phase = phase;
        // Bandwidth-delay floor.
        let bdp = self
            .min_latency
            .map_or(0.0, |lat| WINDOW_GAIN * rate * lat.as_secs_f64());
        let floor = if bdp.is_finite() && bdp > 0.0 {
            // Saturates at usize::MAX for absurd values; clamped below.
            bdp.ceil() as usize
        } else {
            0
        };
        self.window = next
            .max(floor)
            .clamp(self.min, self.max)
            .min(w.saturating_mul(2));
    }
}

type BlockFuture = BoxFuture<'static, (Result<Bytes, NodeError>, Option<Duration>, Instant)>;

/// How many blocks to request now, with `window` the window, `inflight` blocks requested and not
/// yet handed on and `remaining` blocks not yet requested: none until a run of at least
/// `window / REFILL_DIVISOR` blocks (1..=[`LOCAL_CHECK_BATCH`]) is free, or until everything
/// remaining fits; then as many as fit, at most one local-check batch.
pub(crate) fn refill(window: usize, inflight: usize, remaining: u64) -> u64 {
    let room = window.saturating_sub(inflight).min(LOCAL_CHECK_BATCH) as u64;
    let run = (window / REFILL_DIVISOR).clamp(1, LOCAL_CHECK_BATCH) as u64;
    if room >= run.min(remaining) {
        room.min(remaining)
    } else {
        0
    }
}

/// Where a streaming download's blocks go: the reader's channel, and how long it may take
/// nothing before the download stops.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    /// The stream's channel.
    pub(crate) tx: mpsc::Sender<Result<Bytes, NodeError>>,
    /// The stall limit ([`READER_STALL_TIMEOUT`] unless configured).
    pub(crate) stall: Duration,
}

impl Reader {
    /// Sends `item` to the reader, waiting at most the stall limit for room; false when the
    /// reader went away or took nothing for that long. Every send to a stream goes through
    /// here, its last chunk and its error included, so a reader that stops reading holds the
    /// download (its task, reservation, provider watch and buffers) for the stall limit at
    /// most.
    pub(crate) async fn send(&self, item: Result<Bytes, NodeError>) -> bool {
        match tokio::time::timeout(self.stall, self.tx.send(item)).await {
            Ok(Ok(())) => true,
            // The reader went away; pending wants are dropped by the engine.
            Ok(Err(_)) => false,
            Err(_) => {
                info!(
                    "stream reader took nothing for {} s; download stopped",
                    self.stall.as_secs()
                );
                false
            }
        }
    }
}

/// Downloads the blocks of `manifest` that hold `range`, in order, into `out`: each item is
/// the part of its block inside the range. No block outside the range is read or wanted. With
/// `out = None` blocks are only stored.
///
/// `reservation` is the room reserved for the download ([`Store::reserve_room`]); with `None`
/// it is reserved first (and left in `reservation`). The store draws it down as the blocks are
/// stored; the caller drops it after [`check_stored`].
///
/// The last chunk is not sent but returned: the caller sends it after [`check_stored`], so a
/// client that has received every byte can rely on those blocks being stored. `Ok(None)` when
/// the reader went away, or took nothing for `stall`.
pub(crate) async fn fetch_dataset(
    store: Store,
    engine: EngineHandle,
    manifest: Manifest,
    range: ByteRange,
    out: Option<Reader>,
    reservation: &mut Option<Reservation>,
    metrics: &DownloadMetrics,
) -> Result<Option<Bytes>, NodeError> {
    let tree = manifest.tree_cid;
    let leaves = manifest.blocks_count();
    let block_size = manifest.block_size;
    // No peer could deliver such blocks (every path refuses them here, not only the API's).
    if block_size > crate::MAX_NETWORK_BLOCK_SIZE {
        return Err(NodeError::BlockTooLarge {
            block_size,
            max: crate::MAX_NETWORK_BLOCK_SIZE,
        });
    }
    let span = range.blocks(block_size);
    // The caller keeps the reservation until its `check_stored` saw every block stored.
    if reservation.is_none() {
        let s = store.clone();
        let blocks = span.clone();
        *reservation = Some(
            tokio::task::spawn_blocking(move || s.reserve_room(&tree, blocks, block_size))
                .await??,
        );
    }
    let mut est = WindowEstimator::for_block_size(Instant::now(), block_size);
    let mut inflight: FuturesOrdered<BlockFuture> = FuturesOrdered::new();
    let mut next = span.start;
    // Index of the next block handed on (blocks complete in order).
    let mut done = span.start;
    while next < span.end || !inflight.is_empty() {
        // Fill the window, a run of blocks at a time.
        loop {
            let n = refill(est.window(), inflight.len(), span.end - next);
            if n == 0 {
                break;
            }
            let s = store.clone();
            let start = next;
            let found = tokio::task::spawn_blocking(move || {
                // The dataset may have been deleted since the download began: stop now instead
                // of fetching what cannot be stored.
                if !s.dataset_stored(&tree)? {
                    return Err(cairn_store::StoreError::DatasetNotStored {
                        tree: Box::new(tree),
                    });
                }
                let indices: Vec<u64> = (start..start + n).collect();
                // One store transaction for the batch; a leaf that cannot be read locally is
                // fetched from the network like a missing one.
                let read = s.get_leaves(&tree, &indices).unwrap_or_default();
                let mut read = read.into_iter();
                let found: Vec<_> = indices
                    .into_iter()
                    .map(|i| match read.next() {
                        Some(Ok(Some((b, _)))) => (i, Some(b.data().clone())),
                        _ => (i, None),
                    })
                    .collect();
                // The quota was reserved up front, but the disk may have filled since (other
                // writers, other programs): stop rather than fetch what cannot be stored.
                let missing = found.iter().filter(|(_, d)| d.is_none()).count() as u64;
                s.download_disk_room(&tree, missing.saturating_mul(block_size))?;
                Ok::<_, cairn_store::StoreError>(found)
            })
            .await??;
            next += n;
            // Missing blocks are wanted together, in one engine command.
            let missing: Vec<u64> = found
                .iter()
                .filter(|(_, d)| d.is_none())
                .map(|(i, _)| *i)
                .collect();
            metrics.blocks_network.inc_by(missing.len() as u64);
            metrics.blocks_local.inc_by(n - missing.len() as u64);
            let mut rxs = engine
                .want_many(
                    missing
                        .iter()
                        .map(|i| (BlockAddress::Leaf { tree, index: *i }, Some(leaves)))
                        .collect(),
                )
                .await
                .into_iter();
            let asked = Instant::now();
            for (index, data) in found {
                // A receiver per missing block, in order: only a missing block takes one.
                let rx = if data.is_none() { rxs.next() } else { None };
                let fut: BlockFuture = match (data, rx) {
                    (Some(d), _) => Box::pin(async move { (Ok(d), None, Instant::now()) }),
                    (None, Some(rx)) => {
                        let engine = engine.clone();
                        let address = BlockAddress::Leaf { tree, index };
                        Box::pin(async move {
                            let r = match wait_for_room(rx, &engine, address, leaves).await {
                                // Checked as it arrives, not when its turn comes: the window is
                                // sized for blocks of the manifest's size, and blocks waiting for
                                // an earlier one must not hold more (review: a tree of 8 MiB
                                // leaves under a manifest claiming 64 KiB held up to 4 GiB here).
                                Ok(Ok(b)) if b.data().len() as u64 > block_size => {
                                    Err(NodeError::LongBlock {
                                        index,
                                        len: b.data().len() as u64,
                                        block_size,
                                    })
                                }
                                Ok(Ok(b)) => Ok(b.data().clone()),
                                Ok(Err(FetchError::NotFound)) => Err(NodeError::NotFound),
                                Ok(Err(e)) => Err(e.into()),
                                Err(_) => Err(NodeError::Fetch(FetchError::Stopped)),
                            };
                            let now = Instant::now();
                            (r, Some(now.duration_since(asked)), now)
                        })
                    }
                    (None, None) => Box::pin(async move {
                        (
                            Err(NodeError::Fetch(FetchError::Stopped)),
                            None,
                            Instant::now(),
                        )
                    }),
                };
                inflight.push_back(fut);
            }
        }
        // A stream's reader that went away stops the download now, not when the next block
        // is ready for it (review: a client that hung up held the window's wants, the
        // reservation and the provider watch until the head block came or failed).
        let head = match &out {
            Some(reader) => tokio::select! {
                head = inflight.next() => head,
                () = reader.tx.closed() => return Ok(None),
            },
            None => inflight.next().await,
        };
        let Some((result, latency, at)) = head else {
            continue;
        };
        let data = result?;
        if let Some(l) = latency {
            est.record(l, at);
        }
        let part = block_part(&data, &range, done, block_size)?;
        done += 1;
        if next >= span.end && inflight.is_empty() {
            return Ok(Some(part)); // the last chunk: the caller sends it once stored
        }
        if let Some(reader) = &out
            && !reader.send(Ok(part)).await
        {
            return Ok(None);
        }
    }
    Ok(Some(Bytes::new()))
}

/// What the engine answers for a wanted block (its receiver `rx`), wanting it again while the
/// engine refuses it for want of room, for up to [`BUSY_PATIENCE`].
async fn wait_for_room(
    rx: tokio::sync::oneshot::Receiver<Result<cairn_core::Block, FetchError>>,
    engine: &EngineHandle,
    address: BlockAddress,
    nleaves: u64,
) -> Result<Result<cairn_core::Block, FetchError>, tokio::sync::oneshot::error::RecvError> {
    let mut answer = rx.await;
    let refused = Instant::now();
    while matches!(answer, Ok(Err(FetchError::Busy))) && refused.elapsed() < BUSY_PATIENCE {
        tokio::time::sleep(BUSY_RETRY_PAUSE).await;
        let Some(rx) = engine
            .want_many(vec![(address, Some(nleaves))])
            .await
            .into_iter()
            .next()
        else {
            break;
        };
        answer = rx.await;
    }
    answer
}

/// The part of block `index` (its bytes `data`) inside `range`; a block too short to hold that
/// part is [`NodeError::ShortBlock`].
pub(crate) fn block_part(
    data: &Bytes,
    range: &ByteRange,
    index: u64,
    block_size: u64,
) -> Result<Bytes, NodeError> {
    let part = range.within_block(index, block_size);
    let short = || NodeError::ShortBlock {
        index,
        len: data.len() as u64,
        needed: part.end,
    };
    let from = usize::try_from(part.start).map_err(|_| short())?;
    let to = usize::try_from(part.end).map_err(|_| short())?;
    if to > data.len() {
        return Err(short());
    }
    Ok(data.slice(from..to))
}

/// After a download: waits for the engine's writes and checks every leaf in `blocks` is
/// stored.
pub(crate) async fn check_stored(
    store: &Store,
    engine: &EngineHandle,
    manifest: &Manifest,
    blocks: Range<u64>,
) -> Result<(), NodeError> {
    engine.flush().await?;
    let store = store.clone();
    let tree = manifest.tree_cid;
    let whole = blocks.start == 0 && blocks.end >= manifest.blocks_count();
    let check = store.clone();
    let missing =
        tokio::task::spawn_blocking(move || check.first_missing_leaf(&tree, blocks)).await??;
    match missing {
        None => {
            if whole {
                // The whole dataset is here: keep its tree once instead of a proof per leaf.
                // In the background, so the requester's last bytes do not wait for it; if the
                // node stops first, the proofs simply stay (they are as valid).
                drop(tokio::task::spawn_blocking(move || {
                    match store.settle_tree(&tree) {
                        Ok(0) => {}
                        Ok(n) => debug!(%tree, proofs = n, "dataset tree stored once"),
                        Err(e) => warn!(%tree, error = %e, "could not store the dataset's tree"),
                    }
                }));
            }
            Ok(())
        }
        Some(i) => {
            // Say why when we can: a dataset deleted during its download is the usual case.
            let check = store.clone();
            if !tokio::task::spawn_blocking(move || check.dataset_stored(&tree)).await?? {
                return Err(NodeError::Store(
                    cairn_store::StoreError::DatasetNotStored {
                        tree: Box::new(tree),
                    },
                ));
            }
            Err(NodeError::Fetch(FetchError::Store(format!(
                "leaf {i} of {tree} was fetched but is not stored"
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window is refilled in runs, not block by block, and never stalls: an empty window
    /// and the last blocks of a download are always requested.
    #[test]
    fn the_window_refills_in_runs() {
        // A window of 128: nothing while fewer than 16 slots are free, then all free ones.
        assert_eq!(refill(128, 127, 1_000), 0);
        assert_eq!(refill(128, 113, 1_000), 0);
        assert_eq!(refill(128, 112, 1_000), 16);
        assert_eq!(refill(128, 100, 1_000), 28);
        // One local-check batch at a time, however much is free.
        assert_eq!(refill(512, 0, 1_000), LOCAL_CHECK_BATCH as u64);
        assert_eq!(refill(512, 449, 1_000), 0);
        // The tail: what remains is requested once it fits, even below a run.
        assert_eq!(refill(128, 120, 5), 5);
        assert_eq!(refill(128, 124, 5), 0);
        assert_eq!(refill(128, 10, 0), 0);
        // An empty window always asks, whatever its size.
        for w in [1, 2, MIN_WINDOW, INITIAL_WINDOW, MAX_WINDOW] {
            assert!(refill(w, 0, 1_000) >= 1, "window {w}");
            assert!(refill(w, 0, 1) == 1, "window {w}");
        }
        // Never more than the window holds.
        assert_eq!(refill(16, 14, 1_000), 2);
        assert_eq!(refill(16, 16, 1_000), 0);
        assert_eq!(refill(16, 20, 1_000), 0);
    }

    /// Runs `blocks` deliveries through the estimator: at window `w` the pipeline delivers
    /// `rate(w)` blocks/s, each block `latency(w)` after it was wanted. Returns the windows at
    /// the end of each interval.
    fn simulate(
        blocks: usize,
        rate: impl Fn(f64) -> f64,
        latency: impl Fn(f64) -> Duration,
    ) -> (WindowEstimator, Vec<usize>) {
        let t0 = Instant::now();
        let mut est = WindowEstimator::new(t0);
        let mut now = t0;
        let mut windows = Vec::new();
        for _ in 0..blocks {
            let w = est.window() as f64;
            now += Duration::from_secs_f64(1.0 / rate(w));
            let before = est.interval_start;
            est.record(latency(w), now);
            if est.interval_start != before {
                windows.push(est.window());
            }
        }
        (est, windows)
    }

    /// A long path with a fixed bottleneck: the window follows the bandwidth-delay product,
    /// and probing above it does not ratchet it up (a larger window buys nothing there).
    #[test]
    fn window_tracks_bandwidth_delay_product() {
        // 2000 blocks/s, 20 ms base latency: BDP = 40 blocks.
        let cap: f64 = 2000.0;
        let (_, windows) = simulate(
            40_000,
            |w| cap.min(w / 0.020),
            |w| Duration::from_secs_f64(0.020 + (w - 40.0).max(0.0) / cap),
        );
        let late = &windows[windows.len() / 2..];
        // Never below the BDP (which would lose throughput), never far above it.
        assert!(late.iter().all(|w| (40..=4 * 80).contains(w)), "{late:?}");
        let mean = late.iter().sum::<usize>() as f64 / late.len() as f64;
        assert!(
            (70.0..=160.0).contains(&mean),
            "mean window {mean}: {late:?}"
        );
    }

    /// A short path whose throughput grows with the window up to a knee (a CPU-bound pipeline:
    /// larger messages cost less per block), with a minimum latency measured while idle that
    /// says nothing about it. Probing finds the knee; the BDP floor alone stayed far below.
    #[test]
    fn probing_finds_a_window_the_latency_does_not_show() {
        let knee = 200.0;
        let cap = 6000.0;
        let rate = |w: f64| cap * (w / knee).min(1.0);
        // The fastest block (the first, through an idle pipeline) took 0.5 ms.
        let (_, windows) = simulate(60_000, rate, |_| Duration::from_micros(500));
        let late = &windows[windows.len() / 2..];
        // Probes aside, the window sits at or above the knee; the delivered rate stays close
        // to the pipeline's maximum (halving probes cost a little).
        let at_knee = late.iter().filter(|w| **w as f64 >= knee).count();
        assert!(at_knee * 4 >= late.len() * 3, "{late:?}");
        let mean_rate = late.iter().map(|w| rate(*w as f64)).sum::<f64>() / late.len() as f64;
        assert!(mean_rate >= 0.9 * cap, "mean rate {mean_rate}: {late:?}");
        assert!(late.iter().all(|w| *w <= MAX_WINDOW), "{late:?}");
    }

    /// A consumer-limited download (the rate does not depend on the window): the window never
    /// climbs, and shrinks to the minimum.
    #[test]
    fn flat_throughput_keeps_the_window_small() {
        let (_, windows) = simulate(20_000, |_| 500.0, |_| Duration::from_millis(1));
        assert!(
            windows.iter().all(|w| *w <= 2 * INITIAL_WINDOW),
            "{windows:?}"
        );
        let late = &windows[windows.len() / 2..];
        assert!(
            late.iter().filter(|w| **w == MIN_WINDOW).count() * 2 >= late.len(),
            "{late:?}"
        );
    }

    /// A manifest may give blocks of up to `MAX_BLOCK_SIZE`: 512 of them in flight were 4 GiB
    /// at a deliverable 8 MiB, 50 GiB at the largest. Whatever the block size, the window (and
    /// so each local read batch, which fits in it) holds at most `MAX_WINDOW_BYTES`, or one
    /// block when a block alone is larger; the default block size keeps `MAX_WINDOW` blocks.
    #[test]
    fn large_blocks_keep_the_window_within_its_bytes() {
        let sizes = [
            65_536,
            1 << 20,
            8 << 20,
            (8 << 20) + 1,
            MAX_WINDOW_BYTES,
            cairn_core::manifest::MAX_BLOCK_SIZE,
        ];
        for bs in sizes {
            let within = |w: usize| w == 1 || w as u64 * bs <= MAX_WINDOW_BYTES;
            let t0 = Instant::now();
            let mut est = WindowEstimator::for_block_size(t0, bs);
            assert!(within(est.window()), "{bs}: starts at {}", est.window());
            assert!(within(refill(est.window(), 0, 1_000) as usize), "{bs}");
            // A very fast, long link asks for the largest window.
            let mut now = t0;
            for _ in 0..100_000 {
                now += Duration::from_micros(10);
                est.record(Duration::from_millis(500), now);
                assert!(within(est.window()), "{bs}: window {}", est.window());
            }
            assert!(est.window() >= 1);
            assert!(within(refill(est.window(), 0, 1_000) as usize), "{bs}");
        }
        let mut est = WindowEstimator::for_block_size(Instant::now(), 65_536);
        let mut now = Instant::now();
        for _ in 0..100_000 {
            now += Duration::from_micros(10);
            est.record(Duration::from_millis(500), now);
        }
        assert_eq!(est.window(), MAX_WINDOW);
    }

    #[test]
    fn window_stays_within_bounds() {
        let t0 = Instant::now();
        let mut est = WindowEstimator::new(t0);
        let mut now = t0;
        // Very slow link: one block per second, 1 ms latency. Nothing justifies a larger
        // window, so it never grows past where it started.
        for _ in 0..50 {
            now += Duration::from_secs(1);
            est.record(Duration::from_millis(1), now);
            assert!((MIN_WINDOW..=2 * INITIAL_WINDOW).contains(&est.window()));
        }
        // Very fast, long link.
        let mut est = WindowEstimator::new(now);
        for _ in 0..100_000 {
            now += Duration::from_micros(10);
            est.record(Duration::from_millis(500), now);
        }
        assert_eq!(est.window(), MAX_WINDOW);
    }
}
