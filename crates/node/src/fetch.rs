//! Downloading a dataset from the network: a window of blocks in flight, sized from what the
//! network actually delivers.
//!
//! Blocks are requested in index order. Those already stored are read locally (in batches, on
//! a blocking thread); the rest are wanted from the engine. The window — how many blocks are
//! requested and not yet handed on — follows a bandwidth-delay estimate, the way BBR sizes a
//! congestion window: `window = GAIN × delivery rate × minimum latency`, where the delivery
//! rate is blocks completed per second over the last [`RATE_INTERVAL`] and the minimum latency
//! is the fastest want-to-arrival time seen during this download. While the
//! window is too small the rate is window-limited and the estimate doubles it every interval;
//! once the providers are the bottleneck it settles at about twice their bandwidth-delay
//! product. It stays within [`MIN_WINDOW`]..=[`MAX_WINDOW`], which also bounds memory per
//! download (`MAX_WINDOW` × 64 KiB).
//!
//! The minimum latency never expires within a download: every later sample includes the queue
//! the window itself builds at the providers (a gain of 2 keeps about one bandwidth-delay
//! product queued), so letting the minimum age out would feed that queue back into the
//! estimate and grow the window without bound — the reason BBR needs its "probe RTT" phase.
//!
//! The engine hands over each block as soon as it is verified and writes it behind; a
//! background download ends with [`check_stored`], which waits for those writes.
//!
//! Blocks are handed on in order; the consumer (an HTTP body, or nothing for a background
//! download) pulls through a bounded channel, so a slow reader slows the download instead of
//! buffering it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_core::{BlockAddress, Manifest};
use cairn_store::Store;
use futures::{StreamExt, future::BoxFuture, stream::FuturesOrdered};
use tokio::sync::mpsc;

use crate::{
    NodeError,
    engine::{EngineHandle, FetchError},
};

/// Window at the start of a download.
pub const INITIAL_WINDOW: usize = 32;
/// Smallest window.
pub const MIN_WINDOW: usize = 16;
/// Largest window: 512 blocks, 32 MiB in flight per download.
pub const MAX_WINDOW: usize = 512;
/// Window gain over the estimated bandwidth-delay product.
pub const WINDOW_GAIN: f64 = 2.0;
/// Interval over which the delivery rate is measured and the window re-sized.
pub const RATE_INTERVAL: Duration = Duration::from_millis(100);
/// Indices checked against the local store per blocking call.
pub const LOCAL_CHECK_BATCH: usize = 64;

/// Sizes the window. See the module docs.
#[derive(Debug)]
pub(crate) struct WindowEstimator {
    window: usize,
    interval_start: Instant,
    completed_in_interval: u64,
    min_latency: Option<Duration>,
}

impl WindowEstimator {
    pub(crate) fn new(now: Instant) -> WindowEstimator {
        WindowEstimator {
            window: INITIAL_WINDOW,
            interval_start: now,
            completed_in_interval: 0,
            min_latency: None,
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
        if elapsed >= RATE_INTERVAL {
            let rate = self.completed_in_interval as f64 / elapsed.as_secs_f64();
            if let Some(lat) = self.min_latency {
                let bdp = rate * lat.as_secs_f64();
                let target = (WINDOW_GAIN * bdp).ceil() as usize;
                // Grow at most 2x per interval (the estimate lags the window it measured).
                self.window = target.clamp(MIN_WINDOW, MAX_WINDOW).min(self.window * 2);
            }
            self.interval_start = now;
            self.completed_in_interval = 0;
        }
    }
}

type BlockFuture = BoxFuture<'static, (Result<Bytes, NodeError>, Option<Duration>, Instant)>;

/// Downloads every block of `manifest`, in order, into `out` (each item truncated so the total
/// is the dataset size). With `out = None` blocks are only stored.
///
/// The last chunk is not sent but returned: the caller sends it after [`check_stored`], so a
/// client that has received every byte can rely on the dataset being stored. `Ok(None)` when
/// the reader went away.
pub(crate) async fn fetch_dataset(
    store: Store,
    engine: EngineHandle,
    manifest: Manifest,
    out: Option<mpsc::Sender<Result<Bytes, NodeError>>>,
) -> Result<Option<Bytes>, NodeError> {
    let tree = manifest.tree_cid;
    let count = manifest.blocks_count();
    let mut remaining = manifest.download_size();
    let mut est = WindowEstimator::new(Instant::now());
    let mut inflight: FuturesOrdered<BlockFuture> = FuturesOrdered::new();
    let mut next: u64 = 0;
    while next < count || !inflight.is_empty() {
        // Fill the window.
        while inflight.len() < est.window() && next < count {
            {
                let room = (est.window() - inflight.len()).min(LOCAL_CHECK_BATCH) as u64;
                let n = (count - next).min(room);
                let s = store.clone();
                let start = next;
                let found = tokio::task::spawn_blocking(move || {
                    (start..start + n)
                        .map(|i| match s.get_leaf(&tree, i) {
                            Ok(Some((b, _))) => (i, Some(b.data().clone())),
                            _ => (i, None),
                        })
                        .collect::<Vec<_>>()
                })
                .await?;
                next += n;
                // Missing blocks are wanted together, in one engine command.
                let missing: Vec<u64> = found
                    .iter()
                    .filter(|(_, d)| d.is_none())
                    .map(|(i, _)| *i)
                    .collect();
                let mut rxs = engine
                    .want_many(
                        missing
                            .iter()
                            .map(|i| (BlockAddress::Leaf { tree, index: *i }, Some(count)))
                            .collect(),
                    )
                    .await
                    .into_iter();
                let asked = Instant::now();
                for (_, data) in found {
                    let fut: BlockFuture = match (data, rxs.next()) {
                        (Some(d), _) => Box::pin(async move { (Ok(d), None, Instant::now()) }),
                        (None, Some(rx)) => Box::pin(async move {
                            let r = match rx.await {
                                Ok(Ok(b)) => Ok(b.data().clone()),
                                Ok(Err(FetchError::NotFound)) => Err(NodeError::NotFound),
                                Ok(Err(e)) => Err(NodeError::Fetch(e)),
                                Err(_) => Err(NodeError::Fetch(FetchError::Stopped)),
                            };
                            let now = Instant::now();
                            (r, Some(now.duration_since(asked)), now)
                        }),
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
        }
        let Some((result, latency, at)) = inflight.next().await else {
            continue;
        };
        let mut data = result?;
        if let Some(l) = latency {
            est.record(l, at);
        }
        let keep = usize::try_from(remaining.min(data.len() as u64)).unwrap_or(data.len());
        data.truncate(keep);
        remaining -= keep as u64;
        if next >= count && inflight.is_empty() {
            return Ok(Some(data)); // the last chunk: the caller sends it once stored
        }
        if let Some(tx) = &out
            && tx.send(Ok(data)).await.is_err()
        {
            return Ok(None); // the reader went away; pending wants are dropped by the engine
        }
    }
    Ok(Some(Bytes::new()))
}

/// After a download: waits for the engine's writes and checks every leaf is stored.
pub(crate) async fn check_stored(
    store: &Store,
    engine: &EngineHandle,
    manifest: &Manifest,
) -> Result<(), NodeError> {
    engine.flush().await?;
    let store = store.clone();
    let tree = manifest.tree_cid;
    let count = manifest.blocks_count();
    let missing = tokio::task::spawn_blocking(move || {
        (0..count).find(|i| !store.has_leaf(&tree, *i).unwrap_or(false))
    })
    .await?;
    match missing {
        None => Ok(()),
        Some(i) => Err(NodeError::Fetch(FetchError::Store(format!(
            "leaf {i} of {tree} was fetched but is not stored"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a fixed bottleneck the window converges to about GAIN × BDP.
    #[test]
    fn window_tracks_bandwidth_delay_product() {
        let t0 = Instant::now();
        let mut est = WindowEstimator::new(t0);
        // Simulated link: 2000 blocks/s, 20 ms base latency: BDP = 40 blocks.
        let rate: f64 = 2000.0;
        let base = Duration::from_millis(20);
        let mut now = t0;
        for _ in 0..20_000 {
            // Window-limited rate until the window exceeds the BDP.
            let w = est.window() as f64;
            let achieved = rate.min(w / base.as_secs_f64());
            now += Duration::from_secs_f64(1.0 / achieved);
            let queueing = Duration::from_secs_f64(((w - 40.0).max(0.0)) / rate);
            est.record(base + queueing, now);
        }
        let w = est.window();
        assert!((70..=90).contains(&w), "window {w}");
    }

    #[test]
    fn window_stays_within_bounds() {
        let t0 = Instant::now();
        let mut est = WindowEstimator::new(t0);
        let mut now = t0;
        // Very slow link: one block per second, 1 ms latency.
        for _ in 0..50 {
            now += Duration::from_secs(1);
            est.record(Duration::from_millis(1), now);
        }
        assert_eq!(est.window(), MIN_WINDOW);
        // Very fast, long link.
        let mut est = WindowEstimator::new(now);
        for _ in 0..100_000 {
            now += Duration::from_micros(10);
            est.record(Duration::from_millis(500), now);
        }
        assert_eq!(est.window(), MAX_WINDOW);
    }
}
