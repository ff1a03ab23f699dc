//! Rate limits on the work an unauthenticated packet makes us do.
//!
//! A packet we cannot decrypt gets a WHOAREYOU, and the handshake that answers it costs us up to
//! two ECDSA verifications, an ECDH and a session. Sending one costs the sender nothing: the
//! "one live challenge per node" rule is keyed by the node id the packet claims, which it
//! chooses freely, and so are the sessions (found by review: a flood of junk packets with random
//! ids got one WHOAREYOU each, kept the challenge map full so that real handshakes lost their
//! challenge, and could flush the session cache). So challenges are rationed by token buckets:
//! one per source IP address and one for the node as a whole. A packet over either budget is
//! dropped without an answer; a real node retries on its next request.
//!
//! Loopback sources are not rationed: they are processes on this machine (local test networks
//! run dozens of nodes on 127.0.0.1), and a local process can harm the node in simpler ways.

use std::{collections::HashMap, net::IpAddr};

use tokio::time::Instant;

/// Challenges one source IP address may get per second, sustained.
pub const CHALLENGES_PER_IP_PER_SEC: f64 = 20.0;
/// Challenges one source IP address may get in a burst: a node (or a NAT in front of several)
/// meeting us for the first time handshakes a few times at once.
pub const CHALLENGE_BURST_PER_IP: f64 = 64.0;
/// Challenges the node sends per second in all, sustained: each may cost two signature checks
/// and an ECDH when answered (about 0.3 ms together), so this bounds handshake work to a small
/// part of one core.
pub const CHALLENGES_PER_SEC: f64 = 500.0;
/// Challenges the node sends in a burst, in all.
pub const CHALLENGE_BURST: f64 = 1000.0;
/// Requests (over a session) one source IP address may make per second, sustained. Each is
/// handled on the service's one task; some cost a table sort or a signature check. A node's
/// lookups ask us a few requests each, so this is far above a real node's rate (or a NAT's
/// few), and a flood from one host no longer takes the task from everyone else (found by
/// review). Requests over it are dropped unanswered, as a lost packet.
pub const REQUESTS_PER_IP_PER_SEC: f64 = 200.0;
/// Requests one source IP address may make in a burst.
pub const REQUEST_BURST_PER_IP: f64 = 400.0;

/// Source addresses whose budget is tracked. When full, the entries that have refilled (idle
/// sources) go first, then the least recently seen: a flood from many addresses costs at most
/// this many entries.
pub const MAX_TRACKED_IPS: usize = 4096;
/// Sessions kept per source IP address (loopback aside): a host cannot take over the session
/// cache ([`crate::session::MAX_SESSIONS`]) with made-up node ids.
pub const MAX_SESSIONS_PER_IP: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it would be full by `now` (its source has been idle long enough).
    fn refilled(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + secs * rate >= burst
    }
}

/// The challenge budgets: per source IP address and in all (module docs).
#[derive(Debug)]
pub struct ChallengeLimiter {
    per_ip: HashMap<IpAddr, Bucket>,
    all: Bucket,
    per_ip_rate: f64,
    per_ip_burst: f64,
    rate: f64,
    burst: f64,
}

impl ChallengeLimiter {
    /// The limiter with the budgets above.
    pub fn new(now: Instant) -> ChallengeLimiter {
        ChallengeLimiter::with_rates(
            (CHALLENGES_PER_IP_PER_SEC, CHALLENGE_BURST_PER_IP),
            (CHALLENGES_PER_SEC, CHALLENGE_BURST),
            now,
        )
    }

    /// The request budget: [`REQUESTS_PER_IP_PER_SEC`] per source address, none for the node
    /// as a whole (many hosts asking us is what a DHT node is for).
    pub fn for_requests(now: Instant) -> ChallengeLimiter {
        ChallengeLimiter::with_rates(
            (REQUESTS_PER_IP_PER_SEC, REQUEST_BURST_PER_IP),
            (f64::MAX, f64::MAX),
            now,
        )
    }

    /// A limiter with other budgets, each (per second, burst) (tests).
    pub fn with_rates(per_ip: (f64, f64), all: (f64, f64), now: Instant) -> ChallengeLimiter {
        ChallengeLimiter {
            per_ip: HashMap::new(),
            all: Bucket::full(all.1, now),
            per_ip_rate: per_ip.0,
            per_ip_burst: per_ip.1,
            rate: all.0,
            burst: all.1,
        }
    }

    /// Whether a challenge may go to `ip` now; takes one from both budgets if so. A `known`
    /// sender (a node of the routing table writing from its record's address) is not
    /// rationed: packets spoofed from many addresses spend the budgets, and used to keep every
    /// node, known ones too, from opening a session with us (found by review). The service
    /// keeps one live challenge per node, so spoofing a known node sends it no more than that.
    pub fn allow(&mut self, ip: IpAddr, known: bool, now: Instant) -> bool {
        if known || ip.is_loopback() {
            return true;
        }
        let (rate, burst) = (self.per_ip_rate, self.per_ip_burst);
        if !self.per_ip.contains_key(&ip) && self.per_ip.len() >= MAX_TRACKED_IPS {
            self.per_ip.retain(|_, b| !b.refilled(rate, burst, now));
            if self.per_ip.len() >= MAX_TRACKED_IPS
                && let Some(oldest) = self
                    .per_ip
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(k, _)| *k)
            {
                self.per_ip.remove(&oldest);
            }
        }
        let bucket = self
            .per_ip
            .entry(ip)
            .or_insert_with(|| Bucket::full(burst, now));
        // The source's budget is looked at first, so a flooding address does not drain the
        // node's budget for everyone else.
        let mut probe = *bucket;
        if !probe.take(rate, burst, now) {
            *bucket = probe;
            return false;
        }
        if !self.all.take(self.rate, self.burst, now) {
            return false;
        }
        *bucket = probe;
        true
    }

    /// Source addresses tracked.
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::with_rates((10.0, 5.0), (1000.0, 1000.0), t0);
        let granted = (0..20).filter(|_| l.allow(ip(1), false, t0)).count();
        assert_eq!(granted, 5);
        // Another source is not held back by the first.
        assert!(l.allow(ip(2), false, t0));
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.allow(ip(1), false, t1));
        assert!(!l.allow(ip(1), false, t1));
    }

    #[test]
    fn the_whole_budget_bounds_many_sources() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::with_rates((10.0, 5.0), (100.0, 50.0), t0);
        let granted = (0..1000).filter(|i| l.allow(ip(*i), false, t0)).count();
        assert_eq!(granted, 50);
        // A refused source keeps its own budget: it was the node's that ran out.
        let t1 = t0 + Duration::from_millis(20);
        assert!(l.allow(ip(999), false, t1));
    }

    #[test]
    fn known_senders_are_not_rationed() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::with_rates((10.0, 5.0), (100.0, 50.0), t0);
        // Spoofed packets from many addresses spend the node's budget...
        let granted = (0..1000).filter(|i| l.allow(ip(*i), false, t0)).count();
        assert_eq!(granted, 50);
        assert!(!l.allow(ip(5000), false, t0));
        // ...and a node of the table still gets its challenge, as often as it asks.
        assert!((0..20).all(|_| l.allow(ip(5000), true, t0)));
    }

    #[test]
    fn requests_are_rationed_per_source_only() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::for_requests(t0);
        let burst = REQUEST_BURST_PER_IP as usize;
        let granted = (0..burst * 2).filter(|_| l.allow(ip(1), false, t0)).count();
        assert_eq!(granted, burst);
        // Many other hosts are not held back, whatever their number.
        assert!((2..1_000).all(|i| l.allow(ip(i), false, t0)));
        // A second later, one second's worth again.
        let t1 = t0 + Duration::from_secs(1);
        let again = (0..burst).filter(|_| l.allow(ip(1), false, t1)).count();
        assert_eq!(again, REQUESTS_PER_IP_PER_SEC as usize);
    }

    #[test]
    fn loopback_is_not_rationed() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::with_rates((1.0, 1.0), (1.0, 1.0), t0);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!((0..100).all(|_| l.allow(lo, false, t0)));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let t0 = Instant::now();
        let mut l = ChallengeLimiter::new(t0);
        for i in 0..(MAX_TRACKED_IPS as u32 + 500) {
            l.allow(ip(i), false, t0);
        }
        assert!(l.tracked() <= MAX_TRACKED_IPS, "{}", l.tracked());
        // Idle sources make room first: all are refilled a few seconds later.
        let later = t0 + Duration::from_secs(10);
        assert!(l.allow(ip(1_000_000), false, later));
        assert!(l.tracked() <= MAX_TRACKED_IPS);
    }
}
