//! The task that owns the swarm, and the handle the rest of the node uses.
//!
//! [`start`] builds the swarm, binds the listen addresses and spawns [`run`]; it returns a
//! [`NetworkHandle`] (cheap to clone; every method sends a [`Command`] over a bounded channel
//! and awaits a oneshot answer) and the receiver of [`NetEvent`]s.
//!
//! ## Dials use a fresh local port
//! Every dial asks for a new local port (`allocate_new_port`). rust-libp2p's default, port
//! reuse, binds the dialling socket to `0.0.0.0:<listen port>`; that fails with `EADDRINUSE`
//! when another socket holds the same port number on another local address (a host with
//! several addresses and several services: the 100-node benchmark on 127.0.0.x hit it for about
//! one node in a hundred, which then could dial nobody), and libp2p-tcp falls back to a new port
//! only on `EADDRNOTAVAIL`. Port reuse only helps hole punching, which cairn does not do.
//!
//! ## No deadlock between the two channels
//! The engine sends commands and receives events; the swarm task does the opposite. Both
//! channels are bounded, so the swarm task never *awaits* room in the event channel while
//! ignoring commands: when the channel is full it parks the event and, until the event is
//! taken, stops polling the swarm but keeps serving commands. An engine blocked on a full
//! command channel is therefore always released, and a slow engine slows the swarm (and, through
//! it, TCP) instead of growing a queue.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use cairn_blockexc::{self as blockexc, Message, SendId};
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, connection_limits,
    core::ConnectedPoint,
    identify,
    identity::Keypair,
    multiaddr::Protocol,
    ping,
    swarm::{
        ConnectionId, DialError, NetworkBehaviour, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use cairn_peers::{AddrBook, Source};

use crate::{
    Metrics, NetConfig, NetError,
    manager::{FixedPeer, unix_now},
    reputation::{PeerAction, Reputation, Verdict},
    transport,
};

/// Commands queued to the swarm task. Senders wait when it is full.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;
/// Events queued to the node. The swarm pauses when it is full.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// How often the peer manager runs ([`crate::manager`]: dials, address requests, bans, saving
/// the book).
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How long [`start`] waits for the listeners to report their addresses.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an address of a peer where another peer's id answered stays refused for that peer
/// in the address book (the peer's other addresses are taken): an address dropped only would
/// come back with the next peer-exchange answer of a peer that learned it from us.
pub const STALE_PEER_MEMORY: Duration = Duration::from_secs(60 * 60);

/// Connections to one peer (one each way when both dial at once).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Connections still in their handshake, inbound.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Dials under way at once, whoever asked (the peer manager, provider searches, the API): one
/// more fails at once as denied. Each dial tries up to 8 of its addresses at a time, so this
/// bounds the sockets dials hold whatever asks for them (review: nothing did).
pub const MAX_PENDING_OUTGOING: u32 = 64;
/// Ping failures in a row, as the ping behaviour reports them, after which a connection is
/// closed. It reports from the second failure on (the first is free), so this is three pings
/// that went unanswered, about two minutes at the default interval and timeout. Since
/// libp2p-ping 0.44 a failed ping closes nothing by itself, and the block exchange keeps every
/// connection alive, so a peer that vanished without closing (power or link lost) held a slot,
/// counted as an outbound peer (none replaced it) and, if persistent, was never redialled
/// (review). A peer that does not speak ping is left alone.
pub const MAX_PING_FAILURES: u32 = 2;
/// Identify protocol version string, as the reference sends it.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// The composed behaviour.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(crate) struct Behaviour {
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    /// Inbound connections per remote host ([`crate::ip_limits`]).
    per_host: crate::ip_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    blockexc: blockexc::Behaviour,
    pub(crate) pex: libp2p::request_response::Behaviour<cairn_pex::PexCodec>,
    /// Streams handed to plain async code: the `/perf/1.0.0` self-test ([`crate::perf`]).
    stream: libp2p_stream::Behaviour,
}

/// Whether we dialled the peer or it dialled us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled.
    Outbound,
    /// It dialled.
    Inbound,
}

/// A connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its id.
    pub peer: PeerId,
    /// Its address on its oldest open connection.
    pub address: Multiaddr,
    /// Who dialled.
    pub direction: Direction,
    /// Identify agent version, once known.
    pub agent: Option<String>,
    /// Its score.
    pub score: f64,
    /// How long it has been connected (filled in when asked).
    pub connected_for: Duration,
}

/// What the peer manager is doing: connected peers, targets and the address book.
#[derive(Debug, Clone)]
pub struct NetStatus {
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// Outbound peers the node dials towards.
    pub outbound_target: usize,
    /// Cap on inbound peers.
    pub max_inbound: u32,
    /// Cap on connections.
    pub max_peers: u32,
    /// Running as a seed.
    pub seed_mode: bool,
    /// Peers in the address book's new and old buckets, and its bans.
    pub book: cairn_peers::Stats,
    /// Peers banned now for their score (refused at connection time).
    pub banned: usize,
    /// Peer-exchange bytes sent and received since start.
    pub pex_bytes: (u64, u64),
}

/// What the network tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// First connection to a peer.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Who dialled.
        direction: Direction,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A connection to a peer that carried block-exchange frames closed while another stays
    /// open (a reconnect that overlapped the old connection, or one of two simultaneous dials
    /// going away). Whatever was in flight on the closed one, either way, may be lost: requests
    /// we sent, deliveries the peer sent.
    ConnectionLost {
        /// The peer, still connected.
        peer: PeerId,
    },
    /// The peer broke the block-exchange protocol (it has been penalised, and the stream it
    /// used closed): whatever was asked of it will not come.
    Violation {
        /// The peer.
        peer: PeerId,
    },
    /// A checked block-exchange message.
    Message {
        /// Sender.
        peer: PeerId,
        /// The message.
        message: Box<Message>,
    },
}

/// Requests to the swarm task.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        peer: PeerId,
        frame: blockexc::Frame,
        done: oneshot::Sender<Result<(), NetError>>,
    },
    Dial {
        peer: Option<PeerId>,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<Result<PeerId, NetError>>,
    },
    Peers {
        done: oneshot::Sender<Vec<PeerInfo>>,
    },
    Status {
        done: oneshot::Sender<NetStatus>,
    },
    IsBanned {
        peer: PeerId,
        done: oneshot::Sender<bool>,
    },
    BookEntry {
        peer: PeerId,
        done: oneshot::Sender<Option<cairn_peers::PeerInfo>>,
    },
    ListenAddrs {
        done: oneshot::Sender<Vec<Multiaddr>>,
    },
    Report {
        peer: PeerId,
        action: PeerAction,
        reason: String,
    },
    Disconnect {
        peer: PeerId,
    },
}

/// A cheap-to-clone handle to the swarm task.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    dht: crate::DhtLink,
    perf: crate::perf::PerfClient,
}

impl NetworkHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where the discovery DHT plugs in ([`crate::DhtLink::connect`]).
    pub fn dht_link(&self) -> &crate::DhtLink {
        &self.dht
    }

    /// Measures the path to `peer` with the `/perf/1.0.0` self-test ([`crate::perf`]): sends
    /// `upload` bytes and receives `download` bytes over a stream of its own.
    pub async fn perf(
        &self,
        peer: PeerId,
        upload: u64,
        download: u64,
    ) -> Result<crate::perf::PerfReport, crate::perf::PerfError> {
        use crate::perf::PerfError;
        let Ok(_run) = self.perf.runs.clone().try_acquire_owned() else {
            return Err(PerfError::Busy);
        };
        let connected = self
            .peers()
            .await
            .map_err(|e| PerfError::Open {
                peer,
                reason: e.to_string(),
            })?
            .iter()
            .any(|p| p.peer == peer);
        if !connected {
            return Err(PerfError::NotConnected(peer));
        }
        crate::perf::run(&mut self.perf.control.clone(), peer, upload, download).await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Sends `message` to `peer` and waits until it is written to the stream.
    pub async fn send(&self, peer: PeerId, message: &Message) -> Result<(), NetError> {
        let frame = message.to_frame();
        self.send_frame(peer, frame).await
    }

    /// Sends a pre-built frame (test doubles use this to send garbage).
    pub async fn send_frame(&self, peer: PeerId, frame: blockexc::Frame) -> Result<(), NetError> {
        self.ask(|done| Command::Send { peer, frame, done }).await?
    }

    /// Connects to `peer` at `addrs` (or any known address); returns when connected.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.ask(|done| Command::Dial {
            peer: Some(peer),
            addrs,
            done,
        })
        .await?
        .map(|_| ())
    }

    /// Dials `addr`; a `/p2p/<id>` suffix names the expected peer. Returns the peer's id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(p)) => Some(p),
            _ => None,
        };
        self.ask(|done| Command::Dial {
            peer,
            addrs: vec![addr],
            done,
        })
        .await?
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|done| Command::Peers { done }).await
    }

    /// Connected peers, targets and address-book figures.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.ask(|done| Command::Status { done }).await
    }

    /// Whether `peer` is banned now (its connections are refused).
    pub async fn is_banned(&self, peer: PeerId) -> Result<bool, NetError> {
        self.ask(|done| Command::IsBanned { peer, done }).await
    }

    /// What the address book holds about `peer` (`None`: not in the book).
    pub async fn book_entry(
        &self,
        peer: PeerId,
    ) -> Result<Option<cairn_peers::PeerInfo>, NetError> {
        self.ask(|done| Command::BookEntry { peer, done }).await
    }

    /// Addresses we listen on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|done| Command::ListenAddrs { done }).await
    }

    /// Reports misbehaviour of `peer`.
    pub async fn report(&self, peer: PeerId, action: PeerAction, reason: impl Into<String>) {
        let _ = self
            .commands
            .send(Command::Report {
                peer,
                action,
                reason: reason.into(),
            })
            .await;
    }

    /// Closes every connection to `peer`.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect { peer }).await;
    }
}

type DialReply = (Option<PeerId>, oneshot::Sender<Result<PeerId, NetError>>);

pub(crate) struct Connected {
    /// The peer as its oldest open connection shows it (direction, address).
    pub(crate) info: PeerInfo,
    /// Its open connections, oldest first (at most [`MAX_CONNECTIONS_PER_PEER`]). When the
    /// oldest closes, `info`, `since` and `promoted` follow the next one (review: the peer kept
    /// the first connection's direction and address for as long as any other stayed open).
    links: Vec<Link>,
    /// When the oldest open connection was established.
    pub(crate) since: Instant,
    /// Its identify message arrived (we know where it listens).
    pub(crate) identified: bool,
    /// We answered an address request of its (a seed hangs up then).
    pub(crate) answered: bool,
    /// A seed closes the connection at this time.
    pub(crate) hang_up_at: Option<Instant>,
    /// We closed every connection it had ([`Service::hang_up`]) and none has opened since:
    /// it is going away, so a dial makes a new connection instead of reusing it.
    pub(crate) closing: bool,
    /// Its success is recorded in the address book (an outbound connection that lasted
    /// [`crate::manager::BOOK_STABLE_CONNECTION`]).
    pub(crate) promoted: bool,
}

/// One open connection of a connected peer.
struct Link {
    id: ConnectionId,
    direction: Direction,
    address: Multiaddr,
    since: Instant,
}

impl Connected {
    /// The connection `id` closed and others stay: the peer is now as the oldest of them shows
    /// it. Returns the direction it had before, if that changed.
    fn connection_closed(&mut self, id: ConnectionId, seed_mode: bool) -> Option<Direction> {
        let was_oldest = self.links.first().is_some_and(|l| l.id == id);
        self.links.retain(|l| l.id != id);
        let oldest = self.links.first().filter(|_| was_oldest)?;
        let before = self.info.direction;
        self.info.direction = oldest.direction;
        self.info.address = oldest.address.clone();
        self.since = oldest.since;
        // Its success is for the book again (an outbound one that lasts), once.
        self.promoted = seed_mode;
        (before != oldest.direction).then_some(before)
    }
}

/// The swarm task's state. The peer-manager half of its methods is in [`crate::manager`].
pub(crate) struct Service {
    pub(crate) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Events the node has not taken yet; while any wait, the swarm is not polled (so this
    /// holds at most the few events one swarm event produces).
    parked: std::collections::VecDeque<NetEvent>,
    sends: HashMap<SendId, oneshot::Sender<Result<(), NetError>>>,
    dials: HashMap<ConnectionId, DialReply>,
    pub(crate) connected: HashMap<PeerId, Connected>,
    pub(crate) reputation: Reputation,
    /// Bootstrap and persistent peers.
    pub(crate) fixed: Vec<FixedPeer>,
    listen_addrs: Vec<Multiaddr>,
    metrics: Metrics,
    /// Peers we know and where they listen (see `cairn-peers`).
    pub(crate) book: AddrBook,
    pub(crate) book_path: Option<std::path::PathBuf>,
    pub(crate) last_book_save: Instant,
    /// Whether the book was empty when it was last saved or loaded (see
    /// [`crate::manager::book_save_due`]).
    pub(crate) book_empty_when_saved: bool,
    /// The book file being written on a blocking thread, if a write is under way
    /// ([`Service::save_book`]).
    pub(crate) book_write: Option<tokio::task::JoinHandle<()>>,
    pub(crate) outbound_target: usize,
    max_inbound: u32,
    max_peers: u32,
    /// Crawl, answer, hang up; no outbound target (see [`crate::manager`]).
    pub(crate) seed_mode: bool,
    pub(crate) last_crawl: Instant,
    /// Last periodic address request round (see [`crate::manager::PEX_ROUND_INTERVAL`]).
    pub(crate) last_pex_round: Instant,
    /// Peers being dialled from the book (at most the outbound target, or a seed's crawl batch,
    /// at once).
    pub(crate) book_dials: std::collections::HashSet<PeerId>,
    /// When we last asked each peer for addresses, within the last
    /// [`crate::manager::PEX_ASK_INTERVAL`] (bounded by the peers we can connect to in that time).
    pub(crate) pex_asked: HashMap<PeerId, Instant>,
    /// When each peer last asked us, kept [`crate::manager::PEX_MIN_REQUEST_INTERVAL`] after it
    /// disconnects (bounded by the connections the node can accept in that time).
    pub(crate) pex_served: HashMap<PeerId, Instant>,
    /// The discovery DHT, once the node connects it (records in address lists).
    pub(crate) dht: crate::DhtLink,
    /// Ping failures in a row per open connection ([`MAX_PING_FAILURES`]).
    ping_failures: HashMap<ConnectionId, u32>,
}

/// Builds the swarm, binds `config.listen`, and spawns the task that runs it until `cancel`.
pub async fn start(
    key: Keypair,
    config: NetConfig,
    cancel: CancellationToken,
) -> Result<
    (
        NetworkHandle,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetError,
> {
    let peer_id = key.public().to_peer_id();
    let transport =
        transport::build(&key, config.muxers).map_err(|e| NetError::Transport(e.to_string()))?;
    let behaviour = Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_peers))
                .with_max_established_incoming(Some(config.max_inbound))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
        ),
        per_host: crate::ip_limits::Behaviour::default(),
        // No signed peer record in identify: libp2p-identify 0.48 signs it only in rust-libp2p's
        // legacy format (domain "libp2p-routing-state"), and the reference (nim-libp2p,
        // `identify.nim` `decodeMsg`) then rejects the whole message and drops the connection
        // ("Incorrect message received!"), which a live reference node did to every connection
        // from cairn. The field is optional there; our signed record is served by `GET /spr` and
        // the DHT instead.
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                .with_agent_version(config.agent.clone()),
        ),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        ),
        blockexc: blockexc::Behaviour::with_metrics(
            config.blockexc.clone(),
            config.metrics.blockexc.clone(),
        ),
        pex: cairn_pex::behaviour_with_traffic(config.metrics.pex.clone()),
        stream: libp2p_stream::Behaviour::new(),
    };
    let mut perf = behaviour.stream.new_control();
    if config.perf_server {
        let incoming = perf
            .accept(crate::perf::PERF_PROTOCOL)
            .map_err(|e| NetError::Transport(e.to_string()))?;
        tokio::spawn(crate::perf::serve(incoming, cancel.clone()));
    }
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    let mut pending = Vec::new();
    for addr in &config.listen {
        transport::probe_free_port(addr)
            .map_err(|e| NetError::Listen(addr.clone(), e.to_string()))?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen(addr.clone(), e.to_string()))?;
        pending.push((id, addr.clone()));
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while !pending.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| NetError::Listen(pending[0].1.clone(), "timed out".into()))?;
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                listen_addrs.push(address);
                pending.retain(|(id, _)| *id != listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((_, addr)) = pending.iter().find(|(id, _)| *id == listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(NetError::Listen(addr.clone(), reason));
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(NetError::Listen(pending[0].1.clone(), error.to_string()));
            }
            _ => {}
        }
    }
    for addr in &listen_addrs {
        info!(%addr, %peer_id, "libp2p listening");
    }
    let now = Instant::now();
    let mut fixed: Vec<FixedPeer> = Vec::new();
    for (addrs, persistent) in [(&config.bootstrap, false), (&config.persistent_peers, true)] {
        for addr in addrs {
            match addr.iter().last() {
                Some(Protocol::P2p(peer)) => {
                    // A peer named both ways is persistent.
                    if let Some(f) = fixed.iter_mut().find(|f| f.peer == peer) {
                        f.persistent |= persistent;
                    } else {
                        fixed.push(FixedPeer::new(peer, addr.clone(), persistent, now));
                    }
                }
                _ => return Err(NetError::BadBootstrap(addr.clone())),
            }
        }
    }
    let book_config = cairn_peers::Config::new(peer_id)
        .with_routability(config.routability)
        .with_private_peer_ids(config.private_peer_ids.iter().copied());
    let book = match &config.book_path {
        Some(path) => {
            let (book, outcome) = AddrBook::load(path, book_config, unix_now());
            match outcome {
                cairn_peers::LoadOutcome::NotFound | cairn_peers::LoadOutcome::Loaded { .. } => {
                    info!(path = %path.display(), %outcome, peers = book.size(), "address book loaded");
                }
                _ => warn!(path = %path.display(), %outcome, "address book not loaded"),
            }
            book
        }
        None => AddrBook::new(book_config),
    };
    let book_empty_when_saved = book.is_empty();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let service = Service {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        parked: std::collections::VecDeque::new(),
        sends: HashMap::new(),
        dials: HashMap::new(),
        connected: HashMap::new(),
        reputation: Reputation::default(),
        fixed,
        listen_addrs,
        metrics: config.metrics.clone(),
        book,
        book_path: config.book_path.clone(),
        last_book_save: Instant::now(),
        book_empty_when_saved,
        book_write: None,
        outbound_target: config.outbound_target,
        max_inbound: config.max_inbound,
        max_peers: config.max_peers,
        seed_mode: config.seed_mode,
        last_crawl: now,
        last_pex_round: now,
        book_dials: std::collections::HashSet::new(),
        pex_asked: HashMap::new(),
        pex_served: HashMap::new(),
        dht: config.dht.clone(),
        ping_failures: HashMap::new(),
    };
    // Every line the task logs names the node (several run in one process in tests and
    // benchmarks): the last characters of its peer id.
    let id = peer_id.to_base58();
    let span = tracing::debug_span!("net", node = %&id[id.len().saturating_sub(6)..]);
    let task = tokio::spawn(tracing::Instrument::instrument(service.run(cancel), span));
    Ok((
        NetworkHandle {
            peer_id,
            commands: cmd_tx,
            dht: config.dht,
            perf: crate::perf::PerfClient::new(perf),
        },
        ev_rx,
        task,
    ))
}

impl Service {
    async fn run(mut self, cancel: CancellationToken) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(ev) = self.parked.pop_front() {
                // The node is behind: wait for room, keep serving commands, don't poll the swarm.
                let events = self.events.clone();
                tokio::select! {
                    () = cancel.cancelled() => break,
                    permit = events.reserve() => match permit {
                        Ok(p) => p.send(ev),
                        Err(_) => break,
                    },
                    cmd = self.commands.recv() => {
                        self.parked.push_front(ev);
                        match cmd {
                            Some(c) => self.command(c),
                            None => break,
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev),
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
        // The last save waits for a write under way, then writes here: nothing is left
        // half done when the task ends.
        if let Some(write) = self.book_write.take() {
            let _ = write.await;
        }
        self.save_book_now();
        debug!("network task stopped");
    }

    fn emit(&mut self, ev: NetEvent) {
        if !self.parked.is_empty() {
            self.parked.push_back(ev);
            return;
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => self.parked.push_back(ev),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { peer, frame, done } => {
                match self.swarm.behaviour_mut().blockexc.send(&peer, frame) {
                    Ok(id) => {
                        self.sends.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.into()));
                    }
                }
            }
            Command::Dial { peer, addrs, done } => self.dial(peer, addrs, done),
            Command::Peers { done } => {
                let _ = done.send(self.peer_infos());
            }
            Command::Status { done } => {
                let pex = &self.metrics.pex;
                let _ = done.send(NetStatus {
                    peers: self.peer_infos(),
                    outbound_target: self.outbound_target,
                    max_inbound: self.max_inbound,
                    max_peers: self.max_peers,
                    seed_mode: self.seed_mode,
                    book: self.book.stats(),
                    banned: self.reputation.banned_count(Instant::now()),
                    pex_bytes: (pex.bytes_sent.get(), pex.bytes_received.get()),
                });
            }
            Command::BookEntry { peer, done } => {
                let _ = done.send(self.book.get(&peer));
            }
            Command::IsBanned { peer, done } => {
                let _ = done.send(self.reputation.is_banned(&peer, Instant::now()));
            }
            Command::ListenAddrs { done } => {
                let _ = done.send(self.listen_addrs.clone());
            }
            Command::Report {
                peer,
                action,
                reason,
            } => self.report(peer, action, &reason),
            Command::Disconnect { peer } => self.hang_up(peer),
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        self.connected
            .values()
            .map(|c| PeerInfo {
                score: self.reputation.score(&c.info.peer, now),
                connected_for: now.duration_since(c.since),
                ..c.info.clone()
            })
            .collect()
    }

    fn dial(
        &mut self,
        peer: Option<PeerId>,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<Result<PeerId, NetError>>,
    ) {
        if let Some(p) = peer {
            if self.connected.get(&p).is_some_and(|c| !c.closing) {
                let _ = done.send(Ok(p));
                return;
            }
            if self.reputation.is_banned(&p, Instant::now()) {
                let _ = done.send(Err(NetError::Banned(p)));
                return;
            }
        }
        let opts = match peer {
            Some(p) => DialOpts::peer_id(p)
                .addresses(addrs)
                .condition(PeerCondition::Always)
                .allocate_new_port()
                .build(),
            None => match addrs.into_iter().next() {
                Some(a) => DialOpts::unknown_peer_id()
                    .address(a)
                    .allocate_new_port()
                    .build(),
                None => {
                    let _ = done.send(Err(NetError::Dial("no address to dial".into())));
                    return;
                }
            },
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (peer, done));
            }
            Err(e) => {
                let _ = done.send(Err(NetError::Dial(e.to_string())));
            }
        }
    }

    pub(crate) fn report(&mut self, peer: PeerId, action: PeerAction, reason: &str) {
        self.metrics.penalties.of(action).inc();
        let verdict = self.reputation.report(peer, action, Instant::now());
        warn!(%peer, ?action, ?verdict, reason, "peer penalised");
        match verdict {
            Verdict::Keep => {}
            Verdict::Disconnect => self.hang_up(peer),
            Verdict::Ban => {
                // Refused at connection time (existing connections are closed), and out of the
                // book (so neither dialled nor gossiped) until the ban ends.
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                let until = unix_now() + crate::reputation::BAN_DURATION.as_secs();
                self.book.ban(peer, until);
                self.book_dials.remove(&peer);
            }
        }
    }

    /// A dial of `peer` reached `obtained` at `address`. Another peer answers there (the peer
    /// restarted with a new identity, the address was reused, or someone gossiped another
    /// node's address as the peer's): that address is dropped instead of being dialled again
    /// and again, each time opening a connection the other peer sees come and go (as CometBFT's
    /// book marks such an address bad). Only that address: a dial goes to all of a peer's
    /// addresses at once, and the first handshake to complete decides it, so one bad address
    /// added by a third party used to get a good peer dropped and banned (found in review).
    /// When it was the peer's last address the peer leaves the book. The address stays refused
    /// for the peer for [`STALE_PEER_MEMORY`]: a peer that learned the stale entry from us
    /// would gossip it back, and each dial would reach the other peer. The peer itself is not
    /// kept out: it used to be banned for that hour, so a third party gossiping a peer at its
    /// own address kept the peer from our book (found by review).
    fn wrong_peer_at(&mut self, peer: PeerId, obtained: PeerId, address: &Multiaddr) {
        let until = unix_now() + STALE_PEER_MEMORY.as_secs();
        match self.book.remove_address(&peer, address, until) {
            cairn_peers::AddrRemoval::NotHeld => {}
            cairn_peers::AddrRemoval::Removed { left } => {
                info!(%peer, %obtained, %address, left, "another peer answers at one of its addresses; that address dropped from the address book");
            }
            cairn_peers::AddrRemoval::LastAddress => {
                info!(%peer, %obtained, %address, "another peer answers at its last address; the peer dropped from the address book, the address refused for it for an hour");
            }
        }
    }

    /// Closes every connection to `peer` (those opening later are not affected).
    pub(crate) fn hang_up(&mut self, peer: PeerId) {
        if let Some(c) = self.connected.get_mut(&peer) {
            c.closing = true;
        }
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Blockexc(ev)) => self.blockexc_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                debug!(peer = %peer_id, agent = %info.agent_version, "identified");
                // The addresses a connected peer says it listens on go into the book, so it
                // can be dialled again later (after a restart, too).
                let remote = self.connected.get(&peer_id).map(|c| c.info.address.clone());
                crate::manager::add_identified_addrs(
                    &mut self.book,
                    peer_id,
                    remote.as_ref(),
                    &info.listen_addrs,
                    unix_now(),
                );
                if let Some(c) = self.connected.get_mut(&peer_id) {
                    c.info.agent = Some(info.agent_version);
                }
                self.on_identified(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Pex(ev)) => self.pex_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) => match result {
                Ok(_) => {
                    self.ping_failures.remove(&connection);
                }
                Err(ping::Failure::Unsupported) => {}
                Err(e) => {
                    let n = self.ping_failures.entry(connection).or_default();
                    *n += 1;
                    if *n >= MAX_PING_FAILURES {
                        info!(%peer, error = %e, "peer stopped answering pings; connection closed");
                        self.ping_failures.remove(&connection);
                        self.swarm.close_connection(connection);
                    }
                }
            },
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if let Some((_, done)) = self.dials.remove(&connection_id) {
                    let _ = done.send(Ok(peer_id));
                }
                self.book_dials.remove(&peer_id);
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    // A peer we reached: it goes to the old bucket of the address we reached it
                    // on (not of the first address gossip gave us for it), once the connection
                    // has lasted (`Service::promote_stable`); a seed's crawl hangs up by design,
                    // so there at once.
                    let now = unix_now();
                    self.book.reached(&peer_id, address);
                    let _ = self.book.add_address(peer_id, address, &Source::Local, now);
                    if self.seed_mode {
                        self.book.mark_good(&peer_id, address, now);
                    }
                }
                self.fixed_connected(peer_id);
                let (direction, address) = match endpoint {
                    ConnectedPoint::Dialer { address, .. } => (Direction::Outbound, address),
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (Direction::Inbound, send_back_addr)
                    }
                };
                let link = Link {
                    id: connection_id,
                    direction,
                    address: address.clone(),
                    since: Instant::now(),
                };
                match self.connected.get_mut(&peer_id) {
                    Some(c) => {
                        // Opened after the hang-up, so it stays.
                        c.links.push(link);
                        c.closing = false;
                    }
                    None => {
                        // Inbound peers at debug: a host that dials us in a loop chooses how
                        // often these lines come (found by review), and the peer gauges count
                        // them anyway. The peers we dial are ours to choose.
                        match direction {
                            Direction::Outbound => {
                                info!(peer = %peer_id, %address, ?direction, "peer connected");
                            }
                            Direction::Inbound => {
                                debug!(peer = %peer_id, %address, ?direction, "peer connected");
                            }
                        }
                        self.metrics.peers(direction).inc();
                        self.connected.insert(
                            peer_id,
                            Connected {
                                info: PeerInfo {
                                    peer: peer_id,
                                    address,
                                    direction,
                                    agent: None,
                                    score: 0.0,
                                    connected_for: Duration::ZERO,
                                },
                                since: link.since,
                                links: vec![link],
                                identified: false,
                                answered: false,
                                hang_up_at: None,
                                closing: false,
                                promoted: self.seed_mode,
                            },
                        );
                        self.emit(NetEvent::PeerConnected {
                            peer: peer_id,
                            direction,
                        });
                        self.pex_on_connected(peer_id, direction);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.ping_failures.remove(&connection_id);
                if num_established == 0 {
                    // `pex_served` and `pex_asked` stay (pruned on the tick): reconnecting must
                    // not reset the request rate limits.
                    let direction = self.connected.remove(&peer_id).map(|c| {
                        self.metrics.peers(c.info.direction).dec();
                        c.info.direction
                    });
                    let cause = cause.map_or_else(|| "closed".to_owned(), |c| c.to_string());
                    if direction == Some(Direction::Outbound) {
                        info!(peer = %peer_id, %cause, "peer disconnected");
                    } else {
                        debug!(peer = %peer_id, %cause, "peer disconnected");
                    }
                    self.emit(NetEvent::PeerDisconnected { peer: peer_id });
                    self.fixed_disconnected(peer_id);
                } else if let Some(c) = self.connected.get_mut(&peer_id) {
                    if let Some(before) = c.connection_closed(connection_id, self.seed_mode) {
                        self.metrics.peers(before).dec();
                        self.metrics.peers(c.info.direction).inc();
                    }
                    debug!(peer = %peer_id, left = num_established, "one connection to the peer closed");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                if let Some((_, done)) = self.dials.remove(&connection_id) {
                    let _ = done.send(Err(NetError::Dial(error.to_string())));
                }
                if let (Some(p), DialError::WrongPeerId { obtained, address }) = (peer_id, &error) {
                    self.wrong_peer_at(p, *obtained, address);
                }
                if let Some(p) = peer_id {
                    self.fixed_failed(p, &error.to_string());
                    // The book counted the attempt when the dial started; a peer failing often
                    // enough becomes "bad" there and is evicted. Not for another peer's answer
                    // or our own limits: those say nothing about this peer.
                    if self.book_dials.remove(&p)
                        && matches!(
                            error,
                            DialError::WrongPeerId { .. } | DialError::Denied { .. }
                        )
                    {
                        self.book.forgive_attempt(&p);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            _ => {}
        }
    }

    fn blockexc_event(&mut self, ev: blockexc::Event) {
        match ev {
            blockexc::Event::Message { peer, message } => {
                self.emit(NetEvent::Message { peer, message });
            }
            blockexc::Event::Sent { id, .. } => {
                if let Some(done) = self.sends.remove(&id) {
                    let _ = done.send(Ok(()));
                }
            }
            blockexc::Event::SendFailed { peer, id } => {
                if let Some(done) = self.sends.remove(&id) {
                    let _ = done.send(Err(NetError::SendFailed(peer)));
                }
            }
            blockexc::Event::ConnectionLost { peer } => {
                // Not while we hang up on the peer: it is going away altogether. (A connection
                // opened after the hang-up cleared `closing`: the old one going away then is a
                // lost connection.)
                if self.connected.get(&peer).is_some_and(|c| !c.closing) {
                    debug!(%peer, "a connection that carried block exchange closed; another stays");
                    self.emit(NetEvent::ConnectionLost { peer });
                }
            }
            blockexc::Event::Violation { peer, violation } => {
                let action = match &violation {
                    blockexc::Violation::Decode(blockexc::DecodeError::DataMismatch(_)) => {
                        PeerAction::Fatal
                    }
                    _ => PeerAction::LowTolerance,
                };
                self.report(peer, action, &violation.to_string());
                self.emit(NetEvent::Violation { peer });
            }
        }
    }
}
