//! Message plaintexts (codex-protocol.md §7.4, dht-verified.md).
//!
//! `plaintext = kind (1 byte) ‖ Envelope`, with the protobuf `Envelope { 1: request id bytes
//! (≤ 8), 2: inner message bytes }`; unknown envelope fields are ignored (2026 nodes append
//! field 3, `clientMode`). The inner messages (nim-codex-dht `messages_encoding.nim`,
//! `providers_encoding.nim`):
//!
//! | kind | message | inner fields |
//! |---|---|---|
//! | 0x01 | PING | 1 sprSeq varint |
//! | 0x02 | PONG | 1 sprSeq; 2 `{1 family byte (0 IPv6, 1 IPv4), 2 address bytes}`; 3 port (2 bytes BE) |
//! | 0x03 | FINDNODE | 1 repeated distance (2 bytes BE) |
//! | 0x04 | NODES | 1 total varint; 2 repeated SPR envelope |
//! | 0x05 | TALKREQ | 1 protocol; 2 request |
//! | 0x06 | TALKRESP | 2 response |
//! | 0x0B | ADD_PROVIDER | 1 content id (32 bytes); 2 SPR envelope |
//! | 0x0C | GET_PROVIDERS | 1 content id (32 bytes) |
//! | 0x0D | PROVIDERS | 1 total varint; 2 repeated SPR envelope |
//! | 0x83 | FINDNODE_FAST | 1 target node id (32 bytes) |
//!
//! Design:
//! - **Every field is written, zero values included** (`sprSeq = 0` is `08 00`, an empty talk
//!   response is `12 00`): the reference's decoders treat their fields as required and drop a
//!   message that lacks one (dht-verified.md correction 3). Repeated fields with no entries are
//!   simply absent, as the reference writes them. Fields go out in ascending order.
//! - Decoding is as strict as the reference's where it matters (required fields, a request id of at
//!   most 8 bytes, fixed-size ids, ports and addresses, a non-empty distance list) and adds
//!   bounds the reference lacks: every count and length has a named cap below, and nothing
//!   panics on any input.
//! - SPRs stay raw bytes here; [`crate::spr::Spr::decode`] verifies them. (The reference drops a
//!   whole NODES or PROVIDERS message if one SPR in it does not verify; the caller decides.)
//! - The protobuf layer is prost with presence-tracked (`optional`) fields, which write zero
//!   values and tell a missing field from a zero one.
//! - The topic messages 0x07–0x0A are not implemented by the reference either; decoding them
//!   gives [`MessageError::UnsupportedKind`].
//!
//! Tests check every encoding of the reference's "Protocol Message Encodings" suite
//! (`tests/discv5/test_discoveryv5_encoding.nim`, codex-protocol.md §11.1 item 4) both ways,
//! including the "Nodes Response (multiple)" bytes and the invalid-IP PONG; the plaintexts seen
//! from a live reference node (dht-verified.md: PONG, NODES, ADD_PROVIDER, the node's own PING
//! and FINDNODE, the empty NODES/PROVIDERS/TALKRESP replies, 0- and 1-byte request ids,
//! envelope field 3); the rejections the live node showed (9-byte request id, empty FINDNODE,
//! PING without sprSeq); and, by property, that every message round-trips and that decoding
//! arbitrary bytes never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message as _;

use crate::ids::NodeId;
use crate::spr::MAX_SPR_BYTES;

/// The longest request id the protocol allows (the reference rejects 9 bytes and sends 8).
pub const MAX_REQUEST_ID_LEN: usize = 8;

/// The most distances we accept in one FINDNODE: one per possible log-distance 0..=256. The
/// reference asks for 3 per request in its lookups.
pub const MAX_FINDNODE_DISTANCES: usize = 257;

/// The most SPRs we accept in one NODES message. The reference sends at most 3 per message
/// (`MaxNodesPerMessage`) and 16 per reply (`FindNodeResultLimit`); 16 bounds a single message
/// by the most a whole reply may hold.
pub const MAX_NODES_PER_MESSAGE: usize = 16;

/// The most SPRs we accept in one PROVIDERS message. The reference answers GET_PROVIDERS with all
/// its records for the key in one message, at most 20 (`MaxProvidersPerEntry`, the limit of its
/// provider store queries).
pub const MAX_PROVIDERS_PER_MESSAGE: usize = 20;

/// The longest talk protocol name, request or response we accept: a talk exchange is meant to
/// fit one 1280-byte discv5 packet, so no part of it can be longer. (The reference registers no
/// talk protocols and answers every TALKREQ with an empty TALKRESP.)
pub const MAX_TALK_BYTES: usize = 1280;

/// The largest plaintext [`Message::decode`] looks at. The biggest legitimate message is a
/// PROVIDERS reply with [`MAX_PROVIDERS_PER_MESSAGE`] records of up to [`MAX_SPR_BYTES`] each
/// (3 bytes of framing per record), which the reference sends in one packet however big.
pub const MAX_MESSAGE_SIZE: usize = 24 * 1024;

const _: () = assert!(
    MAX_MESSAGE_SIZE >= MAX_PROVIDERS_PER_MESSAGE * (MAX_SPR_BYTES + 3) + 64,
    "a full PROVIDERS message must fit"
);

/// Message kind bytes.
pub mod kind {
    /// PING.
    pub const PING: u8 = 0x01;
    /// PONG.
    pub const PONG: u8 = 0x02;
    /// FINDNODE.
    pub const FIND_NODE: u8 = 0x03;
    /// NODES.
    pub const NODES: u8 = 0x04;
    /// TALKREQ.
    pub const TALK_REQ: u8 = 0x05;
    /// TALKRESP.
    pub const TALK_RESP: u8 = 0x06;
    /// First of the unimplemented topic messages (REGTOPIC).
    pub const FIRST_TOPIC: u8 = 0x07;
    /// Last of the unimplemented topic messages (TOPICQUERY).
    pub const LAST_TOPIC: u8 = 0x0A;
    /// ADD_PROVIDER.
    pub const ADD_PROVIDER: u8 = 0x0B;
    /// GET_PROVIDERS.
    pub const GET_PROVIDERS: u8 = 0x0C;
    /// PROVIDERS.
    pub const PROVIDERS: u8 = 0x0D;
    /// FINDNODE_FAST (the fork's own message).
    pub const FIND_NODE_FAST: u8 = 0x83;
}

/// PONG's IP family byte for IPv6 (Nim's `IpAddressFamily.IPv6`).
const FAMILY_IPV6: u8 = 0x00;
/// PONG's IP family byte for IPv4 (Nim's `IpAddressFamily.IPv4`).
const FAMILY_IPV4: u8 = 0x01;

/// Why a plaintext did not decode.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The plaintext is longer than [`MAX_MESSAGE_SIZE`].
    #[error("message is {0} bytes, more than the {MAX_MESSAGE_SIZE} allowed")]
    TooLarge(usize),
    /// The kind byte names no message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A topic message (0x07–0x0A), which neither side implements.
    #[error("unsupported message kind {0:#04x}")]
    UnsupportedKind(u8),
    /// The request id is longer than [`MAX_REQUEST_ID_LEN`].
    #[error("request id of {0} bytes, more than {MAX_REQUEST_ID_LEN}")]
    RequestIdTooLong(usize),
    /// The envelope or the inner message is not valid protobuf.
    #[error("invalid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A field the reference requires is missing.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field has the wrong length or an invalid value.
    #[error("invalid field {0}")]
    InvalidField(&'static str),
    /// A repeated field has more entries than its cap.
    #[error("{field}: {count} entries, more than {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Entries found.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A bytes field is longer than its cap.
    #[error("{field}: {len} bytes, more than {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

/// A request id: at most [`MAX_REQUEST_ID_LEN`] bytes, echoed in the response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(Vec<u8>);

impl RequestId {
    /// Eight random bytes, as the reference makes them.
    pub fn random() -> RequestId {
        RequestId(rand::random::<[u8; MAX_REQUEST_ID_LEN]>().to_vec())
    }

    /// A request id of `b` (0 to 8 bytes; the reference echoes 0- and 1-byte ids).
    pub fn from_slice(b: &[u8]) -> Result<RequestId, MessageError> {
        if b.len() > MAX_REQUEST_ID_LEN {
            return Err(MessageError::RequestIdTooLong(b.len()));
        }
        Ok(RequestId(b.to_vec()))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A DHT message (without its request id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Liveness check carrying the sender's record seq.
    Ping {
        /// The sender's SPR seq.
        spr_seq: u64,
    },
    /// Answer to PING: the responder's record seq and the address it saw the request from.
    Pong {
        /// The responder's SPR seq.
        spr_seq: u64,
        /// The requester's IP as the responder saw it.
        ip: IpAddr,
        /// The requester's UDP port as the responder saw it.
        port: u16,
    },
    /// Asks for the records at these log-distances.
    FindNode {
        /// Log-distances (0 = the responder's own record; > 256 gets an empty reply).
        distances: Vec<u16>,
    },
    /// One part of a FINDNODE/FINDNODE_FAST reply.
    Nodes {
        /// How many NODES messages the reply has.
        total: u32,
        /// Raw SPR envelopes.
        sprs: Vec<Vec<u8>>,
    },
    /// An application request.
    TalkReq {
        /// The talk protocol name.
        protocol: Vec<u8>,
        /// The request payload.
        request: Vec<u8>,
    },
    /// An application response (empty for an unknown protocol).
    TalkResp {
        /// The response payload.
        response: Vec<u8>,
    },
    /// Stores a provider record for a content id (no response).
    AddProvider {
        /// keccak256 of the binary CID.
        content: NodeId,
        /// The provider's raw SPR envelope.
        provider: Vec<u8>,
    },
    /// Asks for the provider records of a content id.
    GetProviders {
        /// keccak256 of the binary CID.
        content: NodeId,
    },
    /// Answer to GET_PROVIDERS.
    Providers {
        /// How many PROVIDERS messages the reply has (the reference always sends 1).
        total: u32,
        /// Raw SPR envelopes.
        providers: Vec<Vec<u8>>,
    },
    /// Asks for the (up to 6) records closest to a target id.
    FindNodeFast {
        /// The target id.
        target: NodeId,
    },
}

// --- protobuf shapes (presence-tracked, so zero values are written and required fields checked)

#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopePb {
    #[prost(bytes = "vec", optional, tag = "1")]
    request_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    message: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PingPb {
    #[prost(uint64, optional, tag = "1")]
    spr_seq: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpAddressPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    family: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    address: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PongPb {
    #[prost(uint64, optional, tag = "1")]
    spr_seq: Option<u64>,
    #[prost(message, optional, tag = "2")]
    ip: Option<IpAddressPb>,
    #[prost(bytes = "vec", optional, tag = "3")]
    port: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FindNodePb {
    #[prost(bytes = "vec", repeated, tag = "1")]
    distances: Vec<Vec<u8>>,
}

/// NODES and PROVIDERS share a shape.
#[derive(Clone, PartialEq, prost::Message)]
struct RecordsPb {
    #[prost(uint64, optional, tag = "1")]
    total: Option<u64>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    sprs: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TalkReqPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    protocol: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    request: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TalkRespPb {
    #[prost(bytes = "vec", optional, tag = "2")]
    response: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AddProviderPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    content: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    provider: Option<Vec<u8>>,
}

/// GET_PROVIDERS (content id) and FINDNODE_FAST (target) share a shape.
#[derive(Clone, PartialEq, prost::Message)]
struct IdPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    id: Option<Vec<u8>>,
}

fn required<T>(v: Option<T>, field: &'static str) -> Result<T, MessageError> {
    v.ok_or(MessageError::MissingField(field))
}

fn capped_bytes(
    v: Option<Vec<u8>>,
    field: &'static str,
    max: usize,
) -> Result<Vec<u8>, MessageError> {
    let v = required(v, field)?;
    if v.len() > max {
        return Err(MessageError::TooLong {
            field,
            len: v.len(),
            max,
        });
    }
    Ok(v)
}

fn node_id(v: Option<Vec<u8>>, field: &'static str) -> Result<NodeId, MessageError> {
    let bytes: [u8; 32] = required(v, field)?
        .try_into()
        .map_err(|_| MessageError::InvalidField(field))?;
    Ok(NodeId(bytes))
}

fn records(
    buf: &[u8],
    field: &'static str,
    max: usize,
) -> Result<(u32, Vec<Vec<u8>>), MessageError> {
    let pb = RecordsPb::decode(buf)?;
    let total = u32::try_from(required(pb.total, "total")?)
        .map_err(|_| MessageError::InvalidField("total"))?;
    if pb.sprs.len() > max {
        return Err(MessageError::TooMany {
            field,
            count: pb.sprs.len(),
            max,
        });
    }
    if let Some(long) = pb.sprs.iter().find(|s| s.len() > MAX_SPR_BYTES) {
        return Err(MessageError::TooLong {
            field,
            len: long.len(),
            max: MAX_SPR_BYTES,
        });
    }
    Ok((total, pb.sprs))
}

impl Message {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Ping { .. } => kind::PING,
            Message::Pong { .. } => kind::PONG,
            Message::FindNode { .. } => kind::FIND_NODE,
            Message::Nodes { .. } => kind::NODES,
            Message::TalkReq { .. } => kind::TALK_REQ,
            Message::TalkResp { .. } => kind::TALK_RESP,
            Message::AddProvider { .. } => kind::ADD_PROVIDER,
            Message::GetProviders { .. } => kind::GET_PROVIDERS,
            Message::Providers { .. } => kind::PROVIDERS,
            Message::FindNodeFast { .. } => kind::FIND_NODE_FAST,
        }
    }

    /// The kind of message that answers this request (`None` for ADDPROVIDER, which is not
    /// answered, and for responses).
    pub fn response_kind(&self) -> Option<u8> {
        match self {
            Message::Ping { .. } => Some(kind::PONG),
            Message::FindNode { .. } | Message::FindNodeFast { .. } => Some(kind::NODES),
            Message::TalkReq { .. } => Some(kind::TALK_RESP),
            Message::GetProviders { .. } => Some(kind::PROVIDERS),
            _ => None,
        }
    }

    /// Whether this is a request (PING, FINDNODE, TALKREQ, ADD_PROVIDER, GET_PROVIDERS,
    /// FINDNODE_FAST) rather than a response. ADD_PROVIDER is a request that gets no response.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::Ping { .. }
                | Message::FindNode { .. }
                | Message::TalkReq { .. }
                | Message::AddProvider { .. }
                | Message::GetProviders { .. }
                | Message::FindNodeFast { .. }
        )
    }

    /// The inner message bytes.
    fn encode_inner(&self) -> Vec<u8> {
        match self {
            Message::Ping { spr_seq } => PingPb {
                spr_seq: Some(*spr_seq),
            }
            .encode_to_vec(),
            Message::Pong { spr_seq, ip, port } => {
                let (family, address) = match ip {
                    IpAddr::V4(v4) => (FAMILY_IPV4, v4.octets().to_vec()),
                    IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets().to_vec()),
                };
                PongPb {
                    spr_seq: Some(*spr_seq),
                    ip: Some(IpAddressPb {
                        family: Some(vec![family]),
                        address: Some(address),
                    }),
                    port: Some(port.to_be_bytes().to_vec()),
                }
                .encode_to_vec()
            }
            Message::FindNode { distances } => FindNodePb {
                distances: distances.iter().map(|d| d.to_be_bytes().to_vec()).collect(),
            }
            .encode_to_vec(),
            Message::Nodes { total, sprs } => RecordsPb {
                total: Some(u64::from(*total)),
                sprs: sprs.clone(),
            }
            .encode_to_vec(),
            Message::TalkReq { protocol, request } => TalkReqPb {
                protocol: Some(protocol.clone()),
                request: Some(request.clone()),
            }
            .encode_to_vec(),
            Message::TalkResp { response } => TalkRespPb {
                response: Some(response.clone()),
            }
            .encode_to_vec(),
            Message::AddProvider { content, provider } => AddProviderPb {
                content: Some(content.as_bytes().to_vec()),
                provider: Some(provider.clone()),
            }
            .encode_to_vec(),
            Message::GetProviders { content } => IdPb {
                id: Some(content.as_bytes().to_vec()),
            }
            .encode_to_vec(),
            Message::Providers { total, providers } => RecordsPb {
                total: Some(u64::from(*total)),
                sprs: providers.clone(),
            }
            .encode_to_vec(),
            Message::FindNodeFast { target } => IdPb {
                id: Some(target.as_bytes().to_vec()),
            }
            .encode_to_vec(),
        }
    }

    /// The plaintext `kind ‖ Envelope{1 id, 2 inner}`, every field written (see the module docs).
    ///
    /// The encoder does not enforce the decoder's caps: a FINDNODE with no distances encodes,
    /// but neither the reference nor [`Message::decode`] accepts it.
    pub fn encode(&self, id: &RequestId) -> Vec<u8> {
        let envelope = EnvelopePb {
            request_id: Some(id.0.clone()),
            message: Some(self.encode_inner()),
        };
        let body = envelope.encode_to_vec();
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(self.kind());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a plaintext into its request id and message.
    pub fn decode(bytes: &[u8]) -> Result<(RequestId, Message), MessageError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let (&kind, rest) = bytes.split_first().ok_or(MessageError::Empty)?;
        match kind {
            kind::FIRST_TOPIC..=kind::LAST_TOPIC => {
                return Err(MessageError::UnsupportedKind(kind));
            }
            kind::PING
            | kind::PONG
            | kind::FIND_NODE
            | kind::NODES
            | kind::TALK_REQ
            | kind::TALK_RESP
            | kind::ADD_PROVIDER
            | kind::GET_PROVIDERS
            | kind::PROVIDERS
            | kind::FIND_NODE_FAST => {}
            other => return Err(MessageError::UnknownKind(other)),
        }
        let envelope = EnvelopePb::decode(rest)?;
        let id = RequestId::from_slice(&required(envelope.request_id, "request id")?)?;
        let inner = required(envelope.message, "message")?;
        let inner = inner.as_slice();
        let message = match kind {
            kind::PING => Message::Ping {
                spr_seq: required(PingPb::decode(inner)?.spr_seq, "sprSeq")?,
            },
            kind::PONG => {
                let pb = PongPb::decode(inner)?;
                let spr_seq = required(pb.spr_seq, "sprSeq")?;
                let ip = required(pb.ip, "ip")?;
                let family = required(ip.family, "ip family")?;
                let address = required(ip.address, "ip address")?;
                let ip = match (family.as_slice(), address.len()) {
                    ([FAMILY_IPV4], 4) => {
                        let octets: [u8; 4] = address
                            .try_into()
                            .map_err(|_| MessageError::InvalidField("ip address"))?;
                        IpAddr::V4(Ipv4Addr::from(octets))
                    }
                    ([FAMILY_IPV6], 16) => {
                        let octets: [u8; 16] = address
                            .try_into()
                            .map_err(|_| MessageError::InvalidField("ip address"))?;
                        IpAddr::V6(Ipv6Addr::from(octets))
                    }
                    _ => return Err(MessageError::InvalidField("ip address")),
                };
                let port: [u8; 2] = required(pb.port, "port")?
                    .try_into()
                    .map_err(|_| MessageError::InvalidField("port"))?;
                Message::Pong {
                    spr_seq,
                    ip,
                    port: u16::from_be_bytes(port),
                }
            }
            kind::FIND_NODE => {
                let pb = FindNodePb::decode(inner)?;
                if pb.distances.is_empty() {
                    // The reference's decoder requires the field: no reply (dht-verified.md).
                    return Err(MessageError::MissingField("distances"));
                }
                if pb.distances.len() > MAX_FINDNODE_DISTANCES {
                    return Err(MessageError::TooMany {
                        field: "distances",
                        count: pb.distances.len(),
                        max: MAX_FINDNODE_DISTANCES,
                    });
                }
                let distances = pb
                    .distances
                    .iter()
                    .map(|d| {
                        <[u8; 2]>::try_from(d.as_slice())
                            .map(u16::from_be_bytes)
                            .map_err(|_| MessageError::InvalidField("distance"))
                    })
                    .collect::<Result<Vec<u16>, _>>()?;
                Message::FindNode { distances }
            }
            kind::NODES => {
                let (total, sprs) = records(inner, "nodes", MAX_NODES_PER_MESSAGE)?;
                Message::Nodes { total, sprs }
            }
            kind::TALK_REQ => {
                let pb = TalkReqPb::decode(inner)?;
                Message::TalkReq {
                    protocol: capped_bytes(pb.protocol, "talk protocol", MAX_TALK_BYTES)?,
                    request: capped_bytes(pb.request, "talk request", MAX_TALK_BYTES)?,
                }
            }
            kind::TALK_RESP => Message::TalkResp {
                response: capped_bytes(
                    TalkRespPb::decode(inner)?.response,
                    "talk response",
                    MAX_TALK_BYTES,
                )?,
            },
            kind::ADD_PROVIDER => {
                let pb = AddProviderPb::decode(inner)?;
                Message::AddProvider {
                    content: node_id(pb.content, "content id")?,
                    provider: capped_bytes(pb.provider, "provider", MAX_SPR_BYTES)?,
                }
            }
            kind::GET_PROVIDERS => Message::GetProviders {
                content: node_id(IdPb::decode(inner)?.id, "content id")?,
            },
            kind::PROVIDERS => {
                let (total, providers) = records(inner, "providers", MAX_PROVIDERS_PER_MESSAGE)?;
                Message::Providers { total, providers }
            }
            kind::FIND_NODE_FAST => Message::FindNodeFast {
                target: node_id(IdPb::decode(inner)?.id, "target")?,
            },
            other => return Err(MessageError::UnknownKind(other)),
        };
        Ok((id, message))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spr::Spr;
    use crate::spr::tests::{LIVE_DHT_SPR, LIVE_PROVIDER_SPR, NIM_SPR_1, NIM_SPR_2};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn id(b: &[u8]) -> RequestId {
        RequestId::from_slice(b).unwrap()
    }

    /// Encodes to exactly `want` and decodes back to (`rid`, `msg`).
    fn both_ways(msg: Message, rid: &RequestId, want: &str) {
        assert_eq!(
            hex::encode(msg.encode(rid)),
            want.replace(' ', ""),
            "{msg:?}"
        );
        assert_eq!(Message::decode(&h(want)).unwrap(), (rid.clone(), msg));
    }

    /// codex-protocol.md §11.1 item 4: the reference's "Protocol Message Encodings" suite
    /// (request id `01`).
    #[test]
    fn reference_encodings() {
        let one = id(&[1]);
        both_ways(Message::Ping { spr_seq: 1 }, &one, "010a010112020801");
        both_ways(
            Message::Pong {
                spr_seq: 1,
                ip: "127.0.0.1".parse().unwrap(),
                port: 5000,
            },
            &one,
            "020a01011211080112090a010112047f0000011a021388",
        );
        both_ways(
            Message::FindNode {
                distances: vec![256],
            },
            &one,
            "030a010112040a020100",
        );
        both_ways(
            Message::Nodes {
                total: 1,
                sprs: vec![],
            },
            &one,
            "040a010112020801",
        );
        both_ways(
            Message::TalkReq {
                protocol: b"echo".to_vec(),
                request: b"hi".to_vec(),
            },
            &one,
            "050a0101120a0a046563686f12026869",
        );
        both_ways(
            Message::TalkResp {
                response: b"hi".to_vec(),
            },
            &one,
            "060a0101120412026869",
        );
    }

    /// The reference's "Nodes Response (multiple)": two SPRs (§11.1 item 7) in one NODES.
    #[test]
    fn reference_nodes_multiple() {
        let s1 = Spr::from_uri(NIM_SPR_1).unwrap();
        let s2 = Spr::from_uri(NIM_SPR_2).unwrap();
        both_ways(
            Message::Nodes {
                total: 1,
                sprs: vec![s1.encoded().to_vec(), s2.encoded().to_vec()],
            },
            &id(&[1]),
            "040a0101129f03080112cc010a250802122102339d487ed237392d83791950dc891f0636de698c1fa051ea01ae3fa58bd78580120203011a560a2700250802122102339d487ed237392d83791950dc891f0636de698c1fa051ea01ae3fa58bd78580109cfd8992061a0b0a090400000000910200011a0b0a090400000000910200021a0b0a090400000000910200032a4730450221008cc77fd265e33c955174b9f49628048b2d72a6395acb30f0ba9d90536fa1a5d502207fa8e5bab8e8ddee9884a8e244b0990228e3546b5a9b6848632abd924796e57612cb010a2508021221026beda5cfddf1cd89130e7b5bb6092bac23db4a044bf847328aa0310dd123a445120203011a560a27002508021221026beda5cfddf1cd89130e7b5bb6092bac23db4a044bf847328aa0310dd123a445109cfd8992061a0b0a090400000000910200011a0b0a090400000000910200021a0b0a090400000000910200032a46304402203d41b1a78c5e6d98c9b4f3fcb213dc16ae4de50a1c8715ab29c516afe6488b4e02205841d09e92b3d2f1ad72c7bc066e561dab57320886f3fbbf272d2cf1732ca259",
        );
    }

    /// The reference's "Ping with too large RequestId" and "Pong with invalid IP address size".
    #[test]
    fn reference_rejections() {
        assert!(matches!(
            Message::decode(&h("010a0900010203040506070812020801")),
            Err(MessageError::RequestIdTooLong(9))
        ));
        assert!(matches!(
            RequestId::from_slice(&[0; 9]),
            Err(MessageError::RequestIdTooLong(9))
        ));
        assert!(Message::decode(&h("02cb0101857f00000102821388")).is_err());
    }

    /// dht-verified.md: plaintexts a live reference node sent.
    #[test]
    fn live_node_plaintexts() {
        // PONG: sprSeq 1795225494, 127.0.0.1, port 51628.
        both_ways(
            Message::Pong {
                spr_seq: 1_795_225_494,
                ip: "127.0.0.1".parse().unwrap(),
                port: 51628,
            },
            &id(&h("3457e39a88feedaa")),
            "020a083457e39a88feedaa12150896ef83d80612090a010112047f0000011a02c9ac",
        );
        // NODES for distance 0: the node's own DHT record.
        both_ways(
            Message::Nodes {
                total: 1,
                sprs: vec![h(LIVE_DHT_SPR)],
            },
            &id(&h("ed3293e13b2487bd")),
            &format!("040a08ed3293e13b2487bd12b601080112b101{LIVE_DHT_SPR}"),
        );
        // ADD_PROVIDER for the manifest's content id with the provider record.
        let content = NodeId(
            h("9c2340e844ea7c4a8bfbe9f81b97b5374d853afe11de4a1f1c204bffd2919a23")
                .try_into()
                .unwrap(),
        );
        both_ways(
            Message::AddProvider {
                content,
                provider: h(LIVE_PROVIDER_SPR),
            },
            &id(&h("c9a5c246c44e793f")),
            &format!(
                "0b0a08c9a5c246c44e793f12d6010a20{}12b101{LIVE_PROVIDER_SPR}",
                hex::encode(content.as_bytes())
            ),
        );
        // The node's own PING (sprSeq = its record's seq).
        both_ways(
            Message::Ping {
                spr_seq: 1_795_225_494,
            },
            &id(&h("48cd3f1c2efab445")),
            "010a0848cd3f1c2efab44512060896ef83d806",
        );
        // The node's lookup FINDNODE asked for [253, 254, 252]: inner `0a0200fd 0a0200fe 0a0200fc`.
        let rid = id(&h("0102030405060708"));
        both_ways(
            Message::FindNode {
                distances: vec![253, 254, 252],
            },
            &rid,
            "030a08010203040506070812 0c 0a0200fd0a0200fe0a0200fc",
        );
        // Empty replies: NODES, PROVIDERS, TALKRESP to an unknown protocol.
        both_ways(
            Message::Nodes {
                total: 1,
                sprs: vec![],
            },
            &rid,
            "040a08010203040506070812020801",
        );
        both_ways(
            Message::Providers {
                total: 1,
                providers: vec![],
            },
            &rid,
            "0d0a08010203040506070812020801",
        );
        both_ways(
            Message::TalkResp { response: vec![] },
            &rid,
            "060a08010203040506070812021200",
        );
    }

    /// dht-verified.md: 0- and 1-byte request ids are valid (the node echoed `0a00`, `0a0107`);
    /// a trailing envelope field 3 (clientMode, `18 00` / `18 01`) is ignored.
    #[test]
    fn request_id_lengths_and_client_mode() {
        both_ways(Message::Ping { spr_seq: 7 }, &id(&[]), "010a0012020807");
        both_ways(Message::Ping { spr_seq: 7 }, &id(&[7]), "010a010712020807");
        for tail in ["1800", "1801"] {
            let (rid, msg) =
                Message::decode(&h(&format!("010a08010203040506070812020801{tail}"))).unwrap();
            assert_eq!(rid.as_bytes(), h("0102030405060708"));
            assert_eq!(msg, Message::Ping { spr_seq: 1 });
        }
        // A clientMode field before the others is skipped too.
        assert!(Message::decode(&h("0118010a0012020801")).is_ok());
        assert_eq!(RequestId::random().as_bytes().len(), 8);
    }

    /// dht-verified.md correction 3: the reference drops an empty FINDNODE and a PING without
    /// sprSeq; we reject them alike, and we always write zero values.
    #[test]
    fn required_fields() {
        let rid = id(&[1]);
        // sprSeq 0 is written as `08 00`.
        both_ways(Message::Ping { spr_seq: 0 }, &rid, "010a010112020800");
        // An empty PING inner message is refused.
        assert!(matches!(
            Message::decode(&h("010a01011200")),
            Err(MessageError::MissingField("sprSeq"))
        ));
        // An empty FINDNODE encodes (no field 1) but does not decode.
        let empty = Message::FindNode { distances: vec![] }.encode(&rid);
        assert_eq!(hex::encode(&empty), "030a01011200");
        assert!(matches!(
            Message::decode(&empty),
            Err(MessageError::MissingField("distances"))
        ));
        // Zero totals and empty talk fields are written.
        both_ways(
            Message::Nodes {
                total: 0,
                sprs: vec![],
            },
            &rid,
            "040a010112020800",
        );
        both_ways(
            Message::TalkReq {
                protocol: vec![],
                request: vec![],
            },
            &rid,
            "050a01011204 0a00 1200",
        );
        // Missing request id, missing inner message.
        assert!(matches!(
            Message::decode(&h("0112020801")),
            Err(MessageError::MissingField("request id"))
        ));
        assert!(matches!(
            Message::decode(&h("010a0101")),
            Err(MessageError::MissingField("message"))
        ));
        // TALKREQ without its request, TALKRESP without its response.
        assert!(Message::decode(&h("050a010112060a046563686f")).is_err());
        assert!(Message::decode(&h("060a01011200")).is_err());
        // PONG without port.
        assert!(Message::decode(&h("020a0101120f080112090a010112047f000001")).is_err());
    }

    #[test]
    fn kinds_and_bounds() {
        assert!(matches!(Message::decode(&[]), Err(MessageError::Empty)));
        assert!(matches!(
            Message::decode(&h("000a01011200")),
            Err(MessageError::UnknownKind(0))
        ));
        for k in 7..=10u8 {
            assert!(matches!(
                Message::decode(&[k, 0x0a, 0x00, 0x12, 0x00]),
                Err(MessageError::UnsupportedKind(_))
            ));
        }
        assert!(matches!(
            Message::decode(&[0x84, 0x0a, 0x00, 0x12, 0x00]),
            Err(MessageError::UnknownKind(0x84))
        ));
        assert!(matches!(
            Message::decode(&vec![1; MAX_MESSAGE_SIZE + 1]),
            Err(MessageError::TooLarge(_))
        ));
        let rid = id(&[1]);
        let too_many = Message::FindNode {
            distances: vec![1; MAX_FINDNODE_DISTANCES + 1],
        };
        assert!(matches!(
            Message::decode(&too_many.encode(&rid)),
            Err(MessageError::TooMany {
                field: "distances",
                ..
            })
        ));
        let spr = h(LIVE_DHT_SPR);
        let nodes = Message::Nodes {
            total: 1,
            sprs: vec![spr.clone(); MAX_NODES_PER_MESSAGE + 1],
        };
        assert!(matches!(
            Message::decode(&nodes.encode(&rid)),
            Err(MessageError::TooMany { field: "nodes", .. })
        ));
        let providers = Message::Providers {
            total: 1,
            providers: vec![vec![0; MAX_SPR_BYTES]; MAX_PROVIDERS_PER_MESSAGE],
        };
        assert!(Message::decode(&providers.encode(&rid)).is_ok());
        let providers = Message::Providers {
            total: 1,
            providers: vec![spr.clone(); MAX_PROVIDERS_PER_MESSAGE + 1],
        };
        assert!(matches!(
            Message::decode(&providers.encode(&rid)),
            Err(MessageError::TooMany {
                field: "providers",
                ..
            })
        ));
        let big = Message::AddProvider {
            content: NodeId([1; 32]),
            provider: vec![0; MAX_SPR_BYTES + 1],
        };
        assert!(matches!(
            Message::decode(&big.encode(&rid)),
            Err(MessageError::TooLong { .. })
        ));
        let talk = Message::TalkReq {
            protocol: b"x".to_vec(),
            request: vec![0; MAX_TALK_BYTES + 1],
        };
        assert!(matches!(
            Message::decode(&talk.encode(&rid)),
            Err(MessageError::TooLong { .. })
        ));
        // Totals beyond u32 are refused, not truncated.
        assert!(matches!(
            Message::decode(&h("040a0101120608ffffffff10")),
            Err(MessageError::InvalidField("total"))
        ));
        // Ids of the wrong length, distances of the wrong length, ports of the wrong length.
        assert!(Message::decode(&h("0c0a01011203 0a0101")).is_err());
        assert!(Message::decode(&h("830a01011203 0a0101")).is_err());
        assert!(Message::decode(&h("030a010112050a03000100")).is_err());
        assert!(Message::decode(&h("020a01011212080112090a010112047f0000011a03001388")).is_err());
        // IPv4 family with 16 bytes, unknown family.
        assert!(
            Message::decode(&h(
                "020a0101121d080112150a01011210000000000000000000000000000000011a021388"
            ))
            .is_err()
        );
        assert!(Message::decode(&h("020a01011211080112090a010212047f0000011a021388")).is_err());
        // Wrong wire type for the request id (varint instead of bytes).
        assert!(Message::decode(&h("01080112020801")).is_err());
    }

    #[test]
    fn ipv6_pong_and_kinds() {
        let rid = id(&[9, 9]);
        let pong = Message::Pong {
            spr_seq: u64::MAX,
            ip: "2001:db8::1".parse().unwrap(),
            port: 0,
        };
        let bytes = pong.encode(&rid);
        assert_eq!(Message::decode(&bytes).unwrap(), (rid, pong.clone()));
        // Family byte 00 for IPv6, port written as 2 zero bytes.
        assert!(hex::encode(&bytes).contains("0a0100121020010db8"));
        assert!(hex::encode(&bytes).ends_with("1a020000"));
        assert_eq!(pong.kind(), 2);
        assert!(!pong.is_request());
        assert!(
            Message::AddProvider {
                content: NodeId([0; 32]),
                provider: vec![]
            }
            .is_request()
        );
        assert_eq!(
            Message::FindNodeFast {
                target: NodeId([0; 32])
            }
            .kind(),
            0x83
        );
    }

    fn any_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn any_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId)
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<u64>().prop_map(|spr_seq| Message::Ping { spr_seq }),
            (any::<u64>(), any_ip(), any::<u16>()).prop_map(|(spr_seq, ip, port)| Message::Pong {
                spr_seq,
                ip,
                port
            }),
            proptest::collection::vec(any::<u16>(), 1..=MAX_FINDNODE_DISTANCES)
                .prop_map(|distances| Message::FindNode { distances }),
            (
                any::<u32>(),
                proptest::collection::vec(any_bytes(MAX_SPR_BYTES), 0..=3)
            )
                .prop_map(|(total, sprs)| Message::Nodes { total, sprs }),
            (any_bytes(64), any_bytes(MAX_TALK_BYTES))
                .prop_map(|(protocol, request)| Message::TalkReq { protocol, request }),
            any_bytes(MAX_TALK_BYTES).prop_map(|response| Message::TalkResp { response }),
            (any_id(), any_bytes(MAX_SPR_BYTES))
                .prop_map(|(content, provider)| Message::AddProvider { content, provider }),
            any_id().prop_map(|content| Message::GetProviders { content }),
            (
                any::<u32>(),
                proptest::collection::vec(any_bytes(300), 0..=MAX_PROVIDERS_PER_MESSAGE)
            )
                .prop_map(|(total, providers)| Message::Providers { total, providers }),
            any_id().prop_map(|target| Message::FindNodeFast { target }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(
            msg in any_message(),
            rid in any_bytes(MAX_REQUEST_ID_LEN + 1),
        ) {
            let rid = RequestId::from_slice(&rid).unwrap();
            let bytes = msg.encode(&rid);
            prop_assert_eq!(Message::decode(&bytes).unwrap(), (rid, msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in any_bytes(600)) {
            let _ = Message::decode(&bytes);
        }

        /// Valid kind byte and a mutated valid envelope, to reach the inner decoders.
        #[test]
        fn mutated_messages_never_panic(
            msg in any_message(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = msg.encode(&RequestId::from_slice(&[1, 2]).unwrap());
            for (at, x) in flips {
                let i = 1 + at % (bytes.len() - 1);
                bytes[i] ^= x;
            }
            bytes.truncate(1 + cut % bytes.len());
            let _ = Message::decode(&bytes);
        }
    }
}
