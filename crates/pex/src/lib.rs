//! # cairn-pex: the peer-exchange protocol `/cairn/pex/1.0.0`
//!
//! Nodes ask connected peers for addresses of other nodes (CometBFT's PEX reactor brought to
//! libp2p; issue 5). The protocol is a request-response exchange over its own libp2p stream per
//! request (rust-libp2p's `request_response` with the [`PexCodec`] below):
//!
//! * **`GetAddrs { max }`**: "send me up to `max` addresses". The answer is an [`Addrs`] list: a
//!   random selection from the answerer's address book (CometBFT: 23 % of the book, at least
//!   32, at most 250), each entry a peer id with its multiaddrs.
//! * **`Push(list)`**: an address list sent without being asked. CometBFT accepts address lists
//!   only in answer to its own request and penalises the rest; in a request-response protocol an
//!   answer can only follow a request, so the one way to send an unsolicited list is to *push*
//!   it as a request. The protocol carries pushes so that the receiver can see and penalise
//!   them (it answers an empty list and reports the peer); cairn itself never pushes.
//!
//! The crate only moves and checks messages: who is asked, how often, what goes into the address
//! book and who gets penalised is the peer manager's business (`cairn-net`).
//!
//! ## Wire format
//!
//! One message per stream direction: an unsigned-varint length prefix, then a protobuf body
//! ([`proto`]). Every count is bounded on receive ([`MAX_PEERS_PER_MESSAGE`],
//! [`MAX_ADDRS_PER_PEER`]) and so is the frame ([`MAX_REQUEST_BYTES`], [`MAX_RESPONSE_BYTES`]);
//! the body is read only after its prefix passed the bound, so a peer cannot make us buffer more
//! than the bound. An address longer than [`MAX_ADDR_BYTES`] is skipped unparsed, not the list:
//! one long address in the sender's book must not make its whole answer unreadable.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod message;
pub mod proto;

pub use crate::{
    codec::{PexCodec, Traffic},
    message::{Addrs, DecodeError, PeerAddrs, Request},
};

/// The protocol id.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/cairn/pex/1.0.0");

/// Most peers in one address list: CometBFT's cap on a PEX reply (`maxGetSelection`).
pub const MAX_PEERS_PER_MESSAGE: usize = 250;

/// Most addresses per peer in a list (a node listening on a few interfaces and both IP
/// versions needs fewer).
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Largest multiaddr accepted, in bytes (an `/ip6/…/tcp/…/p2p/…` address is under 80). A
/// longer one in a received list is skipped; [`Addrs::bounded`] leaves such addresses out.
pub const MAX_ADDR_BYTES: usize = 256;

/// Largest DHT record an address list may carry. A signed peer record with one UDP address is
/// about 150 bytes; the DHT's own packets cap a record at 1 KiB too.
pub const MAX_DHT_RECORD_BYTES: usize = 1024;

/// Largest request frame. A `GetAddrs` is a few bytes; a push is bounded like an answer, but it
/// is always penalised, so it gets a smaller allowance.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Largest answer frame: 250 peers × (a 39-byte peer id + 8 addresses of up to 256 bytes) would
/// be 520 KB, but real entries are ~150 bytes (≈ 40 KB for a full list); 256 KiB leaves room
/// without letting one answer cost more than that.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How long a request may wait for its answer.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Concurrent inbound PEX streams per connection (one request at a time is all a well-behaved
/// peer needs; a few allow for restarts).
pub const MAX_CONCURRENT_STREAMS: usize = 4;

/// The request-response behaviour for PEX, serving and asking (`ProtocolSupport::Full`), its
/// bytes counted nowhere.
pub fn behaviour() -> libp2p::request_response::Behaviour<PexCodec> {
    behaviour_with_traffic(Traffic::default())
}

/// [`behaviour`], counting its bytes in `traffic`.
pub fn behaviour_with_traffic(traffic: Traffic) -> libp2p::request_response::Behaviour<PexCodec> {
    let config = libp2p::request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    libp2p::request_response::Behaviour::with_codec(
        PexCodec::with_traffic(traffic),
        [(PROTOCOL, libp2p::request_response::ProtocolSupport::Full)],
        config,
    )
}
