//! The DHT's metric handles on two (and a stopped third) loopback nodes: traffic, requests by
//! outcome, requests served, lookups, provider announcements and searches, the table gauge.
//! Every wait is on a condition, with a deadline.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use cairn_discovery::{Discovery, DiscoveryConfig, Metrics, RequestError};
use libp2p::identity::Keypair;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn config(bootstrap: Vec<cairn_discovery::spr::Spr>, metrics: &Metrics) -> DiscoveryConfig {
    let mut c = DiscoveryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.bootstrap = bootstrap;
    c.metrics = metrics.clone();
    c
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_requests_lookups_and_searches() {
    let cancel = CancellationToken::new();
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let start = |boot, m| {
        Discovery::start(
            Keypair::generate_secp256k1(),
            config(boot, m),
            cancel.clone(),
        )
    };
    let a = start(Vec::new(), &ma).await.unwrap();
    let b = start(vec![a.local_spr()], &mb).await.unwrap();

    // B joins through A: it pings A and looks itself up; A answers.
    wait_until("B's join", || {
        mb.requests_answered.get() >= 1
            && mb.lookups_completed.get() >= 1
            && ma.requests_received.get() >= 1
            && mb.table_nodes.get() >= 1
    })
    .await;
    assert!(mb.packets_sent.get() >= 1 && ma.packets_received.get() >= 1);
    // Every datagram carries at least a masked header.
    assert!(mb.bytes_sent.get() >= 16 * mb.packets_sent.get());
    assert!(ma.bytes_received.get() >= 16 * ma.packets_received.get());
    assert_eq!(mb.requests_timed_out.get(), 0);

    // A CID nobody provides is not found; an announcement on A is, from B (once the
    // ADDPROVIDER, which nobody acknowledges, has landed).
    assert!(b.find_providers(b"nobody has this").await.is_empty());
    assert_eq!(
        (
            mb.provider_searches_empty.get(),
            mb.provider_searches_found.get()
        ),
        (1, 0)
    );
    a.provide(b"a dataset").await;
    assert_eq!(ma.announcements.get(), 1);
    let deadline = Instant::now() + WAIT;
    while b.find_providers(b"a dataset").await.is_empty() {
        assert!(Instant::now() < deadline, "A's record never found");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mb.provider_searches_found.get(), 1);

    // A node that stopped answers nothing: the request times out.
    let gone = CancellationToken::new();
    let c = Discovery::start(
        Keypair::generate_secp256k1(),
        config(Vec::new(), &Metrics::default()),
        gone.clone(),
    )
    .await
    .unwrap();
    let c_spr = c.local_spr();
    gone.cancel();
    let failed_before = mb.requests_failed.get();
    assert_eq!(b.ping(&c_spr).await, Err(RequestError::Timeout));
    assert_eq!(mb.requests_timed_out.get(), 1);
    assert_eq!(mb.requests_failed.get(), failed_before);
    cancel.cancel();
}
