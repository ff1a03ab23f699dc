//! Dataset leaves whose Merkle proof has been checked.
//!
//! A leaf delivered by a peer must be checked against its dataset's tree root before anything
//! else happens to it: the downloader does it first (a peer whose leaf fails is penalised), and the
//! store must never hold a leaf that is not part of its tree. Checking twice cost the downloading
//! node about 1 % of its CPU. [`VerifiedLeaf`] carries the check in its type instead: only
//! [`VerifiedLeaf::verify`] makes one, so whoever takes a `VerifiedLeaf` knows the proof leads from
//! the block's hash to the root, for exactly that index and leaf count.
//!
//! The block's bytes are trusted to match its CID, as every [`Block`] does unless it was built
//! with [`Block::from_parts_unchecked`] (which only the store's own checked reads use).

use crate::{
    block::Block,
    cid::{Cid, CidError, Codec, cid_digest},
    merkle::{CodexProof, MerkleError},
};

/// Why a leaf was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    /// Dataset leaves are `codex-block` blocks; this is some other content type.
    #[error("leaf is not a codex-block (codec {0:#x})")]
    NotABlock(u64),
    /// The tree CID or the block CID does not carry a SHA-256 digest.
    #[error(transparent)]
    Cid(#[from] CidError),
    /// The proof is for another position, or does not lead to the root.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// Leaf `index` of the dataset whose tree root is `tree`, with a proof that was checked against
/// that root. See the module docs.
#[derive(Debug, Clone)]
pub struct VerifiedLeaf {
    tree: Cid,
    index: u64,
    block: Block,
    proof: CodexProof,
}

impl VerifiedLeaf {
    /// Checks that `block` is leaf `index` of a tree of `nleaves` leaves with root `tree`: the
    /// block is a `codex-block`, `proof` is for that index and leaf count, and it leads from the
    /// block's hash to the root.
    pub fn verify(
        tree: Cid,
        index: u64,
        nleaves: u64,
        block: Block,
        proof: CodexProof,
    ) -> Result<VerifiedLeaf, LeafError> {
        let codec = block.cid().codec();
        if codec != Codec::Block.code() {
            return Err(LeafError::NotABlock(codec));
        }
        let root = cid_digest(&tree)?;
        let leaf = cid_digest(block.cid())?;
        proof.verify_leaf(&leaf, &root, index, nleaves)?;
        Ok(VerifiedLeaf {
            tree,
            index,
            block,
            proof,
        })
    }

    /// The dataset's tree root.
    pub fn tree(&self) -> &Cid {
        &self.tree
    }

    /// The leaf's index in the dataset.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The leaf count of the dataset (as the proof, checked against the manifest's, says).
    pub fn nleaves(&self) -> u64 {
        self.proof.nleaves
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The checked proof.
    pub fn proof(&self) -> &CodexProof {
        &self.proof
    }

    /// The block and its proof.
    pub fn into_parts(self) -> (Block, CodexProof) {
        (self.block, self.proof)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{
        cid::{cid_from_digest, sha256},
        merkle::CodexTree,
    };

    fn dataset(n: usize) -> (Cid, Vec<Block>, CodexTree) {
        let blocks: Vec<Block> = (0..n)
            .map(|i| Block::data_block(Bytes::from(vec![i as u8; 64])))
            .collect();
        let leaves: Vec<_> = blocks
            .iter()
            .map(|b| cid_digest(b.cid()).unwrap())
            .collect();
        let tree = CodexTree::new(leaves).unwrap();
        let root = cid_from_digest(Codec::Root, &tree.root());
        (root, blocks, tree)
    }

    #[test]
    fn only_the_leaf_at_its_position_verifies() {
        let (root, blocks, tree) = dataset(5);
        for (i, b) in blocks.iter().enumerate() {
            let proof = tree.proof(i as u64).unwrap();
            let v = VerifiedLeaf::verify(root, i as u64, 5, b.clone(), proof.clone()).unwrap();
            assert_eq!((v.index(), v.nleaves(), v.tree()), (i as u64, 5, &root));
            assert_eq!(v.block(), b);
            // Another index, another leaf count, another block, another tree: refused.
            let other = (i + 1) % 5;
            assert!(VerifiedLeaf::verify(root, other as u64, 5, b.clone(), proof.clone()).is_err());
            assert!(VerifiedLeaf::verify(root, i as u64, 6, b.clone(), proof.clone()).is_err());
            assert!(
                VerifiedLeaf::verify(root, i as u64, 5, blocks[other].clone(), proof.clone())
                    .is_err()
            );
            let elsewhere = cid_from_digest(Codec::Root, &sha256(b"another tree"));
            assert!(VerifiedLeaf::verify(elsewhere, i as u64, 5, b.clone(), proof).is_err());
        }
    }

    #[test]
    fn a_leaf_must_be_a_codex_block() {
        let (root, blocks, tree) = dataset(2);
        let manifest_like = Block::new(Codec::Manifest, blocks[0].data().clone());
        let r = VerifiedLeaf::verify(root, 0, 2, manifest_like, tree.proof(0).unwrap());
        assert!(matches!(r, Err(LeafError::NotABlock(_))), "{r:?}");
    }
}
