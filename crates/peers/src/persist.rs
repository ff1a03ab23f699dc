//! The book on disk: one JSON file, written atomically, read strictly.
//!
//! * **Format.** `{"version": 1, "key": "<32 hex>", "peers": [...], "bans": [...]}`. Each peer
//!   record holds its id, addresses, the network group of its first source, its table (`new` or
//!   `old`) and bucket indices, and its counters and times; each ban its end and the entry it
//!   removed. The key and the bucket indices are stored, so placement after a restart is the
//!   placement before it (CometBFT stores the bucket indices but draws a fresh hash key at every
//!   start, so after a restart one source group reaches a different set of buckets). JSON
//!   because operators read and edit CometBFT's `addrbook.json` by hand, and peers are sorted by
//!   id so two saves of the same book are the same bytes.
//! * **Writing.** A temporary file in the same directory, fsync, rename over the book, fsync
//!   the directory: a crash leaves the old book or the new one, never half of one.
//! * **Reading.** A file that is not a book of this version (unreadable, larger than
//!   [`MAX_FILE_BYTES`], not JSON, truncated, another version, a bad key) or that breaks a rule
//!   of the book's structure (a bucket index out of range, too many peers in a bucket, a peer
//!   twice, a banned peer in the book…) is moved aside to `<name>.corrupt-<unix seconds>` with
//!   a warning, and the book starts empty (CometBFT panics on a corrupt file). The contents of
//!   one record are not trusted that far: addresses come from peers, so an address that does
//!   not read back as a valid one is dropped from its record, and a record left with no
//!   address, or whose peer id does not parse, is dropped; both are counted and logged, and the
//!   rest of the book loads (one bad gossiped address used to cost the whole book). Entries
//!   that are merely not allowed any more (our own id, non-public addresses after switching to
//!   [`Routability::Strict`]) are dropped and counted too.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::{
    book::{AddrBook, Ban, BucketKind, Config, Entry, KEY_LEN},
    error::PersistError,
    group::{NetGroup, Routability, is_public, validate},
    params::{
        FORMAT_VERSION, MAX_ADDRS_PER_PEER, MAX_BANS, MAX_FILE_BYTES, MAX_LOADED_BAN,
        MAX_NEW_BUCKETS_PER_PEER, NEW_BUCKET_SIZE, OLD_BUCKET_SIZE,
    },
};

/// What [`AddrBook::load`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadOutcome {
    /// No file: the book starts empty (first start).
    NotFound,
    /// The book was read.
    Loaded {
        /// Peers loaded.
        peers: usize,
        /// Bans loaded.
        bans: usize,
        /// Peers dropped because the settings no longer allow them (our own id, or no
        /// address left under [`Routability::Strict`]).
        dropped: usize,
        /// Records dropped as unreadable: a peer or a ban whose id does not parse, a peer (or
        /// a banned peer's kept entry) with no readable address.
        bad_records: usize,
        /// Addresses dropped as unreadable from records kept or dropped (one that does not
        /// parse, is not a valid address of its peer, or is listed twice).
        bad_addrs: usize,
    },
    /// The file was unusable; it was moved to `to` and the book starts empty.
    MovedAside {
        /// Where the file is now.
        to: PathBuf,
        /// What was wrong with it.
        error: PersistError,
    },
    /// The file was unusable and could not be moved aside either; the book starts empty, and
    /// the next save overwrites the file.
    Unusable {
        /// What was wrong with it.
        error: PersistError,
        /// Why it could not be moved.
        rename_error: io::Error,
    },
}

impl std::fmt::Display for LoadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadOutcome::NotFound => write!(f, "no file yet (a first start)"),
            LoadOutcome::Loaded {
                peers,
                bans,
                dropped,
                bad_records,
                bad_addrs,
            } => write!(
                f,
                "read: {peers} peers, {bans} bans, {dropped} dropped by the settings, \
                 {bad_records} unreadable records and {bad_addrs} unreadable addresses dropped"
            ),
            LoadOutcome::MovedAside { to, error } => write!(
                f,
                "unusable ({error}); moved aside to {}, starting empty",
                to.display()
            ),
            LoadOutcome::Unusable {
                error,
                rename_error,
            } => write!(
                f,
                "unusable ({error}) and not moved aside ({rename_error}); starting empty"
            ),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct VersionProbe {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct BookFile {
    version: u32,
    key: String,
    peers: Vec<PeerRecord>,
    bans: Vec<BanRecord>,
}

#[derive(Serialize, Deserialize)]
struct PeerRecord {
    peer: String,
    addrs: Vec<String>,
    source_group: NetGroup,
    kind: BucketKind,
    buckets: Vec<usize>,
    attempts: u32,
    added: u64,
    last_seen: u64,
    last_attempt: Option<u64>,
    last_success: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct BanRecord {
    peer: String,
    until: u64,
    /// The entry the ban removed from the book (no buckets).
    entry: Option<PeerRecord>,
}

impl AddrBook {
    /// Writes the book to `path` atomically (temporary file in the same directory, fsync,
    /// rename, fsync of the directory). Creates the directory if needed.
    /// A book whose file would be larger than [`MAX_FILE_BYTES`], which [`AddrBook::load`]
    /// refuses, is not written ([`PersistError::TooLarge`]): the last file saved stays.
    pub fn save(&self, path: &Path) -> Result<(), PersistError> {
        write_book_file(path, &self.encode_file()?)
    }

    /// The bytes [`AddrBook::save`] writes, for a caller that writes them elsewhere (off its
    /// event loop) with [`write_book_file`]; [`PersistError::TooLarge`] as there.
    pub fn encode_file(&self) -> Result<Vec<u8>, PersistError> {
        let bytes = serde_json::to_vec_pretty(&self.to_file()).map_err(PersistError::Encode)?;
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(PersistError::TooLarge { size });
        }
        Ok(bytes)
    }

    /// Reads the book at `path`. Never fails: a missing file gives an empty book, and an
    /// unusable one is moved aside to `<name>.corrupt-<now>` with a `tracing` warning and gives
    /// an empty book (with a fresh key); the outcome says which happened. `now` is the current
    /// Unix time: it names that file, and no ban loaded ends later than [`MAX_LOADED_BAN`]
    /// after it.
    pub fn load(path: &Path, config: Config, now: u64) -> (AddrBook, LoadOutcome) {
        let error = match read_file(path) {
            Ok(None) => return (AddrBook::new(config), LoadOutcome::NotFound),
            Ok(Some(bytes)) => match decode(&bytes, config.clone(), now) {
                Ok((book, counts)) => {
                    if counts.bad_records > 0 || counts.bad_addrs > 0 {
                        tracing::warn!(
                            path = %path.display(), bad_records = counts.bad_records,
                            bad_addrs = counts.bad_addrs,
                            "address book file had unreadable records or addresses; dropped them \
                             and loaded the rest"
                        );
                    }
                    let outcome = LoadOutcome::Loaded {
                        peers: book.size(),
                        bans: book.bans.len(),
                        dropped: counts.dropped,
                        bad_records: counts.bad_records,
                        bad_addrs: counts.bad_addrs,
                    };
                    return (book, outcome);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let to = corrupt_path(path, now);
        let outcome = match fs::rename(path, &to) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(), moved_to = %to.display(), error = %error_chain(&error),
                    "address book file unusable; moved aside, starting with an empty book"
                );
                LoadOutcome::MovedAside { to, error }
            }
            Err(rename_error) => {
                tracing::warn!(
                    path = %path.display(), error = %error_chain(&error), %rename_error,
                    "address book file unusable and could not be moved aside; starting with an \
                     empty book"
                );
                LoadOutcome::Unusable {
                    error,
                    rename_error,
                }
            }
        };
        (AddrBook::new(config), outcome)
    }

    fn to_file(&self) -> BookFile {
        let mut peers: Vec<PeerRecord> = self
            .entries
            .iter()
            .map(|(p, e)| PeerRecord::from_entry(p, e))
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut bans: Vec<BanRecord> = self
            .bans
            .iter()
            .map(|(p, b)| BanRecord {
                peer: p.to_base58(),
                until: b.until,
                entry: b.entry.as_ref().map(|e| PeerRecord::from_entry(p, e)),
            })
            .collect();
        bans.sort_by(|a, b| a.peer.cmp(&b.peer));
        BookFile {
            version: FORMAT_VERSION,
            key: hex::encode(self.key),
            peers,
            bans,
        }
    }
}

impl PeerRecord {
    fn from_entry(peer: &PeerId, e: &Entry) -> Self {
        PeerRecord {
            peer: peer.to_base58(),
            addrs: e.addrs.iter().map(ToString::to_string).collect(),
            source_group: e.src_group.clone(),
            kind: e.kind,
            buckets: e.buckets.clone(),
            attempts: e.attempts,
            added: e.added,
            last_seen: e.last_seen,
            last_attempt: e.last_attempt,
            last_success: e.last_success,
        }
    }

    /// The record as an entry, checked. Unreadable addresses are dropped (counted in
    /// `counts.bad_addrs`); the whole record is [`RecordRead::Bad`] when its id does not parse
    /// or no address is left.
    /// The entry this record holds. Its times are clamped to `now`: a book saved while the
    /// clock ran ahead would otherwise hold entries "seen" in the future, never bad and never
    /// the oldest in a bucket, until the clock caught up (found by review).
    fn into_entry(self, config: &Config, now: u64, counts: &mut Counts) -> RecordRead {
        let Ok(peer) = self.peer.parse::<PeerId>() else {
            return RecordRead::Bad("unparsable peer id");
        };
        let mut addrs = Vec::with_capacity(self.addrs.len().min(MAX_ADDRS_PER_PEER));
        for a in &self.addrs {
            let addr = a
                .parse::<Multiaddr>()
                .ok()
                .and_then(|addr| validate(&addr, &peer).ok())
                .filter(|addr| !addrs.contains(addr));
            match addr {
                Some(addr) if addrs.len() < MAX_ADDRS_PER_PEER => addrs.push(addr),
                _ => counts.bad_addrs += 1,
            }
        }
        if addrs.is_empty() {
            return RecordRead::Bad("no readable address");
        }
        if peer == config.local_peer_id {
            return RecordRead::Disallowed;
        }
        if config.routability == Routability::Strict {
            addrs.retain(is_public);
            if addrs.is_empty() {
                return RecordRead::Disallowed;
            }
        }
        let entry = Entry {
            addrs,
            src_group: self.source_group,
            kind: self.kind,
            buckets: self.buckets,
            attempts: self.attempts,
            added: self.added.min(now),
            last_seen: self.last_seen.min(now),
            last_attempt: self.last_attempt.map(|t| t.min(now)),
            last_success: self.last_success.map(|t| t.min(now)),
        };
        RecordRead::Kept(peer, entry)
    }
}

/// What became of one record of the file.
enum RecordRead {
    /// Read (perhaps with fewer addresses than it listed).
    Kept(PeerId, Entry),
    /// Readable, but the settings no longer allow it (our own id, no address left under
    /// [`Routability::Strict`]).
    Disallowed,
    /// Unreadable: dropped alone, the rest of the file loads.
    Bad(&'static str),
}

/// What a load dropped, by cause (see [`LoadOutcome::Loaded`]).
#[derive(Default)]
struct Counts {
    dropped: usize,
    bad_records: usize,
    bad_addrs: usize,
}

fn decode(bytes: &[u8], config: Config, now: u64) -> Result<(AddrBook, Counts), PersistError> {
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(PersistError::Decode)?;
    if probe.version != FORMAT_VERSION {
        return Err(PersistError::WrongVersion {
            found: probe.version,
        });
    }
    let file: BookFile = serde_json::from_slice(bytes).map_err(PersistError::Decode)?;
    let key: [u8; KEY_LEN] = hex::decode(&file.key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or(PersistError::Invalid {
            what: "key is not 16 hex-encoded bytes",
            index: 0,
        })?;
    let mut book = AddrBook::with_key(config, key);
    let mut counts = Counts::default();
    let mut seen = HashSet::new();

    for (index, record) in file.peers.into_iter().enumerate() {
        let invalid = |what| PersistError::Invalid { what, index };
        // Check the id before anything is dropped, so a duplicate is caught either way.
        if !seen.insert(record.peer.clone()) {
            return Err(invalid("peer listed twice"));
        }
        let (peer, entry) = match record.into_entry(&book.config, now, &mut counts) {
            RecordRead::Kept(peer, entry) => (peer, entry),
            RecordRead::Disallowed => {
                counts.dropped += 1;
                continue;
            }
            RecordRead::Bad(what) => {
                tracing::debug!(index, what, "address book record unreadable; dropped");
                counts.bad_records += 1;
                continue;
            }
        };
        let (table, count, max_buckets, size) = match entry.kind {
            BucketKind::New => (
                &mut book.new_buckets,
                &mut book.n_new,
                MAX_NEW_BUCKETS_PER_PEER,
                NEW_BUCKET_SIZE,
            ),
            BucketKind::Old => (&mut book.old_buckets, &mut book.n_old, 1, OLD_BUCKET_SIZE),
        };
        let distinct: HashSet<_> = entry.buckets.iter().collect();
        if entry.buckets.is_empty()
            || entry.buckets.len() > max_buckets
            || distinct.len() != entry.buckets.len()
        {
            return Err(invalid("number of buckets out of range, or a bucket twice"));
        }
        for b in &entry.buckets {
            let members = table
                .get_mut(*b)
                .ok_or(invalid("bucket index out of range"))?;
            if members.len() >= size {
                return Err(invalid("bucket over its size"));
            }
            members.push(peer);
        }
        *count += 1;
        book.entries.insert(peer, entry);
    }

    if file.bans.len() > MAX_BANS {
        return Err(PersistError::Invalid {
            what: "more bans than the book holds",
            index: MAX_BANS,
        });
    }
    for (index, record) in file.bans.into_iter().enumerate() {
        let invalid = |what| PersistError::Invalid { what, index };
        let Ok(peer) = record.peer.parse::<PeerId>() else {
            tracing::debug!(index, "address book ban with an unparsable id; dropped");
            counts.bad_records += 1;
            continue;
        };
        if book.entries.contains_key(&peer) || book.bans.contains_key(&peer) {
            return Err(invalid("banned peer also in the book, or banned twice"));
        }
        let entry = match record.entry {
            Some(r) if !r.buckets.is_empty() => return Err(invalid("banned entry has buckets")),
            // The ban holds whatever became of the entry it keeps.
            Some(r) => match r.into_entry(&book.config, now, &mut counts) {
                RecordRead::Kept(_, e) => Some(e),
                RecordRead::Disallowed => None,
                RecordRead::Bad(what) => {
                    tracing::debug!(index, what, "banned peer's entry unreadable; dropped");
                    counts.bad_records += 1;
                    None
                }
            },
            None => None,
        };
        book.bans.insert(
            peer,
            Ban {
                until: record
                    .until
                    .min(now.saturating_add(MAX_LOADED_BAN.as_secs())),
                entry,
            },
        );
    }
    Ok((book, counts))
}

/// The file's bytes, `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, PersistError> {
    let io_err = |op| {
        move |source| PersistError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening")(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading"))?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > MAX_FILE_BYTES {
        return Err(PersistError::TooLarge { size });
    }
    Ok(Some(bytes))
}

/// Writes `bytes` ([`AddrBook::encode_file`]) as the book file at `path`, atomically
/// (temporary file in the same directory, fsync, rename, fsync of the directory). Blocking:
/// one write at a time per path.
pub fn write_book_file(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io_err = |op, p: &Path| {
        let path = p.to_path_buf();
        move |source| PersistError::Io { op, path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
    let tmp = dir.join(format!(".{}.tmp", file_name(path)));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("writing", &tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("renaming over", path)(e));
    }
    sync_dir(&dir).map_err(io_err("syncing directory", &dir))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing elsewhere; the rename is as durable as it gets.
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "addrbook".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `<dir>/<name>.corrupt-<now>`.
pub(crate) fn corrupt_path(path: &Path, now: u64) -> PathBuf {
    path.with_file_name(format!("{}.corrupt-{now}", file_name(path)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {

    /// The load outcome reads as a sentence in the log, not as a Rust value.
    #[test]
    fn load_outcomes_read_as_text() {
        let loaded = LoadOutcome::Loaded {
            peers: 2,
            bans: 1,
            dropped: 0,
            bad_records: 1,
            bad_addrs: 3,
        };
        assert_eq!(
            loaded.to_string(),
            "read: 2 peers, 1 bans, 0 dropped by the settings, 1 unreadable records and 3 \
             unreadable addresses dropped"
        );
        assert_eq!(
            LoadOutcome::NotFound.to_string(),
            "no file yet (a first start)"
        );
    }

    use std::path::Path;

    use super::*;
    use crate::book::{
        Source,
        tests::{book, check_invariants, good, ip4, local_id, ma, peer, snapshot, src},
    };

    fn sample_book() -> AddrBook {
        let mut book = book();
        for i in 0..300u64 {
            let s = src(i % 7, 8, (i % 7) as u8);
            book.add_address(
                peer(i),
                &ip4(60 + (i / 100) as u8, (i % 100) as u8, 1, 1),
                &s,
                i,
            )
            .unwrap();
        }
        // Several addresses, private ones, several new buckets.
        book.add_address(
            peer(1),
            &ma("/ip6/2a00::1/udp/4001/quic-v1"),
            &src(9, 9, 9),
            400,
        )
        .unwrap();
        book.add_address(peer(2), &ma("/ip4/127.0.0.1/tcp/4001"), &Source::Local, 400)
            .unwrap();
        book.add_address(
            peer(500),
            &ma("/dns4/node.example.com/tcp/4001"),
            &Source::Local,
            400,
        )
        .unwrap();
        for i in 0..50 {
            book.add_address(peer(3), &ip4(70, 1, 1, 1), &src(100 + i, 90, i as u8), 400)
                .unwrap();
        }
        for i in 10..60 {
            book.mark_attempt(&peer(i), 500);
            good(&mut book, &peer(i), 600 + i);
        }
        book.mark_attempt(&peer(200), 700);
        book.ban(peer(20), 10_000); // old, with entry
        book.ban(peer(250), 20_000); // new, with entry
        book.ban(peer(999), 30_000); // never in the book
        check_invariants(&book);
        book
    }

    fn assert_empty(book: &AddrBook) {
        assert_eq!(book.size(), 0);
        assert_eq!(book.stats().banned, 0);
        check_invariants(book);
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_keeps_entries_buckets_key_and_bans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let book = sample_book();
        book.save(&path).unwrap();
        assert_eq!(
            files_in(dir.path()),
            ["addrbook.json"],
            "no temporary file left"
        );

        let (mut loaded, outcome) = AddrBook::load(&path, Config::new(local_id()), 1_000);
        match outcome {
            LoadOutcome::Loaded {
                peers,
                bans,
                dropped,
                ..
            } => {
                assert_eq!((peers, bans, dropped), (book.size(), 3, 0));
            }
            other => panic!("{other:?}"),
        }
        check_invariants(&loaded);
        assert!(
            snapshot(&book) == snapshot(&loaded),
            "reloaded book differs"
        );
        assert_eq!(loaded.stats(), book.stats());
        assert!(loaded.is_banned(&peer(999), 29_999));
        assert_eq!(loaded.get(&peer(1)).unwrap().addrs.len(), 2);

        // Same key: a new address lands where it would have in the original.
        let mut original = book;
        let s = src(77, 123, 45);
        original
            .add_address(peer(7_000), &ip4(99, 1, 1, 1), &s, 800)
            .unwrap();
        loaded
            .add_address(peer(7_000), &ip4(99, 1, 1, 1), &s, 800)
            .unwrap();
        assert_eq!(
            original.entries[&peer(7_000)].buckets,
            loaded.entries[&peer(7_000)].buckets
        );

        // Saving again replaces the file atomically with the same bytes for the same book.
        let first = fs::read(&path).unwrap();
        loaded.remove(&peer(7_000));
        loaded.save(&path).unwrap();
        original.remove(&peer(7_000));
        let (reloaded, _) = AddrBook::load(&path, Config::new(local_id()), 1_000);
        assert!(snapshot(&reloaded) == snapshot(&original));
        assert_eq!(fs::read(&path).unwrap(), first);
        assert_eq!(files_in(dir.path()), ["addrbook.json"]);
    }

    /// A ban saved with an end far ahead (the clock was wrong when it was made) is cut to
    /// [`MAX_LOADED_BAN`] from the load.
    #[test]
    fn bans_far_ahead_are_cut_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut book = AddrBook::new(Config::new(local_id()));
        book.ban(peer(5), u64::MAX / 2);
        book.ban(peer(6), 1_000 + 60);
        book.save(&path).unwrap();
        let (loaded, _) = AddrBook::load(&path, Config::new(local_id()), 1_000);
        let cut = 1_000 + MAX_LOADED_BAN.as_secs();
        assert!(loaded.is_banned(&peer(5), cut - 1));
        assert!(!loaded.is_banned(&peer(5), cut), "a ban for years");
        // A short ban stays as it was.
        assert!(loaded.is_banned(&peer(6), 1_059));
        assert!(!loaded.is_banned(&peer(6), 1_060));
    }

    /// Times saved ahead of the clock (it was wrong when they were made) are taken as now at
    /// load: the entry can then go bad and be the oldest as any other.
    #[test]
    fn times_ahead_of_the_clock_are_cut_to_now_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut book = AddrBook::new(Config::new(local_id()));
        let far = 5_000_000_000;
        book.add_address(peer(5), &ip4(1, 2, 3, 4), &Source::Local, far)
            .unwrap();
        book.mark_attempt(&peer(5), far);
        book.save(&path).unwrap();
        let now = 1_000;
        let (loaded, _) = AddrBook::load(&path, Config::new(local_id()), now);
        let e = &loaded.entries[&peer(5)];
        assert_eq!(
            (e.added, e.last_seen, e.last_attempt),
            (now, now, Some(now))
        );
        assert_eq!(e.last_success, None);
    }

    #[test]
    fn a_missing_file_gives_an_empty_book() {
        let dir = tempfile::tempdir().unwrap();
        let (book, outcome) =
            AddrBook::load(&dir.path().join("nope.json"), Config::new(local_id()), 5);
        assert!(matches!(outcome, LoadOutcome::NotFound));
        assert_empty(&book);
        assert!(files_in(dir.path()).is_empty());
    }

    /// Writes `bytes` as the book file, loads it at time 1234 and checks that it was moved
    /// aside unchanged and the book is empty; returns the error.
    fn load_corrupt(bytes: &[u8]) -> PersistError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        fs::write(&path, bytes).unwrap();
        let (book, outcome) = AddrBook::load(&path, Config::new(local_id()), 1234);
        assert_empty(&book);
        let LoadOutcome::MovedAside { to, error } = outcome else {
            panic!("not moved aside: {outcome:?}");
        };
        assert_eq!(to, dir.path().join("addrbook.json.corrupt-1234"));
        assert!(!path.exists(), "the corrupt file is still in place");
        assert_eq!(fs::read(&to).unwrap(), bytes, "moved file changed");
        // The next save writes a fresh book beside the moved one.
        book.save(&path).unwrap();
        assert_eq!(
            files_in(dir.path()),
            ["addrbook.json", "addrbook.json.corrupt-1234"]
        );
        error
    }

    fn valid_json() -> serde_json::Value {
        serde_json::to_value(sample_book().to_file()).unwrap()
    }

    #[test]
    fn garbage_is_moved_aside() {
        assert!(matches!(
            load_corrupt(b"\x00\xffnot json at all"),
            PersistError::Decode(_)
        ));
        assert!(matches!(load_corrupt(b""), PersistError::Decode(_)));
        assert!(matches!(
            load_corrupt(b"[1, 2, 3]"),
            PersistError::Decode(_)
        ));
    }

    #[test]
    fn a_truncated_file_is_moved_aside() {
        let bytes = serde_json::to_vec_pretty(&valid_json()).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 2, 10] {
            assert!(
                matches!(load_corrupt(&bytes[..cut]), PersistError::Decode(_)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn another_version_is_moved_aside() {
        let mut v = valid_json();
        v["version"] = 2.into();
        let err = load_corrupt(&serde_json::to_vec(&v).unwrap());
        assert!(
            matches!(err, PersistError::WrongVersion { found: 2 }),
            "{err:?}"
        );
        assert!(matches!(
            load_corrupt(br#"{"version": 0, "whatever": true}"#),
            PersistError::WrongVersion { found: 0 }
        ));
    }

    #[test]
    fn an_inconsistent_book_is_moved_aside() {
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 7] = [
            ("bucket index out of range", |v| {
                v["peers"][0]["buckets"] = serde_json::json!([9999])
            }),
            ("no bucket", |v| {
                v["peers"][0]["buckets"] = serde_json::json!([])
            }),
            ("five new buckets", |v| {
                v["peers"][0]["kind"] = "new".into();
                v["peers"][0]["buckets"] = serde_json::json!([1, 2, 3, 4, 5]);
            }),
            ("old in two buckets", |v| {
                v["peers"][0]["kind"] = "old".into();
                v["peers"][0]["buckets"] = serde_json::json!([1, 2]);
            }),
            ("peer twice", |v| {
                let first = v["peers"][0].clone();
                v["peers"].as_array_mut().unwrap().push(first);
            }),
            ("short key", |v| v["key"] = "abcd".into()),
            ("banned and in the book", |v| {
                let p = v["peers"][0]["peer"].clone();
                v["bans"][0]["peer"] = p;
            }),
        ];
        for (what, edit) in edits {
            let mut v = valid_json();
            edit(&mut v);
            let err = load_corrupt(&serde_json::to_vec(&v).unwrap());
            assert!(
                matches!(err, PersistError::Invalid { .. }),
                "{what}: {err:?}"
            );
        }
        // A bucket filled beyond its size.
        let mut v = valid_json();
        let peers = v["peers"].as_array_mut().unwrap();
        for p in peers.iter_mut().take(NEW_BUCKET_SIZE + 1) {
            p["kind"] = "new".into();
            p["buckets"] = serde_json::json!([17]);
        }
        assert!(matches!(
            load_corrupt(&serde_json::to_vec(&v).unwrap()),
            PersistError::Invalid {
                what: "bucket over its size",
                ..
            }
        ));
    }

    #[test]
    fn an_unreadable_or_oversized_file_is_moved_aside() {
        // A directory where the file should be cannot be read.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        fs::create_dir(&path).unwrap();
        let (book, outcome) = AddrBook::load(&path, Config::new(local_id()), 7);
        assert_empty(&book);
        assert!(
            matches!(
                &outcome,
                LoadOutcome::MovedAside {
                    error: PersistError::Io { .. },
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(!path.exists());

        let f = fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let (book, outcome) = AddrBook::load(&path, Config::new(local_id()), 8);
        assert_empty(&book);
        assert!(
            matches!(
                &outcome,
                LoadOutcome::MovedAside {
                    error: PersistError::TooLarge { .. },
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    /// An address whose binary form decodes but whose text form does not parse back: a DNS
    /// component holding a `/`. PEX answers and identify messages carry binary multiaddrs.
    fn slash_in_dns() -> Multiaddr {
        ma("/ip4/8.8.8.8/tcp/4001").with(libp2p::multiaddr::Protocol::Dns("x/y".into()))
    }

    /// Review found that one such address, gossiped to us, cost the whole book at the next
    /// start: it was saved as text that does not parse back, and one unreadable record moved
    /// the file aside. The book now refuses it, and survives what it refuses.
    #[test]
    fn an_address_without_a_text_form_is_refused_and_the_book_reloads() {
        let bad = slash_in_dns();
        assert!(
            bad.to_string().parse::<Multiaddr>().ok() != Some(bad.clone()),
            "the test address must not survive its text form"
        );
        let mut book = sample_book();
        let size = book.size();
        assert!(matches!(
            book.add_address(peer(7_001), &bad, &src(3, 8, 8), 900),
            Err(crate::AddrBookError::InvalidAddress(_))
        ));
        // Not even appended to a known peer's list.
        assert!(
            book.add_address(peer(1), &bad, &Source::Local, 900)
                .is_err()
        );
        assert_eq!(book.size(), size);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        book.save(&path).unwrap();
        let (loaded, outcome) = AddrBook::load(&path, Config::new(local_id()), 1_000);
        assert!(
            matches!(outcome, LoadOutcome::Loaded { bad_records: 0, .. }),
            "{outcome:?}"
        );
        assert!(snapshot(&loaded) == snapshot(&book));
    }

    /// A file with one unreadable record (an address that does not parse, an id that does not,
    /// an address of the wrong kind) loads every other record; a record with one bad address
    /// among good ones keeps the good ones.
    #[test]
    fn a_bad_record_is_dropped_and_the_rest_loads() {
        let mut v = valid_json();
        let total = v["peers"].as_array().unwrap().len();
        let bans = v["bans"].as_array().unwrap().len();
        let slash = format!("{}", slash_in_dns());
        v["peers"][0]["addrs"] = serde_json::json!([slash]);
        v["peers"][1]["peer"] = "not-a-peer".into();
        v["peers"][2]["addrs"] = serde_json::json!(["/ip4/0.0.0.0/tcp/1"]);
        let kept = v["peers"][3]["addrs"][0].clone();
        v["peers"][3]["addrs"] = serde_json::json!([slash, kept.clone()]);
        let dropped_peer: PeerId = v["peers"][0]["peer"].as_str().unwrap().parse().unwrap();
        let kept_peer: PeerId = v["peers"][3]["peer"].as_str().unwrap().parse().unwrap();
        // A ban whose id does not parse goes; one whose entry is unreadable keeps the ban.
        let with_entry = (0..bans)
            .find(|i| v["bans"][*i]["entry"].is_object())
            .unwrap();
        let other = (with_entry + 1) % bans;
        v["bans"][other]["peer"] = "not-a-peer".into();
        let banned: PeerId = v["bans"][with_entry]["peer"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        v["bans"][with_entry]["entry"]["addrs"] = serde_json::json!([slash]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let bytes = serde_json::to_vec(&v).unwrap();
        fs::write(&path, &bytes).unwrap();
        let (loaded, outcome) = AddrBook::load(&path, Config::new(local_id()), 1_000);
        let LoadOutcome::Loaded {
            peers,
            bans: n_bans,
            bad_records,
            bad_addrs,
            ..
        } = outcome
        else {
            panic!("not loaded: {outcome:?}");
        };
        assert_eq!(peers, total - 3);
        assert_eq!(n_bans, bans - 1);
        assert_eq!(
            bad_records, 5,
            "three peers, one ban, one banned peer's entry"
        );
        assert_eq!(bad_addrs, 4);
        check_invariants(&loaded);
        assert!(!loaded.contains(&dropped_peer));
        assert_eq!(
            loaded.get(&kept_peer).unwrap().addrs,
            vec![kept.as_str().unwrap().parse::<Multiaddr>().unwrap()]
        );
        assert!(loaded.is_banned(&banned, 0));
        assert!(path.exists(), "the file stays where it is");
        assert_eq!(files_in(dir.path()), ["addrbook.json"]);
    }

    #[test]
    fn entries_the_settings_no_longer_allow_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut book = book();
        book.add_address(peer(1), &ip4(1, 1, 1, 1), &Source::Local, 0)
            .unwrap();
        book.add_address(peer(2), &ma("/ip4/127.0.0.1/tcp/1"), &Source::Local, 0)
            .unwrap();
        book.add_address(peer(3), &ip4(3, 3, 3, 3), &Source::Local, 0)
            .unwrap();
        book.add_address(peer(3), &ma("/ip4/10.0.0.3/tcp/1"), &Source::Local, 0)
            .unwrap();
        book.save(&path).unwrap();

        let strict = Config::new(local_id()).with_routability(Routability::Strict);
        let (loaded, outcome) = AddrBook::load(&path, strict, 0);
        assert!(
            matches!(
                outcome,
                LoadOutcome::Loaded {
                    peers: 2,
                    dropped: 1,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(!loaded.contains(&peer(2)));
        assert_eq!(loaded.get(&peer(3)).unwrap().addrs, vec![ip4(3, 3, 3, 3)]);
        check_invariants(&loaded);

        // Our own id in the file (the node's key changed) is dropped too.
        let (loaded, outcome) = AddrBook::load(&path, Config::new(peer(1)), 0);
        assert!(matches!(
            outcome,
            LoadOutcome::Loaded {
                peers: 2,
                dropped: 1,
                ..
            }
        ));
        assert!(!loaded.contains(&peer(1)));
    }
}
