//! Traffic counters of the protocol.
//!
//! The handles are `prometheus-client` counters: an `Arc` around an atomic, so counting is one
//! atomic add on the connection task that wrote or read the frame, with no lock. The crate does
//! not name or register them: whoever composes the node registers the handles it passes in
//! (`cairn-node`'s `metrics` module, which also lists every metric). [`Metrics::default`] gives
//! handles that count but are registered nowhere.

use prometheus_client::metrics::counter::Counter;

/// Block-exchange traffic, all connections together.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Bytes of frames written and flushed (length prefix included).
    pub bytes_sent: Counter,
    /// Bytes of frames read whole (length prefix included), whether they decoded or not.
    pub bytes_received: Counter,
    /// Frames written and flushed.
    pub messages_sent: Counter,
    /// Frames read whole.
    pub messages_received: Counter,
}
