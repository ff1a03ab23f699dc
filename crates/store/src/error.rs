//! The store's error type.

use cairn_core::{Cid, ManifestError, MerkleError};

/// Errors from the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Writing would take the store over its quota. Nothing was written.
    #[error(
        "storage quota exceeded: {needed} more bytes needed, {used} of {quota} bytes used or reserved by uploads and downloads in progress (the one refused included)"
    )]
    QuotaExceeded {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes in use (including reservations of uploads in progress).
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// The disk holding the store lacks room for the write, though the quota has it: what is
    /// free beyond the room kept for the index ([`crate::MIN_DISK_HEADROOM`]) is less than the
    /// write needs. Nothing was written.
    #[error(
        "not enough free disk space: {needed} more bytes needed, {free} bytes free on the store's disk beyond the room kept for its index"
    )]
    DiskFull {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes free beyond the room kept for the index.
        free: u64,
    },
    /// The index could not be written (a disk that filled up, or an I/O error) and has not been
    /// reopened yet: it is reopened once the disk has room again.
    #[error(
        "the store's index is unavailable after a failed write ({0}); it is reopened once its disk has room"
    )]
    IndexUnavailable(String),
    /// A stored block no longer matches its CID. It is not served.
    #[error("stored block {cid} is corrupt (its bytes no longer match the CID)")]
    Corrupt {
        /// The corrupt block.
        cid: Cid,
    },
    /// The block belongs to a dataset and cannot be deleted on its own.
    #[error("block {cid} is part of a dataset; delete the dataset's manifest instead")]
    InUse {
        /// The block.
        cid: Cid,
    },
    /// A block is larger than the store keeps ([`crate::MAX_BLOCK_BYTES`]). Nothing was written.
    #[error("block of {len} bytes is larger than the largest block stored ({max} bytes)")]
    BlockTooLarge {
        /// The block's length.
        len: u64,
        /// The largest block stored.
        max: u64,
    },
    /// A dataset needs at least one block.
    #[error("a dataset needs at least one block")]
    EmptyDataset,
    /// A leaf handed to `put_leaves` belongs to another dataset.
    #[error("leaf {index} of dataset {leaf_tree} was handed in for dataset {tree}")]
    LeafOfAnotherDataset {
        /// The dataset being written.
        tree: Box<Cid>,
        /// The leaf's dataset.
        leaf_tree: Box<Cid>,
        /// Leaf index.
        index: u64,
    },
    /// Leaves were handed to `put_leaves` for a dataset that is not stored: its manifest was
    /// never stored, or it was deleted (for instance while it was being downloaded).
    #[error("dataset {tree} is not stored here (deleted, or its manifest was never stored)")]
    DatasetNotStored {
        /// The dataset's tree CID.
        tree: Box<Cid>,
    },
    /// A manifest's block count disagrees with its dataset, which is stored whole here: its
    /// leaves make the tree the manifest names with `dataset_blocks` leaves, so the manifest
    /// names a real tree with a made-up size. Nothing was stored.
    #[error(
        "the manifest does not match its dataset: it says {manifest_blocks} blocks, and dataset {tree} is stored here whole with {dataset_blocks}"
    )]
    ManifestConflict {
        /// The dataset's tree CID.
        tree: Box<Cid>,
        /// Blocks by the manifest.
        manifest_blocks: u64,
        /// Leaves of the stored dataset.
        dataset_blocks: u64,
    },
    /// A manifest could not be decoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A Merkle tree could not be built.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// The index holds a value cairn cannot read.
    #[error("store index is damaged: {0}")]
    IndexDamaged(&'static str),
    /// The index database failed.
    #[error("index database error: {0}")]
    Db(#[from] Box<redb::Error>),
    /// File I/O failed.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                match e.into() {
                    // What redb answers after a failed write until the database is reopened.
                    redb::Error::PreviousIo => StoreError::IndexUnavailable(
                        "an earlier write of it failed".into(),
                    ),
                    e => StoreError::Db(Box::new(e)),
                }
            }
        }
    )*};
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}

impl StoreError {
    /// Whether the error says the store's disk is full: [`StoreError::DiskFull`], a write of a
    /// segment or of the index that failed with `ENOSPC`, or the index unavailable after a
    /// failed write ([`StoreError::IndexUnavailable`]; usually a full disk, though any I/O error
    /// of the index gets there). (HTTP 507 in the API.)
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } | StoreError::IndexUnavailable(_) => true,
            StoreError::Io(e) => is_enospc(e),
            StoreError::Db(e) => matches!(&**e, redb::Error::Io(io) if is_enospc(io)),
            _ => false,
        }
    }

    /// Whether the index database failed in a way that leaves it unusable until it is reopened
    /// (redb latches its first I/O error and fails everything after it with `PreviousIo`).
    pub(crate) fn index_failed(&self) -> bool {
        match self {
            StoreError::Db(e) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            StoreError::IndexUnavailable(_) => true,
            _ => false,
        }
    }
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
