//! `/perf/1.0.0`: a throughput self-test between two nodes.
//!
//! "Why is my download slow?" has two answers: the path is slow, or the node is. A run of this
//! protocol measures the path alone, over the same transport, security and multiplexer the
//! block exchange uses, so a download's rate can be read against what the path carries
//! (`cairn perf <peer>`, `POST /api/codex/v1/debug/perf/{peerId}`). It is the libp2p perf
//! protocol (libp2p specs, `perf/perf.md`), so other libp2p perf tools can run against a cairn
//! node too:
//!
//! 1. the client opens a stream and writes, as a big-endian `u64`, how many bytes it wants back;
//! 2. it writes its upload and closes its side of the stream;
//! 3. the server reads up to the end of the upload, writes the bytes asked for and closes.
//!
//! The client times the upload from its first byte to the server's first byte back (the server
//! answers only once it has read the whole upload), and the download from there to the end.
//!
//! **Serving is bounded.** A run costs the server the bandwidth the client asks for, so a peer
//! may ask for at most [`PERF_MAX_BYTES`] each way, one run at a time; the node serves at most
//! [`PERF_SERVER_RUNS`] runs at once and [`PERF_SERVER_RUNS_PER_MINUTE`] a minute, each for at
//! most [`PERF_RUN_TIMEOUT`], and a peer that sends nothing for [`PERF_IDLE_TIMEOUT`] is cut
//! off. A stream beyond these limits is dropped unanswered (the client sees its stream end
//! early). A node can also refuse the protocol altogether ([`crate::NetConfig::perf_server`]).
//!
//! **Running is bounded too.** The node measures only a peer it is connected to (a stream to
//! another would be dialled by `libp2p-stream` around the node's own dialling rules), one run
//! at a time ([`PERF_CLIENT_RUNS`]).
//!
//! The protocol rides on `libp2p-stream`, which hands the streams to plain async code: the
//! rust-libp2p `libp2p-perf` crate serves without any of these limits.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The protocol id, as the libp2p perf specification names it.
pub const PERF_PROTOCOL: StreamProtocol = StreamProtocol::new("/perf/1.0.0");

/// Most bytes a run moves each way: 256 MiB keeps a run on a 1 GB/s path well above a
/// quarter of a second (long enough to measure), and bounds what one request costs a server.
pub const PERF_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Runs a node serves at once (one per peer): a test measures the path, and more at once
/// would only share it.
pub const PERF_SERVER_RUNS: usize = 2;

/// Longest a run may take, from opening the stream to its end, at either end. 256 MiB each way
/// at 10 MB/s fits.
pub const PERF_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the client waits for the stream to open (protocol negotiation included).
pub const PERF_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a node serves per minute at most, from all peers together: with [`PERF_MAX_BYTES`]
/// each, at most 1 GiB a minute (about 18 MB/s on average) goes to self-tests, however many
/// peers ask or how fast they ask again.
pub const PERF_SERVER_RUNS_PER_MINUTE: usize = 4;

/// Longest the server waits for the next bytes of a run's request or upload: a peer that
/// trickles them cannot hold a slot for the whole [`PERF_RUN_TIMEOUT`].
pub const PERF_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs this node makes at once as a client (`cairn perf`, the API): one, so that requests
/// to the API cannot make the node measure many paths at once.
pub const PERF_CLIENT_RUNS: usize = 1;

/// Bytes per write and per read: one block's worth, as the block exchange moves them.
const PERF_CHUNK: usize = 64 * 1024;

/// What a run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfReport {
    /// Bytes sent to the peer.
    pub uploaded: u64,
    /// Bytes received from it.
    pub downloaded: u64,
    /// From the first byte sent to the first byte back: the upload and one round trip.
    pub upload_time: Duration,
    /// From the first byte back to the end of the stream.
    pub download_time: Duration,
    /// The bytes received after the first read back: what `download_time` timed.
    pub download_timed: u64,
}

impl PerfReport {
    /// Upload rate in bytes per second.
    pub fn upload_rate(&self) -> f64 {
        rate(self.uploaded, self.upload_time)
    }

    /// Download rate in bytes per second: the bytes after the first read over the time from
    /// that read to the end (the first read's bytes arrived before the clock started). 0 when
    /// everything came in one read.
    pub fn download_rate(&self) -> f64 {
        if self.download_time.is_zero() {
            return 0.0;
        }
        rate(self.download_timed, self.download_time)
    }
}

fn rate(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9)
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// A direction asked for more than [`PERF_MAX_BYTES`].
    #[error("a perf run moves at most {PERF_MAX_BYTES} bytes each way")]
    TooLarge,
    /// The stream did not open: not connected, the peer does not speak the protocol (or
    /// refused it), or it took longer than [`PERF_OPEN_TIMEOUT`].
    #[error("cannot open a perf stream to {peer}: {reason}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing the stream failed.
    #[error("the perf run with {peer} failed: {reason}")]
    Io {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// The run took longer than [`PERF_RUN_TIMEOUT`].
    #[error("the perf run with {0} took longer than {PERF_RUN_TIMEOUT:?}")]
    Timeout(PeerId),
    /// This node is running another test ([`PERF_CLIENT_RUNS`]).
    #[error("this node is measuring another path; try again when it is done")]
    Busy,
    /// The peer is not connected.
    #[error("{0} is not connected")]
    NotConnected(PeerId),
    /// The peer ended the stream before it sent what was asked (a server at its limits drops
    /// the stream unanswered).
    #[error("{peer} sent {got} of the {asked} bytes asked for (busy, or it refused the run)")]
    Short {
        /// The peer.
        peer: PeerId,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        asked: u64,
    },
}

/// Opens the self-test's streams ([`crate::NetworkHandle::perf`]), one run at a time.
#[derive(Clone)]
pub(crate) struct PerfClient {
    pub(crate) control: libp2p_stream::Control,
    pub(crate) runs: Arc<Semaphore>,
}

impl PerfClient {
    pub(crate) fn new(control: libp2p_stream::Control) -> PerfClient {
        PerfClient {
            control,
            runs: Arc::new(Semaphore::new(PERF_CLIENT_RUNS)),
        }
    }
}

impl std::fmt::Debug for PerfClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerfClient")
    }
}

/// Runs the test against `peer`: sends `upload` bytes, asks for `download` back.
pub(crate) async fn run(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<PerfReport, PerfError> {
    if upload > PERF_MAX_BYTES || download > PERF_MAX_BYTES {
        return Err(PerfError::TooLarge);
    }
    let open = tokio::time::timeout(PERF_OPEN_TIMEOUT, control.open_stream(peer, PERF_PROTOCOL));
    let mut stream = match open.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(PerfError::Open {
                peer,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(PerfError::Open {
                peer,
                reason: format!("no stream within {PERF_OPEN_TIMEOUT:?}"),
            });
        }
    };
    let io = |e: std::io::Error| PerfError::Io {
        peer,
        reason: e.to_string(),
    };
    let exchange = async {
        let start = Instant::now();
        stream
            .write_all(&download.to_be_bytes())
            .await
            .map_err(io)?;
        let zeros = vec![0u8; PERF_CHUNK];
        write_zeros(&mut stream, upload, &zeros).await.map_err(io)?;
        stream.close().await.map_err(io)?;
        let mut buf = vec![0u8; PERF_CHUNK];
        let mut got = 0u64;
        let mut first = None;
        let mut before_clock = 0u64;
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            if first.is_none() {
                first = Some(Instant::now());
                before_clock = n as u64;
            }
            got += n as u64;
            if got > download {
                return Err(PerfError::Io {
                    peer,
                    reason: format!("sent more than the {download} bytes asked for"),
                });
            }
        }
        let end = Instant::now();
        if got < download {
            return Err(PerfError::Short {
                peer,
                got,
                asked: download,
            });
        }
        let first = first.unwrap_or(end);
        Ok(PerfReport {
            uploaded: upload,
            downloaded: got,
            upload_time: first.duration_since(start),
            download_time: end.duration_since(first),
            download_timed: got - before_clock,
        })
    };
    tokio::time::timeout(PERF_RUN_TIMEOUT, exchange)
        .await
        .map_err(|_| PerfError::Timeout(peer))?
}

/// Serves the runs that arrive on `incoming` until `cancel` (or the swarm stops).
pub(crate) async fn serve(mut incoming: libp2p_stream::IncomingStreams, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(PERF_SERVER_RUNS));
    let running: Arc<Mutex<HashSet<PeerId>>> = Arc::default();
    // When the runs of the last minute started, oldest first.
    let mut started: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    loop {
        let (peer, stream) = tokio::select! {
            () = cancel.cancelled() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let now = Instant::now();
        while started
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            started.pop_front();
        }
        if started.len() >= PERF_SERVER_RUNS_PER_MINUTE {
            debug!(%peer, "perf run refused: {PERF_SERVER_RUNS_PER_MINUTE} served this minute");
            continue; // dropping the stream resets it
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "perf run refused: the node serves {PERF_SERVER_RUNS} at once");
            continue;
        };
        if !running.lock().insert(peer) {
            debug!(%peer, "perf run refused: the peer has one running");
            continue;
        }
        started.push_back(now);
        // Lets the peer run again when the task ends, however it ends (a panic included).
        let guard = Running {
            set: running.clone(),
            peer,
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                () = cancel.cancelled() => Err("the node is stopping".to_string()),
                r = tokio::time::timeout(PERF_RUN_TIMEOUT, serve_run(stream)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(format!("longer than {PERF_RUN_TIMEOUT:?}")),
                },
            };
            drop(guard);
            drop(slot);
            match outcome {
                Ok((uploaded, sent)) => debug!(%peer, uploaded, sent, "perf run served"),
                Err(reason) => debug!(%peer, %reason, "perf run cut off"),
            }
        });
    }
}

/// A peer's place in the set of peers with a run going, given up on drop.
struct Running {
    set: Arc<Mutex<HashSet<PeerId>>>,
    peer: PeerId,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.set.lock().remove(&self.peer);
    }
}

/// One run, server side: `(bytes read, bytes sent)`.
async fn serve_run(mut stream: libp2p::Stream) -> Result<(u64, u64), String> {
    let idle = || format!("nothing for {PERF_IDLE_TIMEOUT:?}");
    let mut ask = [0u8; 8];
    tokio::time::timeout(PERF_IDLE_TIMEOUT, stream.read_exact(&mut ask))
        .await
        .map_err(|_| idle())?
        .map_err(|e| e.to_string())?;
    let asked = u64::from_be_bytes(ask);
    if asked > PERF_MAX_BYTES {
        return Err(format!(
            "asked for {asked} bytes, more than {PERF_MAX_BYTES}"
        ));
    }
    let mut buf = vec![0u8; PERF_CHUNK];
    let mut uploaded = 0u64;
    loop {
        let n = tokio::time::timeout(PERF_IDLE_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| idle())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        uploaded += n as u64;
        if uploaded > PERF_MAX_BYTES {
            return Err(format!("uploaded more than {PERF_MAX_BYTES} bytes"));
        }
    }
    buf.fill(0);
    write_zeros(&mut stream, asked, &buf)
        .await
        .map_err(|e| e.to_string())?;
    stream.close().await.map_err(|e| e.to_string())?;
    Ok((uploaded, asked))
}

/// Writes `n` zero bytes, `zeros.len()` at a time.
async fn write_zeros(stream: &mut libp2p::Stream, n: u64, zeros: &[u8]) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = usize::try_from(left).map_or(zeros.len(), |l| l.min(zeros.len()));
        stream.write_all(&zeros[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bytes_over_time() {
        let r = PerfReport {
            uploaded: 1_000_000,
            downloaded: 2_000_000,
            upload_time: Duration::from_millis(500),
            download_time: Duration::from_secs(1),
            download_timed: 1_500_000,
        };
        assert!((r.upload_rate() - 2_000_000.0).abs() < 1.0);
        assert!(
            (r.download_rate() - 1_500_000.0).abs() < 1.0,
            "the first read's bytes came before the clock started"
        );
        let one_read = PerfReport {
            download_time: Duration::ZERO,
            download_timed: 0,
            ..r
        };
        assert_eq!(one_read.download_rate(), 0.0, "not measured, not infinite");
    }
}
