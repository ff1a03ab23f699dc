//! Upload sessions: writing a whole dataset so that it appears atomically or not at all.
//!
//! [`Store::begin_dataset`] records a *session* (and its own segment) in the index, then
//! [`DatasetWriter::write`] appends each block's bytes to that segment, reserving quota as it
//! goes; no index entry is written per block. [`DatasetWriter::finish`] syncs the segment once,
//! builds the Merkle tree and stores it once (the `trees` module: leaf rows carry no proof of
//! their own), writes the leaf index in bounded batches (the dataset is marked *writing* and is
//! invisible meanwhile), and in a final transaction stores the manifest, lists the dataset and
//! closes the session.
//!
//! An upload of a dataset a download has stored in part (listed, no tree yet) cannot store the
//! tree first: for an active dataset a stored tree means every leaf is stored, and the upload
//! may stop between two leaf batches. The rows it adds then carry their proofs (in `proofs`,
//! as a download's do), and the tree goes in with the last transaction; the proofs go when the
//! dataset is settled ([`Store::settle_tree`]).
//!
//! If the writer is dropped unfinished (client gone, quota, error) the session is rolled back at
//! once (if that fails, as on a full disk, the store remembers the session and ends it at the
//! next maintenance pass or reclaimer round that can write the index); if the process dies
//! instead, [`Store::open`] rolls it back at the next start. Either way
//! nothing partial is listed by the upload and the space accounting comes back exact; a dataset
//! a download listed meanwhile stays, as the consistent partial dataset it is.
//!
//! Memory: the writer keeps 32 bytes of digest per block (~0.05 % of the data; block locations
//! are kept as runs, see [`Extents`]), plus the tree's upper layers (another 32 bytes per block)
//! while finishing.

use cairn_core::{Block, Cid, CodexTree, Manifest, cid::cid_digest, merkle::Digest};
use std::sync::atomic::Ordering;

use tracing::warn;

use crate::{
    Store, StoreError,
    index::{DS_ACTIVE, DS_WRITING, DatasetRec, Loc, checksum},
    segments::{SegmentWriter, WriteMode},
    store::Consume,
    trees::{has_tree, put_tree},
};

/// How long an upload that does not fit waits for younger uploads to give their room back
/// ([`DatasetWriter::reserve_more`]). A younger upload that is writing gives way at its next
/// block, within milliseconds; one whose client has stalled, or one that reserved its whole
/// known size up front, does not, and the older upload is refused after this.
pub const UPLOAD_ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a waiting upload looks at the room again, besides being woken when an upload
/// gives its room back: room also comes back from deletes and downloads, which do not wake it.
pub const UPLOAD_ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What the uploader says about a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetMeta {
    /// Real (unpadded) size in bytes.
    pub dataset_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// File name, if given.
    pub filename: Option<String>,
    /// MIME type, if given.
    pub mimetype: Option<String>,
}

/// A dataset that was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    /// The manifest CID: "the CID" of the upload.
    pub manifest_cid: Cid,
    /// The manifest.
    pub manifest: Manifest,
}

/// Writes one dataset; see the module docs.
#[derive(Debug)]
pub struct DatasetWriter {
    store: Store,
    session: u64,
    seg: SegmentWriter,
    locs: Extents,
    /// CRC32C of every block written, in order (4 bytes per block).
    checksums: Vec<u32>,
    digests: Vec<Digest>,
    reserved: u64,
    /// Bytes appended to the segment whose reservation this writer still holds.
    appended: u64,
    /// The part of `appended` known to be in the file (not in a staging buffer): this writer's
    /// part of the store's `upload_appended`.
    settled: u64,
    /// Bytes of blocks written so far (the reservation covers at least these).
    written: u64,
    /// Whether finish's first transaction ran: the session may name its dataset (and hold it).
    named: bool,
    done: bool,
}

/// Where an upload's blocks are in its segment, as runs of equal-sized blocks appended back to
/// back: an upload of same-sized blocks is one run, so this costs nothing per block (the flat list
/// it replaces held 16 bytes per block until finish).
#[derive(Debug, Default)]
struct Extents {
    runs: Vec<Run>,
}

/// `count` blocks of `len` bytes each, the first at offset `off`, each following the previous.
#[derive(Debug, Clone, Copy)]
struct Run {
    off: u64,
    len: u32,
    count: u64,
}

impl Extents {
    fn push(&mut self, off: u64, len: u32) {
        if let Some(last) = self.runs.last_mut()
            && last.len == len
            && last.off + last.count * u64::from(len) == off
        {
            last.count += 1;
            return;
        }
        self.runs.push(Run { off, len, count: 1 });
    }

    /// Bytes of the blocks `start..end` (in push order).
    fn bytes_of(&self, start: u64, end: u64) -> u64 {
        let mut first = 0u64;
        let mut total = 0u64;
        for r in &self.runs {
            let (lo, hi) = (start.max(first), end.min(first + r.count));
            if lo < hi {
                total += (hi - lo) * u64::from(r.len);
            }
            first += r.count;
        }
        total
    }

    /// Every block's `(offset, length)`, in the order they were pushed.
    fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (0..r.count).map(move |k| (r.off + k * u64::from(r.len), r.len)))
    }
}

impl Store {
    /// Starts writing a dataset.
    pub fn begin_dataset(&self) -> Result<DatasetWriter, StoreError> {
        let session = self.write(0, |t| {
            let id = t.next_id()?;
            t.add_segment(id)?;
            t.sessions.insert(id, (id, &[][..]))?;
            Ok(id)
        })?;
        let seg = match self.inner.segs.create(session, WriteMode::Bulk) {
            Ok(seg) => seg,
            Err(e) => {
                // No writer will end this session: end it here, or its row and its segment's
                // stayed until the next start, one more for each failure (no descriptor free,
                // a full disk; review).
                let ended = self
                    .end_session(session)
                    .and_then(|_| self.drop_upload_segment_if_empty(session));
                if let Err(end) = ended
                    && !self.note_failed_rollback(session)
                {
                    warn!(session, error = %end, "an upload that could not start left its session; the next start ends it");
                }
                return Err(e.into());
            }
        };
        Ok(DatasetWriter {
            store: self.clone(),
            session,
            seg,
            locs: Extents::default(),
            checksums: Vec::new(),
            digests: Vec::new(),
            reserved: 0,
            appended: 0,
            settled: 0,
            written: 0,
            named: false,
            done: false,
        })
    }

    /// Whether `bytes` more fit in the quota now (used bytes and every reservation count), as
    /// an upload of known size checks before it reads its body.
    pub fn has_room(&self, bytes: u64) -> Result<(), StoreError> {
        let uploads = self.inner.reserved.lock();
        self.inner.fits(*uploads, bytes)
    }
}

impl DatasetWriter {
    /// Blocks written so far.
    pub fn blocks_written(&self) -> u64 {
        self.digests.len() as u64
    }

    /// Reserves room for `bytes` of blocks in one go, when the upload's size is known: two
    /// uploads that do not both fit then do not each take part of the room and both fail; the
    /// one that reserves first goes on. Blocks written later use this room before reserving
    /// more; what is left over is given back when the writer finishes or is dropped.
    pub fn reserve(&mut self, bytes: u64) -> Result<(), StoreError> {
        let more = bytes.saturating_sub(self.reserved);
        self.reserve_more(more)
    }

    /// Reserves `len` more bytes. When they do not fit, the oldest upload goes on and younger
    /// ones give way: without that, uploads that grow block by block (their size unknown) and
    /// together outgrow the quota all fail, each refused while the others' room is still held.
    /// So an upload that does not fit while younger uploads hold room waits for them, up to
    /// [`UPLOAD_ROOM_WAIT`] (`StoreConfig::upload_room_wait`); a younger upload that needs more while an older one waits is
    /// refused at once, and gives its room back as it is dropped.
    fn reserve_more(&mut self, len: u64) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        let inner = &self.store.inner;
        let deadline = std::time::Instant::now() + inner.cfg.upload_room_wait;
        let mut reserved = inner.reserved.lock();
        let result = loop {
            let waiter = inner.room_waiter.load(Ordering::Relaxed);
            let older_waits = waiter != 0 && waiter < self.session;
            // Room held by downloads counts as used here too (`Store::reserve_room`).
            let refused = match inner.fits(*reserved, len) {
                Ok(()) if !older_waits => break Ok(()),
                Ok(()) => inner.quota_refusal(*reserved, len),
                Err(e) => e,
            };
            let room = matches!(
                refused,
                StoreError::QuotaExceeded { .. } | StoreError::DiskFull { .. }
            );
            // Other uploads hold room they may give back: `reserved` is every upload's.
            let others_hold = *reserved > self.reserved;
            let now = std::time::Instant::now();
            if older_waits || !room || !others_hold || now >= deadline {
                break Err(refused);
            }
            if waiter == 0 || waiter > self.session {
                inner.room_waiter.store(self.session, Ordering::Relaxed);
            }
            // Room also comes back without a signal (a delete, a download's reservation), so
            // the wait is cut into polls.
            let _ = inner
                .room_freed
                .wait_for(&mut reserved, (deadline - now).min(UPLOAD_ROOM_POLL));
        };
        if inner.room_waiter.load(Ordering::Relaxed) == self.session {
            inner.room_waiter.store(0, Ordering::Relaxed);
        }
        result?;
        *reserved += len;
        self.reserved += len;
        Ok(())
    }

    /// Appends the next block of the dataset (in order). Fails with
    /// [`StoreError::QuotaExceeded`] when it would not fit; the caller then drops the writer.
    pub fn write(&mut self, block: &Block) -> Result<(), StoreError> {
        let len = block.data().len() as u64;
        crate::store::check_block_len(block.data().len())?;
        // `MAX_BLOCK_BYTES` fits in 32 bits.
        let len32 = u32::try_from(len).map_err(|_| StoreError::BlockTooLarge {
            len,
            max: crate::MAX_BLOCK_BYTES,
        })?;
        let digest = cid_digest(block.cid()).map_err(|_| StoreError::IndexDamaged("block hash"))?;
        // Room reserved up front covers the block; else reserve it now.
        self.reserve_more((self.written + len).saturating_sub(self.reserved))?;
        self.written += len;
        let off = self.seg.append(block.data())?;
        self.appended += len;
        self.settle()?;
        self.locs.push(off, len32);
        self.checksums.push(checksum(block.data()));
        self.digests.push(digest);
        Ok(())
    }

    /// Bytes appended that may still be in the segment's staging buffers (tests).
    #[cfg(test)]
    pub(crate) fn staged(&self) -> u64 {
        self.seg.staged()
    }

    /// Counts what reached the file since the last write (tests).
    #[cfg(test)]
    pub(crate) fn settle_now(&mut self) -> Result<(), StoreError> {
        self.settle()
    }

    /// Completes the dataset: stores the leaf index and the manifest, and lists it.
    pub fn finish(mut self, meta: DatasetMeta) -> Result<StoredDataset, StoreError> {
        if self.digests.is_empty() {
            return Err(StoreError::EmptyDataset);
        }
        let store = self.store.clone();
        let cfg = store.inner.cfg.clone();
        let hook = |point| {
            if let Some(h) = cfg.crash_hook {
                h(point);
            }
        };
        let tree = CodexTree::new(std::mem::take(&mut self.digests))?;
        let tree_cid = tree.cid();
        let tree_key = tree_cid.to_bytes();
        let nleaves = tree.leaves_count();
        let manifest = Manifest::new(tree_cid, meta.dataset_size, meta.block_size)
            .with_filename(meta.filename)
            .with_mimetype(meta.mimetype);
        let mblock = manifest.to_block();
        let mcid = *mblock.cid();
        let mkey = mcid.to_bytes();
        let moff = self.seg.append(mblock.data())?;
        let mloc = Loc {
            seg: self.session,
            off: moff,
            len: mblock.data().len() as u64,
            checksum: checksum(mblock.data()),
        };
        self.seg.sync()?;
        store.inner.segs.sync_dir()?;
        self.settle()?;
        hook("finish:synced");

        // A deletion of the same data still going on is finished first, in batches.
        store.finish_deleting(&tree_key)?;
        let _serial = store.inner.finish_lock.lock();
        let session = self.session;
        // From here a rollback serialises with finishes (see `rollback`), whether the first
        // transaction commits or not.
        self.named = true;
        // Whether the leaf rows this upload adds keep their proofs in `proofs` (and the tree
        // waits for the last transaction): see below.
        let keep_proofs = store.write(self.reserved, |t| {
            t.sessions.insert(session, (session, tree_key.as_slice()))?;
            t.reclaim_tree_fully(&tree_key)?;
            // From here the session holds the dataset: it is not deleted while the upload
            // writes, whatever happens to the manifests naming it (`Tables::session_holds`).
            if let Some(mut ds) = t.get_dataset(&tree_key)? {
                // Stored already. With its tree it is whole (or being written by an upload
                // given up, whose rows rely on that tree); without, it is a partial download,
                // and a stored tree would say it is whole before this upload has written every
                // leaf (a crash or an error between leaf batches would leave it so): the rows
                // added carry their proofs, and the tree goes in with the last leaf.
                let whole = has_tree(&t.trees, &tree_key)?;
                if !whole {
                    // The manifests that listed it may have made up its count; until the last
                    // transaction proves this one, it is a claim like theirs, so that settling
                    // meanwhile (or after this upload is given up) can find it.
                    t.claim_count(&tree_key, &mut ds, nleaves)?;
                    t.put_dataset(&tree_key, ds)?;
                }
                return Ok(!whole);
            }
            // The tree goes in before any leaf row that relies on it (their proofs are empty).
            put_tree(&mut t.trees, &tree_key, &tree)?;
            t.create_dataset(
                &tree_key,
                DatasetRec {
                    nleaves,
                    manifest_refs: 0,
                    state: DS_WRITING,
                    session,
                },
            )?;
            Ok(false)
        })?;
        let batch = cfg.leaf_batch.max(1);
        let mut start = 0u64;
        let extents = std::mem::take(&mut self.locs);
        let mut locs = extents.iter();
        while start < nleaves {
            let end = (start + batch as u64).min(nleaves);
            // The batch's blocks were reserved for: that part of the reservation becomes used
            // with the commit (not counted twice meanwhile by other uploads and downloads).
            let consumed = extents.bytes_of(start, end).min(self.reserved);
            let own = self.reserved;
            let taken = std::cell::Cell::new(false);
            let consume = Consume::Upload {
                bytes: consumed,
                taken: &taken,
            };
            let committed = store.write_consuming(own, consume, |t| {
                // New blocks of the batch, referenced in CID order once the leaves are in: the
                // `blocks` table is keyed by CID (random), and sorted inserts walk its pages in
                // order instead of jumping around a table larger than the page cache.
                let mut new_refs: Vec<(Vec<u8>, Loc)> = Vec::with_capacity(batch);
                let mut proof = Vec::new();
                for index in start..end {
                    let i =
                        usize::try_from(index).map_err(|_| StoreError::IndexDamaged("index"))?;
                    let (off, len) = locs
                        .next()
                        .ok_or(StoreError::IndexDamaged("block locations"))?;
                    let cid = cairn_core::cid::cid_from_digest(
                        cairn_core::Codec::Block,
                        &tree.leaves()[i],
                    )
                    .to_bytes();
                    let key = (tree_key.as_slice(), index);
                    // Insert first and look at what was there: one B-tree walk instead of a
                    // lookup plus an insert for the (usual) new leaf. No proof in the row: it
                    // comes from the tree stored above, or from `proofs`.
                    let old = t
                        .leaves
                        .insert(key, (cid.as_slice(), &[][..]))?
                        .map(|v| (v.value().0.to_vec(), v.value().1.to_vec()));
                    if let Some((old_cid, old_proof)) = old {
                        // Already stored (e.g. by a network download of the same dataset): keep
                        // that entry and its block reference as they were.
                        t.leaves
                            .insert(key, (old_cid.as_slice(), old_proof.as_slice()))?;
                        continue;
                    }
                    if keep_proofs {
                        proof.clear();
                        tree.encode_proof_into(index, &mut proof)?;
                        t.proofs.insert(key, proof.as_slice())?;
                    }
                    let loc = Loc {
                        seg: session,
                        off,
                        len: u64::from(len),
                        checksum: self
                            .checksums
                            .get(i)
                            .copied()
                            .ok_or(StoreError::IndexDamaged("block checksums"))?,
                    };
                    new_refs.push((cid, loc));
                }
                new_refs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (cid, loc) in new_refs {
                    t.add_ref(&cid, Some(loc), false, 0)?;
                }
                Ok(())
            });
            if taken.get() {
                // Drawn down from the store's counts with the commit: ours follow.
                self.reserved -= consumed;
                self.appended = self.appended.saturating_sub(consumed);
                self.settled = self.settled.saturating_sub(consumed);
            }
            committed?;
            hook("finish:leaf-batch");
            start = end;
        }
        let expiry = store.expiry_from_now();
        store.write(self.reserved, |t| {
            t.add_ref(&mkey, Some(mloc), true, expiry)?;
            // Every leaf is stored now (the dataset was held: none went), so the tree may say
            // so. The proofs kept meanwhile go when the dataset is settled
            // (`Store::settle_tree`, the maintenance pass).
            if keep_proofs && !has_tree(&t.trees, &tree_key)? {
                put_tree(&mut t.trees, &tree_key, &tree)?;
            }
            // The count of a dataset that manifests from the network listed first is only
            // what they claimed (`Tables::add_manifest`); this upload built the tree. Before
            // the manifest goes in, so that claims made up by others cannot refuse it.
            t.count_proven(&tree_key, nleaves)?;
            t.add_manifest(&mkey, &tree_key, nleaves)?;
            // Every leaf is stored now. Being written (by this upload, or by one given up
            // that this one took over: finishes are serialised), the dataset turns active.
            if let Some(mut ds) = t.get_dataset(&tree_key)?
                && ds.state == DS_WRITING
            {
                ds.state = DS_ACTIVE;
                ds.session = 0;
                t.put_dataset(&tree_key, ds)?;
            }
            t.sessions.remove(session)?;
            t.seal_segment(session)?;
            Ok(())
        })?;
        self.done = true;
        self.release_reservation();
        // A re-upload of stored data leaves its segment with no live bytes: drop it now.
        if let Err(e) = self.drop_segment_if_empty() {
            warn!(error = %e, "could not remove an empty upload segment");
        }
        // An upload that completed a partial download kept the proofs of the rows it added
        // (see above); the dataset is whole now, so they go at once rather than at a later
        // maintenance pass.
        if keep_proofs && let Err(e) = store.settle_tree(&tree_cid) {
            warn!(error = %e, "could not drop the proofs of a completed dataset");
        }
        Ok(StoredDataset {
            manifest_cid: mcid,
            manifest,
        })
    }

    fn release_reservation(&mut self) {
        let mut r = self.store.inner.reserved.lock();
        *r = r.saturating_sub(self.reserved);
        if self.reserved > 0 {
            self.store.inner.room_freed.notify_all();
        }
        self.reserved = 0;
        self.appended = 0;
        let settled = std::mem::take(&mut self.settled);
        let a = &self.store.inner.upload_appended;
        a.store(
            a.load(Ordering::Relaxed).saturating_sub(settled),
            Ordering::Relaxed,
        );
    }

    /// Counts in the store's `upload_appended` what reached the file since the last call: free
    /// space checks then stop counting it as still to come. Bytes in a staging buffer are not
    /// on the disk yet and stay counted as to come.
    fn settle(&mut self) -> Result<(), StoreError> {
        self.seg.reap()?;
        let on_disk = self.appended.saturating_sub(self.seg.staged());
        if on_disk > self.settled {
            let _uploads = self.store.inner.reserved.lock();
            self.store
                .inner
                .upload_appended
                .fetch_add(on_disk - self.settled, Ordering::Relaxed);
            self.settled = on_disk;
        }
        Ok(())
    }

    fn drop_segment_if_empty(&self) -> Result<(), StoreError> {
        self.store.drop_upload_segment_if_empty(self.session)
    }

    /// Abandons the upload: nothing of it stays listed or counted.
    pub fn abort(mut self) {
        self.rollback();
    }

    fn rollback(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.release_reservation();
        let session = self.session;
        // A session that named its dataset may turn it into a partial dataset (and drop its
        // tree): no finish may rely on that tree meanwhile.
        let serial = self.named.then(|| self.store.inner.finish_lock.lock());
        let res = self.store.end_session(session);
        drop(serial);
        let left = match res.and_then(|left| self.drop_segment_if_empty().map(|()| left)) {
            Ok(left) => left,
            Err(e) => {
                // Typically the index cannot be written (a full disk). Left so, the session would
                // keep its segment, the leaves it committed and its dataset until the next start.
                if self.store.note_failed_rollback(session) {
                    warn!(session, error = %e, "rolling back an unfinished upload failed; tried again once the index can be written");
                } else {
                    warn!(session, error = %e, "rolling back an unfinished upload failed; the next start will");
                }
                None
            }
        };
        // Only the dataset this upload leaves to nothing is reclaimed here (its own leaves);
        // other deletions going on are the reclaimer's. Reclaiming every one of them here made
        // a failed upload's answer wait for, say, the deletion of an unrelated 64 GiB dataset.
        if let Some(tree) = left
            && let Err(e) = self.store.finish_deleting(&tree)
        {
            warn!(session, error = %e, "reclaiming an unfinished upload's blocks failed; the reclaimer or the next maintenance pass will");
        }
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        self.rollback();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    /// An upload whose segment file cannot be created fails and leaves nothing behind: no
    /// open session, no segment row.
    #[test]
    fn an_upload_that_cannot_create_its_segment_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let before = store.audit().unwrap();
        crate::segments::FAIL_CREATE.with(|f| f.set(true));
        assert!(store.begin_dataset().is_err());
        let after = store.audit().unwrap();
        assert_eq!(after.open_sessions, 0, "{after:?}");
        assert_eq!(after, before, "the failed start left rows behind");
        assert!(after.segments_consistent, "{after:?}");
        // And the next upload works.
        assert!(store.begin_dataset().is_ok());
    }

    const BS: usize = 64 * 1024;

    fn block(seed: u8, i: u8) -> Block {
        let mut data = vec![seed; BS];
        data[0] = i;
        Block::data_block(Bytes::from(data))
    }

    /// Two uploads of unknown size that grow block by block and together outgrow the quota:
    /// the older one goes on (it waits while the younger holds room), the younger is refused
    /// and gives its room back, and the older one completes. Before, whichever asked next was
    /// refused, and the other was too while the first one's room was still held: both failed.
    #[test]
    fn growing_uploads_that_outgrow_the_quota_leave_the_oldest_going() {
        let store = Store::in_memory(StoreConfig {
            quota_bytes: 10 * BS as u64 + 4096,
            background_reclaim: false,
            // Longer than any stall of this test's threads; the waiter is woken long before.
            upload_room_wait: Duration::from_secs(60),
            ..StoreConfig::default()
        })
        .unwrap();
        let mut older = store.begin_dataset().unwrap();
        let mut younger = store.begin_dataset().unwrap();
        let older_session = older.session;
        for i in 0..5 {
            older.write(&block(1, i)).unwrap();
            younger.write(&block(2, i)).unwrap();
        }
        let meta = DatasetMeta {
            dataset_size: 7 * BS as u64,
            block_size: BS as u64,
            filename: None,
            mimetype: None,
        };
        std::thread::scope(|s| {
            let grows = s.spawn(move || {
                older.write(&block(1, 5))?;
                older.write(&block(1, 6))?;
                older.finish(meta)
            });
            // The older upload finds no room and waits for it (on the store's own state,
            // bounded).
            let until = Instant::now() + Duration::from_secs(30);
            while store.inner.room_waiter.load(Ordering::Relaxed) != older_session {
                assert!(
                    !grows.is_finished() && Instant::now() < until,
                    "the older upload did not wait for room"
                );
                std::thread::yield_now();
            }
            // The younger one, asking for more meanwhile, is refused; dropped, it gives its
            // room back, and the older one goes on.
            assert!(matches!(
                younger.write(&block(2, 5)),
                Err(StoreError::QuotaExceeded { .. })
            ));
            drop(younger);
            let stored = grows.join().unwrap().expect("the older upload completes");
            let got = store.get_block(&stored.manifest_cid).unwrap();
            assert!(got.is_some(), "its manifest is stored");
        });
        assert_eq!(store.inner.room_waiter.load(Ordering::Relaxed), 0);
        let space = store.space().unwrap();
        assert_eq!(space.quota_reserved_bytes, 0, "{space:?}");
        assert!(space.quota_used_bytes >= 7 * BS as u64, "{space:?}");
        // Nobody else holds room: an upload that does not fit is refused at once, not after
        // the wait (it would block this test for a minute).
        let mut alone = store.begin_dataset().unwrap();
        let refused = (0..4).try_for_each(|i| alone.write(&block(3, i)));
        assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })));
    }

    #[test]
    fn extents_merge_runs_and_replay_in_order() {
        let mut e = Extents::default();
        let pushed = [
            (0, 10),
            (10, 10),
            (20, 10),
            (30, 4),
            (34, 4),
            (40, 4),
            (44, 10),
        ];
        for (off, len) in pushed {
            e.push(off, len);
        }
        // A gap (38..40) or a change of length starts a new run.
        assert_eq!(e.runs.len(), 4);
        assert_eq!(e.iter().collect::<Vec<_>>(), pushed);
        // Bytes of any span of blocks, across runs, as the sum over the replayed blocks.
        for start in 0..=pushed.len() as u64 {
            for end in start..=pushed.len() as u64 + 1 {
                let want: u64 = e
                    .iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .map(|(_, len)| u64::from(len))
                    .sum();
                assert_eq!(e.bytes_of(start, end), want, "{start}..{end}");
            }
        }
    }
}
