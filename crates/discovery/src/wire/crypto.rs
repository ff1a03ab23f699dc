//! The handshake and session cryptography (codex-protocol.md §7.2–7.3).
//!
//! Standard discv5.1 with the reference's libp2p twists (nim-codex-dht `encoding.nim`,
//! `crypto.nim`):
//! - ECDH secret: the shared point in compressed form, `02/03 ‖ x` (33 bytes), not only `x`.
//! - Session keys: HKDF-SHA256 with salt = challenge-data, ikm = the ECDH secret,
//!   info = `"discovery v5 key agreement" ‖ id(initiator) ‖ id(recipient)`, 32 bytes split into
//!   the initiator key and the recipient key.
//! - Id signature: `sha256("discovery v5 identity proof" ‖ challenge-data ‖ ephemeral key bytes ‖
//!   destination id)` signed with libp2p's secp256k1 `sign`, which hashes its input once more
//!   and writes DER. So the ECDSA message is the *double* sha256, and the signature is DER, not
//!   the 64-byte r‖s of Ethereum discv5.
//! - The ephemeral public key travels as a 37-byte libp2p protobuf key, `08 02 12 21 ‖ 33`.
//! - Messages: AES-128-GCM with the 12-byte header nonce and a 16-byte tag.
//!
//! All primitives come from RustCrypto (`k256`, `hkdf`, `aes-gcm`) and libp2p-identity; this
//! module only arranges them.
//!
//! Tests check the reference's "Cryptographic Primitives" vectors
//! (`tests/discv5/test_discoveryv5_encoding.nim`, codex-protocol.md §11.1 item 5): ECDH, key
//! derivation, nonce signing (compared as raw r‖s, RFC 6979 makes it deterministic; the upstream
//! single-hash discv5 value is checked to differ), AES-GCM, and the reference's "Decryption"
//! rejections (empty, tag-only and corrupted ciphertexts).

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use k256::elliptic_curve::sec1::ToSec1Point;
use libp2p::identity::{Keypair, PublicKey};
use sha2::{Digest, Sha256};

use crate::ids::NodeId;

/// Length of an AES-128 key.
pub const KEY_SIZE: usize = 16;
/// Length of the AES-GCM nonce (the packet header's nonce).
pub const NONCE_SIZE: usize = 12;
/// Length of the AES-GCM authentication tag appended to every ciphertext.
pub const TAG_SIZE: usize = 16;
/// Length of the ECDH secret: a compressed secp256k1 point.
pub const SHARED_SECRET_SIZE: usize = 33;
/// Length of an ephemeral key on the wire: libp2p's protobuf public key for secp256k1.
pub const EPH_PUBKEY_SIZE: usize = EPH_PUBKEY_PREFIX.len() + 33;

/// The protobuf prefix of a libp2p secp256k1 public key: field 1 (key type) = 2 (secp256k1),
/// field 2 (data) of 33 bytes.
const EPH_PUBKEY_PREFIX: [u8; 4] = [0x08, 0x02, 0x12, 0x21];
/// The id-signature's prefix (discv5).
const ID_SIGNATURE_TEXT: &[u8] = b"discovery v5 identity proof";
/// The HKDF info prefix (discv5).
const KEY_AGREEMENT_TEXT: &[u8] = b"discovery v5 key agreement";

/// Why a cryptographic step failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key is not a secp256k1 key (the DHT identity must be one: its static key does ECDH).
    #[error("not a secp256k1 key")]
    NotSecp256k1,
    /// A secp256k1 key did not convert between libp2p and k256.
    #[error("invalid secp256k1 key")]
    InvalidKey,
    /// The ephemeral public key is not a libp2p protobuf secp256k1 key.
    #[error("invalid ephemeral public key")]
    InvalidEphemeralKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(#[from] libp2p::identity::SigningError),
    /// The ciphertext is no longer than a tag, or it does not authenticate.
    #[error("decryption failed")]
    Decrypt,
    /// The plaintext is too long for AES-GCM (never for a packet).
    #[error("encryption failed")]
    Encrypt,
}

/// The two session keys the handshake derives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    /// Encrypts what the initiator sends.
    pub initiator: [u8; KEY_SIZE],
    /// Encrypts what the recipient sends.
    pub recipient: [u8; KEY_SIZE],
}

/// The ECDH secret: `secret · public` as a compressed point (`02/03 ‖ x`).
pub fn ecdh(public: &k256::PublicKey, secret: &k256::SecretKey) -> [u8; SHARED_SECRET_SIZE] {
    let point = (public.to_projective() * *secret.to_nonzero_scalar()).to_affine();
    let encoded = point.to_sec1_point(true);
    // A non-zero scalar times a point of the prime-order group is never the identity, so the
    // compressed encoding is always 33 bytes.
    let mut out = [0u8; SHARED_SECRET_SIZE];
    for (o, b) in out.iter_mut().zip(encoded.as_bytes()) {
        *o = *b;
    }
    out
}

/// HKDF-SHA256 of the ECDH secret into the session keys (see the module docs).
pub fn derive_keys(
    shared: &[u8; SHARED_SECRET_SIZE],
    initiator: &NodeId,
    recipient: &NodeId,
    challenge_data: &[u8],
) -> SessionKeys {
    let mut info = Vec::with_capacity(KEY_AGREEMENT_TEXT.len() + 64);
    info.extend_from_slice(KEY_AGREEMENT_TEXT);
    info.extend_from_slice(initiator.as_bytes());
    info.extend_from_slice(recipient.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(challenge_data), shared);
    let mut okm = [0u8; 2 * KEY_SIZE];
    // Cannot fail: HKDF-SHA256 refuses only outputs longer than 255 · 32 bytes.
    let expanded = hk.expand(&info, &mut okm);
    debug_assert!(expanded.is_ok());
    let mut keys = SessionKeys {
        initiator: [0; KEY_SIZE],
        recipient: [0; KEY_SIZE],
    };
    let (a, b) = okm.split_at(KEY_SIZE);
    keys.initiator.copy_from_slice(a);
    keys.recipient.copy_from_slice(b);
    keys
}

/// The discv5 id hash: `sha256(text ‖ challenge-data ‖ eph-key ‖ dest)`.
fn id_hash(challenge_data: &[u8], eph_pubkey: &[u8], dest: &NodeId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ID_SIGNATURE_TEXT);
    h.update(challenge_data);
    h.update(eph_pubkey);
    h.update(dest.as_bytes());
    h.finalize().into()
}

/// The handshake's id signature, DER-encoded: libp2p's secp256k1 `sign` (which hashes with
/// sha256 again) over the discv5 id hash. `eph_pubkey` is the ephemeral key exactly as sent
/// (the 37-byte protobuf form).
pub fn id_sign(
    key: &Keypair,
    challenge_data: &[u8],
    eph_pubkey: &[u8],
    dest: &NodeId,
) -> Result<Vec<u8>, CryptoError> {
    let kp = key
        .clone()
        .try_into_secp256k1()
        .map_err(|_| CryptoError::NotSecp256k1)?;
    Ok(kp.secret().sign(&id_hash(challenge_data, eph_pubkey, dest)))
}

/// Checks an id signature made by [`id_sign`] (or the reference) with the signer's key.
pub fn id_verify(
    key: &PublicKey,
    sig: &[u8],
    challenge_data: &[u8],
    eph_pubkey: &[u8],
    dest: &NodeId,
) -> bool {
    key.verify(&id_hash(challenge_data, eph_pubkey, dest), sig)
}

/// AES-128-GCM encryption: ciphertext ‖ 16-byte tag.
pub fn encrypt(
    key: &[u8; KEY_SIZE],
    nonce: &[u8; NONCE_SIZE],
    plaintext: &[u8],
    ad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    Aes128Gcm::new(key.into())
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)
}

/// AES-128-GCM decryption. Like the reference's `decryptGCM`, a ciphertext no longer than the
/// tag (an empty plaintext) is refused.
pub fn decrypt(
    key: &[u8; KEY_SIZE],
    nonce: &[u8; NONCE_SIZE],
    ciphertext: &[u8],
    ad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() <= TAG_SIZE {
        return Err(CryptoError::Decrypt);
    }
    Aes128Gcm::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// The node's static secp256k1 secret as a k256 key (for ECDH as the handshake's recipient).
pub fn static_secret(key: &Keypair) -> Result<k256::SecretKey, CryptoError> {
    let kp = key
        .clone()
        .try_into_secp256k1()
        .map_err(|_| CryptoError::NotSecp256k1)?;
    k256::SecretKey::from_slice(&kp.secret().to_bytes()).map_err(|_| CryptoError::InvalidKey)
}

/// A libp2p secp256k1 public key as a k256 key (the destination key of a handshake).
pub fn k256_public(key: &PublicKey) -> Result<k256::PublicKey, CryptoError> {
    let pk = key
        .clone()
        .try_into_secp256k1()
        .map_err(|_| CryptoError::NotSecp256k1)?;
    k256::PublicKey::from_sec1_bytes(&pk.to_bytes()).map_err(|_| CryptoError::InvalidKey)
}

/// A fresh random secret (the handshake's ephemeral key).
pub fn ephemeral_secret() -> k256::SecretKey {
    loop {
        // A random 32-byte string is a valid scalar unless it is 0 or ≥ the group order
        // (probability below 2^-127), so this loop runs once.
        let bytes: [u8; 32] = rand::random();
        if let Ok(sk) = k256::SecretKey::from_slice(&bytes) {
            return sk;
        }
    }
}

/// The ephemeral key as the handshake carries it: `08 02 12 21 ‖ compressed key` (37 bytes).
pub fn encode_eph_pubkey(pk: &k256::PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(EPH_PUBKEY_SIZE);
    out.extend_from_slice(&EPH_PUBKEY_PREFIX);
    out.extend_from_slice(pk.as_affine().to_sec1_point(true).as_bytes());
    out
}

/// Reads a handshake's ephemeral key: a libp2p protobuf secp256k1 public key (the reference
/// decodes it with libp2p's `PublicKey.init`, so an uncompressed key is accepted too).
pub fn decode_eph_pubkey(bytes: &[u8]) -> Result<k256::PublicKey, CryptoError> {
    let key =
        PublicKey::try_decode_protobuf(bytes).map_err(|_| CryptoError::InvalidEphemeralKey)?;
    k256_public(&key).map_err(|_| CryptoError::InvalidEphemeralKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn id(s: &str) -> NodeId {
        NodeId(h(s).try_into().unwrap())
    }

    fn secret(s: &str) -> k256::SecretKey {
        k256::SecretKey::from_slice(&h(s)).unwrap()
    }

    fn public(s: &str) -> k256::PublicKey {
        k256::PublicKey::from_sec1_bytes(&h(s)).unwrap()
    }

    const STATIC_OR_EPH_SECRET: &str =
        "fb757dc581730490a1d7a00deea65e9b1936924caaea8f44d476014856b68736";
    const CHALLENGE_DATA: &str = "000000000000000000000000000000006469736376350001010102030405060708090a0b0c00180102030405060708090a0b0c0d0e0f100000000000000000";
    const NODE_ID_A: &str = "aaaa8419e9f49d0083561b48287df592939a8d19947d8c0ef88f2a4856a69fbb";
    const NODE_ID_B: &str = "bbbb9d047f0488c0b5a93c1c3f2d8bafc7c8ff337024a55434a0d0555de64db9";
    const EPH_PUBKEY: &str = "039961e4c2356d61bedb83052c115d311acb3a96f5777296dcf297351130266231";

    fn keypair(secret_hex: &str) -> Keypair {
        crate::spr::tests::keypair(secret_hex)
    }

    /// Reference test "ECDH".
    #[test]
    fn ecdh_vector() {
        let shared = ecdh(&public(EPH_PUBKEY), &secret(STATIC_OR_EPH_SECRET));
        assert_eq!(
            hex::encode(shared),
            "033b11a2a1f214567e1537ce5e509ffd9b21373247f2a3ff6841f4976f53165e7e"
        );
    }

    /// Reference test "Key Derivation".
    #[test]
    fn key_derivation_vector() {
        let dest = public("0317931e6e0840220642f230037d285d122bc59063221ef3226b1f403ddc69ca91");
        let shared = ecdh(&dest, &secret(STATIC_OR_EPH_SECRET));
        let keys = derive_keys(&shared, &id(NODE_ID_A), &id(NODE_ID_B), &h(CHALLENGE_DATA));
        assert_eq!(
            hex::encode(keys.initiator),
            "dccc82d81bd610f4f76d3ebe97a40571"
        );
        assert_eq!(
            hex::encode(keys.recipient),
            "ac74bb8773749920b0d3a8881c173ec5"
        );
        // Swapping the ids (the recipient's view with the roles mixed up) gives other keys.
        let swapped = derive_keys(&shared, &id(NODE_ID_B), &id(NODE_ID_A), &h(CHALLENGE_DATA));
        assert_ne!(swapped, keys);
    }

    /// Reference test "Nonce Signing": the ephemeral key is given as raw 33 bytes there.
    #[test]
    fn id_signature_vector() {
        let kp = keypair(STATIC_OR_EPH_SECRET);
        let sig = id_sign(&kp, &h(CHALLENGE_DATA), &h(EPH_PUBKEY), &id(NODE_ID_B)).unwrap();
        let raw = k256::ecdsa::Signature::from_der(&sig).unwrap().to_bytes();
        assert_eq!(
            hex::encode(raw),
            "db0ae930a460fd767cb26a519221e6be5edc3501865406d8af6d215f87ebf35b07563d891082d97147d9499f49bb86ee399f57367af1b866674f9e54760e3a21"
        );
        // The upstream (single-hash) discv5 vector starts 94852a1e: not what the fork signs.
        assert!(!hex::encode(raw).starts_with("94852a1e"));
        assert!(id_verify(
            &kp.public(),
            &sig,
            &h(CHALLENGE_DATA),
            &h(EPH_PUBKEY),
            &id(NODE_ID_B)
        ));
    }

    /// The reference verifies with libsecp256k1, which refuses high-S signatures: ours must
    /// always be low-S (k256 normalises; this guards against a regression).
    #[test]
    fn id_signatures_are_low_s() {
        let kp = keypair(STATIC_OR_EPH_SECRET);
        for i in 0..64u8 {
            let sig = id_sign(&kp, &[i; 40], &h(EPH_PUBKEY), &id(NODE_ID_B)).unwrap();
            let parsed = k256::ecdsa::Signature::from_der(&sig).unwrap();
            assert_eq!(
                parsed.normalize_s(),
                parsed,
                "high-S signature for challenge {i}"
            );
        }
    }

    #[test]
    fn id_verify_rejects_changes() {
        let kp = keypair(STATIC_OR_EPH_SECRET);
        let challenge = h(CHALLENGE_DATA);
        let eph = h(EPH_PUBKEY);
        let dest = id(NODE_ID_B);
        let sig = id_sign(&kp, &challenge, &eph, &dest).unwrap();
        assert!(id_verify(&kp.public(), &sig, &challenge, &eph, &dest));
        let mut other_challenge = challenge.clone();
        other_challenge[40] ^= 1;
        assert!(!id_verify(
            &kp.public(),
            &sig,
            &other_challenge,
            &eph,
            &dest
        ));
        assert!(!id_verify(
            &kp.public(),
            &sig,
            &challenge,
            &eph,
            &id(NODE_ID_A)
        ));
        let mut other_eph = eph.clone();
        other_eph[5] ^= 1;
        assert!(!id_verify(
            &kp.public(),
            &sig,
            &challenge,
            &other_eph,
            &dest
        ));
        let other_key = keypair(crate::spr::tests::NODE_A_SECRET);
        assert!(!id_verify(
            &other_key.public(),
            &sig,
            &challenge,
            &eph,
            &dest
        ));
        assert!(!id_verify(
            &kp.public(),
            &sig[..sig.len() - 1],
            &challenge,
            &eph,
            &dest
        ));
        assert!(!id_verify(&kp.public(), &[], &challenge, &eph, &dest));
    }

    /// Reference test "Encryption/Decryption".
    #[test]
    fn aes_gcm_vector() {
        let key: [u8; 16] = h("9f2d77db7004bf8a1a85107ac686990b").try_into().unwrap();
        let nonce: [u8; 12] = h("27b5af763c446acd2749fe8e").try_into().unwrap();
        let ad = h("93a7400fa0d6a694ebc24d5cf570f65d04215b6ac00757875e3f3a5f42107903");
        let ct = encrypt(&key, &nonce, &h("01c20101"), &ad).unwrap();
        assert_eq!(hex::encode(&ct), "a5d12a2d94b8ccb3ba55558229867dc13bfa3648");
        assert_eq!(decrypt(&key, &nonce, &ct, &ad).unwrap(), h("01c20101"));
        // Reference test "Decryption": empty, tag-only and corrupted ciphertexts fail.
        assert!(decrypt(&key, &nonce, &[], &ad).is_err());
        assert!(decrypt(&key, &nonce, &[4; TAG_SIZE], &ad).is_err());
        assert!(decrypt(&key, &nonce, &[4; TAG_SIZE + 1], &ad).is_err());
        // Reference "Additional Encode/Decode" round trip of one byte.
        let ct = encrypt(&key, &nonce, &[0xa1], &ad).unwrap();
        assert_eq!(decrypt(&key, &nonce, &ct, &ad).unwrap(), [0xa1]);
        // Wrong associated data fails.
        assert!(decrypt(&key, &nonce, &ct, &ad[1..]).is_err());
    }

    #[test]
    fn key_conversions() {
        let kp = keypair(crate::spr::tests::NODE_A_SECRET);
        let sk = static_secret(&kp).unwrap();
        let pk = k256_public(&kp.public()).unwrap();
        assert_eq!(sk.public_key(), pk);
        // ECDH agrees from both sides.
        let eph = ephemeral_secret();
        assert_eq!(ecdh(&pk, &eph), ecdh(&eph.public_key(), &sk));
        // The 37-byte wire form is libp2p's protobuf key.
        let wire = encode_eph_pubkey(&eph.public_key());
        assert_eq!(wire.len(), EPH_PUBKEY_SIZE);
        assert_eq!(&wire[..4], &[0x08, 0x02, 0x12, 0x21]);
        let as_libp2p: PublicKey =
            libp2p::identity::secp256k1::PublicKey::try_from_bytes(&wire[4..])
                .unwrap()
                .into();
        assert_eq!(as_libp2p.encode_protobuf(), wire);
        assert_eq!(decode_eph_pubkey(&wire).unwrap(), eph.public_key());
        // Bare 33 bytes, truncated, or another key type are refused.
        assert!(decode_eph_pubkey(&wire[4..]).is_err());
        assert!(decode_eph_pubkey(&wire[..36]).is_err());
        assert!(decode_eph_pubkey(&[]).is_err());
        let ed = Keypair::generate_ed25519();
        assert!(decode_eph_pubkey(&ed.public().encode_protobuf()).is_err());
        assert!(matches!(static_secret(&ed), Err(CryptoError::NotSecp256k1)));
        assert!(matches!(
            k256_public(&ed.public()),
            Err(CryptoError::NotSecp256k1)
        ));
        assert!(matches!(
            id_sign(&ed, b"c", b"e", &NodeId([0; 32])),
            Err(CryptoError::NotSecp256k1)
        ));
    }
}
