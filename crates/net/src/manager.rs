//! The peer manager: which peers the node connects to, what it tells them about others, and
//! which it drops. It runs inside the swarm task (these are more methods of the task's state)
//! on the task's one-second housekeeping tick and on swarm events; it owns the address book.
//!
//! This is CometBFT's PEX reactor and switch (`p2p/pex/pex_reactor.go`, `p2p/switch.go`) on a
//! libp2p swarm.
//!
//! ## Fixed peers
//! * **Persistent peers** (`--persistent-peer`) are always reconnected: when not connected they
//!   are dialled, with a backoff that doubles on each failure or short-lived connection (from
//!   [`FIXED_BACKOFF_MIN`] to [`FIXED_BACKOFF_MAX`]) and resets after a connection that lasted
//!   [`FIXED_STABLE_CONNECTION`].
//! * **Bootstrap nodes** (`--bootstrap-node`) are dialled at start and afterwards only while the
//!   node has fewer outbound peers than its target (CometBFT dials its seeds when it has no one
//!   else to ask). Their backoff doubles on every dial, successful or not, and never resets: a
//!   seed that answers and hangs up is asked again after 15, 30, 60, … seconds, up to five
//!   minutes, never hammered.
//!
//! Neither kind is dialled from the address book (their own routine handles them), so a seed
//! is not taken for an ordinary peer and redialled as one.
//!
//! ## Ensure peers
//! While the node has fewer outbound peers than its target ([`crate::NetConfig::outbound_target`]),
//! each tick dials peers picked from the book (known-good peers more likely:
//! [`BOOK_BIAS_TOWARDS_NEW`]), never one already connected or being dialled, nor one whose score
//! is at or below the disconnect level, nor one that failed `n` attempts in the last `2^n`
//! seconds ([`book_dial_backoff`]; the book evicts peers that keep failing). A dial counts as a
//! success (attempts reset, the peer moves to an old bucket) only once its connection has lasted
//! [`BOOK_STABLE_CONNECTION`], so a peer that accepts and hangs up backs off like one that
//! refuses. Inbound connections are capped by [`crate::NetConfig::max_inbound`], per remote host
//! by [`crate::ip_limits`], and all connections by [`crate::NetConfig::max_peers`] (rust-libp2p's
//! `connection_limits`, which refuses the connection before any protocol runs on it).
//!
//! ## Peer exchange (`/cairn/pex/1.0.0`)
//! * An outbound peer is asked for addresses as soon as it is connected, if the book needs
//!   more (fewer than 1000 peers). While the node is also short of outbound peers, one connected
//!   peer is asked per [`PEX_ROUND_INTERVAL`]; a node with its outbound peers asks nobody (as
//!   CometBFT). No peer is asked twice within [`PEX_MIN_ASK_INTERVAL`], reconnections included;
//!   a connected bootstrap node is asked whenever that allows while the node is short.
//! * Answers go into the book's new buckets, attributed to the peer that sent them (its address
//!   picks the buckets, so one source can fill only its share). Lists are taken only as answers
//!   to our requests: a pushed list is answered with nothing and penalised
//!   ([`PeerAction::LowTolerance`]).
//! * A request is answered with a random selection from the book (private peers never; private
//!   addresses only for a requester on a private or loopback address), cut to what a cairn peer
//!   reads whole ([`pex_answer`]: no address over the wire's 256 bytes, no answer over its
//!   256 KiB). A second request within
//!   [`PEX_MIN_REQUEST_INTERVAL`] is answered with nothing, and penalised if it came on the same
//!   connection as the first
//!   ([`PeerAction::MidTolerance`]). Repeated offences reach the disconnect and then the ban
//!   threshold of [`crate::reputation`]; a ban also removes the peer from the book until it ends.
//!
//! ## Seed mode (`--seed-mode`)
//! A seed keeps no long connections (CometBFT's `crawlPeersRoutine`): every
//! [`SEED_CRAWL_INTERVAL`] it dials up to [`SEED_CRAWL_BATCH`] book peers not tried for
//! [`SEED_RECRAWL_SECS`] (least recently tried first), asks each for addresses and hangs up when
//! the answer comes. A peer that connects to it is answered (whatever it asked) and hung up on
//! [`SEED_HANG_UP_GRACE`] after the answer is sent and its identify message (which tells the
//! seed where it listens) has arrived; any connection older than [`SEED_MAX_CONNECTION_AGE`] is
//! closed. A seed does not dial towards an outbound target.

use std::time::{Duration, Instant};

use libp2p::{
    Multiaddr, PeerId,
    swarm::dial_opts::{DialOpts, PeerCondition},
};
use tracing::{debug, info, warn};

use cairn_peers::{AddrBook, Source};

use crate::{
    reputation::{DISCONNECT_SCORE, PeerAction},
    service::{Direction, Service},
};

/// The IP address a multiaddr starts with (`None` for a DNS name or anything else).
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    match addr.iter().next() {
        Some(libp2p::multiaddr::Protocol::Ip4(ip)) => Some(ip.into()),
        Some(libp2p::multiaddr::Protocol::Ip6(ip)) => Some(ip.into()),
        _ => None,
    }
}

/// How often the same peer is asked for addresses by the periodic round (below).
pub const PEX_ASK_INTERVAL: Duration = Duration::from_secs(30);

/// While the node is short of outbound peers and its book needs more addresses, one connected
/// peer (not asked within [`PEX_ASK_INTERVAL`]) is asked per round of this length. CometBFT asks
/// one random peer per 30 s ensure-peers round, under the same two conditions; a shorter round
/// lets a node that joined first (and got an empty list) catch up in seconds, and a node with
/// its peers asks nobody.
pub const PEX_ROUND_INTERVAL: Duration = Duration::from_secs(5);

/// Shortest interval between two address requests a peer may send us; a faster one is
/// answered with nothing (CometBFT: `minReceiveRequestInterval`), and penalised when both came on
/// one connection. Remembered across reconnections, so hanging up and dialling again does not
/// reset it (a restarted node asking again is answered with nothing, not penalised).
pub const PEX_MIN_REQUEST_INTERVAL: Duration = Duration::from_secs(10);

/// Shortest interval between two address requests we send one peer, across reconnections too:
/// above [`PEX_MIN_REQUEST_INTERVAL`] with a margin, so an honest node is never penalised.
pub const PEX_MIN_ASK_INTERVAL: Duration = Duration::from_secs(15);

/// Share of dials from the book that go to peers never connected to (CometBFT's
/// `PickAddress` bias; low, so known-good peers come first).
pub const BOOK_BIAS_TOWARDS_NEW: u8 = 30;

/// Longest wait before dialling a book peer again after failed attempts: the wait is
/// `2^attempts` seconds up to this (CometBFT's `ensurePeers` backoff and its 10-minute cap, less
/// the jitter).
pub const BOOK_DIAL_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);

/// How long to wait after `attempts` failed dials (since the last success) before dialling a
/// book peer again: none before the first attempt, then 2, 4, 8, … seconds up to
/// [`BOOK_DIAL_BACKOFF_MAX`].
pub fn book_dial_backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let secs = 1u64.checked_shl(attempts.min(63)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(BOOK_DIAL_BACKOFF_MAX)
}

/// How long an outbound connection to a book peer must last before the book records it as a
/// success (CometBFT `MarkGood`: attempts reset, the peer goes to an old bucket). A peer that
/// accepts and hangs up at once (full, or it banned us) was recorded good at every connection,
/// which reset its backoff, so it was dialled again every second (review); now its attempts
/// add up and its backoff grows as for a failed dial.
pub const BOOK_STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// First redial delay of a persistent peer.
pub const FIXED_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// First redial delay of a bootstrap node: we redial it to ask for addresses, so not before
/// we may ask it again ([`PEX_MIN_ASK_INTERVAL`]).
pub const BOOTSTRAP_BACKOFF_MIN: Duration = PEX_MIN_ASK_INTERVAL;

/// How long a persistent peer's connection must have lasted for its redial backoff to start
/// again from [`FIXED_BACKOFF_MIN`] when it closes; shorter ones keep doubling it.
pub const FIXED_STABLE_CONNECTION: Duration = Duration::from_secs(60);

/// Longest redial delay of a bootstrap or persistent peer.
pub const FIXED_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// How often a seed crawls its book (CometBFT `crawlPeerPeriod`).
pub const SEED_CRAWL_INTERVAL: Duration = Duration::from_secs(30);

/// Peers a seed dials per crawl round: bounds the seed's dials to 16 per 30 s, and so the
/// connections a crawl round opens at once.
pub const SEED_CRAWL_BATCH: usize = 16;

/// A seed crawls the same peer at most this often, in seconds (CometBFT `minTimeBetweenCrawls`
/// is 2 minutes; the book's attempt time is the clock, so a restart does not reset it).
pub const SEED_RECRAWL_SECS: u64 = 2 * 60;

/// The longest a seed keeps any connection open: a peer that neither asks nor identifies
/// itself in this time is dropped anyway.
pub const SEED_MAX_CONNECTION_AGE: Duration = Duration::from_secs(20);

/// How long a seed waits between sending its answer and hanging up. "Sent" means written to
/// the stream; closing the connection at once can still drop it in the muxer on the way out
/// (seen in the 30-node test), so the seed lets it drain first (CometBFT: `FlushStop`). The
/// hang-up happens on the next tick after this, so within a second more.
pub const SEED_HANG_UP_GRACE: Duration = Duration::from_millis(500);

/// Seconds since the Unix epoch (the address book keeps wall-clock times, since they are
/// saved across restarts).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the address book is due to be written, `since_save` after it was last saved (or
/// loaded): every [`crate::BOOK_SAVE_INTERVAL`], and after [`crate::BOOK_FIRST_SAVE_DELAY`]
/// when it was empty then and holds peers now.
pub(crate) fn book_save_due(since_save: Duration, empty_when_saved: bool, empty_now: bool) -> bool {
    since_save >= crate::BOOK_SAVE_INTERVAL
        || (empty_when_saved && !empty_now && since_save >= crate::BOOK_FIRST_SAVE_DELAY)
}

/// Puts the listen addresses `peer` announced in its identify message into `book` (at most
/// [`cairn_peers::params::MAX_ADDRS_PER_PEER`]) and returns how many were kept.
///
/// They are the peer's word, heard at `remote` (the remote address of our connection to it),
/// not ours: so the book's private-address rule applies (a peer on a public address cannot
/// make us keep loopback or private addresses, some other network's, that would point our
/// dialer at our own LAN), and they land in the new buckets of the peer's own network group
/// instead of ours (`Source::Local` put every inbound identity there). Without a connection
/// (it closed before the message was handled) nothing is taken: there is no source to judge.
pub(crate) fn add_identified_addrs(
    book: &mut AddrBook,
    peer: PeerId,
    remote: Option<&Multiaddr>,
    listen_addrs: &[Multiaddr],
    now: u64,
) -> usize {
    let Some(remote) = remote else {
        return 0;
    };
    let src = Source::Peer {
        id: peer,
        addr: remote.clone(),
    };
    let mut kept = 0;
    for addr in listen_addrs
        .iter()
        .take(cairn_peers::params::MAX_ADDRS_PER_PEER)
    {
        match book.add_address(peer, addr, &src, now) {
            Ok(_) => kept += 1,
            Err(e) => debug!(%peer, %addr, error = %e, "address not kept"),
        }
    }
    kept
}

/// The PEX answer to `requester` built from the book's `selection`: at most `max` peers (and
/// [`cairn_pex::MAX_PEERS_PER_MESSAGE`]), never the requester itself, with our `dht_record`.
///
/// [`cairn_pex::Addrs::bounded`] makes it one a cairn peer reads whole: the book keeps
/// addresses up to [`cairn_peers::params::MAX_MULTIADDR_LEN`] (320) bytes but the wire takes
/// [`cairn_pex::MAX_ADDR_BYTES`] (256), so longer ones are left out (and a peer with no other),
/// and entries stop before the answer would pass [`cairn_pex::MAX_RESPONSE_BYTES`].
pub(crate) fn pex_answer(
    selection: Vec<cairn_peers::PeerAddrs>,
    requester: PeerId,
    max: u32,
    dht_record: Option<Vec<u8>>,
) -> cairn_pex::Addrs {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    cairn_pex::Addrs::bounded(
        selection
            .into_iter()
            .filter(|p| p.peer != requester)
            .map(|p| cairn_pex::PeerAddrs {
                peer: p.peer,
                addrs: p.addrs,
            }),
        max,
        dht_record,
    )
}

/// A bootstrap or persistent peer.
#[derive(Debug)]
pub(crate) struct FixedPeer {
    pub(crate) peer: PeerId,
    pub(crate) addr: libp2p::Multiaddr,
    /// Always reconnected (else: only while short of outbound peers).
    pub(crate) persistent: bool,
    /// Dialled once already (the first dial of a bootstrap node is unconditional).
    pub(crate) started: bool,
    pub(crate) next_attempt: Instant,
    pub(crate) backoff: Duration,
    pub(crate) dialing: bool,
    /// When its current connection was established.
    pub(crate) connected_at: Option<Instant>,
    /// A failed dial was logged as a warning since it was last connected (the next ones of the
    /// same outage are logged at debug level, so a peer down for hours is said once).
    pub(crate) warned: bool,
}

impl FixedPeer {
    pub(crate) fn new(
        peer: PeerId,
        addr: libp2p::Multiaddr,
        persistent: bool,
        now: Instant,
    ) -> Self {
        FixedPeer {
            peer,
            addr,
            persistent,
            started: false,
            next_attempt: now,
            backoff: if persistent {
                FIXED_BACKOFF_MIN
            } else {
                BOOTSTRAP_BACKOFF_MIN
            },
            dialing: false,
            connected_at: None,
            warned: false,
        }
    }

    /// Pushes the next attempt one backoff away and doubles the backoff.
    fn back_off(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(FIXED_BACKOFF_MAX);
    }

    /// Its connection came up.
    fn on_connected(&mut self, now: Instant) {
        self.dialing = false;
        self.connected_at = Some(now);
        self.warned = false;
    }

    /// Its last connection closed: a persistent peer is redialled after its backoff, which
    /// starts again from [`FIXED_BACKOFF_MIN`] only if the connection had lasted
    /// [`FIXED_STABLE_CONNECTION`]. A peer that accepts and hangs up at once (one that banned
    /// us, or a full one) is so asked less and less often instead of every second.
    fn on_disconnected(&mut self, now: Instant) {
        let lasted = self
            .connected_at
            .take()
            .map(|t| now.saturating_duration_since(t));
        if self.persistent {
            if lasted.is_some_and(|d| d >= FIXED_STABLE_CONNECTION) {
                self.backoff = FIXED_BACKOFF_MIN;
            }
            self.back_off(now);
        }
    }
}

impl Service {
    /// The peer manager's tick (every [`crate::HOUSEKEEPING_INTERVAL`]).
    pub(crate) fn housekeeping(&mut self) {
        let now = Instant::now();
        let wall = unix_now();
        if self.seed_mode {
            self.seed_disconnects(now);
            if now.duration_since(self.last_crawl) >= SEED_CRAWL_INTERVAL {
                self.last_crawl = now;
                self.seed_crawl(wall);
            }
        } else {
            self.ask_for_addrs(now);
            self.dial_from_book();
        }
        self.dial_fixed_peers(now);
        self.promote_stable(now, wall);
        self.pex_served
            .retain(|_, t| now.duration_since(*t) < PEX_MIN_REQUEST_INTERVAL);
        self.pex_asked
            .retain(|_, t| now.duration_since(*t) < PEX_ASK_INTERVAL);
        if book_save_due(
            now.duration_since(self.last_book_save),
            self.book_empty_when_saved,
            self.book.is_empty(),
        ) {
            self.book.remove_bad(wall);
            self.save_book();
        }
        for peer in self.reputation.expired_bans(now) {
            info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        self.book.lift_expired_bans(wall);
    }

    /// Records in the book the outbound connections that have lasted
    /// [`BOOK_STABLE_CONNECTION`], once each.
    fn promote_stable(&mut self, now: Instant, wall: u64) {
        for (peer, c) in &mut self.connected {
            if !c.promoted
                && c.info.direction == Direction::Outbound
                && now.saturating_duration_since(c.since) >= BOOK_STABLE_CONNECTION
            {
                c.promoted = true;
                self.book.mark_good(peer, &c.info.address, wall);
            }
        }
    }

    /// Outbound peers connected now.
    pub(crate) fn outbound_count(&self) -> usize {
        self.connected
            .values()
            .filter(|c| c.info.direction == Direction::Outbound)
            .count()
    }

    fn is_fixed(&self, peer: &PeerId) -> bool {
        self.fixed.iter().any(|f| f.peer == *peer)
    }

    fn is_persistent(&self, peer: &PeerId) -> bool {
        self.fixed.iter().any(|f| f.peer == *peer && f.persistent)
    }

    /// Dials persistent peers that are not connected, and bootstrap nodes while short of
    /// outbound peers, each when its backoff allows.
    fn dial_fixed_peers(&mut self, now: Instant) {
        let short = self.outbound_count() < self.outbound_target;
        let mut to_dial = Vec::new();
        for f in &mut self.fixed {
            let due = !f.dialing && now >= f.next_attempt && !self.connected.contains_key(&f.peer);
            if due && (f.persistent || short || !f.started) {
                f.started = true;
                f.dialing = true;
                if !f.persistent {
                    // A bootstrap node is asked less and less often, answered or not.
                    f.back_off(now);
                }
                to_dial.push((f.peer, f.addr.clone()));
            }
        }
        for (peer, addr) in to_dial {
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .allocate_new_port()
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "dial of a bootstrap or persistent peer not started");
                self.fixed_failed(peer, &e.to_string());
            }
        }
    }

    /// A dial of a fixed peer failed: try again after its backoff.
    pub(crate) fn fixed_failed(&mut self, peer: PeerId, cause: &str) {
        let now = Instant::now();
        for f in self
            .fixed
            .iter_mut()
            .filter(|f| f.peer == peer && f.dialing)
        {
            f.dialing = false;
            if f.persistent {
                f.back_off(now);
            }
            let kind = if f.persistent {
                "persistent"
            } else {
                "bootstrap"
            };
            let retry_in_secs = f.next_attempt.saturating_duration_since(now).as_secs();
            if f.warned {
                debug!(%peer, addr = %f.addr, retry_in_secs, %cause, "{kind} peer unreachable");
            } else {
                f.warned = true;
                warn!(%peer, addr = %f.addr, retry_in_secs, %cause, "{kind} peer unreachable; trying again (said once until it connects)");
            }
        }
    }

    /// A fixed peer connected.
    pub(crate) fn fixed_connected(&mut self, peer: PeerId) {
        let now = Instant::now();
        for f in self.fixed.iter_mut().filter(|f| f.peer == peer) {
            f.on_connected(now);
        }
    }

    /// A fixed peer's last connection closed.
    pub(crate) fn fixed_disconnected(&mut self, peer: PeerId) {
        let now = Instant::now();
        for f in self.fixed.iter_mut().filter(|f| f.peer == peer) {
            f.on_disconnected(now);
        }
    }

    /// Writes the address book to its file, if it has one: encoded here, written (with its
    /// fsyncs) on a blocking thread, so the swarm's events do not wait for the disk (found by
    /// review: a large book stalled the network task at every save). A save while the last
    /// write is still under way is skipped; the next one comes at the next due time.
    pub(crate) fn save_book(&mut self) {
        if self.book_write.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        self.last_book_save = Instant::now();
        self.book_empty_when_saved = self.book.is_empty();
        let Some(path) = self.book_path.clone() else {
            return;
        };
        match self.book.encode_file() {
            Ok(bytes) => {
                self.book_write = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = cairn_peers::persist::write_book_file(&path, &bytes) {
                        warn!(path = %path.display(), error = %e, "cannot save the address book");
                    }
                }));
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot save the address book"),
        }
    }

    /// Writes the address book to its file now, on this thread (when the task stops).
    pub(crate) fn save_book_now(&mut self) {
        self.last_book_save = Instant::now();
        self.book_empty_when_saved = self.book.is_empty();
        if let Some(path) = &self.book_path
            && let Err(e) = self.book.save(path)
        {
            warn!(path = %path.display(), error = %e, "cannot save the address book");
        }
    }

    /// While there are fewer outbound connections than the target, dials peers from the book.
    fn dial_from_book(&mut self) {
        let mut want = self
            .outbound_target
            .saturating_sub(self.outbound_count() + self.book_dials.len());
        // A few picks may name peers already connected or dialled: try a bounded number.
        let mut tries = want * 3;
        let now = Instant::now();
        let wall = unix_now();
        while want > 0 && tries > 0 {
            tries -= 1;
            let Some(pick) = self.book.pick_address(BOOK_BIAS_TOWARDS_NEW) else {
                return;
            };
            // Not a peer we are connected or dialling to, nor a fixed peer (dialled by its own
            // routine), nor one we dropped for misbehaving whose score has not recovered yet,
            // nor one whose failed attempts still hold it back.
            if self.connected.contains_key(&pick.peer)
                || self.book_dials.contains(&pick.peer)
                || pick.addrs.is_empty()
                || self.is_fixed(&pick.peer)
                || self.reputation.score(&pick.peer, now) <= DISCONNECT_SCORE
                || self.backing_off(&pick.peer, wall)
            {
                continue;
            }
            self.dial_book_peer(pick);
            want -= 1;
        }
    }

    /// Whether `peer`'s failed attempts hold it back at `wall` (see [`book_dial_backoff`]).
    fn backing_off(&self, peer: &PeerId, wall: u64) -> bool {
        self.book.get(peer).is_some_and(|e| {
            e.last_attempt
                .is_some_and(|t| wall.saturating_sub(t) < book_dial_backoff(e.attempts).as_secs())
        })
    }

    /// Dials a peer picked from the book, counting the attempt there.
    fn dial_book_peer(&mut self, pick: cairn_peers::PeerAddrs) -> bool {
        self.book.mark_attempt(&pick.peer, unix_now());
        let opts = DialOpts::peer_id(pick.peer)
            .addresses(pick.addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.book_dials.insert(pick.peer);
                true
            }
            Err(e) => {
                debug!(peer = %pick.peer, error = %e, "dial from the address book not started");
                false
            }
        }
    }

    /// While short of outbound peers and of addresses: asks a connected bootstrap node as often
    /// as it may be asked, and one other connected peer per [`PEX_ROUND_INTERVAL`].
    fn ask_for_addrs(&mut self, now: Instant) {
        if !self.book.need_more_addrs() || self.outbound_count() >= self.outbound_target {
            return;
        }
        // A bootstrap node is asked as often as it may be (we connected to it for that).
        let fixed: Vec<PeerId> = self
            .connected
            .keys()
            .filter(|p| self.is_fixed(p))
            .copied()
            .collect();
        for peer in fixed {
            self.ask(peer, now);
        }
        if now.duration_since(self.last_pex_round) < PEX_ROUND_INTERVAL {
            return;
        }
        self.last_pex_round = now;
        // One other peer not asked within PEX_ASK_INTERVAL (`pex_asked` holds only that span:
        // see `housekeeping`); the map's order is arbitrary, and asked peers drop out of the
        // choice, so the rounds go round the peers.
        if let Some(peer) = self
            .connected
            .keys()
            .find(|p| !self.pex_asked.contains_key(p) && !self.is_fixed(p))
            .copied()
        {
            self.ask(peer, now);
        }
    }

    /// Asks `peer` for addresses unless it was asked less than [`PEX_MIN_ASK_INTERVAL`] ago.
    pub(crate) fn ask(&mut self, peer: PeerId, now: Instant) {
        if self
            .pex_asked
            .get(&peer)
            .is_some_and(|t| now.duration_since(*t) < PEX_MIN_ASK_INTERVAL)
        {
            return;
        }
        self.pex_asked.insert(peer, now);
        let max = u32::try_from(cairn_pex::MAX_PEERS_PER_MESSAGE).unwrap_or(u32::MAX);
        self.swarm
            .behaviour_mut()
            .pex
            .send_request(&peer, cairn_pex::Request::GetAddrs { max });
    }

    /// A new connection: an outbound peer is asked for addresses at once when the book needs
    /// more (and always by a seed, which dialled it to crawl).
    pub(crate) fn pex_on_connected(&mut self, peer: PeerId, direction: Direction) {
        if direction == Direction::Outbound
            && (self.seed_mode || self.book.need_more_addrs() || self.dht.needs_nodes())
        {
            self.ask(peer, Instant::now());
        }
    }

    pub(crate) fn pex_event(
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
                let answer = self.answer(peer, request);
                debug!(%peer, peers = answer.peers.len(), book = self.book.size(), "address request answered");
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
                self.take_addrs(peer, response);
                if self.seed_mode {
                    // Crawled: nothing more to do with this peer.
                    self.seed_hang_up(peer);
                }
            }
            Event::OutboundFailure { peer, error, .. } => {
                // Not asked again before PEX_MIN_ASK_INTERVAL: a peer that fails requests is
                // not worth hammering.
                debug!(%peer, %error, "address request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "address request from a peer failed");
            }
            Event::ResponseSent { peer, .. } => {
                if self.seed_mode
                    && self
                        .connected
                        .get(&peer)
                        .is_some_and(|c| c.answered && c.identified)
                {
                    self.seed_hang_up(peer);
                }
            }
        }
    }

    /// The answer to a request from `peer`.
    fn answer(&mut self, peer: PeerId, request: cairn_pex::Request) -> cairn_pex::Addrs {
        let now = Instant::now();
        if let Some(c) = self.connected.get_mut(&peer) {
            c.answered = true;
        }
        match request {
            cairn_pex::Request::Push(_) => {
                // Address lists are taken only as answers to our requests.
                self.report(peer, PeerAction::LowTolerance, "unsolicited address list");
                cairn_pex::Addrs::default()
            }
            cairn_pex::Request::GetAddrs { max } => {
                let last = self.pex_served.insert(peer, now);
                let Some(last) = last.filter(|t| now.duration_since(*t) < PEX_MIN_REQUEST_INTERVAL)
                else {
                    return self.selection_for(peer, max);
                };
                // Too soon: nothing, whichever connection it came on. A penalty only when the
                // earlier request came on this same connection: a node that restarted (and so
                // forgot when it last asked) asks again at once, and repeated restarts got it
                // banned.
                let since = self.connected.get(&peer).map(|c| c.since);
                if since.is_none_or(|since| last >= since) {
                    self.report(peer, PeerAction::MidTolerance, "address requests too often");
                }
                cairn_pex::Addrs::default()
            }
        }
    }

    /// Puts the addresses `peer` sent us into the book.
    fn take_addrs(&mut self, peer: PeerId, addrs: cairn_pex::Addrs) {
        let Some(from) = self.connected.get(&peer).map(|c| c.info.address.clone()) else {
            return;
        };
        if let Some(record) = addrs.dht_record {
            self.dht.offer(peer, ip_of(&from), record);
        }
        let src = Source::Peer {
            id: peer,
            addr: from,
        };
        let now = unix_now();
        let mut added = 0usize;
        for p in addrs.peers {
            for addr in &p.addrs {
                if self.book.add_address(p.peer, addr, &src, now).is_ok() {
                    added += 1;
                }
            }
        }
        debug!(%peer, added, "addresses from a peer");
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
        let selection = self.book.get_selection_for(audience);
        // Our own DHT record, so a peer that reached us by a libp2p address alone can join the
        // DHT through us (see `dht_link`).
        pex_answer(selection, peer, max, self.dht.local_record())
    }

    /// A peer identified itself. A seed hangs up on a peer it has answered once it knows where
    /// that peer listens.
    pub(crate) fn on_identified(&mut self, peer: PeerId) {
        if let Some(c) = self.connected.get_mut(&peer) {
            c.identified = true;
            if self.seed_mode && c.answered {
                self.seed_hang_up(peer);
            }
        }
    }

    /// A seed is done with `peer`: it hangs up after [`SEED_HANG_UP_GRACE`] (persistent peers
    /// excepted).
    fn seed_hang_up(&mut self, peer: PeerId) {
        if self.is_persistent(&peer) {
            return;
        }
        if let Some(c) = self.connected.get_mut(&peer)
            && c.hang_up_at.is_none()
        {
            debug!(%peer, "seed: done with peer");
            c.hang_up_at = Some(Instant::now() + SEED_HANG_UP_GRACE);
        }
    }

    /// A seed closes connections it is done with, and those older than
    /// [`SEED_MAX_CONNECTION_AGE`].
    fn seed_disconnects(&mut self, now: Instant) {
        let over: Vec<PeerId> = self
            .connected
            .values()
            .filter(|c| {
                c.hang_up_at.is_some_and(|t| now >= t)
                    || now.duration_since(c.since) >= SEED_MAX_CONNECTION_AGE
            })
            .map(|c| c.info.peer)
            .filter(|p| !self.is_persistent(p))
            .collect();
        for peer in over {
            self.hang_up(peer);
        }
    }

    /// A seed's crawl round: dial the book peers tried least recently; each is asked for
    /// addresses when connected and hung up on when it answers.
    fn seed_crawl(&mut self, wall: u64) {
        let picks = self
            .book
            .crawl_candidates(SEED_CRAWL_BATCH, wall, SEED_RECRAWL_SECS);
        let mut dialled = 0usize;
        for pick in picks {
            if self.connected.contains_key(&pick.peer) || self.book_dials.contains(&pick.peer) {
                continue;
            }
            if self.dial_book_peer(pick) {
                dialled += 1;
            }
        }
        debug!(dialled, book = self.book.size(), "seed: crawl round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first start's book is written soon after it learns its first peers (a node killed in
    /// its first two minutes kept nothing before); otherwise every two minutes.
    #[test]
    fn a_book_that_learns_its_first_peers_is_saved_soon() {
        let s = Duration::from_secs;
        // Empty at the last save and now: nothing to write until the interval.
        assert!(!book_save_due(s(60), true, true));
        assert!(book_save_due(s(120), true, true));
        // Empty then, peers now: after the short delay.
        assert!(!book_save_due(s(9), true, false));
        assert!(book_save_due(s(10), true, false));
        // Peers then (a loaded book): the interval only.
        assert!(!book_save_due(s(10), false, false));
        assert!(!book_save_due(s(119), false, false));
        assert!(book_save_due(s(120), false, false));
    }

    #[test]
    fn a_persistent_peer_that_hangs_up_at_once_is_redialled_less_and_less_often() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let t0 = Instant::now();
        let mut f = FixedPeer::new(key.public().to_peer_id(), addr, true, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            // Connected, and dropped a moment later (a peer that banned us).
            f.on_connected(now);
            now += Duration::from_millis(50);
            f.on_disconnected(now);
            delays.push(f.next_attempt - now);
            now = f.next_attempt;
        }
        assert_eq!(delays, [1, 2, 4, 8, 16].map(Duration::from_secs));
        // A connection that lasted starts the backoff again from the minimum.
        f.on_connected(now);
        now += FIXED_STABLE_CONNECTION;
        f.on_disconnected(now);
        assert_eq!(f.next_attempt - now, FIXED_BACKOFF_MIN);
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Review found that the addresses a peer announces in identify went into the book as our
    /// own (`Source::Local`): the private-address rule, which only looks at what peers tell
    /// us, did not apply, and every inbound identity landed in the buckets of the `Ourselves`
    /// group. They are now the peer's word, heard at the connection's remote address.
    #[test]
    fn identified_addresses_are_the_peers_word() {
        let me = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let mut book = AddrBook::with_seed(cairn_peers::Config::new(me), 1);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        // A public inbound peer advertising its LAN and loopback addresses besides its public
        // one: only the public one is kept.
        let public_remote = ma("/ip4/8.8.8.8/tcp/51234");
        let listen = [
            ma("/ip4/10.0.0.7/tcp/4001"),
            ma("/ip4/127.0.0.1/tcp/4001"),
            ma("/ip4/8.8.8.8/tcp/4001"),
        ];
        let kept = add_identified_addrs(&mut book, peer, Some(&public_remote), &listen, 10);
        assert_eq!(kept, 1);
        assert_eq!(
            book.get(&peer).unwrap().addrs,
            vec![ma("/ip4/8.8.8.8/tcp/4001")]
        );

        // A peer on our LAN (or this machine) may give its private addresses.
        let lan = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let kept = add_identified_addrs(
            &mut book,
            lan,
            Some(&ma("/ip4/10.0.0.9/tcp/40000")),
            &[ma("/ip4/10.0.0.9/tcp/4001")],
            10,
        );
        assert_eq!(kept, 1);

        // No connection to say where it spoke from: nothing is taken.
        let gone = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert_eq!(add_identified_addrs(&mut book, gone, None, &listen, 10), 0);
        assert!(!book.contains(&gone));
    }

    fn new_peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// A valid multiaddr of exactly `len` (134 or more) bytes, distinct per `tag`: a DNS name
    /// padded to length (code, a 2-byte length, the name, then `/tcp/1` in 3 bytes).
    fn long_addr(len: usize, tag: usize) -> Multiaddr {
        let prefix = format!("{tag}-");
        let pad = "a".repeat(len - 6 - prefix.len());
        let a = ma(&format!("/dns4/{prefix}{pad}/tcp/1"));
        assert_eq!(a.to_vec().len(), len);
        a
    }

    /// Review: our book keeps addresses up to 320 bytes, a cairn peer refused a whole answer
    /// with one over `cairn_pex::MAX_ADDR_BYTES`, and 250 full entries could pass
    /// `cairn_pex::MAX_RESPONSE_BYTES`. The answer leaves out addresses over the wire limit
    /// (and peers left with none), and stops adding entries before the encoded answer would
    /// pass the frame limit; what it sends decodes whole.
    #[test]
    fn pex_answers_fit_what_a_cairn_peer_reads() {
        let requester = new_peer();
        let (mixed, only_long) = (new_peer(), new_peer());
        let short = ma("/ip4/8.8.8.8/tcp/4001");
        let selection = vec![
            cairn_peers::PeerAddrs {
                peer: mixed,
                addrs: vec![long_addr(300, 0), short.clone()],
            },
            cairn_peers::PeerAddrs {
                peer: only_long,
                addrs: vec![long_addr(300, 1)],
            },
            cairn_peers::PeerAddrs {
                peer: requester,
                addrs: vec![short.clone()],
            },
        ];
        let answer = pex_answer(selection, requester, 250, Some(vec![7; 100]));
        assert_eq!(
            answer.peers,
            vec![cairn_pex::PeerAddrs {
                peer: mixed,
                addrs: vec![short],
            }]
        );
        assert_eq!(cairn_pex::Addrs::decode(&answer.encode()).unwrap(), answer);

        // 250 peers with 8 addresses of the largest size the wire takes would be ~530 KB.
        let full: Vec<cairn_peers::PeerAddrs> = (0..cairn_pex::MAX_PEERS_PER_MESSAGE)
            .map(|i| cairn_peers::PeerAddrs {
                peer: new_peer(),
                addrs: (0..cairn_pex::MAX_ADDRS_PER_PEER)
                    .map(|j| long_addr(cairn_pex::MAX_ADDR_BYTES, i * 10 + j))
                    .collect(),
            })
            .collect();
        let record = vec![7; cairn_pex::MAX_DHT_RECORD_BYTES];
        let answer = pex_answer(full, requester, 250, Some(record.clone()));
        let encoded = answer.encode();
        assert!(
            encoded.len() <= cairn_pex::MAX_RESPONSE_BYTES,
            "{} bytes",
            encoded.len()
        );
        assert_eq!(cairn_pex::Addrs::decode(&encoded).unwrap(), answer);
        assert_eq!(answer.dht_record, Some(record));
        // It stopped only when the next entry would not fit (each is about 2 KiB).
        assert!(
            encoded.len() > cairn_pex::MAX_RESPONSE_BYTES - 3 * 1024,
            "{} bytes",
            encoded.len()
        );
    }

    #[test]
    fn book_dial_backoff_doubles_to_its_cap() {
        assert_eq!(book_dial_backoff(0), Duration::ZERO);
        assert_eq!(book_dial_backoff(1), Duration::from_secs(2));
        assert_eq!(book_dial_backoff(3), Duration::from_secs(8));
        assert_eq!(book_dial_backoff(9), Duration::from_secs(512));
        assert_eq!(book_dial_backoff(10), BOOK_DIAL_BACKOFF_MAX);
        assert_eq!(book_dial_backoff(u32::MAX), BOOK_DIAL_BACKOFF_MAX);
    }
}
