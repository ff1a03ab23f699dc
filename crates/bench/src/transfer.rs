//! `cairn-bench transfer`: node-to-node download throughput, against one raw libp2p stream.
//!
//! ```text
//! cargo build --release -p cairn -p cairn-bench
//! target/release/cairn-bench transfer --size 1GiB [--muxer yamux|mplex|both] [--keep]
//! ```
//!
//! ### The run
//!
//! Two `cairn start` processes (the release binary next to this one, or `--cairn PATH`) run on
//! loopback, each with its own data directory, API port and libp2p listen address on
//! `127.0.0.1`, both offering only the muxer under test (`--muxers`). The bench uploads `--size`
//! bytes of pseudo-random data (the same generator as `ingest`: distinct 64 KiB blocks, streamed,
//! never held in memory) to node A over REST, connects B to A (`/connect/{peer id}?addrs=…`),
//! then times B's `GET /data/{cid}/network/stream` from sending the request to the last byte of
//! the body. B has none of the blocks, so every block crosses the libp2p connection once (or more:
//! B's duplicate count is read from `/debug/info` afterwards). The body's length must equal
//! `--size` or the run fails; the content is not hashed here (B verifies every block against
//! its CID before serving it).
//!
//! ### The ceiling
//!
//! A download cannot be faster than the connection it crosses. The ceiling is raw bytes over
//! **one** libp2p stream between two swarms built with `cairn_net::transport::build`, i.e. the
//! node's exact transport (TCP with `nodelay`, Noise, and the same Yamux or Mplex
//! configuration), written in [`CEILING_WRITE`] writes and timed at the receiver from the first
//! byte to end of stream. By default both swarms run in this process on one tokio runtime with
//! [`CEILING_WORKERS`] worker threads, as many as the machine's cores the two nodes share;
//! `--ceiling-mode processes` runs each swarm in its own child process instead (the hidden
//! `cairn-bench ceiling-peer` subcommand, with a default runtime as a node has). On the 2-core
//! machine of `BENCHMARKS.md` the two modes measured the same within noise, in-process slightly
//! higher, so in-process does not under-measure and is the default. The ceiling is measured
//! before the nodes start and again after they stop; the faster of the two is the ceiling, so a
//! machine that slowed down during the run cannot flatter the ratio
//! `download MB/s / ceiling MB/s`. `--ceiling-only` measures just the ceiling (twice per muxer).
//!
//! ### The verifying ceiling
//!
//! A node that verifies what it downloads cannot skip one piece of work the raw stream does not
//! do: hashing every received block with SHA-256. So each run also measures the same stream with
//! a receiver that reads whole 64 KiB blocks and hashes each one (nothing else: no protobuf, no
//! Merkle proof, no store, no HTTP), before and after the nodes like the raw ceiling. Its ratio
//! to the raw ceiling is the most any verifying download can reach on this machine; on a machine
//! where the two ends share too few cores to hash for free, it is below 1, and the download's
//! ratio to the verifying ceiling shows how much of the rest the node spends.
//!
//! ### What is printed
//!
//! Per muxer: the ceiling, the upload (informative only), the download, the ratio, B's
//! block-exchange counters (duplicates), the CPU time each process used during the download
//! and the CPU other processes used meanwhile (from `/proc/stat`; a run on a busy machine is
//! flagged, as is a ceiling measured on one; softirq time, where the kernel processes loopback
//! TCP without charging any process, is shown apart), and the peak RSS (`VmHWM`) of each node: A's while uploading and while serving separately
//! (its high-water mark is reset in between through `/proc/<pid>/clear_refs`, when the kernel
//! allows), B's over its whole life. Then one JSON line with every figure.
//!
//! Every wait is bounded in time (node start, each HTTP call, each read of the download, the
//! whole transfer) and every loop in count. Node processes are killed if the run fails (a guard
//! with `Drop`); the temporary directory is deleted unless `--keep`.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use bytesize::ByteSize;
use cairn_net::Muxers;
use clap::{Args, ValueEnum};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm,
    identity::Keypair,
    multiaddr::Protocol,
    swarm::{self, SwarmEvent},
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    BLOCK_SIZE, Body, CHUNK_STRIDE, MB, MachineCpu, body_stream, cpu_seconds_of, machine_cpu,
    make_pool, max_dataset_size, mb_per_s, status_field_mib,
};

/// Size of each write of the ceiling's sender: one block, as the node's blocks.
const CEILING_WRITE: usize = BLOCK_SIZE;

/// What the ceiling's receiver does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// Counts them (the raw ceiling).
    Raw,
    /// Reads whole [`BLOCK_SIZE`] blocks and hashes each with SHA-256: the least a verifying
    /// download must do with every block.
    Hashing,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Raw => "raw",
            Receiver::Hashing => "hashing",
        }
    }
}

/// The ceiling sends as many bytes as the download, but at least this much, so that a small
/// `--size` still gives a stable figure.
const MIN_CEILING_BYTES: u64 = 256 * 1024 * 1024;

/// Worker threads of the runtime both in-process ceiling swarms run on: two, one per side of the
/// stream (the sender's encryption and the receiver's decryption each keep about one core busy;
/// more threads would not speed up one stream). The target machine has 2 cores, which the two
/// nodes share in the node run.
const CEILING_WORKERS: usize = 2;

/// Protocol name of the ceiling's stream (spoken only between the bench's own swarms).
const CEILING_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn-bench/ceiling/1.0.0");

/// Loopback listen address with a port chosen by the system, for the nodes and the ceiling.
const LOOPBACK_LISTEN: &str = "/ip4/127.0.0.1/tcp/0";

/// Prefix of the loopback addresses accepted from A's `/debug/info` to connect B to it.
const LOOPBACK_ADDR_PREFIX: &str = "/ip4/127.0.0.1/tcp/";

/// Idle timeout of the ceiling swarms' connections: the stream keeps the connection open; this
/// only covers the moment between connecting and opening it.
const CEILING_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed to listen, connect and open the ceiling's stream.
const CEILING_SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for a node to print its "REST API listening" line after it is spawned.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Most stdout lines read from a child while waiting for a given line (a few are expected).
const MAX_STARTUP_LINES: usize = 1000;

/// Lines of a child's stdout queued for the bench (nodes and ceiling peers print a few).
const STDOUT_LINES_BUFFERED: usize = 64;

/// Most swarm events awaited while listening or connecting (a handful are expected).
const MAX_SETUP_EVENTS: usize = 100;

/// Prefix of a ceiling peer's line with its listen address.
const PEER_LISTENING: &str = "ceiling-peer: listening ";

/// Prefix of a ceiling peer's last line: bytes, seconds, CPU seconds.
const PEER_DONE: &str = "ceiling-peer: done ";

/// The line a node prints on stdout when its REST API is up, followed by the API's base URL.
pub(crate) const READY_PREFIX: &str = "cairn: REST API listening on ";

/// Time allowed for a small REST call (`/debug/info`, `/connect`).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Slowest transfer rate the deadlines allow for (MB/s): an upload, a download or a ceiling
/// must end within `size / MIN_RATE + TRANSFER_SLACK` or the run fails.
const MIN_RATE_MB_S: f64 = 5.0;

/// See [`MIN_RATE_MB_S`].
const TRANSFER_SLACK: Duration = Duration::from_secs(60);

/// Longest wait for the next piece of the download's body (or of the ceiling's stream) before
/// the transfer is declared stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a node gets to exit after SIGTERM (a ceiling peer after its last line) before it is
/// killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Polling interval while waiting for a child to exit (bounded by [`STOP_TIMEOUT`]).
const STOP_POLL: Duration = Duration::from_millis(20);

/// Lines of a node's log shown when the run fails.
const LOG_TAIL_LINES: usize = 20;

/// Prefix of the temporary directory holding both nodes' data directories and logs.
const TEMP_PREFIX: &str = "cairn-bench-transfer-";

/// The issue's targets, printed next to the figures (not asserted: a benchmark is not a test).
const TARGET_RATIO_YAMUX: f64 = 0.8;

/// See [`TARGET_RATIO_YAMUX`]: each node's peak RSS for a 1 GiB transfer.
const TARGET_PEAK_RSS_MIB: f64 = 200.0;

/// Above this many cores used by other processes during the download, the run is flagged.
const OTHER_LOAD_WARN: f64 = 0.1;

/// Which muxers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MuxerChoice {
    /// Yamux only.
    Yamux,
    /// Mplex only.
    Mplex,
    /// Yamux, then Mplex.
    Both,
}

/// Where the ceiling's two swarms run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CeilingMode {
    /// Both in the bench process, on one runtime with 2 worker threads (the default).
    InProcess,
    /// Each in its own child process (`cairn-bench ceiling-peer`), as the two nodes are.
    Processes,
}

#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    /// Bytes to transfer, e.g. 256MiB, 1GiB (GB = 10^9, GiB = 2^30).
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Stream multiplexer of both nodes and of the ceiling.
    #[arg(long, value_enum, default_value = "yamux")]
    muxer: MuxerChoice,
    #[command(flatten)]
    procs: crate::procs::ProcessArgs,
    /// Where the ceiling's two swarms run.
    #[arg(long, value_enum, default_value = "in-process")]
    ceiling_mode: CeilingMode,
    /// Measure only the ceiling (no nodes, no `cairn` binary needed).
    #[arg(long)]
    ceiling_only: bool,
}

/// One muxer under test: its name, the transport setting and the `--muxers` value.
#[derive(Debug, Clone, Copy)]
struct Muxer {
    name: &'static str,
    muxers: Muxers,
}

impl MuxerChoice {
    fn muxers(self) -> Vec<Muxer> {
        let yamux = Muxer {
            name: "yamux",
            muxers: Muxers::Yamux,
        };
        let mplex = Muxer {
            name: "mplex",
            muxers: Muxers::Mplex,
        };
        match self {
            MuxerChoice::Yamux => vec![yamux],
            MuxerChoice::Mplex => vec![mplex],
            MuxerChoice::Both => vec![yamux, mplex],
        }
    }
}

/// Deadline of a transfer of `bytes` (see [`MIN_RATE_MB_S`]).
fn transfer_deadline(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MB / MIN_RATE_MB_S) + TRANSFER_SLACK
}

/// `cairn-bench transfer` (see the module docs).
pub(crate) fn transfer(args: &TransferArgs) -> anyhow::Result<()> {
    let size = args.size.as_u64();
    ensure!(size > 0, "--size must be at least 1 byte");
    let max = max_dataset_size();
    ensure!(
        size <= max,
        "--size {} is larger than this benchmark can generate distinct blocks for ({max} bytes)",
        args.size
    );
    let ceiling_bytes = size.max(MIN_CEILING_BYTES);
    println!("cairn-bench transfer (MB = 10^6 bytes, MiB = 2^20 bytes)");
    println!(
        "size: {size} bytes ({}), {} blocks of {BLOCK_SIZE} bytes; ceiling: {ceiling_bytes} bytes \
         over one stream in {CEILING_WRITE}-byte writes, {}",
        args.size.display().iec(),
        size.div_ceil(BLOCK_SIZE as u64),
        match args.ceiling_mode {
            CeilingMode::InProcess =>
                format!("both swarms in this process ({CEILING_WORKERS} worker threads)"),
            CeilingMode::Processes => "each swarm in its own process".to_owned(),
        }
    );
    let pool = make_pool();
    if args.ceiling_only {
        return ceiling_only(args.ceiling_mode, args.muxer, ceiling_bytes, &pool);
    }
    let cairn = args.procs.cairn()?;
    let (root, tempdir) = args.procs.workdir(TEMP_PREFIX)?;
    println!("cairn: {}", cairn.display());
    println!("directory: {}", root.display());

    let mut runs = Vec::new();
    for muxer in args.muxer.muxers() {
        println!();
        println!("== {} ==", muxer.name);
        let before = measure_ceiling(
            args.ceiling_mode,
            muxer,
            ceiling_bytes,
            &pool,
            Receiver::Raw,
        )
        .with_context(|| format!("ceiling ({}) before the node run", muxer.name))?;
        println!("ceiling before: {}", before.describe());
        let hashing_before = measure_ceiling(
            args.ceiling_mode,
            muxer,
            ceiling_bytes,
            &pool,
            Receiver::Hashing,
        )
        .with_context(|| format!("verifying ceiling ({}) before the node run", muxer.name))?;
        println!("verifying ceiling before: {}", hashing_before.describe());
        let dir = root.join(muxer.name);
        let nodes = run_nodes(&cairn, &dir, muxer, &pool, size)
            .with_context(|| format!("node run ({})", muxer.name))?;
        if !args.procs.keep() {
            // Both nodes' stores hold the dataset: free the space before the next muxer.
            std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
        }
        let after = measure_ceiling(
            args.ceiling_mode,
            muxer,
            ceiling_bytes,
            &pool,
            Receiver::Raw,
        )
        .with_context(|| format!("ceiling ({}) after the node run", muxer.name))?;
        println!("ceiling after: {}", after.describe());
        let hashing_after = measure_ceiling(
            args.ceiling_mode,
            muxer,
            ceiling_bytes,
            &pool,
            Receiver::Hashing,
        )
        .with_context(|| format!("verifying ceiling ({}) after the node run", muxer.name))?;
        println!("verifying ceiling after: {}", hashing_after.describe());
        let run = Run {
            muxer: muxer.name,
            before,
            after,
            hashing: [hashing_before, hashing_after],
            nodes,
        };
        run.print();
        runs.push(run);
    }

    println!();
    println!(
        "| muxer | ceiling MB/s | verifying ceiling MB/s (ratio) | download MB/s | ratio | download / verifying ceiling | duplicates | peak RSS A MiB (upload / serve) | peak RSS B MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let n = &run.nodes;
        println!(
            "| {} | {:.1} | {:.1} ({:.3}) | {:.1} | {:.3} | {:.3} | {} | {:.1} ({:.1} / {}) | {:.1} |",
            run.muxer,
            run.ceiling(),
            run.hashing_ceiling(),
            run.hashing_ceiling() / run.ceiling(),
            n.download_mb_s,
            run.ratio(),
            n.download_mb_s / run.hashing_ceiling(),
            n.duplicates
                .map_or_else(|| "n/a".to_owned(), |d| d.to_string()),
            n.a_peak_mib(),
            n.a_upload_peak_mib,
            n.a_serve_peak_mib()
                .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.1}")),
            n.b_peak_mib
        );
    }

    match tempdir {
        Some(t) => t
            .close()
            .with_context(|| format!("deleting {}", root.display()))?,
        None => println!("kept {}", root.display()),
    }
    let json = json!({
        "bench": "transfer",
        "size_bytes": size,
        "ceiling_mode": args.ceiling_mode.name(),
        "ceiling_bytes": ceiling_bytes,
        "ceiling_write_bytes": CEILING_WRITE,
        "ceiling_workers": CEILING_WORKERS,
        "mb": 1_000_000,
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
    });
    // Last, so that it is the final line of the output.
    println!("{json}");
    Ok(())
}

/// `--ceiling-only`: the ceiling twice per muxer, then the JSON line.
fn ceiling_only(
    mode: CeilingMode,
    choice: MuxerChoice,
    bytes: u64,
    pool: &Bytes,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for muxer in choice.muxers() {
        let mut speeds = Vec::new();
        for receiver in [
            Receiver::Raw,
            Receiver::Raw,
            Receiver::Hashing,
            Receiver::Hashing,
        ] {
            let c = measure_ceiling(mode, muxer, bytes, pool, receiver)
                .with_context(|| format!("ceiling ({}, {})", muxer.name, receiver.name()))?;
            println!(
                "ceiling {} ({}): {}",
                muxer.name,
                receiver.name(),
                c.describe()
            );
            speeds.push(json!({
                "receiver": receiver.name(),
                "mb_s": round(c.mb_s, 1),
                "cores_busy": round(c.cores, 2),
                "other_cores_busy": round(c.other_cores, 2),
                "softirq_cores": round(c.softirq_cores, 2),
            }));
        }
        runs.push(json!({ "muxer": muxer.name, "ceilings": speeds }));
    }
    let json = json!({
        "bench": "transfer-ceiling",
        "ceiling_mode": mode.name(),
        "ceiling_bytes": bytes,
        "ceiling_write_bytes": CEILING_WRITE,
        "ceiling_workers": CEILING_WORKERS,
        "mb": 1_000_000,
        "runs": runs,
    });
    println!("{json}");
    Ok(())
}

/// Rounds for the JSON line.
pub(crate) fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Figures of one muxer.
#[derive(Debug)]
struct Run {
    muxer: &'static str,
    before: Ceiling,
    after: Ceiling,
    /// The verifying ceiling (see the module docs) before and after the nodes.
    hashing: [Ceiling; 2],
    nodes: NodeRun,
}

impl Run {
    fn ceiling(&self) -> f64 {
        self.before.mb_s.max(self.after.mb_s)
    }

    fn ratio(&self) -> f64 {
        self.nodes.download_mb_s / self.ceiling()
    }

    /// The faster of the two verifying-ceiling measurements.
    fn hashing_ceiling(&self) -> f64 {
        self.hashing[0].mb_s.max(self.hashing[1].mb_s)
    }

    fn print(&self) {
        let n = &self.nodes;
        let target = if self.muxer == "yamux" {
            format!(" (target >= {TARGET_RATIO_YAMUX} with yamux)")
        } else {
            String::new()
        };
        println!(
            "ceiling = the faster: {:.1} MB/s; download {:.1} MB/s; ratio download / ceiling: {:.3}{target}",
            self.ceiling(),
            n.download_mb_s,
            self.ratio()
        );
        println!(
            "verifying ceiling = the faster: {:.1} MB/s = {:.3} of the ceiling (the most a download that hashes every block can reach here); download / verifying ceiling: {:.3}",
            self.hashing_ceiling(),
            self.hashing_ceiling() / self.ceiling(),
            n.download_mb_s / self.hashing_ceiling()
        );
        if let Some(path) = n.node_path_mb_s {
            println!(
                "path through the nodes: {path:.1} MB/s = {:.3} of the ceiling; download / that path: {:.3} (informative; the ratio to the ceiling is the one that counts)",
                path / self.ceiling(),
                n.download_mb_s / path
            );
        }
        println!(
            "peak RSS: A {:.1} MiB (upload {:.1}, serving {}), B {:.1} MiB (target < {TARGET_PEAK_RSS_MIB} MiB each for 1 GiB)",
            n.a_peak_mib(),
            n.a_upload_peak_mib,
            n.a_serve_peak_mib()
                .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.1}")),
            n.b_peak_mib
        );
    }

    fn json(&self) -> Value {
        let n = &self.nodes;
        json!({
            "muxer": self.muxer,
            "ceiling_mb_s": round(self.ceiling(), 1),
            "ceiling_before_mb_s": round(self.before.mb_s, 1),
            "ceiling_after_mb_s": round(self.after.mb_s, 1),
            "ceiling_cores_busy": [round(self.before.cores, 2), round(self.after.cores, 2)],
            "ceiling_other_cores_busy": [
                round(self.before.other_cores, 2),
                round(self.after.other_cores, 2)
            ],
            "ceiling_softirq_cores": [
                round(self.before.softirq_cores, 2),
                round(self.after.softirq_cores, 2)
            ],
            "hashing_ceiling_mb_s": round(self.hashing_ceiling(), 1),
            "hashing_ceiling_before_after_mb_s": [
                round(self.hashing[0].mb_s, 1),
                round(self.hashing[1].mb_s, 1)
            ],
            "hashing_ceiling_cores_busy": [
                round(self.hashing[0].cores, 2),
                round(self.hashing[1].cores, 2)
            ],
            "hashing_ceiling_other_cores_busy": [
                round(self.hashing[0].other_cores, 2),
                round(self.hashing[1].other_cores, 2)
            ],
            "hashing_ceiling_ratio": round(self.hashing_ceiling() / self.ceiling(), 3),
            "download_over_hashing_ceiling": round(n.download_mb_s / self.hashing_ceiling(), 3),
            "download_mb_s": round(n.download_mb_s, 1),
            "ratio": round(self.ratio(), 3),
            "download_s": round(n.download_s, 3),
            "first_byte_ms": round(n.first_byte_s * 1e3, 1),
            "upload_mb_s": round(n.upload_mb_s, 1),
            "node_path_mb_s": n.node_path_mb_s.map(|m| round(m, 1)),
            "duplicates": n.duplicates,
            "exchange_b": n.exchange_b.clone(),
            "exchange_a": n.exchange_a.clone(),
            "cpu_a_s": round(n.cpu_a, 2),
            "cpu_b_s": round(n.cpu_b, 2),
            "cpu_bench_s": round(n.cpu_bench, 2),
            "other_cores_busy": round(n.other_cores, 2),
            "softirq_cores": round(n.softirq_cores, 2),
            "peak_rss_a_mib": round(n.a_peak_mib(), 1),
            "peak_rss_a_upload_mib": round(n.a_upload_peak_mib, 1),
            "peak_rss_a_serve_mib": n.a_serve_peak_mib().map(|m| round(m, 1)),
            "peak_rss_b_mib": round(n.b_peak_mib, 1),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling: one raw libp2p stream between two swarms.

/// One ceiling measurement.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    mb_s: f64,
    seconds: f64,
    /// CPU the ceiling's swarms used, in cores (over the whole measurement, setup included).
    cores: f64,
    /// CPU other processes used meanwhile, in cores.
    other_cores: f64,
    /// Softirq CPU meanwhile (loopback TCP processing, charged to no process), in cores.
    softirq_cores: f64,
}

impl Ceiling {
    fn describe(&self) -> String {
        let warning = if self.other_cores > OTHER_LOAD_WARN {
            " WARNING: the machine was not quiet"
        } else {
            ""
        };
        format!(
            "{:.1} MB/s ({:.3} s; swarms {:.2} cores busy, softirq {:.2}, other processes {:.2}){warning}",
            self.mb_s, self.seconds, self.cores, self.softirq_cores, self.other_cores
        )
    }
}

impl CeilingMode {
    fn name(self) -> &'static str {
        match self {
            CeilingMode::InProcess => "in-process",
            CeilingMode::Processes => "processes",
        }
    }
}

/// Measures the ceiling in `mode`.
fn measure_ceiling(
    mode: CeilingMode,
    muxer: Muxer,
    bytes: u64,
    pool: &Bytes,
    receiver: Receiver,
) -> anyhow::Result<Ceiling> {
    match mode {
        CeilingMode::InProcess => ceiling_in_process(muxer, bytes, pool, receiver),
        CeilingMode::Processes => ceiling_processes(muxer, bytes, receiver),
    }
}

/// Both swarms in this process, on a fresh runtime (dropped afterwards, with both swarms).
fn ceiling_in_process(
    muxer: Muxer,
    bytes: u64,
    pool: &Bytes,
    receiver: Receiver,
) -> anyhow::Result<Ceiling> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CEILING_WORKERS)
        .enable_all()
        .build()
        .context("starting the ceiling's tokio runtime")?;
    let cpu_before = process_cpu_seconds("self")?;
    let machine_before = machine_cpu()?;
    let wall = Instant::now();
    let result = runtime.block_on(async {
        tokio::time::timeout(
            CEILING_SETUP_TIMEOUT + transfer_deadline(bytes),
            ceiling_transfer(muxer, bytes, pool.clone(), receiver),
        )
        .await
        .unwrap_or_else(|_| bail!("the ceiling did not finish in time"))
    });
    let wall = wall.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds("self")? - cpu_before;
    let (machine, softirq) = machine_cpu_since(machine_before)?;
    // Dropping the runtime drops the swarms' tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let took = result?;
    Ok(Ceiling {
        mb_s: mb_per_s(bytes, took),
        seconds: took.as_secs_f64(),
        cores: cpu / wall,
        other_cores: (machine - cpu).max(0.0) / wall,
        softirq_cores: softirq / wall,
    })
}

/// Each swarm in a child process (`cairn-bench ceiling-peer`), with a default multi-threaded
/// runtime as a node has.
fn ceiling_processes(muxer: Muxer, bytes: u64, receiver: Receiver) -> anyhow::Result<Ceiling> {
    let exe = std::env::current_exe().context("locating the cairn-bench executable")?;
    let peer = |send_to: Option<&str>| {
        let mut cmd = Command::new(&exe);
        cmd.args(["ceiling-peer", "--muxer", muxer.name, "--bytes"])
            .arg(bytes.to_string());
        match send_to {
            Some(addr) => {
                cmd.args(["--send-to", addr]);
            }
            None if receiver == Receiver::Hashing => {
                cmd.arg("--hash-blocks");
            }
            None => {}
        }
        cmd.stderr(Stdio::inherit());
        cmd
    };
    let machine_before = machine_cpu()?;
    let self_before = process_cpu_seconds("self")?;
    let wall = Instant::now();
    let mut receiver = Spawned::spawn("ceiling receiver", &mut peer(None))?;
    let addr = receiver.wait_line(PEER_LISTENING, CEILING_SETUP_TIMEOUT)?;
    let mut sender = Spawned::spawn("ceiling sender", &mut peer(Some(addr.trim())))?;
    let received =
        receiver.wait_line(PEER_DONE, CEILING_SETUP_TIMEOUT + transfer_deadline(bytes))?;
    let sent = sender.wait_line(PEER_DONE, STALL_TIMEOUT)?;
    for p in [&mut receiver, &mut sender] {
        let status = p.wait_exit(STOP_TIMEOUT)?;
        ensure!(status.success(), "the {} exited with {status}", p.what);
    }
    let wall = wall.elapsed().as_secs_f64();
    let (machine, softirq) = machine_cpu_since(machine_before)?;
    let own = process_cpu_seconds("self")? - self_before;
    let (got, seconds, cpu_r) = parse_done(&received)?;
    let (_, _, cpu_s) = parse_done(&sent)?;
    ensure!(
        got == bytes,
        "the ceiling's receiver got {got} of {bytes} bytes"
    );
    Ok(Ceiling {
        mb_s: bytes as f64 / MB / seconds.max(f64::MIN_POSITIVE),
        seconds,
        cores: (cpu_r + cpu_s) / wall,
        other_cores: (machine - cpu_r - cpu_s - own).max(0.0) / wall,
        softirq_cores: softirq / wall,
    })
}

/// Parses a peer's `done` line: bytes, seconds (first byte to end), the peer's CPU seconds.
fn parse_done(line: &str) -> anyhow::Result<(u64, f64, f64)> {
    let mut it = line.split_whitespace();
    let mut next = || {
        it.next()
            .with_context(|| format!("short peer line: {line:?}"))
    };
    let bytes = next()?.parse().context("parsing a peer's byte count")?;
    let seconds = next()?.parse().context("parsing a peer's time")?;
    let cpu = next()?.parse().context("parsing a peer's CPU time")?;
    Ok((bytes, seconds, cpu))
}

/// A swarm with the node's transport and a raw-stream behaviour.
fn ceiling_swarm(muxer: Muxer) -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    let key = Keypair::generate_secp256k1();
    let peer = key.public().to_peer_id();
    let transport =
        cairn_net::transport::build(&key, muxer.muxers).context("building the transport")?;
    Ok(Swarm::new(
        transport,
        libp2p_stream::Behaviour::new(),
        peer,
        swarm::Config::with_tokio_executor().with_idle_connection_timeout(CEILING_IDLE_TIMEOUT),
    ))
}

/// Drives a swarm until its task is dropped (the stream's data moves on the connection's task,
/// which the swarm spawned; the swarm itself only has to be polled).
async fn drive(mut swarm: Swarm<libp2p_stream::Behaviour>) {
    loop {
        let _ = swarm.select_next_some().await;
    }
}

/// Listens on loopback; returns the address with `/p2p/<peer id>`.
async fn listen(swarm: &mut Swarm<libp2p_stream::Behaviour>) -> anyhow::Result<Multiaddr> {
    swarm.listen_on(LOOPBACK_LISTEN.parse()?)?;
    let id = *swarm.local_peer_id();
    let wait = async {
        // Listening yields a handful of events before the address; a bounded count of them.
        for _ in 0..MAX_SETUP_EVENTS {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return Ok(address.with(Protocol::P2p(id)));
            }
        }
        bail!("no listen address after {MAX_SETUP_EVENTS} swarm events")
    };
    tokio::time::timeout(CEILING_SETUP_TIMEOUT, wait)
        .await
        .context("the ceiling's receiver did not listen in time")?
}

/// Dials `addr` (ending in `/p2p/<peer id>`) and waits for the connection.
async fn connect(
    swarm: &mut Swarm<libp2p_stream::Behaviour>,
    addr: Multiaddr,
) -> anyhow::Result<libp2p::PeerId> {
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        bail!("{addr} does not end in /p2p/<peer id>");
    };
    swarm.dial(addr)?;
    let wait = async {
        for _ in 0..MAX_SETUP_EVENTS {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(peer);
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("the ceiling's sender could not connect: {error}")
                }
                _ => {}
            }
        }
        bail!("no connection after {MAX_SETUP_EVENTS} swarm events")
    };
    tokio::time::timeout(CEILING_SETUP_TIMEOUT, wait)
        .await
        .context("the ceiling's sender did not connect in time")?
}

/// Reads `bytes` and the end of the stream; returns the time from the first byte to the end.
/// A [`Receiver::Hashing`] receiver fills whole [`BLOCK_SIZE`] blocks and hashes each one (the
/// last may be shorter).
async fn receive(
    stream: &mut libp2p::Stream,
    bytes: u64,
    receiver: Receiver,
) -> anyhow::Result<Duration> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut filled = 0;
    let mut got = 0u64;
    let mut first = None;
    // Every read returns at least one byte or ends the loop; more than `bytes` is an error.
    loop {
        let n = tokio::time::timeout(STALL_TIMEOUT, stream.read(&mut buf[filled..]))
            .await
            .with_context(|| format!("the ceiling stalled after {got} bytes"))?
            .context("reading the ceiling's stream")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        got += n as u64;
        ensure!(
            got <= bytes,
            "the ceiling's stream carried more than {bytes} bytes"
        );
        match receiver {
            Receiver::Raw => {}
            Receiver::Hashing => {
                filled += n;
                if filled == BLOCK_SIZE {
                    std::hint::black_box(Sha256::digest(&buf[..]));
                    filled = 0;
                }
            }
        }
    }
    if filled > 0 {
        std::hint::black_box(Sha256::digest(&buf[..filled]));
    }
    ensure!(
        got == bytes,
        "the ceiling's stream ended after {got} of {bytes} bytes"
    );
    Ok(first.context("the ceiling's stream was empty")?.elapsed())
}

/// Writes `bytes` in [`CEILING_WRITE`] writes of pool windows, then closes the writing side.
async fn send(stream: &mut libp2p::Stream, bytes: u64, pool: &Bytes) -> anyhow::Result<()> {
    let writes = bytes.div_ceil(CEILING_WRITE as u64);
    let windows = (pool.len() - CEILING_WRITE) / CHUNK_STRIDE;
    for i in 0..writes {
        let len = usize::try_from(bytes - i * CEILING_WRITE as u64)
            .map_or(CEILING_WRITE, |left| left.min(CEILING_WRITE));
        let off = usize::try_from(i).unwrap_or(0) % windows * CHUNK_STRIDE;
        tokio::time::timeout(STALL_TIMEOUT, stream.write_all(&pool[off..off + len]))
            .await
            .context("the ceiling's sender stalled")?
            .context("writing the ceiling's stream")?;
    }
    tokio::time::timeout(STALL_TIMEOUT, stream.close())
        .await
        .context("closing the ceiling's stream stalled")?
        .context("closing the ceiling's stream")
}

/// Opens the ceiling's stream to `peer`.
async fn open(
    control: &mut libp2p_stream::Control,
    peer: libp2p::PeerId,
) -> anyhow::Result<libp2p::Stream> {
    tokio::time::timeout(
        CEILING_SETUP_TIMEOUT,
        control.open_stream(peer, CEILING_PROTOCOL),
    )
    .await
    .context("opening the ceiling's stream timed out")?
    .context("opening the ceiling's stream")
}

/// Accepts the ceiling's stream.
async fn accept(incoming: &mut libp2p_stream::IncomingStreams) -> anyhow::Result<libp2p::Stream> {
    let (_, stream) = tokio::time::timeout(CEILING_SETUP_TIMEOUT, incoming.next())
        .await
        .context("no stream arrived in time")?
        .context("the receiver stopped accepting")?;
    Ok(stream)
}

/// In-process ceiling: sends `bytes` from one swarm to the other over one stream; returns the
/// receiver's time from the first byte to the end of the stream.
async fn ceiling_transfer(
    muxer: Muxer,
    bytes: u64,
    pool: Bytes,
    how: Receiver,
) -> anyhow::Result<Duration> {
    let mut receiver = ceiling_swarm(muxer)?;
    let mut sender = ceiling_swarm(muxer)?;
    let mut incoming = receiver
        .behaviour()
        .new_control()
        .accept(CEILING_PROTOCOL)
        .context("registering the ceiling protocol")?;
    let addr = listen(&mut receiver).await?;
    tokio::spawn(drive(receiver));
    let peer = connect(&mut sender, addr).await?;
    let mut control = sender.behaviour().new_control();
    tokio::spawn(drive(sender));
    let read = tokio::spawn(async move {
        let mut stream = accept(&mut incoming).await?;
        receive(&mut stream, bytes, how).await
    });
    let mut stream = open(&mut control, peer).await?;
    send(&mut stream, bytes, &pool).await?;
    read.await.context("the ceiling's reader panicked")?
}

/// `cairn-bench ceiling-peer`: one side of the ceiling in its own process (internal; started by
/// `transfer --ceiling-mode processes`).
#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// Stream multiplexer.
    #[arg(long, value_enum)]
    muxer: MuxerChoice,
    /// Bytes to send or to expect.
    #[arg(long)]
    bytes: u64,
    /// Send to this address (ending in /p2p/<peer id>); without it, listen and receive.
    #[arg(long)]
    send_to: Option<Multiaddr>,
    /// As the receiver, hash every 64 KiB block with SHA-256 (the verifying ceiling).
    #[arg(long)]
    hash_blocks: bool,
}

/// Runs one side of the ceiling. The receiver prints `PEER_LISTENING <addr>` once listening;
/// both print `PEER_DONE <bytes> <seconds> <cpu seconds>` at the end.
pub(crate) fn ceiling_peer(args: &PeerArgs) -> anyhow::Result<()> {
    let [muxer] = args.muxer.muxers()[..] else {
        bail!("ceiling-peer takes one muxer");
    };
    // As a node: the default multi-threaded runtime (one worker per core).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let deadline = CEILING_SETUP_TIMEOUT + transfer_deadline(args.bytes);
    let (got, took) = runtime.block_on(async {
        tokio::time::timeout(deadline, peer_side(muxer, args))
            .await
            .unwrap_or_else(|_| bail!("the ceiling did not finish in time"))
    })?;
    println!(
        "{PEER_DONE}{got} {:.6} {:.2}",
        took.as_secs_f64(),
        process_cpu_seconds("self")?
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn peer_side(muxer: Muxer, args: &PeerArgs) -> anyhow::Result<(u64, Duration)> {
    let mut swarm = ceiling_swarm(muxer)?;
    let mut control = swarm.behaviour().new_control();
    match &args.send_to {
        None => {
            let mut incoming = control
                .accept(CEILING_PROTOCOL)
                .context("registering the ceiling protocol")?;
            let addr = listen(&mut swarm).await?;
            println!("{PEER_LISTENING}{addr}");
            let _driver = AbortOnDrop(tokio::spawn(drive(swarm)));
            let mut stream = accept(&mut incoming).await?;
            let receiver = if args.hash_blocks {
                Receiver::Hashing
            } else {
                Receiver::Raw
            };
            let took = receive(&mut stream, args.bytes, receiver).await?;
            // Closing our side tells the sender everything arrived (it may exit then).
            tokio::time::timeout(STALL_TIMEOUT, stream.close())
                .await
                .context("closing the ceiling's stream stalled")?
                .context("closing the ceiling's stream")?;
            Ok((args.bytes, took))
        }
        Some(addr) => {
            let peer = connect(&mut swarm, addr.clone()).await?;
            let _driver = AbortOnDrop(tokio::spawn(drive(swarm)));
            let pool = make_pool();
            let mut stream = open(&mut control, peer).await?;
            send(&mut stream, args.bytes, &pool).await?;
            // Wait for the receiver's close before exiting: exiting earlier could cut off data
            // still queued. The receiver exits right after closing, so the connection may go
            // away first (a read error rather than end of stream); either way it is done. Its
            // own line says whether everything arrived.
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(STALL_TIMEOUT, stream.read(&mut buf))
                .await
                .context("the receiver did not close the stream")?;
            ensure!(!matches!(read, Ok(n) if n > 0), "the receiver sent data");
            Ok((args.bytes, Duration::ZERO))
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process whose stdout is read line by line; killed when dropped if still running.
#[derive(Debug)]
pub(crate) struct Spawned {
    what: String,
    child: Child,
    /// Lines of stdout, from a thread that reads to the end (so the pipe never fills).
    lines: mpsc::Receiver<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Spawned {
    pub(crate) fn spawn(what: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning the {what} ({:?})", cmd.get_program()))?;
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::sync_channel(STDOUT_LINES_BUFFERED);
        let spawned = Spawned {
            what: what.to_owned(),
            child,
            lines,
        };
        let stdout = stdout.context("stdout was not captured")?;
        // Sends block while the channel is full and the bench still holds the receiver: the
        // children print a few lines only, and a dropped receiver makes every send fail at once.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Ok(spawned)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`; returns the rest of it.
    pub(crate) fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_STARTUP_LINES {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "the {} printed no {prefix:?} line within {timeout:?}",
                    self.what
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "the {} exited ({}) before printing a {prefix:?} line",
                        self.what,
                        status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string()),
                    )
                }
            }
        }
        bail!(
            "the {} printed {MAX_STARTUP_LINES} lines but no {prefix:?} line",
            self.what
        )
    }

    /// Waits up to `timeout` for the process to exit, then kills it.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let polls = timeout.as_millis() / STOP_POLL.as_millis();
        for _ in 0..polls {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(STOP_POLL);
        }
        println!(
            "the {} did not exit within {timeout:?}; killing it",
            self.what
        );
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

// ---------------------------------------------------------------------------------------------
// The node run.

/// Figures of the node run.
#[derive(Debug)]
struct NodeRun {
    upload_mb_s: f64,
    /// A -> B as the nodes' own swarms carry it (`/perf/1.0.0`); `None` when it failed.
    node_path_mb_s: Option<f64>,
    download_mb_s: f64,
    download_s: f64,
    first_byte_s: f64,
    duplicates: Option<u64>,
    exchange_a: Option<Value>,
    exchange_b: Option<Value>,
    cpu_a: f64,
    cpu_b: f64,
    cpu_bench: f64,
    other_cores: f64,
    softirq_cores: f64,
    /// A's peak RSS when the upload returned.
    a_upload_peak_mib: f64,
    /// Whether A's high-water mark was reset after the upload, so that `a_final_peak_mib` is
    /// the peak while serving (otherwise it is the peak over A's whole life).
    a_peak_reset: bool,
    /// A's peak RSS when it was stopped.
    a_final_peak_mib: f64,
    /// B's peak RSS when it was stopped (over its whole life).
    b_peak_mib: f64,
}

impl NodeRun {
    /// A's peak RSS over its whole life.
    fn a_peak_mib(&self) -> f64 {
        self.a_upload_peak_mib.max(self.a_final_peak_mib)
    }

    /// A's peak RSS while serving the download, when it could be measured separately.
    fn a_serve_peak_mib(&self) -> Option<f64> {
        self.a_peak_reset.then_some(self.a_final_peak_mib)
    }
}

/// A running `cairn start` process (killed when dropped, see [`Spawned`]).
#[derive(Debug)]
struct NodeProc {
    name: &'static str,
    process: Spawned,
    log: PathBuf,
    /// The REST API's base URL, `http://ADDR/api/codex/v1`.
    api: String,
}

impl NodeProc {
    /// Spawns a node and waits for its ready line.
    fn start(cairn: &Path, name: &'static str, dir: &Path, muxer: Muxer) -> anyhow::Result<Self> {
        let data = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(cairn);
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&data)
            .args(["--api-bindaddr", "127.0.0.1"])
            // Port 0: the node binds a free port and prints it in its ready line (no race
            // between picking a port here and the node binding it).
            .args(["--api-port", "0"])
            .args(["--listen-addrs", LOOPBACK_LISTEN])
            // A free UDP port for the DHT too: two nodes run on one machine.
            .args(["--disc-port", "0"])
            .args(["--muxers", muxer.name])
            .args(["--log-level", "warn"])
            .stderr(Stdio::from(stderr));
        let process = Spawned::spawn(&format!("node {}", name.to_uppercase()), &mut cmd)?;
        let mut node = NodeProc {
            name,
            process,
            log,
            api: String::new(),
        };
        match node.process.wait_line(READY_PREFIX, NODE_START_TIMEOUT) {
            Ok(url) => {
                node.api = url.trim().to_owned();
                Ok(node)
            }
            Err(e) => bail!("{e:#}\n{}", node.log_tail()),
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last lines of the node's log (stderr), for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- last lines of node {} ({}) ---\n{tail}",
            self.name.to_uppercase(),
            self.log.display()
        )
    }

    /// Peak RSS of the node so far (MiB).
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        status_field_mib(&self.pid().to_string(), "VmHWM")
    }

    /// Resets the node's peak RSS to its current RSS (`clear_refs` 5, Linux 4.0+).
    fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// Reads the peak RSS, then stops the node with SIGTERM (killed after [`STOP_TIMEOUT`]).
    /// Returns the peak and how the node exited.
    fn stop(mut self) -> anyhow::Result<(f64, ExitStatus)> {
        let peak = self.peak_rss_mib()?;
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let status = self.process.wait_exit(STOP_TIMEOUT)?;
        Ok((peak, status))
    }
}

/// A JSON GET with [`CALL_TIMEOUT`].
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = client
        .get(url)
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("GET {url}: reading the body"))?;
    ensure!(status.is_success(), "GET {url}: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
}

/// Starts both nodes, uploads to A, downloads on B, stops both.
fn run_nodes(
    cairn: &Path,
    dir: &Path,
    muxer: Muxer,
    pool: &Bytes,
    size: u64,
) -> anyhow::Result<NodeRun> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let a = NodeProc::start(cairn, "a", dir, muxer)?;
    let b = NodeProc::start(cairn, "b", dir, muxer)?;
    println!("node A: pid {}, {}", a.pid(), a.api);
    println!("node B: pid {}, {}", b.pid(), b.api);
    // The HTTP client runs on one thread: the nodes need the cores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client's tokio runtime")?;
    let result = runtime.block_on(exercise(&a, &b, pool, size));
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            return Err(e.context(format!("{}\n{}", a.log_tail(), b.log_tail())));
        }
    };
    let (a_final_peak_mib, a_status) = a.stop()?;
    let (b_peak_mib, b_status) = b.stop()?;
    for (name, status) in [("A", a_status), ("B", b_status)] {
        if !status.success() {
            println!("note: node {name} exited with {status} after SIGTERM");
        }
    }
    Ok(NodeRun {
        a_final_peak_mib,
        b_peak_mib,
        ..run
    })
}

/// The REST part of the node run. Fills everything but the peaks read at stop.
async fn exercise(a: &NodeProc, b: &NodeProc, pool: &Bytes, size: u64) -> anyhow::Result<NodeRun> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;

    // Upload to A.
    let url = format!("{}/data", a.api);
    let started = Instant::now();
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body_stream(Body::new(
            pool.clone(),
            size,
        ))))
        .timeout(transfer_deadline(size))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("reading the upload's reply")?;
    let upload = started.elapsed();
    ensure!(status.is_success(), "POST {url}: {status}: {text}");
    let cid = text.trim().to_owned();
    let upload_mb_s = mb_per_s(size, upload);
    println!(
        "upload to A: {size} bytes in {:.3} s = {upload_mb_s:.1} MB/s (informative), cid {cid}",
        upload.as_secs_f64()
    );
    let a_upload_peak_mib = a.peak_rss_mib()?;
    let reset = a.reset_peak_rss();
    if !reset {
        println!(
            "note: could not reset A's peak RSS after the upload; its peak covers both phases"
        );
    }

    // Connect B to A.
    let info = get_json(&client, &format!("{}/debug/info", a.api)).await?;
    let peer = info["id"]
        .as_str()
        .with_context(|| format!("A's /debug/info has no \"id\": {info}"))?
        .to_owned();
    let addr = info["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with(LOOPBACK_ADDR_PREFIX))
        .with_context(|| {
            format!("A's /debug/info lists no {LOOPBACK_ADDR_PREFIX} address: {info}")
        })?
        .to_owned();
    let mut url = reqwest::Url::parse(&format!("{}/connect/{peer}", b.api))
        .context("building the connect URL")?;
    url.query_pairs_mut().append_pair("addrs", &addr);
    let response = client
        .get(url.clone())
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    ensure!(status.is_success(), "GET {url}: {status}: {text}");
    println!("B connected to A ({peer}) at {addr}");
    let node_path_mb_s = node_path(&client, b, &peer, size).await;

    // Download on B.
    let url = format!("{}/data/{cid}/network/stream", b.api);
    let cpu = |pid: u32| process_cpu_seconds(&pid.to_string());
    let (a0, b0, s0, m0) = (
        cpu(a.pid())?,
        cpu(b.pid())?,
        process_cpu_seconds("self")?,
        machine_cpu()?,
    );
    let started = Instant::now();
    let deadline = started + transfer_deadline(size);
    let mut response = tokio::time::timeout(STALL_TIMEOUT, client.get(&url).send())
        .await
        .with_context(|| format!("GET {url}: no response within {STALL_TIMEOUT:?}"))?
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("GET {url}: {status}: {text}");
    }
    let mut got = 0u64;
    let mut first = None;
    // Each chunk carries at least one byte (or ends the body); more than `size` is an error.
    loop {
        let wait = STALL_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let chunk = match tokio::time::timeout(wait, response.chunk()).await {
            Ok(chunk) => {
                chunk.with_context(|| format!("reading the download after {got} bytes"))?
            }
            Err(_) => {
                let stats = get_json(&client, &format!("{}/debug/info", b.api))
                    .await
                    .map(|i| i["exchange"].clone())
                    .unwrap_or(Value::Null);
                bail!(
                    "the download stalled after {got} of {size} bytes ({:.1} s; no data for {wait:?}); \
                     B's exchange counters: {stats}",
                    started.elapsed().as_secs_f64()
                );
            }
        };
        let Some(chunk) = chunk else { break };
        first.get_or_insert_with(Instant::now);
        got += chunk.len() as u64;
        ensure!(got <= size, "the download returned more than {size} bytes");
    }
    let took = started.elapsed();
    let (a1, b1, s1, (machine, softirq)) = (
        cpu(a.pid())?,
        cpu(b.pid())?,
        process_cpu_seconds("self")?,
        machine_cpu_since(m0)?,
    );
    ensure!(
        got == size,
        "the download ended after {got} of {size} bytes"
    );
    let first_byte_s = first.map_or(f64::NAN, |f| (f - started).as_secs_f64());
    let download_mb_s = mb_per_s(size, took);
    let (cpu_a, cpu_b, cpu_bench) = (a1 - a0, b1 - b0, s1 - s0);
    let other_cores = (machine - (cpu_a + cpu_b + cpu_bench)).max(0.0) / took.as_secs_f64();
    let softirq_cores = softirq / took.as_secs_f64();
    println!(
        "download on B (network/stream): {got} bytes in {:.3} s = {download_mb_s:.1} MB/s \
         (request sent -> last byte; first byte after {:.1} ms)",
        took.as_secs_f64(),
        first_byte_s * 1e3
    );
    println!(
        "CPU during the download: A {cpu_a:.2} s, B {cpu_b:.2} s, bench {cpu_bench:.2} s \
         ({:.2} cores busy); softirq {softirq_cores:.2} cores; other processes {other_cores:.2} cores",
        (cpu_a + cpu_b + cpu_bench) / took.as_secs_f64()
    );
    if other_cores > OTHER_LOAD_WARN {
        println!(
            "WARNING: the machine was not quiet (> {OTHER_LOAD_WARN} cores used elsewhere): \
             the figures understate what this machine can do"
        );
    }

    // Block-exchange counters.
    let info_b = get_json(&client, &format!("{}/debug/info", b.api)).await?;
    let info_a = get_json(&client, &format!("{}/debug/info", a.api)).await?;
    let exchange_b = info_b.get("exchange").cloned();
    let exchange_a = info_a.get("exchange").cloned();
    let duplicates = exchange_b
        .as_ref()
        .and_then(|e| e.get("duplicates"))
        .and_then(Value::as_u64);
    println!(
        "duplicate blocks on B: {}; B's exchange: {}; A's exchange: {}",
        duplicates.map_or_else(|| "n/a".to_owned(), |d| d.to_string()),
        exchange_b
            .as_ref()
            .map_or_else(|| "n/a".to_owned(), Value::to_string),
        exchange_a
            .as_ref()
            .map_or_else(|| "n/a".to_owned(), Value::to_string),
    );

    Ok(NodeRun {
        upload_mb_s,
        node_path_mb_s,
        download_mb_s,
        download_s: took.as_secs_f64(),
        first_byte_s,
        duplicates,
        exchange_a,
        exchange_b,
        cpu_a,
        cpu_b,
        cpu_bench,
        other_cores,
        softirq_cores,
        a_upload_peak_mib,
        a_peak_reset: reset,
        a_final_peak_mib: f64::NAN,
        b_peak_mib: f64::NAN,
    })
}

/// Bytes the nodes' path measurement moves at most (the node's own limit on a perf run).
const NODE_PATH_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Time allowed for the nodes' path measurement (the node allows a run 60 s).
const NODE_PATH_TIMEOUT: Duration = Duration::from_secs(90);

/// Measures A -> B through the nodes themselves: B runs the `/perf/1.0.0` self-test against A
/// (`POST /debug/perf/{A}`), downloading up to `size` bytes (at most [`NODE_PATH_MAX_BYTES`]).
/// For information beside the ceiling: it crosses each node's whole swarm, so it shows what
/// the nodes' connection carries before any block is asked for. `None` (with a note) when it
/// fails, e.g. against a binary without the endpoint.
async fn node_path(client: &reqwest::Client, b: &NodeProc, a_peer: &str, size: u64) -> Option<f64> {
    let bytes = size.min(NODE_PATH_MAX_BYTES);
    let url = format!("{}/debug/perf/{a_peer}?upload=0&download={bytes}", b.api);
    let answer = async {
        let response = client
            .post(&url)
            .timeout(NODE_PATH_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        ensure!(status.is_success(), "POST {url}: {status}: {text}");
        let v: Value = serde_json::from_str(&text).context("the perf answer is not JSON")?;
        v["downloadMbps"]
            .as_f64()
            .with_context(|| format!("no downloadMbps in {v}"))
    };
    match answer.await {
        Ok(mb_s) => {
            println!(
                "path A -> B through the nodes (/perf/1.0.0, {bytes} bytes): {mb_s:.1} MB/s (informative)"
            );
            Some(mb_s)
        }
        Err(e) => {
            println!("note: the nodes' path measurement failed: {e:#}");
            None
        }
    }
}

/// Machine-wide CPU seconds since `before`: (busy without softirq, softirq). Softirq time is
/// charged to no process (loopback TCP is processed there), so it is kept apart from what
/// "other processes" used.
fn machine_cpu_since(before: MachineCpu) -> anyhow::Result<(f64, f64)> {
    let now = machine_cpu()?;
    let softirq = now.softirq - before.softirq;
    Ok((now.busy - before.busy - softirq, softirq))
}

/// User + system CPU seconds of process `pid` (or `self`), all threads.
pub(crate) fn process_cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let (user, sys) = cpu_seconds_of(pid)?;
    Ok(user + sys)
}
