//! The swarm-wide half of the protocol: which connection a frame goes to, how many bytes each
//! peer has queued, and the events the node sees.
//!
//! The behaviour is a message pump. It knows nothing about stores, want lists or downloads —
//! that is the node's engine — so it is small and easy to reason about:
//! * [`Behaviour::send`] queues a frame for a connected peer, on its newest connection,
//!   refusing it when the peer already has [`Config::max_queued_bytes_per_peer`] bytes waiting
//!   to be written (the caller backs off; nothing grows without bound).
//! * Every message a handler decodes becomes [`Event::Message`]; every finished send
//!   [`Event::Sent`] or [`Event::SendFailed`]; every protocol violation [`Event::Violation`], so
//!   the node can penalise the peer. Frames queued on a connection that closes fail.
//! * A connection that carried block-exchange frames (either way) and closes while the peer
//!   keeps another is [`Event::ConnectionLost`]: what was in flight on it is gone, and the node
//!   has nothing else to tell it so. One that carried none (a second connection that a dial
//!   with a stale address opened and dropped at once) is not reported.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour,
        NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
};

use crate::{
    Config, Frame, Message, Metrics, Violation,
    handler::{FrameMemory, FromBehaviour, Handler, SendId, ToBehaviour},
};

/// What the behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// A checked message from `peer`.
    Message {
        /// Sender.
        peer: PeerId,
        /// The message.
        message: Box<Message>,
    },
    /// The frame of send `id` was written and flushed.
    Sent {
        /// Receiver.
        peer: PeerId,
        /// From [`Behaviour::send`].
        id: SendId,
    },
    /// The frame of send `id` was not written (stream or connection failed, or the peer does
    /// not speak the protocol).
    SendFailed {
        /// Receiver.
        peer: PeerId,
        /// From [`Behaviour::send`].
        id: SendId,
    },
    /// A connection to `peer` that carried block-exchange frames closed, and another stays:
    /// frames in flight on it either way are lost (those we sent are [`Event::SendFailed`]).
    ConnectionLost {
        /// The peer, still connected.
        peer: PeerId,
    },
    /// `peer` broke the protocol; the stream it used was closed.
    Violation {
        /// The offender.
        peer: PeerId,
        /// What it did.
        violation: Violation,
    },
}

/// Why [`Behaviour::send`] refused a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection to the peer.
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    /// The peer's queue is full; try again after some [`Event::Sent`].
    #[error("{queued} bytes already queued for {peer} (limit {max})")]
    QueueFull {
        /// The peer.
        peer: PeerId,
        /// Bytes queued now.
        queued: usize,
        /// The limit.
        max: usize,
    },
}

#[derive(Debug)]
struct InFlight {
    peer: PeerId,
    connection: ConnectionId,
    len: usize,
}

/// The block-exchange network behaviour. See the module docs.
#[derive(Debug)]
pub struct Behaviour {
    config: Config,
    metrics: Metrics,
    /// Room for frames being read by all connections ([`Config::max_frame_memory_bytes`]).
    frame_memory: FrameMemory,
    /// Open connections per peer, oldest first.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Open connections that carried a block-exchange frame, either way.
    used: HashSet<ConnectionId>,
    queued: HashMap<PeerId, usize>,
    in_flight: HashMap<SendId, InFlight>,
    next_id: u64,
    events: VecDeque<ToSwarm<Event, FromBehaviour>>,
}

impl Behaviour {
    /// A behaviour with `config`, counting its traffic in handles registered nowhere.
    pub fn new(config: Config) -> Behaviour {
        Behaviour::with_metrics(config, Metrics::default())
    }

    /// A behaviour with `config` that counts its traffic in `metrics`.
    pub fn with_metrics(config: Config, metrics: Metrics) -> Behaviour {
        Behaviour {
            frame_memory: FrameMemory::new(&config),
            config,
            metrics,
            connections: HashMap::new(),
            used: HashSet::new(),
            queued: HashMap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    /// Queues `frame` for `peer`. See the module docs for the bound.
    pub fn send(&mut self, peer: &PeerId, frame: Frame) -> Result<SendId, SendError> {
        // The newest connection: an older one may be closing (a reconnect right after a
        // disconnect), and frames handed to it would be lost.
        let Some(&connection) = self.connections.get(peer).and_then(|c| c.last()) else {
            return Err(SendError::NotConnected(*peer));
        };
        let queued = self.queued.get(peer).copied().unwrap_or(0);
        let max = self.config.max_queued_bytes_per_peer;
        // One frame is always allowed onto an empty queue, so a frame larger than the limit
        // still goes (the limit bounds the backlog, not the frame size).
        if queued > 0 && queued + frame.len() > max {
            return Err(SendError::QueueFull {
                peer: *peer,
                queued,
                max,
            });
        }
        let id = SendId(self.next_id);
        self.next_id += 1;
        self.used.insert(connection);
        *self.queued.entry(*peer).or_insert(0) += frame.len();
        self.in_flight.insert(
            id,
            InFlight {
                peer: *peer,
                connection,
                len: frame.len(),
            },
        );
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: *peer,
            handler: NotifyHandler::One(connection),
            event: FromBehaviour::Send { id, frame },
        });
        Ok(id)
    }

    /// Bytes queued for `peer` and not yet written.
    pub fn queued_bytes(&self, peer: &PeerId) -> usize {
        self.queued.get(peer).copied().unwrap_or(0)
    }

    /// Whether `peer` has an open connection.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connections.contains_key(peer)
    }

    fn finish(&mut self, id: SendId) -> Option<PeerId> {
        let f = self.in_flight.remove(&id)?;
        if let Some(q) = self.queued.get_mut(&f.peer) {
            *q = q.saturating_sub(f.len);
            if *q == 0 {
                self.queued.remove(&f.peer);
            }
        }
        Some(f.peer)
    }

    fn new_handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().push(connection);
        Handler::new(
            self.config.clone(),
            self.metrics.clone(),
            self.frame_memory.clone(),
        )
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            ..
        }) = event
        {
            let mut remaining = 0;
            if let Some(conns) = self.connections.get_mut(&peer_id) {
                conns.retain(|c| *c != connection_id);
                remaining = conns.len();
                if conns.is_empty() {
                    self.connections.remove(&peer_id);
                }
            }
            if self.used.remove(&connection_id) && remaining > 0 {
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::ConnectionLost {
                        peer: peer_id,
                    }));
            }
            let failed: Vec<SendId> = self
                .in_flight
                .iter()
                .filter(|(_, f)| f.connection == connection_id)
                .map(|(id, _)| *id)
                .collect();
            for id in failed {
                if let Some(peer) = self.finish(id) {
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::SendFailed { peer, id }));
                }
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            ToBehaviour::Received(message) => {
                self.used.insert(connection);
                Event::Message { peer, message }
            }
            ToBehaviour::Sent(id) => {
                if self.finish(id).is_none() {
                    return;
                }
                Event::Sent { peer, id }
            }
            ToBehaviour::SendFailed(id) => {
                if self.finish(id).is_none() {
                    return;
                }
                Event::SendFailed { peer, id }
            }
            ToBehaviour::Violation(violation) => Event::Violation { peer, violation },
        };
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}
