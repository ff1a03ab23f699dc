//! # cairn-discovery: the reference node's discovery DHT
//!
//! The Codex DHT is Ethereum's discv5.1 with libp2p Signed Peer Records (SPRs) instead of ENRs,
//! protobuf message bodies, libp2p key and signature encodings in the handshake, node ids derived
//! from PeerIds, and provider-record messages (codex-protocol.md §7, checked against a running
//! reference node in dht-verified.md). It is neither Ethereum discv5 nor libp2p Kademlia.
//!
//! It runs as a service beside the libp2p swarm, the way Lighthouse wraps discv5: its own UDP
//! socket and task, a cloneable [`Discovery`] handle, no libp2p behaviour.
//!
//! Layout (bottom up):
//! - [`ids`]: node and content ids, the XOR metric.
//! - [`session`]: session keys per remote node, bounded.
//! - [`service`]: the task owning the socket: handshakes, answering requests, matching
//!   responses, timeouts.
//! - [`handle`]: [`Discovery`], and the DHT operations built on single requests (lookup,
//!   provide, find providers, find peer) and the maintenance loops.

pub mod handle;
pub mod ids;
pub mod service;
pub mod session;

pub use handle::{Discovery, NodeInfo};
pub use ids::NodeId;
pub use service::{DiscoveryConfig, DiscoveryError, LocalRecords, RequestError};
