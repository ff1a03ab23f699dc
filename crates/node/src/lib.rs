//! # cairn-node: what a node does
//!
//! [`Node`] is the composition root for library users and the one thing the REST API talks to.
//! It owns a [`Store`] handle and exposes the use cases: store a dataset from a byte stream,
//! stream a dataset back, list, delete, check existence, report space; and it runs the
//! background maintenance worker (TTL expiry and reclaim).
//!
//! ## The ingest pipeline
//!
//! ```text
//!  async body stream ──► chunker ──[INGEST_QUEUE_BLOCKS]──► hasher thread ──[WRITE_QUEUE_BLOCKS]──► writer thread
//!   (runtime task)        64 KiB        bounded                sha2-256          bounded            segment append
//! ```
//!
//! Hashing (the CPU floor of ingest) runs on its own blocking thread and the segment append on
//! another, so on two cores they overlap. Both queues are bounded, so memory stays at a few MiB
//! however large the upload, and a slow disk slows the reader instead of growing a buffer. If the
//! body fails (client gone) or the store refuses (quota), the pipeline stops and the upload is
//! rolled back: nothing partial is listed or counted.
//!
//! ## The network
//!
//! A node built with [`Node::with_network`] also runs the block-exchange [`engine`] over a
//! `cairn-net` swarm: it serves what it stores, fetches manifests and datasets it does not have
//! (verifying every block against its CID and Merkle proof before storing it), and streams a
//! dataset while fetching it, with a window of blocks in flight sized from the measured
//! bandwidth-delay product (see `fetch.rs`).
//!
//! Store calls are blocking I/O, so every one of them runs on a blocking thread
//! (`spawn_blocking`), never on a runtime worker.

pub mod engine;
mod error;
pub mod fetch;
mod ingest;
mod node;

pub use crate::{
    error::NodeError,
    ingest::{INGEST_QUEUE_BLOCKS, WRITE_QUEUE_BLOCKS},
    node::{ByteStream, DOWNLOAD_READAHEAD_BLOCKS, Node, NodeConfig, StoredDataset},
};
pub use cairn_net as net;
pub use cairn_store::{Space, Store, StoreConfig, StoreError};
