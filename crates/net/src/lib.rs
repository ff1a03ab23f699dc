//! # cairn-net: the node's libp2p swarm
//!
//! * [`identity`]: the secp256k1 key in the data directory, in the reference's key-file format.
//! * [`transport`]: TCP + Noise + Yamux/Mplex.
//! * [`service`]: one task owns the swarm (block exchange, identify, ping, connection limits,
//!   bans); the rest of the node talks to it through a [`NetworkHandle`] over bounded channels
//!   and receives [`NetEvent`]s.
//! * [`manager`]: the peer manager: the address book, bootstrap and persistent peers, the
//!   outbound target and inbound cap, peer exchange (`/cairn/pex/1.0.0`) and seed mode.
//! * [`ip_limits`]: inbound connections per remote host.
//! * [`reputation`]: peer scores, fed by every protocol's complaints ([`PeerAction`]).
//! * [`metrics`]: connected peers by direction, penalties, and the block-exchange traffic.
//!
//! The swarm task does no disk I/O and no hashing of its own; block-exchange frames are decoded
//! and checked on each connection's task (`cairn-blockexc`), and everything that needs the
//! store happens in the node's engine.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod dht_link;
pub mod identity;
pub mod ip_limits;
pub mod manager;
pub mod metrics;
pub mod perf;
pub mod reputation;
pub mod service;
pub mod transport;

pub use cairn_peers::{Routability, Stats as BookStats};
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};

pub use crate::{
    dht_link::{DhtHooks, DhtLink},
    identity::{KeyError, load_or_create_key},
    metrics::Metrics,
    reputation::PeerAction,
    service::{
        Direction, HOUSEKEEPING_INTERVAL, NetEvent, NetStatus, NetworkHandle, PeerInfo, start,
    },
    transport::Muxers,
};

/// Default listen address: all interfaces, a port chosen by the system (as the reference).
pub const DEFAULT_LISTEN_ADDR: &str = "/ip4/0.0.0.0/tcp/0";

/// Default connection cap (`--max-peers`, as the reference).
pub const DEFAULT_MAX_PEERS: u32 = 160;

/// Network settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap nodes (`/…/p2p/<peer id>`), dialled at start and redialled with backoff.
    pub bootstrap: Vec<Multiaddr>,
    /// Multiplexers offered.
    pub muxers: Muxers,
    /// Most connections in total.
    pub max_peers: u32,
    /// Identify agent string.
    pub agent: String,
    /// Block-exchange limits.
    pub blockexc: cairn_blockexc::Config,
    /// Where the swarm counts what it does (registered by the caller, or nowhere).
    pub metrics: Metrics,
    /// File of the address book (peers we connected to and the addresses they announced),
    /// loaded at start, saved every [`BOOK_SAVE_INTERVAL`] (sooner after an empty book's first
    /// peers, [`BOOK_FIRST_SAVE_DELAY`]) and at shutdown. `None`: kept in
    /// memory only.
    pub book_path: Option<std::path::PathBuf>,
    /// Outbound connections the node keeps: while it has fewer, it dials peers from the address
    /// book (those it connected to before first) every [`HOUSEKEEPING_INTERVAL`].
    pub outbound_target: usize,
    /// Most peers that dialled us (connections beyond are refused before any protocol runs).
    pub max_inbound: u32,
    /// Peers always reconnected (`/…/p2p/<peer id>`), with backoff (`--persistent-peer`).
    pub persistent_peers: Vec<Multiaddr>,
    /// Peers never given to anyone in an address list (`--private-peer-id`).
    pub private_peer_ids: Vec<PeerId>,
    /// Crawl the book, answer address requests, keep no long connection (`--seed-mode`).
    pub seed_mode: bool,
    /// Which addresses the book accepts ([`cairn_peers::Routability`]; default: private and
    /// loopback addresses too, never given to public peers).
    pub routability: cairn_peers::Routability,
    /// Where the discovery DHT plugs in (connected by the node once the DHT runs; see
    /// [`DhtLink`]).
    pub dht: DhtLink,
    /// Serve the `/perf/1.0.0` self-test to peers ([`perf`]; within its limits). Default on.
    pub perf_server: bool,
    /// How often each connection is pinged ([`DEFAULT_PING_INTERVAL`]).
    pub ping_interval: std::time::Duration,
    /// How long a ping may wait for its answer ([`DEFAULT_PING_TIMEOUT`]); a connection whose
    /// pings keep failing is closed ([`service::MAX_PING_FAILURES`]).
    pub ping_timeout: std::time::Duration,
}

/// Default ping interval (rust-libp2p's).
pub const DEFAULT_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
/// Default ping timeout (rust-libp2p's).
pub const DEFAULT_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Default cap on inbound peers (CometBFT's `MaxNumInboundPeers`).
pub const DEFAULT_MAX_INBOUND: u32 = 40;

/// Default outbound target (issue 5; CometBFT's `MaxNumOutboundPeers`).
pub const DEFAULT_OUTBOUND_TARGET: usize = 10;

/// How often the address book is written to its file.
pub const BOOK_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(120);

/// An empty book (as last saved or loaded: a first start, typically) that has learned peers is
/// written this soon, not at the next [`BOOK_SAVE_INTERVAL`], so a node stopped hard in its
/// first minutes (a crash, `SIGKILL`) still finds them at its next start. Short enough for
/// that, long enough that a node learning its first peers writes the file once for the batch.
pub const BOOK_FIRST_SAVE_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            listen: DEFAULT_LISTEN_ADDR.parse().into_iter().collect(),
            bootstrap: Vec::new(),
            muxers: Muxers::default(),
            max_peers: DEFAULT_MAX_PEERS,
            agent: format!("cairn/{}", env!("CARGO_PKG_VERSION")),
            blockexc: cairn_blockexc::Config::default(),
            metrics: Metrics::default(),
            book_path: None,
            outbound_target: DEFAULT_OUTBOUND_TARGET,
            max_inbound: DEFAULT_MAX_INBOUND,
            persistent_peers: Vec::new(),
            private_peer_ids: Vec::new(),
            seed_mode: false,
            routability: cairn_peers::Routability::default(),
            dht: DhtLink::default(),
            perf_server: true,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
        }
    }
}

/// Network errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The network task has stopped.
    #[error("the network service has stopped")]
    Stopped,
    /// Building the transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(Multiaddr, String),
    /// A bootstrap or persistent-peer address without `/p2p/<peer id>`.
    #[error("bootstrap or persistent-peer address {0} must end in /p2p/<peer id>")]
    BadBootstrap(Multiaddr),
    /// Dialling failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// The peer is banned.
    #[error("peer {0} is banned")]
    Banned(PeerId),
    /// The block-exchange behaviour refused a frame.
    #[error(transparent)]
    Send(#[from] cairn_blockexc::SendError),
    /// A frame was not written.
    #[error("sending to {0} failed")]
    SendFailed(PeerId),
}
