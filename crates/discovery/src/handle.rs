//! [`Discovery`]: the cloneable handle in front of the DHT service, and the DHT operations the
//! node uses (codex-protocol.md §7.7), built from single requests.
//!
//! * [`Discovery::lookup`]: the iterative lookup ([`crate::lookup::Lookup`]) with
//!   [`ALPHA`](crate::lookup::ALPHA) queries in flight, each a FINDNODE for three log-distances
//!   around the target; every node learned goes into the routing table (unseen).
//! * [`Discovery::provide`]: ADDPROVIDER with our provider record to the nodes closest to the
//!   content id (kept locally when no node is known).
//! * [`Discovery::find_providers`]: local records, then GETPROVIDERS to the closest nodes,
//!   merged per peer (highest sequence number wins), our own record left out, within
//!   [`FIND_PROVIDERS_TIMEOUT`]: the lookup gets [`FIND_PROVIDERS_LOOKUP_TIMEOUT`] of it, and
//!   the records that arrived when time is up are returned.
//! * [`Discovery::find_peer`]: a node's DHT record by peer id.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    NodeId,
    lookup::{Lookup, lookup_distances},
    service::{
        self, Command, DiscoveryConfig, DiscoveryError, LocalRecords, RequestError, Shared,
        address_acceptable, address_acceptable_from, is_own,
    },
    spr::Spr,
    table::{BUCKET_SIZE, Origin},
    wire::message::Message,
};

/// Time limit of a whole `find_providers` (lookup plus GETPROVIDERS round). The records that
/// arrived by then are returned.
pub const FIND_PROVIDERS_TIMEOUT: Duration = Duration::from_secs(10);

/// Time limit of the lookup inside a `find_providers`. The other 3 s of
/// [`FIND_PROVIDERS_TIMEOUT`] are the GETPROVIDERS round's: twice a request's default deadline
/// (1 s, and 0.5 s more for a handshake). When the lookup had the whole 10 s too, a lookup that
/// took its time left the round none, and every remote record was lost (found in review).
pub const FIND_PROVIDERS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(7);

/// Time limit of one iterative lookup ([`Discovery::lookup`]).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most provider records one `find_providers` returns.
pub const MAX_PROVIDERS_FOUND: usize = 256;

/// Records of one node's answer (NODES or PROVIDERS, all its parts) that are decoded and
/// checked; the rest are ignored. A NODES answer holds at most 16 and a PROVIDERS answer what
/// fits a packet, but an answer may carry up to 8 parts of any number, and each record costs a
/// signature check (found by review).
pub const MAX_RECORDS_READ_PER_ANSWER: usize = 32;

/// One node of the routing table, for `debug/info` (the reference's `table.nodes` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id (hex).
    pub node_id: NodeId,
    /// Peer id.
    pub peer_id: PeerId,
    /// The node's DHT record.
    pub record: Spr,
    /// UDP address.
    pub address: Option<std::net::SocketAddr>,
    /// Whether it ever answered us.
    pub seen: bool,
}

/// A handle to a running DHT node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    config: Arc<DiscoveryConfig>,
}

impl Discovery {
    /// Binds the UDP socket and starts the service and its maintenance loops (revalidation,
    /// refresh, and a first self and random lookup through the bootstrap nodes), until `cancel`.
    pub async fn start(
        keypair: Keypair,
        config: DiscoveryConfig,
        cancel: CancellationToken,
    ) -> Result<Discovery, DiscoveryError> {
        let (shared, commands) = service::start(keypair, config.clone(), cancel.clone()).await?;
        let d = Discovery {
            shared,
            commands,
            config: Arc::new(config),
        };
        tokio::spawn(d.clone().maintain(cancel));
        Ok(d)
    }

    /// Our node id.
    pub fn local_id(&self) -> NodeId {
        self.shared.local_id
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.shared.keypair.public().to_peer_id()
    }

    /// The UDP address in our DHT record.
    pub fn dht_addr(&self) -> std::net::SocketAddr {
        self.shared.dht_addr
    }

    /// Our DHT record (`GET /spr`).
    pub fn local_spr(&self) -> Spr {
        self.shared.local_records().dht
    }

    /// Both of our records.
    pub fn local_records(&self) -> LocalRecords {
        self.shared.local_records()
    }

    /// Re-signs our provider record with these libp2p addresses (when the listen addresses
    /// become known or change).
    pub fn set_provider_addrs(&self, addrs: Vec<Multiaddr>) -> Result<(), DiscoveryError> {
        self.shared.set_provider_addrs(addrs)
    }

    /// The routing table, for `debug/info`.
    pub fn table(&self) -> Vec<NodeInfo> {
        self.shared
            .table
            .lock()
            .iter()
            .map(|e| NodeInfo {
                node_id: e.id,
                peer_id: e.record.peer_id(),
                record: e.record.clone(),
                address: Some(e.addr),
                seen: e.seen,
            })
            .collect()
    }

    /// Nodes in the routing table.
    pub fn table_len(&self) -> usize {
        self.shared.table.lock().len()
    }

    /// Whether this DHT takes `addr` as a node's address when a sender at `sender` gives it
    /// ([`address_acceptable_from`]: no loopback or private address from a public sender,
    /// unless the DHT allows local addresses).
    pub fn accepts_address_from(
        &self,
        addr: std::net::SocketAddr,
        sender: Option<std::net::IpAddr>,
    ) -> bool {
        address_acceptable_from(addr, sender, self.config.allow_local_addrs)
    }

    /// Adds a node (e.g. a bootstrap record given later) and pings it.
    pub async fn add_node(&self, spr: Spr) -> Result<(), RequestError> {
        let addr = spr.udp_addr().ok_or(RequestError::NoAddress)?;
        self.shared.table.lock().insert(
            spr.node_id(),
            addr,
            spr.seq(),
            spr.clone(),
            Origin::Discovered,
        );
        self.ping(&spr).await.map(|_| ())
    }

    /// Sends `msg` to `node` and waits for the whole response.
    async fn request(&self, node: &Spr, msg: Message) -> Result<Vec<Message>, RequestError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Request {
                node: node.clone(),
                msg,
                reply: tx,
            })
            .await;
        let r = match sent {
            Ok(()) => rx.await.unwrap_or(Err(RequestError::Stopped)),
            Err(_) => Err(RequestError::Stopped),
        };
        self.config.metrics.request_done(&r, started.elapsed());
        r
    }

    /// PING: answers the node's record sequence number.
    pub async fn ping(&self, node: &Spr) -> Result<u64, RequestError> {
        let spr_seq = self.shared.local_records().dht.seq();
        let parts = self.request(node, Message::Ping { spr_seq }).await?;
        match parts.first() {
            Some(Message::Pong { spr_seq, .. }) => Ok(*spr_seq),
            _ => Err(RequestError::BadResponse),
        }
    }

    /// FINDNODE: the valid records `node` gives for `distances` (each at one of those distances
    /// from it, with an acceptable address, at most [`BUCKET_SIZE`]).
    pub async fn find_node(
        &self,
        node: &Spr,
        distances: Vec<u16>,
    ) -> Result<Vec<Spr>, RequestError> {
        let from = node.udp_addr().ok_or(RequestError::NoAddress)?;
        let parts = self
            .request(
                node,
                Message::FindNode {
                    distances: distances.clone(),
                },
            )
            .await?;
        let responder = node.node_id();
        let mut out: Vec<Spr> = Vec::new();
        // Records looked at, whatever became of them: an answer has at most BUCKET_SIZE, and a
        // node that sends more (up to 8 parts of 16) does not make us check every signature.
        let mut examined = 0usize;
        for part in parts {
            let Message::Nodes { sprs, .. } = part else {
                return Err(RequestError::BadResponse);
            };
            for bytes in sprs {
                if examined >= MAX_RECORDS_READ_PER_ANSWER || out.len() >= BUCKET_SIZE {
                    break;
                }
                examined += 1;
                let Ok(spr) = self.shared.decode_record(&bytes) else {
                    continue;
                };
                let d = spr.node_id().log_distance(&responder);
                let addr_ok = spr
                    .udp_addr()
                    .is_some_and(|a| address_acceptable(a, from, self.config.allow_local_addrs));
                if distances.contains(&d)
                    && addr_ok
                    && out.len() < BUCKET_SIZE
                    && !out.iter().any(|o| o.node_id() == spr.node_id())
                {
                    out.push(spr);
                }
            }
        }
        Ok(out)
    }

    /// The (up to [`BUCKET_SIZE`]) nodes closest to `target` that answered, found iteratively,
    /// within [`LOOKUP_TIMEOUT`] (those found so far when it runs out).
    pub async fn lookup(&self, target: NodeId) -> Vec<Spr> {
        self.lookup_within(target, LOOKUP_TIMEOUT).await
    }

    /// [`Discovery::lookup`] within `limit`.
    async fn lookup_within(&self, target: NodeId, limit: Duration) -> Vec<Spr> {
        let started = Instant::now();
        let seeds: Vec<(NodeId, Spr)> = self
            .shared
            .table
            .lock()
            .closest(&target, BUCKET_SIZE, false)
            .into_iter()
            .map(|e| (e.id, e.record))
            .collect();
        let mut lookup = Lookup::new(self.shared.local_id, target, seeds);
        let mut inflight = FuturesUnordered::new();
        let run = async {
            loop {
                for (id, spr) in lookup.next_queries() {
                    let distances = lookup_distances(&target, &id);
                    inflight.push(async move {
                        let r = self.find_node(&spr, distances).await;
                        (id, r)
                    });
                }
                let Some((id, result)) = inflight.next().await else {
                    break;
                };
                match result {
                    Ok(found) => {
                        {
                            let mut table = self.shared.table.lock();
                            for s in &found {
                                if let Some(addr) = s.udp_addr() {
                                    table.insert(
                                        s.node_id(),
                                        addr,
                                        s.seq(),
                                        s.clone(),
                                        Origin::Discovered,
                                    );
                                }
                            }
                        }
                        let found = found
                            .into_iter()
                            .filter(|s| s.node_id() != self.shared.local_id)
                            .map(|s| (s.node_id(), s))
                            .collect();
                        lookup.on_response(&id, found);
                    }
                    Err(e) => {
                        debug!(error = %e, "lookup query failed");
                        lookup.on_failure(&id);
                    }
                }
                if lookup.is_finished() {
                    break;
                }
            }
        };
        let metrics = &self.config.metrics;
        if tokio::time::timeout(limit, run).await.is_err() {
            debug!(%target, "lookup timed out; returning what it found");
            metrics.lookups_timed_out.inc();
        } else {
            metrics.lookups_completed.inc();
        }
        metrics
            .lookup_duration
            .observe(started.elapsed().as_secs_f64());
        lookup.result().into_iter().map(|(_, s)| s).collect()
    }

    /// Announces that we provide `cid` (binary CID bytes): ADDPROVIDER to the closest nodes.
    /// Returns how many nodes were told.
    pub async fn provide(&self, cid: &[u8]) -> usize {
        self.config.metrics.announcements.inc();
        let key = NodeId::from_cid_bytes(cid);
        // GETPROVIDERS to us answers our own record from now on (see `OwnKeys`), whether or
        // not the lookup finds anyone to tell.
        if !self
            .shared
            .own
            .lock()
            .insert(key, std::time::Instant::now())
        {
            debug!(%key, "own provider keys full; this one is announced but not remembered");
        }
        let nodes = self.lookup(key).await;
        let record = self.shared.local_records().provider;
        let mut told = 0;
        for node in &nodes {
            let msg = Message::AddProvider {
                content: key,
                provider: record.encoded().to_vec(),
            };
            if self
                .commands
                .send(Command::Notify {
                    node: node.clone(),
                    msg,
                })
                .await
                .is_ok()
            {
                told += 1;
            }
        }
        told
    }

    /// Stops answering GETPROVIDERS for `cid` (binary CID bytes) with our own record: the
    /// content was deleted. Records already stored on other nodes expire there on their own.
    pub fn withdraw(&self, cid: &[u8]) {
        self.shared.own.lock().remove(&NodeId::from_cid_bytes(cid));
    }

    /// Whether GETPROVIDERS for `cid` (binary CID bytes) answers our own record: we announced
    /// it within the record's lifetime and did not withdraw it.
    pub fn announced(&self, cid: &[u8]) -> bool {
        self.shared
            .own
            .lock()
            .contains(&NodeId::from_cid_bytes(cid), std::time::Instant::now())
    }

    /// Provider records for `cid` (binary CID bytes), ours left out: the local ones, and those
    /// the nodes closest to it answer within [`FIND_PROVIDERS_TIMEOUT`] (the lookup for them
    /// gets [`FIND_PROVIDERS_LOOKUP_TIMEOUT`]; records that arrived when time is up are kept).
    pub async fn find_providers(&self, cid: &[u8]) -> Vec<Spr> {
        let deadline = tokio::time::Instant::now() + FIND_PROVIDERS_TIMEOUT;
        let key = NodeId::from_cid_bytes(cid);
        let mut found: HashMap<PeerId, Spr> = HashMap::new();
        let merge = |found: &mut HashMap<PeerId, Spr>, s: Spr| {
            if is_own(&self.shared, &s.peer_id()) || found.len() >= MAX_PROVIDERS_FOUND {
                return;
            }
            match found.get(&s.peer_id()) {
                Some(old) if old.seq() >= s.seq() => {}
                _ => {
                    found.insert(s.peer_id(), s);
                }
            }
        };
        let local = self
            .shared
            .providers
            .lock()
            .get(&key, std::time::Instant::now());
        for s in local {
            merge(&mut found, s);
        }
        // The lookup ends within its own limit, well inside the deadline; the answers are
        // merged as they come, so those in when the deadline passes are kept.
        let nodes = self.lookup_within(key, FIND_PROVIDERS_LOOKUP_TIMEOUT).await;
        let mut asks: FuturesUnordered<_> = nodes
            .iter()
            .map(|n| self.request(n, Message::GetProviders { content: key }))
            .collect();
        loop {
            let parts = match tokio::time::timeout_at(deadline, asks.next()).await {
                Ok(Some(Ok(parts))) => parts,
                Ok(Some(Err(_))) => continue,
                Ok(None) => break,
                Err(_) => {
                    debug!(%key, found = found.len(), "find_providers: time is up; returning what arrived");
                    break;
                }
            };
            // At most MAX_RECORDS_READ_PER_ANSWER records of one node's answer are checked.
            let records = parts.into_iter().flat_map(|part| match part {
                Message::Providers { providers, .. } => providers,
                _ => Vec::new(),
            });
            for s in records
                .take(MAX_RECORDS_READ_PER_ANSWER)
                .filter_map(|b| self.shared.decode_record(&b).ok())
            {
                merge(&mut found, s);
            }
        }
        if found.is_empty() {
            self.config.metrics.provider_searches_empty.inc();
        } else {
            self.config.metrics.provider_searches_found.inc();
        }
        found.into_values().collect()
    }

    /// The DHT record of `peer`: from the table, else by a lookup of its node id.
    pub async fn find_peer(&self, peer: &PeerId) -> Option<Spr> {
        let target = NodeId::from_peer_id(peer);
        if let Some(e) = self.shared.table.lock().get(&target) {
            return Some(e.record.clone());
        }
        self.lookup(target)
            .await
            .into_iter()
            .find(|s| s.node_id() == target)
    }

    /// The maintenance loops: join through the bootstrap nodes, then revalidate and refresh.
    async fn maintain(self, cancel: CancellationToken) {
        let join = async {
            let boots = self.config.bootstrap.clone();
            let pings: FuturesUnordered<_> = boots.iter().map(|b| self.ping(b)).collect();
            let _: Vec<_> = pings.collect().await;
            self.lookup(self.shared.local_id).await;
            self.lookup(NodeId::random()).await;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = join => {}
        }
        let mut refresh = tokio::time::interval(self.config.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await; // the first tick is immediate: the join just did a lookup
        loop {
            let (lo, hi) = self.config.revalidate_interval;
            let wait = if hi > lo {
                rand::rng().random_range(lo..hi)
            } else {
                lo
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh.tick() => {
                    self.lookup(NodeId::random()).await;
                }
                () = tokio::time::sleep(wait) => {
                    self.revalidate().await;
                }
            }
        }
    }

    /// Pings the least recently seen node of a random bucket; a newer record sequence in the
    /// PONG makes us fetch its record (FINDNODE distance 0). A node that does not answer is
    /// replaced by the service.
    async fn revalidate(&self) {
        let candidate = {
            let table = self.shared.table.lock();
            table
                .revalidation_candidate(&mut rand::rng())
                .and_then(|id| table.get(&id).map(|e| (e.record.clone(), e.seq)))
        };
        let Some((spr, seq)) = candidate else { return };
        if let Ok(remote_seq) = self.ping(&spr).await
            && remote_seq > seq
            && let Ok(found) = self.find_node(&spr, vec![0]).await
            && let Some(fresh) = found.into_iter().find(|s| s.node_id() == spr.node_id())
            && let Some(addr) = fresh.udp_addr()
        {
            self.shared.table.lock().insert(
                fresh.node_id(),
                addr,
                fresh.seq(),
                fresh,
                Origin::Discovered,
            );
        }
    }
}
