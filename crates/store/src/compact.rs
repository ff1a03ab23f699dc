//! Compaction: rewriting sealed segments that are mostly dead bytes, and merging small ones.
//!
//! Segments are append-only and a segment file is deleted only when no live block points into
//! it. An upload has a segment of its own, so deleting its dataset frees the whole file. The
//! shared segments do not: single puts (manifests, blocks put by CID) and every network download
//! append to one shared segment at a time, so the leaves of several datasets downloaded at once
//! interleave in it. When one of those datasets is deleted or expires, its bytes become dead
//! while the others keep the file alive. The quota counts live bytes only, so this costs disk,
//! not quota; but a node that keeps caching downloads for a TTL would hold ever more dead bytes.
//!
//! Small segments are the other waste. Each upload writes a segment of its own, so a node that
//! stores 100,000 small files has 100,000 segment files: a directory entry, an index row and an
//! open file per read of each (the reader cache holds 64), and dead bytes that the rule for
//! mostly-dead segments never frees, since a segment under [`COMPACT_MIN_DEAD_BYTES`] cannot
//! hold that much dead. So sealed segments under [`MERGE_SMALL_BYTES`] are merged, several into
//! one, with the same machinery.
//!
//! A compaction pass ([`Store::compact`], run by every maintenance pass) does both:
//!
//! 0. **Seal.** Segments no one writes that were left unsealed (a seal that failed) are
//!    sealed. The open shared segments are sealed first if they meet the rule below (and no
//!    put's rows are on their way into them), so deleted downloads that shared the open segment
//!    with kept ones are freed too, not when it fills up; the next put opens a new segment.
//! 1. **Pick.** Sealed segments (no writer will append again) whose live bytes are at most
//!    [`COMPACT_MAX_LIVE_PERCENT`] of the file and whose dead bytes are at least
//!    [`COMPACT_MIN_DEAD_BYTES`], most dead bytes first, as many as fit in
//!    [`COMPACT_PASS_BYTES`] of live bytes (always at least one). The pure rule is [`pick`].
//!    Then, in what is left of that budget, **small** sealed segments to merge: files under
//!    [`MERGE_SMALL_BYTES`] with live bytes, whatever their share of dead ones (a small
//!    segment cannot meet the rule above, and merging it frees its dead bytes too), none with
//!    rows on their way into it (a pin), least live bytes first (most files merged per byte
//!    copied), at most [`MERGE_PASS_SEGMENTS`], and only when the pass finds at least
//!    [`MERGE_MIN_SEGMENTS`] of them (the segment a merge writes is small itself until it
//!    outgrows [`MERGE_SMALL_BYTES`], and is copied again only along with that many others).
//!    Segments an upload still writes are never picked: they are not sealed until the upload
//!    ends (the open shared segments neither). The pure rule is [`pick_merges`].
//! 2. **Collect.** One scan of the `blocks` table in a read transaction finds the live blocks in
//!    the picked segments of both kinds (at most [`COMPACT_PASS_BLOCKS`] and
//!    [`COMPACT_PASS_BYTES`] per pass; the rest waits for the next pass). They are copied in
//!    segment-offset order, so the old files are read sequentially, into one new segment.
//! 3. **Copy, sync, commit, per batch** of [`COMPACT_BATCH_BLOCKS`], while the disk has room
//!    for the batch beyond the headroom kept for the index and what reservations will still
//!    write (otherwise the pass stops, and the rest waits for a later one): each block is read and
//!    checked against its checksum (a block that fails stays where it is, is counted and logged,
//!    and is never copied), appended to a new segment of the pass, the new segment is
//!    `fdatasync`ed, and then one transaction points each row at its copy if the row still
//!    points at the old place ([`Tables::relocate`](crate::index::Tables::relocate); a block
//!    deleted or re-stored meanwhile is left alone, its copy is dead). The live-byte counters move
//!    with the rows, so an old segment whose count reaches zero is removed in that same
//!    transaction and its file deleted after the commit, as deletion already does.
//! 4. **Seal** the new segment (or drop it, if every block it received was deleted meanwhile).
//!
//! So a merge is a compaction of segments that were picked for their size rather than their
//! dead bytes: their live blocks land in one new segment, each old file is deleted in the
//! transaction that moves its last live row, and the rest below holds for both alike.
//!
//! **Crash safety** follows from the store's one rule: no index entry names segment bytes before
//! they are synced. A crash before a batch commits leaves the new segment with no live bytes,
//! which recovery deletes; a crash after it leaves the old file unknown to the index (or with
//! live bytes still counted, if only some rows moved), and recovery deletes unknown files.
//! `tests/crash.rs` kills a process at both points, in a compaction and in a merge.
//!
//! **Readers** are not blocked. A reader that looked up a row before a batch committed may find
//! the old file already deleted; `Store::read_verified` then looks the row up again and follows
//! it to the copy (see `moved_from` in `store.rs`). Quota is unchanged by a move: the live bytes
//! are the same, and disk use grows by at most one pass's bytes until the old files go.

use std::collections::HashSet;

use cairn_core::{Block, cid::cid_from_bytes};
use redb::{ReadableDatabase, ReadableTable};
use tracing::{debug, info, warn};

use crate::{
    Store, StoreError,
    index::{BLOCKS, BlockRec, Loc, SEGMENTS, SESSIONS, checksum},
    segments::WriteMode,
    store::checked_block,
};

/// A sealed segment is compacted once at most this percentage of its bytes is live: copying the
/// live half to free the dead half. Lower would leave more dead bytes on disk; higher would copy
/// more bytes for each byte freed.
pub(crate) const COMPACT_MAX_LIVE_PERCENT: u64 = 50;
/// ... and only if that frees at least this much: a rewrite for less is not worth a pass.
pub(crate) const COMPACT_MIN_DEAD_BYTES: u64 = 8 * 1024 * 1024;
/// Live bytes one pass copies at most (beyond the first segment picked): bounds a pass's time
/// and the extra disk it borrows until the old files are deleted.
pub(crate) const COMPACT_PASS_BYTES: u64 = 512 * 1024 * 1024;
/// Blocks one pass copies at most, which bounds the memory of its list of moves (about 100
/// bytes each) when a segment holds many small blocks.
pub(crate) const COMPACT_PASS_BLOCKS: usize = 65_536;
/// Blocks copied per sync and index transaction: 16 MiB of 64 KiB blocks, which amortises the
/// `fdatasync` and commit and keeps each transaction short.
pub(crate) const COMPACT_BATCH_BLOCKS: usize = 256;
/// The bytes a pass's first batch is taken to copy when the pass decides whether the disk has
/// room to start, before it looks for the blocks ([`COMPACT_BATCH_BLOCKS`] of 64 KiB, or the
/// picked segments' live bytes if fewer): larger blocks are checked batch by batch as they
/// are copied.
const COMPACT_FIRST_BATCH_BYTES: u64 = COMPACT_BATCH_BLOCKS as u64 * 64 * 1024;
/// A sealed segment whose file is smaller than this is *small*, and is merged with other small
/// ones. The same size as [`COMPACT_MIN_DEAD_BYTES`]: a segment at least this big is rewritten
/// by the dead-bytes rule once it is mostly dead, one under it never is, so between the two
/// rules no sealed segment keeps more than about half its size, or this much, dead for good.
/// Bigger would copy more per file saved (an upload of a few MiB is a fine file of its own).
pub(crate) const MERGE_SMALL_BYTES: u64 = 8 * 1024 * 1024;
/// Small segments a pass must find before it merges any: a merge saves files only if there
/// are several, and the segment it writes is small itself until it outgrows
/// [`MERGE_SMALL_BYTES`], so it is copied again only along with this many others (at most
/// [`MERGE_SMALL_BYTES`] copied again per this many segments merged, not per segment).
pub(crate) const MERGE_MIN_SEGMENTS: usize = 16;
/// Small segments one pass merges at most (besides the byte and block bounds of every pass):
/// bounds the files it deletes and the set of segments its scan of `blocks` looks for. 100,000
/// small uploads are merged in 7 passes.
pub(crate) const MERGE_PASS_SEGMENTS: usize = 16_384;

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Blocks copied to a new segment.
    pub moved_blocks: u64,
    /// Bytes of those blocks.
    pub moved_bytes: u64,
    /// Old segment files deleted because nothing live was left in them.
    pub segments_freed: u64,
    /// Bytes those files held.
    pub freed_bytes: u64,
    /// Blocks left in place because their bytes failed their check (reads refuse them too).
    pub corrupt_blocks: u64,
}

/// A sealed segment's size and live bytes, as the picking rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentUse {
    pub(crate) id: u64,
    /// Bytes of live blocks in it.
    pub(crate) live: u64,
    /// Bytes in its file.
    pub(crate) size: u64,
}

impl SegmentUse {
    fn dead(self) -> u64 {
        self.size.saturating_sub(self.live)
    }

    /// Whether rewriting it is worth it ([`COMPACT_MAX_LIVE_PERCENT`], [`COMPACT_MIN_DEAD_BYTES`]).
    pub(crate) fn worth_compacting(self) -> bool {
        self.dead() >= COMPACT_MIN_DEAD_BYTES
            && u128::from(self.live) * 100
                <= u128::from(self.size) * u128::from(COMPACT_MAX_LIVE_PERCENT)
    }
}

/// The segments one pass rewrites: those worth it, most dead bytes first, while their live
/// bytes fit in `pass_bytes` (the first always does).
pub(crate) fn pick(segments: &[SegmentUse], pass_bytes: u64) -> Vec<u64> {
    let mut worth: Vec<SegmentUse> = segments
        .iter()
        .copied()
        .filter(|s| s.worth_compacting())
        .collect();
    worth.sort_by_key(|s| (std::cmp::Reverse(s.dead()), s.id));
    let mut picked = Vec::new();
    let mut live = 0u64;
    for s in worth {
        if !picked.is_empty() && live.saturating_add(s.live) > pass_bytes {
            continue;
        }
        live = live.saturating_add(s.live);
        picked.push(s.id);
    }
    picked
}

/// The small segments one pass merges ([`MERGE_SMALL_BYTES`]; see the module docs): of
/// `segments` (sealed, and holding no rows on their way), those under that size with live
/// bytes, least live bytes first, while their live bytes fit in `pass_bytes` and they number
/// at most [`MERGE_PASS_SEGMENTS`]. None when fewer than [`MERGE_MIN_SEGMENTS`] are small, or
/// fewer than two fit (one segment rewritten alone saves no file).
pub(crate) fn pick_merges(segments: &[SegmentUse], pass_bytes: u64) -> Vec<u64> {
    let mut small: Vec<SegmentUse> = segments
        .iter()
        .copied()
        .filter(|s| s.size < MERGE_SMALL_BYTES && s.live > 0)
        .collect();
    if small.len() < MERGE_MIN_SEGMENTS {
        return Vec::new();
    }
    small.sort_by_key(|s| (s.live, s.id));
    let mut picked = Vec::new();
    let mut live = 0u64;
    for s in small {
        if picked.len() >= MERGE_PASS_SEGMENTS || live.saturating_add(s.live) > pass_bytes {
            break;
        }
        live = live.saturating_add(s.live);
        picked.push(s.id);
    }
    if picked.len() < 2 {
        picked.clear();
    }
    picked
}

/// The unsealed segments in `segments` that are not `open` (a shared slot's) and not an upload
/// session's (in `sessions`): see [`Store::seal_abandoned_segments`].
fn abandoned(
    segments: &impl ReadableTable<u64, (u64, u64)>,
    sessions: &impl ReadableTable<u64, (u64, &'static [u8])>,
    open: &HashSet<u64>,
) -> Result<Vec<u64>, StoreError> {
    let mut unsealed = Vec::new();
    for e in segments.iter()? {
        let (k, v) = e?;
        if v.value().1 == 0 && !open.contains(&k.value()) {
            unsealed.push(k.value());
        }
    }
    if unsealed.is_empty() {
        return Ok(unsealed);
    }
    let mut uploads = HashSet::new();
    for e in sessions.iter()? {
        uploads.insert(e?.1.value().0);
    }
    unsealed.retain(|id| !uploads.contains(id));
    Ok(unsealed)
}

/// One block to copy: its CID bytes and its row when the pass collected it.
struct Move {
    cid: Vec<u8>,
    rec: BlockRec,
}

impl Store {
    /// Runs one compaction pass: copies the live blocks out of sealed segments that are mostly
    /// dead and deletes those segments (see the module docs of `compact.rs`). Safe to run while
    /// the store is in use; passes are serialised.
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        let _one_pass = self.inner.compact_lock.lock();
        let mut report = CompactReport::default();
        // Segments whose seal failed are sealed now, so the rest of the pass sees them.
        self.seal_abandoned_segments()?;
        // An open shared segment whose blocks were all deleted (a download deleted before its
        // segment filled up) would otherwise wait for the next writes to roll it over.
        for leaves_slot in [true, false] {
            let freed = self.drop_dead_open_segment(leaves_slot, COMPACT_MIN_DEAD_BYTES)?;
            if freed > 0 {
                report.segments_freed += 1;
                report.freed_bytes += freed;
            } else {
                // One that is mostly dead is sealed, so this pass picks it below.
                self.seal_open_if_worth_compacting(leaves_slot)?;
            }
        }
        // Sealed segments with nothing live need no copying, whatever their size.
        let (empty, sealed): (Vec<SegmentUse>, Vec<SegmentUse>) = self
            .sealed_segments()?
            .into_iter()
            .partition(|s| s.live == 0);
        if !empty.is_empty() {
            self.drop_empty_sealed(&empty, &mut report)?;
        }
        // Segments holding a block an earlier pass could not copy wait until their live bytes
        // change (`Inner::unmovable`).
        let sealed: Vec<SegmentUse> = {
            let unmovable = self.inner.unmovable.lock();
            sealed
                .into_iter()
                .filter(|s| unmovable.get(&s.id) != Some(&Some(s.live)))
                .collect()
        };
        let mut picked = pick(&sealed, COMPACT_PASS_BYTES);
        // Small segments are merged in what the mostly-dead ones leave of the pass's bytes.
        let mostly_dead: HashSet<u64> = picked.iter().copied().collect();
        let taken = sealed
            .iter()
            .filter(|s| mostly_dead.contains(&s.id))
            .fold(0u64, |n, s| n.saturating_add(s.live));
        let pinned = self.pinned();
        let mergeable: Vec<SegmentUse> = sealed
            .iter()
            .filter(|s| !pinned.contains(&s.id) && !mostly_dead.contains(&s.id))
            .copied()
            .collect();
        picked.extend(pick_merges(
            &mergeable,
            COMPACT_PASS_BYTES.saturating_sub(taken),
        ));
        if picked.is_empty() {
            if report.segments_freed > 0 {
                info!(
                    segments_freed = report.segments_freed,
                    freed_bytes = report.freed_bytes,
                    "deleted empty segments"
                );
            }
            return Ok(report);
        }
        // Copies take disk until the old files go: none is started that the disk has no room
        // for. The first batch is judged from the picked segments' live bytes, before the scan
        // of the `blocks` table that finds their blocks (every row of it: a pass on a full disk
        // used to pay that scan only to copy nothing); `copy_into` checks each batch's own
        // bytes.
        let picked_set: HashSet<u64> = picked.iter().copied().collect();
        let picked_live = sealed
            .iter()
            .filter(|s| picked_set.contains(&s.id))
            .fold(0u64, |n, s| n.saturating_add(s.live));
        if self
            .room_to_copy(picked_live.min(COMPACT_FIRST_BATCH_BYTES))
            .is_ok()
        {
            let moves = self.live_blocks_in(&picked)?;
            if !moves.is_empty() {
                self.copy_blocks(&moves, &mut report)?;
            }
        }
        // The picked segments that are gone now were freed by this pass.
        let now_sealed = self.sealed_segments()?;
        let remaining: HashSet<u64> = now_sealed.iter().map(|s| s.id).collect();
        {
            let mut unmovable = self.inner.unmovable.lock();
            unmovable.retain(|id, _| remaining.contains(id));
            for s in &now_sealed {
                if let Some(live @ None) = unmovable.get_mut(&s.id) {
                    *live = Some(s.live);
                }
            }
        }
        for s in sealed.iter().filter(|s| picked_set.contains(&s.id)) {
            if !remaining.contains(&s.id) {
                report.segments_freed += 1;
                report.freed_bytes += s.size;
            }
        }
        if report.moved_blocks > 0 || report.corrupt_blocks > 0 || report.segments_freed > 0 {
            info!(
                moved_blocks = report.moved_blocks,
                moved_bytes = report.moved_bytes,
                segments_freed = report.segments_freed,
                freed_bytes = report.freed_bytes,
                corrupt_blocks = report.corrupt_blocks,
                "compacted segments"
            );
        }
        Ok(report)
    }

    /// Seals the segments no writer appends to any more that were left unsealed: a shared
    /// segment whose seal failed as it rolled over or after a failed append (the index could
    /// not be written; the error is the put's, or only logged), or whose file could not be
    /// created. Only sealed segments are compacted or deleted once empty, so such a segment
    /// used to stay until a restart sealed it. A segment is being written while it is a shared
    /// slot's open segment, an upload session's, or this pass's copy target (passes are
    /// serialised, and this runs before the pass makes one); every other unsealed one is
    /// sealed. The whole `segments` table is scanned on a read transaction without the shared
    /// slots (so a pass with nothing to seal commits nothing and puts do not wait for the
    /// scan); then, holding both slots (none is opened or rolled over meanwhile), the open
    /// segments are left out and each candidate is checked again in the sealing transaction.
    fn seal_abandoned_segments(&self) -> Result<(), StoreError> {
        // The scan of the whole table is made without the slots every put needs (found by
        // review: puts waited for it at every pass); the open segments are left out under them.
        let found = {
            let r = self.inner.db()?.begin_read()?;
            abandoned(
                &r.open_table(SEGMENTS)?,
                &r.open_table(SESSIONS)?,
                &HashSet::new(),
            )?
        };
        self.hook("compact:scanned");
        if found.is_empty() {
            return Ok(());
        }
        let leaves = self.shared_slot(true).lock();
        let misc = self.shared_slot(false).lock();
        let open: HashSet<u64> = [leaves.as_ref(), misc.as_ref()]
            .into_iter()
            .flatten()
            .map(|w| w.id())
            .collect();
        let found: Vec<u64> = found.into_iter().filter(|id| !open.contains(id)).collect();
        if found.is_empty() {
            return Ok(());
        }
        let sealed = self.write(0, |t| {
            // Checked again where it counts, for the candidates only: a segment the slots
            // opened since the scan is new (not a candidate), and one an upload session took
            // is in `sessions`.
            let uploads: HashSet<u64> = t
                .sessions
                .iter()?
                .map(|e| e.map(|(_, v)| v.value().0))
                .collect::<Result<_, _>>()?;
            let mut ids = Vec::new();
            for id in found {
                let unsealed = t.segments.get(id)?.is_some_and(|v| v.value().1 == 0);
                if unsealed && !uploads.contains(&id) {
                    t.seal_segment(id)?;
                    ids.push(id);
                }
            }
            Ok(ids)
        })?;
        if !sealed.is_empty() {
            info!(
                segments = ?sealed,
                "sealed segments left unsealed by an earlier failure"
            );
        }
        Ok(())
    }

    /// Deletes the sealed segments in `empty` that still hold nothing live and have no rows on
    /// their way ([`SegPin`](crate::store::SegPin)); a pinned one waits for the next pass.
    fn drop_empty_sealed(
        &self,
        empty: &[SegmentUse],
        report: &mut CompactReport,
    ) -> Result<(), StoreError> {
        let dropped: Vec<SegmentUse> = self.write(0, |t| {
            let pinned = self.pinned();
            let mut out = Vec::new();
            for s in empty {
                if !pinned.contains(&s.id) && t.remove_segment_if_empty(s.id)? {
                    out.push(*s);
                }
            }
            Ok(out)
        })?;
        for s in dropped {
            if let Err(e) = self.inner.segs.remove(s.id) {
                warn!(seg = s.id, error = %e, "could not delete an empty segment");
                continue;
            }
            report.segments_freed += 1;
            report.freed_bytes += s.size;
        }
        Ok(())
    }

    /// Every sealed segment with its live bytes and file size.
    fn sealed_segments(&self) -> Result<Vec<SegmentUse>, StoreError> {
        let ids: Vec<(u64, u64)> = {
            let r = self.inner.db()?.begin_read()?;
            let segs = r.open_table(SEGMENTS)?;
            let mut out = Vec::new();
            for e in segs.iter()? {
                let (k, v) = e?;
                let (live, sealed) = v.value();
                if sealed == 1 {
                    out.push((k.value(), live));
                }
            }
            out
        };
        let mut out = Vec::with_capacity(ids.len());
        for (id, live) in ids {
            match self.inner.segs.size(id) {
                Ok(size) => out.push(SegmentUse { id, live, size }),
                // Deleted since the read (its last blocks went); nothing to compact.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// The live blocks in `segments`, in (segment, offset) order: at most
    /// [`COMPACT_PASS_BLOCKS`] of them and [`COMPACT_PASS_BYTES`] (a segment not collected whole
    /// is still picked by the next pass).
    fn live_blocks_in(&self, segments: &[u64]) -> Result<Vec<Move>, StoreError> {
        self.hook("compact:scan-blocks");
        let wanted: HashSet<u64> = segments.iter().copied().collect();
        let r = self.inner.db()?.begin_read()?;
        let blocks = r.open_table(BLOCKS)?;
        let mut moves = Vec::new();
        let mut bytes = 0u64;
        for e in blocks.iter()? {
            let (k, v) = e?;
            let rec = BlockRec::from_tuple(v.value());
            if !wanted.contains(&rec.seg) {
                continue;
            }
            moves.push(Move {
                cid: k.value().to_vec(),
                rec,
            });
            bytes = bytes.saturating_add(rec.len);
            if moves.len() >= COMPACT_PASS_BLOCKS || bytes >= COMPACT_PASS_BYTES {
                break;
            }
        }
        moves.sort_by_key(|m| (m.rec.seg, m.rec.off));
        Ok(moves)
    }

    /// Copies `moves` into a new segment, batch by batch, and seals it.
    fn copy_blocks(&self, moves: &[Move], report: &mut CompactReport) -> Result<(), StoreError> {
        let dest = self.write(0, |t| {
            let id = t.next_id()?;
            t.add_segment(id)?;
            Ok(id)
        })?;
        let res = self.copy_into(dest, moves, report);
        // Seal the new segment even after an error, so a later pass can compact it; one that
        // received nothing live is dropped.
        let dropped = self.write(0, |t| t.seal_or_drop_segment(dest));
        match dropped {
            Ok(true) => {
                if let Err(e) = self.inner.segs.remove(dest) {
                    warn!(seg = dest, error = %e, "could not delete an empty compaction segment");
                }
            }
            Ok(false) => {}
            Err(e) => warn!(seg = dest, error = %e, "could not seal a compaction segment"),
        }
        res
    }

    fn copy_into(
        &self,
        dest: u64,
        moves: &[Move],
        report: &mut CompactReport,
    ) -> Result<(), StoreError> {
        let mut w = self.inner.segs.create(dest, WriteMode::Buffered)?;
        self.inner.segs.sync_dir()?;
        for batch in moves.chunks(COMPACT_BATCH_BLOCKS) {
            let bytes = batch.iter().fold(0u64, |n, m| n.saturating_add(m.rec.len));
            if self.room_to_copy(bytes).is_err() {
                break; // the rest waits for a pass with room; what moved stays moved
            }
            let mut copied: Vec<(&Move, Loc)> = Vec::with_capacity(batch.len());
            for m in batch {
                let Some(block) = self.read_for_copy(m, report)? else {
                    continue;
                };
                let off = w.append(block.data())?;
                copied.push((
                    m,
                    Loc {
                        seg: dest,
                        off,
                        len: m.rec.len,
                        // Rows from before checksums get one with their copy.
                        checksum: m.rec.checksum.unwrap_or_else(|| checksum(block.data())),
                    },
                ));
            }
            if copied.is_empty() {
                continue;
            }
            w.sync()?;
            self.hook("compact:synced");
            let (n, bytes) = self.write(0, |t| {
                let (mut n, mut bytes) = (0u64, 0u64);
                for (m, loc) in &copied {
                    if t.relocate(&m.cid, (m.rec.seg, m.rec.off), *loc)? {
                        n += 1;
                        bytes += loc.len;
                    }
                }
                Ok((n, bytes))
            })?;
            report.moved_blocks += n;
            report.moved_bytes += bytes;
            self.hook("compact:committed");
        }
        Ok(())
    }

    /// Whether the disk has room to copy `batch` beside the headroom kept for the index
    /// ([`MIN_DISK_HEADROOM`](crate::MIN_DISK_HEADROOM)) and what reservations will still
    /// write (`Inner::disk_room`): a pass borrows disk until the old files go, and copying
    /// without looking ate room promised to uploads and downloads and ran into `ENOSPC`, after
    /// which the index could be marked failed (found by review). Logged when it has not.
    fn room_to_copy(&self, bytes: u64) -> Result<(), StoreError> {
        let uploads = self.inner.reserved.lock();
        let room = self.inner.disk_room(*uploads, bytes, 0);
        drop(uploads);
        if let Err(e) = &room {
            info!(error = %e, "compaction waits for disk room to copy blocks");
        }
        room
    }

    /// Reads a block to copy and checks it. `None`: gone since it was collected, or corrupt
    /// (counted; it stays where it is).
    fn read_for_copy(
        &self,
        m: &Move,
        report: &mut CompactReport,
    ) -> Result<Option<Block>, StoreError> {
        let Ok(len) = m.rec.read_len() else {
            warn!(
                seg = m.rec.seg,
                off = m.rec.off,
                len = m.rec.len,
                "block row names an impossible length; not compacted"
            );
            report.corrupt_blocks += 1;
            self.inner.unmovable.lock().insert(m.rec.seg, None);
            return Ok(None);
        };
        let data = match self.inner.segs.read(m.rec.seg, m.rec.off, len) {
            Ok(d) => d,
            // The segment went (its blocks were deleted since the scan).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                warn!(
                    seg = m.rec.seg,
                    off = m.rec.off,
                    "block bytes missing; not compacted"
                );
                report.corrupt_blocks += 1;
                self.inner.unmovable.lock().insert(m.rec.seg, None);
                return Ok(None);
            }
            // Any other read error (a bad sector's EIO): the block stays where it is, and its
            // segment is left alone until its live bytes change, as for a corrupt block.
            // Failing the pass made every pass pick the same segment and fail again, and
            // nothing after it was compacted (review).
            Err(e) => {
                warn!(
                    seg = m.rec.seg,
                    off = m.rec.off,
                    error = %e,
                    "block bytes unreadable; not compacted"
                );
                report.corrupt_blocks += 1;
                self.inner.unmovable.lock().insert(m.rec.seg, None);
                return Ok(None);
            }
        };
        let block = cid_from_bytes(&m.cid)
            .ok()
            .and_then(|cid| checked_block(&cid, &m.rec, data));
        let Some(block) = block else {
            warn!(
                seg = m.rec.seg,
                off = m.rec.off,
                "stored block is corrupt; not compacted"
            );
            report.corrupt_blocks += 1;
            self.inner.unmovable.lock().insert(m.rec.seg, None);
            return Ok(None);
        };
        debug!(seg = m.rec.seg, off = m.rec.off, len, "copying block");
        Ok(Some(block))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::StoreConfig;

    const MIB: u64 = 1024 * 1024;
    const BS: usize = 64 * 1024;

    /// A distinct 64 KiB block for each `i`.
    fn block(i: u32) -> Block {
        let mut data = vec![0u8; BS];
        for (j, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9) ^ j as u32).to_le_bytes());
        }
        Block::data_block(Bytes::from(data))
    }

    /// A store whose first shared segment (256 blocks, sealed by the 257th) has every other
    /// block deleted: half live, so compaction picks it. Returns the blocks put, in order.
    fn half_dead_segment() -> (tempfile::TempDir, Store, Vec<Block>) {
        half_dead_segment_with(StoreConfig::default())
    }

    /// [`half_dead_segment`] over a store configured by `cfg` (its reclaim and roll-over set
    /// as there).
    fn half_dead_segment_with(cfg: StoreConfig) -> (tempfile::TempDir, Store, Vec<Block>) {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            segment_roll_bytes: 256 * BS as u64,
            ..cfg
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let blocks: Vec<Block> = (0..257).map(block).collect();
        for b in &blocks {
            store.put_block(b).unwrap();
        }
        for b in blocks[..256].iter().skip(1).step_by(2) {
            store.delete(b.cid()).unwrap();
        }
        (dir, store, blocks)
    }

    /// The index row of block `b`.
    fn row(store: &Store, b: &Block) -> BlockRec {
        let r = store.inner.db().unwrap().begin_read().unwrap();
        let t = r.open_table(BLOCKS).unwrap();
        let v = t.get(b.cid().to_bytes().as_slice()).unwrap().unwrap();
        BlockRec::from_tuple(v.value())
    }

    /// A store on disk whose shared segments roll over at `roll_blocks` blocks.
    fn store_rolling_at(roll_blocks: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            segment_roll_bytes: roll_blocks * BS as u64,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        (dir, store)
    }

    /// A segment whose blocks were all deleted while it was still being filled is deleted when
    /// it rolls over. If a put's rows are still on their way into it (a pin), it is only sealed,
    /// and compaction deletes it once the pin is gone. Before, such a segment stayed on disk for
    /// good: sealed with nothing live, no later transaction touched it, and compaction had
    /// nothing to copy out of it (seen in a soak run: 1 GiB more on disk per round).
    #[test]
    fn a_segment_emptied_before_it_rolls_over_is_deleted() {
        for pinned in [false, true] {
            let (_dir, store) = store_rolling_at(256);
            let blocks: Vec<Block> = (0..257).map(block).collect();
            for b in &blocks[..256] {
                store.put_block(b).unwrap();
            }
            let first = row(&store, &blocks[0]).seg;
            let pin = pinned.then(|| crate::store::SegPin::new(&store, first));
            for b in &blocks[..256] {
                store.delete(b.cid()).unwrap();
            }
            store.put_block(&blocks[256]).unwrap(); // rolls the first segment over
            if pinned {
                assert!(
                    store.inner.segs.size(first).is_ok(),
                    "a pinned segment stays"
                );
                let r = store.compact().unwrap();
                assert_eq!(r.segments_freed, 0, "still pinned: {r:?}");
                drop(pin);
                let r = store.compact().unwrap();
                assert_eq!(r.segments_freed, 1, "{r:?}");
                assert_eq!(r.freed_bytes, 256 * BS as u64, "{r:?}");
                assert_eq!(r.moved_blocks, 0, "{r:?}");
            }
            assert!(
                store.inner.segs.size(first).is_err(),
                "pinned {pinned}: the empty segment is deleted"
            );
            assert_eq!(store.disk_bytes().unwrap(), BS as u64, "pinned {pinned}");
            let back = store.get_block(blocks[256].cid()).unwrap().unwrap();
            assert_eq!(back.data(), blocks[256].data());
            let audit = store.audit().unwrap();
            assert!(audit.segments_consistent, "{audit:?}");
        }
    }

    /// The open shared segment whose blocks were all deleted is deleted by a compaction pass once
    /// it holds at least `COMPACT_MIN_DEAD_BYTES` (not while a put's rows are on their way), and
    /// the next put opens a new one.
    #[test]
    fn an_open_segment_whose_blocks_all_went_is_deleted_by_compaction() {
        let (_dir, store) = store_rolling_at(1 << 20);
        let small = (COMPACT_MIN_DEAD_BYTES / BS as u64) as u32 - 1;
        let blocks: Vec<Block> = (0..200).map(block).collect();
        for b in &blocks[..small as usize] {
            store.put_block(b).unwrap();
        }
        for b in &blocks[..small as usize] {
            store.delete(b.cid()).unwrap();
        }
        assert_eq!(
            store.compact().unwrap(),
            CompactReport::default(),
            "under the minimum: left for the writes that follow"
        );
        for b in &blocks[small as usize..] {
            store.put_block(b).unwrap();
        }
        let open = row(&store, &blocks[small as usize]).seg;
        for b in &blocks[small as usize..] {
            store.delete(b.cid()).unwrap();
        }
        let pin = crate::store::SegPin::new(&store, open);
        assert_eq!(store.compact().unwrap().segments_freed, 0, "pinned");
        drop(pin);
        let r = store.compact().unwrap();
        assert_eq!(r.segments_freed, 1, "{r:?}");
        assert_eq!(r.freed_bytes, 200 * BS as u64, "{r:?}");
        assert_eq!(store.disk_bytes().unwrap(), 0);
        let extra = block(1000);
        store.put_block(&extra).unwrap();
        assert_ne!(row(&store, &extra).seg, open, "a new segment");
        assert_eq!(
            store.get_block(extra.cid()).unwrap().unwrap().data(),
            extra.data()
        );
        assert_eq!(store.disk_bytes().unwrap(), BS as u64);
        assert!(store.audit().unwrap().segments_consistent);
    }

    /// The open shared segment, mostly dead but still holding blocks that are kept (deleted
    /// downloads beside a kept one), is sealed and rewritten by a compaction pass (not while a
    /// put's rows are on their way), and the next put opens a new one. Before, its dead bytes
    /// stayed until it filled up: 1 GiB by default.
    #[test]
    fn a_mostly_dead_open_segment_is_compacted() {
        let (_dir, store) = store_rolling_at(1 << 20);
        let n = 2 * (COMPACT_MIN_DEAD_BYTES / BS as u64) as usize;
        let blocks: Vec<Block> = (0..=n as u32).map(block).collect();
        for b in &blocks[..n] {
            store.put_block(b).unwrap();
        }
        let open = row(&store, &blocks[0]).seg;
        // Every fourth block kept: a quarter live, 12 MiB dead.
        let kept: Vec<&Block> = blocks[..n].iter().step_by(4).collect();
        for (i, b) in blocks[..n].iter().enumerate() {
            if i % 4 != 0 {
                store.delete(b.cid()).unwrap();
            }
        }
        let pin = crate::store::SegPin::new(&store, open);
        assert_eq!(
            store.compact().unwrap(),
            CompactReport::default(),
            "pinned: left for the next pass"
        );
        drop(pin);
        let r = store.compact().unwrap();
        assert_eq!(r.moved_blocks, kept.len() as u64, "{r:?}");
        assert_eq!(r.segments_freed, 1, "{r:?}");
        assert_eq!(r.freed_bytes, (n * BS) as u64, "{r:?}");
        assert!(store.inner.segs.size(open).is_err(), "the old file is gone");
        assert_eq!(store.disk_bytes().unwrap(), (kept.len() * BS) as u64);
        for b in &kept {
            assert_eq!(store.get_block(b.cid()).unwrap().unwrap().data(), b.data());
        }
        store.put_block(&blocks[n]).unwrap();
        assert_ne!(row(&store, &blocks[n]).seg, open, "a new segment");
        assert_eq!(store.disk_bytes().unwrap(), ((kept.len() + 1) * BS) as u64);
        assert!(store.audit().unwrap().segments_consistent);
        // Nothing left worth a pass: a third pass does nothing.
        assert_eq!(store.compact().unwrap(), CompactReport::default());
    }

    /// A reader that looked a block up before compaction moved it, and reads after the old
    /// segment was deleted, is led to the copy instead of reporting the block corrupt.
    #[test]
    fn a_row_read_before_a_move_is_followed_to_the_copy() {
        let (_dir, store, blocks) = half_dead_segment();
        let kept = &blocks[0];
        let stale = row(&store, kept);
        let report = store.compact().unwrap();
        assert_eq!(report.moved_blocks, 128, "{report:?}");
        assert_eq!(report.segments_freed, 1, "{report:?}");
        assert!(
            store.inner.segs.size(stale.seg).is_err(),
            "the old segment is deleted"
        );
        let read = store.read_verified(kept.cid(), stale).unwrap().unwrap();
        assert_eq!(read.data(), kept.data());
        // A row that did not move and whose bytes are gone is still reported, not followed.
        let open = &blocks[256];
        let current = row(&store, open);
        store.inner.segs.truncate(current.seg, current.off).unwrap();
        assert!(matches!(
            store.read_verified(open.cid(), current),
            Err(StoreError::Corrupt { .. })
        ));
        // One whose block was deleted since is not stored: nothing, not corrupt.
        assert!(
            store
                .read_verified(blocks[1].cid(), stale)
                .unwrap()
                .is_none()
        );
    }

    static FREE_SPACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
    static BLOCK_SCANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn count_block_scans(point: &'static str) {
        if point == "compact:scan-blocks" {
            BLOCK_SCANS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A pass copies only what the disk has room for beyond the headroom kept for the index
    /// (`MIN_DISK_HEADROOM`) and what reservations will still write. Before, it copied up to
    /// `COMPACT_PASS_BYTES` whatever was free, eating room promised to uploads and downloads
    /// and running into `ENOSPC`, after which the index could be marked failed (found by review).
    #[test]
    fn a_pass_without_disk_room_for_its_copies_moves_nothing() {
        use std::sync::atomic::Ordering;
        let (_dir, store, blocks) = half_dead_segment_with(StoreConfig {
            free_space_hook: Some(|| FREE_SPACE.load(Ordering::SeqCst)),
            crash_hook: Some(count_block_scans),
            ..StoreConfig::default()
        });
        let disk = store.disk_bytes().unwrap();
        // Room for a few blocks, not for the 128 live ones (8 MiB) of the half-dead segment.
        FREE_SPACE.store(crate::MIN_DISK_HEADROOM + 4 * BS as u64, Ordering::SeqCst);
        let scans = BLOCK_SCANS.load(Ordering::SeqCst);
        let r = store.compact().unwrap();
        assert_eq!(r, CompactReport::default(), "nothing copied");
        assert_eq!(store.disk_bytes().unwrap(), disk);
        // Nor was the block table scanned for blocks the pass could not copy.
        assert_eq!(BLOCK_SCANS.load(Ordering::SeqCst), scans, "scanned");
        // Room reserved by an upload is not the pass's either.
        FREE_SPACE.store(crate::MIN_DISK_HEADROOM + 8 * MIB + MIB, Ordering::SeqCst);
        let mut w = store.begin_dataset().unwrap();
        w.reserve(2 * MIB).unwrap();
        assert_eq!(store.compact().unwrap(), CompactReport::default());
        drop(w);
        assert_eq!(BLOCK_SCANS.load(Ordering::SeqCst), scans, "scanned");
        // With room, the same pass goes ahead.
        let r = store.compact().unwrap();
        assert!(
            BLOCK_SCANS.load(Ordering::SeqCst) > scans,
            "the hook counts scans"
        );
        assert_eq!(r.moved_blocks, 128, "{r:?}");
        assert_eq!(r.segments_freed, 1, "{r:?}");
        for b in blocks[..256].iter().step_by(2) {
            assert_eq!(store.get_block(b.cid()).unwrap().unwrap().data(), b.data());
        }
    }

    static SCAN_PUT: std::sync::Mutex<Option<Store>> = std::sync::Mutex::new(None);

    /// Once armed: a put from another thread while the pass has scanned for unsealed segments,
    /// which must complete (bounded wait) before the pass goes on.
    fn put_during_the_scan(point: &'static str) {
        if point != "compact:scanned" {
            return;
        }
        let Some(store) = SCAN_PUT.lock().unwrap().take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let _ = tx.send(store.put_block(&block(9999)).is_ok());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(done, Ok(true), "a put waited for the scan");
    }

    /// The scan of the `segments` table for segments left unsealed is made without holding the
    /// shared slots that every put needs (found by review: a put waited for a scan of the whole
    /// table at every pass).
    #[test]
    fn puts_do_not_wait_for_the_scan_for_unsealed_segments() {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            crash_hook: Some(put_during_the_scan),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        store.put_block(&block(1)).unwrap();
        *SCAN_PUT.lock().unwrap() = Some(store.clone());
        store.compact().unwrap();
        assert!(SCAN_PUT.lock().unwrap().is_none(), "the hook ran");
        assert!(store.get_block(block(9999).cid()).unwrap().is_some());
    }

    fn seg(id: u64, live: u64, size: u64) -> SegmentUse {
        SegmentUse { id, live, size }
    }

    /// A block whose bytes went bad on disk is not copied (a copy would launder it under a
    /// fresh checksum): it is counted, stays where it is and is still refused on read, while
    /// the others move. Its segment is kept, since a live row still points into it.
    #[test]
    fn a_corrupt_block_is_counted_and_left_in_place() {
        let (dir, store, blocks) = half_dead_segment();
        let bad = &blocks[2];
        let at = row(&store, bad);
        let path = dir
            .path()
            .join("blocks")
            .join(format!("{:016x}.seg", at.seg));
        let mut file = std::fs::read(&path).unwrap();
        file[usize::try_from(at.off).unwrap() + 10] ^= 0x01;
        std::fs::write(&path, file).unwrap();

        let report = store.compact().unwrap();
        assert_eq!(report.corrupt_blocks, 1, "{report:?}");
        assert_eq!(report.moved_blocks, 127, "{report:?}");
        assert_eq!(report.segments_freed, 0, "{report:?}");
        assert_eq!(row(&store, bad), at, "the corrupt block's row is unchanged");
        assert!(matches!(
            store.get_block(bad.cid()),
            Err(StoreError::Corrupt { .. })
        ));
        for b in blocks[..256]
            .iter()
            .step_by(2)
            .filter(|b| b.cid() != bad.cid())
        {
            assert_eq!(store.get_block(b.cid()).unwrap().unwrap().data(), b.data());
        }
        let audit = store.audit().unwrap();
        assert!(audit.segments_consistent, "{audit:?}");
        // The next pass leaves that segment alone while its live bytes stay as they are:
        // nothing else in it can move (review: every pass read the same bad block again, and
        // bad blocks in 16 small segments made every pass merge nothing).
        let again = store.compact().unwrap();
        assert_eq!(
            (again.corrupt_blocks, again.moved_blocks),
            (0, 0),
            "{again:?}"
        );
    }

    /// A block whose bytes cannot be read at all (an error that is neither "gone" nor "short":
    /// a bad sector's EIO, injected here) is counted and left in place like a corrupt one: the
    /// pass goes on instead of failing, and the next pass leaves the segment alone.
    #[test]
    fn an_unreadable_block_does_not_fail_the_pass() {
        let (_dir, store, blocks) = half_dead_segment();
        let at = row(&store, &blocks[0]);
        crate::segments::UNREADABLE.with(|u| u.set(Some(at.seg)));
        let report = store.compact();
        crate::segments::UNREADABLE.with(|u| u.set(None));
        let report = report.expect("the pass fails on an unreadable block");
        assert!(report.corrupt_blocks > 0, "{report:?}");
        assert_eq!(report.moved_blocks, 0, "{report:?}");
        assert_eq!(row(&store, &blocks[0]), at, "its row is unchanged");
        let again = store.compact().unwrap();
        assert_eq!(
            (again.corrupt_blocks, again.moved_blocks),
            (0, 0),
            "{again:?}"
        );
    }

    /// Small sealed segments are merged once a pass finds at least `MERGE_MIN_SEGMENTS` of
    /// them, whatever their live share, least live first and within the pass's bounds; big
    /// ones and ones with nothing live are not merged.
    #[test]
    fn picks_small_segments_to_merge_once_there_are_enough() {
        let n = MERGE_MIN_SEGMENTS as u64;
        // Small: fully live, mostly live, mostly dead; ids given in reverse of their live bytes.
        let small = |i: u64| {
            let live = (n + 1 - i) * 64 * 1024;
            let size = match i % 3 {
                0 => live,
                1 => live + 4096,
                _ => MERGE_SMALL_BYTES - 1,
            };
            seg(i, live, size)
        };
        let few: Vec<SegmentUse> = (1..n).map(small).collect();
        assert!(
            pick_merges(&few, u64::MAX).is_empty(),
            "fewer than the minimum"
        );
        let mut segs: Vec<SegmentUse> = (1..=n).map(small).collect();
        segs.push(seg(100, MIB, MERGE_SMALL_BYTES)); // not small
        segs.push(seg(101, 0, MIB)); // nothing live: deleted, not copied
        segs.push(seg(102, 0, MERGE_SMALL_BYTES - 1));
        let all: Vec<u64> = (1..=n).rev().collect();
        assert_eq!(pick_merges(&segs, u64::MAX), all, "least live first");
        // The pass's byte budget: the least live ones that fit.
        let budget = (64 + 128 + 192) * 1024;
        assert_eq!(pick_merges(&segs, budget), vec![n, n - 1, n - 2]);
        // One alone saves no file.
        assert!(pick_merges(&segs, 64 * 1024 + 1).is_empty());
        // At most MERGE_PASS_SEGMENTS per pass.
        let many: Vec<SegmentUse> = (0..MERGE_PASS_SEGMENTS as u64 + 10)
            .map(|i| seg(i, 4096, 4096))
            .collect();
        assert_eq!(pick_merges(&many, u64::MAX).len(), MERGE_PASS_SEGMENTS);
        // A small segment can never be picked by the dead-bytes rule: the two rules split the
        // sealed segments between them.
        assert!(!seg(1, 0, MERGE_SMALL_BYTES - 1).worth_compacting());
    }

    /// Uploads `blocks` (the same size each), in one upload session.
    fn upload(store: &Store, blocks: &[Block]) -> crate::StoredDataset {
        let mut w = store.begin_dataset().unwrap();
        for b in blocks {
            w.write(b).unwrap();
        }
        let size = blocks.iter().map(|b| b.data().len() as u64).sum();
        w.finish(crate::DatasetMeta {
            dataset_size: size,
            block_size: blocks[0].data().len() as u64,
            filename: None,
            mimetype: None,
        })
        .unwrap()
    }

    /// Every leaf of `stored` reads back as `blocks` with a proof that verifies, and so does
    /// its manifest.
    fn assert_reads_back(store: &Store, stored: &crate::StoredDataset, blocks: &[Block]) {
        use cairn_core::cid::cid_digest;
        let tree = stored.manifest.tree_cid;
        let root = cid_digest(&tree).unwrap();
        let n = blocks.len() as u64;
        for (i, want) in (0..n).zip(blocks) {
            let (got, proof) = store.get_leaf(&tree, i).unwrap().unwrap();
            assert_eq!(got.data(), want.data(), "leaf {i}");
            proof
                .verify_leaf(&cid_digest(got.cid()).unwrap(), &root, i, n)
                .unwrap();
        }
        let manifest = store.get_manifest(&stored.manifest_cid).unwrap();
        assert_eq!(manifest.as_ref(), Some(&stored.manifest));
    }

    /// Small uploads, a segment file each, are merged into one by a compaction pass: every
    /// block still reads back verified, the counters are exact, the disk holds the live bytes
    /// only, and the next pass has nothing to merge. A segment an upload still writes is left
    /// alone, and so is one with a put's rows on their way (a pin) and a deleted upload's
    /// (deleted, not copied). Before, each small upload kept its file for good.
    #[test]
    fn small_uploads_are_merged_into_one_segment() {
        let (_dir, store) = store_rolling_at(1 << 20);
        let n = MERGE_MIN_SEGMENTS + 4;
        let data: Vec<Vec<Block>> = (0..n as u32)
            .map(|d| (0..3).map(|i| block(1000 * d + i)).collect())
            .collect();
        let stored: Vec<crate::StoredDataset> = data.iter().map(|b| upload(&store, b)).collect();
        // One upload still writing, and one deleted.
        let mut writing = store.begin_dataset().unwrap();
        let late: Vec<Block> = (0..2).map(|i| block(999_000 + i)).collect();
        for b in &late {
            writing.write(b).unwrap();
        }
        store.delete(&stored[0].manifest_cid).unwrap();
        store.reclaim_now().unwrap();
        let files = store.inner.segs.list().unwrap().len();
        assert_eq!(files, n, "one file per upload (the deleted one's is gone)");
        let pinned = row(&store, &data[1][0]).seg;
        let pin = crate::store::SegPin::new(&store, pinned);

        let r = store.compact().unwrap();
        assert_eq!(r.segments_freed, n as u64 - 2, "{r:?}");
        assert_eq!(
            r.moved_blocks,
            4 * (n as u64 - 2),
            "3 leaves and a manifest each"
        );
        assert_eq!(r.corrupt_blocks, 0, "{r:?}");
        assert_eq!(
            store.inner.segs.list().unwrap().len(),
            3,
            "the merged segment, the pinned one and the one being written"
        );
        assert_eq!(row(&store, &data[1][0]).seg, pinned, "the pinned one stays");
        drop(pin);
        for (s, b) in stored.iter().zip(&data).skip(1) {
            assert_reads_back(&store, s, b);
        }
        assert!(
            store
                .get_manifest(&stored[0].manifest_cid)
                .unwrap()
                .is_none()
        );
        // The upload still writing finishes into its own segment, untouched.
        let last = writing
            .finish(crate::DatasetMeta {
                dataset_size: 2 * BS as u64,
                block_size: BS as u64,
                filename: None,
                mimetype: None,
            })
            .unwrap();
        assert_reads_back(&store, &last, &late);
        let audit = store.audit().unwrap();
        assert!(audit.segments_consistent, "{audit:?}");
        assert_eq!(audit.used_recorded, audit.used_actual, "{audit:?}");
        assert_eq!(
            store.disk_bytes().unwrap(),
            store.space().unwrap().quota_used_bytes
        );
        // Two small segments are not worth a pass.
        assert_eq!(store.compact().unwrap(), CompactReport::default());
    }

    #[test]
    fn picks_mostly_dead_segments_most_dead_first() {
        let segs = [
            seg(1, 600 * MIB, 1024 * MIB), // 59 % live: kept as it is
            seg(2, 512 * MIB, 1024 * MIB), // exactly half live: compacted
            seg(3, 10 * MIB, 1024 * MIB),  // almost all dead: first
            seg(4, 0, 4 * MIB),            // all dead but too little to free
            seg(5, 100 * MIB, 300 * MIB),
        ];
        assert_eq!(pick(&segs, u64::MAX), vec![3, 2, 5]);
    }

    #[test]
    fn a_pass_copies_a_bounded_amount_but_always_makes_progress() {
        let segs = [
            seg(1, 400 * MIB, 1024 * MIB),
            seg(2, 300 * MIB, 1024 * MIB),
            seg(3, 100 * MIB, 1024 * MIB),
        ];
        // Most dead first: 3 (924 dead), 2 (724), 1 (624); 100 + 300 fit in 512, 400 more not.
        assert_eq!(pick(&segs, 512 * MIB), vec![3, 2]);
        // The first segment is picked even when its live bytes alone exceed the bound.
        assert_eq!(pick(&segs[..1], 64 * MIB), vec![1]);
        assert!(pick(&[], 512 * MIB).is_empty());
    }

    #[test]
    fn the_threshold_is_exact() {
        let size = 64 * MIB;
        let half = size * COMPACT_MAX_LIVE_PERCENT / 100;
        assert!(seg(1, half, size).worth_compacting());
        assert!(!seg(1, half + 1, size).worth_compacting());
        assert!(seg(1, 0, COMPACT_MIN_DEAD_BYTES).worth_compacting());
        assert!(!seg(1, 0, COMPACT_MIN_DEAD_BYTES - 1).worth_compacting());
        // No overflow at the extremes.
        assert!(!seg(1, u64::MAX, u64::MAX).worth_compacting());
    }
}
