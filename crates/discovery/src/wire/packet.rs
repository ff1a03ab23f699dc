//! UDP packets: masking, headers and authdata (codex-protocol.md §7.2, nim-codex-dht
//! `encoding.nim`).
//!
//! `packet = masking-iv (16) ‖ masked-header ‖ message`, where the header is
//! `static-header ‖ authdata`, masked with AES-128-CTR keyed by the first 16 bytes of the
//! *destination* node id with the masking iv as counter block. The 23-byte static header is
//! `"discv5" ‖ version 00 01 ‖ flag ‖ nonce (12) ‖ authdata-size (2, BE)`. Authdata by flag:
//!
//! | flag | packet | authdata | message |
//! |---|---|---|---|
//! | 0 | ordinary | source id (32) | AES-GCM ciphertext (≥ 16 bytes) |
//! | 1 | WHOAREYOU | id-nonce (16) ‖ record seq (8, BE) | empty |
//! | 2 | handshake | source id (32) ‖ sig-size (1) ‖ eph-key-size (1) ‖ id-signature ‖ ephemeral key ‖ optional SPR | AES-GCM ciphertext (≥ 16 bytes) |
//!
//! Design: this layer only frames. [`Packet::decode`] unmasks and checks the framing exactly
//! where the reference does (size, protocol id, version, flag, authdata sizes per flag, the
//! WHOAREYOU's empty message, a ciphertext of at least a tag) and returns the still-encrypted
//! message; the session layer picks the key and calls [`crate::wire::crypto::decrypt`] with
//! [`Packet::authenticated_data`] as the associated data (for a WHOAREYOU that same value is the
//! challenge-data of the handshake). Nothing here panics on any input.
//!
//! Packet size: discv5 limits packets to [`MAX_PACKET_SIZE`] (1280) bytes, but the reference
//! does not hold to that on send: it answers GET_PROVIDERS with up to 20 records in one
//! PROVIDERS message (`protocol.nim` `handleGetProviders`, `MaxProvidersPerEntry`), a packet of
//! about 3.7 KB with one-address records. So decoding accepts up to
//! [`MAX_INBOUND_PACKET_SIZE`], sized for the largest message we decode.
//!
//! Tests check the reference's "Packet Encodings Test Vectors"
//! (`tests/discv5/test_discoveryv5_encoding.nim`, codex-protocol.md §11.1 item 6): the ordinary
//! PING (all-zero read key, plaintext `01 0a0400000001 12020802`), the WHOAREYOU (its
//! challenge-data, and that a trailing byte is refused), and both handshake packets (decrypted
//! with node B's key, id-signatures verified with node A's, our id signature and re-encoding
//! reproducing them byte for byte, a trailing byte failing decryption); the 63-byte WHOAREYOU a
//! live reference node sent (dht-verified.md); a full handshake between two of our own nodes;
//! and, by property, encode→decode round trips and that random, garbled or truncated input is
//! an error, never a panic.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};

use crate::ids::NodeId;
use crate::spr::MAX_SPR_BYTES;
use crate::wire::crypto::{NONCE_SIZE, TAG_SIZE};
use crate::wire::message::MAX_MESSAGE_SIZE;

/// The smallest packet: a WHOAREYOU (16 + 23 + 24 bytes).
pub const MIN_PACKET_SIZE: usize = IV_SIZE + STATIC_HEADER_SIZE + WHOAREYOU_AUTHDATA_SIZE;

/// The discv5 packet size limit: the most a sender should put in one packet. The session layer
/// keeps what it sends within it; decoding accepts more ([`MAX_INBOUND_PACKET_SIZE`], see the
/// module docs).
pub const MAX_PACKET_SIZE: usize = 1280;

/// The largest packet [`Packet::decode`] accepts (and [`Packet::encode`] produces): a handshake
/// header with the largest signature, key and SPR around the largest message we decode
/// ([`MAX_MESSAGE_SIZE`]), encrypted. About 26 KB, well inside one UDP datagram.
pub const MAX_INBOUND_PACKET_SIZE: usize =
    IV_SIZE + STATIC_HEADER_SIZE + MAX_HANDSHAKE_AUTHDATA_SIZE + MAX_MESSAGE_SIZE + TAG_SIZE;

/// The AES-GCM nonce carried in the static header.
pub type Nonce = [u8; NONCE_SIZE];

/// Length of the masking iv.
pub const IV_SIZE: usize = 16;
/// Length of the static header.
pub const STATIC_HEADER_SIZE: usize = PROTOCOL_ID.len() + 2 + 1 + NONCE_SIZE + 2;
/// Length of a WHOAREYOU's id-nonce.
pub const ID_NONCE_SIZE: usize = 16;

/// The protocol id at the start of every static header.
const PROTOCOL_ID: &[u8; 6] = b"discv5";
/// The protocol version, `00 01`.
const VERSION: u16 = 1;
/// Flag of an ordinary message packet.
const FLAG_MESSAGE: u8 = 0;
/// Flag of a WHOAREYOU packet.
const FLAG_WHOAREYOU: u8 = 1;
/// Flag of a handshake message packet.
const FLAG_HANDSHAKE: u8 = 2;
/// Authdata of an ordinary packet: the source id.
const MESSAGE_AUTHDATA_SIZE: usize = 32;
/// Authdata of a WHOAREYOU: id-nonce and record seq.
const WHOAREYOU_AUTHDATA_SIZE: usize = ID_NONCE_SIZE + 8;
/// The fixed head of a handshake's authdata: source id, sig-size, eph-key-size.
const HANDSHAKE_AUTHDATA_HEAD: usize = 32 + 1 + 1;
/// The largest handshake authdata: the head, a signature and a key of up to 255 bytes each (their
/// sizes are one byte), and an SPR of up to [`MAX_SPR_BYTES`].
const MAX_HANDSHAKE_AUTHDATA_SIZE: usize = HANDSHAKE_AUTHDATA_HEAD + 255 + 255 + MAX_SPR_BYTES;

/// AES-128 in CTR mode with a 128-bit big-endian counter (the header masking).
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Why a packet did not decode or encode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than [`MIN_PACKET_SIZE`].
    #[error("packet of {0} bytes is too short")]
    TooShort(usize),
    /// Longer than [`MAX_INBOUND_PACKET_SIZE`].
    #[error("packet of {0} bytes is too large")]
    TooLarge(usize),
    /// The unmasked header does not start with `discv5` (not for us, or not discv5).
    #[error("invalid protocol id")]
    ProtocolId,
    /// The version is not `00 01`.
    #[error("unsupported protocol version {0:#06x}")]
    Version(u16),
    /// The flag is not 0, 1 or 2.
    #[error("invalid packet flag {0}")]
    Flag(u8),
    /// The authdata-size runs past the end of the packet.
    #[error("authdata-size {size} but only {available} bytes follow the static header")]
    AuthdataTruncated {
        /// The authdata-size in the header.
        size: usize,
        /// The bytes after the static header.
        available: usize,
    },
    /// The authdata has the wrong size for the flag.
    #[error("authdata of {size} bytes is invalid for flag {flag}")]
    AuthdataSize {
        /// The packet flag.
        flag: u8,
        /// The authdata size.
        size: usize,
    },
    /// A WHOAREYOU carries a message part.
    #[error("WHOAREYOU with a {0}-byte message")]
    WhoAreYouMessage(usize),
    /// An ordinary or handshake packet's message is shorter than a GCM tag.
    #[error("message of {0} bytes is shorter than a tag")]
    MessageTooShort(usize),
    /// A handshake's signature or key size is 0, or they run past the authdata.
    #[error("invalid handshake authdata sizes")]
    HandshakeSizes,
    /// A handshake's SPR is longer than [`MAX_SPR_BYTES`].
    #[error("handshake SPR of {0} bytes is too large")]
    SprTooLarge(usize),
    /// (Encoding) a signature or ephemeral key is empty or longer than 255 bytes.
    #[error("signature or ephemeral key of {0} bytes does not fit a one-byte size")]
    FieldSize(usize),
}

/// What kind of packet, with its authdata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// An ordinary message from `src`.
    Message {
        /// The sender's node id.
        src: NodeId,
    },
    /// A challenge: the recipient has no session with the sender of the packet with this nonce.
    WhoAreYou {
        /// Random nonce the handshake signs over (via the challenge-data).
        id_nonce: [u8; ID_NONCE_SIZE],
        /// The seq of the challenger's copy of our record (0 if it has none).
        enr_seq: u64,
    },
    /// A handshake message from `src`, answering a WHOAREYOU.
    Handshake {
        /// The sender's node id.
        src: NodeId,
        /// DER id signature.
        id_signature: Vec<u8>,
        /// Ephemeral public key (libp2p protobuf form, 37 bytes).
        eph_pubkey: Vec<u8>,
        /// The sender's SPR envelope, if the WHOAREYOU's seq was older than its own.
        spr: Option<Vec<u8>>,
    },
}

impl PacketKind {
    fn flag(&self) -> u8 {
        match self {
            PacketKind::Message { .. } => FLAG_MESSAGE,
            PacketKind::WhoAreYou { .. } => FLAG_WHOAREYOU,
            PacketKind::Handshake { .. } => FLAG_HANDSHAKE,
        }
    }

    fn authdata(&self) -> Result<Vec<u8>, PacketError> {
        match self {
            PacketKind::Message { src } => Ok(src.as_bytes().to_vec()),
            PacketKind::WhoAreYou { id_nonce, enr_seq } => {
                let mut a = Vec::with_capacity(WHOAREYOU_AUTHDATA_SIZE);
                a.extend_from_slice(id_nonce);
                a.extend_from_slice(&enr_seq.to_be_bytes());
                Ok(a)
            }
            PacketKind::Handshake {
                src,
                id_signature,
                eph_pubkey,
                spr,
            } => {
                let size = |v: &Vec<u8>| match u8::try_from(v.len()) {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(PacketError::FieldSize(v.len())),
                };
                let sig_size = size(id_signature)?;
                let eph_size = size(eph_pubkey)?;
                let spr = spr.as_deref().unwrap_or_default();
                if spr.len() > MAX_SPR_BYTES {
                    return Err(PacketError::SprTooLarge(spr.len()));
                }
                let mut a = Vec::with_capacity(
                    HANDSHAKE_AUTHDATA_HEAD + id_signature.len() + eph_pubkey.len() + spr.len(),
                );
                a.extend_from_slice(src.as_bytes());
                a.push(sig_size);
                a.push(eph_size);
                a.extend_from_slice(id_signature);
                a.extend_from_slice(eph_pubkey);
                a.extend_from_slice(spr);
                Ok(a)
            }
        }
    }
}

/// A packet: masking iv, header nonce, kind with authdata, and the (encrypted) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The masking iv (random per packet).
    pub iv: [u8; IV_SIZE],
    /// The header nonce (the AES-GCM nonce; a WHOAREYOU echoes the nonce it answers).
    pub nonce: Nonce,
    /// Kind and authdata.
    pub kind: PacketKind,
    /// The message ciphertext (with its tag); empty for a WHOAREYOU.
    pub message: Vec<u8>,
}

/// `key` for the masking cipher: the first 16 bytes of the destination id.
fn masking_cipher(dest: &NodeId, iv: &[u8; IV_SIZE]) -> Aes128Ctr {
    let mut key = [0u8; 16];
    key.copy_from_slice(&dest.as_bytes()[..16]);
    Aes128Ctr::new(&key.into(), iv.into())
}

impl Packet {
    /// A packet of `kind` with `nonce`, a random masking iv and no message yet.
    pub fn new(kind: PacketKind, nonce: Nonce) -> Packet {
        Packet {
            iv: rand::random(),
            nonce,
            kind,
            message: Vec::new(),
        }
    }

    /// `static-header ‖ authdata`, unmasked.
    fn header(&self) -> Result<Vec<u8>, PacketError> {
        let authdata = self.kind.authdata()?;
        // Authdata is bounded by MAX_HANDSHAKE_AUTHDATA_SIZE, far below u16::MAX.
        let size = u16::try_from(authdata.len())
            .map_err(|_| PacketError::AuthdataSize {
                flag: self.kind.flag(),
                size: authdata.len(),
            })?
            .to_be_bytes();
        let mut h = Vec::with_capacity(STATIC_HEADER_SIZE + authdata.len());
        h.extend_from_slice(PROTOCOL_ID);
        h.extend_from_slice(&VERSION.to_be_bytes());
        h.push(self.kind.flag());
        h.extend_from_slice(&self.nonce);
        h.extend_from_slice(&size);
        h.extend_from_slice(&authdata);
        Ok(h)
    }

    /// `masking-iv ‖ static-header ‖ authdata`: the AES-GCM associated data of the message, and
    /// for a WHOAREYOU the challenge-data the handshake signs and derives keys from.
    ///
    /// Errors only for a handshake whose signature or key is empty or longer than 255 bytes, or
    /// whose SPR is longer than [`MAX_SPR_BYTES`].
    pub fn authenticated_data(&self) -> Result<Vec<u8>, PacketError> {
        let header = self.header()?;
        let mut ad = Vec::with_capacity(IV_SIZE + header.len());
        ad.extend_from_slice(&self.iv);
        ad.extend_from_slice(&header);
        Ok(ad)
    }

    /// The wire bytes for `dest`: iv, the header masked with `dest`'s id, the message.
    ///
    /// Errors as [`Packet::authenticated_data`], for a WHOAREYOU with a message, and for a
    /// packet larger than [`MAX_INBOUND_PACKET_SIZE`].
    pub fn encode(&self, dest: &NodeId) -> Result<Vec<u8>, PacketError> {
        if matches!(self.kind, PacketKind::WhoAreYou { .. }) && !self.message.is_empty() {
            return Err(PacketError::WhoAreYouMessage(self.message.len()));
        }
        let mut header = self.header()?;
        let len = IV_SIZE + header.len() + self.message.len();
        if len > MAX_INBOUND_PACKET_SIZE {
            return Err(PacketError::TooLarge(len));
        }
        masking_cipher(dest, &self.iv).apply_keystream(&mut header);
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.message);
        Ok(out)
    }

    /// Unmasks and checks a packet sent to `local` (see the module docs for the checks).
    pub fn decode(local: &NodeId, bytes: &[u8]) -> Result<Packet, PacketError> {
        if bytes.len() < MIN_PACKET_SIZE {
            return Err(PacketError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_INBOUND_PACKET_SIZE {
            return Err(PacketError::TooLarge(bytes.len()));
        }
        let (iv, rest) = bytes
            .split_first_chunk::<IV_SIZE>()
            .ok_or(PacketError::TooShort(bytes.len()))?;
        let (masked_static, rest) = rest
            .split_first_chunk::<STATIC_HEADER_SIZE>()
            .ok_or(PacketError::TooShort(bytes.len()))?;
        let mut cipher = masking_cipher(local, iv);
        let mut st = *masked_static;
        cipher.apply_keystream(&mut st);

        if &st[..6] != PROTOCOL_ID {
            return Err(PacketError::ProtocolId);
        }
        let version = u16::from_be_bytes([st[6], st[7]]);
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let flag = st[8];
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&st[9..9 + NONCE_SIZE]);
        let authdata_size = usize::from(u16::from_be_bytes([st[21], st[22]]));
        if rest.len() < authdata_size {
            return Err(PacketError::AuthdataTruncated {
                size: authdata_size,
                available: rest.len(),
            });
        }
        let (masked_authdata, message) = rest.split_at(authdata_size);
        // The keystream continues from the static header into the authdata.
        let mut authdata = masked_authdata.to_vec();
        cipher.apply_keystream(&mut authdata);
        let bad_size = || PacketError::AuthdataSize {
            flag,
            size: authdata_size,
        };

        let kind = match flag {
            FLAG_MESSAGE => {
                let src: [u8; MESSAGE_AUTHDATA_SIZE] =
                    authdata.as_slice().try_into().map_err(|_| bad_size())?;
                PacketKind::Message { src: NodeId(src) }
            }
            FLAG_WHOAREYOU => {
                let fixed: &[u8; WHOAREYOU_AUTHDATA_SIZE] =
                    authdata.as_slice().try_into().map_err(|_| bad_size())?;
                let (id_nonce, seq) = fixed.split_at(ID_NONCE_SIZE);
                let mut n = [0u8; ID_NONCE_SIZE];
                n.copy_from_slice(id_nonce);
                let mut s = [0u8; 8];
                s.copy_from_slice(seq);
                PacketKind::WhoAreYou {
                    id_nonce: n,
                    enr_seq: u64::from_be_bytes(s),
                }
            }
            FLAG_HANDSHAKE => {
                let (head, rest) = authdata
                    .split_first_chunk::<HANDSHAKE_AUTHDATA_HEAD>()
                    .ok_or_else(bad_size)?;
                let mut src = [0u8; 32];
                src.copy_from_slice(&head[..32]);
                let sig_size = usize::from(head[32]);
                let eph_size = usize::from(head[33]);
                if sig_size == 0 || eph_size == 0 || rest.len() < sig_size + eph_size {
                    return Err(PacketError::HandshakeSizes);
                }
                let (sig, rest) = rest.split_at(sig_size);
                let (eph, spr) = rest.split_at(eph_size);
                if spr.len() > MAX_SPR_BYTES {
                    return Err(PacketError::SprTooLarge(spr.len()));
                }
                PacketKind::Handshake {
                    src: NodeId(src),
                    id_signature: sig.to_vec(),
                    eph_pubkey: eph.to_vec(),
                    spr: (!spr.is_empty()).then(|| spr.to_vec()),
                }
            }
            other => return Err(PacketError::Flag(other)),
        };

        match kind {
            PacketKind::WhoAreYou { .. } if !message.is_empty() => {
                return Err(PacketError::WhoAreYouMessage(message.len()));
            }
            PacketKind::Message { .. } | PacketKind::Handshake { .. }
                if message.len() < TAG_SIZE =>
            {
                return Err(PacketError::MessageTooShort(message.len()));
            }
            _ => {}
        }

        Ok(Packet {
            iv: *iv,
            nonce,
            kind,
            message: message.to_vec(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spr::Spr;
    use crate::spr::tests::{NODE_A_SECRET, NODE_B_SECRET, keypair};
    use crate::wire::crypto::{
        decode_eph_pubkey, decrypt, derive_keys, ecdh, encode_eph_pubkey, encrypt,
        ephemeral_secret, id_sign, id_verify, k256_public, static_secret,
    };
    use crate::wire::message::{Message, RequestId};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn node_id(s: &str) -> NodeId {
        NodeId(h(s).try_into().unwrap())
    }

    const NODE_A_ID: &str = "a3646e4d56478a29147fbe110b557bbfabb9d01860069dc4004a694d74bee342";
    const NODE_B_ID: &str = "b925a99248062196a94e09c1f1fe138163608dc40a6b3b0e8f44b2290d602b47";

    /// Reference test "Ping Ordinary Message Packet".
    const PING_PACKET: &str = concat!(
        "000000000000000000000000000000003788c1e1079e89374c4beac74d76364d",
        "bd9e8cd1847adc2f49fbacc6862425583586c023b19b6fdd1d836777ee39fee8",
        "7afd279a5fe4ffdd21ed1a6d388207f00b48115b8ee4e8eaf675b0865821e126",
        "36bc"
    );
    /// Reference test "Whoareyou Packet".
    const WHOAREYOU_PACKET: &str = concat!(
        "000000000000000000000000000000003788c1e1079e89374d4beac74d76364d",
        "bd9e8cd1847ae48d2f96e595c7a904454033dd25eaefc076a4537f17e8a43a"
    );
    /// The challenge-data of the WHOAREYOU (seq 0); the plain handshake's challenge had seq 1.
    const CHALLENGE_SEQ0: &str = "000000000000000000000000000000006469736376350001010102030405060708090a0b0c00180102030405060708090a0b0c0d0e0f100000000000000000";
    const CHALLENGE_SEQ1: &str = "000000000000000000000000000000006469736376350001010102030405060708090a0b0c00180102030405060708090a0b0c0d0e0f100000000000000001";
    /// Reference test "Ping Handshake Message Packet".
    const HANDSHAKE_PACKET: &str = concat!(
        "000000000000000000000000000000003788c1e1079e89374e4beac74d76364d",
        "bd9e8cd1847a712f49fbacc6862425583586c023b19b6fdd1d836777ee39fee8",
        "7afd279a5fe4ff441af3b17ec840104be4fae12da6828a752f1f7df615c4c757",
        "9558b0b537760549eb0e5ada50545b066734abb4b7bddbd503fad873e981b485",
        "dc9f8eee725661ebf766ce027edc9dcb55f6160b06d9c764481fb520b7581678",
        "e5fce2ab0d5fa2edaa92f252db6d6ea30d52a78e4114fb9dcf26fb1690e65ca0",
        "079386331f311bfc0aef4a771155ed"
    );
    /// Reference test "Ping Handshake Message Packet with SPR".
    const HANDSHAKE_SPR_PACKET: &str = concat!(
        "000000000000000000000000000000003788c1e1079e89374e4beac74d76364d",
        "bd9e8cd1847bc72f49fbacc6862425583586c023b19b6fdd1d836777ee39fee8",
        "7afd279a5fe4ff441af3b17ec96b7e0586467988bd0c4784575e02a32d0e7594",
        "b65e939a8490bd71813894c9f4e8796f8c3d3fce29171fc3c568ace28d89ea80",
        "a9707693d2ee9388e74f89a5a62bc3cb55f6160bae865f0779b75c989805232d",
        "55b73645bbd797a7d550db7233300b3d1de011fbde92783b4d813ddabff9c96a",
        "a0361139ec10df16cf2c136caf44d064194cc6777202952dc24c6fccf04f026d",
        "6d58c1c43dcf643d211afe4ff8d9f9727fb45380862d47978fd015a4f9a7ff39",
        "28158c38173fd1192164e714ad5454446b681ed2130a349fdffd4b81f814700c",
        "5b04551e621b65432d3e1beca05dc8e801a4c21da44d4cb29b1eddb92417aedd",
        "de855ba1016e93eb25d55879a0d27d170dc7904c6dfa06ce813b0455b3258c66",
        "1de55dcd349397bc5b8eb8e8ef5b4ed2115e968197effe44a0f5fb2b7d"
    );

    /// The SPR node A sent in [`HANDSHAKE_SPR_PACKET`].
    pub(crate) fn handshake_with_spr_record() -> Vec<u8> {
        match Packet::decode(&node_id(NODE_B_ID), &h(HANDSHAKE_SPR_PACKET))
            .unwrap()
            .kind
        {
            PacketKind::Handshake { spr: Some(spr), .. } => spr,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reference_ordinary_ping() {
        let bytes = h(PING_PACKET);
        let p = Packet::decode(&node_id(NODE_B_ID), &bytes).unwrap();
        assert_eq!(
            p.kind,
            PacketKind::Message {
                src: node_id(NODE_A_ID)
            }
        );
        let pt = decrypt(
            &[0; 16],
            &p.nonce,
            &p.message,
            &p.authenticated_data().unwrap(),
        )
        .unwrap();
        assert_eq!(hex::encode(&pt), "010a04000000011202 0802".replace(' ', ""));
        let (rid, msg) = Message::decode(&pt).unwrap();
        assert_eq!(rid.as_bytes(), [0, 0, 0, 1]);
        assert_eq!(msg, Message::Ping { spr_seq: 2 });
        // Our encoders give back the same bytes.
        assert_eq!(msg.encode(&rid), pt);
        let ct = encrypt(&[0; 16], &p.nonce, &pt, &p.authenticated_data().unwrap()).unwrap();
        assert_eq!(ct, p.message);
        assert_eq!(p.encode(&node_id(NODE_B_ID)).unwrap(), bytes);
        // Masked for B, it is garbage to anyone else.
        assert_eq!(
            Packet::decode(&node_id(NODE_A_ID), &bytes),
            Err(PacketError::ProtocolId)
        );
    }

    #[test]
    fn reference_whoareyou() {
        let bytes = h(WHOAREYOU_PACKET);
        assert_eq!(bytes.len(), MIN_PACKET_SIZE);
        let p = Packet::decode(&node_id(NODE_B_ID), &bytes).unwrap();
        assert_eq!(p.nonce.to_vec(), h("0102030405060708090a0b0c"));
        assert_eq!(
            p.kind,
            PacketKind::WhoAreYou {
                id_nonce: h("0102030405060708090a0b0c0d0e0f10").try_into().unwrap(),
                enr_seq: 0
            }
        );
        assert!(p.message.is_empty());
        assert_eq!(hex::encode(p.authenticated_data().unwrap()), CHALLENGE_SEQ0);
        assert_eq!(p.encode(&node_id(NODE_B_ID)).unwrap(), bytes);
        // The reference refuses a WHOAREYOU with a trailing byte.
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Packet::decode(&node_id(NODE_B_ID), &longer),
            Err(PacketError::WhoAreYouMessage(1))
        );
    }

    /// Decodes a reference handshake packet as node B would and checks everything in it.
    fn check_reference_handshake(packet_hex: &str, challenge_hex: &str, with_spr: bool) {
        let bytes = h(packet_hex);
        let a = keypair(NODE_A_SECRET);
        let b = keypair(NODE_B_SECRET);
        let a_id = node_id(NODE_A_ID);
        let b_id = node_id(NODE_B_ID);
        let challenge = h(challenge_hex);
        let p = Packet::decode(&b_id, &bytes).unwrap();
        let PacketKind::Handshake {
            src,
            id_signature,
            eph_pubkey,
            spr,
        } = &p.kind
        else {
            panic!("{:?}", p.kind);
        };
        assert_eq!(src, &a_id);
        assert_eq!(id_signature.len(), 70);
        assert_eq!(eph_pubkey.len(), 37);
        assert_eq!(&eph_pubkey[..4], &[0x08, 0x02, 0x12, 0x21]);
        assert_eq!(spr.is_some(), with_spr);
        if let Some(spr) = spr {
            let spr = Spr::decode(spr).unwrap();
            assert_eq!(spr.node_id(), a_id);
            assert_eq!(spr.seq(), 1);
            assert_eq!(spr.udp_addr(), Some("127.0.0.1:9000".parse().unwrap()));
        }
        // The id signature verifies with A's key, over B's id; ours is the same bytes.
        assert!(id_verify(
            &a.public(),
            id_signature,
            &challenge,
            eph_pubkey,
            &b_id
        ));
        assert!(!id_verify(
            &b.public(),
            id_signature,
            &challenge,
            eph_pubkey,
            &b_id
        ));
        assert_eq!(
            &id_sign(&a, &challenge, eph_pubkey, &b_id).unwrap(),
            id_signature
        );
        // B derives the keys from its static key and A's ephemeral key, then decrypts.
        let eph = decode_eph_pubkey(eph_pubkey).unwrap();
        let shared = ecdh(&eph, &static_secret(&b).unwrap());
        let keys = derive_keys(&shared, &a_id, &b_id, &challenge);
        let ad = p.authenticated_data().unwrap();
        let pt = decrypt(&keys.initiator, &p.nonce, &p.message, &ad).unwrap();
        let (rid, msg) = Message::decode(&pt).unwrap();
        assert_eq!(rid.as_bytes(), [0, 0, 0, 1]);
        assert_eq!(msg, Message::Ping { spr_seq: 1 });
        assert!(decrypt(&keys.recipient, &p.nonce, &p.message, &ad).is_err());
        // Re-encoding reproduces the packet.
        assert_eq!(p.encode(&b_id).unwrap(), bytes);
        assert_eq!(
            encrypt(&keys.initiator, &p.nonce, &msg.encode(&rid), &ad).unwrap(),
            p.message
        );
        // A trailing byte: the framing still parses, decryption fails (as in the reference).
        let mut longer = bytes.clone();
        longer.push(0);
        let p2 = Packet::decode(&b_id, &longer).unwrap();
        assert!(decrypt(&keys.initiator, &p2.nonce, &p2.message, &ad).is_err());
    }

    #[test]
    fn reference_handshake_without_spr() {
        check_reference_handshake(HANDSHAKE_PACKET, CHALLENGE_SEQ1, false);
    }

    #[test]
    fn reference_handshake_with_spr() {
        check_reference_handshake(HANDSHAKE_SPR_PACKET, CHALLENGE_SEQ0, true);
    }

    /// dht-verified.md: the 63-byte WHOAREYOU a live reference node sent to our id 217f25ee….
    #[test]
    fn live_node_whoareyou() {
        let bytes = h(concat!(
            "8cc0f64fbe590eabc69df17eac361e889302f353b97cb81619934370cda4d95e",
            "0ff43f3a97bcd5cea3e901c1083a93570918270e919fc044ed4f1aba44bc39"
        ));
        let me = node_id("217f25ee3761e338be35ff3b419a2fbe13604c4f2cc3e2458f6556a59bd3eb3a");
        let p = Packet::decode(&me, &bytes).unwrap();
        assert_eq!(hex::encode(p.iv), "8cc0f64fbe590eabc69df17eac361e88");
        assert_eq!(hex::encode(p.nonce), "ee4dca8cbc71960e506ba8a1");
        assert_eq!(
            p.kind,
            PacketKind::WhoAreYou {
                id_nonce: h("f79d563431ffb3e43cb01ecdf1bbdce0").try_into().unwrap(),
                enr_seq: 0
            }
        );
        assert_eq!(
            hex::encode(p.authenticated_data().unwrap()),
            concat!(
                "8cc0f64fbe590eabc69df17eac361e88",
                "6469736376350001",
                "01ee4dca8cbc71960e506ba8a10018",
                "f79d563431ffb3e43cb01ecdf1bbdce00000000000000000"
            )
        );
        assert_eq!(p.encode(&me).unwrap(), bytes);
    }

    /// A whole exchange between two of our nodes: random packet → WHOAREYOU → handshake with
    /// SPR → ordinary reply, every step through encode and decode.
    #[test]
    fn full_handshake_between_our_nodes() {
        let a = keypair(NODE_A_SECRET);
        let b = keypair(NODE_B_SECRET);
        let a_id = NodeId::from_peer_id(&a.public().to_peer_id());
        let b_id = NodeId::from_peer_id(&b.public().to_peer_id());
        // A → B: an ordinary packet with 20 random bytes (no session yet).
        let mut first = Packet::new(PacketKind::Message { src: a_id }, rand::random());
        first.message = rand::random::<[u8; 20]>().to_vec();
        let got = Packet::decode(&b_id, &first.encode(&b_id).unwrap()).unwrap();
        assert_eq!(got, first);
        // B → A: WHOAREYOU echoing the nonce, seq 0 (B has no record of A).
        let challenge = Packet::new(
            PacketKind::WhoAreYou {
                id_nonce: rand::random(),
                enr_seq: 0,
            },
            got.nonce,
        );
        let got = Packet::decode(&a_id, &challenge.encode(&a_id).unwrap()).unwrap();
        assert_eq!(got, challenge);
        let challenge_data = got.authenticated_data().unwrap();
        // A → B: handshake with its SPR and a FINDNODE.
        let eph = ephemeral_secret();
        let eph_wire = encode_eph_pubkey(&eph.public_key());
        let shared = ecdh(&k256_public(&b.public()).unwrap(), &eph);
        let keys = derive_keys(&shared, &a_id, &b_id, &challenge_data);
        let spr = Spr::sign(&a, 7, vec!["/ip4/10.0.0.1/udp/9000".parse().unwrap()]).unwrap();
        let mut hs = Packet::new(
            PacketKind::Handshake {
                src: a_id,
                id_signature: id_sign(&a, &challenge_data, &eph_wire, &b_id).unwrap(),
                eph_pubkey: eph_wire,
                spr: Some(spr.encoded().to_vec()),
            },
            rand::random(),
        );
        let rid = RequestId::random();
        let request = Message::FindNode {
            distances: vec![256, 255],
        };
        hs.message = encrypt(
            &keys.initiator,
            &hs.nonce,
            &request.encode(&rid),
            &hs.authenticated_data().unwrap(),
        )
        .unwrap();
        let got = Packet::decode(&b_id, &hs.encode(&b_id).unwrap()).unwrap();
        assert_eq!(got, hs);
        // B checks and decrypts.
        let PacketKind::Handshake {
            src,
            id_signature,
            eph_pubkey,
            spr: Some(spr_bytes),
        } = &got.kind
        else {
            panic!()
        };
        let their = Spr::decode(spr_bytes).unwrap();
        assert_eq!(their.node_id(), *src);
        assert!(id_verify(
            their.public_key(),
            id_signature,
            &challenge_data,
            eph_pubkey,
            &b_id
        ));
        let b_shared = ecdh(
            &decode_eph_pubkey(eph_pubkey).unwrap(),
            &static_secret(&b).unwrap(),
        );
        let b_keys = derive_keys(&b_shared, src, &b_id, &challenge_data);
        assert_eq!(b_keys, keys);
        let pt = decrypt(
            &b_keys.initiator,
            &got.nonce,
            &got.message,
            &got.authenticated_data().unwrap(),
        )
        .unwrap();
        assert_eq!(Message::decode(&pt).unwrap(), (rid.clone(), request));
        // B → A: an ordinary NODES reply with the recipient key.
        let mut reply = Packet::new(PacketKind::Message { src: b_id }, rand::random());
        let nodes = Message::Nodes {
            total: 1,
            sprs: vec![],
        };
        reply.message = encrypt(
            &b_keys.recipient,
            &reply.nonce,
            &nodes.encode(&rid),
            &reply.authenticated_data().unwrap(),
        )
        .unwrap();
        let bytes = reply.encode(&a_id).unwrap();
        assert!(bytes.len() <= MAX_PACKET_SIZE);
        let got = Packet::decode(&a_id, &bytes).unwrap();
        let pt = decrypt(
            &keys.recipient,
            &got.nonce,
            &got.message,
            &got.authenticated_data().unwrap(),
        )
        .unwrap();
        assert_eq!(Message::decode(&pt).unwrap(), (rid, nodes));
    }

    #[test]
    fn framing_errors() {
        let b_id = node_id(NODE_B_ID);
        assert_eq!(Packet::decode(&b_id, &[]), Err(PacketError::TooShort(0)));
        assert_eq!(
            Packet::decode(&b_id, &[0; MIN_PACKET_SIZE - 1]),
            Err(PacketError::TooShort(62))
        );
        assert_eq!(
            Packet::decode(&b_id, &vec![0; MAX_INBOUND_PACKET_SIZE + 1]),
            Err(PacketError::TooLarge(MAX_INBOUND_PACKET_SIZE + 1))
        );
        // Build headers by hand, masked for B, to hit each check.
        let raw = |header: &[u8], message: &[u8]| {
            let iv = [7u8; IV_SIZE];
            let mut hd = header.to_vec();
            masking_cipher(&b_id, &iv).apply_keystream(&mut hd);
            [&iv[..], &hd, message].concat()
        };
        let st = |version: u16, flag: u8, size: u16| {
            [
                &PROTOCOL_ID[..],
                &version.to_be_bytes(),
                &[flag],
                &[9u8; NONCE_SIZE],
                &size.to_be_bytes(),
            ]
            .concat()
        };
        let tag = [0u8; TAG_SIZE];
        let ok = raw(&[st(1, 0, 32), vec![1; 32]].concat(), &tag);
        assert!(Packet::decode(&b_id, &ok).is_ok());
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(2, 0, 32), vec![1; 32]].concat(), &tag)),
            Err(PacketError::Version(2))
        );
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(1, 3, 32), vec![1; 32]].concat(), &tag)),
            Err(PacketError::Flag(3))
        );
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(1, 0, 33), vec![1; 33]].concat(), &tag)),
            Err(PacketError::AuthdataSize { flag: 0, size: 33 })
        );
        assert_eq!(
            Packet::decode(
                &b_id,
                &raw(&[st(1, 0, 32), vec![1; 32]].concat(), &tag[..15])
            ),
            Err(PacketError::MessageTooShort(15))
        );
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(1, 0, 900), vec![1; 32]].concat(), &tag)),
            Err(PacketError::AuthdataTruncated {
                size: 900,
                available: 48
            })
        );
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(1, 1, 23), vec![1; 23]].concat(), &[0])),
            Err(PacketError::AuthdataSize { flag: 1, size: 23 })
        );
        // Handshake: head too short, zero sizes, sizes past the end, oversize SPR.
        let hs = |sig: u8, eph: u8, body: usize| {
            let mut a = vec![1u8; 32];
            a.push(sig);
            a.push(eph);
            a.extend(std::iter::repeat_n(5u8, body));
            raw(&[st(1, 2, a.len() as u16), a].concat(), &tag)
        };
        assert!(Packet::decode(&b_id, &hs(70, 37, 107)).is_ok());
        assert_eq!(
            Packet::decode(&b_id, &hs(0, 37, 107)),
            Err(PacketError::HandshakeSizes)
        );
        assert_eq!(
            Packet::decode(&b_id, &hs(70, 0, 107)),
            Err(PacketError::HandshakeSizes)
        );
        assert_eq!(
            Packet::decode(&b_id, &hs(70, 37, 106)),
            Err(PacketError::HandshakeSizes)
        );
        assert_eq!(
            Packet::decode(&b_id, &hs(70, 37, 107 + MAX_SPR_BYTES + 1)),
            Err(PacketError::SprTooLarge(MAX_SPR_BYTES + 1))
        );
        assert_eq!(
            Packet::decode(&b_id, &raw(&[st(1, 2, 33), vec![1; 33]].concat(), &tag)),
            Err(PacketError::AuthdataSize { flag: 2, size: 33 })
        );
    }

    #[test]
    fn encoding_errors() {
        let dest = node_id(NODE_B_ID);
        let mut w = Packet::new(
            PacketKind::WhoAreYou {
                id_nonce: [0; 16],
                enr_seq: 1,
            },
            [0; 12],
        );
        w.message = vec![1];
        assert_eq!(w.encode(&dest), Err(PacketError::WhoAreYouMessage(1)));
        let hs = |sig: usize, eph: usize, spr: Option<usize>| {
            Packet::new(
                PacketKind::Handshake {
                    src: dest,
                    id_signature: vec![1; sig],
                    eph_pubkey: vec![2; eph],
                    spr: spr.map(|n| vec![3; n]),
                },
                [0; 12],
            )
        };
        assert_eq!(
            hs(256, 37, None).encode(&dest),
            Err(PacketError::FieldSize(256))
        );
        assert_eq!(
            hs(70, 0, None).encode(&dest),
            Err(PacketError::FieldSize(0))
        );
        assert_eq!(
            hs(70, 37, Some(MAX_SPR_BYTES + 1)).authenticated_data(),
            Err(PacketError::SprTooLarge(MAX_SPR_BYTES + 1))
        );
        let mut big = Packet::new(PacketKind::Message { src: dest }, [0; 12]);
        big.message = vec![0; MAX_INBOUND_PACKET_SIZE];
        assert!(matches!(big.encode(&dest), Err(PacketError::TooLarge(_))));
        // Some(empty SPR) is sent as no SPR.
        let p = hs(70, 37, Some(0));
        let mut p2 = p.clone();
        p2.message = vec![0; 16];
        let got = Packet::decode(&dest, &p2.encode(&dest).unwrap()).unwrap();
        assert!(matches!(got.kind, PacketKind::Handshake { spr: None, .. }));
    }

    #[test]
    fn truncated_and_garbled_reference_packets() {
        let b_id = node_id(NODE_B_ID);
        for packet in [
            PING_PACKET,
            WHOAREYOU_PACKET,
            HANDSHAKE_PACKET,
            HANDSHAKE_SPR_PACKET,
        ] {
            let bytes = h(packet);
            let full = Packet::decode(&b_id, &bytes).unwrap();
            let header_end = bytes.len() - full.message.len();
            for cut in 0..bytes.len() {
                let r = Packet::decode(&b_id, &bytes[..cut]);
                // Cutting into the header (or below a tag of message) is an error; cutting
                // only ciphertext may still frame, and then decryption fails.
                if cut < header_end + TAG_SIZE {
                    assert!(r.is_err(), "cut {cut} of {packet:.16}… decoded");
                }
            }
            for i in 0..header_end {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                // A flipped iv or header byte changes the unmasked header: either an error, or a
                // different packet whose authenticated data no longer matches the ciphertext.
                if let Ok(p) = Packet::decode(&b_id, &b) {
                    assert_ne!(p, full);
                }
            }
        }
    }

    fn any_bytes(lo: usize, hi: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), lo..hi)
    }

    fn any_kind() -> impl Strategy<Value = PacketKind> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|s| PacketKind::Message { src: NodeId(s) }),
            (any::<[u8; 16]>(), any::<u64>())
                .prop_map(|(id_nonce, enr_seq)| PacketKind::WhoAreYou { id_nonce, enr_seq }),
            (
                any::<[u8; 32]>(),
                any_bytes(1, 256),
                any_bytes(1, 256),
                proptest::option::of(any_bytes(1, MAX_SPR_BYTES + 1))
            )
                .prop_map(|(s, id_signature, eph_pubkey, spr)| PacketKind::Handshake {
                    src: NodeId(s),
                    id_signature,
                    eph_pubkey,
                    spr
                }),
        ]
    }

    proptest! {
        #[test]
        fn packets_round_trip(
            kind in any_kind(),
            nonce in any::<[u8; 12]>(),
            iv in any::<[u8; 16]>(),
            message in any_bytes(16, 1200),
            dest in any::<[u8; 32]>(),
        ) {
            let dest = NodeId(dest);
            let message = match kind {
                PacketKind::WhoAreYou { .. } => Vec::new(),
                _ => message,
            };
            let p = Packet { iv, nonce, kind, message };
            let bytes = p.encode(&dest).unwrap();
            prop_assert_eq!(Packet::decode(&dest, &bytes).unwrap(), p);
        }

        #[test]
        fn random_bytes_never_panic(bytes in any_bytes(0, 1400), dest in any::<[u8; 32]>()) {
            let _ = Packet::decode(&NodeId(dest), &bytes);
        }

        /// A valid protocol id and version but random flag, sizes and contents, so the decoder
        /// gets past the first checks.
        #[test]
        fn random_headers_never_panic(
            flag in 0u8..4,
            size in prop_oneof![Just(24u16), Just(32u16), 34u16..300, any::<u16>()],
            body in any_bytes(0, 1400),
            dest in any::<[u8; 32]>(),
        ) {
            let dest = NodeId(dest);
            let iv = [3u8; IV_SIZE];
            let mut header = [
                &PROTOCOL_ID[..], &VERSION.to_be_bytes(), &[flag], &[0u8; NONCE_SIZE],
                &size.to_be_bytes(),
            ].concat();
            header.extend_from_slice(&body);
            masking_cipher(&dest, &iv).apply_keystream(&mut header);
            let bytes = [&iv[..], &header].concat();
            if let Ok(p) = Packet::decode(&dest, &bytes) {
                // Whatever decodes encodes back to the same bytes.
                prop_assert_eq!(p.encode(&dest).unwrap(), bytes);
            }
        }
    }
}
