//! The node's Prometheus metrics: the handles each part counts in, and the one place they are
//! named and registered ([`Metrics::register`]).
//!
//! No crate keeps a global registry. Each counting crate exposes a small struct of metric
//! handles (`cairn_blockexc::Metrics`, `cairn_net::Metrics`, `cairn_discovery::Metrics`, and
//! [`NodeMetrics`] here) that its caller passes in through its config; their `Default` counts in
//! handles registered nowhere, so libraries, tests and benchmarks need no registry. The binary
//! creates one `prometheus-client` [`Registry`] and calls [`Metrics::register`], which creates
//! the handles, names them (prefix `cairn_`, units in the names, labels only from small fixed
//! sets: never a peer id or a CID), and registers a collector that reads the store's space
//! accounting when scraped. The full list, with types, labels and meanings, is in
//! `docs/DESIGN-metrics.md`.
//!
//! Cost on the hot paths: a counter or gauge is an `Arc` around an atomic, and the per-block
//! histogram ([`DurationHistogram`]) is a few atomic adds, so counting a block takes no lock and
//! allocates nothing. Labelled series are resolved once, at registration, into plain handles.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cairn_store::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{
        MetricType, TypedMetric,
        counter::Counter,
        exemplar::Exemplar,
        family::{Family, MetricConstructor},
        gauge::{ConstGauge, Gauge},
        info::Info,
    },
    registry::Unit,
};
use tracing::debug;

pub use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the block-request latency buckets (a `WantBlock` sent to the
/// delivery that answers it): 1 ms (loopback) to 10 s, the
/// [`ACTIVITY_TIMEOUT`](crate::engine::ACTIVITY_TIMEOUT) after which a silent peer loses its
/// requests. Steps of about 2.5× give one or two buckets per order of magnitude of round trip.
pub const BLOCK_REQUEST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the download-duration buckets: 10 ms (a small dataset on a LAN) to
/// an hour (hundreds of GB); longer downloads land in `+Inf`.
pub const DOWNLOAD_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A histogram of durations that is cheap enough to observe once per block: fixed buckets of
/// atomic counters and an atomic sum of nanoseconds, so observing is a binary search over the
/// bounds and two relaxed atomic adds (`prometheus-client`'s own histogram takes a mutex).
///
/// A scrape reads the counters one by one, so it may see an observation in one bucket and not
/// yet in the sum; the count it reports is the sum of the buckets it read, so `_count` always
/// equals the `+Inf` bucket.
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in seconds, as exposed.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, compared against observations.
    bounds_nanos: Box<[u64]>,
    /// Observations per bucket (not cumulative); one more than `bounds`, for `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, in nanoseconds (584 years fit in a `u64`).
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// A histogram with buckets up to each of `bounds` (seconds: positive, finite,
    /// increasing) and `+Inf`.
    pub fn new(bounds: &'static [f64]) -> DurationHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        let bounds_nanos = bounds
            .iter()
            .map(|s| {
                Duration::try_from_secs_f64(*s)
                    .unwrap_or(Duration::MAX)
                    .as_nanos()
                    .try_into()
                    .unwrap_or(u64::MAX)
            })
            .collect();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        DurationHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                bounds_nanos,
                buckets,
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Records one duration. A duration equal to a bound counts in that bound's bucket
    /// (Prometheus buckets are "less than or equal").
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.inner.bounds_nanos.partition_point(|b| *b < nanos);
        if let Some(bucket) = self.inner.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// `(upper bound in seconds, observations in that bucket alone)`, `+Inf` last; the count;
    /// the sum in seconds.
    fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let bounds = self.inner.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(self.inner.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        (buckets, count, sum)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, count, sum) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the node itself counts: the block-exchange engine and downloads.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Delivered blocks that were asked of that peer, verified and kept.
    pub blocks_accepted: Counter,
    /// Delivered blocks dropped as unsolicited, late or already delivered by another peer.
    pub blocks_duplicate: Counter,
    /// Delivered blocks that failed verification (wrong CID or Merkle proof).
    pub blocks_rejected: Counter,
    /// Blocks sent to peers (written to their stream).
    pub blocks_sent: Counter,
    /// Block requests (`WantBlock`) made to peers; a block asked again counts again.
    pub block_requests: Counter,
    /// Requests taken back from a peer that stayed silent.
    pub request_timeouts: Counter,
    /// Requests also sent to a second holder because they waited too long at the first.
    pub block_requests_hedged: Counter,
    /// Verified blocks the store refused (quota, I/O).
    pub store_failures: Counter,
    /// Time from a `WantBlock` to the delivery that answers it, every peer together.
    pub block_request_duration: DurationHistogram,
    /// Blocks we want (pending wants of every download), sampled every engine tick.
    pub wants_local: Gauge,
    /// Blocks peers asked us for and have not been sent yet (queued or waiting for the block
    /// to arrive here), sampled every engine tick.
    pub wants_remote: Gauge,
    /// Blocks requested from peers and not yet delivered, sampled every engine tick.
    pub blocks_in_flight: Gauge,
    /// Verified blocks waiting for or in a store write, sampled every engine tick.
    pub blocks_unstored: Gauge,
    /// Downloads.
    pub downloads: DownloadMetrics,
}

/// What downloads count.
#[derive(Debug, Clone)]
pub struct DownloadMetrics {
    /// Downloads running now.
    pub active: Gauge,
    /// Durations of downloads that delivered every block of their range (stored).
    pub completed: DurationHistogram,
    /// Durations of downloads that failed (no provider, store error, …).
    pub failed: DurationHistogram,
    /// Durations of downloads whose reader went away before the end.
    pub cancelled: DurationHistogram,
    /// Blocks of downloads found in the local store.
    pub blocks_local: Counter,
    /// Blocks of downloads wanted from the network.
    pub blocks_network: Counter,
    /// Times a background download found no peer with its next block for the engine's
    /// no-holder timeout and kept looking ([`crate::BACKGROUND_PATIENCE`]).
    pub stalls: Counter,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics {
            blocks_accepted: Counter::default(),
            blocks_duplicate: Counter::default(),
            blocks_rejected: Counter::default(),
            blocks_sent: Counter::default(),
            block_requests: Counter::default(),
            request_timeouts: Counter::default(),
            block_requests_hedged: Counter::default(),
            store_failures: Counter::default(),
            block_request_duration: DurationHistogram::new(&BLOCK_REQUEST_BUCKETS),
            wants_local: Gauge::default(),
            wants_remote: Gauge::default(),
            blocks_in_flight: Gauge::default(),
            blocks_unstored: Gauge::default(),
            downloads: DownloadMetrics::default(),
        }
    }
}

impl Default for DownloadMetrics {
    fn default() -> DownloadMetrics {
        DownloadMetrics {
            active: Gauge::default(),
            completed: DurationHistogram::new(&DOWNLOAD_BUCKETS),
            failed: DurationHistogram::new(&DOWNLOAD_BUCKETS),
            cancelled: DurationHistogram::new(&DOWNLOAD_BUCKETS),
            blocks_local: Counter::default(),
            blocks_network: Counter::default(),
            stalls: Counter::default(),
        }
    }
}

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownloadOutcome {
    Completed,
    Failed,
    Cancelled,
}

/// A running download: counted in [`DownloadMetrics::active`] while it lives; its duration goes
/// into the histogram of its outcome when it is dropped ([`DownloadOutcome::Cancelled`] unless
/// [`Download::finish`] said otherwise, so a download whose future is dropped counts as
/// cancelled).
#[derive(Debug)]
pub(crate) struct Download {
    metrics: DownloadMetrics,
    started: Instant,
    outcome: DownloadOutcome,
}

impl Download {
    pub(crate) fn start(metrics: &DownloadMetrics) -> Download {
        metrics.active.inc();
        Download {
            metrics: metrics.clone(),
            started: Instant::now(),
            outcome: DownloadOutcome::Cancelled,
        }
    }

    /// Records how the download ended (when the guard drops).
    pub(crate) fn finish(&mut self, outcome: DownloadOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.metrics.active.dec();
        let h = match self.outcome {
            DownloadOutcome::Completed => &self.metrics.completed,
            DownloadOutcome::Failed => &self.metrics.failed,
            DownloadOutcome::Cancelled => &self.metrics.cancelled,
        };
        h.observe(self.started.elapsed());
    }
}

/// A count as a gauge value (saturating).
pub(crate) fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads the store's space accounting on every scrape (`cairn_store_*`). A scrape calls it on
/// the thread that encodes the registry; the metrics server does that on a blocking thread,
/// since the store reads its index.
#[derive(Debug)]
pub struct StoreCollector {
    store: Store,
}

impl StoreCollector {
    /// A collector over `store`.
    pub fn new(store: Store) -> StoreCollector {
        StoreCollector { store }
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let space = match self.store.space() {
            Ok(s) => s,
            Err(e) => {
                // Leave the series out of this scrape rather than fail the whole scrape.
                debug!(error = %e, "store space unreadable for metrics");
                return Ok(());
            }
        };
        let gauges = [
            (
                "store_used",
                "Bytes of live block data in the store (as /space quotaUsedBytes)",
                Some(Unit::Bytes),
                space.quota_used_bytes,
            ),
            (
                "store_reserved",
                "Bytes reserved by uploads and downloads in progress",
                Some(Unit::Bytes),
                space.quota_reserved_bytes,
            ),
            (
                "store_quota",
                "The storage quota",
                Some(Unit::Bytes),
                space.quota_max_bytes,
            ),
            (
                "store_blocks",
                "Blocks stored (data blocks and manifests)",
                None,
                space.total_blocks,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
            g.encode(m)?;
        }
        if let Ok(disk) = self.store.disk_bytes() {
            let g = ConstGauge::new(i64::try_from(disk).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "store_disk",
                "Bytes the store's segment files occupy, dead bytes not yet compacted included",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// Labels of one series: a few `(name, value)` pairs from fixed sets.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Every handle the node counts in, registered.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// For [`cairn_net::NetConfig::metrics`] (block-exchange traffic included).
    pub net: cairn_net::Metrics,
    /// For [`cairn_discovery::DiscoveryConfig::metrics`].
    pub discovery: cairn_discovery::Metrics,
    /// For [`NodeConfig::metrics`](crate::NodeConfig::metrics).
    pub node: NodeMetrics,
}

impl Metrics {
    /// Creates every handle and registers it in `registry` under the `cairn_` prefix, with a
    /// collector that reads `store`'s space on each scrape.
    pub fn register(registry: &mut Registry, store: Store) -> Metrics {
        let r = registry.sub_registry_with_prefix("cairn");
        r.register(
            "build",
            "The running cairn version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let traffic = Traffic::register(r);
        let net = register_net(r, &traffic);
        let discovery = register_discovery(r, &traffic);
        let node = register_node(r);
        r.register_collector(Box::new(StoreCollector::new(store)));
        Metrics {
            net,
            discovery,
            node,
        }
    }
}

/// One labelled series of `family`, as a plain handle (resolved once, so counting in it takes
/// no lock).
fn series<S, M, C>(family: &Family<S, M, C>, labels: S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    family.get_or_create_owned(&labels)
}

/// A family of counters with one label `name`, registered, and its series for each of `values`.
fn counters<const K: usize>(
    r: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; K],
) -> [Counter; K] {
    let family = Family::<Labels<1>, Counter>::default();
    r.register(name, help, family.clone());
    values.map(|v| series(&family, [(label, v)]))
}

/// The `network` families, shared by every protocol.
struct Traffic {
    bytes: Family<Labels<2>, Counter>,
    messages: Family<Labels<2>, Counter>,
}

impl Traffic {
    fn register(r: &mut Registry) -> Traffic {
        let bytes = Family::default();
        r.register_with_unit(
            "network",
            "Bytes sent and received, by protocol (blockexc and pex: frames on libp2p streams, \
             dht: UDP datagrams) and direction",
            Unit::Bytes,
            bytes.clone(),
        );
        let messages = Family::default();
        r.register(
            "network_messages",
            "Messages sent and received, by protocol (blockexc frames, dht datagrams) and \
             direction",
            messages.clone(),
        );
        Traffic { bytes, messages }
    }

    /// `(bytes sent, bytes received)` of `protocol` (one that counts no messages).
    fn bytes_of(&self, protocol: &'static str) -> (Counter, Counter) {
        let l = |direction| [("protocol", protocol), ("direction", direction)];
        (
            series(&self.bytes, l("sent")),
            series(&self.bytes, l("received")),
        )
    }

    /// `(bytes sent, bytes received, messages sent, messages received)` of `protocol`.
    fn of(&self, protocol: &'static str) -> (Counter, Counter, Counter, Counter) {
        let l = |direction| [("protocol", protocol), ("direction", direction)];
        (
            series(&self.bytes, l("sent")),
            series(&self.bytes, l("received")),
            series(&self.messages, l("sent")),
            series(&self.messages, l("received")),
        )
    }
}

fn register_net(r: &mut Registry, traffic: &Traffic) -> cairn_net::Metrics {
    let peers = Family::<Labels<1>, Gauge>::default();
    r.register(
        "peers",
        "Connected libp2p peers, by who dialled the first connection",
        peers.clone(),
    );
    let [fatal, low_tolerance, mid_tolerance, high_tolerance] = counters(
        r,
        "peer_penalties",
        "Penalties given to peers, by severity",
        "action",
        ["fatal", "low_tolerance", "mid_tolerance", "high_tolerance"],
    );
    let (bytes_sent, bytes_received, messages_sent, messages_received) = traffic.of("blockexc");
    let (pex_sent, pex_received) = traffic.bytes_of("pex");
    cairn_net::Metrics {
        pex: cairn_net::metrics::PexTraffic {
            bytes_sent: pex_sent,
            bytes_received: pex_received,
        },
        blockexc: cairn_blockexc::Metrics {
            bytes_sent,
            bytes_received,
            messages_sent,
            messages_received,
        },
        peers_inbound: series(&peers, [("direction", "inbound")]),
        peers_outbound: series(&peers, [("direction", "outbound")]),
        penalties: cairn_net::metrics::Penalties {
            fatal,
            low_tolerance,
            mid_tolerance,
            high_tolerance,
        },
    }
}

fn register_discovery(r: &mut Registry, traffic: &Traffic) -> cairn_discovery::Metrics {
    let d = cairn_discovery::Metrics::default();
    let (bytes_sent, bytes_received, packets_sent, packets_received) = traffic.of("dht");
    let [requests_answered, requests_timed_out, requests_failed] = counters(
        r,
        "dht_requests",
        "DHT requests we sent, by outcome (failed: never sent, e.g. too many in flight)",
        "outcome",
        ["answered", "timeout", "failed"],
    );
    r.register_with_unit(
        "dht_request_duration",
        "Time from sending a DHT request to its whole answer, answered requests only",
        Unit::Seconds,
        d.request_duration.clone(),
    );
    r.register(
        "dht_requests_received",
        "DHT requests from other nodes",
        d.requests_received.clone(),
    );
    let [lookups_completed, lookups_timed_out] = counters(
        r,
        "dht_lookups",
        "Iterative DHT lookups, by outcome (timeout: cut off by the lookup time limit)",
        "outcome",
        ["completed", "timeout"],
    );
    r.register_with_unit(
        "dht_lookup_duration",
        "Duration of iterative DHT lookups",
        Unit::Seconds,
        d.lookup_duration.clone(),
    );
    let [provider_searches_found, provider_searches_empty] = counters(
        r,
        "dht_provider_searches",
        "Searches for the providers of a CID, by whether any was found",
        "outcome",
        ["found", "empty"],
    );
    r.register(
        "dht_announcements",
        "Announcements of our provider record for a CID",
        d.announcements.clone(),
    );
    r.register(
        "dht_table_nodes",
        "Nodes in the DHT routing table",
        d.table_nodes.clone(),
    );
    r.register(
        "dht_provider_records",
        "Provider records of other nodes held",
        d.provider_records.clone(),
    );
    cairn_discovery::Metrics {
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        requests_answered,
        requests_timed_out,
        requests_failed,
        lookups_completed,
        lookups_timed_out,
        provider_searches_found,
        provider_searches_empty,
        ..d
    }
}

fn register_node(r: &mut Registry) -> NodeMetrics {
    let m = NodeMetrics::default();
    let [blocks_accepted, blocks_duplicate, blocks_rejected] = counters(
        r,
        "blockexc_blocks_received",
        "Blocks delivered by peers, by outcome (accepted: asked of that peer and verified; \
         duplicate: unsolicited or already delivered; rejected: failed verification)",
        "outcome",
        ["accepted", "duplicate", "rejected"],
    );
    r.register(
        "blockexc_blocks_sent",
        "Blocks sent to peers",
        m.blocks_sent.clone(),
    );
    r.register(
        "blockexc_block_requests",
        "Block requests (WantBlock) made to peers; a block asked again counts again",
        m.block_requests.clone(),
    );
    r.register(
        "blockexc_request_timeouts",
        "Block requests taken back from a peer that stayed silent",
        m.request_timeouts.clone(),
    );
    r.register(
        "blockexc_block_requests_hedged",
        "Block requests also sent to a second holder because they waited too long at the first \
         (counted in blockexc_block_requests too)",
        m.block_requests_hedged.clone(),
    );
    r.register(
        "blockexc_store_failures",
        "Verified blocks the store refused (quota, I/O)",
        m.store_failures.clone(),
    );
    r.register_with_unit(
        "blockexc_block_request_duration",
        "Time from a block request (WantBlock) to the delivery that answers it, all peers together",
        Unit::Seconds,
        m.block_request_duration.clone(),
    );
    let wants = Family::<Labels<1>, Gauge>::default();
    r.register(
        "blockexc_wantlist_blocks",
        "Want-list sizes: blocks we want (local) and blocks peers want from us and were not sent \
         yet (remote)",
        wants.clone(),
    );
    r.register(
        "blockexc_blocks_in_flight",
        "Blocks requested from peers and not delivered yet",
        m.blocks_in_flight.clone(),
    );
    r.register(
        "blockexc_blocks_unstored",
        "Verified blocks waiting for or in a store write",
        m.blocks_unstored.clone(),
    );
    let durations =
        Family::<Labels<1>, DurationHistogram, fn() -> DurationHistogram>::new_with_constructor(
            || DurationHistogram::new(&DOWNLOAD_BUCKETS),
        );
    r.register_with_unit(
        "download_duration",
        "Duration of network downloads (a dataset or a range of it), from the first block asked \
         to the last one stored, by outcome",
        Unit::Seconds,
        durations.clone(),
    );
    r.register(
        "downloads_active",
        "Network downloads running",
        m.downloads.active.clone(),
    );
    let [blocks_local, blocks_network] = counters(
        r,
        "download_blocks",
        "Blocks of network downloads, by where they came from (local: already stored)",
        "source",
        ["local", "network"],
    );
    r.register(
        "download_stalls",
        "Times a background download found no peer with its next block in time and kept \
         looking for one",
        m.downloads.stalls.clone(),
    );
    let outcome = |o| [("outcome", o)];
    NodeMetrics {
        blocks_accepted,
        blocks_duplicate,
        blocks_rejected,
        wants_local: series(&wants, [("side", "local")]),
        wants_remote: series(&wants, [("side", "remote")]),
        downloads: DownloadMetrics {
            completed: series(&durations, outcome("completed")),
            failed: series(&durations, outcome("failed")),
            cancelled: series(&durations, outcome("cancelled")),
            blocks_local,
            blocks_network,
            ..m.downloads
        },
        ..m
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_core::Block;
    use cairn_store::StoreConfig;
    use prometheus_client::encoding::text::encode;

    use super::*;

    /// `series → value` of every sample line of an exposition (`name{labels}` as printed).
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn scrape(r: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn bucket_bounds_increase_and_cover_the_timeouts() {
        for b in [&BLOCK_REQUEST_BUCKETS[..], &DOWNLOAD_BUCKETS[..]] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert!(b[0] > 0.0);
        }
        // A request answered just before the engine gives up on its peer still lands in a
        // finite bucket.
        assert!(
            BLOCK_REQUEST_BUCKETS.last().copied()
                >= Some(crate::engine::ACTIVITY_TIMEOUT.as_secs_f64())
        );
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let h = DurationHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500)); // ≤ 1 ms
        h.observe(Duration::from_millis(1)); // exactly a bound: that bucket
        h.observe(Duration::from_nanos(1_000_001)); // just above: the next one
        h.observe(Duration::from_secs(3)); // past the last bound: +Inf only
        h.observe(Duration::from_secs(4));
        assert_eq!(h.count(), 5);
        let mut r = Registry::default();
        r.register_with_unit("t", "test", Unit::Seconds, h.clone());
        let text = scrape(&r);
        assert!(text.contains("# TYPE t_seconds histogram"), "{text}");
        let s = samples(&text);
        assert_eq!(s["t_seconds_bucket{le=\"0.001\"}"], 2.0, "{text}");
        assert_eq!(s["t_seconds_bucket{le=\"0.01\"}"], 3.0, "{text}");
        assert_eq!(s["t_seconds_bucket{le=\"+Inf\"}"], 5.0, "{text}");
        assert_eq!(s["t_seconds_count"], 5.0, "{text}");
        // The sum is in seconds.
        assert!((s["t_seconds_sum"] - 7.0025).abs() < 1e-9, "{text}");
        let h = DurationHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(4));
        let (_, count, sum) = h.snapshot();
        assert_eq!(count, 2);
        assert!((sum - 0.007).abs() < 1e-12, "{sum}");
    }

    #[test]
    fn store_collector_reports_space() {
        let store = Store::in_memory(StoreConfig {
            quota_bytes: 1 << 20,
            ..StoreConfig::default()
        })
        .unwrap();
        for i in 0..3u8 {
            store
                .put_block(&Block::data_block(Bytes::from(vec![
                    i;
                    1000 + usize::from(i)
                ])))
                .unwrap();
        }
        let space = store.space().unwrap();
        assert!(space.quota_used_bytes > 0);
        let mut r = Registry::default();
        r.register_collector(Box::new(StoreCollector::new(store.clone())));
        let text = scrape(&r);
        let s = samples(&text);
        assert_eq!(
            s["store_used_bytes"], space.quota_used_bytes as f64,
            "{text}"
        );
        assert_eq!(s["store_quota_bytes"], (1u64 << 20) as f64, "{text}");
        assert_eq!(s["store_reserved_bytes"], 0.0, "{text}");
        assert_eq!(s["store_blocks"], 3.0, "{text}");
        assert_eq!(
            s["store_disk_bytes"],
            store.disk_bytes().unwrap() as f64,
            "{text}"
        );
        assert!(text.contains("# UNIT store_used_bytes bytes"), "{text}");
        // Read on every scrape, not once.
        store
            .put_block(&Block::data_block(Bytes::from_static(b"one more")))
            .unwrap();
        assert_eq!(samples(&scrape(&r))["store_blocks"], 4.0);
    }

    /// Every handle counts into the series its name and labels say, and every series is there
    /// (at zero) before anything happened.
    #[test]
    fn handles_feed_their_series() {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let mut r = Registry::default();
        let m = Metrics::register(&mut r, store);
        let before = samples(&scrape(&r));
        for series in [
            "cairn_network_bytes_total{protocol=\"blockexc\",direction=\"sent\"}",
            "cairn_network_bytes_total{protocol=\"dht\",direction=\"received\"}",
            "cairn_peers{direction=\"inbound\"}",
            "cairn_blockexc_blocks_received_total{outcome=\"rejected\"}",
            "cairn_download_duration_seconds_count{outcome=\"failed\"}",
            "cairn_dht_requests_total{outcome=\"timeout\"}",
            "cairn_blockexc_block_request_duration_seconds_count",
            "cairn_store_used_bytes",
        ] {
            assert_eq!(
                before.get(series),
                Some(&0.0),
                "{series} missing or not zero"
            );
        }
        assert_eq!(before["cairn_build_info{version=\"0.1.0\"}"], 1.0);

        m.net.blockexc.bytes_sent.inc_by(11);
        m.net.blockexc.messages_received.inc_by(12);
        m.net.peers_outbound.inc();
        m.net
            .penalties
            .of(cairn_net::PeerAction::MidTolerance)
            .inc();
        m.discovery.bytes_received.inc_by(13);
        m.discovery.requests_timed_out.inc();
        m.discovery.provider_searches_empty.inc();
        m.discovery.table_nodes.set(14);
        m.node.blocks_duplicate.inc();
        m.node.wants_remote.set(15);
        m.node.downloads.blocks_network.inc_by(16);
        m.node
            .block_request_duration
            .observe(Duration::from_millis(2));
        drop(Download::start(&m.node.downloads));
        let text = scrape(&r);
        let after = samples(&text);
        for (series, value) in [
            (
                "cairn_network_bytes_total{protocol=\"blockexc\",direction=\"sent\"}",
                11.0,
            ),
            (
                "cairn_network_bytes_total{protocol=\"blockexc\",direction=\"received\"}",
                0.0,
            ),
            (
                "cairn_network_messages_total{protocol=\"blockexc\",direction=\"received\"}",
                12.0,
            ),
            ("cairn_peers{direction=\"outbound\"}", 1.0),
            ("cairn_peers{direction=\"inbound\"}", 0.0),
            ("cairn_peer_penalties_total{action=\"mid_tolerance\"}", 1.0),
            (
                "cairn_network_bytes_total{protocol=\"dht\",direction=\"received\"}",
                13.0,
            ),
            ("cairn_dht_requests_total{outcome=\"timeout\"}", 1.0),
            ("cairn_dht_provider_searches_total{outcome=\"empty\"}", 1.0),
            ("cairn_dht_table_nodes", 14.0),
            (
                "cairn_blockexc_blocks_received_total{outcome=\"duplicate\"}",
                1.0,
            ),
            (
                "cairn_blockexc_blocks_received_total{outcome=\"accepted\"}",
                0.0,
            ),
            ("cairn_blockexc_wantlist_blocks{side=\"remote\"}", 15.0),
            ("cairn_download_blocks_total{source=\"network\"}", 16.0),
            (
                "cairn_blockexc_block_request_duration_seconds_bucket{le=\"0.0025\"}",
                1.0,
            ),
            (
                "cairn_blockexc_block_request_duration_seconds_bucket{le=\"0.001\"}",
                0.0,
            ),
            (
                "cairn_download_duration_seconds_count{outcome=\"cancelled\"}",
                1.0,
            ),
            (
                "cairn_download_duration_seconds_count{outcome=\"completed\"}",
                0.0,
            ),
            ("cairn_downloads_active", 0.0),
        ] {
            assert_eq!(after.get(series), Some(&value), "{series}:\n{text}");
        }
        // Names carry the prefix and their unit; each metric is described once.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert!(names.iter().all(|n| n.starts_with("cairn_")), "{names:?}");
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a metric described twice:\n{text}");
        for l in &types {
            if l.ends_with(" histogram") {
                assert!(l.contains("_seconds "), "{l}");
            }
        }
    }

    #[test]
    fn a_download_counts_while_it_runs_and_by_how_it_ended() {
        let m = DownloadMetrics::default();
        let mut d = Download::start(&m);
        let other = Download::start(&m);
        assert_eq!(m.active.get(), 2);
        d.finish(DownloadOutcome::Completed);
        drop(d);
        assert_eq!(m.active.get(), 1);
        assert_eq!((m.completed.count(), m.cancelled.count()), (1, 0));
        // Dropped without an outcome (its future was dropped): cancelled.
        drop(other);
        assert_eq!(m.active.get(), 0);
        assert_eq!((m.cancelled.count(), m.failed.count()), (1, 0));
        let mut d = Download::start(&m);
        d.finish(DownloadOutcome::Failed);
        drop(d);
        assert_eq!(m.failed.count(), 1);
    }
}
