//! Checked block-exchange messages and their encoding.
//!
//! [`Message`] is what the rest of cairn sees: addresses are parsed CIDs, enums are closed, every
//! delivered block has been hashed and matches its CID, and every count is within the limits in
//! the crate root. [`Message::decode`] is the only way in from the network, so nothing past it
//! has to re-check the wire. It refuses what the reference refuses (a delivery whose data does not
//! hash to its CID, CID bytes that do not parse, bad proof bytes) and, unlike the reference, also
//! refuses out-of-range enum values instead of aborting (`blockexc-verified.md`: a `wantType` of
//! 7 or a presence type of 2 kills a reference node).
//!
//! [`Message::encode`] writes what the reference writes, field for field: the want list, pending
//! bytes, account and payment are always emitted, every scalar of an entry and an address is
//! emitted even when zero, and presences carry a 32-byte zero price. The golden tests compare
//! these bytes with frames captured from a reference node.

use bytes::Bytes;
use cairn_core::{Block, BlockAddress, Cid, CodexProof, MerkleError, cid::cid_from_bytes};
use prost::Message as _;

use crate::{
    MAX_BLOCKS_PER_MESSAGE, MAX_PRESENCES_PER_MESSAGE, MAX_WANTLIST_ENTRIES_RECEIVED, proto,
};

/// Length of the price field the reference sends in every presence (a big-endian UInt256).
const PRICE_BYTES: usize = 32;

/// What a want-list entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WantType {
    /// Send the block (`0`, also the value of a missing field).
    Block,
    /// Say whether you have it (`1`).
    Have,
}

/// One want-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantEntry {
    /// What is wanted.
    pub address: BlockAddress,
    /// Priority; carried, ignored by every known implementation.
    pub priority: i32,
    /// This entry withdraws an earlier want.
    pub cancel: bool,
    /// Block or presence.
    pub want_type: WantType,
    /// Answer `DontHave` when the block is missing (the reference never sets it).
    pub send_dont_have: bool,
}

impl WantEntry {
    /// A `WantHave` entry as the reference sends it.
    pub fn have(address: BlockAddress) -> WantEntry {
        WantEntry {
            address,
            priority: 0,
            cancel: false,
            want_type: WantType::Have,
            send_dont_have: false,
        }
    }

    /// A `WantBlock` entry as the reference sends it.
    pub fn block(address: BlockAddress) -> WantEntry {
        WantEntry {
            want_type: WantType::Block,
            ..WantEntry::have(address)
        }
    }

    /// A cancel entry (want type left at `WantHave`, as the reference leaves it).
    pub fn cancel(address: BlockAddress) -> WantEntry {
        WantEntry {
            cancel: true,
            ..WantEntry::have(address)
        }
    }
}

/// Whether a peer holds a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    /// `0`.
    Have,
    /// `1`. Never send this to a reference node unless it asked with `sendDontHave`: the
    /// reference records any presence as "has".
    DontHave,
}

/// A block presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPresence {
    /// The address it is about.
    pub address: BlockAddress,
    /// Have or don't have.
    pub presence: Presence,
}

/// A delivered block. The block's bytes have been checked against its CID by
/// [`Message::decode`]; the proof has only been parsed — checking it against the tree root, the
/// index and the leaf count is the receiver's job, because only it knows what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The block.
    pub block: Block,
    /// The address it was requested under.
    pub address: BlockAddress,
    /// The inclusion proof; present for every leaf delivery.
    pub proof: Option<CodexProof>,
}

/// One block-exchange message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Want-list entries.
    pub wantlist: Vec<WantEntry>,
    /// The want list's `full` flag (ignored by receivers).
    pub full: bool,
    /// Block deliveries.
    pub deliveries: Vec<Delivery>,
    /// Block presences.
    pub presences: Vec<BlockPresence>,
    /// Pending bytes (always 0 from the reference; ignored).
    pub pending_bytes: u64,
    /// The account address of a payments-enabled peer (carried, ignored).
    pub account: Option<Bytes>,
    /// A state-channel update (carried, ignored).
    pub payment: Option<Bytes>,
}

/// Why a received message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not valid protobuf for the schema.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The frame body is not a sequence of whole protobuf fields (found while reading it).
    #[error("malformed protobuf: {0}")]
    Framing(&'static str),
    /// More want-list entries than [`MAX_WANTLIST_ENTRIES_RECEIVED`].
    #[error("{0} want-list entries in one message (limit {MAX_WANTLIST_ENTRIES_RECEIVED})")]
    TooManyEntries(usize),
    /// More presences than [`MAX_PRESENCES_PER_MESSAGE`].
    #[error("{0} presences in one message (limit {MAX_PRESENCES_PER_MESSAGE})")]
    TooManyPresences(usize),
    /// More deliveries than [`MAX_BLOCKS_PER_MESSAGE`].
    #[error("{0} blocks in one message (limit {MAX_BLOCKS_PER_MESSAGE})")]
    TooManyBlocks(usize),
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// CID bytes that do not parse.
    #[error("bad CID in {0}")]
    BadCid(&'static str),
    /// A want type other than 0 or 1.
    #[error("want type {0} out of range")]
    BadWantType(i32),
    /// A presence type other than 0 or 1.
    #[error("presence type {0} out of range")]
    BadPresenceType(i32),
    /// A delivered block whose bytes do not hash to its CID.
    #[error("delivered data does not match CID {0}")]
    DataMismatch(Cid),
    /// Proof bytes that do not decode.
    #[error("bad proof encoding: {0}")]
    BadProof(#[from] MerkleError),
    /// A leaf delivery without a proof.
    #[error("leaf delivery for {0} has no proof")]
    MissingProof(BlockAddress),
}

impl Message {
    /// A message carrying only want-list entries.
    pub fn wants(entries: Vec<WantEntry>, full: bool) -> Message {
        Message {
            wantlist: entries,
            full,
            ..Message::default()
        }
    }

    /// A message carrying only presences.
    pub fn presences(presences: Vec<BlockPresence>) -> Message {
        Message {
            presences,
            ..Message::default()
        }
    }

    /// A message carrying only deliveries.
    pub fn deliveries(deliveries: Vec<Delivery>) -> Message {
        Message {
            deliveries,
            ..Message::default()
        }
    }

    /// Whether the message carries nothing.
    pub fn is_empty(&self) -> bool {
        self.wantlist.is_empty() && self.deliveries.is_empty() && self.presences.is_empty()
    }

    /// The protobuf encoding, byte for byte as the reference writes it (no length prefix).
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// The encoding as one frame: unsigned-varint length prefix, then [`Message::encode`].
    pub fn to_frame(&self) -> crate::Frame {
        crate::Frame::new(Bytes::from(
            self.to_proto().encode_length_delimited_to_vec(),
        ))
    }

    fn to_proto(&self) -> proto::Message {
        proto::Message {
            wantlist: Some(proto::WantList {
                entries: self
                    .wantlist
                    .iter()
                    .map(|e| proto::WantListEntry {
                        address: Some(address_to_proto(&e.address)),
                        priority: Some(e.priority),
                        cancel: Some(e.cancel),
                        want_type: Some(match e.want_type {
                            WantType::Block => 0,
                            WantType::Have => 1,
                        }),
                        send_dont_have: Some(e.send_dont_have),
                    })
                    .collect(),
                full: Some(self.full),
            }),
            payload: self
                .deliveries
                .iter()
                .map(|d| proto::BlockDelivery {
                    cid: Some(Bytes::from(d.block.cid().to_bytes())),
                    data: Some(d.block.data().clone()),
                    address: Some(address_to_proto(&d.address)),
                    proof: match (&d.address, &d.proof) {
                        (BlockAddress::Leaf { .. }, Some(p)) => Some(Bytes::from(p.encode())),
                        _ => None,
                    },
                })
                .collect(),
            block_presences: self
                .presences
                .iter()
                .map(|p| proto::BlockPresence {
                    address: Some(address_to_proto(&p.address)),
                    r#type: Some(match p.presence {
                        Presence::Have => 0,
                        Presence::DontHave => 1,
                    }),
                    price: Some(Bytes::from_static(&[0; PRICE_BYTES])),
                })
                .collect(),
            pending_bytes: Some(self.pending_bytes),
            account: Some(proto::AccountMessage {
                address: Some(self.account.clone().unwrap_or_default()),
            }),
            payment: Some(proto::StateChannelUpdate {
                update: Some(self.payment.clone().unwrap_or_default()),
            }),
        }
    }

    /// Decodes and checks one received message (the frame body, without its length prefix).
    /// Every delivered block is hashed here; counts are checked against the crate's limits
    /// before anything is converted.
    pub fn decode(body: Bytes) -> Result<Message, DecodeError> {
        check_counts(std::slice::from_ref(&body))?;
        Message::from_proto(proto::Message::decode(body)?)
    }

    /// Decodes and checks one received message read as [`crate::codec::FrameParts`]: the parts
    /// are merged in order, which protobuf defines to equal decoding their concatenation, so
    /// the result is that of [`Message::decode`] on the whole body. Bytes fields point into the
    /// parts without copying.
    pub fn decode_parts(parts: crate::codec::FrameParts) -> Result<Message, DecodeError> {
        check_counts(&parts.parts)?;
        let mut pb = proto::Message::default();
        for part in parts.parts {
            pb.merge(part)?;
        }
        Message::from_proto(pb)
    }

    fn from_proto(pb: proto::Message) -> Result<Message, DecodeError> {
        let (entries, full) = match pb.wantlist {
            Some(w) => (w.entries, w.full.unwrap_or(false)),
            None => (Vec::new(), false),
        };
        if entries.len() > MAX_WANTLIST_ENTRIES_RECEIVED {
            return Err(DecodeError::TooManyEntries(entries.len()));
        }
        if pb.block_presences.len() > MAX_PRESENCES_PER_MESSAGE {
            return Err(DecodeError::TooManyPresences(pb.block_presences.len()));
        }
        if pb.payload.len() > MAX_BLOCKS_PER_MESSAGE {
            return Err(DecodeError::TooManyBlocks(pb.payload.len()));
        }
        let wantlist = entries
            .into_iter()
            .map(|e| {
                Ok(WantEntry {
                    address: address_from_proto(e.address.as_ref())?,
                    priority: e.priority.unwrap_or(0),
                    cancel: e.cancel.unwrap_or(false),
                    want_type: match e.want_type.unwrap_or(0) {
                        0 => WantType::Block,
                        1 => WantType::Have,
                        other => return Err(DecodeError::BadWantType(other)),
                    },
                    send_dont_have: e.send_dont_have.unwrap_or(false),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let presences = pb
            .block_presences
            .into_iter()
            .map(|p| {
                Ok(BlockPresence {
                    address: address_from_proto(p.address.as_ref())?,
                    presence: match p.r#type.unwrap_or(0) {
                        0 => Presence::Have,
                        1 => Presence::DontHave,
                        other => return Err(DecodeError::BadPresenceType(other)),
                    },
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let deliveries = pb
            .payload
            .into_iter()
            .map(delivery_from_proto)
            .collect::<Result<Vec<_>, DecodeError>>()?;
        Ok(Message {
            wantlist,
            full,
            deliveries,
            presences,
            pending_bytes: pb.pending_bytes.unwrap_or(0),
            account: pb.account.and_then(|a| a.address).filter(|a| !a.is_empty()),
            payment: pb.payment.and_then(|p| p.update).filter(|p| !p.is_empty()),
        })
    }
}

fn delivery_from_proto(d: proto::BlockDelivery) -> Result<Delivery, DecodeError> {
    let cid = cid_from_bytes(&d.cid.ok_or(DecodeError::Missing("delivery cid"))?)
        .map_err(|_| DecodeError::BadCid("delivery"))?;
    let data = d.data.unwrap_or_default();
    let block = Block::verified(cid, data).map_err(|e| DecodeError::DataMismatch(e.cid))?;
    let address = address_from_proto(d.address.as_ref())?;
    let proof = match (&address, d.proof) {
        (BlockAddress::Leaf { .. }, Some(bytes)) => Some(CodexProof::decode(&bytes)?),
        (BlockAddress::Leaf { .. }, None) => return Err(DecodeError::MissingProof(address)),
        // The reference ignores a proof on a non-leaf delivery; so do we.
        (BlockAddress::Block(_), _) => None,
    };
    Ok(Delivery {
        block,
        address,
        proof,
    })
}

fn address_to_proto(a: &BlockAddress) -> proto::BlockAddress {
    match a {
        BlockAddress::Block(cid) => proto::BlockAddress {
            leaf: Some(false),
            tree_cid: None,
            index: None,
            cid: Some(Bytes::from(cid.to_bytes())),
        },
        BlockAddress::Leaf { tree, index } => proto::BlockAddress {
            leaf: Some(true),
            tree_cid: Some(Bytes::from(tree.to_bytes())),
            index: Some(*index),
            cid: None,
        },
    }
}

fn address_from_proto(a: Option<&proto::BlockAddress>) -> Result<BlockAddress, DecodeError> {
    let a = a.ok_or(DecodeError::Missing("address"))?;
    if a.leaf.unwrap_or(false) {
        let tree = a.tree_cid.as_ref().ok_or(DecodeError::Missing("treeCid"))?;
        Ok(BlockAddress::Leaf {
            tree: cid_from_bytes(tree).map_err(|_| DecodeError::BadCid("treeCid"))?,
            index: a.index.unwrap_or(0),
        })
    } else {
        let cid = a.cid.as_ref().ok_or(DecodeError::Missing("cid"))?;
        Ok(BlockAddress::Block(
            cid_from_bytes(cid).map_err(|_| DecodeError::BadCid("address cid"))?,
        ))
    }
}

/// Field numbers that repeat in a message (`codex-protocol.md` §2.2): `Message.wantlist` (1),
/// whose `WantList.entries` (1) repeat; `Message.payload` (3) and `Message.blockPresences` (4).
const FIELD_WANTLIST: u32 = 1;
const FIELD_WANTLIST_ENTRIES: u32 = 1;
const FIELD_PAYLOAD: u32 = 3;
const FIELD_PRESENCES: u32 = 4;

/// Counts the repeated parts of an encoded message (want-list entries, deliveries, presences)
/// and refuses it when one is over its limit, *before* prost builds anything. prost decodes a
/// repeated field into a vector of whole structs, so counting after decoding would let one 8 MiB
/// frame of empty entries (`1a 00`, two bytes each) allocate about 4 million structs, most of a
/// gigabyte, before the count could be checked. The walk reads only tags and lengths (a
/// delivery's 64 KiB of data is skipped, not read); what the fields contain is checked by the
/// decode that follows. `parts` are whole top-level fields in order (a frame body, or the parts
/// [`crate::codec::read_frame_parts`] cut it into).
fn check_counts(parts: &[Bytes]) -> Result<(), DecodeError> {
    let (mut entries, mut deliveries, mut presences) = (0usize, 0usize, 0usize);
    for part in parts {
        walk_fields(part, |field, value| {
            match (field, value) {
                (FIELD_WANTLIST, Some(list)) => walk_fields(list, |f, v| {
                    if f == FIELD_WANTLIST_ENTRIES && v.is_some() {
                        entries += 1;
                    }
                    Ok(())
                })?,
                (FIELD_PAYLOAD, Some(_)) => deliveries += 1,
                (FIELD_PRESENCES, Some(_)) => presences += 1,
                _ => {}
            }
            Ok(())
        })?;
    }
    if entries > MAX_WANTLIST_ENTRIES_RECEIVED {
        return Err(DecodeError::TooManyEntries(entries));
    }
    if presences > MAX_PRESENCES_PER_MESSAGE {
        return Err(DecodeError::TooManyPresences(presences));
    }
    if deliveries > MAX_BLOCKS_PER_MESSAGE {
        return Err(DecodeError::TooManyBlocks(deliveries));
    }
    Ok(())
}

/// Calls `each(field number, contents)` for every field of the protobuf encoding `buf`, in
/// order; contents are given for length-delimited fields only. Stops at the first error of
/// `each`, or at bytes that are not a sequence of whole fields ([`DecodeError::Framing`]).
fn walk_fields(
    mut buf: &[u8],
    mut each: impl FnMut(u32, Option<&[u8]>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let past_end = || DecodeError::Framing("a field runs past the end of its message");
    while !buf.is_empty() {
        let (field, wire_type) = decode_key(&mut buf)?;
        let (value, skip) = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf)?;
                (None, 0)
            }
            WireType::SixtyFourBit => (None, 8),
            WireType::ThirtyTwoBit => (None, 4),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf)?)
                    .map_err(|_| DecodeError::Framing("field length"))?;
                (Some(buf.get(..len).ok_or_else(past_end)?), len)
            }
            // Deprecated; the reference never sends them.
            WireType::StartGroup | WireType::EndGroup => {
                return Err(DecodeError::Framing("group wire type"));
            }
        };
        each(field, value)?;
        buf = buf.get(skip..).ok_or_else(past_end)?;
    }
    Ok(())
}
