//! Counters and gauges of the swarm task.
//!
//! The handles are `prometheus-client` metrics (an `Arc` around an atomic each): updating one is
//! an atomic operation, with no lock. The crate does not name or register them; whoever composes
//! the node registers the handles it passes in [`NetConfig`](crate::NetConfig) (`cairn-node`'s
//! `metrics` module, which also lists every metric). [`Metrics::default`] gives handles that
//! count but are registered nowhere.

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

pub use cairn_pex::Traffic as PexTraffic;

use crate::{Direction, PeerAction};

/// What the swarm task counts.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Block-exchange traffic, counted on the connection tasks.
    pub blockexc: cairn_blockexc::Metrics,
    /// Connected peers whose first connection we accepted.
    pub peers_inbound: Gauge,
    /// Connected peers whose first connection we dialled.
    pub peers_outbound: Gauge,
    /// Penalties given to peers, by severity.
    pub penalties: Penalties,
    /// Peer-exchange bytes each way, counted by the codec.
    pub pex: PexTraffic,
}

impl Metrics {
    /// The gauge of connected peers with `direction`.
    pub fn peers(&self, direction: Direction) -> &Gauge {
        match direction {
            Direction::Inbound => &self.peers_inbound,
            Direction::Outbound => &self.peers_outbound,
        }
    }
}

/// Penalties given to peers ([`PeerAction`]), one counter per severity.
#[derive(Debug, Clone, Default)]
pub struct Penalties {
    /// [`PeerAction::Fatal`].
    pub fatal: Counter,
    /// [`PeerAction::LowTolerance`].
    pub low_tolerance: Counter,
    /// [`PeerAction::MidTolerance`].
    pub mid_tolerance: Counter,
    /// [`PeerAction::HighTolerance`].
    pub high_tolerance: Counter,
}

impl Penalties {
    /// The counter of `action`.
    pub fn of(&self, action: PeerAction) -> &Counter {
        match action {
            PeerAction::Fatal => &self.fatal,
            PeerAction::LowTolerance => &self.low_tolerance,
            PeerAction::MidTolerance => &self.mid_tolerance,
            PeerAction::HighTolerance => &self.high_tolerance,
        }
    }
}
