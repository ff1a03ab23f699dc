//! The protobuf messages as they are on the wire.
//!
//! ```proto
//! message Request  { GetAddrs get_addrs = 1; AddrList push = 2; }   // exactly one is set
//! message GetAddrs { uint32 max = 1; }
//! message AddrList { repeated PeerAddrs peers = 1; bytes dht_record = 2; }
//! message PeerAddrs { bytes peer_id = 1; repeated bytes addrs = 2; } // multiaddr bytes
//! ```
//! An answer is an `AddrList`. `dht_record` (added after the first release; older nodes leave
//! it out and ignore it) is the answerer's own signed DHT record, as `GET /spr` gives it.

/// A request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Ask for addresses.
    #[prost(message, optional, tag = "1")]
    pub get_addrs: Option<GetAddrs>,
    /// An address list sent unasked.
    #[prost(message, optional, tag = "2")]
    pub push: Option<AddrList>,
}

/// "Send me up to `max` addresses."
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetAddrs {
    /// How many the asker wants at most.
    #[prost(uint32, tag = "1")]
    pub max: u32,
}

/// An address list (the answer to `GetAddrs`, or a push).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddrList {
    /// The peers.
    #[prost(message, repeated, tag = "1")]
    pub peers: Vec<PeerAddrs>,
    /// The sender's own signed DHT record (empty when it runs no DHT).
    #[prost(bytes = "vec", tag = "2")]
    pub dht_record: Vec<u8>,
}

/// One peer and its addresses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerAddrs {
    /// The peer id's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub peer_id: Vec<u8>,
    /// Its multiaddrs' bytes.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
}
