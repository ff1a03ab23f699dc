//! Session keys per remote node (codex-protocol.md §7.3).
//!
//! After a handshake both sides hold two AES-128 keys: the initiator writes with the
//! *initiator key* and reads with the *recipient key*, the recipient the other way round.
//! Sessions are keyed by `(node id, socket address)`, as the reference keys them, so a node that
//! moves to a new address gets a new handshake.
//!
//! The cache is bounded ([`MAX_SESSIONS`]): when full, the least recently used session is
//! dropped; its peer simply answers our next packet with WHOAREYOU and we redo the handshake.
//! Idle sessions expire after [`SESSION_IDLE_TIMEOUT`].

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::time::Instant;

use crate::{NodeId, limits::MAX_SESSIONS_PER_IP};

/// Most sessions kept at once. A session costs about 100 bytes; the reference keeps an LRU
/// cache of the same order. Far above the routing table's 256 × 16 useful peers in practice.
pub const MAX_SESSIONS: usize = 4096;

/// A session unused for this long is dropped (rust-discv5 uses a day; the peer re-handshakes).
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The keys of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Key we encrypt with.
    pub write_key: [u8; 16],
    /// Key we decrypt with.
    pub read_key: [u8; 16],
    /// The read key of the session this one replaced, if any. When two nodes start handshakes
    /// with each other at the same moment, each ends up holding the session the *other*
    /// initiated while packets of the crossed one are still in flight; reading with either key
    /// lets those through instead of losing a response and waiting for a timeout.
    pub previous_read_key: Option<[u8; 16]>,
    last_used: Instant,
}

impl Session {
    /// A session with these keys, used now.
    pub fn new(write_key: [u8; 16], read_key: [u8; 16], now: Instant) -> Session {
        Session {
            write_key,
            read_key,
            previous_read_key: None,
            last_used: now,
        }
    }
}

/// The bounded session cache.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<(NodeId, SocketAddr), Session>,
}

impl Sessions {
    /// The session with `(id, addr)`, if any and not expired; marks it used.
    pub fn get(&mut self, id: &NodeId, addr: SocketAddr, now: Instant) -> Option<&Session> {
        let key = (*id, addr);
        let expired = match self.map.get(&key) {
            None => return None,
            Some(s) => now.saturating_duration_since(s.last_used) > SESSION_IDLE_TIMEOUT,
        };
        if expired {
            self.map.remove(&key);
            return None;
        }
        let s = self.map.get_mut(&key)?;
        s.last_used = now;
        Some(s)
    }

    /// Stores (or replaces) the session with `(id, addr)`, evicting the least recently used one
    /// when the cache is full. A replaced session's read key stays usable as
    /// [`Session::previous_read_key`].
    pub fn insert(&mut self, id: NodeId, addr: SocketAddr, mut session: Session) {
        if let Some(old) = self.map.get(&(id, addr)) {
            session.previous_read_key = Some(old.read_key);
        }
        // One host (loopback aside) keeps at most MAX_SESSIONS_PER_IP: made-up node ids from
        // one address cannot push everyone else's sessions out (found by review).
        if !addr.ip().is_loopback() && !self.map.contains_key(&(id, addr)) {
            let same_host = self.map.iter().filter(|((_, a), _)| a.ip() == addr.ip());
            if same_host.clone().count() >= MAX_SESSIONS_PER_IP
                && let Some(oldest) = same_host.min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
            }
        }
        if self.map.len() >= MAX_SESSIONS
            && !self.map.contains_key(&(id, addr))
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        self.map.insert((id, addr), session);
    }

    /// Forgets the session with `(id, addr)` (its keys stopped working).
    pub fn remove(&mut self, id: &NodeId, addr: SocketAddr) {
        self.map.remove(&(*id, addr));
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn one_host_keeps_a_bounded_number_of_sessions() {
        let now = Instant::now();
        let mut s = Sessions::default();
        let host = |port| SocketAddr::from(([192, 0, 2, 7], port));
        for port in 0..(MAX_SESSIONS_PER_IP as u16 * 3) {
            s.insert(
                NodeId::random(),
                host(port),
                Session::new([1; 16], [2; 16], now),
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_IP);
        // Others are not pushed out by it; loopback is not bounded.
        let other = NodeId::random();
        s.insert(
            other,
            SocketAddr::from(([192, 0, 2, 8], 1)),
            Session::new([1; 16], [2; 16], now),
        );
        for port in 0..(MAX_SESSIONS_PER_IP as u16 * 2) {
            s.insert(
                NodeId::random(),
                addr(port),
                Session::new([1; 16], [2; 16], now),
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_IP * 3 + 1);
        assert!(
            s.get(&other, SocketAddr::from(([192, 0, 2, 8], 1)), now)
                .is_some()
        );
    }

    #[test]
    fn keyed_by_id_and_address() {
        let now = Instant::now();
        let mut s = Sessions::default();
        let id = NodeId::random();
        s.insert(id, addr(1), Session::new([1; 16], [2; 16], now));
        assert!(s.get(&id, addr(1), now).is_some());
        assert!(s.get(&id, addr(2), now).is_none());
        assert!(s.get(&NodeId::random(), addr(1), now).is_none());
        s.remove(&id, addr(1));
        assert!(s.is_empty());
    }

    #[test]
    fn a_replaced_session_keeps_its_read_key_as_the_previous_one() {
        let now = Instant::now();
        let mut s = Sessions::default();
        let id = NodeId::random();
        s.insert(id, addr(1), Session::new([1; 16], [2; 16], now));
        assert_eq!(s.get(&id, addr(1), now).unwrap().previous_read_key, None);
        s.insert(id, addr(1), Session::new([3; 16], [4; 16], now));
        let got = s.get(&id, addr(1), now).unwrap();
        assert_eq!((got.write_key, got.read_key), ([3; 16], [4; 16]));
        assert_eq!(got.previous_read_key, Some([2; 16]));
    }

    #[test]
    fn idle_sessions_expire() {
        let now = Instant::now();
        let mut s = Sessions::default();
        let id = NodeId::random();
        s.insert(id, addr(1), Session::new([1; 16], [2; 16], now));
        let later = now + SESSION_IDLE_TIMEOUT + Duration::from_secs(1);
        assert!(s.get(&id, addr(1), later).is_none());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn full_cache_drops_the_least_recently_used() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let first = NodeId::random();
        s.insert(first, addr(1), Session::new([0; 16], [0; 16], t0));
        for i in 1..MAX_SESSIONS {
            let t = t0 + Duration::from_millis(i as u64);
            s.insert(NodeId::random(), addr(1), Session::new([0; 16], [0; 16], t));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let t = t0 + Duration::from_secs(10);
        s.insert(NodeId::random(), addr(2), Session::new([0; 16], [0; 16], t));
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(
            s.get(&first, addr(1), t).is_none(),
            "the oldest was evicted"
        );
    }
}
