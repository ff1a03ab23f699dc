//! The client commands: each a thin client of a running node's REST API
//! (`codex-protocol.md` §9). They share [`ClientArgs`] (`--api`, `--json`), print a readable
//! form or, with `--json`, JSON and nothing else on stdout, and fail with the exit codes of
//! [`crate::exit`].
//!
//! JSON shapes (compact, one JSON value per line; keys in snake_case; sizes in bytes):
//! * `upload`: one line per input as it completes, `{"cid", "file", "bytes"}`.
//! * `download -o FILE`: `{"cid", "file", "bytes", "fetched"}` (`fetched`: bytes written this
//!   time).
//! * `ls`: an array of `{"cid", "filename", "mimetype", "size", "block_size", "tree_cid",
//!   "protected"}`.
//! * `rm`: one line per CID, `{"cid", "removed"}` (`removed` is false for an absent CID with
//!   `--force`).
//! * `info`: `{"peer_id", "version", "revision", "data_dir", "addrs", "announce_addrs", "spr",
//!   "peers", "dht_nodes", "exchange": {…counters}}`.
//! * `peers`: `{"peers": [{"peer_id", "address", "direction", "agent", "score",
//!   "connected_secs", "exchange": {"blocks_received", "blocks_sent", "duplicates", "rejected",
//!   "requests", "request_limit", "blocks_per_sec", "wanted"} or null}], "manager": {"inbound", "outbound", "outbound_target", "max_inbound",
//!   "max_peers", "seed_mode", "banned", "book": {"new", "old", "banned", "wrong_addrs"}, "pex_bytes_sent",
//!   "pex_bytes_received"} or null (a node without `/debug/peers`), "dht": {"node_id", "size",
//!   "nodes": [{"node_id", "peer_id", "address" (null when unknown), "seen", "record"}]} or
//!   null}`.
//! * `connect`: `{"peer_id", "addrs", "connected"}`.
//! * `space`: `{"total_bytes", "used_bytes", "reserved_bytes", "free_bytes", "blocks"}`.
//! * `perf`: `{"peer_id", "upload_bytes", "download_bytes", "upload_seconds",
//!   "download_seconds", "upload_mbps", "download_mbps"}` (megabytes of 10^6 bytes per second).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::{Method, Url};
use serde::Serialize;

use crate::{
    api::{self, Api, DataList, DebugInfo, DhtNodeJson, ExchangeJson, PeerJson, SpaceJson},
    client,
    exit::{self, Failure},
    output::{self, Align},
};

/// Options every client command takes.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The node's REST endpoint (its API base path is appended)
    #[arg(
        long,
        env = "CAIRN_API",
        default_value = api::DEFAULT_API,
        value_parser = api::parse_api_url,
        value_name = "URL"
    )]
    api: Url,
    /// Print machine-readable JSON on stdout, and nothing else
    #[arg(long)]
    json: bool,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Upload files to a node (`-` reads stdin); prints one CID per file.
    Upload {
        /// Files to upload; `-` is stdin.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// MIME type to record (must be one the reference node accepts).
        #[arg(long)]
        mime: Option<String>,
        /// Do not record the file name in the manifest.
        #[arg(long, conflicts_with = "filename")]
        no_filename: bool,
        /// File name to record instead of the file's own (the only way to record one for `-`);
        /// only with a single input.
        #[arg(long, value_name = "NAME")]
        filename: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a dataset by its CID (from the node, which fetches what it lacks from peers).
    Download {
        /// The dataset's (manifest) CID.
        cid: String,
        /// Output file (written to FILE.part and renamed when complete); stdout if omitted or
        /// `-` (when omitted, a binary dataset is not written to a terminal; `-o -` writes it
        /// anyway). A directory: the file in it named as the dataset was uploaded (its last path
        /// component), else by the CID. A FILE.part left by an interrupted download, or else an
        /// existing FILE, is resumed once the bytes already there are checked against the
        /// dataset (read from the node again); if any differs, the file is not a piece of the
        /// dataset and is replaced. In a directory, a file already there by the dataset's name
        /// (or that name with .part) is never replaced: unless its bytes are the dataset's
        /// first ones, the download is refused (also with --no-resume). A FILE that is not a
        /// regular file (/dev/null, a FIFO) is written directly, never replaced; a symlink to
        /// a regular file stays, and the file it names is downloaded as a FILE is. One download
        /// of a FILE at a time: a second one fails.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Download the whole dataset even if a partial output file exists.
        #[arg(long)]
        no_resume: bool,
        /// Only a dataset whose manifest the node holds (`/data/{cid}`): an unknown CID fails
        /// at once instead of after the network search. Blocks of it the node lacks are still
        /// fetched from peers, as the reference's endpoint does.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the node's datasets: CID, size, MIME type, file name.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete datasets (or single blocks) from the node.
    #[command(visible_alias = "delete")]
    Rm {
        /// Manifest CIDs of the datasets (or CIDs of blocks) to delete.
        #[arg(required = true, value_name = "CID")]
        cids: Vec<String>,
        /// Succeed even if the node does not hold a CID (otherwise: exit code 4).
        #[arg(long, short = 'f')]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the node's identity and state: peer id, addresses, signed peer record, data
    /// directory, version, counters.
    Info {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the node's connected peers and its DHT routing table.
    Peers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Connect the node to a peer, at the given addresses or else found through the DHT.
    Connect {
        /// The peer's id.
        peer: String,
        /// Its libp2p addresses (e.g. /ip4/1.2.3.4/tcp/8070); without any the node looks the
        /// peer up in the DHT.
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the node's storage quota: total, used, reserved, free.
    Space {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure the path from the node to a connected peer (the libp2p perf self-test): what
    /// the connection carries each way, to read a download's rate against.
    Perf {
        /// The peer's id (it must be connected, and serve the test: cairn nodes do by default).
        peer: String,
        /// Bytes to send to the peer (units K, M, G; at most 256MiB).
        #[arg(long, default_value = "64MiB", value_parser = crate::config::parse_size)]
        upload: u64,
        /// Bytes to receive from the peer (units K, M, G; at most 256MiB).
        #[arg(long, default_value = "64MiB", value_parser = crate::config::parse_size)]
        download: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ClientCommand {
    /// Runs the command against the node.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            ClientCommand::Upload {
                files,
                mime,
                no_filename,
                filename,
                client,
            } => {
                let api = Api::new(client.api)?;
                let options = client::UploadOptions {
                    mime: mime.as_deref(),
                    with_filename: !no_filename,
                    filename: filename.as_deref(),
                };
                client::upload(&api, &files, &options, client.json).await
            }
            ClientCommand::Download {
                cid,
                output,
                no_resume,
                local,
                client,
            } => {
                let api = Api::new(client.api)?;
                let options = client::DownloadOptions {
                    resume: !no_resume,
                    local,
                    json: client.json,
                };
                client::download(&api, &cid, output.as_deref(), &options).await
            }
            ClientCommand::Ls { client } => ls(&Api::new(client.api)?, client.json).await,
            ClientCommand::Rm {
                cids,
                force,
                client,
            } => rm(&Api::new(client.api)?, &cids, force, client.json).await,
            ClientCommand::Info { client } => info(&Api::new(client.api)?, client.json).await,
            ClientCommand::Peers { client } => peers(&Api::new(client.api)?, client.json).await,
            ClientCommand::Connect {
                peer,
                addrs,
                client,
            } => connect(&Api::new(client.api)?, &peer, &addrs, client.json).await,
            ClientCommand::Space { client } => space(&Api::new(client.api)?, client.json).await,
            ClientCommand::Perf {
                peer,
                upload,
                download,
                client,
            } => perf(&Api::new(client.api)?, &peer, upload, download, client.json).await,
        }
    }
}

/// One dataset in `ls --json`.
#[derive(Debug, Serialize)]
struct DatasetOut {
    cid: String,
    filename: Option<String>,
    mimetype: Option<String>,
    size: u64,
    block_size: Option<u64>,
    tree_cid: Option<String>,
    protected: bool,
}

/// `cairn ls`.
async fn ls(api: &Api, json: bool) -> anyhow::Result<()> {
    let list: DataList = api.get_json(&["data"], "listing the datasets").await?;
    let datasets: Vec<DatasetOut> = list
        .content
        .into_iter()
        .map(|d| DatasetOut {
            cid: d.cid,
            filename: d.manifest.filename,
            mimetype: d.manifest.mimetype,
            size: d.manifest.dataset_size,
            block_size: d.manifest.block_size,
            tree_cid: d.manifest.tree_cid,
            protected: d.manifest.protected,
        })
        .collect();
    if json {
        return output::print_json(&datasets);
    }
    if datasets.is_empty() {
        return output::print("no datasets\n");
    }
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            vec![
                d.cid.clone(),
                output::size(d.size),
                d.mimetype.clone().unwrap_or_else(|| "-".into()),
                d.filename.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::print(&output::table(
        &[
            ("CID", Align::Left),
            ("SIZE", Align::Right),
            ("MIMETYPE", Align::Left),
            ("FILENAME", Align::Left),
        ],
        &rows,
    ))
}

/// One CID in `rm --json`.
#[derive(Debug, Serialize)]
struct RemovedOut<'a> {
    cid: &'a str,
    removed: bool,
}

/// `cairn rm`: each CID in turn; one the node does not hold is an error unless `force` (the
/// node's `DELETE` itself succeeds for absent data, as the reference's). As `rm` does, a CID
/// that fails does not stop the others: each failure is reported as it comes, and the last
/// one decides the exit code (review: `xargs cairn rm` left every CID after an absent one).
async fn rm(api: &Api, cids: &[String], force: bool, json: bool) -> anyhow::Result<()> {
    let mut failed: Option<anyhow::Error> = None;
    for cid in cids {
        if let Err(e) = rm_one(api, cid, force, json).await {
            if crate::is_broken_pipe(&e) {
                return Err(e);
            }
            if let Some(earlier) = failed.replace(e) {
                eprintln!("{}: {}", crate::BIN_NAME, output::error_chain(&earlier));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// One CID of [`rm`].
async fn rm_one(api: &Api, cid: &str, force: bool, json: bool) -> anyhow::Result<()> {
    let what = format!("deleting {cid}");
    let held = exists(api, cid, &what).await?;
    if !held && !force {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("{what}: the node does not hold it (--force to ignore)"),
        )
        .into());
    }
    if held {
        let req = api
            .request(Method::DELETE, &["data", cid])
            .timeout(api::REQUEST_TIMEOUT);
        api.send(req, &what).await?;
    }
    if json {
        output::print_json(&RemovedOut { cid, removed: held })?;
    } else if held {
        output::print(&format!("removed {cid}\n"))?;
    } else {
        output::print(&format!("not held: {cid}\n"))?;
    }
    Ok(())
}

/// `GET /data/{cid}/exists`. The answer is keyed by the node's spelling of the CID (the
/// reference's actual shape), which may differ from the one given; `{"has": …}` (the
/// reference's documented shape) is accepted too.
async fn exists(api: &Api, cid: &str, what: &str) -> anyhow::Result<bool> {
    let answer: std::collections::BTreeMap<String, bool> =
        api.get_json(&["data", cid, "exists"], what).await?;
    match (answer.get("has"), answer.values().next()) {
        (Some(has), _) | (None, Some(has)) => Ok(*has),
        (None, None) => anyhow::bail!("{what}: the node's answer to exists is empty"),
    }
}

/// `cairn info --json`.
#[derive(Debug, Serialize)]
struct InfoOut {
    peer_id: String,
    version: Option<String>,
    revision: Option<String>,
    data_dir: Option<String>,
    addrs: Vec<String>,
    announce_addrs: Vec<String>,
    spr: Option<String>,
    peers: usize,
    dht_nodes: Option<usize>,
    exchange: ExchangeJson,
}

/// Shortest and longest git commit ids taken as a node's `revision` (an abbreviated id, as the
/// reference sends, up to a full SHA-1 one).
const REVISION_HEX_DIGITS: std::ops::RangeInclusive<usize> = 7..=40;

/// Whether `text` is a git commit id, as a node's `revision` should be. Anything else (a cairn
/// node built without one sends the placeholder `cairn`) is shown as unknown rather than as a
/// revision.
fn is_revision(text: &str) -> bool {
    REVISION_HEX_DIGITS.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `cairn info`.
async fn info(api: &Api, json: bool) -> anyhow::Result<()> {
    let d: DebugInfo = api
        .get_json(&["debug", "info"], "reading the node's info")
        .await?;
    let (version, revision) = d.codex.map_or((None, None), |c| (c.version, c.revision));
    let revision = revision.filter(|r| is_revision(r));
    let out = InfoOut {
        peer_id: d.id,
        version,
        revision,
        data_dir: d.repo,
        addrs: d.addrs,
        announce_addrs: d.announce_addresses,
        spr: d.spr,
        peers: d.peers.len(),
        dht_nodes: d.table.map(|t| t.nodes.len()),
        exchange: d.exchange.unwrap_or_default(),
    };
    if json {
        return output::print_json(&out);
    }
    let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
    let version = match (&out.version, &out.revision) {
        (Some(v), Some(r)) => Some(format!("{v} ({r})")),
        (v, _) => v.clone(),
    };
    let e = &out.exchange;
    output::print(&output::fields(&[
        ("peer id", vec![out.peer_id.clone()]),
        ("version", one(version)),
        ("data dir", one(out.data_dir.clone())),
        ("addresses", out.addrs.clone()),
        ("announced", out.announce_addrs.clone()),
        ("spr", one(out.spr.clone())),
        ("peers", vec![out.peers.to_string()]),
        (
            "dht nodes",
            vec![
                out.dht_nodes
                    .map_or_else(|| "DHT not running".into(), |n| n.to_string()),
            ],
        ),
        (
            "blocks",
            vec![format!(
                "{} requested, {} received, {} sent",
                e.blocks_requested, e.blocks_received, e.blocks_sent
            )],
        ),
        (
            "exchange",
            vec![format!(
                "{} pending, {} duplicates, {} rejected, {} timeouts, {} hedged",
                e.pending, e.duplicates, e.rejected, e.timeouts, e.hedged
            )],
        ),
    ]))
}

/// `cairn peers --json`.
#[derive(Debug, Serialize)]
struct PeersOut {
    peers: Vec<PeerJson>,
    manager: Option<api::ManagerJson>,
    dht: Option<DhtOut>,
}

/// The DHT routing table in `cairn peers --json`.
#[derive(Debug, Serialize)]
struct DhtOut {
    /// This node's DHT id.
    node_id: String,
    /// Nodes in the table.
    size: usize,
    nodes: Vec<DhtNodeJson>,
}

/// Digits of a score in `cairn peers`.
const SCORE_DECIMALS: usize = 2;

/// `cairn peers`.
/// A cell of the block-exchange columns of `cairn peers`: `-` for a peer without figures (a
/// reference node has none).
fn exchange_cell(
    e: Option<&api::PeerExchangeJson>,
    f: impl Fn(&api::PeerExchangeJson) -> String,
) -> String {
    e.map_or_else(|| "-".into(), f)
}

async fn peers(api: &Api, json: bool) -> anyhow::Result<()> {
    let d: DebugInfo = api
        .get_json(&["debug", "info"], "reading the node's peers")
        .await?;
    // The peer manager's view, when the node has one (a reference node does not: then the
    // peers of /debug/info).
    let (peers, manager) = match api
        .get_json::<api::DebugPeers>(&["debug", "peers"], "reading the node's peer manager")
        .await
    {
        Ok(p) => (p.peers, Some(p.manager)),
        // Only a node without the route; a cairn node failing to answer is an error, not
        // "a reference node" (review: a 500 or a timeout printed `manager: null`, exit 0).
        Err(e) if exit::code_of(&e) == exit::NOT_FOUND => (d.peers, None),
        Err(e) => return Err(e),
    };
    let out = PeersOut {
        peers,
        manager,
        dht: d.table.map(|t| DhtOut {
            node_id: t.local_node.node_id,
            size: t.nodes.len(),
            nodes: t.nodes,
        }),
    };
    if json {
        return output::print_json(&out);
    }
    let mut text = String::new();
    if out.peers.is_empty() {
        text.push_str("no connected peers\n");
    } else {
        let rows: Vec<Vec<String>> = out
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.peer_id.clone(),
                    p.direction.clone(),
                    format!("{:.*}", SCORE_DECIMALS, p.score),
                    p.connected_secs
                        .map_or_else(|| "-".into(), output::duration_secs),
                    exchange_cell(p.exchange.as_ref(), |e| e.blocks_received.to_string()),
                    exchange_cell(p.exchange.as_ref(), |e| e.blocks_sent.to_string()),
                    exchange_cell(p.exchange.as_ref(), |e| {
                        format!("{}/{}", e.requests, e.request_limit)
                    }),
                    exchange_cell(p.exchange.as_ref(), |e| {
                        e.blocks_per_sec
                            .map_or_else(|| "-".into(), |r| format!("{r:.1}"))
                    }),
                    p.agent.clone().unwrap_or_else(|| "-".into()),
                    p.address.clone(),
                ]
            })
            .collect();
        text.push_str(&output::table(
            &[
                ("PEER ID", Align::Left),
                ("DIRECTION", Align::Left),
                ("SCORE", Align::Right),
                ("FOR", Align::Right),
                ("RECEIVED", Align::Right),
                ("SENT", Align::Right),
                ("ASKED", Align::Right),
                ("BLOCKS/S", Align::Right),
                ("AGENT", Align::Left),
                ("ADDRESS", Align::Left),
            ],
            &rows,
        ));
    }
    if let Some(m) = &out.manager {
        text.push('\n');
        text.push_str(&manager_text(m));
    }
    text.push('\n');
    match &out.dht {
        None => text.push_str("DHT not running\n"),
        Some(dht) => {
            let plural = if dht.size == 1 { "" } else { "s" };
            text.push_str(&format!("DHT routing table: {} node{plural}\n", dht.size));
            if !dht.nodes.is_empty() {
                let rows: Vec<Vec<String>> = dht
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.peer_id.clone(),
                            if n.seen { "yes" } else { "no" }.into(),
                            n.address.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                text.push_str(&output::table(
                    &[
                        ("PEER ID", Align::Left),
                        ("SEEN", Align::Left),
                        ("ADDRESS", Align::Left),
                    ],
                    &rows,
                ));
            }
        }
    }
    output::print(&text)
}

/// The peer manager's figures in `cairn peers`.
fn manager_text(m: &api::ManagerJson) -> String {
    let mode = if m.seed_mode { " (seed mode)" } else { "" };
    format!(
        "outbound {}/{}, inbound {}/{}, at most {} connections{mode}\n\
         address book: {} peers ({} connected before, {} heard of), {} banned, \
         {} wrong addresses; {} peers banned for their score\n\
         peer exchange: {} sent, {} received\n",
        m.outbound,
        m.outbound_target,
        m.inbound,
        m.max_inbound,
        m.max_peers,
        m.book.new + m.book.old,
        m.book.old,
        m.book.new,
        m.book.banned,
        m.book.wrong_addrs,
        m.banned,
        output::size(m.pex_bytes_sent),
        output::size(m.pex_bytes_received),
    )
}

/// `cairn connect --json`.
#[derive(Debug, Serialize)]
struct ConnectOut<'a> {
    peer_id: &'a str,
    addrs: &'a [String],
    connected: bool,
}

/// `cairn connect`: `GET /connect/{peer}?addrs=…&addrs=…`.
async fn connect(api: &Api, peer: &str, addrs: &[String], json: bool) -> anyhow::Result<()> {
    let mut url = api.url(&["connect", peer]);
    if !addrs.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(addrs.iter().map(|a| ("addrs", a)));
    }
    let req = api
        .request_to(Method::GET, url)
        .timeout(api::REQUEST_TIMEOUT);
    api.send(req, &format!("connecting to {peer}")).await?;
    if json {
        output::print_json(&ConnectOut {
            peer_id: peer,
            addrs,
            connected: true,
        })
    } else {
        output::print(&format!("connected to {peer}\n"))
    }
}

/// `POST /debug/perf/{peerId}`'s answer; also `cairn perf --json` (in snake_case).
#[derive(Debug, serde::Deserialize, Serialize, PartialEq)]
struct PerfOut {
    #[serde(alias = "peerId")]
    peer_id: String,
    #[serde(alias = "uploadBytes")]
    upload_bytes: u64,
    #[serde(alias = "downloadBytes")]
    download_bytes: u64,
    #[serde(alias = "uploadSeconds")]
    upload_seconds: f64,
    #[serde(alias = "downloadSeconds")]
    download_seconds: f64,
    #[serde(alias = "uploadMbps")]
    upload_mbps: f64,
    #[serde(alias = "downloadMbps")]
    download_mbps: f64,
}

/// The longest a perf request may take: the node's own limit on a run (60 s) and the time to
/// open its stream (10 s), plus a margin.
const PERF_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(80);

/// `cairn perf`: `POST /debug/perf/{peer}?upload=…&download=…`.
async fn perf(api: &Api, peer: &str, upload: u64, download: u64, json: bool) -> anyhow::Result<()> {
    let mut url = api.url(&["debug", "perf", peer]);
    url.query_pairs_mut()
        .append_pair("upload", &upload.to_string())
        .append_pair("download", &download.to_string());
    let what = format!("measuring the path to {peer}");
    let req = api
        .request_to(Method::POST, url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(PERF_REQUEST_TIMEOUT);
    let body = api
        .send(req, &what)
        .await?
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{what}: reading the answer: {e}"))?;
    let out: PerfOut = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("{what}: the node's answer is not the JSON expected: {e}"))?;
    if json {
        output::print_json(&out)
    } else {
        output::print(&perf_text(&out))
    }
}

fn perf_text(p: &PerfOut) -> String {
    let line = |dir: &str, bytes: u64, secs: f64, mbps: f64| {
        format!(
            "{dir:<9}{mbps:>10.1} MB/s  ({} in {secs:.3} s)\n",
            output::size(bytes)
        )
    };
    format!(
        "path to {}\n{}{}",
        output::printable(&p.peer_id),
        line("upload", p.upload_bytes, p.upload_seconds, p.upload_mbps),
        line(
            "download",
            p.download_bytes,
            p.download_seconds,
            p.download_mbps
        ),
    )
}

/// `cairn space --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct SpaceOut {
    total_bytes: u64,
    used_bytes: u64,
    reserved_bytes: u64,
    free_bytes: u64,
    blocks: u64,
}

impl From<&SpaceJson> for SpaceOut {
    fn from(s: &SpaceJson) -> SpaceOut {
        SpaceOut {
            total_bytes: s.quota_max_bytes,
            used_bytes: s.quota_used_bytes,
            reserved_bytes: s.quota_reserved_bytes,
            free_bytes: s
                .quota_max_bytes
                .saturating_sub(s.quota_used_bytes)
                .saturating_sub(s.quota_reserved_bytes),
            blocks: s.total_blocks,
        }
    }
}

/// `cairn space`.
async fn space(api: &Api, json: bool) -> anyhow::Result<()> {
    let s: SpaceJson = api.get_json(&["space"], "reading the node's space").await?;
    let out = SpaceOut::from(&s);
    if json {
        return output::print_json(&out);
    }
    output::print(&space_text(&out))
}

/// The readable form of `cairn space`.
fn space_text(s: &SpaceOut) -> String {
    let sized = |b: u64| vec![format!("{:>10}  ({b} bytes)", output::size(b))];
    output::fields(&[
        ("total", sized(s.total_bytes)),
        ("used", sized(s.used_bytes)),
        ("reserved", sized(s.reserved_bytes)),
        ("free", sized(s.free_bytes)),
        ("blocks", vec![s.blocks.to_string()]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_commit_ids() {
        assert!(is_revision("bd360322"));
        assert!(is_revision("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_revision("cairn"));
        assert!(!is_revision("abc12"));
        assert!(!is_revision(""));
        assert!(!is_revision("v0.1.0-dirty"));
    }

    #[test]
    fn free_space_never_underflows() {
        let s = |max, used, reserved| SpaceJson {
            total_blocks: 3,
            quota_max_bytes: max,
            quota_used_bytes: used,
            quota_reserved_bytes: reserved,
        };
        assert_eq!(SpaceOut::from(&s(100, 30, 20)).free_bytes, 50);
        // Over quota (a smaller quota after a restart): nothing free, not a wrap.
        assert_eq!(SpaceOut::from(&s(100, 90, 20)).free_bytes, 0);
    }

    #[test]
    fn space_reads_well() {
        let text = space_text(&SpaceOut {
            total_bytes: 20 << 30,
            used_bytes: 65592,
            reserved_bytes: 0,
            free_bytes: (20 << 30) - 65592,
            blocks: 2,
        });
        assert_eq!(
            text,
            "total       20.0 GiB  (21474836480 bytes)\n\
             used        64.1 KiB  (65592 bytes)\n\
             reserved         0 B  (0 bytes)\n\
             free        20.0 GiB  (21474770888 bytes)\n\
             blocks    2\n"
        );
    }

    /// The node's camelCase answer reads into the snake_case output, and reads well.
    #[test]
    fn perf_reads_the_nodes_answer_and_reads_well() {
        let answer = r#"{"peerId":"16Uiu2HAm","uploadBytes":67108864,"downloadBytes":1048576,
            "uploadSeconds":0.25,"downloadSeconds":0.5,"uploadMbps":268.4,"downloadMbps":2.1}"#;
        let p: PerfOut = serde_json::from_str(answer).unwrap();
        assert_eq!((p.upload_bytes, p.download_bytes), (67_108_864, 1_048_576));
        assert_eq!(
            perf_text(&p),
            "path to 16Uiu2HAm\n\
             upload        268.4 MB/s  (64.0 MiB in 0.250 s)\n\
             download        2.1 MB/s  (1.0 MiB in 0.500 s)\n"
        );
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["upload_mbps"], 268.4);
    }
}
