//! A bounded cache of signed peer records already verified.
//!
//! Every NODES answer carries up to 16 records and every one must be checked (an ECDSA
//! verification, ~50 µs) before it is used. A lookup reads about ten answers, mostly naming the
//! same nodes again, so verifying each copy dominated a lookup's cost (measured with
//! `cairn-bench dht`: a FINDNODE answer of 14 records took 0.8 ms against 0.02 ms for a PING).
//! The envelope bytes are what was signed, so a byte-identical copy of a record that verified
//! once verifies again: the cache maps the exact bytes to the decoded record and skips the
//! signature check for them. Anything else goes through [`Spr::decode`].
//!
//! Bounded by [`MAX_VERIFIED_RECORDS`]; when full, the oldest entry is dropped (FIFO).

use std::collections::{HashMap, VecDeque};

use crate::spr::{Spr, SprError};

/// Records remembered as verified (each ≤ 1 KiB of bytes plus the decoded copy).
pub const MAX_VERIFIED_RECORDS: usize = 4096;

/// The cache.
#[derive(Debug)]
pub struct VerifiedRecords {
    map: HashMap<Vec<u8>, Spr>,
    order: VecDeque<Vec<u8>>,
    cap: usize,
    hits: u64,
}

impl Default for VerifiedRecords {
    fn default() -> Self {
        VerifiedRecords::with_capacity(MAX_VERIFIED_RECORDS)
    }
}

impl VerifiedRecords {
    /// A cache of at most `cap` records (at least one).
    pub fn with_capacity(cap: usize) -> Self {
        VerifiedRecords {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            hits: 0,
        }
    }

    /// Decodes and verifies `bytes`, or returns the record a byte-identical copy verified to.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Spr, SprError> {
        if let Some(spr) = self.lookup(bytes) {
            return Ok(spr);
        }
        let spr = Spr::decode(bytes)?;
        self.insert(bytes, spr.clone());
        Ok(spr)
    }

    /// The record a byte-identical copy of `bytes` verified to, if one did.
    pub fn lookup(&mut self, bytes: &[u8]) -> Option<Spr> {
        let spr = self.map.get(bytes)?.clone();
        self.hits += 1;
        Some(spr)
    }

    /// Remembers that `bytes` verified to `spr` (which the caller checked with
    /// [`Spr::decode`]): the check runs outside the cache's lock, so a lookup and the service
    /// task do not queue behind another's signature checks.
    pub fn insert(&mut self, bytes: &[u8], spr: Spr) {
        if self.map.contains_key(bytes) {
            return;
        }
        if self.order.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.order.push_back(bytes.to_vec());
        self.map.insert(bytes.to_vec(), spr);
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Decodes answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    fn record(seq: u64) -> Spr {
        let key = Keypair::generate_secp256k1();
        Spr::sign(&key, seq, vec!["/ip4/127.0.0.1/udp/9000".parse().unwrap()]).unwrap()
    }

    #[test]
    fn a_verified_copy_is_served_and_a_changed_one_is_checked() {
        let mut c = VerifiedRecords::default();
        let r = record(1);
        assert_eq!(c.decode(r.encoded()).unwrap(), r);
        assert_eq!(c.hits(), 0);
        assert_eq!(c.decode(r.encoded()).unwrap(), r);
        assert_eq!(c.hits(), 1);
        // One flipped bit is a different key: it is verified, and fails.
        let mut bad = r.encoded().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(c.decode(&bad).is_err());
        assert_eq!(c.len(), 1, "failures are not cached");
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = VerifiedRecords::with_capacity(3);
        let records: Vec<Spr> = (0..4).map(record).collect();
        for r in &records {
            c.decode(r.encoded()).unwrap();
        }
        assert_eq!(c.len(), 3);
        // The first is gone (verified again, not served), the last three are served.
        let hits = c.hits();
        for r in &records[1..] {
            c.decode(r.encoded()).unwrap();
        }
        assert_eq!(c.hits(), hits + 3);
        c.decode(records[0].encoded()).unwrap();
        assert_eq!(c.hits(), hits + 3, "the evicted record was verified again");
        assert_eq!(c.len(), 3);
    }
}
