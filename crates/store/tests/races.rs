//! An upload racing what else touches its dataset: deletes and expiry, downloads of the same
//! data, and an upload that dies part-way.
//!
//! Each test stops an upload's finish between two leaf batches with the store's crash hook
//! (`"finish:leaf-batch"`) and does the other thing there, on the finishing thread, so the
//! interleaving is exact and needs no sleeps. Leaf batches of one or two leaves make "between
//! two batches" a point with some leaves written and some not.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use cairn_core::{Block, Cid, CodexTree, Manifest, VerifiedLeaf, cid::cid_digest};
use cairn_store::{DatasetMeta, Store, StoreConfig, StoreError, StoredDataset};

const BS: usize = 64 * 1024;

/// Block `i` of dataset `seed`: 64 KiB, distinct for every (seed, i).
fn block(seed: u64, i: u64) -> Block {
    let mut data = vec![0u8; BS];
    for (j, chunk) in data.chunks_mut(8).enumerate() {
        let v = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03))
            ^ j as u64;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Block::data_block(Bytes::from(data))
}

fn blocks(seed: u64, n: u64) -> Vec<Block> {
    (0..n).map(|i| block(seed, i)).collect()
}

fn tree_of(blocks: &[Block]) -> CodexTree {
    CodexTree::new(
        blocks
            .iter()
            .map(|b| cid_digest(b.cid()).unwrap())
            .collect(),
    )
    .unwrap()
}

fn meta(n: u64) -> DatasetMeta {
    DatasetMeta {
        dataset_size: n * BS as u64,
        block_size: BS as u64,
        filename: None,
        mimetype: None,
    }
}

/// The manifest an upload of `blocks` stores (and a downloader fetches first).
fn manifest_of(blocks: &[Block]) -> Manifest {
    let n = blocks.len() as u64;
    Manifest::new(tree_of(blocks).cid(), n * BS as u64, BS as u64)
}

/// Leaf `i` as a downloader receives it: the block with its proof, checked.
fn leaf(blocks: &[Block], tree: &CodexTree, i: u64) -> VerifiedLeaf {
    let n = blocks.len() as u64;
    let b = blocks[usize::try_from(i).unwrap()].clone();
    VerifiedLeaf::verify(tree.cid(), i, n, b, tree.proof(i).unwrap()).unwrap()
}

fn upload(store: &Store, blocks: &[Block]) -> Result<StoredDataset, StoreError> {
    let mut w = store.begin_dataset()?;
    for b in blocks {
        w.write(b)?;
    }
    w.finish(meta(blocks.len() as u64))
}

fn config(leaf_batch: usize, hook: fn(&'static str)) -> StoreConfig {
    StoreConfig {
        background_reclaim: false,
        leaf_batch,
        crash_hook: Some(hook),
        ..StoreConfig::default()
    }
}

/// Every leaf of the dataset reads back with a proof that verifies, and the store says it is
/// whole.
fn assert_whole(store: &Store, blocks: &[Block], ctx: &str) {
    let tree = tree_of(blocks);
    let n = blocks.len() as u64;
    let root = cid_digest(&tree.cid()).unwrap();
    for (i, want) in blocks.iter().enumerate() {
        let i = i as u64;
        let (got, proof) = store
            .get_leaf(&tree.cid(), i)
            .unwrap_or_else(|e| panic!("{ctx}: leaf {i}: {e}"))
            .unwrap_or_else(|| panic!("{ctx}: leaf {i} is missing"));
        assert_eq!(got.data(), want.data(), "{ctx}: leaf {i}");
        proof
            .verify_leaf(&cid_digest(got.cid()).unwrap(), &root, i, n)
            .unwrap_or_else(|e| panic!("{ctx}: proof of leaf {i}: {e}"));
    }
    assert_eq!(
        store.first_missing_leaf(&tree.cid(), 0..n).unwrap(),
        None,
        "{ctx}"
    );
}

/// The leaves the store holds of a partial dataset read back with proofs that verify, and the
/// ones it lacks are reported missing (by `first_missing_leaf` and by the room a download
/// reserves for them).
fn assert_partial(store: &Store, blocks: &[Block], stored: &[u64], ctx: &str) {
    let tree = tree_of(blocks);
    let n = blocks.len() as u64;
    let root = cid_digest(&tree.cid()).unwrap();
    for i in 0..n {
        let got = store
            .get_leaf(&tree.cid(), i)
            .unwrap_or_else(|e| panic!("{ctx}: leaf {i}: {e}"));
        match got {
            Some((b, proof)) => {
                assert!(stored.contains(&i), "{ctx}: leaf {i} should be missing");
                assert_eq!(b.data(), blocks[i as usize].data(), "{ctx}: leaf {i}");
                proof
                    .verify_leaf(&cid_digest(b.cid()).unwrap(), &root, i, n)
                    .unwrap_or_else(|e| panic!("{ctx}: proof of leaf {i}: {e}"));
            }
            None => assert!(!stored.contains(&i), "{ctx}: leaf {i} should be stored"),
        }
    }
    let first_missing = (0..n).find(|i| !stored.contains(i));
    assert_eq!(
        store.first_missing_leaf(&tree.cid(), 0..n).unwrap(),
        first_missing,
        "{ctx}: first missing leaf"
    );
    let room = store
        .reserve_room(&tree.cid(), 0..n, BS as u64)
        .unwrap_or_else(|e| panic!("{ctx}: reserve_room: {e}"));
    assert_eq!(
        room.bytes(),
        (n - stored.len() as u64) * BS as u64,
        "{ctx}: room for the missing leaves"
    );
}

fn assert_consistent(store: &Store, ctx: &str) {
    let a = store.audit().unwrap();
    assert_eq!(a.used_recorded, a.used_actual, "{ctx}: used bytes ({a:?})");
    assert_eq!(a.blocks_recorded, a.blocks_actual, "{ctx}: blocks ({a:?})");
    assert!(a.segments_consistent, "{ctx}: segments ({a:?})");
    assert_eq!(a.open_sessions, 0, "{ctx}: sessions ({a:?})");
}

/// What a hook needs: the store, and the dataset's blocks.
type Shared = Mutex<Option<(Store, Vec<Block>)>>;

fn shared(s: &Shared) -> (Store, Vec<Block>) {
    s.lock()
        .unwrap()
        .clone()
        .expect("the test set the hook's state")
}

// ---------------------------------------------------------------------------------------------
// An upload of a stored dataset racing the expiry of its manifest.

static EXPIRE: Shared = Mutex::new(None);
static EXPIRE_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// At the second upload's first leaf batch, every manifest expires (and what it held is
/// reclaimed, as the maintenance pass does).
fn expire_between_batches(point: &'static str) {
    if point != "finish:leaf-batch" || EXPIRE.lock().unwrap().is_none() {
        return;
    }
    if EXPIRE_BATCHES.fetch_add(1, Ordering::SeqCst) == 0 {
        let (store, _) = shared(&EXPIRE);
        let report = store.maintenance(u64::MAX).unwrap();
        assert_eq!(report.expired, 1, "the stored dataset's manifest expired");
    }
}

/// A re-upload of a stored dataset whose manifest expires while the upload writes its leaf
/// index keeps the dataset: the upload reported it stored, so it must be whole. Before, the
/// expiry marked the dataset deleting, and the upload's last transaction finished the delete
/// (every leaf, the tree) and then listed a manifest for an empty dataset (found by review).
#[test]
fn a_reupload_racing_the_expiry_of_its_dataset_keeps_it_whole() {
    let store = Store::in_memory(config(1, expire_between_batches)).unwrap();
    let data = blocks(1, 5);
    let first = upload(&store, &data).unwrap();
    *EXPIRE.lock().unwrap() = Some((store.clone(), data.clone()));
    let again = upload(&store, &data).unwrap();
    assert_eq!(again.manifest_cid, first.manifest_cid);
    assert!(EXPIRE_BATCHES.load(Ordering::SeqCst) > 1, "the hook ran");
    let listed: Vec<Cid> = store
        .list_manifests()
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(listed, vec![again.manifest_cid]);
    assert_whole(&store, &data, "after the upload");
    store.reclaim_now().unwrap();
    assert!(!store.reclaim_pending().unwrap());
    assert_whole(&store, &data, "after reclaiming");
    assert_consistent(&store, "after reclaiming");
    EXPIRE.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// A new upload racing a download of the same data that starts and is deleted.

static DOWNLOAD_DELETED: Shared = Mutex::new(None);
static DOWNLOAD_DELETED_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// At the first leaf batch, a download of the same dataset stores its manifest, and the
/// manifest is deleted again.
fn download_starts_and_is_deleted(point: &'static str) {
    if point != "finish:leaf-batch" {
        return;
    }
    if DOWNLOAD_DELETED_BATCHES.fetch_add(1, Ordering::SeqCst) == 0 {
        let (store, data) = shared(&DOWNLOAD_DELETED);
        let m = manifest_of(&data).to_block();
        store.put_block(&m).unwrap();
        store.delete(m.cid()).unwrap();
        store.reclaim_now().unwrap();
    }
}

/// A new upload whose dataset a download lists (its manifest stored) and then deletes while the
/// upload writes its leaf index keeps the dataset whole. Before, the delete marked the dataset
/// (still being written) deleting, and the upload's last transaction wiped it (found by review).
#[test]
fn a_new_upload_racing_a_deleted_download_of_its_data_keeps_it_whole() {
    let store = Store::in_memory(config(1, download_starts_and_is_deleted)).unwrap();
    let data = blocks(2, 5);
    *DOWNLOAD_DELETED.lock().unwrap() = Some((store.clone(), data.clone()));
    let stored = upload(&store, &data).unwrap();
    assert!(
        DOWNLOAD_DELETED_BATCHES.load(Ordering::SeqCst) > 1,
        "the hook ran"
    );
    assert_eq!(store.list_manifests().unwrap().len(), 1);
    assert!(store.get_manifest(&stored.manifest_cid).unwrap().is_some());
    assert_whole(&store, &data, "after the upload");
    store.reclaim_now().unwrap();
    assert_whole(&store, &data, "after reclaiming");
    assert_consistent(&store, "after reclaiming");
    DOWNLOAD_DELETED.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// An upload holding a dataset no manifest names any more, then given up.

static GIVEN_UP: Shared = Mutex::new(None);
static GIVEN_UP_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// At the first leaf batch, a download's manifest is stored and deleted; at the second, the
/// upload dies (the panic unwinds through `finish`, which rolls the upload back).
fn download_deleted_then_upload_dies(point: &'static str) {
    if point != "finish:leaf-batch" {
        return;
    }
    match GIVEN_UP_BATCHES.fetch_add(1, Ordering::SeqCst) {
        0 => {
            let (store, data) = shared(&GIVEN_UP);
            let m = manifest_of(&data).to_block();
            store.put_block(&m).unwrap();
            store.delete(m.cid()).unwrap();
        }
        1 => panic!("the upload dies between two leaf batches"),
        _ => {}
    }
}

/// The dataset an upload held after its manifest was deleted goes once the upload is given up:
/// nothing names it any more, and nothing of it stays stored.
#[test]
fn a_held_dataset_goes_when_its_upload_is_given_up() {
    let store = Store::in_memory(config(1, download_deleted_then_upload_dies)).unwrap();
    let data = blocks(3, 5);
    *GIVEN_UP.lock().unwrap() = Some((store.clone(), data.clone()));
    let s = store.clone();
    let d = data.clone();
    let died = std::thread::spawn(move || upload(&s, &d)).join();
    assert!(died.is_err(), "the upload died");
    // The rollback reclaimed the dataset it left to nothing itself: nothing is pending.
    assert!(!store.reclaim_pending().unwrap());
    assert!(store.list_manifests().unwrap().is_empty());
    let tree = tree_of(&data).cid();
    assert!(!store.dataset_stored(&tree).unwrap());
    for b in &data {
        assert!(!store.has_block(b.cid()).unwrap());
    }
    assert_eq!(store.space().unwrap().quota_used_bytes, 0);
    assert_eq!(store.proof_storage().unwrap(), (0, 0));
    assert_consistent(&store, "after the rollback");
    GIVEN_UP.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// An upload of data a download has stored part of.

static OVER_PARTIAL: Shared = Mutex::new(None);
static OVER_PARTIAL_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// The upload dies after its second leaf batch.
fn die_after_two_batches(point: &'static str) {
    if point == "finish:leaf-batch"
        && OVER_PARTIAL.lock().unwrap().is_some()
        && OVER_PARTIAL_BATCHES.fetch_add(1, Ordering::SeqCst) == 1
    {
        panic!("the upload dies between two leaf batches");
    }
}

/// Stores the manifest of `data` and its leaves `indices`, as a download that got that far.
fn download_part(store: &Store, data: &[Block], indices: &[u64]) {
    let tree = tree_of(data);
    store.put_block(&manifest_of(data).to_block()).unwrap();
    let leaves: Vec<VerifiedLeaf> = indices.iter().map(|&i| leaf(data, &tree, i)).collect();
    store.put_leaves(&tree.cid(), &leaves).unwrap();
}

/// An upload of the data of a partly downloaded dataset that dies part-way leaves the dataset
/// partial and says so: the leaves it lacks are still reported missing (so the download fetches
/// them), and every leaf it holds is served with its proof. Before, the upload stored the
/// dataset's tree in its first transaction, and a stored tree means "every leaf is here" to
/// `first_missing_leaf` and `reserve_room`: the missing leaves were never fetched (found by
/// review).
#[test]
fn an_upload_that_dies_over_a_partial_download_leaves_it_partial() {
    let store = Store::in_memory(config(2, die_after_two_batches)).unwrap();
    let data = blocks(4, 7);
    download_part(&store, &data, &[0, 2, 5]);
    *OVER_PARTIAL.lock().unwrap() = Some((store.clone(), data.clone()));
    let s = store.clone();
    let d = data.clone();
    let died = std::thread::spawn(move || upload(&s, &d)).join();
    assert!(died.is_err(), "the upload died");
    // The upload wrote leaves 0..4 (0 and 2 were there), then died.
    assert_partial(&store, &data, &[0, 1, 2, 3, 5], "after the upload died");
    assert_consistent(&store, "after the upload died");
    store.maintenance(0).unwrap();
    assert_partial(&store, &data, &[0, 1, 2, 3, 5], "after a maintenance pass");
    // The download goes on and completes the dataset; it is then kept as a tree.
    let tree = tree_of(&data);
    store
        .put_leaves(&tree.cid(), &[leaf(&data, &tree, 4), leaf(&data, &tree, 6)])
        .unwrap();
    assert_whole(&store, &data, "once the download completed");
    assert_eq!(store.settle_tree(&tree.cid()).unwrap(), 7);
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    assert_whole(&store, &data, "once settled");
    assert_consistent(&store, "once settled");
    OVER_PARTIAL.lock().unwrap().take();
}

/// An upload of the data of a partly downloaded dataset that completes leaves the dataset
/// whole, served with the right proofs before and after the proofs the download and the upload
/// kept are folded into the tree by a maintenance pass.
#[test]
fn an_upload_over_a_partial_download_completes_it() {
    let store = Store::in_memory(StoreConfig {
        background_reclaim: false,
        leaf_batch: 2,
        ..StoreConfig::default()
    })
    .unwrap();
    let data = blocks(5, 7);
    download_part(&store, &data, &[1, 4]);
    let stored = upload(&store, &data).unwrap();
    assert_eq!(stored.manifest_cid, manifest_of(&data).cid());
    assert_whole(&store, &data, "after the upload");
    assert_consistent(&store, "after the upload");
    // The proofs it kept went when it finished, not at a later maintenance pass.
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    let report = store.maintenance(0).unwrap();
    assert_eq!(report.settled, 0, "{report:?}");
    assert_whole(&store, &data, "after maintenance");
    assert_consistent(&store, "after maintenance");
}

// ---------------------------------------------------------------------------------------------
// A new upload whose dataset a download lists meanwhile, given up.

static LISTED: Shared = Mutex::new(None);
static LISTED_BATCHES: AtomicUsize = AtomicUsize::new(0);
/// Leaves the download stores at the upload's first leaf batch.
static LISTED_LEAVES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// At the first leaf batch a download of the same dataset stores its manifest and some leaves;
/// at the second the upload dies.
fn listed_then_upload_dies(point: &'static str) {
    if point != "finish:leaf-batch" || LISTED.lock().unwrap().is_none() {
        return;
    }
    match LISTED_BATCHES.fetch_add(1, Ordering::SeqCst) {
        0 => {
            let (store, data) = shared(&LISTED);
            let indices = LISTED_LEAVES.lock().unwrap().clone();
            download_part(&store, &data, &indices);
        }
        1 => panic!("the upload dies between two leaf batches"),
        _ => {}
    }
}

/// Runs an upload of `data` that a download lists at its first leaf batch (storing the leaves
/// `downloaded`) and that dies at its second; returns the store.
fn upload_listed_then_given_up(seed: u64, downloaded: &[u64]) -> (Store, Vec<Block>) {
    let store = Store::in_memory(config(2, listed_then_upload_dies)).unwrap();
    let data = blocks(seed, 7);
    LISTED_BATCHES.store(0, Ordering::SeqCst);
    *LISTED_LEAVES.lock().unwrap() = downloaded.to_vec();
    *LISTED.lock().unwrap() = Some((store.clone(), data.clone()));
    let s = store.clone();
    let d = data.clone();
    let died = std::thread::spawn(move || upload(&s, &d)).join();
    assert!(died.is_err(), "the upload died");
    LISTED.lock().unwrap().take();
    (store, data)
}

/// A dataset a download listed while an upload of the same data was writing it survives the
/// upload given up, as a partial dataset that says what it lacks (so the download fetches it),
/// serving the leaves it holds with their proofs. Before, the rollback marked the dataset
/// deleting although its manifest stayed listed: the download was told "not stored" for good,
/// and the listed dataset never came back (found by review).
#[test]
fn a_dataset_listed_while_an_upload_wrote_it_survives_the_upload_given_up() {
    let _serial = LISTED_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (store, data) = upload_listed_then_given_up(6, &[5]);
    assert_eq!(store.list_manifests().unwrap().len(), 1);
    assert!(!store.reclaim_pending().unwrap());
    assert_partial(&store, &data, &[0, 1, 2, 3, 5], "after the upload died");
    assert_consistent(&store, "after the upload died");
    // The download goes on and completes the dataset.
    let tree = tree_of(&data);
    store
        .put_leaves(&tree.cid(), &[leaf(&data, &tree, 4), leaf(&data, &tree, 6)])
        .unwrap();
    assert_whole(&store, &data, "once the download completed");
    assert!(store.maintenance(0).unwrap().settled > 0);
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    assert_whole(&store, &data, "once settled");
    assert_consistent(&store, "once settled");
}

/// The same, where the download had stored every leaf the upload had not: the dataset is whole
/// when the upload is given up, and stays listed and whole.
#[test]
fn a_dataset_listed_and_completed_while_an_upload_wrote_it_stays_whole() {
    let _serial = LISTED_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (store, data) = upload_listed_then_given_up(7, &[2, 3, 4, 5, 6]);
    assert_eq!(store.list_manifests().unwrap().len(), 1);
    assert_whole(&store, &data, "after the upload died");
    assert_consistent(&store, "after the upload died");
    store.maintenance(0).unwrap();
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    assert_whole(&store, &data, "after a maintenance pass");
}

/// The two tests above share the hook's state.
static LISTED_SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// A put racing a delete of the block it found stored.

static PUT_RACE: Mutex<Option<(Store, Vec<Cid>)>> = Mutex::new(None);

/// Once a put has seen its block stored (and so appends nothing), the manifests in the state
/// are deleted (the block with them) and what they held is reclaimed.
fn delete_after_the_check(point: &'static str) {
    if point != "put_block:checked" && point != "put_leaves:checked" {
        return;
    }
    let Some((store, doomed)) = PUT_RACE.lock().unwrap().take() else {
        return;
    };
    for cid in &doomed {
        store.delete(cid).unwrap();
    }
    store.reclaim_now().unwrap();
}

/// A put of a block that is deleted between the put's look-up (stored: nothing to append) and
/// its transaction stores the block. Before, it failed with `IndexDamaged("new block without
/// data")` (found by review).
#[test]
fn a_put_racing_a_delete_of_its_block_stores_it() {
    let _serial = PUT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = Store::in_memory(config(8, delete_after_the_check)).unwrap();
    let b = block(8, 0);
    assert!(store.put_block(&b).unwrap());
    *PUT_RACE.lock().unwrap() = Some((store.clone(), vec![*b.cid()]));
    assert!(store.put_block(&b).unwrap(), "stored anew");
    assert!(PUT_RACE.lock().unwrap().is_none(), "the hook ran");
    assert_eq!(store.get_block(b.cid()).unwrap().unwrap().data(), b.data());
    assert_consistent(&store, "after the put");
}

/// Leaves whose block another dataset holds, put while that dataset is deleted and reclaimed
/// between the put's look-up and its transaction, are stored (their bytes appended after all).
/// Before, the put failed with `IndexDamaged("new block without data")` (found by review).
#[test]
fn leaves_put_racing_the_reclaim_of_their_blocks_are_stored() {
    let _serial = PUT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = Store::in_memory(config(8, delete_after_the_check)).unwrap();
    // Two datasets that share their first two blocks.
    let first = blocks(9, 3);
    let mut second = first[..2].to_vec();
    second.push(block(10, 0));
    let stored = upload(&store, &first).unwrap();
    download_part(&store, &second, &[]);
    let tree = tree_of(&second);
    *PUT_RACE.lock().unwrap() = Some((store.clone(), vec![stored.manifest_cid]));
    let leaves: Vec<VerifiedLeaf> = (0..3).map(|i| leaf(&second, &tree, i)).collect();
    store.put_leaves(&tree.cid(), &leaves).unwrap();
    assert!(PUT_RACE.lock().unwrap().is_none(), "the hook ran");
    assert!(store.get_manifest(&stored.manifest_cid).unwrap().is_none());
    assert_whole(&store, &second, "after the put");
    assert_consistent(&store, "after the put");
}

/// The two tests above share the hook's state.
static PUT_SERIAL: Mutex<()> = Mutex::new(());

static SETTLE_RACE: Shared = Mutex::new(None);
static SETTLE_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Once armed, at the next commit (the one `settle_tree` stores the tree in): deletes the
/// dataset, reclaims it, lists it again and downloads part of it.
fn relist_after_the_tree_is_stored(point: &'static str) {
    if point != "write:committed" || !SETTLE_ARMED.swap(false, Ordering::SeqCst) {
        return;
    }
    let (store, data) = shared(&SETTLE_RACE);
    let m = manifest_of(&data);
    store.delete(&m.to_block().cid().clone()).unwrap();
    store.reclaim_now().unwrap();
    download_part(&store, &data, &[1, 3]);
}

/// A dataset deleted, reclaimed, listed again and downloaded in part while `settle_tree`
/// settles its complete predecessor keeps its proofs: the settle does not act on the newer
/// copy. Before, its batches only checked that the dataset was active, and dropped the new
/// partial dataset's proofs, whose leaves then could not be served (found by review).
#[test]
fn settle_tree_does_not_touch_a_dataset_listed_again_meanwhile() {
    let store = Store::in_memory(config(8, relist_after_the_tree_is_stored)).unwrap();
    let data = blocks(9, 5);
    download_part(&store, &data, &[0, 1, 2, 3, 4]);
    *SETTLE_RACE.lock().unwrap() = Some((store.clone(), data.clone()));
    SETTLE_ARMED.store(true, Ordering::SeqCst);
    let tree = tree_of(&data);
    store.settle_tree(&tree.cid()).unwrap();
    assert!(!SETTLE_ARMED.load(Ordering::SeqCst), "the hook ran");
    assert_partial(&store, &data, &[1, 3], "the dataset listed again");
    assert_consistent(&store, "the dataset listed again");
    // Completed, it settles as any download.
    download_part(&store, &data, &[0, 2, 4]);
    assert_eq!(store.settle_tree(&tree.cid()).unwrap(), 5);
    assert_whole(&store, &data, "once settled");
    SETTLE_RACE.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// settle_tree racing a delete of its dataset and a new listing, between its read of the leaves
// and the transaction that stores the tree.

static RELIST: Shared = Mutex::new(None);
/// The leaves the copy listed again holds.
static RELIST_LEAVES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Once, after `settle_tree` has read every leaf: the dataset is deleted and reclaimed, listed
/// again and downloaded as far as `RELIST_LEAVES`.
fn relist_after_the_read(point: &'static str) {
    if point != "settle_tree:read" {
        return;
    }
    let Some((store, data)) = RELIST.lock().unwrap().take() else {
        return;
    };
    store.delete(manifest_of(&data).to_block().cid()).unwrap();
    store.reclaim_now().unwrap();
    let leaves = RELIST_LEAVES.lock().unwrap().clone();
    download_part(&store, &data, &leaves);
}

/// A complete download of `seed`'s 5 blocks, and a `settle_tree` of it during which (after its
/// read) the dataset is deleted and listed again with the leaves `again`. Returns what that
/// `settle_tree` answered.
fn settle_racing_a_relist(seed: u64, again: &[u64]) -> (Store, Vec<Block>, u64) {
    let store = Store::in_memory(config(8, relist_after_the_read)).unwrap();
    let data = blocks(seed, 5);
    download_part(&store, &data, &[0, 1, 2, 3, 4]);
    *RELIST_LEAVES.lock().unwrap() = again.to_vec();
    *RELIST.lock().unwrap() = Some((store.clone(), data.clone()));
    let settled = store.settle_tree(&tree_of(&data).cid()).unwrap();
    assert!(RELIST.lock().unwrap().is_none(), "the hook ran");
    (store, data, settled)
}

/// A dataset deleted, reclaimed, listed again and downloaded in part after `settle_tree` read
/// every leaf of its complete predecessor does not get the tree: the transaction that stores
/// it sees a new generation, without scanning the leaves again. A tree stored on the partial
/// copy would say it is whole, and its missing leaves would never be fetched.
#[test]
fn settle_tree_does_not_store_the_tree_of_a_copy_listed_again_after_its_read() {
    let _serial = RELIST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (store, data, settled) = settle_racing_a_relist(12, &[0, 2]);
    assert_eq!(settled, 0);
    assert_partial(&store, &data, &[0, 2], "the dataset listed again");
    assert_consistent(&store, "the dataset listed again");
    // Completed, it settles as any download.
    download_part(&store, &data, &[1, 3, 4]);
    assert_eq!(store.settle_tree(&tree_of(&data).cid()).unwrap(), 5);
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    assert_whole(&store, &data, "once settled");
    assert_consistent(&store, "once settled");
}

/// The transaction that stores the tree decides by the dataset's generation, not by scanning
/// its leaf keys again (a million at 64 GiB, while every other write waits): a copy listed
/// again and downloaded whole meanwhile is a new dataset, left for the next `settle_tree`,
/// which settles it. (With the scan, this `settle_tree` stored the tree.)
#[test]
fn settle_tree_leaves_a_copy_listed_again_and_completed_after_its_read_to_the_next_call() {
    let _serial = RELIST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (store, data, settled) = settle_racing_a_relist(13, &[0, 1, 2, 3, 4]);
    assert_eq!(settled, 0, "the tree is left for the next call");
    assert_whole(&store, &data, "the dataset listed again");
    let (tree_chunks, proof_bytes) = store.proof_storage().unwrap();
    assert_eq!(tree_chunks, 0, "no tree stored");
    assert!(proof_bytes > 0, "its proofs are kept");
    assert_eq!(store.settle_tree(&tree_of(&data).cid()).unwrap(), 5);
    assert_eq!(store.proof_storage().unwrap().1, 0, "no proof kept");
    assert_whole(&store, &data, "once settled");
    assert_consistent(&store, "once settled");
}

/// The two tests above share the hook's state.
static RELIST_SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// An upload into a dataset a manifest with a made-up size listed.

static MADE_UP: Shared = Mutex::new(None);
static MADE_UP_SETTLES: AtomicUsize = AtomicUsize::new(0);

/// At every leaf batch, the dataset is settled, as a maintenance pass may do.
fn settle_between_batches(point: &'static str) {
    if point != "finish:leaf-batch" || MADE_UP.lock().unwrap().is_none() {
        return;
    }
    let (store, data) = shared(&MADE_UP);
    let tree = tree_of(&data).cid();
    let settled = store.settle_tree(&tree);
    // Nothing to do until the upload has written every leaf; after that, the tree may be
    // stored here already (the dataset is listed and whole).
    assert!(
        settled.is_ok(),
        "settling a dataset an upload is writing: {settled:?}"
    );
    MADE_UP_SETTLES.fetch_add(1, Ordering::SeqCst);
}

/// A manifest naming the dataset's tree with fewer blocks than it has was listed first; an
/// upload of the real data then writes its leaves into that dataset. Settling between its leaf
/// batches (the maintenance pass) never fails. Before, once the upload had written as
/// many leaves as the made-up count, it rebuilt a tree of that many leaves, found the wrong
/// root and failed as a damaged index (found by review); the upload's own count is now a claim
/// too (`Tables::claim_count`).
#[test]
fn an_upload_into_a_dataset_listed_with_a_made_up_size_settles() {
    let store = Store::in_memory(config(1, settle_between_batches)).unwrap();
    let data = blocks(7, 5);
    let tree = tree_of(&data);
    let made_up = Manifest::new(tree.cid(), 3 * BS as u64, BS as u64).to_block();
    store.put_block(&made_up).unwrap();
    *MADE_UP.lock().unwrap() = Some((store.clone(), data.clone()));
    let up = upload(&store, &data).unwrap();
    MADE_UP.lock().unwrap().take();
    assert_eq!(up.manifest.tree_cid, tree.cid());
    assert!(MADE_UP_SETTLES.load(Ordering::SeqCst) >= 4, "the hook ran");
    assert_whole(&store, &data, "after the upload");
    assert_eq!(store.proof_storage().unwrap().1, 0, "settled by the upload");
    assert_eq!(store.list_manifests().unwrap().len(), 2);
    assert_consistent(&store, "after the upload");
}
