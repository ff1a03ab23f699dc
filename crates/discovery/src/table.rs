//! The routing table: which nodes we know, by log-distance from our own id (codex-protocol.md
//! §7.6), generic over the record type `R` (the SPR layer supplies it).
//!
//! Reference: nim-codex-dht `codexdht/private/eth/p2p/discoveryv5/routing_table.nim`, `node.nim`
//! and the parts of `protocol.nim` / `transport.nim` that decide what goes into the table. Each
//! rule below names the reference behaviour it follows.
//!
//! # Shape
//!
//! * **One bucket per log-distance, 256 of them, [`BUCKET_SIZE`] = 16 nodes each, plus a
//!   replacement cache of [`REPLACEMENT_CACHE_SIZE`] = 8 per bucket.** The reference starts with
//!   one bucket over the whole id space and splits a full bucket when it contains our own id, or
//!   when its depth is not a multiple of `bitsPerHop` = 5. That keeps up to 2⁴ buckets per far
//!   log-distance (16 buckets × 16 nodes at distance 256, 8 at 255, …), so it remembers more far
//!   nodes and its own lookups need fewer hops. We keep the flat layout discv5 describes: it needs
//!   no splitting, a FINDNODE reply is "read the requested buckets", and the wire behaviour is the
//!   same (a FINDNODE reply holds at most 16 nodes either way; `bitsPerHop` never appears on the
//!   wire). The cost: at the far distances, where a network of more than a few dozen nodes has
//!   more than 16 nodes per log-distance, we remember 16 where the reference remembers up to
//!   256, so our own lookups may take a hop more. What we answer others is not affected.
//! * **IP limits are off**, as Codex runs the reference: `routing_table.nim` has
//!   `DefaultTableIpLimits` (2 per bucket, 10 per table), but nim-codex `codex/discovery.nim`
//!   passes `high(uint)` for both ("FIXME disable IP limits temporarily"). So there is no
//!   per-address accounting here.
//!
//! # What gets into the table (reference `addNode`)
//!
//! * Our own id is refused (`LocalNode`).
//! * A node already in its bucket has its record replaced only by a strictly newer `seq`; its
//!   position and liveness are kept ("Copy over the seen status"). An equal or older `seq` changes
//!   nothing.
//! * A new node goes to the *tail* of its bucket (least recently seen) while the bucket has room,
//!   whatever its origin: the reference deliberately does not put handshake nodes at the head.
//! * When the bucket is full the node goes into the bucket's replacement cache (newest at the
//!   end; a node already there with an equal or newer `seq` moves to the end; the oldest drops out
//!   when 8 are waiting). A full bucket never evicts a live entry just because a new node turned
//!   up: replacements only get in when an entry fails.
//! * Where the node came from ([`Origin`]) decides its first liveness state: nodes learned from a
//!   NODES reply and bootstrap records start *unseen*; a node whose handshake carried its record,
//!   with the record's address equal to the packet's source address, starts *seen*
//!   (`transport.nim`: `registerSeen` before `addNode`).
//!
//! # Liveness (reference `node.nim` `registerSeen`, `protocol.nim` `replaceNode`)
//!
//! * [`Entry::seen`]: the node answered at least one of our requests (or handshaked from its
//!   record's address). Only seen nodes are handed to others in FINDNODE replies
//!   ([`RoutingTable::at_distances`]); lookups use all nodes.
//! * Every answer moves the node to the head of its bucket ([`RoutingTable::mark_seen`],
//!   `setJustSeen`), so the tail is the least recently seen node (a bootstrap node that missed
//!   goes to the head too, see below), which revalidation pings
//!   ([`RoutingTable::revalidation_candidate`], `nodeToRevalidate`).
//! * A reliability average, as the reference keeps in `Node.seen`: 1.0 at the first answer, then
//!   `0.9 · r + 0.1 · answered` per request ([`SEEN_SMOOTHING_FACTOR`]).
//! * A FINDNODE that fails (no or a bad reply) removes the node at once ([`RoutingTable::on_failure`],
//!   `replaceNode(n)`); an unanswered PING, TALKREQ or GETPROVIDERS removes it only when a
//!   replacement is waiting or its reliability has dropped to [`NO_REPLY_REMOVE_THRESHOLD`]
//!   ([`RoutingTable::on_no_reply`], `replaceNode(n, NoreplyRemoveThreshold)`), so a short outage
//!   of our own does not empty the table. On removal the newest replacement takes the free place
//!   (at the tail). Bootstrap entries are never removed this way (`Protocol.replaceNode` skips
//!   bootstrap records). A bootstrap node that misses moves to the head of its bucket instead,
//!   so revalidation goes on to the other nodes there; the reference leaves it at the tail,
//!   where a dead one is the only node of its bucket revalidation ever pings (found by review).
//!
//! # Where we differ from the reference on purpose
//!
//! * A failed request to a node that had never answered leaves its reliability at 0. The
//!   reference's `registerSeen(false)` sets a never-seen node to 1.0 (its "first time" branch does
//!   not look at the outcome), so an unreachable node learned from a NODES reply becomes "seen",
//!   is served to others, and survives an unanswered revalidation PING when no replacement waits.
//! * The reference serves a node in FINDNODE replies only while its average is ≥ 1.0
//!   (`FindnodeSeenThreshold`). After one missed reply the f64 average needs ~330 answers to be
//!   exactly 1.0 again, so in practice the node is never served again. We serve a seen node again
//!   as soon as it has answered once more ([`Entry::is_reliable`]).
//! * Bootstrap protection is a flag on the entry, kept when its record is updated. The reference
//!   compares the stored record with the bootstrap records, so a bootstrap node that re-signs its
//!   record loses its protection.
//! * A node that enters its bucket leaves the replacement cache (the reference can hold it in
//!   both), and a failed node is also removed from the replacement cache, so it is not promoted
//!   later.
//! * [`RoutingTable::at_distances`] returns every reliable node at the requested distances (up to
//!   the limit). The reference takes the 16 nodes closest to the lowest id at the first requested
//!   distance and then drops those at other distances, so nodes at distances that were not asked
//!   for can use up places and the reply can miss nodes it had (its own TODO says so). We keep its
//!   order: first distance first, then the lower, then the higher ones.

use std::net::SocketAddr;

use rand::Rng;

use crate::ids::{MAX_LOG_DISTANCE, NodeId};

/// Nodes per bucket: Kademlia's k (reference `BUCKET_SIZE`, routing_table.nim).
pub const BUCKET_SIZE: usize = 16;

/// Nodes waiting per bucket for a place to become free (reference `REPLACEMENT_CACHE_SIZE`).
pub const REPLACEMENT_CACHE_SIZE: usize = 8;

/// Number of buckets: one per log-distance 1..=256 (distance 0 is our own id).
pub const BUCKET_COUNT: usize = MAX_LOG_DISTANCE as usize;

/// Weight of the previous value in the reliability average (reference `seenSmoothingFactor`,
/// node.nim).
pub const SEEN_SMOOTHING_FACTOR: f64 = 0.9;

/// An unanswered PING/TALKREQ/GETPROVIDERS removes a node whose reliability is at or below this,
/// even when no replacement waits (reference `NoreplyRemoveThreshold`, protocol.nim).
pub const NO_REPLY_REMOVE_THRESHOLD: f64 = 0.5;

/// How a node came to be offered to the table; sets its first liveness state and protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Learned from a NODES reply (or any record we have not verified by talking to the node):
    /// starts unseen.
    Discovered,
    /// The node completed a handshake with us, carrying its record, from the address in that
    /// record: starts seen (reference transport.nim, "Added new node to routing table after
    /// handshake").
    Handshake,
    /// A configured bootstrap record: starts unseen, never removed on failures.
    Bootstrap,
}

/// A node in the routing table.
#[derive(Clone, Debug)]
pub struct Entry<R> {
    /// The node's id.
    pub id: NodeId,
    /// The UDP address from its record.
    pub addr: SocketAddr,
    /// Its record (the SPR, supplied by the record layer).
    pub record: R,
    /// The record's sequence number.
    pub seq: u64,
    /// It has answered at least one of our requests (or handshaked from its record's address).
    pub seen: bool,
    /// It is a bootstrap node: never removed because a request failed.
    pub bootstrap: bool,
    /// Reliability average, 0.0 until the first answer (reference `Node.seen`).
    reliability: f64,
    /// The most recent request to it went unanswered.
    missed_last: bool,
}

impl<R> Entry<R> {
    fn new(id: NodeId, addr: SocketAddr, seq: u64, record: R, origin: Origin) -> Self {
        let seen = origin == Origin::Handshake;
        Entry {
            id,
            addr,
            record,
            seq,
            seen,
            bootstrap: origin == Origin::Bootstrap,
            reliability: if seen { 1.0 } else { 0.0 },
            missed_last: false,
        }
    }

    /// The reliability average: 0.0 before the first answer, 1.0 at it, then moving by
    /// [`SEEN_SMOOTHING_FACTOR`] towards 1 on answers and 0 on missed replies.
    pub fn reliability(&self) -> f64 {
        self.reliability
    }

    /// Seen, and its most recent request (if any since) was answered: the nodes we hand to
    /// others in FINDNODE replies.
    pub fn is_reliable(&self) -> bool {
        self.seen && !self.missed_last
    }

    fn register_answer(&mut self) {
        self.reliability = if self.seen {
            SEEN_SMOOTHING_FACTOR * self.reliability + (1.0 - SEEN_SMOOTHING_FACTOR)
        } else {
            1.0
        };
        self.seen = true;
        self.missed_last = false;
    }

    fn register_miss(&mut self) {
        // Unlike the reference, a miss before any answer keeps the node unseen (module docs).
        self.reliability *= SEEN_SMOOTHING_FACTOR;
        self.missed_last = true;
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// New node, now in its bucket.
    Added,
    /// Already in its bucket; its record was replaced by one with a higher seq.
    Updated,
    /// Already in its bucket with an equal or newer record; nothing changed.
    Unchanged,
    /// Its bucket is full: the node is (now) waiting in the bucket's replacement cache.
    Replacement,
    /// Our own id: refused.
    Ignored,
}

#[derive(Clone, Debug)]
struct Bucket<R> {
    /// Most recently seen first (the reference's head), least recently seen last.
    nodes: Vec<Entry<R>>,
    /// Oldest first, newest last; at most [`REPLACEMENT_CACHE_SIZE`].
    replacements: Vec<Entry<R>>,
}

impl<R> Bucket<R> {
    fn new() -> Self {
        Bucket {
            nodes: Vec::new(),
            replacements: Vec::new(),
        }
    }

    fn node_pos(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|e| e.id == *id)
    }

    fn replacement_pos(&self, id: &NodeId) -> Option<usize> {
        self.replacements.iter().position(|e| e.id == *id)
    }

    /// Removes the node at `pos` and moves the newest replacement to the tail.
    fn remove_and_promote(&mut self, pos: usize) -> Entry<R> {
        let removed = self.nodes.remove(pos);
        if let Some(next) = self.replacements.pop() {
            self.nodes.push(next);
        }
        removed
    }
}

/// The Kademlia routing table of the discovery DHT (module docs).
#[derive(Clone, Debug)]
pub struct RoutingTable<R> {
    local: NodeId,
    /// `buckets[d - 1]` holds the nodes at log-distance `d`.
    buckets: Vec<Bucket<R>>,
}

impl<R: Clone> RoutingTable<R> {
    /// An empty table around our own id `local`.
    pub fn new(local: NodeId) -> Self {
        RoutingTable {
            local,
            buckets: (0..BUCKET_COUNT).map(|_| Bucket::new()).collect(),
        }
    }

    /// Our own id.
    pub fn local_id(&self) -> &NodeId {
        &self.local
    }

    fn bucket_index(&self, id: &NodeId) -> Option<usize> {
        let d = self.local.log_distance(id);
        (d > 0).then(|| usize::from(d - 1))
    }

    /// Offers a node with its record to the table (rules in the module docs, reference
    /// `addNode`). The caller has checked the record (signature, id, usable address).
    pub fn insert(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        seq: u64,
        record: R,
        origin: Origin,
    ) -> InsertOutcome {
        let Some(b) = self.bucket_index(&id) else {
            return InsertOutcome::Ignored;
        };
        let bucket = &mut self.buckets[b];

        if let Some(e) = bucket.nodes.iter_mut().find(|e| e.id == id) {
            if origin == Origin::Bootstrap {
                e.bootstrap = true;
            }
            if seq > e.seq {
                // Newer record: replace it, keep position and liveness (reference addNode).
                e.addr = addr;
                e.seq = seq;
                e.record = record;
                return InsertOutcome::Updated;
            }
            return InsertOutcome::Unchanged;
        }

        let mut entry = Entry::new(id, addr, seq, record, origin);
        let waiting = bucket.replacement_pos(&id);

        if bucket.nodes.len() < BUCKET_SIZE {
            if let Some(pos) = waiting {
                entry = merge(bucket.replacements.remove(pos), entry);
            }
            bucket.nodes.push(entry);
            return InsertOutcome::Added;
        }

        // Bucket full: the node waits in the replacement cache (reference addReplacement).
        match waiting {
            Some(pos) if bucket.replacements[pos].seq > seq => {
                // An older record neither replaces nor refreshes the waiting one.
                bucket.replacements[pos].bootstrap |= entry.bootstrap;
            }
            Some(pos) => {
                let old = bucket.replacements.remove(pos);
                bucket.replacements.push(merge(old, entry));
            }
            None => {
                if bucket.replacements.len() >= REPLACEMENT_CACHE_SIZE {
                    bucket.replacements.remove(0);
                }
                bucket.replacements.push(entry);
            }
        }
        InsertOutcome::Replacement
    }

    /// The node answered one of our requests: it is seen, moves to the head of its bucket (most
    /// recently seen) and its reliability rises (reference `setJustSeen(n, true)`). Returns
    /// whether it is in a bucket; a node in the replacement cache is marked seen but stays there.
    pub fn mark_seen(&mut self, id: &NodeId) -> bool {
        let Some(b) = self.bucket_index(id) else {
            return false;
        };
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.node_pos(id) {
            let mut e = bucket.nodes.remove(pos);
            e.register_answer();
            bucket.nodes.insert(0, e);
            true
        } else {
            if let Some(pos) = bucket.replacement_pos(id) {
                bucket.replacements[pos].register_answer();
            }
            false
        }
    }

    /// A FINDNODE to the node failed (no reply in time, or a bad reply), any request got a
    /// reply of the wrong kind, or we could not make a handshake with it: remove it and promote the newest replacement (reference
    /// `replaceNode(n)`, whose default threshold always removes). A bootstrap node stays (the miss
    /// is recorded, and it moves to the head of its bucket so revalidation passes it). A failed
    /// node waiting in the replacement cache is dropped from it. Returns what was removed.
    pub fn on_failure(&mut self, id: &NodeId) -> Option<Entry<R>> {
        self.fail(id, true)
    }

    /// A PING, TALKREQ or GETPROVIDERS to the node went unanswered: record the miss, and remove
    /// the node (promoting the newest replacement) only if a replacement is waiting or its
    /// reliability is at or below [`NO_REPLY_REMOVE_THRESHOLD`] (reference
    /// `replaceNode(n, NoreplyRemoveThreshold)`). Bootstrap nodes stay (moved to the head, see
    /// [`RoutingTable::on_failure`]). Returns what was removed.
    pub fn on_no_reply(&mut self, id: &NodeId) -> Option<Entry<R>> {
        self.fail(id, false)
    }

    fn fail(&mut self, id: &NodeId, always_remove: bool) -> Option<Entry<R>> {
        let b = self.bucket_index(id)?;
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.node_pos(id) {
            let e = &mut bucket.nodes[pos];
            e.register_miss();
            if e.bootstrap {
                // It stays, but not at the tail: revalidation pings the tail, and a dead
                // bootstrap node kept there would be the only node of its bucket ever checked
                // (found by review). At the head, the others are checked before it again.
                let e = bucket.nodes.remove(pos);
                bucket.nodes.insert(0, e);
                return None;
            }
            let remove = always_remove
                || !bucket.replacements.is_empty()
                || e.reliability <= NO_REPLY_REMOVE_THRESHOLD;
            remove.then(|| bucket.remove_and_promote(pos))
        } else {
            let pos = bucket.replacement_pos(id)?;
            let e = &mut bucket.replacements[pos];
            e.register_miss();
            let remove =
                !e.bootstrap && (always_remove || e.reliability <= NO_REPLY_REMOVE_THRESHOLD);
            remove.then(|| bucket.replacements.remove(pos))
        }
    }

    /// Removes the node from its bucket or the replacement cache, whatever its state. No
    /// replacement is promoted (reference `removeNode`).
    pub fn remove(&mut self, id: &NodeId) -> Option<Entry<R>> {
        let b = self.bucket_index(id)?;
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.node_pos(id) {
            Some(bucket.nodes.remove(pos))
        } else {
            let pos = bucket.replacement_pos(id)?;
            Some(bucket.replacements.remove(pos))
        }
    }

    /// The node with this id, if it is in a bucket (not the replacement cache; reference
    /// `getNode`).
    pub fn get(&self, id: &NodeId) -> Option<&Entry<R>> {
        let b = self.bucket_index(id)?;
        self.buckets[b].nodes.iter().find(|e| e.id == *id)
    }

    /// Up to `n` nodes closest to `target` by XOR distance, closest first (reference
    /// `neighbours`). With `seen_only`, only reliable nodes ([`Entry::is_reliable`], what a
    /// reply to others may contain); lookups use all nodes.
    pub fn closest(&self, target: &NodeId, n: usize, seen_only: bool) -> Vec<Entry<R>> {
        let mut all: Vec<&Entry<R>> = self
            .iter()
            .filter(|e| !seen_only || e.is_reliable())
            .collect();
        sorted_prefix(&mut all, n, |e| e.id.distance(target));
        all.into_iter().cloned().collect()
    }

    /// The nodes for a FINDNODE reply: reliable nodes at the requested log-distances from us, at
    /// most `max` (the reference's `FindNodeResultLimit` is 16). Distance 0 (our own record) is
    /// the caller's, so it adds nothing here. Any distance above 256 makes the whole reply empty,
    /// as the reference's `handleFindNode` answers. Order as the reference: by XOR distance to the
    /// lowest id at the first requested distance, which puts the first distance first, then the
    /// lower ones, then the higher ones.
    pub fn at_distances(&self, distances: &[u16], max: usize) -> Vec<Entry<R>> {
        if distances.iter().any(|&d| d > MAX_LOG_DISTANCE) {
            return Vec::new();
        }
        let Some(&first) = distances.iter().find(|&&d| d > 0) else {
            return Vec::new();
        };
        let pivot = lowest_id_at_distance(&self.local, first);
        let mut wanted = [false; BUCKET_COUNT];
        for &d in distances.iter().filter(|&&d| d > 0) {
            wanted[usize::from(d - 1)] = true;
        }
        let mut found: Vec<&Entry<R>> = self
            .buckets
            .iter()
            .zip(wanted)
            .filter(|(_, w)| *w)
            .flat_map(|(b, _)| b.nodes.iter())
            .filter(|e| e.is_reliable())
            .collect();
        sorted_prefix(&mut found, max, |e| e.id.distance(&pivot));
        found.into_iter().cloned().collect()
    }

    /// The node to revalidate next: the least recently seen node of a random non-empty bucket
    /// (reference `nodeToRevalidate`; its revalidate loop pings it every 5–10 s).
    pub fn revalidation_candidate(&self, rng: &mut impl Rng) -> Option<NodeId> {
        let non_empty: Vec<&Bucket<R>> = self
            .buckets
            .iter()
            .filter(|b| !b.nodes.is_empty())
            .collect();
        if non_empty.is_empty() {
            return None;
        }
        let b = non_empty[rng.random_range(0..non_empty.len())];
        b.nodes.last().map(|e| e.id)
    }

    /// Number of nodes in the buckets (not counting replacement caches).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// No node in any bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.nodes.is_empty())
    }

    /// Number of nodes waiting in replacement caches.
    pub fn replacements_len(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// The nodes in the buckets, nearest bucket first, each bucket most recently seen first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<R>> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// `(log-distance, nodes)` of every non-empty bucket, nearest first (for debug output).
    pub fn bucket_sizes(&self) -> Vec<(u16, usize)> {
        (1..=MAX_LOG_DISTANCE)
            .zip(&self.buckets)
            .filter(|(_, b)| !b.nodes.is_empty())
            .map(|(d, b)| (d, b.nodes.len()))
            .collect()
    }
}

/// The entry that enters the bucket when `newer` was also waiting as `old`: the newer record,
/// liveness and bootstrap protection of both.
fn merge<R>(old: Entry<R>, newer: Entry<R>) -> Entry<R> {
    let (mut keep, other) = if old.seq > newer.seq {
        (old, newer)
    } else {
        (newer, old)
    };
    keep.bootstrap |= other.bootstrap;
    if other.seen && (!keep.seen || other.reliability > keep.reliability) {
        keep.seen = true;
        keep.reliability = other.reliability;
        keep.missed_last = other.missed_last;
    }
    keep
}

/// Sorts the `n` smallest items of `v` by `key` to the front and drops the rest.
fn sorted_prefix<T, K: Ord>(v: &mut Vec<T>, n: usize, key: impl Fn(&T) -> K) {
    if n < v.len() {
        v.select_nth_unstable_by_key(n, &key);
        v.truncate(n);
    }
    v.sort_unstable_by_key(key);
}

/// `id ⊕ 2^(d−1)`: the id at log-distance `d` (1..=256) that is closest to `id` (reference
/// `idAtDistance`).
fn lowest_id_at_distance(id: &NodeId, d: u16) -> NodeId {
    let bit = usize::from(d.clamp(1, MAX_LOG_DISTANCE) - 1);
    let mut x = id.0;
    x[31 - bit / 8] ^= 1 << (bit % 8);
    NodeId(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The id at log-distance `d` from `local` whose lower bits come from `bits`.
    fn id_at(local: &NodeId, d: u16, bits: [u8; 32]) -> NodeId {
        let mut x = bits;
        let bit = usize::from(d - 1);
        let byte = 31 - bit / 8;
        let mask = 1u8 << (bit % 8);
        for b in x.iter_mut().take(byte) {
            *b = 0;
        }
        x[byte] = (x[byte] & (mask - 1)) | mask;
        NodeId(local.distance(&NodeId(x)))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `n` distinct ids at log-distance `d` from `local` (d ≥ 8 so there are enough).
    fn ids_at(local: &NodeId, d: u16, n: usize, rng: &mut StdRng) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        while out.len() < n {
            let id = id_at(local, d, rng.random());
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    fn table_with(local: NodeId, ids: &[NodeId], origin: Origin) -> RoutingTable<u32> {
        let mut t = RoutingTable::new(local);
        for (i, id) in ids.iter().enumerate() {
            t.insert(*id, addr(i as u16), 1, i as u32, origin);
        }
        t
    }

    fn replacements(t: &RoutingTable<u32>, d: u16) -> Vec<NodeId> {
        t.buckets[usize::from(d - 1)]
            .replacements
            .iter()
            .map(|e| e.id)
            .collect()
    }

    fn bucket(t: &RoutingTable<u32>, d: u16) -> Vec<NodeId> {
        t.buckets[usize::from(d - 1)]
            .nodes
            .iter()
            .map(|e| e.id)
            .collect()
    }

    #[test]
    fn nodes_go_to_the_bucket_of_their_log_distance() {
        let mut rng = StdRng::seed_from_u64(1);
        let local = NodeId(rng.random());
        let mut t = RoutingTable::new(local);
        for (i, d) in [1u16, 2, 5, 100, 255, 256].into_iter().enumerate() {
            let id = id_at(&local, d, rng.random());
            assert_eq!(
                t.insert(id, addr(1), 1, i as u32, Origin::Discovered),
                InsertOutcome::Added
            );
            assert_eq!(bucket(&t, d), vec![id]);
            assert_eq!(t.get(&id).map(|e| e.record), Some(i as u32));
        }
        assert_eq!(
            t.bucket_sizes(),
            vec![(1, 1), (2, 1), (5, 1), (100, 1), (255, 1), (256, 1)]
        );
        assert_eq!(t.len(), 6);
        assert!(!t.is_empty());
        assert_eq!(t.iter().count(), 6);
    }

    #[test]
    fn own_id_is_refused() {
        let local = NodeId([7; 32]);
        let mut t = RoutingTable::new(local);
        for origin in [Origin::Discovered, Origin::Handshake, Origin::Bootstrap] {
            assert_eq!(
                t.insert(local, addr(1), 1, 0u32, origin),
                InsertOutcome::Ignored
            );
        }
        assert!(t.is_empty());
        assert!(!t.mark_seen(&local));
        assert!(t.on_failure(&local).is_none());
        assert!(t.get(&local).is_none());
    }

    #[test]
    fn full_bucket_sends_nodes_to_a_replacement_cache_of_8() {
        let mut rng = StdRng::seed_from_u64(2);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, BUCKET_SIZE + 14, &mut rng);
        let mut t = RoutingTable::new(local);
        for (i, id) in ids.iter().enumerate() {
            let want = if i < BUCKET_SIZE {
                InsertOutcome::Added
            } else {
                InsertOutcome::Replacement
            };
            assert_eq!(
                t.insert(*id, addr(1), 1, i as u32, Origin::Discovered),
                want
            );
        }
        // The bucket holds the first 16, in arrival order (each new one at the tail).
        assert_eq!(bucket(&t, 256), ids[..BUCKET_SIZE].to_vec());
        // The replacement cache holds the newest 8 of the other 14, oldest first.
        assert_eq!(replacements(&t, 256), ids[ids.len() - 8..].to_vec());
        assert_eq!(t.len(), BUCKET_SIZE);
        assert_eq!(t.replacements_len(), REPLACEMENT_CACHE_SIZE);
        assert!(t.get(&ids[BUCKET_SIZE]).is_none());

        // A waiting node offered again with a newer record moves to the newest end; an older
        // record leaves it where it is.
        let waiting = ids[ids.len() - 8];
        assert_eq!(
            t.insert(waiting, addr(2), 0, 99, Origin::Discovered),
            InsertOutcome::Replacement
        );
        assert_eq!(replacements(&t, 256)[0], waiting);
        assert_eq!(
            t.insert(waiting, addr(2), 2, 99, Origin::Discovered),
            InsertOutcome::Replacement
        );
        assert_eq!(replacements(&t, 256).last(), Some(&waiting));
        assert_eq!(t.replacements_len(), REPLACEMENT_CACHE_SIZE);
    }

    #[test]
    fn failure_removes_the_node_and_promotes_the_newest_replacement() {
        let mut rng = StdRng::seed_from_u64(3);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 200, BUCKET_SIZE + 3, &mut rng);
        let mut t = table_with(local, &ids, Origin::Discovered);
        let failed = ids[4];
        let removed = t.on_failure(&failed).map(|e| e.id);
        assert_eq!(removed, Some(failed));
        assert!(t.get(&failed).is_none());
        // The newest replacement (the last inserted) takes the place, at the tail.
        assert_eq!(bucket(&t, 200).last(), Some(&ids[BUCKET_SIZE + 2]));
        assert_eq!(t.len(), BUCKET_SIZE);
        assert_eq!(
            replacements(&t, 200),
            vec![ids[BUCKET_SIZE], ids[BUCKET_SIZE + 1]]
        );
        // Failing a node again that is gone does nothing.
        assert!(t.on_failure(&failed).is_none());
        // A failed node waiting in the replacement cache leaves it (it must not be promoted).
        assert_eq!(
            t.on_failure(&ids[BUCKET_SIZE]).map(|e| e.id),
            Some(ids[BUCKET_SIZE])
        );
        assert_eq!(replacements(&t, 200), vec![ids[BUCKET_SIZE + 1]]);
    }

    #[test]
    fn bootstrap_entries_survive_failures() {
        let mut rng = StdRng::seed_from_u64(4);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, BUCKET_SIZE + 1, &mut rng);
        let mut t = RoutingTable::new(local);
        t.insert(ids[0], addr(1), 1, 0u32, Origin::Bootstrap);
        for (i, id) in ids.iter().enumerate().skip(1) {
            t.insert(*id, addr(1), 1, i as u32, Origin::Discovered);
        }
        assert_eq!(t.replacements_len(), 1);
        for _ in 0..20 {
            assert!(t.on_failure(&ids[0]).is_none());
            assert!(t.on_no_reply(&ids[0]).is_none());
        }
        assert!(t.get(&ids[0]).is_some_and(|e| e.bootstrap));
        // Protection stays when the bootstrap node's record is updated.
        assert_eq!(
            t.insert(ids[0], addr(9), 2, 50, Origin::Discovered),
            InsertOutcome::Updated
        );
        assert!(t.on_failure(&ids[0]).is_none());
        assert_eq!(
            t.get(&ids[0]).map(|e| (e.record, e.bootstrap)),
            Some((50, true))
        );
        // An explicit remove still removes it.
        assert!(t.remove(&ids[0]).is_some());
        assert!(t.get(&ids[0]).is_none());
    }

    #[test]
    fn newer_seq_updates_the_record_older_is_ignored() {
        let mut rng = StdRng::seed_from_u64(5);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 250, 3, &mut rng);
        let mut t = table_with(local, &ids, Origin::Discovered);
        let id = ids[1];
        assert!(t.mark_seen(&id));
        let before = bucket(&t, 250);
        assert_eq!(
            t.insert(id, addr(1000), 5, 500, Origin::Discovered),
            InsertOutcome::Updated
        );
        let e = t.get(&id).cloned().expect("in table");
        assert_eq!((e.seq, e.record, e.addr), (5, 500, addr(1000)));
        assert!(e.seen, "an update keeps the liveness");
        assert_eq!(bucket(&t, 250), before, "an update keeps the position");
        for (seq, rec) in [(4, 400), (5, 501), (1, 100)] {
            assert_eq!(
                t.insert(id, addr(2000), seq, rec, Origin::Discovered),
                InsertOutcome::Unchanged
            );
        }
        let e = t.get(&id).cloned().expect("in table");
        assert_eq!((e.seq, e.record, e.addr), (5, 500, addr(1000)));
    }

    #[test]
    fn handshake_nodes_start_seen_discovered_and_bootstrap_do_not() {
        let mut rng = StdRng::seed_from_u64(6);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, 3, &mut rng);
        let mut t = RoutingTable::new(local);
        t.insert(ids[0], addr(1), 1, 0u32, Origin::Discovered);
        t.insert(ids[1], addr(1), 1, 1, Origin::Handshake);
        t.insert(ids[2], addr(1), 1, 2, Origin::Bootstrap);
        let seen: Vec<bool> = ids
            .iter()
            .map(|id| t.get(id).is_some_and(|e| e.seen))
            .collect();
        assert_eq!(seen, vec![false, true, false]);
        let served: Vec<NodeId> = t.at_distances(&[256], 16).iter().map(|e| e.id).collect();
        assert_eq!(served, vec![ids[1]]);
        // A handshake does not make an existing unseen entry seen (the reference keeps the
        // stored node's status).
        t.insert(ids[0], addr(1), 1, 0, Origin::Handshake);
        assert!(t.get(&ids[0]).is_some_and(|e| !e.seen));
    }

    #[test]
    fn answers_move_a_node_to_the_head_and_revalidation_picks_the_tail() {
        let mut rng = StdRng::seed_from_u64(7);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, 3, &mut rng);
        let mut t = table_with(local, &ids, Origin::Discovered);
        assert_eq!(t.revalidation_candidate(&mut rng), Some(ids[2]));
        assert!(t.mark_seen(&ids[2]));
        assert_eq!(bucket(&t, 256), vec![ids[2], ids[0], ids[1]]);
        assert_eq!(t.revalidation_candidate(&mut rng), Some(ids[1]));
        assert!(t.mark_seen(&ids[1]));
        assert!(t.mark_seen(&ids[0]));
        assert_eq!(t.revalidation_candidate(&mut rng), Some(ids[2]));
        assert!(!t.mark_seen(&NodeId([0xee; 32])));
    }

    /// Review: a bootstrap node that stopped answering stayed at the tail of its bucket (it is
    /// never removed), so every revalidation of that bucket pinged it and no other node there
    /// was ever checked. A bootstrap node that misses now goes to the head: revalidation moves
    /// on to the others, and comes back to it after them.
    #[test]
    fn a_dead_bootstrap_node_does_not_block_revalidation_of_its_bucket() {
        let mut rng = StdRng::seed_from_u64(17);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, 3, &mut rng);
        let mut t = RoutingTable::new(local);
        t.insert(ids[0], addr(1), 1, 0u32, Origin::Discovered);
        t.insert(ids[1], addr(2), 1, 1, Origin::Discovered);
        t.insert(ids[2], addr(3), 1, 2, Origin::Bootstrap);
        let mut checked = Vec::new();
        for _ in 0..3 {
            let c = t.revalidation_candidate(&mut rng).unwrap();
            checked.push(c);
            if c == ids[2] {
                // The dead bootstrap node misses (PING and FINDNODE alike), and stays.
                assert!(t.on_no_reply(&c).is_none());
                assert!(t.on_failure(&c).is_none());
            } else {
                assert!(t.mark_seen(&c));
            }
        }
        assert_eq!(checked, vec![ids[2], ids[1], ids[0]]);
        assert!(t.get(&ids[2]).is_some_and(|e| e.bootstrap));
    }

    #[test]
    fn revalidation_picks_a_random_non_empty_bucket() {
        let mut rng = StdRng::seed_from_u64(8);
        let local = NodeId(rng.random());
        let mut t: RoutingTable<u32> = RoutingTable::new(local);
        assert_eq!(t.revalidation_candidate(&mut rng), None);
        let far = ids_at(&local, 256, 5, &mut rng);
        let near = id_at(&local, 3, rng.random());
        for id in far.iter().chain([&near]) {
            t.insert(*id, addr(1), 1, 0, Origin::Discovered);
        }
        let mut picked = std::collections::HashMap::new();
        for _ in 0..200 {
            let id = t.revalidation_candidate(&mut rng).expect("non-empty");
            *picked.entry(id).or_insert(0) += 1;
        }
        // Only bucket tails are picked, each bucket about half of the time.
        assert_eq!(picked.len(), 2);
        assert!(picked[&near] > 60 && picked[&far[4]] > 60, "{picked:?}");
    }

    #[test]
    fn unanswered_requests_remove_only_with_a_replacement_or_low_reliability() {
        let mut rng = StdRng::seed_from_u64(9);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, BUCKET_SIZE + 1, &mut rng);
        let mut t = table_with(local, &ids[..BUCKET_SIZE], Origin::Discovered);

        // Seen, no replacement waiting: 0.9^6 = 0.53 stays, 0.9^7 = 0.48 goes.
        assert!(t.mark_seen(&ids[0]));
        for _ in 0..6 {
            assert!(t.on_no_reply(&ids[0]).is_none());
        }
        assert!(t.get(&ids[0]).is_some_and(|e| e.reliability() > 0.5));
        assert_eq!(t.on_no_reply(&ids[0]).map(|e| e.id), Some(ids[0]));

        // Never answered: the first miss removes it.
        assert_eq!(t.on_no_reply(&ids[1]).map(|e| e.id), Some(ids[1]));

        // Seen, but a replacement waits: the first miss removes it and promotes the replacement.
        t.insert(ids[0], addr(1), 1, 0, Origin::Discovered);
        t.insert(ids[1], addr(1), 1, 0, Origin::Discovered);
        t.insert(ids[BUCKET_SIZE], addr(1), 1, 0, Origin::Discovered);
        assert_eq!(t.replacements_len(), 1);
        assert!(t.mark_seen(&ids[2]));
        assert_eq!(t.on_no_reply(&ids[2]).map(|e| e.id), Some(ids[2]));
        assert!(t.get(&ids[BUCKET_SIZE]).is_some());
        assert_eq!(t.replacements_len(), 0);
    }

    #[test]
    fn remove_does_not_promote() {
        let mut rng = StdRng::seed_from_u64(10);
        let local = NodeId(rng.random());
        let ids = ids_at(&local, 256, BUCKET_SIZE + 1, &mut rng);
        let mut t = table_with(local, &ids, Origin::Discovered);
        assert_eq!(t.remove(&ids[0]).map(|e| e.id), Some(ids[0]));
        assert_eq!(t.len(), BUCKET_SIZE - 1);
        assert_eq!(t.replacements_len(), 1);
        // The next node offered takes the free place directly; the waiting one stays waiting.
        assert_eq!(
            t.insert(ids[BUCKET_SIZE], addr(1), 1, 0, Origin::Discovered),
            InsertOutcome::Added
        );
        assert_eq!(t.replacements_len(), 0, "it left the replacement cache");
        assert!(t.remove(&ids[0]).is_none());
    }

    #[test]
    fn at_distances_serves_reliable_nodes_at_those_distances_up_to_max() {
        let mut rng = StdRng::seed_from_u64(11);
        let local = NodeId(rng.random());
        let d256 = ids_at(&local, 256, 10, &mut rng);
        let d255 = ids_at(&local, 255, 10, &mut rng);
        let d254 = ids_at(&local, 254, 5, &mut rng);
        let d253 = ids_at(&local, 253, 16, &mut rng);
        let mut t = RoutingTable::new(local);
        for id in d256.iter().chain(&d255).chain(&d254).chain(&d253) {
            t.insert(*id, addr(1), 1, 0u32, Origin::Discovered);
        }
        for id in d256[..6].iter().chain(&d255[..7]).chain(&d253) {
            assert!(t.mark_seen(id));
        }
        let ids = |v: Vec<Entry<u32>>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
        let dists = |v: &[NodeId]| {
            v.iter()
                .map(|id| local.log_distance(id))
                .collect::<Vec<_>>()
        };
        let set = |v: &[NodeId]| v.iter().copied().collect::<std::collections::HashSet<_>>();

        let got = ids(t.at_distances(&[256], 16));
        assert_eq!(set(&got), set(&d256[..6]));
        // Unseen nodes are never served; d254 has none seen.
        assert!(t.at_distances(&[254], 16).is_empty());

        // Order: the first distance, then the lower ones, then the higher ones.
        let got = ids(t.at_distances(&[255, 256, 254], 16));
        assert_eq!(dists(&got), [vec![255; 7], vec![256; 6]].concat());
        let got = ids(t.at_distances(&[255, 256, 253], 16));
        assert_eq!(dists(&got), [vec![255; 7], vec![253; 9]].concat());
        let got = ids(t.at_distances(&[256, 255], 10));
        assert_eq!(dists(&got), [vec![256; 6], vec![255; 4]].concat());
        // Duplicated distances do not duplicate nodes.
        assert_eq!(t.at_distances(&[256, 256, 256], 16).len(), 6);

        // Any distance above 256 → nothing; distance 0 is the caller's (own record).
        assert!(t.at_distances(&[256, 257], 16).is_empty());
        assert!(t.at_distances(&[0], 16).is_empty());
        assert_eq!(t.at_distances(&[0, 256], 16).len(), 6);
        assert!(t.at_distances(&[], 16).is_empty());

        // A node that missed its last reply is not served until it answers again.
        assert!(t.on_no_reply(&d256[0]).is_none());
        assert!(!ids(t.at_distances(&[256], 16)).contains(&d256[0]));
        assert!(t.mark_seen(&d256[0]));
        assert!(ids(t.at_distances(&[256], 16)).contains(&d256[0]));
    }

    /// (log-distance, low bits) pairs: ids spread over many buckets, many in the same ones.
    fn spread_ids() -> impl Strategy<Value = Vec<(u16, [u8; 32])>> {
        prop::collection::vec(
            (
                prop_oneof![1u16..=256, 240u16..=256, 250u16..=256],
                any::<[u8; 32]>(),
            ),
            0..300,
        )
    }

    proptest! {
        #[test]
        fn closest_matches_a_brute_force_sort(
            local in any::<[u8; 32]>(),
            target in any::<[u8; 32]>(),
            nodes in spread_ids(),
            seen_mask in any::<u64>(),
            n in 0usize..40,
        ) {
            let local = NodeId(local);
            let target = NodeId(target);
            let mut t = RoutingTable::new(local);
            let mut offered = Vec::new();
            for (i, (d, bits)) in nodes.iter().enumerate() {
                let id = id_at(&local, *d, *bits);
                t.insert(id, addr(1), 1, i as u32, Origin::Discovered);
                if seen_mask >> (i % 64) & 1 == 1 {
                    t.mark_seen(&id);
                }
                offered.push(id);
            }
            for seen_only in [false, true] {
                // Brute force: every offered id that ended up in a bucket, by XOR distance.
                let mut want: Vec<NodeId> = offered
                    .iter()
                    .copied()
                    .filter(|id| t.get(id).is_some_and(|e| !seen_only || e.seen))
                    .collect();
                want.sort();
                want.dedup();
                want.sort_by_key(|id| {
                    let mut x = [0u8; 32];
                    for (i, b) in x.iter_mut().enumerate() {
                        *b = id.0[i] ^ target.0[i];
                    }
                    x
                });
                want.truncate(n);
                let got: Vec<NodeId> =
                    t.closest(&target, n, seen_only).into_iter().map(|e| e.id).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
