//! # cairn-peers: the address book
//!
//! The persisted, eclipse-resistant book of peer addresses behind peer exchange (PEX) and the
//! peer manager (issue 5). This crate is the book only: pure state and rules, plus saving and
//! loading one file. It does no networking, spawns nothing, reads no clock (every method that
//! needs the time takes `now`, Unix seconds) and takes no lock (its owner, the peer manager,
//! holds it).
//!
//! The design is CometBFT's PEX address book (`p2p/pex/addrbook.go`, `known_address.go`,
//! `params.go`), itself taken from btcd's `addrmgr`. Parameters keep CometBFT's values and are
//! all in [`params`], each with its reason.
//!
//! ## Entries
//!
//! An entry is keyed by libp2p [`PeerId`](libp2p::PeerId) and holds up to
//! [`params::MAX_ADDRS_PER_PEER`] multiaddrs (CometBFT: one `ip:port` per id; each one
//! [`validate`] accepts, so its text form, which the file keeps, parses back to it), the network
//! group of the peer that first told us about it, attempts since the last success, and the times
//! it was added, last announced, last attempted and last connected.
//!
//! ## New and old buckets (where an entry may live)
//!
//! * 256 **new** buckets of 64 hold peers we have only heard of; 64 **old** buckets of 64 hold
//!   peers we connected to ([`AddrBook::mark_good`]). A peer is in 1 to 4 new buckets or in
//!   exactly one old bucket.
//! * Placement is a keyed hash (SipHash-2-4 under a random 128-bit key made once per book and
//!   saved with it) over **network groups** ([`network_group`]: the /16 for IPv4, the /32 for
//!   IPv6, a domain for DNS names, special groups for loopback and private addresses; a
//!   source on a non-public address is always the one group `Local` or `Unroutable`, so a LAN
//!   peer cannot multiply its groups by taking more private addresses):
//!   - new bucket = `H(src_group, H(addr_group, src_group) % 32) % 256`: everything heard from
//!     sources in one group lands in at most 32 new buckets, so **one source group holds at
//!     most `32 * 64 = 2048` peers** ([`params::MAX_NEW_PEERS_PER_SOURCE_GROUP`], 1/8 of the
//!     new table, 1/10 of the book) however many addresses it sends;
//!   - old bucket = `H(addr_group, H(peer) % 4) % 64`, where `addr_group` is the group of the
//!     address we connected to (it becomes the entry's first address; review found the first
//!     *gossiped* address used, which let sybils in one /16 spread over every old bucket): peers
//!     reached in one address group share at most 4 old buckets (256 slots).
//! * A known new peer announced again goes into one more new bucket with probability
//!   `1 / (2 * buckets)`, up to 4 (CometBFT `maxNewBucketsPerAddress`).
//! * A full new bucket drops a *bad* entry, or else its oldest (by last attempt, or time added);
//!   an entry dropped from its last bucket leaves the book. A full old bucket sends its oldest
//!   entry (by last success) back to a new bucket to make room for the promoted one.
//!
//! ## Failing addresses and bans
//!
//! * [`AddrBook::mark_attempt`] counts attempts; [`AddrBook::mark_good`] resets them and
//!   promotes. A new entry is **bad** (CometBFT `isBad`) when, not attempted in the last minute,
//!   it was neither announced nor attempted for 7 days, or failed 3 times without ever
//!   succeeding, or failed 10 times with no success in 7 days. An old entry is bad when, not
//!   attempted in the last minute, it failed 16 times since a success over an hour old
//!   (CometBFT's reactor gives up after `maxAttemptsToDial`; review found old entries never
//!   bad, so a peer gone for good stayed, favoured by picks). Bad entries go first when a new
//!   bucket is full, and [`AddrBook::remove_bad`] drops them all at once.
//! * [`AddrBook::remove_address`] drops one address that turned out not to be the peer's (another
//!   identity answered there), and the peer only with its last address: gossip can add an
//!   address to someone else's entry, and that must not cost the peer its good ones. The
//!   (peer, address) pair is then refused for a while (at most [`params::MAX_WRONG_ADDRS`]
//!   pairs, not saved), the peer's other addresses are not.
//! * [`AddrBook::ban`] removes a peer until a given time and refuses it meanwhile;
//!   [`AddrBook::lift_expired_bans`] puts ended bans' entries back into new buckets (CometBFT
//!   `MarkBad` / `ReinstateBadPeers`). At most [`params::MAX_BANS`] bans are held.
//!
//! ## Selection
//!
//! * [`AddrBook::pick_address`] picks a peer to dial with a bias towards new or old (CometBFT
//!   `PickAddress`).
//! * [`AddrBook::get_selection_for`] picks a PEX reply: 23 % of the eligible peers, at least 32
//!   (or all), at most 250 ([`selection_size`]), random.
//!
//! ## Private and non-routable addresses
//!
//! [`Routability::AllowLocal`] (the default) keeps loopback and private-range addresses, but only
//! those we add ourselves or hear from a peer that is itself on a non-public address, so a LAN
//! or a loopback test network works out of the box while public peers cannot fill the book
//! with addresses inside our own network. [`Routability::Strict`] keeps public addresses only
//! (CometBFT's `addr_book_strict`). Either way, a public requester ([`Audience::Public`]) is
//! never given a non-public address, and [`Config::private_peer_ids`] are never given to
//! anyone.
//!
//! ## Bounds
//!
//! At most [`params::MAX_BOOK_SIZE`] peers (every bucket full), [`params::MAX_ADDRS_PER_PEER`]
//! addresses of at most [`params::MAX_MULTIADDR_LEN`] bytes each, [`params::MAX_BANS`] bans, a
//! file of at most [`params::MAX_FILE_BYTES`], and a PEX reply of at most 250 peers.
//!
//! ## Where this differs from CometBFT, and why
//!
//! * Several multiaddrs per peer (libp2p peers listen on several transports); gossip adds
//!   addresses only to new entries; an old entry takes new addresses only from the peer itself
//!   or from us.
//! * The key is saved and reused, so a source keeps mapping to the same 32 buckets across
//!   restarts (CometBFT draws a fresh hash key at each start).
//! * Non-public addresses: the `AllowLocal` mode and its source rule, per-host groups for them,
//!   and the public/local audience filter (CometBFT has only strict on/off).
//! * Private peer ids are kept (so they can be dialled) but never gossiped; CometBFT refuses to
//!   store them and anything they tell us.
//! * Peers unknown to the book can be banned; bans are bounded; old entries are reinstated as new
//!   after a ban (CometBFT drops them).
//! * "Bad" uses the last time an address was announced as well as attempted (CometBFT's TODO),
//!   and [`AddrBook::remove_bad`] sweeps bad entries instead of waiting for a full bucket.
//! * A full old bucket demotes the entry with the oldest *success* (CometBFT: oldest attempt).
//! * [`AddrBook::pick_address`] falls back to the other table when the chosen one is empty.
//! * A corrupt file is moved aside and the book starts empty (CometBFT panics); an unreadable
//!   record in an otherwise sound file is dropped alone.
//!
//! ## Persistence
//!
//! [`AddrBook::save`] and [`AddrBook::load`]; see [`persist`] for the file and its rules. The
//! peer manager saves every [`params::SAVE_INTERVAL`] and at shutdown.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod book;
mod error;
mod group;
pub mod params;
pub mod persist;

pub use crate::{
    book::{
        AddOutcome, AddrBook, AddrRemoval, Audience, BucketKind, Config, PeerAddrs, PeerInfo,
        Source, Stats, selection_size,
    },
    error::{AddrBookError, PersistError},
    group::{InvalidAddr, NetGroup, Reach, Routability, is_public, network_group, reach, validate},
    persist::LoadOutcome,
};
