//! How fast each provider delivers, and what that means for what it is asked for.
//!
//! A download from several holders of a dataset is only as fast as its slowest block: blocks
//! are handed on in order, so one block waiting at a slow peer holds up everything behind it
//! once the download's window is full (head-of-line blocking). Giving every holder the same
//! share, or the same fixed number of requests, lets one slow peer set the pace of the whole
//! download. The engine therefore measures each peer and uses the measure three ways:
//!
//! * **Rate.** Every delivery is a sample of the peer's rate by Little's law: the block waited
//!   behind `ahead` earlier requests to the same peer and took `latency`, so the peer moved about
//!   `(ahead + 1) / latency` blocks per second. Samples feed an exponentially weighted average
//!   ([`RATE_SMOOTHING`]) per delivery, so a fast peer's estimate settles in milliseconds and a
//!   slow peer's in a few of its own deliveries. A peer not yet measured is *unknown*.
//! * **Depth.** A peer may hold [`Pace::limit`] requests: its rate times [`PACE_WINDOW`], within
//!   [`MIN_OUTSTANDING`]..=[`MAX_OUTSTANDING`] ([`INITIAL_OUTSTANDING`] while unknown). A slow
//!   peer thus holds about one [`PACE_WINDOW`] of its own work, not 16 MiB. Because the sample
//!   counts the queue the depth builds, a peer limited only by the path's round trip `R` reads
//!   as `depth / R` and gets `depth × PACE_WINDOW / R`: more than before as long as
//!   `R < PACE_WINDOW`, so the depth grows to what the peer can really move (or the cap).
//! * **Choice.** A block goes to the holder expected to deliver it first ([`Pace::wait`]:
//!   the requests it already holds plus this one, over its rate). A holder at its limit counts
//!   too: when a fast holder that is full will still be done sooner than a slow holder with
//!   room, the block waits for the fast one. An unknown holder with room is tried at once (how
//!   else to learn its rate); an unknown holder that is full is not waited for.
//!
//! The engine's fourth tool, *hedging* (asking a second holder for a request that has waited too
//! long at the first), lives in the engine; [`should_hedge`] is its rule.
//!
//! An estimate that has not been updated for [`RATE_STALE`] while the peer held no request is
//! forgotten, so a peer that was slow once is tried again later rather than never.

use std::time::{Duration, Instant};

/// Requests outstanding at one peer at most: 256 blocks (16 MiB) keeps a fast loopback or LAN
/// peer busy, and bounds what one peer can hold up.
pub const MAX_OUTSTANDING: usize = 256;
/// Requests a measured peer may always hold, however slow.
pub const MIN_OUTSTANDING: usize = 4;
/// Requests an unmeasured peer may hold: enough to learn its rate within one round trip
/// without handing a slow newcomer much of a download (16 blocks, 1 MiB).
pub const INITIAL_OUTSTANDING: usize = 16;
/// A peer may hold about this much of its own measured work.
pub const PACE_WINDOW: Duration = Duration::from_secs(1);
/// Weight of each new sample in a peer's rate estimate.
pub const RATE_SMOOTHING: f64 = 1.0 / 8.0;
/// An estimate left alone this long while the peer held nothing is forgotten.
pub const RATE_STALE: Duration = Duration::from_secs(30);
/// A request is hedged only after waiting at least this long: a fast peer on loopback or a LAN
/// delivers its whole queue well within it, so two fast peers are rarely asked for the same
/// block, while a block stuck behind a slow peer holds up an in-order download for at most
/// this (plus [`HEDGE_INTERVAL`]) before a second holder is asked.
pub const HEDGE_MIN_AGE: Duration = Duration::from_millis(100);
/// How often the engine looks for requests to hedge (a scan of the requests in flight, at
/// most 256 per peer).
pub const HEDGE_INTERVAL: Duration = Duration::from_millis(50);
/// ... and only when the second holder is expected to deliver it this many times sooner than
/// the request has already waited.
pub const HEDGE_FACTOR: f64 = 4.0;

/// One peer's measured delivery rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Blocks per second; `None` until measured.
    rate: Option<f64>,
    /// When the estimate last changed.
    updated: Option<Instant>,
}

impl Pace {
    /// A delivery of a block that was asked for with `ahead` requests to this peer before it,
    /// `latency` ago.
    pub fn observe(&mut self, ahead: usize, latency: Duration, now: Instant) {
        // A clock too coarse to tell (zero) would read as an infinite rate: floor it at 10 µs.
        let secs = latency.as_secs_f64().max(1e-5);
        let sample = (ahead as f64 + 1.0) / secs;
        self.rate = Some(match self.rate {
            None => sample,
            Some(r) => r + RATE_SMOOTHING * (sample - r),
        });
        self.updated = Some(now);
    }

    /// A request asked with `ahead` requests before it that another holder answered first,
    /// after it had waited `waited` here: this peer moved fewer than `(ahead + 1) / waited`
    /// blocks per second, so the estimate drops to that bound if it is above it (and starts
    /// there if the peer was unmeasured). A bound never raises the estimate.
    pub fn observe_unanswered(&mut self, ahead: usize, waited: Duration, now: Instant) {
        let bound = (ahead as f64 + 1.0) / waited.as_secs_f64().max(1e-5);
        self.rate = Some(self.rate.map_or(bound, |r| r.min(bound)));
        self.updated = Some(now);
    }

    /// Blocks per second, if measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// How many requests the peer may hold.
    pub fn limit(&self) -> usize {
        match self.rate {
            None => INITIAL_OUTSTANDING,
            Some(r) => {
                let n = (r * PACE_WINDOW.as_secs_f64()).ceil();
                // `as` saturates; the clamp then bounds it.
                (n as usize).clamp(MIN_OUTSTANDING, MAX_OUTSTANDING)
            }
        }
    }

    /// Seconds until a new request to a peer holding `outstanding` would be delivered: `0` for
    /// an unknown peer with room (try it), infinite for an unknown peer without.
    pub fn wait(&self, outstanding: usize) -> f64 {
        match self.rate {
            Some(r) if r > 0.0 => (outstanding as f64 + 1.0) / r,
            Some(_) => f64::INFINITY,
            None if outstanding < INITIAL_OUTSTANDING => 0.0,
            None => f64::INFINITY,
        }
    }

    /// Forgets an estimate that is [`RATE_STALE`] while the peer holds nothing.
    pub fn expire(&mut self, outstanding: usize, now: Instant) {
        if outstanding == 0
            && self
                .updated
                .is_some_and(|u| now.saturating_duration_since(u) >= RATE_STALE)
        {
            *self = Pace::default();
        }
    }
}

/// Whether a request that has waited `age` at `primary`, asked with `ahead` requests before it
/// there, should also go to `other`, a holder with room that holds `other_load` requests.
/// `primary_silent` is how long `primary` has owed us blocks without delivering any.
///
/// Three things must hold. The request is at least [`HEDGE_MIN_AGE`] old. `other` is expected to
/// deliver it [`HEDGE_FACTOR`] times sooner than it has already waited. And either `other` is
/// the faster peer (an unmeasured one counts as slowest), or `primary` has stalled: it has
/// delivered nothing for [`HEDGE_MIN_AGE`] and is [`HEDGE_FACTOR`] times behind its own pace
/// for this request. The last rule keeps the requests of a fast peer that is merely busy (its
/// deliveries late for a moment, as on a loaded machine) from being copied to a slower one,
/// where they would queue in front of that peer's own work and come second anyway.
pub fn should_hedge(
    age: Duration,
    primary: &Pace,
    ahead: usize,
    primary_silent: Duration,
    other: &Pace,
    other_load: usize,
) -> bool {
    let age_s = age.as_secs_f64();
    if age < HEDGE_MIN_AGE || other.wait(other_load) * HEDGE_FACTOR >= age_s {
        return false;
    }
    let faster = other.rate.unwrap_or(0.0) > primary.rate.unwrap_or(0.0);
    let behind = match primary.rate {
        Some(r) if r > 0.0 => age_s > HEDGE_FACTOR * (ahead as f64 + 1.0) / r,
        _ => true,
    };
    let stalled = behind && primary_silent >= HEDGE_MIN_AGE;
    faster || stalled
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates asking a peer that serves `capacity` blocks/s over a path with round trip
    /// `rtt`, always as many requests as its limit allows; returns the limit after `rounds`.
    fn settle(capacity: f64, rtt: Duration, rounds: usize) -> usize {
        let mut pace = Pace::default();
        let now = Instant::now();
        for _ in 0..rounds {
            // Each of `limit` requests sent at once waits for those ahead of it and the round
            // trip.
            for ahead in 0..pace.limit() {
                let latency = rtt + Duration::from_secs_f64((ahead as f64 + 1.0) / capacity);
                pace.observe(ahead, latency, now);
            }
        }
        pace.limit()
    }

    #[test]
    fn a_fast_peer_reaches_the_cap() {
        // Loopback: 9,000 blocks/s, 0.2 ms.
        assert_eq!(
            settle(9000.0, Duration::from_micros(200), 4),
            MAX_OUTSTANDING
        );
        // A long path: 1,500 blocks/s (100 MB/s) at 100 ms needs 150 in flight; it gets more.
        let n = settle(1500.0, Duration::from_millis(100), 20);
        assert!(n >= 150, "limit {n}");
    }

    #[test]
    fn a_slow_peer_holds_about_one_window_of_its_work() {
        // 10 blocks/s on a short path: about 10 requests, not 256.
        let n = settle(10.0, Duration::from_millis(1), 10);
        assert!((MIN_OUTSTANDING..=12).contains(&n), "limit {n}");
        // Slower still: the floor.
        assert_eq!(settle(0.5, Duration::from_millis(1), 10), MIN_OUTSTANDING);
    }

    #[test]
    fn unknown_peers_are_tried_and_not_waited_for() {
        let p = Pace::default();
        assert_eq!(p.limit(), INITIAL_OUTSTANDING);
        assert_eq!(p.wait(0), 0.0);
        assert_eq!(p.wait(INITIAL_OUTSTANDING - 1), 0.0);
        assert!(p.wait(INITIAL_OUTSTANDING).is_infinite());
    }

    #[test]
    fn wait_grows_with_what_the_peer_holds() {
        let mut p = Pace::default();
        p.observe(0, Duration::from_millis(10), Instant::now()); // 100 blocks/s
        assert!((p.wait(0) - 0.01).abs() < 1e-9);
        assert!((p.wait(99) - 1.0).abs() < 1e-9);
        // A fast full peer (1,000 blocks/s, 256 queued) beats a slow empty one (2 blocks/s).
        let mut fast = Pace::default();
        fast.observe(0, Duration::from_millis(1), Instant::now());
        let mut slow = Pace::default();
        slow.observe(0, Duration::from_millis(500), Instant::now());
        assert!(fast.wait(fast.limit()) < slow.wait(0));
    }

    #[test]
    fn estimates_follow_the_peer_and_expire() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        p.observe(0, Duration::from_millis(1), t0); // 1,000/s
        for _ in 0..64 {
            p.observe(0, Duration::from_millis(100), t0); // now 10/s
        }
        let r = p.rate().unwrap();
        assert!((9.0..12.0).contains(&r), "rate {r}");
        // Not while it holds requests, nor before RATE_STALE.
        p.expire(1, t0 + RATE_STALE);
        assert!(p.rate().is_some());
        p.expire(0, t0 + RATE_STALE / 2);
        assert!(p.rate().is_some());
        p.expire(0, t0 + RATE_STALE);
        assert!(p.rate().is_none());
        // A zero latency does not make an infinite rate.
        p.observe(3, Duration::ZERO, t0);
        assert!(p.rate().unwrap().is_finite());
        assert_eq!(p.limit(), MAX_OUTSTANDING);
    }

    #[test]
    fn an_unanswered_request_only_lowers_the_estimate() {
        let t = Instant::now();
        let mut p = Pace::default();
        // Unmeasured: starts at the bound (16 requests in 0.4 s: under 40/s).
        p.observe_unanswered(15, Duration::from_millis(400), t);
        assert!((p.rate().unwrap() - 40.0).abs() < 1e-9);
        // A looser bound leaves it; a tighter one lowers it.
        p.observe_unanswered(15, Duration::from_millis(100), t);
        assert!((p.rate().unwrap() - 40.0).abs() < 1e-9);
        p.observe_unanswered(0, Duration::from_millis(100), t);
        assert!((p.rate().unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn hedging_needs_age_a_much_sooner_holder_and_a_faster_or_stalled_primary() {
        let t = Instant::now();
        let at = |rate: f64| {
            let mut p = Pace::default();
            p.observe(0, Duration::from_secs_f64(1.0 / rate), t);
            p
        };
        let (fast, slow, unknown) = (at(1000.0), at(10.0), Pace::default());
        let (late, sec) = (Duration::from_millis(900), Duration::from_secs(1));
        let quiet = Duration::ZERO; // the primary delivered just now
        let dead = sec; // the primary delivered nothing for a second
        // Stuck at a slow peer, a fast one with room: after HEDGE_MIN_AGE, not before.
        assert!(!should_hedge(HEDGE_MIN_AGE / 2, &slow, 0, quiet, &fast, 0));
        assert!(should_hedge(HEDGE_MIN_AGE, &slow, 0, quiet, &fast, 0));
        // ... and at an unmeasured peer too.
        assert!(should_hedge(HEDGE_MIN_AGE, &unknown, 0, quiet, &fast, 0));
        // Not when the other would not be much sooner: 250 queued at 1,000/s is 0.25 s.
        assert!(!should_hedge(sec, &slow, 0, quiet, &fast, 249));
        assert!(should_hedge(
            Duration::from_millis(1100),
            &slow,
            0,
            quiet,
            &fast,
            249
        ));
        // A busy fast peer's request is not copied to a slower one while it keeps its pace
        // (200 ahead at 1,000/s is due after 0.2 s), nor while it keeps delivering.
        let age = Duration::from_millis(300);
        assert!(!should_hedge(age, &fast, 200, dead, &slow, 0));
        assert!(!should_hedge(age, &fast, 200, dead, &unknown, 0));
        assert!(!should_hedge(sec, &fast, 200, quiet, &unknown, 0));
        // ... but it is once the fast peer is far behind its own pace and silent (stalled).
        assert!(should_hedge(late, &fast, 200, dead, &unknown, 0));
        assert!(should_hedge(late, &fast, 200, dead, &slow, 0));
        // Two equal peers: only a stalled primary.
        assert!(!should_hedge(age, &fast, 200, dead, &fast, 0));
        assert!(!should_hedge(sec, &fast, 200, quiet, &fast, 0));
        assert!(should_hedge(sec, &fast, 200, dead, &fast, 0));
    }
}
