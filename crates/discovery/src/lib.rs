//! # cairn-discovery: the reference node's discovery DHT
//!
//! The Codex DHT is Ethereum's discv5.1 with libp2p Signed Peer Records (SPRs) instead of ENRs,
//! protobuf message bodies, libp2p key and signature encodings in the handshake, node ids derived
//! from PeerIds, and provider-record messages (codex-protocol.md §7, checked against a running
//! reference node in dht-verified.md). It is neither Ethereum discv5 nor libp2p Kademlia.
//!
//! Layout (bottom up):
//! - [`ids`]: node and content ids, the XOR metric.
//! - [`spr`]: Signed Peer Records, the signed node records (domain `libp2p-peer-record`).
//! - [`wire`]: the wire layer: [`wire::packet`] (UDP framing and header masking),
//!   [`wire::crypto`] (handshake ECDH, key derivation, id signatures, AES-GCM) and
//!   [`wire::message`] (the protobuf message plaintexts).

pub mod ids;
pub mod spr;
pub mod wire;

pub use ids::NodeId;
pub use spr::Spr;
