//! The node's use of the discovery DHT: announcing what it stores, and finding and dialling the
//! providers of what it downloads (codex-protocol.md §3.5–3.6, §7.7).
//!
//! * **Advertiser.** When a dataset is stored (uploaded, or downloaded in full) its manifest CID
//!   and tree CID are queued ([`ADVERTISE_QUEUE`]) and announced with `provide`, at most
//!   [`ADVERTISE_CONCURRENCY`] at a time. Every `reannounce_interval` (30 min by default, as the
//!   reference) every dataset held whole (its manifest and every leaf stored: an upload, a
//!   download that completed; not a manifest stored alone, a range, a stopped download) is
//!   announced again, because provider records expire after 24 h on the nodes that hold them.
//!   A round pages through the listed datasets [`ROUND_STEP`] at a time (never holding every
//!   manifest at once), the next step once the backlog has room for it again, so it reaches
//!   every dataset however many there are; a round still running when the next is due goes on
//!   (the next starts after it). A
//!   full queue drops the announcement (the next round repeats it) rather than make an upload
//!   wait for the DHT. The first round runs as soon as
//!   the routing table holds a node that answered (checked every [`JOIN_CHECK_INTERVAL`]), so
//!   a restarted node is findable at once rather than half an hour later; an announcement that
//!   reached nobody is tried again every [`UNTOLD_RETRY_INTERVAL`] while the table holds such a
//!   node and the dataset is still stored, at most [`ADVERTISE_QUEUE`] of them.
//! * **Provider search.** Fetching a manifest that is not local starts a provider search for it
//!   beside the block-exchange want, retried every [`EMPTY_SEARCH_RETRY`] until a provider is
//!   dialled or the want ends ([`ProviderSearch`]; after [`EMPTY_ROUNDS_FOR_NONE`] rounds that
//!   dialled nobody, a fetch whose connected peers all lack the manifest answers "not found"
//!   rather than wait out the engine's timeout); while a dataset downloads, a watcher checks every
//!   [`PROVIDER_CHECK_INTERVAL`] how many connected peers hold its blocks and, when fewer than
//!   [`MIN_HOLDERS`], searches the DHT for the tree's providers and dials them. Searches for one
//!   CID are at least [`MIN_SEARCH_INTERVAL`] apart, and each dials at most
//!   [`MAX_DIALS_PER_SEARCH`] providers. The engine announces its wants to every peer that
//!   connects, so a dialled provider starts serving without anything else to do.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use cairn_core::Cid;
use cairn_discovery::{Discovery, Spr};
use cairn_net::NetworkHandle;
use cairn_store::Store;
use futures::{StreamExt, stream::FuturesUnordered};
use parking_lot::Mutex;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::engine::EngineHandle;

/// CIDs waiting to be announced. Beyond this an announcement is dropped (the periodic round
/// repeats it).
pub const ADVERTISE_QUEUE: usize = 1024;

/// Datasets a re-announce round queues at a time (two CIDs each, half the backlog): the round
/// goes on where it stopped once the backlog has room for another step, and an upload's
/// announcement still finds room meanwhile. Checking a step's datasets are held whole is one
/// blocking call (a seek each for a dataset whose tree is kept).
pub(crate) const ROUND_STEP: usize = ADVERTISE_QUEUE / 4;

/// A round step the store could not list is tried again after this (the round keeps its
/// place; the next event of the advertiser after that retries it).
pub(crate) const ROUND_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Announcements (each a DHT lookup plus ADDPROVIDER messages) running at once.
pub const ADVERTISE_CONCURRENCY: usize = 4;

/// Default interval of the re-announce round (the reference: 30 minutes).
pub const DEFAULT_REANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Until the first round, how often the advertiser checks whether the routing table holds a
/// node yet (a node joins within a second or two of its bootstrap answering).
pub const JOIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often announcements that reached no node are tried again.
pub const UNTOLD_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// A download with fewer connected holders than this searches the DHT for more (issue 4).
pub const MIN_HOLDERS: usize = 3;

/// How often a running download checks its number of holders.
pub const PROVIDER_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Minimum time between two DHT searches for the same CID after one that found providers.
pub const MIN_SEARCH_INTERVAL: Duration = Duration::from_secs(30);

/// Minimum time between two searches for the same CID after one that found none (the record
/// may not have landed yet: an uploader announces in the background).
pub const EMPTY_SEARCH_RETRY: Duration = Duration::from_secs(2);

/// A provider search counts as having come up empty (so a manifest fetch whose peers all lack
/// the block may answer "not found") after this many rounds without a provider to dial. The
/// rounds are [`EMPTY_SEARCH_RETRY`] apart, so an uploader that announces its dataset (in the
/// background) up to 10 s after the first round is still found. On loopback a search right
/// after an upload elsewhere came up empty in 3 of 6 runs and found the record 2 s later; on a
/// real DHT an announcement is a multi-hop lookup that takes seconds, may wait for a free
/// announcing slot, and a round whose datagrams were lost also comes up empty.
pub const EMPTY_ROUNDS_FOR_NONE: u32 = 6;

/// Providers dialled per search.
pub const MAX_DIALS_PER_SEARCH: usize = 8;

/// CIDs whose last search time is remembered (for [`MIN_SEARCH_INTERVAL`]); the oldest is
/// forgotten beyond this.
pub const MAX_TRACKED_SEARCHES: usize = 4096;

/// The node's DHT side.
#[derive(Debug, Clone)]
pub(crate) struct Discoverer {
    dht: Discovery,
    net: NetworkHandle,
    announce: mpsc::Sender<Cid>,
    /// Per CID: when it was last searched and whether that found providers.
    searches: Arc<Mutex<HashMap<Cid, (Instant, bool)>>>,
}

impl Discoverer {
    /// Starts the advertiser over `dht` until `cancel`.
    pub(crate) fn spawn(
        dht: Discovery,
        net: NetworkHandle,
        store: Store,
        reannounce: Duration,
        cancel: CancellationToken,
    ) -> Discoverer {
        let (tx, rx) = mpsc::channel(ADVERTISE_QUEUE);
        tokio::spawn(advertise(dht.clone(), store, rx, reannounce, cancel));
        net.dht_link().connect(Arc::new(DhtRecords {
            dht: dht.clone(),
            runtime: tokio::runtime::Handle::current(),
        }));
        Discoverer {
            dht,
            net,
            announce: tx,
            searches: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The DHT handle.
    pub(crate) fn dht(&self) -> &Discovery {
        &self.dht
    }

    /// Whether the DHT holds a node that ever answered us.
    pub(crate) fn joined(&self) -> bool {
        joined_dht(&self.dht)
    }

    /// Queues the announcement of a stored dataset (its manifest and tree CIDs).
    pub(crate) fn announce(&self, manifest: Cid, tree: Cid) {
        for cid in [manifest, tree] {
            if self.announce.try_send(cid).is_err() {
                debug!(%cid, "announce queue full; the next round announces it");
            }
        }
    }

    /// Searches the DHT for providers of `cid` and dials those not connected; returns how many
    /// were dialled successfully. Does nothing if `cid` was searched less than
    /// [`MIN_SEARCH_INTERVAL`] ago with success, or [`EMPTY_SEARCH_RETRY`] ago without.
    pub(crate) async fn search_and_dial(&self, cid: Cid) -> usize {
        {
            let now = Instant::now();
            let mut s = self.searches.lock();
            if let Some((t, found)) = s.get(&cid) {
                let gap = if *found {
                    MIN_SEARCH_INTERVAL
                } else {
                    EMPTY_SEARCH_RETRY
                };
                if now.duration_since(*t) < gap {
                    return 0;
                }
            }
            if s.len() >= MAX_TRACKED_SEARCHES
                && let Some(oldest) = s.iter().min_by_key(|(_, (t, _))| *t).map(|(c, _)| *c)
            {
                s.remove(&oldest);
            }
            s.insert(cid, (now, false));
        }
        let providers = self.dht.find_providers(&cid.to_bytes()).await;
        if !providers.is_empty()
            && let Some(entry) = self.searches.lock().get_mut(&cid)
        {
            entry.1 = true;
        }
        let connected: Vec<_> = match self.net.peers().await {
            Ok(p) => p.into_iter().map(|i| i.peer).collect(),
            Err(_) => return 0,
        };
        let mut dials: FuturesUnordered<_> = providers
            .into_iter()
            .filter(|p| !connected.contains(&p.peer_id()) && !p.addrs().is_empty())
            .take(MAX_DIALS_PER_SEARCH)
            .map(|p| {
                let net = self.net.clone();
                async move {
                    let peer = p.peer_id();
                    let r = net.connect(peer, p.addrs().to_vec()).await;
                    if let Err(e) = &r {
                        debug!(%peer, error = %e, "cannot dial a provider");
                    }
                    r.is_ok()
                }
            })
            .collect();
        let mut ok = 0;
        while let Some(r) = dials.next().await {
            ok += usize::from(r);
        }
        if ok > 0 {
            info!(%cid, dialled = ok, "connected to providers found in the DHT");
        }
        ok
    }

    /// Searches for providers of `cid` until one is dialled or the returned search drops (a
    /// manifest fetch: the want itself gives up after the engine's no-holder timeout, or once
    /// every peer said it lacks the block and a search came up empty).
    pub(crate) fn search_until_found(&self, cid: Cid) -> ProviderSearch {
        let token = CancellationToken::new();
        let stop = token.clone();
        let me = self.clone();
        let empty_rounds = Arc::new(AtomicU32::new(0));
        let empty = empty_rounds.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    n = me.search_and_dial(cid) => if n > 0 { return },
                }
                empty.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(EMPTY_SEARCH_RETRY) => {}
                }
            }
        });
        ProviderSearch {
            _stop: token.drop_guard(),
            empty_rounds,
        }
    }

    /// Watches a running download of dataset `tree`: while fewer than [`MIN_HOLDERS`]
    /// connected peers hold its blocks, searches for providers. Stops when the guard drops.
    pub(crate) fn watch(&self, engine: EngineHandle, tree: Cid) -> DropGuard {
        let token = CancellationToken::new();
        let stop = token.clone();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let holders = engine.holders(tree).await.unwrap_or(0);
                if holders < MIN_HOLDERS {
                    me.search_and_dial(tree).await;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PROVIDER_CHECK_INTERVAL) => {}
                }
            }
        });
        token.drop_guard()
    }
}

/// A running provider search ([`Discoverer::search_until_found`]); stops when dropped.
pub(crate) struct ProviderSearch {
    _stop: DropGuard,
    empty_rounds: Arc<AtomicU32>,
}

impl ProviderSearch {
    /// Whether [`EMPTY_ROUNDS_FOR_NONE`] search rounds have finished without dialling a
    /// provider (none in the DHT, none reachable, or all already connected).
    pub(crate) fn came_up_empty(&self) -> bool {
        self.empty_rounds.load(Ordering::Relaxed) >= EMPTY_ROUNDS_FOR_NONE
    }
}

/// The DHT's side of the peer manager's link (`cairn_net::DhtLink`): our record goes into the
/// address lists we answer, and a record a peer sends as its own is checked (signature, same
/// peer, a UDP address) and added to the routing table. This is how a node given a bootstrap
/// node by its libp2p address alone joins the DHT.
struct DhtRecords {
    dht: Discovery,
    runtime: tokio::runtime::Handle,
}

impl cairn_net::DhtHooks for DhtRecords {
    fn local_record(&self) -> Option<Vec<u8>> {
        Some(self.dht.local_spr().encoded().to_vec())
    }

    fn needs_nodes(&self) -> bool {
        !joined_dht(&self.dht)
    }

    fn offer(&self, peer: cairn_net::PeerId, from: Option<std::net::IpAddr>, record: Vec<u8>) {
        let spr = match offered_record(&record, peer, from, |a, f| {
            self.dht.accepts_address_from(a, f)
        }) {
            Ok(spr) => spr,
            Err(why) => {
                debug!(%peer, ?from, why, "a DHT record from peer exchange is not taken");
                return;
            }
        };
        let dht = self.dht.clone();
        self.runtime.spawn(async move {
            // Only a node that answers joins the table: a record with an address nobody
            // listens on would make the DHT look joined and stop the asking.
            if let Err(e) = dht.ping(&spr).await {
                debug!(%peer, error = %e, "a DHT node learned through peer exchange did not answer");
                return;
            }
            match dht.add_node(spr).await {
                Ok(()) => debug!(%peer, "DHT node learned through peer exchange"),
                Err(e) => debug!(%peer, error = %e, "a DHT node learned through peer exchange did not answer"),
            }
        });
    }
}

/// The record `peer`, connected from `from`, sent as its own through peer exchange, if the DHT
/// should ping it: it verifies, it is `peer`'s, and its UDP address is one the DHT takes from that
/// sender (`accepts`; the rule it applies to records in NODES answers). Without the last check a
/// peer on a public address could make us ping any private or loopback address of our own
/// network, once per address list we ask it for (found by review). `Err` says why not.
fn offered_record(
    record: &[u8],
    peer: cairn_net::PeerId,
    from: Option<std::net::IpAddr>,
    accepts: impl Fn(std::net::SocketAddr, Option<std::net::IpAddr>) -> bool,
) -> Result<Spr, &'static str> {
    let spr = Spr::decode(record).map_err(|_| "does not verify")?;
    if spr.peer_id() != peer {
        return Err("not the sender's own");
    }
    let addr = spr.udp_addr().ok_or("no UDP address")?;
    if !accepts(addr, from) {
        return Err("an address not taken from this sender");
    }
    Ok(spr)
}

/// The advertiser task.
async fn advertise(
    dht: Discovery,
    store: Store,
    mut queue: mpsc::Receiver<Cid>,
    reannounce: Duration,
    cancel: CancellationToken,
) {
    let mut running: JoinSet<(Cid, usize)> = JoinSet::new();
    let mut rounds = tokio::time::interval(reannounce);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rounds.tick().await; // the first tick is immediate; later rounds are an interval apart
    let mut joined = false;
    let mut join_check = tokio::time::interval(JOIN_CHECK_INTERVAL);
    let mut retry = tokio::time::interval(UNTOLD_RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backlog: Vec<Cid> = Vec::new();
    // Announced to nobody: tried again on `retry`.
    let mut untold: Vec<Cid> = Vec::new();
    // The running re-announce round, if any.
    let mut round: Option<Round> = None;
    loop {
        // Go on with the round while the backlog has room for a step.
        while backlog.len() + 2 * ROUND_STEP <= ADVERTISE_QUEUE
            && let Some(r) = round.as_mut()
        {
            if r.retry_at.is_some_and(|t| Instant::now() < t) {
                break; // the store could not list lately: the round waits a little
            }
            let Some(step) = round_step(&store, r.after.clone()).await else {
                // The store could not list: the same step is tried again later.
                r.retry_at = Some(Instant::now() + ROUND_RETRY_DELAY);
                break;
            };
            r.retry_at = None;
            if step.looked_at < ROUND_STEP {
                round = None; // that was the last page
            } else {
                r.after = step.next;
            }
            for (manifest, tree) in step.whole {
                backlog.push(manifest);
                backlog.push(tree);
            }
        }
        // Start what fits.
        while running.len() < ADVERTISE_CONCURRENCY
            && let Some(cid) = backlog.pop()
        {
            let dht = dht.clone();
            running.spawn(async move {
                let told = dht.provide(&cid.to_bytes()).await;
                debug!(%cid, told, "announced");
                (cid, told)
            });
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((cid, 0)) = done
                    && untold.len() < ADVERTISE_QUEUE
                    && !untold.contains(&cid)
                {
                    untold.push(cid);
                }
            }
            cid = queue.recv(), if backlog.len() < ADVERTISE_QUEUE => match cid {
                Some(cid) => backlog.push(cid),
                None => break,
            },
            _ = join_check.tick(), if !joined => {
                if joined_dht(&dht) {
                    joined = true;
                    info!("joined the DHT; announcing every stored dataset");
                    // A round from the start covers whatever reached nobody so far.
                    untold.clear();
                    round = Some(Round::default());
                }
            }
            _ = retry.tick(), if !untold.is_empty() => {
                if joined_dht(&dht) {
                    // Only what is still stored: a dataset deleted meanwhile was withdrawn.
                    let s = store.clone();
                    let cids = std::mem::take(&mut untold);
                    let kept = tokio::task::spawn_blocking(move || {
                        cids.into_iter()
                            .filter(|c| {
                                s.has_block(c).unwrap_or(false)
                                    || s.dataset_stored(c).unwrap_or(false)
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    for cid in kept {
                        if backlog.len() < ADVERTISE_QUEUE {
                            backlog.push(cid);
                        }
                    }
                }
            }
            _ = rounds.tick() => {
                if round.is_some() {
                    debug!("the last re-announce round is still running; it goes on");
                } else {
                    round = Some(Round::default());
                }
            }
        }
    }
    running.shutdown().await;
}

/// Whether the routing table holds a node that ever answered us: a bootstrap record alone,
/// whose node may be down, is not joining.
fn joined_dht(dht: &Discovery) -> bool {
    dht.table().iter().any(|n| n.seen)
}

/// Where a re-announce round is: it pages through the listed datasets in the store's order,
/// [`ROUND_STEP`] at a time, so a node with a million datasets never holds every manifest at
/// once (it used to list them all when a round started).
#[derive(Debug, Default)]
struct Round {
    /// The store's key of the last dataset the round looked at; `None` at its start.
    after: Option<Vec<u8>>,
    /// The store could not list: the step waits until then.
    retry_at: Option<Instant>,
}

/// One step of a round: how many datasets the page looked at and which to announce.
struct Step {
    /// Datasets the page looked at: fewer than [`ROUND_STEP`] ends the round.
    looked_at: usize,
    /// Where the next step starts.
    next: Option<Vec<u8>>,
    /// The `(manifest, tree)` CIDs of the page's datasets held whole.
    whole: Vec<(Cid, Cid)>,
}

/// The next [`ROUND_STEP`] listed datasets after `after`, and those of them this node holds
/// whole: the manifest block and every leaf stored. A provider must serve every block, so a
/// manifest stored alone, a range or a stopped download is not announced. One blocking call
/// (a seek each for a dataset whose tree is kept). `None` when the store cannot list.
async fn round_step(store: &Store, after: Option<Vec<u8>>) -> Option<Step> {
    let s = store.clone();
    let step = tokio::task::spawn_blocking(move || {
        let page = s.manifest_page(after.as_deref(), ROUND_STEP)?;
        let whole = page
            .manifests
            .iter()
            .filter(|(manifest, m)| {
                s.has_block(manifest).unwrap_or(false)
                    && matches!(
                        s.first_missing_leaf(&m.tree_cid, 0..m.blocks_count()),
                        Ok(None)
                    )
            })
            .map(|(manifest, m)| (*manifest, m.tree_cid))
            .collect();
        Ok::<_, cairn_store::StoreError>(Step {
            looked_at: page.looked_at,
            next: page.next,
            whole,
        })
    })
    .await;
    match step {
        Ok(Ok(step)) => Some(step),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot list the datasets to announce them again");
            None
        }
        Err(e) => {
            warn!(error = %e, "cannot list the datasets to announce them again");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use cairn_discovery::service::address_acceptable_from;
    use cairn_net::Keypair;

    use super::*;

    /// The rule [`Discovery::accepts_address_from`] applies with local addresses not allowed
    /// (the default).
    fn default_rule(addr: std::net::SocketAddr, from: Option<IpAddr>) -> bool {
        address_acceptable_from(addr, from, false)
    }

    fn record(key: &Keypair, ip: &str) -> Vec<u8> {
        let addr = format!("/ip4/{ip}/udp/8090").parse().expect("multiaddr");
        Spr::sign(key, 1, vec![addr])
            .expect("record")
            .encoded()
            .to_vec()
    }

    /// A record offered through peer exchange is pinged only when its address is one the DHT
    /// takes from the sender: a public peer cannot make us ping our own loopback or private
    /// network.
    #[test]
    fn a_record_from_peer_exchange_is_pinged_only_at_an_address_fit_for_its_sender() {
        let key = Keypair::generate_secp256k1();
        let peer = key.public().to_peer_id();
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let offer = |r: &[u8], from| offered_record(r, peer, from, default_rule);

        let loopback = record(&key, "127.0.0.1");
        let private = record(&key, "10.1.2.3");
        let public = record(&key, "203.0.113.7");
        assert_eq!(
            offer(&loopback, ip("198.51.100.4")).err(),
            Some("an address not taken from this sender")
        );
        assert!(offer(&loopback, ip("127.0.0.1")).is_ok());
        assert!(offer(&loopback, None).is_err(), "no IP: counts as public");
        assert!(offer(&private, ip("198.51.100.4")).is_err());
        assert!(offer(&private, ip("192.168.1.9")).is_ok());
        assert!(offer(&private, ip("::ffff:192.168.1.9")).is_ok());
        assert!(offer(&public, ip("198.51.100.4")).is_ok());
        assert!(offer(&public, None).is_ok());
        let taken = offer(&public, ip("198.51.100.4")).expect("record");
        assert_eq!(taken.peer_id(), peer);

        // Someone else's record, and bytes that are no record.
        let other = Keypair::generate_secp256k1();
        assert_eq!(
            offer(&record(&other, "203.0.113.8"), None).err(),
            Some("not the sender's own")
        );
        assert_eq!(offer(b"not a record", None).err(), Some("does not verify"));
    }
}
