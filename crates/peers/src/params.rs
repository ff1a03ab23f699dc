//! Every tunable of the address book, in one place, each with the reason for its value.
//!
//! Where CometBFT has the same knob (`p2p/pex/params.go`, and `pex_reactor.go` for the ban time)
//! the value is CometBFT's, and its name is given. Times are in seconds because the book works on
//! Unix seconds passed in by the caller (it never reads a clock).

use std::time::Duration;

/// Buckets for addresses we have only heard of ("new"). CometBFT `newBucketCount` (256).
///
/// Four times as many new as old buckets: we hear of far more addresses than we ever use.
pub const NEW_BUCKET_COUNT: usize = 256;

/// Peers per new bucket. CometBFT `newBucketSize` (64).
pub const NEW_BUCKET_SIZE: usize = 64;

/// Buckets for peers we have connected to successfully ("old"). CometBFT `oldBucketCount` (64).
pub const OLD_BUCKET_COUNT: usize = 64;

/// Peers per old bucket. CometBFT `oldBucketSize` (64).
pub const OLD_BUCKET_SIZE: usize = 64;

/// New buckets one *source* network group can reach. CometBFT `newBucketsPerGroup` (32).
///
/// This is the anti-flooding bound: everything learned from sources in one network group lands in
/// at most 32 of the 256 new buckets, so at most `32 * 64 = 2048` peers (1/8 of the new table),
/// whatever the source sends. See [`MAX_NEW_PEERS_PER_SOURCE_GROUP`].
pub const NEW_BUCKETS_PER_SOURCE_GROUP: u64 = 32;

/// Old buckets one address network group can reach. CometBFT `oldBucketsPerGroup` (4).
///
/// Peers in one /16 (or /32 for IPv6) share at most 4 old buckets, 256 slots: one operator with
/// one subnet cannot own the trusted part of the book.
pub const OLD_BUCKETS_PER_GROUP: u64 = 4;

/// New buckets one peer can be in at once. CometBFT `maxNewBucketsPerAddress` (4).
///
/// A peer announced by several unrelated sources is more likely genuine, so it earns more slots
/// (and more chances to be picked), but only up to this many.
pub const MAX_NEW_BUCKETS_PER_PEER: usize = 4;

/// Upper bound on peers held by everything learned from one source network group:
/// `NEW_BUCKETS_PER_SOURCE_GROUP * NEW_BUCKET_SIZE` (2048).
#[allow(clippy::cast_possible_truncation)] // 32 fits every usize.
pub const MAX_NEW_PEERS_PER_SOURCE_GROUP: usize =
    NEW_BUCKETS_PER_SOURCE_GROUP as usize * NEW_BUCKET_SIZE;

/// Upper bound on peers in the book: every bucket full (`256 * 64 + 64 * 64` = 20 480).
pub const MAX_BOOK_SIZE: usize =
    NEW_BUCKET_COUNT * NEW_BUCKET_SIZE + OLD_BUCKET_COUNT * OLD_BUCKET_SIZE;

/// Addresses kept per peer (a peer listens on TCP and QUIC, IPv4 and IPv6, maybe behind a relay).
///
/// Not in CometBFT, whose entries hold one address. Eight is what `libp2p-peer-store` keeps per
/// peer; it bounds what a gossiper can make us store for one peer id.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Longest multiaddr accepted, in bytes of its binary form.
///
/// A DNS name (at most 253 bytes), a transport, a port and a `/p2p/` id fit; anything longer is
/// not an address a node would announce, and would only cost us memory.
pub const MAX_MULTIADDR_LEN: usize = 320;

/// Longest multiaddr accepted, in characters of its text form (the form the book file keeps).
///
/// The text form can be four times the binary one (`/ip4/255.255.255.255` is 20 characters for
/// 5 bytes), so the binary limit alone let peers make the saved book too large to read back
/// (found by review). A DNS name of up to 240 characters with its transport and port fits.
pub const MAX_MULTIADDR_TEXT_LEN: usize = 256;

/// Below this many peers the book asks for more (PEX requests). CometBFT `needAddressThreshold`
/// (1000).
pub const NEED_ADDRESS_THRESHOLD: usize = 1000;

/// How often the peer manager should save the book. CometBFT `dumpAddressInterval` (2 minutes).
///
/// The book does no timing itself; this is here so the value lives with the others.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(2 * 60);

/// An address attempted this recently is never judged bad (CometBFT `isBad`: "has been attempted
/// in the last minute"): it may be in the middle of being dialled.
pub const RECENT_ATTEMPT_SECS: u64 = 60;

/// A new address neither announced nor attempted for this long is bad. CometBFT
/// `numMissingDays` (7 days).
pub const MISSING_SECS: u64 = 7 * 24 * 60 * 60;

/// Failed attempts without a single success after which a new address is bad. CometBFT
/// `numRetries` (3).
pub const NUM_RETRIES: u32 = 3;

/// Failed attempts after which a new address whose last success is older than
/// [`MIN_BAD_SECS`] is bad. CometBFT `maxFailures` (10).
pub const MAX_FAILURES: u32 = 10;

/// See [`MAX_FAILURES`]. CometBFT `minBadDays` (7 days).
pub const MIN_BAD_SECS: u64 = 7 * 24 * 60 * 60;

/// Failed attempts since its last success after which an *old* entry (one we connected to) is
/// bad, once that success is over [`MIN_OLD_BAD_SECS`] old. CometBFT `maxAttemptsToDial` (16),
/// after which its reactor marks the address bad; its book never judges an old entry bad, and
/// review found ours kept (and favoured) old peers that failed every dial for good. With the
/// peer manager's backoff (2^n s, at most 10 min) 16 failures take over an hour.
pub const MAX_OLD_FAILURES: u32 = 16;

/// See [`MAX_OLD_FAILURES`]: an old entry that succeeded this recently is never bad, however
/// many attempts a burst of dials (a short outage on our side) counted since.
pub const MIN_OLD_BAD_SECS: u64 = 60 * 60;

/// Share of the book returned by a selection (PEX reply), in percent. CometBFT
/// `getSelectionPercent` (23).
pub const GET_SELECTION_PERCENT: usize = 23;

/// Smallest selection (or the whole book when it is smaller). CometBFT `minGetSelection` (32):
/// a node that is bootstrapping must learn enough at once.
pub const MIN_GET_SELECTION: usize = 32;

/// Largest selection. CometBFT `maxGetSelection` (250): it bounds the reply message, and so the
/// amplification one small request can cause.
pub const MAX_GET_SELECTION: usize = 250;

/// How long a misbehaving peer is banned, for callers that have no better figure. CometBFT
/// `defaultBanTime` (24 hours, `pex_reactor.go`).
pub const DEFAULT_BAN: Duration = Duration::from_secs(24 * 60 * 60);

/// Bans remembered at once. Not bounded in CometBFT.
///
/// Bans come from remote behaviour, so they must be bounded too. When full, the ban that expires
/// first is forgotten: the book is five times larger, so this is generous, and the peer manager's
/// own score still refuses a peer that keeps misbehaving.
pub const MAX_BANS: usize = 4096;

/// Wrong addresses remembered at once: (peer, address) pairs where another identity answered,
/// refused for the peer until their time ends ([`crate::AddrBook::remove_address`]). They come
/// from remote behaviour (gossip), so they are bounded; when full, the pair whose time ends
/// first is forgotten. Not saved with the book: after a restart such a pair costs one more
/// dial before it is dropped again.
pub const MAX_WRONG_ADDRS: usize = 4096;

/// Longest ban a loaded book keeps, from the time it is loaded. Bans are saved as wall-clock end
/// times, so one made while the clock was far ahead would otherwise last for years once the
/// clock is put right (found by review). The node's own bans are far shorter ([`DEFAULT_BAN`]).
pub const MAX_LOADED_BAN: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Version of the file format written by [`crate::AddrBook::save`].
pub const FORMAT_VERSION: u32 = 1;

/// Largest book file read or written. A full book (20 480 peers and 4 096 bans, each with 8
/// addresses of at most [`MAX_MULTIADDR_TEXT_LEN`] characters) is about 61 MB of JSON; a larger
/// file is not ours, and a book that would write one keeps the last file it saved instead.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
