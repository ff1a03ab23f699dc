//! The iterative node lookup as a state machine without I/O (codex-protocol.md §7.6–7.7).
//!
//! Reference: nim-codex-dht `codexdht/private/eth/p2p/discoveryv5/protocol.nim`, procs `lookup`,
//! `lookupWorker`, `lookupDistances`, `findNode`; `nodes_verification.nim` for the checks on
//! the nodes a reply brings.
//!
//! The caller drives it: [`Lookup::next_queries`] says whom to send a FINDNODE to (asking for
//! [`lookup_distances`]`(target, node)`), and each outcome goes back in through
//! [`Lookup::on_response`] or [`Lookup::on_failure`], until [`Lookup::is_finished`]. The caller
//! also tells the routing table (answers → `mark_seen`, failures → `on_failure`, new nodes →
//! `insert`), as the reference's `findNode` and `lookupWorker` do.
//!
//! # Rules (reference `lookup`)
//!
//! * Start from the [`BUCKET_SIZE`] nodes of our table closest to the target, seen or not
//!   ("Unvalidated nodes are used for requests as a form of validation").
//! * Keep the candidates sorted by XOR distance to the target. Ask the closest not yet asked
//!   among the [`BUCKET_SIZE`] closest candidates, at most [`ALPHA`] at a time.
//! * Each FINDNODE asks for [`LOOKUP_REQUEST_LIMIT`] log-distances around the target's distance
//!   from the asked node ([`lookup_distances`]). Of a reply, at most [`FIND_NODE_RESULT_LIMIT`]
//!   nodes are looked at, and only those at one of the asked distances from the replying node
//!   (reference `verifyNodesRecords`; the caller checks signatures and addresses first). Our own
//!   id and ids already met in this lookup are skipped.
//! * Finished when nothing is in flight and every one of the [`BUCKET_SIZE`] closest candidates
//!   has been asked (and, since failed ones leave, has answered).
//!
//! # What a lookup finds
//!
//! FINDNODE asks for whole log-distances, and a node answers at most 16 nodes of a bucket without
//! knowing the target. So a lookup finds every one of the true 16 closest nodes that lies nearer
//! to the target than the log-distance of the 16th, but among the nodes at exactly that
//! log-distance it can miss one now and then. In the simulation tests (500 nodes with steady-state
//! tables) 99% of lookups return exactly the true 16 closest, 86% when a fifth of the nodes do
//! not answer; every miss was at the 16th's log-distance. The reference's lookup sends the same
//! requests, so it has the same limit.
//!
//! # Where we differ from the reference
//!
//! * A node whose query failed leaves the candidates, so it neither counts in the result nor
//!   holds one of the 16 places that decide termination. The reference keeps it
//!   ("TODO: Remove node on timed-out query?") and returns it among the closest nodes, answered
//!   or not. [`Lookup::result`] holds only nodes that answered.
//! * We keep up to [`LOOKUP_CANDIDATES`] candidates instead of 16, so a failure among the closest
//!   16 is made up by the next closest already known rather than by luck in later replies.
//! * A lookup sends at most [`LOOKUP_MAX_QUERIES`] queries; the reference has no cap. This bounds
//!   the work a network of nodes that keep naming ever closer dead ids can cause, and with it
//!   the set of ids met: at most 1 + [`LOOKUP_CANDIDATES`] + [`LOOKUP_MAX_QUERIES`] ×
//!   [`FIND_NODE_RESULT_LIMIT`].

use std::collections::HashSet;

use crate::ids::{MAX_LOG_DISTANCE, NodeId};
use crate::table::BUCKET_SIZE;

/// Queries in flight at once in a lookup: Kademlia's α (reference `Alpha`, protocol.nim).
pub const ALPHA: usize = 3;

/// Log-distances asked for in one FINDNODE of a lookup (reference `LookupRequestLimit`).
pub const LOOKUP_REQUEST_LIMIT: usize = 3;

/// Nodes looked at per FINDNODE reply; the rest are ignored (reference `FindNodeResultLimit`,
/// also the most a FINDNODE reply of ours holds).
pub const FIND_NODE_RESULT_LIMIT: usize = 16;

/// Candidates a lookup keeps, closest first: the 16 that decide termination plus spares that
/// take the place of failed ones (ours; the reference keeps 16).
pub const LOOKUP_CANDIDATES: usize = 4 * BUCKET_SIZE;

/// Queries one lookup sends at most (ours; the reference has no cap). A lookup over a few
/// thousand live nodes needs a few dozen (see the simulation tests).
pub const LOOKUP_MAX_QUERIES: usize = 128;

/// The log-distances to ask `dest` for when looking up `target` (reference `lookupDistances`):
/// `td = log_distance(target, dest)`, then `td+1, td−1, td+2, td−2, …`, keeping only the
/// distances above 0 and below 256, until [`LOOKUP_REQUEST_LIMIT`] are chosen. `td` itself is
/// always first, even when it is 0 (target = dest) or 256; the neighbours are never 0 or 256,
/// as in the reference (`tdAsInt + i < 256`, `tdAsInt - i > 0`).
pub fn lookup_distances(target: &NodeId, dest: &NodeId) -> Vec<u16> {
    let td = target.log_distance(dest);
    let mut out = Vec::with_capacity(LOOKUP_REQUEST_LIMIT);
    out.push(td);
    let mut i = 1u16;
    while out.len() < LOOKUP_REQUEST_LIMIT && i < MAX_LOG_DISTANCE {
        if td + i < MAX_LOG_DISTANCE {
            out.push(td + i);
        }
        if td > i && out.len() < LOOKUP_REQUEST_LIMIT {
            out.push(td - i);
        }
        i += 1;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotAsked,
    InFlight,
    Answered,
}

#[derive(Clone, Debug)]
struct Candidate<R> {
    id: NodeId,
    distance: [u8; 32],
    record: R,
    state: State,
}

/// One iterative lookup for the nodes closest to a target (module docs).
#[derive(Clone, Debug)]
pub struct Lookup<R> {
    target: NodeId,
    /// Sorted by distance to the target, at most [`LOOKUP_CANDIDATES`]; failed nodes removed.
    candidates: Vec<Candidate<R>>,
    /// Every id met in this lookup, our own included: never added twice.
    known: HashSet<NodeId>,
    /// The nodes asked and not yet answered or failed, at most [`ALPHA`]. Kept apart from the
    /// candidates because a node in flight can be pushed out of them by closer nodes.
    in_flight: Vec<Candidate<R>>,
    /// The [`BUCKET_SIZE`] closest nodes that answered, closest first: the result. Kept apart
    /// because closer nodes not yet asked can push answered ones out of the candidates.
    answered: Vec<Candidate<R>>,
    /// Queries handed out so far, at most [`LOOKUP_MAX_QUERIES`].
    queries: usize,
}

impl<R: Clone> Lookup<R> {
    /// A lookup by node `local` for `target`, starting from `seeds` (the closest nodes of our
    /// table, e.g. `table.closest(&target, BUCKET_SIZE, false)`). Our own id among the seeds is
    /// skipped; of more than [`LOOKUP_CANDIDATES`] seeds the closest are kept.
    pub fn new(local: NodeId, target: NodeId, mut seeds: Vec<(NodeId, R)>) -> Self {
        seeds.sort_unstable_by_key(|(id, _)| id.distance(&target));
        seeds.truncate(LOOKUP_CANDIDATES);
        let mut lookup = Lookup {
            target,
            candidates: Vec::new(),
            known: HashSet::from([local]),
            in_flight: Vec::with_capacity(ALPHA),
            answered: Vec::with_capacity(BUCKET_SIZE + 1),
            queries: 0,
        };
        for (id, record) in seeds {
            lookup.offer(id, record);
        }
        lookup
    }

    /// The id being looked up.
    pub fn target(&self) -> &NodeId {
        &self.target
    }

    /// Queries sent and not yet answered or failed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queries handed out so far.
    pub fn queries(&self) -> usize {
        self.queries
    }

    /// The nodes to send a FINDNODE for [`lookup_distances`]`(target, node)` now: the closest not
    /// yet asked among the [`BUCKET_SIZE`] closest candidates, so that at most [`ALPHA`] are in
    /// flight. Each returned node counts as in flight until its outcome is reported.
    pub fn next_queries(&mut self) -> Vec<(NodeId, R)> {
        let mut out = Vec::new();
        for c in self.candidates.iter_mut().take(BUCKET_SIZE) {
            if self.in_flight.len() >= ALPHA || self.queries >= LOOKUP_MAX_QUERIES {
                break;
            }
            if c.state == State::NotAsked {
                c.state = State::InFlight;
                self.in_flight.push(c.clone());
                self.queries += 1;
                out.push((c.id, c.record.clone()));
            }
        }
        out
    }

    /// `from` answered with the nodes `found` (already checked by the caller: valid records,
    /// usable addresses). Nodes beyond the first [`FIND_NODE_RESULT_LIMIT`], nodes not at one of
    /// the asked distances from `from`, our own id and ids met before are ignored. An answer
    /// from a node that is not in flight (late, or unasked) is ignored.
    pub fn on_response(&mut self, from: &NodeId, found: Vec<(NodeId, R)>) {
        let Some(mut done) = self.finish_query(from) else {
            return;
        };
        if let Some(c) = self.candidates.iter_mut().find(|c| c.id == *from) {
            c.state = State::Answered;
        }
        done.state = State::Answered;
        let pos = self
            .answered
            .partition_point(|c| c.distance < done.distance);
        if pos < BUCKET_SIZE {
            self.answered.insert(pos, done);
            self.answered.truncate(BUCKET_SIZE);
        }
        let asked = lookup_distances(&self.target, from);
        for (id, record) in found.into_iter().take(FIND_NODE_RESULT_LIMIT) {
            if asked.contains(&from.log_distance(&id)) {
                self.offer(id, record);
            }
        }
    }

    /// The query to `from` failed (timeout or bad reply): it leaves the candidates and is not
    /// asked again in this lookup.
    pub fn on_failure(&mut self, from: &NodeId) {
        if self.finish_query(from).is_some() {
            self.candidates.retain(|c| c.id != *from);
        }
    }

    /// Nothing in flight, and nothing left to ask: every one of the [`BUCKET_SIZE`] closest
    /// candidates has answered (or [`LOOKUP_MAX_QUERIES`] queries were sent).
    pub fn is_finished(&self) -> bool {
        self.in_flight.is_empty()
            && (self.queries >= LOOKUP_MAX_QUERIES
                || self
                    .candidates
                    .iter()
                    .take(BUCKET_SIZE)
                    .all(|c| c.state == State::Answered))
    }

    /// Up to [`BUCKET_SIZE`] nodes that answered, closest to the target first.
    pub fn result(&self) -> Vec<(NodeId, R)> {
        self.answered
            .iter()
            .map(|c| (c.id, c.record.clone()))
            .collect()
    }

    /// Takes `from` out of the in-flight set; `None` if it was not there.
    fn finish_query(&mut self, from: &NodeId) -> Option<Candidate<R>> {
        let pos = self.in_flight.iter().position(|c| c.id == *from)?;
        Some(self.in_flight.swap_remove(pos))
    }

    /// Adds a node never met before to the candidates, in distance order, dropping the farthest
    /// beyond [`LOOKUP_CANDIDATES`].
    fn offer(&mut self, id: NodeId, record: R) {
        if !self.known.insert(id) {
            return;
        }
        let distance = id.distance(&self.target);
        let pos = self.candidates.partition_point(|c| c.distance < distance);
        if pos >= LOOKUP_CANDIDATES {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                id,
                distance,
                record,
                state: State::NotAsked,
            },
        );
        self.candidates.truncate(LOOKUP_CANDIDATES);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::table::{Origin, RoutingTable};

    /// A random id at log-distance `d` (1..=256) from `from`.
    fn at(from: &NodeId, d: u16, rng: &mut StdRng) -> NodeId {
        let mut x: [u8; 32] = rng.random();
        let bit = usize::from(d - 1);
        let byte = 31 - bit / 8;
        let mask = 1u8 << (bit % 8);
        for b in x.iter_mut().take(byte) {
            *b = 0;
        }
        x[byte] = (x[byte] & (mask - 1)) | mask;
        NodeId(from.distance(&NodeId(x)))
    }

    fn ids(v: Vec<(NodeId, u32)>) -> Vec<NodeId> {
        v.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn lookup_distances_follow_the_reference_order() {
        let mut rng = StdRng::seed_from_u64(1);
        for (td, want) in [
            // Seen on the wire: the reference's lookup to our node asked [253, 254, 252].
            (253u16, vec![253u16, 254, 252]),
            (1, vec![1, 2, 3]),
            (2, vec![2, 3, 1]),
            (3, vec![3, 4, 2]),
            (128, vec![128, 129, 127]),
            (254, vec![254, 255, 253]),
            // 256 is never added as a neighbour (reference: `tdAsInt + i < 256`).
            (255, vec![255, 254, 253]),
            (256, vec![256, 255, 254]),
        ] {
            let dest = NodeId(rng.random());
            let target = at(&dest, td, &mut rng);
            assert_eq!(target.log_distance(&dest), td);
            assert_eq!(lookup_distances(&target, &dest), want, "td = {td}");
        }
        // Target = dest (resolving a node): distance 0 asks for its own record first.
        let dest = NodeId(rng.random());
        assert_eq!(lookup_distances(&dest, &dest), vec![0, 1, 2]);
    }

    /// Seeds at log-distances 200, 201, … from the target: seed i is the i-th closest.
    fn seeds(target: &NodeId, n: usize, rng: &mut StdRng) -> Vec<(NodeId, u32)> {
        assert!(n <= 57);
        (0..n)
            .map(|i| (at(target, 200 + i as u16, rng), i as u32))
            .collect()
    }

    #[test]
    fn at_most_alpha_in_flight_closest_first() {
        let mut rng = StdRng::seed_from_u64(2);
        let local = NodeId(rng.random());
        let target = NodeId(rng.random());
        let mut s = seeds(&target, 10, &mut rng);
        s.reverse(); // order of the seeds does not matter
        let mut l = Lookup::new(local, target, s.clone());
        s.reverse();
        assert_eq!(ids(l.next_queries()), ids(s[..ALPHA].to_vec()));
        assert_eq!(l.in_flight(), ALPHA);
        assert!(l.next_queries().is_empty(), "α already in flight");
        assert!(!l.is_finished());
        l.on_response(&s[1].0, Vec::new());
        assert_eq!(ids(l.next_queries()), vec![s[3].0]);
        l.on_failure(&s[0].0);
        assert_eq!(ids(l.next_queries()), vec![s[4].0]);
        assert_eq!(l.in_flight(), ALPHA);
        assert_eq!(l.queries(), 5);
    }

    #[test]
    fn finishes_when_the_closest_have_answered_and_failed_nodes_make_room() {
        let mut rng = StdRng::seed_from_u64(3);
        let local = NodeId(rng.random());
        let target = NodeId(rng.random());
        let s = seeds(&target, BUCKET_SIZE + 4, &mut rng);
        let mut l = Lookup::new(local, target, s.clone());
        let failed: HashSet<NodeId> = [s[0].0, s[5].0, s[15].0].into();
        let mut asked = Vec::new();
        loop {
            let q = l.next_queries();
            if q.is_empty() {
                break;
            }
            for (id, _) in q {
                asked.push(id);
                if failed.contains(&id) {
                    l.on_failure(&id);
                } else {
                    l.on_response(&id, Vec::new());
                }
            }
        }
        assert!(l.is_finished());
        // 16 answered in the end: the 3 failed ones were replaced by the next 3 closest; the
        // 20th seed was never needed.
        assert_eq!(asked.len(), BUCKET_SIZE + 3);
        let want: Vec<NodeId> = s[..BUCKET_SIZE + 3]
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !failed.contains(id))
            .collect();
        assert_eq!(ids(l.result()), want);
        // A late answer from a failed node changes nothing.
        l.on_response(&s[0].0, vec![(at(&target, 1, &mut rng), 99)]);
        assert!(l.is_finished());
        assert_eq!(ids(l.result()), want);
    }

    #[test]
    fn replies_are_checked_before_use() {
        let mut rng = StdRng::seed_from_u64(4);
        let local = NodeId(rng.random());
        let target = NodeId(rng.random());
        let from = at(&target, 250, &mut rng);
        let mut l = Lookup::new(local, target, vec![(from, 0u32), (local, 1)]);
        assert_eq!(ids(l.next_queries()), vec![from], "own id is not asked");
        // Closer to the target than `from`: at log-distance 250 from `from` (asked).
        let good: Vec<NodeId> = (0..20).map(|_| at(&target, 240, &mut rng)).collect();
        assert!(good.iter().all(|id| from.log_distance(id) == 250));
        // At log-distance 240 from `from`: not one of the asked distances.
        let wrong = at(&from, 240, &mut rng);
        let mut found: Vec<(NodeId, u32)> = vec![(local, 7), (wrong, 8), (from, 9)];
        found.extend(good.iter().map(|id| (*id, 1)));
        // From a node never asked: ignored.
        l.on_response(&good[0], vec![(at(&target, 10, &mut rng), 5)]);
        l.on_response(&from, found);
        let mut asked = Vec::new();
        loop {
            let q = l.next_queries();
            if q.is_empty() {
                break;
            }
            for (id, _) in q {
                asked.push(id);
                l.on_response(&id, Vec::new());
            }
        }
        assert!(l.is_finished());
        // The first 16 entries of the reply were looked at: own id, the wrong-distance node and
        // `from` itself were dropped, leaving 13 of the good ones; the rest of the reply was
        // ignored.
        let mut want: Vec<NodeId> = good[..13].to_vec();
        want.sort_by_key(|id| id.distance(&target));
        assert_eq!(asked.len(), 13);
        want.push(from);
        assert_eq!(ids(l.result()), want);
    }

    #[test]
    fn no_seeds_means_finished_with_nothing() {
        let mut l: Lookup<()> = Lookup::new(NodeId([1; 32]), NodeId([2; 32]), Vec::new());
        assert!(l.is_finished());
        assert!(l.next_queries().is_empty());
        assert!(l.result().is_empty());
    }

    #[test]
    fn candidates_ids_and_queries_are_bounded() {
        // Every node answers with 16 new nodes closer to the target: the lookup stops after
        // LOOKUP_MAX_QUERIES queries, keeping at most LOOKUP_CANDIDATES candidates.
        let mut rng = StdRng::seed_from_u64(5);
        let local = NodeId(rng.random());
        let target = NodeId(rng.random());
        let many = (0..100).map(|i| (NodeId(rng.random()), i)).collect();
        let mut l = Lookup::new(local, target, many);
        assert_eq!(l.candidates.len(), LOOKUP_CANDIDATES);
        let mut rounds = 0;
        while !l.is_finished() {
            rounds += 1;
            assert!(rounds <= LOOKUP_MAX_QUERIES, "not finished");
            for (id, _) in l.next_queries() {
                let td = target.log_distance(&id);
                let closer = (0..FIND_NODE_RESULT_LIMIT)
                    .map(|_| (at(&target, td.saturating_sub(1).max(1), &mut rng), 0))
                    .collect();
                l.on_response(&id, closer);
                assert!(l.candidates.len() <= LOOKUP_CANDIDATES);
            }
        }
        assert_eq!(l.queries(), LOOKUP_MAX_QUERIES);
        assert!(
            l.known.len() <= 1 + LOOKUP_CANDIDATES + LOOKUP_MAX_QUERIES * FIND_NODE_RESULT_LIMIT
        );
        assert_eq!(l.result().len(), BUCKET_SIZE);
    }

    /// A simulated network in its steady state: every node has been offered every other node,
    /// in random order, so its table holds all nodes of its nearer buckets and a random 16 of
    /// each full far bucket. Nodes in `dead` are still in others' tables but never answer.
    ///
    /// (With tables of "the 16 closest plus some random nodes" a node often lacks most of the
    /// bucket a lookup asks it for, and lookups miss nodes for that reason alone.)
    struct Net {
        ids: Vec<NodeId>,
        tables: HashMap<NodeId, RoutingTable<()>>,
        dead: HashSet<NodeId>,
    }

    impl Net {
        fn new(n: usize, dead_share: f64, rng: &mut StdRng) -> Net {
            let ids: Vec<NodeId> = (0..n).map(|_| NodeId(rng.random())).collect();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
            let mut tables = HashMap::new();
            for a in &ids {
                let mut others: Vec<NodeId> = ids.iter().copied().filter(|b| b != a).collect();
                for i in (1..others.len()).rev() {
                    others.swap(i, rng.random_range(0..=i));
                }
                let mut t = RoutingTable::new(*a);
                for b in others {
                    t.insert(b, addr, 1, (), Origin::Handshake);
                }
                tables.insert(*a, t);
            }
            let dead = ids
                .iter()
                .copied()
                .filter(|_| rng.random_bool(dead_share))
                .collect();
            Net { ids, tables, dead }
        }

        /// The true closest live nodes to `target`, other than `from`, closest first.
        fn truth(&self, from: &NodeId, target: &NodeId) -> Vec<NodeId> {
            let mut v: Vec<NodeId> = self
                .ids
                .iter()
                .copied()
                .filter(|id| id != from && !self.dead.contains(id))
                .collect();
            v.sort_by_key(|id| id.distance(target));
            v.truncate(BUCKET_SIZE);
            v
        }

        /// A lookup from `from`, answering the queries in flight in random order, each with the
        /// asked node's own FINDNODE reply; returns the result and the queries sent.
        fn lookup(&self, from: &NodeId, target: NodeId, rng: &mut StdRng) -> (Vec<NodeId>, usize) {
            let seeds = self.tables[from]
                .closest(&target, BUCKET_SIZE, false)
                .into_iter()
                .map(|e| (e.id, ()))
                .collect();
            let mut l = Lookup::new(*from, target, seeds);
            let mut pending: Vec<NodeId> = Vec::new();
            loop {
                pending.extend(l.next_queries().into_iter().map(|(id, ())| id));
                assert!(l.in_flight() <= ALPHA);
                assert_eq!(l.in_flight(), pending.len());
                if pending.is_empty() {
                    assert!(l.is_finished());
                    break;
                }
                assert!(!l.is_finished());
                let id = pending.swap_remove(rng.random_range(0..pending.len()));
                if self.dead.contains(&id) {
                    l.on_failure(&id);
                } else {
                    let found = self.tables[&id]
                        .at_distances(&lookup_distances(&target, &id), FIND_NODE_RESULT_LIMIT)
                        .into_iter()
                        .map(|e| (e.id, ()))
                        .collect();
                    l.on_response(&id, found);
                }
            }
            let result = l.result().into_iter().map(|(id, ())| id).collect();
            (result, l.queries())
        }

        /// Runs `lookups` lookups from random live nodes to random targets, checks each, and
        /// returns how many found exactly the true 16 closest live nodes.
        fn check(&self, lookups: usize, rng: &mut StdRng) -> usize {
            let mut exact = 0;
            for _ in 0..lookups {
                let from = loop {
                    let id = self.ids[rng.random_range(0..self.ids.len())];
                    if !self.dead.contains(&id) {
                        break id;
                    }
                };
                let target = NodeId(rng.random());
                let (got, queries) = self.lookup(&from, target, rng);
                let truth = self.truth(&from, &target);
                let ctx = format!("from {from} for {target}: got {got:?}, truth {truth:?}");
                assert!(queries <= 3 * BUCKET_SIZE, "{queries} queries; {ctx}");
                // Only live nodes (they answered), closest first, no duplicates, not us.
                assert!(
                    got.iter().all(|id| !self.dead.contains(id) && id != &from),
                    "{ctx}"
                );
                assert!(
                    got.windows(2)
                        .all(|w| w[0].distance(&target) < w[1].distance(&target))
                );
                // Every true-closest node nearer than the log-distance of the 16th is found.
                // Only nodes at the 16th's own log-distance can be missed: a FINDNODE asks for
                // whole log-distances, and a node answers up to 16 of a full bucket without
                // knowing the target.
                let shell = truth.last().map(|id| id.log_distance(&target)).unwrap_or(0);
                for id in truth.iter().filter(|id| id.log_distance(&target) < shell) {
                    assert!(got.contains(id), "missed {id}; {ctx}");
                }
                if got == truth {
                    exact += 1;
                }
            }
            exact
        }
    }

    #[test]
    fn lookups_find_the_true_closest_nodes() {
        for seed in [10, 11] {
            let mut rng = StdRng::seed_from_u64(seed);
            let net = Net::new(500, 0.0, &mut rng);
            let exact = net.check(200, &mut rng);
            assert!(exact >= 196, "{exact} of 200 exact");
        }
    }

    #[test]
    fn lookups_find_the_true_closest_live_nodes_when_a_fifth_fail() {
        let mut rng = StdRng::seed_from_u64(12);
        let net = Net::new(500, 0.2, &mut rng);
        let exact = net.check(200, &mut rng);
        assert!(exact >= 160, "{exact} of 200 exact");
    }
}
