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
//!
//! # Crossed handshakes
//!
//! When two nodes start handshakes with each other at the same moment, each may end up
//! holding, as its current session, the one the *other* started, while packets under the
//! crossed one are still in flight. A replaced session's keys are therefore kept as
//! [`Session::previous`], and a packet that only they open switches the session back to them
//! ([`Sessions::open`], as rust-discv5 does with its old keys): our answers then go out under
//! keys the sender is known to read. Answering under the current keys instead left a pair of
//! nodes where one side could read the other's requests but never its answers, for good.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::time::Instant;

use crate::{NodeId, limits::MAX_SESSIONS_PER_IP};

/// Most sessions kept at once. A session costs about 100 bytes; the reference keeps an LRU
/// cache of the same order. Far above the routing table's 256 × 16 useful peers in practice.
pub const MAX_SESSIONS: usize = 4096;

/// A session unused for this long is dropped (rust-discv5 uses a day; the peer re-handshakes).
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The two keys of one session, and when they were agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Key we encrypt with.
    pub write: [u8; 16],
    /// Key we decrypt with.
    pub read: [u8; 16],
    /// When the handshake that made them ended: a session switched back to these keys is as
    /// old as they are ([`Sessions::remove_set_up_by`]).
    pub created: Instant,
}

/// The keys of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Key we encrypt with.
    pub write_key: [u8; 16],
    /// Key we decrypt with.
    pub read_key: [u8; 16],
    /// The keys of the session this one replaced, if any (module docs, "Crossed handshakes").
    pub previous: Option<Keys>,
    last_used: Instant,
    /// When the session was set up.
    created: Instant,
}

impl Session {
    /// A session with these keys, used now.
    pub fn new(write_key: [u8; 16], read_key: [u8; 16], now: Instant) -> Session {
        Session {
            write_key,
            read_key,
            previous: None,
            last_used: now,
            created: now,
        }
    }

    fn keys(&self) -> Keys {
        Keys {
            write: self.write_key,
            read: self.read_key,
            created: self.created,
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

    /// Decrypts a packet from `(id, addr)` with the session's read key, or else with the
    /// previous session's, which then become the current keys again (module docs). `open`
    /// tries one read key. `None`: no session, or neither key opens the packet.
    pub fn open<T>(
        &mut self,
        id: &NodeId,
        addr: SocketAddr,
        now: Instant,
        open: impl Fn(&[u8; 16]) -> Option<T>,
    ) -> Option<T> {
        self.get(id, addr, now)?;
        let s = self.map.get_mut(&(*id, addr))?;
        if let Some(plaintext) = open(&s.read_key) {
            return Some(plaintext);
        }
        let previous = s.previous?;
        let plaintext = open(&previous.read)?;
        s.previous = Some(s.keys());
        s.write_key = previous.write;
        s.read_key = previous.read;
        s.created = previous.created;
        Some(plaintext)
    }

    /// Stores (or replaces) the session with `(id, addr)`, evicting the least recently used one
    /// when the cache is full. A replaced session's keys stay usable as [`Session::previous`].
    pub fn insert(&mut self, id: NodeId, addr: SocketAddr, mut session: Session) {
        if let Some(old) = self.map.get(&(id, addr)) {
            session.previous = Some(old.keys());
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

    /// Forgets the session with `(id, addr)` if it was set up at or before `at`: a request sent
    /// at `at` that went unanswered says nothing about a session set up after it (a handshake
    /// another request started meanwhile).
    pub fn remove_set_up_by(&mut self, id: &NodeId, addr: SocketAddr, at: Instant) {
        if self.map.get(&(*id, addr)).is_some_and(|s| s.created <= at) {
            self.map.remove(&(*id, addr));
        }
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

    /// An unanswered request ends the session it went over, not one set up after it.
    #[test]
    fn a_timed_out_request_ends_only_an_older_session() {
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_millis(10);
        let mut s = Sessions::default();
        let id = NodeId::random();
        s.insert(id, addr(1), Session::new([1; 16], [2; 16], later));
        s.remove_set_up_by(&id, addr(1), t0);
        assert!(s.get(&id, addr(1), later).is_some(), "a newer session went");
        s.remove_set_up_by(&id, addr(1), later);
        assert!(s.get(&id, addr(1), later).is_none());
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
    fn a_packet_only_the_previous_keys_open_switches_back_to_them() {
        let now = Instant::now();
        let mut s = Sessions::default();
        let id = NodeId::random();
        let later = now + Duration::from_millis(10);
        s.insert(id, addr(1), Session::new([1; 16], [2; 16], now));
        assert_eq!(s.get(&id, addr(1), now).unwrap().previous, None);
        s.insert(id, addr(1), Session::new([3; 16], [4; 16], later));
        let old = Keys {
            write: [1; 16],
            read: [2; 16],
            created: now,
        };
        let new = Keys {
            write: [3; 16],
            read: [4; 16],
            created: later,
        };
        let current = |s: &mut Sessions| s.get(&id, addr(1), now).map(|x| (x.keys(), x.previous));
        assert_eq!(current(&mut s), Some((new, Some(old))));
        // "Decrypting" succeeds only with the key given here.
        let only = |key: [u8; 16]| move |k: &[u8; 16]| (*k == key).then_some(k[0]);
        // The current key: nothing changes.
        assert_eq!(s.open(&id, addr(1), now, only([4; 16])), Some(4));
        assert_eq!(current(&mut s), Some((new, Some(old))));
        // Only the previous key: it is current again, and the newer one is kept.
        assert_eq!(s.open(&id, addr(1), now, only([2; 16])), Some(2));
        assert_eq!(current(&mut s), Some((old, Some(new))));
        // Switched back, the session is as old as its keys: a request sent between the two
        // handshakes, under these keys, that went unanswered ends it.
        let between = now + Duration::from_millis(5);
        let mut copy = Sessions::default();
        copy.map.clone_from(&s.map);
        copy.remove_set_up_by(&id, addr(1), between);
        assert!(
            copy.is_empty(),
            "the older keys' session outlived a failed request"
        );
        // And back.
        assert_eq!(s.open(&id, addr(1), now, only([4; 16])), Some(4));
        assert_eq!(current(&mut s), Some((new, Some(old))));
        // Neither, or no session: nothing, nothing changes.
        assert_eq!(s.open(&id, addr(1), now, only([9; 16])), None);
        assert_eq!(current(&mut s), Some((new, Some(old))));
        assert_eq!(s.open(&id, addr(2), now, only([4; 16])), None);
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
