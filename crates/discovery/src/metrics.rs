//! What the DHT counts: its UDP traffic, the requests it sends and answers, lookups and
//! provider searches, and the size of its routing table and provider store.
//!
//! The handles are `prometheus-client` metrics. Counters and gauges are an `Arc` around an
//! atomic; the two histograms take a short mutex per observation, which is fine at the DHT's
//! rates (a request or a lookup, not a block). The crate does not name or register them: whoever
//! composes the node registers the handles it passes in
//! [`DiscoveryConfig`](crate::DiscoveryConfig) (`cairn-node`'s `metrics` module, which also
//! lists every metric). [`Metrics::default`] gives handles that count but are registered nowhere.

use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use crate::service::RequestError;

/// Upper bounds (seconds) of the request-duration buckets: 1 ms (a loopback answer) to 2.5 s,
/// just past the longest a request may take (1 s request timeout + 0.5 s handshake).
pub const REQUEST_DURATION_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds (seconds) of the lookup-duration buckets: 10 ms to 25 s, past the 10 s lookup
/// time limit ([`LOOKUP_TIMEOUT`](crate::handle::LOOKUP_TIMEOUT)).
pub const LOOKUP_DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0];

/// The DHT's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// UDP payload bytes sent.
    pub bytes_sent: Counter,
    /// UDP payload bytes received (every datagram, valid or not).
    pub bytes_received: Counter,
    /// Datagrams sent.
    pub packets_sent: Counter,
    /// Datagrams received.
    pub packets_received: Counter,
    /// Requests we sent that were answered.
    pub requests_answered: Counter,
    /// Requests we sent that got no answer in time.
    pub requests_timed_out: Counter,
    /// Requests that could not be sent (too many in flight, no address, service stopped).
    pub requests_failed: Counter,
    /// Time from asking for a request to its whole answer, answered requests only.
    pub request_duration: Histogram,
    /// Requests from other nodes we read (PING, FINDNODE, GETPROVIDERS, …).
    pub requests_received: Counter,
    /// Iterative lookups that converged.
    pub lookups_completed: Counter,
    /// Iterative lookups cut off by their time limit.
    pub lookups_timed_out: Counter,
    /// Duration of every lookup.
    pub lookup_duration: Histogram,
    /// Provider searches (`find_providers`) that found at least one provider.
    pub provider_searches_found: Counter,
    /// Provider searches that found none.
    pub provider_searches_empty: Counter,
    /// Our provider records announced (`provide`), to any number of nodes.
    pub announcements: Counter,
    /// Nodes in the routing table (updated by the service task every sweep).
    pub table_nodes: Gauge,
    /// Provider records of others held (updated by the service task every sweep).
    pub provider_records: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            packets_sent: Counter::default(),
            packets_received: Counter::default(),
            requests_answered: Counter::default(),
            requests_timed_out: Counter::default(),
            requests_failed: Counter::default(),
            request_duration: Histogram::new(REQUEST_DURATION_BUCKETS),
            requests_received: Counter::default(),
            lookups_completed: Counter::default(),
            lookups_timed_out: Counter::default(),
            lookup_duration: Histogram::new(LOOKUP_DURATION_BUCKETS),
            provider_searches_found: Counter::default(),
            provider_searches_empty: Counter::default(),
            announcements: Counter::default(),
            table_nodes: Gauge::default(),
            provider_records: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Counts the outcome of one request that took `elapsed`.
    pub(crate) fn request_done<T>(
        &self,
        result: &Result<T, RequestError>,
        elapsed: std::time::Duration,
    ) {
        match result {
            Ok(_) => {
                self.requests_answered.inc();
                self.request_duration.observe(elapsed.as_secs_f64());
            }
            Err(RequestError::Timeout) => {
                self.requests_timed_out.inc();
            }
            Err(_) => {
                self.requests_failed.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_increase_and_cover_the_time_limits() {
        for b in [&REQUEST_DURATION_BUCKETS[..], &LOOKUP_DURATION_BUCKETS[..]] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        let d = crate::DiscoveryConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let longest_request = (d.request_timeout + d.handshake_timeout).as_secs_f64();
        assert!(REQUEST_DURATION_BUCKETS.last().copied() > Some(longest_request));
        let lookup = crate::handle::LOOKUP_TIMEOUT.as_secs_f64();
        assert!(LOOKUP_DURATION_BUCKETS.last().copied() > Some(lookup));
    }

    #[test]
    fn request_outcomes_are_told_apart() {
        let m = Metrics::default();
        let ms = std::time::Duration::from_millis(3);
        m.request_done(&Ok::<(), _>(()), ms);
        m.request_done(&Err::<(), _>(RequestError::Timeout), ms);
        m.request_done(&Err::<(), _>(RequestError::Busy), ms);
        m.request_done(&Err::<(), _>(RequestError::NoAddress), ms);
        assert_eq!(
            (
                m.requests_answered.get(),
                m.requests_timed_out.get(),
                m.requests_failed.get()
            ),
            (1, 1, 2)
        );
    }
}
