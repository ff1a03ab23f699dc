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
//! - [`spr`]: Signed Peer Records, the signed node records (domain `libp2p-peer-record`).
//! - [`wire`]: the wire layer: [`wire::packet`] (UDP framing and header masking),
//!   [`wire::crypto`] (handshake ECDH, key derivation, id signatures, AES-GCM) and
//!   [`wire::message`] (the protobuf message plaintexts).
//! - [`table`]: the routing table (256 log-distance buckets of 16, replacement caches, liveness),
//!   generic over the record type.
//! - [`lookup`]: the iterative node lookup as a state machine without I/O, and the FINDNODE
//!   distances it asks for.
//! - [`providers`]: provider records of others, in memory, with the reference's TTL and limits.
//! - [`records`]: a bounded cache of records already verified (a byte-identical copy skips the
//!   signature check).
//! - [`session`]: session keys per remote node, bounded.
//! - [`limits`]: rate limits on the handshake work an unauthenticated packet causes.
//! - [`service`]: the task owning the socket: handshakes, answering requests, matching
//!   responses, timeouts.
//! - [`handle`]: [`Discovery`], and the DHT operations built on single requests (lookup,
//!   provide, find providers, find peer) and the maintenance loops.
//! - [`metrics`]: traffic, requests, lookups, table and provider-store sizes.
//!
//! The table, the lookup and the provider store read no clock and do no I/O: the caller passes
//! `now` and reports each request's outcome, so every rule is unit-tested on its own.

pub mod handle;
pub mod ids;
pub mod limits;
pub mod lookup;
pub mod metrics;
pub mod providers;
pub mod records;
pub mod service;
pub mod session;
pub mod spr;
pub mod table;
pub mod wire;

pub use handle::{Discovery, NodeInfo};
pub use ids::NodeId;
pub use lookup::{Lookup, lookup_distances};
pub use metrics::Metrics;
pub use providers::{AddOutcome, OwnKeys, ProviderStore, SourceGroup};
pub use service::{DiscoveryConfig, DiscoveryError, LocalRecords, RequestError};
pub use spr::Spr;
pub use table::{Entry, InsertOutcome, Origin, RoutingTable};
