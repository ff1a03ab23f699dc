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
//! peer's other streams carry on, as in the reference.
//!
//! Backpressure: the handler reads the next frame only after the previous message has been
//! handed to the behaviour, and the swarm takes handler events only as fast as its owner polls
//! it, so a slow node stops reading and TCP flow control pushes back on the sender.

use std::{
    collections::VecDeque,
    io,
    task::{Context, Poll},
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
use tracing::debug;

use crate::{
    Config, DecodeError, Frame, Message, Metrics, PROTOCOL, Violation,
    codec::{FrameError, read_frame_parts, wire_len, write_frame},
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
    pub(crate) fn new(config: Config, metrics: Metrics) -> Handler {
        Handler {
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
        }
    }

    fn add_reader<R>(&mut self, reader: R, generation: Option<u64>)
    where
        R: Closable,
    {
        let max = self.config.max_frame_bytes;
        let metrics = self.metrics.clone();
        let stream = futures::stream::unfold(Some((reader, metrics)), move |state| async move {
            let (mut reader, metrics) = state?;
            let end = |violation| {
                Some((
                    ReadItem::End {
                        violation,
                        generation,
                    },
                    None,
                ))
            };
            let read = read_frame_parts(&mut reader, max).await;
            if let Ok(Some(body)) = &read {
                metrics.bytes_received.inc_by(wire_len(body.len) as u64);
                metrics.messages_received.inc();
            }
            match read {
                Ok(Some(body)) => match Message::decode_parts(body) {
                    Ok(m) => Some((ReadItem::Message(Box::new(m)), Some((reader, metrics)))),
                    Err(e) => {
                        reader.close_stream().await;
                        end(Some(Violation::Decode(e)))
                    }
                },
                Ok(None) => end(None),
                Err(FrameError::TooLarge { len, max }) => {
                    reader.close_stream().await;
                    end(Some(Violation::FrameTooLarge { len, max }))
                }
                Err(FrameError::BadPrefix) => {
                    reader.close_stream().await;
                    end(Some(Violation::BadFramePrefix))
                }
                Err(FrameError::Malformed(what)) => {
                    reader.close_stream().await;
                    end(Some(Violation::Decode(DecodeError::Framing(what))))
                }
                Err(FrameError::Io(e)) => {
                    debug!(error = %e, "blockexc stream read failed");
                    end(None)
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
