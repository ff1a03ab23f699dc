//! JSON shapes of the API (the reference's keys; no internal types leak into JSON).

use cairn_core::{Cid, Manifest, cid::Codec};
use serde::Serialize;

/// A manifest as the reference serialises it (`treeCid`, `datasetSize`, `blockSize`,
/// `filename`, `mimetype`, `protected`), plus `codec`, `hcodec` and `version` for clients that
/// want them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestJson {
    tree_cid: String,
    dataset_size: u64,
    block_size: u64,
    filename: Option<String>,
    mimetype: Option<String>,
    protected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    verifiable: Option<bool>,
    codec: String,
    hcodec: String,
    version: String,
}

impl From<&Manifest> for ManifestJson {
    fn from(m: &Manifest) -> ManifestJson {
        ManifestJson {
            tree_cid: m.tree_cid.to_string(),
            dataset_size: m.dataset_size,
            block_size: m.block_size,
            filename: m.filename.clone(),
            mimetype: m.mimetype.clone(),
            protected: m.protected(),
            verifiable: m.erasure.as_ref().map(|e| e.verification.is_some()),
            codec: Codec::from_code(m.codec)
                .map_or_else(|| format!("{:#x}", m.codec), |c| c.name().into()),
            hcodec: match m.hcodec {
                cairn_core::cid::SHA2_256 => "sha2-256".into(),
                other => format!("{other:#x}"),
            },
            version: match m.version {
                cairn_core::manifest::VERSION_CIDV1 => "CIDv1".into(),
                1 => "CIDv0".into(),
                other => other.to_string(),
            },
        }
    }
}

/// `{"cid": …, "manifest": …}`.
#[derive(Debug, Serialize)]
pub(crate) struct DataItem {
    pub(crate) cid: String,
    pub(crate) manifest: ManifestJson,
}

impl DataItem {
    pub(crate) fn new(cid: &Cid, m: &Manifest) -> DataItem {
        DataItem {
            cid: cid.to_string(),
            manifest: m.into(),
        }
    }
}

/// `GET /data`.
#[derive(Debug, Serialize)]
pub(crate) struct DataList {
    pub(crate) content: Vec<DataItem>,
}

/// `GET /space`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpaceJson {
    pub(crate) total_blocks: u64,
    pub(crate) quota_max_bytes: u64,
    pub(crate) quota_used_bytes: u64,
    pub(crate) quota_reserved_bytes: u64,
}
