//! Each dataset's Merkle tree, kept once instead of a proof per leaf.
//!
//! A leaf's proof names one node per layer of its dataset's tree, so the proofs of a dataset
//! repeat the same upper nodes again and again: a 1 GiB dataset (16,384 leaves) has 14-node
//! proofs of about 520 bytes each, 8.5 MB in all, for a tree of 1 MB. The `trees` table keeps
//! the layers a proof can name (every layer below the root) in chunks of [`TREE_CHUNK_NODES`]
//! nodes, and a proof is put together on read from one chunk per layer.
//!
//! Where a leaf's proof comes from, in order:
//!
//! 1. the leaf row itself, for rows written before trees were kept (they are read as before);
//! 2. the `proofs` table: a network download keeps each leaf's proof as it arrived, since the
//!    tree is not known until every leaf is;
//! 3. the dataset's tree. Uploads write it when they finish (before their first leaf row, or,
//!    into a dataset a download stored in part, with their last). A download that holds every leaf
//!    runs [`crate::Store::settle_tree`], which rebuilds the tree from the leaves, checks its
//!    root, writes it and drops the `proofs` rows. The proofs live in a table of their own so
//!    that dropping them frees their pages instead of rewriting every leaf row (redb is
//!    copy-on-write: rewriting the rows of a 1 GiB download grew the file from 17 to 35 MB).
//!
//! Invariant: every leaf row has its proof in one of these places. The tree is written in (or
//! before) the transaction that writes the first row relying on it; `proofs` rows are written
//! with their leaf rows and removed with them or once the tree is stored; the tree is removed
//! with the dataset's row when its last leaf is reclaimed. And for an active dataset, a stored
//! tree means every leaf is stored (`Store::first_missing_leaf` and `Store::reserve_room` rely
//! on it): only a dataset being written keeps a tree before its last leaf.

use cairn_core::{CodexProof, CodexTree, Digest, merkle::layer_len};
use redb::{ReadableTable, Table, TableDefinition};

use crate::StoreError;

/// A `trees` key: (tree CID bytes, layer, chunk). Layer 0 is the leaves; chunk `c` of a layer
/// holds its nodes `c * TREE_CHUNK_NODES ..` up to the layer's end.
pub(crate) type TreeKey = (&'static [u8], u64, u64);

/// `trees`: [`TreeKey`] → the chunk's nodes, 32 bytes each, concatenated.
pub(crate) const TREES: TableDefinition<TreeKey, &[u8]> = TableDefinition::new("trees");

/// `proofs`: (tree CID bytes, index) → the encoded proof a downloaded leaf arrived with, until
/// its dataset's tree is stored.
pub(crate) const PROOFS: TableDefinition<crate::index::LeafKey, &[u8]> =
    TableDefinition::new("proofs");

/// Nodes per chunk: 128 nodes are 4 KiB, one redb page. A run of up to 20 consecutive leaves
/// (one serving message) reads one or two chunks per layer; bigger chunks would read more bytes
/// per proof, smaller ones more rows.
pub(crate) const TREE_CHUNK_NODES: u64 = 128;

/// Bytes of one node.
const NODE_BYTES: usize = 32;

/// Writes the layers of `tree` that proofs name (all but the root) under `tree_key`. Returns the
/// number of chunks written.
pub(crate) fn put_tree(
    table: &mut Table<'_, TreeKey, &'static [u8]>,
    tree_key: &[u8],
    tree: &CodexTree,
) -> Result<u64, StoreError> {
    let mut chunks = 0;
    let mut buf = Vec::with_capacity(TREE_CHUNK_NODES as usize * NODE_BYTES);
    for layer in 0..tree.depth() {
        for (c, nodes) in tree
            .layer(layer)
            .chunks(TREE_CHUNK_NODES as usize)
            .enumerate()
        {
            buf.clear();
            for node in nodes {
                buf.extend_from_slice(node);
            }
            table.insert((tree_key, layer as u64, c as u64), buf.as_slice())?;
            chunks += 1;
        }
    }
    Ok(chunks)
}

/// Whether the tree of `tree_key` is stored.
pub(crate) fn has_tree(
    table: &impl ReadableTable<TreeKey, &'static [u8]>,
    tree_key: &[u8],
) -> Result<bool, StoreError> {
    Ok(table.get((tree_key, 0, 0))?.is_some())
}

/// The number of leaves of the stored tree of `tree_key`, from its leaf layer's last chunk;
/// `None` when no tree is stored.
pub(crate) fn tree_leaf_count(
    table: &impl ReadableTable<TreeKey, &'static [u8]>,
    tree_key: &[u8],
) -> Result<Option<u64>, StoreError> {
    let last = table
        .range((tree_key, 0, 0)..=(tree_key, 0, u64::MAX))?
        .next_back()
        .transpose()?;
    let Some((k, v)) = last else {
        return Ok(None);
    };
    let nodes = v.value().len();
    if nodes == 0 || nodes % NODE_BYTES != 0 || nodes / NODE_BYTES > TREE_CHUNK_NODES as usize {
        return Err(StoreError::IndexDamaged("tree chunk"));
    }
    k.value()
        .2
        .checked_mul(TREE_CHUNK_NODES)
        .and_then(|n| n.checked_add((nodes / NODE_BYTES) as u64))
        .map(Some)
        .ok_or(StoreError::IndexDamaged("tree chunk"))
}

/// Removes every chunk of the tree of `tree_key`.
pub(crate) fn remove_tree(
    table: &mut Table<'_, TreeKey, &'static [u8]>,
    tree_key: &[u8],
) -> Result<(), StoreError> {
    table.retain_in((tree_key, 0, 0)..=(tree_key, u64::MAX, u64::MAX), |_, _| {
        false
    })?;
    Ok(())
}

/// Builds proofs of one dataset's leaves from its stored tree. It keeps the last chunk read of
/// each layer, so a run of neighbouring leaves reads each chunk once, and its memory is bounded
/// by one chunk per layer (at most 64 layers × 4 KiB) whatever the indices asked.
pub(crate) struct ProofSource<'a, T> {
    table: &'a T,
    tree_key: &'a [u8],
    nleaves: u64,
    /// Per layer: the chunk number and its bytes.
    last: Vec<Option<(u64, Vec<u8>)>>,
}

impl<'a, T: ReadableTable<TreeKey, &'static [u8]>> ProofSource<'a, T> {
    pub(crate) fn new(table: &'a T, tree_key: &'a [u8], nleaves: u64) -> ProofSource<'a, T> {
        ProofSource {
            table,
            tree_key,
            nleaves,
            last: Vec::new(),
        }
    }

    /// The proof of leaf `index`.
    pub(crate) fn proof(&mut self, index: u64) -> Result<CodexProof, StoreError> {
        let nleaves = self.nleaves;
        CodexProof::from_nodes(index, nleaves, |layer, pos| self.node(layer, pos))
    }

    fn node(&mut self, layer: usize, pos: u64) -> Result<Digest, StoreError> {
        if pos >= layer_len(self.nleaves, layer) {
            return Err(StoreError::IndexDamaged("tree node outside its layer"));
        }
        let chunk = pos / TREE_CHUNK_NODES;
        if self.last.len() <= layer {
            self.last.resize(layer + 1, None);
        }
        let cached = matches!(&self.last[layer], Some((c, _)) if *c == chunk);
        if !cached {
            let bytes = self
                .table
                .get((self.tree_key, layer as u64, chunk))?
                .ok_or(StoreError::IndexDamaged("missing tree chunk"))?
                .value()
                .to_vec();
            self.last[layer] = Some((chunk, bytes));
        }
        let Some((_, bytes)) = &self.last[layer] else {
            return Err(StoreError::IndexDamaged("missing tree chunk"));
        };
        // The offset fits: `pos % TREE_CHUNK_NODES` is below 128.
        let at = (pos % TREE_CHUNK_NODES) as usize * NODE_BYTES;
        bytes
            .get(at..at + NODE_BYTES)
            .and_then(|b| Digest::try_from(b).ok())
            .ok_or(StoreError::IndexDamaged("short tree chunk"))
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, ReadableTableMetadata, backends::InMemoryBackend};

    use super::*;

    fn digests(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&(i as u64).to_le_bytes());
                d[31] = 0x5a;
                d
            })
            .collect()
    }

    /// Proofs read back from the table equal the tree's own, for leaf counts around chunk
    /// boundaries and odd layers; removing the tree leaves nothing behind and another tree
    /// alone.
    #[test]
    fn stored_trees_give_the_trees_own_proofs() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let sizes = [1usize, 2, 3, 127, 128, 129, 255, 257, 1000];
        let trees: Vec<CodexTree> = sizes
            .iter()
            .map(|&n| CodexTree::new(digests(n)).unwrap())
            .collect();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TREES).unwrap();
            for tree in &trees {
                let key = tree.cid().to_bytes();
                assert!(!has_tree(&t, &key).unwrap());
                assert!(put_tree(&mut t, &key, tree).unwrap() > 0);
                assert!(has_tree(&t, &key).unwrap());
            }
        }
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(TREES).unwrap();
        for tree in &trees {
            let key = tree.cid().to_bytes();
            let mut src = ProofSource::new(&t, &key, tree.leaves_count());
            // Forwards, then backwards and jumping, so the chunk cache is both hit and missed.
            let n = tree.leaves_count();
            let order: Vec<u64> = (0..n).chain((0..n).rev().step_by(7)).collect();
            for i in order {
                assert_eq!(
                    src.proof(i).unwrap(),
                    tree.proof(i).unwrap(),
                    "leaf {i} of {n}"
                );
            }
            assert!(src.proof(n).is_err());
        }
        drop(t);
        drop(r);
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TREES).unwrap();
            let gone = trees[4].cid().to_bytes();
            remove_tree(&mut t, &gone).unwrap();
            assert!(!has_tree(&t, &gone).unwrap());
            let left: u64 = t.iter().unwrap().count() as u64;
            let mut src_err = ProofSource::new(&t, &gone, 128);
            assert!(matches!(
                src_err.proof(0),
                Err(StoreError::IndexDamaged("missing tree chunk"))
            ));
            // The others are whole: one chunk per 128 nodes of each layer below the root.
            let want: u64 = trees
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 4)
                .map(|(_, tr)| {
                    (0..tr.depth())
                        .map(|l| layer_len(tr.leaves_count(), l).div_ceil(TREE_CHUNK_NODES))
                        .sum::<u64>()
                })
                .sum();
            assert_eq!(left, want);
        }
        w.commit().unwrap();
    }

    /// The tree of `blocks` and each block as a leaf verified against it.
    fn verified_leaves(blocks: &[cairn_core::Block]) -> (CodexTree, Vec<cairn_core::VerifiedLeaf>) {
        let digests: Vec<Digest> = blocks
            .iter()
            .map(|b| cairn_core::cid::cid_digest(b.cid()).unwrap())
            .collect();
        let tree = CodexTree::new(digests).unwrap();
        let n = blocks.len() as u64;
        let leaves = (0..n)
            .map(|i| {
                let b = blocks[i as usize].clone();
                cairn_core::VerifiedLeaf::verify(tree.cid(), i, n, b, tree.proof(i).unwrap())
                    .unwrap()
            })
            .collect();
        (tree, leaves)
    }

    /// Leaf rows written before proofs moved out of them (the proof inline in the row) read
    /// back as before, and settling the dataset moves them to the tree too.
    #[test]
    fn rows_with_inline_proofs_still_serve_and_settle() {
        use cairn_core::Block;

        use crate::{Store, StoreConfig, index::LEAVES};

        let cfg = StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        };
        let blocks: Vec<Block> = (0..9u8)
            .map(|i| Block::data_block(bytes::Bytes::from(vec![i; 1000])))
            .collect();
        let (tree, leaves) = verified_leaves(&blocks);
        let store = Store::in_memory(cfg).unwrap();
        let manifest = cairn_core::Manifest::new(tree.cid(), 9000, 1000);
        store.put_block(&manifest.to_block()).unwrap();
        store.put_leaves(&tree.cid(), &leaves).unwrap();
        // Turn the rows into the old shape: proof inline, nothing in `proofs`.
        let key = tree.cid().to_bytes();
        store
            .write(0, |t| {
                for i in 0..9u64 {
                    let cid = blocks[i as usize].cid().to_bytes();
                    let p = t
                        .proofs
                        .remove((key.as_slice(), i))?
                        .unwrap()
                        .value()
                        .to_vec();
                    t.leaves
                        .insert((key.as_slice(), i), (cid.as_slice(), p.as_slice()))?;
                }
                Ok(())
            })
            .unwrap();
        let r = store.inner.db().unwrap().begin_read().unwrap();
        assert_eq!(r.open_table(PROOFS).unwrap().len().unwrap(), 0);
        assert!(
            !r.open_table(LEAVES)
                .unwrap()
                .get((key.as_slice(), 3))
                .unwrap()
                .unwrap()
                .value()
                .1
                .is_empty()
        );
        drop(r);
        let check = |store: &Store| {
            let got = store
                .get_leaves(&tree.cid(), &(0..9).collect::<Vec<_>>())
                .unwrap();
            for (i, g) in got.into_iter().enumerate() {
                assert_eq!(
                    g.unwrap().unwrap().1,
                    tree.proof(i as u64).unwrap(),
                    "leaf {i}"
                );
            }
        };
        check(&store);
        assert_eq!(store.settle_tree(&tree.cid()).unwrap(), 9);
        assert_eq!(store.proof_storage().unwrap().1, 0);
        check(&store);
    }

    /// A dataset `settle_tree` rejects (its stored leaves do not make its tree) is logged and
    /// skipped by the maintenance pass, which settles the others. Before, the error ended the
    /// pass (and failed it), and the cursor stayed put, so the same dataset stopped settlement
    /// of every other at each pass (found by review).
    #[test]
    fn a_dataset_settle_tree_rejects_does_not_stop_the_others() {
        use cairn_core::{Block, Manifest};

        use crate::{Store, StoreConfig};

        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        })
        .unwrap();
        let download = |seed: u8| {
            let blocks: Vec<Block> = (0..9u8)
                .map(|i| Block::data_block(bytes::Bytes::from(vec![seed, i, 0, 1])))
                .collect();
            let (tree, leaves) = verified_leaves(&blocks);
            store
                .put_block(&Manifest::new(tree.cid(), 36, 4).to_block())
                .unwrap();
            store.put_leaves(&tree.cid(), &leaves).unwrap();
            tree.cid().to_bytes()
        };
        let mut trees = [download(1), download(2)];
        trees.sort();
        // The first in key order (tried first) is damaged: two leaf rows swapped.
        let bad = trees[0].clone();
        store
            .write(0, |t| {
                let row = |t: &crate::index::Tables<'_>, i: u64| {
                    t.leaves
                        .get((bad.as_slice(), i))
                        .unwrap()
                        .unwrap()
                        .value()
                        .0
                        .to_vec()
                };
                let (a, b) = (row(t, 0), row(t, 1));
                t.leaves
                    .insert((bad.as_slice(), 0), (b.as_slice(), &[][..]))?;
                t.leaves
                    .insert((bad.as_slice(), 1), (a.as_slice(), &[][..]))?;
                Ok(())
            })
            .unwrap();
        let report = store.maintenance(0).unwrap();
        assert_eq!(
            report.settled, 9,
            "the other dataset is settled: {report:?}"
        );
        let r = store.inner.db().unwrap().begin_read().unwrap();
        assert!(has_tree(&r.open_table(TREES).unwrap(), &trees[1]).unwrap());
        assert!(!has_tree(&r.open_table(TREES).unwrap(), &bad).unwrap());
    }

    /// A damaged chunk is an error, never a wrong proof or a panic.
    #[test]
    fn a_short_chunk_is_reported() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let tree = CodexTree::new(digests(10)).unwrap();
        let key = tree.cid().to_bytes();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(TREES).unwrap();
            put_tree(&mut t, &key, &tree).unwrap();
            t.insert((key.as_slice(), 0, 0), &[0u8; 40][..]).unwrap();
            let mut src = ProofSource::new(&t, &key, 10);
            assert!(matches!(
                src.proof(9),
                Err(StoreError::IndexDamaged("short tree chunk"))
            ));
        }
        w.commit().unwrap();
    }
}
