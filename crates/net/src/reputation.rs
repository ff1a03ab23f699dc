//! Peer scores: one vocabulary for every protocol's complaints.
//!
//! A protocol that catches a peer misbehaving reports a [`PeerAction`] — how bad it was, not
//! what happened. Each action subtracts a fixed amount from the peer's score, which is clamped
//! to `[MIN_SCORE, MAX_SCORE]` and decays back towards zero with a half-life, so a peer that
//! made one mistake an hour ago is not held to it. Crossing [`DISCONNECT_SCORE`] drops the
//! connection; crossing [`BAN_SCORE`] also bans the peer for [`BAN_DURATION`] (the swarm refuses
//! its connections). This is the Lighthouse/CometBFT shape, reduced to what the block exchange
//! needs; the peer manager extends it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;

/// How bad a reported behaviour was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAction {
    /// Certainly malicious (for example, data that does not match the proof it came with):
    /// ban at once.
    Fatal,
    /// Clearly wrong, tolerated a few times (a protocol violation, a frame over the limit).
    LowTolerance,
    /// Wrong but plausibly a bug or a race (unsolicited data).
    MidTolerance,
    /// Mildly annoying (a slow or timed-out request).
    HighTolerance,
}

impl PeerAction {
    /// Score change.
    fn penalty(self) -> f64 {
        match self {
            PeerAction::Fatal => MIN_SCORE - MAX_SCORE,
            PeerAction::LowTolerance => -10.0,
            PeerAction::MidTolerance => -5.0,
            PeerAction::HighTolerance => -1.0,
        }
    }
}

/// Lowest score.
pub const MIN_SCORE: f64 = -100.0;
/// Highest score.
pub const MAX_SCORE: f64 = 100.0;
/// At or below this the peer is disconnected: five low-tolerance offences in quick succession.
pub const DISCONNECT_SCORE: f64 = -50.0;
/// At or below this the peer is banned: eight low-tolerance offences, or one fatal.
pub const BAN_SCORE: f64 = -80.0;
/// How long a ban lasts.
pub const BAN_DURATION: Duration = Duration::from_secs(30 * 60);
/// Half-life of a score: ten minutes of good behaviour halves a penalty.
pub const SCORE_HALF_LIFE: Duration = Duration::from_secs(10 * 60);
/// Peers remembered; the oldest scores near zero are forgotten first beyond this.
pub const MAX_TRACKED_PEERS: usize = 4096;

/// What the swarm owner should do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Keep,
    /// Close the peer's connections.
    Disconnect,
    /// Close them and refuse new ones until the ban expires.
    Ban,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f64,
    updated: Instant,
    banned_until: Option<Instant>,
}

/// Scores of the peers we have heard about.
#[derive(Debug, Default)]
pub struct Reputation {
    peers: HashMap<PeerId, Entry>,
    /// Banned peers forgotten to make room ([`Reputation::forget_some`]): their ban ends with
    /// the next [`Reputation::expired_bans`].
    evicted_bans: Vec<PeerId>,
}

fn decayed(score: f64, elapsed: Duration) -> f64 {
    score * 0.5f64.powf(elapsed.as_secs_f64() / SCORE_HALF_LIFE.as_secs_f64())
}

impl Reputation {
    /// Records `action` against `peer` at `now`.
    pub fn report(&mut self, peer: PeerId, action: PeerAction, now: Instant) -> Verdict {
        if self.peers.len() >= MAX_TRACKED_PEERS && !self.peers.contains_key(&peer) {
            self.forget_some(now);
        }
        let e = self.peers.entry(peer).or_insert(Entry {
            score: 0.0,
            updated: now,
            banned_until: None,
        });
        e.score = (decayed(e.score, now.saturating_duration_since(e.updated)) + action.penalty())
            .clamp(MIN_SCORE, MAX_SCORE);
        e.updated = now;
        if e.score <= BAN_SCORE {
            e.banned_until = Some(now + BAN_DURATION);
            Verdict::Ban
        } else if e.score <= DISCONNECT_SCORE {
            Verdict::Disconnect
        } else {
            Verdict::Keep
        }
    }

    /// The peer's score at `now`.
    pub fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        self.peers.get(peer).map_or(0.0, |e| {
            decayed(e.score, now.saturating_duration_since(e.updated))
        })
    }

    /// Whether the peer is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer)
            .and_then(|e| e.banned_until)
            .is_some_and(|until| until > now)
    }

    /// Peers banned at `now`.
    pub fn banned_count(&self, now: Instant) -> usize {
        self.peers
            .values()
            .filter(|e| e.banned_until.is_some_and(|until| until > now))
            .count()
    }

    /// Peers whose ban has ended by `now`, or who were forgotten while banned to make room;
    /// their ban is cleared.
    pub fn expired_bans(&mut self, now: Instant) -> Vec<PeerId> {
        let mut out = std::mem::take(&mut self.evicted_bans);
        for (peer, e) in &mut self.peers {
            if e.banned_until.is_some_and(|until| until <= now) {
                e.banned_until = None;
                out.push(*peer);
            }
        }
        out
    }

    /// Forgets one peer to make room: the unbanned peer whose score has decayed closest to
    /// zero, or, when every tracked peer is banned, the one whose ban ends first (its ban ends
    /// now). Only unbanned peers were forgotten, so throwaway identities banned one after the
    /// other (one bad block each) grew the table and the swarm's block list without bound, and
    /// made each report scan all of them (review). A banned peer let go early can come back;
    /// one with a fresh identity could anyway.
    fn forget_some(&mut self, now: Instant) {
        let unbanned = self
            .peers
            .iter()
            .filter(|(_, e)| e.banned_until.is_none_or(|u| u <= now))
            .min_by(|a, b| {
                let sa = decayed(a.1.score, now.saturating_duration_since(a.1.updated)).abs();
                let sb = decayed(b.1.score, now.saturating_duration_since(b.1.updated)).abs();
                sa.total_cmp(&sb)
            })
            .map(|(p, _)| *p);
        let victim = unbanned.or_else(|| {
            self.peers
                .iter()
                .min_by_key(|(_, e)| e.banned_until)
                .map(|(p, _)| *p)
        });
        if let Some(peer) = victim
            && let Some(e) = self.peers.remove(&peer)
            && e.banned_until.is_some_and(|u| u > now)
        {
            self.evicted_bans.push(peer);
        }
    }

    /// Peers tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Banned identities beyond [`MAX_TRACKED_PEERS`] do not grow the table: the ban that
    /// ends first makes room, and is reported as ended so the swarm lets the peer in again.
    #[test]
    fn bans_beyond_the_table_push_out_the_one_ending_first() {
        let mut r = Reputation::default();
        let t = Instant::now();
        let first = PeerId::random();
        assert_eq!(r.report(first, PeerAction::Fatal, t), Verdict::Ban);
        for i in 1..MAX_TRACKED_PEERS as u64 {
            let at = t + Duration::from_millis(i);
            assert_eq!(
                r.report(PeerId::random(), PeerAction::Fatal, at),
                Verdict::Ban
            );
        }
        assert_eq!(r.len(), MAX_TRACKED_PEERS);
        let late = t + Duration::from_secs(10);
        assert!(r.expired_bans(late).is_empty());
        for _ in 0..10 {
            assert_eq!(
                r.report(PeerId::random(), PeerAction::Fatal, late),
                Verdict::Ban
            );
        }
        assert_eq!(r.len(), MAX_TRACKED_PEERS, "the table grew past its bound");
        assert!(!r.is_banned(&first, late));
        let ended = r.expired_bans(late);
        assert_eq!(ended.len(), 10);
        assert_eq!(ended[0], first, "the ban ending first made room first");
        assert!(r.expired_bans(late).is_empty());
    }

    #[test]
    fn fatal_bans_and_ban_expires() {
        let mut r = Reputation::default();
        let p = PeerId::random();
        let t = Instant::now();
        assert_eq!(r.report(p, PeerAction::Fatal, t), Verdict::Ban);
        assert!(r.is_banned(&p, t + Duration::from_secs(1)));
        assert_eq!(r.banned_count(t + Duration::from_secs(1)), 1);
        assert_eq!(r.banned_count(t + BAN_DURATION), 0);
        assert!(r.expired_bans(t + Duration::from_secs(1)).is_empty());
        assert_eq!(r.expired_bans(t + BAN_DURATION), vec![p]);
        assert!(!r.is_banned(&p, t + BAN_DURATION));
    }

    #[test]
    fn repeated_low_tolerance_disconnects_then_bans() {
        let mut r = Reputation::default();
        let p = PeerId::random();
        let t = Instant::now();
        let verdicts: Vec<_> = (0..8)
            .map(|_| r.report(p, PeerAction::LowTolerance, t))
            .collect();
        assert_eq!(verdicts[3], Verdict::Keep);
        assert_eq!(verdicts[4], Verdict::Disconnect);
        assert_eq!(verdicts[7], Verdict::Ban);
    }

    #[test]
    fn scores_decay_with_half_life() {
        let mut r = Reputation::default();
        let p = PeerId::random();
        let t = Instant::now();
        r.report(p, PeerAction::LowTolerance, t);
        let later = r.score(&p, t + SCORE_HALF_LIFE);
        assert!((later - -5.0).abs() < 1e-9, "{later}");
        // Spread out, the same offences never reach the disconnect threshold.
        let mut now = t;
        for _ in 0..20 {
            now += SCORE_HALF_LIFE;
            assert_eq!(r.report(p, PeerAction::LowTolerance, now), Verdict::Keep);
        }
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut r = Reputation::default();
        let t = Instant::now();
        for _ in 0..MAX_TRACKED_PEERS + 10 {
            r.report(PeerId::random(), PeerAction::HighTolerance, t);
        }
        assert!(r.peers.len() <= MAX_TRACKED_PEERS);
    }
}
