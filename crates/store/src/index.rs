//! The index tables and the bookkeeping rules that keep them consistent.
//!
//! Every change to the index goes through [`Tables`], which opens all tables of one write
//! transaction and applies the refcount, quota and segment-liveness rules described in the crate
//! docs. Deltas to the counters are accumulated and written once, in [`Tables::finish`].

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::{
    StoreError,
    trees::{PROOFS, ProofSource, TREES, TreeKey, has_tree, remove_tree, tree_leaf_count},
};

/// What [`Tables::end_session`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The session is gone. `deleting`: the dataset (tree key) it left to nothing, now being
    /// deleted, whose leaves are still to be reclaimed.
    Ended { deleting: Option<Vec<u8>> },
    /// Nothing changed: the listed dataset `tree` (of `nleaves` leaves) the session was writing
    /// is partial, and its rows that rely on its tree need their proofs before it can go.
    NeedsProofs { tree: Vec<u8>, nleaves: u64 },
}

/// A `blocks` row: (segment, offset, length, dataset refs, flags, expiry). `flags`: bit 0 is
/// the standalone flag, bit 1 says bits 32–63 hold the CRC32C of the block's bytes (rows
/// written before checksums were kept have neither bit 1 nor a checksum, and are verified by
/// hashing instead).
pub(crate) type BlockRow = (u64, u64, u64, u64, u64, u64);

/// `flags` bit 0: the block is standalone.
const FLAG_STANDALONE: u64 = 1;
/// `flags` bit 1: bits 32–63 hold a CRC32C of the bytes.
const FLAG_CHECKSUM: u64 = 1 << 1;
/// Where the CRC32C sits in `flags`.
const CHECKSUM_SHIFT: u32 = 32;
/// A `leaves` key: (tree CID bytes, index).
pub(crate) type LeafKey = (&'static [u8], u64);
/// A `leaves` row: (block CID bytes, proof bytes). The proof is empty in rows written since
/// proofs moved out of them (to `proofs` or the dataset's tree, see the `trees` module).
pub(crate) type LeafRow = (&'static [u8], &'static [u8]);

/// `blocks`: CID bytes → [`BlockRow`].
pub(crate) const BLOCKS: TableDefinition<&[u8], BlockRow> = TableDefinition::new("blocks");
/// `leaves`: [`LeafKey`] → [`LeafRow`].
pub(crate) const LEAVES: TableDefinition<LeafKey, LeafRow> = TableDefinition::new("leaves");
/// `datasets`: tree CID bytes → (leaf count, manifest refs, state, session).
pub(crate) const DATASETS: TableDefinition<&[u8], (u64, u64, u64, u64)> =
    TableDefinition::new("datasets");
/// `manifests`: manifest CID bytes → tree CID bytes.
pub(crate) const MANIFESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("manifests");
/// `expiry`: (unix seconds, CID bytes) → ().
pub(crate) const EXPIRY: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("expiry");
/// `segments`: id → (live bytes, sealed).
pub(crate) const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");
/// `sessions`: id → (segment id, tree CID bytes or empty).
pub(crate) const SESSIONS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("sessions");
/// `deleting`: tree CID bytes → ().
pub(crate) const DELETING: TableDefinition<&[u8], ()> = TableDefinition::new("deleting");
/// `generations`: tree CID bytes → the dataset's generation ([`Tables::dataset_generation`]).
/// A table of its own, not a fifth column of `datasets`: redb checks a table's value type when
/// it is opened, so a wider `datasets` row would not open an index written before generations
/// were kept. This table is simply created (empty) when such an index is first opened, and
/// its datasets read as generation 0 until one changes.
pub(crate) const GENERATIONS: TableDefinition<&[u8], u64> = TableDefinition::new("generations");
/// `fetches`: manifest CID bytes → unix seconds when a background download of the dataset
/// was asked for; the node resumes these at start ([`crate::Store::fetches`]).
pub(crate) const FETCHES: TableDefinition<&[u8], u64> = TableDefinition::new("fetches");
/// `counts`: (tree CID bytes, leaf count) → nothing: the leaf counts that manifests naming a
/// dataset claim, kept only while those claims disagree and the dataset is not whole (see
/// [`Tables::add_manifest`]). A table of its own for the reason given at `generations`.
pub(crate) const COUNTS: TableDefinition<LeafKey, ()> = TableDefinition::new("counts");
/// The `counts` row (tree, 0) says a claim was not kept ([`crate::MAX_COUNT_CLAIMS`]): no
/// dataset has 0 leaves, so it cannot be mistaken for a claim.
pub(crate) const COUNT_NOT_KEPT: u64 = 0;
/// `meta`: counter name → value.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_USED: &str = "used_bytes";
pub(crate) const META_TOTAL_BLOCKS: &str = "total_blocks";
pub(crate) const META_NEXT_ID: &str = "next_id";
/// The next dataset generation to hand out (the first is 1: 0 stands for "none recorded").
pub(crate) const META_NEXT_GENERATION: &str = "next_generation";

/// Dataset states.
pub(crate) const DS_ACTIVE: u64 = 0;
pub(crate) const DS_WRITING: u64 = 1;
pub(crate) const DS_DELETING: u64 = 2;

/// A row of `blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRec {
    pub(crate) seg: u64,
    pub(crate) off: u64,
    pub(crate) len: u64,
    pub(crate) refs: u64,
    pub(crate) standalone: bool,
    pub(crate) expiry: u64,
    /// CRC32C of the bytes, checked on read (none for rows from before checksums).
    pub(crate) checksum: Option<u32>,
}

impl BlockRec {
    pub(crate) fn from_tuple(t: BlockRow) -> BlockRec {
        let flags = t.4;
        BlockRec {
            seg: t.0,
            off: t.1,
            len: t.2,
            refs: t.3,
            standalone: flags & FLAG_STANDALONE != 0,
            expiry: t.5,
            // The shift leaves exactly the 32 checksum bits.
            checksum: (flags & FLAG_CHECKSUM != 0).then_some((flags >> CHECKSUM_SHIFT) as u32),
        }
    }

    /// The block's length as a read of its bytes wants it: [`StoreError::IndexDamaged`] when
    /// it is longer than any block the store keeps ([`crate::MAX_BLOCK_BYTES`]), so a damaged
    /// row never makes a read allocate its length.
    pub(crate) fn read_len(&self) -> Result<usize, StoreError> {
        if self.len > crate::MAX_BLOCK_BYTES {
            return Err(StoreError::IndexDamaged(
                "block length beyond the largest block",
            ));
        }
        usize::try_from(self.len).map_err(|_| StoreError::IndexDamaged("block length"))
    }

    fn to_tuple(self) -> BlockRow {
        let mut flags = u64::from(self.standalone);
        if let Some(c) = self.checksum {
            flags |= FLAG_CHECKSUM | (u64::from(c) << CHECKSUM_SHIFT);
        }
        (self.seg, self.off, self.len, self.refs, flags, self.expiry)
    }
}

/// A row of `datasets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DatasetRec {
    pub(crate) nleaves: u64,
    pub(crate) manifest_refs: u64,
    pub(crate) state: u64,
    pub(crate) session: u64,
}

impl DatasetRec {
    pub(crate) fn from_tuple(t: (u64, u64, u64, u64)) -> DatasetRec {
        DatasetRec {
            nleaves: t.0,
            manifest_refs: t.1,
            state: t.2,
            session: t.3,
        }
    }

    fn to_tuple(self) -> (u64, u64, u64, u64) {
        (self.nleaves, self.manifest_refs, self.state, self.session)
    }
}

/// Where the bytes of a block that may be new are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) seg: u64,
    pub(crate) off: u64,
    pub(crate) len: u64,
    /// CRC32C of the bytes ([`checksum`]).
    pub(crate) checksum: u32,
}

/// The checksum stored with a block and checked when it is read back: CRC32C, which catches what
/// a disk or file system does to data (bit flips, torn or misdirected writes) at a tiny fraction
/// of the cost of SHA-256. The CID hash is checked before a block is stored; see
/// `docs/DESIGN-store.md`, "Verifying reads".
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Quota inputs for one transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    /// The store's quota in bytes.
    pub(crate) max: u64,
    /// Bytes reserved by uploads in progress other than the one writing now.
    pub(crate) reserved: u64,
}

/// All tables of one write transaction plus the counter deltas it accumulates.
pub(crate) struct Tables<'txn> {
    pub(crate) blocks: Table<'txn, &'static [u8], BlockRow>,
    pub(crate) leaves: Table<'txn, LeafKey, LeafRow>,
    pub(crate) trees: Table<'txn, TreeKey, &'static [u8]>,
    pub(crate) proofs: Table<'txn, LeafKey, &'static [u8]>,
    pub(crate) datasets: Table<'txn, &'static [u8], (u64, u64, u64, u64)>,
    pub(crate) manifests: Table<'txn, &'static [u8], &'static [u8]>,
    pub(crate) expiry_idx: Table<'txn, (u64, &'static [u8]), ()>,
    pub(crate) segments: Table<'txn, u64, (u64, u64)>,
    pub(crate) sessions: Table<'txn, u64, (u64, &'static [u8])>,
    pub(crate) deleting: Table<'txn, &'static [u8], ()>,
    pub(crate) generations: Table<'txn, &'static [u8], u64>,
    pub(crate) fetches: Table<'txn, &'static [u8], u64>,
    pub(crate) counts: Table<'txn, LeafKey, ()>,
    pub(crate) meta: Table<'txn, &'static str, u64>,
    used: u64,
    total_blocks: u64,
    seg_delta: HashMap<u64, i128>,
    quota: Quota,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(
        txn: &'txn WriteTransaction,
        quota: Quota,
    ) -> Result<Tables<'txn>, StoreError> {
        let meta = txn.open_table(META)?;
        let used = meta.get(META_USED)?.map_or(0, |v| v.value());
        let total_blocks = meta.get(META_TOTAL_BLOCKS)?.map_or(0, |v| v.value());
        Ok(Tables {
            blocks: txn.open_table(BLOCKS)?,
            leaves: txn.open_table(LEAVES)?,
            trees: txn.open_table(TREES)?,
            proofs: txn.open_table(PROOFS)?,
            datasets: txn.open_table(DATASETS)?,
            manifests: txn.open_table(MANIFESTS)?,
            expiry_idx: txn.open_table(EXPIRY)?,
            segments: txn.open_table(SEGMENTS)?,
            sessions: txn.open_table(SESSIONS)?,
            deleting: txn.open_table(DELETING)?,
            generations: txn.open_table(GENERATIONS)?,
            fetches: txn.open_table(FETCHES)?,
            counts: txn.open_table(COUNTS)?,
            meta,
            used,
            total_blocks,
            seg_delta: HashMap::new(),
            quota,
        })
    }

    /// Bytes used after this transaction's changes so far.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Takes the next id from the shared counter (sessions and segments).
    pub(crate) fn next_id(&mut self) -> Result<u64, StoreError> {
        let id = self.meta.get(META_NEXT_ID)?.map_or(1, |v| v.value());
        self.meta.insert(META_NEXT_ID, id + 1)?;
        Ok(id)
    }

    pub(crate) fn get_block(&self, cid: &[u8]) -> Result<Option<BlockRec>, StoreError> {
        Ok(self
            .blocks
            .get(cid)?
            .map(|v| BlockRec::from_tuple(v.value())))
    }

    fn put_rec(&mut self, cid: &[u8], rec: BlockRec) -> Result<(), StoreError> {
        self.blocks.insert(cid, rec.to_tuple())?;
        Ok(())
    }

    fn set_expiry(&mut self, cid: &[u8], old: u64, new: u64) -> Result<(), StoreError> {
        if old == new {
            return Ok(());
        }
        if old != 0 {
            self.expiry_idx.remove((old, cid))?;
        }
        if new != 0 {
            self.expiry_idx.insert((new, cid), ())?;
        }
        Ok(())
    }

    /// Adds a reference to block `cid`: a dataset reference, or the standalone flag. If the block
    /// is not stored yet it is inserted at `loc` (which must then be given), subject to quota.
    /// Returns whether the block was new. `expiry` (unix seconds, 0 = none) only applies to
    /// standalone references and only ever moves later.
    pub(crate) fn add_ref(
        &mut self,
        cid: &[u8],
        loc: Option<Loc>,
        standalone: bool,
        expiry: u64,
    ) -> Result<bool, StoreError> {
        if let Some(mut rec) = self.get_block(cid)? {
            if standalone {
                // Expiry only moves later; 0 means "never", which is the latest of all.
                let new_exp = if !rec.standalone {
                    expiry
                } else if expiry == 0 || rec.expiry == 0 {
                    0
                } else {
                    expiry.max(rec.expiry)
                };
                self.set_expiry(cid, rec.expiry, new_exp)?;
                rec.expiry = new_exp;
                rec.standalone = true;
            } else {
                rec.refs += 1;
            }
            self.put_rec(cid, rec)?;
            return Ok(false);
        }
        let loc = loc.ok_or(StoreError::IndexDamaged("new block without data"))?;
        let would = self
            .used
            .saturating_add(self.quota.reserved)
            .saturating_add(loc.len);
        if would > self.quota.max {
            return Err(StoreError::QuotaExceeded {
                needed: loc.len,
                used: self.used.saturating_add(self.quota.reserved),
                quota: self.quota.max,
            });
        }
        let expiry = if standalone { expiry } else { 0 };
        let rec = BlockRec {
            seg: loc.seg,
            off: loc.off,
            len: loc.len,
            refs: u64::from(!standalone),
            standalone,
            expiry,
            checksum: Some(loc.checksum),
        };
        self.put_rec(cid, rec)?;
        self.set_expiry(cid, 0, expiry)?;
        self.used += loc.len;
        self.total_blocks += 1;
        *self.seg_delta.entry(loc.seg).or_default() += i128::from(loc.len);
        Ok(true)
    }

    /// Drops a dataset reference (or the standalone flag) of block `cid`, deleting the block when
    /// nothing references it any more. A missing block is not an error.
    pub(crate) fn drop_ref(&mut self, cid: &[u8], standalone: bool) -> Result<(), StoreError> {
        let Some(mut rec) = self.get_block(cid)? else {
            return Ok(());
        };
        if standalone {
            rec.standalone = false;
            self.set_expiry(cid, rec.expiry, 0)?;
            rec.expiry = 0;
        } else {
            rec.refs = rec.refs.saturating_sub(1);
        }
        if rec.refs == 0 && !rec.standalone {
            self.blocks.remove(cid)?;
            self.used = self.used.saturating_sub(rec.len);
            self.total_blocks = self.total_blocks.saturating_sub(1);
            *self.seg_delta.entry(rec.seg).or_default() -= i128::from(rec.len);
        } else {
            self.put_rec(cid, rec)?;
        }
        Ok(())
    }

    pub(crate) fn get_dataset(&self, tree: &[u8]) -> Result<Option<DatasetRec>, StoreError> {
        Ok(self
            .datasets
            .get(tree)?
            .map(|v| DatasetRec::from_tuple(v.value())))
    }

    pub(crate) fn put_dataset(&mut self, tree: &[u8], rec: DatasetRec) -> Result<(), StoreError> {
        self.datasets.insert(tree, rec.to_tuple())?;
        Ok(())
    }

    /// Creates the row of dataset `tree` (which has none), with a new generation.
    pub(crate) fn create_dataset(
        &mut self,
        tree: &[u8],
        rec: DatasetRec,
    ) -> Result<(), StoreError> {
        self.put_dataset(tree, rec)?;
        self.new_generation(tree)
    }

    /// The generation of dataset `tree`: a number from a store-wide counter that the dataset
    /// is given whenever it may have lost a leaf row, so that a caller who saw every leaf of
    /// it in an earlier transaction knows they are all still stored if the generation is the
    /// same now (see [`crate::Store::settle_tree`]). It is new
    ///
    /// * when the dataset's row is created ([`Tables::create_dataset`]): a dataset deleted,
    ///   reclaimed and listed again is a new one, whatever it holds;
    /// * when it is marked for deletion ([`Tables::mark_deleting`]);
    /// * in every transaction that removes leaf rows of it and leaves its row
    ///   ([`Tables::reclaim_tree`]), and its generation goes with its row.
    ///
    /// Those are the only ways a leaf row goes (leaf rows are otherwise only inserted:
    /// `Store::put_leaves`, an upload's finish). Leaf removal happens only to a dataset being
    /// deleted, so the last two rules overlap; each is kept so that neither the state machine
    /// nor the reclaimer alone has to stay as it is for the rule to hold.
    ///
    /// 0 means none is recorded: a dataset whose row was written before generations were
    /// kept (an older index) and has not changed since. Every new generation is at least 1,
    /// so such a dataset deleted and listed again reads as a different one too.
    pub(crate) fn dataset_generation(&self, tree: &[u8]) -> Result<u64, StoreError> {
        Ok(self.generations.get(tree)?.map_or(0, |v| v.value()))
    }

    /// Gives dataset `tree` a new generation ([`Tables::dataset_generation`]).
    fn new_generation(&mut self, tree: &[u8]) -> Result<(), StoreError> {
        let next = self
            .meta
            .get(META_NEXT_GENERATION)?
            .map_or(1, |v| v.value());
        self.meta.insert(META_NEXT_GENERATION, next + 1)?;
        self.generations.insert(tree, next)?;
        Ok(())
    }

    /// Adds a manifest to the listing and a manifest reference to its dataset.
    ///
    /// A manifest's block count is a claim: a manifest can name a real tree with a made-up
    /// size, and the first manifest of a dataset to arrive (from the network, say) may be such
    /// a one. So a dataset's leaf count is known only once its tree is stored, which happens
    /// only when the leaves are known to make that tree with that count (an upload built it,
    /// or [`crate::Store::settle_tree`] rebuilt it from the stored leaves):
    ///
    /// * a dataset whose tree is stored: a manifest with another count than the tree's is
    ///   refused ([`StoreError::ManifestConflict`]);
    /// * a dataset without: the counts claimed are kept in `counts` ([`Tables::claim_count`])
    ///   and the row says the largest, so that `0..nleaves` covers every claim. Settling tries
    ///   them and keeps the one the leaves prove ([`Tables::count_proven`]).
    ///
    /// Before, the first manifest's count stayed: a made-up one made the real dataset's tree
    /// stored under the wrong count (wrong proofs served) or never settle.
    pub(crate) fn add_manifest(
        &mut self,
        manifest_cid: &[u8],
        tree: &[u8],
        nleaves: u64,
    ) -> Result<(), StoreError> {
        if self.manifests.get(manifest_cid)?.is_some() {
            return Ok(());
        }
        self.reclaim_tree_fully(tree)?;
        match self.get_dataset(tree)? {
            Some(mut ds) => {
                if has_tree(&self.trees, tree)? {
                    let proven = check_manifest_count(&self.trees, tree, nleaves, ds.nleaves)?;
                    // A row an older version left with a made-up count beside its tree.
                    if ds.nleaves != proven {
                        self.count_proven(tree, proven)?;
                        ds.nleaves = proven;
                    }
                } else {
                    self.claim_count(tree, &mut ds, nleaves)?;
                }
                self.manifests.insert(manifest_cid, tree)?;
                ds.manifest_refs += 1;
                self.put_dataset(tree, ds)
            }
            None => {
                self.manifests.insert(manifest_cid, tree)?;
                self.create_dataset(
                    tree,
                    DatasetRec {
                        nleaves,
                        manifest_refs: 1,
                        state: DS_ACTIVE,
                        session: 0,
                    },
                )
            }
        }
    }

    /// Notes that a manifest (or an upload) claims `count` leaves for dataset `tree`, whose
    /// tree is not stored and whose row is `ds` (the caller writes it back): when the claims
    /// disagree, each is kept in `counts`, up to [`crate::MAX_COUNT_CLAIMS`]; one more is not
    /// kept but leaves the marker [`COUNT_NOT_KEPT`], so that settling also tries the number
    /// of leaves held. `ds.nleaves` becomes the largest.
    pub(crate) fn claim_count(
        &mut self,
        tree: &[u8],
        ds: &mut DatasetRec,
        count: u64,
    ) -> Result<(), StoreError> {
        let known = self.claimed_counts(tree)?;
        if ds.nleaves == count && known.is_empty() {
            return Ok(());
        }
        let mut kept = known.iter().filter(|&&c| c != COUNT_NOT_KEPT).count();
        for c in [ds.nleaves, count] {
            if known.contains(&c) || c == COUNT_NOT_KEPT {
                continue;
            }
            if kept < crate::MAX_COUNT_CLAIMS {
                if self.counts.insert((tree, c), ())?.is_none() {
                    kept += 1;
                }
            } else {
                self.counts.insert((tree, COUNT_NOT_KEPT), ())?;
            }
        }
        ds.nleaves = ds.nleaves.max(count);
        Ok(())
    }

    /// The leaf counts claimed for dataset `tree` by manifests that disagree
    /// ([`Tables::add_manifest`]); empty when they agree or the dataset is whole.
    pub(crate) fn claimed_counts(&self, tree: &[u8]) -> Result<Vec<u64>, StoreError> {
        claimed_counts(&self.counts, tree)
    }

    /// Forgets the counts claimed for dataset `tree` (its count is known, or it is gone).
    fn drop_claims(&mut self, tree: &[u8]) -> Result<(), StoreError> {
        self.counts
            .retain_in((tree, 0)..=(tree, u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// Dataset `tree` is known to have `nleaves` leaves: its tree, stored with this count, was
    /// built from them. Its row takes the count, and the claims kept while it was not known go.
    pub(crate) fn count_proven(&mut self, tree: &[u8], nleaves: u64) -> Result<(), StoreError> {
        if let Some(mut ds) = self.get_dataset(tree)?
            && ds.nleaves != nleaves
        {
            ds.nleaves = nleaves;
            self.put_dataset(tree, ds)?;
        }
        self.drop_claims(tree)
    }

    /// The dataset (tree CID bytes) manifest `manifest_cid` is listed for, if it is.
    pub(crate) fn manifest_tree(&self, manifest_cid: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .manifests
            .get(manifest_cid)?
            .map(|t| t.value().to_vec()))
    }

    /// Removes a manifest from the listing, drops its block, and marks its dataset for deletion
    /// when no other manifest names it and no upload session holds it
    /// ([`Tables::session_holds`]). Returns whether the manifest was listed.
    pub(crate) fn remove_manifest(&mut self, manifest_cid: &[u8]) -> Result<bool, StoreError> {
        let tree = match self.manifests.remove(manifest_cid)? {
            Some(t) => t.value().to_vec(),
            None => return Ok(false),
        };
        // A deleted dataset is not downloaded again at the next start.
        self.fetches.remove(manifest_cid)?;
        self.drop_ref(manifest_cid, true)?;
        if let Some(mut ds) = self.get_dataset(&tree)? {
            ds.manifest_refs = ds.manifest_refs.saturating_sub(1);
            if ds.manifest_refs == 0 && !self.session_holds(&tree, None)? {
                self.mark_deleting(&tree, ds)?;
            } else {
                self.put_dataset(&tree, ds)?;
            }
        }
        Ok(true)
    }

    /// Whether an upload session other than `except` holds dataset `tree`: it named the tree
    /// (its `sessions` row, written in the first transaction of its finish) and has not ended.
    /// A held dataset is not marked for deletion when no manifest names it any more: the
    /// upload writes its leaves and lists it again, and marking it would let the upload's last
    /// transaction wipe what it wrote (or the reclaimer drop it meanwhile). Its session's end
    /// ([`Tables::end_session`]) decides instead. Scans `sessions`: one row per upload in
    /// progress.
    pub(crate) fn session_holds(
        &self,
        tree: &[u8],
        except: Option<u64>,
    ) -> Result<bool, StoreError> {
        for entry in self.sessions.iter()? {
            let (k, v) = entry?;
            if Some(k.value()) != except && v.value().1 == tree {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends upload session `session`, which did not finish (given up, or interrupted by a
    /// crash): its row goes and its segment is sealed, and the dataset it named
    /// ([`Tables::session_holds`]) is left consistent:
    ///
    /// * no manifest names it: it is marked for deletion, unless another session holds it
    ///   (that session's end decides);
    /// * a manifest names it (a download listed it meanwhile) and it is still being written:
    ///   it turns active as the partial dataset it is. Its tree stays only if every leaf is
    ///   stored (an active dataset with a tree is whole); otherwise the rows that relied on
    ///   the tree must have their proofs in `proofs` first. When they may not (`proofs_kept`
    ///   false), nothing is changed and [`SessionEnd::NeedsProofs`] says so: the caller writes
    ///   them ([`Tables::proofs_from_tree`], in batches) and calls again with `proofs_kept`;
    ///   the session keeps holding the dataset meanwhile, so a crash in between does it again
    ///   at the next open.
    ///
    /// Another session holding the dataset may be given up too, but is not finishing: callers
    /// hold the store's finish lock (or run at open), so no finish relies on the tree meanwhile.
    pub(crate) fn end_session(
        &mut self,
        session: u64,
        proofs_kept: bool,
    ) -> Result<SessionEnd, StoreError> {
        let Some((seg, tree)) = self
            .sessions
            .get(session)?
            .map(|v| (v.value().0, v.value().1.to_vec()))
        else {
            return Ok(SessionEnd::Ended { deleting: None });
        };
        let mut deleting = None;
        if !tree.is_empty()
            && let Some(mut ds) = self.get_dataset(&tree)?
            && ds.state != DS_DELETING
        {
            if ds.manifest_refs == 0 {
                if !self.session_holds(&tree, Some(session))? {
                    self.mark_deleting(&tree, ds)?;
                    deleting = Some(tree);
                }
            } else if ds.state == DS_WRITING {
                if has_tree(&self.trees, &tree)? && !self.has_every_leaf(&tree, ds.nleaves)? {
                    if !proofs_kept {
                        return Ok(SessionEnd::NeedsProofs {
                            tree,
                            nleaves: ds.nleaves,
                        });
                    }
                    remove_tree(&mut self.trees, &tree)?;
                }
                ds.state = DS_ACTIVE;
                ds.session = 0;
                self.put_dataset(&tree, ds)?;
            }
        }
        self.sessions.remove(session)?;
        if self.segments.get(seg)?.is_some() {
            self.seal_segment(seg)?;
        }
        Ok(SessionEnd::Ended { deleting })
    }

    /// Whether every leaf `0..nleaves` of `tree` is stored: one scan of its leaf rows.
    pub(crate) fn has_every_leaf(&self, tree: &[u8], nleaves: u64) -> Result<bool, StoreError> {
        let mut expected = 0u64;
        for entry in self.leaves.range((tree, 0)..(tree, nleaves))? {
            if entry?.0.value().1 != expected {
                return Ok(false);
            }
            expected += 1;
        }
        Ok(expected == nleaves)
    }

    /// Gives the leaf rows `range` of `tree` whose proof comes from the stored tree (no proof
    /// inline, none in `proofs`) their proof in `proofs`, built from that tree, so the tree can
    /// go ([`Tables::end_session`]). Returns how many it wrote; none when the tree is not
    /// stored.
    pub(crate) fn proofs_from_tree(
        &mut self,
        tree: &[u8],
        nleaves: u64,
        range: std::ops::Range<u64>,
    ) -> Result<u64, StoreError> {
        if !has_tree(&self.trees, tree)? {
            return Ok(0);
        }
        let mut bare = Vec::new();
        for entry in self.leaves.range((tree, range.start)..(tree, range.end))? {
            let (k, v) = entry?;
            if v.value().1.is_empty() {
                bare.push(k.value().1);
            }
        }
        let mut source = ProofSource::new(&self.trees, tree, nleaves);
        let mut written = 0;
        for index in bare {
            if self.proofs.get((tree, index))?.is_some() {
                continue;
            }
            let proof = source.proof(index)?.encode();
            self.proofs.insert((tree, index), proof.as_slice())?;
            written += 1;
        }
        Ok(written)
    }

    pub(crate) fn mark_deleting(
        &mut self,
        tree: &[u8],
        mut ds: DatasetRec,
    ) -> Result<(), StoreError> {
        ds.state = DS_DELETING;
        self.put_dataset(tree, ds)?;
        self.deleting.insert(tree, ())?;
        self.new_generation(tree)
    }

    /// Drops up to `budget` leaves of the first dataset being deleted. Returns the number of
    /// leaves dropped and whether more work remains.
    pub(crate) fn reclaim_some(&mut self, budget: usize) -> Result<(usize, bool), StoreError> {
        let tree = match self.deleting.first()? {
            Some((k, _)) => k.value().to_vec(),
            None => return Ok((0, false)),
        };
        let done = self.reclaim_tree(&tree, budget)?;
        let more = self.deleting.first()?.is_some();
        Ok((done, more))
    }

    /// Drops up to `budget` leaves of `tree`; when none are left, removes the dataset.
    fn reclaim_tree(&mut self, tree: &[u8], budget: usize) -> Result<usize, StoreError> {
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        for entry in self
            .leaves
            .range((tree, 0)..=(tree, u64::MAX))?
            .take(budget)
        {
            let (k, v) = entry?;
            batch.push((k.value().1, v.value().0.to_vec()));
        }
        for (index, cid) in &batch {
            self.leaves.remove((tree, *index))?;
            self.drop_ref(cid, false)?;
        }
        if let (Some((first, _)), Some((last, _))) = (batch.first(), batch.last()) {
            // Proofs of downloaded leaves not yet folded into a tree go with their rows.
            self.proofs
                .retain_in((tree, *first)..=(tree, *last), |_, _| false)?;
        }
        if batch.len() < budget {
            // The tree goes with the last leaf row that could name it.
            remove_tree(&mut self.trees, tree)?;
            self.proofs
                .retain_in((tree, 0)..=(tree, u64::MAX), |_, _| false)?;
            self.datasets.remove(tree)?;
            self.deleting.remove(tree)?;
            self.generations.remove(tree)?;
            self.drop_claims(tree)?;
        } else if !batch.is_empty() {
            // The dataset stays, short of some leaves.
            self.new_generation(tree)?;
        }
        Ok(batch.len())
    }

    /// If `tree` is being deleted, drops up to `budget` more of its leaves. Returns whether it
    /// is still being deleted ([`crate::Store::finish_deleting`] calls it in transactions of
    /// their own until it is not).
    pub(crate) fn reclaim_deleting_tree(
        &mut self,
        tree: &[u8],
        budget: usize,
    ) -> Result<bool, StoreError> {
        if self
            .get_dataset(tree)?
            .is_none_or(|d| d.state != DS_DELETING)
        {
            return Ok(false);
        }
        self.reclaim_tree(tree, budget)?;
        Ok(self.deleting.get(tree)?.is_some())
    }

    /// If `tree` is being deleted, finishes that deletion now (a re-upload of the same data),
    /// in this one transaction: the last resort of a put that finds its dataset being deleted.
    /// Puts first finish such a deletion in batches ([`crate::Store::finish_deleting`]), so this
    /// finds little or nothing to do.
    pub(crate) fn reclaim_tree_fully(&mut self, tree: &[u8]) -> Result<(), StoreError> {
        if self
            .get_dataset(tree)?
            .is_some_and(|d| d.state == DS_DELETING)
        {
            while self.deleting.get(tree)?.is_some() {
                self.reclaim_tree(tree, 4096)?;
            }
        }
        Ok(())
    }

    /// Points block `cid` at its copy `to`, if its row still says it is at `from` (segment,
    /// offset): compaction copied it there, and a block deleted or stored anew meanwhile is left
    /// alone (its copy is then dead bytes). Moves the block's bytes from one segment's live count
    /// to the other's. Returns whether the row was moved.
    pub(crate) fn relocate(
        &mut self,
        cid: &[u8],
        from: (u64, u64),
        to: Loc,
    ) -> Result<bool, StoreError> {
        let Some(mut rec) = self.get_block(cid)? else {
            return Ok(false);
        };
        if (rec.seg, rec.off) != from || rec.len != to.len {
            return Ok(false);
        }
        *self.seg_delta.entry(rec.seg).or_default() -= i128::from(rec.len);
        *self.seg_delta.entry(to.seg).or_default() += i128::from(rec.len);
        rec.seg = to.seg;
        rec.off = to.off;
        rec.checksum = Some(to.checksum);
        self.put_rec(cid, rec)?;
        Ok(true)
    }

    /// Seals segment `id`, or removes it from the index if it holds no live bytes. Returns
    /// whether it was removed (its file can then be deleted once the transaction commits).
    pub(crate) fn seal_or_drop_segment(&mut self, id: u64) -> Result<bool, StoreError> {
        if self.remove_segment_if_empty(id)? {
            return Ok(true);
        }
        self.seal_segment(id)?;
        Ok(false)
    }

    /// Removes segment `id` from the index if its row says it holds no live bytes. Returns
    /// whether it did; its file can then be deleted once the transaction commits.
    pub(crate) fn remove_segment_if_empty(&mut self, id: u64) -> Result<bool, StoreError> {
        if self.segments.get(id)?.map(|v| v.value().0) != Some(0) {
            return Ok(false);
        }
        self.segments.remove(id)?;
        Ok(true)
    }

    /// Registers a new segment (live 0, not sealed).
    pub(crate) fn add_segment(&mut self, id: u64) -> Result<(), StoreError> {
        self.segments.insert(id, (0, 0))?;
        Ok(())
    }

    /// The live bytes the index counts in segment `id` (0 for a segment it does not know).
    pub(crate) fn segment_live(&self, id: u64) -> Result<u64, StoreError> {
        Ok(self.segments.get(id)?.map_or(0, |v| v.value().0))
    }

    /// Marks a segment sealed (no more appends).
    pub(crate) fn seal_segment(&mut self, id: u64) -> Result<(), StoreError> {
        let live = self.segment_live(id)?;
        self.segments.insert(id, (live, 1))?;
        Ok(())
    }

    /// Writes the counters and segment liveness; returns sealed segments that became empty (their
    /// files can be deleted once the transaction has committed). A `pinned` segment (rows of
    /// appended bytes still to be committed) stays, sealed and empty, for compaction to delete.
    pub(crate) fn finish(mut self, pinned: &HashSet<u64>) -> Result<Vec<u64>, StoreError> {
        self.meta.insert(META_USED, self.used)?;
        self.meta.insert(META_TOTAL_BLOCKS, self.total_blocks)?;
        let mut dead = Vec::new();
        let touched: HashSet<u64> = self.seg_delta.keys().copied().collect();
        for seg in touched {
            let delta = self.seg_delta.get(&seg).copied().unwrap_or(0);
            let (live, sealed) = self.segments.get(seg)?.map_or((0, 1), |v| v.value());
            let live = u64::try_from((i128::from(live) + delta).max(0)).unwrap_or(0);
            if live == 0 && sealed == 1 && !pinned.contains(&seg) {
                self.segments.remove(seg)?;
                dead.push(seg);
            } else {
                self.segments.insert(seg, (live, sealed))?;
            }
        }
        Ok(dead)
    }
}

/// The rows of `counts` for dataset `tree` ([`Tables::add_manifest`]), in order.
pub(crate) fn claimed_counts(
    counts: &impl ReadableTable<LeafKey, ()>,
    tree: &[u8],
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in counts.range((tree, 0)..=(tree, u64::MAX))? {
        out.push(entry?.0.value().1);
    }
    Ok(out)
}

/// The leaf count of dataset `tree`, whose tree is stored, when a manifest claims `claimed`
/// ([`Tables::add_manifest`]): the count of the stored tree (or the row's, `row`, for a tree
/// stored without its leaf layer), or [`StoreError::ManifestConflict`] when the claim is
/// another.
pub(crate) fn check_manifest_count(
    trees: &impl ReadableTable<TreeKey, &'static [u8]>,
    tree: &[u8],
    claimed: u64,
    row: u64,
) -> Result<u64, StoreError> {
    let proven = tree_leaf_count(trees, tree)?.unwrap_or(row);
    if proven == claimed {
        return Ok(proven);
    }
    Err(StoreError::ManifestConflict {
        tree: Box::new(
            cairn_core::cid::cid_from_bytes(tree)
                .map_err(|_| StoreError::IndexDamaged("dataset tree CID"))?,
        ),
        manifest_blocks: claimed,
        dataset_blocks: proven,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(standalone: bool, checksum: Option<u32>) -> BlockRec {
        BlockRec {
            seg: 7,
            off: 65_536,
            len: 65_536,
            refs: 3,
            standalone,
            expiry: 1_700_000_000,
            checksum,
        }
    }

    #[test]
    fn block_rows_round_trip_with_and_without_checksum() {
        for standalone in [false, true] {
            for sum in [None, Some(0), Some(1), Some(u32::MAX), Some(0xdead_beef)] {
                let r = rec(standalone, sum);
                assert_eq!(BlockRec::from_tuple(r.to_tuple()), r);
            }
        }
    }

    #[test]
    fn rows_written_before_checksums_read_as_unchecked() {
        // The row layout before checksums: the flags column was 0 or 1 (standalone).
        let legacy = BlockRec::from_tuple((1, 2, 3, 4, 1, 5));
        assert!(legacy.standalone);
        assert_eq!(legacy.checksum, None);
        let legacy = BlockRec::from_tuple((1, 2, 3, 4, 0, 5));
        assert!(!legacy.standalone);
        assert_eq!(legacy.checksum, None);
    }

    /// The rules of [`Tables::dataset_generation`]: a dataset gets a new generation when its
    /// row is created, when it is marked deleting and in every transaction that drops some of
    /// its leaves and keeps its row; its generation goes with its row; storing leaves or naming
    /// it by another manifest does not change it.
    #[test]
    fn a_dataset_gets_a_new_generation_whenever_it_may_lose_a_leaf() {
        let store = crate::Store::in_memory(crate::StoreConfig {
            background_reclaim: false,
            ..crate::StoreConfig::default()
        })
        .unwrap();
        let tree: &[u8] = b"a tree";
        store
            .write(0, |t| {
                let mut seen = vec![t.dataset_generation(tree)?];
                assert_eq!(seen[0], 0, "none before the dataset exists");
                t.add_manifest(b"first", tree, 10)?;
                let created = t.dataset_generation(tree)?;
                assert!(created > 0);
                seen.push(created);
                // Named by a second manifest, given leaves: the same dataset, nothing lost.
                t.add_manifest(b"second", tree, 10)?;
                for i in 0..10u8 {
                    t.leaves.insert((tree, u64::from(i)), (&[i][..], &[][..]))?;
                }
                assert_eq!(t.dataset_generation(tree)?, created);
                // One manifest goes, the other names it still.
                t.remove_manifest(b"first")?;
                assert_eq!(t.dataset_generation(tree)?, created);
                t.remove_manifest(b"second")?;
                let deleting = t.dataset_generation(tree)?;
                assert!(!seen.contains(&deleting), "marked deleting: {seen:?}");
                seen.push(deleting);
                assert_eq!(t.reclaim_some(4)?, (4, true));
                let fewer = t.dataset_generation(tree)?;
                assert!(!seen.contains(&fewer), "leaves dropped: {seen:?}");
                seen.push(fewer);
                while t.reclaim_some(4)?.1 {}
                assert!(t.get_dataset(tree)?.is_none());
                assert!(t.generations.get(tree)?.is_none(), "gone with its row");
                t.add_manifest(b"first", tree, 10)?;
                let again = t.dataset_generation(tree)?;
                assert!(!seen.contains(&again), "listed again: {seen:?}");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn checksum_is_crc32c() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_ne!(checksum(b"block"), checksum(b"blocl"));
    }
}
