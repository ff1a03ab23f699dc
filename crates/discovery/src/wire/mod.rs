//! The DHT wire layer: packets, message plaintexts and the session cryptography
//! (codex-protocol.md §7.2–7.4).
//!
//! Bottom up:
//! - [`packet`]: UDP packet framing, header masking, authdata per packet kind.
//! - [`crypto`]: ECDH, session-key derivation, id signatures, AES-GCM.
//! - [`message`]: the protobuf message plaintexts carried inside the packets.
//!
//! A received datagram goes through [`packet::Packet::decode`], then
//! [`crypto::decrypt`] with the session key and [`packet::Packet::authenticated_data`], then
//! [`message::Message::decode`]; sending runs the same steps backwards. Sessions, timeouts and
//! routing are the layers above and are not here.

pub mod crypto;
pub mod message;
pub mod packet;

pub use message::{Message, RequestId};
pub use packet::{Packet, PacketKind};
