//! The store conformance suite: every test runs against the in-memory and the on-disk backend.

use std::time::Duration;

use bytes::Bytes;
use cairn_core::{Block, Chunker, CodexTree, Manifest, VerifiedLeaf, cid::empty_block_cid};
use cairn_store::{DatasetMeta, Store, StoreConfig, StoreError};
use tempfile::TempDir;

const BS: usize = 64 * 1024;

/// Sizes that exercise the chunker and tree edges: 1 byte, block − 1, block, block + 1, an odd
/// number of blocks (odd tree layers), and a power of two.
const INTERESTING_SIZES: &[usize] = &[1, BS - 1, BS, BS + 1, 7 * BS + 3, 8 * BS];

struct Backend {
    store: Store,
    _dir: Option<TempDir>,
}

fn backends(cfg: StoreConfig) -> Vec<(&'static str, Backend)> {
    let dir = TempDir::new().unwrap();
    let disk = Store::open(dir.path(), cfg.clone()).unwrap();
    vec![
        (
            "memory",
            Backend {
                store: Store::in_memory(cfg).unwrap(),
                _dir: None,
            },
        ),
        (
            "disk",
            Backend {
                store: disk,
                _dir: Some(dir),
            },
        ),
    ]
}

fn quiet() -> StoreConfig {
    StoreConfig {
        background_reclaim: false,
        ..StoreConfig::default()
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so no two blocks repeat.
fn data(size: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed).wrapping_mul(0x1000_0001);
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

fn upload(
    store: &Store,
    bytes: &[u8],
    name: Option<&str>,
) -> Result<(cairn_core::Cid, Manifest), StoreError> {
    let mut w = store.begin_dataset()?;
    let mut chunker = Chunker::new(BS);
    let mut err = None;
    chunker.push(bytes, |b| {
        if err.is_none() {
            err = w.write(&Block::data_block(b)).err();
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let (last, size) = chunker.finish();
    if let Some(b) = last {
        w.write(&Block::data_block(b))?;
    }
    let s = w.finish(DatasetMeta {
        dataset_size: size,
        block_size: BS as u64,
        filename: name.map(str::to_owned),
        mimetype: None,
    })?;
    Ok((s.manifest_cid, s.manifest))
}

fn download(store: &Store, manifest: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..manifest.blocks_count() {
        let (block, proof) = store
            .get_leaf(&manifest.tree_cid, i)
            .unwrap()
            .expect("leaf present");
        let leaf = cairn_core::cid::cid_digest(block.cid()).unwrap();
        let root = cairn_core::cid::cid_digest(&manifest.tree_cid).unwrap();
        proof
            .verify_leaf(&leaf, &root, i, manifest.blocks_count())
            .unwrap();
        out.extend_from_slice(block.data());
    }
    out.truncate(manifest.dataset_size as usize);
    out
}

fn assert_consistent(store: &Store, ctx: &str) {
    let a = store.audit().unwrap();
    assert_eq!(a.used_recorded, a.used_actual, "{ctx}: used bytes counter");
    assert_eq!(a.blocks_recorded, a.blocks_actual, "{ctx}: block counter");
    assert!(a.segments_consistent, "{ctx}: segment liveness");
    assert_eq!(a.open_sessions, 0, "{ctx}: open sessions");
}

#[test]
fn upload_and_read_back_interesting_sizes() {
    for (name, b) in backends(quiet()) {
        for (i, &size) in INTERESTING_SIZES.iter().enumerate() {
            let bytes = data(size, i as u8);
            let (cid, m) = upload(&b.store, &bytes, None).unwrap();
            assert_eq!(m.dataset_size, size as u64);
            assert_eq!(
                b.store.get_manifest(&cid).unwrap().as_ref(),
                Some(&m),
                "{name}"
            );
            assert_eq!(download(&b.store, &m), bytes, "{name} size {size}");
        }
        assert_eq!(
            b.store.list_manifests().unwrap().len(),
            INTERESTING_SIZES.len(),
            "{name}"
        );
        assert_consistent(&b.store, name);
    }
}

/// codex-protocol.md §11.1(2): "some file contents" uses 65,592 bytes (padded block + manifest)
/// and two blocks, as the reference's REST test asserts.
#[test]
fn space_matches_reference_for_small_upload() {
    for (name, b) in backends(quiet()) {
        let (cid, _) = upload(&b.store, b"some file contents", None).unwrap();
        assert_eq!(
            cid.to_string(),
            "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy"
        );
        let s = b.store.space().unwrap();
        assert_eq!(s.quota_used_bytes, 65592, "{name}");
        assert_eq!(s.total_blocks, 2, "{name}");
        assert_eq!(s.quota_reserved_bytes, 0, "{name}");
    }
}

#[test]
fn standalone_blocks_and_empty_block() {
    for (name, b) in backends(quiet()) {
        let block = Block::data_block(Bytes::from_static(b"standalone"));
        assert!(!b.store.has_block(block.cid()).unwrap());
        assert!(b.store.put_block(&block).unwrap(), "{name}: new");
        assert!(!b.store.put_block(&block).unwrap(), "{name}: idempotent");
        assert_eq!(b.store.get_block(block.cid()).unwrap(), Some(block.clone()));
        assert!(b.store.has_block(&empty_block_cid()).unwrap());
        assert_eq!(
            b.store
                .get_block(&empty_block_cid())
                .unwrap()
                .unwrap()
                .data()
                .len(),
            0
        );
        b.store.delete(block.cid()).unwrap();
        assert!(!b.store.has_block(block.cid()).unwrap(), "{name}");
        b.store.delete(block.cid()).unwrap(); // absent: fine
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");
        assert_consistent(&b.store, name);
    }
}

#[test]
fn block_of_a_dataset_cannot_be_deleted_alone() {
    for (name, b) in backends(quiet()) {
        let bytes = data(3 * BS, 1);
        let (_, m) = upload(&b.store, &bytes, None).unwrap();
        let (leaf, _) = b.store.get_leaf(&m.tree_cid, 1).unwrap().unwrap();
        assert!(
            matches!(b.store.delete(leaf.cid()), Err(StoreError::InUse { .. })),
            "{name}"
        );
        assert_eq!(download(&b.store, &m), bytes);
    }
}

#[test]
fn delete_dataset_hides_it_at_once_and_reclaims_everything() {
    for (name, b) in backends(quiet()) {
        let bytes = data(9 * BS + 5, 2);
        let (cid, m) = upload(&b.store, &bytes, Some("f.bin")).unwrap();
        b.store.delete(&cid).unwrap();
        assert!(b.store.list_manifests().unwrap().is_empty(), "{name}");
        assert!(b.store.get_manifest(&cid).unwrap().is_none(), "{name}");
        assert!(
            b.store.get_leaf(&m.tree_cid, 0).unwrap().is_none(),
            "{name}: hidden before reclaim"
        );
        assert!(b.store.reclaim_pending().unwrap());
        assert_eq!(b.store.reclaim_now().unwrap(), 10);
        assert!(!b.store.reclaim_pending().unwrap());
        let s = b.store.space().unwrap();
        assert_eq!((s.quota_used_bytes, s.total_blocks), (0, 0), "{name}");
        assert_eq!(b.store.disk_bytes().unwrap(), 0, "{name}: segments removed");
        assert_consistent(&b.store, name);
    }
}

#[test]
fn shared_blocks_survive_deleting_one_dataset() {
    for (name, b) in backends(quiet()) {
        let bytes = data(4 * BS, 3);
        let (a, ma) = upload(&b.store, &bytes, Some("a")).unwrap();
        let (bb, mb) = upload(&b.store, &bytes, Some("b")).unwrap();
        assert_ne!(a, bb);
        assert_eq!(ma.tree_cid, mb.tree_cid);
        b.store.delete(&a).unwrap();
        b.store.reclaim_now().unwrap();
        assert_eq!(download(&b.store, &mb), bytes, "{name}");
        b.store.delete(&bb).unwrap();
        b.store.reclaim_now().unwrap();
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");
        assert_consistent(&b.store, name);
        // And the same data can be uploaded again after deletion.
        let (_, mc) = upload(&b.store, &bytes, None).unwrap();
        assert_eq!(download(&b.store, &mc), bytes, "{name}");
    }
}

#[test]
fn quota_refuses_and_leaves_nothing() {
    let cfg = StoreConfig {
        quota_bytes: 5 * BS as u64,
        ..quiet()
    };
    for (name, b) in backends(cfg) {
        let err = upload(&b.store, &data(8 * BS, 4), None).unwrap_err();
        assert!(
            matches!(err, StoreError::QuotaExceeded { .. }),
            "{name}: {err}"
        );
        assert!(b.store.list_manifests().unwrap().is_empty());
        let s = b.store.space().unwrap();
        assert_eq!(
            (s.quota_used_bytes, s.quota_reserved_bytes, s.total_blocks),
            (0, 0, 0),
            "{name}"
        );
        assert_consistent(&b.store, name);
        // A dataset that fits still goes in afterwards.
        let bytes = data(3 * BS, 5);
        let (_, m) = upload(&b.store, &bytes, None).unwrap();
        assert_eq!(download(&b.store, &m), bytes, "{name}");
        let big = Block::data_block(Bytes::from(vec![1u8; 2 * BS]));
        let r = b.store.put_block(&big);
        assert!(
            matches!(r, Err(StoreError::QuotaExceeded { .. })),
            "{name}: {r:?} {:?}",
            b.store.space()
        );
        assert_consistent(&b.store, name);
    }
}

/// An upload given up does not wait for other datasets' deletions: they stay the reclaimer's.
/// Before, its rollback reclaimed every deletion going on before it returned, so a failed
/// upload's answer could wait for the deletion of a large unrelated dataset.
#[test]
fn an_aborted_upload_leaves_other_deletions_to_the_reclaimer() {
    for (name, b) in backends(quiet()) {
        let (mcid, _) = upload(&b.store, &data(6 * BS, 7), None).unwrap();
        b.store.delete(&mcid).unwrap();
        assert!(b.store.reclaim_pending().unwrap(), "{name}");
        let mut w = b.store.begin_dataset().unwrap();
        w.write(&Block::data_block(Bytes::from(vec![9; BS])))
            .unwrap();
        drop(w);
        assert!(
            b.store.reclaim_pending().unwrap(),
            "{name}: the rollback reclaimed another dataset"
        );
        assert_eq!(b.store.reclaim_now().unwrap(), 6, "{name}");
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");
        assert_consistent(&b.store, name);
    }
}

#[test]
fn aborted_upload_leaves_nothing() {
    for (name, b) in backends(quiet()) {
        let mut w = b.store.begin_dataset().unwrap();
        for i in 0..5u8 {
            w.write(&Block::data_block(Bytes::from(vec![i; BS])))
                .unwrap();
        }
        assert_eq!(b.store.space().unwrap().quota_reserved_bytes, 5 * BS as u64);
        drop(w);
        let s = b.store.space().unwrap();
        assert_eq!(
            (s.quota_used_bytes, s.quota_reserved_bytes),
            (0, 0),
            "{name}"
        );
        assert!(b.store.list_manifests().unwrap().is_empty());
        assert_eq!(b.store.disk_bytes().unwrap(), 0, "{name}");
        assert_consistent(&b.store, name);
        let w = b.store.begin_dataset().unwrap();
        assert!(matches!(
            w.finish(DatasetMeta::default()),
            Err(StoreError::EmptyDataset)
        ));
    }
}

#[test]
fn ttl_expires_manifests_and_their_datasets() {
    let cfg = StoreConfig {
        block_ttl: Duration::from_secs(100),
        ..quiet()
    };
    for (name, b) in backends(cfg) {
        let (cid, m) = upload(&b.store, &data(3 * BS, 6), None).unwrap();
        let block = Block::data_block(Bytes::from_static(b"short-lived"));
        b.store.put_block(&block).unwrap();
        assert_eq!(b.store.expiry_entries().unwrap(), 2);
        let now = cairn_store_now();
        let r = b.store.maintenance(now).unwrap();
        assert_eq!(r.expired, 0, "{name}: nothing due yet");
        let r = b.store.maintenance(now + 1000).unwrap();
        assert_eq!((r.expired, r.reclaimed), (2, 3), "{name}");
        assert!(b.store.get_manifest(&cid).unwrap().is_none());
        assert!(b.store.get_leaf(&m.tree_cid, 0).unwrap().is_none());
        assert!(!b.store.has_block(block.cid()).unwrap());
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");
        assert_consistent(&b.store, name);
    }
}

#[test]
fn maintenance_batch_bounds_one_pass() {
    let cfg = StoreConfig {
        block_ttl: Duration::from_secs(1),
        maintenance_batch: 3,
        ..quiet()
    };
    for (name, b) in backends(cfg) {
        for i in 0..7u8 {
            b.store
                .put_block(&Block::data_block(Bytes::from(vec![i; 10])))
                .unwrap();
        }
        let later = cairn_store_now() + 10;
        assert_eq!(b.store.maintenance(later).unwrap().expired, 3, "{name}");
        assert_eq!(b.store.maintenance(later).unwrap().expired, 3, "{name}");
        assert_eq!(b.store.maintenance(later).unwrap().expired, 1, "{name}");
        assert_eq!(b.store.space().unwrap().total_blocks, 0);
    }
}

#[test]
fn zero_ttl_never_expires() {
    let cfg = StoreConfig {
        block_ttl: Duration::ZERO,
        ..quiet()
    };
    for (name, b) in backends(cfg) {
        upload(&b.store, &data(BS, 7), None).unwrap();
        assert_eq!(
            b.store.maintenance(u64::MAX / 2).unwrap().expired,
            0,
            "{name}"
        );
        assert_eq!(b.store.list_manifests().unwrap().len(), 1);
    }
}

/// Leaf `i` of dataset `m` read from `src`, checked as a downloader checks it.
fn leaf_of(src: &Store, m: &Manifest, i: u64) -> VerifiedLeaf {
    let (blk, p) = src.get_leaf(&m.tree_cid, i).unwrap().unwrap();
    VerifiedLeaf::verify(m.tree_cid, i, m.blocks_count(), blk, p).unwrap()
}

#[test]
fn network_leaves_are_checked_and_served() {
    for (name, b) in backends(quiet()) {
        // Build a dataset elsewhere, then feed its leaves as a downloader would.
        let src = Store::in_memory(quiet()).unwrap();
        let bytes = data(5 * BS, 8);
        let (mcid, m) = upload(&src, &bytes, None).unwrap();
        let leaves: Vec<_> = (0..5).map(|i| leaf_of(&src, &m, i)).collect();
        // A leaf of another dataset is refused.
        let (_, other) = upload(&src, &data(BS, 9), None).unwrap();
        assert!(matches!(
            b.store.put_leaves(&other.tree_cid, &leaves[..1]),
            Err(StoreError::LeafOfAnotherDataset { .. })
        ));
        b.store
            .put_block(&src.get_block(&mcid).unwrap().unwrap())
            .unwrap();
        b.store.put_leaves(&m.tree_cid, &leaves[..2]).unwrap();
        b.store.put_leaves(&m.tree_cid, &leaves[1..]).unwrap(); // overlap is skipped
        // Leaves already stored cost no disk: segment bytes equal the live bytes.
        assert_eq!(
            b.store.disk_bytes().unwrap(),
            b.store.space().unwrap().quota_used_bytes,
            "{name}: re-delivered leaves were written again"
        );
        assert_eq!(download(&b.store, &m), bytes, "{name}");
        assert_consistent(&b.store, name);
        b.store.delete(&mcid).unwrap();
        b.store.reclaim_now().unwrap();
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");
        // The proofs the leaves came with (never settled) went with them.
        assert_eq!(b.store.proof_storage().unwrap(), (0, 0), "{name}");
    }
}

/// Uploads keep their tree once and no proof per leaf. A network download keeps the proofs its
/// leaves came with until it holds every leaf; `settle_tree` then keeps the tree once, serves
/// the same proofs, and deleting the dataset removes the tree with it.
#[test]
fn a_complete_download_keeps_its_tree_once() {
    for (name, b) in backends(quiet()) {
        let src = Store::in_memory(quiet()).unwrap();
        // 300 leaves: three chunks of the leaf layer, odd layers higher up.
        let n = 300u64;
        let bytes = data(n as usize * BS - 5, 21);
        let (mcid, m) = upload(&src, &bytes, None).unwrap();
        let (src_chunks, src_proofs) = src.proof_storage().unwrap();
        assert!(src_chunks > 0, "an upload stores its tree");
        assert_eq!(src_proofs, 0, "an upload stores no proof per leaf");
        let leaves: Vec<_> = (0..n).map(|i| leaf_of(&src, &m, i)).collect();
        b.store
            .put_block(&src.get_block(&mcid).unwrap().unwrap())
            .unwrap();

        b.store.put_leaves(&m.tree_cid, &leaves[..200]).unwrap();
        assert_eq!(
            b.store.settle_tree(&m.tree_cid).unwrap(),
            0,
            "{name}: incomplete"
        );
        let (chunks, proofs) = b.store.proof_storage().unwrap();
        assert_eq!(chunks, 0, "{name}");
        assert!(
            proofs > 200 * 300,
            "{name}: partial downloads keep their proofs"
        );

        b.store.put_leaves(&m.tree_cid, &leaves[200..]).unwrap();
        assert_eq!(b.store.settle_tree(&m.tree_cid).unwrap(), n, "{name}");
        assert_eq!(b.store.proof_storage().unwrap(), (src_chunks, 0), "{name}");
        // The proofs served now are the ones the leaves came with.
        let indices: Vec<u64> = (0..n).collect();
        for (i, got) in indices
            .chunks(20)
            .flat_map(|run| b.store.get_leaves(&m.tree_cid, run).unwrap())
            .enumerate()
        {
            let (block, proof) = got.unwrap().unwrap();
            assert_eq!(block.cid(), leaves[i].block().cid(), "{name}: leaf {i}");
            assert_eq!(&proof, leaves[i].proof(), "{name}: proof {i}");
        }
        assert_eq!(download(&b.store, &m), bytes, "{name}");
        assert_eq!(
            b.store.settle_tree(&m.tree_cid).unwrap(),
            0,
            "{name}: settled once"
        );
        assert_consistent(&b.store, name);

        b.store.delete(&mcid).unwrap();
        assert_eq!(
            b.store.settle_tree(&m.tree_cid).unwrap(),
            0,
            "{name}: deleting"
        );
        b.store.reclaim_now().unwrap();
        assert_eq!(
            b.store.proof_storage().unwrap(),
            (0, 0),
            "{name}: tree left behind"
        );
        assert_consistent(&b.store, name);

        // The same data uploaded again reads back with good proofs.
        upload(&b.store, &bytes, None).unwrap();
        assert_eq!(download(&b.store, &m), bytes, "{name}");
    }
}

/// A manifest's block count is only a claim: one can name a real tree with a made-up size, and
/// it may be the first of its dataset a node stores. Before, the first count stayed: the real
/// download then never settled (a smaller made-up count failed as a damaged index), and an
/// upload over it stored the tree under the wrong count. Now the count the leaves prove wins,
/// and once the dataset is whole a manifest that disagrees is refused.
#[test]
fn made_up_block_counts_cannot_spoil_a_dataset() {
    let src = Store::in_memory(quiet()).unwrap();
    let n = 5u64;
    let bytes = data(n as usize * BS, 31);
    let (mcid, m) = upload(&src, &bytes, None).unwrap();
    let real = src.get_block(&mcid).unwrap().unwrap();
    let leaves: Vec<_> = (0..n).map(|i| leaf_of(&src, &m, i)).collect();
    let forged = |blocks: u64| Manifest::new(m.tree_cid, blocks * BS as u64, BS as u64).to_block();
    let conflict =
        |r: Result<bool, StoreError>| matches!(r, Err(StoreError::ManifestConflict { .. }));

    // A smaller count first, then the real manifest and every leaf: settles at the real count.
    for (name, b) in backends(quiet()) {
        b.store.put_block(&forged(3)).unwrap();
        b.store.put_block(&real).unwrap();
        b.store.put_leaves(&m.tree_cid, &leaves).unwrap();
        assert_eq!(b.store.settle_tree(&m.tree_cid).unwrap(), n, "{name}");
        assert_eq!(b.store.proof_storage().unwrap().1, 0, "{name}: proofs left");
        assert_eq!(download(&b.store, &m), bytes, "{name}: served proofs");
        // Whole now: another count is refused, and nothing of it is stored.
        let late = forged(7);
        let r = b.store.put_block(&late);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("it says 7 blocks"))
                && r.as_ref()
                    .is_err_and(|e| e.to_string().contains("whole with 5")),
            "{name}: a made-up count after the dataset is whole: {r:?}"
        );
        assert!(conflict(r), "{name}");
        assert!(!b.store.has_block(late.cid()).unwrap(), "{name}");
        assert_eq!(b.store.list_manifests().unwrap().len(), 2, "{name}");
        assert_consistent(&b.store, name);
    }

    // A larger count first, then an upload of the real data: the upload's tree and count win.
    for (name, b) in backends(quiet()) {
        b.store.put_block(&forged(8)).unwrap();
        let (_, up) = upload(&b.store, &bytes, None).unwrap();
        assert_eq!(up.tree_cid, m.tree_cid);
        assert_eq!(b.store.proof_storage().unwrap().1, 0, "{name}: not settled");
        assert_eq!(download(&b.store, &m), bytes, "{name}: served proofs");
        assert_eq!(b.store.first_missing_leaf(&m.tree_cid, 0..n).unwrap(), None);
        assert!(
            conflict(b.store.put_block(&forged(6))),
            "{name}: count proven"
        );
        assert_consistent(&b.store, name);
    }

    // More made-up counts than are kept, the real one among those not kept: none is refused,
    // the made-up counts the leaves reach are dropped as they fail, and the leaves still prove
    // the real count (the number held, tried because a claim was not kept).
    let big = 20u64;
    let bytes = data(big as usize * BS, 32);
    let (mcid, m) = upload(&src, &bytes, None).unwrap();
    let real = src.get_block(&mcid).unwrap().unwrap();
    let leaves: Vec<_> = (0..big).map(|i| leaf_of(&src, &m, i)).collect();
    let forged = |blocks: u64| Manifest::new(m.tree_cid, blocks * BS as u64, BS as u64).to_block();
    for (name, b) in backends(quiet()) {
        let max = cairn_store::MAX_COUNT_CLAIMS as u64;
        assert!(
            max < 9,
            "the claims kept stop short of the leaves put first"
        );
        for blocks in (1..=max).chain([100]) {
            b.store.put_block(&forged(blocks)).unwrap();
        }
        b.store.put_block(&real).unwrap();
        b.store.put_leaves(&m.tree_cid, &leaves[..9]).unwrap();
        // Partial: nothing settles, and nothing fails.
        assert_eq!(b.store.settle_tree(&m.tree_cid).unwrap(), 0, "{name}");
        b.store.put_leaves(&m.tree_cid, &leaves[9..]).unwrap();
        assert_eq!(b.store.settle_tree(&m.tree_cid).unwrap(), big, "{name}");
        assert_eq!(b.store.proof_storage().unwrap().1, 0, "{name}");
        assert_eq!(download(&b.store, &m), bytes, "{name}");
        // Settled: the count is known, so another made-up one is refused now.
        assert!(conflict(b.store.put_block(&forged(max + 3))), "{name}");
        assert_consistent(&b.store, name);
    }
}

/// Leaves are only taken for a stored dataset: not before its manifest is stored, and not after
/// it was deleted (a download that outlives a delete of its dataset). Before, such leaves made
/// the dataset anew with no manifest naming it, and nothing ever reclaimed it.
#[test]
fn leaves_of_a_deleted_or_unknown_dataset_are_refused() {
    for (name, b) in backends(quiet()) {
        let src = Store::in_memory(quiet()).unwrap();
        let bytes = data(40 * BS, 31);
        let (mcid, m) = upload(&src, &bytes, None).unwrap();
        let leaves: Vec<_> = (0..40).map(|i| leaf_of(&src, &m, i)).collect();
        let refused = |r: Result<(), StoreError>| matches!(r, Err(StoreError::DatasetNotStored { tree }) if *tree == m.tree_cid);
        assert!(
            refused(b.store.put_leaves(&m.tree_cid, &leaves[..5])),
            "{name}: no manifest"
        );
        assert_eq!(b.store.space().unwrap().quota_used_bytes, 0, "{name}");

        b.store
            .put_block(&src.get_block(&mcid).unwrap().unwrap())
            .unwrap();
        b.store.put_leaves(&m.tree_cid, &leaves[..20]).unwrap();
        b.store.delete(&mcid).unwrap();
        assert!(
            refused(b.store.put_leaves(&m.tree_cid, &leaves[20..])),
            "{name}: deleted"
        );
        b.store.reclaim_now().unwrap();
        assert!(
            refused(b.store.put_leaves(&m.tree_cid, &leaves[20..])),
            "{name}: reclaimed"
        );
        let space = b.store.space().unwrap();
        assert_eq!(
            (space.quota_used_bytes, space.total_blocks),
            (0, 0),
            "{name}"
        );
        assert_eq!(b.store.proof_storage().unwrap(), (0, 0), "{name}");
        assert!(b.store.list_manifests().unwrap().is_empty(), "{name}");
        assert_consistent(&b.store, name);
    }
}

/// Datasets whose download completed but was never settled (the node stopped first) are
/// settled by maintenance passes, several per pass and all of them in time, while partial ones
/// keep their proofs.
#[test]
fn maintenance_settles_complete_downloads_it_finds() {
    for (name, b) in backends(quiet()) {
        let src = Store::in_memory(quiet()).unwrap();
        let mut complete = Vec::new();
        let mut partial_bytes = 0;
        // 20 complete datasets (more than one pass takes) and one partial, stored as downloads.
        for k in 0..21u8 {
            let (mcid, m) = upload(&src, &data(3 * BS, 60 + k), None).unwrap();
            b.store
                .put_block(&src.get_block(&mcid).unwrap().unwrap())
                .unwrap();
            let upto = if k == 20 { 2 } else { 3 };
            let leaves: Vec<_> = (0..upto).map(|i| leaf_of(&src, &m, i)).collect();
            b.store.put_leaves(&m.tree_cid, &leaves).unwrap();
            if k < 20 {
                complete.push(m);
            } else {
                partial_bytes = leaves.iter().map(|l| l.proof().encode().len() as u64).sum();
            }
        }
        let now = cairn_store_now();
        // 16 datasets per pass (the partial one may be among them): two passes settle the 20,
        // the first one not all of them.
        let first = b.store.maintenance(now).unwrap().settled;
        assert!(
            [15 * 3, 16 * 3].contains(&first),
            "{name}: the first pass: {first}"
        );
        let second = b.store.maintenance(now).unwrap().settled;
        assert_eq!(first + second, 20 * 3, "{name}: the second pass");
        assert_eq!(b.store.maintenance(now).unwrap().settled, 0, "{name}");
        // What is left is the partial dataset's two proofs; every complete one reads back.
        assert_eq!(b.store.proof_storage().unwrap().1, partial_bytes, "{name}");
        for m in &complete {
            for i in 0..3 {
                leaf_of(&b.store, m, i);
            }
        }
        assert_consistent(&b.store, name);
    }
}

/// Partial datasets (which stay unsettled) do not hide complete ones from maintenance: each pass
/// goes on where the last one stopped, so 5 complete datasets among 40 partial ones are all
/// settled within one round of passes.
#[test]
fn maintenance_settling_gets_past_partial_datasets() {
    let store = Store::in_memory(quiet()).unwrap();
    let src = Store::in_memory(quiet()).unwrap();
    let mut complete = 0;
    for k in 0..45u8 {
        let (mcid, m) = upload(&src, &data(2 * BS, 120 + k), None).unwrap();
        store
            .put_block(&src.get_block(&mcid).unwrap().unwrap())
            .unwrap();
        let whole = k % 9 == 0;
        let upto = if whole { 2 } else { 1 };
        let leaves: Vec<_> = (0..upto).map(|i| leaf_of(&src, &m, i)).collect();
        store.put_leaves(&m.tree_cid, &leaves).unwrap();
        complete += u64::from(whole);
    }
    assert_eq!(complete, 5);
    let now = cairn_store_now();
    // 45 datasets, 16 per pass: three passes visit them all.
    let settled: u64 = (0..3)
        .map(|_| store.maintenance(now).unwrap().settled)
        .sum();
    assert_eq!(settled, complete * 2);
}

/// Room reserved for a download counts as used for other downloads and for uploads, not for
/// the download's own leaves; storing them draws it down, and dropping it gives the rest back. Before,
/// downloads only checked the free space at their start, so two that each fit alone both
/// started, shared the room and both failed with the store full.
#[test]
fn a_download_reservation_holds_its_room() {
    const N: u64 = 6;
    for (name, b) in backends(StoreConfig {
        quota_bytes: 10 * BS as u64 + 1024,
        background_reclaim: false,
        ..StoreConfig::default()
    }) {
        let src = Store::in_memory(quiet()).unwrap();
        let (xc, x) = upload(&src, &data(N as usize * BS, 71), None).unwrap();
        let (yc, y) = upload(&src, &data(N as usize * BS, 72), None).unwrap();
        for c in [xc, yc] {
            b.store
                .put_block(&src.get_block(&c).unwrap().unwrap())
                .unwrap();
        }
        let bs = BS as u64;
        let rx = b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap();
        assert_eq!(rx.bytes(), N * bs);
        assert_eq!(
            b.store.space().unwrap().quota_reserved_bytes,
            N * bs,
            "{name}"
        );
        // Another download, and an upload, find the room taken.
        assert!(
            matches!(
                b.store.reserve_room(&y.tree_cid, 0..N, bs),
                Err(StoreError::QuotaExceeded { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(
                upload(&b.store, &data(5 * BS, 73), None),
                Err(StoreError::QuotaExceeded { .. })
            ),
            "{name}: an upload took a download's room"
        );
        // The download's own leaves go in, and draw the reservation down as they become used:
        // used + reserved stays what it was, never counting a stored leaf twice.
        let before = b.store.space().unwrap();
        let total = before.quota_used_bytes + before.quota_reserved_bytes;
        let leaves: Vec<_> = (0..N).map(|i| leaf_of(&src, &x, i)).collect();
        b.store.put_leaves(&x.tree_cid, &leaves[..2]).unwrap();
        let mid = b.store.space().unwrap();
        assert_eq!(mid.quota_reserved_bytes, (N - 2) * bs, "{name}");
        assert_eq!(
            mid.quota_used_bytes + mid.quota_reserved_bytes,
            total,
            "{name}"
        );
        assert_eq!(rx.bytes(), (N - 2) * bs, "{name}");
        b.store.put_leaves(&x.tree_cid, &leaves[2..]).unwrap();
        assert_eq!(b.store.space().unwrap().quota_reserved_bytes, 0, "{name}");
        drop(rx);
        assert_eq!(b.store.space().unwrap().quota_reserved_bytes, 0, "{name}");
        // Nothing more is needed for a dataset that is all here, counted leaf by leaf or known
        // whole from its stored tree.
        assert_eq!(
            b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap().bytes(),
            0
        );
        assert_eq!(b.store.settle_tree(&x.tree_cid).unwrap(), N, "{name}");
        for range in [0..N, 2..4] {
            assert_eq!(
                b.store
                    .reserve_room(&x.tree_cid, range, bs)
                    .unwrap()
                    .bytes(),
                0,
                "{name}"
            );
        }
        // Room for part of Y: reserved, then given back by dropping it.
        let ry = b.store.reserve_room(&y.tree_cid, 0..3, bs).unwrap();
        assert_eq!(
            b.store.space().unwrap().quota_reserved_bytes,
            3 * bs,
            "{name}"
        );
        drop(ry);
        assert_eq!(b.store.space().unwrap().quota_reserved_bytes, 0, "{name}");
        assert_consistent(&b.store, name);
    }
}

/// What the `put_block:checked` hook of the test below does: reserve room for a download in
/// this store, for this tree, keeping the reservation.
type RacingReservation = (
    Option<(Store, cairn_core::Cid)>,
    Vec<cairn_store::Reservation>,
);
static RACING: std::sync::Mutex<RacingReservation> = std::sync::Mutex::new((None, Vec::new()));

fn reserve_at_put_check(point: &'static str) {
    if point != "put_block:checked" {
        return;
    }
    let Some((store, tree)) = RACING.lock().unwrap().0.take() else {
        return;
    };
    let r = store
        .reserve_room(&tree, 0..4, BS as u64)
        .expect("the download's room fits before the put commits");
    RACING.lock().unwrap().1.push(r);
}

/// A download that reserves its room while a put is between its quota check and its commit
/// keeps that room: the put is refused when its transaction checks again. Before, the
/// transaction counted uploads' reservations but not downloads', so the put took the room and
/// the download's last leaves were refused (review).
#[test]
fn a_put_racing_a_download_reservation_does_not_take_its_room() {
    let src = Store::in_memory(quiet()).unwrap();
    let (mc, m) = upload(&src, &data(4 * BS, 81), None).unwrap();
    let manifest = src.get_block(&mc).unwrap().unwrap();
    // Room for the download's 4 blocks or for one more block, not for both.
    let quota = manifest.data().len() as u64 + 4 * BS as u64 + BS as u64 / 2;
    let dir = TempDir::new().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            quota_bytes: quota,
            crash_hook: Some(reserve_at_put_check),
            ..quiet()
        },
    )
    .unwrap();
    store.put_block(&manifest).unwrap();
    *RACING.lock().unwrap() = (Some((store.clone(), m.tree_cid)), Vec::new());
    let other = Block::data_block(Bytes::from(data(BS, 82)));
    let put = store.put_block(&other);
    let held = std::mem::take(&mut RACING.lock().unwrap().1);
    assert_eq!(held.len(), 1, "the hook reserved the download's room");
    assert!(
        matches!(put, Err(StoreError::QuotaExceeded { .. })),
        "the put took the download's room: {put:?}"
    );
    // The download's leaves all fit.
    let leaves: Vec<_> = (0..4).map(|i| leaf_of(&src, &m, i)).collect();
    store.put_leaves(&m.tree_cid, &leaves).unwrap();
    assert_eq!(download(&store, &m), data(4 * BS, 81));
    drop(held);
    assert_consistent(&store, "disk");
}

#[test]
fn background_reclaimer_frees_space() {
    for (name, b) in backends(StoreConfig::default()) {
        let (cid, _) = upload(&b.store, &data(6 * BS, 9), None).unwrap();
        b.store.delete(&cid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The used-bytes figure follows each commit a moment after it lands, so wait for both.
        while b.store.reclaim_pending().unwrap() || b.store.space().unwrap().quota_used_bytes > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: reclaimer did not run: {:?}",
                b.store.space().unwrap()
            );
            std::thread::yield_now();
        }
        assert_consistent(&b.store, name);
    }
}

/// A deleted download frees its disk without waiting for a maintenance pass: once the
/// reclaimer has dropped its blocks, the open shared segment they filled (nothing in it live)
/// is deleted too.
#[test]
fn a_deleted_download_frees_its_disk_at_once() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let src = Store::in_memory(quiet()).unwrap();
    let n = 160u64; // 10 MiB: above the 8 MiB an open segment must hold to be dropped
    let (mcid, m) = upload(&src, &data(n as usize * BS, 41), None).unwrap();
    store
        .put_block(&src.get_block(&mcid).unwrap().unwrap())
        .unwrap();
    let leaves: Vec<_> = (0..n).map(|i| leaf_of(&src, &m, i)).collect();
    for run in leaves.chunks(32) {
        store.put_leaves(&m.tree_cid, run).unwrap();
    }
    assert!(store.disk_bytes().unwrap() >= n * BS as u64);
    store.delete(&mcid).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.disk_bytes().unwrap() >= BS as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "disk not freed: {} bytes",
            store.disk_bytes().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.space().unwrap().quota_used_bytes, 0);
}

/// `get_leaves` (the serving path's batch read) returns one result per index, in the order
/// asked, each equal to what `get_leaf` returns; indices past the end and unknown datasets are
/// `None`.
#[test]
fn get_leaves_reads_a_batch_in_order() {
    for (name, b) in backends(quiet()) {
        let bytes = data(5 * BS + 17, 12);
        let (_, m) = upload(&b.store, &bytes, None).unwrap();
        let asked = [4, 0, 9, 5, 2, 2];
        let got = b.store.get_leaves(&m.tree_cid, &asked).unwrap();
        assert_eq!(got.len(), asked.len(), "{name}");
        for (&i, r) in asked.iter().zip(&got) {
            let one = b.store.get_leaf(&m.tree_cid, i).unwrap();
            match (r.as_ref().unwrap(), one) {
                (Some((blk, proof)), Some((blk1, proof1))) => {
                    assert_eq!(blk, &blk1, "{name}: leaf {i}");
                    assert_eq!(proof, &proof1, "{name}: leaf {i}");
                    let start = i as usize * BS;
                    let end = (start + BS).min(bytes.len());
                    assert_eq!(
                        &blk.data()[..end - start],
                        &bytes[start..end],
                        "{name}: leaf {i}"
                    );
                }
                (None, None) => assert!(i >= m.blocks_count(), "{name}: leaf {i} missing"),
                (r, one) => panic!("{name}: leaf {i}: batch {r:?}, single {one:?}"),
            }
        }
        let other = Block::data_block(Bytes::from_static(b"not a tree"))
            .cid()
            .to_owned();
        let none = b.store.get_leaves(&other, &[0, 1]).unwrap();
        assert!(none.iter().all(|r| matches!(r, Ok(None))), "{name}");
        assert!(
            b.store.get_leaves(&m.tree_cid, &[]).unwrap().is_empty(),
            "{name}"
        );
    }
}

/// `first_missing_leaf` finds the first gap in a range of a partly downloaded dataset, and
/// reports every range of a complete dataset as complete (only past its end is missing).
#[test]
fn first_missing_leaf_finds_gaps() {
    for (name, b) in backends(quiet()) {
        let src = Store::in_memory(quiet()).unwrap();
        let (mcid, m) = upload(&src, &data(6 * BS, 13), None).unwrap();
        b.store
            .put_block(&src.get_block(&mcid).unwrap().unwrap())
            .unwrap();
        let have: Vec<_> = [0, 1, 3, 4]
            .into_iter()
            .map(|i| leaf_of(&src, &m, i))
            .collect();
        b.store.put_leaves(&m.tree_cid, &have).unwrap();
        let first = |r: std::ops::Range<u64>| b.store.first_missing_leaf(&m.tree_cid, r).unwrap();
        assert_eq!(first(0..6), Some(2), "{name}");
        assert_eq!(first(0..2), None, "{name}");
        assert_eq!(first(2..3), Some(2), "{name}");
        assert_eq!(first(3..5), None, "{name}");
        assert_eq!(first(3..6), Some(5), "{name}");
        assert_eq!(first(4..4), None, "{name}");
        // The source holds the whole dataset.
        assert_eq!(src.first_missing_leaf(&m.tree_cid, 0..6).unwrap(), None);
        assert_eq!(src.first_missing_leaf(&m.tree_cid, 0..7).unwrap(), Some(6));
        let other = *Block::data_block(Bytes::from_static(b"no dataset")).cid();
        assert_eq!(
            b.store.first_missing_leaf(&other, 3..9).unwrap(),
            Some(3),
            "{name}"
        );
    }
}

#[test]
fn corrupt_block_is_reported_not_served() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let bytes = data(2 * BS, 10);
    let (_, m) = upload(&store, &bytes, None).unwrap();
    drop(store);
    // Flip one byte in every segment file.
    for e in std::fs::read_dir(dir.path().join("blocks")).unwrap() {
        let p = e.unwrap().path();
        let mut d = std::fs::read(&p).unwrap();
        d[100] ^= 0xff;
        std::fs::write(&p, d).unwrap();
    }
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert!(matches!(
        store.get_leaf(&m.tree_cid, 0),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(store.get_leaf(&m.tree_cid, 1).unwrap().is_some());
    // In a batch, the corrupt leaf is its own error and does not hide the good one.
    let batch = store.get_leaves(&m.tree_cid, &[0, 1]).unwrap();
    assert!(matches!(batch[0], Err(StoreError::Corrupt { .. })));
    assert!(matches!(batch[1], Ok(Some(_))));
}

/// Every way a block reaches the disk (upload, network leaves, single put) stores a checksum
/// that catches a single flipped bit anywhere in the block when it is read back.
#[test]
fn any_flipped_bit_is_caught_on_read() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    let (_, m) = upload(&store, &data(2 * BS, 12), None).unwrap();
    // A second dataset stored the way downloads store it: leaves with proofs.
    let blocks: Vec<Block> = (0..3u8)
        .map(|k| Block::data_block(Bytes::from(data(BS, 20 + k))))
        .collect();
    let tree = CodexTree::new(
        blocks
            .iter()
            .map(|b| cairn_core::cid::cid_digest(b.cid()).unwrap())
            .collect(),
    )
    .unwrap();
    let leaves: Vec<_> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let proof = tree.proof(i as u64).unwrap();
            VerifiedLeaf::verify(tree.cid(), i as u64, 3, b.clone(), proof).unwrap()
        })
        .collect();
    // As a download does: the manifest first, then the leaves.
    store
        .put_block(&Manifest::new(tree.cid(), 3 * BS as u64, BS as u64).to_block())
        .unwrap();
    store.put_leaves(&tree.cid(), &leaves).unwrap();
    let single = Block::data_block(Bytes::from(data(1000, 30)));
    store.put_block(&single).unwrap();
    drop(store);

    // Where each block's bytes are: found by content in the segment files.
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let find = |bytes: &[u8]| {
        for p in &segments {
            let d = std::fs::read(p).unwrap();
            if let Some(off) = d.windows(bytes.len()).position(|w| w == bytes) {
                return (p.clone(), off);
            }
        }
        panic!("block bytes not found in any segment");
    };
    let up = data(2 * BS, 12);
    type Read = Box<dyn Fn(&Store) -> Result<bool, StoreError>>;
    let mut cases: Vec<(Vec<u8>, Read)> = Vec::new();
    for i in 0..2u64 {
        let tree = m.tree_cid;
        let b = up[i as usize * BS..(i as usize + 1) * BS].to_vec();
        cases.push((
            b,
            Box::new(move |s| s.get_leaf(&tree, i).map(|l| l.is_some())),
        ));
    }
    for (i, b) in blocks.iter().enumerate() {
        let tree = tree.cid();
        cases.push((
            b.data().to_vec(),
            Box::new(move |s| s.get_leaf(&tree, i as u64).map(|l| l.is_some())),
        ));
    }
    let single_cid = *single.cid();
    cases.push((
        single.data().to_vec(),
        Box::new(move |s| s.get_block(&single_cid).map(|b| b.is_some())),
    ));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for (n, (bytes, read)) in cases.iter().enumerate() {
        let (path, off) = find(bytes);
        for _ in 0..4 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let bit = rng % (bytes.len() as u64 * 8);
            let at = off + (bit / 8) as usize;
            let mut d = std::fs::read(&path).unwrap();
            d[at] ^= 1 << (bit % 8);
            std::fs::write(&path, &d).unwrap();
            let store = Store::open(dir.path(), quiet()).unwrap();
            assert!(
                matches!(read(&store), Err(StoreError::Corrupt { .. })),
                "case {n}: bit {bit} flipped and the read was not refused"
            );
            for (k, (_, other)) in cases.iter().enumerate() {
                if k != n {
                    assert!(other(&store).unwrap(), "case {k} damaged by case {n}");
                }
            }
            drop(store);
            d[at] ^= 1 << (bit % 8);
            std::fs::write(&path, &d).unwrap();
        }
    }
}

#[test]
fn disk_store_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let bytes = data(5 * BS + 17, 11);
    let (cid, m) = {
        let store = Store::open(dir.path(), quiet()).unwrap();
        upload(&store, &bytes, Some("keep.bin")).unwrap()
    };
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert_eq!(
        store
            .get_manifest(&cid)
            .unwrap()
            .unwrap()
            .filename
            .as_deref(),
        Some("keep.bin")
    );
    assert_eq!(download(&store, &m), bytes);
    assert_consistent(&store, "reopened");
}

/// Deleting a dataset costs one small transaction whatever its size: the call for 100,000
/// blocks does the same index work as for 10 (checked by counting, not timing — the reclaim
/// happens afterwards). Timings for both are printed for the record.
#[test]
fn dataset_delete_is_constant_work() {
    let mut work = Vec::new();
    for &n in &[10usize, 100_000] {
        // Small blocks keep the test fast; the index work per block is the same as for 64 KiB.
        let store = Store::in_memory(quiet()).unwrap();
        let mut w = store.begin_dataset().unwrap();
        for i in 0..n {
            w.write(&Block::data_block(Bytes::from(
                (i as u64).to_le_bytes().to_vec(),
            )))
            .unwrap();
        }
        let s = w
            .finish(DatasetMeta {
                dataset_size: 8 * n as u64,
                block_size: 8,
                ..Default::default()
            })
            .unwrap();
        let before = store.space().unwrap();
        let t = std::time::Instant::now();
        store.delete(&s.manifest_cid).unwrap();
        let took = t.elapsed();
        let after = store.space().unwrap();
        // Only the manifest block was dropped by the call itself.
        assert_eq!(before.total_blocks - after.total_blocks, 1, "n = {n}");
        assert!(store.list_manifests().unwrap().is_empty());
        eprintln!("delete of a {n}-block dataset returned in {took:?}");
        work.push(before.total_blocks - after.total_blocks);
        assert_eq!(store.reclaim_now().unwrap(), n);
    }
    assert_eq!(work[0], work[1]);
}

fn cairn_store_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A download still being written when a compaction pass seals its open segment (another
/// dataset in it was deleted) goes on in a new segment: all of it reads back, after a reopen
/// too, and the counters stay exact.
#[test]
fn a_download_goes_on_when_a_pass_seals_its_open_segment() {
    /// Blocks per dataset: X (kept) gets half of them before the pass, Y (deleted) all.
    const N: u64 = 256;
    let src = Store::in_memory(quiet()).unwrap();
    let (x_bytes, y_bytes) = (data(N as usize * BS, 31), data(N as usize * BS, 32));
    let (x_cid, x) = upload(&src, &x_bytes, None).unwrap();
    let (y_cid, y) = upload(&src, &y_bytes, None).unwrap();
    let x_leaves: Vec<_> = (0..N).map(|i| leaf_of(&src, &x, i)).collect();
    let y_leaves: Vec<_> = (0..N).map(|i| leaf_of(&src, &y, i)).collect();
    let half = N as usize / 2;
    for (name, b) in backends(quiet()) {
        for cid in [x_cid, y_cid] {
            b.store
                .put_block(&src.get_block(&cid).unwrap().unwrap())
                .unwrap();
        }
        for run in 0..half / 16 {
            b.store
                .put_leaves(&x.tree_cid, &x_leaves[run * 16..(run + 1) * 16])
                .unwrap();
            b.store
                .put_leaves(&y.tree_cid, &y_leaves[run * 32..(run + 1) * 32])
                .unwrap();
        }
        b.store.delete(&y_cid).unwrap();
        b.store.reclaim_now().unwrap();
        // One open segment: X's 128 blocks live, Y's 256 dead. The pass seals and rewrites it.
        let r = b.store.compact().unwrap();
        assert_eq!(r.moved_blocks, half as u64, "{name}: {r:?}");
        assert_eq!(r.segments_freed, 1, "{name}: {r:?}");
        assert_eq!(
            r.freed_bytes,
            (half + N as usize) as u64 * BS as u64,
            "{name}"
        );
        b.store.put_leaves(&x.tree_cid, &x_leaves[half..]).unwrap();
        assert_eq!(download(&b.store, &x), x_bytes, "{name}");
        assert_consistent(&b.store, name);
        assert_eq!(
            b.store.compact().unwrap(),
            Default::default(),
            "{name}: nothing more to do"
        );
        reads_back_after_reopen(b, &x, &x_bytes, name);
    }
}

/// On a disk backend: the store, closed and opened again, reads `m`'s bytes back and its
/// counters are exact (an in-memory backend has nothing to reopen).
fn reads_back_after_reopen(b: Backend, m: &Manifest, bytes: &[u8], name: &str) {
    let Some(dir) = b._dir else {
        return;
    };
    drop(b.store);
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert_eq!(download(&store, m), bytes, "{name}: reopened");
    assert_consistent(&store, name);
}

/// Two datasets downloaded at once interleave their leaves in the shared network segments.
/// Deleting one leaves those segments half dead; the maintenance pass's compaction copies the
/// live half out and deletes the old files: exactly the dead bytes are freed, the other dataset
/// reads back intact, the counters stay exact, and a second pass finds nothing to do.
#[test]
fn compaction_frees_what_a_deleted_download_left_in_shared_segments() {
    /// Blocks per dataset: three segments' worth between the two (two sealed, one open).
    const N: u64 = 384;
    /// Leaves per `put_leaves` call, alternating between the datasets.
    const RUN: u64 = 16;
    let roll = 256 * BS as u64; // 16 MiB: 256 blocks per segment
    let cfg = StoreConfig {
        segment_roll_bytes: roll,
        ..quiet()
    };
    let src = Store::in_memory(quiet()).unwrap();
    let (x_bytes, y_bytes) = (data(N as usize * BS, 21), data(N as usize * BS, 22));
    let (x_cid, x) = upload(&src, &x_bytes, None).unwrap();
    let (y_cid, y) = upload(&src, &y_bytes, None).unwrap();
    let x_leaves: Vec<_> = (0..N).map(|i| leaf_of(&src, &x, i)).collect();
    let y_leaves: Vec<_> = (0..N).map(|i| leaf_of(&src, &y, i)).collect();
    for (name, b) in backends(cfg) {
        for cid in [x_cid, y_cid] {
            b.store
                .put_block(&src.get_block(&cid).unwrap().unwrap())
                .unwrap();
        }
        for start in (0..N).step_by(RUN as usize) {
            let run = start as usize..(start + RUN) as usize;
            b.store
                .put_leaves(&x.tree_cid, &x_leaves[run.clone()])
                .unwrap();
            b.store.put_leaves(&y.tree_cid, &y_leaves[run]).unwrap();
        }
        // Nothing is dead yet: nothing to compact.
        assert_eq!(b.store.compact().unwrap(), Default::default(), "{name}");
        b.store.delete(&x_cid).unwrap();
        b.store.reclaim_now().unwrap();
        let disk_before = b.store.disk_bytes().unwrap();
        let r = b.store.maintenance(cairn_store_now()).unwrap();
        // All three segments were half X (the open one too, which the pass seals first):
        // their Y halves (384 blocks) moved, all three freed.
        assert_eq!(r.compacted.moved_blocks, 384, "{name}: {r:?}");
        assert_eq!(r.compacted.moved_bytes, 384 * BS as u64, "{name}");
        assert_eq!(r.compacted.segments_freed, 3, "{name}");
        assert_eq!(r.compacted.freed_bytes, 3 * roll, "{name}");
        assert_eq!(r.compacted.corrupt_blocks, 0, "{name}");
        assert_eq!(
            disk_before - b.store.disk_bytes().unwrap(),
            3 * roll / 2,
            "{name}: exactly the dead bytes of the three segments are freed"
        );
        assert_eq!(download(&b.store, &y), y_bytes, "{name}");
        assert_consistent(&b.store, name);
        assert_eq!(
            b.store.compact().unwrap(),
            Default::default(),
            "{name}: second pass"
        );
        // Y survives a reopen from its new segment too (disk only).
        reads_back_after_reopen(b, &y, &y_bytes, name);
    }
}

/// The store the `finish:leaf-batch` hook of the test below reads its space from, and what it
/// saw: used plus reserved bytes after each batch of leaves an upload's finish commits.
static OBSERVED: std::sync::Mutex<(Option<Store>, Vec<u64>)> =
    std::sync::Mutex::new((None, Vec::new()));

fn observe_space(point: &'static str) {
    if point != "finish:leaf-batch" {
        return;
    }
    let store = OBSERVED.lock().unwrap().0.clone();
    if let Some(store) = store {
        let s = store.space().unwrap();
        OBSERVED
            .lock()
            .unwrap()
            .1
            .push(s.quota_used_bytes + s.quota_reserved_bytes);
    }
}

/// An upload's finish commits its leaves in batches; each batch's bytes leave the reservation
/// as they become used, so used + reserved stays at what the upload reserved. Before, the
/// reservation was only given back after the last batch, every committed batch counted twice
/// meanwhile, and an upload or download that fitted was refused (507) beside a large finishing
/// upload.
#[test]
fn a_finishing_upload_is_never_counted_twice() {
    const N: usize = 9;
    for (name, b) in backends(StoreConfig {
        leaf_batch: 2,
        crash_hook: Some(observe_space),
        ..quiet()
    }) {
        *OBSERVED.lock().unwrap() = (Some(b.store.clone()), Vec::new());
        let reserve = (N * BS) as u64 + 1024;
        let mut w = b.store.begin_dataset().unwrap();
        w.reserve(reserve).unwrap();
        for i in 0..N {
            w.write(&Block::data_block(Bytes::from(data(BS, 100 + i as u8))))
                .unwrap();
        }
        w.finish(DatasetMeta {
            dataset_size: (N * BS) as u64,
            block_size: BS as u64,
            ..DatasetMeta::default()
        })
        .unwrap();
        let seen = std::mem::take(&mut OBSERVED.lock().unwrap().1);
        OBSERVED.lock().unwrap().0 = None;
        assert_eq!(seen.len(), N.div_ceil(2), "{name}: {seen:?}");
        assert!(
            seen.iter().all(|&total| total == reserve),
            "{name}: used + reserved after each batch {seen:?}, reserved {reserve}"
        );
        let s = b.store.space().unwrap();
        assert_eq!(s.quota_reserved_bytes, 0, "{name}");
        assert!(s.quota_used_bytes < reserve, "{name}: {s:?}");
        assert_consistent(&b.store, name);
    }
}

/// Downloads of one dataset share its reservation: a second request for a dataset being
/// fetched needs no more room (before, it reserved the whole dataset again and got a false 507
/// from a quota that held the dataset once). The room goes back when the last of them is
/// dropped, or at once when the dataset is deleted (a client that stopped reading its stream
/// must not hold it), and a reservation from before the delete never touches a new one.
#[test]
fn downloads_of_one_dataset_share_its_reservation() {
    const N: u64 = 6;
    for (name, b) in backends(StoreConfig {
        quota_bytes: 8 * BS as u64,
        background_reclaim: false,
        ..StoreConfig::default()
    }) {
        let src = Store::in_memory(quiet()).unwrap();
        let (xc, x) = upload(&src, &data(N as usize * BS, 81), None).unwrap();
        let manifest = src.get_block(&xc).unwrap().unwrap();
        b.store.put_block(&manifest).unwrap();
        let bs = BS as u64;
        let reserved = |s: &Store| s.space().unwrap().quota_reserved_bytes;
        let first = b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap();
        let second = b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap();
        let range = b.store.reserve_room(&x.tree_cid, 2..4, bs).unwrap();
        assert_eq!(reserved(&b.store), N * bs, "{name}");
        assert_eq!(second.bytes(), N * bs, "{name}");
        b.store
            .put_leaves(&x.tree_cid, &[leaf_of(&src, &x, 0)])
            .unwrap();
        assert_eq!(reserved(&b.store), (N - 1) * bs, "{name}");
        // Held until the last one goes.
        drop(first);
        drop(range);
        assert_eq!(reserved(&b.store), (N - 1) * bs, "{name}");
        drop(second);
        assert_eq!(reserved(&b.store), 0, "{name}");

        // A delete frees the room at once; the stale reservation's drop changes nothing, not
        // even the room of a download of the dataset stored again.
        let stale = b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap();
        assert_eq!(reserved(&b.store), (N - 1) * bs, "{name}");
        b.store.delete(&xc).unwrap();
        assert_eq!(reserved(&b.store), 0, "{name}");
        b.store.maintenance(cairn_store_now()).unwrap();
        b.store.put_block(&manifest).unwrap();
        let fresh = b.store.reserve_room(&x.tree_cid, 0..N, bs).unwrap();
        assert_eq!(reserved(&b.store), N * bs, "{name}");
        drop(stale);
        assert_eq!(reserved(&b.store), N * bs, "{name}");
        drop(fresh);
        assert_eq!(reserved(&b.store), 0, "{name}");
        assert_consistent(&b.store, name);
    }
}

static FREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// A download reserves its room, but the disk may fill behind it: once a batch of its blocks is
/// refused for want of disk, `download_disk_room` says so for that dataset, so the download
/// stops asking (it fetched every remaining block and dropped it before), until a new
/// reservation for the dataset shows the disk has room again.
#[test]
fn a_download_whose_blocks_the_disk_refused_stops_asking() {
    use std::sync::atomic::Ordering;
    let store = Store::in_memory(StoreConfig {
        free_space_hook: Some(|| FREE.load(Ordering::SeqCst)),
        ..quiet()
    })
    .unwrap();
    let src = Store::in_memory(quiet()).unwrap();
    let (mcid, m) = upload(&src, &data(8 * BS, 41), None).unwrap();
    let leaves: Vec<_> = (0..8).map(|i| leaf_of(&src, &m, i)).collect();
    store
        .put_block(&src.get_block(&mcid).unwrap().unwrap())
        .unwrap();
    let room = cairn_store::MIN_DISK_HEADROOM + 8 * BS as u64;
    FREE.store(room, Ordering::SeqCst);
    let held = store.reserve_room(&m.tree_cid, 0..8, BS as u64).unwrap();
    store.download_disk_room(&m.tree_cid, BS as u64).unwrap();
    store.put_leaves(&m.tree_cid, &leaves[..2]).unwrap();

    // Another program fills the disk.
    FREE.store(cairn_store::MIN_DISK_HEADROOM, Ordering::SeqCst);
    let refused = store.put_leaves(&m.tree_cid, &leaves[2..4]).unwrap_err();
    assert!(refused.is_disk_full(), "{refused}");
    FREE.store(room, Ordering::SeqCst);
    let stop = store
        .download_disk_room(&m.tree_cid, BS as u64)
        .unwrap_err();
    assert!(stop.is_disk_full(), "{stop}");
    // A run of blocks that are all here needs no disk: it is never refused.
    store.download_disk_room(&m.tree_cid, 0).unwrap();

    // A new request for the dataset finds room for all it lacks: the download may go on.
    drop(held);
    let _again = store.reserve_room(&m.tree_cid, 0..8, BS as u64).unwrap();
    store.download_disk_room(&m.tree_cid, BS as u64).unwrap();
    store.put_leaves(&m.tree_cid, &leaves[2..]).unwrap();
    assert_eq!(store.first_missing_leaf(&m.tree_cid, 0..8).unwrap(), None);
}

/// Background downloads asked for are kept across a restart, oldest first, until removed; a
/// dataset's delete drops its own; an index that never had the table reads as none.
#[test]
fn background_fetches_are_kept_until_removed_or_deleted() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), quiet()).unwrap();
    assert!(store.fetches(10).unwrap().is_empty(), "a fresh index");
    let (first, _) = upload(&store, &data(2 * BS, 40), None).unwrap();
    let (second, _) = upload(&store, &data(2 * BS, 41), None).unwrap();
    let (third, _) = upload(&store, &data(2 * BS, 42), None).unwrap();
    store.add_fetch(&first).unwrap();
    store.add_fetch(&second).unwrap();
    store.add_fetch(&third).unwrap();
    drop(store);

    let store = Store::open(dir.path(), quiet()).unwrap();
    let mut kept = store.fetches(10).unwrap();
    kept.sort_by_key(|c| c.to_bytes());
    let mut all = vec![first, second, third];
    all.sort_by_key(|c| c.to_bytes());
    assert_eq!(kept, all, "kept across a restart");
    assert_eq!(store.fetches(2).unwrap().len(), 2, "the limit");
    store.remove_fetch(&first).unwrap();
    store.delete(&second).unwrap();
    assert_eq!(store.fetches(10).unwrap(), vec![third]);
}

/// Paging through the listed datasets meets each once, in the order of the whole list, and a
/// dataset deleted between two pages does not stop the pages after it.
#[test]
fn manifests_page_through_every_dataset_once() {
    for (name, b) in backends(quiet()) {
        for seed in 0..7u8 {
            upload(&b.store, &data(BS + usize::from(seed), seed), None).unwrap();
        }
        let whole: Vec<_> = b.store.list_manifests().unwrap();
        assert_eq!(whole.len(), 7, "{name}");
        let mut paged = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let page = b.store.manifest_page(after.as_deref(), 3).unwrap();
            pages += 1;
            assert!(page.looked_at <= 3 && page.manifests.len() <= page.looked_at);
            if pages == 1 {
                // Before the next page is read, the last dataset of this page goes (the next
                // starts after its key all the same), and one of the next page's.
                b.store.delete(&page.manifests[2].0).unwrap();
                b.store.delete(&whole[4].0).unwrap();
            }
            paged.extend(page.manifests);
            if page.looked_at < 3 {
                break;
            }
            after = page.next;
        }
        let mut expected = whole.clone();
        expected.remove(4);
        assert_eq!(paged, expected, "{name}");
        assert_eq!(pages, 3, "{name}: 3 + 3 + 0 datasets looked at");
    }
}

/// Leaves read in a batch come in runs (blocks stored one after the other are read with one
/// span read, direct on a file system that allows it, at most 4 MiB at a time): every block is
/// the one read alone, in the order asked, whatever the order, repeats, gaps and the short last
/// block.
#[test]
fn leaves_read_in_runs_are_the_leaves_read_alone() {
    for (name, b) in backends(quiet()) {
        let bytes = data(70 * BS + 1000, 21);
        let (_, m) = upload(&b.store, &bytes, None).unwrap();
        let all: Vec<u64> = (0..71).collect();
        let mut orders = vec![all.clone()];
        orders.push(vec![5, 3, 4, 4, 70, 71, 69, 70, 0, 1, 2]);
        orders.push(all.iter().rev().copied().collect());
        for indices in orders {
            let batch = b.store.get_leaves(&m.tree_cid, &indices).unwrap();
            assert_eq!(batch.len(), indices.len(), "{name}");
            for (i, got) in indices.iter().zip(batch) {
                let alone = b.store.get_leaf(&m.tree_cid, *i).unwrap();
                match (got.unwrap(), alone) {
                    (Some((block, proof)), Some((one, one_proof))) => {
                        assert_eq!(block.data(), one.data(), "{name} leaf {i}");
                        assert_eq!(block.cid(), one.cid(), "{name} leaf {i}");
                        assert_eq!(proof, one_proof, "{name} leaf {i}");
                        // The last block is padded to the block size, as the reference does.
                        let at = *i as usize * BS;
                        let n = (bytes.len() - at).min(BS);
                        assert!(block.data()[..n] == bytes[at..at + n], "{name} leaf {i}");
                        assert!(block.data()[n..].iter().all(|b| *b == 0), "{name} leaf {i}");
                    }
                    (None, None) => assert_eq!(*i, 71, "{name}: only the leaf past the end"),
                    (got, alone) => panic!("{name} leaf {i}: {got:?} vs {alone:?}"),
                }
            }
        }
    }
}
