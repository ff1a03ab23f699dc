//! Thirty nodes and one seed in one process, on loopback. Every node starts knowing only the
//! seed (`--bootstrap-node`); the seed runs in seed mode. Within a bounded time every node has
//! at least its outbound target of peers, learned through peer exchange, and the seed never
//! holds a connection longer than its limit and ends with none.

use std::time::{Duration, Instant};

use cairn_net::{
    HOUSEKEEPING_INTERVAL, Keypair, NetConfig, NetworkHandle, Protocol,
    manager::SEED_HANG_UP_GRACE, start,
};
use tokio_util::sync::CancellationToken;

/// Nodes besides the seed.
const NODES: usize = 30;
/// Outbound peers each node wants (the default).
const TARGET: usize = cairn_net::DEFAULT_OUTBOUND_TARGET;
/// How long the network may take to get there (it takes a few seconds).
const CONVERGE: Duration = Duration::from_secs(60);
/// How long the seed may take to be left with no connection afterwards: a crawl round (every
/// 30 s) opens connections that last until the answer comes, so this spans one, plus slack.
const SEED_QUIET: Duration = Duration::from_secs(60);

async fn node(config: NetConfig, cancel: &CancellationToken) -> NetworkHandle {
    let (h, mut ev, _task) = start(Keypair::generate_secp256k1(), config, cancel.child_token())
        .await
        .unwrap();
    tokio::spawn(async move { while ev.recv().await.is_some() {} });
    h
}

fn local() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    }
}

/// The longest connection the seed holds now, and how many it holds.
async fn seed_connections(seed: &NetworkHandle) -> (Duration, usize) {
    let peers = seed.peers().await.unwrap();
    let longest = peers
        .iter()
        .map(|p| p.connected_for)
        .max()
        .unwrap_or_default();
    (longest, peers.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_reach_their_outbound_target_from_one_seed() {
    // `RUST_LOG=cairn_net=debug` shows what the peer managers do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cancel = CancellationToken::new();
    let seed = node(
        NetConfig {
            seed_mode: true,
            ..local()
        },
        &cancel,
    )
    .await;
    let seed_addr = seed.listen_addrs().await.unwrap()[0]
        .clone()
        .with(Protocol::P2p(seed.local_peer_id()));
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(
            node(
                NetConfig {
                    bootstrap: vec![seed_addr.clone()],
                    ..local()
                },
                &cancel,
            )
            .await,
        );
    }

    let seed_id = seed.local_peer_id();
    let started = Instant::now();
    let mut longest_seed_connection = Duration::ZERO;
    let mut seed_max_connections = 0;
    let converged = loop {
        let (longest, n) = seed_connections(&seed).await;
        longest_seed_connection = longest_seed_connection.max(longest);
        seed_max_connections = seed_max_connections.max(n);
        let mut short = 0;
        for n in &nodes {
            // The seed does not count: it hangs up.
            let s = n.status().await.unwrap();
            if s.peers.iter().filter(|p| p.peer != seed_id).count() < TARGET {
                short += 1;
            }
        }
        if short == 0 {
            break Some(started.elapsed());
        }
        if started.elapsed() > CONVERGE {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(took) = converged else {
        let mut counts = Vec::new();
        for n in &nodes {
            let s = n.status().await.unwrap();
            counts.push(format!(
                "{} peers ({} outbound), book {:?}, pex {:?}",
                s.peers.len(),
                s.peers
                    .iter()
                    .filter(|p| p.direction == cairn_net::Direction::Outbound)
                    .count(),
                s.book,
                s.pex_bytes
            ));
        }
        panic!("not every node reached {TARGET} peers in {CONVERGE:?}: {counts:?}");
    };
    eprintln!("{NODES} nodes reached {TARGET} peers in {took:?}");

    // Every node learned its peers through peer exchange: none knew anyone but the seed.
    let mut outbound_total = 0;
    let mut outbound_min = usize::MAX;
    for n in &nodes {
        let s = n.status().await.unwrap();
        assert!(s.book.new + s.book.old >= TARGET, "{:?}", s.book);
        assert!(s.pex_bytes.1 > 0, "no address list ever came in");
        let outbound = s
            .peers
            .iter()
            .filter(|p| p.peer != seed_id && p.direction == cairn_net::Direction::Outbound)
            .count();
        outbound_total += outbound;
        outbound_min = outbound_min.min(outbound);
    }
    eprintln!(
        "outbound peers per node: mean {:.1}, least {outbound_min}",
        outbound_total as f64 / NODES as f64
    );

    // The seed: no connection older than its limit (plus a tick and the polling interval), and
    // none at all once the network has settled.
    let deadline = Instant::now() + SEED_QUIET;
    loop {
        let (longest, n) = seed_connections(&seed).await;
        longest_seed_connection = longest_seed_connection.max(longest);
        seed_max_connections = seed_max_connections.max(n);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seed still holds {n} connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node asks as soon as it connects, so the seed hangs up on every connection once it
    // has answered: well before its age limit for silent peers.
    assert!(
        longest_seed_connection <= SEED_HANG_UP_GRACE + HOUSEKEEPING_INTERVAL * 2,
        "the seed held a connection for {longest_seed_connection:?}"
    );
    let status = seed.status().await.unwrap();
    assert!(status.seed_mode);
    assert!(
        status.book.new + status.book.old >= NODES,
        "the seed knows {:?}",
        status.book
    );
    eprintln!(
        "seed: at most {seed_max_connections} connections at once, longest {longest_seed_connection:?}"
    );
    cancel.cancel();
}
