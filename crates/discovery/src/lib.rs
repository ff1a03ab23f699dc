//! # cairn-discovery: the reference node's discovery DHT
//!
//! The Codex DHT is Ethereum's discv5.1 with libp2p Signed Peer Records (SPRs) instead of ENRs,
//! protobuf message bodies, libp2p key and signature encodings in the handshake, node ids derived
//! from PeerIds, and provider-record messages (codex-protocol.md §7, checked against a running
//! reference node in dht-verified.md). It is neither Ethereum discv5 nor libp2p Kademlia.
//!
//! Layout (bottom up):
//! - [`ids`]: node and content ids, the XOR metric.
//! - [`table`]: the routing table (256 log-distance buckets of 16, replacement caches, liveness),
//!   generic over the record type.
//! - [`lookup`]: the iterative node lookup as a state machine without I/O, and the FINDNODE
//!   distances it asks for.
//! - [`providers`]: provider records of others, in memory, with the reference's TTL and limits.
//!
//! The table, the lookup and the provider store read no clock and do no I/O: the caller passes
//! `now` and reports each request's outcome, so every rule is unit-tested on its own.

pub mod ids;
pub mod lookup;
pub mod providers;
pub mod table;

pub use ids::NodeId;
pub use lookup::{Lookup, lookup_distances};
pub use providers::{AddOutcome, ProviderStore};
pub use table::{Entry, InsertOutcome, Origin, RoutingTable};
