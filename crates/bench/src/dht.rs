//! `cairn-bench dht`: an in-process network of DHT nodes on loopback UDP.
//!
//! Starts `--nodes` DHT nodes (`cairn-discovery`, release build), every one bootstrapped from
//! the first, with the reference's timers except a faster refresh (`--refresh`) so the network
//! converges in seconds. Then it measures, in this order:
//!
//! 1. **Convergence**: time until every routing table holds at least [`CONVERGED_TABLE`] nodes.
//! 2. **Ceiling**: the round-trip time of one raw UDP datagram echoed by a tokio task on
//!    loopback (no crypto, no protocol), the floor of any request.
//! 3. **PING**: round trips through the DHT service over an established session (AES-GCM both
//!    ways, request matching): `ratio = UDP RTT / PING RTT`.
//! 4. **Lookups**: `--lookups` lookups of random node ids from random nodes, `--concurrency` at
//!    a time; latency percentiles and the share that found the target (as a check, not a
//!    figure to tune).
//! 5. **Providers**: one node announces `--providers` CIDs; every other node then looks one of
//!    them up; latency percentiles and the share found.
//!
//! Every loop is bounded in count and the whole run by the nodes' own timeouts. Peak RSS is the
//! process's `VmHWM` (all nodes together).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use cairn_node::discovery::{Discovery, DiscoveryConfig};
use clap::Args;
use futures::{StreamExt, stream};
use libp2p::identity::Keypair;
use tokio_util::sync::CancellationToken;

/// Table size every node must reach before measuring (a bucket's worth).
pub(crate) const CONVERGED_TABLE: usize = 16;
/// Longest the network may take to converge.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);
/// Raw UDP round trips measured for the ceiling.
const UDP_ROUND_TRIPS: usize = 2000;
/// PING round trips measured.
const PINGS: usize = 2000;

/// Options of `cairn-bench dht`.
#[derive(Debug, Args)]
pub(crate) struct DhtArgs {
    /// Nodes in the network.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Lookups of random node ids.
    #[arg(long, default_value_t = 500)]
    lookups: usize,
    /// Lookups run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// CIDs announced by one node, then looked up by the others.
    #[arg(long, default_value_t = 10)]
    providers: usize,
    /// Interval of the random refresh lookups, in milliseconds (reference: 5 minutes).
    #[arg(long, default_value_t = 2000)]
    refresh: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Mean round-trip time of [`UDP_ROUND_TRIPS`] 100-byte datagrams echoed by another thread.
fn udp_echo_rtt() -> anyhow::Result<Duration> {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let echo_addr = echo.local_addr()?;
    echo.set_read_timeout(Some(Duration::from_secs(2)))?;
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..UDP_ROUND_TRIPS {
            let Ok((n, from)) = echo.recv_from(&mut buf) else {
                return;
            };
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let msg = [0u8; 100];
    let mut buf = [0u8; 1500];
    let t = Instant::now();
    for _ in 0..UDP_ROUND_TRIPS {
        client.send_to(&msg, echo_addr)?;
        client.recv_from(&mut buf).context("UDP echo lost")?;
    }
    let rtt = t.elapsed() / UDP_ROUND_TRIPS as u32;
    let _ = server.join();
    Ok(rtt)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the benchmark.
pub(crate) fn dht(args: &DhtArgs) -> anyhow::Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: &DhtArgs) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let config = |bootstrap| {
        let mut c = DiscoveryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.bootstrap = bootstrap;
        c.refresh_interval = Duration::from_millis(args.refresh.max(100));
        c
    };
    println!("cairn-bench dht: {} nodes on loopback UDP", args.nodes);
    let started = Instant::now();
    let first = Discovery::start(
        Keypair::generate_secp256k1(),
        config(vec![]),
        cancel.clone(),
    )
    .await
    .context("first node")?;
    let boot = first.local_spr();
    let mut nodes = vec![first];
    for _ in 1..args.nodes {
        nodes.push(
            Discovery::start(
                Keypair::generate_secp256k1(),
                config(vec![boot.clone()]),
                cancel.clone(),
            )
            .await?,
        );
    }
    let want = CONVERGED_TABLE.min(args.nodes - 1);
    loop {
        if nodes.iter().all(|n| n.table_len() >= want) {
            break;
        }
        if started.elapsed() > CONVERGE_DEADLINE {
            let sizes: Vec<usize> = nodes.iter().map(Discovery::table_len).collect();
            bail!("the network did not converge: table sizes {sizes:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converged = started.elapsed();
    let sizes: Vec<usize> = nodes.iter().map(Discovery::table_len).collect();
    println!(
        "converged: every table >= {want} nodes after {:.2} s (table sizes {}..{})",
        converged.as_secs_f64(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0)
    );

    // Ceiling: raw UDP echo on loopback between two blocking threads (the kernel's floor).
    let udp_rtt = tokio::task::spawn_blocking(udp_echo_rtt).await??;

    // PING over an established session (the first one opens it and is not counted).
    let target = nodes[1].local_spr();
    nodes[0].ping(&target).await.context("first PING")?;
    let t = Instant::now();
    let mut failed = 0usize;
    for _ in 0..PINGS {
        if nodes[0].ping(&target).await.is_err() {
            failed += 1;
        }
    }
    let ping_rtt = t.elapsed() / PINGS as u32;
    println!(
        "UDP echo RTT (ceiling): {:.3} ms; DHT PING RTT: {:.3} ms ({failed} of {PINGS} failed); ratio UDP/PING: {:.2}",
        ms(udp_rtt),
        ms(ping_rtt),
        udp_rtt.as_secs_f64() / ping_rtt.as_secs_f64()
    );

    // FINDNODE over the same session (one request, a multi-part answer).
    let t = Instant::now();
    let mut got = 0usize;
    for _ in 0..PINGS / 10 {
        got += nodes[0]
            .find_node(&target, vec![256, 255, 254])
            .await
            .map_or(0, |v| v.len());
    }
    let find_rtt = t.elapsed() / (PINGS / 10) as u32;
    println!(
        "DHT FINDNODE RTT (3 distances): {:.3} ms ({:.1} records per answer)",
        ms(find_rtt),
        got as f64 / (PINGS / 10) as f64
    );

    // Lookups of existing node ids from random nodes.
    let pairs: Vec<(usize, usize)> = (0..args.lookups)
        .map(|k| {
            let i = (k * 7 + 3) % nodes.len();
            let mut j = (k * 13 + 5) % nodes.len();
            if j == i {
                j = (j + 1) % nodes.len();
            }
            (i, j)
        })
        .collect();
    let t = Instant::now();
    let results: Vec<(Duration, bool)> = stream::iter(pairs)
        .map(|(i, j)| {
            let nodes = &nodes;
            async move {
                let target = nodes[j].local_id();
                let t = Instant::now();
                let found = nodes[i].lookup(target).await;
                (t.elapsed(), found.iter().any(|s| s.node_id() == target))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let lookup_wall = t.elapsed();
    let mut lat: Vec<Duration> = results.iter().map(|r| r.0).collect();
    lat.sort();
    let found = results.iter().filter(|r| r.1).count();
    println!(
        "lookups: {} in {:.2} s ({:.0}/s), latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; found the target {found}/{}",
        results.len(),
        lookup_wall.as_secs_f64(),
        results.len() as f64 / lookup_wall.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0)),
        results.len()
    );

    // Provider records: node 1 announces, every other node finds one.
    let cids: Vec<Vec<u8>> = (0..args.providers)
        .map(|k| format!("cairn-bench dht content {k}").into_bytes())
        .collect();
    let t = Instant::now();
    let mut told = 0;
    for c in &cids {
        told += nodes[1].provide(c).await;
    }
    let provide_each = t.elapsed() / cids.len().max(1) as u32;
    let provider = nodes[1].peer_id();
    let asks: Vec<(usize, usize)> = (0..nodes.len())
        .filter(|i| *i != 1)
        .map(|i| (i, i % cids.len().max(1)))
        .collect();
    let results: Vec<(Duration, bool)> = stream::iter(asks)
        .map(|(i, c)| {
            let nodes = &nodes;
            let cids = &cids;
            async move {
                let t = Instant::now();
                let found = nodes[i].find_providers(&cids[c]).await;
                (t.elapsed(), found.iter().any(|s| s.peer_id() == provider))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut lat: Vec<Duration> = results.iter().map(|r| r.0).collect();
    lat.sort();
    let found = results.iter().filter(|r| r.1).count();
    println!(
        "provide: {:.2} ms each ({told} ADDPROVIDER sent for {} CIDs); find_providers p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms; found {found}/{}",
        ms(provide_each),
        cids.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 1.0)),
        results.len()
    );
    let rss = crate::proc_status_mib("VmHWM")?;
    println!(
        "peak RSS (VmHWM, all {} nodes in one process): {rss:.1} MiB ({:.2} MiB per node)",
        nodes.len(),
        rss / nodes.len() as f64
    );
    cancel.cancel();
    Ok(())
}
