//! The connection loop of the REST API and of the metrics listener.
//!
//! `axum::serve` runs hyper without a timer, which switches off hyper's header read timeout,
//! and it has no limit on connections and no write deadline (found by review). So a client that
//! sent half a request head and stopped held a socket and a task for good, a thousand of them
//! used up the process's file descriptors (segment files, libp2p connections and the address
//! book then failed to open), a client that stopped reading a download held it for good, and one
//! half-sent head made every graceful shutdown wait its whole grace period.
//!
//! Here each connection is served by hyper's HTTP/1 connection with
//! * a timer and [`HEADER_READ_TIMEOUT`]: a request head must arrive whole within it, and an
//!   idle keep-alive connection (hyper starts the same timer while it waits for the next head)
//!   is closed after it;
//! * a write deadline on the socket, [`WRITE_STALL_TIMEOUT`]: a write that makes no progress
//!   for that long fails, and the connection with it;
//! * at most [`MAX_HTTP_CONNECTIONS`] at once: beyond it the loop stops accepting, and new
//!   connections wait in the kernel's backlog until one ends.
//!
//! On cancel the loop stops accepting and every connection is shut down gracefully: an idle one
//! closes at once, one with a request in flight after its answer. The caller bounds the wait.

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Connections served at once, per listener. Far more than the CLI, scripts or a scraper use;
/// low enough that a client opening sockets in a loop cannot take the file descriptors the
/// store and the network need (a common soft limit is 1024).
pub const MAX_HTTP_CONNECTIONS: usize = 256;

/// How long a request head may take to arrive, and how long a keep-alive connection may wait
/// idle for the next one: 10 s is ample for a head of a few hundred bytes on any link, and a
/// client that comes back later opens a new connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may make no progress before the connection is closed: a
/// download whose client stopped reading ends here instead of holding its read-ahead, a task and
/// a socket for good. A minute covers a client paused by its own disk or a slow link.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the loop waits after an `accept` error before trying again: the usual cause is
/// running out of file descriptors, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `cancel` fires, then shuts the connections down
/// gracefully and returns once they have ended. See the module docs.
pub(crate) async fn serve_router(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> io::Result<()> {
    serve_router_with(listener, router, cancel, Limits::default()).await
}

/// The limits of [`serve_router`] (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    write_stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_HTTP_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
        }
    }
}

/// [`serve_router`] within `limits`.
async fn serve_router_with(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    limits: Limits,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_stall_timeout));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(
                TokioIo::new(Box::pin(stream)),
                TowerToHyperService::new(router.clone()),
            );
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    async fn server(
        router: Router,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        server_with(router, Limits::default()).await
    }

    async fn server_with(
        router: Router,
        limits: Limits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                serve_router_with(listener, router, cancel, limits)
                    .await
                    .expect("serve");
            }
        });
        (addr, cancel, task)
    }

    /// Reads until the server closes the connection; returns what came.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("the server kept the connection open");
        got
    }

    /// A client that sends half a request head and stops is disconnected after
    /// HEADER_READ_TIMEOUT (found by review: it held the socket for good), and the server still
    /// answers others meanwhile.
    #[tokio::test]
    async fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
        let (addr, cancel, task) = server(Router::new().route("/x", get(|| async { "x" }))).await;
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled
            .write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .expect("write");
        let started = tokio::time::Instant::now();
        let mut other = TcpStream::connect(addr).await.expect("connect");
        other
            .write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = read_to_close(&mut other).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        let got = read_to_close(&mut stalled).await;
        assert!(
            !got.starts_with(b"HTTP/1.1 200"),
            "a half head was answered"
        );
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1));
        cancel.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the server did not stop")
            .expect("the server task failed");
    }

    /// On cancel, an idle keep-alive connection does not hold the server: it stops at once.
    #[tokio::test]
    async fn a_cancelled_server_closes_idle_connections_and_returns() {
        let (addr, cancel, task) = server(Router::new().route("/x", get(|| async { "x" }))).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.expect("answer");
        assert_eq!(&first, b"HTTP/1.1 200");
        cancel.cancel();
        tokio::time::timeout(HEADER_READ_TIMEOUT / 2, task)
            .await
            .expect("the server waited on an idle connection")
            .expect("the server task failed");
    }

    /// No more than the limit of connections are served at once (MAX_HTTP_CONNECTIONS; 4
    /// here): the next waits until one ends, then is served.
    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        const LIMIT: usize = 4;
        let router = Router::new().route("/x", get(|| async { "x" }));
        let limits = Limits {
            max_connections: LIMIT,
            ..Limits::default()
        };
        let (addr, cancel, task) = server_with(router, limits).await;
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // A whole request answered, so the connection is surely accepted and served.
            s.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .expect("write");
            let mut first = [0u8; 12];
            s.read_exact(&mut first).await.expect("answer");
            held.push(s);
        }
        let mut next = TcpStream::connect(addr).await.expect("connect (backlog)");
        next.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 12];
        let early =
            tokio::time::timeout(Duration::from_millis(300), next.read_exact(&mut first)).await;
        assert!(early.is_err(), "served beyond the limit");
        drop(held.pop());
        let answer = read_to_close(&mut next).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        cancel.cancel();
        drop(held);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the server did not stop")
            .expect("the server task failed");
    }

    /// Sends `()` when dropped.
    struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    /// A client that asks for a large download and stops reading is cut off once a write has
    /// made no progress for the write deadline (1 s here; WRITE_STALL_TIMEOUT by default): the
    /// server drops the response body (found by review: it held it, and the read-ahead behind
    /// it, for good).
    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off() {
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 4096; // 256 MiB: far more than the socket buffers hold
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
        let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
        let router = Router::new().route(
            "/big",
            get(move || {
                let guard = OnDrop(dropped_tx.lock().expect("lock").take());
                let chunks = futures::stream::unfold((0usize, guard), |(n, guard)| async move {
                    (n < CHUNKS).then(|| {
                        let chunk =
                            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![0u8; CHUNK]));
                        (chunk, (n + 1, guard))
                    })
                });
                async move { axum::body::Body::from_stream(chunks) }
            }),
        );
        let limits = Limits {
            write_stall_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let (addr, cancel, task) = server_with(router, limits).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 12];
        client.read_exact(&mut first).await.expect("answer");
        assert_eq!(&first, b"HTTP/1.1 200");
        // The client reads nothing more.
        tokio::time::timeout(WAIT, dropped)
            .await
            .expect("the server still holds the download of a client that stopped reading")
            .expect("the body was dropped");
        let got = read_to_close(&mut client).await;
        assert!(got.len() < CHUNK * CHUNKS, "the whole body came");
        cancel.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the server did not stop")
            .expect("the server task failed");
    }
}
