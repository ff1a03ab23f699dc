//! Errors of the address book: one enum for adding an address (the caller branches on why it was
//! refused, e.g. to penalise a peer that sends garbage), one for the file.

use std::{io, path::PathBuf};

use libp2p::Multiaddr;

use crate::{group::InvalidAddr, params::FORMAT_VERSION};

/// Why [`crate::AddrBook::add_address`] refused an address. The CometBFT counterparts are the
/// `ErrAddrBook*` types of `p2p/pex/errors.go`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrBookError {
    /// The address is our own peer id's (CometBFT `ErrAddrBookSelf`).
    #[error("not adding our own peer id")]
    OwnId,
    /// Another identity answered at this address of the peer not long ago
    /// ([`crate::AddrBook::remove_address`]).
    #[error("another peer answered at this address; refused until {until} (Unix seconds)")]
    WrongAddress {
        /// When the address is accepted for the peer again, in Unix seconds.
        until: u64,
    },
    /// The peer is banned (CometBFT `ErrAddressBanned`).
    #[error("peer is banned until {until} (Unix seconds)")]
    Banned {
        /// When the ban ends, in Unix seconds.
        until: u64,
    },
    /// Not a dialable address of that peer (CometBFT `ErrAddrBookInvalidAddr`).
    #[error("invalid address: {0}")]
    InvalidAddress(#[from] InvalidAddr),
    /// A non-public address while the book is in [`crate::Routability::Strict`] mode (CometBFT
    /// `ErrAddrBookNonRoutable`).
    #[error("{addr} is not a public address and the book only keeps public ones")]
    NonRoutable {
        /// The refused address.
        addr: Multiaddr,
    },
    /// A non-public address heard from a peer on a public address
    /// ([`crate::Routability::AllowLocal`]): some other network's private address, never ours.
    #[error("{addr} is not a public address and was heard from a public peer")]
    PrivateFromPublicSource {
        /// The refused address.
        addr: Multiaddr,
    },
}

/// Why the book file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`crate::params::MAX_FILE_BYTES`].
    #[error("book file is {size} bytes, larger than any book")]
    TooLarge {
        /// Its size in bytes.
        size: u64,
    },
    /// The file is not JSON of the book's shape (garbage, truncated).
    #[error("book file does not decode")]
    Decode(#[source] serde_json::Error),
    /// The file is a book of another format version.
    #[error("book file has format version {found}, this build reads version {FORMAT_VERSION}")]
    WrongVersion {
        /// The version in the file.
        found: u32,
    },
    /// The file decodes but breaks one of the book's structural rules (a bucket index out of
    /// range, a peer twice, too many entries in a bucket, a banned peer in the book…). The book
    /// never writes such a file, so it is treated as corrupt. (An unreadable id or address in
    /// one record only drops that record or address: see [`crate::persist`].)
    #[error("book file is inconsistent: {what} (record {index})")]
    Invalid {
        /// The rule broken.
        what: &'static str,
        /// The index of the offending record in its list.
        index: usize,
    },
    /// Encoding the book failed (not expected: every field is plain data).
    #[error("encoding the book failed")]
    Encode(#[source] serde_json::Error),
}
