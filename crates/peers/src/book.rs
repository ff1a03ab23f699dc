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
//!   are at most [`MAX_BANS`] bans.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    hash::Hasher as _,
};

use libp2p::{Multiaddr, PeerId};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;

use crate::{
    error::AddrBookError,
    group::{NetGroup, Routability, is_public, network_group, validate},
    params::{
        GET_SELECTION_PERCENT, MAX_ADDRS_PER_PEER, MAX_BANS, MAX_FAILURES, MAX_GET_SELECTION,
        MAX_NEW_BUCKETS_PER_PEER, MIN_BAD_SECS, MIN_GET_SELECTION, MISSING_SECS,
        NEED_ADDRESS_THRESHOLD, NEW_BUCKET_COUNT, NEW_BUCKET_SIZE, NEW_BUCKETS_PER_SOURCE_GROUP,
        NUM_RETRIES, OLD_BUCKET_COUNT, OLD_BUCKET_SIZE, OLD_BUCKETS_PER_GROUP, RECENT_ATTEMPT_SECS,
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

/// What the book knows about one peer (a copy, for display and decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its addresses, the first one the primary (the one old-bucket placement uses).
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
}

/// One peer in the book (CometBFT `knownAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// 1..=MAX_ADDRS_PER_PEER validated addresses, without `/p2p/` suffix; the first is primary.
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
    /// Old entries are never bad. btcd's "claims to be from the future" does not apply: every
    /// time here is our own, none comes from a peer.
    pub(crate) fn is_bad(&self, now: u64) -> bool {
        if self.kind == BucketKind::Old {
            return false;
        }
        if self
            .last_attempt
            .is_some_and(|t| now.saturating_sub(t) < RECENT_ATTEMPT_SECS)
        {
            return false;
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
    ///   that is not a dialable address of `peer`, and a non-public address the
    ///   [`Routability`] mode does not allow.
    /// * An unknown peer goes into the new bucket chosen by the keyed hash of the address's and
    ///   the source's network groups.
    /// * A known new peer gets the address appended (up to [`MAX_ADDRS_PER_PEER`]) and, with
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
        let may_add_addr = entry.kind == BucketKind::New
            || matches!(src, Source::Local)
            || matches!(src, Source::Peer { id, .. } if *id == peer);
        if may_add_addr && !entry.addrs.contains(&addr) && entry.addrs.len() < MAX_ADDRS_PER_PEER {
            entry.addrs.push(addr);
            addr_added = true;
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

    /// Records a successful connection and moves the peer to an old bucket (CometBFT
    /// `MarkGood`): attempts reset, last attempt and last success set to `now`. When that old
    /// bucket is full, the entry in it with the oldest success is moved back to a new bucket.
    /// Returns `false` for an unknown peer.
    pub fn mark_good(&mut self, peer: &PeerId, now: u64) -> bool {
        let Some(entry) = self.entries.get_mut(peer) else {
            return false;
        };
        entry.attempts = 0;
        entry.last_attempt = Some(now);
        entry.last_success = Some(now);
        if entry.kind == BucketKind::New {
            self.move_to_old(*peer, now);
        }
        true
    }

    /// Removes a peer (CometBFT `RemoveAddress`). Returns whether it was there.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        self.take_entry(peer).is_some()
    }

    /// Removes every new entry that is bad now (see the crate docs for the rules) and returns
    /// how many.
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
    /// a new bucket like any other). Returns how many bans were lifted.
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
    pub(crate) fn old_bucket_for(&self, peer: &PeerId, addr_group: &NetGroup) -> usize {
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

    pub(crate) fn source_group(&self, src: &Source) -> NetGroup {
        match src {
            Source::Local => NetGroup::Ourselves,
            Source::Peer { addr, .. } => network_group(addr, self.config.routability),
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
