//! Checked messages: parsed peer ids and multiaddrs, bounded counts. An address longer than
//! [`MAX_ADDR_BYTES`] is dropped from a received list rather than failing it.

use libp2p::{Multiaddr, PeerId};
use prost::Message as _;

use crate::{
    MAX_ADDR_BYTES, MAX_ADDRS_PER_PEER, MAX_DHT_RECORD_BYTES, MAX_PEERS_PER_MESSAGE,
    MAX_RESPONSE_BYTES, proto,
};

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a protobuf message of the expected shape.
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    /// A request that is neither a `GetAddrs` nor a push, or both.
    #[error("a request must be exactly one of get_addrs and push")]
    BadRequestKind,
    /// More peers than [`MAX_PEERS_PER_MESSAGE`].
    #[error("{0} peers in one list (at most {MAX_PEERS_PER_MESSAGE})")]
    TooManyPeers(usize),
    /// More addresses for one peer than [`MAX_ADDRS_PER_PEER`].
    #[error("{0} addresses for one peer (at most {MAX_ADDRS_PER_PEER})")]
    TooManyAddrs(usize),
    /// A peer id that does not parse.
    #[error("invalid peer id")]
    PeerId,
    /// A DHT record longer than [`MAX_DHT_RECORD_BYTES`].
    #[error("DHT record of {0} bytes (at most {MAX_DHT_RECORD_BYTES})")]
    DhtRecord(usize),
}

/// One peer and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddrs {
    /// The peer.
    pub peer: PeerId,
    /// Its addresses (without a `/p2p/` suffix; at most [`MAX_ADDRS_PER_PEER`], each at most
    /// [`MAX_ADDR_BYTES`] when decoded).
    pub addrs: Vec<Multiaddr>,
}

impl PeerAddrs {
    fn to_proto(&self) -> proto::PeerAddrs {
        proto::PeerAddrs {
            peer_id: self.peer.to_bytes(),
            addrs: self.addrs.iter().map(|a| a.to_vec()).collect(),
        }
    }
}

/// An address list: the answer to a `GetAddrs`, or a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs {
    /// The peers.
    pub peers: Vec<PeerAddrs>,
    /// The sender's own signed DHT record (`spr`, at most [`MAX_DHT_RECORD_BYTES`]), so that a
    /// node that reached it by a libp2p address alone (a `--bootstrap-node` multiaddr) can join
    /// the DHT through it. The receiver checks the signature and that it is the sender's.
    pub dht_record: Option<Vec<u8>>,
}

/// A PEX request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Ask for up to `max` addresses.
    GetAddrs {
        /// How many at most.
        max: u32,
    },
    /// An address list sent without being asked (a violation the receiver penalises).
    Push(Addrs),
}

impl Addrs {
    /// A list of `peers` without a DHT record.
    pub fn new(peers: Vec<PeerAddrs>) -> Addrs {
        Addrs {
            peers,
            dht_record: None,
        }
    }

    /// An answer a cairn peer reads whole, built from `peers` in order: addresses longer than
    /// [`MAX_ADDR_BYTES`] are left out (an address book may keep longer ones), then all but the
    /// first [`MAX_ADDRS_PER_PEER`]; a peer left with no address is left out; at most
    /// `max_peers` peers (and [`MAX_PEERS_PER_MESSAGE`]); and no entry is added once the next
    /// one would take the encoding over [`MAX_RESPONSE_BYTES`]. A `dht_record` over
    /// [`MAX_DHT_RECORD_BYTES`] is left out.
    pub fn bounded(
        peers: impl IntoIterator<Item = PeerAddrs>,
        max_peers: usize,
        dht_record: Option<Vec<u8>>,
    ) -> Addrs {
        let mut list = Addrs {
            peers: Vec::new(),
            dht_record: dht_record.filter(|r| !r.is_empty() && r.len() <= MAX_DHT_RECORD_BYTES),
        };
        // The encoding is the list without peers followed by one length-delimited field per
        // peer, so its size is known entry by entry without encoding the whole list again.
        let mut size = list.to_proto().encoded_len();
        for p in peers {
            if list.peers.len() >= max_peers.min(MAX_PEERS_PER_MESSAGE) {
                break;
            }
            let addrs: Vec<Multiaddr> = p
                .addrs
                .into_iter()
                .filter(|a| a.len() <= MAX_ADDR_BYTES)
                .take(MAX_ADDRS_PER_PEER)
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let entry = PeerAddrs {
                peer: p.peer,
                addrs,
            };
            let entry_size = prost::encoding::message::encoded_len(1, &entry.to_proto());
            if size + entry_size > MAX_RESPONSE_BYTES {
                break;
            }
            size += entry_size;
            list.peers.push(entry);
        }
        list
    }

    fn to_proto(&self) -> proto::AddrList {
        proto::AddrList {
            dht_record: self.dht_record.clone().unwrap_or_default(),
            peers: self.peers.iter().map(PeerAddrs::to_proto).collect(),
        }
    }

    fn from_proto(list: proto::AddrList) -> Result<Addrs, DecodeError> {
        if list.dht_record.len() > MAX_DHT_RECORD_BYTES {
            return Err(DecodeError::DhtRecord(list.dht_record.len()));
        }
        if list.peers.len() > MAX_PEERS_PER_MESSAGE {
            return Err(DecodeError::TooManyPeers(list.peers.len()));
        }
        let mut out = Vec::with_capacity(list.peers.len());
        for p in list.peers {
            if p.addrs.len() > MAX_ADDRS_PER_PEER {
                return Err(DecodeError::TooManyAddrs(p.addrs.len()));
            }
            let peer = PeerId::from_bytes(&p.peer_id).map_err(|_| DecodeError::PeerId)?;
            let mut addrs = Vec::with_capacity(p.addrs.len());
            // An address over the limit is skipped, not the list: a sender's book may hold
            // longer ones (cairn's takes up to 320 bytes), and one of them must not make the
            // whole answer unreadable. The bytes are already inside the bounded frame, so
            // skipping costs nothing more; they are never parsed. So is one that does not parse
            // (a protocol newer than our multiaddr crate, or garbage): the rest of the list
            // stands.
            addrs.extend(
                p.addrs
                    .into_iter()
                    .filter(|a| a.len() <= MAX_ADDR_BYTES)
                    .filter_map(|a| Multiaddr::try_from(a).ok()),
            );
            out.push(PeerAddrs { peer, addrs });
        }
        Ok(Addrs {
            peers: out,
            dht_record: (!list.dht_record.is_empty()).then_some(list.dht_record),
        })
    }

    /// The protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Parses and checks an address list.
    pub fn decode(bytes: &[u8]) -> Result<Addrs, DecodeError> {
        let list =
            proto::AddrList::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        Addrs::from_proto(list)
    }
}

impl Request {
    /// The protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let p = match self {
            Request::GetAddrs { max } => proto::Request {
                get_addrs: Some(proto::GetAddrs { max: *max }),
                push: None,
            },
            Request::Push(list) => proto::Request {
                get_addrs: None,
                push: Some(list.to_proto()),
            },
        };
        p.encode_to_vec()
    }

    /// Parses and checks a request.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let p = proto::Request::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        match (p.get_addrs, p.push) {
            (Some(g), None) => Ok(Request::GetAddrs { max: g.max }),
            (None, Some(list)) => Ok(Request::Push(Addrs::from_proto(list)?)),
            _ => Err(DecodeError::BadRequestKind),
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    use super::*;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn addr(i: u16) -> Multiaddr {
        format!("/ip4/10.0.{}.{}/tcp/{}", i / 256, i % 256, 1000 + i)
            .parse()
            .unwrap()
    }

    #[test]
    fn requests_and_lists_round_trip() {
        let list = Addrs::new(vec![
            PeerAddrs {
                peer: peer(),
                addrs: vec![addr(1), addr(2)],
            },
            PeerAddrs {
                peer: peer(),
                addrs: vec![],
            },
        ]);
        assert_eq!(Addrs::decode(&list.encode()).unwrap(), list);
        let get = Request::GetAddrs { max: 250 };
        assert_eq!(Request::decode(&get.encode()).unwrap(), get);
        let push = Request::Push(list);
        assert_eq!(Request::decode(&push.encode()).unwrap(), push);
    }

    #[test]
    fn a_dht_record_rides_along_and_is_bounded() {
        let mut list = Addrs::new(vec![PeerAddrs {
            peer: peer(),
            addrs: vec![addr(1)],
        }]);
        list.dht_record = Some(vec![7; MAX_DHT_RECORD_BYTES]);
        assert_eq!(Addrs::decode(&list.encode()).unwrap(), list);
        list.dht_record = Some(vec![7; MAX_DHT_RECORD_BYTES + 1]);
        assert_eq!(
            Addrs::decode(&list.encode()),
            Err(DecodeError::DhtRecord(MAX_DHT_RECORD_BYTES + 1))
        );
        // A list from a node that sends no record (as before the field) has none.
        let old = proto::AddrList {
            peers: vec![],
            dht_record: vec![],
        };
        assert_eq!(
            Addrs::decode(&old.encode_to_vec()).unwrap().dht_record,
            None
        );
    }

    #[test]
    fn counts_are_bounded() {
        let one = PeerAddrs {
            peer: peer(),
            addrs: vec![addr(1)],
        };
        let too_many = Addrs::new(vec![one.clone(); MAX_PEERS_PER_MESSAGE + 1]);
        assert_eq!(
            Addrs::decode(&too_many.encode()),
            Err(DecodeError::TooManyPeers(MAX_PEERS_PER_MESSAGE + 1))
        );
        let full = Addrs::new(vec![one; MAX_PEERS_PER_MESSAGE]);
        assert!(Addrs::decode(&full.encode()).is_ok());
        let wide = Addrs::new(vec![PeerAddrs {
            peer: peer(),
            addrs: (0..=MAX_ADDRS_PER_PEER as u16).map(addr).collect(),
        }]);
        assert_eq!(
            Addrs::decode(&wide.encode()),
            Err(DecodeError::TooManyAddrs(MAX_ADDRS_PER_PEER + 1))
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let bad_peer = proto::AddrList {
            peers: vec![proto::PeerAddrs {
                peer_id: vec![1, 2, 3],
                addrs: vec![],
            }],
            dht_record: vec![],
        };
        assert_eq!(
            Addrs::decode(&bad_peer.encode_to_vec()),
            Err(DecodeError::PeerId)
        );
        // An address that does not parse is skipped; the rest of the list stands.
        let good: Multiaddr = "/ip4/1.2.3.4/tcp/5".parse().unwrap();
        let bad_addr = proto::AddrList {
            peers: vec![proto::PeerAddrs {
                peer_id: peer().to_bytes(),
                addrs: vec![vec![0xff; 4], good.to_vec()],
            }],
            dht_record: vec![],
        };
        let read = Addrs::decode(&bad_addr.encode_to_vec()).unwrap();
        assert_eq!(read.peers[0].addrs, vec![good]);
        // Neither or both kinds.
        let neither = proto::Request::default();
        assert_eq!(
            Request::decode(&neither.encode_to_vec()),
            Err(DecodeError::BadRequestKind)
        );
        let both = proto::Request {
            get_addrs: Some(proto::GetAddrs { max: 1 }),
            push: Some(proto::AddrList::default()),
        };
        assert_eq!(
            Request::decode(&both.encode_to_vec()),
            Err(DecodeError::BadRequestKind)
        );
    }

    /// A valid multiaddr of exactly `len` bytes (a DNS name padded to length).
    fn long_addr(len: usize) -> Multiaddr {
        let short: Multiaddr = "/dns4/a/tcp/1".parse().unwrap();
        let mut name = "a".repeat(len - short.to_vec().len() + 1);
        let mut a: Multiaddr = format!("/dns4/{name}/tcp/1").parse().unwrap();
        // The name's length prefix grows by a byte past 127; shorten the name to match.
        while a.to_vec().len() > len {
            name.pop();
            a = format!("/dns4/{name}/tcp/1").parse().unwrap();
        }
        assert_eq!(a.to_vec().len(), len);
        a
    }

    /// Review: a list with one address over [`MAX_ADDR_BYTES`] (which cairn's own address book
    /// accepts up to 320 bytes) was refused whole, so one long address in a peer's book made
    /// its every answer unreadable. The address is skipped; the rest of the list stands.
    #[test]
    fn an_over_long_address_is_skipped_not_the_list() {
        let (a, b) = (peer(), peer());
        let list = Addrs::new(vec![
            PeerAddrs {
                peer: a,
                addrs: vec![addr(1), long_addr(MAX_ADDR_BYTES + 1), addr(2)],
            },
            PeerAddrs {
                peer: b,
                addrs: vec![long_addr(MAX_ADDR_BYTES)],
            },
        ]);
        let back = Addrs::decode(&list.encode()).unwrap();
        assert_eq!(
            back.peers,
            vec![
                PeerAddrs {
                    peer: a,
                    addrs: vec![addr(1), addr(2)],
                },
                PeerAddrs {
                    peer: b,
                    addrs: vec![long_addr(MAX_ADDR_BYTES)],
                },
            ]
        );
        // Over-long bytes are skipped before they are parsed, junk or not.
        let junk = proto::AddrList {
            peers: vec![proto::PeerAddrs {
                peer_id: a.to_bytes(),
                addrs: vec![vec![4; MAX_ADDR_BYTES + 1], addr(3).to_vec()],
            }],
            dht_record: vec![],
        };
        assert_eq!(
            Addrs::decode(&junk.encode_to_vec()).unwrap().peers[0].addrs,
            vec![addr(3)]
        );
    }

    /// [`Addrs::bounded`] leaves out what a reader would refuse or skip, and stops before the
    /// frame limit, with its size reckoning equal to the real encoding.
    #[test]
    fn bounded_lists_decode_whole_within_the_frame() {
        let (a, b, c) = (peer(), peer(), peer());
        let list = Addrs::bounded(
            vec![
                PeerAddrs {
                    peer: a,
                    addrs: vec![long_addr(MAX_ADDR_BYTES + 1), addr(1)],
                },
                PeerAddrs {
                    peer: b,
                    addrs: vec![long_addr(MAX_ADDR_BYTES + 1)],
                },
                PeerAddrs {
                    peer: c,
                    addrs: (0..20).map(addr).collect(),
                },
            ],
            10,
            Some(vec![7; MAX_DHT_RECORD_BYTES + 1]),
        );
        assert_eq!(list.dht_record, None);
        assert_eq!(
            list.peers,
            vec![
                PeerAddrs {
                    peer: a,
                    addrs: vec![addr(1)],
                },
                PeerAddrs {
                    peer: c,
                    addrs: (0..MAX_ADDRS_PER_PEER as u16).map(addr).collect(),
                },
            ]
        );
        assert_eq!(Addrs::bounded(list.peers.clone(), 1, None).peers.len(), 1);

        let big = |i: usize| PeerAddrs {
            peer: peer(),
            addrs: (0..MAX_ADDRS_PER_PEER)
                .map(|j| {
                    let mut a = long_addr(MAX_ADDR_BYTES - 3);
                    a.push(libp2p::multiaddr::Protocol::Tcp((i * 10 + j) as u16));
                    a
                })
                .collect(),
        };
        let full = Addrs::bounded(
            (0..MAX_PEERS_PER_MESSAGE).map(big),
            usize::MAX,
            Some(vec![7; MAX_DHT_RECORD_BYTES]),
        );
        let encoded = full.encode();
        assert!(encoded.len() <= MAX_RESPONSE_BYTES, "{}", encoded.len());
        assert!(
            encoded.len() + 2200 > MAX_RESPONSE_BYTES,
            "{}",
            encoded.len()
        );
        assert!(full.peers.len() < MAX_PEERS_PER_MESSAGE);
        assert_eq!(Addrs::decode(&encoded).unwrap(), full);
        // The running size matches the encoding: one more entry would not have fitted.
        let mut more = full.clone();
        more.peers.push(big(999));
        assert!(more.encode().len() > MAX_RESPONSE_BYTES);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Addrs::decode(&bytes);
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn lists_round_trip(n in 0usize..20, k in 0usize..=MAX_ADDRS_PER_PEER) {
            let list = Addrs::new((0..n).map(|i| PeerAddrs {
                peer: peer(),
                addrs: (0..k).map(|j| addr((i * 10 + j) as u16)).collect(),
            }).collect());
            prop_assert_eq!(Addrs::decode(&list.encode()).unwrap(), list);
        }
    }
}
