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
//!                                      ┌─[lane 0]─► hasher 0 ─[lane 0]─┐
//!  async body stream ──► chunker ──────┤                               ├──► writer thread
//!   (runtime task)        64 KiB       └─[lane 1]─► hasher 1 ─[lane 1]─┘     segment append
//!                      block k goes     bounded      sha2-256    bounded    takes block k
//!                      to lane k mod n                                      from lane k mod n
//! ```
//!
//! Hashing is the CPU floor of ingest and blocks hash independently, so the chunker deals the
//! blocks round-robin over one hashing thread per core (at most [`MAX_INGEST_HASHERS`]), and the
//! writer takes them back in the same rotation, so they reach the segment in upload order with
//! no reordering buffer. The segment append runs on its own thread and overlaps the hashing. All
//! queues are bounded ([`INGEST_QUEUE_BLOCKS`] and [`WRITE_QUEUE_BLOCKS`] in total, split over
//! the lanes), so memory stays at a few MiB however large the upload, and a slow disk slows the
//! reader instead of growing a buffer. If the body fails (client gone) or the store refuses
//! (quota), the pipeline stops and the upload is rolled back: nothing partial is listed or
//! counted.
//!
//! ## The network
//!
//! A node built with [`Node::with_network`] also runs the block-exchange [`engine`] over a
//! `cairn-net` swarm: it serves what it stores, fetches manifests and datasets it does not have
//! (verifying every block against its CID and Merkle proof before storing it), and streams a
//! dataset while fetching it, with a window of blocks in flight sized from the measured
//! bandwidth-delay product (see `fetch.rs`).
//!
//! With [`Node::with_discovery`] the node also uses the discovery DHT (`cairn-discovery`): it
//! announces every dataset it stores and searches the DHT for providers of what it downloads
//! (see `discover.rs`).
//!
//! ## Ranges
//!
//! Every read of a dataset — local ([`Node::stream_dataset_range`]) or from the network
//! ([`Node::stream_network_range`]) — covers a [`ByteRange`]: only the blocks holding those
//! bytes are read, or wanted from peers and verified, so serving the last megabyte of a large
//! dataset costs one megabyte of work.
//!
//! Store calls are blocking I/O, so every one of them runs on a blocking thread
//! (`spawn_blocking`), never on a runtime worker.

mod discover;
pub mod engine;
mod error;
pub mod fetch;
mod ingest;
pub mod metrics;
mod node;
pub mod pace;
mod range;

pub use crate::{
    discover::{
        ADVERTISE_CONCURRENCY, ADVERTISE_QUEUE, DEFAULT_REANNOUNCE_INTERVAL, EMPTY_ROUNDS_FOR_NONE,
        EMPTY_SEARCH_RETRY, JOIN_CHECK_INTERVAL, MAX_DIALS_PER_SEARCH, MAX_TRACKED_SEARCHES,
        MIN_HOLDERS, MIN_SEARCH_INTERVAL, PROVIDER_CHECK_INTERVAL, UNTOLD_RETRY_INTERVAL,
    },
    error::NodeError,
    ingest::{INGEST_QUEUE_BLOCKS, MAX_INGEST_HASHERS, WRITE_QUEUE_BLOCKS},
    node::{
        BACKGROUND_PATIENCE, BACKGROUND_RETRY_PAUSE, ByteStream, DOWNLOAD_READAHEAD_BLOCKS,
        DOWNLOAD_READAHEAD_BYTES, ISOLATED_GIVE_UP, MAINTENANCE_AFTER_DELETE,
        MAX_BACKGROUND_DOWNLOADS, MAX_NETWORK_BLOCK_SIZE, MAX_NETWORK_STREAMS,
        MAX_RESUMED_DOWNLOADS, Node, NodeConfig, StoredDataset,
    },
    range::{ByteRange, InvertedRange},
};
pub use cairn_discovery as discovery;
pub use cairn_net as net;
pub use cairn_store::{
    DatasetMeta, MIN_DISK_HEADROOM, ManifestPage, Reservation, Space, Store, StoreConfig,
    StoreError,
};
