//! The protobuf messages exactly as they travel on the wire (`codex-protocol.md` §2.2).
//!
//! These are hand-written `prost` structs, not generated from the reference's `message.proto`:
//! that file is stale (it still shows `bytes block`). The field numbers and types here are the
//! ones the reference's real codec (`codex/blockexchange/protobuf/message.nim`) reads and writes,
//! checked against a running reference node (`blockexc-verified.md`).
//!
//! Scalars the reference always emits, even when zero, are declared `optional` so that `prost`
//! emits them whenever they are `Some` — that is how [`crate::Message::encode`] reproduces the
//! reference's bytes exactly (for example the tail `28 00 32 02 0a 00 3a 02 0a 00` of every
//! message). On decode every field is optional, so a peer that omits zero values (a
//! "proto3-minimal" encoder) is understood too. Byte fields use [`bytes::Bytes`] so block data is
//! sliced out of the received frame without a copy.
//!
//! Nothing in this module validates anything; [`crate::message`] turns these into checked types.

use bytes::Bytes;

/// `Message`: one frame.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Message {
    /// Field 1, always emitted by the reference (an empty want list is `0a 02 10 00`).
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<WantList>,
    /// Field 3: block deliveries.
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<BlockDelivery>,
    /// Field 4: block presences.
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    /// Field 5: pending bytes, always emitted as 0 by the reference and ignored on receipt.
    #[prost(uint64, optional, tag = "5")]
    pub pending_bytes: Option<u64>,
    /// Field 6: account (payments), always emitted empty by the reference.
    #[prost(message, optional, tag = "6")]
    pub account: Option<AccountMessage>,
    /// Field 7: state-channel payment, always emitted empty by the reference.
    #[prost(message, optional, tag = "7")]
    pub payment: Option<StateChannelUpdate>,
}

/// `WantList`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WantList {
    /// Field 1: entries.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<WantListEntry>,
    /// Field 2: `full`, always emitted; ignored by receivers.
    #[prost(bool, optional, tag = "2")]
    pub full: Option<bool>,
}

/// `WantListEntry`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WantListEntry {
    /// Field 1: the wanted address.
    #[prost(message, optional, tag = "1")]
    pub address: Option<BlockAddress>,
    /// Field 2: priority (int32; the reference always sends 0).
    #[prost(int32, optional, tag = "2")]
    pub priority: Option<i32>,
    /// Field 3: cancel.
    #[prost(bool, optional, tag = "3")]
    pub cancel: Option<bool>,
    /// Field 4: want type, `0 = WantBlock`, `1 = WantHave` (missing means 0).
    #[prost(int32, optional, tag = "4")]
    pub want_type: Option<i32>,
    /// Field 5: send-dont-have.
    #[prost(bool, optional, tag = "5")]
    pub send_dont_have: Option<bool>,
}

/// `BlockAddress`: `leaf` selects the shape.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BlockAddress {
    /// Field 1: whether this is a leaf address; always emitted.
    #[prost(bool, optional, tag = "1")]
    pub leaf: Option<bool>,
    /// Field 2: binary tree CID (leaf addresses).
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub tree_cid: Option<Bytes>,
    /// Field 3: leaf index (leaf addresses; emitted even when 0).
    #[prost(uint64, optional, tag = "3")]
    pub index: Option<u64>,
    /// Field 4: binary block CID (non-leaf addresses).
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub cid: Option<Bytes>,
}

/// `BlockDelivery`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BlockDelivery {
    /// Field 1: binary CID of the block.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub cid: Option<Bytes>,
    /// Field 2: the block's bytes.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub data: Option<Bytes>,
    /// Field 3: the address that was requested.
    #[prost(message, optional, tag = "3")]
    pub address: Option<BlockAddress>,
    /// Field 4: CodexProof encoding, for leaf addresses only.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub proof: Option<Bytes>,
}

/// `BlockPresence`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BlockPresence {
    /// Field 1: the address.
    #[prost(message, optional, tag = "1")]
    pub address: Option<BlockAddress>,
    /// Field 2: `0 = Have`, `1 = DontHave`; always emitted.
    #[prost(int32, optional, tag = "2")]
    pub r#type: Option<i32>,
    /// Field 3: price, big-endian UInt256 (the reference sends 32 zero bytes).
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub price: Option<Bytes>,
}

/// `AccountMessage`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AccountMessage {
    /// Field 1: an Ethereum address (20 bytes when used; the reference sends it empty).
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub address: Option<Bytes>,
}

/// `StateChannelUpdate`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StateChannelUpdate {
    /// Field 1: a signed Nitro state as JSON (the reference sends it empty).
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub update: Option<Bytes>,
}
