//! The task that owns the swarm, and the handle the rest of the node uses.
//!
//! [`start`] builds the swarm, binds the listen addresses and spawns [`run`]; it returns a
//! [`NetworkHandle`] (cheap to clone; every method sends a [`Command`] over a bounded channel
//! and awaits a oneshot answer) and the receiver of [`NetEvent`]s.
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
        ConnectionId, NetworkBehaviour, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use cairn_peers::{AddrBook, Source};

use crate::{
    Metrics, NetConfig, NetError,
    reputation::{PeerAction, Reputation, Verdict},
    transport,
};

/// Commands queued to the swarm task. Senders wait when it is full.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;
/// Events queued to the node. The swarm pauses when it is full.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// How often bootstrap peers and bans are checked.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// First redial delay for a bootstrap node; doubled after each failure.
pub const BOOTSTRAP_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest redial delay for a bootstrap node.
pub const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// How long [`start`] waits for the listeners to report their addresses.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to one peer (one each way when both dial at once).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Connections still in their handshake, inbound.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Identify protocol version string, as the reference sends it.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// The composed behaviour.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(crate) struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    blockexc: blockexc::Behaviour,
    pex: libp2p::request_response::Behaviour<cairn_pex::PexCodec>,
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
    /// Its address on the first connection.
    pub address: Multiaddr,
    /// Who dialled.
    pub direction: Direction,
    /// Identify agent version, once known.
    pub agent: Option<String>,
    /// Its score.
    pub score: f64,
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
}

impl NetworkHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
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

struct Bootstrap {
    peer: PeerId,
    addr: Multiaddr,
    next_attempt: Instant,
    backoff: Duration,
    dialing: bool,
}

struct Connected {
    info: PeerInfo,
    connections: usize,
}

struct Service {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Events the node has not taken yet; while any wait, the swarm is not polled (so this
    /// holds at most the few events one swarm event produces).
    parked: std::collections::VecDeque<NetEvent>,
    sends: HashMap<SendId, oneshot::Sender<Result<(), NetError>>>,
    dials: HashMap<ConnectionId, DialReply>,
    connected: HashMap<PeerId, Connected>,
    reputation: Reputation,
    bootstrap: Vec<Bootstrap>,
    listen_addrs: Vec<Multiaddr>,
    metrics: Metrics,
    /// Peers we know and where they listen (see `cairn-peers`).
    book: AddrBook,
    book_path: Option<std::path::PathBuf>,
    last_book_save: Instant,
    outbound_target: usize,
    /// Peers being dialled from the book (at most the outbound target at once).
    book_dials: std::collections::HashSet<PeerId>,
    /// When we last asked each peer for addresses (bounded by the connected peers: entries go
    /// when the peer disconnects).
    pex_asked: HashMap<PeerId, Instant>,
    /// When each peer last asked us (same bound).
    pex_served: HashMap<PeerId, Instant>,
}

/// How often one peer is asked for addresses while the book needs more (CometBFT asks an
/// outbound peer when the book is thin, at most once per ensure-peers round).
pub const PEX_ASK_INTERVAL: Duration = Duration::from_secs(30);

/// Shortest interval between two address requests a peer may send us; a faster one is
/// answered with nothing and penalised (CometBFT: `minReceiveRequestInterval`).
pub const PEX_MIN_REQUEST_INTERVAL: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch (the address book keeps wall-clock times, since they are
/// saved across restarts).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Share of dials from the book that go to peers never connected to (CometBFT's
/// `PickAddress` bias; low, so known-good peers come first).
const BOOK_BIAS_TOWARDS_NEW: u8 = 30;

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
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
        ),
        identify: identify::Behaviour::new(
            identify::Config::new_with_signed_peer_record(
                IDENTIFY_PROTOCOL_VERSION.to_string(),
                &key,
            )
            .with_agent_version(config.agent.clone()),
        ),
        ping: ping::Behaviour::default(),
        blockexc: blockexc::Behaviour::with_metrics(
            config.blockexc.clone(),
            config.metrics.blockexc.clone(),
        ),
        pex: cairn_pex::behaviour(),
    };
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    let mut pending = Vec::new();
    for addr in &config.listen {
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
    let mut bootstrap = Vec::new();
    for addr in &config.bootstrap {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => bootstrap.push(Bootstrap {
                peer,
                addr: addr.clone(),
                next_attempt: now,
                backoff: BOOTSTRAP_BACKOFF_MIN,
                dialing: false,
            }),
            _ => return Err(NetError::BadBootstrap(addr.clone())),
        }
    }
    let book_config = cairn_peers::Config::new(peer_id);
    let book = match &config.book_path {
        Some(path) => {
            let (book, outcome) = AddrBook::load(path, book_config, unix_now());
            info!(path = %path.display(), ?outcome, peers = book.size(), "address book loaded");
            book
        }
        None => AddrBook::new(book_config),
    };
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
        bootstrap,
        listen_addrs,
        metrics: config.metrics.clone(),
        book,
        book_path: config.book_path.clone(),
        last_book_save: Instant::now(),
        outbound_target: config.outbound_target,
        book_dials: std::collections::HashSet::new(),
        pex_asked: HashMap::new(),
        pex_served: HashMap::new(),
    };
    let task = tokio::spawn(service.run(cancel));
    Ok((
        NetworkHandle {
            peer_id,
            commands: cmd_tx,
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
        self.save_book();
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
                let now = Instant::now();
                let peers = self
                    .connected
                    .values()
                    .map(|c| PeerInfo {
                        score: self.reputation.score(&c.info.peer, now),
                        ..c.info.clone()
                    })
                    .collect();
                let _ = done.send(peers);
            }
            Command::ListenAddrs { done } => {
                let _ = done.send(self.listen_addrs.clone());
            }
            Command::Report {
                peer,
                action,
                reason,
            } => self.report(peer, action, &reason),
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    fn dial(
        &mut self,
        peer: Option<PeerId>,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<Result<PeerId, NetError>>,
    ) {
        if let Some(p) = peer {
            if self.connected.contains_key(&p) {
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
                .build(),
            None => match addrs.into_iter().next() {
                Some(a) => DialOpts::unknown_peer_id().address(a).build(),
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

    fn report(&mut self, peer: PeerId, action: PeerAction, reason: &str) {
        self.metrics.penalties.of(action).inc();
        let verdict = self.reputation.report(peer, action, Instant::now());
        warn!(%peer, ?action, ?verdict, reason, "peer penalised");
        match verdict {
            Verdict::Keep => {}
            Verdict::Disconnect => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Verdict::Ban => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
    }

    /// Writes the address book to its file, if it has one.
    fn save_book(&mut self) {
        self.last_book_save = Instant::now();
        if let Some(path) = &self.book_path
            && let Err(e) = self.book.save(path)
        {
            warn!(path = %path.display(), error = %e, "cannot save the address book");
        }
    }

    /// While there are fewer outbound connections than the target, dials peers from the book.
    fn dial_from_book(&mut self) {
        let outbound = self
            .connected
            .values()
            .filter(|c| c.info.direction == Direction::Outbound)
            .count();
        let mut want = self
            .outbound_target
            .saturating_sub(outbound + self.book_dials.len());
        // A few picks may name peers already connected or dialled: try a bounded number.
        let mut tries = want * 3;
        while want > 0 && tries > 0 {
            tries -= 1;
            let Some(pick) = self.book.pick_address(BOOK_BIAS_TOWARDS_NEW) else {
                return;
            };
            // Not a peer we are connected or dialling to, nor one we dropped for misbehaving
            // and whose score has not recovered yet.
            if self.connected.contains_key(&pick.peer)
                || self.book_dials.contains(&pick.peer)
                || pick.addrs.is_empty()
                || self.reputation.score(&pick.peer, Instant::now())
                    <= crate::reputation::DISCONNECT_SCORE
            {
                continue;
            }
            self.book.mark_attempt(&pick.peer, unix_now());
            let opts = DialOpts::peer_id(pick.peer)
                .addresses(pick.addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.book_dials.insert(pick.peer);
                    want -= 1;
                }
                Err(e) => {
                    debug!(peer = %pick.peer, error = %e, "dial from the address book not started");
                }
            }
        }
    }

    /// Asks connected peers for addresses while the book needs more, each at most every
    /// [`PEX_ASK_INTERVAL`].
    fn ask_for_addrs(&mut self, now: Instant) {
        if !self.book.need_more_addrs() {
            return;
        }
        let due: Vec<PeerId> = self
            .connected
            .keys()
            .filter(|p| {
                self.pex_asked
                    .get(*p)
                    .is_none_or(|t| now.duration_since(*t) >= PEX_ASK_INTERVAL)
            })
            .copied()
            .collect();
        for peer in due {
            self.pex_asked.insert(peer, now);
            let max = u32::try_from(cairn_pex::MAX_PEERS_PER_MESSAGE).unwrap_or(u32::MAX);
            self.swarm
                .behaviour_mut()
                .pex
                .send_request(&peer, cairn_pex::Request::GetAddrs { max });
        }
    }

    fn pex_event(
        &mut self,
        ev: libp2p::request_response::Event<cairn_pex::Request, cairn_pex::Addrs>,
    ) {
        use libp2p::request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let now = Instant::now();
                let answer = match request {
                    cairn_pex::Request::Push(_) => {
                        // Address lists are taken only as answers to our requests.
                        self.report(peer, PeerAction::LowTolerance, "unsolicited address list");
                        cairn_pex::Addrs::default()
                    }
                    cairn_pex::Request::GetAddrs { max } => {
                        let too_soon = self
                            .pex_served
                            .get(&peer)
                            .is_some_and(|t| now.duration_since(*t) < PEX_MIN_REQUEST_INTERVAL);
                        self.pex_served.insert(peer, now);
                        if too_soon {
                            self.report(
                                peer,
                                PeerAction::MidTolerance,
                                "address requests too often",
                            );
                            cairn_pex::Addrs::default()
                        } else {
                            self.selection_for(peer, max)
                        }
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .pex
                    .send_response(channel, answer);
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                let Some(from) = self.connected.get(&peer).map(|c| c.info.address.clone()) else {
                    return;
                };
                let src = Source::Peer {
                    id: peer,
                    addr: from,
                };
                let now = unix_now();
                let mut added = 0usize;
                for p in response.0 {
                    for addr in &p.addrs {
                        if self.book.add_address(p.peer, addr, &src, now).is_ok() {
                            added += 1;
                        }
                    }
                }
                debug!(%peer, added, "addresses from a peer");
            }
            Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "address request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "address request from a peer failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// A PEX answer for `peer`: a random selection from the book, with private addresses only
    /// for a requester that is itself on a private or loopback address.
    fn selection_for(&mut self, peer: PeerId, max: u32) -> cairn_pex::Addrs {
        let public = self
            .connected
            .get(&peer)
            .is_some_and(|c| cairn_peers::is_public(&c.info.address));
        let audience = if public {
            cairn_peers::Audience::Public
        } else {
            cairn_peers::Audience::Local
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        cairn_pex::Addrs(
            self.book
                .get_selection_for(audience)
                .into_iter()
                .filter(|p| p.peer != peer)
                .take(max.min(cairn_pex::MAX_PEERS_PER_MESSAGE))
                .map(|p| cairn_pex::PeerAddrs {
                    peer: p.peer,
                    addrs: p
                        .addrs
                        .into_iter()
                        .take(cairn_pex::MAX_ADDRS_PER_PEER)
                        .collect(),
                })
                .collect(),
        )
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.ask_for_addrs(now);
        self.dial_from_book();
        if now.duration_since(self.last_book_save) >= crate::BOOK_SAVE_INTERVAL {
            self.save_book();
        }
        for peer in self.reputation.expired_bans(now) {
            info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        let mut to_dial = Vec::new();
        for b in &mut self.bootstrap {
            if !b.dialing && !self.connected.contains_key(&b.peer) && now >= b.next_attempt {
                b.dialing = true;
                to_dial.push((b.peer, b.addr.clone()));
            }
        }
        for (peer, addr) in to_dial {
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "bootstrap dial not started");
                self.bootstrap_failed(peer);
            }
        }
    }

    fn bootstrap_failed(&mut self, peer: PeerId) {
        let now = Instant::now();
        for b in self.bootstrap.iter_mut().filter(|b| b.peer == peer) {
            if b.dialing {
                b.dialing = false;
                b.next_attempt = now + b.backoff;
                debug!(%peer, retry_in = ?b.backoff, "bootstrap node unreachable");
                b.backoff = (b.backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
            }
        }
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
                let now = unix_now();
                for addr in info
                    .listen_addrs
                    .iter()
                    .take(cairn_peers::params::MAX_ADDRS_PER_PEER)
                {
                    if let Err(e) = self.book.add_address(peer_id, addr, &Source::Local, now) {
                        debug!(peer = %peer_id, %addr, error = %e, "address not kept");
                    }
                }
                if let Some(c) = self.connected.get_mut(&peer_id) {
                    c.info.agent = Some(info.agent_version);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Pex(ev)) => self.pex_event(ev),
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
                    // A peer we reached: its address goes to the book's old buckets.
                    let now = unix_now();
                    let _ = self.book.add_address(peer_id, address, &Source::Local, now);
                    self.book.mark_good(&peer_id, now);
                }
                for b in self.bootstrap.iter_mut().filter(|b| b.peer == peer_id) {
                    b.dialing = false;
                    b.backoff = BOOTSTRAP_BACKOFF_MIN;
                }
                match self.connected.get_mut(&peer_id) {
                    Some(c) => c.connections += 1,
                    None => {
                        let (direction, address) = match endpoint {
                            ConnectedPoint::Dialer { address, .. } => {
                                (Direction::Outbound, address)
                            }
                            ConnectedPoint::Listener { send_back_addr, .. } => {
                                (Direction::Inbound, send_back_addr)
                            }
                        };
                        info!(peer = %peer_id, %address, ?direction, "peer connected");
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
                                },
                                connections: 1,
                            },
                        );
                        self.emit(NetEvent::PeerConnected {
                            peer: peer_id,
                            direction,
                        });
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                if num_established == 0 {
                    self.pex_asked.remove(&peer_id);
                    self.pex_served.remove(&peer_id);
                    if let Some(c) = self.connected.remove(&peer_id) {
                        self.metrics.peers(c.info.direction).dec();
                    }
                    info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "peer disconnected");
                    self.emit(NetEvent::PeerDisconnected { peer: peer_id });
                    for b in self.bootstrap.iter_mut().filter(|b| b.peer == peer_id) {
                        b.next_attempt = Instant::now() + b.backoff;
                    }
                } else if let Some(c) = self.connected.get_mut(&peer_id) {
                    c.connections = num_established as usize;
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
                if let Some(p) = peer_id {
                    self.bootstrap_failed(p);
                    // The book counted the attempt when the dial started; a peer failing often
                    // enough becomes "bad" there and is evicted.
                    self.book_dials.remove(&p);
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
