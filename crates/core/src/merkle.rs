//! The CodexTree: the reference node's Merkle tree over a dataset's block hashes, and its proofs.
//!
//! Leaves are the raw 32-byte sha2-256 digests of the blocks (they are not hashed again). Two
//! nodes are combined with a *keyed* compression, `sha256(left || right || key)`, where the key
//! byte says where the pair sits (`codex-protocol.md` §5.2):
//!
//! | key | byte | pair |
//! |---|---|---|
//! | none | 0x00 | two nodes above the leaf layer |
//! | bottom | 0x01 | two leaves |
//! | odd | 0x02 | the lone last node of an odd upper layer, paired with 32 zero bytes |
//! | odd + bottom | 0x03 | the lone last leaf of an odd leaf layer, paired with zero |
//!
//! Layers are built bottom-up until a layer of one node that is not the leaf layer remains, so a
//! single leaf is still compressed once (`root = sha256(leaf || 0^32 || 0x03)`). Construction and
//! verification are iterative; the tree keeps every layer so any proof is a walk up the layers.
//!
//! A [`CodexProof`] is `(mcodec, index, nleaves, path)`, the path listing the sibling at each
//! level from the bottom (zero where there is none). Its protobuf encoding (§5.4) emits all scalar
//! fields even when zero and wraps each path node in its own one-field message.
//!
//! Note on leaf counts: a proof's hash chain depends on `nleaves` only through the odd-node
//! handling on its own path, so two leaf counts with the same depth can verify the same chain.
//! [`CodexProof::verify`] checks index, depth and chain; callers that know the true leaf count
//! (from the manifest) must use [`CodexProof::verify_leaf`], which also pins index and count.

use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::cid::{Cid, Codec, SHA2_256, cid_from_digest};

/// A 32-byte sha2-256 digest: a leaf or an inner node of the tree.
pub type Digest = [u8; 32];

const ZERO: Digest = [0u8; 32];
const KEY_NONE: u8 = 0x00;
const KEY_BOTTOM: u8 = 0x01;
const KEY_ODD: u8 = 0x02;

/// The deepest tree a proof may describe: 64 levels covers every `u64` leaf count.
pub const MAX_PROOF_DEPTH: usize = 64;

/// The largest encoded proof accepted by [`CodexProof::decode`] (the reference's decoder allows 1
/// MiB; a real 64-level proof is under 2.5 KiB, so 4 KiB leaves room and refuses junk early).
pub const MAX_PROOF_BYTES: usize = 4096;

/// Errors building or checking trees and proofs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MerkleError {
    /// A tree needs at least one leaf.
    #[error("a Merkle tree needs at least one leaf")]
    NoLeaves,
    /// The leaf index is not below the leaf count.
    #[error("leaf index {index} out of range for {nleaves} leaves")]
    IndexOutOfRange {
        /// Index asked for.
        index: u64,
        /// Leaves in the tree.
        nleaves: u64,
    },
    /// The proof's path length does not match the depth of a tree with its leaf count.
    #[error("proof path has {got} nodes, a tree of {nleaves} leaves needs {want}")]
    WrongDepth {
        /// Path nodes present.
        got: usize,
        /// Path nodes needed.
        want: usize,
        /// The proof's leaf count.
        nleaves: u64,
    },
    /// The proof does not lead from the leaf to the root.
    #[error("proof does not verify against the root")]
    RootMismatch,
    /// The proof's index or leaf count is not the one expected.
    #[error("proof is for leaf {index} of {nleaves}, expected leaf {want_index} of {want_nleaves}")]
    WrongPosition {
        /// The proof's index.
        index: u64,
        /// The proof's leaf count.
        nleaves: u64,
        /// Expected index.
        want_index: u64,
        /// Expected leaf count.
        want_nleaves: u64,
    },
    /// The proof names a hash other than sha2-256.
    #[error("unsupported proof hash codec {0:#x}")]
    UnsupportedCodec(u64),
    /// The proof bytes are not a valid encoding.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
}

/// `sha256(left || right || key)`.
fn compress(left: &Digest, right: &Digest, key: u8) -> Digest {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.update([key]);
    h.finalize().into()
}

/// Number of levels (path nodes in a proof) of a tree with `nleaves` leaves (`nleaves >= 1`).
pub fn tree_depth(nleaves: u64) -> usize {
    let mut m = nleaves.max(1);
    let mut depth = 0;
    loop {
        m = m.div_ceil(2);
        depth += 1;
        if m <= 1 {
            return depth;
        }
    }
}

/// Number of nodes in layer `layer` (0 is the leaf layer) of a tree with `nleaves` leaves.
pub fn layer_len(nleaves: u64, layer: usize) -> u64 {
    (0..layer).fold(nleaves, |m, _| m.div_ceil(2))
}

/// A complete CodexTree, every layer kept (2 × 32 bytes per leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodexTree {
    layers: Vec<Vec<Digest>>,
}

impl CodexTree {
    /// Builds the tree over `leaves` (block digests, in dataset order).
    pub fn new(leaves: Vec<Digest>) -> Result<CodexTree, MerkleError> {
        if leaves.is_empty() {
            return Err(MerkleError::NoLeaves);
        }
        let mut layers = vec![leaves];
        loop {
            let bottom = layers.len() == 1;
            let Some(layer) = layers.last() else {
                return Err(MerkleError::NoLeaves);
            };
            if !bottom && layer.len() == 1 {
                break;
            }
            let key = if bottom { KEY_BOTTOM } else { KEY_NONE };
            let mut next = Vec::with_capacity(layer.len().div_ceil(2));
            let mut pairs = layer.chunks_exact(2);
            for pair in &mut pairs {
                next.push(compress(&pair[0], &pair[1], key));
            }
            if let [lone] = pairs.remainder() {
                next.push(compress(lone, &ZERO, key | KEY_ODD));
            }
            layers.push(next);
        }
        Ok(CodexTree { layers })
    }

    /// The root digest.
    pub fn root(&self) -> Digest {
        self.layers
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or(ZERO)
    }

    /// The tree CID: CIDv1(codex-root, sha2-256 multihash whose digest is the root).
    pub fn cid(&self) -> Cid {
        cid_from_digest(Codec::Root, &self.root())
    }

    /// Number of leaves.
    pub fn leaves_count(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaves (block digests).
    pub fn leaves(&self) -> &[Digest] {
        self.layers.first().map_or(&[], Vec::as_slice)
    }

    /// Number of path nodes in a proof of this tree ([`tree_depth`] of its leaf count): layers
    /// `0..depth()` hold every node a proof names, the layer above is the root.
    pub fn depth(&self) -> usize {
        self.layers.len().saturating_sub(1)
    }

    /// Layer `layer` (0 is the leaves; [`CodexTree::depth`] is the root); empty above the root.
    pub fn layer(&self, layer: usize) -> &[Digest] {
        self.layers.get(layer).map_or(&[], Vec::as_slice)
    }

    /// The inclusion proof of leaf `index`.
    pub fn proof(&self, index: u64) -> Result<CodexProof, MerkleError> {
        let nleaves = self.leaves_count();
        if index >= nleaves {
            return Err(MerkleError::IndexOutOfRange { index, nleaves });
        }
        let mut j = index as usize;
        let depth = self.layers.len() - 1;
        let mut path = Vec::with_capacity(depth);
        for layer in &self.layers[..depth] {
            path.push(layer.get(j ^ 1).copied().unwrap_or(ZERO));
            j >>= 1;
        }
        Ok(CodexProof {
            mcodec: SHA2_256,
            index,
            nleaves,
            path,
        })
    }

    /// Appends the encoding of leaf `index`'s proof to `out`: the same bytes as
    /// `self.proof(index)?.encode()`, without building the proof (no allocation besides `out`'s
    /// growth). Finishing an upload encodes one proof per block, so this is on the ingest path.
    pub fn encode_proof_into(&self, index: u64, out: &mut Vec<u8>) -> Result<(), MerkleError> {
        let nleaves = self.leaves_count();
        if index >= nleaves {
            return Err(MerkleError::IndexOutOfRange { index, nleaves });
        }
        let depth = self.layers.len() - 1;
        let mut j = index as usize;
        let path = self.layers[..depth].iter().map(|layer| {
            let node = layer.get(j ^ 1).unwrap_or(&ZERO);
            j >>= 1;
            node
        });
        encode_proof(SHA2_256, index, nleaves, path, out);
        Ok(())
    }
}

/// Protobuf tags of the proof message (§5.4): field number << 3 | wire type.
const TAG_MCODEC: u8 = 0x08;
const TAG_INDEX: u8 = 0x10;
const TAG_NLEAVES: u8 = 0x18;
const TAG_PATH: u8 = 0x22;
/// The one field of a path node message: bytes, field 1.
const TAG_NODE: u8 = 0x0a;
/// Length of an encoded path node message: tag, length byte, 32 digest bytes.
const NODE_MSG_LEN: u8 = 34;

/// Writes `v` as a protobuf varint.
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The protobuf encoding of a proof (§5.4), written directly: fields 1–3 always, then one
/// length-delimited node message per path node. Byte-identical to the prost messages in [`pb`]
/// (a test checks this), which are kept for decoding.
fn encode_proof<'a>(
    mcodec: u64,
    index: u64,
    nleaves: u64,
    path: impl ExactSizeIterator<Item = &'a Digest>,
    out: &mut Vec<u8>,
) {
    out.reserve(3 * 11 + path.len() * (2 + usize::from(NODE_MSG_LEN)));
    out.push(TAG_MCODEC);
    put_varint(mcodec, out);
    out.push(TAG_INDEX);
    put_varint(index, out);
    out.push(TAG_NLEAVES);
    put_varint(nleaves, out);
    for node in path {
        out.extend_from_slice(&[TAG_PATH, NODE_MSG_LEN, TAG_NODE, 32]);
        out.extend_from_slice(node);
    }
}

/// An inclusion proof: leaf `index` of a tree of `nleaves` leaves, with the sibling path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodexProof {
    /// Hash codec of the tree (sha2-256, 0x12).
    pub mcodec: u64,
    /// Leaf index.
    pub index: u64,
    /// Number of leaves in the tree.
    pub nleaves: u64,
    /// Sibling digests from the leaf layer up.
    pub path: Vec<Digest>,
}

impl CodexProof {
    /// The proof of leaf `index` in a tree of `nleaves` leaves whose path node at each layer is
    /// `node(layer, position)`: the sibling `position` of the leaf's ancestor at that layer, or
    /// zero where the ancestor is the lone last node. Builds proofs from a tree kept elsewhere
    /// (the store keeps each dataset's layers once instead of a proof per leaf); the result is
    /// the proof [`CodexTree::proof`] gives for the same tree.
    pub fn from_nodes<E>(
        index: u64,
        nleaves: u64,
        mut node: impl FnMut(usize, u64) -> Result<Digest, E>,
    ) -> Result<CodexProof, E>
    where
        E: From<MerkleError>,
    {
        if index >= nleaves {
            return Err(MerkleError::IndexOutOfRange { index, nleaves }.into());
        }
        let depth = tree_depth(nleaves);
        let mut path = Vec::with_capacity(depth);
        let mut j = index;
        let mut len = nleaves;
        for layer in 0..depth {
            let sibling = j ^ 1;
            path.push(if sibling < len {
                node(layer, sibling)?
            } else {
                ZERO
            });
            j >>= 1;
            len = len.div_ceil(2);
        }
        Ok(CodexProof {
            mcodec: SHA2_256,
            index,
            nleaves,
            path,
        })
    }

    /// Recomputes the root from `leaf` along this proof (§5.5), after checking the index and
    /// that the path has the depth of a tree with `nleaves` leaves.
    pub fn compute_root(&self, leaf: &Digest) -> Result<Digest, MerkleError> {
        if self.mcodec != SHA2_256 {
            return Err(MerkleError::UnsupportedCodec(self.mcodec));
        }
        if self.index >= self.nleaves {
            return Err(MerkleError::IndexOutOfRange {
                index: self.index,
                nleaves: self.nleaves,
            });
        }
        let want = tree_depth(self.nleaves);
        if self.path.len() != want {
            return Err(MerkleError::WrongDepth {
                got: self.path.len(),
                want,
                nleaves: self.nleaves,
            });
        }
        let mut h = *leaf;
        let mut j = self.index;
        let mut m = self.nleaves;
        let mut key = KEY_BOTTOM;
        for sibling in &self.path {
            h = if j & 1 == 1 {
                compress(sibling, &h, key)
            } else if j == m - 1 {
                compress(&h, sibling, key | KEY_ODD)
            } else {
                compress(&h, sibling, key)
            };
            key = KEY_NONE;
            j >>= 1;
            m = m.div_ceil(2);
        }
        Ok(h)
    }

    /// Checks that this proof leads from `leaf` to `root`.
    pub fn verify(&self, leaf: &Digest, root: &Digest) -> Result<(), MerkleError> {
        if &self.compute_root(leaf)? == root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }

    /// Checks that this proof is for leaf `index` of a tree of `nleaves` leaves (as the manifest
    /// says) and leads from `leaf` to `root`.
    pub fn verify_leaf(
        &self,
        leaf: &Digest,
        root: &Digest,
        index: u64,
        nleaves: u64,
    ) -> Result<(), MerkleError> {
        if self.index != index || self.nleaves != nleaves {
            return Err(MerkleError::WrongPosition {
                index: self.index,
                nleaves: self.nleaves,
                want_index: index,
                want_nleaves: nleaves,
            });
        }
        self.verify(leaf, root)
    }

    /// The protobuf encoding (§5.4): fields 1–3 always emitted, one sub-message per path node.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_proof(
            self.mcodec,
            self.index,
            self.nleaves,
            self.path.iter(),
            &mut out,
        );
        out
    }

    /// The encoding through the prost messages (the reference for [`CodexProof::encode`]).
    #[cfg(test)]
    fn encode_prost(&self) -> Vec<u8> {
        pb::Proof {
            mcodec: Some(self.mcodec),
            index: Some(self.index),
            nleaves: Some(self.nleaves),
            path: self
                .path
                .iter()
                .map(|n| pb::Node {
                    node: Some(n.to_vec()),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decodes a proof, refusing oversized input, unknown hash codecs, paths deeper than
    /// [`MAX_PROOF_DEPTH`] and nodes that are not 32 bytes.
    pub fn decode(bytes: &[u8]) -> Result<CodexProof, MerkleError> {
        if bytes.len() > MAX_PROOF_BYTES {
            return Err(MerkleError::Malformed("proof too large"));
        }
        let p = pb::Proof::decode(bytes).map_err(|_| MerkleError::Malformed("bad protobuf"))?;
        let mcodec = p.mcodec.unwrap_or(0);
        if mcodec != SHA2_256 {
            return Err(MerkleError::UnsupportedCodec(mcodec));
        }
        if p.path.len() > MAX_PROOF_DEPTH {
            return Err(MerkleError::Malformed("proof path too long"));
        }
        let mut path = Vec::with_capacity(p.path.len());
        for n in p.path {
            let node = n.node.unwrap_or_default();
            let node: Digest = node
                .as_slice()
                .try_into()
                .map_err(|_| MerkleError::Malformed("node not 32 bytes"))?;
            path.push(node);
        }
        Ok(CodexProof {
            mcodec,
            index: p.index.unwrap_or(0),
            nleaves: p.nleaves.unwrap_or(0),
            path,
        })
    }
}

/// The protobuf shapes of the proof (hand-written prost messages; no `protoc` needed).
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Proof {
        #[prost(uint64, optional, tag = "1")]
        pub(super) mcodec: Option<u64>,
        #[prost(uint64, optional, tag = "2")]
        pub(super) index: Option<u64>,
        #[prost(uint64, optional, tag = "3")]
        pub(super) nleaves: Option<u64>,
        #[prost(message, repeated, tag = "4")]
        pub(super) path: Vec<Node>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Node {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub(super) node: Option<Vec<u8>>,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The raw test leaves of the reference's tree tests: `%032d` of 1..=n as ASCII.
    fn ascii_leaves(n: usize) -> Vec<Digest> {
        (1..=n)
            .map(|i| {
                let s = format!("{i:032}");
                let mut d = [0u8; 32];
                d.copy_from_slice(s.as_bytes());
                d
            })
            .collect()
    }

    /// codex-protocol.md §11.2 roots for n = 1, 2, 3, 8 (tests/codex/merkletree shapes).
    #[test]
    fn roots_match_reference_vectors() {
        let cases = [
            (
                1,
                "ab77a68f53293329179389d6f0feabc6e514057d49e8403c2aa913c30706b094",
            ),
            (
                2,
                "0b642bff731e11e1438845a5c37ef8aa1278384e722862e03f19efb4dd51d737",
            ),
            (
                3,
                "d3baa021b74562dfc6c1fc0c077581aa408c813824a600590a09e2f6b14a0c98",
            ),
            (
                8,
                "b3b9271afbe786de1db89c88448d3a97b785baff85f0584a25d3f2a4f9932d61",
            ),
        ];
        for (n, root) in cases {
            let tree = CodexTree::new(ascii_leaves(n)).unwrap();
            assert_eq!(hex::encode(tree.root()), root, "n = {n}");
        }
    }

    /// The structural shapes of generictreetests.nim: 7 and 10 leaves.
    #[test]
    fn odd_shapes_match_reference_structure() {
        let l = ascii_leaves(10);
        let c = compress;
        let t7 = CodexTree::new(l[..7].to_vec()).unwrap();
        let a = c(&c(&l[0], &l[1], 1), &c(&l[2], &l[3], 1), 0);
        let b = c(&c(&l[4], &l[5], 1), &c(&l[6], &ZERO, 3), 0);
        assert_eq!(t7.root(), c(&a, &b, 0));
        let t10 = CodexTree::new(l.clone()).unwrap();
        let left = c(
            &c(&c(&l[0], &l[1], 1), &c(&l[2], &l[3], 1), 0),
            &c(&c(&l[4], &l[5], 1), &c(&l[6], &l[7], 1), 0),
            0,
        );
        let right = c(&c(&c(&l[8], &l[9], 1), &ZERO, 2), &ZERO, 2);
        assert_eq!(t10.root(), c(&left, &right, 0));
    }

    /// §11.1(1)/§11.2: the treeCid of the padded "some file contents" block.
    #[test]
    fn single_block_tree_cid_matches_reference() {
        let mut block = vec![0u8; 65536];
        block[..18].copy_from_slice(b"some file contents");
        let tree = CodexTree::new(vec![crate::cid::sha256(&block)]).unwrap();
        assert_eq!(
            tree.cid().to_string(),
            "zDzSvJTezk7bJNQqFq8k1iHXY84psNuUfZVusA5bBQQUSuyzDSVL"
        );
        assert_eq!(
            hex::encode(tree.cid().to_bytes()),
            "01839a031220050b50fa8145c235e1b817326d34f733420298a9aa511f13622dd81264e8d4df"
        );
        // §11.2: the single-leaf proof encoding.
        let proof = tree.proof(0).unwrap();
        let mut want = hex::decode("08121000180122220a20").unwrap();
        want.extend([0u8; 32]);
        assert_eq!(proof.encode(), want);
        assert_eq!(CodexProof::decode(&want).unwrap(), proof);
    }

    #[test]
    fn empty_tree_and_bad_index_are_errors() {
        assert_eq!(CodexTree::new(vec![]), Err(MerkleError::NoLeaves));
        let t = CodexTree::new(ascii_leaves(3)).unwrap();
        assert!(matches!(
            t.proof(3),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn depth_matches_layers() {
        for n in 1..200u64 {
            let t = CodexTree::new(vec![[1; 32]; n as usize]).unwrap();
            assert_eq!(t.proof(0).unwrap().path.len(), tree_depth(n), "n = {n}");
        }
    }

    /// Large indices and leaf counts take multi-byte varints.
    #[test]
    fn encoding_matches_prost_for_large_values() {
        let p = CodexProof {
            mcodec: SHA2_256,
            index: u64::MAX - 1,
            nleaves: u64::MAX,
            path: vec![[7; 32]; 3],
        };
        assert_eq!(p.encode(), p.encode_prost());
        let t = CodexTree::new(ascii_leaves(3)).unwrap();
        assert!(t.encode_proof_into(3, &mut Vec::new()).is_err());
    }

    #[test]
    fn decode_rejects_junk() {
        assert!(CodexProof::decode(&[0xff, 0xff]).is_err());
        assert!(matches!(
            CodexProof::decode(&hex::decode("08131000180122220a20").unwrap()),
            Err(MerkleError::UnsupportedCodec(0x13) | MerkleError::Malformed(_))
        ));
        // A path node of the wrong length.
        let bad = hex::decode("081210001801220a0a080000000000000000").unwrap();
        assert_eq!(
            CodexProof::decode(&bad),
            Err(MerkleError::Malformed("node not 32 bytes"))
        );
        assert!(CodexProof::decode(&vec![0u8; MAX_PROOF_BYTES + 1]).is_err());
    }

    fn flip(bytes: &mut [u8], bit: usize) {
        bytes[bit / 8 % bytes.len()] ^= 1 << (bit % 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every proof of a random tree verifies, also after an encode/decode round trip.
        #[test]
        fn every_proof_verifies(leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..70)) {
            let tree = CodexTree::new(leaves.clone()).unwrap();
            let root = tree.root();
            for (i, leaf) in leaves.iter().enumerate() {
                let p = tree.proof(i as u64).unwrap();
                prop_assert_eq!(p.verify_leaf(leaf, &root, i as u64, leaves.len() as u64), Ok(()));
                let q = CodexProof::decode(&p.encode()).unwrap();
                prop_assert_eq!(&q, &p);
                // The hand-written encoder matches prost, and the tree encodes without a proof.
                prop_assert_eq!(p.encode(), p.encode_prost());
                let mut direct = vec![0xAA];
                tree.encode_proof_into(i as u64, &mut direct).unwrap();
                prop_assert_eq!(&direct[1..], &p.encode()[..]);
            }
        }

        /// A proof built from the layers kept elsewhere (as the store does) is the tree's own
        /// proof; layer lengths follow `layer_len`, and only positions inside a layer are asked.
        #[test]
        fn proofs_from_kept_layers_match(leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..300)) {
            let n = leaves.len() as u64;
            let tree = CodexTree::new(leaves).unwrap();
            prop_assert_eq!(tree.depth(), tree_depth(n));
            for layer in 0..=tree.depth() {
                prop_assert_eq!(tree.layer(layer).len() as u64, layer_len(n, layer));
            }
            for i in 0..n {
                let p = CodexProof::from_nodes::<MerkleError>(i, n, |layer, pos| {
                    tree.layer(layer)
                        .get(pos as usize)
                        .copied()
                        .ok_or(MerkleError::Malformed("position outside its layer"))
                })
                .unwrap();
                prop_assert_eq!(p, tree.proof(i).unwrap());
            }
            prop_assert!(CodexProof::from_nodes::<MerkleError>(n, n, |_, _| Ok(ZERO)).is_err());
        }

        /// Any flipped bit in the leaf, the path, the index or the leaf count makes it fail.
        #[test]
        fn flipped_bits_fail(leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..70),
                             pick in any::<prop::sample::Index>(),
                             bit in 0usize..256, ibit in 0usize..64) {
            let n = leaves.len() as u64;
            let tree = CodexTree::new(leaves.clone()).unwrap();
            let root = tree.root();
            let i = pick.index(leaves.len());
            let proof = tree.proof(i as u64).unwrap();
            let leaf = leaves[i];

            let mut bad_leaf = leaf;
            flip(&mut bad_leaf, bit);
            prop_assert!(proof.verify(&bad_leaf, &root).is_err());

            let mut p = proof.clone();
            let level = bit % p.path.len();
            flip(&mut p.path[level], bit);
            prop_assert!(p.verify(&leaf, &root).is_err());

            // Index: the hash chain alone rejects a changed index.
            let mut p = proof.clone();
            p.index ^= 1 << ibit;
            prop_assert!(p.verify(&leaf, &root).is_err());

            // Leaf count: rejected against the count the manifest gives.
            let mut p = proof.clone();
            p.nleaves ^= 1 << ibit;
            prop_assert!(p.verify_leaf(&leaf, &root, i as u64, n).is_err());
        }
    }
}
