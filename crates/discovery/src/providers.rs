//! Provider records that other nodes stored with us (ADD_PROVIDER), kept in memory with the
//! reference's limits (codex-protocol.md §7.4), generic over the record type `R`.
//!
//! Reference: nim-codex-dht `codexdht/private/eth/p2p/discoveryv5/providers/manager.nim`
//! (`DefaultProviderTTL`, `add`, `get`) and `providers/cache.nim` (`MaxProvidersEntries`,
//! `MaxProvidersPerEntry`, an LRU of keys each holding an LRU of providers by PeerId).
//!
//! # Rules
//!
//! * Per content key, one record per provider `PeerId`: a provider's new record takes the place
//!   of its old one.
//! * **The record with the higher seq wins.** A higher seq replaces the record and restarts its
//!   [`PROVIDER_TTL`]; an equal seq (the provider announcing again) keeps the record and restarts
//!   the TTL; a lower seq changes nothing. The reference means to do this ("keeps the existing
//!   one if its seqNo is ≥ the new one") but its guard never fires: `getProvByKey` fails whenever
//!   a record exists (an inverted length check), so every ADD_PROVIDER overwrites, and a replayed
//!   old record replaces a newer one (dht-verified.md, correction 4).
//! * A record expires [`PROVIDER_TTL`] after it was stored or last refreshed; expired records are
//!   never returned and count as absent. [`ProviderStore::expire`] frees their memory; the
//!   service calls it every [`crate::service::PROVIDER_EXPIRY_INTERVAL`]. The reference's
//!   in-memory cache does not look at the TTL at all; only its persistent store is cleaned,
//!   once a day.
//! * At most [`MAX_PROVIDERS_PER_KEY`] providers per key. A new provider for a full key drops
//!   one of the **most crowded source group** ([`SourceGroup`]: the /24 or /48 its announcement
//!   came from, counting the newcomer), of those the one stored or refreshed longest ago. The
//!   reference drops the least recently stored of all (its LRU), so 200 identities made up on
//!   one host, announcing a key, pushed every honest provider of it out (found by review);
//!   here they only replace each other, and a provider from another network keeps its place.
//!   Providers spread over as many networks as the key has places still can; that takes
//!   addresses, not key pairs. When every provider and the newcomer come from groups of their
//!   own, this is the reference's order.
//! * **Room is taken from the heaviest providers** (not reference limits; found by review).
//!   The reference's key LRU lets one identity replace every record a node holds: 1000
//!   announcements of made-up content ids, about 300 KB of traffic, and the content a node is
//!   among the closest for can no longer be found until its providers announce again. Here a
//!   provider's *weight* is how many records it holds (counting the one it is adding):
//!   * At most [`MAX_PROVIDER_RECORDS`] records in all: a new record when that many are held
//!     drops the oldest record of the heaviest provider (of the heaviest, the one holding the
//!     oldest record).
//!   * At most [`MAX_PROVIDER_KEYS`] keys: a new key when all are in use drops the key whose
//!     lightest provider is the heaviest (ties: the key whose newest record is the oldest).
//!     A key with one provider of ordinary weight (a dataset its uploader announces) therefore
//!     outlasts keys whose every provider holds many, which is what flooding takes.
//!
//!   A flood from one identity thus only ever replaces its own records; identities sharing the
//!   store get about equal shares of it, whatever their rate.
//! * Records are answered in the order they were first stored, not refreshed: re-announcing
//!   does not move a provider ahead of the others (an announcement every few seconds used to
//!   keep one at the head of every answer).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::ids::NodeId;

/// How long a provider record is kept after it was stored or refreshed (reference
/// `DefaultProviderTTL`, providers/manager.nim; seen as expiry = now + 24 h in dht-verified.md).
pub const PROVIDER_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Most providers kept per content key (reference `MaxProvidersPerEntry`, providers/cache.nim).
pub const MAX_PROVIDERS_PER_KEY: usize = 200;

/// Most content keys kept (reference `MaxProvidersEntries`, providers/cache.nim).
pub const MAX_PROVIDER_KEYS: usize = 1000;

/// Most records kept in all. The two limits above allow 200,000 records of up to about 2.5 KB
/// each (a record with 16 addresses, decoded), half a gigabyte (found by review); this keeps
/// the store to a few tens of megabytes. A new record when all are in use drops the oldest
/// record of the heaviest provider (module docs).
pub const MAX_PROVIDER_RECORDS: usize = 20_000;

/// Leading bits of an IPv4 source address that make its [`SourceGroup`]: a /24, the unit of
/// address space a host is usually given among others (discv5 implementations limit a table
/// bucket per /24 as well).
pub const IPV4_GROUP_BITS: u32 = 24;

/// Leading bits of an IPv6 source address that make its [`SourceGroup`]: a /48, what one site
/// is usually given (an attacker with one site has 2^16 /64s).
pub const IPV6_GROUP_BITS: u32 = 48;

/// The network an announcement came from: its source address cut to [`IPV4_GROUP_BITS`] or
/// [`IPV6_GROUP_BITS`] (an IPv4-mapped IPv6 address counts as IPv4). A loopback address is a
/// group of its own: nothing from outside the host sends from one, and local tests can then
/// stand for several networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceGroup(IpAddr);

impl SourceGroup {
    /// The group of source address `ip`.
    pub fn of(ip: IpAddr) -> SourceGroup {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() {
            return SourceGroup(ip);
        }
        SourceGroup(match ip {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from_bits(
                v4.to_bits() & (u32::MAX << (32 - IPV4_GROUP_BITS)),
            )),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(
                v6.to_bits() & (u128::MAX << (128 - IPV6_GROUP_BITS)),
            )),
        })
    }
}

/// What [`ProviderStore::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// A provider new for this key (or whose record had expired) was stored.
    Added,
    /// The provider's record was replaced by one with a higher seq; its TTL restarts.
    Updated,
    /// Same seq as the stored record: the record stays, its TTL restarts.
    Refreshed,
    /// Lower seq than the stored record: ignored.
    Stale,
}

#[derive(Clone, Debug)]
struct Stored<R> {
    seq: u64,
    record: R,
    /// When it was stored or last refreshed; it expires `ttl` later.
    stored: Instant,
    /// When this provider's record for the key was first stored (answers go in this order).
    since: Instant,
    /// Where its latest announcement came from.
    group: SourceGroup,
}

impl<R> Stored<R> {
    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.stored) >= ttl
    }
}

#[derive(Clone, Debug)]
struct KeyProviders<R> {
    providers: HashMap<PeerId, Stored<R>>,
    /// When the most recent of its records was stored or refreshed. Only ever moves forward
    /// (after a removal it may name a record that is gone); it orders keys of equal weight.
    newest: Instant,
}

/// A provider's place among all providers by weight: records held, then the oldest of them
/// (the older, the heavier), then its id. The largest is the heaviest.
type Weight = (usize, Reverse<Instant>, PeerId);

/// Provider records of others, by content key (module docs).
#[derive(Clone, Debug)]
pub struct ProviderStore<R> {
    keys: HashMap<NodeId, KeyProviders<R>>,
    /// Each provider's records, oldest stored first.
    by_provider: HashMap<PeerId, BTreeSet<(Instant, NodeId)>>,
    /// Every provider's [`Weight`].
    weights: BTreeSet<Weight>,
    max_keys: usize,
    max_per_key: usize,
    max_records: usize,
    /// Records held (expired ones not yet removed included).
    records: usize,
    ttl: Duration,
}

impl<R: Clone> Default for ProviderStore<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Clone> ProviderStore<R> {
    /// An empty store with the reference's limits: [`MAX_PROVIDER_KEYS`],
    /// [`MAX_PROVIDERS_PER_KEY`], [`PROVIDER_TTL`].
    pub fn new() -> Self {
        Self::with_limits(MAX_PROVIDER_KEYS, MAX_PROVIDERS_PER_KEY, PROVIDER_TTL)
    }

    /// An empty store with other limits (tests, configuration). A limit of 0 is raised to 1.
    pub fn with_limits(max_keys: usize, max_per_key: usize, ttl: Duration) -> Self {
        ProviderStore {
            keys: HashMap::new(),
            by_provider: HashMap::new(),
            weights: BTreeSet::new(),
            max_keys: max_keys.max(1),
            max_per_key: max_per_key.max(1),
            max_records: MAX_PROVIDER_RECORDS,
            records: 0,
            ttl,
        }
    }

    /// The same store with at most `max_records` records in all (at least one).
    pub fn with_max_records(mut self, max_records: usize) -> Self {
        self.max_records = max_records.max(1);
        self
    }

    /// Stores `provider`'s record (sequence number `seq`) for content `key`, announced from
    /// `group` and received at `now` (rules in the module docs).
    pub fn add(
        &mut self,
        key: NodeId,
        provider: PeerId,
        seq: u64,
        record: R,
        group: SourceGroup,
        now: Instant,
    ) -> AddOutcome {
        let ttl = self.ttl;
        if let Some(s) = self
            .keys
            .get_mut(&key)
            .and_then(|k| k.providers.get_mut(&provider))
        {
            let outcome = if s.expired(now, ttl) {
                AddOutcome::Added
            } else if seq > s.seq {
                AddOutcome::Updated
            } else if seq == s.seq {
                AddOutcome::Refreshed
            } else {
                return AddOutcome::Stale;
            };
            if outcome != AddOutcome::Refreshed {
                s.seq = seq;
                s.record = record;
            }
            if outcome == AddOutcome::Added {
                s.since = now;
            }
            s.group = group;
            let before = std::mem::replace(&mut s.stored, now);
            self.reindex(provider, key, Some(before), Some(now));
            if let Some(k) = self.keys.get_mut(&key) {
                k.newest = k.newest.max(now);
            }
            return outcome;
        }

        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            self.drop_heaviest_key(provider);
        }
        // Room for a new record (each round frees one).
        while self.records >= self.max_records && !self.keys.is_empty() {
            self.drop_heaviest_record(provider);
        }
        if let Some(p) = self.crowded_out(&key, group) {
            self.remove_record(&key, &p);
        }
        let entry = self.keys.entry(key).or_insert_with(|| KeyProviders {
            providers: HashMap::new(),
            newest: now,
        });
        entry.providers.insert(
            provider,
            Stored {
                seq,
                record,
                stored: now,
                since: now,
                group,
            },
        );
        entry.newest = entry.newest.max(now);
        self.records += 1;
        self.reindex(provider, key, None, Some(now));
        AddOutcome::Added
    }

    /// Moves `provider`'s record for `key` in the indexes from `before` (its stored time, or
    /// none: a new record) to `after` (none: removed).
    fn reindex(
        &mut self,
        provider: PeerId,
        key: NodeId,
        before: Option<Instant>,
        after: Option<Instant>,
    ) {
        let set = self.by_provider.entry(provider).or_default();
        if let Some((oldest, _)) = set.first() {
            self.weights
                .remove(&(set.len(), Reverse(*oldest), provider));
        }
        if let Some(t) = before {
            set.remove(&(t, key));
        }
        if let Some(t) = after {
            set.insert((t, key));
        }
        match set.first() {
            Some((oldest, _)) => {
                self.weights.insert((set.len(), Reverse(*oldest), provider));
            }
            None => {
                self.by_provider.remove(&provider);
            }
        }
    }

    /// The provider a newcomer from `group` takes the place of when `key` is full: of the
    /// source group holding the most of the key's providers (the newcomer counted), the one
    /// stored or refreshed longest ago. None when the key has room.
    fn crowded_out(&self, key: &NodeId, group: SourceGroup) -> Option<PeerId> {
        let k = self
            .keys
            .get(key)
            .filter(|k| k.providers.len() >= self.max_per_key)?;
        let mut crowd: HashMap<SourceGroup, usize> = HashMap::new();
        for s in k.providers.values() {
            *crowd.entry(s.group).or_default() += 1;
        }
        *crowd.entry(group).or_default() += 1;
        k.providers
            .iter()
            .max_by_key(|(_, s)| (crowd.get(&s.group).copied(), Reverse(s.stored)))
            .map(|(p, _)| *p)
    }

    /// Records `provider` holds, plus one when it is `adding`'s.
    fn weight(&self, provider: &PeerId, adding: &PeerId) -> usize {
        self.by_provider.get(provider).map_or(0, BTreeSet::len) + usize::from(provider == adding)
    }

    /// Removes `provider`'s record for `key`, and the key when it was its last.
    fn remove_record(&mut self, key: &NodeId, provider: &PeerId) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        let Some(s) = k.providers.remove(provider) else {
            return;
        };
        if k.providers.is_empty() {
            self.keys.remove(key);
        }
        self.records -= 1;
        self.reindex(*provider, *key, Some(s.stored), None);
    }

    /// Drops the oldest record of the heaviest provider, counting the record `adding` is about
    /// to add.
    fn drop_heaviest_record(&mut self, adding: PeerId) {
        let Some((count, Reverse(oldest), heaviest)) = self.weights.last().copied() else {
            return;
        };
        // The one adding weighs one more than it holds: it gives up its own oldest record
        // when that makes it the heaviest.
        let own = self.by_provider.get(&adding).and_then(|set| {
            set.first()
                .filter(|(t, _)| (set.len() + 1, Reverse(*t)) > (count, Reverse(oldest)))
                .map(|_| adding)
        });
        let victim = own.unwrap_or(heaviest);
        if let Some((_, key)) = self
            .by_provider
            .get(&victim)
            .and_then(|s| s.first())
            .copied()
        {
            self.remove_record(&key, &victim);
        }
    }

    /// Drops the key whose lightest provider is the heaviest, counting the record `adding` is
    /// about to add (ties: the key whose newest record is the oldest).
    fn drop_heaviest_key(&mut self, adding: PeerId) {
        // (lightest provider's weight, key's newest record reversed, key): the largest goes.
        let mut worst: Option<(usize, Reverse<Instant>, NodeId)> = None;
        for (key, k) in &self.keys {
            let mut lightest = usize::MAX;
            for p in k.providers.keys() {
                lightest = lightest.min(self.weight(p, &adding));
                // A key no heavier than the worst so far can stop here: it will not go.
                if worst.is_some_and(|(w, ..)| lightest < w) {
                    break;
                }
            }
            let candidate = (lightest, Reverse(k.newest), *key);
            if worst.is_none_or(|w| candidate > w) {
                worst = Some(candidate);
            }
        }
        let Some((.., key)) = worst else {
            return;
        };
        let providers: Vec<PeerId> = self
            .keys
            .get(&key)
            .map(|k| k.providers.keys().copied().collect())
            .unwrap_or_default();
        for p in providers {
            self.remove_record(&key, &p);
        }
    }

    /// The unexpired records for `key`, in the order their providers first stored them.
    pub fn get(&self, key: &NodeId, now: Instant) -> Vec<R> {
        let Some(k) = self.keys.get(key) else {
            return Vec::new();
        };
        let mut live: Vec<&Stored<R>> = k
            .providers
            .values()
            .filter(|s| !s.expired(now, self.ttl))
            .collect();
        live.sort_by_key(|s| s.since);
        live.into_iter().map(|s| s.record.clone()).collect()
    }

    /// Removes every record expired at `now` and keys left empty; returns how many records went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        let expired: Vec<(NodeId, PeerId)> = self
            .keys
            .iter()
            .flat_map(|(key, k)| {
                k.providers
                    .iter()
                    .filter(|(_, s)| s.expired(now, ttl))
                    .map(|(p, _)| (*key, *p))
            })
            .collect();
        for (key, p) in &expired {
            self.remove_record(key, p);
        }
        expired.len()
    }

    /// Records held, expired ones not yet removed by [`ProviderStore::expire`] included.
    pub fn len(&self) -> usize {
        self.records
    }

    /// No record held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Content keys held.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

/// Most content keys we remember announcing ([`OwnKeys`]): 131,072 datasets (a manifest and
/// a tree key each), about 10 MiB of memory when full.
pub const MAX_OWN_KEYS: usize = 262_144;

/// The content keys this node announced as their provider, so that a GETPROVIDERS sent to us
/// for one of them gets our own record back.
///
/// The reference's `addProvider` stores the record locally only when its lookup found nobody
/// else (nim-codex-dht `protocol.nim`): otherwise the record goes only to the closest nodes,
/// and a node asked for providers of content it holds answers with none. In a small network a
/// downloader whose lookup reaches only the provider itself (FINDNODE answers only nodes at the
/// distances asked for, so it can miss the nodes that do hold the record) then never finds it:
/// seen against live reference nodes, one attempt in about eight. We answer with our own record
/// as well; it is the same record the closest nodes hold for us.
///
/// A key counts for [`PROVIDER_TTL`] after it was last announced, as our record does on the
/// nodes we told (the node announces again every 30 minutes); [`OwnKeys::remove`] takes it out
/// at once when the node deletes the content. At most [`MAX_OWN_KEYS`] keys: when full, expired
/// keys are dropped, and if none has expired the new key is not remembered (the announcement
/// itself still goes out).
#[derive(Clone, Debug)]
pub struct OwnKeys {
    keys: HashMap<NodeId, Instant>,
    max: usize,
    ttl: Duration,
}

impl Default for OwnKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnKeys {
    /// An empty set with [`MAX_OWN_KEYS`] and [`PROVIDER_TTL`].
    pub fn new() -> Self {
        Self::with_limits(MAX_OWN_KEYS, PROVIDER_TTL)
    }

    /// An empty set with other limits (tests). A limit of 0 is raised to 1.
    pub fn with_limits(max: usize, ttl: Duration) -> Self {
        OwnKeys {
            keys: HashMap::new(),
            max: max.max(1),
            ttl,
        }
    }

    /// Remembers that we announced `key` at `now`; false when the set is full of unexpired keys.
    pub fn insert(&mut self, key: NodeId, now: Instant) -> bool {
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max {
            let ttl = self.ttl;
            self.keys
                .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            if self.keys.len() >= self.max {
                return false;
            }
        }
        self.keys.insert(key, now);
        true
    }

    /// Forgets `key` (the content was deleted).
    pub fn remove(&mut self, key: &NodeId) {
        self.keys.remove(key);
    }

    /// Whether we announced `key` less than the TTL before `now`.
    pub fn contains(&self, key: &NodeId, now: Instant) -> bool {
        self.keys
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Keys remembered, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No key remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    /// One source group for the tests where the source does not matter.
    const G: SourceGroup = SourceGroup(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)));

    fn group(ip: &str) -> SourceGroup {
        SourceGroup::of(ip.parse().unwrap())
    }

    #[test]
    fn source_groups_are_networks() {
        assert_eq!(group("203.0.113.7"), group("203.0.113.250"));
        assert_ne!(group("203.0.113.7"), group("203.0.114.7"));
        assert_eq!(group("2001:db8:1:2::1"), group("2001:db8:1:ffff::9"));
        assert_ne!(group("2001:db8:1::1"), group("2001:db8:2::1"));
        // An IPv4-mapped address is its IPv4 address.
        assert_eq!(group("::ffff:203.0.113.9"), group("203.0.113.1"));
        // Loopback addresses are groups of their own.
        assert_ne!(group("127.0.0.1"), group("127.0.0.2"));
        assert_eq!(group("::ffff:127.0.0.2"), group("127.0.0.2"));
    }

    /// Review: a full key dropped the provider stored longest ago, whoever crowded it, so 200
    /// identities made up on one host pushed an honest provider out of a key. Now the newcomer
    /// takes the place of one of the most crowded group.
    #[test]
    fn a_crowd_from_one_network_replaces_only_itself() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(10, 5, PROVIDER_TTL);
        let honest = PeerId::random();
        assert_eq!(
            s.add(key(1), honest, 1, "honest", group("198.51.100.7"), t0),
            AddOutcome::Added
        );
        let crowd = group("203.0.113.1");
        for i in 0..20u32 {
            let at = t0 + (i + 1) * SEC;
            assert_eq!(
                s.add(key(1), PeerId::random(), 1, "sybil", crowd, at),
                AddOutcome::Added
            );
        }
        let held = s.get(&key(1), t0 + 30 * SEC);
        assert_eq!(held.len(), 5);
        assert_eq!(held[0], "honest", "the oldest, but of the smaller group");
        // A second network's newcomer gets in too, again at the crowd's expense.
        let other = PeerId::random();
        s.add(
            key(1),
            other,
            1,
            "other",
            group("2001:db8::1"),
            t0 + 40 * SEC,
        );
        let held = s.get(&key(1), t0 + 40 * SEC);
        assert_eq!(held.iter().filter(|r| **r == "sybil").count(), 3);
        assert!(held.contains(&"honest") && held.contains(&"other"));
        // With groups of equal size, the one stored longest ago goes: the honest provider.
        let mut s = ProviderStore::with_limits(10, 2, PROVIDER_TTL);
        s.add(key(1), honest, 1, "honest", group("198.51.100.7"), t0);
        s.add(key(1), other, 1, "other", group("2001:db8::1"), t0 + SEC);
        s.add(key(1), PeerId::random(), 1, "new", crowd, t0 + 2 * SEC);
        assert_eq!(s.get(&key(1), t0 + 2 * SEC), vec!["other", "new"]);
    }

    /// A provider's group is that of its latest announcement: one that moves to the crowded
    /// network is counted in it.
    #[test]
    fn a_provider_counts_in_the_group_it_last_announced_from() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(10, 3, PROVIDER_TTL);
        let (p, q) = (PeerId::random(), PeerId::random());
        let crowd = group("203.0.113.1");
        s.add(key(1), PeerId::random(), 1, "r", group("2001:db8::1"), t0);
        s.add(key(1), q, 1, "q", crowd, t0 + SEC);
        s.add(key(1), p, 1, "p", group("198.51.100.7"), t0 + 2 * SEC);
        // p announces again, now from the crowd's network.
        assert_eq!(
            s.add(key(1), p, 1, "p", crowd, t0 + 3 * SEC),
            AddOutcome::Refreshed
        );
        // Full; a newcomer from a fourth network: the crowd (q and p) gives up q, refreshed
        // longest ago, though r was stored before it.
        s.add(
            key(1),
            PeerId::random(),
            1,
            "s",
            group("192.0.2.1"),
            t0 + 4 * SEC,
        );
        assert_eq!(s.get(&key(1), t0 + 4 * SEC), vec!["r", "p", "s"]);
    }

    fn key(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn records_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut s = ProviderStore::new();
        let (p, q) = (PeerId::random(), PeerId::random());
        assert_eq!(s.add(key(1), p, 1, "p", G, t0), AddOutcome::Added);
        assert_eq!(
            s.add(key(1), q, 1, "q", G, t0 + 10 * SEC),
            AddOutcome::Added
        );
        assert_eq!(s.get(&key(1), t0 + PROVIDER_TTL - SEC), vec!["p", "q"]);
        assert_eq!(s.get(&key(1), t0 + PROVIDER_TTL), vec!["q"]);
        assert!(s.get(&key(1), t0 + PROVIDER_TTL + 10 * SEC).is_empty());
        assert_eq!(s.len(), 2, "expired records stay until expire()");
        assert_eq!(s.expire(t0 + PROVIDER_TTL), 1);
        assert_eq!((s.len(), s.keys()), (1, 1));
        assert_eq!(s.expire(t0 + PROVIDER_TTL + 10 * SEC), 1);
        assert_eq!((s.len(), s.keys()), (0, 0));
        assert!(s.is_empty());
        // An expired record counts as absent: any seq is taken, as new.
        assert_eq!(s.add(key(2), p, 9, "p9", G, t0), AddOutcome::Added);
        let later = t0 + PROVIDER_TTL;
        assert_eq!(s.add(key(2), p, 3, "p3", G, later), AddOutcome::Added);
        assert_eq!(s.get(&key(2), later), vec!["p3"]);
    }

    #[test]
    fn a_full_key_drops_the_provider_closest_to_expiry() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(10, 3, PROVIDER_TTL);
        let p: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, peer) in p.iter().take(3).enumerate() {
            s.add(key(1), *peer, 1, i, G, t0 + i as u32 * SEC);
        }
        // p0 re-announces: now p1 is the oldest.
        assert_eq!(
            s.add(key(1), p[0], 1, 0, G, t0 + 3 * SEC),
            AddOutcome::Refreshed
        );
        assert_eq!(
            s.add(key(1), p[3], 1, 3, G, t0 + 4 * SEC),
            AddOutcome::Added
        );
        // In the order first stored: p0's refresh did not move it.
        assert_eq!(s.get(&key(1), t0 + 4 * SEC), vec![0, 2, 3]);
        assert_eq!(
            s.add(key(1), p[4], 1, 4, G, t0 + 5 * SEC),
            AddOutcome::Added
        );
        assert_eq!(s.get(&key(1), t0 + 5 * SEC), vec![0, 3, 4]);
        assert_eq!(s.len(), 3);
        // The default cap is the reference's 200.
        let mut s = ProviderStore::new();
        for i in 0..MAX_PROVIDERS_PER_KEY + 5 {
            s.add(key(1), PeerId::random(), 1, i, G, t0 + i as u32 * SEC);
        }
        assert_eq!(s.len(), MAX_PROVIDERS_PER_KEY);
        let held = s.get(&key(1), t0 + 300 * SEC);
        assert_eq!(
            (held[0], held[held.len() - 1]),
            (5, MAX_PROVIDERS_PER_KEY + 4)
        );
    }

    #[test]
    fn a_full_store_drops_the_key_whose_newest_record_is_oldest() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(2, 10, PROVIDER_TTL);
        let p = PeerId::random();
        s.add(key(1), p, 1, "a", G, t0);
        s.add(key(2), p, 1, "b", G, t0 + SEC);
        // Key 1 gets a newer record than key 2's.
        s.add(key(1), PeerId::random(), 1, "a2", G, t0 + 2 * SEC);
        assert_eq!(s.add(key(3), p, 1, "c", G, t0 + 3 * SEC), AddOutcome::Added);
        assert_eq!(s.keys(), 2);
        assert!(s.get(&key(2), t0 + 3 * SEC).is_empty());
        assert_eq!(s.get(&key(1), t0 + 3 * SEC), vec!["a", "a2"]);
        assert_eq!(s.get(&key(3), t0 + 3 * SEC), vec!["c"]);
        // Adding to a key already held never drops another key.
        s.add(key(3), PeerId::random(), 1, "c2", G, t0 + 4 * SEC);
        assert_eq!(s.keys(), 2);
        // The default cap is the reference's 1000.
        let mut s = ProviderStore::new();
        for i in 0..MAX_PROVIDER_KEYS + 3 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            s.add(NodeId(k), p, 1, i, G, t0 + i as u32 * SEC);
        }
        assert_eq!(s.keys(), MAX_PROVIDER_KEYS);
        assert!(s.get(&NodeId([0; 32]), t0 + 2000 * SEC).is_empty());
    }

    /// Key `i` (distinct for every `i`).
    fn nth_key(i: usize) -> NodeId {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        k[31] = 0xff;
        NodeId(k)
    }

    /// Review: one identity announcing 1000 made-up content ids replaced every record the node
    /// held (the oldest key went for each new one). Now its flood only ever replaces its own
    /// keys; the others' stay, whatever the rate, and so does the flood's newest part.
    #[test]
    fn a_flood_of_keys_from_one_provider_replaces_only_its_own() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(100, 10, PROVIDER_TTL);
        let honest: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        for (i, p) in honest.iter().enumerate() {
            // Each honest provider announces one dataset (two keys: manifest and tree).
            s.add(key(i as u8), *p, 1, "honest", G, t0);
            s.add(key(100 + i as u8), *p, 1, "honest", G, t0);
        }
        let flooder = PeerId::random();
        for i in 0..1000 {
            s.add(
                nth_key(i),
                flooder,
                1,
                "flood",
                G,
                t0 + SEC + i as u32 * SEC,
            );
        }
        let later = t0 + 2000 * SEC;
        for i in 0..20u8 {
            assert_eq!(s.get(&key(i), later), vec!["honest"], "key {i} evicted");
            assert_eq!(s.get(&key(100 + i), later), vec!["honest"]);
        }
        assert_eq!(s.keys(), 100);
        assert_eq!(s.get(&nth_key(999), later), vec!["flood"]);
        assert!(s.get(&nth_key(0), later).is_empty(), "its oldest went");
        // Two flooding identities on every key change nothing: each key's lightest provider
        // still holds far more than an honest one.
        let second = PeerId::random();
        for i in 1000..1500 {
            let t = t0 + 2000 * SEC + i as u32 * SEC;
            s.add(nth_key(i), flooder, 1, "flood", G, t);
            s.add(nth_key(i), second, 1, "flood", G, t);
        }
        for i in 0..20u8 {
            assert_eq!(s.get(&key(i), later), vec!["honest"], "key {i} evicted");
        }
        // An honest provider's new key still gets in, taking a flooded key's place.
        let newcomer = PeerId::random();
        s.add(key(250), newcomer, 1, "new", G, t0 + 4000 * SEC);
        assert_eq!(s.get(&key(250), t0 + 4000 * SEC), vec!["new"]);
        assert_eq!(s.keys(), 100);
    }

    /// A full store of records gives room from the heaviest provider: a flood of records
    /// (one identity in many keys) takes its own oldest, not the records of others.
    #[test]
    fn a_full_store_takes_records_from_the_heaviest_provider() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(1000, 10, PROVIDER_TTL).with_max_records(30);
        let honest: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        for (i, p) in honest.iter().enumerate() {
            s.add(key(i as u8), *p, 1, "honest", G, t0);
        }
        let flooder = PeerId::random();
        for i in 0..500 {
            s.add(
                nth_key(i),
                flooder,
                1,
                "flood",
                G,
                t0 + SEC + i as u32 * SEC,
            );
        }
        let later = t0 + 600 * SEC;
        assert_eq!(s.len(), 30);
        for i in 0..10u8 {
            assert_eq!(
                s.get(&key(i), later),
                vec!["honest"],
                "key {i} lost its record"
            );
        }
        assert_eq!(s.get(&nth_key(499), later), vec!["flood"]);
        assert!(s.get(&nth_key(479), later).is_empty(), "not its oldest");
        // With equal weights, the oldest record goes.
        let mut s = ProviderStore::with_limits(1000, 10, PROVIDER_TTL).with_max_records(3);
        for i in 0..4u8 {
            s.add(key(i), PeerId::random(), 1, i, G, t0 + u32::from(i) * SEC);
        }
        assert!(s.get(&key(0), t0 + 5 * SEC).is_empty());
        assert_eq!(s.len(), 3);
        // Expiry keeps the indexes right: all weights go with the records.
        assert_eq!(s.expire(t0 + PROVIDER_TTL + 10 * SEC), 3);
        assert!(s.weights.is_empty() && s.by_provider.is_empty());
    }

    /// Answers list providers in the order they were first stored: one re-announcing every
    /// few seconds (its TTL restarts) no longer moves ahead of the others (review: a large
    /// record kept at the head of every answer pushed the others out of the packet).
    #[test]
    fn re_announcing_does_not_move_a_provider_ahead() {
        let t0 = Instant::now();
        let mut s = ProviderStore::new();
        let (honest, pushy) = (PeerId::random(), PeerId::random());
        s.add(key(1), honest, 1, "honest", G, t0);
        s.add(key(1), pushy, 1, "pushy", G, t0 + SEC);
        for i in 2..10 {
            s.add(key(1), pushy, 1, "pushy", G, t0 + i * SEC);
        }
        assert_eq!(s.get(&key(1), t0 + 10 * SEC), vec!["honest", "pushy"]);
    }

    #[test]
    fn records_in_all_are_bounded() {
        let t0 = Instant::now();
        let mut s = ProviderStore::with_limits(100, 10, PROVIDER_TTL).with_max_records(25);
        // Ten keys of five records, one key per second.
        for k in 0..10u8 {
            for _ in 0..5 {
                s.add(key(k), PeerId::random(), 1, k, G, t0 + u32::from(k) * SEC);
            }
        }
        assert!(s.len() <= 25, "{}", s.len());
        assert_eq!(s.len(), s.keys() * 5, "whole keys went");
        // The oldest keys went; the newest are all there.
        assert!(s.get(&key(0), t0 + 10 * SEC).is_empty());
        assert_eq!(s.get(&key(9), t0 + 10 * SEC).len(), 5);
        // A known provider refreshing its record takes no room.
        let p = PeerId::random();
        s.add(key(9), p, 1, 9, G, t0 + 11 * SEC);
        let before = s.keys();
        assert_eq!(
            s.add(key(9), p, 2, 9, G, t0 + 12 * SEC),
            AddOutcome::Updated
        );
        assert_eq!(s.keys(), before);
        // Expiry keeps the count right.
        s.expire(t0 + 30 * SEC + PROVIDER_TTL);
        assert_eq!(s.len(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn the_higher_seq_wins() {
        let t0 = Instant::now();
        let mut s = ProviderStore::new();
        let p = PeerId::random();
        assert_eq!(s.add(key(1), p, 5, "seq5", G, t0), AddOutcome::Added);
        // A lower seq (say, a replayed old record) is ignored: the reference would take it.
        assert_eq!(s.add(key(1), p, 4, "seq4", G, t0 + SEC), AddOutcome::Stale);
        assert_eq!(s.get(&key(1), t0 + SEC), vec!["seq5"]);
        assert_eq!(
            s.add(key(1), p, 6, "seq6", G, t0 + 2 * SEC),
            AddOutcome::Updated
        );
        assert_eq!(s.get(&key(1), t0 + 2 * SEC), vec!["seq6"]);
        // The same seq keeps the record and restarts the TTL.
        assert_eq!(
            s.add(key(1), p, 6, "other", G, t0 + 3 * SEC),
            AddOutcome::Refreshed
        );
        assert_eq!(s.get(&key(1), t0 + 3 * SEC), vec!["seq6"]);
        assert_eq!(
            s.get(&key(1), t0 + 3 * SEC + PROVIDER_TTL - SEC),
            vec!["seq6"]
        );
        // A stale record does not restart it.
        assert_eq!(
            s.add(key(1), p, 1, "seq1", G, t0 + 10 * SEC),
            AddOutcome::Stale
        );
        assert!(s.get(&key(1), t0 + 3 * SEC + PROVIDER_TTL).is_empty());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_provider_replaces_its_own_record_per_key() {
        let t0 = Instant::now();
        let mut s = ProviderStore::new();
        let p = PeerId::random();
        s.add(key(1), p, 1, "old address", G, t0);
        s.add(key(1), p, 2, "new address", G, t0 + SEC);
        s.add(key(2), p, 1, "other key", G, t0 + SEC);
        assert_eq!(s.get(&key(1), t0 + SEC), vec!["new address"]);
        assert_eq!(s.get(&key(2), t0 + SEC), vec!["other key"]);
        assert_eq!((s.len(), s.keys()), (2, 2));
        assert!(s.get(&key(3), t0).is_empty());
    }

    #[test]
    fn own_keys_expire_are_removed_and_stay_bounded() {
        let t0 = Instant::now();
        let mut own = OwnKeys::with_limits(2, 10 * SEC);
        assert!(own.insert(key(1), t0));
        assert!(own.contains(&key(1), t0 + 9 * SEC));
        assert!(
            !own.contains(&key(1), t0 + 10 * SEC),
            "expired after the TTL"
        );
        assert!(!own.contains(&key(2), t0));
        // Announcing again restarts the TTL.
        assert!(own.insert(key(1), t0 + 5 * SEC));
        assert!(own.contains(&key(1), t0 + 14 * SEC));
        own.remove(&key(1));
        assert!(!own.contains(&key(1), t0 + 6 * SEC), "removed at once");
        // Full of live keys: a new one is refused, an old one still refreshes.
        assert!(own.insert(key(1), t0));
        assert!(own.insert(key(2), t0 + SEC));
        assert!(!own.insert(key(3), t0 + 2 * SEC));
        assert!(!own.contains(&key(3), t0 + 2 * SEC));
        assert!(own.insert(key(2), t0 + 3 * SEC));
        assert_eq!(own.len(), 2);
        // Once key 1 has expired it makes room.
        assert!(own.insert(key(3), t0 + 10 * SEC));
        assert!(own.contains(&key(3), t0 + 10 * SEC));
        assert!(!own.contains(&key(1), t0 + 10 * SEC));
        assert_eq!(own.len(), 2);
    }
}
