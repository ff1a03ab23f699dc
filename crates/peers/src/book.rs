//! The address book itself: entries, new and old buckets, placement, eviction, bans, selection.
//!
//! See the crate docs for the design and how each rule relates to CometBFT. Invariants, checked
//! after every operation by the property test at the bottom of this file:
//!
//! * every entry is in 1 to [`MAX_NEW_BUCKETS_PER_PEER`] distinct new buckets, or in exactly one
//!   old bucket, and each of those buckets lists it exactly once;
//! * every peer listed in a bucket has an entry of that bucket's kind naming that bucket;
//! * no bucket holds more than its size; `n_new` and `n_old` count the entries of each kind;
//! * every entry has 1 to [`MAX_ADDRS_PER_PEER`] addresses; no banned peer has an entry; there
//!   are at most [`MAX_BANS`] bans and at most [`MAX_WRONG_ADDRS`] wrong addresses.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    hash::Hasher as _,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;

use crate::{
    error::AddrBookError,
    group::{NetGroup, Reach, Routability, is_public, network_group, reach, validate},
    params::{
        GET_SELECTION_PERCENT, MAX_ADDRS_PER_PEER, MAX_BANS, MAX_FAILURES, MAX_GET_SELECTION,
        MAX_NEW_BUCKETS_PER_PEER, MAX_OLD_FAILURES, MAX_WRONG_ADDRS, MIN_BAD_SECS,
        MIN_GET_SELECTION, MIN_OLD_BAD_SECS, MISSING_SECS, NEED_ADDRESS_THRESHOLD,
        NEW_BUCKET_COUNT, NEW_BUCKET_SIZE, NEW_BUCKETS_PER_SOURCE_GROUP, NUM_RETRIES,
        OLD_BUCKET_COUNT, OLD_BUCKET_SIZE, OLD_BUCKETS_PER_GROUP, RECENT_ATTEMPT_SECS,
    },
};

/// Length of the bucket placement key: SipHash-2-4 takes 128 bits (CometBFT: 96 bits).
pub(crate) const KEY_LEN: usize = 16;

/// Settings of a book.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Our own id: never added (CometBFT `AddOurAddress` / `ErrAddrBookSelf`).
    pub local_peer_id: PeerId,
    /// Which addresses are accepted; see [`Routability`] (default
    /// [`Routability::AllowLocal`]).
    pub routability: Routability,
    /// Peers that are kept and can be picked for dialling but are never given to anyone in a
    /// selection (`--private-peer-id`).
    pub private_peer_ids: HashSet<PeerId>,
}

impl Config {
    /// Defaults for the node `local_peer_id`: [`Routability::AllowLocal`], no private peers.
    pub fn new(local_peer_id: PeerId) -> Self {
        Config {
            local_peer_id,
            routability: Routability::default(),
            private_peer_ids: HashSet::new(),
        }
    }

    /// Sets the routability mode.
    pub fn with_routability(mut self, routability: Routability) -> Self {
        self.routability = routability;
        self
    }

    /// Adds peers that must never be gossiped.
    pub fn with_private_peer_ids(mut self, ids: impl IntoIterator<Item = PeerId>) -> Self {
        self.private_peer_ids.extend(ids);
        self
    }
}

/// Who told us about an address. Its network group decides which new buckets the address can
/// land in, so everything one source group says shares a bounded part of the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// We add it ourselves: configuration, bootstrap list, a dial we were asked to make (CometBFT
    /// uses our own address as the source then).
    Local,
    /// A peer told us (a PEX reply, or an inbound peer's own address).
    Peer {
        /// The peer.
        id: PeerId,
        /// The address we are connected to it on (the connection's remote address).
        addr: Multiaddr,
    },
}

/// Who a selection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A requester on a public address: only public addresses are given.
    Public,
    /// A requester on a loopback or private address (same machine or LAN): every address is
    /// given. Private peer ids are left out either way.
    Local,
}

/// Which table an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketKind {
    /// Heard of, never connected to (or demoted).
    New,
    /// Connected to successfully ([`AddrBook::mark_good`]).
    Old,
}

/// A peer and the addresses to reach it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddrs {
    /// The peer.
    pub peer: PeerId,
    /// Its addresses (at most [`MAX_ADDRS_PER_PEER`]).
    pub addrs: Vec<Multiaddr>,
}

/// What [`AddrBook::add_address`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The peer was unknown; it is now in one new bucket.
    Added,
    /// The peer was known: the address was new to it, or it went into one more new bucket, or
    /// both.
    Updated {
        /// The address was appended to the peer's list.
        addr_added: bool,
        /// The peer went into one more new bucket.
        bucket_added: bool,
    },
    /// Nothing changed: the address was known, or the peer is old (addresses from gossip are
    /// not added to peers we have connected to), or its list is full, and no extra bucket was
    /// drawn.
    Unchanged,
}

/// What [`AddrBook::remove_address`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrRemoval {
    /// The peer is not in the book, or the address is not one of its addresses.
    NotHeld,
    /// The address was dropped; the peer keeps this many others.
    Removed {
        /// Addresses the peer still has (at least one).
        left: usize,
    },
    /// It was the peer's last address: the peer left the book.
    LastAddress,
}

/// What the book knows about one peer (a copy, for display and decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its addresses, the first one the primary: once we connected, the address we last
    /// connected to (the one old-bucket placement used).
    pub addrs: Vec<Multiaddr>,
    /// New or old.
    pub kind: BucketKind,
    /// How many buckets it is in (1..=4 for new, 1 for old).
    pub buckets: usize,
    /// Connection attempts since the last success.
    pub attempts: u32,
    /// When it entered the book (Unix seconds).
    pub added: u64,
    /// When it was last announced to us (Unix seconds).
    pub last_seen: u64,
    /// Last connection attempt (Unix seconds).
    pub last_attempt: Option<u64>,
    /// Last successful connection (Unix seconds).
    pub last_success: Option<u64>,
}

/// Counts for display (`cairn peers`, the debug API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Peers in new buckets.
    pub new: usize,
    /// Peers in old buckets.
    pub old: usize,
    /// Bans held (including expired ones not yet lifted by [`AddrBook::lift_expired_bans`]).
    pub banned: usize,
    /// Wrong addresses remembered ([`AddrBook::remove_address`]; including ended ones not yet
    /// swept by [`AddrBook::lift_expired_bans`]).
    pub wrong_addrs: usize,
}

/// One peer in the book (CometBFT `knownAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// 1..=MAX_ADDRS_PER_PEER validated addresses, without `/p2p/` suffix; the first is primary
    /// (the address [`AddrBook::mark_good`] last reached the peer on, once it did).
    pub(crate) addrs: Vec<Multiaddr>,
    /// Network group of the first source (used again when the entry is demoted or reinstated).
    pub(crate) src_group: NetGroup,
    pub(crate) kind: BucketKind,
    /// Bucket indices in the table of `kind`.
    pub(crate) buckets: Vec<usize>,
    pub(crate) attempts: u32,
    pub(crate) added: u64,
    pub(crate) last_seen: u64,
    pub(crate) last_attempt: Option<u64>,
    pub(crate) last_success: Option<u64>,
}

impl Entry {
    fn new(addr: Multiaddr, src_group: NetGroup, now: u64) -> Self {
        Entry {
            addrs: vec![addr],
            src_group,
            kind: BucketKind::New,
            buckets: Vec::new(),
            attempts: 0,
            added: now,
            last_seen: now,
            last_attempt: None,
            last_success: None,
        }
    }

    /// CometBFT `knownAddress.isBad`. A new entry is bad when, not having been attempted in the
    /// last minute, it
    /// 1. has been neither announced nor attempted for [`MISSING_SECS`] (CometBFT looks at the
    ///    last attempt only, with a TODO to use "last seen"; we do),
    /// 2. has failed [`NUM_RETRIES`] times and never succeeded, or
    /// 3. has failed [`MAX_FAILURES`] times and not succeeded for [`MIN_BAD_SECS`].
    ///
    /// An old entry is bad when, not attempted in the last minute, it has failed
    /// [`MAX_OLD_FAILURES`] times since a success over [`MIN_OLD_BAD_SECS`] old (CometBFT's
    /// book never judges an old entry bad, but its reactor marks an address bad after
    /// `maxAttemptsToDial` failed dials). btcd's "claims to be from the future" does not apply:
    /// every time here is our own, none comes from a peer.
    pub(crate) fn is_bad(&self, now: u64) -> bool {
        if self
            .last_attempt
            .is_some_and(|t| now.saturating_sub(t) < RECENT_ATTEMPT_SECS)
        {
            return false;
        }
        if self.kind == BucketKind::Old {
            return self.attempts >= MAX_OLD_FAILURES
                && self
                    .last_success
                    .is_none_or(|t| now.saturating_sub(t) > MIN_OLD_BAD_SECS);
        }
        let last_heard = self.last_seen.max(self.last_attempt.unwrap_or(0));
        if now.saturating_sub(last_heard) > MISSING_SECS {
            return true;
        }
        if self.last_success.is_none() && self.attempts >= NUM_RETRIES {
            return true;
        }
        self.attempts >= MAX_FAILURES
            && self
                .last_success
                .is_none_or(|t| now.saturating_sub(t) > MIN_BAD_SECS)
    }

    /// The age used to pick a new entry to drop from a full bucket: the last attempt, or when it
    /// was added (CometBFT initialises `LastAttempt` to the time of adding).
    fn new_age_key(&self) -> u64 {
        self.last_attempt.unwrap_or(self.added)
    }

    /// The age used to pick an old entry to demote from a full bucket: the last success
    /// (CometBFT uses the last attempt; a failing attempt should not make an entry look fresh).
    fn old_age_key(&self) -> u64 {
        self.last_success.unwrap_or(self.added)
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            addrs: self.addrs.clone(),
            kind: self.kind,
            buckets: self.buckets.len(),
            attempts: self.attempts,
            added: self.added,
            last_seen: self.last_seen,
            last_attempt: self.last_attempt,
            last_success: self.last_success,
        }
    }
}

/// A ban, with the entry it removed from the book (to reinstate when the ban ends, as CometBFT's
/// `ReinstateBadPeers` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ban {
    pub(crate) until: u64,
    /// The removed entry, with no buckets.
    pub(crate) entry: Option<Entry>,
}

/// The address book. Pure state: no I/O except [`AddrBook::save`] and [`AddrBook::load`], no
/// clock (every method that needs the time takes `now` in Unix seconds), no locking (the owner
/// wraps it as it needs).
pub struct AddrBook {
    pub(crate) config: Config,
    /// Random per-book key of the placement hash, persisted with the book.
    pub(crate) key: [u8; KEY_LEN],
    pub(crate) entries: HashMap<PeerId, Entry>,
    pub(crate) new_buckets: Vec<Vec<PeerId>>,
    pub(crate) old_buckets: Vec<Vec<PeerId>>,
    pub(crate) n_new: usize,
    pub(crate) n_old: usize,
    pub(crate) bans: HashMap<PeerId, Ban>,
    /// (peer, address) pairs where another identity answered, refused until the time given
    /// (Unix seconds). Not saved.
    pub(crate) wrong_addrs: HashMap<(PeerId, Multiaddr), u64>,
    rng: StdRng,
}

impl fmt::Debug for AddrBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out: knowing it lets an attacker aim at buckets.
        f.debug_struct("AddrBook")
            .field("local_peer_id", &self.config.local_peer_id)
            .field("routability", &self.config.routability)
            .field("new", &self.n_new)
            .field("old", &self.n_old)
            .field("bans", &self.bans.len())
            .finish_non_exhaustive()
    }
}

impl AddrBook {
    /// An empty book with a fresh random key.
    pub fn new(config: Config) -> Self {
        let mut rng = StdRng::from_os_rng();
        let key = rng.random();
        Self::with_key_and_rng(config, key, rng)
    }

    /// An empty book whose key and random choices all come from `seed`: for tests and
    /// simulations only (a predictable key lets an attacker aim at buckets).
    pub fn with_seed(config: Config, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let key = rng.random();
        Self::with_key_and_rng(config, key, rng)
    }

    pub(crate) fn with_key(config: Config, key: [u8; KEY_LEN]) -> Self {
        Self::with_key_and_rng(config, key, StdRng::from_os_rng())
    }

    fn with_key_and_rng(config: Config, key: [u8; KEY_LEN], rng: StdRng) -> Self {
        AddrBook {
            config,
            key,
            entries: HashMap::new(),
            new_buckets: vec![Vec::new(); NEW_BUCKET_COUNT],
            old_buckets: vec![Vec::new(); OLD_BUCKET_COUNT],
            n_new: 0,
            n_old: 0,
            bans: HashMap::new(),
            wrong_addrs: HashMap::new(),
            rng,
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---------------------------------------------------------------- adding and marking

    /// Adds `addr` for `peer`, heard from `src` (CometBFT `AddAddress`).
    ///
    /// * Refused: our own id, a banned peer (a ban that has ended is lifted first), an address
    ///   that is not a dialable address of `peer`, an address where another identity answered
    ///   until its time ends ([`AddrBook::remove_address`]), and a non-public address the
    ///   [`Routability`] mode does not allow.
    /// * An unknown peer goes into the new bucket chosen by the keyed hash of the address's and
    ///   the source's network groups.
    /// * A known new peer gets the address appended (up to [`MAX_ADDRS_PER_PEER`]; an address
    ///   from the peer itself or from us takes the last one's place in a full list) and, with
    ///   probability `1 / (2 * buckets)`, one more new bucket (up to
    ///   [`MAX_NEW_BUCKETS_PER_PEER`]), as CometBFT does.
    /// * A known old peer is left alone (CometBFT: gossip must not move a peer we have
    ///   connected to), except that an address the peer itself gave us, or we add ourselves, is
    ///   appended to its list.
    ///
    /// When the target bucket is full, a bad entry in it is dropped, or else the oldest.
    pub fn add_address(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        src: &Source,
        now: u64,
    ) -> Result<AddOutcome, AddrBookError> {
        let addr = validate(addr, &peer)?;
        if peer == self.config.local_peer_id {
            return Err(AddrBookError::OwnId);
        }
        if let Some(ban) = self.bans.get(&peer) {
            if ban.until > now {
                return Err(AddrBookError::Banned { until: ban.until });
            }
            self.lift_ban(&peer, now);
        }
        let pair = (peer, addr);
        if let Some(&until) = self.wrong_addrs.get(&pair) {
            if until > now {
                return Err(AddrBookError::WrongAddress { until });
            }
            self.wrong_addrs.remove(&pair);
        }
        let (_, addr) = pair;
        if !is_public(&addr) {
            match self.config.routability {
                Routability::Strict => return Err(AddrBookError::NonRoutable { addr }),
                Routability::AllowLocal => {
                    if let Source::Peer { addr: src_addr, .. } = src
                        && is_public(src_addr)
                    {
                        return Err(AddrBookError::PrivateFromPublicSource { addr });
                    }
                }
            }
        }
        let src_group = self.source_group(src);
        let bucket =
            self.new_bucket_for(&network_group(&addr, self.config.routability), &src_group);

        let Some(entry) = self.entries.get_mut(&peer) else {
            self.entries.insert(peer, Entry::new(addr, src_group, now));
            self.add_to_new_bucket(peer, bucket, now);
            return Ok(AddOutcome::Added);
        };
        let mut addr_added = false;
        let first_hand =
            matches!(src, Source::Local) || matches!(src, Source::Peer { id, .. } if *id == peer);
        let may_add_addr = entry.kind == BucketKind::New || first_hand;
        if may_add_addr && !entry.addrs.contains(&addr) {
            // A full list takes an address from the peer itself, or our own, in place of its
            // last one (the newest but the list's first keeps its place): gossip filled the 8
            // slots of a peer we had not reached, and its own addresses were then refused
            // (found by review).
            if entry.addrs.len() >= MAX_ADDRS_PER_PEER && first_hand {
                entry.addrs.pop();
            }
            if entry.addrs.len() < MAX_ADDRS_PER_PEER {
                entry.addrs.push(addr);
                addr_added = true;
            }
        }
        if entry.kind == BucketKind::Old {
            return Ok(outcome(addr_added, false));
        }
        entry.last_seen = now;
        let held = entry.buckets.len();
        if held >= MAX_NEW_BUCKETS_PER_PEER || entry.buckets.contains(&bucket) {
            return Ok(outcome(addr_added, false));
        }
        // The more buckets it is in, the less likely one more: 1/2, 1/4, 1/6 (CometBFT).
        if self.rng.random_range(0..(2 * held).max(1)) != 0 {
            return Ok(outcome(addr_added, false));
        }
        self.add_to_new_bucket(peer, bucket, now);
        Ok(outcome(addr_added, true))
    }

    /// Records a connection attempt (CometBFT `MarkAttempt`). Returns `false` for an unknown
    /// peer.
    pub fn mark_attempt(&mut self, peer: &PeerId, now: u64) -> bool {
        let Some(entry) = self.entries.get_mut(peer) else {
            return false;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_attempt = Some(now);
        true
    }

    /// Takes back the attempt [`AddrBook::mark_attempt`] counted for a dial of `peer` that
    /// failed for reasons that say nothing about the peer: another peer answered at one of
    /// its addresses (which a third party may have given us), or our own limits refused the
    /// dial. Counted, such failures made a good peer "bad" and evicted it (found by review).
    /// The time of the attempt stays, so the dial is not retried at once. Returns `false` for
    /// an unknown peer.
    pub fn forgive_attempt(&mut self, peer: &PeerId) -> bool {
        let Some(entry) = self.entries.get_mut(peer) else {
            return false;
        };
        entry.attempts = entry.attempts.saturating_sub(1);
        true
    }

    /// Records a successful connection to `peer` on `addr` (the address we dialled and reached;
    /// a trailing `/p2p/<peer>` is ignored) and moves the peer to an old bucket (CometBFT
    /// `MarkGood`): attempts reset, last attempt and last success set to `now`. When that old
    /// bucket is full, the entry in it with the oldest success is moved back to a new bucket.
    /// Returns `false` for an unknown peer.
    ///
    /// `addr` becomes the peer's primary (first) address, so the old bucket is chosen from it,
    /// not from whichever address gossip put first: gossip appends addresses to a new entry, and
    /// review found that sybils in one /16, each given a fake first address in another /16,
    /// spread over most old buckets. When the list is full, its last address makes room. An
    /// `addr` the book would not accept (not a dialable address of `peer`, or one the
    /// [`Routability`] mode refuses) records the success but leaves a new peer new: it is not
    /// placed by an address nobody connected to.
    pub fn mark_good(&mut self, peer: &PeerId, addr: &Multiaddr, now: u64) -> bool {
        let connected = validate(addr, peer)
            .ok()
            .filter(|a| is_public(a) || self.config.routability == Routability::AllowLocal);
        if let Some(a) = &connected {
            self.reached(peer, a);
        }
        let Some(entry) = self.entries.get_mut(peer) else {
            return false;
        };
        entry.attempts = 0;
        entry.last_attempt = Some(now);
        entry.last_success = Some(now);
        let Some(connected) = connected else {
            return true;
        };
        if let Some(pos) = entry.addrs.iter().position(|a| *a == connected) {
            if let Some(head) = entry.addrs.get_mut(..=pos) {
                head.rotate_right(1);
            }
        } else {
            entry.addrs.truncate(MAX_ADDRS_PER_PEER - 1);
            entry.addrs.insert(0, connected);
        }
        if entry.kind == BucketKind::New {
            self.move_to_old(*peer, now);
        }
        true
    }

    /// Removes a peer (CometBFT `RemoveAddress`). Returns whether it was there.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        self.take_entry(peer).is_some()
    }

    /// Drops one address of `peer` (a trailing `/p2p/<peer>` is ignored), and the peer with it
    /// when it was the last one. The address stays refused for `peer` until `until` (Unix
    /// seconds), unless we reach the peer there meanwhile ([`AddrBook::mark_good`]).
    ///
    /// For an address that turned out not to be the peer's (another identity answered there):
    /// gossip may add addresses to a peer we have not connected to yet, so one bad address is no
    /// reason to drop the peer's good ones. The peer keeps its buckets; an old peer whose first
    /// address goes keeps its old bucket too (placement is only computed on promotion). Only
    /// the pair is refused, not the peer: a peer that learned the stale entry from us would
    /// gossip it back, but the peer's own addresses must still get in. The peer used to be
    /// banned when it was its last address, and a third party that gossiped a peer at its own
    /// address kept that peer out of the book for an hour (found by review).
    pub fn remove_address(&mut self, peer: &PeerId, addr: &Multiaddr, until: u64) -> AddrRemoval {
        let mut addr = addr.clone();
        if matches!(addr.iter().last(), Some(Protocol::P2p(id)) if id == *peer) {
            addr.pop();
        }
        let Some(entry) = self.entries.get_mut(peer) else {
            return AddrRemoval::NotHeld;
        };
        let Some(pos) = entry.addrs.iter().position(|a| *a == addr) else {
            return AddrRemoval::NotHeld;
        };
        let removal = if entry.addrs.len() == 1 {
            self.take_entry(peer);
            AddrRemoval::LastAddress
        } else {
            entry.addrs.remove(pos);
            AddrRemoval::Removed {
                left: entry.addrs.len(),
            }
        };
        self.remember_wrong(*peer, addr, until);
        removal
    }

    /// We reached `peer` at `addr` (a trailing `/p2p/<peer>` is ignored): if it was marked
    /// wrong ([`AddrBook::remove_address`]), it is the peer's after all (the peer came back
    /// there), and it is taken again at once. Called on every connection we dial, before the
    /// address goes into the book: the mark used to be cleared only for a peer still in the
    /// book, so a peer whose last address it was stayed out for the hour (found by review).
    pub fn reached(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if self.wrong_addrs.is_empty() {
            return;
        }
        let mut addr = addr.clone();
        if matches!(addr.iter().last(), Some(Protocol::P2p(id)) if id == *peer) {
            addr.pop();
        }
        self.wrong_addrs.remove(&(*peer, addr));
    }

    /// Refuses `addr` for `peer` until `until`, within [`MAX_WRONG_ADDRS`] pairs (the one
    /// ending first makes room).
    fn remember_wrong(&mut self, peer: PeerId, addr: Multiaddr, until: u64) {
        let pair = (peer, addr);
        if !self.wrong_addrs.contains_key(&pair)
            && self.wrong_addrs.len() >= MAX_WRONG_ADDRS
            && let Some(first) = self
                .wrong_addrs
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone())
        {
            self.wrong_addrs.remove(&first);
        }
        let held = self.wrong_addrs.entry(pair).or_insert(until);
        *held = (*held).max(until);
    }

    /// Removes every entry that is bad now, new or old (see the crate docs for the rules), and
    /// returns how many.
    ///
    /// CometBFT only drops bad entries when a bucket is full, so dead addresses linger
    /// (tendermint/tendermint#3532); the peer manager calls this now and then.
    pub fn remove_bad(&mut self, now: u64) -> usize {
        let bad: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_bad(now))
            .map(|(p, _)| *p)
            .collect();
        for p in &bad {
            self.take_entry(p);
        }
        bad.len()
    }

    // ---------------------------------------------------------------- bans

    /// Bans `peer` until `until` (Unix seconds) and removes it from the book (CometBFT
    /// `MarkBad`). The entry is kept with the ban and goes back into a new bucket when the ban
    /// is lifted. A peer the book does not know can be banned too (CometBFT ignores those,
    /// which leaves a misbehaving inbound peer unbanned). Banning a banned peer keeps the later
    /// end. At most [`MAX_BANS`] bans are held; beyond that the one ending first is forgotten.
    pub fn ban(&mut self, peer: PeerId, until: u64) {
        let entry = self.take_entry(&peer);
        if let Some(ban) = self.bans.get_mut(&peer) {
            ban.until = ban.until.max(until);
            if ban.entry.is_none() {
                ban.entry = entry;
            }
            return;
        }
        if self.bans.len() >= MAX_BANS {
            let first = self
                .bans
                .iter()
                .min_by_key(|(p, b)| (b.until, p.to_bytes()))
                .map(|(p, _)| *p);
            if let Some(first) = first {
                self.bans.remove(&first);
            }
        }
        self.bans.insert(peer, Ban { until, entry });
    }

    /// `true` while a ban on `peer` has not ended (CometBFT `IsBanned`).
    pub fn is_banned(&self, peer: &PeerId, now: u64) -> bool {
        self.bans.get(peer).is_some_and(|b| b.until > now)
    }

    /// When the ban on `peer` ends, if it is banned now.
    pub fn banned_until(&self, peer: &PeerId, now: u64) -> Option<u64> {
        self.bans.get(peer).map(|b| b.until).filter(|u| *u > now)
    }

    /// Lifts every ban that has ended, putting the entries they removed back into new buckets
    /// (CometBFT `ReinstateBadPeers`; CometBFT cannot reinstate a peer that was old, we put it in
    /// a new bucket like any other), and forgets wrong addresses whose time ended. Returns how
    /// many bans were lifted.
    pub fn lift_expired_bans(&mut self, now: u64) -> usize {
        let ended: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &ended {
            self.lift_ban(p, now);
        }
        self.wrong_addrs.retain(|_, until| *until > now);
        ended.len()
    }

    fn lift_ban(&mut self, peer: &PeerId, now: u64) {
        let Some(ban) = self.bans.remove(peer) else {
            return;
        };
        let Some(mut entry) = ban.entry else {
            return;
        };
        if self.entries.contains_key(peer) || *peer == self.config.local_peer_id {
            return;
        }
        entry.kind = BucketKind::New;
        entry.buckets.clear();
        let bucket = self.new_bucket_for(&self.primary_group(&entry), &entry.src_group);
        self.entries.insert(*peer, entry);
        self.add_to_new_bucket(*peer, bucket, now);
    }

    // ---------------------------------------------------------------- reading

    /// Peers in the book (new and old; bans not counted). CometBFT `Size`.
    pub fn size(&self) -> usize {
        self.n_new + self.n_old
    }

    /// `true` when the book holds no peer.
    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }

    /// `true` when the book holds fewer than [`NEED_ADDRESS_THRESHOLD`] peers: ask peers for
    /// more (CometBFT `NeedMoreAddrs`).
    pub fn need_more_addrs(&self) -> bool {
        self.size() < NEED_ADDRESS_THRESHOLD
    }

    /// Counts of new, old and banned peers.
    pub fn stats(&self) -> Stats {
        Stats {
            new: self.n_new,
            old: self.n_old,
            banned: self.bans.len(),
            wrong_addrs: self.wrong_addrs.len(),
        }
    }

    /// `true` when `peer` is in the book.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    /// What the book knows of `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.entries.get(peer).map(Entry::info)
    }

    /// `true` when `peer` is one of [`Config::private_peer_ids`].
    pub fn is_private(&self, peer: &PeerId) -> bool {
        self.config.private_peer_ids.contains(peer)
    }

    /// Picks a peer to dial (CometBFT `PickAddress`). `bias_towards_new` (0..=100, larger
    /// values are taken as 100) weighs new against old: the table is chosen with weights
    /// `sqrt(n_old) * (100 - bias)` and `sqrt(n_new) * bias`, then a random non-empty bucket of
    /// it, then a random peer in that bucket.
    ///
    /// CometBFT returns nothing when the chosen table is empty; here the other table is used,
    /// so a non-empty book always yields a peer. Private peers can be picked (dialling them is
    /// fine; only gossiping them is not).
    pub fn pick_address(&mut self, bias_towards_new: u8) -> Option<PeerAddrs> {
        if self.is_empty() {
            return None;
        }
        let bias = f64::from(bias_towards_new.min(100));
        #[allow(clippy::cast_precision_loss)] // counts are at most 20 480
        let (n_old, n_new) = (self.n_old as f64, self.n_new as f64);
        let old_weight = n_old.sqrt() * (100.0 - bias);
        let new_weight = n_new.sqrt() * bias;
        let mut pick_old = (old_weight + new_weight) * self.rng.random::<f64>() < old_weight;
        if pick_old && self.n_old == 0 || !pick_old && self.n_new == 0 {
            pick_old = !pick_old;
        }
        let buckets = if pick_old {
            &self.old_buckets
        } else {
            &self.new_buckets
        };
        let non_empty: Vec<&Vec<PeerId>> = buckets.iter().filter(|b| !b.is_empty()).collect();
        let bucket = non_empty.get(self.rng.random_range(0..non_empty.len().max(1)))?;
        let peer = bucket.get(self.rng.random_range(0..bucket.len().max(1)))?;
        let entry = self.entries.get(peer)?;
        Some(PeerAddrs {
            peer: *peer,
            addrs: entry.addrs.clone(),
        })
    }

    /// Up to `n` peers for a seed node to crawl (CometBFT `getPeersToCrawl`): those never
    /// attempted, or last attempted at least `min_interval` seconds before `now`, least recently
    /// attempted first. Private peers are included (crawling one gossips nothing).
    pub fn crawl_candidates(&self, n: usize, now: u64, min_interval: u64) -> Vec<PeerAddrs> {
        let mut due: Vec<(Option<u64>, &PeerId, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.last_attempt
                    .is_none_or(|t| now.saturating_sub(t) >= min_interval)
            })
            .map(|(p, e)| (e.last_attempt, p, e))
            .collect();
        // `None` sorts before every `Some`: never-attempted peers first.
        due.sort_unstable_by_key(|(t, p, _)| (*t, **p));
        due.into_iter()
            .take(n)
            .map(|(_, p, e)| PeerAddrs {
                peer: *p,
                addrs: e.addrs.clone(),
            })
            .collect()
    }

    /// A random selection for a PEX reply to a public requester: `get_selection_for(Public)`.
    pub fn get_selection(&mut self) -> Vec<PeerAddrs> {
        self.get_selection_for(Audience::Public)
    }

    /// A random selection for a PEX reply (CometBFT `GetSelection`): [`selection_size`] of the
    /// peers eligible for `audience`, each with the addresses `audience` may see.
    ///
    /// Private peer ids are never included; for [`Audience::Public`] only public addresses are,
    /// and a peer with none is left out. The size is computed from the eligible peers (CometBFT
    /// uses the whole book, having nothing to filter).
    pub fn get_selection_for(&mut self, audience: Audience) -> Vec<PeerAddrs> {
        let allowed = |a: &Multiaddr| audience == Audience::Local || is_public(a);
        let private = &self.config.private_peer_ids;
        let mut eligible: Vec<(&PeerId, &Entry)> = self
            .entries
            .iter()
            .filter(|(p, e)| !private.contains(p) && e.addrs.iter().any(allowed))
            .collect();
        let n = selection_size(eligible.len());
        let (chosen, _) = eligible.partial_shuffle(&mut self.rng, n);
        chosen
            .iter()
            .map(|(p, e)| PeerAddrs {
                peer: **p,
                addrs: e.addrs.iter().filter(|a| allowed(a)).cloned().collect(),
            })
            .collect()
    }

    // ---------------------------------------------------------------- placement

    /// New bucket for an address of group `addr_group` heard from a source of group
    /// `src_group` (CometBFT `calcNewBucket`):
    /// `H(key, src_group, H(key, addr_group, src_group) % 32) % 256`.
    /// One source group reaches at most [`NEW_BUCKETS_PER_SOURCE_GROUP`] buckets.
    pub(crate) fn new_bucket_for(&self, addr_group: &NetGroup, src_group: &NetGroup) -> usize {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"cairn-addrbook-new-1");
        addr_group.encode(&mut buf);
        src_group.encode(&mut buf);
        let slot = self.hash(&buf) % NEW_BUCKETS_PER_SOURCE_GROUP;
        buf.clear();
        buf.extend_from_slice(b"cairn-addrbook-new-2");
        src_group.encode(&mut buf);
        buf.extend_from_slice(&slot.to_be_bytes());
        index(self.hash(&buf), NEW_BUCKET_COUNT)
    }

    /// Old bucket for `peer` whose primary address is in `addr_group` (CometBFT
    /// `calcOldBucket`, with the peer id where CometBFT hashes the `id@ip:port` string):
    /// `H(key, addr_group, H(key, peer) % 4) % 64`. One address group reaches at most
    /// [`OLD_BUCKETS_PER_GROUP`] buckets.
    ///
    /// Hosts that are each their own group (non-public addresses under
    /// [`crate::Routability::AllowLocal`]) share the group [`NetGroup::Local`] here: one host
    /// on the local network that can take many addresses (IPv6 unique-local ones, say) was
    /// otherwise a new group for each, could fill every old bucket and push out the peers we
    /// reached on the Internet (found by review). Local peers keep the
    /// [`OLD_BUCKETS_PER_GROUP`] buckets of that group.
    pub(crate) fn old_bucket_for(&self, peer: &PeerId, addr_group: &NetGroup) -> usize {
        let addr_group = match addr_group {
            NetGroup::Host(_) => &NetGroup::Local,
            g => g,
        };
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"cairn-addrbook-old-1");
        buf.extend_from_slice(&peer.to_bytes());
        let slot = self.hash(&buf) % OLD_BUCKETS_PER_GROUP;
        buf.clear();
        buf.extend_from_slice(b"cairn-addrbook-old-2");
        addr_group.encode(&mut buf);
        buf.extend_from_slice(&slot.to_be_bytes());
        index(self.hash(&buf), OLD_BUCKET_COUNT)
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(bytes);
        h.finish()
    }

    /// The network group of a source. Like an address's, except that every non-public source
    /// is `Local` (loopback) or `Unroutable` (anything else) in both modes: a peer on our LAN can
    /// connect from as many private addresses as it likes (IPv6 especially), and must not gain
    /// 32 more new buckets with each one.
    pub(crate) fn source_group(&self, src: &Source) -> NetGroup {
        match src {
            Source::Local => NetGroup::Ourselves,
            Source::Peer { addr, .. } => match reach(addr) {
                Reach::Public => network_group(addr, self.config.routability),
                Reach::Loopback => NetGroup::Local,
                Reach::Private => NetGroup::Unroutable,
            },
        }
    }

    fn primary_group(&self, entry: &Entry) -> NetGroup {
        entry.addrs.first().map_or(NetGroup::Unroutable, |a| {
            network_group(a, self.config.routability)
        })
    }

    // ---------------------------------------------------------------- bucket moves

    /// Puts the (existing, new) entry of `peer` into new bucket `bucket`, making room first when
    /// the bucket is full (CometBFT `addToNewBucket` + `expireNew`).
    fn add_to_new_bucket(&mut self, peer: PeerId, bucket: usize, now: u64) {
        let Some(members) = self.new_buckets.get(bucket) else {
            return;
        };
        if members.len() >= NEW_BUCKET_SIZE {
            self.expire_new(bucket, now);
        }
        let Some(entry) = self.entries.get_mut(&peer) else {
            return;
        };
        if let Some(members) = self.new_buckets.get_mut(bucket) {
            members.push(peer);
            entry.buckets.push(bucket);
            if entry.buckets.len() == 1 {
                self.n_new += 1;
            }
        }
    }

    /// Drops one entry from full new bucket `bucket`: the first bad one, or else the oldest
    /// (CometBFT `expireNew`). The entry leaves the book when that was its last bucket.
    fn expire_new(&mut self, bucket: usize, now: u64) {
        let Some(members) = self.new_buckets.get(bucket) else {
            return;
        };
        let entries = &self.entries;
        let victim = members
            .iter()
            .find(|p| entries.get(p).is_some_and(|e| e.is_bad(now)))
            .or_else(|| {
                members
                    .iter()
                    .min_by_key(|p| (entries.get(p).map_or(0, Entry::new_age_key), p.to_bytes()))
            })
            .copied();
        if let Some(victim) = victim {
            self.remove_from_new_bucket(&victim, bucket);
        }
    }

    fn remove_from_new_bucket(&mut self, peer: &PeerId, bucket: usize) {
        if let Some(members) = self.new_buckets.get_mut(bucket) {
            members.retain(|p| p != peer);
        }
        let Some(entry) = self.entries.get_mut(peer) else {
            return;
        };
        entry.buckets.retain(|b| *b != bucket);
        if entry.buckets.is_empty() {
            self.entries.remove(peer);
            self.n_new -= 1;
        }
    }

    /// Promotes the new entry of `peer` to its old bucket; when that is full, the entry there
    /// with the oldest success goes back to a new bucket (CometBFT `moveToOld`).
    fn move_to_old(&mut self, peer: PeerId, now: u64) {
        let Some(entry) = self.entries.get_mut(&peer) else {
            return;
        };
        for b in std::mem::take(&mut entry.buckets) {
            if let Some(members) = self.new_buckets.get_mut(b) {
                members.retain(|p| *p != peer);
            }
        }
        entry.kind = BucketKind::Old;
        self.n_new -= 1;
        let Some(entry) = self.entries.get(&peer) else {
            return;
        };
        let bucket = self.old_bucket_for(&peer, &self.primary_group(entry));

        let full = self
            .old_buckets
            .get(bucket)
            .is_some_and(|m| m.len() >= OLD_BUCKET_SIZE);
        if full {
            let entries = &self.entries;
            let oldest = self.old_buckets.get(bucket).and_then(|m| {
                m.iter()
                    .min_by_key(|p| (entries.get(p).map_or(0, Entry::old_age_key), p.to_bytes()))
                    .copied()
            });
            if let Some(oldest) = oldest {
                self.demote(oldest, bucket, now);
            }
        }
        if let (Some(members), Some(entry)) = (
            self.old_buckets.get_mut(bucket),
            self.entries.get_mut(&peer),
        ) {
            members.push(peer);
            entry.buckets = vec![bucket];
            self.n_old += 1;
        }
    }

    /// Moves the old entry of `peer` out of old bucket `bucket` into a new bucket.
    fn demote(&mut self, peer: PeerId, bucket: usize, now: u64) {
        if let Some(members) = self.old_buckets.get_mut(bucket) {
            members.retain(|p| *p != peer);
        }
        let Some(entry) = self.entries.get_mut(&peer) else {
            return;
        };
        entry.kind = BucketKind::New;
        entry.buckets.clear();
        self.n_old -= 1;
        let Some(entry) = self.entries.get(&peer) else {
            return;
        };
        let new_bucket = self.new_bucket_for(&self.primary_group(entry), &entry.src_group);
        self.add_to_new_bucket(peer, new_bucket, now);
    }

    /// Removes `peer` from every bucket and from the book, returning its entry (bucketless).
    fn take_entry(&mut self, peer: &PeerId) -> Option<Entry> {
        let mut entry = self.entries.remove(peer)?;
        let table = match entry.kind {
            BucketKind::New => {
                self.n_new -= 1;
                &mut self.new_buckets
            }
            BucketKind::Old => {
                self.n_old -= 1;
                &mut self.old_buckets
            }
        };
        for b in std::mem::take(&mut entry.buckets) {
            if let Some(members) = table.get_mut(b) {
                members.retain(|p| p != peer);
            }
        }
        Some(entry)
    }
}

/// How many peers a selection from `eligible` peers holds: 23 % of them, at least 32 (or all of
/// them when fewer), at most 250 (CometBFT `GetSelection`).
pub fn selection_size(eligible: usize) -> usize {
    (eligible * GET_SELECTION_PERCENT / 100)
        .max(MIN_GET_SELECTION.min(eligible))
        .min(MAX_GET_SELECTION)
}

fn outcome(addr_added: bool, bucket_added: bool) -> AddOutcome {
    if addr_added || bucket_added {
        AddOutcome::Updated {
            addr_added,
            bucket_added,
        }
    } else {
        AddOutcome::Unchanged
    }
}

/// `hash % n` as an index; `n` is a bucket count, far below `u64::MAX`.
fn index(hash: u64, n: usize) -> usize {
    let n64 = u64::try_from(n).unwrap_or(u64::MAX);
    usize::try_from(hash % n64).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use libp2p::multihash::Multihash;
    use proptest::prelude::*;

    use super::*;
    use crate::group::InvalidAddr;
    use crate::params::{
        MAX_BOOK_SIZE, MAX_NEW_PEERS_PER_SOURCE_GROUP, NEW_BUCKETS_PER_SOURCE_GROUP,
    };

    /// A deterministic peer id (a sha2-256 multihash of `n`).
    pub(crate) fn peer(n: u64) -> PeerId {
        let mut digest = [0xa5u8; 32];
        digest[..8].copy_from_slice(&n.to_be_bytes());
        PeerId::from_multihash(Multihash::wrap(0x12, &digest).unwrap()).unwrap()
    }

    pub(crate) fn local_id() -> PeerId {
        peer(u64::MAX)
    }

    pub(crate) fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    pub(crate) fn ip4(a: u8, b: u8, c: u8, d: u8) -> Multiaddr {
        ma(&format!("/ip4/{a}.{b}.{c}.{d}/tcp/4001"))
    }

    /// A source peer `n` connected from a public address in the /16 `a.b`.
    pub(crate) fn src(n: u64, a: u8, b: u8) -> Source {
        Source::Peer {
            id: peer(1_000_000 + n),
            addr: ip4(a, b, 9, 9),
        }
    }

    pub(crate) fn book() -> AddrBook {
        AddrBook::with_seed(Config::new(local_id()), 7)
    }

    /// [`AddrBook::mark_good`] on the peer's first address (a dial that reached it there);
    /// `false` for an unknown peer.
    pub(crate) fn good(book: &mut AddrBook, p: &PeerId, now: u64) -> bool {
        let Some(addr) = book.get(p).and_then(|i| i.addrs.first().cloned()) else {
            return book.mark_good(p, &ip4(1, 1, 1, 1), now);
        };
        book.mark_good(p, &addr, now)
    }

    #[test]
    fn crawl_candidates_are_the_least_recently_attempted_not_crawled_lately() {
        let mut b = book();
        for n in 0..5 {
            b.add_address(peer(n), &ip4(20 + n as u8, 1, 1, 1), &src(1, 1, 2), 100)
                .unwrap();
        }
        b.mark_attempt(&peer(0), 1000);
        b.mark_attempt(&peer(1), 900);
        b.mark_attempt(&peer(2), 1190);
        // At 1200 with a 60 s minimum: peer 2 was attempted 10 s ago and is left out; the never
        // attempted ones (3, 4) come first, then 1 (900) before 0 (1000).
        let got: Vec<PeerId> = b
            .crawl_candidates(10, 1200, 60)
            .into_iter()
            .map(|p| p.peer)
            .collect();
        assert_eq!(got.len(), 4);
        let first: BTreeSet<PeerId> = got[..2].iter().copied().collect();
        assert_eq!(first, [peer(3), peer(4)].into_iter().collect());
        assert_eq!(&got[2..], &[peer(1), peer(0)]);
        assert_eq!(b.crawl_candidates(1, 1200, 60).len(), 1);
    }

    /// Panics unless every internal index agrees with every other (see the module docs).
    pub(crate) fn check_invariants(book: &AddrBook) {
        let (mut n_new, mut n_old) = (0, 0);
        for (p, e) in &book.entries {
            assert!(
                !e.addrs.is_empty() && e.addrs.len() <= MAX_ADDRS_PER_PEER,
                "{p}: addrs"
            );
            let distinct: BTreeSet<_> = e.buckets.iter().collect();
            assert_eq!(distinct.len(), e.buckets.len(), "{p}: a bucket twice");
            let table = match e.kind {
                BucketKind::New => {
                    n_new += 1;
                    assert!(
                        (1..=MAX_NEW_BUCKETS_PER_PEER).contains(&e.buckets.len()),
                        "{p}"
                    );
                    &book.new_buckets
                }
                BucketKind::Old => {
                    n_old += 1;
                    assert_eq!(e.buckets.len(), 1, "{p}: old in one bucket");
                    &book.old_buckets
                }
            };
            for b in &e.buckets {
                let count = table[*b].iter().filter(|q| *q == p).count();
                assert_eq!(count, 1, "{p} listed {count} times in its bucket {b}");
            }
            assert!(
                !book.bans.contains_key(p),
                "{p} both banned and in the book"
            );
            assert_ne!(*p, book.config.local_peer_id);
        }
        for (kind, table, size) in [
            (BucketKind::New, &book.new_buckets, NEW_BUCKET_SIZE),
            (BucketKind::Old, &book.old_buckets, OLD_BUCKET_SIZE),
        ] {
            for (b, members) in table.iter().enumerate() {
                assert!(members.len() <= size, "{kind:?} bucket {b} over its size");
                for p in members {
                    let e = book.entries.get(p).expect("bucket member without an entry");
                    assert_eq!(e.kind, kind, "{p} in a bucket of the other kind");
                    assert!(e.buckets.contains(&b), "{p} in bucket {b} it does not name");
                }
            }
        }
        assert_eq!(book.n_new, n_new, "n_new");
        assert_eq!(book.n_old, n_old, "n_old");
        assert_eq!(book.size(), book.entries.len());
        assert!(book.size() <= MAX_BOOK_SIZE);
        assert!(book.bans.len() <= MAX_BANS);
        assert!(book.wrong_addrs.len() <= MAX_WRONG_ADDRS);
        for ban in book.bans.values() {
            if let Some(e) = &ban.entry {
                assert!(e.buckets.is_empty());
            }
        }
    }

    /// The whole state, order-free (for comparing a book with its reloaded copy).
    #[allow(clippy::type_complexity)]
    pub(crate) fn snapshot(
        book: &AddrBook,
    ) -> (
        [u8; KEY_LEN],
        BTreeMap<String, Entry>,
        Vec<BTreeSet<String>>,
        Vec<BTreeSet<String>>,
        BTreeMap<String, Ban>,
    ) {
        let set = |m: &Vec<PeerId>| m.iter().map(|p| p.to_base58()).collect::<BTreeSet<_>>();
        (
            book.key,
            book.entries
                .iter()
                .map(|(p, e)| (p.to_base58(), e.clone()))
                .collect(),
            book.new_buckets.iter().map(set).collect(),
            book.old_buckets.iter().map(set).collect(),
            book.bans
                .iter()
                .map(|(p, b)| (p.to_base58(), b.clone()))
                .collect(),
        )
    }

    fn new_buckets_used(book: &AddrBook) -> usize {
        book.new_buckets.iter().filter(|b| !b.is_empty()).count()
    }

    // ------------------------------------------------------------------------ placement

    #[test]
    fn placement_is_deterministic_for_a_key_and_spreads_over_buckets() {
        let a = book();
        let b = AddrBook::with_key(Config::new(local_id()), a.key);
        let c = AddrBook::with_seed(Config::new(local_id()), 8);
        let groups: Vec<NetGroup> = (0..=255u8).flat_map(|x| [NetGroup::Ip4([x, 1])]).collect();
        let mut differs = 0;
        for (i, ag) in groups.iter().enumerate() {
            let sg = &groups[(i * 7 + 3) % groups.len()];
            assert_eq!(a.new_bucket_for(ag, sg), a.new_bucket_for(ag, sg));
            assert_eq!(
                a.new_bucket_for(ag, sg),
                b.new_bucket_for(ag, sg),
                "same key"
            );
            assert_eq!(
                a.old_bucket_for(&peer(i as u64), ag),
                b.old_bucket_for(&peer(i as u64), ag)
            );
            differs += usize::from(a.new_bucket_for(ag, sg) != c.new_bucket_for(ag, sg));
        }
        assert!(
            differs > 200,
            "another key, another placement ({differs}/256 differ)"
        );

        // Many (address group, source group) pairs reach nearly every new bucket.
        let mut hit = BTreeSet::new();
        for x in 0..=255u8 {
            for y in 0..8u8 {
                hit.insert(a.new_bucket_for(&NetGroup::Ip4([x, y]), &NetGroup::Ip4([y, x])));
            }
        }
        assert!(
            hit.len() >= 250,
            "2048 pairs hit only {} new buckets",
            hit.len()
        );

        // One source group: at most 32 new buckets however many address groups, but not one.
        let sg = NetGroup::Ip4([8, 8]);
        let one_source: BTreeSet<usize> = (0..=255u8)
            .flat_map(|x| (0..4u8).map(move |y| NetGroup::Ip4([x, y])))
            .map(|ag| a.new_bucket_for(&ag, &sg))
            .collect();
        assert!(one_source.len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
        assert!(
            one_source.len() >= 20,
            "one source spreads over {}",
            one_source.len()
        );

        // One address group: at most 4 old buckets however many peers.
        let ag = NetGroup::Ip4([8, 8]);
        let old: BTreeSet<usize> = (0..1000).map(|i| a.old_bucket_for(&peer(i), &ag)).collect();
        assert!(
            old.len() <= OLD_BUCKETS_PER_GROUP as usize && old.len() >= 2,
            "{old:?}"
        );
        let all_old: BTreeSet<usize> = (0..=255u8)
            .map(|x| a.old_bucket_for(&peer(u64::from(x)), &NetGroup::Ip4([x, 0])))
            .collect();
        assert!(
            all_old.len() >= 60,
            "old placement spreads: {}",
            all_old.len()
        );
    }

    /// Private hosts, each its own group under `AllowLocal`, share the old buckets of one
    /// group: however many addresses a host on the local network takes, its peers land in
    /// at most `OLD_BUCKETS_PER_GROUP` old buckets.
    #[test]
    fn private_hosts_share_one_groups_old_buckets() {
        let book = book();
        let buckets: BTreeSet<usize> = (0..2000u64)
            .map(|i| {
                let host = NetGroup::Host(format!("fd00::{i:x}"));
                book.old_bucket_for(&peer(i), &host)
            })
            .collect();
        assert!(
            buckets.len() <= OLD_BUCKETS_PER_GROUP as usize,
            "{} old buckets",
            buckets.len()
        );
        // Public groups still spread over the old buckets.
        let public: BTreeSet<usize> = (0..2000u64)
            .map(|i| book.old_bucket_for(&peer(i), &NetGroup::Ip4([(i % 200) as u8 + 1, 7])))
            .collect();
        assert!(
            public.len() > OLD_BUCKETS_PER_GROUP as usize * 4,
            "{}",
            public.len()
        );
    }

    /// The flood bound: one source sends 10,000 peers, each in its own /16. Everything it says
    /// lands in the (at most) 32 new buckets of its source group, so it holds at most
    /// 32 * 64 = 2048 peers (1/8 of the new table), and honest peers heard later from another
    /// source all get in. The same holds for a LAN peer changing its private source address.
    #[test]
    fn one_source_flooding_10000_addresses_holds_at_most_its_share() {
        let mut book = book();
        let attacker = src(1, 8, 8);
        for i in 0..10_000u32 {
            let addr = ip4(11 + (i / 250) as u8, (i % 250) as u8, 1, 1);
            book.add_address(peer(u64::from(i)), &addr, &attacker, 1_000)
                .unwrap();
        }
        check_invariants(&book);
        assert!(
            book.size() <= MAX_NEW_PEERS_PER_SOURCE_GROUP,
            "one source holds {} peers, more than its share {MAX_NEW_PEERS_PER_SOURCE_GROUP}",
            book.size()
        );
        assert!(new_buckets_used(&book) <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
        // The bound is reached, not vacuous: it fills most of its buckets.
        assert!(book.size() >= 1_000, "flood kept {} peers", book.size());

        // A peer on our LAN hopping over 10,000 private IPv6 source addresses gets no more:
        // every private source is one group.
        let mut lan = AddrBook::with_seed(Config::new(local_id()), 9);
        for i in 0..10_000u32 {
            let hop = Source::Peer {
                id: peer(2_000_000 + u64::from(i)),
                addr: ma(&format!("/ip6/fd{:02x}:{:x}::1/tcp/5000", i % 256, i)),
            };
            let addr = ip4(11 + (i / 250) as u8, (i % 250) as u8, 1, 1);
            lan.add_address(peer(u64::from(i)), &addr, &hop, 1_000)
                .unwrap();
        }
        check_invariants(&lan);
        assert!(
            lan.size() <= MAX_NEW_PEERS_PER_SOURCE_GROUP,
            "LAN source holds {}",
            lan.size()
        );

        let honest = src(2, 9, 9);
        for i in 0..100u8 {
            book.add_address(
                peer(50_000 + u64::from(i)),
                &ip4(60, i, 1, 1),
                &honest,
                2_000,
            )
            .unwrap();
        }
        check_invariants(&book);
        for i in 0..100u8 {
            assert!(
                book.contains(&peer(50_000 + u64::from(i))),
                "honest peer {i} evicted"
            );
        }
    }

    // ------------------------------------------------------------------------ adding

    #[test]
    fn add_refuses_own_id_bans_invalid_and_non_routable() {
        let mut strict = AddrBook::with_seed(
            Config::new(local_id()).with_routability(Routability::Strict),
            1,
        );
        let s = src(1, 8, 8);
        assert_eq!(
            strict.add_address(local_id(), &ip4(1, 2, 3, 4), &s, 0),
            Err(AddrBookError::OwnId)
        );
        assert!(matches!(
            strict.add_address(peer(1), &ma("/ip4/0.0.0.0/tcp/1"), &s, 0),
            Err(AddrBookError::InvalidAddress(InvalidAddr::ReservedIp(_)))
        ));
        assert!(matches!(
            strict.add_address(
                peer(1),
                &ma(&format!("/ip4/1.2.3.4/tcp/1/p2p/{}", peer(2))),
                &s,
                0
            ),
            Err(AddrBookError::InvalidAddress(InvalidAddr::OtherPeer { .. }))
        ));
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.0.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
        ] {
            assert!(matches!(
                strict.add_address(peer(1), &ma(private), &Source::Local, 0),
                Err(AddrBookError::NonRoutable { .. })
            ));
        }
        assert_eq!(
            strict.add_address(peer(1), &ip4(1, 2, 3, 4), &s, 0),
            Ok(AddOutcome::Added)
        );
        assert_eq!(strict.size(), 1);

        // AllowLocal: private addresses from us or from a private source, not from a public one.
        let mut allow = book();
        let lan_src = Source::Peer {
            id: peer(900),
            addr: ma("/ip4/192.168.1.2/tcp/5555"),
        };
        assert!(matches!(
            allow.add_address(peer(1), &ma("/ip4/10.0.0.1/tcp/1"), &s, 0),
            Err(AddrBookError::PrivateFromPublicSource { .. })
        ));
        assert!(
            allow
                .add_address(peer(1), &ma("/ip4/10.0.0.1/tcp/1"), &lan_src, 0)
                .is_ok()
        );
        assert!(
            allow
                .add_address(peer(2), &ma("/ip4/127.0.0.1/tcp/1"), &Source::Local, 0)
                .is_ok()
        );
        assert!(
            allow
                .add_address(peer(3), &ma("/memory/5"), &Source::Local, 0)
                .is_ok()
        );
        assert_eq!(allow.size(), 3);
        check_invariants(&allow);
    }

    #[test]
    fn addresses_per_peer_are_capped_and_deduplicated() {
        let mut book = book();
        let p = peer(1);
        let s = Source::Local;
        for port in 0..20u16 {
            let a = ma(&format!("/ip4/1.2.3.4/tcp/{}", 1000 + port));
            book.add_address(p, &a, &s, 0).unwrap();
            book.add_address(p, &a, &s, 0).unwrap();
        }
        let with_suffix = ma(&format!("/ip4/1.2.3.4/tcp/1000/p2p/{p}"));
        assert_eq!(
            book.add_address(p, &with_suffix, &s, 0),
            Ok(AddOutcome::Unchanged)
        );
        let info = book.get(&p).unwrap();
        assert_eq!(info.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(info.addrs[0], ma("/ip4/1.2.3.4/tcp/1000"));
        check_invariants(&book);
    }

    #[test]
    fn a_peer_heard_from_many_sources_is_in_at_most_four_new_buckets() {
        let mut book = book();
        let p = peer(1);
        for s in 0..500u16 {
            let source = src(u64::from(s), 20 + (s / 200) as u8, (s % 200) as u8);
            book.add_address(p, &ip4(1, 2, 3, 4), &source, 0).unwrap();
        }
        let info = book.get(&p).unwrap();
        assert_eq!(info.buckets, MAX_NEW_BUCKETS_PER_PEER);
        assert_eq!(book.size(), 1);
        check_invariants(&book);
    }

    // ------------------------------------------------------------------------ good, old

    #[test]
    fn mark_good_promotes_new_to_old() {
        let mut book = book();
        let p = peer(1);
        book.add_address(p, &ip4(1, 2, 3, 4), &src(1, 8, 8), 10)
            .unwrap();
        book.mark_attempt(&p, 20);
        book.mark_attempt(&p, 30);
        assert_eq!(book.get(&p).unwrap().attempts, 2);
        assert_eq!(
            book.stats(),
            Stats {
                new: 1,
                old: 0,
                banned: 0,
                wrong_addrs: 0,
            }
        );

        assert!(good(&mut book, &p, 40));
        let info = book.get(&p).unwrap();
        assert_eq!(info.kind, BucketKind::Old);
        assert_eq!(info.buckets, 1);
        assert_eq!(info.attempts, 0);
        assert_eq!((info.last_attempt, info.last_success), (Some(40), Some(40)));
        assert_eq!(
            book.stats(),
            Stats {
                new: 0,
                old: 1,
                banned: 0,
                wrong_addrs: 0,
            }
        );
        assert_eq!(new_buckets_used(&book), 0);
        check_invariants(&book);

        // Gossip does not change an old peer; the peer itself may add an address.
        let other = ip4(5, 6, 7, 8);
        assert_eq!(
            book.add_address(p, &other, &src(2, 9, 9), 50),
            Ok(AddOutcome::Unchanged)
        );
        let itself = Source::Peer {
            id: p,
            addr: ip4(1, 2, 3, 4),
        };
        assert_eq!(
            book.add_address(p, &other, &itself, 50),
            Ok(AddOutcome::Updated {
                addr_added: true,
                bucket_added: false
            })
        );
        assert_eq!(book.get(&p).unwrap().kind, BucketKind::Old);
        assert!(!good(&mut book, &peer(2), 60));
        assert!(!book.mark_attempt(&peer(2), 60));
        check_invariants(&book);
    }

    /// Review: the old bucket was chosen from the peer's first address, which gossip may have
    /// set. Sybils from one /16, each gossiped with a fake first address in another /16 and then
    /// reached on their real address (all in one /16), must share at most
    /// [`OLD_BUCKETS_PER_GROUP`] old buckets: placement follows the address we connected to.
    #[test]
    fn old_bucket_follows_the_connected_address_not_the_first_gossiped() {
        let mut book = book();
        let gossiper = Source::Peer {
            id: peer(1_000_000),
            addr: ip4(1, 7, 7, 7),
        };
        let mut old = BTreeSet::new();
        for i in 0..64u8 {
            let sybil = peer(u64::from(i));
            let fake = ip4(20 + i, i, 1, 1);
            let real = ip4(9, 9, i, 1);
            book.add_address(sybil, &fake, &gossiper, 10).unwrap();
            book.add_address(sybil, &real, &gossiper, 10).unwrap();
            // What the swarm does when a dial reaches the peer on `real`.
            let _ = book.add_address(sybil, &real, &Source::Local, 20);
            assert!(book.mark_good(&sybil, &real, 20));
            let entry = &book.entries[&sybil];
            assert_eq!(entry.kind, BucketKind::Old);
            assert_eq!(
                entry.addrs.first(),
                Some(&real),
                "the connected address is primary"
            );
            old.insert(entry.buckets[0]);
        }
        check_invariants(&book);
        assert!(
            old.len() <= OLD_BUCKETS_PER_GROUP as usize,
            "64 peers reached in one /16 spread over {} old buckets",
            old.len()
        );
    }

    /// The address a dial reached becomes the first, also when gossip never gave it (a full list
    /// drops its last to make room); an address the book refuses records the success only.
    #[test]
    fn mark_good_makes_the_connected_address_primary() {
        let mut book = AddrBook::with_seed(
            Config::new(local_id()).with_routability(Routability::Strict),
            7,
        );
        let p = peer(1);
        for host in 1..=MAX_ADDRS_PER_PEER as u8 {
            book.add_address(p, &ip4(30, 1, 1, host), &src(1, 8, 8), 0)
                .unwrap();
        }
        // Refused (private in strict mode): counted as a success, the peer stays new.
        book.mark_attempt(&p, 5);
        assert!(book.mark_good(&p, &ma("/ip4/10.0.0.1/tcp/4001"), 10));
        let info = book.get(&p).unwrap();
        assert_eq!((info.kind, info.attempts), (BucketKind::New, 0));
        assert_eq!(info.addrs.first(), Some(&ip4(30, 1, 1, 1)));

        let reached = ip4(40, 2, 2, 2);
        let with_id = reached.clone().with(Protocol::P2p(p));
        assert!(book.mark_good(&p, &with_id, 20));
        let info = book.get(&p).unwrap();
        assert_eq!(info.kind, BucketKind::Old);
        assert_eq!(info.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(info.addrs.first(), Some(&reached));
        assert!(
            !info
                .addrs
                .contains(&ip4(30, 1, 1, MAX_ADDRS_PER_PEER as u8))
        );
        assert_eq!(
            book.entries[&p].buckets,
            vec![book.old_bucket_for(&p, &NetGroup::Ip4([40, 2]))]
        );
        // Reached again on a held address: it moves to the front, the order of the rest kept.
        assert!(book.mark_good(&p, &ip4(30, 1, 1, 3), 30));
        let addrs = book.get(&p).unwrap().addrs;
        assert_eq!(&addrs[..3], &[ip4(30, 1, 1, 3), reached, ip4(30, 1, 1, 1)]);
        check_invariants(&book);
    }

    /// CometBFT `moveToOld`: promoting into a full old bucket sends that bucket's oldest entry
    /// back to a new bucket.
    #[test]
    fn full_old_bucket_moves_its_oldest_back_to_new() {
        let mut book = book();
        let group = NetGroup::Ip4([8, 8]);
        // Peers in one /16 share at most 4 old buckets: collect 65 aimed at the same one.
        let target = book.old_bucket_for(&peer(0), &group);
        let peers: Vec<PeerId> = (0..10_000)
            .map(peer)
            .filter(|p| book.old_bucket_for(p, &group) == target)
            .take(OLD_BUCKET_SIZE + 1)
            .collect();
        assert_eq!(peers.len(), OLD_BUCKET_SIZE + 1);
        for (i, p) in peers.iter().enumerate() {
            // Sources in distinct groups so new buckets never fill here.
            let s = src(i as u64, 30 + (i / 200) as u8, (i % 200) as u8);
            book.add_address(*p, &ip4(8, 8, (i / 200) as u8, (i % 200) as u8 + 1), &s, 0)
                .unwrap();
        }
        for (i, p) in peers.iter().take(OLD_BUCKET_SIZE).enumerate() {
            good(&mut book, p, 100 + i as u64);
        }
        assert_eq!(book.old_buckets[target].len(), OLD_BUCKET_SIZE);
        assert_eq!(
            book.stats(),
            Stats {
                new: 1,
                old: OLD_BUCKET_SIZE,
                banned: 0,
                wrong_addrs: 0,
            }
        );

        good(&mut book, &peers[OLD_BUCKET_SIZE], 1_000);
        check_invariants(&book);
        let first = book.get(&peers[0]).unwrap();
        assert_eq!(
            first.kind,
            BucketKind::New,
            "the oldest success went back to new"
        );
        assert_eq!(first.buckets, 1);
        assert_eq!(
            book.get(&peers[OLD_BUCKET_SIZE]).unwrap().kind,
            BucketKind::Old
        );
        assert!(book.old_buckets[target].contains(&peers[OLD_BUCKET_SIZE]));
        assert_eq!(book.old_buckets[target].len(), OLD_BUCKET_SIZE);
        assert_eq!(
            book.stats(),
            Stats {
                new: 1,
                old: OLD_BUCKET_SIZE,
                banned: 0,
                wrong_addrs: 0,
            }
        );
    }

    // ------------------------------------------------------------------------ bad, eviction

    #[test]
    fn bad_rules_follow_cometbft_is_bad() {
        const DAY: u64 = 24 * 60 * 60;
        let t0 = 100 * DAY;
        let fresh = Entry::new(ip4(1, 2, 3, 4), NetGroup::Ourselves, t0);
        assert!(!fresh.is_bad(t0));
        let with = |attempts, last_attempt, last_success| Entry {
            attempts,
            last_attempt,
            last_success,
            ..fresh.clone()
        };
        // 3 failures, never a success: bad, but not within a minute of the last attempt.
        assert!(with(3, Some(t0), None).is_bad(t0 + 61));
        assert!(!with(3, Some(t0), None).is_bad(t0 + 30));
        assert!(!with(2, Some(t0), None).is_bad(t0 + 61));
        // 10 failures and no success for a week: bad; a recent success or fewer failures: not.
        assert!(with(10, Some(t0), Some(t0 - 8 * DAY)).is_bad(t0 + 61));
        assert!(!with(10, Some(t0), Some(t0 - DAY)).is_bad(t0 + 61));
        assert!(!with(9, Some(t0), Some(t0 - 8 * DAY)).is_bad(t0 + 61));
        // Neither announced nor attempted for a week: bad; announced again: not.
        assert!(fresh.is_bad(t0 + 7 * DAY + 1));
        assert!(
            !Entry {
                last_seen: t0 + 7 * DAY,
                ..fresh.clone()
            }
            .is_bad(t0 + 7 * DAY + 1)
        );
        // Old entries: bad only after 16 failures since a success over an hour old.
        let old = |attempts, last_success| Entry {
            kind: BucketKind::Old,
            ..with(attempts, Some(t0), last_success)
        };
        assert!(old(16, Some(t0 - 2 * 60 * 60)).is_bad(t0 + 61));
        assert!(!old(16, Some(t0 - 2 * 60 * 60)).is_bad(t0 + 30));
        assert!(!old(15, Some(t0 - 30 * DAY)).is_bad(t0 + 61));
        assert!(!old(50, Some(t0 - 30 * 60)).is_bad(t0 + 61));
    }

    /// Review: old entries were never bad, so a peer we once reached and that then failed
    /// every dial for good stayed in the book (and was picked first, old peers being favoured).
    /// CometBFT gives up on an address after 16 failed dials (`maxAttemptsToDial`); here an
    /// old entry with that many failures since its last success, which is over an hour old, is
    /// swept by `remove_bad`.
    #[test]
    fn an_old_entry_that_keeps_failing_is_swept() {
        const HOUR: u64 = 60 * 60;
        let mut book = book();
        let t0 = 1_000_000;
        for i in 0..3 {
            book.add_address(peer(i), &ip4(1, i as u8, 1, 1), &src(i, 8, 8), t0)
                .unwrap();
            assert!(good(&mut book, &peer(i), t0));
        }
        // peer 0: 16 failures over two hours; peer 1: 15; peer 2: 16, but reached since.
        for n in 0..16 {
            let t = t0 + 60 + n * 7 * 60;
            book.mark_attempt(&peer(0), t);
            if n < 15 {
                book.mark_attempt(&peer(1), t);
            }
            book.mark_attempt(&peer(2), t);
        }
        let later = t0 + 2 * HOUR + 60;
        assert!(good(&mut book, &peer(2), later - HOUR / 2));
        for _ in 0..16 {
            book.mark_attempt(&peer(2), later - 120);
        }
        assert_eq!(book.remove_bad(later), 1);
        assert!(
            !book.contains(&peer(0)),
            "an old peer failing for good stays"
        );
        assert!(book.contains(&peer(1)));
        assert!(
            book.contains(&peer(2)),
            "a peer reached half an hour ago went"
        );
        check_invariants(&book);
    }

    /// CometBFT `expireNew`: a full new bucket drops a bad entry first, else the oldest.
    #[test]
    fn full_new_bucket_drops_a_bad_entry_first_then_the_oldest() {
        let mut book = book();
        let s = src(1, 8, 8);
        // One address group and one source group: one bucket.
        let addr = |i: u64| ip4(20, 1, (i / 250) as u8, (i % 250) as u8 + 1);
        for i in 0..NEW_BUCKET_SIZE as u64 {
            book.add_address(peer(i), &addr(i), &s, 1_000 + i).unwrap();
        }
        assert_eq!(new_buckets_used(&book), 1);
        assert_eq!(book.size(), NEW_BUCKET_SIZE);

        // Peer 10 fails three times: bad. Peer 0 is the oldest but not bad.
        for t in [2_000, 2_001, 2_002] {
            book.mark_attempt(&peer(10), t);
        }
        book.add_address(peer(100), &addr(100), &s, 2_100).unwrap();
        check_invariants(&book);
        assert!(!book.contains(&peer(10)), "the bad entry goes first");
        assert!(book.contains(&peer(0)));
        assert!(book.contains(&peer(100)));

        // No bad entry left: the oldest goes.
        book.add_address(peer(101), &addr(101), &s, 2_200).unwrap();
        check_invariants(&book);
        assert!(!book.contains(&peer(0)), "then the oldest");
        assert!(book.contains(&peer(1)));
        assert_eq!(book.size(), NEW_BUCKET_SIZE);
    }

    /// One address that is not the peer's goes alone; the last one takes the peer with it.
    #[test]
    fn remove_address_drops_one_address_and_the_peer_with_its_last() {
        let mut book = book();
        let p = peer(1);
        let (a, b) = (ip4(1, 2, 3, 4), ip4(5, 6, 7, 8));
        book.add_address(p, &a, &src(1, 8, 8), 0).unwrap();
        book.add_address(p, &b, &src(2, 9, 9), 0).unwrap();
        assert_eq!(
            book.remove_address(&p, &ip4(9, 9, 9, 9), 1),
            AddrRemoval::NotHeld
        );
        assert_eq!(
            book.remove_address(&peer(2), &a, 1),
            AddrRemoval::NotHeld,
            "unknown peer"
        );
        // The swarm reports the dialled address with the expected peer's id appended.
        let a_p2p = a.clone().with(Protocol::P2p(p));
        assert_eq!(
            book.remove_address(&p, &a_p2p, 1),
            AddrRemoval::Removed { left: 1 }
        );
        check_invariants(&book);
        assert_eq!(book.get(&p).unwrap().addrs, vec![b.clone()]);
        // An old peer too.
        good(&mut book, &p, 1);
        book.add_address(p, &a, &Source::Local, 2).unwrap();
        assert_eq!(
            book.remove_address(&p, &b, 3),
            AddrRemoval::Removed { left: 1 }
        );
        check_invariants(&book);
        assert_eq!(book.get(&p).unwrap().kind, BucketKind::Old);
        assert_eq!(book.remove_address(&p, &a, 3), AddrRemoval::LastAddress);
        check_invariants(&book);
        assert!(!book.contains(&p));
        assert_eq!(book.size(), 0);
    }

    /// Gossip that filled a peer's address list does not keep out the addresses the peer gives
    /// itself: one takes the place of the list's last.
    #[test]
    fn a_peers_own_address_gets_into_a_list_gossip_filled() {
        let mut book = book();
        let p = peer(1);
        for i in 0..MAX_ADDRS_PER_PEER as u8 {
            book.add_address(p, &ip4(9, 9, 9, i), &src(2, 9, 9), 0)
                .unwrap();
        }
        let own = ip4(5, 6, 7, 8);
        // More gossip changes nothing.
        book.add_address(p, &ip4(9, 9, 8, 1), &src(3, 9, 9), 1)
            .unwrap();
        assert!(!book.get(&p).unwrap().addrs.contains(&ip4(9, 9, 8, 1)));
        let itself = Source::Peer {
            id: p,
            addr: ip4(5, 6, 7, 8),
        };
        assert!(matches!(
            book.add_address(p, &own, &itself, 2),
            Ok(AddOutcome::Updated {
                addr_added: true,
                ..
            })
        ));
        let addrs = book.get(&p).unwrap().addrs;
        assert_eq!(addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(addrs.first(), Some(&ip4(9, 9, 9, 0)), "the first moved");
        assert_eq!(addrs.last(), Some(&own));
        check_invariants(&book);
    }

    /// A wrong address stays out for the peer until its time ends, gossiped back or not; the
    /// peer itself does not: its other addresses get in at once, though the wrong one was its
    /// last (a third party gossiping a peer at the third party's own address used to get the
    /// peer banned for an hour). Reaching the peer there clears the mark.
    #[test]
    fn a_wrong_address_is_refused_for_a_while_and_its_peer_is_not() {
        let mut book = book();
        let p = peer(1);
        let (wrong, own) = (ip4(1, 2, 3, 4), ip4(5, 6, 7, 8));
        let gossip = src(2, 9, 9);
        book.add_address(p, &wrong, &gossip, 0).unwrap();
        assert_eq!(
            book.remove_address(&p, &wrong, 100),
            AddrRemoval::LastAddress
        );
        assert!(!book.is_banned(&p, 1));
        assert_eq!(book.stats().wrong_addrs, 1);
        assert_eq!(
            book.add_address(p, &wrong, &gossip, 50),
            Err(AddrBookError::WrongAddress { until: 100 })
        );
        // With its `/p2p/` suffix too.
        let wrong_p2p = wrong.clone().with(Protocol::P2p(p));
        assert!(book.add_address(p, &wrong_p2p, &gossip, 50).is_err());
        assert_eq!(
            book.add_address(p, &own, &gossip, 50),
            Ok(AddOutcome::Added),
            "the peer is kept out"
        );
        check_invariants(&book);
        // Once its time ends the address is taken again, and the mark is swept.
        assert!(matches!(
            book.add_address(p, &wrong, &gossip, 100),
            Ok(AddOutcome::Updated {
                addr_added: true,
                ..
            })
        ));
        assert_eq!(book.stats().wrong_addrs, 0);
        // Reaching the peer at a marked address clears the mark at once.
        book.remove_address(&p, &wrong, 1_000);
        assert_eq!(book.stats().wrong_addrs, 1);
        book.mark_good(&p, &wrong, 200);
        assert_eq!(book.stats().wrong_addrs, 0);
        assert!(book.add_address(p, &wrong, &Source::Local, 201).is_ok());
        check_invariants(&book);
        // Reaching the peer at the address that was its last clears the mark too, though
        // the peer has left the book.
        book.remove(&p);
        book.add_address(p, &own, &gossip, 400).unwrap();
        book.remove_address(&p, &own, 1_000);
        assert!(!book.contains(&p));
        book.reached(&p, &own.clone().with(Protocol::P2p(p)));
        assert!(book.add_address(p, &own, &Source::Local, 401).is_ok());
        book.remove(&p);
        book.add_address(p, &own, &gossip, 402).unwrap();
        // Ended marks go when bans are lifted.
        book.remove_address(&p, &own, 300);
        assert_eq!(book.stats().wrong_addrs, 1);
        book.lift_expired_bans(299);
        assert_eq!(book.stats().wrong_addrs, 1);
        book.lift_expired_bans(300);
        assert_eq!(book.stats().wrong_addrs, 0);
    }

    /// At most `MAX_WRONG_ADDRS` pairs are remembered; the one ending first makes room.
    #[test]
    fn wrong_addresses_are_bounded() {
        let mut book = book();
        let p = peer(1);
        let extra = 3;
        for i in 0..(MAX_WRONG_ADDRS + extra) as u64 {
            let a = ip4(1, 2, (i >> 8) as u8, i as u8);
            book.add_address(p, &a, &Source::Local, 0).unwrap();
            book.remove_address(&p, &a, 1_000 + i);
            check_invariants(&book);
        }
        assert_eq!(book.stats().wrong_addrs, MAX_WRONG_ADDRS);
        let ends: Vec<u64> = book.wrong_addrs.values().copied().collect();
        assert_eq!(
            ends.iter().min(),
            Some(&(1_000 + extra as u64)),
            "not the first ending went"
        );
    }

    #[test]
    fn remove_bad_sweeps_failing_entries() {
        let mut book = book();
        for i in 0..10 {
            book.add_address(peer(i), &ip4(1, i as u8, 1, 1), &src(i, 8, 8), 0)
                .unwrap();
        }
        good(&mut book, &peer(0), 1);
        for t in 0..5 {
            book.mark_attempt(&peer(0), 10 + t); // old, 5 failures: not bad
            book.mark_attempt(&peer(1), 10 + t); // new, never succeeded: bad
        }
        book.mark_attempt(&peer(2), 10); // one failure: not bad
        assert_eq!(book.remove_bad(1_000), 1);
        assert!(!book.contains(&peer(1)));
        assert_eq!(book.size(), 9);
        assert!(book.remove(&peer(2)));
        assert!(!book.remove(&peer(2)));
        assert_eq!(book.size(), 8);
        check_invariants(&book);
    }

    // ------------------------------------------------------------------------ bans

    #[test]
    fn ban_removes_refuses_and_expires() {
        let mut book = book();
        let (p, a, s) = (peer(1), ip4(1, 2, 3, 4), src(1, 8, 8));
        book.add_address(p, &a, &s, 0).unwrap();
        good(&mut book, &p, 5);
        book.ban(p, 1_000);
        check_invariants(&book);
        assert!(!book.contains(&p));
        assert!(book.is_banned(&p, 999));
        assert_eq!(book.banned_until(&p, 999), Some(1_000));
        assert_eq!(
            book.stats(),
            Stats {
                new: 0,
                old: 0,
                banned: 1,
                wrong_addrs: 0,
            }
        );
        assert_eq!(
            book.add_address(p, &a, &s, 999),
            Err(AddrBookError::Banned { until: 1_000 })
        );
        // A later ban extends it, an earlier one does not shorten it.
        book.ban(p, 2_000);
        book.ban(p, 1_500);
        assert_eq!(book.banned_until(&p, 0), Some(2_000));
        assert_eq!(book.lift_expired_bans(1_999), 0);

        assert!(!book.is_banned(&p, 2_000));
        assert_eq!(book.lift_expired_bans(2_000), 1);
        let info = book.get(&p).expect("reinstated");
        assert_eq!(info.kind, BucketKind::New, "reinstated as new");
        assert_eq!(info.addrs, vec![a.clone()]);
        assert_eq!(
            book.stats(),
            Stats {
                new: 1,
                old: 0,
                banned: 0,
                wrong_addrs: 0,
            }
        );
        check_invariants(&book);

        // A peer the book never had can be banned; adding after the end lifts the ban.
        let q = peer(2);
        book.ban(q, 3_000);
        assert!(book.is_banned(&q, 2_999));
        assert!(matches!(
            book.add_address(q, &a, &s, 2_999),
            Err(AddrBookError::Banned { .. })
        ));
        assert_eq!(book.add_address(q, &a, &s, 3_000), Ok(AddOutcome::Added));
        assert_eq!(book.stats().banned, 0);
        check_invariants(&book);
    }

    #[test]
    fn bans_are_bounded_and_forget_the_one_ending_first() {
        let mut book = book();
        for i in 0..(MAX_BANS + 10) as u64 {
            book.ban(peer(i), 10_000 + (i * 7919) % 100_000);
        }
        assert_eq!(book.stats().banned, MAX_BANS);
        let mut ends: Vec<u64> = (0..(MAX_BANS + 10) as u64)
            .map(|i| 10_000 + (i * 7919) % 100_000)
            .collect();
        ends.sort_unstable();
        let cut = ends[10];
        for i in 0..(MAX_BANS + 10) as u64 {
            let until = 10_000 + (i * 7919) % 100_000;
            assert_eq!(
                book.is_banned(&peer(i), 0),
                until >= cut,
                "ban {i} ending {until}"
            );
        }
    }

    // ------------------------------------------------------------------------ selection

    #[test]
    fn selection_size_is_23_percent_at_least_32_at_most_250() {
        for (n, want) in [
            (0, 0),
            (1, 1),
            (31, 31),
            (32, 32),
            (100, 32),
            (139, 32),
            (140, 32),
            (200, 46),
            (1_000, 230),
            (1_086, 249),
            (1_087, 250),
            (2_000, 250),
            (20_000, 250),
        ] {
            assert_eq!(selection_size(n), want, "book of {n}");
        }
    }

    fn spread_book(n: u64) -> AddrBook {
        let mut book = book();
        for i in 0..n {
            let s = src(i, 20 + (i / 250) as u8, (i % 250) as u8);
            book.add_address(
                peer(i),
                &ip4(60 + (i / 250) as u8, (i % 250) as u8, 1, 1),
                &s,
                0,
            )
            .unwrap();
        }
        book
    }

    #[test]
    fn selections_have_the_right_size_and_are_random() {
        for n in [0, 10, 100, 1_000, 3_000] {
            let mut book = spread_book(n);
            let size = book.size();
            assert!(size as u64 >= n * 95 / 100, "book of {n} kept {size}");
            let sel = book.get_selection();
            assert_eq!(sel.len(), selection_size(size), "book of {size}");
            let distinct: BTreeSet<_> = sel.iter().map(|s| s.peer).collect();
            assert_eq!(distinct.len(), sel.len(), "no peer twice");
            assert!(
                sel.iter()
                    .all(|s| book.contains(&s.peer) && !s.addrs.is_empty())
            );
        }
        let mut book = spread_book(1_000);
        let a: BTreeSet<_> = book.get_selection().into_iter().map(|s| s.peer).collect();
        let b: BTreeSet<_> = book.get_selection().into_iter().map(|s| s.peer).collect();
        assert_ne!(a, b, "two selections from 1000 peers differ");
    }

    #[test]
    fn selections_keep_private_addresses_and_private_ids_from_public_requesters() {
        let private_ids: Vec<PeerId> = (300..305).map(peer).collect();
        let mut book = AddrBook::with_seed(
            Config::new(local_id()).with_private_peer_ids(private_ids.clone()),
            3,
        );
        let public_src = src(1, 8, 8);
        for i in 0..10 {
            book.add_address(peer(i), &ip4(1, i as u8, 1, 1), &public_src, 0)
                .unwrap();
        }
        for i in 100..110 {
            let a = ma(&format!("/ip4/127.0.0.{}/tcp/4001", i - 99));
            book.add_address(peer(i), &a, &Source::Local, 0).unwrap();
        }
        for i in 200..205 {
            book.add_address(peer(i), &ip4(2, i as u8, 1, 1), &Source::Local, 0)
                .unwrap();
            book.add_address(peer(i), &ma("/ip4/192.168.1.1/tcp/4001"), &Source::Local, 0)
                .unwrap();
        }
        for p in &private_ids {
            book.add_address(*p, &ip4(3, 3, 3, 3), &public_src, 0)
                .unwrap();
        }
        assert_eq!(book.size(), 30);
        assert!(book.is_private(&private_ids[0]));

        // Public requester: 15 eligible (10 public + 5 mixed), all given (fewer than 32).
        let public = book.get_selection_for(Audience::Public);
        assert_eq!(public.len(), 15);
        for s in &public {
            assert!(
                !private_ids.contains(&s.peer),
                "private id {} gossiped",
                s.peer
            );
            assert!(
                s.addrs.iter().all(is_public),
                "non-public address to a public peer"
            );
        }
        let mixed = public
            .iter()
            .find(|s| s.peer == peer(200))
            .expect("mixed peer given");
        assert_eq!(mixed.addrs, vec![ip4(2, 200, 1, 1)]);
        assert_eq!(book.get_selection().len(), 15);

        // Local requester: loopback peers and private addresses too, still no private ids.
        let local = book.get_selection_for(Audience::Local);
        assert_eq!(local.len(), 25);
        assert!(local.iter().all(|s| !private_ids.contains(&s.peer)));
        assert!(local.iter().any(|s| s.peer == peer(100)));
        let mixed = local.iter().find(|s| s.peer == peer(200)).unwrap();
        assert_eq!(mixed.addrs.len(), 2);

        // Dialling a private peer is fine: it can be picked.
        let picked: BTreeSet<PeerId> = (0..2_000)
            .filter_map(|_| book.pick_address(50))
            .map(|p| p.peer)
            .collect();
        assert!(private_ids.iter().any(|p| picked.contains(p)));
    }

    #[test]
    fn pick_address_follows_the_bias() {
        let mut book = book();
        assert_eq!(book.pick_address(50), None);
        for i in 0..200 {
            book.add_address(peer(i), &ip4(1, i as u8, 1, 1), &src(i, 8, i as u8), 0)
                .unwrap();
        }
        // Only new peers: even a bias of 0 (all old) yields a peer (CometBFT: none).
        assert!(book.pick_address(0).is_some());
        for i in 0..100 {
            good(&mut book, &peer(i), 1);
        }
        assert_eq!(
            book.stats(),
            Stats {
                new: 100,
                old: 100,
                banned: 0,
                wrong_addrs: 0,
            }
        );
        for _ in 0..200 {
            let p = book.pick_address(100).unwrap();
            assert_eq!(book.get(&p.peer).unwrap().kind, BucketKind::New);
            let p = book.pick_address(0).unwrap();
            assert_eq!(book.get(&p.peer).unwrap().kind, BucketKind::Old);
            assert_eq!(p.addrs, book.get(&p.peer).unwrap().addrs);
        }
        let news = (0..2_000)
            .filter(|_| {
                let p = book.pick_address(50).unwrap();
                book.get(&p.peer).unwrap().kind == BucketKind::New
            })
            .count();
        assert!(
            (800..1_200).contains(&news),
            "bias 50 with equal tables: {news} / 2000 new"
        );
        assert!(!book.need_more_addrs() || book.size() < 1_000);
    }

    // ------------------------------------------------------------------------ property

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            peer: u64,
            group: u8,
            host: u8,
            source: u8,
        },
        Good {
            peer: u64,
            host: u8,
        },
        Attempt(u64),
        Remove(u64),
        WrongAddr {
            peer: u64,
            host: u8,
            secs: u64,
        },
        Ban {
            peer: u64,
            secs: u64,
        },
        LiftBans,
        RemoveBad,
        Tick(u64),
    }

    const UNIVERSE: u64 = 400;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0..UNIVERSE, prop_oneof![9 => Just(0u8), 1 => Just(1u8)], 0..4u8, 0..3u8)
                .prop_map(|(peer, group, host, source)| Op::Add { peer, group, host, source }),
            5 => (0..UNIVERSE, 0..5u8).prop_map(|(peer, host)| Op::Good { peer, host }),
            3 => (0..UNIVERSE).prop_map(Op::Attempt),
            1 => (0..UNIVERSE).prop_map(Op::Remove),
            1 => (0..UNIVERSE, 0..4u8, 1..5_000u64)
                .prop_map(|(peer, host, secs)| Op::WrongAddr { peer, host, secs }),
            1 => (0..UNIVERSE, 1..5_000u64).prop_map(|(peer, secs)| Op::Ban { peer, secs }),
            1 => Just(Op::LiftBans),
            1 => Just(Op::RemoveBad),
            1 => (1..20_000u64).prop_map(Op::Tick),
        ]
    }

    /// Few address groups (one in ten adds uses the second) and sources (us and two peers), so
    /// at most 6 new buckets (384 slots, 192 for nine adds in ten) take 400 peers: new buckets
    /// fill up and evict, and peers sit in several new buckets. Three quarters of the universe
    /// are peers whose old bucket for the first group is one and the same, so old buckets
    /// overflow and demote too. Time moves by up to 5.5 hours a step, so entries go bad late in
    /// a long sequence.
    fn universe(book: &AddrBook) -> Vec<PeerId> {
        let group = NetGroup::Ip4([20, 1]);
        let target = book.old_bucket_for(&peer(0), &group);
        let mut same_old_bucket = (0..)
            .map(peer)
            .filter(|p| book.old_bucket_for(p, &group) == target);
        (0..UNIVERSE)
            .map(|i| match i % 4 {
                3 => peer(100_000 + i),
                _ => same_old_bucket.next().unwrap(),
            })
            .collect()
    }

    fn apply(book: &mut AddrBook, universe: &[PeerId], op: &Op, now: &mut u64) {
        let at = |i: u64| universe[i as usize];
        match *op {
            Op::Add {
                peer: p,
                group,
                host,
                source,
            } => {
                let addr = ip4(20 + group, 1, host, 1);
                let src = match source {
                    0 => Source::Local,
                    s => Source::Peer {
                        id: peer(10_000 + u64::from(s)),
                        addr: ip4(40 + s, 1, 1, 1),
                    },
                };
                match book.add_address(at(p), &addr, &src, *now) {
                    Ok(_) => {}
                    Err(
                        AddrBookError::Banned { until } | AddrBookError::WrongAddress { until },
                    ) => assert!(until > *now),
                    Err(e) => panic!("unexpected refusal: {e}"),
                }
            }
            Op::Good { peer: p, host } => {
                // Hosts 0..4 are the ones adds use; host 4 is an address nobody gossiped.
                book.mark_good(&at(p), &ip4(20, 1, host, 1), *now);
            }
            Op::Attempt(p) => {
                book.mark_attempt(&at(p), *now);
            }
            Op::Remove(p) => {
                book.remove(&at(p));
            }
            Op::WrongAddr {
                peer: p,
                host,
                secs,
            } => {
                book.remove_address(&at(p), &ip4(20, 1, host, 1), *now + secs);
            }
            Op::Ban { peer: p, secs } => book.ban(at(p), *now + secs),
            Op::LiftBans => {
                book.lift_expired_bans(*now);
            }
            Op::RemoveBad => {
                book.remove_bad(*now);
            }
            Op::Tick(secs) => *now += secs,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Any sequence of operations keeps the indexes consistent: every peer in 1..=4 new
        /// buckets or exactly one old bucket, every bucket member pointing back, counts right;
        /// and the state reached reloads unchanged from a saved file.
        #[test]
        fn any_sequence_keeps_the_indexes_consistent(
            ops in proptest::collection::vec(op(), 100..3_000),
            seed in any::<u64>(),
        ) {
            let mut book = AddrBook::with_seed(Config::new(local_id()), seed);
            let universe = universe(&book);
            let mut now = 1_000_000;
            for op in &ops {
                apply(&mut book, &universe, op, &mut now);
                check_invariants(&book);
            }
            for p in &universe {
                prop_assert!(!(book.contains(p) && book.is_banned(p, now)));
            }
            // Whatever state the sequence reached, it survives a save and a load unchanged.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("addrbook.json");
            book.save(&path).unwrap();
            let (loaded, outcome) = AddrBook::load(&path, Config::new(local_id()), now);
            let clean = matches!(outcome, crate::LoadOutcome::Loaded { dropped: 0, .. });
            prop_assert!(clean, "reload: {:?}", outcome);
            prop_assert!(snapshot(&loaded) == snapshot(&book));
        }
    }
}
