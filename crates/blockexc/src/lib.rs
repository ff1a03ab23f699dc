//! # cairn-blockexc: `/codex/blockexc/1.0.0` for rust-libp2p
//!
//! The Codex block-exchange protocol, wire-compatible with the reference node, shaped like a
//! rust-libp2p protocol crate:
//!
//! * [`proto`]: the protobuf messages as they are on the wire (§2.2 of `codex-protocol.md`).
//! * [`message`]: checked messages — parsed CIDs, closed enums, hashed deliveries, bounded
//!   counts — and the reference's exact encoding.
//! * [`codec`]: varint length-prefixed frames with a receive limit.
//! * [`handler`]: per connection — inbound streams read until they end, one lazily opened
//!   outbound stream for writing (and reading).
//! * [`behaviour`]: per swarm — routes frames to connections, bounds bytes queued per peer,
//!   reports messages, send completions and violations.
//! * [`metrics`]: traffic counters (bytes and messages each way), counted on the connection
//!   tasks as frames are written and read.
//!
//! The crate moves and checks messages; it never touches a store and keeps no want lists. The
//! node's engine (in `cairn-node`) decides what to ask for and what to serve.
//!
//! ## Limits
//!
//! Every count a peer controls has a named bound below. A peer that breaks one gets the stream
//! it used closed and an [`Event::Violation`] (the node penalises it); its other streams, its
//! connection and every other peer are unaffected.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

pub mod behaviour;
pub mod codec;
pub mod handler;
pub mod message;
pub mod metrics;
pub mod proto;

pub use crate::{
    behaviour::{Behaviour, Event, SendError},
    codec::{Frame, FrameError},
    handler::SendId,
    message::{BlockPresence, DecodeError, Delivery, Message, Presence, WantEntry, WantType},
    metrics::Metrics,
};

/// The protocol id.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/codex/blockexc/1.0.0");

/// Largest frame accepted on receive. The reference accepts 100 MiB, but nothing it sends comes
/// near that: its largest message is 20 blocks of 64 KiB with proofs (about 1.3 MB), and a full
/// 1024-entry want list is about 60 KB. 8 MiB leaves six times the largest legitimate message
/// (room for larger block sizes) while bounding what one stream can make us buffer to 8 MiB
/// rather than 100 MiB. Bodies are buffered as they arrive, never pre-allocated from the prefix.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Want-list entries cairn puts in one message it sends: the reference's batch size
/// (`MaxWantListBatchSize`, nim-codex `codex/blockexchange/engine/engine.nim`).
pub const MAX_WANTLIST_ENTRIES: usize = 1024;

/// Want-list entries accepted in one received message: 16 × 1024. The reference batches its
/// want-list refresh by 1024, but answers a presence message with one `WantBlock` list of every
/// pending block the peer says it has and nobody else was asked for (`blockPresenceHandler`
/// in `engine.nim`, sent unbatched by `network.nim`'s `sendWantList`): two downloads' windows
/// of 1024 make 2048 entries, and refusing them penalised a compliant peer (found by review).
/// Entries are counted on the raw bytes before any is decoded, and each takes at least 2
/// bytes of the frame, so a frame of [`MAX_FRAME_BYTES`] cannot make millions of them; what
/// the engine then keeps per peer has its own bounds.
pub const MAX_WANTLIST_ENTRIES_RECEIVED: usize = 16 * 1024;

/// Presences accepted in one message: the reference batches presences by 1024 too.
pub const MAX_PRESENCES_PER_MESSAGE: usize = 1024;

/// Blocks per message, sent and accepted: the reference's `DefaultMaxBlocksPerMessage`.
pub const MAX_BLOCKS_PER_MESSAGE: usize = 20;

/// Concurrent inbound block-exchange streams per connection. The reference opens one stream per
/// peer and a new one only after the old one closed, so a handful is plenty; at most
/// [`MAX_FRAME_BYTES`] is buffered per stream, so this also bounds memory per connection.
pub const MAX_INBOUND_STREAMS_PER_CONNECTION: usize = 8;

/// Frames of one connection read at once, whatever its number of streams: each may buffer up
/// to [`MAX_FRAME_BYTES`] for up to its deadline ([`FRAME_READ_TIMEOUT`] for the length, then
/// again for the body plus the time what has arrived takes at [`MIN_FRAME_BYTES_PER_SEC`]).
/// A cairn or reference peer sends on
/// one stream, so this costs honest peers nothing; the other streams' bytes wait in the muxer's
/// window.
pub const MAX_FRAMES_IN_PROGRESS_PER_CONNECTION: usize = 2;

/// Bytes of block-exchange frames being read at once, by all connections together: 128 MiB.
/// A frame takes its announced length from this budget once its length prefix is read, before
/// any of its body, and gives it back once it is decoded; a frame that finds too little left
/// waits (its bytes stay in the muxer's window, its deadline not yet started). Without it, the
/// per-connection bounds still let the peers of every inbound connection hold two started
/// frames of [`MAX_FRAME_BYTES`] each, about 640 MiB for 40 connections (found by review).
/// Honest frames are at most about 1.3 MB: this fits those of about fifty busy connections at
/// once, and a wait only slows a frame down.
pub const MAX_FRAME_MEMORY_BYTES: usize = 128 * 1024 * 1024;

/// Bytes queued for one peer and not yet written: 16 delivery messages. The serving engine keeps
/// far less in flight per peer; this is the hard stop behind it.
pub const MAX_QUEUED_BYTES_PER_PEER: usize = 24 * 1024 * 1024;

/// How long a frame's length prefix may take once its first byte has arrived, and its body
/// once the prefix has, beyond [`frame_body_allowance`] of the body bytes that have arrived:
/// 30 s. A body is given up once 30 s have passed beyond the time what it has sent takes at
/// [`MIN_FRAME_BYTES_PER_SEC`], so any peer sending at least that fast finishes, and one that
/// stalls is given up 30 s after its bytes stopped buying time. Without a deadline a peer
/// could announce a frame of almost [`MAX_FRAME_BYTES`], send all but its last byte on every
/// inbound stream of both its connections and stop, and we held the ~128 MiB for as long as the
/// connection lasted (found by review). A stream resting *between* frames has no deadline: the
/// reference keeps its stream open for the life of the connection.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest rate a frame's body is given time for, beyond [`FRAME_READ_TIMEOUT`]: 64 KiB/s.
/// cairn's own delivery messages hold up to 4 MiB of larger blocks, and one block of up to
/// 8 MiB goes alone; a fixed 30 s failed those of an honest peer below 140–280 KB/s, and
/// blamed it (found by review). The time is bought by bytes that arrive, not by the length
/// announced: a peer that announces [`MAX_FRAME_BYTES`] and sends nothing holds that memory for
/// 30 s, as before.
pub const MIN_FRAME_BYTES_PER_SEC: u64 = 64 * 1024;

/// Time `len` bytes of a frame body buy beyond the deadline: `len` at
/// [`MIN_FRAME_BYTES_PER_SEC`].
pub fn frame_body_allowance(len: usize) -> Duration {
    Duration::from_millis((len as u64).saturating_mul(1000) / MIN_FRAME_BYTES_PER_SEC)
}

/// How a peer broke the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame over [`Config::max_frame_bytes`] was announced.
    #[error("frame of {len} bytes announced, limit {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A length prefix that is not a varint.
    #[error("bad frame length prefix")]
    BadFramePrefix,
    /// A frame that did not decode or broke a per-message limit.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// More inbound streams than [`Config::max_inbound_streams`].
    #[error("more than {max} concurrent inbound streams")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// A frame started (its first byte arrived) and did not arrive within its deadline
    /// ([`Config::frame_read_timeout`] for its length, and for its body beyond what its
    /// arrived bytes bought).
    #[error("frame not complete within its deadline of {after:?}")]
    FrameTimeout {
        /// The deadline it missed: for its length prefix, or (from the prefix on) for its body.
        after: Duration,
    },
}

/// Protocol limits (defaults: the constants above).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Inbound streams per connection.
    pub max_inbound_streams: usize,
    /// Bytes queued per peer.
    pub max_queued_bytes_per_peer: usize,
    /// Bytes of frames being read at once by all connections of one [`Behaviour`] (at least
    /// `max_frame_bytes` is allowed, whatever this says).
    pub max_frame_memory_bytes: usize,
    /// How long a frame's length may take to arrive once its first byte has, and its body
    /// beyond the time its arrived bytes take at [`MIN_FRAME_BYTES_PER_SEC`]
    /// ([`FRAME_READ_TIMEOUT`]).
    pub frame_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_inbound_streams: MAX_INBOUND_STREAMS_PER_CONNECTION,
            max_queued_bytes_per_peer: MAX_QUEUED_BYTES_PER_PEER,
            max_frame_memory_bytes: MAX_FRAME_MEMORY_BYTES,
            frame_read_timeout: FRAME_READ_TIMEOUT,
        }
    }
}
