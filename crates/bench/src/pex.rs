//! `cairn-bench pex`: a network of `cairn` processes that find each other through one seed.
//!
//! ```text
//! cargo build --release -p cairn -p cairn-bench
//! target/release/cairn-bench pex --nodes 100 [--outbound 10] [--steady 60s]
//! ```
//!
//! Starts a seed (`--seed-mode`) on 127.0.0.1 and `--nodes` nodes, node `i` on its own loopback
//! address 127.0.0.`i+1` (REST API and libp2p both bound there, so every node is a different
//! host to the address book), each given only the seed's multiaddr (`--bootstrap-node`). Then
//! it polls every node's `GET /debug/peers` every [`POLL`] and reports:
//!
//! * **Join time**: from the moment the last node is ready until every node has at least its
//!   outbound target (`--outbound-peers`) of peers of either direction (the seed not counted),
//!   and until every node has that many *outbound* peers (or how many got there within
//!   `--max-wait`: in a small network a node dialled first by many peers may find too few left to
//!   dial). The ceiling beside it is the time the processes took to start: a node cannot join
//!   before it runs.
//! * **Connections per node** (mean, least, most) and outbound per node, when joined and at the
//!   end of the steady window; the most connections the seed held at once, sampled.
//! * **Peer-exchange bytes per node per minute**, sent plus received, as the nodes count them
//!   (`pexBytesSent/Received`: frames with their length prefixes): over the join, and over a
//!   steady window of `--steady` after it (the book is still thin, < 1000 peers, so nodes keep
//!   asking every 30 s: this is the standing cost).
//! * **Memory and CPU**: each node's peak RSS (mean, most) and the CPU all nodes used per
//!   second of wall time, in the steady window.
//!
//! Nothing is asserted about the figures; the run fails only when it cannot be done (a node does
//! not start, or a node never has its target of peers within `--max-wait`).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::Args;
use serde_json::{Value, json};

use crate::{
    status_field_mib,
    transfer::{READY_PREFIX, Spawned, get_json, process_cpu_seconds, round},
};

/// How often every node's `/debug/peers` is read.
const POLL: Duration = Duration::from_millis(500);
/// How long one node may take to print its ready line.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Prefix of the temporary directory holding the nodes' data directories and logs.
const TEMP_PREFIX: &str = "cairn-bench-pex-";
/// Most nodes: node `i` listens on 127.0.0.`i+1`, and 127.0.0.255 is the last host address
/// of the /24 this keeps to.
const MAX_NODES: usize = 253;
/// How long a stopped node may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub(crate) struct PexArgs {
    /// Nodes besides the seed (at most 253).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Each node's outbound target (`--outbound-peers`).
    #[arg(long, default_value_t = 10)]
    outbound: usize,
    /// How long to keep measuring after every node joined (PEX bytes per minute at rest).
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    steady: Duration,
    /// Give up when not every node has joined this long after the last one started.
    #[arg(long, default_value = "180s", value_parser = humantime_secs)]
    max_wait: Duration,
    /// The nodes' `--log-level` (their logs are in the temporary directory; see `--keep`).
    #[arg(long, default_value = "warn")]
    log_level: String,
    #[command(flatten)]
    procs: crate::procs::ProcessArgs,
}

/// Parses "60s", "2m" or a number of seconds.
fn humantime_secs(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = match t.strip_suffix('m') {
        Some(d) => (d, 60),
        None => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    digits
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("'{text}': expected seconds, e.g. 60s or 2m"))
}

/// One `cairn start` process.
struct Node {
    process: Spawned,
    /// `http://ADDR/api/codex/v1`.
    api: String,
    /// When its outbound peers first reached the target, and its peers (seed excluded).
    outbound_at: Option<Instant>,
    peers_at: Option<Instant>,
}

/// What one poll of one node says.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    peers: usize,
    outbound: usize,
    pex_bytes: u64,
}

fn sample(v: &Value, seed_id: &str) -> Sample {
    let peers = v["peers"].as_array().map_or(0, |l| {
        l.iter()
            .filter(|p| p["peerId"].as_str() != Some(seed_id))
            .count()
    });
    let outbound = v["peers"].as_array().map_or(0, |l| {
        l.iter()
            .filter(|p| p["peerId"].as_str() != Some(seed_id) && p["direction"] == "outbound")
            .count()
    });
    let pex_bytes =
        v["pexBytesSent"].as_u64().unwrap_or(0) + v["pexBytesReceived"].as_u64().unwrap_or(0);
    Sample {
        peers,
        outbound,
        pex_bytes,
    }
}

fn start_node(
    cairn: &Path,
    dir: &Path,
    name: &str,
    ip: &str,
    log_level: &str,
    extra: &[&str],
) -> anyhow::Result<Spawned> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(cairn);
    cmd.arg("start")
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-bindaddr", ip, "--api-port", "0"])
        .args(["--listen-addrs", &format!("/ip4/{ip}/tcp/0")])
        .args(["--disc-port", "0", "--log-level", log_level])
        .args(extra)
        .stderr(std::process::Stdio::from(log));
    Spawned::spawn(&format!("node {name}"), &mut cmd)
}

/// CPU seconds all `nodes` have used so far.
fn cpu_seconds(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .map(|n| process_cpu_seconds(&n.process.pid().to_string()).unwrap_or(0.0))
        .sum()
}

/// (mean, least, most) of `xs`.
fn spread(xs: &[usize]) -> (f64, usize, usize) {
    let n = xs.len().max(1) as f64;
    (
        xs.iter().sum::<usize>() as f64 / n,
        xs.iter().copied().min().unwrap_or(0),
        xs.iter().copied().max().unwrap_or(0),
    )
}

pub(crate) fn pex(args: &PexArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=MAX_NODES).contains(&args.nodes),
        "--nodes must be 1 to {MAX_NODES}"
    );
    let cairn = args.procs.cairn()?;
    let (dir, tempdir) = args.procs.workdir(TEMP_PREFIX)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();

    println!(
        "pex: a seed and {} nodes on 127.0.0.x, outbound target {}",
        args.nodes, args.outbound
    );
    let t0 = Instant::now();
    let mut seed = start_node(
        &cairn,
        &dir,
        "seed",
        "127.0.0.1",
        &args.log_level,
        &["--seed-mode"],
    )?;
    let seed_api = seed
        .wait_line(READY_PREFIX, NODE_START_TIMEOUT)?
        .trim()
        .to_owned();
    let info = runtime.block_on(get_json(&client, &format!("{seed_api}/debug/info")))?;
    let seed_id = info["id"].as_str().context("seed id")?.to_owned();
    let seed_addr = format!(
        "{}/p2p/{seed_id}",
        info["addrs"][0].as_str().context("seed address")?
    );
    let outbound = args.outbound.to_string();
    let mut spawned = Vec::new();
    for i in 0..args.nodes {
        let ip = format!("127.0.0.{}", i + 2);
        spawned.push(start_node(
            &cairn,
            &dir,
            &format!("n{i:03}"),
            &ip,
            &args.log_level,
            &[
                "--bootstrap-node",
                &seed_addr,
                "--outbound-peers",
                &outbound,
            ],
        )?);
    }
    let mut nodes = Vec::new();
    for mut process in spawned {
        let api = process
            .wait_line(READY_PREFIX, NODE_START_TIMEOUT)?
            .trim()
            .to_owned();
        nodes.push(Node {
            process,
            api,
            outbound_at: None,
            peers_at: None,
        });
    }
    let ready = Instant::now();
    let start_s = ready.duration_since(t0).as_secs_f64();
    println!("  {} processes ready in {start_s:.2} s", nodes.len() + 1);

    let poll_all = |nodes: &[Node]| -> anyhow::Result<(Vec<Sample>, usize)> {
        runtime.block_on(async {
            let mut out = Vec::with_capacity(nodes.len());
            let urls: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}/debug/peers", n.api))
                .collect();
            let gets = urls.iter().map(|u| get_json(&client, u));
            for v in futures::future::join_all(gets).await {
                out.push(sample(&v?, &seed_id));
            }
            let s = get_json(&client, &format!("{seed_api}/debug/peers")).await?;
            let seed_conns = s["peers"].as_array().map_or(0, Vec::len);
            Ok((out, seed_conns))
        })
    };

    // The join.
    let mut seed_max = 0usize;
    let mut joined_samples;
    loop {
        let (samples, seed_conns) = poll_all(&nodes)?;
        seed_max = seed_max.max(seed_conns);
        let now = Instant::now();
        for (n, s) in nodes.iter_mut().zip(&samples) {
            if n.outbound_at.is_none() && s.outbound >= args.outbound {
                n.outbound_at = Some(now);
            }
            if n.peers_at.is_none() && s.peers >= args.outbound {
                n.peers_at = Some(now);
            }
        }
        joined_samples = samples;
        if nodes.iter().all(|n| n.outbound_at.is_some()) {
            break;
        }
        if now.duration_since(ready) > args.max_wait {
            // Reported, not fatal: in a small network a node dialled first by many may find too
            // few peers left to dial itself.
            break;
        }
        std::thread::sleep(POLL);
    }
    let last = |f: fn(&Node) -> Option<Instant>| {
        nodes
            .iter()
            .filter_map(f)
            .max()
            .map_or(0.0, |t| t.saturating_duration_since(ready).as_secs_f64())
    };
    let join_outbound_s = last(|n| n.outbound_at);
    let join_peers_s = last(|n| n.peers_at);
    let reached_outbound = nodes.iter().filter(|n| n.outbound_at.is_some()).count();
    let reached_peers = nodes.iter().filter(|n| n.peers_at.is_some()).count();
    for (i, (n, smp)) in nodes.iter().zip(&joined_samples).enumerate() {
        if n.peers_at.is_none() {
            println!(
                "  node n{i:03} ({}) is short: {smp:?}; its log: {}",
                n.api,
                dir.join(format!("n{i:03}.log")).display()
            );
        }
    }
    ensure!(
        reached_peers == nodes.len(),
        "{} of {} nodes never had {} peers within {:?}",
        nodes.len() - reached_peers,
        nodes.len(),
        args.outbound,
        args.max_wait
    );
    let joined_at = Instant::now();
    let join_pex: Vec<u64> = joined_samples.iter().map(|s| s.pex_bytes).collect();
    let join_minutes = joined_at.duration_since(ready).as_secs_f64() / 60.0;
    let (conn_join, conn_join_min, conn_join_max) =
        spread(&joined_samples.iter().map(|s| s.peers).collect::<Vec<_>>());
    println!(
        "  every node had {} peers (either direction) {join_peers_s:.2} s after the last \
         started; {reached_outbound} of {} had {} outbound peers, the last after \
         {join_outbound_s:.2} s",
        args.outbound,
        nodes.len(),
        args.outbound
    );

    // The steady window.
    let cpu_before = cpu_seconds(&nodes);
    let steady_start = Instant::now();
    let mut end_samples = joined_samples.clone();
    while steady_start.elapsed() < args.steady {
        std::thread::sleep(POLL);
        let (samples, seed_conns) = poll_all(&nodes)?;
        seed_max = seed_max.max(seed_conns);
        end_samples = samples;
    }
    let steady_s = steady_start.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(&nodes);
    let (conn_end, conn_end_min, conn_end_max) =
        spread(&end_samples.iter().map(|s| s.peers).collect::<Vec<_>>());
    let (out_end, out_end_min, out_end_max) =
        spread(&end_samples.iter().map(|s| s.outbound).collect::<Vec<_>>());
    let n = nodes.len() as f64;
    let pex_join_per_min = join_pex.iter().sum::<u64>() as f64 / n / join_minutes.max(1e-9);
    let pex_steady_per_min = end_samples
        .iter()
        .zip(&join_pex)
        .map(|(e, j)| e.pex_bytes.saturating_sub(*j))
        .sum::<u64>() as f64
        / n
        / (steady_s / 60.0);
    let peaks: Vec<f64> = nodes
        .iter()
        .map(|n| status_field_mib(&n.process.pid().to_string(), "VmHWM").unwrap_or(0.0))
        .collect();
    let peak_mean = peaks.iter().sum::<f64>() / n;
    let peak_max = peaks.iter().copied().fold(0.0, f64::max);
    let cpu_cores = (cpu_after - cpu_before) / steady_s;
    let seed_now = poll_all(&nodes)?.1;

    println!(
        "  connections per node: {conn_join:.1} (least {conn_join_min}, most {conn_join_max}) \
         when joined; {conn_end:.1} ({conn_end_min}–{conn_end_max}) after {steady_s:.0} s, \
         outbound {out_end:.1} ({out_end_min}–{out_end_max})"
    );
    println!(
        "  seed: at most {seed_max} connections at once (sampled every {POLL:?}), {seed_now} at the end"
    );
    println!(
        "  PEX bytes per node per minute: {pex_join_per_min:.0} during the join, \
         {pex_steady_per_min:.0} after it"
    );
    println!(
        "  node peak RSS: mean {peak_mean:.1} MiB, most {peak_max:.1} MiB; \
         all {} nodes used {cpu_cores:.3} cores at rest",
        nodes.len()
    );
    let figures = json!({
        "bench": "pex",
        "nodes": nodes.len(),
        "outbound_target": args.outbound,
        "start_s": round(start_s, 2),
        "join_outbound_s": round(join_outbound_s, 2),
        "join_peers_s": round(join_peers_s, 2),
        "reached_outbound_target": reached_outbound,
        "connections_joined": {"mean": round(conn_join, 1), "min": conn_join_min, "max": conn_join_max},
        "connections_end": {"mean": round(conn_end, 1), "min": conn_end_min, "max": conn_end_max},
        "outbound_end": {"mean": round(out_end, 1), "min": out_end_min, "max": out_end_max},
        "seed_max_connections": seed_max,
        "seed_connections_end": seed_now,
        "pex_bytes_per_node_per_min_join": round(pex_join_per_min, 0),
        "pex_bytes_per_node_per_min_steady": round(pex_steady_per_min, 0),
        "steady_s": round(steady_s, 1),
        "peak_rss_mib": {"mean": round(peak_mean, 1), "max": round(peak_max, 1)},
        "cpu_cores_at_rest": round(cpu_cores, 3),
    });
    println!("{figures}");

    for mut node in nodes {
        let _ = Command::new("kill")
            .args(["-TERM", &node.process.pid().to_string()])
            .status();
        node.process.wait_exit(STOP_TIMEOUT)?;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &seed.pid().to_string()])
        .status();
    seed.wait_exit(STOP_TIMEOUT)?;
    if tempdir.is_none() {
        println!("  kept {}", dir.display());
    }
    Ok(())
}
