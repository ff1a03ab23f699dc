//! What the node announces to the DHT as its own: only datasets it holds whole, under the
//! manifest CID it actually stores, and every one of them over the re-announce rounds (found by
//! review).

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn_core::{Block, cid::Codec};
use cairn_node::StoreConfig;
use common::{connect, data, metered_node, node, upload, wait_until, with_lone_dht};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

/// Deadline of every wait.
const WAIT: Duration = Duration::from_secs(30);

/// A network stream whose client went away after the first chunk stored only part of the
/// dataset: it is not announced (it used to be, since the stopped stream counted as a
/// success). Streamed again to the end, it is; the DHT was asked to provide the manifest and
/// the tree once each, by the second stream only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_went_away_is_not_announced() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let original = data(64 * 65536, 21);
    let cid = upload(&a, &original).await;
    let (b, nb, metrics) = metered_node(&cancel, StoreConfig::default()).await;
    let (b, dht, dht_metrics) = with_lone_dht(b, &cancel, Duration::from_secs(3600)).await;
    connect(&nb, &na).await;
    let m = b.fetch_manifest(cid).await.unwrap();

    let mut s = b.stream_network(&m).unwrap();
    let first = tokio::time::timeout(WAIT, s.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    drop(s);
    wait_until("the stopped stream ends", WAIT, || {
        metrics.downloads.cancelled.count() == 1 && metrics.downloads.active.get() == 0
    })
    .await;
    assert!(
        b.check_local(&m, cairn_node::ByteRange::full(m.download_size()))
            .await
            .is_err(),
        "the first stream stored the whole dataset; the test proves nothing"
    );

    let got: Vec<Bytes> = tokio::time::timeout(WAIT, b.stream_network(&m).unwrap().try_collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.concat(), original);
    wait_until("the whole dataset is announced", WAIT, || {
        dht.announced(&cid.to_bytes()) && dht.announced(&m.tree_cid.to_bytes())
    })
    .await;
    assert_eq!(
        dht_metrics.announcements.get(),
        2,
        "announced by the stream that stopped early too"
    );
    cancel.cancel();
}

/// Decoding a manifest is tolerant (unknown fields are skipped), so the CID of the decoded
/// manifest encoded again may differ from the CID of the block asked for and stored. A
/// network stream of such a manifest announces the CID asked for (and stored), not the
/// re-encoded one, which this node does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_announces_the_manifest_cid_asked_for() {
    let cancel = CancellationToken::new();
    let (a, na) = node(&cancel).await;
    let original = data(5 * 65536 + 9, 22);
    let plain = upload(&a, &original).await;
    let m = a.manifest(plain).await.unwrap();
    // The same manifest with an unknown top-level field (2, varint 1) after it.
    let mut bytes = m.encode();
    bytes.extend_from_slice(&[0x10, 0x01]);
    let odd = Block::new(Codec::Manifest, Bytes::from(bytes));
    let cid = *odd.cid();
    assert_ne!(cid, plain);
    a.store().put_block(&odd).unwrap();

    let (b, nb) = node(&cancel).await;
    let (b, dht, _) = with_lone_dht(b, &cancel, Duration::from_secs(3600)).await;
    connect(&nb, &na).await;
    let fetched = b.fetch_manifest(cid).await.unwrap();
    assert_eq!(fetched.cid(), plain, "decoding dropped the unknown field");
    let got: Vec<Bytes> = tokio::time::timeout(
        WAIT,
        b.stream_network_of(
            cid,
            &fetched,
            cairn_node::ByteRange::full(fetched.download_size()),
            None,
        )
        .unwrap()
        .try_collect(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.concat(), original);
    wait_until("the dataset is announced", WAIT, || {
        dht.announced(&cid.to_bytes())
    })
    .await;
    assert!(
        !dht.announced(&plain.to_bytes()),
        "a manifest CID this node does not hold was announced"
    );
    cancel.cancel();
}

/// Re-announce interval of the round tests: short, so that rounds follow each other quickly.
const ROUND: Duration = Duration::from_millis(200);

/// The re-announce round announces only datasets held whole. A manifest stored alone (as a
/// `HEAD` or `/network/manifest` leaves it, or a download that stopped) is listed, but
/// announcing it made this node a provider of blocks it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_round_announces_only_whole_datasets() {
    let cancel = CancellationToken::new();
    let (a, _) = node(&cancel).await;
    let partial = upload(&a, &data(3 * 65536, 23)).await;
    let (b, _) = node(&cancel).await;
    let whole = upload(&b, &data(2 * 65536, 24)).await;
    b.store()
        .put_block(&a.store().get_block(&partial).unwrap().unwrap())
        .unwrap();
    assert_eq!(b.list().await.unwrap().len(), 2);
    let (_b, dht, metrics) = with_lone_dht(b, &cancel, ROUND).await;
    // Two rounds' worth of announcements of the whole dataset (one round's with the bug).
    wait_until("two rounds announce", WAIT, || {
        metrics.announcements.get() >= 4
    })
    .await;
    assert!(dht.announced(&whole.to_bytes()));
    assert!(
        !dht.announced(&partial.to_bytes()),
        "a dataset this node holds no block of was announced"
    );
    cancel.cancel();
}

/// Rounds reach every stored dataset, however many there are. A round used to queue datasets
/// in the same order until the announce backlog was full, so only about the first
/// `ADVERTISE_QUEUE / 2` were ever announced again and the others' records lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_reach_more_datasets_than_the_backlog_holds() {
    let cancel = CancellationToken::new();
    let (b, _) = node(&cancel).await;
    let n = cairn_node::ADVERTISE_QUEUE / 2 + 100;
    let mut cids = Vec::with_capacity(n);
    for i in 0..n {
        // `data` uses `seed | 1`: odd seeds only, so that no two datasets are the same.
        cids.push(upload(&b, &data(100, 2001 + 2 * i as u64)).await);
    }
    assert_eq!(b.list().await.unwrap().len(), n);
    let (_b, dht, _) = with_lone_dht(b, &cancel, ROUND).await;
    wait_until("every dataset is announced", WAIT, || {
        cids.iter().all(|c| dht.announced(&c.to_bytes()))
    })
    .await;
    cancel.cancel();
}
