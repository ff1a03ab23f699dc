//! # cairn-store: the block store
//!
//! One API ([`Store`]) over two media: a directory on disk ([`Store::open`]) and memory
//! ([`Store::in_memory`]). Both run the same index code, so the conformance suite in
//! `tests/conformance.rs` checks one set of semantics twice.
//!
//! ## Layout
//!
//! * **Index**: a [redb](https://docs.rs/redb) database (`<dir>/index.redb`, or redb's in-memory
//!   backend). redb is a pure-Rust, copy-on-write B-tree with ACID transactions and crash-safe
//!   commits, and no server or C toolchain. We chose it over fjall because our index is
//!   read-mostly point lookups and small range scans, which a B-tree serves with one seek, and
//!   because its single-writer transactions make the refcount and quota bookkeeping simple to get
//!   right. See `docs/DESIGN-store.md`.
//! * **Block bytes**: append-only segment files (`<dir>/blocks/<id>.seg`) — see the `segments`
//!   module. The index maps a block CID to `(segment, offset, length)`.
//!
//! ## Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `blocks` | block CID | segment, offset, length, dataset refs, standalone flag, expiry |
//! | `leaves` | (tree CID, index) | block CID, encoded proof (empty since proofs moved out, below) |
//! | `proofs` | (tree CID, index) | a downloaded leaf's proof, until its dataset's tree is stored |
//! | `trees` | (tree CID, layer, chunk) | 128 nodes of one layer of the dataset's tree |
//! | `datasets` | tree CID | leaf count, manifest refs, state (active / writing / deleting), session |
//! | `manifests` | manifest CID | tree CID |
//! | `expiry` | (unix seconds, CID) | — |
//! | `segments` | segment id | live bytes, sealed flag |
//! | `sessions` | session id | segment id, tree CID once known |
//! | `deleting` | tree CID | — |
//! | `generations` | tree CID | a number that changes whenever the dataset may lose a leaf |
//! | `counts` | (tree CID, leaf count) | — (counts that disagreeing manifests claim, until the dataset is whole) |
//! | `meta` | name | counter (used bytes, total blocks, next ids, next dataset generation) |
//!
//! ## Invariants
//!
//! * A block is live while it has a dataset reference (one per leaf entry pointing at it) or the
//!   standalone flag (it was put by CID, e.g. a manifest). Quota counts live blocks once each.
//! * A dataset becomes visible only in the transaction that stores its manifest; an upload that
//!   never finishes leaves nothing listed (unless a download listed the same dataset meanwhile:
//!   it then stays as a partial dataset), and its session is rolled back at once, or at the
//!   next open.
//! * Deleting a dataset is one small transaction (the manifest goes, the dataset is marked
//!   deleting); a background reclaimer then drops leaves and unreferenced blocks in bounded
//!   batches, and removes segments with no live bytes. Reads never see a deleting dataset. A
//!   dataset an upload is finishing is held by its session and not marked deleting until the
//!   session ends without listing it.
//! * Sealed segments that are mostly dead bytes are rewritten by compaction (the `compact`
//!   module), so deleted data frees disk even where it shared a segment with live data; small
//!   sealed segments (an upload of a small file writes one) are merged, several into one.
//! * Every read checks the block's bytes (against the CRC32C stored with them, or by re-hashing
//!   for rows from before checksums); a mismatch is reported as [`StoreError::Corrupt`] and the
//!   bytes are never returned.
//! * Segment bytes are `fdatasync`ed before the transaction that makes them reachable commits.
//!
//! The API is synchronous (it does blocking I/O); async callers run it on a blocking thread.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

mod compact;
mod error;
mod index;
mod segments;
mod store;
mod trees;
mod writer;

pub use crate::{
    compact::CompactReport,
    error::StoreError,
    store::{
        Audit, DEFAULT_BLOCK_TTL, DEFAULT_LEAF_BATCH, DEFAULT_MAINTENANCE_BATCH,
        DEFAULT_MAINTENANCE_INTERVAL, DEFAULT_QUOTA, DEFAULT_RECLAIM_BATCH,
        DEFAULT_SEGMENT_ROLL_BYTES, MAX_BLOCK_BYTES, MAX_COUNT_CLAIMS, MIN_DISK_HEADROOM,
        MaintenanceReport, ManifestPage, Reservation, Space, Store, StoreConfig,
    },
    writer::{DatasetMeta, DatasetWriter, StoredDataset, UPLOAD_ROOM_POLL, UPLOAD_ROOM_WAIT},
};
