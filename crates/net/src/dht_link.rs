//! The link between the peer manager and the discovery DHT, which this crate does not depend
//! on (the node joins the two).
//!
//! A node told of a bootstrap node by its libp2p address alone (a `--bootstrap-node` multiaddr)
//! reaches it over libp2p, but the DHT runs over UDP on a port that address does not give, so
//! such a node never joined the DHT. Peer-exchange answers therefore carry the answerer's own
//! signed DHT record (`cairn_pex::Addrs::dht_record`): the manager puts its node's record into
//! the lists it answers ([`DhtHooks::local_record`]), asks a new outbound peer for addresses
//! while the DHT has no node ([`DhtHooks::needs_nodes`]), and hands every record it receives to
//! the DHT ([`DhtHooks::offer`], with the IP the sender's connection comes from), which checks
//! the signature, that the record is the sender's and that its address is one the DHT would take
//! from that sender, before it pings and adds the node.
//!
//! The DHT starts after the network, so records that arrive before [`DhtLink::connect`] are
//! kept (the last [`MAX_EARLY_RECORDS`]) and handed over when it connects.

use std::{net::IpAddr, sync::Arc};

use libp2p::PeerId;
use parking_lot::Mutex;

/// Records kept that arrived before the DHT was connected.
pub const MAX_EARLY_RECORDS: usize = 16;

/// What the peer manager asks of the DHT.
pub trait DhtHooks: Send + Sync {
    /// This node's signed DHT record, to send in address lists.
    fn local_record(&self) -> Option<Vec<u8>>;
    /// Whether the DHT knows no node yet (new outbound peers are then asked for addresses, and
    /// so for their records, even when the address book has enough).
    fn needs_nodes(&self) -> bool;
    /// A record `peer` sent as its own, over a connection from `from` (`None`: not an IP
    /// address). Must not block (called on the swarm's task).
    fn offer(&self, peer: PeerId, from: Option<IpAddr>, record: Vec<u8>);
}

#[derive(Default)]
struct State {
    hooks: Option<Arc<dyn DhtHooks>>,
    early: Vec<(PeerId, Option<IpAddr>, Vec<u8>)>,
}

/// A shared slot for the DHT's hooks: cheap to clone, empty until [`DhtLink::connect`].
#[derive(Clone, Default)]
pub struct DhtLink(Arc<Mutex<State>>);

impl std::fmt::Debug for DhtLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.lock();
        f.debug_struct("DhtLink")
            .field("connected", &s.hooks.is_some())
            .field("early", &s.early.len())
            .finish()
    }
}

impl DhtLink {
    /// Connects the DHT and hands it the records that came before.
    pub fn connect(&self, hooks: Arc<dyn DhtHooks>) {
        let early = {
            let mut s = self.0.lock();
            s.hooks = Some(hooks.clone());
            std::mem::take(&mut s.early)
        };
        for (peer, from, record) in early {
            hooks.offer(peer, from, record);
        }
    }

    fn hooks(&self) -> Option<Arc<dyn DhtHooks>> {
        self.0.lock().hooks.clone()
    }

    /// This node's DHT record, if a DHT is connected.
    pub(crate) fn local_record(&self) -> Option<Vec<u8>> {
        self.hooks().and_then(|h| h.local_record())
    }

    /// Whether the DHT needs nodes (also while none is connected yet: it may be about to).
    pub(crate) fn needs_nodes(&self) -> bool {
        self.hooks().is_none_or(|h| h.needs_nodes())
    }

    /// Hands `peer`'s record to the DHT, or keeps it until one connects.
    pub(crate) fn offer(&self, peer: PeerId, from: Option<IpAddr>, record: Vec<u8>) {
        let hooks = {
            let mut s = self.0.lock();
            match &s.hooks {
                Some(h) => h.clone(),
                None => {
                    if s.early.len() == MAX_EARLY_RECORDS {
                        s.early.remove(0);
                    }
                    s.early.push((peer, from, record));
                    return;
                }
            }
        };
        hooks.offer(peer, from, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<PeerId>>);

    impl DhtHooks for Seen {
        fn local_record(&self) -> Option<Vec<u8>> {
            Some(vec![1])
        }
        fn needs_nodes(&self) -> bool {
            false
        }
        fn offer(&self, peer: PeerId, _from: Option<IpAddr>, _record: Vec<u8>) {
            self.0.lock().push(peer);
        }
    }

    #[test]
    fn records_before_the_dht_connects_are_kept_and_bounded() {
        let link = DhtLink::default();
        assert!(link.needs_nodes(), "no DHT yet: ask");
        assert_eq!(link.local_record(), None);
        let peers: Vec<PeerId> = (0..MAX_EARLY_RECORDS + 2)
            .map(|_| PeerId::random())
            .collect();
        for p in &peers {
            link.offer(*p, None, vec![0]);
        }
        let seen = Arc::new(Seen::default());
        link.connect(seen.clone());
        assert_eq!(*seen.0.lock(), peers[2..].to_vec(), "the latest, in order");
        let late = PeerId::random();
        link.offer(late, None, vec![0]);
        assert_eq!(seen.0.lock().last(), Some(&late));
        assert!(!link.needs_nodes());
        assert_eq!(link.local_record(), Some(vec![1]));
    }
}
