//! # cairn-discovery: the reference node's discovery DHT
//!
//! The Codex DHT is Ethereum's discv5.1 with libp2p Signed Peer Records (SPRs) instead of ENRs,
//! protobuf message bodies, libp2p key and signature encodings in the handshake, node ids derived
//! from PeerIds, and provider-record messages (codex-protocol.md §7, checked against a running
//! reference node in dht-verified.md). It is neither Ethereum discv5 nor libp2p Kademlia.
//!
//! Layout (bottom up):
//! - [`ids`]: node and content ids, the XOR metric.

pub mod ids;

pub use ids::NodeId;
