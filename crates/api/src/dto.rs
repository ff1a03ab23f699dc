//! JSON shapes of the API (the reference's keys; no internal types leak into JSON).

use cairn_core::{Cid, Manifest};
use serde::Serialize;

/// A manifest as the reference serialises it: `treeCid`, `datasetSize`, `blockSize`,
/// `filename`, `mimetype`, `protected`, and `verifiable` for an erasure-coded one. These are
/// the fields its `Manifest` marks `{.serialize.}` (nim-codex `codex/manifest/manifest.nim`;
/// nim-serde serialises opt-in), and all a live reference node sent (docs/INTEROP.md). Nothing
/// more: a client built on the reference's own types deserialises every key it gets, and
/// `codec` as a name, which cairn used to add, failed it (its `MultiCodec` is an integer).
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

/// `GET /space`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpaceJson {
    pub(crate) total_blocks: u64,
    pub(crate) quota_max_bytes: u64,
    pub(crate) quota_used_bytes: u64,
    pub(crate) quota_reserved_bytes: u64,
}
