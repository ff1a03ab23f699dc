//! Node ids, content ids and the XOR metric (codex-protocol.md §7.1).
//!
//! A node id is `keccak256` of the libp2p PeerId bytes; a content id (the key of a provider
//! record) is `keccak256` of the binary CID. Both live in the same 256-bit space, compared by
//! XOR; the *log-distance* `256 − leading_zero_bits(a ⊕ b)` (0 for equal ids) picks the
//! routing-table bucket and is what FINDNODE asks for.

use std::fmt;

use libp2p::PeerId;
use sha3::{Digest, Keccak256};

/// The largest log-distance (ids that differ in the top bit).
pub const MAX_LOG_DISTANCE: u16 = 256;

/// A 256-bit id in the DHT key space, big endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The node id of `peer`: keccak256 of its PeerId bytes.
    pub fn from_peer_id(peer: &PeerId) -> NodeId {
        NodeId::keccak(&peer.to_bytes())
    }

    /// The content id of a CID given as its binary form: keccak256 of those bytes.
    pub fn from_cid_bytes(cid: &[u8]) -> NodeId {
        NodeId::keccak(cid)
    }

    /// keccak256 of `bytes`.
    pub fn keccak(bytes: &[u8]) -> NodeId {
        NodeId(Keccak256::digest(bytes).into())
    }

    /// A uniformly random id (for random lookups).
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// The bytes, big endian.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `self ⊕ other`, big endian: the XOR distance.
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// `256 − leading_zero_bits(self ⊕ other)`: 0 for equal ids, 256 when the top bit differs.
    pub fn log_distance(&self, other: &NodeId) -> u16 {
        let mut zeros = 0u16;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            let x = a ^ b;
            if x == 0 {
                zeros += 8;
            } else {
                zeros += x.leading_zeros() as u16;
                break;
            }
        }
        MAX_LOG_DISTANCE - zeros
    }

    /// A random id at log-distance `d` (1..=256) from `self`; `self` for 0.
    pub fn random_at_distance(&self, d: u16) -> NodeId {
        if d == 0 {
            return *self;
        }
        let d = d.min(MAX_LOG_DISTANCE);
        let mut x: [u8; 32] = rand::random();
        // Bit (d − 1) counted from the least significant end must be the highest set bit.
        let bit = usize::from(d - 1);
        let byte = 31 - bit / 8;
        let mask = 1u8 << (bit % 8);
        for b in x.iter_mut().take(byte) {
            *b = 0;
        }
        x[byte] = (x[byte] & (mask - 1)) | mask;
        NodeId(self.distance(&NodeId(x)))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl NodeId {
    /// The id as the reference prints it (its `$` is stint's `toHex` of the 256-bit integer):
    /// lowercase hexadecimal without leading zeros, `"0"` for zero. The REST API's
    /// `/debug/info` writes ids this way; logs use the fixed-width [`Display`](fmt::Display).
    pub fn to_reference_hex(&self) -> String {
        let full = hex::encode(self.0);
        match full.trim_start_matches('0') {
            "" => "0".to_owned(),
            digits => digits.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex_str: &str) -> NodeId {
        NodeId(hex::decode(hex_str).unwrap().try_into().unwrap())
    }

    /// The reference's `$` of a `NodeId` (stint `toHex`, nim-stint `stint/io.nim`) strips
    /// leading zeros; `/debug/info` must print ids the same way.
    #[test]
    fn reference_hex_has_no_leading_zeros() {
        let mut bytes = [0u8; 32];
        assert_eq!(NodeId(bytes).to_reference_hex(), "0");
        bytes[31] = 0x0a;
        assert_eq!(NodeId(bytes).to_reference_hex(), "a");
        bytes[1] = 0x01;
        let want = format!("1{}0a", "0".repeat(58));
        assert_eq!(NodeId(bytes).to_reference_hex(), want);
        bytes[0] = 0xf0;
        assert_eq!(NodeId(bytes).to_reference_hex(), hex::encode(bytes));
    }

    /// codex-protocol.md §11.1 item 6: the node ids of the reference's packet-test keys.
    #[test]
    fn node_ids_of_the_reference_test_keys() {
        for (secret, want) in [
            (
                "fe5f08c842aa946659b266ce68faa5d2fd982634594dccdf7f916e3fcf0541a3",
                "a3646e4d56478a29147fbe110b557bbfabb9d01860069dc4004a694d74bee342",
            ),
            (
                "00064765abe9a4e63b068b5af99c26c61c8ade9bfdae6494873b137ec8152578",
                "b925a99248062196a94e09c1f1fe138163608dc40a6b3b0e8f44b2290d602b47",
            ),
        ] {
            let sk = libp2p::identity::secp256k1::SecretKey::try_from_bytes(
                hex::decode(secret).unwrap(),
            )
            .unwrap();
            let kp: libp2p::identity::Keypair =
                libp2p::identity::secp256k1::Keypair::from(sk).into();
            let peer = kp.public().to_peer_id();
            assert_eq!(NodeId::from_peer_id(&peer), id(want));
        }
    }

    /// dht-verified.md: the reference announced keccak256(treeCid bytes) = 9e072aa2…7368 and
    /// keccak256(manifest CID bytes) = 9c2340e8…9a23 for the "some file contents" upload.
    #[test]
    fn content_ids_seen_on_the_wire() {
        let manifest: cid::Cid = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy"
            .parse()
            .unwrap();
        assert_eq!(
            NodeId::from_cid_bytes(&manifest.to_bytes()).to_string(),
            "9c2340e844ea7c4a8bfbe9f81b97b5374d853afe11de4a1f1c204bffd2919a23"
        );
        let tree: cid::Cid = "zDzSvJTezk7bJNQqFq8k1iHXY84psNuUfZVusA5bBQQUSuyzDSVL"
            .parse()
            .unwrap();
        assert!(
            NodeId::from_cid_bytes(&tree.to_bytes())
                .to_string()
                .starts_with("9e072aa2")
        );
    }

    #[test]
    fn log_distance_edges() {
        let a = NodeId([0; 32]);
        assert_eq!(a.log_distance(&a), 0);
        let mut top = [0u8; 32];
        top[0] = 0x80;
        assert_eq!(a.log_distance(&NodeId(top)), 256);
        let mut low = [0u8; 32];
        low[31] = 1;
        assert_eq!(a.log_distance(&NodeId(low)), 1);
        low[31] = 0x10;
        assert_eq!(a.log_distance(&NodeId(low)), 5);
    }

    #[test]
    fn random_at_distance_is_at_that_distance() {
        let me = NodeId::random();
        for d in 0..=256u16 {
            for _ in 0..4 {
                assert_eq!(me.log_distance(&me.random_at_distance(d)), d);
            }
        }
    }
}
