//! The node's error type.

use cairn_store::StoreError;

/// Errors from node operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The CID is not stored locally.
    #[error("not found")]
    NotFound,
    /// The CID names a block that is not a manifest.
    #[error("not a manifest")]
    NotAManifest,
    /// An upload had no bytes.
    #[error("the upload is empty")]
    EmptyUpload,
    /// Reading the upload stream failed (e.g. the client disconnected).
    #[error("reading the upload failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Fetching from the network failed. (A full quota while storing what was fetched is
    /// [`NodeError::Store`] with [`StoreError::QuotaExceeded`], as for an upload.)
    #[error(transparent)]
    Fetch(crate::engine::FetchError),
    /// A dataset asked for from the local store is not all there (a download stopped, or only
    /// a range was fetched): block `index` of `blocks` is missing.
    #[error("the dataset is not complete on this node: block {index} of {blocks} is missing")]
    Incomplete {
        /// The first missing block of the range asked for.
        index: u64,
        /// Blocks in the dataset.
        blocks: u64,
    },
    /// As many background downloads as the node runs at once are running
    /// ([`crate::MAX_BACKGROUND_DOWNLOADS`]).
    #[error("{max} background downloads are running, the most this node runs at once")]
    TooManyDownloads {
        /// The limit.
        max: usize,
    },
    /// As many network streams as the node runs at once are running
    /// ([`crate::MAX_NETWORK_STREAMS`]).
    #[error("{max} network streams are running, the most this node runs at once")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// The node runs without a network.
    #[error("this node has no network")]
    NoNetwork,
    /// A network operation failed.
    #[error(transparent)]
    Net(#[from] cairn_net::NetError),
    /// The dataset's blocks are larger than a block-exchange message this node (and cairn
    /// peers) accept can carry ([`crate::MAX_NETWORK_BLOCK_SIZE`]): no peer could deliver one,
    /// and each that tried would be blamed for an oversized frame.
    #[error(
        "the dataset's blocks are {block_size} bytes, more than the {max} bytes this node can receive in one block-exchange message"
    )]
    BlockTooLarge {
        /// The manifest's block size.
        block_size: u64,
        /// The largest block a download takes.
        max: u64,
    },
    /// A requested byte range reaches past the end of the dataset.
    #[error("bytes {start}..{end} are outside the dataset of {size} bytes")]
    RangeOutOfBounds {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The dataset's size.
        size: u64,
    },
    /// A stored or fetched block is shorter than its place in the dataset needs (a damaged
    /// manifest or dataset).
    #[error("block {index} has {len} bytes, {needed} are needed")]
    ShortBlock {
        /// The block's index in the dataset.
        index: u64,
        /// Its length.
        len: u64,
        /// The length its place in the dataset needs.
        needed: u64,
    },
    /// A fetched block is longer than the manifest's block size: the manifest does not
    /// describe the tree it names (every block of a dataset is exactly its block size, the
    /// last one padded).
    #[error("block {index} has {len} bytes, more than the manifest's block size of {block_size}")]
    LongBlock {
        /// The block's index in the dataset.
        index: u64,
        /// Its length.
        len: u64,
        /// The manifest's block size.
        block_size: u64,
    },
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<crate::engine::FetchError> for NodeError {
    fn from(e: crate::engine::FetchError) -> NodeError {
        match e {
            crate::engine::FetchError::QuotaExceeded {
                needed,
                used,
                quota,
            } => NodeError::Store(StoreError::QuotaExceeded {
                needed,
                used,
                quota,
            }),
            crate::engine::FetchError::NotAManifest(_) => NodeError::NotAManifest,
            e => NodeError::Fetch(e),
        }
    }
}
