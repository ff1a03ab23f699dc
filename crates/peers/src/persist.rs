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
//! * **Reading.** Anything but a consistent book of this version (unreadable, larger than
//!   [`MAX_FILE_BYTES`], not JSON, truncated, another version, or breaking a rule of the book:
//!   a bucket index out of range, too many peers in a bucket, a peer twice, a banned peer in the
//!   book…) is moved aside to `<name>.corrupt-<unix seconds>` with a warning, and the book
//!   starts empty (CometBFT panics on a corrupt file). Entries that are merely not allowed any
//!   more (our own id, non-public addresses after switching to [`Routability::Strict`]) are
//!   dropped and counted.

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
        FORMAT_VERSION, MAX_ADDRS_PER_PEER, MAX_BANS, MAX_FILE_BYTES, MAX_NEW_BUCKETS_PER_PEER,
        NEW_BUCKET_COUNT, NEW_BUCKET_SIZE, OLD_BUCKET_COUNT, OLD_BUCKET_SIZE,
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
    pub fn save(&self, path: &Path) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec_pretty(&self.to_file()).map_err(PersistError::Encode)?;
        write_atomic(path, &bytes)
    }

    /// Reads the book at `path`. Never fails: a missing file gives an empty book, and an
    /// unusable one is moved aside to `<name>.corrupt-<now>` with a `tracing` warning and gives
    /// an empty book (with a fresh key); the outcome says which happened. `now` is the current
    /// Unix time, used only to name that file.
    pub fn load(path: &Path, config: Config, now: u64) -> (AddrBook, LoadOutcome) {
        let error = match read_file(path) {
            Ok(None) => return (AddrBook::new(config), LoadOutcome::NotFound),
            Ok(Some(bytes)) => match decode(&bytes, config.clone()) {
                Ok((book, dropped)) => {
                    let outcome = LoadOutcome::Loaded {
                        peers: book.size(),
                        bans: book.bans.len(),
                        dropped,
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

    /// The record as an entry, checked: `Ok(None)` when the settings no longer allow it.
    fn into_entry(
        self,
        index: usize,
        config: &Config,
    ) -> Result<Option<(PeerId, Entry)>, PersistError> {
        let invalid = |what| PersistError::Invalid { what, index };
        let peer: PeerId = self
            .peer
            .parse()
            .map_err(|_| invalid("unparsable peer id"))?;
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS_PER_PEER {
            return Err(invalid("number of addresses out of range"));
        }
        let mut addrs = Vec::with_capacity(self.addrs.len());
        let mut seen = HashSet::new();
        for a in &self.addrs {
            let addr: Multiaddr = a.parse().map_err(|_| invalid("unparsable address"))?;
            let addr = validate(&addr, &peer).map_err(|_| invalid("invalid address"))?;
            if !seen.insert(addr.clone()) {
                return Err(invalid("duplicate address"));
            }
            addrs.push(addr);
        }
        if peer == config.local_peer_id {
            return Ok(None);
        }
        if config.routability == Routability::Strict {
            addrs.retain(is_public);
            if addrs.is_empty() {
                return Ok(None);
            }
        }
        let entry = Entry {
            addrs,
            src_group: self.source_group,
            kind: self.kind,
            buckets: self.buckets,
            attempts: self.attempts,
            added: self.added,
            last_seen: self.last_seen,
            last_attempt: self.last_attempt,
            last_success: self.last_success,
        };
        Ok(Some((peer, entry)))
    }
}

fn decode(bytes: &[u8], config: Config) -> Result<(AddrBook, usize), PersistError> {
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
    let mut dropped = 0;
    let mut seen = HashSet::new();

    for (index, record) in file.peers.into_iter().enumerate() {
        let invalid = |what| PersistError::Invalid { what, index };
        // Check the id before anything is dropped, so a duplicate is caught either way.
        if !seen.insert(record.peer.clone()) {
            return Err(invalid("peer listed twice"));
        }
        let Some((peer, entry)) = record.into_entry(index, &book.config)? else {
            dropped += 1;
            continue;
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
        let peer: PeerId = record
            .peer
            .parse()
            .map_err(|_| invalid("unparsable banned id"))?;
        if book.entries.contains_key(&peer) || book.bans.contains_key(&peer) {
            return Err(invalid("banned peer also in the book, or banned twice"));
        }
        let entry = match record.entry {
            Some(r) if !r.buckets.is_empty() => return Err(invalid("banned entry has buckets")),
            Some(r) => r.into_entry(index, &book.config)?.map(|(_, e)| e),
            None => None,
        };
        book.bans.insert(
            peer,
            Ban {
                until: record.until,
                entry,
            },
        );
    }
    debug_assert!(NEW_BUCKET_COUNT == book.new_buckets.len());
    debug_assert!(OLD_BUCKET_COUNT == book.old_buckets.len());
    Ok((book, dropped))
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

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
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
