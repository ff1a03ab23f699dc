//! `cairn-bench`: benchmarks that report figures as ratios against a ceiling measured in the
//! same run, on the same machine, so that numbers from different machines can be compared.
//!
//! Benchmarks are not tests: they assert nothing about speed (the figures depend on the machine
//! and on what else it is doing). They only fail when the run itself is wrong, e.g. when the
//! store's space accounting does not match what was uploaded.
//!
//! Units: MB = 10^6 bytes (throughput is MB/s), MiB = 2^20 bytes (memory and sizes).
//!
//! ## `ingest`
//!
//! ```text
//! cargo run --release -p cairn-bench -- ingest --size 1GiB [--dir PATH] [--keep]
//! ```
//!
//! Uploads `--size` bytes of pseudo-random data through [`Node::store_dataset`] into an on-disk
//! store ([`Store::open`] in a fresh temporary directory) on a multi-threaded tokio runtime with
//! [`WORKER_THREADS`] workers, and times it from the first byte the node pulls from the body to
//! the returned manifest CID. That span includes the whole pipeline (chunking, hashing, segment
//! append), the final `fdatasync` of the segment, the Merkle tree, the leaf index and the
//! manifest commit: it is what a client waits for.
//!
//! ### The ceiling
//!
//! Every data block must be hashed with SHA-256 to get its CID, and the node hashes blocks in
//! order on one thread (the hasher stage of the pipeline). So ingest cannot be faster than one
//! core can run SHA-256 over 64 KiB blocks: that single-core rate is the ceiling. The rest of the
//! pipeline (reading the body, cutting blocks, appending to the segment, syncing) runs on the
//! other core concurrently, so in the best case it hides entirely behind hashing and the ratio
//! `ingest MB/s / SHA-256 MB/s` approaches 1. The ceiling is measured in the same process
//! (`Sha256::digest` from the `sha2` crate, the same implementation the node uses, over the same
//! kind of 64 KiB windows of the same data) once before and once after the upload; the faster of
//! the two is used, so a machine that slowed down during the run cannot flatter the ratio.
//!
//! ### The data
//!
//! The body must cost (almost) nothing to produce, or the benchmark would measure its own
//! generator on the core the pipeline needs. It is therefore not generated per byte: a small
//! pool ([`POOL_SIZE`]) of xorshift64* output is filled once, and chunk `c` of the body is a
//! zero-copy slice of that pool starting at `c × CHUNK_STRIDE` ([`Bytes::slice`]: a reference
//! count increment, no copy). Block `j` of chunk `c` (dataset block `4c + j`) is then the pool
//! window at `c × 7 + j × 65536`; since 7 and 65536 are coprime these start offsets are all
//! different, so every block has different content and nothing is deduplicated (the space check
//! at the end would catch it if it were). The pool bounds the largest dataset
//! ([`max_dataset_size`]). The generator's own throughput is measured and printed so that its
//! cost can be seen to be negligible. Nothing of the dataset is ever materialised: the process
//! holds the pool and whatever the node holds.
//!
//! ### What is printed
//!
//! Human-readable lines, then one JSON line with every figure (to paste into `BENCHMARKS.md`):
//! ingest and SHA-256 throughput and their ratio; how long the body took to drain and how long
//! the node's finish step took after it; peak RSS (`VmHWM` of the whole process, including the
//! pool), also as it stood when the body was drained; the process's CPU time during the upload,
//! and the CPU other processes used meanwhile (a run on a busy machine is flagged, since its
//! figures understate the machine); and the store's space accounting, which must equal
//! `blocks × 65536 + manifest length` exactly or the run fails.
//!
//! ## `transfer`
//!
//! ```text
//! cargo build --release -p cairn -p cairn-bench
//! target/release/cairn-bench transfer --size 1GiB [--muxer yamux|mplex|both] [--keep]
//! ```
//!
//! Downloads a dataset from one `cairn` node process to another over libp2p on loopback and
//! compares the throughput with one raw libp2p stream over the same transport: see
//! [`transfer`].
//!
//! ## `pex`
//!
//! ```text
//! target/release/cairn-bench pex --nodes 100
//! ```
//!
//! A seed and `--nodes` `cairn` processes on 127.0.0.x that know only the seed: join time,
//! connections per node, peer-exchange bytes per node per minute: see [`pex`].

mod dht;
mod pex;
mod procs;
mod transfer;

use std::{
    hint::black_box,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use bytesize::ByteSize;
use cairn_core::DEFAULT_BLOCK_SIZE;
use cairn_node::{Node, NodeConfig};
use cairn_store::{Store, StoreConfig};
use clap::{Args, Parser, Subcommand};
use futures::Stream;
use sha2::{Digest as _, Sha256};

/// Block size of the node's chunker, and of the SHA-256 ceiling's blocks.
const BLOCK_SIZE: usize = DEFAULT_BLOCK_SIZE;

/// Size of each body chunk handed to the node: 4 blocks, in the range of what an HTTP body
/// stream delivers per poll, and a multiple of [`BLOCK_SIZE`] so block `j` of chunk `c` is
/// always dataset block `4c + j`.
const CHUNK_SIZE: usize = 4 * BLOCK_SIZE;

/// Pool of pseudo-random bytes the body is sliced from. Small on purpose: it counts in the
/// process's peak RSS. It only has to hold [`CHUNK_SIZE`] plus [`CHUNK_STRIDE`] bytes per chunk
/// of the largest dataset (see [`max_dataset_size`]).
const POOL_SIZE: usize = 8 * 1024 * 1024;

/// Offset step between consecutive chunks in the pool. Coprime with [`BLOCK_SIZE`], so every
/// block window starts at a different pool offset (distinct blocks, no deduplication).
const CHUNK_STRIDE: usize = 7;

/// Seed of the xorshift64* generator that fills the pool (any non-zero value; fixed so every run
/// uploads the same bytes and yields the same CID).
const POOL_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SHA-256 ceiling hashes as many bytes as the upload, but at least this much, so that a
/// small `--size` still gives a stable figure.
const MIN_CEILING_BYTES: u64 = 512 * 1024 * 1024;

/// Tokio worker threads, as on the 2-core machines the target is set for. The node's hasher and
/// writer stages run on blocking threads besides these.
const WORKER_THREADS: usize = 2;

/// The store's quota is `QUOTA_FACTOR × size + QUOTA_HEADROOM`: large enough never to refuse the
/// upload (quota is not what is measured here).
const QUOTA_FACTOR: u64 = 2;

/// See [`QUOTA_FACTOR`].
const QUOTA_HEADROOM: u64 = 1024 * 1024 * 1024;

/// Prefix of the temporary store directory.
const TEMP_PREFIX: &str = "cairn-bench-";

/// Bytes per MB: throughput is reported in MB/s with MB = 10^6 bytes.
const MB: f64 = 1e6;

/// Bytes per MiB: memory is reported in MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Clock ticks per second of `/proc/self/stat` times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// Above this many cores used by other processes (or stolen by the hypervisor) during the
/// upload, the run is flagged as disturbed.
const OTHER_LOAD_WARN: f64 = 0.1;

/// Shortest upload for which other processes' CPU use is reported: the counters tick at
/// [`USER_HZ`], so a shorter window would be mostly rounding.
const MIN_LOAD_WINDOW_S: f64 = 0.1;

/// The issue's targets, printed next to the figures (not asserted: a benchmark is not a test).
const TARGET_RATIO: f64 = 0.8;

/// See [`TARGET_RATIO`].
const TARGET_PEAK_RSS_MIB: f64 = 150.0;

/// cairn benchmarks: figures as ratios against ceilings measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "cairn-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload pseudo-random data through the node into an on-disk store; compare the throughput
    /// with single-core SHA-256 measured in the same run.
    Ingest(IngestArgs),
    /// Download a dataset from one `cairn` node process to another over libp2p; compare the
    /// throughput with one raw libp2p stream on the same transport measured in the same run.
    Transfer(transfer::TransferArgs),
    /// An in-process network of DHT nodes on loopback UDP: convergence, lookups and provider
    /// records; PING round trips compared with a raw UDP echo measured in the same run.
    Dht(dht::DhtArgs),
    /// A seed and many `cairn` processes on 127.0.0.x: how long until every node has its
    /// outbound peers, connections per node, peer-exchange bytes per node per minute.
    Pex(pex::PexArgs),
    /// One side of `transfer`'s ceiling in its own process (started by `transfer
    /// --ceiling-mode processes`).
    #[command(hide = true)]
    CeilingPeer(transfer::PeerArgs),
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Bytes to upload, e.g. 256MiB, 1GiB, 4GiB (GB = 10^9, GiB = 2^30).
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Directory in which the temporary store directory is created (default: the system temp
    /// directory). Put it on the disk you want to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store directory instead of deleting it at the end.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => ingest(&args),
        Command::Transfer(args) => transfer::transfer(&args),
        Command::Dht(args) => dht::dht(&args),
        Command::Pex(args) => pex::pex(&args),
        Command::CeilingPeer(args) => transfer::ceiling_peer(&args),
    }
}

/// The largest dataset the pool can provide distinct blocks for.
fn max_dataset_size() -> u64 {
    let chunks = (POOL_SIZE - CHUNK_SIZE) / CHUNK_STRIDE + 1;
    chunks as u64 * CHUNK_SIZE as u64
}

/// Fills the pool with xorshift64* output.
fn make_pool() -> Bytes {
    let mut state = POOL_SEED;
    let mut pool = Vec::with_capacity(POOL_SIZE);
    while pool.len() < POOL_SIZE {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        pool.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    pool.truncate(POOL_SIZE);
    Bytes::from(pool)
}

/// The body: `size` bytes as [`CHUNK_SIZE`] zero-copy slices of the pool (see the module docs),
/// produced lazily. Records when the first chunk is pulled and when the body is exhausted.
#[derive(Debug)]
struct Body {
    pool: Bytes,
    size: u64,
    pos: u64,
    chunk: usize,
    marks: Arc<Marks>,
}

/// When the node pulled the first chunk, when it found the body exhausted, and the process's
/// peak RSS at that moment (MiB; what streaming cost, before the node's finish step).
#[derive(Debug, Default)]
struct Marks {
    first_byte: OnceLock<Instant>,
    drained: OnceLock<Instant>,
    peak_rss_at_drain: OnceLock<f64>,
}

impl Body {
    fn new(pool: Bytes, size: u64) -> Body {
        Body {
            pool,
            size,
            pos: 0,
            chunk: 0,
            marks: Arc::default(),
        }
    }
}

impl Iterator for Body {
    type Item = Result<Bytes, std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.marks.first_byte.set(Instant::now());
        let left = self.size - self.pos;
        if left == 0 {
            let _ = self.marks.drained.set(Instant::now());
            if let Ok(mib) = proc_status_mib("VmHWM") {
                let _ = self.marks.peak_rss_at_drain.set(mib);
            }
            return None;
        }
        // `left` may exceed usize on 32-bit targets only when it is larger than a chunk.
        let len = usize::try_from(left).map_or(CHUNK_SIZE, |l| l.min(CHUNK_SIZE));
        let start = self.chunk * CHUNK_STRIDE;
        let Some(slice) =
            (start + len <= self.pool.len()).then(|| self.pool.slice(start..start + len))
        else {
            // `ingest` refuses sizes beyond `max_dataset_size`, so this is a bug, not input.
            return Some(Err(std::io::Error::other(
                "benchmark body ran past its pool",
            )));
        };
        self.chunk += 1;
        self.pos += len as u64;
        Some(Ok(slice))
    }
}

/// The body as the stream `Node::store_dataset` takes.
fn body_stream(body: Body) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::iter(body)
}

/// Throughput of the body generator alone: produces the whole body and drops it.
fn measure_generator(pool: &Bytes, size: u64) -> anyhow::Result<(f64, Duration)> {
    let started = Instant::now();
    let mut bytes = 0u64;
    for chunk in Body::new(pool.clone(), size) {
        let chunk = black_box(chunk?);
        bytes += chunk.len() as u64;
    }
    let took = started.elapsed();
    ensure!(
        bytes == size,
        "generator produced {bytes} bytes, not {size}"
    );
    Ok((mb_per_s(size, took), took))
}

/// Single-core SHA-256 over `bytes` (rounded up to whole blocks) of 64 KiB pool windows laid out
/// as the body's blocks are. Returns MB/s.
fn measure_sha256(pool: &[u8], bytes: u64) -> f64 {
    let blocks = bytes.div_ceil(BLOCK_SIZE as u64);
    let chunks_in_pool = (POOL_SIZE - CHUNK_SIZE) / CHUNK_STRIDE + 1;
    let blocks_per_chunk = (CHUNK_SIZE / BLOCK_SIZE) as u64;
    let mut fold = 0u8;
    let started = Instant::now();
    for i in 0..blocks {
        let chunk = usize::try_from(i / blocks_per_chunk).unwrap_or(0) % chunks_in_pool;
        let within = usize::try_from(i % blocks_per_chunk).unwrap_or(0);
        let off = chunk * CHUNK_STRIDE + within * BLOCK_SIZE;
        let digest = Sha256::digest(black_box(&pool[off..off + BLOCK_SIZE]));
        fold ^= digest[0];
    }
    let took = started.elapsed();
    black_box(fold);
    mb_per_s(blocks * BLOCK_SIZE as u64, took)
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MB / took.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// A number from `/proc/self/status` (in kB), e.g. `VmHWM`, in MiB.
fn proc_status_mib(field: &str) -> anyhow::Result<f64> {
    status_field_mib("self", field)
}

/// A number from `/proc/<pid>/status` (in kB; `pid` may be `self`), e.g. `VmHWM`, in MiB.
fn status_field_mib(pid: &str, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("{field} missing from {path}"))?;
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing {field}: {line:?}"))?;
    Ok(kb as f64 * 1024.0 / MIB)
}

/// User and system CPU seconds the process (all threads, live or gone) has used so far.
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    cpu_seconds_of("self")
}

/// User and system CPU seconds process `pid` (or `self`) has used so far, all threads.
fn cpu_seconds_of(pid: &str) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which is in parentheses and may contain spaces); the first
    // of them is field 3 (state), so utime (field 14) is at index 11 and stime at 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("parsing {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = fields
            .get(i)
            .with_context(|| format!("short {path}"))?
            .parse()
            .with_context(|| format!("parsing {path}"))?;
        Ok(v as f64 / USER_HZ)
    };
    Ok((tick(11)?, tick(12)?))
}

/// Machine-wide CPU seconds from the first line of `/proc/stat`: (busy, steal). Busy is user,
/// nice, system, irq and softirq time of all CPUs; steal is time the hypervisor ran something
/// else. Used to see whether other processes competed with the run.
fn machine_cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let cpu = machine_cpu()?;
    Ok((cpu.busy, cpu.steal))
}

/// Machine-wide CPU seconds from the first line of `/proc/stat`, all CPUs.
#[derive(Debug, Clone, Copy)]
struct MachineCpu {
    /// User, nice, system, irq and softirq time.
    busy: f64,
    /// Softirq time (part of `busy`): charged to no process, e.g. loopback TCP processing.
    softirq: f64,
    /// Time the hypervisor ran something else.
    steal: f64,
}

fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("parsing /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    let get = |i: usize| fields.get(i).copied().unwrap_or(0) as f64 / USER_HZ;
    // user nice system idle iowait irq softirq steal
    Ok(MachineCpu {
        busy: get(0) + get(1) + get(2) + get(5) + get(6),
        softirq: get(6),
        steal: get(7),
    })
}

fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    let size = args.size.as_u64();
    ensure!(size > 0, "--size must be at least 1 byte");
    let max = max_dataset_size();
    ensure!(
        size <= max,
        "--size {} is larger than this benchmark can generate distinct blocks for ({max} bytes); \
         raise POOL_SIZE",
        args.size
    );
    let blocks = size.div_ceil(BLOCK_SIZE as u64);
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tempdir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let quota = size
        .saturating_mul(QUOTA_FACTOR)
        .saturating_add(QUOTA_HEADROOM);

    println!("cairn-bench ingest (MB = 10^6 bytes, MiB = 2^20 bytes)");
    println!(
        "size: {size} bytes ({}), {blocks} blocks of {BLOCK_SIZE} bytes, body chunks of {CHUNK_SIZE} bytes",
        args.size.display().iec()
    );
    println!(
        "store: {} (quota {quota} bytes), runtime: {WORKER_THREADS} worker threads",
        tempdir.path().display()
    );

    let pool = make_pool();
    let (gen_mb_s, gen_took) = measure_generator(&pool, size)?;
    println!(
        "generator: {size} bytes in {:.3} ms = {gen_mb_s:.0} MB/s (zero-copy slices of a {} pool)",
        gen_took.as_secs_f64() * 1e3,
        ByteSize::b(POOL_SIZE as u64).display().iec()
    );

    let ceiling_bytes = size.max(MIN_CEILING_BYTES);
    let sha_before = measure_sha256(&pool, ceiling_bytes);
    println!(
        "sha256 (1 core, 64 KiB blocks, {ceiling_bytes} bytes) before upload: {sha_before:.1} MB/s"
    );

    let rss_before = proc_status_mib("VmRSS")?;
    let cpu_before = cpu_seconds()?;
    let machine_before = machine_cpu_seconds()?;
    let store = Store::open(
        tempdir.path(),
        StoreConfig {
            quota_bytes: quota,
            ..StoreConfig::default()
        },
    )
    .with_context(|| format!("opening a store in {}", tempdir.path().display()))?;
    let node = Node::new(store.clone(), NodeConfig::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let body = Body::new(pool.clone(), size);
    let marks = body.marks.clone();
    let called = Instant::now();
    // Run the upload as a task on the runtime, as a request handler would (a `block_on` future
    // would run on this thread instead of a worker).
    let task = {
        let node = node.clone();
        runtime.spawn(async move {
            let stored = node
                .store_dataset(
                    body_stream(body),
                    Some("cairn-bench.bin".to_owned()),
                    Some("application/octet-stream".to_owned()),
                )
                .await;
            (stored, Instant::now())
        })
    };
    let (stored, returned) = runtime.block_on(task).context("the upload task panicked")?;
    let stored = stored.context("uploading through the node")?;
    let cpu_after = cpu_seconds()?;
    let machine_after = machine_cpu_seconds()?;

    let first_byte = *marks
        .first_byte
        .get()
        .context("the node never read the body")?;
    let drained = *marks
        .drained
        .get()
        .context("the node returned before reading the whole body")?;
    let took = returned - first_byte;
    let ingest_mb_s = mb_per_s(size, took);
    let drain_mb_s = mb_per_s(size, drained - first_byte);
    let finish = returned - drained;
    let (user, sys) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    // CPU counters cover the call (a few ms longer than `took`: begin_dataset comes first).
    let window = (returned - called).as_secs_f64();
    let busy = (user + sys) / window;
    // Other processes' CPU (and the hypervisor's steal) during the upload, when the window is
    // long enough for the counters' resolution.
    let load = (window >= MIN_LOAD_WINDOW_S).then(|| {
        (
            ((machine_after.0 - machine_before.0) - (user + sys)).max(0.0) / window,
            (machine_after.1 - machine_before.1) / window,
        )
    });

    let sha_after = measure_sha256(&pool, ceiling_bytes);
    let sha_mb_s = sha_before.max(sha_after);
    let ratio = ingest_mb_s / sha_mb_s;
    let peak_rss = proc_status_mib("VmHWM")?;
    let peak_rss_at_drain = marks.peak_rss_at_drain.get().copied().unwrap_or(f64::NAN);

    println!("sha256 after upload: {sha_after:.1} MB/s; ceiling = the faster: {sha_mb_s:.1} MB/s");
    println!(
        "ingest: {size} bytes in {:.3} s = {ingest_mb_s:.1} MB/s (first byte pulled -> CID returned)",
        took.as_secs_f64()
    );
    println!(
        "  before the first byte (begin_dataset): {:.1} ms, not counted",
        (first_byte - called).as_secs_f64() * 1e3
    );
    println!(
        "  body drained after {:.3} s ({drain_mb_s:.1} MB/s); then {:.3} s until the CID \
         (pipeline tail, fdatasync, Merkle tree, leaf index, manifest)",
        (drained - first_byte).as_secs_f64(),
        finish.as_secs_f64()
    );
    println!(
        "  process CPU during the upload: {user:.2} s user + {sys:.2} s system = {busy:.2} cores busy on average"
    );
    match load {
        Some((other, steal)) => {
            println!(
                "  other processes during the upload: {other:.2} cores busy on average, steal {steal:.2} cores"
            );
            if other > OTHER_LOAD_WARN || steal > OTHER_LOAD_WARN {
                println!(
                    "  WARNING: the machine was not quiet (> {OTHER_LOAD_WARN} cores used elsewhere): \
                     the figures understate what this machine can do"
                );
            }
        }
        None => println!(
            "  other processes during the upload: not measured (upload shorter than {MIN_LOAD_WINDOW_S} s)"
        ),
    }
    println!("  cid: {}", stored.cid);
    println!("ratio ingest / sha256: {ratio:.3} (target >= {TARGET_RATIO})");
    println!(
        "peak RSS (VmHWM): {peak_rss:.1} MiB ({peak_rss_at_drain:.1} MiB when the body was drained), RSS before the upload {rss_before:.1} MiB (includes the \
         {} pool; target < {TARGET_PEAK_RSS_MIB} MiB)",
        ByteSize::b(POOL_SIZE as u64).display().iec()
    );

    // The space accounting must be exact: every block distinct, stored once, nothing reserved.
    let space = store.space().context("reading the store's space")?;
    let manifest_len = stored.manifest.to_block().data().len() as u64;
    let expected_used = blocks * BLOCK_SIZE as u64 + manifest_len;
    println!(
        "space: used {} bytes (expected {blocks} x {BLOCK_SIZE} + manifest {manifest_len} = {expected_used}), \
         {} blocks, {} bytes reserved; segments on disk {} bytes",
        space.quota_used_bytes,
        space.total_blocks,
        space.quota_reserved_bytes,
        store.disk_bytes().context("reading the segments' size")?
    );
    if space.quota_used_bytes != expected_used
        || space.total_blocks != blocks + 1
        || space.quota_reserved_bytes != 0
        || stored.manifest.dataset_size != size
        || stored.manifest.block_size != BLOCK_SIZE as u64
    {
        bail!(
            "SPACE ACCOUNTING MISMATCH: used {} bytes, expected {expected_used}; {} blocks, expected {}; \
             {} bytes still reserved; manifest says {} bytes in blocks of {}",
            space.quota_used_bytes,
            space.total_blocks,
            blocks + 1,
            space.quota_reserved_bytes,
            stored.manifest.dataset_size,
            stored.manifest.block_size
        );
    }

    let peak_rss_at_drain_json = if peak_rss_at_drain.is_finite() {
        format!("{peak_rss_at_drain:.1}")
    } else {
        "null".to_owned()
    };
    let (other_json, steal_json) = load.map_or_else(
        || ("null".to_owned(), "null".to_owned()),
        |(other, steal)| (format!("{other:.2}"), format!("{steal:.2}")),
    );
    let json = format!(
        "{{\"bench\":\"ingest\",\"size_bytes\":{size},\"blocks\":{blocks},\"ingest_mb_s\":{ingest_mb_s:.1},\
         \"sha256_mb_s\":{sha_mb_s:.1},\"sha256_before_mb_s\":{sha_before:.1},\"sha256_after_mb_s\":{sha_after:.1},\
         \"ratio\":{ratio:.3},\"ingest_s\":{:.3},\"drain_s\":{:.3},\"finish_s\":{:.3},\"cpu_user_s\":{user:.2},\
         \"cpu_sys_s\":{sys:.2},\"other_cores_busy\":{other_json},\"steal_cores\":{steal_json},\"peak_rss_mib\":{peak_rss:.1},\"peak_rss_at_drain_mib\":{peak_rss_at_drain_json},\"rss_before_mib\":{rss_before:.1},\
         \"generator_mb_s\":{gen_mb_s:.0},\"used_bytes\":{},\"expected_used_bytes\":{expected_used},\
         \"worker_threads\":{WORKER_THREADS},\"mb\":1000000}}",
        took.as_secs_f64(),
        (drained - first_byte).as_secs_f64(),
        finish.as_secs_f64(),
        space.quota_used_bytes
    );

    // Close the store before deleting its directory.
    drop(node);
    drop(store);
    runtime.shutdown_timeout(Duration::from_secs(5));
    if args.keep {
        let kept = tempdir.keep();
        println!("kept the store in {}", kept.display());
    } else {
        let path = tempdir.path().to_owned();
        tempdir
            .close()
            .with_context(|| format!("deleting {}", path.display()))?;
    }
    // Last, so that it is the final line of the output.
    println!("{json}");
    Ok(())
}
