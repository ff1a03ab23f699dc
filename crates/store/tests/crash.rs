//! Crash safety of the on-disk store, checked with a real `SIGKILL`.
//!
//! Each scenario re-executes this test binary as a child process (the `crash_child` test, which
//! does nothing unless `CAIRN_CRASH_CHILD_DIR` is set). The child opens a store in a temporary
//! directory, uploads a complete dataset A (20 blocks of 64 KiB), then starts uploading dataset B
//! and is killed with `SIGKILL` by the parent at a known point:
//!
//! * **during block writes** — B's session and segment exist and the segment file holds bytes,
//!   but nothing of B is in the index yet;
//! * **inside `finish`** — B's dataset is marked *writing* and two leaf batches (8 leaves, so 8
//!   block entries with live bytes in B's segment) are committed, but no manifest.
//!
//! One scenario has a download store B's manifest and some of its leaves before B is uploaded,
//! and kills the upload inside `finish` as above: B must come back listed and partial, holding
//! exactly the leaves stored before the kill, each with a valid proof, and reporting the rest
//! missing (so the download fetches them); once they are put, B is whole.
//!
//! Another has a download store B's manifest and a leaf while B's upload writes its leaf
//! index, and kills the upload: B must come back the same way (listed, partial, consistent).
//!
//! Two more scenarios kill a compaction pass (`crates/store/src/compact.rs`): the child stores
//! 1025 standalone blocks in 16 MiB shared segments (four sealed, one open), deletes every other
//! one of the first 1024, and compacts; it is killed **after the first batch of copies is synced
//! but before the index points at them**, or **after that batch committed** (the next batch not
//! started, the new segment not sealed). After the reopen every kept block reads back exactly,
//! every deleted one is absent, the counters match, and a compaction pass then leaves the disk
//! holding exactly the live bytes.
//!
//! Two more kill a pass that merges small segments: the child uploads 150 small datasets (a
//! segment file each) and compacts, and is killed at the same two points of the merge's first
//! batch. After the reopen every dataset reads back whole with valid proofs, the counters
//! match, and a pass then merges what is left, leaving the disk holding exactly the live bytes
//! in a few files.
//!
//! The parent then reopens the store and proves that recovery is exact: only A is listed, every
//! leaf of A reads back byte-for-byte with a valid proof, nothing of B is readable, no session is
//! left open, the counters match the index (`audit`), the quota counts exactly A's blocks plus
//! its manifest, nothing is reserved, B's segment file is gone after `reclaim_now` (segments hold
//! exactly A's bytes), and the store is usable: B uploads and reads back afterwards, and both
//! datasets survive one more reopen.
//!
//! All data is derived deterministically from (dataset, block index), so the parent recomputes
//! the expected bytes, block CIDs, tree CIDs (with `CodexTree`) and manifest CIDs independently of
//! the store. Waiting for the child is event-driven (its stdout lines through a channel, with a
//! timeout), never a fixed sleep.
#![cfg(unix)]

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, sync_channel},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use cairn_core::{Block, Cid, CodexTree, Manifest, VerifiedLeaf, cid::cid_digest};
use cairn_store::{DatasetMeta, Store, StoreConfig, StoreError};
use tempfile::TempDir;

/// Block size of every test block.
const BS: usize = 64 * 1024;
/// Blocks in dataset A (the one that must survive).
const A_BLOCKS: u64 = 20;
/// Blocks of dataset B in the "inside finish" scenario, and re-uploaded after recovery.
const B_BLOCKS: u64 = 30;
/// Seeds naming the two datasets' data.
const DATASET_A: u64 = 0xA;
const DATASET_B: u64 = 0xB;
/// The child announces "B writing" after this many blocks of B.
const B_ANNOUNCE_AFTER: u64 = 50;
/// Bounds on the child's B stream if the parent never kills it.
const CHILD_MAX_BLOCKS: u64 = 20_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(60);
/// How long the parent waits for each line from the child.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Leaf batch size in the "inside finish" scenario; the child stops after the 2nd batch.
const LEAF_BATCH: usize = 4;
const STOP_AT_BATCH: usize = 2;

/// Environment variables telling the child test what to do.
const CHILD_DIR_ENV: &str = "CAIRN_CRASH_CHILD_DIR";
const CHILD_MODE_ENV: &str = "CAIRN_CRASH_CHILD_MODE";
const MODE_DURING_WRITES: &str = "during-writes";
const MODE_IN_FINISH: &str = "in-finish";
const MODE_COMPACT_SYNCED: &str = "compact-synced";
const MODE_COMPACT_COMMITTED: &str = "compact-committed";
const MODE_OVER_PARTIAL: &str = "over-partial";
/// Leaves of B a download stored before B's upload began, in the "over a partial download"
/// scenario: some inside the leaf batches the upload commits before the kill, some beyond.
const PARTIAL_B_LEAVES: &[u64] = &[0, 3, 12, 29];
const MODE_LISTED_WHILE_WRITING: &str = "listed-while-writing";
/// Leaves of B a download stores while B's upload writes its leaf index, in the "listed while
/// writing" scenario: beyond the batches the upload commits before the kill.
const LISTED_B_LEAVES: &[u64] = &[20];
/// Seed of the compaction scenarios' blocks.
const DATASET_C: u64 = 0xC;
/// Blocks the compaction child stores: four full segments and one more.
const C_BLOCKS: u64 = 4 * C_PER_SEGMENT + 1;
/// Blocks per shared segment in the compaction scenarios (16 MiB segments).
const C_PER_SEGMENT: u64 = 256;
const MODE_MERGE_SYNCED: &str = "merge-synced";
const MODE_MERGE_COMMITTED: &str = "merge-committed";
/// Small datasets the merge child uploads, each into a segment of its own: enough that the
/// merge takes two batches of copies (three blocks each, with the manifest), and that what the
/// first batch leaves is still enough small segments for the next pass to merge.
const M_DATASETS: u64 = 150;
/// Blocks per small dataset of the merge scenarios.
const M_BLOCKS: u64 = 2;
/// Seed of the first small dataset (dataset `k` is `DATASET_M + k`).
const DATASET_M: u64 = 0x1000;
/// Segment files the merge scenarios may leave after the last pass: the merged ones.
const M_MAX_FILES_AFTER: usize = 3;
/// Name of the child test, as `--exact` wants it.
const CHILD_TEST: &str = "crash_child";
/// Prefix of the child's event lines (libtest may print "test crash_child ... " on the same line,
/// so the parent looks for the marker anywhere in a line).
const MARKER: &str = "CAIRN-CRASH-EVENT:";
/// Child stdout lines buffered between the reader thread and the parent (the child prints a
/// handful; after the kill the parent stops reading and the thread ends on the dropped receiver).
const CHILD_LINES_BUFFERED: usize = 64;

// ---------------------------------------------------------------------------------------------
// Deterministic data

/// Block `index` of dataset `dataset`: 64 KiB of xorshift64* output seeded from both, so no two
/// blocks (within or across datasets) repeat.
fn block_bytes(dataset: u64, index: u64) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64
        ^ dataset.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ index.wrapping_add(1).wrapping_mul(0xA24B_AED4_963E_E407);
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(BS);
    while out.len() < BS {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(BS);
    Bytes::from(out)
}

fn block(dataset: u64, index: u64) -> Block {
    Block::data_block(block_bytes(dataset, index))
}

/// The metadata every upload in this file uses.
fn meta(blocks: u64) -> DatasetMeta {
    DatasetMeta {
        dataset_size: blocks * BS as u64,
        block_size: BS as u64,
        filename: None,
        mimetype: None,
    }
}

/// What a dataset of `blocks` blocks must look like, computed without the store.
struct Expected {
    tree: Cid,
    manifest: Manifest,
    manifest_cid: Cid,
}

fn expected(dataset: u64, blocks: u64) -> Expected {
    let digests = (0..blocks)
        .map(|i| cid_digest(block(dataset, i).cid()).expect("sha256 block CID"))
        .collect();
    let tree = CodexTree::new(digests).expect("non-empty tree").cid();
    let manifest = Manifest::new(tree, blocks * BS as u64, BS as u64);
    let manifest_cid = manifest.cid();
    Expected {
        tree,
        manifest,
        manifest_cid,
    }
}

/// Uploads `blocks` blocks of `dataset` through an upload session.
fn upload(store: &Store, dataset: u64, blocks: u64) -> Result<(Cid, Manifest), StoreError> {
    let mut w = store.begin_dataset()?;
    for i in 0..blocks {
        w.write(&block(dataset, i))?;
    }
    let s = w.finish(meta(blocks))?;
    Ok((s.manifest_cid, s.manifest))
}

fn quiet() -> StoreConfig {
    StoreConfig {
        background_reclaim: false,
        ..StoreConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The child side

/// Prints one event line for the parent and flushes it.
fn say(event: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARKER}{event}").expect("write event to stdout");
    out.flush().expect("flush stdout");
}

/// Set once dataset A is stored, so the hook only fires during B's finish.
static HOOK_ARMED: AtomicBool = AtomicBool::new(false);
/// Leaf batches committed while armed.
static LEAF_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// The store's crash hook in the "inside finish" child: after the 2nd committed leaf batch of B,
/// announce it and wait to be killed.
fn crash_hook(point: &'static str) {
    if point != "finish:leaf-batch" || !HOOK_ARMED.load(Ordering::SeqCst) {
        return;
    }
    if LEAF_BATCHES.fetch_add(1, Ordering::SeqCst) + 1 == STOP_AT_BATCH {
        announce_and_wait_for_the_kill("in finish");
    }
}

/// Announces `event` and waits to be killed; aborts if the parent never does.
fn announce_and_wait_for_the_kill(event: &str) -> ! {
    say(event);
    let deadline = Instant::now() + CHILD_MAX_TIME;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("crash child: not killed within {CHILD_MAX_TIME:?} after {event:?}; aborting");
    std::process::abort();
}

/// The child process's work. Passes at once in a normal test run (no environment variable).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mode = std::env::var(CHILD_MODE_ENV).expect("child mode variable");
    match mode.as_str() {
        MODE_DURING_WRITES => child_during_writes(&dir),
        MODE_IN_FINISH => child_in_finish(&dir),
        MODE_COMPACT_SYNCED => child_in_compaction(&dir, stop_after_synced),
        MODE_COMPACT_COMMITTED => child_in_compaction(&dir, stop_after_committed),
        MODE_MERGE_SYNCED => child_in_merge(&dir, stop_after_synced),
        MODE_MERGE_COMMITTED => child_in_merge(&dir, stop_after_committed),
        MODE_OVER_PARTIAL => child_over_partial(&dir),
        MODE_LISTED_WHILE_WRITING => child_listed_while_writing(&dir),
        other => panic!("unknown crash child mode {other:?}"),
    }
}

fn child_during_writes(dir: &Path) {
    let store = Store::open(dir, quiet()).expect("child: open store");
    let (a, _) = upload(&store, DATASET_A, A_BLOCKS).expect("child: upload A");
    say(&format!("A {a}"));
    let mut w = store.begin_dataset().expect("child: begin B");
    let start = Instant::now();
    for i in 0..CHILD_MAX_BLOCKS {
        w.write(&block(DATASET_B, i)).expect("child: write B block");
        if i + 1 == B_ANNOUNCE_AFTER {
            say("B writing");
        }
        if start.elapsed() > CHILD_MAX_TIME {
            break;
        }
    }
    // Not killed in time: exit without unwinding (the writer must not roll back cleanly).
    eprintln!(
        "crash child: wrote {} blocks of B without being killed",
        w.blocks_written()
    );
    std::process::exit(2);
}

fn child_in_finish(dir: &Path) {
    let cfg = StoreConfig {
        leaf_batch: LEAF_BATCH,
        crash_hook: Some(crash_hook),
        ..quiet()
    };
    let store = Store::open(dir, cfg).expect("child: open store");
    let (a, _) = upload(&store, DATASET_A, A_BLOCKS).expect("child: upload A");
    say(&format!("A {a}"));
    HOOK_ARMED.store(true, Ordering::SeqCst);
    let res = upload(&store, DATASET_B, B_BLOCKS);
    eprintln!("crash child: B's finish returned ({res:?}) without the crash hook stopping it");
    std::process::exit(2);
}

/// Stores B's manifest and its leaves `indices`, as a download of B that got that far.
fn download_part_of_b(store: &Store, indices: &[u64]) {
    let blocks: Vec<Block> = (0..B_BLOCKS).map(|i| block(DATASET_B, i)).collect();
    let digests = blocks
        .iter()
        .map(|b| cid_digest(b.cid()).expect("sha256 block CID"))
        .collect();
    let tree = CodexTree::new(digests).expect("non-empty tree");
    store
        .put_block(&expected(DATASET_B, B_BLOCKS).manifest.to_block())
        .expect("child: put B's manifest");
    let leaves: Vec<VerifiedLeaf> = indices
        .iter()
        .map(|&i| {
            let b = blocks[usize::try_from(i).expect("small index")].clone();
            let proof = tree.proof(i).expect("leaf in range");
            VerifiedLeaf::verify(tree.cid(), i, B_BLOCKS, b, proof).expect("valid leaf")
        })
        .collect();
    store
        .put_leaves(&tree.cid(), &leaves)
        .expect("child: put B's leaves");
}

/// A download stored part of B; then B is uploaded, and killed after two leaf batches.
fn child_over_partial(dir: &Path) {
    let cfg = StoreConfig {
        leaf_batch: LEAF_BATCH,
        crash_hook: Some(crash_hook),
        ..quiet()
    };
    let store = Store::open(dir, cfg).expect("child: open store");
    let (a, _) = upload(&store, DATASET_A, A_BLOCKS).expect("child: upload A");
    say(&format!("A {a}"));
    download_part_of_b(&store, PARTIAL_B_LEAVES);
    HOOK_ARMED.store(true, Ordering::SeqCst);
    let res = upload(&store, DATASET_B, B_BLOCKS);
    eprintln!("crash child: B's finish returned ({res:?}) without the crash hook stopping it");
    std::process::exit(2);
}

/// The store of the "listed while writing" child, for its hook.
static LISTING_STORE: std::sync::Mutex<Option<Store>> = std::sync::Mutex::new(None);

/// The hook of the "listed while writing" child: after B's first leaf batch a download of B
/// stores its manifest and some leaves; after the second, the child announces it and waits to
/// be killed.
fn listed_while_writing_hook(point: &'static str) {
    if point != "finish:leaf-batch" || !HOOK_ARMED.load(Ordering::SeqCst) {
        return;
    }
    let batch = LEAF_BATCHES.fetch_add(1, Ordering::SeqCst) + 1;
    if batch == 1 {
        let store = LISTING_STORE
            .lock()
            .expect("store slot")
            .clone()
            .expect("the child set the store");
        download_part_of_b(&store, LISTED_B_LEAVES);
    }
    if batch == STOP_AT_BATCH {
        announce_and_wait_for_the_kill("in finish");
    }
}

/// B is uploaded; a download of B lists it while the upload writes, and the upload is killed.
fn child_listed_while_writing(dir: &Path) {
    let cfg = StoreConfig {
        leaf_batch: LEAF_BATCH,
        crash_hook: Some(listed_while_writing_hook),
        ..quiet()
    };
    let store = Store::open(dir, cfg).expect("child: open store");
    let (a, _) = upload(&store, DATASET_A, A_BLOCKS).expect("child: upload A");
    say(&format!("A {a}"));
    *LISTING_STORE.lock().expect("store slot") = Some(store.clone());
    HOOK_ARMED.store(true, Ordering::SeqCst);
    let res = upload(&store, DATASET_B, B_BLOCKS);
    eprintln!("crash child: B's finish returned ({res:?}) without the crash hook stopping it");
    std::process::exit(2);
}

/// Whether block `i` of the compaction scenarios is kept (the rest are deleted before the pass).
fn c_kept(i: u64) -> bool {
    i.is_multiple_of(2) || i >= 4 * C_PER_SEGMENT
}

/// The store settings of the compaction scenarios (parent and child).
fn c_config() -> StoreConfig {
    StoreConfig {
        segment_roll_bytes: C_PER_SEGMENT * BS as u64,
        ..quiet()
    }
}

/// Announces reaching `point` when it is `wanted` and the hook is armed, then waits to be killed.
fn stop_at(point: &'static str, wanted: &str) {
    if point != wanted || !HOOK_ARMED.load(Ordering::SeqCst) {
        return;
    }
    announce_and_wait_for_the_kill("in compaction");
}

fn stop_after_synced(point: &'static str) {
    stop_at(point, "compact:synced");
}

fn stop_after_committed(point: &'static str) {
    stop_at(point, "compact:committed");
}

fn child_in_compaction(dir: &Path, hook: fn(&'static str)) {
    let cfg = StoreConfig {
        crash_hook: Some(hook),
        ..c_config()
    };
    let store = Store::open(dir, cfg).expect("child: open store");
    for i in 0..C_BLOCKS {
        store
            .put_block(&block(DATASET_C, i))
            .expect("child: put block");
    }
    for i in (0..C_BLOCKS).filter(|&i| !c_kept(i)) {
        store
            .delete(block(DATASET_C, i).cid())
            .expect("child: delete block");
    }
    HOOK_ARMED.store(true, Ordering::SeqCst);
    let res = store.compact();
    eprintln!("crash child: compaction returned ({res:?}) without the crash hook stopping it");
    std::process::exit(2);
}

/// Uploads the small datasets of the merge scenarios and compacts, which merges them.
fn child_in_merge(dir: &Path, hook: fn(&'static str)) {
    let cfg = StoreConfig {
        crash_hook: Some(hook),
        ..quiet()
    };
    let store = Store::open(dir, cfg).expect("child: open store");
    for k in 0..M_DATASETS {
        upload(&store, DATASET_M + k, M_BLOCKS).expect("child: upload a small dataset");
    }
    HOOK_ARMED.store(true, Ordering::SeqCst);
    let res = store.compact();
    eprintln!("crash child: compaction returned ({res:?}) without the crash hook stopping it");
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------------
// The parent side

/// A running child and its stdout lines. Killed on drop, so a failing parent leaves no process.
struct Crashee {
    child: Option<Child>,
    lines: Receiver<Option<String>>,
    seen: Vec<String>,
    stderr_path: PathBuf,
}

impl Crashee {
    fn spawn(mode: &str, store_dir: &Path, stderr_path: PathBuf) -> Crashee {
        let stderr = std::fs::File::create(&stderr_path).expect("create child stderr file");
        let mut child = Command::new(std::env::current_exe().expect("current test binary"))
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, store_dir)
            .env(CHILD_MODE_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn the crash child");
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, lines) = sync_channel(CHILD_LINES_BUFFERED);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        Crashee {
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr_path,
        }
    }

    /// What the child said so far, for failure messages.
    fn transcript(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!(
            "child stdout:\n{}\nchild stderr:\n{stderr}",
            self.seen.join("\n")
        )
    }

    /// Waits for the event line starting with `prefix`; returns the rest of it.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if let Some(at) = line.find(MARKER) {
                        let event = &line[at + MARKER.len()..];
                        if let Some(rest) = event.strip_prefix(prefix) {
                            return rest.trim().to_owned();
                        }
                    }
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "crash child ended its output before announcing {prefix:?}\n{}",
                    self.transcript()
                ),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "crash child did not announce {prefix:?} within {EVENT_TIMEOUT:?}\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// SIGKILLs the child and checks that it was still running (killed, not exited).
    fn kill(&mut self) {
        let mut child = self.child.take().expect("child still held");
        child.kill().expect("SIGKILL the crash child");
        let status = child.wait().expect("reap the crash child");
        assert_eq!(
            status.signal(),
            Some(9),
            "crash child should have died of SIGKILL mid-upload, but ended with {status}\n{}",
            self.transcript()
        );
    }
}

impl Drop for Crashee {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the parent expects to find after recovery, per scenario.
struct Scenario {
    name: &'static str,
    /// Whether B was left as a dataset being deleted (a crash after leaf batches committed).
    b_pending_reclaim: bool,
    /// Leaves of B that `reclaim_now` must drop.
    b_leaves_committed: usize,
}

fn assert_consistent(store: &Store, ctx: &str) {
    let a = store
        .audit()
        .unwrap_or_else(|e| panic!("{ctx}: audit failed: {e}"));
    assert_eq!(
        a.used_recorded, a.used_actual,
        "{ctx}: used-bytes counter differs from the blocks in the index ({a:?})"
    );
    assert_eq!(
        a.blocks_recorded, a.blocks_actual,
        "{ctx}: block counter differs from the blocks in the index ({a:?})"
    );
    assert!(
        a.segments_consistent,
        "{ctx}: a segment's live-bytes counter differs from its blocks ({a:?})"
    );
    assert_eq!(
        a.open_sessions, 0,
        "{ctx}: upload sessions left open after recovery ({a:?})"
    );
}

/// Reads every leaf of the dataset `exp` describes and checks bytes, CIDs and proofs.
fn assert_dataset_intact(store: &Store, dataset: u64, blocks: u64, exp: &Expected, ctx: &str) {
    let root = cid_digest(&exp.tree).expect("tree CID digest");
    for i in 0..blocks {
        let (blk, proof) = store
            .get_leaf(&exp.tree, i)
            .unwrap_or_else(|e| panic!("{ctx}: reading leaf {i} failed: {e}"))
            .unwrap_or_else(|| panic!("{ctx}: leaf {i} is missing"));
        let want = block(dataset, i);
        assert_eq!(blk.cid(), want.cid(), "{ctx}: leaf {i} has the wrong CID");
        assert!(
            blk.data() == want.data(),
            "{ctx}: leaf {i} bytes differ from the original"
        );
        let leaf = cid_digest(blk.cid()).expect("leaf CID digest");
        proof
            .verify_leaf(&leaf, &root, i, blocks)
            .unwrap_or_else(|e| panic!("{ctx}: proof of leaf {i} does not verify: {e}"));
    }
    assert!(
        store
            .get_leaf(&exp.tree, blocks)
            .unwrap_or_else(|e| panic!("{ctx}: reading past the end failed: {e}"))
            .is_none(),
        "{ctx}: a leaf beyond the dataset's end is readable"
    );
}

/// Asserts that nothing of dataset B (its first `blocks` blocks, tree `b_tree`) is readable.
fn assert_b_invisible(store: &Store, b_tree: &Cid, blocks: u64, ctx: &str, check_blocks: bool) {
    for i in 0..blocks {
        assert!(
            store
                .get_leaf(b_tree, i)
                .unwrap_or_else(|e| panic!("{ctx}: reading B leaf {i} failed: {e}"))
                .is_none(),
            "{ctx}: leaf {i} of the interrupted dataset B is readable"
        );
        if check_blocks {
            assert!(
                !store
                    .has_block(block(DATASET_B, i).cid())
                    .unwrap_or_else(|e| panic!("{ctx}: has_block of B block {i} failed: {e}")),
                "{ctx}: block {i} of the interrupted dataset B is still stored"
            );
        }
    }
}

/// Reopens the store the killed child left and checks the recovery guarantees.
fn check_recovered(store_dir: &Path, reported_a: &str, sc: &Scenario) {
    let name = sc.name;
    let a = expected(DATASET_A, A_BLOCKS);
    let b = expected(DATASET_B, B_BLOCKS);
    assert_eq!(
        reported_a,
        a.manifest_cid.to_string(),
        "{name}: the child's manifest CID for A differs from the one computed independently"
    );

    let store = Store::open(store_dir, quiet())
        .unwrap_or_else(|e| panic!("{name}: reopening the store after SIGKILL failed: {e}"));
    let ctx = format!("{name}, after reopen");

    // Listing: exactly A, nothing partial of B.
    let listed = store
        .list_manifests()
        .unwrap_or_else(|e| panic!("{ctx}: list_manifests failed: {e}"));
    let listed_cids: Vec<String> = listed.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(
        listed_cids,
        vec![a.manifest_cid.to_string()],
        "{ctx}: the listing should hold exactly dataset A"
    );
    assert_eq!(
        listed[0].1, a.manifest,
        "{ctx}: A's listed manifest differs from the expected one"
    );
    assert_eq!(
        store
            .get_manifest(&a.manifest_cid)
            .unwrap_or_else(|e| panic!("{ctx}: get_manifest(A) failed: {e}")),
        Some(a.manifest.clone()),
        "{ctx}: A's manifest does not read back"
    );
    assert_dataset_intact(&store, DATASET_A, A_BLOCKS, &a, &ctx);
    assert_b_invisible(&store, &b.tree, B_BLOCKS, &ctx, !sc.b_pending_reclaim);
    assert_consistent(&store, &ctx);
    assert_eq!(
        store
            .reclaim_pending()
            .unwrap_or_else(|e| panic!("{ctx}: reclaim_pending failed: {e}")),
        sc.b_pending_reclaim,
        "{ctx}: whether B's partial leaves await reclaim"
    );

    // Reclaim what the rollback marked for deletion.
    let reclaimed = store
        .reclaim_now()
        .unwrap_or_else(|e| panic!("{ctx}: reclaim_now failed: {e}"));
    let ctx = format!("{name}, after reclaim");
    assert_eq!(
        reclaimed, sc.b_leaves_committed,
        "{ctx}: reclaim_now should drop exactly the leaves of B committed before the kill"
    );
    assert!(
        !store.reclaim_pending().expect("reclaim_pending"),
        "{ctx}: reclaim still pending after reclaim_now"
    );
    assert_consistent(&store, &ctx);
    assert_b_invisible(&store, &b.tree, B_BLOCKS, &ctx, true);
    assert_dataset_intact(&store, DATASET_A, A_BLOCKS, &a, &ctx);
    // B's tree (stored before its first leaf batch) went with its leaves: the index keeps
    // exactly what a store holding only A keeps.
    let only_a = Store::in_memory(quiet()).expect("in-memory store");
    upload(&only_a, DATASET_A, A_BLOCKS).expect("upload A again");
    assert_eq!(
        store.proof_storage().expect("proof_storage"),
        only_a.proof_storage().expect("proof_storage"),
        "{ctx}: B's tree or proofs left in the index"
    );

    // Space: exactly A's blocks plus A's manifest; nothing reserved; segments hold only that.
    let mlen = store
        .get_block(&a.manifest_cid)
        .unwrap_or_else(|e| panic!("{ctx}: reading A's manifest block failed: {e}"))
        .unwrap_or_else(|| panic!("{ctx}: A's manifest block is missing"))
        .data()
        .len() as u64;
    let a_bytes = A_BLOCKS * BS as u64 + mlen;
    let space = store
        .space()
        .unwrap_or_else(|e| panic!("{ctx}: space failed: {e}"));
    assert_eq!(
        space.quota_used_bytes, a_bytes,
        "{ctx}: used bytes should be A's {A_BLOCKS} blocks plus its {mlen}-byte manifest ({space:?})"
    );
    assert_eq!(
        space.total_blocks,
        A_BLOCKS + 1,
        "{ctx}: total blocks should be A's blocks plus its manifest ({space:?})"
    );
    assert_eq!(
        space.quota_reserved_bytes, 0,
        "{ctx}: quota still reserved after recovery ({space:?})"
    );
    let disk = store
        .disk_bytes()
        .unwrap_or_else(|e| panic!("{ctx}: disk_bytes failed: {e}"));
    assert_eq!(
        disk, a_bytes,
        "{ctx}: segment files should hold exactly A's bytes (B's segment removed)"
    );

    // The store is usable: B uploads and reads back in full.
    let (b_cid, b_manifest) = upload(&store, DATASET_B, B_BLOCKS)
        .unwrap_or_else(|e| panic!("{name}: uploading B after recovery failed: {e}"));
    let ctx = format!("{name}, after re-uploading B");
    assert_eq!(
        b_cid, b.manifest_cid,
        "{ctx}: B's manifest CID differs from the one computed independently"
    );
    assert_eq!(
        b_manifest.tree_cid, b.tree,
        "{ctx}: B's tree CID differs from the one computed independently (so the invisibility \
         checks above looked at the wrong tree)"
    );
    assert_dataset_intact(&store, DATASET_B, B_BLOCKS, &b, &ctx);
    assert_dataset_intact(&store, DATASET_A, A_BLOCKS, &a, &ctx);
    assert_consistent(&store, &ctx);
    let b_bytes = B_BLOCKS * BS as u64 + b.manifest.to_block().data().len() as u64;
    let both = a_bytes + b_bytes;
    let space = store.space().expect("space");
    assert_eq!(
        space.quota_used_bytes, both,
        "{ctx}: used bytes should be A and B with their manifests ({space:?})"
    );
    drop(store);

    // And both survive a clean reopen.
    let store = Store::open(store_dir, quiet())
        .unwrap_or_else(|e| panic!("{name}: reopening after re-uploading B failed: {e}"));
    let ctx = format!("{name}, after the final reopen");
    let mut listed: Vec<String> = store
        .list_manifests()
        .expect("list_manifests")
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    listed.sort();
    let mut want = vec![a.manifest_cid.to_string(), b.manifest_cid.to_string()];
    want.sort();
    assert_eq!(listed, want, "{ctx}: the listing should hold A and B");
    assert_dataset_intact(&store, DATASET_B, B_BLOCKS, &b, &ctx);
    assert_consistent(&store, &ctx);
}

/// Runs a child in `mode`, waits until it has reported A and then `event`, and kills it.
/// Returns the temporary directory (kept until dropped), the store's directory and what the
/// child reported of A.
fn killed_after(mode: &str, event: &str) -> (TempDir, std::path::PathBuf, String) {
    let tmp = TempDir::new().expect("temp dir");
    let store_dir = tmp.path().join("store");
    let mut child = Crashee::spawn(mode, &store_dir, tmp.path().join("child.stderr"));
    let reported_a = child.wait_for("A ");
    child.wait_for(event);
    child.kill();
    drop(child);
    (tmp, store_dir, reported_a)
}

/// The leaves of B stored when a child was killed inside B's finish after
/// `STOP_AT_BATCH` leaf batches, besides `downloaded` (leaves a download had stored before).
fn stored_after_finish_killed(downloaded: &[u64]) -> Vec<u64> {
    let written = (LEAF_BATCH * STOP_AT_BATCH) as u64;
    let mut stored: Vec<u64> = (0..written).collect();
    stored.extend(downloaded.iter().filter(|&&i| i >= written));
    stored
}

/// SIGKILL while B's blocks are being appended: B's session and segment (with bytes on disk) are
/// rolled back at open, the segment file is deleted, A is untouched.
#[test]
fn sigkill_during_block_writes_recovers() {
    let (_tmp, store_dir, reported_a) = killed_after(MODE_DURING_WRITES, "B writing");
    check_recovered(
        &store_dir,
        &reported_a,
        &Scenario {
            name: "killed during block writes",
            b_pending_reclaim: false,
            b_leaves_committed: 0,
        },
    );
}

/// SIGKILL inside `finish`, after two leaf batches of B were committed: B is marked writing with
/// 8 leaves indexed; the open marks it for deletion, reads never see it, and `reclaim_now` drops
/// exactly those leaves and B's segment.
#[test]
fn sigkill_inside_finish_recovers() {
    let (_tmp, store_dir, reported_a) = killed_after(MODE_IN_FINISH, "in finish");
    check_recovered(
        &store_dir,
        &reported_a,
        &Scenario {
            name: "killed inside finish",
            b_pending_reclaim: true,
            b_leaves_committed: LEAF_BATCH * STOP_AT_BATCH,
        },
    );
}

/// Reopens the store a child left with A whole and B listed but partial, holding exactly the
/// leaves `stored`, and checks that B says so: each leaf it holds reads back with a valid
/// proof, the first one it lacks is reported missing and a download reserves room for all it
/// lacks. Then the leaves it lacks are put, as the download would, and B is whole, is kept as
/// a tree once settled, and survives a reopen.
fn check_partial_b_recovered(store_dir: &Path, reported_a: &str, stored: &[u64], name: &str) {
    let a = expected(DATASET_A, A_BLOCKS);
    let b = expected(DATASET_B, B_BLOCKS);
    assert_eq!(reported_a, a.manifest_cid.to_string(), "{name}: A's CID");
    let store = Store::open(store_dir, quiet())
        .unwrap_or_else(|e| panic!("{name}: reopening the store after SIGKILL failed: {e}"));
    let ctx = format!("{name}, after reopen");
    let mut listed: Vec<String> = store
        .list_manifests()
        .expect("list_manifests")
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    listed.sort();
    let mut want = vec![a.manifest_cid.to_string(), b.manifest_cid.to_string()];
    want.sort();
    assert_eq!(listed, want, "{ctx}: A and the partial B are listed");
    assert_dataset_intact(&store, DATASET_A, A_BLOCKS, &a, &ctx);
    assert_consistent(&store, &ctx);
    assert!(
        !store.reclaim_pending().expect("reclaim_pending"),
        "{ctx}: nothing is being deleted"
    );
    let root = cid_digest(&b.tree).expect("tree CID digest");
    for i in 0..B_BLOCKS {
        let got = store
            .get_leaf(&b.tree, i)
            .unwrap_or_else(|e| panic!("{ctx}: reading B leaf {i} failed: {e}"));
        match got {
            Some((blk, proof)) => {
                assert!(stored.contains(&i), "{ctx}: B leaf {i} should be missing");
                assert!(
                    blk.data() == block(DATASET_B, i).data(),
                    "{ctx}: B leaf {i}"
                );
                let leaf = cid_digest(blk.cid()).expect("leaf CID digest");
                proof
                    .verify_leaf(&leaf, &root, i, B_BLOCKS)
                    .unwrap_or_else(|e| panic!("{ctx}: proof of B leaf {i}: {e}"));
            }
            None => assert!(!stored.contains(&i), "{ctx}: B leaf {i} should be stored"),
        }
    }
    let missing: Vec<u64> = (0..B_BLOCKS).filter(|i| !stored.contains(i)).collect();
    assert_eq!(
        store
            .first_missing_leaf(&b.tree, 0..B_BLOCKS)
            .expect("first_missing_leaf"),
        missing.first().copied(),
        "{ctx}: B's first missing leaf"
    );
    let room = store
        .reserve_room(&b.tree, 0..B_BLOCKS, BS as u64)
        .unwrap_or_else(|e| panic!("{ctx}: reserving room for B failed: {e}"));
    assert_eq!(
        room.bytes(),
        missing.len() as u64 * BS as u64,
        "{ctx}: room for B's missing leaves"
    );
    drop(room);

    // The download goes on.
    download_part_of_b(&store, &missing);
    let ctx = format!("{name}, after the download completed");
    assert_dataset_intact(&store, DATASET_B, B_BLOCKS, &b, &ctx);
    assert!(
        store.settle_tree(&b.tree).expect("settle_tree") > 0,
        "{ctx}"
    );
    assert_eq!(
        store.proof_storage().expect("proof_storage").1,
        0,
        "{ctx}: proofs kept after settling"
    );
    assert_dataset_intact(&store, DATASET_B, B_BLOCKS, &b, &ctx);
    assert_consistent(&store, &ctx);
    drop(store);
    let store = Store::open(store_dir, quiet()).expect("final reopen");
    let ctx = format!("{name}, after the final reopen");
    assert_dataset_intact(&store, DATASET_A, A_BLOCKS, &a, &ctx);
    assert_dataset_intact(&store, DATASET_B, B_BLOCKS, &b, &ctx);
    assert_consistent(&store, &ctx);
}

/// SIGKILL inside the finish of an upload of B, which a download had stored part of: B stays
/// listed and partial, and says which leaves it lacks. Before, the upload stored B's tree in its
/// first transaction, and a stored tree told `first_missing_leaf` and `reserve_room` that every
/// leaf was there: the download never fetched the rest (found by review).
#[test]
fn sigkill_inside_an_upload_over_a_partial_download_recovers() {
    let (_tmp, store_dir, reported_a) = killed_after(MODE_OVER_PARTIAL, "in finish");
    let stored = stored_after_finish_killed(PARTIAL_B_LEAVES);
    check_partial_b_recovered(
        &store_dir,
        &reported_a,
        &stored,
        "killed inside an upload over a partial download",
    );
}

/// SIGKILL inside the finish of an upload of B, after a download of B stored B's manifest (and
/// a leaf) meanwhile: B stays listed, as a partial dataset that says what it lacks. Before, the
/// open rolled the upload back by marking B deleting while its manifest stayed listed, and a
/// download of it was told "not stored" for good (found by review).
#[test]
fn sigkill_inside_an_upload_whose_dataset_a_download_listed_recovers() {
    let (_tmp, store_dir, reported_a) = killed_after(MODE_LISTED_WHILE_WRITING, "in finish");
    let stored = stored_after_finish_killed(LISTED_B_LEAVES);
    check_partial_b_recovered(
        &store_dir,
        &reported_a,
        &stored,
        "killed inside an upload whose dataset a download listed",
    );
}

/// Runs a child in `mode`, kills it once it says it is in a compaction pass (a merge is one),
/// and checks with `check` the store it left.
fn kill_in_compaction(mode: &str, name: &str, check: fn(&Path, &str)) {
    let tmp = TempDir::new().expect("temp dir");
    let store_dir = tmp.path().join("store");
    let mut child = Crashee::spawn(mode, &store_dir, tmp.path().join("child.stderr"));
    child.wait_for("in compaction");
    child.kill();
    drop(child);
    check(&store_dir, name);
}

/// Reopens the store a compaction child was killed in: `check` holds after the reopen, then a
/// pass moves what is left and `check` holds again, the counters match each time, and the disk
/// ends up holding exactly the live bytes. Returns the store.
fn reopen_and_compact_again(
    store_dir: &Path,
    config: StoreConfig,
    name: &str,
    check: impl Fn(&Store, &str),
) -> Store {
    let store =
        Store::open(store_dir, config).unwrap_or_else(|e| panic!("{name}: reopening failed: {e}"));
    let ctx = format!("{name}, after the reopen");
    check(&store, &ctx);
    assert_consistent(&store, &ctx);
    let r = store
        .compact()
        .unwrap_or_else(|e| panic!("{name}: compaction after the reopen failed: {e}"));
    assert!(r.moved_blocks > 0, "{name}: nothing left to compact? {r:?}");
    let ctx = format!("{name}, after compacting again");
    check(&store, &ctx);
    assert_consistent(&store, &ctx);
    assert_eq!(
        store.disk_bytes().expect("disk bytes"),
        store.space().expect("space").quota_used_bytes,
        "{ctx}: segments should hold only live bytes"
    );
    store
}

/// After a compaction child was killed: every kept block is intact and every deleted one absent,
/// the counters match, and one more pass leaves the disk holding exactly the live bytes.
fn check_compaction_recovered(store_dir: &Path, name: &str) {
    reopen_and_compact_again(store_dir, c_config(), name, |store, ctx| {
        for i in 0..C_BLOCKS {
            let want = block(DATASET_C, i);
            let got = store
                .get_block(want.cid())
                .unwrap_or_else(|e| panic!("{ctx}: block {i} unreadable: {e}"));
            if c_kept(i) {
                let got = got.unwrap_or_else(|| panic!("{ctx}: kept block {i} is missing"));
                assert_eq!(got.data(), want.data(), "{ctx}: block {i} bytes");
            } else {
                assert!(got.is_none(), "{ctx}: deleted block {i} is back");
            }
        }
    });
}

/// SIGKILL after compaction synced its first batch of copies, before the index names them: the
/// new segment has no live bytes and is deleted at open; the old segments are untouched.
#[test]
fn sigkill_in_compaction_before_commit_recovers() {
    kill_in_compaction(
        MODE_COMPACT_SYNCED,
        "killed before a compaction commit",
        check_compaction_recovered,
    );
}

/// SIGKILL after compaction committed its first batch: those blocks are read from the new
/// (unsealed) segment, which the open seals; the rest are still in their old segments.
#[test]
fn sigkill_in_compaction_after_commit_recovers() {
    kill_in_compaction(
        MODE_COMPACT_COMMITTED,
        "killed after a compaction commit",
        check_compaction_recovered,
    );
}

/// After a merge child was killed: every small dataset reads back whole, with its manifest, the
/// counters match, and one more pass merges what is left into a few files holding exactly the
/// live bytes.
fn check_merge_recovered(store_dir: &Path, name: &str) {
    reopen_and_compact_again(store_dir, quiet(), name, |store, ctx| {
        for k in 0..M_DATASETS {
            let exp = expected(DATASET_M + k, M_BLOCKS);
            assert_dataset_intact(store, DATASET_M + k, M_BLOCKS, &exp, ctx);
            let manifest = store
                .get_manifest(&exp.manifest_cid)
                .unwrap_or_else(|e| panic!("{ctx}: manifest of dataset {k} unreadable: {e}"));
            assert_eq!(
                manifest,
                Some(exp.manifest),
                "{ctx}: manifest of dataset {k}"
            );
        }
    });
    let files = std::fs::read_dir(store_dir.join("blocks"))
        .expect("list the segment files")
        .count();
    assert!(
        files <= M_MAX_FILES_AFTER,
        "{name}, after merging again: {files} segment files for {M_DATASETS} small datasets"
    );
}

/// SIGKILL after a merge of small segments synced its first batch of copies, before the index
/// names them: the new segment has no live bytes and is deleted at open; the small segments
/// are untouched.
#[test]
fn sigkill_in_a_merge_before_commit_recovers() {
    kill_in_compaction(
        MODE_MERGE_SYNCED,
        "killed before a merge commit",
        check_merge_recovered,
    );
}

/// SIGKILL after a merge committed its first batch: the small segments it emptied are gone,
/// their blocks are read from the new segment (sealed at open), the rest are where they were.
#[test]
fn sigkill_in_a_merge_after_commit_recovers() {
    kill_in_compaction(
        MODE_MERGE_COMMITTED,
        "killed after a merge commit",
        check_merge_recovered,
    );
}
