//! Append-only segment files that hold block bytes.
//!
//! Block data is not stored inside the index database: it is appended to *segments*, and the
//! index records `(segment, offset, length)`. Appending is sequential I/O with one `fdatasync` per
//! batch (never per block), which is what lets ingest run at hashing speed. A segment is written by
//! one writer at a time (an upload session, or the shared writer for single puts) and never
//! modified afterwards; it is deleted when no live block points into it.
//!
//! Two media implement the same interface: files in a directory (`<dir>/<id>.seg`), and byte
//! vectors in memory for the in-memory store.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::Arc,
};

use parking_lot::{Mutex, RwLock};

/// Size of the write buffer in front of a segment file: 16 blocks of 64 KiB per `write` call.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Open read handles kept at most; beyond this the cache is cleared (segments are large, so a
/// node touches few of them at once and reopening is cheap).
const MAX_OPEN_READERS: usize = 64;

/// Where segments live.
#[derive(Debug)]
pub(crate) enum Segments {
    /// Files in a directory.
    Dir {
        dir: PathBuf,
        readers: Mutex<HashMap<u64, Arc<File>>>,
    },
    /// Byte vectors in memory.
    Mem {
        segs: RwLock<HashMap<u64, Arc<RwLock<Vec<u8>>>>>,
    },
}

/// An open segment being appended to.
#[derive(Debug)]
pub(crate) enum SegmentWriter {
    /// A file segment.
    File {
        id: u64,
        file: BufWriter<File>,
        len: u64,
    },
    /// A memory segment.
    Mem { id: u64, data: Arc<RwLock<Vec<u8>>> },
}

impl Segments {
    pub(crate) fn dir(dir: PathBuf) -> io::Result<Segments> {
        fs::create_dir_all(&dir)?;
        Ok(Segments::Dir {
            dir,
            readers: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn mem() -> Segments {
        Segments::Mem {
            segs: RwLock::new(HashMap::new()),
        }
    }

    fn path(dir: &std::path::Path, id: u64) -> PathBuf {
        dir.join(format!("{id:016x}.seg"))
    }

    /// Creates segment `id` (truncating any leftover of the same id) and opens it for appending.
    pub(crate) fn create(&self, id: u64) -> io::Result<SegmentWriter> {
        match self {
            Segments::Dir { dir, .. } => {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(Self::path(dir, id))?;
                Ok(SegmentWriter::File {
                    id,
                    file: BufWriter::with_capacity(WRITE_BUFFER, file),
                    len: 0,
                })
            }
            Segments::Mem { segs } => {
                let data = Arc::new(RwLock::new(Vec::new()));
                segs.write().insert(id, data.clone());
                Ok(SegmentWriter::Mem { id, data })
            }
        }
    }

    /// Reads `len` bytes at `offset` of segment `id`.
    pub(crate) fn read(&self, id: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Segments::Dir { dir, readers } => {
                let file = {
                    let mut r = readers.lock();
                    match r.get(&id) {
                        Some(f) => f.clone(),
                        None => {
                            if r.len() >= MAX_OPEN_READERS {
                                r.clear();
                            }
                            let f = Arc::new(File::open(Self::path(dir, id))?);
                            r.insert(id, f.clone());
                            f
                        }
                    }
                };
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
            Segments::Mem { segs } => {
                let seg = segs.read().get(&id).cloned().ok_or_else(|| missing(id))?;
                let data = seg.read();
                let start = usize::try_from(offset).map_err(|_| short(id))?;
                let end = start.checked_add(len).ok_or_else(|| short(id))?;
                data.get(start..end)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| short(id))
            }
        }
    }

    /// Deletes segment `id` (a missing segment is not an error).
    pub(crate) fn remove(&self, id: u64) -> io::Result<()> {
        match self {
            Segments::Dir { dir, readers } => {
                readers.lock().remove(&id);
                match fs::remove_file(Self::path(dir, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Segments::Mem { segs } => {
                segs.write().remove(&id);
                Ok(())
            }
        }
    }

    /// Ids of every segment present.
    pub(crate) fn list(&self) -> io::Result<Vec<u64>> {
        match self {
            Segments::Dir { dir, .. } => {
                let mut out = Vec::new();
                for entry in fs::read_dir(dir)? {
                    let name = entry?.file_name();
                    let name = name.to_string_lossy();
                    if let Some(hex) = name.strip_suffix(".seg")
                        && let Ok(id) = u64::from_str_radix(hex, 16)
                    {
                        out.push(id);
                    }
                }
                Ok(out)
            }
            Segments::Mem { segs } => Ok(segs.read().keys().copied().collect()),
        }
    }

    /// Total bytes held in segments (live and dead).
    pub(crate) fn disk_bytes(&self) -> io::Result<u64> {
        match self {
            Segments::Dir { dir, .. } => {
                let mut total = 0;
                for entry in fs::read_dir(dir)? {
                    total += entry?.metadata()?.len();
                }
                Ok(total)
            }
            Segments::Mem { segs } => Ok(segs.read().values().map(|s| s.read().len() as u64).sum()),
        }
    }

    /// Makes the directory entries of new segment files durable.
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        match self {
            Segments::Dir { dir, .. } => File::open(dir)?.sync_all(),
            Segments::Mem { .. } => Ok(()),
        }
    }
}

fn missing(id: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("segment {id:016x} missing"),
    )
}

fn short(id: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("segment {id:016x} too short"),
    )
}

impl SegmentWriter {
    /// The segment id.
    pub(crate) fn id(&self) -> u64 {
        match self {
            SegmentWriter::File { id, .. } | SegmentWriter::Mem { id, .. } => *id,
        }
    }

    /// Bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        match self {
            SegmentWriter::File { len, .. } => *len,
            SegmentWriter::Mem { data, .. } => data.read().len() as u64,
        }
    }

    /// Appends `bytes`, returning the offset they start at.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        match self {
            SegmentWriter::File { file, len, .. } => {
                let at = *len;
                file.write_all(bytes)?;
                *len += bytes.len() as u64;
                Ok(at)
            }
            SegmentWriter::Mem { data, .. } => {
                let mut d = data.write();
                let at = d.len() as u64;
                d.extend_from_slice(bytes);
                Ok(at)
            }
        }
    }

    /// Flushes buffered bytes and makes them durable (`fdatasync`).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        match self {
            SegmentWriter::File { file, .. } => {
                file.flush()?;
                file.get_ref().sync_data()
            }
            SegmentWriter::Mem { .. } => Ok(()),
        }
    }
}
