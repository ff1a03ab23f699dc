//! The block-exchange engine: what to ask which peer for, what to accept, what to serve.
//!
//! One task (`Engine::run`) owns all exchange state; the node talks to it through an
//! [`EngineHandle`]. It never blocks: store reads and writes and every network send run as
//! tasks in a [`JoinSet`] whose completions come back into the same loop, so the loop only
//! moves state.
//!
//! ## Downloading (`codex-protocol.md` §3.2, with cairn's improvements)
//! * A **want** is keyed by [`BlockAddress`]; concurrent requesters of one address share it.
//!   New wants are announced to every connected peer as `WantHave` (and to peers that connect
//!   later). Wants still without a holder are asked again every [`REQUERY_INTERVAL`] — the
//!   reference does not remember `WantHave` — and fail after [`NO_HOLDER_TIMEOUT`]. Queries
//!   for a non-leaf block (a manifest) set `sendDontHave`; the engine keeps which connected
//!   peers said `DontHave`, so the node can answer "not found" for a CID that every peer lacks
//!   ([`EngineHandle::denied_by_all`]) instead of waiting for the timeout.
//! * A `Have` makes the address *ready*. Ready addresses go, as `WantBlock`, to the holder
//!   expected to deliver them first, by its measured rate and the requests it already holds
//!   ([`crate::pace`]); each holder may hold about a second of its own work (at most
//!   [`MAX_OUTSTANDING_PER_PEER`]). Fast holders share a dataset between them; a slow one gets
//!   little of it, so it cannot hold up an in-order download. Ready addresses wait in one
//!   queue, oldest first; a pass over it goes on while some peer may take a request, so what
//!   only busy holders have never hides, behind it, what an idle holder could serve.
//! * **Hedging.** Every [`pace::HEDGE_INTERVAL`], a request that has waited at least
//!   [`pace::HEDGE_MIN_AGE`] goes to a second holder too, when that holder has room, is expected
//!   to deliver it [`pace::HEDGE_FACTOR`] times sooner than it has already waited, and is
//!   faster than the first, or the first has stalled ([`pace::should_hedge`]). The first copy
//!   to arrive is taken, the other peer gets a cancel, and a late copy counts as a duplicate
//!   (no penalty). Each want is hedged at most once at a time.
//! * A delivery is accepted only from the peer it was requested from and only while the want is
//!   pending; anything else is counted as a duplicate and dropped. Accepted blocks are verified
//!   before they are stored: the data already hashes to its CID (checked on the connection
//!   task); a non-leaf must be the CID asked for; a leaf's proof must lead to the tree root for
//!   exactly the requested index and the manifest's leaf count. A peer that fails this is
//!   penalised as [`PeerAction::Fatal`] and the want goes to another holder. A proof that
//!   checks out for another leaf count (the tree binds the count only loosely) is not the
//!   peer's fault: it answers the requesters whose manifests claim that count, if any; else
//!   that holder is not asked for the leaf again. Requesters of one leaf under different
//!   counts each get a leaf proven for their own ([`Pending`]).
//! * A peer that owes us blocks and delivers nothing for [`ACTIVITY_TIMEOUT`] loses its requests
//!   to other holders and is penalised (the reference disconnects it after a minute); requests
//!   hedged away from it still count as owed. A single request that waits [`REQUEST_TIMEOUT`]
//!   at a peer that keeps delivering others is moved too, without a penalty: one download's
//!   lost block would otherwise wait for as long as another download kept the peer busy.
//! * When a connection that carried block exchange closes and another stays
//!   ([`NetEvent::ConnectionLost`]), what was in flight on it may be gone: the peer is asked
//!   again at once about the blocks we look for, and for the blocks it was asked for that have
//!   not come within [`LOST_CONNECTION_GRACE`].
//! * A peer is not sent a `WantHave` for a block it was asked for (`WantBlock`) or said it
//!   has: redundant, and older reference engines let it replace the `WantBlock`.
//! * Verified leaves go to their requesters at once and are written behind them in batches
//!   (from [`STORE_MIN_BATCH_BLOCKS`] to [`STORE_BATCH_BLOCKS`], sooner after [`STORE_LINGER`]
//!   or when nothing more is coming; at most [`STORE_TASKS`] at once) so one commit and one
//!   `fdatasync` cover many blocks; at most [`MAX_UNSTORED_BLOCKS`] wait for the disk before
//!   requests pause. [`EngineHandle::flush`] waits for the writes of the blocks queued before
//!   it (not for those other downloads queue after it); a stopping engine makes them
//!   all before it ends (within [`STOP_WRITE_GRACE`]), so a graceful stop loses no verified
//!   block. Other peers still asked for it get a cancel. A standalone block (a manifest) goes to
//!   its requesters once stored, since storing it lists its dataset.
//!
//! ## Serving (§3.3)
//! * `WantHave` is answered with `Have` for blocks we hold and with `DontHave` only when the
//!   peer asked for it (the reference reads any presence as "has").
//! * `WantBlock` adds the address to the peer's wanted queue (at most
//!   [`MAX_WANTED_PER_PEER`]). Serving tasks take up to [`cairn_blockexc::MAX_BLOCKS_PER_MESSAGE`]
//!   addresses from one peer at a time, round-robin over peers. A task reads its blocks from the
//!   store (at most [`SERVE_TASKS`] reads in all, at most [`MAX_SERVE_READ_BYTES`] each: what is
//!   left unread goes back to the front of the peer's queue), then sends them and waits until
//!   the message is written; a peer has at most [`SERVE_TASKS_PER_PEER`] tasks in either step. So a greedy
//!   peer gets its share and no more, the bytes queued per peer stay bounded, and a peer that
//!   stops reading holds up only its own tasks, never the reads of everyone else's (review: four
//!   peers that asked for blocks and never read them held every serving slot).
//! * A cancel removes an address from the queue in O(log n) ([`WantedQueue`]); one that comes
//!   while the block is being read keeps it from being sent or parked.
//! * Wanted blocks we do not have are parked and sent when they arrive (downloaded or
//!   uploaded here); a cancel removes them.
//! * Tasks report back with the peer's *epoch*: a peer that disconnected and came back is a new
//!   state, and what a task of its old connection reports no longer counts against it.
//!
//! ## Metrics
//! Besides its own [`EngineStats`] (for `/debug/info` and benchmarks), the engine counts in the
//! [`NodeMetrics`] it is given: blocks received by outcome, sent and requested, timeouts, the
//! latency of every answered `WantBlock` (one histogram over all peers), and gauges of the
//! want lists, the blocks in flight and those waiting for the disk, set every [`TICK`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use cairn_blockexc::{
    BlockPresence, Delivery, MAX_BLOCKS_PER_MESSAGE, MAX_WANTLIST_ENTRIES, Message, Presence,
    WantEntry, WantType,
};
use cairn_core::{Block, BlockAddress, Cid, CodexProof, VerifiedLeaf};
use cairn_net::{NetEvent, NetworkHandle, PeerAction, PeerId};
use cairn_store::{Store, StoreError};

use crate::{
    metrics::{NodeMetrics, gauge_value},
    pace::{self, Pace, should_hedge},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Commands queued to the engine.
pub const ENGINE_CHANNEL_CAPACITY: usize = 256;
/// How often timeouts and re-queries are checked.
pub const TICK: Duration = Duration::from_millis(200);
/// After a connection to a peer is lost ([`NetEvent::ConnectionLost`]), its requests made
/// before then are asked again if they have not come within this long: a peer that sends on its
/// other connection delivers them meanwhile (at 100 MB/s, a full [`MAX_OUTSTANDING_PER_PEER`]
/// takes 170 ms), and one that lost them is asked well before [`ACTIVITY_TIMEOUT`].
pub const LOST_CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// Requests outstanding at one peer at most (the cap of [`crate::pace`]'s depth): 256 blocks
/// (16 MiB) keeps a fast loopback or LAN peer busy, and limits what one stalled peer can hold up
/// before [`ACTIVITY_TIMEOUT`]. A slower peer holds fewer: [`Pace::limit`].
pub const MAX_OUTSTANDING_PER_PEER: usize = pace::MAX_OUTSTANDING;
/// A peer with outstanding requests that delivers nothing for this long loses them. The
/// reference waits a minute and disconnects; cairn moves the requests and keeps the peer.
pub const ACTIVITY_TIMEOUT: Duration = Duration::from_secs(10);
/// A single request that has waited this long at a peer that keeps delivering others is taken
/// as lost (a message lost on the way, a block the peer could not send) and moved like a silent
/// peer's, without a penalty. A peer holds about a second of its own work ([`crate::pace`]),
/// so this is twenty times what a request should wait there, and twice [`ACTIVITY_TIMEOUT`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A want nobody has claimed is asked again this often (the reference retries every 0–2 s).
pub const REQUERY_INTERVAL: Duration = Duration::from_secs(2);
/// A want nobody has claimed fails after this long.
pub const NO_HOLDER_TIMEOUT: Duration = Duration::from_secs(30);
/// Wants pending at once across all downloads; more are refused with [`FetchError::Busy`].
pub const MAX_PENDING_WANTS: usize = 16 * 1024;
/// Blocks written per store call at most: one commit and one `fdatasync` per batch.
pub const STORE_BATCH_BLOCKS: usize = 256;
/// A store write starts once this many verified blocks wait (8 MiB), or sooner after
/// [`STORE_LINGER`], on a flush, or when no other block is on its way. Started whenever a writer was free, the
/// batches of a fast download held about 16 blocks, and their commits cost the downloading node
/// about 5 % of its CPU (`BENCHMARKS.md`).
pub const STORE_MIN_BATCH_BLOCKS: usize = 128;
/// A verified block waits at most about this long for a batch to fill (checked on every engine
/// event, and at least every [`TICK`]). Requesters have the block already; only its write waits.
pub const STORE_LINGER: Duration = Duration::from_millis(50);
/// Verified blocks waiting for or in a store write. Past this no new block is requested, so a
/// slow disk slows the download instead of filling memory (1024 blocks = 64 MiB).
pub const MAX_UNSTORED_BLOCKS: usize = 1024;
/// Bytes of verified blocks waiting for or in a store write: past this no new block is
/// requested either. 1024 blocks of 64 KiB stay under it; it is what bounds memory when the
/// blocks are larger (a tree of 8 MiB leaves under a manifest that claims 64 KiB ones held up
/// to 8 GiB here; review).
pub const MAX_UNSTORED_BYTES: usize = 128 * 1024 * 1024;
/// How long a stopping engine waits for its store writes (those in flight, then the blocks still
/// queued, at most [`MAX_UNSTORED_BLOCKS`]) before it gives up on them.
pub const STOP_WRITE_GRACE: Duration = Duration::from_secs(10);
/// Store writes in flight (one writing while the next batch gathers).
pub const STORE_TASKS: usize = 2;
/// Addresses one peer may have asked for and not yet received. The reference keeps up to 1024
/// requests in flight per download; four downloads' worth.
pub const MAX_WANTED_PER_PEER: usize = 4096;
/// `WantHave` entries queued per peer and not yet answered: sixteen full want lists (a 1 GiB
/// dataset's worth from the reference's refresh). More is a flood.
pub const MAX_QUEUED_HAVE_QUERIES: usize = 16 * 1024;
/// Penalty reports on their way to the swarm task; more are dropped (the offender is already
/// being dealt with).
pub const MAX_REPORTS_IN_FLIGHT: usize = 64;
/// Serving tasks reading from the store at a time, for all peers together (the blocking pool's
/// share for serving). A task that goes on to wait for its message to be written no longer
/// counts here.
pub const SERVE_TASKS: usize = 8;
/// Serving tasks per peer, reading or waiting for their message to be written: two, so one
/// message is read from the store while the previous one is written. They bound what a peer
/// that does not read holds of ours: two messages of blocks.
pub const SERVE_TASKS_PER_PEER: usize = 2;
/// Block bytes in one delivery message at most (a single larger block still goes alone): a
/// message of 20 blocks is about 1.3 MB at the usual 64 KiB, but a dataset of large blocks
/// would make frames over the 8 MiB that cairn receivers accept (review).
pub const MAX_DELIVERY_BYTES: usize = 4 * 1024 * 1024;
/// Block bytes one serving task reads at most (passed by one block at most): it holds them
/// until they are written, so the bytes a peer that does not read holds of ours are
/// [`SERVE_TASKS_PER_PEER`] times this, whatever the size of the blocks it asked for. Twenty
/// blocks of the usual 64 KiB (1.3 MB) fit; addresses left unread go back to the front of the
/// peer's queue (review: twenty blocks of a large-block dataset were read at once).
pub const MAX_SERVE_READ_BYTES: u64 = MAX_DELIVERY_BYTES as u64;
/// Presence answers queued for one peer while its previous control message is still being
/// written. Beyond it, its queries wait unanswered (bounded by [`MAX_QUEUED_HAVE_QUERIES`]), so
/// a peer that floods queries and never reads cannot grow our memory.
pub const MAX_QUEUED_PRESENCES: usize = 4 * cairn_blockexc::MAX_PRESENCES_PER_MESSAGE;
/// Want-list entries queued for one peer while its previous control message is still being
/// written; further queries for it are skipped (requests and cancels are bounded by the
/// requests it holds).
pub const MAX_QUEUED_WANTS: usize = 4 * MAX_WANTLIST_ENTRIES;

/// Why a want failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No connected peer claimed the block in time.
    #[error("no peer has the block")]
    NotFound,
    /// Too many wants are pending.
    #[error("too many blocks are being fetched")]
    Busy,
    /// A leaf was wanted without its dataset's leaf count.
    #[error("leaf wanted without the dataset's leaf count")]
    NoLeafCount,
    /// The block could not be stored: the store's quota is full (HTTP 507 in the API).
    #[error(
        "storing the block failed: storage quota exceeded: {needed} more bytes needed, {used} of {quota} bytes used or reserved"
    )]
    QuotaExceeded {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes in use or reserved.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// Storing the block failed.
    #[error("storing the block failed: {0}")]
    Store(String),
    /// The block could not be stored: the store's disk is full (HTTP 507 in the API).
    #[error("storing the block failed: {0}")]
    DiskFull(String),
    /// The block came under a manifest CID and does not decode as a manifest (anyone can
    /// make such a block and serve it): not stored, and not a failure of the store.
    #[error("the block does not decode as a manifest: {0}")]
    NotAManifest(String),
    /// The engine stopped.
    #[error("the block exchange has stopped")]
    Stopped,
    /// The dataset was deleted on this node while its block was wanted
    /// ([`EngineHandle::forget`]).
    #[error("the dataset was deleted on this node")]
    Deleted,
    /// The manifest names a real tree with another size: holders sent the leaf with a proof
    /// that checks out against the dataset's tree only for a tree of another size than the
    /// manifest says, and no holder sent one that agrees with the manifest within
    /// [`NO_HOLDER_TIMEOUT`] (or every holder asked lied about it); or the dataset is stored
    /// whole here with another size, and the manifest was refused at once
    /// ([`StoreError::ManifestConflict`]).
    #[error(
        "the manifest does not match its dataset: it says {manifest_blocks} blocks, and the dataset's tree has {tree_leaves} leaves"
    )]
    ManifestMismatch {
        /// Blocks by the manifest.
        manifest_blocks: u64,
        /// Leaves of the tree by the last holder's proof.
        tree_leaves: u64,
    },
}

/// Counters (for metrics and benchmarks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Blocks accepted from the network.
    pub blocks_received: u64,
    /// Block requests (`WantBlock`) made to peers; a block asked again after a timeout or a
    /// rejected delivery counts again.
    pub blocks_requested: u64,
    /// Deliveries dropped as unsolicited or duplicate.
    pub duplicates: u64,
    /// Deliveries that failed verification.
    pub rejected: u64,
    /// Blocks sent to peers.
    pub blocks_sent: u64,
    /// Requests moved away from a silent peer, or lost at one that kept delivering others
    /// ([`REQUEST_TIMEOUT`]).
    pub timeouts: u64,
    /// Requests also sent to a second holder because the first was slow ([`crate::pace`]).
    pub hedged: u64,
    /// Verified blocks the store refused (quota, I/O).
    pub store_failures: u64,
    /// Wants pending now.
    pub pending: usize,
}

/// One connected peer's part in the block exchange ([`EngineHandle::peers`]): what passed
/// between us since it connected, and how the engine paces it now. A node operator reads it to
/// see which peer a download waits on, or which peer takes what it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerExchange {
    /// The peer.
    pub peer: PeerId,
    /// Blocks accepted from it (verified, and not a duplicate).
    pub blocks_received: u64,
    /// Blocks sent to it.
    pub blocks_sent: u64,
    /// Its deliveries dropped as unsolicited or duplicate.
    pub duplicates: u64,
    /// Its deliveries that failed verification.
    pub rejected: u64,
    /// Our block requests it holds now.
    pub requests: usize,
    /// How many requests it may hold, from its measured rate ([`crate::pace`]).
    pub request_limit: usize,
    /// Its measured delivery rate in blocks per second, until [`crate::pace::RATE_STALE`]
    /// idle; `None` before it delivered (or was hedged) since then.
    pub blocks_per_sec: Option<f64>,
    /// Blocks it asked us for that we have not sent yet (queued, or waiting to arrive here).
    pub wanted: usize,
}

/// Per-peer counters kept for [`PeerExchange`].
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    received: u64,
    sent: u64,
    duplicates: u64,
    rejected: u64,
}

type Reply = oneshot::Sender<Result<Block, FetchError>>;

enum Command {
    Want {
        wants: Vec<(BlockAddress, Option<u64>, Reply)>,
    },
    StoredLocally {
        tree: Cid,
        manifest: Cid,
    },
    Stats {
        done: oneshot::Sender<EngineStats>,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
    Peers {
        done: oneshot::Sender<Vec<PeerExchange>>,
    },
    Holders {
        tree: Cid,
        done: oneshot::Sender<usize>,
    },
    DeniedByAll {
        address: BlockAddress,
        done: oneshot::Sender<bool>,
    },
    Forget {
        tree: Cid,
        manifest: Cid,
    },
}

/// Handle to the engine task.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Want { wants } => write!(f, "Want({})", wants.len()),
            Command::StoredLocally { tree, .. } => write!(f, "StoredLocally({tree})"),
            Command::Stats { .. } => write!(f, "Stats"),
            Command::Peers { .. } => write!(f, "Peers"),
            Command::Flush { .. } => write!(f, "Flush"),
            Command::Holders { tree, .. } => write!(f, "Holders({tree})"),
            Command::DeniedByAll { address, .. } => write!(f, "DeniedByAll({address:?})"),
            Command::Forget { tree, .. } => write!(f, "Forget({tree})"),
        }
    }
}

impl EngineHandle {
    /// Wants every `(address, leaf count)`; returns one receiver per want, in order. Leaf
    /// addresses need the dataset's leaf count (from its manifest) to verify proofs.
    pub async fn want_many(
        &self,
        wants: Vec<(BlockAddress, Option<u64>)>,
    ) -> Vec<oneshot::Receiver<Result<Block, FetchError>>> {
        let mut rxs = Vec::with_capacity(wants.len());
        let mut cmd = Vec::with_capacity(wants.len());
        for (a, n) in wants {
            let (tx, rx) = oneshot::channel();
            cmd.push((a, n, tx));
            rxs.push(rx);
        }
        // If the engine is gone the senders drop and every receiver reports it.
        let _ = self.tx.send(Command::Want { wants: cmd }).await;
        rxs
    }

    /// Wants one block.
    pub async fn want(
        &self,
        address: BlockAddress,
        nleaves: Option<u64>,
    ) -> Result<Block, FetchError> {
        let rx = self.want_many(vec![(address, nleaves)]).await;
        match rx.into_iter().next() {
            Some(rx) => rx.await.unwrap_or(Err(FetchError::Stopped)),
            None => Err(FetchError::Stopped),
        }
    }

    /// Tells the engine a dataset was stored locally (peers waiting for its blocks get them).
    pub async fn stored_locally(&self, tree: Cid, manifest: Cid) {
        let _ = self
            .tx
            .send(Command::StoredLocally { tree, manifest })
            .await;
    }

    /// Waits until every block accepted so far has been written (or failed to be); blocks
    /// accepted after the call are not waited for.
    pub async fn flush(&self) -> Result<(), FetchError> {
        self.ask(|tx| Command::Flush { done: tx }).await
    }

    /// Connected peers known to hold blocks of dataset `tree` (they answered `Have` for one
    /// of its leaves, or have one of its leaves requested from them).
    pub async fn holders(&self, tree: Cid) -> Result<usize, FetchError> {
        self.ask(|tx| Command::Holders { tree, done: tx }).await
    }

    /// Whether every connected peer (at least one) answered `DontHave` to our `WantHave` for
    /// the pending non-leaf `address`: nobody we can ask has it. False when the address is not
    /// pending, and for leaves (whose queries do not ask for `DontHave`).
    pub async fn denied_by_all(&self, address: BlockAddress) -> Result<bool, FetchError> {
        self.ask(|tx| Command::DeniedByAll { address, done: tx })
            .await
    }

    /// Drops every want for the blocks of dataset `tree` and its manifest `manifest` (the
    /// dataset was deleted here): requesters get [`FetchError::Deleted`] at once and peers a
    /// cancel for what was asked of them, instead of the download going on until its next
    /// store check or the no-holder timeout. Blocks already being written are left to the
    /// store, which refuses them.
    pub async fn forget(&self, tree: Cid, manifest: Cid) {
        let _ = self.tx.send(Command::Forget { tree, manifest }).await;
    }

    /// Sends the command `make` builds around a reply channel and waits for the reply.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, FetchError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| FetchError::Stopped)?;
        rx.await.map_err(|_| FetchError::Stopped)
    }

    /// Counters.
    pub async fn stats(&self) -> Result<EngineStats, FetchError> {
        self.ask(|tx| Command::Stats { done: tx }).await
    }

    /// Each connected peer's part in the exchange, in no particular order.
    pub async fn peers(&self) -> Result<Vec<PeerExchange>, FetchError> {
        self.ask(|tx| Command::Peers { done: tx }).await
    }
}

/// A requester of a want, with the tree size its manifest claims (a leaf's; `None` for a
/// standalone block, or a leaf asked for without a count, which takes any verified one).
struct Waiter {
    reply: Reply,
    nleaves: Option<u64>,
}

impl Waiter {
    fn send(self, result: Result<Block, FetchError>) {
        let _ = self.reply.send(result);
    }
}

/// One want per address, shared by its requesters. Requesters of a leaf whose manifests claim
/// different tree sizes share it too, but a proof checks out for one size: the want is
/// verified against `nleaves` (the first requester's size) and answers the requesters of that
/// size (they "match"); a proof for the size of others makes them the matching ones instead
/// (see [`Engine::on_delivery`]). Requesters left over when the want ends (their size was not
/// the one delivered, or not the one that failed) want it again on their own (review: a
/// manifest with a made-up size, fetched first on a gateway, failed every honest download of
/// the same tree).
struct Pending {
    waiters: Vec<Waiter>,
    /// The tree size deliveries are verified against (`None` for standalone blocks).
    nleaves: Option<u64>,
    requested_from: Option<PeerId>,
    /// A second holder asked because the request waited too long at the first
    /// ([`Engine::hedge`]); only while `requested_from` is set. A delivery from either counts.
    hedged: Option<PeerId>,
    excluded: Vec<PeerId>,
    /// Holders not asked for this want again (not penalised for it either): one whose proof
    /// was for a tree of another size than the manifest's ([`Rejected::Manifest`]), or one
    /// that let its request for it time out twice ([`REQUEST_TIMEOUT`]) while delivering
    /// others.
    shunned: HashSet<PeerId>,
    /// Holders whose request for this want timed out once ([`REQUEST_TIMEOUT`]).
    timed_out: HashSet<PeerId>,
    /// The tree size the last of them claimed: the want fails as
    /// [`FetchError::ManifestMismatch`] rather than [`FetchError::NotFound`] if nobody else
    /// delivers it.
    claimed_leaves: Option<u64>,
    /// The size each holder shunned for a proof of another size claimed: a requester whose
    /// manifest claims that size, joining later, makes them holders again (at most one entry
    /// per holder, and only for holders that delivered).
    claims: HashMap<PeerId, u64>,
    /// Connected peers that answered `DontHave` (non-leaf wants only, see [`query`]) and have
    /// not said `Have` since; at most one entry per connected peer.
    denied: HashSet<PeerId>,
    storing: bool,
    queued: bool,
    /// Since when no holder has held the request (its creation, or when the last holder let go
    /// of it): [`NO_HOLDER_TIMEOUT`] counts from here.
    unheld_since: Instant,
    last_query: Instant,
}

impl Pending {
    /// Whether `peer`, if it holds this block, may be asked for it: not excluded (it failed
    /// it) and not shunned (its proof disagreed, or it let the request time out twice).
    fn may_ask(&self, peer: &PeerId) -> bool {
        !self.excluded.contains(peer) && !self.shunned.contains(peer)
    }

    /// Whether `peer` was asked for this block and may deliver it.
    fn asked_of(&self, peer: PeerId) -> bool {
        self.requested_from == Some(peer) || self.hedged == Some(peer)
    }

    /// Whether a requester claiming `nleaves` takes a block verified for this want's size.
    fn matches(&self, nleaves: Option<u64>) -> bool {
        nleaves.is_none() || self.nleaves.is_none() || nleaves == self.nleaves
    }

    /// Takes the requesters this want's size answers, leaving the others.
    fn take_matching(&mut self) -> Vec<Waiter> {
        let waiters = std::mem::take(&mut self.waiters);
        let (matching, others) = waiters.into_iter().partition(|w| self.matches(w.nleaves));
        self.waiters = others;
        matching
    }
}

/// A request outstanding at a peer.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// When it was sent (last sent: a request asked again after a lost connection counts from
    /// then, for the peer's rate).
    at: Instant,
    /// When it was first sent to this peer: [`REQUEST_TIMEOUT`] and the hedge's age count from
    /// here, so that asking again after a lost connection does not restart them (found by
    /// review: a peer that withheld one block and closed a second connection every 15 s kept
    /// the request from ever timing out).
    since: Instant,
    /// Requests to the same peer outstanding before it (the queue it joined), for the peer's
    /// [`Pace`].
    ahead: usize,
}

/// The `WantHave` that asks peers for `address`. For a non-leaf block (a manifest) it sets
/// `sendDontHave`, which both cairn and the reference honour (blockexc-verified.md §3.3), so
/// a CID nobody holds can be answered "not found" as soon as every peer has said so
/// ([`EngineHandle::denied_by_all`]). Leaf queries leave it unset, as the reference does: a
/// download asks for thousands of leaves and only their holders need to answer.
/// One peer fewer reads `address` (its `in_serve` entry went): see [`Engine::reading`].
fn done_reading(reading: &mut HashMap<BlockAddress, usize>, address: &BlockAddress) {
    if let Some(n) = reading.get_mut(address) {
        *n -= 1;
        if *n == 0 {
            reading.remove(address);
        }
    }
}

/// A serving task of a peer is done with `address`: its `in_serve` entry goes, and with it the
/// peer's part in [`Engine::reading`]. Returns the entry: `Some(true)` if the address was
/// cancelled while it was read, `None` if it was not being read for the peer.
fn end_serve(
    in_serve: &mut HashMap<BlockAddress, bool>,
    reading: &mut HashMap<BlockAddress, usize>,
    address: &BlockAddress,
) -> Option<bool> {
    let was = in_serve.remove(address);
    if was.is_some() {
        done_reading(reading, address);
    }
    was
}

fn query(address: BlockAddress) -> WantEntry {
    WantEntry {
        send_dont_have: matches!(address, BlockAddress::Block(_)),
        ..WantEntry::have(address)
    }
}

struct Peer {
    haves: HashSet<BlockAddress>,
    outstanding: HashMap<BlockAddress, Asked>,
    /// Its measured delivery rate: how many requests it may hold, and whether it is the holder
    /// to ask ([`crate::pace`]).
    pace: Pace,
    /// The last full pass of [`Engine::assign`] over the ready queue left this peer with room
    /// and nothing it should take: until that can change (an address it holds becomes ready,
    /// it delivers, or the next [`TICK`]) a pass does not keep scanning on its behalf.
    nothing_ready: bool,
    /// Since when it has owed us a block without delivering any: set by a request while unset,
    /// moved on by each delivery, cleared when it owes nothing because it delivered or because
    /// we cancelled. A request another holder answered first (a hedge) clears it only for a
    /// peer that has delivered since it began to owe (`last_delivery`), so a peer that claims
    /// blocks and sends none of them is found silent ([`ACTIVITY_TIMEOUT`]) even when hedging
    /// takes every request away from it, and a slow peer that delivers and obeys the cancel is
    /// not (found by review: it was penalised at the end of every download that hedged away
    /// from it).
    owed_since: Option<Instant>,
    /// When it last delivered a block it was asked for (a late copy included).
    last_delivery: Option<Instant>,
    /// Which connection of the peer this state is for: tasks report with it, and a report of
    /// an earlier one (the peer left and came back meanwhile) does not touch this state.
    epoch: u64,
    wanted: WantedQueue,
    /// Addresses its serving tasks are reading: `true` once cancelled meanwhile (the block is
    /// then neither sent nor parked).
    in_serve: HashMap<BlockAddress, bool>,
    parked: HashSet<BlockAddress>,
    in_rr: bool,
    serve_tasks: usize,
    outbox_wants: Vec<WantEntry>,
    outbox_presences: Vec<BlockPresence>,
    control_in_flight: bool,
    have_queries: VecDeque<(BlockAddress, bool)>,
    presence_in_flight: bool,
    /// When a connection to the peer was lost ([`NetEvent::ConnectionLost`]): its requests
    /// made before then that have not come after [`LOST_CONNECTION_GRACE`] are asked again.
    lost_at: Option<Instant>,
    tally: Tally,
}

impl Peer {
    /// Sends the peer a `WantBlock` for `address`.
    fn ask(&mut self, address: BlockAddress, now: Instant) {
        let ahead = self.outstanding.len();
        self.outstanding.insert(
            address,
            Asked {
                at: now,
                since: now,
                ahead,
            },
        );
        self.outbox_wants.push(WantEntry::block(address));
        self.owed_since.get_or_insert(now);
    }

    fn new(epoch: u64) -> Peer {
        Peer {
            haves: HashSet::new(),
            outstanding: HashMap::new(),
            pace: Pace::default(),
            nothing_ready: false,
            owed_since: None,
            last_delivery: None,
            epoch,
            wanted: WantedQueue::default(),
            in_serve: HashMap::new(),
            parked: HashSet::new(),
            in_rr: false,
            serve_tasks: 0,
            outbox_wants: Vec::new(),
            outbox_presences: Vec::new(),
            control_in_flight: false,
            have_queries: VecDeque::new(),
            presence_in_flight: false,
            lost_at: None,
            tally: Tally::default(),
        }
    }
}

/// The blocks a peer asked us for, in the order asked, each once. A cancel removes one in
/// O(log n): with a queue scanned per cancel, a peer holding 4,096 wants could make every
/// message of 1,024 cancels cost about four million comparisons on the engine task (review).
#[derive(Debug, Default)]
struct WantedQueue {
    order: BTreeMap<i64, BlockAddress>,
    seq: HashMap<BlockAddress, i64>,
    /// The key of the next address queued last.
    next: i64,
    /// The key of the address last queued first ([`WantedQueue::push_front`]).
    first: i64,
}

impl WantedQueue {
    fn len(&self) -> usize {
        self.seq.len()
    }

    fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    fn contains(&self, address: &BlockAddress) -> bool {
        self.seq.contains_key(address)
    }

    /// Queues `address` last; `false` when it is queued already.
    fn push(&mut self, address: BlockAddress) -> bool {
        if self.seq.contains_key(&address) {
            return false;
        }
        self.seq.insert(address, self.next);
        self.order.insert(self.next, address);
        self.next += 1;
        true
    }

    /// Queues `address` first (it was taken and not read); `false` when it is queued already.
    fn push_front(&mut self, address: BlockAddress) -> bool {
        if self.seq.contains_key(&address) {
            return false;
        }
        self.first -= 1;
        self.seq.insert(address, self.first);
        self.order.insert(self.first, address);
        true
    }

    /// Removes `address`; `false` when it was not queued.
    fn remove(&mut self, address: &BlockAddress) -> bool {
        match self.seq.remove(address) {
            Some(n) => {
                self.order.remove(&n);
                true
            }
            None => false,
        }
    }

    /// Takes up to `n` addresses from the front.
    fn take(&mut self, n: usize) -> Vec<BlockAddress> {
        let mut out = Vec::with_capacity(n.min(self.len()));
        while out.len() < n {
            let Some((_, address)) = self.order.pop_first() else {
                break;
            };
            self.seq.remove(&address);
            out.push(address);
        }
        out
    }
}

enum Done {
    /// A batch was written; `first` is the `seq` of its first block.
    Stored {
        first: u64,
        /// The bytes of the batch's blocks.
        bytes: usize,
        results: Vec<(BlockAddress, Result<Block, FetchError>)>,
    },
    /// A serving task read its blocks.
    Read {
        peer: PeerId,
        epoch: u64,
        found: Vec<Delivery>,
        missing: Vec<BlockAddress>,
        /// Not read: the task had read [`MAX_SERVE_READ_BYTES`] (queued again, first).
        unread: Vec<BlockAddress>,
    },
    /// ... and sent them: `sent` blocks went out; `unsent` are the ones a failed write lost
    /// on a connection (they are queued again while the peer stays connected).
    Sent {
        peer: PeerId,
        epoch: u64,
        sent: usize,
        unsent: Vec<BlockAddress>,
    },
    Presences {
        peer: PeerId,
        epoch: u64,
        presences: Vec<BlockPresence>,
    },
    ControlSent {
        peer: PeerId,
        epoch: u64,
    },
    Reported,
}

struct ToStore {
    block: Verified,
    /// When it was verified and queued.
    queued: Instant,
    /// Its place in the order blocks were queued ([`Engine::stored_below`]).
    seq: u64,
}

/// A delivered block that passed [`verify`].
enum Verified {
    /// A block asked for by its CID.
    Block(Block),
    /// A dataset leaf, its proof checked.
    Leaf(VerifiedLeaf),
}

impl Verified {
    fn address(&self) -> BlockAddress {
        match self {
            Verified::Block(b) => BlockAddress::Block(*b.cid()),
            Verified::Leaf(l) => BlockAddress::Leaf {
                tree: *l.tree(),
                index: l.index(),
            },
        }
    }

    fn block(&self) -> &Block {
        match self {
            Verified::Block(b) => b,
            Verified::Leaf(l) => l.block(),
        }
    }
}

/// The engine task's state. See the module docs.
pub struct Engine {
    store: Store,
    net: NetworkHandle,
    peers: HashMap<PeerId, Peer>,
    pending: HashMap<BlockAddress, Pending>,
    ready: VecDeque<BlockAddress>,
    unannounced: Vec<BlockAddress>,
    parked: HashMap<BlockAddress, HashSet<PeerId>>,
    /// How many peers' serving tasks are reading each address (the sum of the peers'
    /// `in_serve`): a block stored meanwhile is queued again only for those peers, and
    /// [`Engine::unpark`] looks at every peer only when the address is here, not for every
    /// block stored.
    reading: HashMap<BlockAddress, usize>,
    to_store: VecDeque<ToStore>,
    /// Standalone blocks (manifests) in `to_store`: their requesters wait for the write, so
    /// the batch goes at once.
    standalone_queued: usize,
    storing: usize,
    serve_rr: VecDeque<PeerId>,
    /// Serving tasks reading from the store ([`SERVE_TASKS`]).
    serving: usize,
    /// The epoch of the next peer state ([`Peer::epoch`]).
    next_epoch: u64,
    tasks: JoinSet<Done>,
    storing_blocks: usize,
    /// Bytes of the blocks queued or being written ([`MAX_UNSTORED_BYTES`]).
    unstored_bytes: usize,
    /// The `seq` the next queued block gets.
    next_store_seq: u64,
    /// The `seq` of the first block of each batch being written.
    writing: BTreeSet<u64>,
    /// Flushes waiting, each for the blocks queued before it (`seq` below its number): a
    /// flush does not wait for blocks other downloads queue after it (found by review: it
    /// waited until no block at all was queued or being written, which never came while
    /// another download kept bringing blocks in).
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// The engine is stopping: everything queued is written at once ([`Engine::write_out`]).
    stopping: bool,
    reports_in_flight: usize,
    stats: EngineStats,
    metrics: NodeMetrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("peers", &self.peers.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Starts the engine task.
pub fn spawn(
    store: Store,
    net: NetworkHandle,
    events: mpsc::Receiver<NetEvent>,
    metrics: NodeMetrics,
    cancel: CancellationToken,
) -> (EngineHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(ENGINE_CHANNEL_CAPACITY);
    let engine = Engine::new(store, net, metrics);
    let task = tokio::spawn(engine.run(rx, events, cancel));
    (EngineHandle { tx }, task)
}

impl Engine {
    /// An engine with nothing to do yet.
    fn new(store: Store, net: NetworkHandle, metrics: NodeMetrics) -> Engine {
        Engine {
            store,
            net,
            peers: HashMap::new(),
            pending: HashMap::new(),
            ready: VecDeque::new(),
            unannounced: Vec::new(),
            parked: HashMap::new(),
            reading: HashMap::new(),
            to_store: VecDeque::new(),
            standalone_queued: 0,
            storing: 0,
            serve_rr: VecDeque::new(),
            serving: 0,
            next_epoch: 0,
            tasks: JoinSet::new(),
            storing_blocks: 0,
            unstored_bytes: 0,
            next_store_seq: 0,
            writing: BTreeSet::new(),
            flush_waiters: Vec::new(),
            stopping: false,
            reports_in_flight: 0,
            stats: EngineStats::default(),
            metrics,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<NetEvent>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hedge_tick = tokio::time::interval(pace::HEDGE_INTERVAL);
        hedge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Queued blocks are written once the oldest has waited `STORE_LINGER`, even when
            // nothing else wakes the engine by then.
            let linger = self.linger_deadline();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until_some(linger) => {}
                ev = events.recv() => match ev {
                    Some(ev) => self.on_net(ev),
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some(done) = self.tasks.join_next() => match done {
                    Ok(d) => self.on_done(d),
                    Err(e) => warn!(error = %e, "engine task failed"),
                },
                _ = tick.tick() => {
                    self.on_tick(Instant::now());
                    self.sample_gauges();
                }
                _ = hedge_tick.tick() => self.hedge(Instant::now()),
            }
            self.schedule(Instant::now());
        }
        self.write_out().await;
        for (_, p) in self.pending.drain() {
            for w in p.waiters {
                w.send(Err(FetchError::Stopped));
            }
        }
        self.tasks.abort_all();
        debug!("engine stopped");
    }

    /// On stopping: the store writes in flight finish and the verified blocks still queued are
    /// written, within [`STOP_WRITE_GRACE`], so a graceful stop loses no block it verified.
    async fn write_out(&mut self) {
        self.stopping = true;
        let queued = self.to_store.len() + self.storing_blocks;
        let writes = async {
            loop {
                self.start_store(Instant::now());
                if self.storing == 0 {
                    break;
                }
                match self.tasks.join_next().await {
                    Some(Ok(done)) => self.on_done(done),
                    Some(Err(e)) => warn!(error = %e, "engine task failed"),
                    None => break,
                }
            }
        };
        if tokio::time::timeout(STOP_WRITE_GRACE, writes)
            .await
            .is_err()
        {
            warn!(
                unstored = self.to_store.len() + self.storing_blocks,
                "verified blocks not written before stopping"
            );
        } else if queued > 0 {
            debug!(blocks = queued, "verified blocks written before stopping");
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Want { wants } => {
                for (address, nleaves, reply) in wants {
                    self.add_want(address, nleaves, reply, now);
                }
            }
            Command::StoredLocally { tree, manifest } => {
                let hits: Vec<BlockAddress> = self
                    .parked
                    .keys()
                    .filter(|a| match a {
                        BlockAddress::Block(c) => *c == manifest,
                        BlockAddress::Leaf { tree: t, .. } => *t == tree,
                    })
                    .copied()
                    .collect();
                for a in hits {
                    self.unpark(a);
                }
            }
            Command::Stats { done } => {
                let mut s = self.stats.clone();
                s.pending = self.pending.len();
                let _ = done.send(s);
            }
            Command::Peers { done } => {
                let peers = self
                    .peers
                    .iter()
                    .map(|(peer, st)| PeerExchange {
                        peer: *peer,
                        blocks_received: st.tally.received,
                        blocks_sent: st.tally.sent,
                        duplicates: st.tally.duplicates,
                        rejected: st.tally.rejected,
                        requests: st.outstanding.len(),
                        request_limit: st.pace.limit(),
                        blocks_per_sec: st.pace.rate(),
                        wanted: st.wanted.len() + st.in_serve.len() + st.parked.len(),
                    })
                    .collect();
                let _ = done.send(peers);
            }
            Command::Holders { tree, done } => {
                let of_tree = |a: &BlockAddress| matches!(a, BlockAddress::Leaf { tree: t, .. } if *t == tree);
                let n = self
                    .peers
                    .values()
                    .filter(|p| p.haves.iter().any(of_tree) || p.outstanding.keys().any(of_tree))
                    .count();
                let _ = done.send(n);
            }
            Command::Forget { tree, manifest } => self.forget(tree, manifest),
            Command::DeniedByAll { address, done } => {
                let all = self.pending.get(&address).is_some_and(|p| {
                    !self.peers.is_empty() && self.peers.keys().all(|id| p.denied.contains(id))
                });
                let _ = done.send(all);
            }
            Command::Flush { done } => {
                if self.stored_below() >= self.next_store_seq {
                    let _ = done.send(());
                } else {
                    self.flush_waiters.push((self.next_store_seq, done));
                }
            }
        }
    }

    fn forget(&mut self, tree: Cid, manifest: Cid) {
        let gone: Vec<BlockAddress> = self
            .pending
            .iter()
            .filter(|(a, p)| {
                !p.storing
                    && match a {
                        BlockAddress::Leaf { tree: t, .. } => *t == tree,
                        BlockAddress::Block(c) => *c == manifest,
                    }
            })
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            if let Some(p) = self.drop_want(a) {
                for w in p.waiters {
                    w.send(Err(FetchError::Deleted));
                }
            }
        }
    }

    /// Stops wanting `address`: no peer counts as its holder any more, and the peer asked for
    /// it gets a cancel. Returns the want, whose requesters the caller answers.
    fn drop_want(&mut self, address: BlockAddress) -> Option<Pending> {
        let p = self.pending.remove(&address)?;
        for st in self.peers.values_mut() {
            st.haves.remove(&address);
        }
        for peer in p.requested_from.iter().chain(p.hedged.iter()) {
            if let Some(st) = self.peers.get_mut(peer)
                && st.outstanding.remove(&address).is_some()
            {
                st.outbox_wants.push(WantEntry::cancel(address));
                if st.outstanding.is_empty() {
                    st.owed_since = None; // we stopped asking; it owes nothing
                }
            }
        }
        Some(p)
    }

    fn add_want(
        &mut self,
        address: BlockAddress,
        nleaves: Option<u64>,
        reply: Reply,
        now: Instant,
    ) {
        if let Some(p) = self.pending.get_mut(&address) {
            if p.nleaves.is_none() {
                p.nleaves = nleaves;
            }
            let other_size = !p.matches(nleaves);
            p.waiters.push(Waiter { reply, nleaves });
            if let (true, Some(n)) = (other_size, nleaves) {
                // Holders shunned because their proofs claimed this requester's size are
                // holders again: what they deliver now answers it.
                let back: Vec<PeerId> = p
                    .claims
                    .extract_if(|_, claimed| *claimed == n)
                    .map(|(id, _)| id)
                    .collect();
                let mut holds = false;
                for id in &back {
                    p.shunned.remove(id);
                    if let Some(st) = self.peers.get_mut(id)
                        && st.haves.contains(&address)
                    {
                        // It may be asked for what is queued already (which `make_ready` leaves).
                        st.nothing_ready = false;
                        holds = true;
                    }
                }
                if holds {
                    self.make_ready(address);
                }
            }
            return;
        }
        if matches!(address, BlockAddress::Leaf { .. }) && nleaves.is_none() {
            let _ = reply.send(Err(FetchError::NoLeafCount));
            return;
        }
        if self.pending.len() >= MAX_PENDING_WANTS {
            let _ = reply.send(Err(FetchError::Busy));
            return;
        }
        self.pending.insert(
            address,
            Pending {
                waiters: vec![Waiter { reply, nleaves }],
                nleaves,
                requested_from: None,
                hedged: None,
                excluded: Vec::new(),
                shunned: HashSet::new(),
                timed_out: HashSet::new(),
                claimed_leaves: None,
                claims: HashMap::new(),
                denied: HashSet::new(),
                storing: false,
                queued: false,
                unheld_since: now,
                last_query: now,
            },
        );
        self.unannounced.push(address);
        // Peers that already told us they have it (a re-want after a failure) are used at once.
        if self.peers.values().any(|p| p.haves.contains(&address)) {
            self.make_ready(address);
        }
    }

    /// Requesters left when their want ended answering others (their manifests claim another
    /// tree size) want it again, as a new want verified against their size.
    fn want_again(&mut self, address: BlockAddress, waiters: Vec<Waiter>, now: Instant) {
        for w in waiters {
            if !w.reply.is_closed() {
                self.add_want(address, w.nleaves, w.reply, now);
            }
        }
    }

    fn make_ready(&mut self, address: BlockAddress) {
        if let Some(p) = self.pending.get_mut(&address)
            && !p.queued
            && !p.storing
            && p.requested_from.is_none()
        {
            p.queued = true;
            self.ready.push_back(address);
            for st in self.peers.values_mut() {
                if st.nothing_ready && st.haves.contains(&address) {
                    st.nothing_ready = false;
                }
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        let now = Instant::now();
        match ev {
            NetEvent::PeerConnected { peer, .. } => {
                self.next_epoch += 1;
                let mut state = Peer::new(self.next_epoch);
                // Tell the newcomer everything we are still looking for.
                state.outbox_wants = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.storing)
                    .map(|(a, _)| query(*a))
                    .collect();
                self.peers.insert(peer, state);
            }
            NetEvent::PeerDisconnected { peer } => {
                for p in self.pending.values_mut() {
                    p.denied.remove(&peer);
                }
                // A holder the others were waiting for is gone.
                for st in self.peers.values_mut() {
                    st.nothing_ready = false;
                }
                if let Some(state) = self.peers.remove(&peer) {
                    for a in state.in_serve.keys() {
                        done_reading(&mut self.reading, a);
                    }
                    for a in state.outstanding.into_keys() {
                        self.release(a, peer, false, now);
                    }
                    for a in state.parked {
                        if let Some(set) = self.parked.get_mut(&a) {
                            set.remove(&peer);
                            if set.is_empty() {
                                self.parked.remove(&a);
                            }
                        }
                    }
                }
                self.serve_rr.retain(|p| *p != peer);
            }
            NetEvent::ConnectionLost { peer } => {
                // The peer stays, but what was in flight on the lost connection may be gone
                // both ways. Its requests are asked of it again if they have not come within
                // `LOST_CONNECTION_GRACE` (a peer that sends on its other connection delivers
                // them meanwhile, and asking at once would make it send them twice); and it
                // hears again at once about the blocks we look for that it has not said it has
                // nor been asked for (see `announce`). What it asked of us it asks again itself
                // (a cairn peer sees the same connection close).
                let pending = &self.pending;
                let Some(st) = self.peers.get_mut(&peer) else {
                    return;
                };
                debug!(%peer, requests = st.outstanding.len(), "a connection to the peer closed; asking again what does not come");
                st.lost_at = Some(now);
                let mut queued: HashSet<BlockAddress> =
                    st.outbox_wants.iter().map(|w| w.address).collect();
                for (a, _) in pending.iter().filter(|(_, p)| !p.storing) {
                    if !st.haves.contains(a) && !st.outstanding.contains_key(a) && queued.insert(*a)
                    {
                        st.outbox_wants.push(query(*a));
                    }
                }
            }
            NetEvent::Violation { peer } => {
                let addrs: Vec<BlockAddress> = match self.peers.get_mut(&peer) {
                    Some(st) => {
                        st.owed_since = None;
                        st.outstanding.drain().map(|(a, _)| a).collect()
                    }
                    None => return,
                };
                for a in addrs {
                    self.release(a, peer, true, now);
                }
            }
            NetEvent::Message { peer, message } => self.on_message(peer, *message, now),
        }
    }

    /// A request for `address` to `peer` ended without a block: make it ready for another
    /// holder (excluding `peer` when it failed), unless a second holder was asked for it too
    /// and still is.
    fn release(&mut self, address: BlockAddress, peer: PeerId, exclude: bool, now: Instant) {
        let Some(p) = self.pending.get_mut(&address) else {
            return;
        };
        if p.storing || !p.asked_of(peer) {
            return;
        }
        if exclude {
            p.excluded.push(peer);
        }
        if p.hedged == Some(peer) {
            p.hedged = None;
            return;
        }
        p.requested_from = p.hedged.take();
        if p.requested_from.is_none() {
            // Claimed until now: the wait for a holder starts again (review: a want older than
            // the timeout that lost its holder failed at the next tick instead of being asked
            // again).
            p.unheld_since = now;
            self.make_ready(address);
        }
    }

    fn on_message(&mut self, peer: PeerId, m: Message, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        // Presences.
        for p in m.presences {
            let Some(pending) = self.pending.get_mut(&p.address) else {
                continue;
            };
            match p.presence {
                Presence::Have => {
                    pending.denied.remove(&peer);
                    if let Some(state) = self.peers.get_mut(&peer)
                        && state.haves.insert(p.address)
                    {
                        // It may hold what is queued already (which `make_ready` leaves).
                        state.nothing_ready = false;
                    }
                    self.make_ready(p.address);
                }
                // Only asked of non-leaf blocks; a `DontHave` for a leaf is unsolicited. A peer
                // that said `Have` before and `DontHave` now (it deleted the block) is no
                // longer a holder.
                Presence::DontHave => {
                    if matches!(p.address, BlockAddress::Block(_)) {
                        pending.denied.insert(peer);
                        if let Some(state) = self.peers.get_mut(&peer) {
                            state.haves.remove(&p.address);
                        }
                    }
                }
            }
        }
        // Deliveries.
        for d in m.deliveries {
            self.on_delivery(peer, d, now);
        }
        // Want list (serving).
        if !m.wantlist.is_empty() {
            self.on_wantlist(peer, m.wantlist);
        }
    }

    /// A delivery from `peer` that was unsolicited or came twice.
    fn duplicate(&mut self, peer: PeerId) {
        self.stats.duplicates += 1;
        self.metrics.blocks_duplicate.inc();
        if let Some(st) = self.peers.get_mut(&peer) {
            st.tally.duplicates += 1;
        }
    }

    fn on_delivery(&mut self, peer: PeerId, d: Delivery, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(asked) = state.outstanding.remove(&d.address) else {
            // A late copy of a request another holder answered first (a hedge) still shows
            // the peer delivers: it is not silent (review: an honest peer whose requests were
            // all hedged away was penalised as silent 10 s later).
            if state.owed_since.is_some() {
                state.owed_since = (!state.outstanding.is_empty()).then_some(now);
            }
            self.duplicate(peer);
            return;
        };
        let latency = now.saturating_duration_since(asked.at);
        self.metrics.block_request_duration.observe(latency);
        state.pace.observe(asked.ahead, latency, now);
        state.nothing_ready = false; // more room, and a new rate: it may now be the one to ask
        state.owed_since = (!state.outstanding.is_empty()).then_some(now);
        state.last_delivery = Some(now);
        let Some(pending) = self.pending.get_mut(&d.address) else {
            self.duplicate(peer);
            return;
        };
        if pending.storing || !pending.asked_of(peer) {
            self.duplicate(peer);
            return;
        }
        let address = d.address;
        let manifest_blocks = pending.nleaves.unwrap_or(0);
        let verified = match verify(d, pending.nleaves) {
            Ok(v) => v,
            Err(Rejected::Manifest { tree_leaves, leaf })
                if pending
                    .waiters
                    .iter()
                    .any(|w| w.nleaves == Some(tree_leaves)) =>
            {
                // Not the size the want is verified against, but another requester's: the
                // leaf is theirs, and the others wait for a proof of their own size once this
                // want ends.
                debug!(%peer, %address, manifest_blocks, tree_leaves, "proof for another requester's tree size");
                pending.nleaves = Some(tree_leaves);
                Verified::Leaf(*leaf)
            }
            Err(Rejected::Manifest { tree_leaves, .. }) => {
                // The manifest or the peer is wrong about the tree's size, and the proof cannot
                // tell which: it binds the size only through the odd nodes on its own path. The
                // peer is not penalised (when the manifest is the liar, every honest holder was
                // banned in turn; review) and not asked for this leaf again; another holder
                // whose proof agrees with the manifest is (a peer that lies this way cannot
                // fail a download honest holders can serve; review). If none does, the want
                // fails as `ManifestMismatch` once it has had no holder for NO_HOLDER_TIMEOUT.
                debug!(%peer, %address, manifest_blocks, tree_leaves, "proof for a tree of another size than the manifest's");
                pending.shunned.insert(peer);
                pending.claimed_leaves = Some(tree_leaves);
                pending.claims.insert(peer, tree_leaves);
                self.release(address, peer, false, now);
                return;
            }
            Err(Rejected::Peer(reason)) => {
                self.stats.rejected += 1;
                self.metrics.blocks_rejected.inc();
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.tally.rejected += 1;
                }
                let reason = format!("bad block for {address}: {reason}");
                warn!(%peer, %reason, "rejected delivery");
                self.report(peer, PeerAction::Fatal, reason);
                self.release(address, peer, true, now);
                return;
            }
        };
        pending.storing = true;
        self.stats.blocks_received += 1;
        if let Some(st) = self.peers.get_mut(&peer) {
            st.tally.received += 1;
        }
        self.metrics.blocks_accepted.inc();
        // Verified: a leaf's requesters get it now; the write is batched behind them (the window
        // of a download does not have to cover a disk sync). A standalone block (a manifest)
        // goes to its requesters once it is stored: storing a manifest lists its dataset, which
        // must be listed before its leaves come, and a delete right after the fetch must find
        // it there (a late write would list the dataset again).
        if matches!(address, BlockAddress::Leaf { .. }) {
            for w in pending.take_matching() {
                w.send(Ok(verified.block().clone()));
            }
        }
        // Anyone else we asked (a hedge, or a peer asked before a timeout) can stop. It has not
        // delivered in all the time the request waited there, which bounds its rate: a slow
        // peer whose requests are hedged is measured by them even before it delivers any.
        for (other, st) in &mut self.peers {
            if *other != peer
                && let Some(asked) = st.outstanding.remove(&address)
            {
                st.pace.observe_unanswered(
                    asked.ahead,
                    now.saturating_duration_since(asked.at),
                    now,
                );
                st.outbox_wants.push(WantEntry::cancel(address));
                // We stopped asking: a peer that has delivered since it began to owe owes
                // nothing (see `owed_since`).
                let delivers = st
                    .last_delivery
                    .is_some_and(|t| st.owed_since.is_none_or(|owed| t >= owed));
                if st.outstanding.is_empty() && delivers {
                    st.owed_since = None;
                }
            }
        }
        self.queue_store(verified, now);
    }

    fn queue_store(&mut self, block: Verified, now: Instant) {
        if matches!(block, Verified::Block(_)) {
            self.standalone_queued += 1;
        }
        self.unstored_bytes += block.block().data().len();
        self.to_store.push_back(ToStore {
            block,
            queued: now,
            seq: self.next_store_seq,
        });
        self.next_store_seq += 1;
    }

    /// Every block queued with a `seq` below this is written (or failed to be).
    fn stored_below(&self) -> u64 {
        let queued = self.to_store.front().map(|b| b.seq);
        let writing = self.writing.first().copied();
        [queued, writing]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_store_seq)
    }

    /// Answers the flushes whose blocks are all written.
    fn answer_flushes(&mut self) {
        let below = self.stored_below();
        for (_, done) in self
            .flush_waiters
            .extract_if(.., |(upto, _)| *upto <= below)
        {
            let _ = done.send(());
        }
    }

    fn on_wantlist(&mut self, peer: PeerId, entries: Vec<WantEntry>) {
        let mut have_queries = Vec::new();
        let mut over_limit = false;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        for e in entries {
            if e.cancel {
                state.wanted.remove(&e.address);
                if let Some(cancelled) = state.in_serve.get_mut(&e.address) {
                    *cancelled = true;
                }
                if state.parked.remove(&e.address)
                    && let Some(set) = self.parked.get_mut(&e.address)
                {
                    set.remove(&peer);
                    if set.is_empty() {
                        self.parked.remove(&e.address);
                    }
                }
                continue;
            }
            match e.want_type {
                WantType::Have => have_queries.push((e.address, e.send_dont_have)),
                WantType::Block => {
                    if let Some(cancelled) = state.in_serve.get_mut(&e.address) {
                        // Being read: asked again after a cancel, it is sent after all.
                        *cancelled = false;
                        continue;
                    }
                    if state.wanted.contains(&e.address) || state.parked.contains(&e.address) {
                        continue;
                    }
                    if state.wanted.len() + state.in_serve.len() + state.parked.len()
                        >= MAX_WANTED_PER_PEER
                    {
                        over_limit = true;
                        continue;
                    }
                    state.wanted.push(e.address);
                }
            }
        }
        if !state.wanted.is_empty() && !state.in_rr {
            state.in_rr = true;
            self.serve_rr.push_back(peer);
        }
        if over_limit {
            self.report(
                peer,
                PeerAction::LowTolerance,
                format!("more than {MAX_WANTED_PER_PEER} blocks wanted"),
            );
        }
        if have_queries.is_empty() {
            return;
        }
        let queued = self.peers.get(&peer).map_or(0, |st| st.have_queries.len());
        let room = MAX_QUEUED_HAVE_QUERIES.saturating_sub(queued);
        if have_queries.len() > room {
            have_queries.truncate(room);
            self.report(
                peer,
                PeerAction::LowTolerance,
                format!("more than {MAX_QUEUED_HAVE_QUERIES} presence queries queued"),
            );
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            state.have_queries.extend(have_queries);
        }
    }

    /// Answers queued `WantHave`s: one store lookup task per peer at a time, up to a message's
    /// worth of entries each.
    fn start_presences(&mut self) {
        for (peer, st) in &mut self.peers {
            // A peer whose answers are not being written (it does not read) gets no more
            // until they are: its queries wait, bounded.
            if st.presence_in_flight
                || st.have_queries.is_empty()
                || st.outbox_presences.len() >= MAX_QUEUED_PRESENCES
            {
                continue;
            }
            st.presence_in_flight = true;
            let n = st
                .have_queries
                .len()
                .min(cairn_blockexc::MAX_PRESENCES_PER_MESSAGE);
            let queries: Vec<(BlockAddress, bool)> = st.have_queries.drain(..n).collect();
            let store = self.store.clone();
            let peer = *peer;
            let epoch = st.epoch;
            self.tasks.spawn(async move {
                let presences = tokio::task::spawn_blocking(move || {
                    queries
                        .into_iter()
                        .filter_map(|(address, send_dont_have)| {
                            let has = match &address {
                                BlockAddress::Block(c) => store.has_block(c),
                                BlockAddress::Leaf { tree, index } => store.has_leaf(tree, *index),
                            };
                            // A store that cannot say (its index failed) answers nothing: a
                            // `DontHave` would tell the asker for certain that we lack it.
                            match (has, send_dont_have) {
                                (Ok(true), _) => Some(BlockPresence {
                                    address,
                                    presence: Presence::Have,
                                }),
                                (Ok(false), true) => Some(BlockPresence {
                                    address,
                                    presence: Presence::DontHave,
                                }),
                                (Ok(false), false) | (Err(_), _) => None,
                            }
                        })
                        .collect()
                })
                .await
                .unwrap_or_default();
                Done::Presences {
                    peer,
                    epoch,
                    presences,
                }
            });
        }
    }

    fn report(&mut self, peer: PeerId, action: PeerAction, reason: String) {
        if self.reports_in_flight >= MAX_REPORTS_IN_FLIGHT {
            debug!(%peer, %reason, "report dropped: too many in flight");
            return;
        }
        self.reports_in_flight += 1;
        let net = self.net.clone();
        self.tasks.spawn(async move {
            net.report(peer, action, reason).await;
            Done::Reported
        });
    }

    fn unpark(&mut self, address: BlockAddress) {
        // A serving task may be reading it for a peer right now, from before it was stored: it
        // goes to that peer's queue too, so the read finding nothing does not park it for good
        // (review). The read that finds it takes it off the queue again.
        if self.reading.contains_key(&address) {
            for (peer, st) in &mut self.peers {
                if st.in_serve.get(&address) == Some(&false) && st.wanted.push(address) && !st.in_rr
                {
                    st.in_rr = true;
                    self.serve_rr.push_back(*peer);
                }
            }
        }
        let Some(peers) = self.parked.remove(&address) else {
            return;
        };
        for peer in peers {
            if let Some(state) = self.peers.get_mut(&peer)
                && state.parked.remove(&address)
                && state.wanted.push(address)
                && !state.in_rr
            {
                state.in_rr = true;
                self.serve_rr.push_back(peer);
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Stored {
                first,
                bytes,
                results,
            } => {
                self.unstored_bytes -= bytes;
                self.storing -= 1;
                self.writing.remove(&first);
                self.storing_blocks -= results.len();
                // One log line per failed batch (a full store fails every block of it).
                let mut failed: Option<(BlockAddress, String, usize)> = None;
                for (address, result) in results {
                    match &result {
                        Ok(_) => self.unpark(address),
                        Err(FetchError::NotAManifest(e)) => {
                            debug!(%address, error = %e, "a block under a manifest CID is no manifest");
                        }
                        Err(e) => {
                            self.stats.store_failures += 1;
                            self.metrics.store_failures.inc();
                            match &mut failed {
                                Some((_, _, n)) => *n += 1,
                                None => failed = Some((address, e.to_string(), 1)),
                            }
                        }
                    }
                    if let Some(mut p) = self.pending.remove(&address) {
                        for w in p.take_matching() {
                            w.send(result.clone());
                        }
                        self.want_again(address, p.waiters, Instant::now());
                    }
                    for st in self.peers.values_mut() {
                        st.haves.remove(&address);
                    }
                }
                if let Some((first, error, blocks)) = failed {
                    warn!(%first, blocks, %error, "verified blocks not stored");
                }
                self.answer_flushes();
            }
            Done::Read {
                peer,
                epoch,
                found,
                missing,
                unread,
            } => {
                self.serving -= 1;
                // A peer that left (or came back as a new state) meanwhile is not served.
                let Some(state) = self.peers.get_mut(&peer).filter(|s| s.epoch == epoch) else {
                    return;
                };
                // Unread, and not cancelled meanwhile: first in line again, in order.
                for a in unread.into_iter().rev() {
                    if end_serve(&mut state.in_serve, &mut self.reading, &a) == Some(false) {
                        state.wanted.push_front(a);
                    }
                }
                for a in missing {
                    let was = end_serve(&mut state.in_serve, &mut self.reading, &a);
                    // Cancelled while it was read: forgotten.
                    if was == Some(false) && !state.wanted.contains(&a) && state.parked.insert(a) {
                        self.parked.entry(a).or_default().insert(peer);
                    }
                }
                let found: Vec<Delivery> = found
                    .into_iter()
                    .filter(|d| {
                        let was = end_serve(&mut state.in_serve, &mut self.reading, &d.address);
                        let asked = was == Some(false);
                        if asked {
                            // Queued again meanwhile (it was stored while read): sent once.
                            state.wanted.remove(&d.address);
                        }
                        asked
                    })
                    .collect();
                if found.is_empty() {
                    state.serve_tasks -= 1;
                    if !state.wanted.is_empty() && !state.in_rr {
                        state.in_rr = true;
                        self.serve_rr.push_back(peer);
                    }
                } else {
                    self.tasks
                        .spawn(send_blocks(self.net.clone(), peer, epoch, found));
                }
            }
            Done::Sent {
                peer,
                epoch,
                sent,
                unsent,
            } => {
                self.stats.blocks_sent += sent as u64;
                self.metrics.blocks_sent.inc_by(sent as u64);
                if let Some(state) = self.peers.get_mut(&peer).filter(|s| s.epoch == epoch) {
                    state.serve_tasks -= 1;
                    state.tally.sent += sent as u64;
                    // Lost with a write that failed while the peer stays: sent again (the peer
                    // asks again only for a connection it knows carried frames; review).
                    for a in unsent {
                        if !state.parked.contains(&a) {
                            state.wanted.push(a);
                        }
                    }
                    if !state.wanted.is_empty() && !state.in_rr {
                        state.in_rr = true;
                        self.serve_rr.push_back(peer);
                    }
                }
            }
            Done::Presences {
                peer,
                epoch,
                presences,
            } => {
                if let Some(state) = self.peers.get_mut(&peer).filter(|s| s.epoch == epoch) {
                    state.presence_in_flight = false;
                    state.outbox_presences.extend(presences);
                }
            }
            Done::ControlSent { peer, epoch } => {
                if let Some(state) = self.peers.get_mut(&peer).filter(|s| s.epoch == epoch) {
                    state.control_in_flight = false;
                }
            }
            Done::Reported => self.reports_in_flight -= 1,
        }
    }

    fn on_tick(&mut self, now: Instant) {
        // Requests that were on their way when a connection to their peer was lost, and have
        // not come since: asked again (on the peer's newest connection).
        for (peer, st) in &mut self.peers {
            // Rates drift: every tick, the next pass of `assign` looks at every peer again.
            st.nothing_ready = false;
            let Some(lost_at) = st.lost_at else {
                continue;
            };
            if now.duration_since(lost_at) < LOST_CONNECTION_GRACE {
                continue;
            }
            st.lost_at = None;
            let again: Vec<(BlockAddress, Instant)> = st
                .outstanding
                .iter()
                .filter(|(_, asked)| asked.at <= lost_at)
                .map(|(a, asked)| (*a, asked.since))
                .collect();
            if !again.is_empty() {
                debug!(%peer, requests = again.len(), "asking again what a lost connection held");
            }
            let ahead = st.outstanding.len() - again.len();
            for (i, (a, since)) in again.into_iter().enumerate() {
                st.outstanding.insert(
                    a,
                    Asked {
                        at: now,
                        since,
                        ahead: ahead + i,
                    },
                );
                // A peer that does not read what we sent before gets no more (its requests
                // time out); repeated lost connections must not grow its queue (review).
                if !(st.control_in_flight && st.outbox_wants.len() >= MAX_QUEUED_WANTS) {
                    st.outbox_wants.push(WantEntry::block(a));
                }
            }
        }
        // Silent peers lose their requests.
        let mut silent = Vec::new();
        for (peer, st) in &self.peers {
            if st
                .owed_since
                .is_some_and(|since| now.saturating_duration_since(since) > ACTIVITY_TIMEOUT)
            {
                silent.push(*peer);
            }
        }
        for peer in silent {
            let addrs: Vec<BlockAddress> = match self.peers.get_mut(&peer) {
                Some(st) => {
                    st.owed_since = None;
                    st.outstanding.drain().map(|(a, _)| a).collect()
                }
                None => continue,
            };
            self.stats.timeouts += addrs.len() as u64;
            self.metrics.request_timeouts.inc_by(addrs.len() as u64);
            debug!(%peer, requests = addrs.len(), "peer silent; moving its requests");
            for a in addrs {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.outbox_wants.push(WantEntry::cancel(a));
                    st.haves.remove(&a);
                }
                self.note_timeout(a, peer);
                self.release(a, peer, true, now);
            }
            self.report(peer, PeerAction::HighTolerance, "requests timed out".into());
        }
        // Single requests lost at peers that keep delivering others (review: one download's
        // lost block waited for as long as another download kept its only holder busy).
        let mut lost = Vec::new();
        for (peer, st) in &self.peers {
            for (a, asked) in &st.outstanding {
                if now.saturating_duration_since(asked.since) > REQUEST_TIMEOUT {
                    lost.push((*peer, *a));
                }
            }
        }
        if !lost.is_empty() {
            debug!(
                requests = lost.len(),
                "requests lost at peers that deliver others; moving them"
            );
            self.stats.timeouts += lost.len() as u64;
            self.metrics.request_timeouts.inc_by(lost.len() as u64);
        }
        for (peer, a) in lost {
            if let Some(st) = self.peers.get_mut(&peer) {
                st.outstanding.remove(&a);
                st.outbox_wants.push(WantEntry::cancel(a));
                st.haves.remove(&a);
                if st.outstanding.is_empty() {
                    st.owed_since = None;
                }
            }
            self.note_timeout(a, peer);
            self.release(a, peer, true, now);
        }
        for st in self.peers.values_mut() {
            st.pace.expire(st.outstanding.len(), now);
        }
        self.sweep_ready(now);
        // Abandoned wants, wants without holders.
        let mut drop_list = Vec::new();
        let mut requery = Vec::new();
        let mut failed = Vec::new();
        for (a, p) in &mut self.pending {
            if p.storing {
                continue;
            }
            p.waiters.retain(|w| !w.reply.is_closed());
            // Gone, or left only with requesters of another size: they want it again.
            if !p.waiters.iter().any(|w| p.matches(w.nleaves)) {
                drop_list.push(*a);
                continue;
            }
            if p.requested_from.is_some() || p.queued {
                continue;
            }
            if now.duration_since(p.unheld_since) > NO_HOLDER_TIMEOUT {
                failed.push(*a);
            } else if now.duration_since(p.last_query) > REQUERY_INTERVAL {
                p.last_query = now;
                p.excluded.clear();
                requery.push(*a);
            }
        }
        for a in drop_list {
            if let Some(p) = self.drop_want(a) {
                self.want_again(a, p.waiters, now);
            }
        }
        for a in failed {
            if let Some(mut p) = self.drop_want(a) {
                let error = match p.claimed_leaves {
                    Some(tree_leaves) => FetchError::ManifestMismatch {
                        manifest_blocks: p.nleaves.unwrap_or(0),
                        tree_leaves,
                    },
                    None => FetchError::NotFound,
                };
                for w in p.take_matching() {
                    w.send(Err(error.clone()));
                }
                self.want_again(a, p.waiters, now);
            }
        }
        for a in requery {
            // Holders that may be asked for this want: a shunned one would make the want ready
            // for nobody, and the others would never be asked again (review).
            let want = self.pending.get(&a);
            let holders = self
                .peers
                .iter()
                .any(|(id, st)| st.haves.contains(&a) && want.is_none_or(|p| p.may_ask(id)));
            if holders {
                self.make_ready(a);
            } else {
                self.unannounced.push(a);
            }
        }
    }

    /// A request for `a` at `peer` timed out, whether the peer went silent or only this request
    /// was lost. Once may be a message lost on the way; twice, the holder does not send this
    /// block (a cairn holder whose copy is damaged parks the request): it is not asked for it
    /// again, so a want only it "holds" ends as not found instead of going round for good
    /// (review). Both ways of timing out count: a holder whose only request was the one it
    /// withheld went silent every time, was asked again after each re-query, and the download
    /// never ended (found by review).
    fn note_timeout(&mut self, a: BlockAddress, peer: PeerId) {
        if let Some(p) = self.pending.get_mut(&a)
            && !p.timed_out.insert(peer)
        {
            p.shunned.insert(peer);
        }
    }

    /// Takes out of the ready queue what no connected holder can be asked for any more (its
    /// holders left, or were shunned or excluded for it) and what no longer waits there.
    /// [`Engine::assign`] stops while no peer has room, so it cannot be relied on to find
    /// these, and a queued want is exempt from [`NO_HOLDER_TIMEOUT`]: without this sweep a want
    /// whose last holder left while everyone else was busy would wait for good. Once a
    /// [`TICK`]: the queue holds at most [`MAX_PENDING_WANTS`] addresses.
    fn sweep_ready(&mut self, now: Instant) {
        let (pending, peers) = (&mut self.pending, &self.peers);
        self.ready.retain(|a| {
            let Some(p) = pending.get_mut(a) else {
                return false;
            };
            if !p.queued || p.storing || p.requested_from.is_some() {
                return false;
            }
            let held = peers
                .iter()
                .any(|(id, st)| st.haves.contains(a) && p.may_ask(id));
            if !held {
                // Held until now: the wait for a holder starts here (review: a want that had
                // waited in the queue longer than the timeout failed at once).
                p.unheld_since = now;
            }
            p.queued = held;
            held
        });
    }

    /// Sets the gauges (every [`TICK`]: they sum over peers, too much work for every event).
    fn sample_gauges(&self) {
        let (mut in_flight, mut remote) = (0, 0);
        for p in self.peers.values() {
            in_flight += p.outstanding.len();
            remote += p.wanted.len() + p.in_serve.len() + p.parked.len();
        }
        let m = &self.metrics;
        m.wants_local.set(gauge_value(self.pending.len()));
        m.wants_remote.set(gauge_value(remote));
        m.blocks_in_flight.set(gauge_value(in_flight));
        m.blocks_unstored
            .set(gauge_value(self.to_store.len() + self.storing_blocks));
    }

    fn schedule(&mut self, now: Instant) {
        self.assign(now);
        self.start_store(now);
        self.start_serving();
        self.start_presences();
        self.announce();
        self.flush_control();
    }

    fn assign(&mut self, now: Instant) {
        if self.to_store.len() + self.storing_blocks >= MAX_UNSTORED_BLOCKS
            || self.unstored_bytes >= MAX_UNSTORED_BYTES
        {
            return; // the disk is behind: request nothing more until it catches up
        }
        // Peers that may take a request in this pass. The pass goes on while one is left, so
        // addresses only busy holders have do not hide, behind them, those an idle holder could
        // serve (review: the pass stopped after 257 such addresses, and a second download from
        // another peer waited behind the first one's). Peers the last full pass found nothing
        // for are not counted (`Peer::nothing_ready`): without that, every delivery from a busy
        // holder would rescan the whole queue on behalf of a connected peer that holds none of
        // it.
        let mut open: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, st)| !st.nothing_ready && st.outstanding.len() < st.pace.limit())
            .map(|(id, _)| *id)
            .collect();
        let mut deferred = Vec::new();
        let mut full_pass = true;
        while let Some(address) = self.ready.pop_front() {
            if open.is_empty() {
                self.ready.push_front(address);
                full_pass = false;
                break;
            }
            let Some(p) = self.pending.get_mut(&address) else {
                continue;
            };
            p.queued = false;
            if p.storing || p.requested_from.is_some() {
                continue;
            }
            // Only a peer that may take a request now can be given this one: when none of them
            // holds it, it waits without a look at every other peer, so a long queue for busy
            // holders costs a lookup or two per address, not one per peer (review). A holder
            // that left is found by `sweep_ready`.
            let for_open = open.iter().any(|id| {
                self.peers
                    .get(id)
                    .is_some_and(|st| st.haves.contains(&address))
                    && p.may_ask(id)
            });
            if !for_open {
                p.queued = true;
                deferred.push(address);
                continue;
            }
            // The holder expected to deliver it first (`crate::pace`): among those with room,
            // and among those without (whose turn would come when they have room).
            let mut with_room: Option<(f64, PeerId)> = None;
            let mut full = f64::INFINITY;
            let mut any_holder = false;
            for (peer, st) in &self.peers {
                if !st.haves.contains(&address) || !p.may_ask(peer) {
                    continue;
                }
                any_holder = true;
                let load = st.outstanding.len();
                let wait = st.pace.wait(load);
                if load < st.pace.limit() {
                    if with_room.is_none_or(|(w, _)| wait < w) {
                        with_room = Some((wait, *peer));
                    }
                } else {
                    full = full.min(wait);
                }
            }
            match with_room {
                Some((wait, peer)) if wait <= full => {
                    p.requested_from = Some(peer);
                    self.stats.blocks_requested += 1;
                    self.metrics.block_requests.inc();
                    if let Some(st) = self.peers.get_mut(&peer) {
                        st.ask(address, now);
                        if st.outstanding.len() >= st.pace.limit() {
                            open.retain(|id| *id != peer); // full now
                        }
                    }
                }
                _ if any_holder => {
                    // Every holder is busy, or the one with room would be slower than waiting
                    // for a busy one: keep it ready for when one has room.
                    p.queued = true;
                    deferred.push(address);
                }
                _ => p.unheld_since = now, // re-queried on a tick
            }
        }
        if full_pass {
            // Whoever still has room could take nothing that is queued.
            for st in self.peers.values_mut() {
                if st.outstanding.len() < st.pace.limit() {
                    st.nothing_ready = true;
                }
            }
        }
        for a in deferred.into_iter().rev() {
            self.ready.push_front(a);
        }
    }

    /// Asks a second holder for requests that have waited too long at the first
    /// ([`should_hedge`]): oldest first, each at most once, only to holders with room that are
    /// expected to be much faster. A block stuck behind a slow (but not silent) peer would
    /// otherwise hold up every download that needs it, in order, until that peer gets to it.
    /// Whichever copy comes first is taken; the other peer gets a cancel, and a copy already on
    /// its way is dropped as a duplicate (not a fault of the peer).
    fn hedge(&mut self, now: Instant) {
        if self.peers.len() < 2 {
            return; // nobody else to ask
        }
        let mut stuck: Vec<(Duration, BlockAddress, PeerId)> = Vec::new();
        for (peer, st) in &self.peers {
            for (a, asked) in &st.outstanding {
                let age = now.saturating_duration_since(asked.since);
                if age >= pace::HEDGE_MIN_AGE {
                    stuck.push((age, *a, *peer));
                }
            }
        }
        if stuck.is_empty() {
            return;
        }
        stuck.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        for (age, address, from) in stuck {
            let Some(p) = self.pending.get_mut(&address) else {
                continue;
            };
            if p.storing || p.hedged.is_some() || p.requested_from != Some(from) {
                continue;
            }
            let Some(primary) = self.peers.get(&from) else {
                continue;
            };
            let ahead = primary.outstanding.get(&address).map_or(0, |a| a.ahead);
            let silent = primary
                .owed_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let mut best: Option<(f64, PeerId)> = None;
            for (peer, st) in &self.peers {
                if *peer == from || !st.haves.contains(&address) || !p.may_ask(peer) {
                    continue;
                }
                let load = st.outstanding.len();
                if load >= st.pace.limit() {
                    continue;
                }
                let wait = st.pace.wait(load);
                if should_hedge(age, &primary.pace, ahead, silent, &st.pace, load)
                    && best.is_none_or(|(w, _)| wait < w)
                {
                    best = Some((wait, *peer));
                }
            }
            let Some((_, peer)) = best else {
                continue;
            };
            debug!(%address, from = %from, to = %peer, age_ms = age.as_millis() as u64, ahead, silent_ms = silent.as_millis() as u64, "hedging a request");
            p.hedged = Some(peer);
            self.stats.blocks_requested += 1;
            self.stats.hedged += 1;
            self.metrics.block_requests.inc();
            self.metrics.block_requests_hedged.inc();
            if let Some(st) = self.peers.get_mut(&peer) {
                st.ask(address, now);
            }
        }
    }

    /// Whether the verified blocks waiting should be written now ([`store_due`]).
    fn store_due(&self, now: Instant) -> bool {
        self.to_store.front().is_some_and(|oldest| {
            store_due(
                self.to_store.len(),
                now.saturating_duration_since(oldest.queued),
                self.stopping
                    || self.standalone_queued > 0
                    || self
                        .flush_waiters
                        .iter()
                        .any(|(upto, _)| oldest.seq < *upto),
                self.pending
                    .len()
                    .saturating_sub(self.to_store.len() + self.storing_blocks),
            )
        })
    }

    /// When the oldest queued block will have waited [`STORE_LINGER`], if a writer is free for
    /// it then.
    fn linger_deadline(&self) -> Option<Instant> {
        if self.storing >= STORE_TASKS {
            return None; // a finishing write wakes the engine
        }
        self.to_store.front().map(|b| b.queued + STORE_LINGER)
    }

    fn start_store(&mut self, now: Instant) {
        while self.storing < STORE_TASKS && self.store_due(now) {
            let n = self.to_store.len().min(STORE_BATCH_BLOCKS);
            let batch: Vec<ToStore> = self.to_store.drain(..n).collect();
            let first = batch.first().map_or(self.next_store_seq, |b| b.seq);
            self.writing.insert(first);
            let standalone = batch
                .iter()
                .filter(|b| matches!(b.block, Verified::Block(_)))
                .count();
            self.standalone_queued -= standalone;
            let bytes = batch.iter().map(|b| b.block.block().data().len()).sum();
            let store = self.store.clone();
            self.storing += 1;
            self.storing_blocks += n;
            self.tasks.spawn(async move {
                let addresses: Vec<BlockAddress> =
                    batch.iter().map(|b| b.block.address()).collect();
                match tokio::task::spawn_blocking(move || store_batch(&store, batch)).await {
                    Ok(results) => Done::Stored {
                        first,
                        bytes,
                        results,
                    },
                    Err(e) => Done::Stored {
                        first,
                        bytes,
                        results: addresses
                            .into_iter()
                            .map(|a| (a, Err(FetchError::Store(e.to_string()))))
                            .collect(),
                    },
                }
            });
        }
    }

    fn start_serving(&mut self) {
        let mut rounds = self.serve_rr.len();
        while self.serving < SERVE_TASKS && rounds > 0 {
            rounds -= 1;
            let Some(peer) = self.serve_rr.pop_front() else {
                break;
            };
            let Some(st) = self.peers.get_mut(&peer) else {
                continue;
            };
            if st.wanted.is_empty() {
                st.in_rr = false;
                continue;
            }
            if st.serve_tasks >= SERVE_TASKS_PER_PEER {
                self.serve_rr.push_back(peer);
                continue;
            }
            let addrs = st.wanted.take(MAX_BLOCKS_PER_MESSAGE);
            for a in &addrs {
                // One entry per peer and address: one queued again by `unpark` while it is
                // read is read twice but counted once, as `in_serve` holds it once.
                if st.in_serve.insert(*a, false).is_none() {
                    *self.reading.entry(*a).or_default() += 1;
                }
            }
            st.serve_tasks += 1;
            if st.wanted.is_empty() {
                st.in_rr = false;
            } else {
                self.serve_rr.push_back(peer);
            }
            self.serving += 1;
            let store = self.store.clone();
            self.tasks.spawn(read_blocks(store, peer, st.epoch, addrs));
        }
    }

    fn announce(&mut self) {
        if self.unannounced.is_empty() {
            return;
        }
        let addrs = std::mem::take(&mut self.unannounced);
        for st in self.peers.values_mut() {
            if st.control_in_flight && st.outbox_wants.len() >= MAX_QUEUED_WANTS {
                continue; // it is not reading what we sent before; the next requery asks again
            }
            // Not a peer that said it has the block, nor one asked for it: the query is
            // redundant there (a re-wanted block goes to a known holder at once). The reference
            // (v0.2.5, `wantListHandler`) ignores it as a repeat, but its older engines kept one
            // entry per block and a later `WantHave` replaced the `WantBlock`, which was then
            // never served.
            let queries = addrs
                .iter()
                .filter(|a| !st.haves.contains(*a) && !st.outstanding.contains_key(*a))
                .map(|a| query(*a));
            st.outbox_wants.extend(queries);
        }
    }

    fn flush_control(&mut self) {
        for (peer, st) in &mut self.peers {
            if st.control_in_flight
                || (st.outbox_wants.is_empty() && st.outbox_presences.is_empty())
            {
                continue;
            }
            st.control_in_flight = true;
            let mut messages = Vec::new();
            // Kinds are not mixed in one message, as the reference does; block requests first.
            let (blocks, others) = split_wants(std::mem::take(&mut st.outbox_wants));
            for chunk in blocks.chunks(MAX_WANTLIST_ENTRIES) {
                messages.push(Message::wants(chunk.to_vec(), false));
            }
            for chunk in others.chunks(MAX_WANTLIST_ENTRIES) {
                messages.push(Message::wants(chunk.to_vec(), false));
            }
            let presences = std::mem::take(&mut st.outbox_presences);
            for chunk in presences.chunks(cairn_blockexc::MAX_PRESENCES_PER_MESSAGE) {
                messages.push(Message::presences(chunk.to_vec()));
            }
            let net = self.net.clone();
            let peer = *peer;
            let epoch = st.epoch;
            self.tasks.spawn(async move {
                for m in messages {
                    if let Err(e) = net.send(peer, &m).await {
                        debug!(%peer, error = %e, "control message not sent");
                        break;
                    }
                }
                Done::ControlSent { peer, epoch }
            });
        }
    }
}

/// Splits a peer's queued want-list entries into block requests and the rest (queries and
/// cancels), the two messages [`Engine::flush_control`] sends in that order. Sending block
/// requests first reorders the queue, so an entry queued before a `WantBlock` for the same
/// address is dropped rather than sent after it: a `WantHave` after the `WantBlock` would be
/// redundant (and older reference engines let it replace the request, which was then never
/// served), and a cancel after it would cancel the new request. The `WantBlock` alone says
/// what was meant in both cases. Entries queued after a `WantBlock` keep their place after it.
fn split_wants(wants: Vec<WantEntry>) -> (Vec<WantEntry>, Vec<WantEntry>) {
    let is_request = |w: &WantEntry| w.want_type == WantType::Block && !w.cancel;
    let mut last_request: HashMap<BlockAddress, usize> = HashMap::new();
    for (i, w) in wants.iter().enumerate() {
        if is_request(w) {
            last_request.insert(w.address, i);
        }
    }
    let mut blocks = Vec::with_capacity(last_request.len());
    let mut others = Vec::new();
    for (i, w) in wants.into_iter().enumerate() {
        if is_request(&w) {
            blocks.push(w);
        } else if last_request.get(&w.address).is_none_or(|&r| i > r) {
            others.push(w);
        }
    }
    (blocks, others)
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether `queued` verified blocks (at least one), the oldest of which has waited `oldest_wait`,
/// should be written now: a full batch is there ([`STORE_MIN_BATCH_BLOCKS`]), the oldest has
/// waited [`STORE_LINGER`], someone waits on a flush, or no block is on its way (`coming`: pending
/// wants not yet delivered).
fn store_due(queued: usize, oldest_wait: Duration, flush_waiting: bool, coming: usize) -> bool {
    queued >= STORE_MIN_BATCH_BLOCKS || oldest_wait >= STORE_LINGER || flush_waiting || coming == 0
}

/// Checks a delivery against what was asked (see the module docs).
/// Why a delivery was not accepted.
#[derive(Debug)]
enum Rejected {
    /// The peer sent something wrong (penalised).
    Peer(String),
    /// The proof is for the right index and checks out against the tree's root, but for a tree
    /// of `tree_leaves` leaves, not the manifest's count. Either may be wrong: the Codex tree
    /// binds the count only through the odd nodes on the leaf's own path, so a peer can forge
    /// a count that still checks out (review found most positions allow one), and a manifest
    /// can name a real tree with a made-up size.
    Manifest {
        tree_leaves: u64,
        /// The leaf, verified for the proof's own size.
        leaf: Box<VerifiedLeaf>,
    },
}

fn verify(d: Delivery, nleaves: Option<u64>) -> Result<Verified, Rejected> {
    let peer = |reason: &str| Rejected::Peer(reason.to_string());
    match d.address {
        BlockAddress::Block(cid) => {
            if *d.block.cid() == cid {
                Ok(Verified::Block(d.block))
            } else {
                Err(Rejected::Peer(format!("got block {}", d.block.cid())))
            }
        }
        BlockAddress::Leaf { tree, index } => {
            let proof = d.proof.ok_or_else(|| peer("no proof"))?;
            let nleaves = nleaves.ok_or_else(|| peer("leaf count unknown"))?;
            if proof.index == index && proof.nleaves != nleaves {
                // A proof that checks out with its own count: the manifest's count or the
                // peer's is wrong ([`Rejected::Manifest`]).
                let tree_leaves = proof.nleaves;
                return Err(
                    match VerifiedLeaf::verify(tree, index, tree_leaves, d.block, proof) {
                        Ok(leaf) => Rejected::Manifest {
                            tree_leaves,
                            leaf: Box::new(leaf),
                        },
                        Err(e) => Rejected::Peer(e.to_string()),
                    },
                );
            }
            VerifiedLeaf::verify(tree, index, nleaves, d.block, proof)
                .map(Verified::Leaf)
                .map_err(|e| Rejected::Peer(e.to_string()))
        }
    }
}

fn store_batch(
    store: &Store,
    batch: Vec<ToStore>,
) -> Vec<(BlockAddress, Result<Block, FetchError>)> {
    let mut out = Vec::with_capacity(batch.len());
    let mut by_tree: HashMap<Cid, Vec<VerifiedLeaf>> = HashMap::new();
    for item in batch {
        match item.block {
            Verified::Leaf(leaf) => by_tree.entry(*leaf.tree()).or_default().push(leaf),
            Verified::Block(block) => {
                let address = BlockAddress::Block(*block.cid());
                let r = store
                    .put_block(&block)
                    .map(|_| block)
                    .map_err(|e| store_error(&e));
                out.push((address, r));
            }
        }
    }
    for (tree, leaves) in by_tree {
        let r = store
            .put_leaves(&tree, &leaves)
            .map_err(|e| store_error(&e));
        for leaf in leaves {
            let address = BlockAddress::Leaf {
                tree,
                index: leaf.index(),
            };
            out.push((address, r.clone().map(|()| leaf.into_parts().0)));
        }
    }
    out
}

fn store_error(e: &StoreError) -> FetchError {
    match *e {
        StoreError::QuotaExceeded {
            needed,
            used,
            quota,
        } => FetchError::QuotaExceeded {
            needed,
            used,
            quota,
        },
        // A manifest naming a dataset stored whole here with another size.
        StoreError::ManifestConflict {
            manifest_blocks,
            dataset_blocks,
            ..
        } => FetchError::ManifestMismatch {
            manifest_blocks,
            tree_leaves: dataset_blocks,
        },
        // A block under a manifest CID that is no manifest (review: answered 500, and counted
        // and logged as a store failure).
        StoreError::Manifest(ref m) => FetchError::NotAManifest(m.to_string()),
        _ if e.is_disk_full() => FetchError::DiskFull(e.to_string()),
        _ => FetchError::Store(e.to_string()),
    }
}

/// What a serving task read: the deliveries found, the addresses missing, and those left
/// unread once [`MAX_SERVE_READ_BYTES`] were read.
#[derive(Debug, Default)]
struct ServeRead {
    found: Vec<Delivery>,
    missing: Vec<BlockAddress>,
    unread: Vec<BlockAddress>,
    /// Block bytes in `found`.
    bytes: u64,
}

/// Reads the blocks of one serve batch, in order, until `max_bytes` are read (passed by one
/// block at most). Runs of leaves of one dataset (the usual batch) are read in one store
/// transaction. A block that is corrupt or cannot be read is never served: it counts as
/// missing.
fn read_for_serving(store: &Store, addrs: Vec<BlockAddress>, max_bytes: u64) -> ServeRead {
    let mut out = ServeRead::default();
    let record =
        |out: &mut ServeRead,
         address: BlockAddress,
         r: Result<Option<(Block, Option<CodexProof>)>, StoreError>| match r {
            Ok(Some((block, proof))) => {
                out.bytes = out.bytes.saturating_add(block.data().len() as u64);
                out.found.push(Delivery {
                    block,
                    address,
                    proof,
                });
            }
            Ok(None) => out.missing.push(address),
            Err(e) => {
                warn!(%address, error = %e, "cannot serve block");
                out.missing.push(address);
            }
        };
    let mut rest = addrs.into_iter().peekable();
    while let Some(address) = rest.next() {
        let left = max_bytes.saturating_sub(out.bytes);
        if left == 0 {
            out.unread.push(address);
            out.unread.extend(rest);
            break;
        }
        let tree = match address {
            BlockAddress::Block(cid) => {
                let r = store.get_block(&cid).map(|b| b.map(|b| (b, None)));
                record(&mut out, address, r);
                continue;
            }
            BlockAddress::Leaf { tree, .. } => tree,
        };
        let mut run = vec![address];
        while let Some(next) =
            rest.next_if(|a| matches!(a, BlockAddress::Leaf { tree: t, .. } if *t == tree))
        {
            run.push(next);
        }
        let indices: Vec<u64> = run
            .iter()
            .filter_map(|a| match a {
                BlockAddress::Leaf { index, .. } => Some(*index),
                BlockAddress::Block(_) => None,
            })
            .collect();
        match store.get_leaves_within(&tree, &indices, left) {
            Ok(results) => {
                let mut run = run.into_iter();
                // `results` first: `zip` then takes no address past the last result.
                for (r, address) in results.into_iter().zip(run.by_ref()) {
                    record(&mut out, address, r.map(|l| l.map(|(b, p)| (b, Some(p)))));
                }
                // Past the bytes: these and the rest stay unread.
                let unread: Vec<BlockAddress> = run.collect();
                if !unread.is_empty() {
                    out.unread.extend(unread);
                    out.unread.extend(rest);
                    break;
                }
            }
            Err(e) => {
                warn!(%tree, error = %e, "cannot serve leaves");
                for address in run {
                    record(&mut out, address, Ok(None));
                }
            }
        }
    }
    out
}

/// The first step of a serving task: reads `addrs` for `peer` (state `epoch`).
async fn read_blocks(store: Store, peer: PeerId, epoch: u64, addrs: Vec<BlockAddress>) -> Done {
    let asked = addrs.clone();
    let read =
        tokio::task::spawn_blocking(move || read_for_serving(&store, addrs, MAX_SERVE_READ_BYTES))
            .await;
    // A read that panicked found nothing: every address counts as missing, so that none stays
    // marked as being read.
    let ServeRead {
        found,
        missing,
        unread,
        ..
    } = read.unwrap_or_else(|_| ServeRead {
        missing: asked,
        ..ServeRead::default()
    });
    Done::Read {
        peer,
        epoch,
        found,
        missing,
        unread,
    }
}

/// The second step: sends what was read, in messages of at most [`MAX_DELIVERY_BYTES`] of
/// blocks, and waits until they are written.
async fn send_blocks(net: NetworkHandle, peer: PeerId, epoch: u64, found: Vec<Delivery>) -> Done {
    let mut sent = 0;
    let mut messages = delivery_messages(found).into_iter();
    while let Some(message) = messages.next() {
        let addresses: Vec<BlockAddress> = message.iter().map(|d| d.address).collect();
        if let Err(e) = net.send(peer, &Message::deliveries(message)).await {
            debug!(%peer, error = %e, "delivery not sent");
            // A write that failed on a connection: the peer may still be there. Refused sends
            // (not connected, its queue full) are not tried again.
            let unsent = if matches!(e, cairn_net::NetError::SendFailed(_)) {
                addresses
                    .into_iter()
                    .chain(messages.flatten().map(|d| d.address))
                    .collect()
            } else {
                Vec::new()
            };
            return Done::Sent {
                peer,
                epoch,
                sent,
                unsent,
            };
        }
        sent += addresses.len();
    }
    Done::Sent {
        peer,
        epoch,
        sent,
        unsent: Vec::new(),
    }
}

/// `found` cut into delivery messages, in order, each of at most [`MAX_DELIVERY_BYTES`] of block
/// data (a larger block alone).
fn delivery_messages(found: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    let mut messages: Vec<Vec<Delivery>> = Vec::new();
    let mut bytes = 0;
    for d in found {
        let len = d.block.data().len();
        match messages.last_mut() {
            Some(m) if bytes + len <= MAX_DELIVERY_BYTES => {
                bytes += len;
                m.push(d);
            }
            _ => {
                bytes = len;
                messages.push(vec![d]);
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_store::{DatasetMeta, StoreConfig};

    use super::*;

    const BS: usize = 64 * 1024;

    /// Stores `blocks` distinct blocks as a dataset; returns (manifest CID, tree CID).
    fn dataset(store: &Store, blocks: usize, seed: u8) -> (Cid, Cid) {
        let mut w = store.begin_dataset().unwrap();
        for i in 0..blocks {
            let mut data = vec![seed; BS];
            data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            w.write(&Block::data_block(Bytes::from(data))).unwrap();
        }
        let s = w
            .finish(DatasetMeta {
                dataset_size: (blocks * BS) as u64,
                block_size: BS as u64,
                filename: None,
                mimetype: None,
            })
            .unwrap();
        (s.manifest_cid, s.manifest.tree_cid)
    }

    /// An engine over an in-memory store and a swarm of its own with no peers (what it sends
    /// goes nowhere); the tests drive its handlers directly.
    async fn engine(cancel: &CancellationToken) -> Engine {
        let config = cairn_net::NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..cairn_net::NetConfig::default()
        };
        let (net, _events, _task) = cairn_net::start(
            cairn_net::Keypair::generate_secp256k1(),
            config,
            cancel.clone(),
        )
        .await
        .unwrap();
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        Engine::new(store, net, NodeMetrics::default())
    }

    fn connected(e: &mut Engine, peer: PeerId) {
        e.on_net(NetEvent::PeerConnected {
            peer,
            direction: cairn_net::Direction::Inbound,
        });
    }

    /// `peer` said it has `address` (a `Have`).
    fn said_has(e: &mut Engine, peer: PeerId, address: BlockAddress) {
        if let Some(st) = e.peers.get_mut(&peer) {
            st.haves.insert(address);
        }
    }

    /// Leaf 0 of the 3-leaf dataset `tree` with its honest block and path but a proof that
    /// claims 4 leaves: a count the tree does not bind, so the proof still checks out for it.
    fn forged_leaf(e: &Engine, tree: Cid) -> Delivery {
        let (block, mut proof) = e.store.get_leaf(&tree, 0).unwrap().unwrap();
        proof.nleaves = 4;
        Delivery {
            block,
            address: BlockAddress::Leaf { tree, index: 0 },
            proof: Some(proof),
        }
    }

    fn leaves(tree: Cid, n: u64) -> Vec<BlockAddress> {
        (0..n)
            .map(|index| BlockAddress::Leaf { tree, index })
            .collect()
    }

    fn wants(addrs: &[BlockAddress]) -> Vec<WantEntry> {
        addrs.iter().map(|a| WantEntry::block(*a)).collect()
    }

    #[test]
    fn the_wanted_queue_keeps_order_and_removes_anywhere() {
        let tree = *Block::data_block(Bytes::from_static(b"t")).cid();
        let a = leaves(tree, 5);
        let mut q = WantedQueue::default();
        for x in &a {
            assert!(q.push(*x));
        }
        assert!(!q.push(a[1]), "queued once");
        assert!(q.remove(&a[2]) && !q.remove(&a[2]));
        assert_eq!(q.len(), 4);
        assert_eq!(q.take(2), vec![a[0], a[1]]);
        assert!(q.push(a[2]), "a removed address can be queued again, last");
        assert_eq!(q.take(10), vec![a[3], a[4], a[2]]);
        assert!(q.is_empty() && q.take(1).is_empty());
        // Taken and put back first, in order, ahead of what was queued meanwhile.
        q.push(a[0]);
        let taken = q.take(1);
        q.push(a[1]);
        q.push(a[2]);
        let more = q.take(1);
        for x in more.iter().chain(&taken).rev() {
            assert!(q.push_front(*x));
        }
        assert!(!q.push_front(a[0]), "queued once");
        assert_eq!(q.take(10), vec![a[1], a[0], a[2]]);
    }

    /// What a serving task reads stops at its bytes (passing them by one block at most, and
    /// reading one block whatever its size); the rest is left unread, in order.
    #[test]
    fn a_serve_batch_stops_at_its_bytes() {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let (m1, t1) = dataset(&store, 4, 1);
        let (_, t2) = dataset(&store, 2, 2);
        let leaf = |tree, index| BlockAddress::Leaf { tree, index };
        let asked = vec![
            leaf(t1, 0),
            leaf(t1, 1),
            leaf(t1, 2),
            BlockAddress::Block(m1),
            leaf(t2, 0),
        ];
        let addresses = |r: &ServeRead| r.found.iter().map(|d| d.address).collect::<Vec<_>>();
        for (max, read) in [
            (1, 1),
            (BS as u64, 1),
            (BS as u64 + 1, 2),
            (2 * BS as u64, 2),
            (3 * BS as u64, 3),
            (3 * BS as u64 + 1, 4),
            (u64::MAX, 5),
        ] {
            let r = read_for_serving(&store, asked.clone(), max);
            assert_eq!(addresses(&r), asked[..read], "within {max} bytes");
            assert_eq!(r.unread, asked[read..], "within {max} bytes");
            assert!(r.missing.is_empty());
        }
        // A plain block first: the run of leaves after it is not read once it used the bytes.
        let asked = vec![BlockAddress::Block(m1), leaf(t1, 0), leaf(t1, 1)];
        let r = read_for_serving(&store, asked.clone(), 1);
        assert_eq!(
            (addresses(&r), r.unread),
            (asked[..1].to_vec(), asked[1..].to_vec())
        );
    }

    /// Addresses a serving task left unread go back to the front of the peer's queue, in
    /// order, and are served next; one cancelled while it was taken is forgotten.
    #[tokio::test]
    async fn unread_addresses_are_served_next() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 8, 3);
        let peer = PeerId::random();
        connected(&mut e, peer);
        let first = leaves(tree, 4);
        e.on_wantlist(peer, wants(&first));
        e.start_serving();
        let epoch = e.peers[&peer].epoch;
        assert!(e.peers[&peer].wanted.is_empty(), "all four taken");
        // Meanwhile: one more wanted, and one of the taken cancelled.
        let later = BlockAddress::Leaf { tree, index: 6 };
        e.on_wantlist(peer, wants(&[later]));
        e.on_wantlist(peer, vec![WantEntry::cancel(first[3])]);
        let r = read_for_serving(&e.store, first.clone(), BS as u64);
        assert_eq!(r.unread, first[1..]);
        e.on_done(Done::Read {
            peer,
            epoch,
            found: r.found,
            missing: r.missing,
            unread: r.unread,
        });
        let st = e.peers.get_mut(&peer).unwrap();
        assert_eq!(st.wanted.take(10), vec![first[1], first[2], later]);
        assert!(st.in_serve.is_empty());
        check_reading(&e);
        cancel.cancel();
    }

    /// A serving task of a peer's earlier connection that reports after the peer came back
    /// does not touch the new state (review: the old engine subtracted it from the new state's
    /// count, which overflowed: a panic in a debug build, and in a release build a peer never
    /// served again).
    #[tokio::test]
    async fn a_task_of_an_earlier_connection_does_not_count_against_the_new_one() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 4, 1);
        let peer = PeerId::random();
        connected(&mut e, peer);
        let old_epoch = e.peers[&peer].epoch;
        e.on_wantlist(peer, wants(&leaves(tree, 2)));
        e.start_serving();
        assert_eq!((e.serving, e.peers[&peer].serve_tasks), (1, 1));
        e.on_net(NetEvent::PeerDisconnected { peer });
        connected(&mut e, peer);
        assert_ne!(e.peers[&peer].epoch, old_epoch);
        // The old task's read and send come back.
        e.on_done(Done::Read {
            peer,
            epoch: old_epoch,
            found: Vec::new(),
            missing: leaves(tree, 2),
            unread: Vec::new(),
        });
        e.on_done(Done::Sent {
            peer,
            epoch: old_epoch,
            sent: 0,
            unsent: leaves(tree, 2),
        });
        e.on_done(Done::ControlSent {
            peer,
            epoch: old_epoch,
        });
        let st = &e.peers[&peer];
        assert_eq!(e.serving, 0);
        assert_eq!(st.serve_tasks, 0);
        assert!(
            st.parked.is_empty(),
            "nothing parked for the new connection"
        );
        // The new connection is served as any other.
        e.on_wantlist(peer, wants(&leaves(tree, 1)));
        e.start_serving();
        assert_eq!(e.peers[&peer].serve_tasks, 1);
        cancel.cancel();
    }

    /// Peers whose messages are not being written (they do not read) hold only their own
    /// serving tasks: once its blocks are read, a task no longer takes one of the
    /// [`SERVE_TASKS`] read slots, so other peers are still served (review: four peers that
    /// asked for blocks and never read held all eight slots, and nobody was served again).
    #[tokio::test]
    async fn peers_that_do_not_read_do_not_hold_up_the_others() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 40, 2);
        let stuck: Vec<PeerId> = (0..SERVE_TASKS / SERVE_TASKS_PER_PEER)
            .map(|_| PeerId::random())
            .collect();
        for p in &stuck {
            connected(&mut e, *p);
            e.on_wantlist(*p, wants(&leaves(tree, 40)));
        }
        // One round per call, as the engine runs it after every event.
        for _ in 0..SERVE_TASKS_PER_PEER {
            e.start_serving();
        }
        assert_eq!(e.serving, SERVE_TASKS, "every read slot taken");
        check_reading(&e);
        // Their reads finish; their sends would wait for good (they are not reported here).
        let mut reads = Vec::new();
        for p in &stuck {
            let epoch = e.peers[p].epoch;
            let mut taken: Vec<BlockAddress> = e.peers[p].in_serve.keys().copied().collect();
            taken.sort_by_key(|a| match a {
                BlockAddress::Leaf { index, .. } => *index,
                BlockAddress::Block(_) => 0,
            });
            for chunk in taken.chunks(MAX_BLOCKS_PER_MESSAGE) {
                let (found, missing) = read_all(&e.store, chunk.to_vec());
                reads.push(Done::Read {
                    peer: *p,
                    epoch,
                    found,
                    missing,
                    unread: Vec::new(),
                });
            }
        }
        for r in reads {
            e.on_done(r);
        }
        assert_eq!(e.serving, 0, "sending does not hold a read slot");
        check_reading(&e);
        assert!(e.reading.is_empty());
        for p in &stuck {
            assert_eq!(e.peers[p].serve_tasks, SERVE_TASKS_PER_PEER);
            assert!(e.peers[p].in_serve.is_empty());
        }
        // Another peer asks and is served at once.
        let other = PeerId::random();
        connected(&mut e, other);
        e.on_wantlist(other, wants(&leaves(tree, 1)));
        e.start_serving();
        assert_eq!(e.peers[&other].serve_tasks, 1);
        // The stuck peers get no more tasks while theirs wait.
        e.on_wantlist(stuck[0], wants(&leaves(tree, 40)));
        e.start_serving();
        assert_eq!(e.peers[&stuck[0]].serve_tasks, SERVE_TASKS_PER_PEER);
        cancel.cancel();
    }

    /// A cancel that comes while its block is being read keeps the block from being sent, and
    /// one of a block we lack keeps it from being parked (review: it was parked anyway, held
    /// against the peer's limit and sent later unasked).
    #[tokio::test]
    async fn a_cancel_during_the_read_is_not_lost() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 2, 3);
        let absent = *Block::data_block(Bytes::from_static(b"absent")).cid();
        let peer = PeerId::random();
        connected(&mut e, peer);
        let asked = vec![
            BlockAddress::Leaf { tree, index: 0 },
            BlockAddress::Block(absent),
        ];
        e.on_wantlist(peer, wants(&asked));
        e.start_serving();
        let epoch = e.peers[&peer].epoch;
        let cancels: Vec<WantEntry> = asked.iter().map(|a| WantEntry::cancel(*a)).collect();
        e.on_wantlist(peer, cancels);
        let (found, missing) = read_all(&e.store, asked.clone());
        assert_eq!((found.len(), missing.len()), (1, 1));
        e.on_done(Done::Read {
            peer,
            epoch,
            found,
            missing,
            unread: Vec::new(),
        });
        let st = &e.peers[&peer];
        assert!(st.parked.is_empty() && e.parked.is_empty(), "not parked");
        assert!(st.in_serve.is_empty() && st.wanted.is_empty());
        check_reading(&e);
        assert!(e.reading.is_empty());
        assert_eq!(st.serve_tasks, 0, "nothing left to send");
        cancel.cancel();
    }

    /// A request that waits [`REQUEST_TIMEOUT`] at a peer that keeps delivering others is moved
    /// (cancelled there, asked of another holder), and the peer is not taken for silent: its
    /// other requests stay.
    #[tokio::test]
    async fn a_request_lost_at_a_busy_peer_is_moved() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (busy, other) = (PeerId::random(), PeerId::random());
        connected(&mut e, busy);
        let block = |n: u8| BlockAddress::Block(*Block::data_block(Bytes::from(vec![n; 3])).cid());
        let (lost, fine) = (block(1), block(2));
        for a in [lost, fine] {
            said_has(&mut e, busy, a);
            let (tx, rx) = oneshot::channel();
            std::mem::forget(rx); // a requester that stays
            e.add_want(a, None, tx, Instant::now());
        }
        e.assign(Instant::now());
        let now = Instant::now() + REQUEST_TIMEOUT + TICK;
        if let Some(st) = e.peers.get_mut(&busy) {
            // `lost` was asked long ago; `fine` just now, and the peer just delivered.
            st.outstanding.insert(
                lost,
                Asked {
                    at: Instant::now(),
                    since: Instant::now(),
                    ahead: 0,
                },
            );
            st.outstanding.insert(
                fine,
                Asked {
                    at: now,
                    since: now,
                    ahead: 1,
                },
            );
            st.owed_since = Some(now);
            st.outbox_wants.clear();
        }
        connected(&mut e, other);
        said_has(&mut e, other, lost);
        e.on_tick(now);
        let st = &e.peers[&busy];
        assert!(!st.outstanding.contains_key(&lost) && st.outstanding.contains_key(&fine));
        assert!(st.outbox_wants.contains(&WantEntry::cancel(lost)));
        assert_eq!(e.stats.timeouts, 1);
        e.assign(now);
        assert_eq!(
            e.pending[&lost].requested_from,
            Some(other),
            "asked elsewhere"
        );
        assert_eq!(e.pending[&fine].requested_from, Some(busy));
        cancel.cancel();
    }

    /// Addresses only a busy holder has do not keep an idle holder from being asked for what
    /// it has, however many of them are queued first (review: `assign` gave up after 257 of
    /// them, so a second download from another peer waited behind the first one's queue).
    /// A peer that had nothing to take is asked again once it says it has something.
    #[tokio::test]
    async fn wants_for_a_busy_holder_do_not_hold_up_an_idle_one() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (busy, idle) = (PeerId::random(), PeerId::random());
        connected(&mut e, busy);
        connected(&mut e, idle);
        let tree = |n: u8| *Block::data_block(Bytes::from(vec![n; 5])).cid();
        let first = leaves(tree(1), 4 * MAX_OUTSTANDING_PER_PEER as u64);
        let second = leaves(tree(2), 8);
        let mut keep = Vec::new();
        for (holder, addrs) in [(busy, &first), (idle, &second)] {
            for a in addrs {
                said_has(&mut e, holder, *a);
                let (tx, rx) = oneshot::channel();
                keep.push(rx);
                e.add_want(*a, Some(addrs.len() as u64), tx, Instant::now());
            }
        }
        e.assign(Instant::now());
        let limit = e.peers[&busy].pace.limit();
        assert_eq!(
            e.peers[&busy].outstanding.len(),
            limit,
            "the busy one is full"
        );
        for a in &second {
            assert_eq!(e.pending[a].requested_from, Some(idle), "asked at once");
        }
        let waiting = first.iter().filter(|a| e.pending[*a].queued).count();
        assert_eq!(waiting, first.len() - limit, "the rest waits, in the queue");
        // The idle one has room and nothing to take; told of one more, it gets it.
        assert!(e.peers[&idle].nothing_ready);
        let more = BlockAddress::Leaf {
            tree: tree(3),
            index: 0,
        };
        let (tx, rx) = oneshot::channel();
        keep.push(rx);
        e.add_want(more, Some(1), tx, Instant::now());
        said_has(&mut e, idle, more);
        e.make_ready(more);
        e.assign(Instant::now());
        assert_eq!(e.pending[&more].requested_from, Some(idle));
        // The busy one's queue kept its order: its oldest waiting address is still first.
        assert_eq!(e.ready.front(), Some(&first[limit]));
        cancel.cancel();
    }

    /// A holder whose proof checks out only for a tree of another size than the manifest's
    /// (a forged count: the tree binds it only through the odd nodes on the leaf's path, so a
    /// peer can make one that checks out) is neither penalised nor believed: the leaf is asked
    /// of another holder, and the download goes on (review: the peer used to fail the download
    /// as `ManifestMismatch` at no cost to itself).
    #[tokio::test]
    async fn a_forged_tree_size_in_a_proof_does_not_fail_the_download() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 3, 7);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let (liar, honest) = (PeerId::random(), PeerId::random());
        connected(&mut e, liar);
        said_has(&mut e, liar, address);
        let (tx, mut rx) = oneshot::channel();
        e.add_want(address, Some(3), tx, Instant::now());
        e.assign(Instant::now());
        assert_eq!(e.pending[&address].requested_from, Some(liar));
        connected(&mut e, honest);
        said_has(&mut e, honest, address);
        // The liar's answer: the honest block and path, with 4 leaves for 3.
        let forged = forged_leaf(&e, tree);
        let proof = forged.proof.clone().unwrap();
        assert!(
            VerifiedLeaf::verify(tree, 0, 4, forged.block.clone(), proof).is_ok(),
            "the forged count checks out"
        );
        e.on_delivery(liar, forged, Instant::now());
        assert!(e.pending.contains_key(&address), "still wanted");
        assert!(rx.try_recv().is_err(), "no answer yet");
        assert_eq!(e.reports_in_flight, 0, "nobody penalised");
        e.assign(Instant::now());
        assert_eq!(e.pending[&address].requested_from, Some(honest));
        cancel.cancel();
    }

    /// A holder shunned for a leaf (its proof was for another tree size) does not count as a
    /// holder when the want is asked about again: the other peers are queried (review: it kept
    /// the want "ready" for nobody, and an honest peer was never asked).
    #[tokio::test]
    async fn a_shunned_holder_does_not_keep_others_from_being_asked() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 3, 8);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let (liar, other) = (PeerId::random(), PeerId::random());
        connected(&mut e, liar);
        connected(&mut e, other);
        said_has(&mut e, liar, address);
        let (tx, _rx) = oneshot::channel();
        let t0 = Instant::now();
        e.add_want(address, Some(3), tx, t0);
        e.assign(t0);
        e.announce(); // the first query goes out
        e.on_delivery(liar, forged_leaf(&e, tree), t0);
        e.assign(t0);
        for st in e.peers.values_mut() {
            st.outbox_wants.clear();
        }
        e.on_tick(t0 + REQUERY_INTERVAL + TICK);
        e.announce();
        assert!(
            e.peers[&other].outbox_wants.contains(&query(address)),
            "the other peer is asked who has it"
        );
        assert!(e.pending.contains_key(&address));
        cancel.cancel();
    }

    /// A newly connected peer that said it has `address`.
    fn holder_of(e: &mut Engine, address: BlockAddress) -> PeerId {
        let holder = PeerId::random();
        connected(e, holder);
        said_has(e, holder, address);
        holder
    }

    /// Leaf `index` of `tree` as an honest holder sends it: with its proof for the tree's size.
    fn honest_leaf(e: &Engine, tree: Cid, index: u64) -> Delivery {
        let (block, proof) = e.store.get_leaf(&tree, index).unwrap().unwrap();
        Delivery {
            block,
            address: BlockAddress::Leaf { tree, index },
            proof: Some(proof),
        }
    }

    /// Writes everything queued for the store (without waiting for a batch to fill), and takes
    /// in the results.
    async fn write_queued(e: &mut Engine) {
        e.start_store(Instant::now() + 2 * STORE_LINGER);
        while e.storing > 0 {
            let written = tokio::time::timeout(Duration::from_secs(10), e.tasks.join_next())
                .await
                .expect("the write did not end")
                .expect("a task")
                .expect("the task failed");
            e.on_done(written);
        }
    }

    /// Verified blocks waiting for the disk stop new requests once their bytes reach
    /// `MAX_UNSTORED_BYTES`, however few they are, and requests start again once they are
    /// written (review: only their count was bounded, so blocks of 8 MiB could hold 8 GiB).
    #[tokio::test]
    async fn unstored_bytes_hold_back_new_requests() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 1, 12);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let holder = holder_of(&mut e, address);
        // Blocks sharing one buffer (the memory is the test's, the count is the engine's).
        const BIG: usize = 8 * 1024 * 1024;
        let data = Bytes::from(vec![0u8; BIG]);
        let t0 = Instant::now();
        let n = MAX_UNSTORED_BYTES / BIG;
        assert!(n < MAX_UNSTORED_BLOCKS);
        for i in 0..n {
            let cid = *Block::data_block(Bytes::from(i.to_le_bytes().to_vec())).cid();
            let block = Block::from_parts_unchecked(cid, data.clone());
            e.queue_store(Verified::Block(block), t0);
        }
        let (tx, _rx) = oneshot::channel();
        e.add_want(address, Some(1), tx, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, None, "held back");
        write_queued(&mut e).await;
        assert_eq!(e.unstored_bytes, 0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        cancel.cancel();
    }

    /// A leaf wanted for a made-up manifest (4 leaves) and, after it, for the honest one (3
    /// leaves): the honest holder's proof answers the honest requester at once, and the other
    /// wants it again on its own once the leaf is stored (review: the shared want was checked
    /// against the first requester's size only, so the honest holder was shunned and the
    /// honest download failed as `ManifestMismatch`).
    #[tokio::test]
    async fn a_leaf_wanted_under_two_tree_sizes_answers_each_with_its_own() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 3, 9);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let holder = holder_of(&mut e, address);
        let (made_up, mut made_up_rx) = oneshot::channel();
        let (honest, mut honest_rx) = oneshot::channel();
        let t0 = Instant::now();
        e.add_want(address, Some(4), made_up, t0);
        e.add_want(address, Some(3), honest, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        e.on_delivery(holder, honest_leaf(&e, tree, 0), t0);
        let got = honest_rx
            .try_recv()
            .expect("the honest requester is answered");
        assert_eq!(
            got.unwrap().cid(),
            e.store.get_leaf(&tree, 0).unwrap().unwrap().0.cid()
        );
        assert!(made_up_rx.try_recv().is_err(), "not for the made-up size");
        assert_eq!(e.reports_in_flight, 0, "nobody penalised");
        write_queued(&mut e).await;
        let again = &e.pending[&address];
        assert_eq!(again.nleaves, Some(4), "wanted again for its own size");
        assert_eq!(again.waiters.len(), 1);
        assert!(!again.storing);
        assert!(made_up_rx.try_recv().is_err());
        // The same holder's proof still checks out only for 3 leaves: shunned for this one.
        said_has(&mut e, holder, address);
        e.make_ready(address);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        e.on_delivery(holder, honest_leaf(&e, tree, 0), t0);
        assert!(e.pending[&address].shunned.contains(&holder));
        assert!(made_up_rx.try_recv().is_err());
        cancel.cancel();
    }

    /// The same with the honest requester first: a forged size matching the made-up manifest's
    /// answers only that one, and the honest requester still gets the leaf from an honest
    /// holder, against its own size.
    #[tokio::test]
    async fn a_forged_size_answers_only_the_requester_of_that_size() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 3, 10);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let (liar, holder) = (PeerId::random(), PeerId::random());
        connected(&mut e, liar);
        said_has(&mut e, liar, address);
        let (honest, mut honest_rx) = oneshot::channel();
        let (made_up, mut made_up_rx) = oneshot::channel();
        let t0 = Instant::now();
        e.add_want(address, Some(3), honest, t0);
        e.add_want(address, Some(4), made_up, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(liar));
        e.on_delivery(liar, forged_leaf(&e, tree), t0);
        assert!(
            made_up_rx.try_recv().is_ok(),
            "the forged size answers its requester"
        );
        assert!(honest_rx.try_recv().is_err(), "but not the honest one");
        write_queued(&mut e).await;
        assert_eq!(e.pending[&address].nleaves, Some(3));
        connected(&mut e, holder);
        said_has(&mut e, holder, address);
        e.make_ready(address);
        e.assign(t0);
        let asked = e.pending[&address].requested_from;
        let from = asked.expect("asked again");
        let leaf = if from == holder {
            honest_leaf(&e, tree, 0)
        } else {
            forged_leaf(&e, tree)
        };
        e.on_delivery(from, leaf, t0);
        if from == liar {
            // Its forged size is another size than this want's now: shunned, and the honest
            // holder asked.
            e.assign(t0);
            assert_eq!(e.pending[&address].requested_from, Some(holder));
            e.on_delivery(holder, honest_leaf(&e, tree, 0), t0);
        }
        assert!(honest_rx.try_recv().unwrap().is_ok());
        cancel.cancel();
    }

    /// A holder shunned because its proof was for another size than the want's is asked again
    /// when a requester of its size joins the want (without waiting for the want to fail).
    #[tokio::test]
    async fn a_requester_of_a_shunned_holders_size_brings_it_back() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 3, 11);
        let address = BlockAddress::Leaf { tree, index: 0 };
        let holder = holder_of(&mut e, address);
        let (made_up, _made_up_rx) = oneshot::channel();
        let t0 = Instant::now();
        e.add_want(address, Some(4), made_up, t0);
        e.assign(t0);
        e.on_delivery(holder, honest_leaf(&e, tree, 0), t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, None, "shunned");
        let (honest, mut honest_rx) = oneshot::channel();
        e.add_want(address, Some(3), honest, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        e.on_delivery(holder, honest_leaf(&e, tree, 0), t0);
        assert!(honest_rx.try_recv().unwrap().is_ok());
        cancel.cancel();
    }

    /// `Engine::reading` counts, for each address, the peers whose `in_serve` holds it.
    fn check_reading(e: &Engine) {
        let mut counted: HashMap<BlockAddress, usize> = HashMap::new();
        for st in e.peers.values() {
            for a in st.in_serve.keys() {
                *counted.entry(*a).or_default() += 1;
            }
        }
        assert_eq!(e.reading, counted);
    }

    /// A block stored while a serving task reads it for a peer (from before it was stored) is
    /// sent to that peer, not parked for good (review).
    #[tokio::test]
    async fn a_block_stored_while_read_for_a_peer_is_sent_not_parked() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let address = BlockAddress::Block(*Block::data_block(Bytes::from_static(b"late")).cid());
        let peer = PeerId::random();
        connected(&mut e, peer);
        e.on_wantlist(peer, wants(&[address]));
        e.start_serving();
        let epoch = e.peers[&peer].epoch;
        assert_eq!(e.reading.get(&address), Some(&1));
        // Stored now; the read had found nothing.
        e.unpark(address);
        e.on_done(Done::Read {
            peer,
            epoch,
            found: Vec::new(),
            missing: vec![address],
            unread: Vec::new(),
        });
        check_reading(&e);
        let st = &e.peers[&peer];
        assert!(st.wanted.contains(&address), "queued to be sent");
        assert!(!st.parked.contains(&address) && !e.parked.contains_key(&address));
        // Read again, and the peer leaves meanwhile: nothing is counted as read any more.
        e.start_serving();
        let other = PeerId::random();
        connected(&mut e, other);
        e.on_wantlist(other, wants(&[address]));
        e.start_serving();
        assert_eq!(e.reading.get(&address), Some(&2));
        e.on_net(NetEvent::PeerDisconnected { peer });
        check_reading(&e);
        assert_eq!(e.reading.get(&address), Some(&1));
        cancel.cancel();
    }

    /// A holder that never sends a block is asked for it twice at most, and the want then fails
    /// as not found, whichever way its requests time out: lost among others it delivers
    /// ([`REQUEST_TIMEOUT`]; review: it was asked every ~22 s for good, and the want never
    /// ended), or as its only request, so that it goes silent ([`ACTIVITY_TIMEOUT`]; found by
    /// review: the silent path did not count, and the download never ended).
    #[tokio::test]
    async fn a_holder_that_never_sends_a_block_is_asked_twice_at_most() {
        for delivers_others in [true, false] {
            let cancel = CancellationToken::new();
            let mut e = engine(&cancel).await;
            let holder = PeerId::random();
            connected(&mut e, holder);
            let address =
                BlockAddress::Block(*Block::data_block(Bytes::from_static(b"kept")).cid());
            said_has(&mut e, holder, address);
            let (tx, mut rx) = oneshot::channel();
            let mut now = Instant::now();
            e.add_want(address, None, tx, now);
            for round in 0..2 {
                e.assign(now);
                assert_eq!(
                    e.pending[&address].requested_from,
                    Some(holder),
                    "round {round}, delivers others: {delivers_others}"
                );
                if delivers_others {
                    now += REQUEST_TIMEOUT + TICK;
                    if let Some(st) = e.peers.get_mut(&holder) {
                        st.owed_since = Some(now); // it delivers other blocks meanwhile
                    }
                } else {
                    now += ACTIVITY_TIMEOUT + TICK;
                }
                e.on_tick(now);
                e.assign(now); // as the engine does after every tick
                assert_eq!(e.pending[&address].requested_from, None, "round {round}");
                // It says it has it again, and the want is asked about again.
                said_has(&mut e, holder, address);
                now += REQUERY_INTERVAL + TICK;
                e.on_tick(now);
            }
            e.assign(now);
            assert_eq!(
                e.pending[&address].requested_from, None,
                "not asked a third time (delivers others: {delivers_others})"
            );
            // It keeps saying it has the block; nobody else has it: the want fails.
            let mut failed_at = None;
            for _ in 0..(2 * NO_HOLDER_TIMEOUT.as_millis() / TICK.as_millis()) {
                now += TICK;
                said_has(&mut e, holder, address);
                e.on_tick(now);
                e.assign(now);
                assert_eq!(e.pending.get(&address).and_then(|p| p.requested_from), None);
                if let Ok(got) = rx.try_recv() {
                    failed_at = Some(got);
                    break;
                }
            }
            assert!(
                matches!(failed_at, Some(Err(FetchError::NotFound))),
                "{failed_at:?} (delivers others: {delivers_others})"
            );
            cancel.cancel();
        }
    }

    /// A request asked again after each lost connection still times out [`REQUEST_TIMEOUT`]
    /// after it was first asked (found by review: a peer that withheld one block, delivered
    /// others and closed a second connection every few seconds restarted the timeout each time,
    /// and the block never moved).
    #[tokio::test]
    async fn a_request_asked_again_after_lost_connections_still_times_out() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let holder = PeerId::random();
        connected(&mut e, holder);
        let address = BlockAddress::Block(*Block::data_block(Bytes::from_static(b"held")).cid());
        said_has(&mut e, holder, address);
        let (tx, _rx) = oneshot::channel();
        let t0 = Instant::now();
        e.add_want(address, None, tx, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        let mut now = t0;
        let mut reasked = 0;
        while now < t0 + REQUEST_TIMEOUT + LOST_CONNECTION_GRACE + 2 * TICK {
            let Some(st) = e.peers.get_mut(&holder) else {
                panic!("the holder left");
            };
            if !st.outstanding.contains_key(&address) {
                break;
            }
            // A second connection closes; the request is asked again after the grace, while
            // the peer keeps delivering other blocks.
            st.lost_at = Some(now);
            now += LOST_CONNECTION_GRACE + TICK;
            st.owed_since = Some(now);
            st.outbox_wants.clear();
            e.on_tick(now);
            if e.peers[&holder]
                .outbox_wants
                .contains(&WantEntry::block(address))
            {
                reasked += 1;
            }
        }
        assert!(reasked > 1, "the request was not asked again");
        assert!(
            !e.peers[&holder].outstanding.contains_key(&address),
            "still waiting at the holder {:?} after it was first asked",
            now - t0
        );
        assert_eq!(e.stats.timeouts, 1);
        cancel.cancel();
    }

    /// `slow` is asked for a block it said it has, the request is hedged to `fast`, and `fast`
    /// delivers first (so `slow` gets a cancel). `slow_delivered` says whether `slow` had just
    /// delivered another block. Returns the block and the time of the ask.
    fn hedged_away(
        e: &mut Engine,
        slow: PeerId,
        fast: PeerId,
        data: &'static [u8],
        slow_delivered: bool,
    ) -> (Block, Instant) {
        connected(e, slow);
        connected(e, fast);
        let block = Block::data_block(Bytes::from_static(data));
        let address = BlockAddress::Block(*block.cid());
        said_has(e, slow, address);
        let (tx, rx) = oneshot::channel();
        std::mem::forget(rx); // a requester that stays
        let t0 = Instant::now();
        e.add_want(address, None, tx, t0);
        e.assign(t0);
        assert_eq!(e.pending[&address].requested_from, Some(slow));
        if let Some(p) = e.pending.get_mut(&address) {
            p.hedged = Some(fast);
        }
        if let Some(st) = e.peers.get_mut(&fast) {
            st.ask(address, t0);
        }
        if slow_delivered && let Some(st) = e.peers.get_mut(&slow) {
            st.last_delivery = Some(t0);
        }
        let delivery = Delivery {
            block: block.clone(),
            address,
            proof: None,
        };
        e.on_delivery(fast, delivery, t0);
        assert!(
            e.peers[&slow]
                .outbox_wants
                .contains(&WantEntry::cancel(address))
        );
        (block, t0)
    }

    /// A peer whose last request was answered first by another holder (a hedge) and that obeys
    /// our cancel (it sends no late copy) is not taken for silent when it has been delivering
    /// (found by review: it was penalised 10 s later); one that claims blocks and has delivered
    /// none still is: the cancel does not clear what it owes.
    #[tokio::test]
    async fn a_hedge_clears_what_a_peer_owes_only_when_it_delivers() {
        for (delivered, penalised) in [(true, 0), (false, 1)] {
            let cancel = CancellationToken::new();
            let mut e = engine(&cancel).await;
            let (slow, fast) = (PeerId::random(), PeerId::random());
            let (_, t0) = hedged_away(&mut e, slow, fast, b"hedged away", delivered);
            e.on_tick(t0 + ACTIVITY_TIMEOUT + TICK);
            assert_eq!(
                e.reports_in_flight, penalised,
                "delivered before: {delivered}"
            );
            cancel.cancel();
        }
    }

    /// A peer whose request was answered first by another holder (a hedge), and whose own copy
    /// arrives late, is not taken for silent (review: it was penalised 10 s later).
    #[tokio::test]
    async fn a_peer_whose_late_copy_arrives_is_not_silent() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (slow, fast) = (PeerId::random(), PeerId::random());
        let (block, t0) = hedged_away(&mut e, slow, fast, b"hedged", false);
        let address = BlockAddress::Block(*block.cid());
        let delivery = || Delivery {
            block: block.clone(),
            address,
            proof: None,
        };
        // The slow one's copy comes late.
        e.on_delivery(slow, delivery(), t0);
        e.on_tick(t0 + ACTIVITY_TIMEOUT + TICK);
        assert_eq!(e.reports_in_flight, 0, "nobody penalised");
        cancel.cancel();
    }

    /// A block delivered under a manifest CID that does not decode as a manifest (anyone can
    /// make one and serve it) is not stored, its requester learns it is no manifest (the API's
    /// 404), and it is no store failure (found by review: the API answered 500, and the store
    /// failure was counted and logged).
    #[tokio::test]
    async fn a_block_under_a_manifest_cid_that_is_no_manifest_is_not_a_store_failure() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let block = Block::new(
            cairn_core::Codec::Manifest,
            Bytes::from_static(b"no manifest"),
        );
        let cid = *block.cid();
        let address = BlockAddress::Block(cid);
        let peer = PeerId::random();
        connected(&mut e, peer);
        said_has(&mut e, peer, address);
        let (tx, mut rx) = oneshot::channel();
        let now = Instant::now();
        e.add_want(address, None, tx, now);
        e.assign(now);
        assert_eq!(e.pending[&address].requested_from, Some(peer));
        let delivery = Delivery {
            block,
            address,
            proof: None,
        };
        e.on_delivery(peer, delivery, now);
        e.start_store(now);
        let written = tokio::time::timeout(Duration::from_secs(10), e.tasks.join_next())
            .await
            .expect("the write did not end")
            .expect("a task")
            .expect("the task failed");
        e.on_done(written);
        let got = rx.try_recv().expect("answered");
        let Err(error) = got else {
            panic!("stored as a manifest");
        };
        assert!(matches!(error, FetchError::NotAManifest(_)), "{error:?}");
        assert!(matches!(
            crate::NodeError::from(error),
            crate::NodeError::NotAManifest
        ));
        assert_eq!(e.stats.store_failures, 0);
        assert_eq!(e.reports_in_flight, 0, "the peer sent what was asked");
        assert!(!e.store.has_block(&cid).unwrap());
        cancel.cancel();
    }

    /// A flush waits for the blocks queued before it, not for those queued after it (found by
    /// review: it waited until nothing at all was queued or being written, so a download that
    /// finished while another kept bringing blocks in did not end until the other paused).
    #[tokio::test]
    async fn a_flush_waits_only_for_the_blocks_queued_before_it() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let block = |n: u8| Verified::Block(Block::data_block(Bytes::from(vec![n; 10])));
        let now = Instant::now();
        e.queue_store(block(1), now);
        let (done, mut first) = oneshot::channel();
        e.on_command(Command::Flush { done });
        assert!(first.try_recv().is_err(), "block 1 is not written yet");
        e.start_store(now);
        assert_eq!(e.storing, 1);
        // Another download's blocks come in while block 1 is written, and after.
        e.queue_store(block(2), now);
        let written = tokio::time::timeout(Duration::from_secs(10), e.tasks.join_next())
            .await
            .expect("the write did not end")
            .expect("a task")
            .expect("the task failed");
        e.queue_store(block(3), now);
        e.on_done(written);
        assert_eq!(e.to_store.len(), 2, "blocks 2 and 3 are still queued");
        assert!(
            first.try_recv().is_ok(),
            "the flush waited for later blocks"
        );
        // A flush now waits for blocks 2 and 3, and no longer.
        let (done, mut second) = oneshot::channel();
        e.on_command(Command::Flush { done });
        assert!(second.try_recv().is_err());
        e.start_store(now);
        while e.storing > 0 {
            let written = tokio::time::timeout(Duration::from_secs(10), e.tasks.join_next())
                .await
                .expect("the write did not end")
                .expect("a task")
                .expect("the task failed");
            e.on_done(written);
        }
        assert!(second.try_recv().is_ok());
        // Nothing queued: a flush is answered at once.
        let (done, mut third) = oneshot::channel();
        e.on_command(Command::Flush { done });
        assert!(third.try_recv().is_ok());
        cancel.cancel();
    }

    /// Blocks whose write failed on a connection are queued again for a peer that stays.
    #[tokio::test]
    async fn blocks_a_failed_write_lost_are_sent_again() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let (_, tree) = dataset(&e.store, 2, 9);
        let peer = PeerId::random();
        connected(&mut e, peer);
        e.on_wantlist(peer, wants(&leaves(tree, 2)));
        e.start_serving();
        let epoch = e.peers[&peer].epoch;
        let (found, missing) = read_all(&e.store, leaves(tree, 2));
        e.on_done(Done::Read {
            peer,
            epoch,
            found,
            missing,
            unread: Vec::new(),
        });
        e.on_done(Done::Sent {
            peer,
            epoch,
            sent: 0,
            unsent: leaves(tree, 2),
        });
        let st = &e.peers[&peer];
        assert_eq!(st.serve_tasks, 0);
        assert_eq!(st.wanted.len(), 2, "queued again");
        cancel.cancel();
    }

    /// Delivery messages hold at most [`MAX_DELIVERY_BYTES`] of blocks (a larger block alone),
    /// in order (review: 20 large blocks made frames other cairn nodes refuse).
    #[test]
    fn delivery_messages_are_bounded_in_bytes() {
        let d = |n: usize, seed: u8| {
            let block = Block::data_block(Bytes::from(vec![seed; n]));
            Delivery {
                address: BlockAddress::Block(*block.cid()),
                block,
                proof: None,
            }
        };
        let mib = 1024 * 1024;
        let found = vec![
            d(mib, 1),
            d(2 * mib, 2),
            d(mib, 3),
            d(MAX_DELIVERY_BYTES + 1, 4),
            d(10, 5),
        ];
        let order: Vec<BlockAddress> = found.iter().map(|d| d.address).collect();
        let messages = delivery_messages(found);
        let sizes: Vec<Vec<usize>> = messages
            .iter()
            .map(|m| m.iter().map(|d| d.block.data().len()).collect())
            .collect();
        assert_eq!(
            sizes,
            vec![
                vec![mib, 2 * mib, mib],
                vec![MAX_DELIVERY_BYTES + 1],
                vec![10]
            ]
        );
        let flat: Vec<BlockAddress> = messages.iter().flatten().map(|d| d.address).collect();
        assert_eq!(flat, order);
        // 64 KiB blocks: the usual 20 per message.
        let small: Vec<Delivery> = (0..20).map(|i| d(64 * 1024, i)).collect();
        assert_eq!(delivery_messages(small).len(), 1);
    }

    /// Requests asked again after a lost connection are not queued for a peer that does not read
    /// what we sent before beyond [`MAX_QUEUED_WANTS`] (review: each lost connection added them
    /// again).
    #[tokio::test]
    async fn lost_connections_do_not_grow_the_queue_of_a_peer_that_does_not_read() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let peer = PeerId::random();
        connected(&mut e, peer);
        let t0 = Instant::now();
        let filler = BlockAddress::Block(*Block::data_block(Bytes::from_static(b"f")).cid());
        if let Some(st) = e.peers.get_mut(&peer) {
            for n in 0..5u8 {
                let a = BlockAddress::Block(*Block::data_block(Bytes::from(vec![n; 2])).cid());
                st.outstanding.insert(
                    a,
                    Asked {
                        at: t0,
                        since: t0,
                        ahead: 0,
                    },
                );
            }
            st.control_in_flight = true;
            st.outbox_wants = vec![WantEntry::have(filler); MAX_QUEUED_WANTS];
        }
        for round in 1..=3u32 {
            if let Some(st) = e.peers.get_mut(&peer) {
                st.lost_at = Some(t0);
                st.owed_since = Some(t0 + round * LOST_CONNECTION_GRACE * 2);
            }
            e.on_tick(t0 + round * LOST_CONNECTION_GRACE * 2);
        }
        assert_eq!(e.peers[&peer].outbox_wants.len(), MAX_QUEUED_WANTS);
        cancel.cancel();
    }

    /// A want that loses its holder waits [`NO_HOLDER_TIMEOUT`] for another from then, not
    /// from when it was made (review: a want older than the timeout failed at the next tick).
    #[tokio::test]
    async fn a_want_that_loses_its_holder_waits_again_for_another() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let holder = PeerId::random();
        connected(&mut e, holder);
        let address = BlockAddress::Block(*Block::data_block(Bytes::from_static(b"x")).cid());
        said_has(&mut e, holder, address);
        // Made long ago, and asked of the holder.
        let (tx, mut rx) = oneshot::channel();
        let long_ago = Instant::now() - 2 * NO_HOLDER_TIMEOUT;
        e.add_want(address, None, tx, long_ago);
        e.assign(Instant::now());
        assert_eq!(e.pending[&address].requested_from, Some(holder));
        // The holder goes; nobody else has it.
        e.on_net(NetEvent::PeerDisconnected { peer: holder });
        e.assign(Instant::now());
        e.on_tick(Instant::now());
        assert!(e.pending.contains_key(&address), "still wanted");
        assert!(
            e.pending[&address].requested_from.is_none() && !e.pending[&address].queued,
            "waiting for a holder, not queued for one"
        );
        assert!(rx.try_recv().is_err(), "no answer yet");
        cancel.cancel();
    }

    /// A want that waited in the ready queue longer than [`NO_HOLDER_TIMEOUT`] and then lost
    /// its only holder waits the timeout for another from then (review: the tick that took it
    /// out of the queue failed it at once, as if it had never had a holder).
    #[tokio::test]
    async fn a_queued_want_that_loses_its_holder_waits_again_for_another() {
        let cancel = CancellationToken::new();
        let mut e = engine(&cancel).await;
        let holder = PeerId::random();
        connected(&mut e, holder);
        let address = BlockAddress::Block(*Block::data_block(Bytes::from_static(b"q")).cid());
        said_has(&mut e, holder, address);
        let (tx, mut rx) = oneshot::channel();
        e.add_want(address, None, tx, Instant::now() - 2 * NO_HOLDER_TIMEOUT);
        assert!(e.pending[&address].queued, "queued for its holder");
        e.on_net(NetEvent::PeerDisconnected { peer: holder });
        e.on_tick(Instant::now());
        assert!(e.pending.contains_key(&address), "still wanted");
        assert!(rx.try_recv().is_err(), "no answer yet");
        assert!(!e.pending[&address].queued);
        cancel.cancel();
    }

    /// Verified blocks wait for a batch to fill, and no longer than they must: a full batch, a
    /// block that has waited [`STORE_LINGER`], a flush, or nothing more on its way each start
    /// the write; without any of these the blocks wait.
    #[test]
    fn store_writes_wait_for_a_batch_and_no_longer() {
        let short = STORE_LINGER / 2;
        // A few blocks, more coming, nobody waiting: gather more.
        assert!(!store_due(1, Duration::ZERO, false, 100));
        assert!(!store_due(STORE_MIN_BATCH_BLOCKS - 1, short, false, 1));
        // Each condition alone starts the write.
        assert!(store_due(
            STORE_MIN_BATCH_BLOCKS,
            Duration::ZERO,
            false,
            100
        ));
        assert!(store_due(1, STORE_LINGER, false, 100));
        assert!(store_due(1, Duration::ZERO, true, 100));
        assert!(store_due(1, Duration::ZERO, false, 0));
    }

    /// Block requests are sent before the other entries queued with them, and nothing queued
    /// before a request for the same block is sent after it: a query or cancel that came
    /// first is dropped; one that came after the request stays after it.
    #[test]
    fn queued_wants_never_follow_a_request_they_preceded() {
        let cid = |n: u8| *Block::data_block(Bytes::from(vec![n; 4])).cid();
        let (a, b, c) = (
            BlockAddress::Block(cid(1)),
            BlockAddress::Block(cid(2)),
            BlockAddress::Block(cid(3)),
        );
        let queued = vec![
            WantEntry::have(a),
            WantEntry::cancel(b),
            WantEntry::have(c),
            WantEntry::block(a),
            WantEntry::block(b),
            WantEntry::cancel(a),
            WantEntry::block(c),
            WantEntry::cancel(c),
            WantEntry::block(c),
        ];
        let (blocks, others) = split_wants(queued);
        assert_eq!(
            blocks,
            [
                WantEntry::block(a),
                WantEntry::block(b),
                WantEntry::block(c),
                WantEntry::block(c)
            ]
        );
        // `cancel(a)` came after `block(a)`: it stays. Everything else preceded the last
        // request for its block.
        assert_eq!(others, [WantEntry::cancel(a)]);
        // Without requests nothing is dropped, and the order is kept.
        let plain = vec![WantEntry::have(a), WantEntry::cancel(b), WantEntry::have(c)];
        assert_eq!(split_wants(plain.clone()), (Vec::new(), plain));
    }

    /// [`read_for_serving`] without a limit on bytes: (found, missing).
    fn read_all(store: &Store, addrs: Vec<BlockAddress>) -> (Vec<Delivery>, Vec<BlockAddress>) {
        let r = read_for_serving(store, addrs, u64::MAX);
        assert!(r.unread.is_empty());
        (r.found, r.missing)
    }

    /// A serve batch mixing plain blocks and leaves of two datasets (read in runs, one store
    /// transaction per run) yields every block found, in the order asked, each with a proof
    /// for its own index and tree, and lists exactly the addresses that are not stored.
    #[test]
    fn serve_batch_reads_runs_of_leaves_in_order() {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let (m1, t1) = dataset(&store, 4, 1);
        let (_, t2) = dataset(&store, 2, 2);
        let unknown = *Block::data_block(Bytes::from_static(b"nowhere")).cid();
        let leaf = |tree, index| BlockAddress::Leaf { tree, index };
        let asked = vec![
            leaf(t1, 3),
            leaf(t1, 0),
            BlockAddress::Block(m1),
            leaf(t2, 1),
            leaf(t2, 7),
            leaf(t1, 1),
            BlockAddress::Block(unknown),
            leaf(unknown, 0),
        ];
        let (found, missing) = read_all(&store, asked.clone());
        let served: Vec<_> = found.iter().map(|d| d.address).collect();
        assert_eq!(served, [asked[0], asked[1], asked[2], asked[3], asked[5]]);
        assert_eq!(missing, [asked[4], asked[6], asked[7]]);
        for d in &found {
            match &d.address {
                BlockAddress::Leaf { tree, index } => {
                    let (block, proof) = store.get_leaf(tree, *index).unwrap().unwrap();
                    assert_eq!(d.block, block, "{}", d.address);
                    assert_eq!(d.proof.as_ref(), Some(&proof), "{}", d.address);
                }
                BlockAddress::Block(cid) => {
                    assert_eq!(d.block.cid(), cid);
                    assert!(d.proof.is_none());
                }
            }
        }
    }
}
