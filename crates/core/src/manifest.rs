//! The dataset manifest, encoded exactly as the reference encodes it.
//!
//! A manifest names a dataset: its tree CID, sizes, codecs, and optionally a filename and MIME
//! type. It is itself stored as a block whose CID (`codex-manifest`) is the sha2-256 of its
//! encoding, so the encoding must match the reference byte for byte (`codex-protocol.md` §6.2):
//! the outer message has one field (1: header); the header's fields are written in order 1..9 and
//! every scalar field is emitted even when zero. Prost messages with `optional` scalar fields give
//! exactly that: present fields are encoded in tag order, including zero values.
//!
//! Decoding is tolerant as the reference's is: unknown fields are ignored, missing scalars take
//! defaults, empty filename/mimetype mean "absent", and an empty erasure sub-message means "not
//! protected". It is also strict where cairn must be safe: the tree CID must parse, the block size
//! must be in range, and a protected manifest must have the block count the reference's `verify`
//! demands: `ceil(ceil(originalDatasetSize / blockSize) / ecK) × (ecK + ecM)`, with ecK > 0 (the
//! reference divides by ecK and would fail on zero). Like the reference, nothing else ties
//! `originalDatasetSize` to `datasetSize`; the rule already keeps the original's blocks inside the
//! protected tree.

use prost::Message as _;

use crate::{
    block::Block,
    chunker::{DEFAULT_BLOCK_SIZE, blocks_count},
    cid::{Cid, CidError, Codec, SHA2_256, cid_from_bytes},
};

/// The reference's largest block size (`MaxBlockSize` = 100 MiB).
pub const MAX_BLOCK_SIZE: u64 = 100 * 1024 * 1024;

/// Largest dataset size a manifest may claim: `i64::MAX`. The reference holds sizes and leaf
/// indices in Nim's signed `int` (`NBytes`, `Natural`); a leaf index above it in a want list
/// makes its decoder's range check abort the whole process (blockexc-verified.md saw this for
/// the priority field). Refusing such a manifest keeps every index cairn asks for below it, so
/// a made-up manifest cannot turn a cairn node against its reference peers (found by review).
pub const MAX_DATASET_SIZE: u64 = i64::MAX as u64;

/// The largest manifest encoding cairn decodes. An unprotected manifest is ~60 bytes plus its
/// filename and MIME type; a verifiable one adds a 38-byte CID per slot. 1 MiB is far above any
/// real manifest and keeps a hostile one from costing more than a block.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// The manifest `version` field as the reference writes it: the ordinal of its CID-version enum,
/// where CIDv1 is 2 (verified against a running reference node).
pub const VERSION_CIDV1: u64 = 2;

/// Errors decoding a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest of {0} bytes is larger than the limit")]
    TooLarge(usize),
    /// Not a valid protobuf message.
    #[error("malformed manifest encoding: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The header sub-message is missing.
    #[error("manifest has no header")]
    NoHeader,
    /// A CID inside the manifest is invalid.
    #[error("manifest contains an invalid CID: {0}")]
    Cid(#[from] CidError),
    /// The block size is zero or above [`MAX_BLOCK_SIZE`].
    #[error("manifest block size {0} out of range")]
    BlockSize(u64),
    /// The dataset size is above [`MAX_DATASET_SIZE`].
    #[error("manifest dataset size {0} is larger than a signed 64-bit integer holds")]
    DatasetSize(u64),
    /// A protected manifest's block count does not match its erasure parameters and original
    /// size (or ecK is zero).
    #[error(
        "protected manifest has {blocks} blocks, which do not fit ecK = {ec_k}, ecM = {ec_m} \
         and an original dataset of {original_dataset_size} bytes"
    )]
    ErasureShape {
        /// Blocks in the dataset.
        blocks: u64,
        /// Data blocks per group.
        ec_k: u64,
        /// Parity blocks per group.
        ec_m: u64,
        /// Size in bytes of the unprotected dataset.
        original_dataset_size: u64,
    },
    /// The block is not a manifest (wrong CID codec).
    #[error("block {0} is not a manifest")]
    NotAManifest(Cid),
}

/// Erasure-coding parameters of a protected dataset (only the marketplace flow creates these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureInfo {
    /// Data blocks per group.
    pub ec_k: u64,
    /// Parity blocks per group.
    pub ec_m: u64,
    /// Tree CID of the unprotected dataset.
    pub original_tree_cid: Cid,
    /// Size in bytes of the unprotected dataset.
    pub original_dataset_size: u64,
    /// Indexing strategy (0 = linear, 1 = stepped).
    pub protected_strategy: u64,
    /// Storage-proof parameters, for verifiable datasets.
    pub verification: Option<VerificationInfo>,
}

impl ErasureInfo {
    /// The block count the reference demands of a protected dataset with these parameters
    /// (manifest.nim `verify`): the original's blocks padded up to whole groups of ecK, and ecK + ecM
    /// blocks per group. `None` when ecK is zero (the reference would divide by zero) or the
    /// count overflows a u64 (no real dataset is that large).
    pub fn protected_blocks_count(&self, block_size: u64) -> Option<u64> {
        if self.ec_k == 0 {
            return None;
        }
        let steps = blocks_count(self.original_dataset_size, block_size).div_ceil(self.ec_k);
        steps.checked_mul(self.ec_k.checked_add(self.ec_m)?)
    }
}

/// Storage-proof parameters of a verifiable dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationInfo {
    /// Verification root CID.
    pub verify_root: Cid,
    /// One root CID per slot.
    pub slot_roots: Vec<Cid>,
    /// Cell size in bytes.
    pub cell_size: u64,
    /// Indexing strategy (0 = linear, 1 = stepped).
    pub verifiable_strategy: u64,
}

/// A dataset manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The dataset's Merkle root CID (`codex-root`).
    pub tree_cid: Cid,
    /// Block size in bytes.
    pub block_size: u64,
    /// Real (unpadded) dataset size in bytes.
    pub dataset_size: u64,
    /// Content codec of the blocks (`codex-block`).
    pub codec: u64,
    /// Hash codec of the blocks (sha2-256).
    pub hcodec: u64,
    /// The `version` field as written on the wire ([`VERSION_CIDV1`] for CIDv1).
    pub version: u64,
    /// Original file name, if the uploader gave one.
    pub filename: Option<String>,
    /// MIME type, if the uploader gave one.
    pub mimetype: Option<String>,
    /// Erasure coding, for protected datasets.
    pub erasure: Option<ErasureInfo>,
}

impl Manifest {
    /// The manifest of an unprotected upload, with the reference's defaults for the codecs.
    pub fn new(tree_cid: Cid, dataset_size: u64, block_size: u64) -> Manifest {
        Manifest {
            tree_cid,
            block_size,
            dataset_size,
            codec: Codec::Block.code(),
            hcodec: SHA2_256,
            version: VERSION_CIDV1,
            filename: None,
            mimetype: None,
            erasure: None,
        }
    }

    /// Sets the filename (empty means none).
    pub fn with_filename(mut self, filename: Option<String>) -> Manifest {
        self.filename = filename.filter(|f| !f.is_empty());
        self
    }

    /// Sets the MIME type (empty means none).
    pub fn with_mimetype(mut self, mimetype: Option<String>) -> Manifest {
        self.mimetype = mimetype.filter(|m| !m.is_empty());
        self
    }

    /// Whether the dataset is erasure-protected.
    pub fn protected(&self) -> bool {
        self.erasure.is_some()
    }

    /// Number of blocks (leaves) in the dataset tree.
    pub fn blocks_count(&self) -> u64 {
        // For protected datasets datasetSize = blocksCount × blockSize, so the same rule holds.
        blocks_count(self.dataset_size, self.block_size)
    }

    /// The number of bytes a download yields (the original size for protected datasets).
    pub fn download_size(&self) -> u64 {
        self.erasure
            .as_ref()
            .map_or(self.dataset_size, |e| e.original_dataset_size)
    }

    /// The byte-exact reference encoding.
    pub fn encode(&self) -> Vec<u8> {
        let erasure = self.erasure.as_ref().map(|e| pb::Erasure {
            ec_k: Some(e.ec_k),
            ec_m: Some(e.ec_m),
            original_tree_cid: Some(e.original_tree_cid.to_bytes()),
            original_dataset_size: Some(e.original_dataset_size),
            protected_strategy: Some(e.protected_strategy),
            verification: e.verification.as_ref().map(|v| pb::Verification {
                verify_root: Some(v.verify_root.to_bytes()),
                slot_roots: v.slot_roots.iter().map(Cid::to_bytes).collect(),
                cell_size: Some(v.cell_size),
                verifiable_strategy: Some(v.verifiable_strategy),
            }),
        });
        pb::Manifest {
            header: Some(pb::Header {
                tree_cid: Some(self.tree_cid.to_bytes()),
                block_size: Some(self.block_size),
                dataset_size: Some(self.dataset_size),
                codec: Some(self.codec),
                hcodec: Some(self.hcodec),
                version: Some(self.version),
                erasure,
                filename: self.filename.as_ref().map(|f| f.as_bytes().to_vec()),
                mimetype: self.mimetype.as_ref().map(|m| m.as_bytes().to_vec()),
            }),
        }
        .encode_to_vec()
    }

    /// Decodes a manifest (tolerant of unknown and missing fields, strict on what cairn relies on).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let h = pb::Manifest::decode(bytes)?
            .header
            .ok_or(ManifestError::NoHeader)?;
        let tree_cid = cid_from_bytes(h.tree_cid.as_deref().unwrap_or_default())?;
        let block_size = h.block_size.unwrap_or(0);
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(ManifestError::BlockSize(block_size));
        }
        let text = |b: Option<Vec<u8>>| {
            b.filter(|b| !b.is_empty())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let erasure = match h.erasure.filter(|e| *e != pb::Erasure::default()) {
            None => None,
            Some(e) => Some(ErasureInfo {
                ec_k: e.ec_k.unwrap_or(0),
                ec_m: e.ec_m.unwrap_or(0),
                original_tree_cid: cid_from_bytes(
                    e.original_tree_cid.as_deref().unwrap_or_default(),
                )?,
                original_dataset_size: e.original_dataset_size.unwrap_or(0),
                protected_strategy: e.protected_strategy.unwrap_or(0),
                verification: match e.verification.filter(|v| *v != pb::Verification::default()) {
                    None => None,
                    Some(v) => Some(VerificationInfo {
                        verify_root: cid_from_bytes(v.verify_root.as_deref().unwrap_or_default())?,
                        slot_roots: v
                            .slot_roots
                            .iter()
                            .map(|r| cid_from_bytes(r))
                            .collect::<Result<_, _>>()?,
                        cell_size: v.cell_size.unwrap_or(0),
                        verifiable_strategy: v.verifiable_strategy.unwrap_or(0),
                    }),
                },
            }),
        };
        let dataset_size = h.dataset_size.unwrap_or(0);
        if dataset_size > MAX_DATASET_SIZE {
            return Err(ManifestError::DatasetSize(dataset_size));
        }
        let m = Manifest {
            tree_cid,
            block_size,
            dataset_size,
            codec: h.codec.unwrap_or(0),
            hcodec: h.hcodec.unwrap_or(0),
            version: h.version.unwrap_or(0),
            filename: text(h.filename),
            mimetype: text(h.mimetype),
            erasure,
        };
        if let Some(e) = &m.erasure {
            let blocks = m.blocks_count();
            if e.protected_blocks_count(block_size) != Some(blocks) {
                return Err(ManifestError::ErasureShape {
                    blocks,
                    ec_k: e.ec_k,
                    ec_m: e.ec_m,
                    original_dataset_size: e.original_dataset_size,
                });
            }
        }
        Ok(m)
    }

    /// The manifest block: CIDv1(codex-manifest, sha2-256(encoding)) and the encoding.
    pub fn to_block(&self) -> Block {
        Block::new(Codec::Manifest, self.encode().into())
    }

    /// The manifest CID.
    pub fn cid(&self) -> Cid {
        *self.to_block().cid()
    }

    /// Decodes a manifest block, checking its CID codec.
    pub fn from_block(block: &Block) -> Result<Manifest, ManifestError> {
        if block.cid().codec() != Codec::Manifest.code() {
            return Err(ManifestError::NotAManifest(*block.cid()));
        }
        Manifest::decode(block.data())
    }
}

impl Default for Manifest {
    fn default() -> Manifest {
        Manifest::new(
            crate::cid::cid_from_digest(Codec::Root, &[0; 32]),
            0,
            DEFAULT_BLOCK_SIZE as u64,
        )
    }
}

/// Hand-written prost messages for the manifest (no `protoc` needed). `optional` scalars are
/// emitted whenever they are `Some`, even when zero, which is the reference's behaviour.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Manifest {
        #[prost(message, optional, tag = "1")]
        pub(super) header: Option<Header>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Header {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub(super) tree_cid: Option<Vec<u8>>,
        #[prost(uint64, optional, tag = "2")]
        pub(super) block_size: Option<u64>,
        #[prost(uint64, optional, tag = "3")]
        pub(super) dataset_size: Option<u64>,
        #[prost(uint64, optional, tag = "4")]
        pub(super) codec: Option<u64>,
        #[prost(uint64, optional, tag = "5")]
        pub(super) hcodec: Option<u64>,
        #[prost(uint64, optional, tag = "6")]
        pub(super) version: Option<u64>,
        #[prost(message, optional, tag = "7")]
        pub(super) erasure: Option<Erasure>,
        #[prost(bytes = "vec", optional, tag = "8")]
        pub(super) filename: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "9")]
        pub(super) mimetype: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Erasure {
        #[prost(uint64, optional, tag = "1")]
        pub(super) ec_k: Option<u64>,
        #[prost(uint64, optional, tag = "2")]
        pub(super) ec_m: Option<u64>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) original_tree_cid: Option<Vec<u8>>,
        #[prost(uint64, optional, tag = "4")]
        pub(super) original_dataset_size: Option<u64>,
        #[prost(uint64, optional, tag = "5")]
        pub(super) protected_strategy: Option<u64>,
        #[prost(message, optional, tag = "6")]
        pub(super) verification: Option<Verification>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Verification {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub(super) verify_root: Option<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub(super) slot_roots: Vec<Vec<u8>>,
        #[prost(uint64, optional, tag = "3")]
        pub(super) cell_size: Option<u64>,
        #[prost(uint64, optional, tag = "4")]
        pub(super) verifiable_strategy: Option<u64>,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cid::{cid_from_digest, parse_cid};

    fn some_file_tree() -> Cid {
        parse_cid("zDzSvJTezk7bJNQqFq8k1iHXY84psNuUfZVusA5bBQQUSuyzDSVL").unwrap()
    }

    /// codex-protocol.md §11.2, verified against a running reference node: "some file contents"
    /// uploaded without Content-Type gives this 56-byte manifest and CID.
    #[test]
    fn some_file_contents_manifest_matches_reference() {
        let m = Manifest::new(some_file_tree(), 18, 65536);
        let enc = m.encode();
        assert_eq!(
            hex::encode(&enc),
            "0a360a2601839a031220050b50fa8145c235e1b817326d34f733420298a9aa511f13622dd81264e8d4df10808004181220829a0328123002"
        );
        assert_eq!(enc.len(), 56);
        assert_eq!(
            m.cid().to_string(),
            "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy"
        );
        assert_eq!(
            hex::encode(m.cid().to_bytes()),
            "01819a03122049798b41bb1aee83846e0f98c043a166799b00339781e26cb70dfcf65b5ef0f4"
        );
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
    }

    /// §11.2: with `Content-Type: application/octet-stream` the reference stores the mimetype.
    #[test]
    fn mimetype_changes_cid_as_reference() {
        let m = Manifest::new(some_file_tree(), 18, 65536)
            .with_mimetype(Some("application/octet-stream".into()));
        assert_eq!(
            m.cid().to_string(),
            "zDvZRwzm3p39H8QeSoqEKoTzJvCLWRVHAsHL5YRNEzt9Udmp2Yp1"
        );
    }

    #[test]
    fn decode_ignores_unknown_fields_and_empty_strings() {
        let m = Manifest::new(some_file_tree(), 18, 65536);
        let mut enc = m.encode();
        // Append an unknown field 15 (varint 1) to the outer message.
        enc.extend([0x78, 0x01]);
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
        let with_empty = Manifest {
            filename: Some(String::new()),
            ..m.clone()
        };
        assert_eq!(
            Manifest::decode(&with_empty.encode()).unwrap().filename,
            None
        );
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(matches!(
            Manifest::decode(&[]),
            Err(ManifestError::NoHeader)
        ));
        assert!(Manifest::decode(&[0x0a, 0x05, 0x01]).is_err());
        let zero_bs = Manifest::new(some_file_tree(), 18, 0);
        assert!(matches!(
            Manifest::decode(&zero_bs.encode()),
            Err(ManifestError::BlockSize(0))
        ));
        assert!(matches!(
            Manifest::decode(&vec![0; MAX_MANIFEST_BYTES + 1]),
            Err(ManifestError::TooLarge(_))
        ));
        // Sizes beyond the reference's signed integers (leaf indices up to 2^64 - 1).
        let huge = Manifest::new(some_file_tree(), u64::MAX, 1);
        assert!(matches!(
            Manifest::decode(&huge.encode()),
            Err(ManifestError::DatasetSize(u64::MAX))
        ));
        let largest = Manifest::new(some_file_tree(), MAX_DATASET_SIZE, 1);
        assert_eq!(
            Manifest::decode(&largest.encode()).unwrap().dataset_size,
            MAX_DATASET_SIZE
        );
        let block = Block::data_block(m_bytes());
        assert!(matches!(
            Manifest::from_block(&block),
            Err(ManifestError::NotAManifest(_))
        ));
    }

    fn m_bytes() -> bytes::Bytes {
        Manifest::new(some_file_tree(), 1, 65536).encode().into()
    }

    #[test]
    fn protected_manifest_round_trip_and_shape_check() {
        let tree = cid_from_digest(Codec::Root, &[7; 32]);
        let mut m = Manifest::new(tree, 6 * 65536, 65536);
        m.erasure = Some(ErasureInfo {
            ec_k: 2,
            ec_m: 1,
            original_tree_cid: tree,
            // 4 original blocks: 2 groups of K = 2, so 2 × (2 + 1) = 6 blocks.
            original_dataset_size: 200_000,
            protected_strategy: 1,
            verification: Some(VerificationInfo {
                verify_root: tree,
                slot_roots: vec![tree, tree, tree],
                cell_size: 2048,
                verifiable_strategy: 0,
            }),
        });
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.download_size(), 200_000);
        m.dataset_size = 5 * 65536;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::ErasureShape { .. })
        ));
    }

    /// A protected manifest of `blocks` blocks of 64 KiB with the given erasure shape.
    fn protected(blocks: u64, ec_k: u64, ec_m: u64, original_dataset_size: u64) -> Manifest {
        let tree = cid_from_digest(Codec::Root, &[7; 32]);
        let mut m = Manifest::new(tree, blocks * 65536, 65536);
        m.erasure = Some(ErasureInfo {
            ec_k,
            ec_m,
            original_tree_cid: tree,
            original_dataset_size,
            protected_strategy: 1,
            verification: None,
        });
        m
    }

    /// The reference's rule (manifest.nim `verify`): blocksCount must equal
    /// ceil(ceil(originalDatasetSize / blockSize) / ecK) × (ecK + ecM). A multiple of K + M is
    /// not enough: a hostile manifest could claim a 1 TiB original inside 3 blocks.
    #[test]
    fn protected_block_count_must_match_original_size() {
        const TIB: u64 = 1 << 40;
        let hostile = protected(3, 2, 1, TIB);
        assert!(matches!(
            Manifest::decode(&hostile.encode()),
            Err(ManifestError::ErasureShape { .. })
        ));
        // Too many blocks for the original is refused as well (2 groups for 1 group of data).
        assert!(matches!(
            Manifest::decode(&protected(6, 2, 1, 65536).encode()),
            Err(ManifestError::ErasureShape { .. })
        ));
        // ecK = 0 makes the reference's rule divide by zero; cairn refuses it.
        assert!(matches!(
            Manifest::decode(&protected(3, 0, 3, 0).encode()),
            Err(ManifestError::ErasureShape { .. })
        ));
        // Sizes near u64::MAX must not overflow the check.
        assert!(Manifest::decode(&protected(3, 1, u64::MAX, u64::MAX).encode()).is_err());
        // Consistent shapes decode: 1 original block padded to K = 2, plus M = 1 parity.
        for (blocks, k, m, original) in [
            (3, 2, 1, 1),
            (3, 2, 1, 2 * 65536),
            (6, 2, 1, 2 * 65536 + 1),
            (0, 2, 1, 0),
            (5, 1, 4, 65536),
        ] {
            let ok = protected(blocks, k, m, original);
            assert_eq!(
                Manifest::decode(&ok.encode()).unwrap(),
                ok,
                "{blocks} blocks, K={k}, M={m}, original {original}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip(digest in any::<[u8; 32]>(), size in 1u64..u64::MAX / 2,
                      bs in 1u64..=MAX_BLOCK_SIZE,
                      name in proptest::option::of("[a-zA-Z0-9._ -]{1,40}"),
                      mime in proptest::option::of("[a-z]{1,10}/[a-z0-9.+-]{1,20}")) {
            let m = Manifest::new(cid_from_digest(Codec::Root, &digest), size, bs)
                .with_filename(name).with_mimetype(mime);
            prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes);
        }

        /// A real manifest (protected or not) with a few bytes changed, or cut short, never
        /// panics the decoder, and what decodes encodes back to the same manifest (random
        /// bytes rarely get past the first field; review).
        #[test]
        fn changed_manifests_never_panic(
            digest in any::<[u8; 32]>(),
            size in 0u64..1 << 40,
            protect in proptest::option::of((1u32..8, 0u32..8)),
            name in proptest::option::of("[a-z.]{1,12}"),
            changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let tree = cid_from_digest(Codec::Root, &digest);
            let mut m = Manifest::new(tree, size, 65536).with_filename(name);
            if let Some((k, extra)) = protect {
                let (k, extra) = (u64::from(k), u64::from(extra));
                let groups = size.div_ceil(65536).div_ceil(k);
                m = protected(groups * (k + extra), k, extra, size);
            }
            let mut bytes = m.encode();
            for (at, byte) in changes {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if let Ok(decoded) = Manifest::decode(&bytes) {
                prop_assert_eq!(Manifest::decode(&decoded.encode()).unwrap(), decoded);
            }
        }
    }
}
