//! Signed Peer Records (SPRs): the DHT's node records (codex-protocol.md §7.5, dht-verified.md).
//!
//! An SPR is a libp2p signed envelope (fields 1 public key, 2 payload type, 3 payload,
//! 5 signature) with payload type `03 01` around a PeerRecord (1 peer id bytes, 2 seq varint,
//! 3 repeated AddressInfo `{1 multiaddr bytes}`). The signature covers the standard libp2p
//! signing buffer with the domain **`libp2p-peer-record`**: the reference node rejects
//! `libp2p-routing-state`, which go-libp2p and rust-libp2p's `PeerRecord` use
//! (dht-verified.md correction 1). So this module builds its own record payload and signs it
//! with [`libp2p::core::SignedEnvelope`], which takes the domain as a parameter.
//!
//! Design:
//! - An [`Spr`] keeps the envelope bytes exactly as received (or as signed), so a record we relay
//!   in NODES, PROVIDERS or a handshake is the peer's own signed bytes, never a re-encoding.
//! - The record is written the way the reference writes it (nim-libp2p `routing_record.nim` at the
//!   pinned commit): fields in ascending order and the seq always written, even when 0 (the
//!   reference's decoder requires it).
//! - Decoding follows the reference's checks (nim-libp2p `signed_envelope.nim`,
//!   `routing_record.nim`): the signature must verify with the domain, the payload type must be
//!   `03 01`, the record needs a peer id and a seq, the record's peer id must be the signing key's.
//!   The key must be secp256k1 ([`SprError::KeyType`]): the reference's envelope decoder takes
//!   any libp2p key, but its handshake (ECDH with the node's static key) works with secp256k1
//!   only, so a node with another key can never be reached. Review found such records accepted
//!   and their table entries kept for good; they are refused here, which also refuses an
//!   inbound handshake from such an identity (its record does not decode), and
//!   [`Spr::sign`] refuses to sign with another key.
//!   Like the reference, an address it cannot parse is skipped, but a record whose addresses all
//!   fail is rejected. On top of that, the size and address count are capped
//!   ([`MAX_SPR_BYTES`], [`MAX_SPR_ADDRS`]).
//!
//! Tests check: the two SPR URIs of the reference's "Nodes Response (multiple)" test
//! (`tests/discv5/test_discoveryv5_encoding.nim`, codex-protocol.md §11.1 item 7); the DHT record
//! and the provider record seen from a live reference node (dht-verified.md, NODES and
//! ADD_PROVIDER samples); that our record and envelope encoders reproduce the reference's bytes;
//! that signing node A's record as the reference's packet test does gives byte-identical
//! envelopes (both sides sign deterministically, RFC 6979); and the rejections (bad signature,
//! wrong domain, wrong payload type, mismatched peer id, oversize, too many addresses, a key
//! that is not secp256k1).

use std::net::{IpAddr, SocketAddr};

use libp2p::core::SignedEnvelope;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use prost::Message as _;

use crate::ids::NodeId;

/// The largest SPR envelope we accept or produce, in bytes.
///
/// A node's SPR travels in the authdata of a handshake packet next to the first message, and
/// discv5 packets are at most 1280 bytes: 1280 − 16 (masking iv) − 23 (static header) − 34
/// (authdata head) − 72 (largest DER signature) − 37 (ephemeral key) − 16 (GCM tag) leaves 1082
/// bytes for the SPR and the message plaintext (a PING or FINDNODE plaintext is 15–40 bytes).
/// 1024 is the round size below that. Real records are far smaller: the reference's one-address
/// DHT record is 177 bytes (dht-verified.md).
pub const MAX_SPR_BYTES: usize = 1024;

/// The most addresses we accept in (or put into) one record. The reference's DHT record holds
/// one `/ip4/…/udp/…` address and its provider record its announce addresses; 16 leaves room for
/// multi-homed nodes while keeping a record well under [`MAX_SPR_BYTES`].
pub const MAX_SPR_ADDRS: usize = 16;

/// The signed-envelope domain of peer records, as the reference signs and verifies them.
pub const SPR_DOMAIN: &str = "libp2p-peer-record";

/// The envelope payload type of peer records (the multicodec `libp2p-peer-record`, 0x0301).
pub const SPR_PAYLOAD_TYPE: [u8; 2] = [0x03, 0x01];

/// The text form's prefix: `spr:` + unpadded base64url of the envelope bytes.
pub const SPR_URI_PREFIX: &str = "spr:";

/// The longest text form [`Spr::from_uri`] looks at: the prefix plus the base64 of
/// [`MAX_SPR_BYTES`] (4 characters per 3 bytes, rounded up), plus padding it tolerates.
const MAX_SPR_URI_LEN: usize = SPR_URI_PREFIX.len() + MAX_SPR_BYTES.div_ceil(3) * 4;

/// Why a record was not decoded or signed.
#[derive(Debug, thiserror::Error)]
pub enum SprError {
    /// The envelope is larger than [`MAX_SPR_BYTES`].
    #[error("SPR is {0} bytes, more than the {MAX_SPR_BYTES} allowed")]
    TooLarge(usize),
    /// The record lists more than [`MAX_SPR_ADDRS`] addresses.
    #[error("SPR has {0} addresses, more than the {MAX_SPR_ADDRS} allowed")]
    TooManyAddresses(usize),
    /// The envelope is not a protobuf envelope or its public key does not decode.
    #[error("invalid SPR envelope: {0}")]
    Envelope(#[from] libp2p::core::signed_envelope::DecodingError),
    /// The payload type is not `03 01`.
    #[error("SPR payload type is {0:02x?}, not 03 01")]
    PayloadType(Vec<u8>),
    /// The signature does not verify with the domain [`SPR_DOMAIN`].
    #[error("SPR signature does not verify")]
    Signature,
    /// The record inside the envelope is not a valid protobuf PeerRecord.
    #[error("invalid peer record: {0}")]
    Record(#[from] prost::DecodeError),
    /// A required record field is missing.
    #[error("peer record lacks its {0}")]
    MissingField(&'static str),
    /// The record's peer id bytes are not a peer id.
    #[error("peer record has an invalid peer id")]
    PeerId,
    /// The record's peer id is not the peer id of the signing key.
    #[error("peer record is for another peer than its signer")]
    PeerIdMismatch,
    /// The signing key is not a secp256k1 key: no node can run a handshake with its node
    /// (discv5's ECDH, in the reference too, takes secp256k1 keys only).
    #[error("SPR is not signed with a secp256k1 key")]
    KeyType,
    /// The record lists addresses, but none of them parses.
    #[error("peer record has no valid address")]
    NoValidAddress,
    /// The text form does not start with `spr:` or is not base64url.
    #[error("invalid SPR URI")]
    Uri,
    /// Signing failed.
    #[error("signing the SPR failed: {0}")]
    Signing(#[from] libp2p::identity::SigningError),
}

/// A verified Signed Peer Record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spr {
    /// The envelope bytes, exactly as received or signed.
    encoded: Vec<u8>,
    public_key: PublicKey,
    peer_id: PeerId,
    node_id: NodeId,
    seq: u64,
    addrs: Vec<Multiaddr>,
}

/// PeerRecord as protobuf. Presence-tracked fields so the seq is written even when 0 and a
/// missing field is told apart from a zero one.
#[derive(Clone, PartialEq, prost::Message)]
struct PeerRecordPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    peer_id: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "2")]
    seq: Option<u64>,
    #[prost(message, repeated, tag = "3")]
    addresses: Vec<AddressInfoPb>,
}

/// AddressInfo as protobuf.
#[derive(Clone, PartialEq, prost::Message)]
struct AddressInfoPb {
    #[prost(bytes = "vec", optional, tag = "1")]
    multiaddr: Option<Vec<u8>>,
}

/// The PeerRecord payload as the reference writes it: 1 peer id, 2 seq (always), 3 addresses.
fn encode_record(peer_id: &PeerId, seq: u64, addrs: &[Multiaddr]) -> Vec<u8> {
    PeerRecordPb {
        peer_id: Some(peer_id.to_bytes()),
        seq: Some(seq),
        addresses: addrs
            .iter()
            .map(|a| AddressInfoPb {
                multiaddr: Some(a.to_vec()),
            })
            .collect(),
    }
    .encode_to_vec()
}

impl Spr {
    /// Signs a record for `keypair`'s peer id with sequence number `seq` and `addrs`.
    pub fn sign(keypair: &Keypair, seq: u64, addrs: Vec<Multiaddr>) -> Result<Spr, SprError> {
        if addrs.len() > MAX_SPR_ADDRS {
            return Err(SprError::TooManyAddresses(addrs.len()));
        }
        if keypair.public().try_into_secp256k1().is_err() {
            return Err(SprError::KeyType);
        }
        Spr::signed(keypair, seq, addrs)
    }

    /// A record signed with any key type, bypassing the checks of [`Spr::sign`]: for tests
    /// that need a record the node would refuse.
    #[cfg(test)]
    pub(crate) fn sign_unchecked(keypair: &Keypair, seq: u64, addrs: Vec<Multiaddr>) -> Spr {
        Spr::signed(keypair, seq, addrs).expect("signing")
    }

    /// Signs the record and checks only its encoded size.
    fn signed(keypair: &Keypair, seq: u64, addrs: Vec<Multiaddr>) -> Result<Spr, SprError> {
        let public_key = keypair.public();
        let peer_id = public_key.to_peer_id();
        let payload = encode_record(&peer_id, seq, &addrs);
        let envelope = SignedEnvelope::new(
            keypair,
            SPR_DOMAIN.to_owned(),
            SPR_PAYLOAD_TYPE.to_vec(),
            payload,
        )?;
        let encoded = envelope.into_protobuf_encoding();
        if encoded.len() > MAX_SPR_BYTES {
            return Err(SprError::TooLarge(encoded.len()));
        }
        Ok(Spr {
            encoded,
            node_id: NodeId::from_peer_id(&peer_id),
            public_key,
            peer_id,
            seq,
            addrs,
        })
    }

    /// Decodes and verifies an envelope (see the module docs for the checks).
    pub fn decode(bytes: &[u8]) -> Result<Spr, SprError> {
        if bytes.len() > MAX_SPR_BYTES {
            return Err(SprError::TooLarge(bytes.len()));
        }
        let envelope = SignedEnvelope::from_protobuf_encoding(bytes)?;
        let (payload, key) = envelope
            .payload_and_signing_key(SPR_DOMAIN.to_owned(), &SPR_PAYLOAD_TYPE)
            .map_err(|e| match e {
                libp2p::core::signed_envelope::ReadPayloadError::UnexpectedPayloadType {
                    got,
                    ..
                } => SprError::PayloadType(got),
                libp2p::core::signed_envelope::ReadPayloadError::InvalidSignature => {
                    SprError::Signature
                }
            })?;
        if key.clone().try_into_secp256k1().is_err() {
            return Err(SprError::KeyType);
        }
        let record = PeerRecordPb::decode(payload)?;
        let peer_id_bytes = record.peer_id.ok_or(SprError::MissingField("peer id"))?;
        let seq = record.seq.ok_or(SprError::MissingField("seq"))?;
        if record.addresses.len() > MAX_SPR_ADDRS {
            return Err(SprError::TooManyAddresses(record.addresses.len()));
        }
        let peer_id = PeerId::from_bytes(&peer_id_bytes).map_err(|_| SprError::PeerId)?;
        if peer_id != key.to_peer_id() {
            return Err(SprError::PeerIdMismatch);
        }
        // As the reference: skip what does not parse, but a non-empty list must keep one.
        let listed = record.addresses.len();
        let addrs: Vec<Multiaddr> = record
            .addresses
            .into_iter()
            .filter_map(|a| Multiaddr::try_from(a.multiaddr?).ok())
            .collect();
        if listed > 0 && addrs.is_empty() {
            return Err(SprError::NoValidAddress);
        }
        Ok(Spr {
            encoded: bytes.to_vec(),
            public_key: key.clone(),
            node_id: NodeId::from_peer_id(&peer_id),
            peer_id,
            seq,
            addrs,
        })
    }

    /// The envelope bytes, exactly as received or signed.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Parses the text form `spr:` + unpadded base64url (trailing `=` padding is tolerated).
    pub fn from_uri(s: &str) -> Result<Spr, SprError> {
        if s.len() > MAX_SPR_URI_LEN + 2 {
            return Err(SprError::TooLarge(s.len() / 4 * 3));
        }
        let b64 = s.strip_prefix(SPR_URI_PREFIX).ok_or(SprError::Uri)?;
        let bytes = multibase::Base::Base64Url
            .decode(b64.trim_end_matches('='))
            .map_err(|_| SprError::Uri)?;
        Spr::decode(&bytes)
    }

    /// The text form: `spr:` + unpadded base64url of the envelope bytes.
    pub fn to_uri(&self) -> String {
        let mut s = String::from(SPR_URI_PREFIX);
        s.push_str(&multibase::Base::Base64Url.encode(&self.encoded));
        s
    }

    /// The peer id the record is for (and signed by).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node id: keccak256 of the peer id bytes.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record's addresses (those that parsed).
    pub fn addrs(&self) -> &[Multiaddr] {
        &self.addrs
    }

    /// The key that signed the envelope.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The UDP address the DHT talks to, picked as the reference does (`spr.nim` `ip`/`udp`):
    /// the IPv4 address of the first address whose first component is `/ip4`, and the port of
    /// the first address whose second component is `/udp` (the two may come from different
    /// addresses). `None` when either is missing.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        let ip = self.addrs.iter().find_map(|a| match a.iter().next() {
            Some(Protocol::Ip4(ip)) => Some(ip),
            _ => None,
        })?;
        let port = self.addrs.iter().find_map(|a| match a.iter().nth(1) {
            Some(Protocol::Udp(port)) => Some(port),
            _ => None,
        })?;
        Some(SocketAddr::new(IpAddr::V4(ip), port))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first SPR of the reference's "Nodes Response (multiple)" test.
    pub(crate) const NIM_SPR_1: &str = "spr:CiUIAhIhAjOdSH7SNzktg3kZUNyJHwY23mmMH6BR6gGuP6WL14WAEgIDARpWCicAJQgCEiECM51IftI3OS2DeRlQ3IkfBjbeaYwfoFHqAa4_pYvXhYAQnP2JkgYaCwoJBAAAAACRAgABGgsKCQQAAAAAkQIAAhoLCgkEAAAAAJECAAMqRzBFAiEAjMd_0mXjPJVRdLn0ligEiy1ypjlayzDwup2QU2-hpdUCIH-o5bq46N3umISo4kSwmQIo41RrWptoSGMqvZJHluV2";
    /// The second SPR of the same test.
    pub(crate) const NIM_SPR_2: &str = "spr:CiUIAhIhAmvtpc_d8c2JEw57W7YJK6wj20oES_hHMoqgMQ3RI6RFEgIDARpWCicAJQgCEiECa-2lz93xzYkTDntbtgkrrCPbSgRL-EcyiqAxDdEjpEUQnP2JkgYaCwoJBAAAAACRAgABGgsKCQQAAAAAkQIAAhoLCgkEAAAAAJECAAMqRjBEAiA9QbGnjF5tmMm08_yyE9wWrk3lChyHFaspxRav5kiLTgIgWEHQnpKz0vGtcse8Bm5WHatXMgiG8_u_Jy0s8XMsolk";

    /// The DHT record a live reference node served in its NODES reply (dht-verified.md).
    pub(crate) const LIVE_DHT_SPR: &str = "0a250802122103efca361f5223ad982326af91af13c42de6c5a4c5df36cbfeb251fc3b17d56377120203011a3c0a2700250802122103efca361f5223ad982326af91af13c42de6c5a4c5df36cbfeb251fc3b17d563771096ef83d8061a0b0a09047f0000019102e4bc2a46304402205c00da9eacc2be65221f499c1012ad3d2ca5ec3fb3fea4a7f15745d0467482b602205f35f5f6a8b8f094a36652f0869a6356d4f956239c84257087cd0d56a8c85dba";

    /// The provider record the same node sent in ADD_PROVIDER (dht-verified.md).
    pub(crate) const LIVE_PROVIDER_SPR: &str = "0a250802122103efca361f5223ad982326af91af13c42de6c5a4c5df36cbfeb251fc3b17d56377120203011a3b0a2700250802122103efca361f5223ad982326af91af13c42de6c5a4c5df36cbfeb251fc3b17d563771094ef83d8061a0a0a08047f00000106a0732a473045022100f6af260e7620b96a0ef2d9a03b85a13b0f4d86d3c9824df8c748735b4db34e0102205622c59e2cda4aab0bae7ef0ee48c601b20efe6a6e3107dabb1c1914fd6c11e3";

    /// Node A's secret key in the reference's packet tests (codex-protocol.md §11.1 item 6).
    pub(crate) const NODE_A_SECRET: &str =
        "fe5f08c842aa946659b266ce68faa5d2fd982634594dccdf7f916e3fcf0541a3";
    /// Node B's secret key in the same tests.
    pub(crate) const NODE_B_SECRET: &str =
        "00064765abe9a4e63b068b5af99c26c61c8ade9bfdae6494873b137ec8152578";

    pub(crate) fn keypair(secret_hex: &str) -> Keypair {
        let sk = libp2p::identity::secp256k1::SecretKey::try_from_bytes(
            hex::decode(secret_hex).unwrap(),
        )
        .unwrap();
        libp2p::identity::secp256k1::Keypair::from(sk).into()
    }

    fn random_keypair() -> Keypair {
        keypair(&hex::encode(
            crate::wire::crypto::ephemeral_secret().to_bytes(),
        ))
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Review: a record signed with another key type than secp256k1 was accepted, though no
    /// handshake with its node can work (the reference's ECDH takes secp256k1 keys only), and
    /// its table entry was never removed. It is refused now, and cannot be signed.
    #[test]
    fn a_record_not_signed_with_secp256k1_is_refused() {
        let ed = Keypair::generate_ed25519();
        let addrs = vec![ma("/ip4/1.2.3.4/udp/9000")];
        let record = Spr::sign_unchecked(&ed, 1, addrs.clone());
        assert!(
            matches!(Spr::decode(record.encoded()), Err(SprError::KeyType)),
            "{:?}",
            Spr::decode(record.encoded())
        );
        assert!(matches!(
            Spr::from_uri(&record.to_uri()),
            Err(SprError::KeyType)
        ));
        assert!(matches!(Spr::sign(&ed, 1, addrs), Err(SprError::KeyType)));
    }

    /// Rebuilds an envelope from its parts with rust-libp2p's encoder and our record encoder,
    /// and checks both give back the reference's bytes.
    fn assert_reencodes(spr: &Spr) {
        let env = SignedEnvelope::from_protobuf_encoding(spr.encoded()).unwrap();
        let (payload, _) = env
            .payload_and_signing_key(SPR_DOMAIN.to_owned(), &SPR_PAYLOAD_TYPE)
            .unwrap();
        assert_eq!(
            encode_record(&spr.peer_id(), spr.seq(), spr.addrs()),
            payload,
            "record re-encoding differs"
        );
        assert_eq!(
            env.into_protobuf_encoding(),
            spr.encoded(),
            "envelope re-encoding differs"
        );
    }

    /// codex-protocol.md §11.1 item 7: the reference test's URIs parse, with three
    /// `/ip4/0.0.0.0/udp/1..3` addresses, and print back to the same text.
    #[test]
    fn reference_test_uris() {
        for uri in [NIM_SPR_1, NIM_SPR_2] {
            let spr = Spr::from_uri(uri).unwrap();
            assert_eq!(
                spr.addrs(),
                &[
                    ma("/ip4/0.0.0.0/udp/1"),
                    ma("/ip4/0.0.0.0/udp/2"),
                    ma("/ip4/0.0.0.0/udp/3")
                ]
            );
            assert_eq!(spr.to_uri(), uri);
            assert_eq!(spr.peer_id(), spr.public_key().to_peer_id());
            assert_eq!(spr.node_id(), NodeId::from_peer_id(&spr.peer_id()));
            assert_eq!(spr.udp_addr(), Some("0.0.0.0:1".parse().unwrap()));
            assert_reencodes(&spr);
        }
        // Both were signed with seq 1648524956 (a Unix time, libp2p's default).
        assert_eq!(Spr::from_uri(NIM_SPR_1).unwrap().seq(), 1_648_524_956);
    }

    /// dht-verified.md NODES sample: the live node's DHT record, seq 1795225494,
    /// `/ip4/127.0.0.1/udp/58556`, key 03efca36…6377 → node id 57ffe980…d5b3.
    #[test]
    fn live_dht_record() {
        let spr = Spr::decode(&hex::decode(LIVE_DHT_SPR).unwrap()).unwrap();
        assert_eq!(spr.seq(), 1_795_225_494);
        assert_eq!(spr.addrs(), &[ma("/ip4/127.0.0.1/udp/58556")]);
        assert_eq!(spr.udp_addr(), Some("127.0.0.1:58556".parse().unwrap()));
        let id = spr.node_id().to_string();
        assert!(id.starts_with("57ffe980") && id.ends_with("d5b3"), "{id}");
        assert_eq!(spr.encoded().len(), 177);
        assert_reencodes(&spr);
    }

    /// dht-verified.md ADD_PROVIDER sample: the provider record carries the libp2p TCP address
    /// and the older seq 1795225492; it has no UDP address for the DHT.
    #[test]
    fn live_provider_record() {
        let spr = Spr::decode(&hex::decode(LIVE_PROVIDER_SPR).unwrap()).unwrap();
        assert_eq!(spr.seq(), 1_795_225_492);
        assert_eq!(spr.addrs(), &[ma("/ip4/127.0.0.1/tcp/41075")]);
        assert_eq!(spr.udp_addr(), None);
        assert_reencodes(&spr);
    }

    /// The reference's packet test signs node A's record with seq 1 and the address
    /// `/ip4/127.0.0.1/udp/9001` (`SignedPeerRecord.init(1, privKeyA, 127.0.0.1, tcp 9001,
    /// udp 9001)`: udp wins) and sends it in the handshake packet with SPR. Both sides sign
    /// deterministically, so our signing must give the very bytes in that packet.
    #[test]
    fn signing_matches_the_reference_byte_for_byte() {
        let a = keypair(NODE_A_SECRET);
        let ours = Spr::sign(&a, 1, vec![ma("/ip4/127.0.0.1/udp/9000")]).unwrap();
        let theirs = crate::wire::packet::tests::handshake_with_spr_record();
        assert_eq!(hex::encode(ours.encoded()), hex::encode(&theirs));
        assert_eq!(Spr::decode(&theirs).unwrap(), ours);
    }

    #[test]
    fn sign_decode_round_trip() {
        let kp = random_keypair();
        let addrs = vec![ma("/ip4/10.1.2.3/udp/8090"), ma("/ip6/::1/tcp/8070")];
        let spr = Spr::sign(&kp, 0, addrs.clone()).unwrap();
        // seq 0 is written (field 2, value 0): the reference's decoder requires the field.
        let env = SignedEnvelope::from_protobuf_encoding(spr.encoded()).unwrap();
        let (payload, _) = env
            .payload_and_signing_key(SPR_DOMAIN.to_owned(), &SPR_PAYLOAD_TYPE)
            .unwrap();
        assert_eq!(payload.get(2 + 39..2 + 39 + 2), Some(&[0x10, 0x00][..]));
        let back = Spr::decode(spr.encoded()).unwrap();
        assert_eq!(back, spr);
        assert_eq!(back.seq(), 0);
        assert_eq!(back.addrs(), &addrs[..]);
        assert_eq!(back.peer_id(), kp.public().to_peer_id());
        assert_eq!(back.public_key(), &kp.public());
        assert_eq!(back.udp_addr(), Some("10.1.2.3:8090".parse().unwrap()));
        assert_eq!(Spr::from_uri(&spr.to_uri()).unwrap(), spr);
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let mut bytes = hex::decode(LIVE_DHT_SPR).unwrap();
        // The signature is the last field; flip a byte inside s.
        let last = bytes.len() - 5;
        bytes[last] ^= 0x01;
        assert!(matches!(Spr::decode(&bytes), Err(SprError::Signature)));
        // A flipped byte in the payload (the seq) breaks it too.
        let mut bytes = hex::decode(LIVE_DHT_SPR).unwrap();
        let seq_at = hex::encode(&bytes).find("96ef83d806").unwrap() / 2;
        bytes[seq_at] ^= 0x01;
        assert!(matches!(Spr::decode(&bytes), Err(SprError::Signature)));
    }

    #[test]
    fn wrong_domain_is_rejected() {
        let kp = random_keypair();
        let payload = encode_record(&kp.public().to_peer_id(), 5, &[ma("/ip4/1.2.3.4/udp/5")]);
        for domain in ["libp2p-routing-state", "libp2p-peer-recor"] {
            let env = SignedEnvelope::new(
                &kp,
                domain.to_owned(),
                SPR_PAYLOAD_TYPE.to_vec(),
                payload.clone(),
            )
            .unwrap();
            let bytes = env.into_protobuf_encoding();
            assert!(
                matches!(Spr::decode(&bytes), Err(SprError::Signature)),
                "{domain}"
            );
        }
        let env =
            SignedEnvelope::new(&kp, SPR_DOMAIN.to_owned(), vec![0x03, 0x02], payload).unwrap();
        assert!(matches!(
            Spr::decode(&env.into_protobuf_encoding()),
            Err(SprError::PayloadType(t)) if t == [0x03, 0x02]
        ));
    }

    #[test]
    fn mismatched_peer_id_is_rejected() {
        let signer = random_keypair();
        let other = random_keypair();
        let payload = encode_record(&other.public().to_peer_id(), 5, &[ma("/ip4/1.2.3.4/udp/5")]);
        let env = SignedEnvelope::new(
            &signer,
            SPR_DOMAIN.to_owned(),
            SPR_PAYLOAD_TYPE.to_vec(),
            payload,
        )
        .unwrap();
        assert!(matches!(
            Spr::decode(&env.into_protobuf_encoding()),
            Err(SprError::PeerIdMismatch)
        ));
    }

    #[test]
    fn missing_fields_and_bad_addresses() {
        let kp = random_keypair();
        let sign_raw = |rec: PeerRecordPb| {
            SignedEnvelope::new(
                &kp,
                SPR_DOMAIN.to_owned(),
                SPR_PAYLOAD_TYPE.to_vec(),
                rec.encode_to_vec(),
            )
            .unwrap()
            .into_protobuf_encoding()
        };
        let peer = Some(kp.public().to_peer_id().to_bytes());
        let good = AddressInfoPb {
            multiaddr: Some(ma("/ip4/1.2.3.4/udp/5").to_vec()),
        };
        let junk = AddressInfoPb {
            multiaddr: Some(vec![0xff, 0xff, 0xff]),
        };
        let no_seq = sign_raw(PeerRecordPb {
            peer_id: peer.clone(),
            seq: None,
            addresses: vec![good.clone()],
        });
        assert!(matches!(
            Spr::decode(&no_seq),
            Err(SprError::MissingField("seq"))
        ));
        let no_peer = sign_raw(PeerRecordPb {
            peer_id: None,
            seq: Some(1),
            addresses: vec![good.clone()],
        });
        assert!(matches!(
            Spr::decode(&no_peer),
            Err(SprError::MissingField("peer id"))
        ));
        // As the reference: an unparsable address is skipped, all unparsable is an error.
        let mixed = sign_raw(PeerRecordPb {
            peer_id: peer.clone(),
            seq: Some(1),
            addresses: vec![junk.clone(), good],
        });
        assert_eq!(
            Spr::decode(&mixed).unwrap().addrs(),
            &[ma("/ip4/1.2.3.4/udp/5")]
        );
        let all_junk = sign_raw(PeerRecordPb {
            peer_id: peer.clone(),
            seq: Some(1),
            addresses: vec![junk],
        });
        assert!(matches!(
            Spr::decode(&all_junk),
            Err(SprError::NoValidAddress)
        ));
        // No addresses at all is a valid (if useless) record.
        let empty = sign_raw(PeerRecordPb {
            peer_id: peer,
            seq: Some(1),
            addresses: vec![],
        });
        let spr = Spr::decode(&empty).unwrap();
        assert!(spr.addrs().is_empty());
        assert_eq!(spr.udp_addr(), None);
    }

    #[test]
    fn oversize_is_rejected() {
        let kp = random_keypair();
        let many: Vec<Multiaddr> = (0..=MAX_SPR_ADDRS as u16)
            .map(|p| ma(&format!("/ip4/1.2.3.4/udp/{p}")))
            .collect();
        assert!(matches!(
            Spr::sign(&kp, 1, many.clone()),
            Err(SprError::TooManyAddresses(17))
        ));
        // Sixteen long addresses exceed the byte cap.
        let long: Vec<Multiaddr> = (0..MAX_SPR_ADDRS as u16)
            .map(|p| ma(&format!("/dns4/{}.example/udp/{p}", "x".repeat(60))))
            .collect();
        assert!(matches!(
            Spr::sign(&kp, 1, long),
            Err(SprError::TooLarge(_))
        ));
        // Decoding checks both caps too, before anything else.
        assert!(matches!(
            Spr::decode(&vec![0u8; MAX_SPR_BYTES + 1]),
            Err(SprError::TooLarge(_))
        ));
        let payload = encode_record(&kp.public().to_peer_id(), 1, &many);
        let env = SignedEnvelope::new(
            &kp,
            SPR_DOMAIN.to_owned(),
            SPR_PAYLOAD_TYPE.to_vec(),
            payload,
        )
        .unwrap();
        assert!(matches!(
            Spr::decode(&env.into_protobuf_encoding()),
            Err(SprError::TooManyAddresses(17))
        ));
        let long_uri = format!("spr:{}", "A".repeat(2 * MAX_SPR_BYTES));
        assert!(matches!(
            Spr::from_uri(&long_uri),
            Err(SprError::TooLarge(_))
        ));
    }

    #[test]
    fn bad_uris_are_rejected() {
        assert!(matches!(Spr::from_uri(&NIM_SPR_1[4..]), Err(SprError::Uri)));
        assert!(matches!(Spr::from_uri("spr:!!!"), Err(SprError::Uri)));
        assert!(Spr::from_uri("spr:").is_err());
        // Padding is tolerated.
        let padded = format!("{NIM_SPR_1}==");
        assert!(Spr::from_uri(&padded).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let good = hex::decode(LIVE_DHT_SPR).unwrap();
        for cut in 0..good.len() {
            assert!(Spr::decode(&good[..cut]).is_err());
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x80;
            // Everything but the key and signature is signed, and those must match each other.
            assert!(Spr::decode(&b).is_err(), "flip at {i} accepted");
        }
    }
}
