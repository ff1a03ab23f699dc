//! The per-connection half of the protocol: streams, frames, and nothing else.
//!
//! One [`Handler`] runs inside each connection's task. It
//! * accepts inbound `/codex/blockexc/1.0.0` streams (up to
//!   [`Config::max_inbound_streams`]) and reads frames from each until it ends;
//! * lazily opens **one** outbound stream the first time it has something to send, writes every
//!   frame on it in order, and opens a new one if the remote closes it (the reference closes a
//!   stream after a bad frame and ignores anything written on it afterwards, so a closed read
//!   side means "reopen before writing again");
//! * reads on its own outbound stream too, because a peer may answer on either
//!   (`codex-protocol.md` §2.1).
//!
//! Frames are decoded and checked here ([`Message::decode`], which hashes delivered blocks), on
//! the connection's task rather than the swarm's. A frame that breaks a limit or does not decode
//! closes the stream it came on and is reported as a [`Violation`]; the connection and the
//! peer's other streams carry on, as in the reference. So does a frame that has started (its
//! first byte arrived) and is not complete within [`Config::frame_read_timeout`] plus the time
//! its arrived bytes take at [`crate::MIN_FRAME_BYTES_PER_SEC`] ([`Violation::FrameTimeout`]);
//! a stream that rests between frames has no deadline.
//!
//! Backpressure: the handler reads the next frame only after the previous message has been
//! handed to the behaviour, and the swarm takes handler events only as fast as its owner polls
//! it, so a slow node stops reading and TCP flow control pushes back on the sender.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    AsyncReadExt, FutureExt, StreamExt,
    future::BoxFuture,
    io::WriteHalf,
    stream::{BoxStream, SelectAll},
};
use libp2p::{
    Stream,
    core::upgrade::ReadyUpgrade,
    swarm::{
        ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::{
    Config, DecodeError, Frame, MAX_FRAMES_IN_PROGRESS_PER_CONNECTION, Message, Metrics, PROTOCOL,
    Violation,
    codec::{FrameError, read_frame_body, read_frame_len, read_frame_start, wire_len, write_frame},
};

/// Identifies one send request until it is written or has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendId(pub(crate) u64);

/// Instructions from the behaviour.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Write this frame on the outbound stream.
    Send {
        /// Reported back in [`ToBehaviour::Sent`] or [`ToBehaviour::SendFailed`].
        id: SendId,
        /// The frame.
        frame: Frame,
    },
}

/// Reports to the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// A checked message arrived.
    Received(Box<Message>),
    /// A frame was written and flushed.
    Sent(SendId),
    /// A frame could not be written (stream failed, or the peer does not speak the protocol).
    SendFailed(SendId),
    /// The peer broke the protocol; the offending stream was closed.
    Violation(Violation),
}

/// What one reading stream yields.
enum ReadItem {
    Message(Box<Message>),
    /// The stream ended: cleanly (`None`) or by a violation. `generation` is `Some` for the
    /// read side of our own outbound stream.
    End {
        violation: Option<Violation>,
        generation: Option<u64>,
    },
}

/// Something frames are read from, which can be closed after a violation. Closing explicitly
/// (rather than only dropping) makes the muxer tell the peer at once — a Yamux FIN or an Mplex
/// close, as the reference sends — so the peer reopens before its next write.
trait Closable: futures::AsyncRead + Unpin + Send + 'static {
    fn close_stream(&mut self) -> BoxFuture<'_, ()>;
}

impl Closable for Stream {
    fn close_stream(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = futures::AsyncWriteExt::close(self).await;
        }
        .boxed()
    }
}

impl Closable for futures::io::ReadHalf<Stream> {
    fn close_stream(&mut self) -> BoxFuture<'_, ()> {
        // The write half is ours and closes when the handler drops it (it learns of the end
        // through the `End` item).
        futures::future::ready(()).boxed()
    }
}

/// How long closing a stream after a violation may take before the stream is dropped instead.
const STREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frame memory is counted in units of this many bytes, a semaphore permit each (so the
/// 128 MiB default is 131,072 permits, and any frame's count fits a `u32`).
const FRAME_MEMORY_UNIT_BYTES: usize = 1024;

/// The budget for frames being read ([`Config::max_frame_memory_bytes`]), shared by every
/// connection of one [`crate::Behaviour`].
#[derive(Debug, Clone)]
pub(crate) struct FrameMemory {
    permits: Arc<Semaphore>,
    /// All of them: a frame never asks for more (it would wait for good).
    units: u32,
}

impl FrameMemory {
    pub(crate) fn new(config: &Config) -> FrameMemory {
        let bytes = config.max_frame_memory_bytes.max(config.max_frame_bytes);
        let units = u32::try_from(bytes.div_ceil(FRAME_MEMORY_UNIT_BYTES)).unwrap_or(u32::MAX);
        FrameMemory {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Takes room for a frame of `len` bytes, waiting until there is some; `None` if the
    /// budget is gone (never, in practice).
    async fn take(&self, len: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let units = u32::try_from(len.div_ceil(FRAME_MEMORY_UNIT_BYTES))
            .unwrap_or(u32::MAX)
            .min(self.units);
        match self.permits.try_acquire_many(units) {
            Ok(permit) => Some(permit),
            Err(_) => {
                debug!(len, "frame waits for the node's frame memory");
                self.permits.acquire_many(units).await.ok()
            }
        }
    }
}

/// The limits a reading stream applies, copied from [`Config`].
#[derive(Debug, Clone)]
struct ReadLimits {
    max_frame_bytes: usize,
    frame_read_timeout: Duration,
    /// Frames of this connection being read at once ([`MAX_FRAMES_IN_PROGRESS_PER_CONNECTION`]),
    /// shared by its streams.
    frames: Arc<Semaphore>,
    /// Bytes of frames being read, shared by all connections.
    memory: FrameMemory,
}

impl From<&Config> for ReadLimits {
    fn from(config: &Config) -> ReadLimits {
        ReadLimits {
            max_frame_bytes: config.max_frame_bytes,
            frame_read_timeout: config.frame_read_timeout,
            frames: Arc::new(Semaphore::new(MAX_FRAMES_IN_PROGRESS_PER_CONNECTION)),
            memory: FrameMemory::new(config),
        }
    }
}

/// Reads and decodes the next frame of `reader`. `Err(None)`: the stream ended between frames
/// or failed; `Err(Some(_))`: the peer broke the protocol, and the stream has been closed.
async fn read_next<R>(
    reader: &mut R,
    limits: ReadLimits,
    metrics: &Metrics,
) -> Result<Box<Message>, Option<Violation>>
where
    R: Closable,
{
    // No deadline for the first byte: a stream may rest between frames as long as it likes.
    let first = match read_frame_start(reader).await {
        Ok(Some(first)) => first,
        Ok(None) => return Err(None),
        Err(e) => {
            debug!(error = %e, "blockexc stream read failed");
            return Err(None);
        }
    };
    // A connection reads at most MAX_FRAMES_IN_PROGRESS_PER_CONNECTION frames at once: a peer
    // that starts a large frame on each of its streams and never ends them held that many
    // frame buffers (found by review: 8 streams × 8 MiB for 30 s, per connection). The others
    // wait here, their bytes left in the muxer's window, and their deadline starts when their
    // turn comes: a peer is not blamed for our waiting.
    let Ok(_turn) = limits.frames.acquire().await else {
        return Err(None);
    };
    // Once a frame has started, all of it must arrive within the deadline: the bytes of a
    // frame that never completes would otherwise stay buffered for the life of the connection.
    let deadline = limits.frame_read_timeout;
    let violation = 'read: {
        let prefix = read_frame_len(reader, first, limits.max_frame_bytes);
        let len = match tokio::time::timeout(deadline, prefix).await {
            Err(_elapsed) => break 'read Violation::FrameTimeout { after: deadline },
            Ok(Ok(len)) => len,
            Ok(Err(e)) => match frame_violation(e) {
                Some(v) => break 'read v,
                None => return Err(None),
            },
        };
        // Room for the body in the node's frame memory, before any of it is read: the wait is
        // ours, so the body's deadline starts after it.
        let Some(_memory) = limits.memory.take(len).await else {
            return Err(None);
        };
        // The body's deadline moves on as its bytes arrive: the deadline plus the time those
        // bytes take at MIN_FRAME_BYTES_PER_SEC. A large frame of an honest peer on a slow link
        // is read; one that stalls is given up a deadline after what it sent stopped buying it
        // time. (A deadline from the announced length let a peer announce 8 MiB, send nothing
        // and hold that much frame memory for 158 s; found by review.)
        let started = tokio::time::Instant::now();
        let received = AtomicUsize::new(0);
        let mut counted = Counted {
            inner: reader,
            read: &received,
        };
        let body = read_frame_body(&mut counted, len);
        futures::pin_mut!(body);
        let due = || deadline + crate::frame_body_allowance(received.load(Ordering::Relaxed));
        let read = loop {
            let until = due();
            if let Ok(read) = tokio::time::timeout_at(started + until, &mut body).await {
                break Ok(read);
            }
            if due() <= until {
                break Err(until);
            }
        };
        match read {
            Err(after) => Violation::FrameTimeout { after },
            Ok(Ok(body)) => {
                metrics.bytes_received.inc_by(wire_len(body.len) as u64);
                metrics.messages_received.inc();
                match Message::decode_parts(body) {
                    Ok(m) => return Ok(Box::new(m)),
                    Err(e) => Violation::Decode(e),
                }
            }
            Ok(Err(e)) => match frame_violation(e) {
                Some(v) => v,
                None => return Err(None),
            },
        }
    };
    // Bounded: a peer that stops reading can stall the close, and the stream's inbound slot
    // would be held meanwhile (found by review). After the bound the stream is simply dropped.
    let _ = tokio::time::timeout(STREAM_CLOSE_TIMEOUT, reader.close_stream()).await;
    Err(Some(violation))
}

/// A reader that counts the bytes read through it (a frame body's deadline follows them).
struct Counted<'a, R> {
    inner: &'a mut R,
    read: &'a AtomicUsize,
}

impl<R: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.read.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

/// The violation a frame read failed with; `None` if the stream failed instead (logged here).
fn frame_violation(e: FrameError) -> Option<Violation> {
    match e {
        FrameError::TooLarge { len, max } => Some(Violation::FrameTooLarge { len, max }),
        FrameError::BadPrefix => Some(Violation::BadFramePrefix),
        FrameError::Malformed(what) => Some(Violation::Decode(DecodeError::Framing(what))),
        FrameError::Io(e) => {
            debug!(error = %e, "blockexc stream read failed");
            None
        }
    }
}

/// A finished write: the writer back, the send, and the bytes written.
type WriteResult = (WriteHalf<Stream>, SendId, io::Result<usize>);

enum Outbound {
    /// No stream; one is opened when a frame is queued.
    Idle,
    /// A stream has been requested.
    Opening,
    /// Open and not writing.
    Ready {
        writer: WriteHalf<Stream>,
        generation: u64,
    },
    /// Writing a frame.
    Writing {
        write: BoxFuture<'static, WriteResult>,
        generation: u64,
    },
}

/// The connection handler. See the module docs.
pub struct Handler {
    config: Config,
    metrics: Metrics,
    readers: SelectAll<BoxStream<'static, ReadItem>>,
    inbound_streams: usize,
    outbound: Outbound,
    /// Generation of the current outbound stream; bumped per stream so a stale end-of-stream is
    /// recognised.
    generation: u64,
    /// The read side of the current outbound stream ended: drop the writer after the current
    /// write.
    outbound_closed: bool,
    queue: VecDeque<(SendId, Frame)>,
    events: VecDeque<ToBehaviour>,
    /// The peer refused the protocol; sends fail at once.
    unsupported: bool,
    /// Turns to read a frame, shared by the connection's streams ([`read_next`]).
    frames: Arc<Semaphore>,
    /// Room for frames being read, shared by every connection of the behaviour.
    memory: FrameMemory,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("inbound_streams", &self.inbound_streams)
            .field("queued", &self.queue.len())
            .field("unsupported", &self.unsupported)
            .finish_non_exhaustive()
    }
}

impl Handler {
    pub(crate) fn new(config: Config, metrics: Metrics, memory: FrameMemory) -> Handler {
        Handler {
            memory,
            config,
            metrics,
            readers: SelectAll::new(),
            inbound_streams: 0,
            outbound: Outbound::Idle,
            generation: 0,
            outbound_closed: false,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            unsupported: false,
            frames: Arc::new(Semaphore::new(MAX_FRAMES_IN_PROGRESS_PER_CONNECTION)),
        }
    }

    fn add_reader<R>(&mut self, reader: R, generation: Option<u64>)
    where
        R: Closable,
    {
        let limits = ReadLimits {
            max_frame_bytes: self.config.max_frame_bytes,
            frame_read_timeout: self.config.frame_read_timeout,
            frames: self.frames.clone(),
            memory: self.memory.clone(),
        };
        let metrics = self.metrics.clone();
        let stream = futures::stream::unfold(Some((reader, metrics)), move |state| {
            let limits = limits.clone();
            async move {
                let (mut reader, metrics) = state?;
                match read_next(&mut reader, limits, &metrics).await {
                    Ok(m) => Some((ReadItem::Message(m), Some((reader, metrics)))),
                    Err(violation) => Some((
                        ReadItem::End {
                            violation,
                            generation,
                        },
                        None,
                    )),
                }
            }
        });
        self.readers.push(stream.boxed());
    }

    fn fail_queued(&mut self) {
        for (id, _) in self.queue.drain(..) {
            self.events.push_back(ToBehaviour::SendFailed(id));
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Block-exchange peers stay connected, as with the reference; connection limits and
        // the peer manager decide who goes.
        true
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::Send { id, frame } => {
                if self.unsupported {
                    self.events.push_back(ToBehaviour::SendFailed(id));
                } else {
                    self.queue.push_back((id, frame));
                }
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.inbound_streams >= self.config.max_inbound_streams {
                    // Dropping the stream closes it.
                    self.events
                        .push_back(ToBehaviour::Violation(Violation::TooManyStreams {
                            max: self.config.max_inbound_streams,
                        }));
                    return;
                }
                self.inbound_streams += 1;
                self.add_reader(stream, None);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                self.generation += 1;
                self.outbound_closed = false;
                let (reader, writer) = stream.split();
                self.add_reader(reader, Some(self.generation));
                self.outbound = Outbound::Ready {
                    writer,
                    generation: self.generation,
                };
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.outbound = Outbound::Idle;
                if matches!(error, StreamUpgradeError::NegotiationFailed) {
                    debug!("peer does not speak {PROTOCOL}");
                    self.unsupported = true;
                } else {
                    debug!(%error, "opening a blockexc stream failed");
                }
                self.fail_queued();
            }
            _ => {}
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
            }

            // Writing side.
            match std::mem::replace(&mut self.outbound, Outbound::Idle) {
                Outbound::Idle if !self.queue.is_empty() => {
                    self.outbound = Outbound::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
                    });
                }
                Outbound::Ready { writer, generation } if self.outbound_closed => {
                    drop(writer);
                    debug!(
                        generation,
                        "peer closed our blockexc stream; reopening on demand"
                    );
                    self.outbound = Outbound::Idle;
                    continue;
                }
                Outbound::Ready {
                    mut writer,
                    generation,
                } => match self.queue.pop_front() {
                    Some((id, frame)) => {
                        let write = async move {
                            let r = write_frame(&mut writer, &frame).await;
                            (writer, id, r.map(|()| frame.len()))
                        }
                        .boxed();
                        self.outbound = Outbound::Writing { write, generation };
                        continue;
                    }
                    None => self.outbound = Outbound::Ready { writer, generation },
                },
                Outbound::Writing {
                    mut write,
                    generation,
                } => match write.poll_unpin(cx) {
                    Poll::Ready((writer, id, Ok(len))) => {
                        self.metrics.bytes_sent.inc_by(len as u64);
                        self.metrics.messages_sent.inc();
                        self.outbound = Outbound::Ready { writer, generation };
                        return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                            ToBehaviour::Sent(id),
                        ));
                    }
                    Poll::Ready((_, id, Err(e))) => {
                        debug!(error = %e, "blockexc write failed");
                        self.outbound = Outbound::Idle;
                        return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                            ToBehaviour::SendFailed(id),
                        ));
                    }
                    Poll::Pending => self.outbound = Outbound::Writing { write, generation },
                },
                other => self.outbound = other,
            }

            // Reading side: one message at a time, handed up before the next is read.
            match self.readers.poll_next_unpin(cx) {
                Poll::Ready(Some(ReadItem::Message(m))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                        ToBehaviour::Received(m),
                    ));
                }
                Poll::Ready(Some(ReadItem::End {
                    violation,
                    generation,
                })) => {
                    match generation {
                        None => self.inbound_streams = self.inbound_streams.saturating_sub(1),
                        Some(g) if g == self.generation => self.outbound_closed = true,
                        Some(_) => {}
                    }
                    if let Some(v) = violation {
                        self.events.push_back(ToBehaviour::Violation(v));
                    }
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use bytes::Bytes;
    use cairn_core::{BlockAddress, cid::block_cid};
    use futures::{SinkExt, TryStreamExt, channel::mpsc, stream::IntoAsyncRead};
    use libp2p::{Multiaddr, Swarm, SwarmBuilder, noise, swarm::SwarmEvent, tcp, yamux};
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::{Behaviour, Event, FRAME_READ_TIMEOUT, WantEntry};

    type Chunks = mpsc::Receiver<io::Result<Vec<u8>>>;

    /// A stream the test feeds chunk by chunk; it stays open (and silent) while the sender lives.
    struct TestStream {
        inner: IntoAsyncRead<Chunks>,
        closed: Arc<AtomicBool>,
        /// Its close never completes (a peer that stopped reading).
        close_hangs: bool,
    }

    impl futures::AsyncRead for TestStream {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl Closable for TestStream {
        fn close_stream(&mut self) -> BoxFuture<'_, ()> {
            if self.close_hangs {
                return futures::future::pending().boxed();
            }
            self.closed.store(true, Ordering::SeqCst);
            futures::future::ready(()).boxed()
        }
    }

    /// Closing a stream after a violation is bounded: a close that never completes does not
    /// hold the read (and the stream's slot) for good.
    #[tokio::test(start_paused = true)]
    async fn a_close_that_hangs_does_not_hold_the_stream() {
        let limits = ReadLimits::from(&Config::default());
        let metrics = Metrics::default();
        let (mut tx, mut stream, _) = test_stream();
        stream.close_hangs = true;
        tx.send(Ok(partial_frame())).await.unwrap();
        let started = Instant::now();
        let got = timeout(
            10 * FRAME_READ_TIMEOUT,
            read_next(&mut stream, limits, &metrics),
        )
        .await
        .expect("the read waited on the close for good");
        assert!(
            matches!(got, Err(Some(Violation::FrameTimeout { .. }))),
            "{got:?}"
        );
        assert!(
            started.elapsed() <= FRAME_READ_TIMEOUT + STREAM_CLOSE_TIMEOUT + Duration::from_secs(1)
        );
        drop(tx);
    }

    fn test_stream() -> (
        mpsc::Sender<io::Result<Vec<u8>>>,
        TestStream,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let closed = Arc::new(AtomicBool::new(false));
        let stream = TestStream {
            inner: rx.into_async_read(),
            closed: closed.clone(),
            close_hangs: false,
        };
        (tx, stream, closed)
    }

    fn want(i: u64) -> Message {
        Message::wants(
            vec![WantEntry::have(BlockAddress::Leaf {
                tree: block_cid(b"t"),
                index: i,
            })],
            false,
        )
    }

    /// A frame announcing a 993-byte body (one 990-byte want-list field) of which only the
    /// first 10 bytes follow: a peer that starts a frame and stops.
    fn partial_frame() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(unsigned_varint::encode::usize(
            993,
            &mut unsigned_varint::encode::usize_buffer(),
        ));
        bytes.extend_from_slice(&[0x0a, 0xde, 0x07]); // field 1, length-delimited, 990 bytes
        bytes.extend_from_slice(&[0; 7]);
        bytes
    }

    /// With the default deadline (and tokio's clock paused, so nothing really waits): a stream
    /// that rests between frames for ten deadlines is not given up, and a frame that then
    /// arrives in two pieces 20 s apart is read; a frame that starts and stalls is given up at
    /// the deadline, the stream is closed and the peer is reported for `FrameTimeout`.
    #[tokio::test(start_paused = true)]
    async fn a_started_frame_must_complete_within_the_deadline_an_idle_stream_need_not() {
        let limits = ReadLimits::from(&Config::default());
        let metrics = Metrics::default();
        let (mut tx, mut stream, closed) = test_stream();
        {
            let read = read_next(&mut stream, limits.clone(), &metrics);
            futures::pin_mut!(read);
            assert!(
                timeout(10 * FRAME_READ_TIMEOUT, &mut read).await.is_err(),
                "an idle stream ended"
            );
            let frame = want(1).to_frame().as_bytes().to_vec();
            let (head, tail) = frame.split_at(frame.len() / 2);
            tx.send(Ok(head.to_vec())).await.unwrap();
            tokio::time::sleep(Duration::from_secs(20)).await; // paused clock: advances at once
            tx.send(Ok(tail.to_vec())).await.unwrap();
            let got = timeout(FRAME_READ_TIMEOUT, &mut read)
                .await
                .expect("the frame was not read");
            assert_eq!(*got.expect("the frame was refused"), want(1));
        }
        assert!(!closed.load(Ordering::SeqCst));

        tx.send(Ok(partial_frame())).await.unwrap();
        let started = Instant::now();
        let got = timeout(
            10 * FRAME_READ_TIMEOUT,
            read_next(&mut stream, limits, &metrics),
        )
        .await
        .expect("a stalled frame was held past ten deadlines");
        assert!(
            matches!(
                got,
                Err(Some(Violation::FrameTimeout { after })) if after == FRAME_READ_TIMEOUT
            ),
            "{got:?}"
        );
        assert!(started.elapsed() <= FRAME_READ_TIMEOUT + Duration::from_secs(1));
        assert!(closed.load(Ordering::SeqCst), "the stream was not closed");
        drop(tx);
    }

    /// Review: a large frame from an honest peer on a slow link was given up after the fixed
    /// 30 s. A 3 MiB delivery (three blocks of 1 MiB) arriving at 64 KiB/s takes 48 s and is
    /// read; the same frame stalled after its first chunk is given up a deadline (plus that
    /// chunk's second) later, not after the time its whole announced length would buy.
    #[tokio::test(start_paused = true)]
    async fn a_large_frame_is_given_time_for_its_length() {
        const CHUNK: usize = 64 * 1024;
        let limits = ReadLimits::from(&Config::default());
        let metrics = Metrics::default();
        let blocks: Vec<cairn_core::Block> = (0..3u8)
            .map(|i| cairn_core::Block::data_block(Bytes::from(vec![i; 1 << 20])))
            .collect();
        let message = Message::deliveries(
            blocks
                .iter()
                .map(|b| crate::Delivery {
                    block: b.clone(),
                    address: BlockAddress::Block(*b.cid()),
                    proof: None,
                })
                .collect(),
        );
        let frame = message.to_frame().as_bytes().to_vec();
        assert!(frame.len() > 3 << 20);

        // Slow but steady: one chunk a second.
        let (mut tx, mut stream, _) = test_stream();
        let chunks: Vec<Vec<u8>> = frame.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let sender = tokio::spawn(async move {
            for c in chunks {
                tx.send(Ok(c)).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tx
        });
        let started = Instant::now();
        let got = read_next(&mut stream, limits.clone(), &metrics).await;
        assert!(
            started.elapsed() > FRAME_READ_TIMEOUT,
            "the test is too fast"
        );
        assert_eq!(*got.expect("a slow honest frame was refused"), message);
        drop(sender.await.unwrap());

        // Stalled: given up at the deadline plus what its first chunk bought (one second).
        let (mut tx, mut stream, _) = test_stream();
        tx.send(Ok(frame[..CHUNK].to_vec())).await.unwrap();
        let started = Instant::now();
        let got = timeout(
            10 * FRAME_READ_TIMEOUT,
            read_next(&mut stream, limits, &metrics),
        )
        .await
        .expect("a stalled frame was held for good");
        let bought = crate::frame_body_allowance(CHUNK);
        assert!(
            matches!(
                got,
                Err(Some(Violation::FrameTimeout { after }))
                    if after > FRAME_READ_TIMEOUT && after <= FRAME_READ_TIMEOUT + bought
            ),
            "{got:?}"
        );
        assert!(started.elapsed() <= FRAME_READ_TIMEOUT + bought + Duration::from_secs(1));
        drop(tx);
    }

    /// A connection reads at most MAX_FRAMES_IN_PROGRESS_PER_CONNECTION frames at once: with
    /// three streams each starting a frame that never ends, two are read (and given up at the
    /// deadline) while the third waits; the third's deadline starts with its turn.
    #[tokio::test(start_paused = true)]
    async fn a_connection_reads_a_bounded_number_of_frames_at_once() {
        assert_eq!(MAX_FRAMES_IN_PROGRESS_PER_CONNECTION, 2);
        let limits = ReadLimits::from(&Config::default());
        let metrics = Metrics::default();
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (mut tx, stream, _) = test_stream();
            tx.send(Ok(partial_frame())).await.unwrap();
            streams.push((tx, stream));
        }
        let started = Instant::now();
        let mut reads: futures::stream::FuturesUnordered<_> = streams
            .iter_mut()
            .enumerate()
            .map(|(i, (_, stream))| {
                let (limits, metrics) = (limits.clone(), &metrics);
                async move { (i, read_next(stream, limits, metrics).await, Instant::now()) }
            })
            .collect();
        let mut ends = Vec::new();
        while let Some((i, got, at)) = timeout(10 * FRAME_READ_TIMEOUT, reads.next())
            .await
            .unwrap()
        {
            assert!(
                matches!(got, Err(Some(Violation::FrameTimeout { .. }))),
                "{i}: {got:?}"
            );
            ends.push(at.duration_since(started));
        }
        ends.sort();
        assert_eq!(ends.len(), 3);
        // Two at the first deadline, the third a deadline later.
        assert!(
            ends[1] < FRAME_READ_TIMEOUT + Duration::from_secs(1),
            "{ends:?}"
        );
        assert!(ends[2] >= 2 * FRAME_READ_TIMEOUT, "{ends:?}");
    }

    /// Frames being read share the node's frame memory across connections: with room for one
    /// frame, a second connection's frame waits, unread, until the first is decoded, and is
    /// then read in full. Before, every connection buffered its frames whatever the others
    /// held (up to 640 MiB; found by review).
    #[tokio::test(start_paused = true)]
    async fn frames_of_all_connections_share_the_frame_memory() {
        let big = Message::wants(
            (0..100)
                .map(|i| {
                    WantEntry::have(BlockAddress::Leaf {
                        tree: block_cid(b"t"),
                        index: i,
                    })
                })
                .collect(),
            false,
        );
        let frame = big.to_frame().as_bytes().to_vec();
        assert!(frame.len() > 2 * FRAME_MEMORY_UNIT_BYTES);
        let config = Config {
            max_frame_bytes: frame.len(),
            max_frame_memory_bytes: frame.len(),
            ..Config::default()
        };
        let first_connection = ReadLimits::from(&config);
        let memory = first_connection.memory.clone();
        let other_connection = ReadLimits {
            frames: Arc::new(Semaphore::new(MAX_FRAMES_IN_PROGRESS_PER_CONNECTION)),
            ..first_connection.clone()
        };
        let metrics = Metrics::default();
        let (mut tx_a, mut a, _) = test_stream();
        let (mut tx_b, mut b, _) = test_stream();
        let (head, tail) = frame.split_at(frame.len() / 2);
        tx_a.send(Ok(head.to_vec())).await.unwrap();
        tx_b.send(Ok(frame.clone())).await.unwrap();
        let read_a = read_next(&mut a, first_connection, &metrics);
        let read_b = read_next(&mut b, other_connection, &metrics);
        futures::pin_mut!(read_a, read_b);
        assert!(
            timeout(Duration::from_secs(1), &mut read_a).await.is_err(),
            "the first frame waits for the rest of its body"
        );
        assert!(memory.permits.available_permits() < memory.units as usize / 2);
        assert!(
            timeout(FRAME_READ_TIMEOUT / 2, &mut read_b).await.is_err(),
            "the second frame was read while the first held the memory"
        );
        tx_a.send(Ok(tail.to_vec())).await.unwrap();
        let got_a = timeout(FRAME_READ_TIMEOUT, &mut read_a).await.unwrap();
        assert_eq!(*got_a.unwrap(), big);
        let got_b = timeout(FRAME_READ_TIMEOUT, &mut read_b).await.unwrap();
        assert_eq!(*got_b.unwrap(), big);
        assert_eq!(memory.permits.available_permits(), memory.units as usize);
        drop((tx_a, tx_b));
    }

    fn swarm(config: Config) -> Swarm<Behaviour> {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| Behaviour::new(config))
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    /// Two swarms on loopback, the receiver with a short deadline: a peer that starts a frame
    /// and stops is reported for `FrameTimeout` once the deadline has passed, and its next
    /// message (on a fresh stream, since the receiver closed the stalled one) still arrives on
    /// the same connection.
    #[tokio::test]
    async fn a_stalled_frame_is_a_violation_and_the_connection_stays() {
        const WAIT: Duration = Duration::from_secs(10);
        let deadline = Duration::from_millis(500);
        let mut sender = swarm(Config::default());
        let mut receiver = swarm(Config {
            frame_read_timeout: deadline,
            ..Config::default()
        });
        let receiver_id = *receiver.local_peer_id();
        receiver
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr: Multiaddr = timeout(WAIT, async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = receiver.select_next_some().await
                {
                    return address;
                }
            }
        })
        .await
        .expect("no listen address");
        sender.dial(addr).unwrap();

        // Drives both swarms until the receiver's next block-exchange event (`None` if none
        // comes within `wait`); fails if a connection closes.
        async fn next_event(
            sender: &mut Swarm<Behaviour>,
            receiver: &mut Swarm<Behaviour>,
            wait: Duration,
        ) -> Option<Event> {
            timeout(wait, async {
                loop {
                    tokio::select! {
                        ev = sender.select_next_some() => {
                            assert!(!matches!(ev, SwarmEvent::ConnectionClosed { .. }), "{ev:?}");
                        }
                        ev = receiver.select_next_some() => match ev {
                            SwarmEvent::Behaviour(ev) => return ev,
                            SwarmEvent::ConnectionClosed { .. } => panic!("{ev:?}"),
                            _ => {}
                        },
                    }
                }
            })
            .await
            .ok()
        }
        timeout(WAIT, async {
            loop {
                tokio::select! {
                    ev = sender.select_next_some() => {
                        if let SwarmEvent::ConnectionEstablished { .. } = ev {
                            return;
                        }
                    }
                    _ = receiver.select_next_some() => {}
                }
            }
        })
        .await
        .expect("no connection");

        sender
            .behaviour_mut()
            .send(&receiver_id, want(1).to_frame())
            .unwrap();
        match next_event(&mut sender, &mut receiver, WAIT).await {
            Some(Event::Message { message, .. }) => assert_eq!(*message, want(1)),
            ev => panic!("want(1): {ev:?}"),
        }

        sender
            .behaviour_mut()
            .send(&receiver_id, Frame::new(Bytes::from(partial_frame())))
            .unwrap();
        let started = Instant::now();
        match next_event(&mut sender, &mut receiver, WAIT).await {
            Some(Event::Violation {
                violation: Violation::FrameTimeout { after },
                ..
            }) => assert_eq!(after, deadline),
            ev => panic!("stalled frame: {ev:?}"),
        }
        assert!(started.elapsed() >= deadline);

        // The sender notices the close and reopens; the next message arrives on the same
        // connection. (A send right after the close may race it and be lost, as with the
        // reference: retry a few times.)
        let mut got = None;
        for i in 10..20 {
            sender
                .behaviour_mut()
                .send(&receiver_id, want(i).to_frame())
                .unwrap();
            match next_event(&mut sender, &mut receiver, Duration::from_millis(500)).await {
                Some(Event::Message { message, .. }) => {
                    got = Some(*message);
                    break;
                }
                None => {}
                Some(ev) => panic!("after the stalled frame: {ev:?}"),
            }
        }
        let got = got.expect("no message after the stalled frame");
        assert!(matches!(
            got.wantlist[0].address,
            BlockAddress::Leaf { index, .. } if index >= 10
        ));
    }
}
