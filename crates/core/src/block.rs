//! A block: bytes and the CID that names them.

use bytes::Bytes;

use crate::cid::{Cid, Codec, cid_digest, cid_from_digest, sha256};

/// A block of data with its CID. Constructing one through [`Block::new`] hashes the data, so a
/// `Block` value always satisfies `cid == CIDv1(codec, sha256(data))` unless it was built with
/// [`Block::from_parts_unchecked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

/// A block whose bytes do not hash to its CID.
#[derive(Debug, thiserror::Error)]
#[error("block data does not match CID {cid}")]
pub struct BlockMismatch {
    /// The CID the data was claimed to have.
    pub cid: Cid,
}

impl Block {
    /// Hashes `data` and names it with content codec `codec`.
    pub fn new(codec: Codec, data: Bytes) -> Block {
        let cid = cid_from_digest(codec, &sha256(&data));
        Block { cid, data }
    }

    /// A data block (`codex-block`).
    pub fn data_block(data: Bytes) -> Block {
        Block::new(Codec::Block, data)
    }

    /// Builds a block from a CID and bytes, checking that the bytes hash to the CID.
    pub fn verified(cid: Cid, data: Bytes) -> Result<Block, BlockMismatch> {
        match cid_digest(&cid) {
            Ok(d) if d == sha256(&data) => Ok(Block { cid, data }),
            _ => Err(BlockMismatch { cid }),
        }
    }

    /// Builds a block without checking (the caller has already verified the hash).
    pub fn from_parts_unchecked(cid: Cid, data: Bytes) -> Block {
        Block { cid, data }
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Splits the block into its CID and bytes.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_accepts_matching_and_rejects_other_data() {
        let b = Block::data_block(Bytes::from_static(b"hello"));
        assert!(Block::verified(*b.cid(), Bytes::from_static(b"hello")).is_ok());
        assert!(Block::verified(*b.cid(), Bytes::from_static(b"hellp")).is_err());
    }
}
