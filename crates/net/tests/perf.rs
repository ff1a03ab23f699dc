//! The `/perf/1.0.0` self-test between nodes on loopback: what a run measures, and the limits
//! that bound what serving one costs (`crates/net/src/perf.rs`). The wire format is the libp2p
//! perf specification's (`perf/perf.md`): a big-endian `u64` of bytes wanted back, the upload,
//! a half-close, then the download. The raw client below writes it by hand, so the server is
//! checked against the specification rather than against our own client.

use std::time::Duration;

use cairn_net::{
    Keypair, Muxers, NetConfig, NetEvent, NetworkHandle,
    perf::{PERF_MAX_BYTES, PERF_PROTOCOL, PerfError},
    start,
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Swarm, multiaddr::Protocol, swarm::SwarmEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const MIB: u64 = 1024 * 1024;

async fn node(
    muxers: Muxers,
    perf_server: bool,
    cancel: &CancellationToken,
) -> (NetworkHandle, mpsc::Receiver<NetEvent>) {
    let config = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        muxers,
        perf_server,
        ..NetConfig::default()
    };
    let (h, ev, _task) = start(Keypair::generate_secp256k1(), config, cancel.child_token())
        .await
        .unwrap();
    (h, ev)
}

/// Keeps a node's events flowing (a full event channel pauses its swarm).
fn drain(mut ev: mpsc::Receiver<NetEvent>) {
    tokio::spawn(async move { while ev.recv().await.is_some() {} });
}

async fn connected_pair(
    muxers: Muxers,
    b_serves: bool,
    cancel: &CancellationToken,
) -> (NetworkHandle, NetworkHandle) {
    let (a, ev_a) = node(muxers, true, cancel).await;
    let (b, ev_b) = node(muxers, b_serves, cancel).await;
    drain(ev_a);
    drain(ev_b);
    let addr = b.listen_addrs().await.unwrap()[0].clone();
    assert_eq!(a.dial(addr).await.unwrap(), b.local_peer_id());
    (a, b)
}

#[tokio::test]
async fn a_run_moves_and_times_what_was_asked_each_way() {
    for muxers in [Muxers::Yamux, Muxers::Mplex] {
        let cancel = CancellationToken::new();
        let (a, b) = connected_pair(muxers, true, &cancel).await;
        let report = tokio::time::timeout(WAIT, a.perf(b.local_peer_id(), 3 * MIB, 5 * MIB + 7))
            .await
            .expect("the run ended in time")
            .expect("the run succeeded");
        assert_eq!(report.uploaded, 3 * MIB, "{muxers:?}");
        assert_eq!(report.downloaded, 5 * MIB + 7, "{muxers:?}");
        assert!(report.upload_time > Duration::ZERO && report.download_time > Duration::ZERO);
        assert!(report.upload_rate() > 0.0 && report.download_rate() > 0.0);
        // Nothing each way is a round trip.
        let empty = a.perf(b.local_peer_id(), 0, 0).await.unwrap();
        assert_eq!((empty.uploaded, empty.downloaded), (0, 0));
        cancel.cancel();
    }
}

#[tokio::test]
async fn a_run_over_the_limit_is_refused_before_anything_is_sent() {
    let cancel = CancellationToken::new();
    let (a, b) = connected_pair(Muxers::Yamux, true, &cancel).await;
    for (up, down) in [(PERF_MAX_BYTES + 1, 0), (0, PERF_MAX_BYTES + 1)] {
        let r = a.perf(b.local_peer_id(), up, down).await;
        assert!(matches!(r, Err(PerfError::TooLarge)), "{r:?}");
    }
    cancel.cancel();
}

#[tokio::test]
async fn a_node_that_does_not_serve_refuses_the_protocol() {
    let cancel = CancellationToken::new();
    let (a, b) = connected_pair(Muxers::Yamux, false, &cancel).await;
    let r = tokio::time::timeout(WAIT, a.perf(b.local_peer_id(), MIB, MIB))
        .await
        .expect("refused in time");
    assert!(matches!(r, Err(PerfError::Open { .. })), "{r:?}");
    cancel.cancel();
}

/// A node that serves the test, for raw clients: its handle (the node runs while it is
/// held), peer id and address with it.
async fn serving_node(cancel: &CancellationToken) -> (NetworkHandle, PeerId, Multiaddr) {
    let (b, ev_b) = node(Muxers::Yamux, true, cancel).await;
    drain(ev_b);
    let peer = b.local_peer_id();
    let addr = b.listen_addrs().await.unwrap()[0]
        .clone()
        .with(Protocol::P2p(peer));
    (b, peer, addr)
}

/// A swarm that speaks only raw streams, with the node's transport: a hand-written client.
struct Raw {
    control: libp2p_stream::Control,
}

impl Raw {
    async fn connect(to: Multiaddr) -> Raw {
        let key = Keypair::generate_secp256k1();
        let id = key.public().to_peer_id();
        let transport = cairn_net::transport::build(&key, Muxers::Yamux).unwrap();
        let mut swarm = Swarm::new(
            transport,
            libp2p_stream::Behaviour::new(),
            id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(60)),
        );
        let control = swarm.behaviour().new_control();
        swarm.dial(to).unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => return,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("connected in time");
        tokio::spawn(async move {
            loop {
                let _ = swarm.select_next_some().await;
            }
        });
        Raw { control }
    }

    /// Opens a run asking for `download` bytes and sends `upload` bytes, without closing. A
    /// server that refuses the run may reset the stream before the writes are done: they are
    /// not checked here, what comes back is.
    async fn start(&mut self, peer: PeerId, download: u64, upload: usize) -> libp2p::Stream {
        let mut s = tokio::time::timeout(WAIT, self.control.open_stream(peer, PERF_PROTOCOL))
            .await
            .expect("opened in time")
            .expect("opened");
        let _ = s.write_all(&download.to_be_bytes()).await;
        let _ = s.write_all(&vec![1u8; upload]).await;
        let _ = s.flush().await;
        s
    }
}

/// Reads a stream to its end (or its reset): the bytes that came.
async fn read_all(s: &mut libp2p::Stream) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await
    .expect("the stream ended in time");
    got
}

/// The server follows the specification byte for byte, and serves one run per peer at a time:
/// a second stream while the first is open is dropped unanswered, and the peer is served again
/// once its first run is over.
#[tokio::test]
async fn a_peer_gets_one_run_at_a_time() {
    let cancel = CancellationToken::new();
    let (_node, peer, addr) = serving_node(&cancel).await;
    let mut raw = Raw::connect(addr).await;

    let mut first = raw.start(peer, 100_000, 70_000).await;
    let mut second = raw.start(peer, 1_000, 10).await;
    second.close().await.ok();
    assert_eq!(
        read_all(&mut second).await,
        0,
        "the second run is not answered"
    );

    first.close().await.unwrap();
    assert_eq!(
        read_all(&mut first).await,
        100_000,
        "the first is answered in full"
    );

    // Once the first run is over (the server lets go of it just after its last byte), the peer
    // is served again.
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let mut again = raw.start(peer, 4_096, 0).await;
            again.close().await.ok();
            if read_all(&mut again).await == 4_096 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(served.is_ok(), "served again after the first run");

    // Asking for more than the limit ends the stream unanswered.
    let mut greedy = raw.start(peer, PERF_MAX_BYTES + 1, 0).await;
    greedy.close().await.ok();
    assert_eq!(read_all(&mut greedy).await, 0);
    cancel.cancel();
}

/// A node serves at most `PERF_SERVER_RUNS_PER_MINUTE` runs a minute from all peers together:
/// the next is dropped unanswered, whoever asks.
#[tokio::test]
async fn a_node_serves_a_bounded_number_of_runs_a_minute() {
    let cancel = CancellationToken::new();
    let (_node, peer, addr) = serving_node(&cancel).await;
    for i in 0..=cairn_net::perf::PERF_SERVER_RUNS_PER_MINUTE {
        // A peer of its own each time: no run waits for another's.
        let mut raw = Raw::connect(addr.clone()).await;
        let mut run = raw.start(peer, 10, 0).await;
        run.close().await.ok();
        let want = if i < cairn_net::perf::PERF_SERVER_RUNS_PER_MINUTE {
            10
        } else {
            0
        };
        assert_eq!(read_all(&mut run).await, want, "run {i}");
    }
    cancel.cancel();
}

/// The client side: only a connected peer is measured, and one run at a time.
#[tokio::test]
async fn a_node_measures_connected_peers_one_at_a_time() {
    let cancel = CancellationToken::new();
    let (a, b) = connected_pair(Muxers::Yamux, true, &cancel).await;
    let stranger = PeerId::random();
    let r = a.perf(stranger, 0, 0).await;
    assert!(
        matches!(r, Err(PerfError::NotConnected(p)) if p == stranger),
        "{r:?}"
    );
    let (one, two) = tokio::join!(
        a.perf(b.local_peer_id(), MIB, MIB),
        a.perf(b.local_peer_id(), MIB, MIB)
    );
    assert!(one.is_ok(), "{one:?}");
    assert!(matches!(two, Err(PerfError::Busy)), "{two:?}");
    // Free again once the first is done.
    assert!(a.perf(b.local_peer_id(), 0, MIB).await.is_ok());
    cancel.cancel();
}
