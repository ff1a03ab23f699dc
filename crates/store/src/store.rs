//! The [`Store`] handle: opening and recovery, reads, puts, deletion, maintenance.

use std::{
    collections::{HashMap, HashSet},
    ops::Bound,
    path::Path,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use cairn_core::{
    Block, Cid, CodexProof, CodexTree, Manifest, VerifiedLeaf,
    cid::{Codec, cid_digest, cid_from_bytes, empty_block_cid},
};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tracing::{debug, info, warn};

use crate::{
    StoreError,
    compact::CompactReport,
    index::{
        BLOCKS, BlockRec, BlockRow, COUNT_NOT_KEPT, COUNTS, DATASETS, DELETING, DS_ACTIVE,
        DS_DELETING, DatasetRec, EXPIRY, FETCHES, GENERATIONS, LEAVES, Loc, MANIFESTS, META,
        META_TOTAL_BLOCKS, META_USED, Quota, SEGMENTS, SESSIONS, SessionEnd, Tables,
        check_manifest_count, checksum, claimed_counts,
    },
    segments::{MAX_SPAN_BYTES, SegmentWriter, Segments, WriteMode},
    trees::{PROOFS, ProofSource, TREES, has_tree, put_tree, tree_leaf_count},
};

/// Leaves per transaction when [`Store::settle_tree`] drops their downloaded proofs (as the
/// reclaimer's batches: short transactions, so other writers wait little).
const SETTLE_BATCH: u64 = 4096;

/// Datasets with downloaded proofs that one maintenance pass tries to settle (each costs a scan
/// of its leaf rows up to its first missing one).
const SETTLE_DATASETS_PER_PASS: usize = 16;

/// Default quota: 20 GiB, as the reference (`--storage-quota`).
pub const DEFAULT_QUOTA: u64 = 20 * 1024 * 1024 * 1024;
/// Default block TTL: 30 days, as the reference (`--block-ttl`).
pub const DEFAULT_BLOCK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default maintenance interval: 10 minutes, as the reference (`--block-mi`).
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);
/// Expired blocks handled per maintenance pass, as the reference (`--block-mn`).
pub const DEFAULT_MAINTENANCE_BATCH: usize = 1000;
/// Leaves dropped per reclaim transaction: large enough to amortise a commit (one fsync), small
/// enough that a transaction stays a few MiB and never holds the writer lock for long.
pub const DEFAULT_RECLAIM_BATCH: usize = 4096;
/// Leaves written per transaction when an upload finishes (same reasoning as the reclaim batch).
pub const DEFAULT_LEAF_BATCH: usize = 8192;
/// The shared segments (single puts, network leaves) roll over at this size, so dead space in
/// one segment stays bounded and whole segments can be freed or compacted.
pub const DEFAULT_SEGMENT_ROLL_BYTES: u64 = 1024 * 1024 * 1024;
/// How often the background reclaimer looks for work without being woken.
const RECLAIM_POLL: Duration = Duration::from_secs(5);
/// redb page cache size. 16 MiB: an upload's finish writes its leaf index in batches whose
/// `blocks` inserts are sorted by CID, so it does not need the whole index cached. At 16 GiB this
/// took peak RSS from 97 MiB (64 MiB cache) to 48 MiB with a shorter finish (1.53 s against
/// 1.69 s, unsorted); see BENCHMARKS.md.
const DB_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The largest block the store keeps, in bytes: the protocol's largest block size
/// (`cairn_core::manifest::MAX_BLOCK_SIZE`, 100 MiB, as the reference). Puts of larger blocks
/// are refused ([`StoreError::BlockTooLarge`]), so a `blocks` row naming a longer one is
/// damaged, and a read reports it ([`StoreError::IndexDamaged`]) rather than allocate that
/// many bytes first: a damaged length of a terabyte aborted the process.
pub const MAX_BLOCK_BYTES: u64 = cairn_core::manifest::MAX_BLOCK_SIZE;

/// [`StoreError::BlockTooLarge`] if a block of `len` bytes is larger than the store keeps.
pub(crate) fn check_block_len(len: usize) -> Result<(), StoreError> {
    let len = len as u64;
    if len > MAX_BLOCK_BYTES {
        return Err(StoreError::BlockTooLarge {
            len,
            max: MAX_BLOCK_BYTES,
        });
    }
    Ok(())
}

/// The index database's file name in the data directory.
const INDEX_FILE: &str = "index.redb";

/// Free disk space a write must leave beyond its own bytes, at least: room for the index to
/// commit and grow (redb grows its file in doubling steps, so the room kept is also at least
/// the index file's size). Compaction copies only into room beyond it too. A write that
/// would eat into it fails with [`StoreError::DiskFull`] before anything is written, so an
/// upload or a download that cannot fit stops cleanly instead of filling the disk.
pub const MIN_DISK_HEADROOM: u64 = 32 * 1024 * 1024;

/// Different block counts kept for one dataset while manifests naming it disagree and its
/// tree is not stored (see `Tables::add_manifest`). Honest manifests of one tree all agree, so
/// this only bounds what made-up ones cost: settling rebuilds the tree once for each count
/// kept that the stored leaves reach (and drops those that fail), plus once for the number of
/// leaves held. More claims are listed but not kept; the real count is then found as the
/// number of leaves held.
pub const MAX_COUNT_CLAIMS: usize = 8;

/// After the index failed to write, the least free disk space at which reopening it is tried
/// (opening a database that was not closed cleanly writes while it repairs it).
const REOPEN_MIN_FREE: u64 = 4 * 1024 * 1024;

/// How often reopening a failed index is tried at most.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// How many times one read follows its block to where it was moved or stored again since it
/// was looked up (each a segment gone from under it) before it gives up and reports the block
/// corrupt: a move needs a compaction pass or a delete and a put in between, so a few are
/// already unlikely, and the bound keeps a read from chasing a block forever.
const MAX_READ_MOVES_FOLLOWED: usize = 8;

/// Datasets remembered as having had a download's blocks refused for want of disk
/// ([`Store::download_disk_room`]); more are not remembered (their downloads stop at the next
/// refused write instead).
const MAX_DISK_FAILURES: usize = 1024;

/// Upload sessions whose rollback failed that the store remembers to end later
/// ([`Store::retry_failed_rollbacks`]); past this many, the rest are rolled back at the next
/// start (a failed rollback means the index cannot be written, so they come in bursts of the
/// uploads running when the disk filled, far fewer than this).
const MAX_FAILED_ROLLBACKS: usize = 1024;

/// Opens the index database again (after it failed).
type IndexOpener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// Store settings.
#[derive(Clone)]
pub struct StoreConfig {
    /// Quota in bytes of live block data (`--storage-quota`).
    pub quota_bytes: u64,
    /// Time to live of standalone blocks and manifests; [`Duration::ZERO`] disables expiry.
    /// A dataset expires as a unit when its manifest does.
    pub block_ttl: Duration,
    /// Expired blocks handled per maintenance pass.
    pub maintenance_batch: usize,
    /// Leaves dropped per reclaim transaction.
    pub reclaim_batch: usize,
    /// Leaves written per transaction when an upload finishes.
    pub leaf_batch: usize,
    /// Run a background thread that reclaims deleted datasets.
    pub background_reclaim: bool,
    /// Size at which a shared segment (single puts, network leaves) is sealed and a new one
    /// started; sealed segments are what compaction rewrites ([`DEFAULT_SEGMENT_ROLL_BYTES`]).
    pub segment_roll_bytes: u64,
    /// How long an upload that does not fit waits for younger uploads to give their room back
    /// ([`crate::UPLOAD_ROOM_WAIT`]).
    pub upload_room_wait: Duration,
    /// Test hook called at named points: in an upload's finish (`"finish:synced"`,
    /// `"finish:leaf-batch"`; crash-safety tests abort the process there), and on entry to
    /// [`Store::put_block`], [`Store::put_leaves`], [`Store::has_block`], [`Store::has_leaf`]
    /// and [`Store::get_leaves`] (`"put_block"`, `"put_leaves"`, `"has_block"`, `"has_leaf"`,
    /// `"get_leaves"`; the node's tests block there to stand in for a slow disk, or count
    /// calls), and in `put_block` and `put_leaves` between their look-up and their
    /// transaction (`"put_block:checked"`, `"put_leaves:checked"`), and in every write
    /// transaction between its commit and the update of the in-memory counters
    /// (`"write:committed"`), and in every block read between looking its row up and reading
    /// its bytes (`"read:looked-up"`), in a compaction pass once it has scanned for segments
    /// left unsealed (`"compact:scanned"`), and in [`Store::settle_tree`] between its read of
    /// the leaves and the transaction that stores the tree (`"settle_tree:read"`). It runs on
    /// the caller's thread. Not for production use.
    #[doc(hidden)]
    pub crash_hook: Option<fn(&'static str)>,
    /// Test hook: the free disk space to assume (bytes), instead of asking the file system;
    /// also applies to an in-memory store, which otherwise has no disk limit. Not for
    /// production use.
    #[doc(hidden)]
    pub free_space_hook: Option<fn() -> u64>,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            quota_bytes: DEFAULT_QUOTA,
            block_ttl: DEFAULT_BLOCK_TTL,
            maintenance_batch: DEFAULT_MAINTENANCE_BATCH,
            reclaim_batch: DEFAULT_RECLAIM_BATCH,
            leaf_batch: DEFAULT_LEAF_BATCH,
            background_reclaim: true,
            segment_roll_bytes: DEFAULT_SEGMENT_ROLL_BYTES,
            upload_room_wait: crate::UPLOAD_ROOM_WAIT,
            crash_hook: None,
            free_space_hook: None,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("quota_bytes", &self.quota_bytes)
            .field("block_ttl", &self.block_ttl)
            .field("maintenance_batch", &self.maintenance_batch)
            .field("reclaim_batch", &self.reclaim_batch)
            .field("leaf_batch", &self.leaf_batch)
            .field("background_reclaim", &self.background_reclaim)
            .field("segment_roll_bytes", &self.segment_roll_bytes)
            .field("upload_room_wait", &self.upload_room_wait)
            .finish_non_exhaustive()
    }
}

/// Space accounting, as `GET /space` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Blocks stored (data blocks and manifests).
    pub total_blocks: u64,
    /// The quota.
    pub quota_max_bytes: u64,
    /// Bytes of live block data.
    pub quota_used_bytes: u64,
    /// Bytes reserved by uploads and downloads in progress.
    pub quota_reserved_bytes: u64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Expired entries handled (manifests and standalone blocks).
    pub expired: usize,
    /// Dataset leaves reclaimed.
    pub reclaimed: usize,
    /// What compaction did.
    pub compacted: CompactReport,
    /// Downloaded proofs dropped by storing complete datasets' trees ([`Store::settle_tree`]):
    /// datasets whose download ended before the node could settle them.
    pub settled: u64,
}

/// A consistency report: what the counters say against what the index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audit {
    /// `used_bytes` counter.
    pub used_recorded: u64,
    /// Sum of the lengths of all blocks in the index.
    pub used_actual: u64,
    /// `total_blocks` counter.
    pub blocks_recorded: u64,
    /// Blocks in the index.
    pub blocks_actual: u64,
    /// Whether every segment's live-bytes counter equals the bytes of the blocks in it.
    pub segments_consistent: bool,
    /// Upload sessions still open.
    pub open_sessions: u64,
}

pub(crate) struct Inner {
    /// The index. `None` only while it is being reopened after a failed write, or when
    /// reopening it failed (see [`Inner::db`]).
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    /// Opens the index again; `None` for an in-memory store.
    reopen: Option<IndexOpener>,
    /// Set when a write of the index failed: redb then fails everything until the database is
    /// reopened.
    index_failed: std::sync::atomic::AtomicBool,
    /// When reopening the index was last tried.
    last_reopen: Mutex<Option<std::time::Instant>>,
    /// The data directory (for free-space checks); `None` for an in-memory store.
    dir: Option<std::path::PathBuf>,
    /// Bytes uploads have appended to their segments while still holding the reservation for
    /// them: the part of the uploads' reservation that is on disk already. Changed only while
    /// holding `reserved`.
    pub(crate) upload_appended: AtomicU64,
    /// Datasets (tree CID bytes) whose downloaded blocks were refused for want of disk; their
    /// downloads stop asking ([`Store::download_disk_room`]). Cleared by a stored batch of the
    /// dataset, a new reservation for it, or its deletion.
    disk_failures: Mutex<HashSet<Vec<u8>>>,
    pub(crate) segs: Segments,
    pub(crate) cfg: StoreConfig,
    /// Bytes reserved by uploads in progress.
    pub(crate) reserved: Mutex<u64>,
    /// The oldest upload session waiting for room that younger uploads hold (0: none); younger
    /// uploads then give theirs up rather than grow (`DatasetWriter::reserve_more`). Changed
    /// only while holding `reserved`.
    pub(crate) room_waiter: AtomicU64,
    /// Signalled (with `reserved`) when an upload gives its reservation back.
    pub(crate) room_freed: parking_lot::Condvar,
    /// Bytes reserved by downloads in progress ([`Reservation`]): the sum of
    /// `download_pools`. Changed only while holding `reserved`, so a quota check sees both at
    /// once.
    pub(crate) download_reserved: AtomicU64,
    /// Download reservations by dataset. Locked only while holding `reserved`.
    download_pools: Mutex<Pools>,
    /// Reserved bytes a write transaction has taken over (its blocks) and that `used` does not
    /// count yet: moved out of a reservation just before the commit, and into `used` just after
    /// it. Changed only while holding `reserved`; quota checks count it, so no check sees the
    /// bytes twice or not at all.
    pub(crate) pending: AtomicU64,
    /// Mirror of the `used_bytes` counter of the last commit (see [`Commits`]).
    pub(crate) used: AtomicU64,
    /// Numbers write transactions in the order they take the index's writer, which is the
    /// order they commit in.
    write_seq: AtomicU64,
    /// Which commit `used` mirrors, and `pending` by transaction. Locked only while holding
    /// `reserved`.
    commits: Mutex<Commits>,
    /// The shared segment for single puts.
    misc: Mutex<Option<SegmentWriter>>,
    /// The shared segment for network leaves ([`Store::put_leaves`]): whole blocks in batches,
    /// written with direct I/O across batch syncs (see `segments.rs`); a leaf whose size is not
    /// a multiple of 4 KiB turns it buffered from then on.
    leaves_seg: Mutex<Option<SegmentWriter>>,
    /// Serialises upload finishes (two uploads of the same data must not interleave).
    pub(crate) finish_lock: Mutex<()>,
    /// Serialises compaction passes.
    pub(crate) compact_lock: Mutex<()>,
    /// Segments in which a compaction pass found a block it could not copy (corrupt, or bytes
    /// missing), with their live bytes after that pass (`None` until the pass ends): passes
    /// leave such a segment alone until its live bytes change, rather than read the same bad
    /// block and copy nothing (or re-merge the same small files) at every pass (found by
    /// review).
    pub(crate) unmovable: Mutex<HashMap<u64, Option<u64>>>,
    /// Shared segments holding appended bytes whose index rows are not committed yet, with how
    /// many puts hold each ([`SegPin`]). Such a segment may look empty to the index; it must not
    /// be deleted until the pins are gone.
    pub(crate) pins: Mutex<HashMap<u64, usize>>,
    reclaim_wake: Mutex<Option<SyncSender<()>>>,
    /// The dataset (tree CID bytes) the last maintenance pass stopped at when settling trees;
    /// empty for the start.
    settle_cursor: Mutex<Vec<u8>>,
    /// Upload sessions given up whose rollback failed (the index could not be written): ended
    /// by the next maintenance pass or reclaimer round that can ([`Store::retry_failed_rollbacks`]),
    /// at most [`MAX_FAILED_ROLLBACKS`].
    failed_rollbacks: Mutex<Vec<u64>>,
}

impl Inner {
    /// The index database. After a write of it failed, the first call once the disk has room
    /// again (at most every [`REOPEN_RETRY`]) closes and reopens it; until then this is the
    /// failed database (reads it has cached may still succeed) or, if reopening failed,
    /// [`StoreError::IndexUnavailable`].
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.index_failed.load(Ordering::Acquire) && self.reopen.is_some() {
            self.try_reopen();
        }
        self.db.read().clone().ok_or_else(|| {
            StoreError::IndexUnavailable("reopening it failed; it is tried again".into())
        })
    }

    /// Records `e` if it left the index unusable (see [`Inner::db`]).
    pub(crate) fn note(&self, e: &StoreError) {
        if e.index_failed() && !self.index_failed.swap(true, Ordering::AcqRel) {
            warn!(error = %e, "writing the store's index failed; it is reopened once its disk has room");
        }
    }

    fn try_reopen(&self) {
        let Some(open) = &self.reopen else { return };
        {
            let mut last = self.last_reopen.lock();
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < REOPEN_RETRY) {
                return;
            }
            *last = Some(now);
        }
        if let Some((free, _)) = self.free_space()
            && free < REOPEN_MIN_FREE
        {
            debug!(
                free,
                "the store's disk is still full; the index is reopened later"
            );
            return;
        }
        let mut slot = self.db.write();
        if !self.index_failed.load(Ordering::Acquire) {
            return; // another thread reopened it meanwhile
        }
        // The old database must be closed first: it holds the file's lock. A transaction still
        // running on it keeps it open, and the open below then fails until it ends.
        drop(slot.take());
        match open() {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                self.index_failed.store(false, Ordering::Release);
                info!("the store's index was reopened after a failed write");
            }
            Err(e) => warn!(error = %e, "reopening the store's index failed; it is tried again"),
        }
    }

    /// Free disk space where the store lives and the room to keep beside it
    /// ([`MIN_DISK_HEADROOM`], or the index file's size if larger); `None` when unknown (an
    /// in-memory store without [`StoreConfig::free_space_hook`], or the file system would not
    /// say).
    fn free_space(&self) -> Option<(u64, u64)> {
        if let Some(hook) = self.cfg.free_space_hook {
            return Some((hook(), MIN_DISK_HEADROOM));
        }
        let dir = self.dir.as_ref()?;
        match rustix::fs::statvfs(dir) {
            Ok(st) => {
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                let index = std::fs::metadata(dir.join(INDEX_FILE)).map_or(0, |m| m.len());
                Some((free, MIN_DISK_HEADROOM.max(index)))
            }
            Err(e) => {
                debug!(error = %e, "statvfs of the data directory failed");
                None
            }
        }
    }

    /// Whether the store's disk has room for `bytes` more beside the room kept for the index
    /// ([`MIN_DISK_HEADROOM`]) and beside what reservations will still write: the uploads'
    /// reservation (`uploads`, read by the caller under its lock) less what they appended
    /// already, and every download's. `credit` is the part of those reservations this write
    /// draws on (a download's own pool), not counted twice. [`StoreError::DiskFull`] if not.
    pub(crate) fn disk_room(
        &self,
        uploads: u64,
        bytes: u64,
        credit: u64,
    ) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        let Some((free, keep)) = self.free_space() else {
            return Ok(());
        };
        let promised = uploads
            .saturating_sub(self.upload_appended.load(Ordering::Relaxed))
            .saturating_add(self.download_reserved.load(Ordering::Relaxed))
            .saturating_sub(credit);
        let spare = free.saturating_sub(keep).saturating_sub(promised);
        if spare < bytes {
            return Err(StoreError::DiskFull {
                needed: bytes,
                free: spare,
            });
        }
        Ok(())
    }

    /// Whether `bytes` more fit in the quota beside what is used and every reservation:
    /// `uploads` is the uploads' reservation, read by the caller under its lock (which it holds
    /// while it then reserves, so checks and reservations do not interleave).
    pub(crate) fn fits(&self, uploads: u64, bytes: u64) -> Result<(), StoreError> {
        if self.taken(uploads).saturating_add(bytes) > self.cfg.quota_bytes {
            return Err(self.quota_refusal(uploads, bytes));
        }
        self.disk_room(uploads, bytes, 0)
    }

    /// The quota taken: bytes used, being committed, and reserved by uploads (`uploads`, read
    /// under the `reserved` lock) and downloads.
    fn taken(&self, uploads: u64) -> u64 {
        self.used.load(Ordering::Relaxed)
            + self.pending.load(Ordering::Relaxed)
            + uploads
            + self.download_reserved.load(Ordering::Relaxed)
    }

    /// The quota error for `bytes` more, with what is taken now (`uploads` as in
    /// [`Inner::fits`]); also what an upload that gives way to an older one is refused with.
    pub(crate) fn quota_refusal(&self, uploads: u64, bytes: u64) -> StoreError {
        StoreError::QuotaExceeded {
            needed: bytes,
            used: self.taken(uploads),
            quota: self.cfg.quota_bytes,
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("segments", &self.segs)
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// A cheap-to-clone handle to a block store. See the crate docs for the design.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (or creates) the on-disk store in `dir`, rolling back uploads a crash interrupted.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Store, StoreError> {
        let path = dir.join(INDEX_FILE);
        Store::open_with(
            dir,
            cfg,
            Box::new(move || {
                Ok(Database::builder()
                    .set_cache_size(DB_CACHE_BYTES)
                    .create(&path)?)
            }),
        )
    }

    /// [`Store::open`] with the index opened by `open` (tests give it a backend that fails on
    /// demand).
    pub(crate) fn open_with(
        dir: &Path,
        cfg: StoreConfig,
        open: IndexOpener,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = open()?;
        let segs = Segments::dir(dir.join("blocks"))?;
        let store = Store::start(db, segs, cfg, Some(open), Some(dir.to_path_buf()))?;
        // The quota is a promise the disk may not keep: say so once, at start.
        if let Some((free, keep)) = store.inner.free_space() {
            let used = store.inner.used.load(Ordering::Relaxed);
            let room = used.saturating_add(free.saturating_sub(keep));
            if store.inner.cfg.quota_bytes > room {
                warn!(
                    quota = store.inner.cfg.quota_bytes,
                    used,
                    disk_free = free,
                    "the storage quota is larger than the disk can hold; writes past the disk's free space are refused (507)"
                );
            }
        }
        Ok(store)
    }

    /// An in-memory store (index and data in memory; nothing survives the process).
    pub fn in_memory(cfg: StoreConfig) -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Store::start(db, Segments::mem(), cfg, None, None)
    }

    fn start(
        db: Database,
        segs: Segments,
        cfg: StoreConfig,
        reopen: Option<IndexOpener>,
        dir: Option<std::path::PathBuf>,
    ) -> Result<Store, StoreError> {
        let inner = Arc::new(Inner {
            db: parking_lot::RwLock::new(Some(Arc::new(db))),
            reopen,
            index_failed: std::sync::atomic::AtomicBool::new(false),
            last_reopen: Mutex::new(None),
            dir,
            upload_appended: AtomicU64::new(0),
            disk_failures: Mutex::new(HashSet::new()),
            segs,
            cfg,
            reserved: Mutex::new(0),
            room_waiter: AtomicU64::new(0),
            room_freed: parking_lot::Condvar::new(),
            download_reserved: AtomicU64::new(0),
            download_pools: Mutex::new(Pools::default()),
            pending: AtomicU64::new(0),
            used: AtomicU64::new(0),
            write_seq: AtomicU64::new(0),
            commits: Mutex::new(Commits::default()),
            misc: Mutex::new(None),
            leaves_seg: Mutex::new(None),
            finish_lock: Mutex::new(()),
            compact_lock: Mutex::new(()),
            unmovable: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
            reclaim_wake: Mutex::new(None),
            settle_cursor: Mutex::new(Vec::new()),
            failed_rollbacks: Mutex::new(Vec::new()),
        });
        let store = Store { inner };
        store.recover()?;
        if store.inner.cfg.background_reclaim {
            store.spawn_reclaimer()?;
        }
        Ok(store)
    }

    /// Rolls back interrupted uploads, seals segments left open, deletes empty and orphan
    /// segment files.
    fn recover(&self) -> Result<(), StoreError> {
        let sessions: Vec<u64> = {
            let r = self.inner.db()?.begin_read()?;
            match r.open_table(SESSIONS) {
                Ok(table) => table
                    .iter()?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?,
                // A new index: no table has been written yet.
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        };
        // In id order: a dataset two interrupted sessions held goes (if nothing else keeps it)
        // when the last of them ends. Each ends in transactions of its own; one a crash
        // interrupts is still recorded, and ended again at the next open.
        // What they leave is reclaimed by `reclaim_now` or the reclaimer, as every deletion.
        for session in &sessions {
            self.end_session(*session)?;
        }
        let dead = self.write(0, |t| {
            // Datasets no manifest names and no upload is writing: left by earlier versions,
            // which let a download that outlived a delete of its dataset create it anew. No
            // session holds one here (`Tables::session_holds`): every session ended above.
            let orphans: Vec<(Vec<u8>, DatasetRec)> = t
                .datasets
                .iter()?
                .map(|e| e.map(|(k, v)| (k.value().to_vec(), DatasetRec::from_tuple(v.value()))))
                .filter(|e| {
                    e.as_ref().map_or(true, |(_, d)| {
                        d.state == DS_ACTIVE && d.manifest_refs == 0 && d.session == 0
                    })
                })
                .collect::<Result<_, _>>()?;
            for (tree, ds) in &orphans {
                t.mark_deleting(tree, *ds)?;
            }
            if !orphans.is_empty() {
                warn!(
                    datasets = orphans.len(),
                    "datasets no manifest names will be reclaimed"
                );
            }
            // Rows an older version left with another count than their stored tree's (an
            // upload over a dataset that a manifest with a made-up size listed first): the tree
            // is what the leaves make, and its proofs are built with the row's count.
            let counts: Vec<(Vec<u8>, u64)> = t
                .datasets
                .iter()?
                .map(|e| e.map(|(k, v)| (k.value().to_vec(), DatasetRec::from_tuple(v.value()))))
                .filter(|e| e.as_ref().map_or(true, |(_, d)| d.state != DS_DELETING))
                .map(|e| e.map(|(k, d)| (k, d.nleaves)))
                .collect::<Result<_, _>>()?;
            let mut repaired = 0usize;
            for (tree, nleaves) in &counts {
                if let Some(count) = tree_leaf_count(&t.trees, tree)?
                    && count != *nleaves
                {
                    t.count_proven(tree, count)?;
                    repaired += 1;
                }
            }
            if repaired > 0 {
                warn!(
                    datasets = repaired,
                    "dataset leaf counts put right from their stored trees"
                );
            }
            let segs: Vec<(u64, u64, u64)> = t
                .segments
                .iter()?
                .map(|e| e.map(|(k, v)| (k.value(), v.value().0, v.value().1)))
                .collect::<Result<_, _>>()?;
            let mut dead = Vec::new();
            for (id, live, _sealed) in segs {
                if live == 0 {
                    t.segments.remove(id)?;
                    dead.push(id);
                } else {
                    t.segments.insert(id, (live, 1))?;
                }
            }
            Ok(dead)
        })?;
        for id in dead {
            self.inner.segs.remove(id)?;
        }
        // Segment files the index does not know (created just before a crash).
        let known: std::collections::HashSet<u64> = {
            let r = self.inner.db()?.begin_read()?;
            let segs = r.open_table(SEGMENTS)?;
            segs.iter()?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?
        };
        for id in self.inner.segs.list()? {
            if !known.contains(&id) {
                self.inner.segs.remove(id)?;
            }
        }
        if !sessions.is_empty() {
            info!(
                sessions = sessions.len(),
                "rolled back uploads interrupted by a crash"
            );
        }
        Ok(())
    }

    /// Ends upload session `session`, which did not finish (given up, or interrupted by a
    /// crash; see [`Tables::end_session`]). A dataset a manifest names that the session was
    /// writing stays, as the partial dataset it is: the leaf rows that relied on its tree get
    /// their proofs first, [`StoreConfig::leaf_batch`] leaves per transaction, and then the
    /// tree goes. The caller holds the finish lock, or runs at open. Returns the dataset (tree
    /// key) the session left to nothing, if any: it is being deleted, and the caller reclaims
    /// it ([`Store::finish_deleting`]) or leaves it to the reclaimer.
    pub(crate) fn end_session(&self, session: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut proofs_kept = false;
        loop {
            match self.write(0, |t| t.end_session(session, proofs_kept))? {
                SessionEnd::Ended { deleting } => return Ok(deleting),
                SessionEnd::NeedsProofs { tree, nleaves } => {
                    let batch = self.inner.cfg.leaf_batch.max(1) as u64;
                    let mut start = 0;
                    while start < nleaves {
                        let end = start.saturating_add(batch).min(nleaves);
                        self.write(0, |t| t.proofs_from_tree(&tree, nleaves, start..end))?;
                        start = end;
                    }
                    proofs_kept = true;
                }
            }
        }
    }

    /// Removes upload segment `seg` if nothing live is left in it (a session that ended without
    /// listing anything, or a re-upload of stored data).
    pub(crate) fn drop_upload_segment_if_empty(&self, seg: u64) -> Result<(), StoreError> {
        if self.write(0, |t| t.remove_segment_if_empty(seg))? {
            self.inner.segs.remove(seg)?;
        }
        Ok(())
    }

    /// Remembers upload session `session`, whose rollback failed, to be ended later
    /// ([`Store::retry_failed_rollbacks`]). Returns whether it is remembered (otherwise the
    /// next start ends it).
    pub(crate) fn note_failed_rollback(&self, session: u64) -> bool {
        let mut failed = self.inner.failed_rollbacks.lock();
        if failed.contains(&session) {
            return true;
        }
        if failed.len() >= MAX_FAILED_ROLLBACKS {
            return false;
        }
        failed.push(session);
        true
    }

    /// Ends the upload sessions whose rollback failed (the index could not be written as they
    /// were given up, typically on a full disk): until then each kept its segment on the disk,
    /// the leaves it had committed counted as used and its dataset held. Before, they stayed
    /// until the next start (found by review). Holds the finish lock, as a rollback does; with
    /// `wait` false, a finish holding it means "not now". A session that fails again stays
    /// remembered for the next try.
    pub(crate) fn retry_failed_rollbacks(&self, wait: bool) -> Result<(), StoreError> {
        let sessions = self.inner.failed_rollbacks.lock().clone();
        if sessions.is_empty() {
            return Ok(());
        }
        let serial = if wait {
            self.inner.finish_lock.lock()
        } else {
            match self.inner.finish_lock.try_lock() {
                Some(g) => g,
                None => return Ok(()),
            }
        };
        let mut left = Vec::new();
        for session in sessions {
            left.extend(self.end_session(session)?);
            self.drop_upload_segment_if_empty(session)?;
            self.inner.failed_rollbacks.lock().retain(|s| *s != session);
            info!(session, "rolled back an upload whose rollback had failed");
        }
        drop(serial);
        for tree in left {
            self.finish_deleting(&tree)?;
        }
        Ok(())
    }

    /// Runs `f` in one write transaction and commits it. `own_reservation` is the caller's own
    /// quota reservation (excluded from the reservations `f`'s writes must fit beside).
    pub(crate) fn write<T>(
        &self,
        own_reservation: u64,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_consuming(own_reservation, Consume::Nothing, f)
    }

    /// [`Store::write`] for a transaction that stores blocks some reservation was held for:
    /// `consume` says which, and that much of it turns into used bytes with the commit, so
    /// that no quota check, here or in another thread, counts those bytes twice (used and
    /// still reserved) or not at all. The reservation is drawn down just before the commit, so
    /// also when the commit itself fails (it can only err towards giving room back); a
    /// transaction that fails before that leaves it as it was.
    pub(crate) fn write_consuming<T>(
        &self,
        own_reservation: u64,
        consume: Consume<'_>,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = self.write_txn(own_reservation, consume, f);
        if let Err(e) = &r {
            self.inner.note(e);
        }
        r
    }

    fn write_txn<T>(
        &self,
        own_reservation: u64,
        consume: Consume<'_>,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.inner.db()?;
        if self.inner.index_failed.load(Ordering::Acquire) {
            // Not reopened yet (the disk is still full): redb would only say "Previous I/O
            // error".
            return Err(StoreError::IndexUnavailable(
                "a write failed for want of disk space".into(),
            ));
        }
        let txn = db.begin_write()?;
        // Taken while holding the writer: every transaction numbered lower has ended.
        let seq = self.inner.write_seq.fetch_add(1, Ordering::Relaxed) + 1;
        // Read once this transaction holds the writer: a transaction committed before it has
        // moved what it consumed out of the reservations already. Downloads' reservations
        // count too, all but the one this transaction draws on: checked only before the bytes
        // were appended (`check_quota`), a put that raced a download's reservation could take
        // the room the download had been promised, and its last leaves were refused (review).
        let own_download = match &consume {
            Consume::Download { tree, .. } => self
                .inner
                .download_pools
                .lock()
                .by_tree
                .get(*tree)
                .map_or(0, |p| p.bytes),
            Consume::Nothing | Consume::Upload { .. } => 0,
        };
        let downloads = self
            .inner
            .download_reserved
            .load(Ordering::Relaxed)
            .saturating_sub(own_download);
        let reserved = self
            .inner
            .reserved
            .lock()
            .saturating_sub(own_reservation)
            .saturating_add(downloads);
        let quota = Quota {
            max: self.inner.cfg.quota_bytes,
            reserved,
        };
        let (out, used, dead) = {
            let mut t = Tables::open(&txn, quota)?;
            let out = f(&mut t)?;
            let used = t.used();
            // Taken inside the transaction: a segment sealed before it began can gain no new
            // pins, only lose them (see `SegPin`).
            let pinned = self.pinned();
            (out, used, t.finish(&pinned)?)
        };
        self.take_reserved(consume, seq);
        let committed = txn.commit();
        self.hook("write:committed");
        {
            let _reservations = self.inner.reserved.lock();
            let mut commits = self.inner.commits.lock();
            // The next writer may have committed and got here first: then its value stands.
            if committed.is_ok() && seq > commits.mirrored {
                self.inner.used.store(used, Ordering::Relaxed);
                commits.mirrored = seq;
                // `used` now counts what every transaction up to this one stored (those before
                // it ended before it began); what they took from a reservation is not pending
                // any more, whether their own update has run yet or not.
                let later = commits.pending.split_off(&(seq + 1));
                let done: u64 = std::mem::replace(&mut commits.pending, later)
                    .into_values()
                    .sum();
                self.inner.pending.fetch_sub(done, Ordering::Relaxed);
            } else if let Some(moved) = commits.pending.remove(&seq) {
                // Failed: what it took from a reservation is given back (room, not use).
                self.inner.pending.fetch_sub(moved, Ordering::Relaxed);
            }
        }
        committed?;
        for seg in dead {
            if let Err(e) = self.inner.segs.remove(seg) {
                warn!(seg, error = %e, "could not delete an empty segment");
            }
        }
        Ok(out)
    }

    /// Calls the test hook ([`StoreConfig::crash_hook`]), if any, at `point`.
    pub(crate) fn hook(&self, point: &'static str) {
        if let Some(h) = self.inner.cfg.crash_hook {
            h(point);
        }
    }

    /// The expiry (unix seconds, 0 = never) for a block stored now.
    pub(crate) fn expiry_from_now(&self) -> u64 {
        let ttl = self.inner.cfg.block_ttl.as_secs();
        if ttl == 0 {
            0
        } else {
            now_secs().saturating_add(ttl)
        }
    }

    /// Whether block `cid` is stored (the empty block always is).
    pub fn has_block(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.hook("has_block");
        if *cid == empty_block_cid() {
            return Ok(true);
        }
        let r = self.inner.db()?.begin_read()?;
        Ok(r.open_table(BLOCKS)?
            .get(cid.to_bytes().as_slice())?
            .is_some())
    }

    /// Reads block `cid`, verifying its bytes against the CID.
    pub fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        if *cid == empty_block_cid() {
            return Ok(Some(Block::from_parts_unchecked(*cid, Bytes::new())));
        }
        let r = self.inner.db()?.begin_read()?;
        self.block_in(&r.open_table(BLOCKS)?, cid)
    }

    /// Reads block `cid` through an open `blocks` table, verifying its bytes.
    fn block_in(
        &self,
        blocks: &redb::ReadOnlyTable<&'static [u8], BlockRow>,
        cid: &Cid,
    ) -> Result<Option<Block>, StoreError> {
        if *cid == empty_block_cid() {
            return Ok(Some(Block::from_parts_unchecked(*cid, Bytes::new())));
        }
        match blocks.get(cid.to_bytes().as_slice())? {
            Some(v) => self.read_verified(cid, BlockRec::from_tuple(v.value())),
            None => Ok(None),
        }
    }

    /// Reads the bytes `rec` locates and checks them against its checksum (or, for rows from
    /// before checksums, against `cid`). `None` when the bytes are gone because the block was
    /// deleted since `rec` was looked up (its segment file went with its last live block).
    pub(crate) fn read_verified(
        &self,
        cid: &Cid,
        rec: BlockRec,
    ) -> Result<Option<Block>, StoreError> {
        let mut rec = rec;
        let mut moves = 0;
        let data = loop {
            let len = rec.read_len()?;
            self.hook("read:looked-up");
            match self.inner.segs.read(rec.seg, rec.off, len) {
                Ok(d) => break d,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound
                    ) =>
                {
                    // Compaction may have copied the block elsewhere and deleted this segment
                    // since `rec` was read, or a delete dropped it and a put stored it again
                    // (into any open segment, an older one too; review): follow the row if it
                    // moved, a bounded number of times. A delete may have dropped the block
                    // and its segment meanwhile: it is not stored, and its bytes are not
                    // missing (before, such a read was reported corrupt; found by review).
                    match self.row_now(cid)? {
                        None => return Ok(None),
                        Some(now)
                            if (now.seg, now.off) != (rec.seg, rec.off)
                                && moves < MAX_READ_MOVES_FOLLOWED =>
                        {
                            moves += 1;
                            rec = now;
                            continue;
                        }
                        Some(_) => {}
                    }
                    warn!(%cid, error = %e, "block bytes missing from its segment");
                    return Err(StoreError::Corrupt { cid: *cid });
                }
                Err(e) => return Err(e.into()),
            }
        };
        checked_block(cid, &rec, data).map(Some).ok_or_else(|| {
            warn!(%cid, "stored block is corrupt; not serving it");
            StoreError::Corrupt { cid: *cid }
        })
    }

    /// The current row of block `cid`, if it is stored.
    fn row_now(&self, cid: &Cid) -> Result<Option<BlockRec>, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        Ok(r.open_table(BLOCKS)?
            .get(cid.to_bytes().as_slice())?
            .map(|v| BlockRec::from_tuple(v.value())))
    }

    fn with_misc<T>(
        &self,
        f: impl FnOnce(&mut SegmentWriter) -> Result<T, StoreError>,
    ) -> Result<(T, SegPin), StoreError> {
        self.with_shared(&self.inner.misc, WriteMode::Buffered, f)
    }

    /// The segments pinned now (see [`SegPin`]).
    pub(crate) fn pinned(&self) -> HashSet<u64> {
        self.inner.pins.lock().keys().copied().collect()
    }

    /// Runs `f` on a shared segment (creating it, or rolling it over at
    /// [`StoreConfig::segment_roll_bytes`]). The returned pin keeps the segment from being
    /// deleted until the caller has committed the rows of what `f` appended.
    fn with_shared<T>(
        &self,
        slot: &Mutex<Option<SegmentWriter>>,
        mode: WriteMode,
        f: impl FnOnce(&mut SegmentWriter) -> Result<T, StoreError>,
    ) -> Result<(T, SegPin), StoreError> {
        let mut seg = slot.lock();
        // Every put syncs what it appended before it commits, so a full segment is already
        // durable here.
        if seg
            .as_ref()
            .is_some_and(|w| w.len() >= self.inner.cfg.segment_roll_bytes.max(1))
            && let Some(old) = seg.take()
        {
            // A segment whose blocks were all deleted while it was being filled is deleted
            // now: nothing else would touch its row again. One with rows still to be committed
            // is only sealed; compaction deletes it later if it stays empty.
            let id = old.id();
            let dropped = self.write(0, |t| {
                if self.inner.pins.lock().contains_key(&id) {
                    t.seal_segment(id).map(|()| false)
                } else {
                    t.seal_or_drop_segment(id)
                }
            })?;
            drop(old);
            if dropped && let Err(e) = self.inner.segs.remove(id) {
                warn!(seg = id, error = %e, "could not delete an empty segment");
            }
        }
        if seg.is_none() {
            let id = self.write(0, |t| {
                let id = t.next_id()?;
                t.add_segment(id)?;
                Ok(id)
            })?;
            let w = self.inner.segs.create(id, mode)?;
            self.inner.segs.sync_dir()?;
            *seg = Some(w);
        }
        let Some(w) = seg.as_mut() else {
            return Err(StoreError::IndexDamaged("no shared segment"));
        };
        let (id, before) = (w.id(), w.len());
        let pin = SegPin::new(self, id);
        match f(w) {
            Ok(out) => Ok((out, pin)),
            Err(e) => {
                // An append or sync failed part-way (a full disk, typically). The writer's state
                // is unknown, so it is closed; the bytes past `before`, which no row names, are
                // cut off; the segment is sealed (the next put starts a new one). Earlier puts'
                // blocks, below `before`, are untouched.
                drop(seg.take());
                if let Err(t) = self.inner.segs.truncate(id, before) {
                    warn!(seg = id, error = %t, "could not cut a failed append off its segment");
                }
                if let Err(s) = self.write(0, |t| t.seal_segment(id)) {
                    debug!(seg = id, error = %s, "could not seal a segment after a failed append");
                }
                Err(e)
            }
        }
    }

    /// The slot of the shared segment for network leaves, or for single puts.
    pub(crate) fn shared_slot(&self, leaves: bool) -> &Mutex<Option<SegmentWriter>> {
        if leaves {
            &self.inner.leaves_seg
        } else {
            &self.inner.misc
        }
    }

    /// Deletes the open shared segment in `slot` if every block in it was deleted and it holds
    /// at least `min_bytes`; returns the bytes freed. Holding the slot stops appends meanwhile;
    /// a pinned segment is left alone.
    pub(crate) fn drop_dead_open_segment(
        &self,
        slot_is_leaves: bool,
        min_bytes: u64,
    ) -> Result<u64, StoreError> {
        let mut seg = self.shared_slot(slot_is_leaves).lock();
        let Some(w) = seg.as_ref() else {
            return Ok(0);
        };
        let (id, len) = (w.id(), w.len());
        if len < min_bytes {
            return Ok(0);
        }
        let dropped = self.write(0, |t| {
            if self.inner.pins.lock().contains_key(&id) {
                return Ok(false);
            }
            t.remove_segment_if_empty(id)
        })?;
        if !dropped {
            return Ok(0);
        }
        *seg = None;
        self.inner.segs.remove(id)?;
        Ok(len)
    }

    /// Seals the open shared segment in `slot` if it is worth compacting (mostly dead bytes,
    /// see `compact.rs`), so that the compaction pass calling this rewrites it; the next put
    /// opens a new one. Without this, the dead bytes of deleted downloads that share the open
    /// segment with kept ones stay on disk until it fills up (1 GiB by default). A segment with
    /// a put's rows still on their way (a pin) is left for the next pass, since its live bytes
    /// are not all counted yet. Returns whether it sealed one.
    ///
    /// The check is made on a read transaction first, so a pass with nothing to seal commits
    /// nothing (a commit syncs the index, and puts wait on the slot meanwhile).
    pub(crate) fn seal_open_if_worth_compacting(
        &self,
        slot_is_leaves: bool,
    ) -> Result<bool, StoreError> {
        let mut seg = self.shared_slot(slot_is_leaves).lock();
        let Some(w) = seg.as_ref() else {
            return Ok(false);
        };
        // Holding the slot, no put is appending, and each put synced what it appended before
        // it let go of the slot: nothing is staged, so the writer can go (as at a roll-over).
        debug_assert_eq!(w.staged(), 0, "a shared segment with unsynced bytes");
        let (id, size) = (w.id(), w.len());
        if size < crate::compact::COMPACT_MIN_DEAD_BYTES {
            return Ok(false);
        }
        let worth = |live| crate::compact::SegmentUse { id, live, size }.worth_compacting();
        let live = {
            let r = self.inner.db()?.begin_read()?;
            r.open_table(SEGMENTS)?.get(id)?.map_or(0, |v| v.value().0)
        };
        if !worth(live) || self.inner.pins.lock().contains_key(&id) {
            return Ok(false);
        }
        let sealed = self.write(0, |t| {
            // Checked again where it counts: a put may have committed rows since the read.
            if self.inner.pins.lock().contains_key(&id) || !worth(t.segment_live(id)?) {
                return Ok(false);
            }
            t.seal_segment(id)?;
            Ok(true)
        })?;
        if sealed {
            drop(seg.take());
        }
        Ok(sealed)
    }

    /// Moves what `consume` names out of its reservation into `pending` (just before the
    /// commit of transaction `seq`).
    fn take_reserved(&self, consume: Consume<'_>, seq: u64) {
        let inner = &self.inner;
        let mut uploads = inner.reserved.lock();
        let moved = match consume {
            Consume::Nothing => 0,
            Consume::Upload { bytes, taken } => {
                let m = bytes.min(*uploads);
                *uploads -= m;
                let a = &inner.upload_appended;
                a.store(
                    a.load(Ordering::Relaxed).saturating_sub(m),
                    Ordering::Relaxed,
                );
                taken.set(true);
                m
            }
            Consume::Download { tree, bytes } => {
                let mut pools = inner.download_pools.lock();
                let Some(pool) = pools.by_tree.get_mut(tree) else {
                    return;
                };
                let m = bytes.get().min(pool.bytes);
                pool.bytes -= m;
                inner.download_reserved.fetch_sub(m, Ordering::Relaxed);
                m
            }
        };
        if moved > 0 {
            inner.pending.fetch_add(moved, Ordering::Relaxed);
            inner.commits.lock().pending.insert(seq, moved);
        }
    }

    /// Whether `len` more bytes fit beside what is used and reserved, leaving out the download
    /// reservation of dataset `own_tree` (the room these bytes were reserved in).
    fn check_quota(&self, len: u64, own_tree: Option<&[u8]>) -> Result<(), StoreError> {
        let uploads = self.inner.reserved.lock();
        let own = own_tree
            .and_then(|t| {
                self.inner
                    .download_pools
                    .lock()
                    .by_tree
                    .get(t)
                    .map(|p| p.bytes)
            })
            .unwrap_or(0);
        let used = self.inner.taken(*uploads).saturating_sub(own);
        if used.saturating_add(len) > self.inner.cfg.quota_bytes {
            return Err(StoreError::QuotaExceeded {
                needed: len,
                used,
                quota: self.inner.cfg.quota_bytes,
            });
        }
        self.inner.disk_room(*uploads, len, own)
    }

    /// Whether the store's disk has room for `bytes` more of dataset `tree`'s download, beside
    /// the room kept for its index ([`MIN_DISK_HEADROOM`]) and what other uploads and downloads
    /// hold; also [`StoreError::DiskFull`] when blocks of this dataset were refused for want of
    /// disk since its download reserved its room. A download checks this before each run of
    /// blocks it asks for, so one that fills the disk stops asking.
    pub fn download_disk_room(&self, tree: &Cid, bytes: u64) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        let key = tree.to_bytes();
        let uploads = self.inner.reserved.lock();
        let own = self
            .inner
            .download_pools
            .lock()
            .by_tree
            .get(&key)
            .map_or(0, |p| p.bytes);
        if self.inner.disk_failures.lock().contains(&key) {
            return Err(StoreError::DiskFull {
                needed: bytes,
                free: 0,
            });
        }
        self.inner.disk_room(*uploads, bytes, own)
    }

    /// Remembers (or forgets) that blocks of dataset `key` were refused for want of disk.
    fn note_disk_failure(&self, key: &[u8], failed: bool) {
        let mut f = self.inner.disk_failures.lock();
        if failed {
            if f.len() < MAX_DISK_FAILURES {
                f.insert(key.to_vec());
            }
        } else if !f.is_empty() {
            f.remove(key);
        }
    }

    /// Stores a standalone block (refreshing its expiry if it is already stored). A manifest
    /// block is also listed as a dataset. Returns whether the block was new.
    pub fn put_block(&self, block: &Block) -> Result<bool, StoreError> {
        self.hook("put_block");
        let cid = *block.cid();
        if cid == empty_block_cid() {
            return Ok(false);
        }
        check_block_len(block.data().len())?;
        let manifest = if cid.codec() == Codec::Manifest.code() {
            Some(Manifest::from_block(block)?)
        } else {
            None
        };
        let key = cid.to_bytes();
        if let Some(m) = &manifest {
            self.finish_deleting(&m.tree_cid.to_bytes())?;
            // Refused before its bytes are appended; the transaction checks again.
            self.check_manifest_count(&key, m)?;
        }
        let expiry = self.expiry_from_now();
        // A block found stored is not appended again; if it is deleted before the transaction
        // below, the put goes round once more and appends it after all (`force`).
        let mut force = false;
        loop {
            if let Some(new) = self.put_block_once(block, &key, manifest.as_ref(), expiry, force)? {
                return Ok(new);
            }
            if force {
                return Err(StoreError::IndexDamaged("a block appended is not stored"));
            }
            force = true;
        }
    }

    /// [`StoreError::ManifestConflict`] when manifest `m` (CID bytes `key`), not listed yet,
    /// names a dataset whose tree is stored with another leaf count (`Tables::add_manifest`).
    fn check_manifest_count(&self, key: &[u8], m: &Manifest) -> Result<(), StoreError> {
        let r = self.inner.db()?.begin_read()?;
        if r.open_table(MANIFESTS)?.get(key)?.is_some() {
            return Ok(());
        }
        let tree = m.tree_cid.to_bytes();
        let Some(ds) = r
            .open_table(DATASETS)?
            .get(tree.as_slice())?
            .map(|v| DatasetRec::from_tuple(v.value()))
            .filter(|d| d.state != DS_DELETING)
        else {
            return Ok(());
        };
        let trees = r.open_table(TREES)?;
        if has_tree(&trees, &tree)? {
            check_manifest_count(&trees, &tree, m.blocks_count(), ds.nleaves)?;
        }
        Ok(())
    }

    /// One try of [`Store::put_block`]: `None` when the block was found stored (nothing
    /// appended) but was gone by the time of the transaction, which then changed nothing.
    /// With `force` the block is appended whether it is stored or not, and this cannot happen.
    fn put_block_once(
        &self,
        block: &Block,
        key: &[u8],
        manifest: Option<&Manifest>,
        expiry: u64,
        force: bool,
    ) -> Result<Option<bool>, StoreError> {
        let cid = *block.cid();
        // The pin lives until the row is committed below.
        let (loc, _pin) = if !force && self.has_block(&cid)? {
            (None, None)
        } else {
            self.check_quota(block.data().len() as u64, None)?;
            self.hook("put_block:checked");
            let (loc, pin) = self.with_misc(|w| {
                let off = w.append(block.data())?;
                w.sync()?;
                Ok(Loc {
                    seg: w.id(),
                    off,
                    len: block.data().len() as u64,
                    checksum: checksum(block.data()),
                })
            })?;
            (Some(loc), Some(pin))
        };
        self.hook("put_block:checked");
        self.write(0, |t| {
            if loc.is_none() && t.get_block(key)?.is_none() {
                // Deleted (or expired) since the look-up: nothing here holds its bytes.
                return Ok(None);
            }
            let new = t.add_ref(key, loc, true, expiry)?;
            if let Some(m) = manifest {
                t.add_manifest(key, &m.tree_cid.to_bytes(), m.blocks_count())?;
            }
            Ok(Some(new))
        })
    }

    /// Stores leaves of dataset `tree` delivered with their proofs (network downloads). The
    /// proofs were checked when each [`VerifiedLeaf`] was made; a leaf of another dataset is
    /// refused, and so are leaves of a dataset that is not stored ([`StoreError::DatasetNotStored`]:
    /// its manifest must be stored first, and a dataset deleted while it downloads takes no more
    /// leaves). Leaves already stored are skipped.
    pub fn put_leaves(&self, tree: &Cid, leaves: &[VerifiedLeaf]) -> Result<(), StoreError> {
        let r = self.put_leaves_inner(tree, leaves);
        match &r {
            Ok(()) => self.note_disk_failure(&tree.to_bytes(), false),
            Err(e) if e.is_disk_full() => self.note_disk_failure(&tree.to_bytes(), true),
            Err(_) => {}
        }
        r
    }

    fn put_leaves_inner(&self, tree: &Cid, leaves: &[VerifiedLeaf]) -> Result<(), StoreError> {
        self.hook("put_leaves");
        if let Some(other) = leaves.iter().find(|l| l.tree() != tree) {
            return Err(StoreError::LeafOfAnotherDataset {
                tree: Box::new(*tree),
                leaf_tree: Box::new(*other.tree()),
                index: other.index(),
            });
        }
        for leaf in leaves {
            check_block_len(leaf.block().data().len())?;
        }
        // A block found stored is not appended again; if it is deleted (its dataset reclaimed)
        // before the transaction, the put goes round once more and appends every leaf's bytes
        // (`force`).
        let mut force = false;
        loop {
            if self.put_leaves_once(tree, leaves, force)? {
                return Ok(());
            }
            if force {
                return Err(StoreError::IndexDamaged("a block appended is not stored"));
            }
            force = true;
        }
    }

    /// One try of [`Store::put_leaves`]: `false` when a block found stored (nothing appended)
    /// was gone by the time of the transaction, which then changed nothing. With `force` every
    /// leaf's bytes are appended, and this cannot happen.
    fn put_leaves_once(
        &self,
        tree: &Cid,
        leaves: &[VerifiedLeaf],
        force: bool,
    ) -> Result<bool, StoreError> {
        let tree_key = tree.to_bytes();
        let not_stored = || StoreError::DatasetNotStored {
            tree: Box::new(*tree),
        };
        // Only bytes not stored yet are appended and counted against the quota: a leaf already
        // in the index, or a block another dataset holds, costs no disk.
        let mut new_bytes = 0u64;
        let needs_data: Vec<bool> = {
            let r = self.inner.db()?.begin_read()?;
            if !dataset_takes_leaves(&r, &tree_key)? {
                return Err(not_stored());
            }
            let stored_leaves = r.open_table(LEAVES)?;
            let blocks = r.open_table(BLOCKS)?;
            let mut out = Vec::with_capacity(leaves.len());
            for leaf in leaves {
                let have_leaf = stored_leaves
                    .get((tree_key.as_slice(), leaf.index()))?
                    .is_some();
                let have_block = blocks
                    .get(leaf.block().cid().to_bytes().as_slice())?
                    .is_some();
                let new = !have_leaf && !have_block;
                if new {
                    new_bytes += leaf.block().data().len() as u64;
                }
                out.push(new || force);
            }
            out
        };
        let mut locs: Vec<Option<Loc>> = vec![None; leaves.len()];
        // The pin lives until the rows are committed below.
        let mut _pin = None;
        if needs_data.contains(&true) {
            self.check_quota(new_bytes, Some(&tree_key))?;
            let ((), pin) = self.with_shared(&self.inner.leaves_seg, WriteMode::Bulk, |w| {
                for ((leaf, need), loc) in leaves.iter().zip(&needs_data).zip(&mut locs) {
                    if *need {
                        let block = leaf.block();
                        let off = w.append(block.data())?;
                        *loc = Some(Loc {
                            seg: w.id(),
                            off,
                            len: block.data().len() as u64,
                            checksum: checksum(block.data()),
                        });
                    }
                }
                w.sync()?;
                Ok(())
            })?;
            _pin = Some(pin);
        }
        self.hook("put_leaves:checked");
        // Bytes of the leaves this transaction stores (whether their data is new): what the
        // download's reservation was held for, drawn down with the commit.
        let stored_bytes = std::cell::Cell::new(0);
        let consume = Consume::Download {
            tree: &tree_key,
            bytes: &stored_bytes,
        };
        self.write_consuming(0, consume, |t| {
            // Checked again where it counts: a delete may have come since the read above (the
            // bytes appended meanwhile are dead and compaction frees them).
            if t.get_dataset(&tree_key)?
                .is_none_or(|d| d.state == DS_DELETING)
            {
                return Err(not_stored());
            }
            let mut todo = Vec::with_capacity(leaves.len());
            for (leaf, loc) in leaves.iter().zip(&locs) {
                if t.leaves.get((tree_key.as_slice(), leaf.index()))?.is_some() {
                    continue;
                }
                let cid = leaf.block().cid().to_bytes();
                if loc.is_none() && t.get_block(&cid)?.is_none() {
                    // Found stored by the read above, deleted since: nothing here holds its
                    // bytes. Nothing has been changed yet.
                    return Ok(false);
                }
                todo.push((leaf, cid, *loc));
            }
            for (leaf, cid, loc) in todo {
                let key = (tree_key.as_slice(), leaf.index());
                if t.leaves.get(key)?.is_some() {
                    continue; // the same leaf twice in one call
                }
                t.add_ref(&cid, loc, false, 0)?;
                t.leaves.insert(key, (cid.as_slice(), &[][..]))?;
                // Until the dataset's tree is stored (`settle_tree`), the proof it came with.
                t.proofs.insert(key, &leaf.proof().encode()[..])?;
                stored_bytes.set(stored_bytes.get() + leaf.block().data().len() as u64);
            }
            Ok(true)
        })
    }

    /// Whether leaf `index` of dataset `tree` is stored.
    pub fn has_leaf(&self, tree: &Cid, index: u64) -> Result<bool, StoreError> {
        self.hook("has_leaf");
        let key = tree.to_bytes();
        let r = self.inner.db()?.begin_read()?;
        if !dataset_active(&r, &key)? {
            return Ok(false);
        }
        Ok(r.open_table(LEAVES)?
            .get((key.as_slice(), index))?
            .is_some())
    }

    /// The first index in `indices` whose leaf of dataset `tree` is not stored, or `None` when
    /// all are: one read transaction and one range scan of the leaf index, however long the
    /// range (a download checks its whole dataset this way when it ends), or a single seek when
    /// the dataset's tree is kept (it is then whole).
    pub fn first_missing_leaf(
        &self,
        tree: &Cid,
        indices: std::ops::Range<u64>,
    ) -> Result<Option<u64>, StoreError> {
        if indices.is_empty() {
            return Ok(None);
        }
        let key = tree.to_bytes();
        let r = self.inner.db()?.begin_read()?;
        let Some(ds) = active_dataset(&r, &key)? else {
            return Ok(Some(indices.start));
        };
        // An active dataset whose tree is kept is whole: an upload's own dataset turns active
        // with its last leaf, an upload into a dataset stored in part already stores the tree
        // with its last leaf, a download once it holds every leaf, and leaves only go when the
        // whole dataset is deleted.
        if indices.end <= ds.nleaves && has_tree(&r.open_table(TREES)?, &key)? {
            return Ok(None);
        }
        let leaves = r.open_table(LEAVES)?;
        let mut expected = indices.start;
        for entry in leaves.range((key.as_slice(), indices.start)..(key.as_slice(), indices.end))? {
            let (k, _) = entry?;
            if k.value().1 != expected {
                return Ok(Some(expected));
            }
            expected += 1;
        }
        Ok((expected < indices.end).then_some(expected))
    }

    /// Reserves room for the leaves `indices` of dataset `tree` that are not stored yet, at
    /// `block_size` bytes each: the first thing a download does, so that a client hears "no
    /// room" at once ([`StoreError::QuotaExceeded`]) instead of after most of the bytes went by,
    /// and so that downloads and uploads running at the same time cannot each take part of the
    /// same free space and all fail. The room counts as used for every other download and
    /// upload (not for this download's own leaves) until the [`Reservation`] shrinks or is
    /// dropped. Refuses a dataset that is not stored ([`StoreError::DatasetNotStored`]). One
    /// scan of the range's leaf rows, or a single seek for a dataset whose tree is kept (it is
    /// then whole and needs no room).
    pub fn reserve_room(
        &self,
        tree: &Cid,
        indices: std::ops::Range<u64>,
        block_size: u64,
    ) -> Result<Reservation, StoreError> {
        let key = tree.to_bytes();
        let r = self.inner.db()?.begin_read()?;
        let Some(ds) = r
            .open_table(DATASETS)?
            .get(key.as_slice())?
            .map(|v| DatasetRec::from_tuple(v.value()))
            .filter(|d| d.state != DS_DELETING)
        else {
            return Err(StoreError::DatasetNotStored {
                tree: Box::new(*tree),
            });
        };
        // A dataset whose tree is kept is whole (see `first_missing_leaf`): nothing to count.
        let whole = ds.state == DS_ACTIVE
            && indices.end <= ds.nleaves
            && has_tree(&r.open_table(TREES)?, &key)?;
        let leaves = r.open_table(LEAVES)?;
        // Leaves of `range` not stored, at the block size.
        let missing_bytes = |range: &std::ops::Range<u64>| -> Result<u64, StoreError> {
            let all = range.end.saturating_sub(range.start);
            if all == 0 || whole {
                return Ok(0);
            }
            let mut stored = 0u64;
            for entry in leaves.range((key.as_slice(), range.start)..(key.as_slice(), range.end))? {
                entry?;
                stored += 1;
            }
            Ok((all - stored.min(all)).saturating_mul(block_size))
        };
        let needed = missing_bytes(&indices)?;
        // Downloads of the same dataset share its pool: a request adds the room of the leaves
        // it lacks outside the ranges the pool already holds room for (a second request for
        // the same blocks needs no more; one for other blocks of the dataset needs theirs).
        // The ranges are read here and checked again under the lock below: if another request
        // changed them meanwhile, this one counts again.
        let mut add = None;
        for _ in 0..POOL_RECOUNTS {
            let covered = {
                let _uploads = self.inner.reserved.lock();
                let pools = self.inner.download_pools.lock();
                pools.by_tree.get(&key).map(|p| p.ranges.clone())
            };
            let Some(covered) = covered else {
                add = Some((None, needed));
                break;
            };
            let Some(gaps) = uncovered(&indices, &covered) else {
                break; // too many ranges to follow: the old rule below
            };
            let mut bytes = 0u64;
            for gap in &gaps {
                bytes = bytes.saturating_add(missing_bytes(gap)?);
            }
            add = Some((Some(covered), bytes));
            let _uploads = self.inner.reserved.lock();
            let pools = self.inner.download_pools.lock();
            if pools.by_tree.get(&key).map(|p| &p.ranges) == add.as_ref().and_then(|a| a.0.as_ref())
            {
                break;
            }
            add = None;
        }
        drop(leaves);
        drop(r);
        let uploads = self.inner.reserved.lock();
        let mut pools = self.inner.download_pools.lock();
        let held = pools.by_tree.get(&key).map_or(0, |p| p.bytes);
        let current = pools.by_tree.get(&key).map(|p| p.ranges.clone());
        let add = match add {
            // Counted against the ranges the pool still has.
            Some((counted, bytes)) if counted == current => bytes,
            // The ranges moved on every count, or are too many to follow: only what the pool
            // does not hold at all (as before ranges were kept).
            _ => needed.saturating_sub(held),
        };
        self.inner.fits(*uploads, add)?;
        // The whole of what it lacks fits on the disk now: a refusal before no longer stands.
        if self.inner.disk_room(*uploads, needed, held).is_ok() {
            self.inner.disk_failures.lock().remove(&key);
        }
        // Changed only under the uploads' lock, so checks and reservations do not interleave.
        if needed == 0 && held == 0 && !pools.by_tree.contains_key(&key) {
            return Ok(Reservation {
                store: self.clone(),
                tree: key,
                id: None,
            });
        }
        pools.next_id += 1;
        let next_id = pools.next_id;
        let pool = pools.by_tree.entry(key.clone()).or_insert(Pool {
            id: next_id,
            bytes: 0,
            holders: 0,
            ranges: Vec::new(),
        });
        pool.bytes += add;
        pool.holders += 1;
        add_range(&mut pool.ranges, indices);
        let id = pool.id;
        self.inner
            .download_reserved
            .fetch_add(add, Ordering::Relaxed);
        Ok(Reservation {
            store: self.clone(),
            tree: key,
            id: Some(id),
        })
    }

    /// Removes manifest `manifest_cid` if its dataset is bare: listed but without a single leaf
    /// stored, and no download holds room for it. A download refused for want of room leaves
    /// nothing listed this way, instead of a dataset that shows its full size but has no byte
    /// of it. Returns whether it was removed.
    pub fn forget_bare(&self, manifest_cid: &Cid) -> Result<bool, StoreError> {
        let key = manifest_cid.to_bytes();
        let inner = &self.inner;
        self.write(0, |t| {
            let Some(tree) = t.manifest_tree(&key)? else {
                return Ok(false);
            };
            let has_leaf = t
                .leaves
                .range((tree.as_slice(), 0)..=(tree.as_slice(), u64::MAX))?
                .next()
                .is_some();
            // Lock order as in every write: the writer, then the reservations.
            let downloading = {
                let _uploads = inner.reserved.lock();
                inner.download_pools.lock().by_tree.contains_key(&tree)
            };
            if has_leaf || downloading {
                return Ok(false);
            }
            t.remove_manifest(&key)
        })
    }

    /// Whether dataset `tree` takes leaves: listed, or being written by an upload (not deleted,
    /// not unknown). A download checks this as it goes, and stops when the dataset was deleted.
    pub fn dataset_stored(&self, tree: &Cid) -> Result<bool, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        dataset_takes_leaves(&r, &tree.to_bytes())
    }

    /// Keeps the tree of dataset `tree` once, now that every leaf is stored, and drops the
    /// proofs its leaves were downloaded with (about 520 bytes per leaf at 1 GiB, against 64
    /// bytes per leaf for the tree; see the `trees` module). The tree is rebuilt from the stored
    /// leaves and must have `tree` as its root. Returns the number of proofs dropped: 0 when the
    /// dataset is not active, not complete or already kept this way, or when it changed between
    /// the read of its leaves and the transaction that would store the tree (the next call, or
    /// the next maintenance pass, settles it). Safe beside anything else: the tree is written
    /// before any proof goes, each batch is its own transaction, and it stops when the dataset
    /// is being deleted or is no longer whole (deleted and listed again meanwhile: each
    /// transaction checks the dataset is active with its tree stored, and the tree is stored
    /// only while every leaf is).
    pub fn settle_tree(&self, tree: &Cid) -> Result<u64, StoreError> {
        self.hook("settle_tree");
        let key = tree.to_bytes();
        let (mut digests, generation, mut candidates, claims, any_claims) = {
            let r = self.inner.db()?.begin_read()?;
            let Some(ds) = active_dataset(&r, &key)? else {
                return Ok(0);
            };
            let generation = r
                .open_table(GENERATIONS)?
                .get(key.as_slice())?
                .map_or(0, |v| v.value());
            let range = (key.as_slice(), 0)..(key.as_slice(), ds.nleaves);
            let leaves = r.open_table(LEAVES)?;
            // Nothing to do (the usual case when a stored dataset is streamed again) costs two
            // seeks, not a scan: no downloaded proof waits, and the first row has no inline
            // one (old rows come whole datasets at a time).
            let waiting = r.open_table(PROOFS)?.range(range.clone())?.next().is_some();
            let first_inline = leaves
                .get((key.as_slice(), 0))?
                .is_some_and(|v| !v.value().1.is_empty());
            if !waiting && !first_inline {
                return Ok(0);
            }
            // The leaf counts disagreeing manifests claim (`Tables::add_manifest`): the row's
            // count is then the largest, and the dataset may be whole at a smaller one.
            let mut claims = match r.open_table(COUNTS) {
                Ok(counts) => claimed_counts(&counts, &key)?,
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            // Bounded by what is stored: the scan stops at the first missing leaf.
            let mut digests = Vec::new();
            for entry in leaves.range(range)? {
                let (k, v) = entry?;
                if k.value().1 != digests.len() as u64 {
                    break;
                }
                let cid = cid_from_bytes(v.value().0)
                    .map_err(|_| StoreError::IndexDamaged("leaf CID"))?;
                digests.push(cid_digest(&cid).map_err(|_| StoreError::IndexDamaged("leaf CID"))?);
            }
            let held = digests.len() as u64;
            // The counts the stored leaves could make the tree with: the row's when no claims
            // are kept; else each claim the leaves reach, and if a claim was not kept (the
            // real count may be that one) the number held. Smallest first; tried largest
            // first.
            let any_claims = !claims.is_empty();
            let not_kept = claims.contains(&COUNT_NOT_KEPT);
            claims.retain(|&c| c != COUNT_NOT_KEPT && c <= held);
            let mut candidates = claims.clone();
            if not_kept || (!any_claims && held == ds.nleaves) {
                candidates.push(held);
            }
            candidates.retain(|&c| c > 0);
            candidates.sort_unstable();
            candidates.dedup();
            if candidates.is_empty() {
                return Ok(0);
            }
            (digests, generation, candidates, claims, any_claims)
        };
        // Each count tried is a tree built: the largest from the digests themselves, a smaller
        // one from the leaves of the last tree that failed.
        let mut proven = None;
        let mut failed: Option<CodexTree> = None;
        let mut disproven = Vec::new();
        while let Some(count) = candidates.pop() {
            let Ok(n) = usize::try_from(count) else {
                continue;
            };
            let leaves = match &failed {
                Some(t) => t.leaves().get(..n).map(<[_]>::to_vec),
                None if n <= digests.len() => {
                    digests.truncate(n);
                    Some(std::mem::take(&mut digests))
                }
                None => None,
            }
            .ok_or(StoreError::IndexDamaged(
                "a leaf count past the leaves held",
            ))?;
            let built = CodexTree::new(leaves)?;
            if built.cid() == *tree {
                proven = Some(built);
                break;
            }
            if claims.contains(&count) {
                disproven.push(count);
            }
            failed = Some(built);
        }
        drop((digests, failed));
        let Some(built) = proven else {
            // A claimed count the stored leaves reach but do not make the tree with is wrong
            // for good (the leaves below it are fixed by the tree): it is not tried again.
            if !disproven.is_empty() {
                self.write(0, |t| {
                    for c in &disproven {
                        t.counts.remove((key.as_slice(), *c))?;
                    }
                    Ok(())
                })?;
            }
            // With no claims, the leaves (each checked against the tree when stored) should
            // make the tree with the row's count: they do not.
            if !any_claims {
                return Err(StoreError::IndexDamaged(
                    "the stored leaves do not make their dataset's tree",
                ));
            }
            return Ok(0);
        };
        let nleaves = built.leaves_count();
        // The dataset may have been deleted, reclaimed, listed again and downloaded in part
        // since the read (or between two batches below): each transaction acts only on a
        // dataset that is whole now. An active dataset with a stored tree is whole (see
        // `first_missing_leaf`); one without gets the tree only if every leaf is still stored.
        // Before, only "active" was checked, and a newer partial copy of the dataset got the
        // tree or lost its proofs (found by review).
        //
        // "Every leaf is still stored" is known without looking at the leaves: the read above
        // saw all of them, and the dataset's generation changes in every transaction that may
        // remove one of its leaf rows, marks it deleting or creates its row
        // (`Tables::dataset_generation`). The same generation now means the same dataset, not
        // a copy listed again, and no leaf gone since: two seeks under the writer. Before, the
        // transaction scanned every leaf key again, about a million at 64 GiB (0.3 s) while
        // every other write of the store waited. A copy listed again (a new generation) is not
        // settled here even if it is whole by now: the next call settles it.
        let active = |t: &Tables<'_>| -> Result<Option<DatasetRec>, StoreError> {
            Ok(t.get_dataset(&key)?.filter(|d| d.state == DS_ACTIVE))
        };
        self.hook("settle_tree:read");
        let go = self.write(0, |t| {
            if active(t)?.is_none() {
                return Ok(false);
            }
            if !has_tree(&t.trees, &key)? {
                if t.dataset_generation(&key)? != generation {
                    return Ok(false);
                }
                put_tree(&mut t.trees, &key, &built)?;
            }
            // The row's count may have been a made-up manifest's claim (`Tables::add_manifest`);
            // the tree is what the leaves make.
            t.count_proven(&key, nleaves)?;
            Ok(true)
        })?;
        drop(built);
        let mut dropped = 0;
        let mut start = 0;
        while go && start < nleaves {
            let end = (start + SETTLE_BATCH).min(nleaves);
            let done = self.write(0, |t| {
                // The tree goes with the dataset's last leaf when it is reclaimed: a copy listed
                // again since has none until it is whole.
                if active(t)?.is_none() || !has_tree(&t.trees, &key)? {
                    return Ok(None);
                }
                let range = (key.as_slice(), start)..(key.as_slice(), end);
                let mut n = 0;
                t.proofs.retain_in(range.clone(), |_, _| {
                    n += 1;
                    false
                })?;
                // Rows from before proofs moved out of them.
                let mut inline = Vec::new();
                for entry in t.leaves.range(range)? {
                    let (k, v) = entry?;
                    if !v.value().1.is_empty() {
                        inline.push((k.value().1, v.value().0.to_vec()));
                    }
                }
                for (index, cid) in &inline {
                    t.leaves
                        .insert((key.as_slice(), *index), (cid.as_slice(), &[][..]))?;
                }
                Ok(Some(n + inline.len() as u64))
            })?;
            let Some(n) = done else { break };
            dropped += n;
            start = end;
        }
        Ok(dropped)
    }

    /// Reads leaf `index` of dataset `tree` with its proof, verifying the block bytes.
    pub fn get_leaf(
        &self,
        tree: &Cid,
        index: u64,
    ) -> Result<Option<(Block, CodexProof)>, StoreError> {
        self.get_leaves(tree, &[index])?.pop().unwrap_or(Ok(None))
    }

    /// Reads leaves `indices` of dataset `tree` with their proofs, verifying each block's bytes,
    /// all in one read transaction (the serving path reads a message's worth at a time). One
    /// result per index, in order: a leaf that is missing is `Ok(None)`, one that cannot be read
    /// is its own error and does not hide the others. The outer error is a failure of the index
    /// itself.
    #[allow(clippy::type_complexity)]
    pub fn get_leaves(
        &self,
        tree: &Cid,
        indices: &[u64],
    ) -> Result<Vec<Result<Option<(Block, CodexProof)>, StoreError>>, StoreError> {
        self.get_leaves_within(tree, indices, u64::MAX)
    }

    /// [`Store::get_leaves`] for the first of `indices` whose blocks add up to `max_bytes`:
    /// leaves are read in order while the bytes read so far are below `max_bytes`, so the
    /// answer is a prefix of one result per index, at least one long, that passes `max_bytes`
    /// by one block at most. The serving path holds what it reads until it is sent, and a
    /// message's worth of addresses can name blocks of any size (up to
    /// [`crate::MAX_BLOCK_BYTES`] each): the count alone did not bound it (review).
    #[allow(clippy::type_complexity)]
    pub fn get_leaves_within(
        &self,
        tree: &Cid,
        indices: &[u64],
        max_bytes: u64,
    ) -> Result<Vec<Result<Option<(Block, CodexProof)>, StoreError>>, StoreError> {
        self.hook("get_leaves");
        let key = tree.to_bytes();
        let r = self.inner.db()?.begin_read()?;
        let Some(ds) = active_dataset(&r, &key)? else {
            return Ok(indices.iter().map(|_| Ok(None)).collect());
        };
        let leaves = r.open_table(LEAVES)?;
        let blocks = r.open_table(BLOCKS)?;
        let proofs = r.open_table(PROOFS)?;
        let trees = r.open_table(TREES)?;
        // Leaves stored without a proof take it from `proofs` or the dataset's tree.
        let mut tree_proofs = ProofSource::new(&trees, &key, ds.nleaves);
        // First every leaf's row, proof and place; then the bytes, a run of blocks stored one
        // after the other at a time ([`Store::read_runs`]).
        let mut look_up = |index: u64| -> Result<Option<(Cid, BlockRec, CodexProof)>, StoreError> {
            let Some(v) = leaves.get((key.as_slice(), index))? else {
                return Ok(None);
            };
            let (cid, proof) = v.value();
            let cid = cid_from_bytes(cid).map_err(|_| StoreError::IndexDamaged("leaf CID"))?;
            let decode = |p: &[u8]| {
                CodexProof::decode(p).map_err(|_| StoreError::IndexDamaged("stored proof"))
            };
            let proof = if !proof.is_empty() {
                decode(proof)?
            } else if let Some(p) = proofs.get((key.as_slice(), index))? {
                decode(p.value())?
            } else {
                tree_proofs.proof(index)?
            };
            let Some(row) = blocks.get(cid.to_bytes().as_slice())? else {
                return Err(StoreError::IndexDamaged("leaf names a missing block"));
            };
            Ok(Some((cid, BlockRec::from_tuple(row.value()), proof)))
        };
        let mut looked = Vec::with_capacity(indices.len());
        let mut bytes = 0u64;
        for &i in indices {
            if bytes >= max_bytes && !looked.is_empty() {
                break;
            }
            let l = look_up(i);
            if let Ok(Some((_, rec, _))) = &l {
                bytes = bytes.saturating_add(rec.len);
            }
            looked.push(l);
        }
        drop(r);
        let mut proofs: Vec<Option<CodexProof>> = Vec::with_capacity(looked.len());
        let mut wanted = Vec::with_capacity(looked.len());
        for l in looked {
            match l {
                Ok(Some((cid, rec, proof))) => {
                    proofs.push(Some(proof));
                    wanted.push(Ok(Some((cid, rec))));
                }
                Ok(None) => {
                    proofs.push(None);
                    wanted.push(Ok(None));
                }
                Err(e) => {
                    proofs.push(None);
                    wanted.push(Err(e));
                }
            }
        }
        Ok(self
            .read_runs(wanted)
            .into_iter()
            .zip(proofs)
            .map(|(read, proof)| match (read, proof) {
                (Ok(Some(block)), Some(proof)) => Ok(Some((block, proof))),
                (Ok(_), _) => Ok(None),
                (Err(e), _) => Err(e),
            })
            .collect())
    }

    /// Reads the blocks `wanted` (looked up in an earlier read transaction), verified, in
    /// order; `Ok(None)` stays `None` and an error stays that error. Blocks stored one after
    /// the other in one segment (a dataset's leaves, as an upload or a download wrote them) are
    /// read together, up to [`MAX_SPAN_BYTES`] at a time ([`Segments::read_span`]: one read,
    /// direct where the file system allows). A run whose read fails, or any block of it that
    /// fails its check, is read again on its own by [`Store::read_verified`], which follows a
    /// block that compaction moved, reports one that a delete dropped as not stored, and logs
    /// a corrupt one.
    fn read_runs(
        &self,
        wanted: Vec<Result<Option<(Cid, BlockRec)>, StoreError>>,
    ) -> Vec<Result<Option<Block>, StoreError>> {
        let mut out: Vec<Result<Option<Block>, StoreError>> = Vec::with_capacity(wanted.len());
        let mut run: Vec<(Cid, BlockRec)> = Vec::new();
        for w in wanted {
            let next = match w {
                Ok(Some((cid, rec))) => match rec.read_len() {
                    Ok(_) => Some((cid, rec)),
                    Err(e) => {
                        self.flush_run(&mut run, &mut out);
                        out.push(Err(e));
                        continue;
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    self.flush_run(&mut run, &mut out);
                    out.push(Err(e));
                    continue;
                }
            };
            match next {
                Some((cid, rec)) => {
                    let joins = run.last().is_some_and(|(_, last)| {
                        last.seg == rec.seg
                            && last.off.checked_add(last.len) == Some(rec.off)
                            && rec
                                .off
                                .checked_add(rec.len)
                                .is_some_and(|end| end - run[0].1.off <= MAX_SPAN_BYTES)
                    });
                    if !joins {
                        self.flush_run(&mut run, &mut out);
                    }
                    run.push((cid, rec));
                }
                None => {
                    self.flush_run(&mut run, &mut out);
                    out.push(Ok(None));
                }
            }
        }
        self.flush_run(&mut run, &mut out);
        out
    }

    /// Reads the blocks of `run` (adjacent in one segment), verified, onto `out`; empties `run`.
    fn flush_run(
        &self,
        run: &mut Vec<(Cid, BlockRec)>,
        out: &mut Vec<Result<Option<Block>, StoreError>>,
    ) {
        match run.len() {
            0 => return,
            1 => {
                let (cid, rec) = run[0];
                // `None`: the dataset was reclaimed since the lookup, and the block's segment
                // with it: the leaf is not stored any more.
                out.push(self.read_verified(&cid, rec));
            }
            _ => {
                let first = run[0].1;
                let span = run
                    .last()
                    .map_or(0, |(_, last)| last.off + last.len - first.off);
                self.hook("read:looked-up");
                let read = usize::try_from(span)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
                    .and_then(|span| self.inner.segs.read_span(first.seg, first.off, span));
                for (cid, rec) in run.iter() {
                    let checked = read.as_ref().ok().and_then(|bytes| {
                        let from = usize::try_from(rec.off - first.off).ok()?;
                        let to = from.checked_add(usize::try_from(rec.len).ok()?)?;
                        checked_block(cid, rec, bytes.slice(from..to))
                    });
                    out.push(match checked {
                        Some(block) => Ok(Some(block)),
                        None => {
                            if read.is_ok() {
                                // Read alone below, where a bad block is logged; one that is
                                // good there was bad in the span read (review: unlogged).
                                debug!(%cid, seg = rec.seg, off = rec.off, "a block of a span read failed its check; reading it alone");
                            }
                            self.read_verified(cid, *rec)
                        }
                    });
                }
            }
        }
        run.clear();
    }

    /// Reads and decodes manifest `cid`, if stored.
    pub fn get_manifest(&self, cid: &Cid) -> Result<Option<Manifest>, StoreError> {
        if cid.codec() != Codec::Manifest.code() {
            return Ok(None);
        }
        match self.get_block(cid)? {
            Some(block) => Ok(Some(Manifest::from_block(&block)?)),
            None => Ok(None),
        }
    }

    /// Every listed dataset: manifest CID and manifest. A manifest that cannot be read is
    /// skipped with a warning (one damaged entry does not hide the others).
    pub fn list_manifests(&self) -> Result<Vec<(Cid, Manifest)>, StoreError> {
        Ok(self.manifest_page(None, usize::MAX)?.manifests)
    }

    /// The listed datasets after the key `after` in the store's order (from the first when
    /// `None`), looking at up to `limit` of them, as [`Store::list_manifests`]. A caller that
    /// pages through with each page's [`ManifestPage::next`] meets every dataset listed the
    /// whole time once, and holds one page at a time, not every manifest of the node. A page
    /// may hold fewer manifests than it looked at (one deleted meanwhile, or unreadable):
    /// only a page that looked at fewer than `limit` is the last (review: a damaged manifest
    /// ended every re-announce round at its page).
    pub fn manifest_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ManifestPage, StoreError> {
        let keys: Vec<Vec<u8>> = {
            let r = self.inner.db()?.begin_read()?;
            let m = r.open_table(MANIFESTS)?;
            let from = match after {
                Some(k) => Bound::Excluded(k),
                None => Bound::Unbounded,
            };
            m.range::<&[u8]>((from, Bound::Unbounded))?
                .take(limit)
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()?
        };
        let mut manifests = Vec::with_capacity(keys.len());
        for key in &keys {
            let Ok(cid) = cid_from_bytes(key) else {
                warn!("skipping a listed manifest whose CID does not parse");
                continue;
            };
            match self.get_manifest(&cid) {
                Ok(Some(m)) => manifests.push((cid, m)),
                Ok(None) => {}
                Err(e) => warn!(%cid, error = %e, "skipping unreadable manifest"),
            }
        }
        Ok(ManifestPage {
            manifests,
            looked_at: keys.len(),
            next: keys.last().cloned(),
        })
    }

    /// Records that a background download of the dataset of manifest `cid` was asked for, so
    /// that it is resumed after a restart ([`Store::fetches`]) until [`Store::remove_fetch`]
    /// (it completed or gave up) or the dataset is deleted.
    pub fn add_fetch(&self, cid: &Cid) -> Result<(), StoreError> {
        let key = cid.to_bytes();
        self.write(0, |t| {
            t.fetches.insert(key.as_slice(), now_secs())?;
            Ok(())
        })
    }

    /// Forgets a background download ([`Store::add_fetch`]).
    pub fn remove_fetch(&self, cid: &Cid) -> Result<(), StoreError> {
        let key = cid.to_bytes();
        self.write(0, |t| {
            t.fetches.remove(key.as_slice())?;
            Ok(())
        })
    }

    /// Manifests of the background downloads asked for and not finished ([`Store::add_fetch`]),
    /// oldest request first (to the second), at most `limit` of them.
    pub fn fetches(&self, limit: usize) -> Result<Vec<Cid>, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        let table = match r.open_table(FETCHES) {
            Ok(t) => t,
            // An index from before the table existed, not written since.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut rows: Vec<(u64, Vec<u8>)> = table
            .iter()?
            .map(|e| e.map(|(k, v)| (v.value(), k.value().to_vec())))
            .collect::<Result<_, _>>()?;
        rows.sort();
        Ok(rows
            .into_iter()
            .filter_map(|(_, key)| cid_from_bytes(&key).ok())
            .take(limit)
            .collect())
    }

    /// Deletes `cid`. For a listed manifest this deletes the dataset: the call is one small
    /// transaction whatever the dataset's size, and the blocks are reclaimed in the background.
    /// A block that belongs to a dataset cannot be deleted on its own ([`StoreError::InUse`]).
    /// Deleting something absent succeeds.
    pub fn delete(&self, cid: &Cid) -> Result<(), StoreError> {
        if *cid == empty_block_cid() {
            return Ok(());
        }
        let key = cid.to_bytes();
        let (dataset, gone_tree) = self.write(0, |t| {
            let tree = t.manifest_tree(&key)?;
            if t.remove_manifest(&key)? {
                // The dataset goes with its last manifest.
                let gone = match &tree {
                    Some(tree) => t.get_dataset(tree)?.is_none_or(|d| d.state == DS_DELETING),
                    None => false,
                };
                return Ok((true, tree.filter(|_| gone)));
            }
            match t.get_block(&key)? {
                None => Ok((false, None)),
                Some(rec) if rec.refs > 0 => Err(StoreError::InUse { cid: *cid }),
                Some(_) => t.drop_ref(&key, true).map(|()| (false, None)),
            }
        })?;
        if let Some(tree) = gone_tree {
            // Downloads of it stop and store nothing more: their room goes back now, not when
            // their clients go away.
            let _uploads = self.inner.reserved.lock();
            if let Some(pool) = self.inner.download_pools.lock().by_tree.remove(&tree) {
                self.inner
                    .download_reserved
                    .fetch_sub(pool.bytes, Ordering::Relaxed);
            }
            self.inner.disk_failures.lock().remove(&tree);
        }
        if dataset {
            debug!(%cid, "dataset deleted; reclaiming its blocks in the background");
            self.wake_reclaimer();
        }
        Ok(())
    }

    /// Space accounting.
    pub fn space(&self) -> Result<Space, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        let meta = r.open_table(META)?;
        // One consistent reading: bytes a commit is taking over from a reservation count as
        // used (they are about to be), never as both or neither.
        let (used, reserved) = {
            let uploads = self.inner.reserved.lock();
            (
                self.inner.used.load(Ordering::Relaxed)
                    + self.inner.pending.load(Ordering::Relaxed),
                *uploads + self.inner.download_reserved.load(Ordering::Relaxed),
            )
        };
        Ok(Space {
            total_blocks: meta.get(META_TOTAL_BLOCKS)?.map_or(0, |v| v.value()),
            quota_max_bytes: self.inner.cfg.quota_bytes,
            quota_used_bytes: used,
            quota_reserved_bytes: reserved,
        })
    }

    /// Bytes the segments occupy (live and not yet compacted dead bytes).
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.segs.disk_bytes()?)
    }

    /// Whether deleted datasets are still being reclaimed.
    pub fn reclaim_pending(&self) -> Result<bool, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        Ok(!r.open_table(DELETING)?.is_empty()?)
    }

    /// Finishes the deletion of dataset `tree` (its key), if it is being deleted, in
    /// transactions of [`StoreConfig::reclaim_batch`] leaves each: a put of the same data (its
    /// manifest again, or an upload of it) cannot wait for the background reclaimer and must not
    /// find half of it gone, and doing it all in the put's own transaction held the single
    /// writer, and the pages of every row it dropped, for the whole dataset at once (a million
    /// rows for 64 GiB; found by review). One read when it is not being deleted.
    pub(crate) fn finish_deleting(&self, tree: &[u8]) -> Result<(), StoreError> {
        let deleting = {
            let r = self.inner.db()?.begin_read()?;
            r.open_table(DATASETS)?
                .get(tree)?
                .is_some_and(|v| DatasetRec::from_tuple(v.value()).state == DS_DELETING)
        };
        if !deleting {
            return Ok(());
        }
        let batch = self.inner.cfg.reclaim_batch.max(1);
        while self.write(0, |t| t.reclaim_deleting_tree(tree, batch))? {}
        Ok(())
    }

    /// Reclaims deleted datasets until none is left. Returns the leaves dropped.
    pub fn reclaim_now(&self) -> Result<usize, StoreError> {
        let batch = self.inner.cfg.reclaim_batch.max(1);
        let mut total = 0;
        loop {
            let (done, more) = self.write(0, |t| t.reclaim_some(batch))?;
            total += done;
            if !more {
                return Ok(total);
            }
        }
    }

    /// One maintenance pass at time `now` (unix seconds): ends uploads whose rollback failed
    /// ([`Store::retry_failed_rollbacks`]), expires up to `maintenance_batch` manifests and
    /// standalone blocks whose TTL has passed, reclaims deleted datasets, then runs one
    /// compaction pass ([`Store::compact`]).
    pub fn maintenance(&self, now: u64) -> Result<MaintenanceReport, StoreError> {
        if let Err(e) = self.retry_failed_rollbacks(true) {
            warn!(error = %e, "rolling back uploads whose rollback failed failed again; tried again later");
        }
        let batch = self.inner.cfg.maintenance_batch.max(1);
        let expired = self.write(0, |t| {
            let due: Vec<Vec<u8>> = t
                .expiry_idx
                .range((0u64, &[][..])..=(now, &[0xffu8; 64][..]))?
                .take(batch)
                .map(|e| e.map(|(k, _)| k.value().1.to_vec()))
                .collect::<Result<_, _>>()?;
            for key in &due {
                if !t.remove_manifest(key)? {
                    t.drop_ref(key, true)?;
                }
            }
            Ok(due.len())
        })?;
        let reclaimed = self.reclaim_now()?;
        // A failed compaction does not keep complete datasets' proofs from being settled.
        let compacted = self.compact().unwrap_or_else(|e| {
            warn!(error = %e, "compaction pass failed; tried again at the next pass");
            CompactReport::default()
        });
        let settled = self.settle_some()?;
        Ok(MaintenanceReport {
            expired,
            reclaimed,
            compacted,
            settled,
        })
    }

    /// Tries [`Store::settle_tree`] on up to [`SETTLE_DATASETS_PER_PASS`] datasets that still
    /// keep downloaded proofs, continuing where the last pass stopped (so partial datasets, which
    /// stay as they are, do not hide complete ones behind them). Returns the proofs dropped.
    fn settle_some(&self) -> Result<u64, StoreError> {
        let mut cursor = self.inner.settle_cursor.lock();
        let mut trees = Vec::new();
        {
            let r = self.inner.db()?.begin_read()?;
            let proofs = r.open_table(PROOFS)?;
            // The next dataset after `from` (exclusive) with proofs kept, if any.
            let next_after = |from: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
                for entry in proofs.range((from, u64::MAX)..)? {
                    let (k, _) = entry?;
                    if k.value().0 != from {
                        return Ok(Some(k.value().0.to_vec()));
                    }
                }
                Ok(None)
            };
            let mut from = cursor.clone();
            let mut wrapped = false;
            while trees.len() < SETTLE_DATASETS_PER_PASS {
                match next_after(&from)? {
                    Some(t) if trees.contains(&t) => break,
                    Some(t) => {
                        from.clone_from(&t);
                        trees.push(t);
                    }
                    None if !wrapped && !from.is_empty() => {
                        wrapped = true;
                        from.clear();
                    }
                    None => break,
                }
            }
        }
        // One dataset that cannot be settled (damaged rows, say) is logged and skipped, and the
        // cursor moves past it: before, its error ended the pass with the cursor in place, so
        // it stopped the settlement of every other dataset at every pass (found by review). A
        // failure of the index itself ends the pass (every other dataset would fail alike).
        let mut dropped = 0;
        for key in &trees {
            let settled = cid_from_bytes(key)
                .map_err(|_| StoreError::IndexDamaged("tree CID of a kept proof"))
                .and_then(|tree| self.settle_tree(&tree));
            match settled {
                Ok(n) => dropped += n,
                Err(e) if e.index_failed() => return Err(e),
                Err(e) => {
                    warn!(tree = ?key, error = %e, "could not settle a downloaded dataset; skipped");
                }
            }
            cursor.clone_from(key);
        }
        Ok(dropped)
    }

    /// Checks the counters against the index (for tests and `cairn` diagnostics).
    pub fn audit(&self) -> Result<Audit, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        let blocks = r.open_table(BLOCKS)?;
        let mut used_actual = 0;
        let mut blocks_actual = 0;
        let mut per_seg = std::collections::HashMap::<u64, u64>::new();
        for e in blocks.iter()? {
            let rec = BlockRec::from_tuple(e?.1.value());
            used_actual += rec.len;
            blocks_actual += 1;
            *per_seg.entry(rec.seg).or_default() += rec.len;
        }
        let segs = r.open_table(SEGMENTS)?;
        let mut segments_consistent = true;
        for e in segs.iter()? {
            let (k, v) = e?;
            if per_seg.remove(&k.value()).unwrap_or(0) != v.value().0 {
                segments_consistent = false;
            }
        }
        if !per_seg.is_empty() {
            segments_consistent = false;
        }
        let meta = r.open_table(META)?;
        Ok(Audit {
            used_recorded: meta.get(META_USED)?.map_or(0, |v| v.value()),
            used_actual,
            blocks_recorded: meta.get(META_TOTAL_BLOCKS)?.map_or(0, |v| v.value()),
            blocks_actual,
            segments_consistent,
            open_sessions: r.open_table(SESSIONS)?.len()?,
        })
    }

    /// How the index keeps proofs: the chunks of stored trees, and the bytes of proofs kept in
    /// leaf rows (for tests and diagnostics; it reads both tables whole).
    #[doc(hidden)]
    pub fn proof_storage(&self) -> Result<(u64, u64), StoreError> {
        let r = self.inner.db()?.begin_read()?;
        let chunks = r.open_table(TREES)?.len()?;
        let mut proof_bytes = 0;
        for entry in r.open_table(LEAVES)?.iter()? {
            proof_bytes += entry?.1.value().1.len() as u64;
        }
        for entry in r.open_table(PROOFS)?.iter()? {
            proof_bytes += entry?.1.value().len() as u64;
        }
        Ok((chunks, proof_bytes))
    }

    /// Number of entries in the expiry index (for tests).
    #[doc(hidden)]
    pub fn expiry_entries(&self) -> Result<u64, StoreError> {
        let r = self.inner.db()?.begin_read()?;
        Ok(r.open_table(EXPIRY)?.len()?)
    }

    fn wake_reclaimer(&self) {
        if let Some(tx) = self.inner.reclaim_wake.lock().as_ref() {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => warn!("block reclaimer has stopped"),
            }
        }
    }

    fn spawn_reclaimer(&self) -> Result<(), StoreError> {
        // Capacity 1: a pending wake-up already means "there is work"; more would add nothing.
        let (tx, rx) = sync_channel(1);
        *self.inner.reclaim_wake.lock() = Some(tx);
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("cairn-reclaim".into())
            .spawn(move || reclaim_loop(&weak, &rx))?;
        self.wake_reclaimer();
        Ok(())
    }
}

/// `data` as block `cid` if it passes its check: the CRC32C stored in `rec` (the CID was
/// checked when the block was stored; the checksum shows the bytes read back are the bytes
/// written), or, for rows from before checksums, the CID hash. `None` when it fails.
pub(crate) fn checked_block(cid: &Cid, rec: &BlockRec, data: impl Into<Bytes>) -> Option<Block> {
    let data: Bytes = data.into();
    match rec.checksum {
        Some(sum) => (checksum(&data) == sum).then(|| Block::from_parts_unchecked(*cid, data)),
        None => Block::verified(*cid, data).ok(),
    }
}

/// One page of listed datasets ([`Store::manifest_page`]).
#[derive(Debug, Clone)]
pub struct ManifestPage {
    /// The datasets of the page that could be read: manifest CID and manifest.
    pub manifests: Vec<(Cid, Manifest)>,
    /// How many listed datasets the page looked at: fewer than the limit asked for means
    /// there are no more.
    pub looked_at: usize,
    /// Where the next page starts (after this key); `None` when the page was empty.
    pub next: Option<Vec<u8>>,
}

/// Whether dataset `key` (tree CID bytes) is active (fully stored and not being deleted) in read
/// transaction `r`: only an active dataset's leaves are served or counted as stored.
/// Whether dataset `key` takes leaves: it is listed (active) or being written by an upload.
fn dataset_takes_leaves(r: &redb::ReadTransaction, key: &[u8]) -> Result<bool, StoreError> {
    Ok(r.open_table(DATASETS)?
        .get(key)?
        .is_some_and(|v| DatasetRec::from_tuple(v.value()).state != DS_DELETING))
}

fn dataset_active(r: &redb::ReadTransaction, key: &[u8]) -> Result<bool, StoreError> {
    Ok(active_dataset(r, key)?.is_some())
}

/// The row of dataset `key` if it is active (not being written or deleted).
fn active_dataset(r: &redb::ReadTransaction, key: &[u8]) -> Result<Option<DatasetRec>, StoreError> {
    Ok(r.open_table(DATASETS)?
        .get(key)?
        .map(|v| DatasetRec::from_tuple(v.value()))
        .filter(|d| d.state == DS_ACTIVE))
}

fn reclaim_loop(weak: &Weak<Inner>, rx: &Receiver<()>) {
    loop {
        match rx.recv_timeout(RECLAIM_POLL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(inner) = weak.upgrade() else { return };
        let store = Store { inner };
        // Uploads whose rollback failed (a full disk) are ended as soon as the index can be
        // written again, not at the next maintenance pass.
        if let Err(e) = store.retry_failed_rollbacks(false) {
            debug!(error = %e, "uploads whose rollback failed are still not rolled back");
        }
        match store.reclaim_now() {
            Ok(0) => {}
            Ok(n) => {
                debug!(leaves = n, "reclaimed deleted datasets");
                // A download deleted whole leaves its open shared segment with nothing live:
                // free it now rather than at the next maintenance pass (10 min by default).
                for slot_is_leaves in [true, false] {
                    if let Err(e) = store.drop_dead_open_segment(
                        slot_is_leaves,
                        crate::compact::COMPACT_MIN_DEAD_BYTES,
                    ) {
                        warn!(error = %e, "could not free an empty shared segment");
                    }
                }
            }
            Err(e) => warn!(error = %e, "reclaiming deleted datasets failed"),
        }
    }
}

/// Room in the quota held for a download ([`Store::reserve_room`]): it counts as used for every
/// other download and upload. Downloads of the same dataset share one pool, which holds room for
/// what the dataset lacks. Storing its leaves ([`Store::put_leaves`]) draws the pool down in the
/// same step as their bytes become used, so the two are never counted together; what is left
/// goes back when the last reservation on the pool is dropped, or at once when the dataset is
/// deleted.
#[derive(Debug)]
pub struct Reservation {
    store: Store,
    /// The dataset (tree CID bytes).
    tree: Vec<u8>,
    /// The pool this reservation holds, if it needed room: pools get a new id when made again
    /// after a delete, so an old reservation never touches a newer pool.
    id: Option<u64>,
}

impl Reservation {
    /// Bytes still held for the dataset (by this and any other reservation for it).
    pub fn bytes(&self) -> u64 {
        let _uploads = self.store.inner.reserved.lock();
        let pools = self.store.inner.download_pools.lock();
        match (self.id, pools.by_tree.get(&self.tree)) {
            (Some(id), Some(pool)) if pool.id == id => pool.bytes,
            _ => 0,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        let inner = &self.store.inner;
        let _uploads = inner.reserved.lock();
        let mut pools = inner.download_pools.lock();
        let Some(pool) = pools.by_tree.get_mut(&self.tree).filter(|p| p.id == id) else {
            return;
        };
        pool.holders -= 1;
        if pool.holders == 0 {
            let bytes = pool.bytes;
            pools.by_tree.remove(&self.tree);
            inner.download_reserved.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// Download reservations by dataset (tree CID bytes).
#[derive(Debug, Default)]
pub(crate) struct Pools {
    by_tree: HashMap<Vec<u8>, Pool>,
    /// The last pool id given.
    next_id: u64,
}

/// The room held for one dataset's downloads.
#[derive(Debug)]
struct Pool {
    id: u64,
    /// Bytes still held.
    bytes: u64,
    /// Live [`Reservation`]s on it.
    holders: usize,
    /// The leaf ranges its reservations were made for: sorted, disjoint, not adjacent, at
    /// most [`MAX_POOL_RANGES`] (beyond, a new request adds only what the pool does not hold
    /// at all).
    ranges: Vec<std::ops::Range<u64>>,
}

/// Leaf ranges one download pool keeps track of. HTTP range requests of one dataset at once
/// are few; past this many, a pool stops telling its ranges apart (and may hold too little).
pub(crate) const MAX_POOL_RANGES: usize = 64;

/// How many times a reservation counts its leaves again when another request changed the
/// pool's ranges meanwhile, before it falls back to the pool's total.
const POOL_RECOUNTS: usize = 3;

/// The parts of `range` that `covered` (sorted, disjoint) does not cover, or `None` when
/// `covered` is at [`MAX_POOL_RANGES`] (too many to follow).
fn uncovered(
    range: &std::ops::Range<u64>,
    covered: &[std::ops::Range<u64>],
) -> Option<Vec<std::ops::Range<u64>>> {
    if covered.len() >= MAX_POOL_RANGES {
        return None;
    }
    let mut gaps = Vec::new();
    let mut from = range.start;
    for c in covered {
        if c.end <= from {
            continue;
        }
        if c.start >= range.end {
            break;
        }
        if c.start > from {
            gaps.push(from..c.start);
        }
        from = from.max(c.end);
    }
    if from < range.end {
        gaps.push(from..range.end);
    }
    Some(gaps)
}

/// Adds `range` to `ranges` (sorted, disjoint, not adjacent), merging what it touches; past
/// [`MAX_POOL_RANGES`] the ranges are left as they are (see [`uncovered`]).
fn add_range(ranges: &mut Vec<std::ops::Range<u64>>, range: std::ops::Range<u64>) {
    if range.is_empty() || ranges.len() >= MAX_POOL_RANGES {
        return;
    }
    let mut merged = range;
    ranges.retain(|r| {
        if r.end < merged.start || r.start > merged.end {
            return true;
        }
        merged = merged.start.min(r.start)..merged.end.max(r.end);
        false
    });
    let at = ranges.partition_point(|r| r.start < merged.start);
    ranges.insert(at, merged);
}

/// How the in-memory `used` counter follows the commits. A commit lets the next writer in
/// before its own thread updates the counters, so two updates may come in either order: each
/// transaction is numbered as it takes the writer, and `used` only ever takes the value of a
/// later commit than the one it mirrors. Bytes a transaction took from a reservation are in
/// `pending` until `used` counts them, which is as soon as it mirrors that transaction or a
/// later one. Before, an older commit's value could overwrite a newer one's, and the counter
/// said less was used than the index did until the next commit.
#[derive(Debug, Default)]
struct Commits {
    /// The transaction whose `used_bytes` `used` mirrors.
    mirrored: u64,
    /// Bytes in `pending`, by the transaction that took them from a reservation.
    pending: std::collections::BTreeMap<u64, u64>,
}

/// What a write transaction's blocks were reserved in ([`Store::write_consuming`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Consume<'a> {
    /// No reservation.
    Nothing,
    /// The uploads' reservation: this many bytes of the writer's own, which it has appended
    /// (they leave `upload_appended` in the same step). `taken` is set when they were drawn down
    /// (just before the commit, whether it then succeeds or not): only then may the writer
    /// lower its own count; a transaction that failed earlier left them reserved.
    Upload {
        bytes: u64,
        taken: &'a std::cell::Cell<bool>,
    },
    /// A download's reservation for dataset `tree` (tree CID bytes): `bytes` of it, set by
    /// the transaction (the leaves it stores; 0 if it stores none).
    Download {
        tree: &'a [u8],
        bytes: &'a std::cell::Cell<u64>,
    },
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender stops the reclaimer thread.
        self.reclaim_wake.lock().take();
        for slot in [&self.misc, &self.leaves_seg] {
            if let Some(mut w) = slot.lock().take()
                && let Err(e) = w.sync()
            {
                warn!(error = %e, "could not sync a shared segment at close");
            }
        }
    }
}

/// A shared segment with appended bytes whose index rows are not committed yet. Taken under the
/// segment's slot lock before the append and dropped after the commit, so every path that
/// deletes an empty segment (rolling over, a transaction's `finish`, compaction) can tell an
/// empty segment from one whose rows are on their way. Pins are only ever taken on the open
/// segment of a slot; once it is sealed, its pins can only go.
#[derive(Debug)]
pub(crate) struct SegPin {
    store: Store,
    seg: u64,
}

impl SegPin {
    pub(crate) fn new(store: &Store, seg: u64) -> SegPin {
        *store.inner.pins.lock().entry(seg).or_default() += 1;
        SegPin {
            store: store.clone(),
            seg,
        }
    }
}

impl Drop for SegPin {
    fn drop(&mut self) {
        let mut pins = self.store.inner.pins.lock();
        if let Some(n) = pins.get_mut(&self.seg) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.seg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file backend whose writes, length changes and syncs fail with `ENOSPC` while `full`
    /// is set: a disk that fills up under the index.
    #[derive(Debug)]
    struct FillingDisk {
        file: redb::backends::FileBackend,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FillingDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for FillingDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    /// Opens the index in `dir` on a [`FillingDisk`] switched by `full`.
    fn filling_disk(dir: &Path, full: &Arc<std::sync::atomic::AtomicBool>) -> IndexOpener {
        let (path, flag) = (dir.join(INDEX_FILE), full.clone());
        Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let backend = FillingDisk {
                file: redb::backends::FileBackend::new(file)?,
                full: flag.clone(),
            };
            Ok(Database::builder().create_with_backend(backend)?)
        })
    }

    /// redb latches the first failed write of its file and fails everything after it
    /// ("Previous I/O error occurred"): a node whose disk filled up once could write nothing
    /// more, even after space was freed, until it was restarted. The store now reopens its
    /// index on the next call once the disk is writable again, and what was committed before
    /// is all there.
    #[test]
    fn an_index_write_that_failed_is_followed_by_a_reopen_once_the_disk_has_room() {
        let dir = tempfile::TempDir::new().unwrap();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = filling_disk(dir.path(), &full);
        let cfg = StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        };
        let store = Store::open_with(dir.path(), cfg, open).unwrap();
        let before = Block::data_block(Bytes::from_static(b"stored before the disk filled"));
        store.put_block(&before).unwrap();

        full.store(true, Ordering::SeqCst);
        let lost = Block::data_block(Bytes::from_static(b"written while the disk is full"));
        let err = store.put_block(&lost).unwrap_err();
        assert!(err.is_disk_full(), "{err}");

        full.store(false, Ordering::SeqCst);
        // The first reopen is not rate-limited; later ones are at most every REOPEN_RETRY.
        let after = Block::data_block(Bytes::from_static(b"written once there is room again"));
        store.put_block(&after).unwrap();
        store.put_block(&lost).unwrap();
        for b in [&before, &lost, &after] {
            assert_eq!(store.get_block(b.cid()).unwrap().unwrap().data(), b.data());
        }
        let audit = store.audit().unwrap();
        assert_eq!(audit.used_recorded, audit.used_actual);
        assert_eq!(audit.blocks_recorded, audit.blocks_actual);
    }

    /// A shared segment whose seal failed as it rolled over (the index could not be written)
    /// is sealed by a later compaction pass, and so freed once nothing in it is live. Before,
    /// nothing looked at it again until a restart: no writer appended to it, and compaction and
    /// deletion only free sealed segments (found by review).
    #[test]
    fn a_segment_whose_seal_failed_is_sealed_by_a_later_pass() {
        const BS: usize = 64 * 1024;
        let dir = tempfile::TempDir::new().unwrap();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = filling_disk(dir.path(), &full);
        let cfg = StoreConfig {
            background_reclaim: false,
            segment_roll_bytes: 2 * BS as u64,
            ..StoreConfig::default()
        };
        let store = Store::open_with(dir.path(), cfg, open).unwrap();
        let blocks: Vec<Block> = (0..3u8)
            .map(|i| Block::data_block(Bytes::from(vec![i; BS])))
            .collect();
        store.put_block(&blocks[0]).unwrap();
        store.put_block(&blocks[1]).unwrap();
        let first = {
            let r = store.inner.db().unwrap().begin_read().unwrap();
            let row = r
                .open_table(BLOCKS)
                .unwrap()
                .get(blocks[0].cid().to_bytes().as_slice())
                .unwrap()
                .unwrap()
                .value();
            BlockRec::from_tuple(row).seg
        };
        // The third put rolls the segment over, and its seal cannot be written.
        full.store(true, Ordering::SeqCst);
        assert!(store.put_block(&blocks[2]).unwrap_err().is_disk_full());
        full.store(false, Ordering::SeqCst);
        store.put_block(&blocks[2]).unwrap();
        for b in &blocks[..2] {
            store.delete(b.cid()).unwrap();
        }
        let report = store.compact().unwrap();
        assert_eq!(report.segments_freed, 1, "{report:?}");
        assert!(store.inner.segs.size(first).is_err(), "its file is gone");
        assert_eq!(store.disk_bytes().unwrap(), BS as u64);
        assert_eq!(
            store.get_block(blocks[2].cid()).unwrap().unwrap().data(),
            blocks[2].data()
        );
        let audit = store.audit().unwrap();
        assert!(audit.segments_consistent, "{audit:?}");
        assert_eq!(audit.used_recorded, audit.used_actual, "{audit:?}");
    }

    /// A block row whose length is damaged (far beyond any block) is reported as index damage,
    /// not allocated: the read reserved that many bytes before reading, and a length of a
    /// terabyte aborted the whole process (found by review).
    #[test]
    fn a_damaged_block_length_is_reported_not_allocated() {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let b = Block::data_block(Bytes::from_static(b"a block whose row gets damaged"));
        store.put_block(&b).unwrap();
        let key = b.cid().to_bytes();
        store
            .write(0, |t| {
                let mut row = t.blocks.get(key.as_slice())?.unwrap().value();
                row.2 = 1 << 40;
                t.blocks.insert(key.as_slice(), row)?;
                Ok(())
            })
            .unwrap();
        match store.get_block(b.cid()) {
            Err(StoreError::IndexDamaged(_)) => {}
            other => panic!("expected IndexDamaged, got {other:?}"),
        }
        // And no put stores a block longer than that bound, so a row that names one is damage.
        let len = usize::try_from(MAX_BLOCK_BYTES).unwrap() + 1;
        let big = Block::from_parts_unchecked(*b.cid(), Bytes::from(vec![0u8; len]));
        match store.put_block(&big) {
            Err(StoreError::BlockTooLarge { len: l, max }) => {
                assert_eq!((l, max), (len as u64, MAX_BLOCK_BYTES));
            }
            other => panic!("expected BlockTooLarge, got {other:?}"),
        }
        let mut w = store.begin_dataset().unwrap();
        assert!(matches!(
            w.write(&big),
            Err(StoreError::BlockTooLarge { .. })
        ));
    }

    static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static GO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static FREE_SPACE_3: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Holds an upload's finish after its first leaf batch until the test says go (bounded).
    fn hold_after_first_batch(point: &'static str) {
        if point == "finish:leaf-batch" && !HOOKED.swap(true, Ordering::SeqCst) {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !GO.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// A finish batch that fails before its commit (here: the index failed meanwhile, and the
    /// disk is too full to reopen it) leaves its bytes reserved for the writer to give back.
    /// The writer used to lower its own count before the transaction, so the batch's share of
    /// the reservation was never given back and the quota and disk checks lost it for good.
    #[test]
    fn a_finish_batch_that_fails_early_gives_its_reservation_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = filling_disk(dir.path(), &full);
        let cfg = StoreConfig {
            background_reclaim: false,
            leaf_batch: 1,
            crash_hook: Some(hold_after_first_batch),
            free_space_hook: Some(|| FREE_SPACE_3.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        };
        let store = Store::open_with(dir.path(), cfg, open).unwrap();
        let mut w = store.begin_dataset().unwrap();
        w.reserve(3 * 65536).unwrap();
        for i in 0..3u8 {
            w.write(&Block::data_block(Bytes::from(vec![i; 65536])))
                .unwrap();
        }
        let finishing = std::thread::spawn(move || {
            w.finish(crate::DatasetMeta {
                dataset_size: 3 * 65536,
                block_size: 65536,
                filename: None,
                mimetype: None,
            })
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !HOOKED.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "no leaf batch");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Another write fails on the full disk; then too little is free to reopen the index.
        full.store(true, Ordering::SeqCst);
        let other = Block::data_block(Bytes::from_static(b"a write while the disk is full"));
        assert!(store.put_block(&other).is_err());
        full.store(false, Ordering::SeqCst);
        FREE_SPACE_3.store(1024 * 1024, Ordering::SeqCst);
        GO.store(true, Ordering::SeqCst);
        let err = finishing.join().unwrap().unwrap_err();
        assert!(matches!(err, StoreError::IndexUnavailable(_)), "{err}");
        assert_eq!(store.space().unwrap().quota_reserved_bytes, 0);
        assert_eq!(store.inner.upload_appended.load(Ordering::SeqCst), 0);
    }

    /// The disk of [`a_rollback_that_failed_is_retried_by_maintenance`], filled by its hook.
    static ROLLBACK_DISK_FULL: std::sync::LazyLock<Arc<std::sync::atomic::AtomicBool>> =
        std::sync::LazyLock::new(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));

    /// Fills the disk once an upload's finish has committed its first leaf batch.
    fn fill_after_first_batch(point: &'static str) {
        if point == "finish:leaf-batch" {
            ROLLBACK_DISK_FULL.store(true, Ordering::SeqCst);
        }
    }

    /// An upload whose finish fails on a full disk is rolled back as it is dropped, and that
    /// rollback fails too (the index is unavailable until it is reopened). Its session used to
    /// stay until the next start: its segment on the full disk, its committed leaves counted
    /// as used, its dataset held (found by review). The store now remembers it and ends it
    /// once the index can be written again (here: the next maintenance pass).
    #[test]
    fn a_rollback_that_failed_is_retried_by_maintenance() {
        const BS: usize = 64 * 1024;
        let dir = tempfile::TempDir::new().unwrap();
        let full = ROLLBACK_DISK_FULL.clone();
        let open = filling_disk(dir.path(), &full);
        let cfg = StoreConfig {
            background_reclaim: false,
            leaf_batch: 1,
            crash_hook: Some(fill_after_first_batch),
            ..StoreConfig::default()
        };
        let store = Store::open_with(dir.path(), cfg, open).unwrap();
        let mut w = store.begin_dataset().unwrap();
        for i in 0..3u8 {
            w.write(&Block::data_block(Bytes::from(vec![i; BS])))
                .unwrap();
        }
        let err = w
            .finish(crate::DatasetMeta {
                dataset_size: 3 * BS as u64,
                block_size: BS as u64,
                filename: None,
                mimetype: None,
            })
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(store.disk_bytes().unwrap() >= 3 * BS as u64);

        full.store(false, Ordering::SeqCst);
        // As if `REOPEN_RETRY` had passed since the rollback's try to reopen the index.
        *store.inner.last_reopen.lock() = None;
        let audit = store.audit().unwrap();
        assert_eq!(audit.open_sessions, 1, "the rollback could not be written");
        store.maintenance(now_secs()).unwrap();
        let audit = store.audit().unwrap();
        assert_eq!(audit.open_sessions, 0, "{audit:?}");
        assert_eq!(audit.used_actual, 0, "{audit:?}");
        assert_eq!(audit.used_recorded, 0, "{audit:?}");
        assert!(audit.segments_consistent, "{audit:?}");
        assert_eq!(store.space().unwrap().quota_used_bytes, 0);
        assert_eq!(
            store.disk_bytes().unwrap(),
            0,
            "the upload's segment is gone"
        );
        assert!(!store.reclaim_pending().unwrap());
    }

    static READ_RACE: Mutex<Option<(Store, Cid)>> = Mutex::new(None);

    /// Once (when armed): deletes the block of `READ_RACE` as a read has looked its row up.
    fn delete_after_the_lookup(point: &'static str) {
        if point != "read:looked-up" {
            return;
        }
        let Some((store, cid)) = READ_RACE.lock().take() else {
            return;
        };
        store.delete(&cid).unwrap();
    }

    /// A read that looked a block up just before a delete freed its segment file finds no row
    /// afterwards: the block is not stored, `Ok(None)`. Before, it was reported `Corrupt` (with
    /// a "block bytes missing" warning), as if the disk had lost it (found by review).
    #[test]
    fn a_read_racing_the_delete_of_its_block_finds_nothing() {
        const BS: usize = 64 * 1024;
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            segment_roll_bytes: BS as u64,
            crash_hook: Some(delete_after_the_lookup),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let gone = Block::data_block(Bytes::from(vec![1u8; BS]));
        let kept = Block::data_block(Bytes::from(vec![2u8; BS]));
        store.put_block(&gone).unwrap();
        // Rolls the first segment over (sealed): deleting its only block deletes its file.
        store.put_block(&kept).unwrap();
        let disk = store.disk_bytes().unwrap();
        *READ_RACE.lock() = Some((store.clone(), *gone.cid()));
        assert!(store.get_block(gone.cid()).unwrap().is_none());
        assert!(READ_RACE.lock().is_none(), "the hook ran");
        assert_eq!(
            store.disk_bytes().unwrap(),
            disk - BS as u64,
            "its file went"
        );
        assert_eq!(
            store.get_block(kept.cid()).unwrap().unwrap().data(),
            kept.data()
        );
    }

    static RESTORE_RACE: Mutex<Option<(Store, Cid, Block)>> = Mutex::new(None);

    /// Once (when armed): as a read has looked its block up, deletes the dataset holding it,
    /// frees its segment, and stores the block again on its own (in the older shared segment).
    fn restore_after_the_lookup(point: &'static str) {
        if point != "read:looked-up" {
            return;
        }
        let Some((store, manifest, block)) = RESTORE_RACE.lock().take() else {
            return;
        };
        store.delete(&manifest).unwrap();
        store.reclaim_now().unwrap();
        assert!(store.put_block(&block).unwrap());
    }

    /// A read whose block was deleted and stored again into an older segment meanwhile reads it
    /// there. Before, only moves to newer segments (compaction's) were followed, and the block
    /// was reported `Corrupt` with a "bytes missing" warning (found by review).
    #[test]
    fn a_read_follows_its_block_stored_again_in_an_older_segment() {
        const BS: usize = 64 * 1024;
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            crash_hook: Some(restore_after_the_lookup),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        // The shared segment for standalone blocks opens first: the older one.
        store
            .put_block(&Block::data_block(Bytes::from(vec![9u8; 100])))
            .unwrap();
        let block = Block::data_block(Bytes::from(vec![1u8; BS]));
        let mut w = store.begin_dataset().unwrap();
        w.write(&block).unwrap();
        w.write(&Block::data_block(Bytes::from(vec![2u8; BS])))
            .unwrap();
        let manifest = w
            .finish(crate::DatasetMeta {
                dataset_size: 2 * BS as u64,
                block_size: BS as u64,
                filename: None,
                mimetype: None,
            })
            .unwrap()
            .manifest_cid;
        let before = store.row_now(block.cid()).unwrap().unwrap().seg;
        *RESTORE_RACE.lock() = Some((store.clone(), manifest, block.clone()));
        let got = store.get_block(block.cid()).unwrap().expect("stored again");
        assert!(RESTORE_RACE.lock().is_none(), "the hook ran");
        assert_eq!(got.data(), block.data());
        let after = store.row_now(block.cid()).unwrap().unwrap().seg;
        assert!(
            after < before,
            "stored in an older segment: {after} < {before}"
        );
    }

    static FREE_SPACE: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Writes that the quota allows but the disk cannot take fail before anything is written,
    /// leaving [`MIN_DISK_HEADROOM`] free for the index; before, they ran until `ENOSPC`.
    #[test]
    fn writes_the_disk_cannot_take_are_refused_up_front() {
        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            free_space_hook: Some(|| FREE_SPACE.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        })
        .unwrap();
        FREE_SPACE.store(MIN_DISK_HEADROOM + 100, Ordering::SeqCst);
        let small = Block::data_block(Bytes::from(vec![1u8; 100]));
        store.put_block(&small).unwrap();
        let big = Block::data_block(Bytes::from(vec![2u8; 101]));
        match store.put_block(&big) {
            Err(StoreError::DiskFull {
                needed: 101,
                free: 100,
            }) => {}
            other => panic!("expected DiskFull, got {other:?}"),
        }
        assert!(store.get_block(big.cid()).unwrap().is_none());
        let mut w = store.begin_dataset().unwrap();
        let err = w.reserve(1024).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert_eq!(store.space().unwrap().quota_reserved_bytes, 0);
    }

    /// Bytes an upload has appended count as on the disk only once they left the segment's
    /// staging buffers: counted as soon as `append` returned, up to 8 MiB per upload sat in
    /// memory while free-space checks took them as written, and concurrent uploads ran the disk
    /// to 0 bytes free.
    #[test]
    fn staged_upload_bytes_are_not_counted_as_on_disk() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                background_reclaim: false,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let mut w = store.begin_dataset().unwrap();
        w.reserve(3 * 65536).unwrap();
        for i in 0..3u8 {
            w.write(&Block::data_block(Bytes::from(vec![i; 65536])))
                .unwrap();
            let on_disk = store.inner.upload_appended.load(Ordering::SeqCst);
            assert_eq!(
                on_disk + w.staged().min(u64::from(i + 1) * 65536),
                u64::from(i + 1) * 65536,
                "block {i}: what is counted as on disk and what is staged make up what was appended"
            );
        }
        // Past one staging buffer (4 MiB) a write goes out; once it is done, its bytes count as
        // on the disk (they stayed counted as to come until the next buffer was needed).
        let blocks = 70u64;
        w.reserve(blocks * 65536).unwrap();
        for i in 3..blocks {
            w.write(&Block::data_block(Bytes::from(vec![i as u8; 65536])))
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            w.settle_now().unwrap();
            let on_disk = store.inner.upload_appended.load(Ordering::SeqCst);
            assert_eq!(on_disk + w.staged().min(blocks * 65536), blocks * 65536);
            if w.staged() < 4 * 1024 * 1024 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the staged write never counted as done"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        w.finish(crate::DatasetMeta {
            dataset_size: blocks * 65536,
            block_size: 65536,
            filename: None,
            mimetype: None,
        })
        .unwrap();
        assert_eq!(store.inner.upload_appended.load(Ordering::SeqCst), 0);
        assert_eq!(store.space().unwrap().quota_reserved_bytes, 0);
    }

    static FREE_SPACE_2: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Room promised to uploads and downloads and not yet written counts as taken: four uploads
    /// started together each saw the whole free space and together filled the disk past the
    /// room kept for the index (and then to 0 bytes, which wedged the index).
    #[test]
    fn reservations_not_yet_written_count_against_the_disk() {
        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            free_space_hook: Some(|| FREE_SPACE_2.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        })
        .unwrap();
        FREE_SPACE_2.store(MIN_DISK_HEADROOM + 1000, Ordering::SeqCst);
        let mut first = store.begin_dataset().unwrap();
        first.reserve(600).unwrap();
        let mut second = store.begin_dataset().unwrap();
        match second.reserve(600) {
            Err(StoreError::DiskFull {
                needed: 600,
                free: 400,
            }) => {}
            other => panic!("expected DiskFull with 400 free, got {other:?}"),
        }
        // The first writes its 600 bytes: the disk has 600 fewer free, and they are no longer
        // to come.
        first
            .write(&Block::data_block(Bytes::from(vec![3u8; 600])))
            .unwrap();
        FREE_SPACE_2.store(MIN_DISK_HEADROOM + 400, Ordering::SeqCst);
        second.reserve(400).unwrap();
        assert!(second.reserve(401).is_err());
        drop(second);
        drop(first);
        assert_eq!(store.inner.upload_appended.load(Ordering::SeqCst), 0);
        assert_eq!(store.space().unwrap().quota_reserved_bytes, 0);
    }

    static COMMIT_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static COMMIT_PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static COMMIT_RESUME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Holds the first write transaction after arming between its commit and its update of the
    /// in-memory counters, until the test says resume (bounded).
    fn pause_after_a_commit(point: &'static str) {
        if point == "write:committed" && COMMIT_ARMED.swap(false, Ordering::SeqCst) {
            COMMIT_PAUSED.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !COMMIT_RESUME.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The in-memory `used` counter (what quota checks and `space` read) is the value of the
    /// last commit. A transaction's commit lets the next writer in before the first updates the
    /// counter, and the first's older value used to overwrite the next one's: the counter then
    /// said less was used than the index (found by review).
    #[test]
    fn the_used_counter_is_the_last_commits() {
        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            crash_hook: Some(pause_after_a_commit),
            ..StoreConfig::default()
        })
        .unwrap();
        // Opens the shared segment, so the puts below each write one transaction.
        store
            .put_block(&Block::data_block(Bytes::from_static(b"first")))
            .unwrap();
        COMMIT_ARMED.store(true, Ordering::SeqCst);
        let s = store.clone();
        let older = std::thread::spawn(move || {
            s.put_block(&Block::data_block(Bytes::from(vec![1u8; 1000])))
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !COMMIT_PAUSED.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "no commit paused");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A younger transaction commits and updates the counter meanwhile.
        store
            .put_block(&Block::data_block(Bytes::from(vec![2u8; 3000])))
            .unwrap();
        COMMIT_RESUME.store(true, Ordering::SeqCst);
        older.join().unwrap().unwrap();
        let audit = store.audit().unwrap();
        assert_eq!(audit.used_recorded, audit.used_actual, "{audit:?}");
        assert_eq!(
            store.space().unwrap().quota_used_bytes,
            audit.used_recorded,
            "the in-memory counter"
        );
    }

    /// A dataset row no manifest names and no upload writes (earlier versions left one when a
    /// download outlived a delete of its dataset) is reclaimed at the next open, with its
    /// blocks; a listed dataset is left alone.
    #[test]
    fn datasets_no_manifest_names_are_reclaimed_at_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        };
        let orphan = Cid::new_v1(Codec::Root.code(), *empty_block_cid().hash());
        let kept_block = Block::data_block(Bytes::from_static(b"kept"));
        {
            let store = Store::open(dir.path(), cfg.clone()).unwrap();
            store.put_block(&kept_block).unwrap();
            let key = orphan.to_bytes();
            store
                .write(0, |t| {
                    t.put_dataset(
                        &key,
                        DatasetRec {
                            nleaves: 3,
                            manifest_refs: 0,
                            state: DS_ACTIVE,
                            session: 0,
                        },
                    )
                })
                .unwrap();
            assert!(!store.reclaim_pending().unwrap());
        }
        let store = Store::open(dir.path(), cfg).unwrap();
        assert!(
            store.reclaim_pending().unwrap(),
            "the orphan is marked for deletion"
        );
        store.reclaim_now().unwrap();
        assert!(!store.reclaim_pending().unwrap());
        let r = store.inner.db().unwrap().begin_read().unwrap();
        assert!(
            r.open_table(DATASETS)
                .unwrap()
                .get(orphan.to_bytes().as_slice())
                .unwrap()
                .is_none()
        );
        drop(r);
        assert!(store.get_block(kept_block.cid()).unwrap().is_some());
    }
}

#[cfg(test)]
mod deleting_tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;
    use cairn_core::Block;

    use super::*;
    use crate::DatasetMeta;

    const BS: usize = 64 * 1024;
    const LEAVES: u64 = 40;
    const BATCH: usize = 4;

    static COUNTING: AtomicBool = AtomicBool::new(false);
    static COMMITS: AtomicUsize = AtomicUsize::new(0);

    fn count_commits(point: &'static str) {
        if point == "write:committed" && COUNTING.load(Ordering::SeqCst) {
            COMMITS.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn upload(store: &Store, seed: u8) -> crate::StoredDataset {
        let mut w = store.begin_dataset().unwrap();
        for i in 0..LEAVES {
            let mut data = vec![seed; BS];
            data[..8].copy_from_slice(&i.to_le_bytes());
            w.write(&Block::data_block(Bytes::from(data))).unwrap();
        }
        w.finish(DatasetMeta {
            dataset_size: LEAVES * BS as u64,
            block_size: BS as u64,
            filename: None,
            mimetype: None,
        })
        .unwrap()
    }

    /// A dataset deleted (and not reclaimed yet) whose manifest is stored again, and then
    /// uploaded again: each put finishes the deletion first, in transactions of
    /// `reclaim_batch` leaves, not in its own one transaction for the whole dataset (review:
    /// that held the single writer, and every dropped row's pages, for the whole dataset). Both
    /// tests share the counter, so they run as one.
    #[test]
    fn a_dataset_stored_again_while_it_is_deleted_is_reclaimed_in_batches() {
        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            reclaim_batch: BATCH,
            crash_hook: Some(count_commits),
            ..StoreConfig::default()
        })
        .unwrap();
        let min_batches = usize::try_from(LEAVES).unwrap() / BATCH;
        // Its manifest again.
        let first = upload(&store, 1);
        let manifest = first.manifest.to_block();
        store.delete(&first.manifest_cid).unwrap();
        assert!(store.reclaim_pending().unwrap());
        COMMITS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        store.put_block(&manifest).unwrap();
        COUNTING.store(false, Ordering::SeqCst);
        let commits = COMMITS.load(Ordering::SeqCst);
        assert!(commits > min_batches, "{commits} commits");
        assert!(!store.reclaim_pending().unwrap());
        assert_eq!(
            store
                .first_missing_leaf(&first.manifest.tree_cid, 0..LEAVES)
                .unwrap(),
            Some(0),
            "listed again, with none of its old leaves"
        );
        // The same data uploaded again while it is being deleted: stored whole, deleted, then
        // uploaded once more.
        store.delete(&first.manifest_cid).unwrap();
        store.reclaim_now().unwrap();
        let whole = upload(&store, 1);
        store.delete(&whole.manifest_cid).unwrap();
        assert!(store.reclaim_pending().unwrap());
        COMMITS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let again = upload(&store, 1);
        COUNTING.store(false, Ordering::SeqCst);
        let commits = COMMITS.load(Ordering::SeqCst);
        assert!(commits > min_batches, "{commits} commits");
        assert_eq!(again.manifest_cid, first.manifest_cid);
        assert_eq!(
            store
                .first_missing_leaf(&again.manifest.tree_cid, 0..LEAVES)
                .unwrap(),
            None
        );
        assert_eq!(
            store.audit().unwrap().used_actual,
            store.audit().unwrap().used_recorded
        );
    }
}

/// Indexes written before dataset generations were kept.
#[cfg(test)]
mod generation_tests {
    use std::sync::Mutex as StdMutex;

    use cairn_core::{Digest, Manifest, VerifiedLeaf};

    use super::*;
    use crate::index::{GENERATIONS, META_NEXT_GENERATION};

    const LEAVES: u64 = 5;

    /// Dataset `seed`: its blocks and its manifest.
    fn dataset(seed: u8) -> (Vec<Block>, CodexTree, Manifest) {
        let blocks: Vec<Block> = (0..LEAVES as u8)
            .map(|i| Block::data_block(Bytes::from(vec![seed, i, 1, 2])))
            .collect();
        let digests: Vec<Digest> = blocks
            .iter()
            .map(|b| cid_digest(b.cid()).unwrap())
            .collect();
        let tree = CodexTree::new(digests).unwrap();
        let manifest = Manifest::new(tree.cid(), 4 * LEAVES, 4);
        (blocks, tree, manifest)
    }

    /// Stores the manifest of dataset `seed` and its leaves `indices`, as a download.
    fn download(store: &Store, seed: u8, indices: std::ops::Range<u64>) {
        let (blocks, tree, manifest) = dataset(seed);
        store.put_block(&manifest.to_block()).unwrap();
        let leaves: Vec<VerifiedLeaf> = indices
            .map(|i| {
                let b = blocks[i as usize].clone();
                VerifiedLeaf::verify(tree.cid(), i, LEAVES, b, tree.proof(i).unwrap()).unwrap()
            })
            .collect();
        store.put_leaves(&tree.cid(), &leaves).unwrap();
    }

    /// The store and the dataset whose copy the hook lists again, once.
    static RELIST: StdMutex<Option<(Store, u8)>> = StdMutex::new(None);

    /// After `settle_tree` read every leaf: the dataset is deleted, reclaimed, listed again
    /// and downloaded in part.
    fn relist_after_the_read(point: &'static str) {
        if point != "settle_tree:read" {
            return;
        }
        let Some((store, seed)) = RELIST.lock().unwrap().take() else {
            return;
        };
        let (_, _, manifest) = dataset(seed);
        store.delete(manifest.to_block().cid()).unwrap();
        store.reclaim_now().unwrap();
        download(&store, seed, 1..3);
    }

    /// An index from before generations were kept opens; its datasets (generation 0) settle,
    /// and one of them deleted and listed again in part between `settle_tree`'s read and its
    /// transaction is still told apart from its predecessor (it gets a generation of 1 or more)
    /// and does not get the tree.
    #[test]
    fn an_index_from_before_generations_opens_and_is_guarded_alike() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            crash_hook: Some(relist_after_the_read),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), cfg.clone()).unwrap();
        download(&store, 1, 0..LEAVES);
        download(&store, 2, 0..LEAVES);
        drop(store);
        // What an older version left: no generations, no counter.
        let db = Database::create(dir.path().join(INDEX_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        assert!(w.delete_table(GENERATIONS).unwrap());
        w.open_table(META)
            .unwrap()
            .remove(META_NEXT_GENERATION)
            .unwrap();
        w.commit().unwrap();
        drop(db);

        let store = Store::open(dir.path(), cfg).unwrap();
        let (_, one, _) = dataset(1);
        assert_eq!(store.settle_tree(&one.cid()).unwrap(), LEAVES);
        let (_, two, _) = dataset(2);
        *RELIST.lock().unwrap() = Some((store.clone(), 2));
        assert_eq!(store.settle_tree(&two.cid()).unwrap(), 0);
        assert!(RELIST.lock().unwrap().is_none(), "the hook ran");
        assert_eq!(
            store.first_missing_leaf(&two.cid(), 0..LEAVES).unwrap(),
            Some(0),
            "still partial"
        );
        download(&store, 2, 0..LEAVES);
        assert_eq!(store.settle_tree(&two.cid()).unwrap(), LEAVES);
        assert_eq!(store.proof_storage().unwrap().1, 0);
    }
}

#[cfg(test)]
mod pool_tests {
    use cairn_core::{Codec, Manifest, cid::cid_from_digest};

    use super::*;

    const BS: u64 = 64 * 1024;

    #[test]
    fn uncovered_parts_and_merged_ranges() {
        let covered = vec![10..20, 30..40];
        assert_eq!(
            uncovered(&(0..50), &covered),
            Some(vec![0..10, 20..30, 40..50])
        );
        assert_eq!(uncovered(&(12..18), &covered), Some(vec![]));
        assert_eq!(
            uncovered(&(15..35), &covered),
            Some(vec![std::ops::Range { start: 20, end: 30 }])
        );
        assert_eq!(
            uncovered(&(40..45), &covered),
            Some(vec![std::ops::Range { start: 40, end: 45 }])
        );
        let full: Vec<_> = (0..MAX_POOL_RANGES as u64)
            .map(|i| i * 10..i * 10 + 1)
            .collect();
        assert_eq!(uncovered(&(0..5), &full), None);
        let mut ranges = covered;
        add_range(&mut ranges, 20..30);
        assert_eq!(
            ranges,
            vec![std::ops::Range { start: 10, end: 40 }],
            "adjacent ranges merge"
        );
        add_range(&mut ranges, 0..5);
        add_range(&mut ranges, 50..60);
        add_range(&mut ranges, 3..12);
        assert_eq!(ranges, vec![0..40, 50..60]);
    }

    /// Requests for different blocks of one dataset each hold room for their own blocks, and a
    /// request for blocks already held adds nothing (review: a second, disjoint range added
    /// nothing, so both together could write more than the quota left).
    #[test]
    fn disjoint_ranges_of_one_dataset_each_hold_their_room() {
        let manifest = Manifest::new(cid_from_digest(Codec::Root, &[7; 32]), 600 * BS, BS);
        let block = manifest.to_block();
        let quota = 20 * BS + block.data().len() as u64;
        let store = Store::in_memory(StoreConfig {
            quota_bytes: quota,
            background_reclaim: false,
            ..StoreConfig::default()
        })
        .unwrap();
        store.put_block(&block).unwrap();
        let tree = manifest.tree_cid;
        let reserved = || store.space().unwrap().quota_reserved_bytes;
        let first = store.reserve_room(&tree, 0..10, BS).unwrap();
        assert_eq!(reserved(), 10 * BS);
        let again = store.reserve_room(&tree, 2..8, BS).unwrap();
        assert_eq!(reserved(), 10 * BS, "the same blocks: nothing more");
        let other = store.reserve_room(&tree, 500..510, BS).unwrap();
        assert_eq!(reserved(), 20 * BS, "other blocks: their own room");
        assert!(matches!(
            store.reserve_room(&tree, 100..101, BS),
            Err(StoreError::QuotaExceeded { .. })
        ));
        let overlapping = store.reserve_room(&tree, 5..15, BS);
        assert!(
            matches!(overlapping, Err(StoreError::QuotaExceeded { needed, .. }) if needed == 5 * BS),
            "only the 5 blocks not held yet are asked for"
        );
        drop((first, again, other));
        assert_eq!(reserved(), 0);
    }
}

/// Leaf counts that manifests claim (`Tables::add_manifest`) against what an index holds.
#[cfg(test)]
mod count_tests {
    use bytes::Bytes;
    use cairn_core::Block;

    use super::*;
    use crate::DatasetMeta;

    const BS: usize = 64 * 1024;
    const LEAVES: u64 = 300;

    /// An index an older version left with a stored tree but a made-up count in the dataset's
    /// row (an upload over a dataset a made-up manifest listed first stored the tree under
    /// that manifest's count). The tree's own leaf layer is the count: a manifest with the
    /// real count is taken (not refused as a conflict with the row), the row is put right,
    /// and the proofs served verify again; one with the row's made-up count is refused.
    #[test]
    fn a_row_with_a_made_up_count_beside_its_tree_is_put_right() {
        let store = Store::in_memory(StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        })
        .unwrap();
        let mut w = store.begin_dataset().unwrap();
        for i in 0..LEAVES {
            let mut data = vec![7u8; BS];
            data[..8].copy_from_slice(&i.to_le_bytes());
            w.write(&Block::data_block(Bytes::from(data))).unwrap();
        }
        let meta = |filename: Option<&str>| DatasetMeta {
            dataset_size: LEAVES * BS as u64,
            block_size: BS as u64,
            filename: filename.map(str::to_owned),
            mimetype: None,
        };
        let up = w.finish(meta(None)).unwrap();
        let tree = up.manifest.tree_cid;
        let key = tree.to_bytes();
        let set_row = |n: u64| {
            store
                .write(0, |t| {
                    let mut ds = t.get_dataset(&key)?.unwrap();
                    ds.nleaves = n;
                    t.put_dataset(&key, ds)
                })
                .unwrap();
        };
        let proof_ok = |i: u64| {
            let Ok(Some((b, p))) = store.get_leaf(&tree, i) else {
                return false;
            };
            p.verify_leaf(
                &cid_digest(b.cid()).unwrap(),
                &cid_digest(&tree).unwrap(),
                i,
                LEAVES,
            )
            .is_ok()
        };
        set_row(LEAVES + 77);
        assert!(
            !proof_ok(299),
            "the damage this test repairs is there (no good proof)"
        );
        // The row's made-up count is no claim against the tree.
        let made_up = Manifest::new(tree, (LEAVES + 77) * BS as u64, BS as u64).to_block();
        assert!(matches!(
            store.put_block(&made_up),
            Err(StoreError::ManifestConflict {
                manifest_blocks: 377,
                dataset_blocks: LEAVES,
                ..
            })
        ));
        // Another honest manifest of the same data (a file name) is taken and puts it right.
        let named = Manifest::new(tree, LEAVES * BS as u64, BS as u64)
            .with_filename(Some("named.bin".into()))
            .to_block();
        store.put_block(&named).unwrap();
        assert!(proof_ok(299) && proof_ok(0) && proof_ok(128));
        assert_eq!(store.first_missing_leaf(&tree, 0..LEAVES).unwrap(), None);
    }

    /// Such a row is put right when the store opens, before any manifest comes.
    #[test]
    fn a_row_with_a_made_up_count_is_put_right_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            background_reclaim: false,
            ..StoreConfig::default()
        };
        let tree = {
            let store = Store::open(dir.path(), cfg.clone()).unwrap();
            let mut w = store.begin_dataset().unwrap();
            for i in 0..LEAVES {
                let mut data = vec![9u8; BS];
                data[..8].copy_from_slice(&i.to_le_bytes());
                w.write(&Block::data_block(Bytes::from(data))).unwrap();
            }
            let up = w
                .finish(crate::DatasetMeta {
                    dataset_size: LEAVES * BS as u64,
                    block_size: BS as u64,
                    filename: None,
                    mimetype: None,
                })
                .unwrap();
            let tree = up.manifest.tree_cid;
            let key = tree.to_bytes();
            store
                .write(0, |t| {
                    let mut ds = t.get_dataset(&key)?.unwrap();
                    ds.nleaves = 3;
                    t.put_dataset(&key, ds)
                })
                .unwrap();
            assert!(store.get_leaf(&tree, 299).is_err(), "the damage is there");
            tree
        };
        let store = Store::open(dir.path(), cfg).unwrap();
        let (b, p) = store.get_leaf(&tree, 299).unwrap().unwrap();
        p.verify_leaf(
            &cid_digest(b.cid()).unwrap(),
            &cid_digest(&tree).unwrap(),
            299,
            LEAVES,
        )
        .unwrap();
    }
}

/// How long [`Store::settle_tree`] holds the single writer for a large dataset (the leaf rows
/// of a 64 GiB download, 2^20 of them, with their downloaded proofs waiting). A measurement,
/// not a check: `cargo test -p cairn-store --release -- --ignored --nocapture settle_bench`.
#[cfg(test)]
mod settle_bench {
    use std::{sync::Mutex as StdMutex, time::Instant};

    use cairn_core::cid::cid_from_digest;

    use super::*;

    /// Leaves of the dataset: 64 GiB of 64 KiB blocks.
    const LEAVES: u64 = 1 << 20;
    /// Leaf rows per setup transaction.
    const SETUP_BATCH: u64 = 1 << 16;

    /// When the hook saw each point, in order.
    static SEEN: StdMutex<Vec<(&'static str, Instant)>> = StdMutex::new(Vec::new());

    fn note(point: &'static str) {
        if point == "settle_tree:read" || point == "write:committed" {
            SEEN.lock().unwrap().push((point, Instant::now()));
        }
    }

    #[test]
    #[ignore = "a measurement; run it in release mode with --nocapture"]
    fn settle_bench() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                background_reclaim: false,
                crash_hook: Some(note),
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let digests: Vec<cairn_core::Digest> = (0..LEAVES)
            .map(|i| {
                let mut d = [0x5au8; 32];
                d[..8].copy_from_slice(&i.to_le_bytes());
                d
            })
            .collect();
        let tree = CodexTree::new(digests.clone()).unwrap();
        let key = tree.cid().to_bytes();
        let manifest = cid_from_digest(cairn_core::Codec::Manifest, &[7; 32]).to_bytes();
        // A download that holds every leaf, one downloaded proof still waiting.
        store
            .write(0, |t| {
                t.add_manifest(&manifest, &key, LEAVES)?;
                t.proofs.insert((key.as_slice(), 0), &[1u8; 8][..])?;
                Ok(())
            })
            .unwrap();
        for start in (0..LEAVES).step_by(SETUP_BATCH as usize) {
            store
                .write(0, |t| {
                    for i in start..start + SETUP_BATCH {
                        let cid = cid_from_digest(cairn_core::Codec::Block, &digests[i as usize]);
                        t.leaves
                            .insert((key.as_slice(), i), (cid.to_bytes().as_slice(), &[][..]))?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        drop(tree);
        // The whole-dataset check alone, under the writer.
        let started = Instant::now();
        let whole = store.write(0, |t| t.has_every_leaf(&key, LEAVES)).unwrap();
        let scan = started.elapsed();
        assert!(whole);
        SEEN.lock().unwrap().clear();
        let started = Instant::now();
        let dropped = store.settle_tree(&cid_from_bytes(&key).unwrap()).unwrap();
        let total = started.elapsed();
        assert_eq!(dropped, 1);
        let seen = SEEN.lock().unwrap().clone();
        let read = seen
            .iter()
            .position(|(p, _)| *p == "settle_tree:read")
            .unwrap();
        let (_, at_read) = seen[read];
        let (_, committed) = seen[read + 1];
        println!(
            "settle_bench: {LEAVES} leaves; check alone (a write transaction scanning every leaf key) {:?}; settle_tree {:?}, of which its tree-storing write transaction {:?}",
            scan,
            total,
            committed - at_read,
        );
    }
}
