//! Content identifiers as the reference node builds them.
//!
//! Every CID cairn produces is a CIDv1 `varint(1) || varint(codec) || multihash`, with a sha2-256
//! multihash (`0x12 0x20 <32 bytes>`) and one of the Codex content codecs below. The binary form of
//! a block CID is 38 bytes; the text form is multibase base58btc (`z…`). Parsing accepts whatever
//! the `cid` crate accepts (including CIDv0), as the reference's `Cid.init` does, except that the
//! binary form must be one CID and nothing after it; the rest of cairn only ever *produces* CIDv1.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::merkle::Digest;

/// A CID (multihash of at most 64 bytes; sha2-256 needs 32) whose text form is always
/// base58btc, as the reference writes it. The `cid` crate's own `Display` uses base32 for CIDv1,
/// so this newtype exists to make the wrong form impossible to print by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(cid::CidGeneric<64>);

impl Cid {
    /// A CIDv1 with content codec `codec` and multihash `hash`.
    pub fn new_v1(codec: u64, hash: multihash::Multihash<64>) -> Cid {
        Cid(cid::CidGeneric::new_v1(codec, hash))
    }

    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The content codec code.
    pub fn codec(&self) -> u64 {
        self.0.codec()
    }

    /// The multihash.
    pub fn hash(&self) -> &multihash::Multihash<64> {
        self.0.hash()
    }

    /// The CID version (0 or 1).
    pub fn version(&self) -> u64 {
        match self.0.version() {
            cid::Version::V0 => 0,
            cid::Version::V1 => 1,
        }
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.version() {
            // CIDv0 has no multibase prefix; its canonical form is bare base58btc.
            cid::Version::V0 => write!(f, "{}", self.0),
            cid::Version::V1 => match self.0.to_string_of_base(multibase::Base::Base58Btc) {
                Ok(s) => f.write_str(&s),
                Err(_) => write!(f, "{}", self.0),
            },
        }
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl std::str::FromStr for Cid {
    type Err = CidError;
    fn from_str(s: &str) -> Result<Cid, CidError> {
        parse_cid(s)
    }
}

/// The multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Length in bytes of a sha2-256 digest.
pub const DIGEST_LEN: usize = 32;

/// The Codex content codecs (multicodec table entries registered by the reference node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// `codex-manifest` (0xCD01): a manifest block.
    Manifest,
    /// `codex-block` (0xCD02): a data block.
    Block,
    /// `codex-root` (0xCD03): a dataset Merkle root (tree CID).
    Root,
    /// `codex-slot-root` (0xCD04): a slot root (proving; never produced by cairn).
    SlotRoot,
    /// `codex-proving-root` (0xCD05): a verification root (proving; never produced by cairn).
    ProvingRoot,
    /// `codex-slot-cell` (0xCD06): a slot cell (proving; never produced by cairn).
    SlotCell,
}

impl Codec {
    /// The multicodec code.
    pub const fn code(self) -> u64 {
        match self {
            Codec::Manifest => 0xCD01,
            Codec::Block => 0xCD02,
            Codec::Root => 0xCD03,
            Codec::SlotRoot => 0xCD04,
            Codec::ProvingRoot => 0xCD05,
            Codec::SlotCell => 0xCD06,
        }
    }

    /// The codec with this multicodec code, if it is a Codex codec.
    pub const fn from_code(code: u64) -> Option<Codec> {
        Some(match code {
            0xCD01 => Codec::Manifest,
            0xCD02 => Codec::Block,
            0xCD03 => Codec::Root,
            0xCD04 => Codec::SlotRoot,
            0xCD05 => Codec::ProvingRoot,
            0xCD06 => Codec::SlotCell,
            _ => return None,
        })
    }

    /// The multicodec table name.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Manifest => "codex-manifest",
            Codec::Block => "codex-block",
            Codec::Root => "codex-root",
            Codec::SlotRoot => "codex-slot-root",
            Codec::ProvingRoot => "codex-proving-root",
            Codec::SlotCell => "codex-slot-cell",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a CID was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CidError {
    /// The text or bytes are not a CID at all.
    #[error("not a valid CID: {0}")]
    Parse(#[from] cid::Error),
    /// The CID is valid but is not hashed with sha2-256 (the only hash cairn stores).
    #[error("unsupported multihash code {code:#x} with a {len}-byte digest (expected sha2-256)")]
    UnsupportedHash {
        /// Multihash code found.
        code: u64,
        /// Digest length found.
        len: usize,
    },
    /// The CID's content codec is not the one this use requires.
    #[error("unexpected content codec {found:#x} (expected {expected})")]
    WrongCodec {
        /// Codec code found.
        found: u64,
        /// Codec expected.
        expected: Codec,
    },
    /// The bytes hold a CID followed by more bytes.
    #[error("{extra} bytes after the CID")]
    TrailingBytes {
        /// Bytes left after the CID.
        extra: usize,
    },
}

/// sha2-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// The CIDv1 with content codec `codec` and the sha2-256 multihash whose digest is `digest`.
pub fn cid_from_digest(codec: Codec, digest: &Digest) -> Cid {
    // A 32-byte digest always fits a 64-byte multihash, so `wrap` cannot fail here.
    let Ok(mh) = multihash::Multihash::<64>::wrap(SHA2_256, digest) else {
        unreachable!("a 32-byte digest fits in a 64-byte multihash")
    };
    Cid::new_v1(codec.code(), mh)
}

/// The CID of a data block: CIDv1(codex-block, sha2-256(data)).
pub fn block_cid(data: &[u8]) -> Cid {
    cid_from_digest(Codec::Block, &sha256(data))
}

/// The CID of the empty block (sha2-256 of zero bytes). Local stores treat it as always present.
pub fn empty_block_cid() -> Cid {
    block_cid(&[])
}

/// Parses a CID from its text form (base58btc `z…`, or any multibase the `cid` crate accepts).
pub fn parse_cid(text: &str) -> Result<Cid, CidError> {
    Ok(Cid(cid::CidGeneric::try_from(text)?))
}

/// Parses a CID from its binary form, refusing trailing bytes.
///
/// (nim-libp2p's `Cid.init` checks only that the multihash fits and keeps any tail; the reference
/// never writes one, so refusing it costs no interop and keeps one CID to one byte string.)
pub fn cid_from_bytes(bytes: &[u8]) -> Result<Cid, CidError> {
    // `read_bytes` reads one CID from the front and advances `rest` past it.
    let mut rest = bytes;
    let cid = cid::CidGeneric::read_bytes(&mut rest)?;
    if !rest.is_empty() {
        return Err(CidError::TrailingBytes { extra: rest.len() });
    }
    Ok(Cid(cid))
}

/// The sha2-256 digest inside `cid`, or an error if it is hashed with anything else.
pub fn cid_digest(cid: &Cid) -> Result<Digest, CidError> {
    let mh = cid.hash();
    let bytes = mh.digest();
    if mh.code() != SHA2_256 || bytes.len() != DIGEST_LEN {
        return Err(CidError::UnsupportedHash {
            code: mh.code(),
            len: bytes.len(),
        });
    }
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// Checks that `cid` has content codec `expected`.
pub fn expect_codec(cid: &Cid, expected: Codec) -> Result<(), CidError> {
    if cid.codec() == expected.code() {
        Ok(())
    } else {
        Err(CidError::WrongCodec {
            found: cid.codec(),
            expected,
        })
    }
}

/// Where a block lives: by its own CID, or as the `index`-th leaf of the dataset whose Merkle root
/// CID is `tree` (the two shapes of the reference's `BlockAddress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockAddress {
    /// A standalone block, addressed by its CID (manifests, and in principle any block).
    Block(Cid),
    /// The `index`-th block of the dataset with tree CID `tree`.
    Leaf {
        /// The dataset's tree CID (codec `codex-root`).
        tree: Cid,
        /// Leaf index, from 0.
        index: u64,
    },
}

impl fmt::Display for BlockAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockAddress::Block(cid) => write!(f, "{cid}"),
            BlockAddress::Leaf { tree, index } => write!(f, "{tree}[{index}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// codex-protocol.md §11.2: the padded "some file contents" block.
    #[test]
    fn padded_block_cid_matches_reference_vector() {
        let mut block = vec![0u8; 65536];
        block[..18].copy_from_slice(b"some file contents");
        let cid = block_cid(&block);
        assert_eq!(
            cid.to_string(),
            "zDxWB8ED98hxJ51XwYaoQAwMdskCcmTaPR6Ce2wq88bjvjXRYuR9"
        );
        assert_eq!(
            hex::encode(cid.to_bytes()),
            "01829a0312209d377dacf54120b0f1c6c4ba46e487575d8bc737f44c4f5c3cec48a4fb59c2e0"
        );
    }

    /// codex-protocol.md §11.2: the empty-block CID used for padding leaves.
    #[test]
    fn empty_block_cid_matches_reference_vector() {
        assert_eq!(
            empty_block_cid().to_string(),
            "zDxWB8EDDsokSpiTXNRpv1jS2LXjEdLgTiDfxFd7Eo8CSPKVj93r"
        );
    }

    /// The binary form is taken whole: a CID followed by anything else is refused, as the doc of
    /// `cid_from_bytes` says (the `cid` crate alone reads one CID and ignores the rest).
    #[test]
    fn cid_from_bytes_refuses_trailing_bytes() {
        let cid = block_cid(b"x");
        let exact = cid.to_bytes();
        assert_eq!(cid_from_bytes(&exact).unwrap(), cid);
        for tail in [&[0u8][..], &[1, 2, 3], &exact] {
            let mut bytes = exact.clone();
            bytes.extend_from_slice(tail);
            assert!(
                matches!(
                    cid_from_bytes(&bytes),
                    Err(CidError::TrailingBytes { extra }) if extra == tail.len()
                ),
                "{} trailing bytes",
                tail.len()
            );
        }
        assert!(cid_from_bytes(&exact[..exact.len() - 1]).is_err());
        assert!(cid_from_bytes(&[]).is_err());
    }

    #[test]
    fn codec_varints_match_table() {
        // codex-protocol.md §4.1: varint bytes of the codes.
        let cid = cid_from_digest(Codec::Manifest, &[0; 32]);
        assert_eq!(&cid.to_bytes()[..4], &[0x01, 0x81, 0x9a, 0x03]);
        let cid = cid_from_digest(Codec::Root, &[0; 32]);
        assert_eq!(&cid.to_bytes()[..4], &[0x01, 0x83, 0x9a, 0x03]);
        for codec in [Codec::Manifest, Codec::Block, Codec::Root, Codec::SlotRoot] {
            assert_eq!(Codec::from_code(codec.code()), Some(codec));
        }
        assert_eq!(Codec::from_code(0x55), None);
    }

    #[test]
    fn parse_round_trip_and_errors() {
        let cid = block_cid(b"x");
        assert_eq!(parse_cid(&cid.to_string()).ok(), Some(cid));
        assert_eq!(cid_from_bytes(&cid.to_bytes()).ok(), Some(cid));
        assert!(parse_cid("not-a-cid").is_err());
        assert!(parse_cid("").is_err());
        assert!(cid_from_bytes(&[0x01, 0x82]).is_err());
        assert_eq!(cid_digest(&cid).ok(), Some(sha256(b"x")));
        assert!(expect_codec(&cid, Codec::Block).is_ok());
        assert!(matches!(
            expect_codec(&cid, Codec::Manifest),
            Err(CidError::WrongCodec { found: 0xCD02, .. })
        ));
    }

    #[test]
    fn non_sha256_cid_is_rejected() {
        let mh = multihash::Multihash::<64>::wrap(0x00, b"abc").unwrap();
        let cid = Cid::new_v1(Codec::Block.code(), mh);
        assert!(matches!(
            cid_digest(&cid),
            Err(CidError::UnsupportedHash { code: 0, len: 3 })
        ));
    }
}
