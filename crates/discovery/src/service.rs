//! The DHT service: one task that owns the UDP socket, the sessions and the in-flight requests.
//!
//! ```text
//!   Discovery (handle, Clone) ──[COMMAND_QUEUE]──► Service task ◄──► UdpSocket
//!      lookup / provide / find_providers               │  sessions, handshakes, challenges,
//!      (async, run on the caller's task)               │  pending requests (all bounded)
//!                         └──── Arc<Shared>: routing table, provider records, own records
//! ```
//!
//! The task is the only one that touches packets: it answers requests (PING, FINDNODE,
//! FINDNODEFAST, TALKREQ, ADDPROVIDER, GETPROVIDERS), runs handshakes in both directions, and
//! matches responses to the requests the handle asked it to send. Everything multi-step
//! (iterative lookups, `provide`, `find_providers`) is plain async code on the handle, built from
//! the one primitive "send this request to that node and give me the answer"; so the task never
//! waits for anything but its socket and its queue.
//!
//! **Handshake** (codex-protocol.md §7.3). A request to a node with no session goes out as an
//! ordinary packet with random bytes; the node answers WHOAREYOU echoing our nonce; we answer
//! with a handshake packet that carries the request, our ephemeral key and id signature (and our
//! record when its WHOAREYOU shows an older sequence number). Requests made meanwhile wait in a
//! bounded queue. The other way round, any packet we cannot decrypt gets a WHOAREYOU, and the
//! handshake that answers it is checked (signature against the record's key, record's node id
//! against the packet's source) before its message is read. A WHOAREYOU that answers a packet
//! sent under an existing session (the peer forgot it) restarts the handshake and resends that
//! request.
//!
//! **Provider records** others store with us expire [`crate::providers::PROVIDER_TTL`] after
//! they were stored; expired ones are never served, and the task frees them every
//! [`PROVIDER_EXPIRY_INTERVAL`].
//!
//! **Liveness.** A node that answers is marked *seen* in the table (only seen nodes are given to
//! others in NODES replies, as the reference does); an answer of the wrong kind (a NODES to a
//! PING) fails the request and the node, as the reference's `replaceNode` after an invalid
//! response does; a request that times out counts as a failure
//! and the table replaces the node (never a bootstrap node), as does a handshake we cannot
//! complete on our side. A background loop pings the least
//! recently seen node of a random bucket every few seconds, and another runs a random lookup
//! every [`DiscoveryConfig::refresh_interval`] (the reference's `revalidateLoop` and
//! `refreshLoop`).

use std::{
    collections::{HashMap, hash_map::Entry as MapEntry},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};
use parking_lot::Mutex;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::{
    Metrics, NodeId,
    ids::MAX_LOG_DISTANCE,
    providers::{OwnKeys, ProviderStore, SourceGroup},
    records::VerifiedRecords,
    session::{Session, Sessions},
    spr::Spr,
    table::{Origin, RoutingTable},
    wire::{
        crypto,
        message::{Message, RequestId},
        packet::{MAX_INBOUND_PACKET_SIZE, MAX_PACKET_SIZE, Nonce, Packet, PacketKind},
    },
};

/// Commands queued from handles to the service task. A full queue makes callers wait.
pub const COMMAND_QUEUE: usize = 256;

/// Requests in flight at once; beyond this a new request fails with [`RequestError::Busy`].
pub const MAX_PENDING_REQUESTS: usize = 2048;

/// Handshakes we started and are waiting on (a WHOAREYOU), at once.
pub const MAX_HANDSHAKES_OUT: usize = 1024;

/// Requests queued behind one handshake in progress.
pub const MAX_QUEUED_PER_HANDSHAKE: usize = 16;

/// WHOAREYOU challenges we sent and keep for the handshake that should answer them. One per
/// `(node, address)`; when full, the oldest is dropped.
pub const MAX_CHALLENGES: usize = 1024;
/// Handshakes claiming to answer one challenge that may fail before it is spent (kept, and
/// answering none, until it ages out). One node's
/// real handshake survives a junk one spoofed from its address; each costs a signature check at
/// most, so the count is kept small.
pub const MAX_FAILED_HANDSHAKES: u8 = 3;

/// Packets whose nonce we remember, so that a WHOAREYOU answering one can be matched to the
/// request it carried.
pub const MAX_TRACKED_NONCES: usize = 4096;

/// Messages of one multi-part answer (NODES, PROVIDERS) accepted. The reference splits 16 nodes
/// into 6 messages of 3.
pub const MAX_RESPONSE_PARTS: u32 = 8;

/// SPRs per NODES message, as the reference splits its replies (codex-protocol.md §7.4).
pub const NODES_PER_MESSAGE: usize = 3;

/// Most nodes in a FINDNODE reply (the bucket size).
pub const MAX_FINDNODE_RESULTS: usize = 16;

/// Most nodes in a FINDNODEFAST reply (the reference's `findNodeFast` answers 6).
pub const MAX_FINDNODEFAST_RESULTS: usize = 6;

/// Random bytes in the packet that opens a handshake (the discv5 spec's minimum message size).
pub const RANDOM_PACKET_BYTES: usize = 20;

/// Bytes a packet adds around its plaintext: masking IV 16, static header 23, ordinary authdata
/// 32, GCM tag 16. Replies are cut so a packet never exceeds [`MAX_PACKET_SIZE`].
const PACKET_OVERHEAD: usize = 16 + 23 + 32 + 16;

/// Plaintext bytes of a PROVIDERS message besides its records: the kind byte, the envelope
/// with an 8-byte request id and the field headers (under 32 in all).
const PROVIDERS_FRAMING: usize = 32;

/// Bytes one record adds to a PROVIDERS message besides its own: a field tag and a length of up
/// to three bytes.
const RECORD_FRAMING: usize = 4;

/// How often the task sweeps timed-out requests, handshakes and challenges.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// How often the task frees expired provider records ([`ProviderStore::expire`]). An expired
/// record is never served, so this only bounds how long a dead one holds memory and counts in
/// the `provider_records` gauge: a minute beyond its 24 h. A pass walks the whole store (at
/// most 1000 keys of 200 records) under its lock, so it is not run at [`SWEEP_EVERY`].
pub const PROVIDER_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of a DHT node.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP address to bind (`--disc-port`; the reference's default port is 8090).
    pub listen: SocketAddr,
    /// IP put into our DHT record. `None`: the bound IP, or 127.0.0.1 when bound to an
    /// unspecified address (the reference uses its NAT setting here).
    pub announce_ip: Option<IpAddr>,
    /// libp2p addresses put into our provider record (where downloaders dial us).
    pub provider_addrs: Vec<Multiaddr>,
    /// Nodes to join through; never evicted from the table.
    pub bootstrap: Vec<Spr>,
    /// Time to wait for a response (the reference: 1 s).
    pub request_timeout: Duration,
    /// Extra time allowed when the request needs a handshake first (the reference: 500 ms).
    pub handshake_timeout: Duration,
    /// Interval of random lookups that keep the table fresh (the reference: 5 min).
    pub refresh_interval: Duration,
    /// Liveness pings go out at a random interval in this range (the reference: 5–10 s).
    pub revalidate_interval: (Duration, Duration),
    /// Whether to accept loopback and private addresses from any sender (tests, local
    /// networks). Off: the reference's rule (only from senders in the same scope).
    pub allow_local_addrs: bool,
    /// Where the DHT counts what it does (registered by the caller, or nowhere).
    pub metrics: Metrics,
}

impl DiscoveryConfig {
    /// Defaults as the reference, listening on `listen`.
    pub fn new(listen: SocketAddr) -> DiscoveryConfig {
        DiscoveryConfig {
            listen,
            announce_ip: None,
            provider_addrs: Vec::new(),
            bootstrap: Vec::new(),
            request_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_millis(500),
            refresh_interval: Duration::from_secs(5 * 60),
            revalidate_interval: (Duration::from_secs(5), Duration::from_secs(10)),
            allow_local_addrs: false,
            metrics: Metrics::default(),
        }
    }
}

/// Why a DHT node could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the discovery UDP socket on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Our own record could not be built (the key is not secp256k1, or an address is bad).
    #[error("cannot build our signed peer record: {0}")]
    Record(String),
    /// The service task has stopped.
    #[error("the discovery service has stopped")]
    Stopped,
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The node's record has no IPv4/UDP address.
    #[error("the node's record has no UDP address")]
    NoAddress,
    /// Too many requests or handshakes in flight.
    #[error("too many requests in flight")]
    Busy,
    /// The answer did not make sense (wrong kind).
    #[error("unexpected answer")]
    BadResponse,
    /// The service task has stopped.
    #[error("the discovery service has stopped")]
    Stopped,
}

/// Our two records: the DHT record (UDP address) and the provider record (libp2p addresses).
#[derive(Debug, Clone)]
pub struct LocalRecords {
    /// Sent in handshakes and NODES replies; `GET /spr`.
    pub dht: Spr,
    /// Sent in ADDPROVIDER.
    pub provider: Spr,
}

/// State shared between the task and its handles; every lock is held for a few operations and
/// never across an `.await`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: Mutex<RoutingTable<Spr>>,
    pub(crate) providers: Mutex<ProviderStore<Spr>>,
    /// Content we announced: GETPROVIDERS for it answers our own record too.
    pub(crate) own: Mutex<OwnKeys>,
    pub(crate) records: Mutex<LocalRecords>,
    /// Records of others already verified (see `records.rs`).
    pub(crate) verified: Mutex<VerifiedRecords>,
    pub(crate) keypair: Keypair,
    pub(crate) local_id: NodeId,
    pub(crate) dht_addr: SocketAddr,
}

impl Shared {
    /// Decodes and verifies a record of another node, skipping the signature check for a
    /// byte-identical copy of one already verified.
    pub(crate) fn decode_record(&self, bytes: &[u8]) -> Result<Spr, crate::spr::SprError> {
        self.decode_record_if(bytes, |_| true)
    }

    /// [`Shared::decode_record`], remembering the record as verified only if `keep` says so:
    /// records that are refused anyway must not push useful ones out of the cache.
    pub(crate) fn decode_record_if(
        &self,
        bytes: &[u8],
        keep: impl FnOnce(&Spr) -> bool,
    ) -> Result<Spr, crate::spr::SprError> {
        if let Some(spr) = self.verified.lock().lookup(bytes) {
            return Ok(spr);
        }
        // The signature check (~50 µs) runs without the lock held.
        let spr = Spr::decode(bytes)?;
        if keep(&spr) {
            self.verified.lock().insert(bytes, spr.clone());
        }
        Ok(spr)
    }

    pub(crate) fn local_records(&self) -> LocalRecords {
        self.records.lock().clone()
    }

    /// Re-signs the provider record with `addrs` and a higher sequence number.
    pub(crate) fn set_provider_addrs(&self, addrs: Vec<Multiaddr>) -> Result<(), DiscoveryError> {
        let mut r = self.records.lock();
        if r.provider.addrs() == addrs.as_slice() {
            return Ok(());
        }
        let seq = next_seq(r.provider.seq().max(r.dht.seq()));
        r.provider = Spr::sign(&self.keypair, seq, addrs)
            .map_err(|e| DiscoveryError::Record(e.to_string()))?;
        Ok(())
    }
}

/// A sequence number for a new signing: the Unix time in seconds (as libp2p and the reference
/// do), or one more than `previous` when the clock has not moved past it.
fn next_seq(previous: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.max(previous.saturating_add(1))
}

/// The multiaddr of a DHT record: `/ip4/<ip>/udp/<port>`.
pub fn udp_multiaddr(addr: SocketAddr) -> Multiaddr {
    let mut m = Multiaddr::empty();
    match addr.ip() {
        IpAddr::V4(ip) => m.push(Protocol::Ip4(ip)),
        IpAddr::V6(ip) => m.push(Protocol::Ip6(ip)),
    }
    m.push(Protocol::Udp(addr.port()));
    m
}

/// A request queued by a handle.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send `msg` to `node` and answer with every message of its response.
    Request {
        node: Spr,
        msg: Message,
        reply: oneshot::Sender<Result<Vec<Message>, RequestError>>,
    },
    /// Send `msg` to `node`; no response is expected (ADDPROVIDER).
    Notify { node: Spr, msg: Message },
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    node: NodeId,
    addr: SocketAddr,
    /// Collected response messages.
    parts: Vec<Message>,
    /// Parts announced by the first NODES/PROVIDERS message.
    expected: u32,
    /// Nonce of the last packet that carried the request.
    nonce: Option<Nonce>,
    /// When that packet went out.
    sent_at: Option<Instant>,
    /// A FINDNODE: a node that fails one is replaced at once (the reference's `replaceNode`);
    /// other requests only count a miss.
    find_node: bool,
    /// The kind of message that answers the request ([`Message::response_kind`]); a first
    /// answer of another kind fails the node.
    answer_kind: Option<u8>,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<Vec<Message>, RequestError>>>,
}

/// A handshake we started: the random packet is out, the WHOAREYOU not yet in.
#[derive(Debug)]
struct HandshakeOut {
    queue: Vec<(RequestId, Message)>,
    deadline: Instant,
}

/// What a nonce we sent belongs to.
#[derive(Debug, Clone)]
struct SentPacket {
    node: Spr,
    addr: SocketAddr,
    /// The request it carried (none for the random packet of a handshake).
    request: Option<(RequestId, Message)>,
    /// It was our handshake packet: a WHOAREYOU answering it refuses the handshake, and the
    /// request fails rather than starting another (a node that challenged every handshake
    /// kept us signing new ones for as long as it liked; found by review).
    handshake: bool,
    deadline: Instant,
}

/// A WHOAREYOU we sent.
#[derive(Debug, Clone)]
struct Challenge {
    data: Vec<u8>,
    created: Instant,
    /// Handshakes that claimed to answer it and failed.
    failed: u8,
}

/// The task.
struct Service {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    static_secret: k256::SecretKey,
    config: DiscoveryConfig,
    sessions: Sessions,
    handshakes: HashMap<(NodeId, SocketAddr), HandshakeOut>,
    /// Budgets for the WHOAREYOUs we send ([`crate::limits`]).
    limiter: crate::limits::ChallengeLimiter,
    /// The request budget per source address (`limits::REQUESTS_PER_IP_PER_SEC`).
    requests: crate::limits::ChallengeLimiter,
    sent: HashMap<Nonce, SentPacket>,
    challenges: HashMap<(NodeId, SocketAddr), Challenge>,
    pending: HashMap<RequestId, Pending>,
    commands: mpsc::Receiver<Command>,
}

/// Binds the socket, builds our records and starts the task. Returns the shared state and the
/// command sender for the handle.
pub(crate) async fn start(
    keypair: Keypair,
    config: DiscoveryConfig,
    cancel: CancellationToken,
) -> Result<(Arc<Shared>, mpsc::Sender<Command>), DiscoveryError> {
    let socket = UdpSocket::bind(config.listen)
        .await
        .map_err(|source| DiscoveryError::Bind {
            addr: config.listen,
            source,
        })?;
    let bound = socket.local_addr().map_err(|source| DiscoveryError::Bind {
        addr: config.listen,
        source,
    })?;
    let ip = config
        .announce_ip
        .unwrap_or(if bound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        });
    let dht_addr = SocketAddr::new(ip, bound.port());
    let static_secret =
        crypto::static_secret(&keypair).map_err(|e| DiscoveryError::Record(e.to_string()))?;
    let seq = next_seq(0);
    let dht = Spr::sign(&keypair, seq, vec![udp_multiaddr(dht_addr)])
        .map_err(|e| DiscoveryError::Record(e.to_string()))?;
    let provider = Spr::sign(&keypair, seq, config.provider_addrs.clone())
        .map_err(|e| DiscoveryError::Record(e.to_string()))?;
    let local_id = NodeId::from_peer_id(&keypair.public().to_peer_id());
    let mut table = RoutingTable::new(local_id);
    for b in &config.bootstrap {
        if let Some(addr) = b.udp_addr() {
            table.insert(b.node_id(), addr, b.seq(), b.clone(), Origin::Bootstrap);
        } else {
            warn!(peer = %b.peer_id(), "bootstrap record without an IPv4/UDP address; ignored");
        }
    }
    let shared = Arc::new(Shared {
        table: Mutex::new(table),
        providers: Mutex::new(ProviderStore::new()),
        own: Mutex::new(OwnKeys::new()),
        records: Mutex::new(LocalRecords { dht, provider }),
        verified: Mutex::new(VerifiedRecords::default()),
        keypair,
        local_id,
        dht_addr,
    });
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let service = Service {
        socket: Arc::new(socket),
        shared: shared.clone(),
        static_secret,
        config,
        sessions: Sessions::default(),
        handshakes: HashMap::new(),
        limiter: crate::limits::ChallengeLimiter::new(Instant::now()),
        requests: crate::limits::ChallengeLimiter::for_requests(Instant::now()),
        sent: HashMap::new(),
        challenges: HashMap::new(),
        pending: HashMap::new(),
        commands: rx,
    };
    tokio::spawn(service.run(cancel));
    Ok((shared, tx))
}

impl Service {
    async fn run(mut self, cancel: CancellationToken) {
        let mut buf = vec![0u8; MAX_INBOUND_PACKET_SIZE + 1];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(PROVIDER_EXPIRY_INTERVAL);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let socket = self.socket.clone();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        self.config.metrics.packets_received.inc();
                        self.config.metrics.bytes_received.inc_by(n as u64);
                        if let Some(packet) = buf.get(..n) {
                            self.on_packet(packet, from).await;
                        }
                    }
                    Err(e) => {
                        // ICMP port unreachable and the like surface here on some systems.
                        trace!(error = %e, "discovery socket receive error");
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                _ = sweep.tick() => self.sweep(),
                _ = expiry.tick() => self.expire_providers(),
            }
        }
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(RequestError::Stopped));
            }
        }
    }

    // ---- outgoing ----------------------------------------------------------------------

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request { node, msg, reply } => {
                let Some(addr) = node.udp_addr() else {
                    let _ = reply.send(Err(RequestError::NoAddress));
                    return;
                };
                if self.pending.len() >= MAX_PENDING_REQUESTS {
                    let _ = reply.send(Err(RequestError::Busy));
                    return;
                }
                let id = RequestId::random();
                let now = Instant::now();
                self.pending.insert(
                    id.clone(),
                    Pending {
                        node: node.node_id(),
                        addr,
                        parts: Vec::new(),
                        expected: 0,
                        nonce: None,
                        sent_at: None,
                        find_node: matches!(
                            msg,
                            Message::FindNode { .. } | Message::FindNodeFast { .. }
                        ),
                        answer_kind: msg.response_kind(),
                        deadline: now + self.config.request_timeout + self.config.handshake_timeout,
                        reply: Some(reply),
                    },
                );
                if let Err(e) = self.send_request(node, addr, id.clone(), msg).await {
                    self.fail(&id, e);
                }
            }
            Command::Notify { node, msg } => {
                let Some(addr) = node.udp_addr() else { return };
                let _ = self
                    .send_request(node, addr, RequestId::random(), msg)
                    .await;
            }
        }
    }

    /// Sends a request over the session with `node`, or starts (or joins) a handshake.
    async fn send_request(
        &mut self,
        node: Spr,
        addr: SocketAddr,
        id: RequestId,
        msg: Message,
    ) -> Result<(), RequestError> {
        let node_id = node.node_id();
        let now = Instant::now();
        if let Some(h) = self.handshakes.get_mut(&(node_id, addr)) {
            if h.queue.len() >= MAX_QUEUED_PER_HANDSHAKE {
                return Err(RequestError::Busy);
            }
            h.queue.push((id, msg));
            return Ok(());
        }
        let deadline = now + self.config.request_timeout + self.config.handshake_timeout;
        if let Some(session) = self.sessions.get(&node_id, addr, now) {
            let write_key = session.write_key;
            let nonce: Nonce = rand::random();
            let plaintext = msg.encode(&id);
            let bytes = self
                .seal_message(&node_id, nonce, &write_key, &plaintext)
                .ok_or(RequestError::BadResponse)?;
            self.track_nonce(
                nonce,
                SentPacket {
                    node,
                    addr,
                    request: Some((id, msg)),
                    handshake: false,
                    deadline,
                },
            );
            self.send(&bytes, addr).await;
            return Ok(());
        }
        if self.handshakes.len() >= MAX_HANDSHAKES_OUT {
            return Err(RequestError::Busy);
        }
        // No session: a packet of random bytes makes the node challenge us.
        let nonce: Nonce = rand::random();
        let mut packet = Packet::new(
            PacketKind::Message {
                src: self.shared.local_id,
            },
            nonce,
        );
        packet.message = (0..RANDOM_PACKET_BYTES).map(|_| rand::random()).collect();
        let bytes = packet
            .encode(&node_id)
            .map_err(|_| RequestError::BadResponse)?;
        self.handshakes.insert(
            (node_id, addr),
            HandshakeOut {
                queue: vec![(id, msg)],
                deadline,
            },
        );
        self.track_nonce(
            nonce,
            SentPacket {
                node,
                addr,
                request: None,
                handshake: false,
                deadline,
            },
        );
        self.send(&bytes, addr).await;
        Ok(())
    }

    fn track_nonce(&mut self, nonce: Nonce, sent: SentPacket) {
        if let Some((id, _)) = &sent.request
            && let Some(p) = self.pending.get_mut(id)
        {
            p.nonce = Some(nonce);
            p.sent_at = Some(Instant::now());
        }
        if self.sent.len() >= MAX_TRACKED_NONCES
            && let Some(oldest) = self
                .sent
                .iter()
                .min_by_key(|(_, s)| s.deadline)
                .map(|(n, _)| *n)
        {
            self.sent.remove(&oldest);
        }
        self.sent.insert(nonce, sent);
    }

    /// An ordinary packet from us to `dest` carrying `plaintext` encrypted with `key` (`None`
    /// only if encryption or framing fails, which our own packets never should).
    fn seal_message(
        &self,
        dest: &NodeId,
        nonce: Nonce,
        key: &[u8; 16],
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let mut packet = Packet::new(
            PacketKind::Message {
                src: self.shared.local_id,
            },
            nonce,
        );
        let ad = packet.authenticated_data().ok()?;
        packet.message = crypto::encrypt(key, &nonce, plaintext, &ad).ok()?;
        packet.encode(dest).ok()
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        match self.socket.send_to(bytes, to).await {
            Ok(n) => {
                self.config.metrics.packets_sent.inc();
                self.config.metrics.bytes_sent.inc_by(n as u64);
            }
            Err(e) => debug!(%to, error = %e, "discovery send failed"),
        }
    }

    /// Answers `msg` to `(node, addr)` over the existing session (responses never start a
    /// handshake: the requester just made one).
    async fn respond(&mut self, node: &NodeId, addr: SocketAddr, id: &RequestId, msg: &Message) {
        let Some(session) = self.sessions.get(node, addr, Instant::now()) else {
            return;
        };
        let key = session.write_key;
        if let Some(bytes) = self.seal_message(node, rand::random(), &key, &msg.encode(id)) {
            self.send(&bytes, addr).await;
        }
    }

    // ---- incoming ----------------------------------------------------------------------

    async fn on_packet(&mut self, bytes: &[u8], from: SocketAddr) {
        let packet = match Packet::decode(&self.shared.local_id, bytes) {
            Ok(p) => p,
            Err(e) => {
                trace!(%from, error = %e, "undecodable discovery packet");
                return;
            }
        };
        match packet.kind.clone() {
            PacketKind::Message { src } => self.on_message_packet(&packet, src, from).await,
            PacketKind::WhoAreYou { enr_seq, .. } => {
                self.on_whoareyou(&packet, enr_seq, from).await;
            }
            PacketKind::Handshake {
                src,
                id_signature,
                eph_pubkey,
                spr,
            } => {
                self.on_handshake(
                    &packet,
                    src,
                    &id_signature,
                    &eph_pubkey,
                    spr.as_deref(),
                    from,
                )
                .await;
            }
        }
    }

    async fn on_message_packet(&mut self, packet: &Packet, src: NodeId, from: SocketAddr) {
        let now = Instant::now();
        let ad = packet.authenticated_data().ok();
        let plaintext = ad.as_deref().and_then(|ad| {
            self.sessions.open(&src, from, now, |key| {
                crypto::decrypt(key, &packet.nonce, &packet.message, ad).ok()
            })
        });
        match plaintext {
            Some(pt) => self.on_plaintext(&pt, src, from).await,
            None => self.challenge(src, from, packet.nonce).await,
        }
    }

    /// Sends WHOAREYOU for a packet we could not read.
    async fn challenge(&mut self, src: NodeId, from: SocketAddr, nonce: Nonce) {
        let now = Instant::now();
        // One live challenge per node: a burst of unreadable packets gets one answer.
        if let Some(c) = self.challenges.get(&(src, from))
            && now.saturating_duration_since(c.created) < self.config.handshake_timeout
        {
            return;
        }
        // A node of our table writing from its record's address is not rationed (`allow`).
        let known = self
            .shared
            .table
            .lock()
            .get(&src)
            .is_some_and(|e| e.addr == from);
        if !self.limiter.allow(from.ip(), known, now) {
            trace!(%from, "challenge budget spent; packet dropped");
            return;
        }
        let enr_seq = self.shared.table.lock().get(&src).map_or(0, |e| e.seq);
        let packet = Packet::new(
            PacketKind::WhoAreYou {
                id_nonce: rand::random(),
                enr_seq,
            },
            nonce,
        );
        let (Ok(bytes), Ok(data)) = (packet.encode(&src), packet.authenticated_data()) else {
            return;
        };
        if self.challenges.len() >= MAX_CHALLENGES
            && let Some(oldest) = self
                .challenges
                .iter()
                .min_by_key(|(_, c)| c.created)
                .map(|(k, _)| *k)
        {
            self.challenges.remove(&oldest);
        }
        self.challenges.insert(
            (src, from),
            Challenge {
                data,
                created: now,
                failed: 0,
            },
        );
        self.send(&bytes, from).await;
    }

    /// A WHOAREYOU answering one of our packets: complete the handshake and send the request(s).
    async fn on_whoareyou(&mut self, packet: &Packet, enr_seq: u64, from: SocketAddr) {
        let Some(sent) = self.sent.remove(&packet.nonce) else {
            trace!(%from, "WHOAREYOU for a nonce we did not send");
            return;
        };
        if sent.addr != from {
            return;
        }
        let node_id = sent.node.node_id();
        if sent.handshake {
            // It challenged the handshake we made for this request: no second one.
            debug!(%from, "WHOAREYOU answering our handshake");
            self.handshakes.remove(&(node_id, from));
            if let Some((id, _)) = &sent.request {
                self.fail(id, RequestError::BadResponse);
            }
            return;
        }
        // The requests' time, not a new one: a late WHOAREYOU does not make them live longer.
        let deadline = sent.deadline;
        if Instant::now() >= deadline {
            return;
        }
        let mut queue = match self.handshakes.remove(&(node_id, from)) {
            Some(h) => h.queue,
            None => sent.request.clone().into_iter().collect(),
        };
        if queue.is_empty() {
            return;
        }
        // The node lost our session: the other requests we sent it under that session are
        // lost too (it challenges one packet at a time and drops the rest). They go again
        // under the new session, each with its own deadline; before, they timed out.
        let lost: Vec<Nonce> = self
            .sent
            .iter()
            .filter(|(_, s)| {
                !s.handshake
                    && s.addr == from
                    && s.node.node_id() == node_id
                    && s.request.as_ref().is_some_and(|(id, _)| {
                        self.pending.contains_key(id) && !queue.iter().any(|(q, _)| q == id)
                    })
            })
            .map(|(n, _)| *n)
            .collect();
        let again: Vec<(RequestId, Message, Instant)> = lost
            .iter()
            .filter_map(|n| self.sent.remove(n))
            .filter_map(|s| s.request.map(|(id, msg)| (id, msg, s.deadline)))
            .collect();
        self.sessions.remove(&node_id, from);
        let first = queue.remove(0);
        let Some(session) = self
            .handshake_to(&sent.node, packet, enr_seq, from, &first, deadline)
            .await
        else {
            // We cannot run the handshake with this node (its key cannot do ECDH, or our packet
            // cannot be built): a failure for the table as a bad reply is, or an entry nobody
            // can reach would stay for good (found by review: only timeouts were counted).
            self.shared.table.lock().on_failure(&node_id);
            let ids = std::iter::once(first.0).chain(queue.into_iter().map(|(id, _)| id));
            for id in ids.chain(again.into_iter().map(|(id, ..)| id)) {
                self.fail(&id, RequestError::BadResponse);
            }
            return;
        };
        self.sessions.insert(node_id, from, session);
        let queued = queue.into_iter().map(|(id, msg)| (id, msg, deadline));
        for (id, msg, deadline) in queued.chain(again) {
            let Some(s) = self.sessions.get(&node_id, from, Instant::now()) else {
                break;
            };
            let key = s.write_key;
            let nonce: Nonce = rand::random();
            let Some(bytes) = self.seal_message(&node_id, nonce, &key, &msg.encode(&id)) else {
                continue;
            };
            self.track_nonce(
                nonce,
                SentPacket {
                    node: sent.node.clone(),
                    addr: from,
                    request: Some((id, msg)),
                    handshake: false,
                    deadline,
                },
            );
            self.send(&bytes, from).await;
        }
    }

    /// Builds and sends the handshake packet carrying `first`; returns the new session.
    async fn handshake_to(
        &mut self,
        node: &Spr,
        whoareyou: &Packet,
        enr_seq: u64,
        to: SocketAddr,
        first: &(RequestId, Message),
        deadline: Instant,
    ) -> Option<Session> {
        let node_id = node.node_id();
        let remote = crypto::k256_public(node.public_key()).ok()?;
        let eph = crypto::ephemeral_secret();
        let eph_pub = crypto::encode_eph_pubkey(&eph.public_key());
        let challenge = whoareyou.authenticated_data().ok()?;
        let shared = crypto::ecdh(&remote, &eph);
        let keys = crypto::derive_keys(&shared, &self.shared.local_id, &node_id, &challenge);
        let sig = crypto::id_sign(&self.shared.keypair, &challenge, &eph_pub, &node_id).ok()?;
        let own = self.shared.records.lock().dht.clone();
        let spr = (enr_seq < own.seq()).then(|| own.encoded().to_vec());
        let nonce: Nonce = rand::random();
        let mut packet = Packet::new(
            PacketKind::Handshake {
                src: self.shared.local_id,
                id_signature: sig,
                eph_pubkey: eph_pub,
                spr,
            },
            nonce,
        );
        let ad = packet.authenticated_data().ok()?;
        packet.message =
            crypto::encrypt(&keys.initiator, &nonce, &first.1.encode(&first.0), &ad).ok()?;
        let bytes = packet.encode(&node_id).ok()?;
        // Set up before the request it carries is sent: that request going unanswered ends
        // this session (`Sessions::remove_set_up_by`).
        let set_up = Instant::now();
        self.track_nonce(
            nonce,
            SentPacket {
                node: node.clone(),
                addr: to,
                request: Some(first.clone()),
                handshake: true,
                deadline,
            },
        );
        self.send(&bytes, to).await;
        Some(Session::new(keys.initiator, keys.recipient, set_up))
    }

    /// A handshake answering our WHOAREYOU.
    async fn on_handshake(
        &mut self,
        packet: &Packet,
        src: NodeId,
        id_signature: &[u8],
        eph_pubkey: &[u8],
        spr: Option<&[u8]>,
        from: SocketAddr,
    ) {
        // The challenge goes once a handshake answers it, or after
        // `MAX_FAILED_HANDSHAKES` that do not: a junk handshake spoofed from the node's
        // address used to take it, and the node's real one was then ignored (found by review).
        // Spent after `MAX_FAILED_HANDSHAKES` tries, it stays until it ages out: it keeps
        // answering handshakes no more, and keeps `challenge` from sending a new one meanwhile
        // (a spoofer would otherwise buy a WHOAREYOU and three signature checks per four
        // packets, unrationed for a node of our table).
        let Some(challenge) = self.challenges.get_mut(&(src, from)) else {
            trace!(%from, "handshake without a challenge");
            return;
        };
        if challenge.failed >= MAX_FAILED_HANDSHAKES {
            trace!(%from, "handshake for a spent challenge");
            return;
        }
        challenge.failed += 1;
        let challenge = challenge.clone();
        // The sender's key: from the record it sent, or from our table.
        let record = match spr {
            Some(bytes) => match self.shared.decode_record(bytes) {
                Ok(r) if r.node_id() == src => Some(r),
                Ok(_) => {
                    debug!(%from, "handshake record is not the sender's");
                    return;
                }
                Err(e) => {
                    debug!(%from, error = %e, "bad record in handshake");
                    return;
                }
            },
            None => None,
        };
        let key = match &record {
            Some(r) => r.public_key().clone(),
            None => match self.shared.table.lock().get(&src) {
                Some(e) => e.record.public_key().clone(),
                None => {
                    debug!(%from, "handshake from an unknown node without its record");
                    return;
                }
            },
        };
        if !crypto::id_verify(
            &key,
            id_signature,
            &challenge.data,
            eph_pubkey,
            &self.shared.local_id,
        ) {
            debug!(%from, "handshake with a bad id signature");
            return;
        }
        let Ok(eph) = crypto::decode_eph_pubkey(eph_pubkey) else {
            return;
        };
        let shared = crypto::ecdh(&eph, &self.static_secret);
        let keys = crypto::derive_keys(&shared, &src, &self.shared.local_id, &challenge.data);
        let Ok(ad) = packet.authenticated_data() else {
            return;
        };
        let Ok(plaintext) = crypto::decrypt(&keys.initiator, &packet.nonce, &packet.message, &ad)
        else {
            debug!(%from, "handshake message does not decrypt");
            return;
        };
        self.challenges.remove(&(src, from));
        self.sessions.insert(
            src,
            from,
            Session::new(keys.recipient, keys.initiator, Instant::now()),
        );
        if let Some(r) = record
            && let Some(addr) = r.udp_addr()
            && addr == from
            && self.acceptable(addr, from)
        {
            // The reference adds a node to its table once it completed a handshake with us, if
            // its record's address is the one the packet came from (a record with a bogus
            // address would otherwise be planted by a single packet).
            self.shared
                .table
                .lock()
                .insert(src, addr, r.seq(), r.clone(), Origin::Handshake);
        }
        self.on_plaintext(&plaintext, src, from).await;
    }

    /// Whether a record address may be used, given who told us (codex-protocol.md §7.4).
    fn acceptable(&self, addr: SocketAddr, sender: SocketAddr) -> bool {
        address_acceptable(addr, sender, self.config.allow_local_addrs)
    }

    async fn on_plaintext(&mut self, plaintext: &[u8], src: NodeId, from: SocketAddr) {
        let (id, msg) = match Message::decode(plaintext) {
            Ok(m) => m,
            Err(e) => {
                debug!(%from, error = %e, "undecodable discovery message");
                return;
            }
        };
        if msg.is_request() {
            self.on_request(src, from, id, msg).await;
        } else {
            self.on_response(src, from, id, msg);
        }
    }

    async fn on_request(&mut self, src: NodeId, from: SocketAddr, id: RequestId, msg: Message) {
        self.config.metrics.requests_received.inc();
        if !self.requests.allow(from.ip(), false, Instant::now()) {
            trace!(%from, "request budget spent; request dropped");
            return;
        }
        match msg {
            Message::Ping { .. } => {
                let spr_seq = self.shared.records.lock().dht.seq();
                let pong = Message::Pong {
                    spr_seq,
                    ip: from.ip(),
                    port: from.port(),
                };
                self.respond(&src, from, &id, &pong).await;
            }
            Message::FindNode { distances } => {
                // As the reference's handleFindNode: distance 0 asks for our own record only;
                // any distance above 256 gets an empty answer; otherwise the *seen* nodes at
                // those distances. An empty list cannot be decoded by the reference: silence.
                if distances.is_empty() {
                    return;
                }
                let sprs = if distances.contains(&0) {
                    vec![self.shared.records.lock().dht.encoded().to_vec()]
                } else if distances.iter().any(|d| *d > MAX_LOG_DISTANCE) {
                    Vec::new()
                } else {
                    self.shared
                        .table
                        .lock()
                        .at_distances(&distances, MAX_FINDNODE_RESULTS)
                        .into_iter()
                        .map(|e| e.record.encoded().to_vec())
                        .collect()
                };
                self.send_nodes(&src, from, &id, sprs).await;
            }
            Message::FindNodeFast { target } => {
                let sprs = self
                    .shared
                    .table
                    .lock()
                    .closest(&target, MAX_FINDNODEFAST_RESULTS, true)
                    .into_iter()
                    .map(|e| e.record.encoded().to_vec())
                    .collect();
                self.send_nodes(&src, from, &id, sprs).await;
            }
            Message::TalkReq { .. } => {
                // No talk protocols: the reference answers an empty TALKRESP.
                let resp = Message::TalkResp {
                    response: Vec::new(),
                };
                self.respond(&src, from, &id, &resp).await;
            }
            Message::AddProvider { content, provider } => {
                // A record of someone else is not cached as verified: a flood of them used to
                // push the records lookups verify again and again out of the cache (review).
                match self
                    .shared
                    .decode_record_if(&provider, |r| r.node_id() == src)
                {
                    // A node announces itself (the reference's `addProvider` sends the node's
                    // own record, signed with the key of its node id). A record of someone
                    // else is refused: anyone could otherwise replay a node's signed record
                    // under any content and send downloaders to dial it, or fill our store
                    // with throwaway identities over one session (found by review).
                    Ok(record) if record.node_id() != src => {
                        debug!(%from, "provider record is not the sender's; not stored");
                    }
                    Ok(record) => {
                        let peer = record.peer_id();
                        let seq = record.seq();
                        self.shared.providers.lock().add(
                            content,
                            peer,
                            seq,
                            record,
                            SourceGroup::of(from.ip()),
                            Instant::now().into_std(),
                        );
                    }
                    Err(e) => debug!(%from, error = %e, "bad provider record"),
                }
            }
            Message::GetProviders { content } => {
                let now = Instant::now().into_std();
                let mut records = self.shared.providers.lock().get(&content, now);
                // The smallest first (of equal size, the first stored): the answer then holds
                // as many as fit, and a provider cannot crowd the others out with a large
                // record (found by review).
                records.sort_by_key(|r| r.encoded().len());
                if self.shared.own.lock().contains(&content, now) {
                    // Ours first (see `OwnKeys`); a copy someone stored with us goes.
                    let ours = self.shared.local_records().provider;
                    records.retain(|r| r.peer_id() != ours.peer_id());
                    records.insert(0, ours);
                }
                // One PROVIDERS message (total 1), as the reference; cut to fit one packet. A
                // record that does not fit is skipped, not the end: one large record used to
                // keep every record after it out (found by review).
                let mut providers = Vec::new();
                let mut size = 0usize;
                for r in records {
                    let len = r.encoded().len() + RECORD_FRAMING;
                    if size + len > MAX_PACKET_SIZE - PACKET_OVERHEAD - PROVIDERS_FRAMING {
                        continue;
                    }
                    size += len;
                    providers.push(r.encoded().to_vec());
                }
                let resp = Message::Providers {
                    total: 1,
                    providers,
                };
                self.respond(&src, from, &id, &resp).await;
            }
            _ => {}
        }
    }

    /// Answers a FINDNODE(FAST) with `sprs` split into NODES messages of at most
    /// [`NODES_PER_MESSAGE`] that each fit a packet; an empty answer is one message with
    /// `total = 1`.
    async fn send_nodes(
        &mut self,
        src: &NodeId,
        from: SocketAddr,
        id: &RequestId,
        sprs: Vec<Vec<u8>>,
    ) {
        if sprs.is_empty() {
            let msg = Message::Nodes {
                total: 1,
                sprs: Vec::new(),
            };
            self.respond(src, from, id, &msg).await;
            return;
        }
        // At most NODES_PER_MESSAGE records a message, as the reference, and no more than fit
        // one packet: records in our table can be 1 KiB each, and three of them made packets of
        // 3 KB (found by review). A record too large for a packet alone is left out, and so
        // are records past MAX_RESPONSE_PARTS messages (a receiver drops those parts).
        let budget = MAX_PACKET_SIZE - PACKET_OVERHEAD - PROVIDERS_FRAMING;
        let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut size = 0usize;
        for spr in sprs {
            let len = spr.len() + RECORD_FRAMING;
            if len > budget {
                continue;
            }
            let fits = chunks
                .last()
                .is_some_and(|c| c.len() < NODES_PER_MESSAGE && size + len <= budget);
            if fits {
                if let Some(c) = chunks.last_mut() {
                    c.push(spr);
                    size += len;
                }
            } else {
                if chunks.len() >= MAX_RESPONSE_PARTS as usize {
                    break;
                }
                chunks.push(vec![spr]);
                size = len;
            }
        }
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let total = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        for chunk in chunks {
            let msg = Message::Nodes { total, sprs: chunk };
            self.respond(src, from, id, &msg).await;
        }
    }

    fn on_response(&mut self, src: NodeId, from: SocketAddr, id: RequestId, msg: Message) {
        let MapEntry::Occupied(mut entry) = self.pending.entry(id) else {
            trace!(%from, "response to no request of ours");
            return;
        };
        let p = entry.get_mut();
        if p.node != src || p.addr != from {
            return;
        }
        if p.answer_kind.is_some_and(|k| k != msg.kind()) {
            let p = entry.remove();
            if let Some(nonce) = p.nonce {
                self.sent.remove(&nonce);
            }
            if p.parts.is_empty() {
                // An answer of the wrong kind is a failure for the table (the reference's
                // `replaceNode` after an invalid response), not a sign of life: review found
                // it marked the node seen.
                debug!(%from, kind = msg.kind(), "answer of the wrong kind");
                self.shared.table.lock().on_failure(&src);
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(RequestError::BadResponse));
                }
            } else {
                // A later part of another kind ends a multi-part answer with what came (as the
                // reference's `waitNodes`: "no error on this as we received some nodes").
                self.shared.table.lock().mark_seen(&src);
                if let Some(reply) = p.reply {
                    let _ = reply.send(Ok(p.parts));
                }
            }
            return;
        }
        let done = match &msg {
            Message::Nodes { total, .. } | Message::Providers { total, .. } => {
                if p.expected == 0 {
                    p.expected = (*total).clamp(1, MAX_RESPONSE_PARTS);
                }
                p.parts.push(msg);
                p.parts.len() as u32 >= p.expected
            }
            _ => {
                p.parts.push(msg);
                true
            }
        };
        if done {
            let p = entry.remove();
            self.shared.table.lock().mark_seen(&src);
            // The packet that carried the request is answered: a late WHOAREYOU for it must
            // not resend it.
            if let Some(nonce) = p.nonce {
                self.sent.remove(&nonce);
            }
            if let Some(reply) = p.reply {
                let _ = reply.send(Ok(p.parts));
            }
        }
    }

    fn fail(&mut self, id: &RequestId, error: RequestError) {
        if let Some(p) = self.pending.remove(id)
            && let Some(reply) = p.reply
        {
            let _ = reply.send(Err(error));
        }
    }

    /// Frees the provider records that have expired (every [`PROVIDER_EXPIRY_INTERVAL`]).
    fn expire_providers(&mut self) {
        let freed = self
            .shared
            .providers
            .lock()
            .expire(Instant::now().into_std());
        if freed > 0 {
            debug!(freed, "expired provider records freed");
        }
    }

    /// Times out requests, handshakes, challenges and nonces.
    fn sweep(&mut self) {
        let now = Instant::now();
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                // A node that does not answer is replaced (never a bootstrap node). A partial
                // multi-part answer still counts as an answer.
                if p.parts.is_empty() {
                    // Nothing came back: the session may be one the node cannot use (it reads
                    // us but we cannot read it, and it ignores our challenges of its answers),
                    // so the next request starts a new handshake, as rust-discv5 does on a
                    // failed request. Keeping it left such a pair unable to talk for good.
                    // Only a session that carried the request, not a newer one (found by
                    // review: a request lost to a session the node had forgotten tore down
                    // the session another request had just set up).
                    self.sessions
                        .remove_set_up_by(&p.node, p.addr, p.sent_at.unwrap_or(now));
                    let mut table = self.shared.table.lock();
                    if p.find_node {
                        table.on_failure(&p.node);
                    } else {
                        table.on_no_reply(&p.node);
                    }
                }
                if let Some(reply) = p.reply {
                    let _ = reply.send(if p.parts.is_empty() {
                        Err(RequestError::Timeout)
                    } else {
                        Ok(p.parts)
                    });
                }
            }
        }
        let metrics = &self.config.metrics;
        metrics
            .table_nodes
            .set(gauge_value(self.shared.table.lock().len()));
        metrics
            .provider_records
            .set(gauge_value(self.shared.providers.lock().len()));
        self.handshakes.retain(|_, h| h.deadline > now);
        self.sent.retain(|_, s| s.deadline > now);
        let ttl = self.config.handshake_timeout + self.config.request_timeout;
        self.challenges
            .retain(|_, c| now.saturating_duration_since(c.created) < ttl);
    }
}

/// A count as a gauge value (saturating; no table comes near `i64::MAX`).
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The reference's address rule for records learned from others (codex-protocol.md §7.4): an
/// IPv4 address that is not unspecified or multicast; loopback only from a loopback sender;
/// private only from a private or loopback sender. `allow_local` lifts the last two (tests and
/// local networks).
pub fn address_acceptable(addr: SocketAddr, sender: SocketAddr, allow_local: bool) -> bool {
    let IpAddr::V4(ip) = addr.ip() else {
        return false;
    };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || addr.port() == 0 {
        return false;
    }
    if allow_local {
        return true;
    }
    let sender_ip = match sender.ip() {
        IpAddr::V4(s) => s,
        IpAddr::V6(s) => match s.to_ipv4_mapped() {
            Some(s) => s,
            None => return !ip.is_loopback() && !ip.is_private(),
        },
    };
    if ip.is_loopback() && !sender_ip.is_loopback() {
        return false;
    }
    if ip.is_private() && !(sender_ip.is_private() || sender_ip.is_loopback()) {
        return false;
    }
    true
}

/// [`address_acceptable`] for a sender known by its IP alone; one known by no IP address (a
/// DNS name, a relay) counts as public.
pub fn address_acceptable_from(
    addr: SocketAddr,
    sender: Option<IpAddr>,
    allow_local: bool,
) -> bool {
    let sender = sender.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    address_acceptable(addr, SocketAddr::new(sender, 0), allow_local)
}

/// The peer id of a record's key, for filtering our own records out of answers.
pub(crate) fn is_own(shared: &Shared, peer: &PeerId) -> bool {
    shared.keypair.public().to_peer_id() == *peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// codex-protocol.md §7.4: records learned from others must name a usable IPv4/UDP
    /// address; loopback only from a loopback sender, private only from a private or loopback
    /// sender.
    #[test]
    fn record_addresses_follow_the_reference_scope_rules() {
        let public = a("8.8.8.8:9000");
        let private = a("10.0.0.2:9000");
        let lo = a("127.0.0.1:9000");
        for bad in [
            "0.0.0.0:9000",
            "224.0.0.1:9000",
            "255.255.255.255:9000",
            "8.8.8.8:0",
            "[::1]:9000",
        ] {
            assert!(!address_acceptable(a(bad), lo, true), "{bad}");
        }
        assert!(address_acceptable(public, public, false));
        assert!(address_acceptable(public, lo, false));
        assert!(!address_acceptable(lo, public, false));
        assert!(!address_acceptable(lo, private, false));
        assert!(address_acceptable(lo, lo, false));
        assert!(!address_acceptable(private, public, false));
        assert!(address_acceptable(private, private, false));
        assert!(address_acceptable(private, lo, false));
        // The setting for local networks lifts the scope rules only.
        assert!(address_acceptable(lo, public, true));
        assert!(address_acceptable(private, public, true));
    }

    /// A record decoded for a request that refuses it (a provider record of someone else) is
    /// not remembered as verified; one that is kept is.
    #[tokio::test]
    async fn refused_records_stay_out_of_the_verified_cache() {
        let cancel = CancellationToken::new();
        let config = DiscoveryConfig::new(a("127.0.0.1:0"));
        let (shared, _commands) = start(Keypair::generate_secp256k1(), config, cancel.clone())
            .await
            .unwrap();
        let record = |seq| {
            let key = Keypair::generate_secp256k1();
            Spr::sign(&key, seq, vec!["/ip4/1.2.3.4/tcp/4001".parse().unwrap()]).unwrap()
        };
        let before = shared.verified.lock().len();
        let refused = record(1);
        assert!(
            shared
                .decode_record_if(refused.encoded(), |_| false)
                .is_ok()
        );
        assert_eq!(shared.verified.lock().len(), before);
        let kept = record(2);
        assert!(shared.decode_record_if(kept.encoded(), |_| true).is_ok());
        assert_eq!(shared.verified.lock().len(), before + 1);
        cancel.cancel();
    }

    /// Review found that provider records were never freed: `ProviderStore::expire` was only
    /// called by its own tests. The task now frees them every `PROVIDER_EXPIRY_INTERVAL`; time
    /// is paused, so a day goes by at once.
    #[tokio::test(start_paused = true)]
    async fn expired_provider_records_are_freed() {
        use crate::providers::PROVIDER_TTL;
        let cancel = CancellationToken::new();
        let config = DiscoveryConfig::new(a("127.0.0.1:0"));
        // The command sender is held: the task stops when every sender is gone.
        let (shared, _commands) = start(Keypair::generate_secp256k1(), config, cancel.clone())
            .await
            .unwrap();
        let provider = Keypair::generate_secp256k1();
        let record =
            Spr::sign(&provider, 1, vec!["/ip4/1.2.3.4/tcp/4001".parse().unwrap()]).unwrap();
        shared.providers.lock().add(
            NodeId([1; 32]),
            record.peer_id(),
            1,
            record,
            SourceGroup::of("192.0.2.1".parse().unwrap()),
            Instant::now().into_std(),
        );
        let held = || shared.providers.lock().len();
        // Two passes before the TTL: the record stays.
        tokio::time::advance(PROVIDER_TTL - 3 * PROVIDER_EXPIRY_INTERVAL).await;
        tokio::time::sleep(2 * PROVIDER_EXPIRY_INTERVAL).await;
        assert_eq!(held(), 1, "freed before its TTL");
        // Past the TTL, the next pass frees it.
        tokio::time::advance(2 * PROVIDER_EXPIRY_INTERVAL).await;
        let freed = tokio::time::timeout(2 * PROVIDER_EXPIRY_INTERVAL, async {
            while held() > 0 {
                tokio::time::sleep(SWEEP_EVERY).await;
            }
        })
        .await;
        assert!(freed.is_ok(), "an expired record is still held");
        assert!(shared.providers.lock().is_empty());
        cancel.cancel();
    }

    /// Review: a handshake that failed on our side (here: the entry's key cannot do ECDH)
    /// failed the request but told the table nothing, so an entry nobody can reach stayed
    /// forever. Now it counts as a failure: the entry goes.
    #[tokio::test]
    async fn a_failed_handshake_towards_an_entry_removes_it() {
        let cancel = CancellationToken::new();
        let config = DiscoveryConfig::new(a("127.0.0.1:0"));
        let (shared, commands) = start(Keypair::generate_secp256k1(), config, cancel.clone())
            .await
            .unwrap();
        // A node whose record slipped in with an ed25519 key, at a socket we answer from.
        let sock = UdpSocket::bind(a("127.0.0.1:0")).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let key = Keypair::generate_ed25519();
        let record = Spr::sign_unchecked(&key, 1, vec![udp_multiaddr(addr)]);
        let id = record.node_id();
        shared
            .table
            .lock()
            .insert(id, addr, 1, record.clone(), Origin::Discovered);
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Request {
                node: record,
                msg: Message::Ping { spr_seq: 1 },
                reply: tx,
            })
            .await
            .unwrap();
        // Its random packet is challenged.
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let packet = Packet::decode(&id, &buf[..n]).unwrap();
        let who = Packet::new(
            PacketKind::WhoAreYou {
                id_nonce: rand::random(),
                enr_seq: 0,
            },
            packet.nonce,
        );
        sock.send_to(&who.encode(&shared.local_id).unwrap(), from)
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(3), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, Err(RequestError::BadResponse));
        assert!(
            shared.table.lock().get(&id).is_none(),
            "an entry we cannot handshake with stays in the table"
        );
        cancel.cancel();
    }

    #[test]
    fn sequence_numbers_only_grow() {
        let now = next_seq(0);
        assert!(now > 1_700_000_000, "Unix time in seconds");
        assert_eq!(next_seq(now + 100), now + 101);
    }

    #[test]
    fn dht_record_address_is_ip_and_udp() {
        assert_eq!(
            udp_multiaddr(a("127.0.0.1:8090")).to_string(),
            "/ip4/127.0.0.1/udp/8090"
        );
    }
}
