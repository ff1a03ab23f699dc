//! # cairn-core: the Codex data model
//!
//! Pure, synchronous building blocks shared by every other cairn crate. Nothing here does I/O.
//!
//! * [`cid`](mod@cid): CIDv1 with the Codex multicodecs (`codex-manifest` 0xCD01, `codex-block`
//!   0xCD02, `codex-root` 0xCD03) and sha2-256 multihashes, built on the `cid` and `multihash`
//!   crates. Text form is base58btc (`z…`).
//! * [`block`]: a block is `(cid, bytes)`; its CID is the sha2-256 of its bytes.
//! * [`chunker`]: cuts a byte stream into 64 KiB blocks, zero-padding the last one, as the
//!   reference node does (so the same input gives the same CIDs).
//! * [`merkle`]: the CodexTree — keyed sha256 compression with bottom-layer and odd-node keys —
//!   and its inclusion proofs with their protobuf encoding.
//! * [`manifest`]: the dataset manifest, encoded byte-for-byte as the reference encodes it (its
//!   CID is the hash of that encoding), decoded tolerantly.
//!
//! The reference behaviour these modules follow is described in `codex-protocol.md` §4–6; every
//! test vector there is checked by a unit test beside the code.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod block;
pub mod chunker;
pub mod cid;
pub mod leaf;
pub mod manifest;
pub mod merkle;

pub use crate::{
    block::Block,
    chunker::{Chunker, DEFAULT_BLOCK_SIZE},
    cid::{BlockAddress, Cid, CidError, Codec},
    leaf::{LeafError, VerifiedLeaf},
    manifest::{Manifest, ManifestError},
    merkle::{CodexProof, CodexTree, Digest, MerkleError},
};
