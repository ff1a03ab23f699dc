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
//!
//! ## How file segments are written
//!
//! An upload streams gigabytes through its segment, so how the bytes reach the disk decides how
//! much CPU ingest needs besides hashing. A plain buffered `write` copies every byte into the
//! page cache (about half a CPU-second per GiB on the reference machine), and leaves all of it
//! dirty for the final `fdatasync` to write back while the client waits. A segment created with
//! [`WriteMode::Bulk`] therefore bypasses the page cache (`O_DIRECT`, Linux): appends are
//! gathered in an aligned staging buffer of [`DIRECT_STAGE_BYTES`], and each full buffer is
//! handed to the device with one `pwrite` by a per-segment I/O thread while the writer fills the
//! next one. The data is on its way to the disk while the upload runs, the writer does not wait
//! for the device unless the disk is slower than the stream, and the final `fdatasync` only has
//! to flush the device cache and the file's metadata.
//!
//! Direct I/O wants aligned memory, offsets and lengths. When everything appended is a multiple of
//! [`DIRECT_ALIGN`] (whole 64 KiB blocks, as in the store's segment for network downloads),
//! [`SegmentWriter::sync`] writes the staged bytes directly and the segment stays direct; otherwise
//! it writes the aligned part directly and the short unaligned tail (the manifest, typically)
//! through the page cache, and the segment stays buffered from then on. Where direct I/O is not
//! available (another OS, or a file system that refuses `O_DIRECT` at `open` or at the first
//! write; the I/O thread then writes its buffers through the page cache), the segment falls back
//! to buffered writes, with *write-behind*: every
//! [`WRITE_BEHIND_BYTES`] the kernel is told to start writing back what was appended
//! (`posix_fadvise(DONTNEED)`, which on Linux starts asynchronous writeback of dirty pages and
//! drops the clean ones), so the final `fdatasync` still finds little to do.
//!
//! None of this changes durability: staged or dirty bytes may be lost in a crash until
//! [`SegmentWriter::sync`] returns, and the store commits no index entry naming them before that.
//!
//! ## How file segments are read
//!
//! A single block is read through the page cache ([`Segments::read`]). A run of blocks stored
//! one after the other (a serving message's leaves, a local download's read-ahead) is read
//! with one [`Segments::read_span`], direct where the file system allows: the aligned range
//! around the run goes into an aligned buffer that the blocks then share, with no copy. Data
//! a node serves is mostly cold (uploads and downloads were written around the page cache),
//! and filling page-cache pages to copy out of them once was the serving node's largest cost:
//! on the reference VM, 1 GiB of cold segment read through the page cache cost 1.5
//! CPU-seconds in the kernel, read directly in 1 MiB pieces 0.09 s. Data read more than once
//! should still come from the page cache, so direct reads are for first reads only: the
//! segments remember which [`SPAN_UNIT_BYTES`] units they read lately (a bit each, for the
//! last [`MAX_SEEN_REGIONS`] regions of 64 units), and a span that covers one read before goes
//! through the page cache (which fills it, so the reads after that are served from memory). A dataset read once costs its direct
//! reads; one read again and again is cached from its second read on. The kernel keeps
//! direct reads coherent with anything still dirty in the page cache (a buffered tail), and
//! segments are never modified in place.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::JoinHandle,
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

/// Alignment of direct-I/O memory, file offsets and lengths. 4 KiB satisfies devices with
/// 512-byte and with 4 KiB logical sectors.
const DIRECT_ALIGN: usize = 4096;

/// Staging buffer of a [`WriteMode::Bulk`] segment: each direct `pwrite` hands the device this
/// much. 4 MiB (64 blocks): on the reference VM, direct writes of 4 MiB ran at 4.5 GB/s against
/// 1.6 GB/s with 1 MiB, and the buffer is allocated once per upload. A multiple of
/// [`DIRECT_ALIGN`].
const DIRECT_STAGE_BYTES: usize = 4 * 1024 * 1024;

/// Buffered segments start writeback of what was appended every this many bytes (see the module
/// docs), so the final `fdatasync` does not have to write a whole upload at once.
const WRITE_BEHIND_BYTES: u64 = 32 * 1024 * 1024;

/// Open read handles kept at most; beyond this the cache is cleared (segments are large, so a
/// node touches few of them at once and reopening is cheap).
const MAX_OPEN_READERS: usize = 64;

/// Most bytes one span read covers ([`Segments::read_span`]): a serving message holds at most
/// 20 blocks (1.25 MiB at 64 KiB); the store splits longer runs. Also bounds the memory a span
/// pins until the last of its blocks is dropped.
pub(crate) const MAX_SPAN_BYTES: u64 = 4 * 1024 * 1024;

/// Span reads are remembered in units of this many bytes (a block), 64 to a region (see the
/// module docs).
const SPAN_UNIT_BYTES: u64 = 64 * 1024;

/// Regions (64 units, 4 MiB) remembered at most, oldest forgotten first: 16,384 of them, the
/// last 64 GiB read directly, in about 600 KiB.
const MAX_SEEN_REGIONS: usize = 16 * 1024;

/// Which units of which segments were read not long ago: per region of 64 units, a bit per
/// unit; regions are forgotten oldest first.
#[derive(Debug, Default)]
pub(crate) struct SeenRegions {
    bits: HashMap<(u64, u64), u64>,
    order: std::collections::VecDeque<(u64, u64)>,
}

impl SeenRegions {
    /// Records that `len` bytes at `offset` of segment `seg` are read now; whether any unit of
    /// them was read before (and is still remembered). Only the units the span covers whole
    /// count (or, for a span inside one unit, that unit): blocks need not start on a unit
    /// boundary (a merged segment packs datasets one after the other), and a span that began
    /// in the unit where the previous one ended is not a second read (review: every span
    /// after the first of such a dataset went through the page cache).
    fn touch(&mut self, seg: u64, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        let first_whole = offset.div_ceil(SPAN_UNIT_BYTES);
        let end_whole = end / SPAN_UNIT_BYTES;
        let units = if first_whole < end_whole {
            first_whole..end_whole
        } else {
            let unit = offset / SPAN_UNIT_BYTES;
            unit..unit + 1
        };
        let mut again = false;
        for unit in units {
            let key = (seg, unit / 64);
            let bit = 1u64 << (unit % 64);
            let word = match self.bits.get_mut(&key) {
                Some(w) => w,
                None => {
                    if self.order.len() >= MAX_SEEN_REGIONS
                        && let Some(old) = self.order.pop_front()
                    {
                        self.bits.remove(&old);
                    }
                    self.order.push_back(key);
                    self.bits.entry(key).or_insert(0)
                }
            };
            again |= *word & bit != 0;
            *word |= bit;
        }
        again
    }
}

/// How a new segment file is written (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Small appends, each followed by a sync (single puts): through the page cache.
    Buffered,
    /// A large stream of appends with one sync at the end (uploads): direct I/O where available.
    Bulk,
}

/// Where segments live.
#[derive(Debug)]
pub(crate) enum Segments {
    /// Files in a directory.
    Dir {
        dir: PathBuf,
        readers: Mutex<HashMap<u64, Arc<Reader>>>,
        /// Regions span reads went to directly ([`Segments::read_span`]).
        seen: Mutex<SeenRegions>,
        /// The file system refused direct I/O (at open or at a read): spans go through the
        /// page cache from then on, without asking again for every segment (review).
        direct_off: std::sync::atomic::AtomicBool,
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
    File { id: u64, file: FileAppender },
    /// A memory segment.
    Mem { id: u64, data: Arc<RwLock<Vec<u8>>> },
}

impl Segments {
    pub(crate) fn dir(dir: PathBuf) -> io::Result<Segments> {
        fs::create_dir_all(&dir)?;
        Ok(Segments::Dir {
            dir,
            readers: Mutex::new(HashMap::new()),
            seen: Mutex::new(SeenRegions::default()),
            direct_off: std::sync::atomic::AtomicBool::new(false),
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
    pub(crate) fn create(&self, id: u64, mode: WriteMode) -> io::Result<SegmentWriter> {
        #[cfg(test)]
        if FAIL_CREATE.with(std::cell::Cell::take) {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        match self {
            Segments::Dir { dir, .. } => {
                let path = Self::path(dir, id);
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)?;
                let direct = match mode {
                    WriteMode::Bulk => Direct::open(&path, &file),
                    WriteMode::Buffered => None,
                };
                Ok(SegmentWriter::File {
                    id,
                    file: FileAppender {
                        file,
                        direct,
                        len: 0,
                        behind: 0,
                    },
                })
            }
            Segments::Mem { segs } => {
                let data = Arc::new(RwLock::new(Vec::new()));
                segs.write().insert(id, data.clone());
                Ok(SegmentWriter::Mem { id, data })
            }
        }
    }

    /// Reads `len` bytes at `offset` of segment `id`. A length beyond the largest block
    /// ([`crate::MAX_BLOCK_BYTES`]; callers check it first, as index damage) is refused
    /// (`InvalidInput`) before anything is allocated.
    pub(crate) fn read(&self, id: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len as u64 > crate::MAX_BLOCK_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a read of {len} bytes is longer than any block"),
            ));
        }
        #[cfg(test)]
        if UNREADABLE.with(std::cell::Cell::get) == Some(id) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        match self {
            Segments::Dir { dir, readers, .. } => {
                read_exact_at(&Self::reader(dir, readers, id)?.file, len, offset)
            }
            Segments::Mem { segs } => mem_read(segs, id, offset, len, <[u8]>::to_vec),
        }
    }

    /// Reads `len` bytes at `offset` of segment `id` in one go, for a run of blocks stored one
    /// after the other (the store cuts the result into the blocks: no copy). At most
    /// [`MAX_SPAN_BYTES`] (`InvalidInput` beyond).
    ///
    /// A file segment's region read for the first time (lately) is read with direct I/O where
    /// the file system allows it, and again through the page cache (see the module docs).
    /// Where direct I/O is refused, every span is read through the page cache as single blocks
    /// are.
    pub(crate) fn read_span(&self, id: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        if len as u64 > MAX_SPAN_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a span read of {len} bytes is longer than {MAX_SPAN_BYTES}"),
            ));
        }
        match self {
            Segments::Dir {
                dir,
                readers,
                seen,
                direct_off,
            } => {
                use std::sync::atomic::Ordering::Relaxed;
                let reader = Self::reader(dir, readers, id)?;
                let again = seen.lock().touch(id, offset, len);
                if !again && !direct_off.load(Relaxed) {
                    match reader.direct(|| Self::path(dir, id)) {
                        DirectHandle::Open(direct) => match read_direct(direct, offset, len) {
                            Ok(bytes) => return Ok(bytes),
                            // The file system took `O_DIRECT` at open but refuses the read.
                            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                                direct_off.store(true, Relaxed);
                            }
                            Err(e) => return Err(e),
                        },
                        DirectHandle::Refused => direct_off.store(true, Relaxed),
                        // Not opened this time (the file was just unlinked by a compaction or
                        // a delete, or no descriptor was free): this read goes through the
                        // page cache, and the next one tries again. Taken for a refusal, it
                        // turned direct reads off for the life of the process (review).
                        DirectHandle::Failed => {}
                    }
                }
                read_exact_at(&reader.file, len, offset).map(Bytes::from)
            }
            Segments::Mem { segs } => mem_read(segs, id, offset, len, Bytes::copy_from_slice),
        }
    }

    /// The cached read handles of segment `id`, opened if needed.
    fn reader(
        dir: &std::path::Path,
        readers: &Mutex<HashMap<u64, Arc<Reader>>>,
        id: u64,
    ) -> io::Result<Arc<Reader>> {
        let mut r = readers.lock();
        if let Some(f) = r.get(&id) {
            return Ok(f.clone());
        }
        if r.len() >= MAX_OPEN_READERS {
            r.clear();
        }
        let f = Arc::new(Reader::new(File::open(Self::path(dir, id))?));
        r.insert(id, f.clone());
        Ok(f)
    }

    /// Bytes segment `id` holds (live and dead).
    pub(crate) fn size(&self, id: u64) -> io::Result<u64> {
        match self {
            Segments::Dir { dir, .. } => Ok(fs::metadata(Self::path(dir, id))?.len()),
            Segments::Mem { segs } => {
                let seg = segs.read().get(&id).cloned().ok_or_else(|| missing(id))?;
                let len = seg.read().len();
                Ok(len as u64)
            }
        }
    }

    /// Cuts segment `id` back to `len` bytes: what a failed append wrote past the blocks before
    /// it (which no index row names) goes back to the file system at once.
    pub(crate) fn truncate(&self, id: u64, len: u64) -> io::Result<()> {
        match self {
            Segments::Dir { dir, .. } => OpenOptions::new()
                .write(true)
                .open(Self::path(dir, id))?
                .set_len(len),
            Segments::Mem { segs } => {
                if let Some(seg) = segs.read().get(&id) {
                    seg.write()
                        .truncate(usize::try_from(len).unwrap_or(usize::MAX));
                }
                Ok(())
            }
        }
    }

    /// Deletes segment `id` (a missing segment is not an error).
    pub(crate) fn remove(&self, id: u64) -> io::Result<()> {
        match self {
            Segments::Dir { dir, readers, .. } => {
                readers.lock().remove(&id);
                #[cfg(test)]
                tests::before_unlink(self, id);
                let unlinked = match fs::remove_file(Self::path(dir, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
                // A reader that missed the cache before the unlink may have opened the file
                // and cached it since; that handle would keep the unlinked file (up to a whole
                // segment) on the disk. Readers open under the cache's lock, so once the file
                // is gone none can cache it again. (Unlinking under the lock instead would
                // stall every read while the file system frees a large file.)
                readers.lock().remove(&id);
                unlinked
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

/// `len` bytes at `offset` of memory segment `id`, copied out by `copy`.
fn mem_read<T>(
    segs: &RwLock<HashMap<u64, Arc<RwLock<Vec<u8>>>>>,
    id: u64,
    offset: u64,
    len: usize,
    copy: impl FnOnce(&[u8]) -> T,
) -> io::Result<T> {
    let seg = segs.read().get(&id).cloned().ok_or_else(|| missing(id))?;
    let data = seg.read();
    let start = usize::try_from(offset).map_err(|_| short(id))?;
    let end = start.checked_add(len).ok_or_else(|| short(id))?;
    data.get(start..end).map(copy).ok_or_else(|| short(id))
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

/// The read handles of one segment file.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Through the page cache.
    file: File,
    /// `O_DIRECT`, opened at the first span read; `None` where the file system refuses it.
    direct: std::sync::OnceLock<Option<File>>,
}

impl Reader {
    fn new(file: File) -> Reader {
        Reader {
            file,
            direct: std::sync::OnceLock::new(),
        }
    }

    /// The direct handle, opened (at `path()`) on first use. A refusal by the file system is
    /// kept; any other failure to open is tried again next time.
    fn direct(&self, path: impl FnOnce() -> PathBuf) -> DirectHandle<'_> {
        if let Some(known) = self.direct.get() {
            return known
                .as_ref()
                .map_or(DirectHandle::Refused, DirectHandle::Open);
        }
        match open_direct(&path()) {
            DirectOpen::Opened(file) => {
                // Another reader may have opened it at the same moment: either handle is fine.
                let _ = self.direct.set(Some(file));
                self.direct
                    .get()
                    .and_then(Option::as_ref)
                    .map_or(DirectHandle::Failed, DirectHandle::Open)
            }
            DirectOpen::Refused => {
                let _ = self.direct.set(None);
                DirectHandle::Refused
            }
            DirectOpen::Failed => DirectHandle::Failed,
        }
    }
}

/// A segment's `O_DIRECT` read handle, as [`Reader::direct`] finds it.
#[derive(Debug)]
enum DirectHandle<'a> {
    /// Open.
    Open(&'a File),
    /// The file system does not do direct I/O (`EINVAL` at open).
    Refused,
    /// It could not be opened this time, for another reason.
    Failed,
}

/// What opening a segment for direct reads came to.
#[derive(Debug)]
enum DirectOpen {
    Opened(File),
    /// `EINVAL`: the file system does not do `O_DIRECT` (tmpfs, some FUSE).
    Refused,
    /// Any other error (the file is gone, no descriptor free, …).
    Failed,
}

#[cfg(target_os = "linux")]
fn open_direct(path: &std::path::Path) -> DirectOpen {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => DirectOpen::Opened(File::from(fd)),
        Err(rustix::io::Errno::INVAL) => DirectOpen::Refused,
        Err(_) => DirectOpen::Failed,
    }
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &std::path::Path) -> DirectOpen {
    DirectOpen::Refused
}

/// Reads `len` bytes at `offset` through `direct` (an `O_DIRECT` handle): the aligned range
/// around them goes into an aligned buffer, and the result is the slice asked for. A file that
/// ends before `offset + len` is [`io::ErrorKind::UnexpectedEof`]; a refused direct read
/// (`EINVAL`) is `InvalidInput`.
fn read_direct(direct: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    // Only a refusal by the file system (`EINVAL` from the read) is `InvalidInput`, which turns
    // direct reads off: a range that cannot be read is another kind of error.
    let bad_range = || io::Error::other(format!("no direct read of {len} bytes at {offset}"));
    let align = DIRECT_ALIGN as u64;
    let end = offset.checked_add(len as u64).ok_or_else(bad_range)?;
    let start = offset / align * align;
    let stop = end.checked_next_multiple_of(align).ok_or_else(bad_range)?;
    let span = usize::try_from(stop - start).map_err(|_| bad_range())?;
    let mut mem = vec![0u8; span + DIRECT_ALIGN];
    let pad = mem.as_ptr().align_offset(DIRECT_ALIGN);
    if pad >= DIRECT_ALIGN {
        return Err(bad_range());
    }
    let need = usize::try_from(end - start).map_err(|_| bad_range())?;
    let mut got = 0;
    while got < need {
        // Only whole aligned units can be asked for: after a short read that is not one, the
        // file ended.
        if got % DIRECT_ALIGN != 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match rustix::io::pread(direct, &mut mem[pad + got..pad + span], start + got as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let from = pad + usize::try_from(offset - start).map_err(|_| bad_range())?;
    Ok(Bytes::from(mem).slice(from..from + len))
}

/// Reads exactly `len` bytes at `offset` into a new vector without zero-filling it first: the
/// bytes go straight into the vector's spare capacity (rustix's `pread` into `spare_capacity`,
/// no `unsafe` here). A file that ends before `offset + len` is
/// [`io::ErrorKind::UnexpectedEof`].
fn read_exact_at(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `len`, and `pread` may have filled past it.
    buf.truncate(len);
    Ok(buf)
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
            SegmentWriter::File { file, .. } => file.len,
            SegmentWriter::Mem { data, .. } => data.read().len() as u64,
        }
    }

    /// Appends `bytes`, returning the offset they start at.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        match self {
            SegmentWriter::File { file, .. } => file.append(bytes),
            SegmentWriter::Mem { data, .. } => {
                let mut d = data.write();
                let at = d.len() as u64;
                d.extend_from_slice(bytes);
                Ok(at)
            }
        }
    }

    /// Takes back the staging buffers whose writes have completed, so that [`Self::staged`]
    /// stops counting them; fails with the error of a write that failed (as the next append
    /// would). Does not wait.
    pub(crate) fn reap(&mut self) -> io::Result<()> {
        match self {
            SegmentWriter::File { file, .. } => file.direct.as_mut().map_or(Ok(()), Direct::reap),
            SegmentWriter::Mem { .. } => Ok(()),
        }
    }

    /// Bytes appended that may not have reached the file yet (a direct segment's staging
    /// buffers, counted whole while their writes are in flight); 0 for a buffered segment, whose
    /// appends are in the page cache, and so take their room on the file system, at once.
    pub(crate) fn staged(&self) -> u64 {
        match self {
            SegmentWriter::File { file, .. } => file.direct.as_ref().map_or(0, |d| {
                (d.fill as u64).saturating_add((d.in_flight * DIRECT_STAGE_BYTES) as u64)
            }),
            SegmentWriter::Mem { .. } => 0,
        }
    }

    /// Writes out everything appended and makes it durable (`fdatasync`). A bulk segment stays
    /// direct if everything appended so far was a multiple of 4 KiB (whole blocks), and is
    /// buffered from here on otherwise (see the module docs).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        match self {
            SegmentWriter::File { file, .. } => file.sync(),
            SegmentWriter::Mem { .. } => Ok(()),
        }
    }
}

/// The writing side of a file segment: the page-cache handle, and direct-I/O state while appends
/// bypass the page cache.
#[derive(Debug)]
pub(crate) struct FileAppender {
    /// Buffered handle: appends once direct I/O is over (or unavailable), the unaligned tail, and
    /// `fdatasync`.
    file: File,
    /// Direct-I/O state, while appends go through it.
    direct: Option<Direct>,
    /// Bytes appended (the file's logical length).
    len: u64,
    /// Buffered appends: offset up to which writeback has been started.
    behind: u64,
}

impl FileAppender {
    fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let at = self.len;
        if let Some(d) = &mut self.direct {
            d.append(bytes)?;
        } else {
            self.file.write_all_at(bytes, at)?;
            write_behind(&self.file, &mut self.behind, at + bytes.len() as u64);
        }
        self.len += bytes.len() as u64;
        Ok(at)
    }

    fn sync(&mut self) -> io::Result<()> {
        match self.direct.take() {
            // Everything staged is aligned: write it directly and stay direct (a segment that
            // takes whole blocks batch after batch, like the network-leaves segment).
            Some(mut d) if d.fill % DIRECT_ALIGN == 0 => {
                d.flush()?;
                self.direct = Some(d);
            }
            Some(d) => d.finish(&self.file)?,
            None => {}
        }
        self.file.sync_data()
    }
}

/// Direct-I/O state of a bulk segment: the staging buffer being filled, and the thread that
/// hands full buffers to the device.
///
/// There are [`DIRECT_STAGES`] buffers: while the I/O thread waits for the device to take one,
/// the writer fills the next, so the device is kept busy and the writer (and the hasher behind
/// it) only waits when the disk is slower than the stream. Buffers go to the I/O thread with
/// their length and file offset, and come back, in order, with the outcome of the write.
struct Direct {
    /// The buffer being filled.
    stage: AlignedBuf,
    /// Bytes staged in it.
    fill: usize,
    /// File offset of its first byte (a multiple of [`DIRECT_ALIGN`]).
    base: u64,
    /// Buffers back from the I/O thread, ready to fill.
    spare: Vec<AlignedBuf>,
    /// Buffers handed to the I/O thread and not back yet.
    in_flight: usize,
    /// To the I/O thread: (buffer, bytes to write, file offset). `None` once shut down.
    jobs: Option<SyncSender<(AlignedBuf, usize, u64)>>,
    /// From the I/O thread: each buffer back, or the error writing it.
    done: Receiver<io::Result<AlignedBuf>>,
    thread: Option<JoinHandle<()>>,
}

/// Staging buffers per bulk segment: one filling, one being written.
const DIRECT_STAGES: usize = 2;

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("fill", &self.fill)
            .field("base", &self.base)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// [`DIRECT_STAGE_BYTES`] of memory aligned to [`DIRECT_ALIGN`], found inside a slightly larger
/// vector (no `unsafe` needed).
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> Option<AlignedBuf> {
        let mem = vec![0u8; DIRECT_STAGE_BYTES + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        (start < DIRECT_ALIGN).then_some(AlignedBuf { mem, start })
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + DIRECT_STAGE_BYTES]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + DIRECT_STAGE_BYTES]
    }
}

impl Direct {
    /// Opens an `O_DIRECT` handle on the (new, empty) segment file and starts its I/O thread, or
    /// returns `None` where direct I/O is not available; the segment is then written through the
    /// page cache. `buffered` is cloned for the I/O thread, which falls back to it if the file
    /// system refuses a direct write.
    #[cfg(target_os = "linux")]
    fn open(path: &std::path::Path, buffered: &File) -> Option<Direct> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let direct = File::from(fd);
        let buffered = buffered.try_clone().ok()?;
        let stage = AlignedBuf::new()?;
        let spare = (1..DIRECT_STAGES)
            .map(|_| AlignedBuf::new())
            .collect::<Option<Vec<_>>>()?;
        let (jobs, jobs_rx) = sync_channel::<(AlignedBuf, usize, u64)>(DIRECT_STAGES);
        let (done_tx, done) = sync_channel(DIRECT_STAGES);
        let thread = std::thread::Builder::new()
            .name("cairn-segment-io".into())
            .spawn(move || {
                let mut direct_ok = true;
                let mut behind = 0;
                for (buf, len, off) in jobs_rx {
                    let data = &buf.bytes()[..len];
                    let mut res = if direct_ok {
                        direct.write_all_at(data, off)
                    } else {
                        buffered.write_all_at(data, off)
                    };
                    // EINVAL: this file system does not do direct I/O after all. Write this and
                    // every later buffer through the page cache (with write-behind).
                    if direct_ok
                        && matches!(&res, Err(e) if e.kind() == io::ErrorKind::InvalidInput)
                    {
                        direct_ok = false;
                        res = buffered.write_all_at(data, off);
                    }
                    if !direct_ok && res.is_ok() {
                        write_behind(&buffered, &mut behind, off + len as u64);
                    }
                    // The receiver only goes away with the writer; nothing is left to report to.
                    if done_tx.send(res.map(|()| buf)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Direct {
            stage,
            fill: 0,
            base: 0,
            spare,
            in_flight: 0,
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(_path: &std::path::Path, _buffered: &File) -> Option<Direct> {
        None
    }

    /// Stages `bytes`, handing each buffer that fills to the I/O thread.
    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = (DIRECT_STAGE_BYTES - self.fill).min(bytes.len());
            self.stage.bytes_mut()[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill == DIRECT_STAGE_BYTES {
                let next = match self.spare.pop() {
                    Some(b) => b,
                    None => self.wait_one()?,
                };
                let full = std::mem::replace(&mut self.stage, next);
                self.submit(full, DIRECT_STAGE_BYTES)?;
                self.base += DIRECT_STAGE_BYTES as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    fn submit(&mut self, buf: AlignedBuf, len: usize) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(io_thread_gone)?;
        jobs.send((buf, len, self.base))
            .map_err(|_| io_thread_gone())?;
        self.in_flight += 1;
        Ok(())
    }

    /// Takes back every buffer whose write has completed, without waiting.
    fn reap(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            match self.done.try_recv() {
                Ok(written) => {
                    self.in_flight -= 1;
                    self.spare.push(written?);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(io_thread_gone()),
            }
        }
        Ok(())
    }

    /// Waits for the oldest buffer in flight to be written; returns it.
    fn wait_one(&mut self) -> io::Result<AlignedBuf> {
        let buf = self.done.recv().map_err(|_| io_thread_gone())??;
        self.in_flight -= 1;
        Ok(buf)
    }

    /// Writes everything staged (which must be a multiple of [`DIRECT_ALIGN`]) and waits for
    /// every write; appends continue directly after it.
    fn flush(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.fill % DIRECT_ALIGN, 0);
        if self.fill > 0 {
            let next = match self.spare.pop() {
                Some(b) => b,
                None => self.wait_one()?,
            };
            let staged = std::mem::replace(&mut self.stage, next);
            self.submit(staged, self.fill)?;
            self.base += self.fill as u64;
            self.fill = 0;
        }
        while self.in_flight > 0 {
            let buf = self.wait_one()?;
            self.spare.push(buf);
        }
        Ok(())
    }

    /// Writes everything staged, the aligned part directly and the tail through `buffered`,
    /// waits for every write, and stops the I/O thread.
    fn finish(mut self, buffered: &File) -> io::Result<()> {
        let aligned = self.fill - self.fill % DIRECT_ALIGN;
        let tail_at = self.base + aligned as u64;
        let tail = self.stage.bytes()[aligned..self.fill].to_vec();
        if aligned > 0 {
            let next = match self.spare.pop() {
                Some(b) => b,
                None => self.wait_one()?,
            };
            let last = std::mem::replace(&mut self.stage, next);
            self.submit(last, aligned)?;
        }
        while self.in_flight > 0 {
            let buf = self.wait_one()?;
            self.spare.push(buf);
        }
        buffered.write_all_at(&tail, tail_at)?;
        Ok(())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current write (its answers never block:
        // the answer queue holds every buffer there is).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn io_thread_gone() -> io::Error {
    io::Error::other("segment I/O thread stopped")
}

/// Write-behind for buffered appends (see the module docs): once [`WRITE_BEHIND_BYTES`] have
/// accumulated past `behind`, start writeback of them and drop the clean pages of the window
/// before. `end` is the offset written up to.
fn write_behind(file: &File, behind: &mut u64, end: u64) {
    if end.saturating_sub(*behind) < WRITE_BEHIND_BYTES {
        return;
    }
    let from = behind.saturating_sub(WRITE_BEHIND_BYTES);
    // Advice only: if the kernel ignores or refuses it, the final fdatasync does the work.
    let _ = rustix::fs::fadvise(
        file,
        from,
        std::num::NonZeroU64::new(end - from),
        rustix::fs::Advice::DontNeed,
    );
    *behind = end;
}

#[cfg(test)]
thread_local! {
    /// Tests: every [`Segments::read`] of this segment on this thread fails with `EIO`, as
    /// a bad sector's would.
    pub(crate) static UNREADABLE: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
    /// Tests: the next [`Segments::create`] on this thread fails (no file descriptor free).
    pub(crate) static FAIL_CREATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's look at a segment being removed.
    type RemoveHook = fn(&Segments, u64);

    thread_local! {
        /// Runs inside [`Segments::remove`] between dropping the segment's cached reader and
        /// unlinking its file, on the thread that set it.
        static BEFORE_UNLINK: std::cell::Cell<Option<RemoveHook>> =
            const { std::cell::Cell::new(None) };
    }

    pub(super) fn before_unlink(segs: &Segments, id: u64) {
        if let Some(hook) = BEFORE_UNLINK.with(std::cell::Cell::take) {
            hook(segs, id);
        }
    }

    /// A segment file that is gone when its first span read opens it for direct I/O (a
    /// compaction or a delete unlinked it meanwhile) is read through the handle already open,
    /// and direct reads stay on for every other segment: the failed open used to be taken for
    /// a file system without direct I/O, which turned them off for the life of the process.
    #[test]
    fn a_segment_unlinked_before_its_direct_open_leaves_direct_reads_on() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::dir(dir.path().join("blocks")).unwrap();
        let data = pattern(7, 3 * DIRECT_ALIGN);
        for id in [1, 2] {
            let mut w = segs.create(id, WriteMode::Buffered).unwrap();
            w.append(&data).unwrap();
            w.sync().unwrap();
        }
        if matches!(
            open_direct(&Segments::path(&dir.path().join("blocks"), 2)),
            DirectOpen::Refused
        ) {
            eprintln!("this file system does not do O_DIRECT: nothing to check");
            return;
        }
        // Segment 1's page-cache handle is open and cached; then its file goes.
        assert_eq!(segs.read(1, 0, 16).unwrap(), data[..16]);
        std::fs::remove_file(Segments::path(&dir.path().join("blocks"), 1)).unwrap();
        let got = segs.read_span(1, 0, data.len()).unwrap();
        assert_eq!(&got[..], &data[..], "read through the open handle");
        let Segments::Dir { direct_off, .. } = &segs else {
            unreachable!("a directory of segments")
        };
        assert!(
            !direct_off.load(std::sync::atomic::Ordering::Relaxed),
            "one failed open turned direct reads off"
        );
        assert_eq!(&segs.read_span(2, 0, data.len()).unwrap()[..], &data[..]);
    }

    /// A reader that misses the cache while a segment is being deleted (its cached handle
    /// dropped, the file not unlinked yet) opens the file and caches it. The cache used to keep
    /// that handle, and with it the unlinked file (up to 1 GiB) open, until it filled up (found
    /// by review).
    #[test]
    fn a_deleted_segment_is_not_kept_open_by_the_reader_cache() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::dir(dir.path().join("blocks")).unwrap();
        let data = pattern(5, 8192);
        let mut w = segs.create(5, WriteMode::Buffered).unwrap();
        w.append(&data).unwrap();
        w.sync().unwrap();
        drop(w);
        assert_eq!(segs.read(5, 0, data.len()).unwrap(), data);
        BEFORE_UNLINK.with(|h| {
            h.set(Some(|segs, id| {
                // A read from elsewhere, at that instant: the file is still there.
                assert_eq!(segs.read(id, 0, 10).unwrap().len(), 10);
            }));
        });
        segs.remove(5).unwrap();
        assert!(
            BEFORE_UNLINK.with(std::cell::Cell::take).is_none(),
            "the hook ran"
        );
        let Segments::Dir { readers, .. } = &segs else {
            unreachable!("a directory of segments")
        };
        assert!(
            !readers.lock().contains_key(&5),
            "the deleted segment's file is still held open"
        );
        assert_eq!(
            segs.read(5, 0, 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    /// A span read returns exactly the bytes asked for, at any offset and length (direct reads
    /// cover the aligned range around them), up to the end of a file whose length is not
    /// aligned; past the end is `UnexpectedEof`, and a span over the limit is refused.
    #[test]
    fn span_reads_return_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        for segs in [
            Segments::dir(dir.path().to_path_buf()).unwrap(),
            Segments::mem(),
        ] {
            let data = pattern(3, 3 * 65536 + 4097);
            let mut w = segs.create(11, WriteMode::Buffered).unwrap();
            w.append(&data).unwrap();
            w.sync().unwrap();
            let len = data.len() as u64;
            for (off, n) in [
                (0, 65536),
                (0, 3 * 65536),
                (65536, 2 * 65536 + 4097),
                (4095, 2),
                (100, 5000),
                (len - 1, 1),
                (len - 4097, 4097),
                (0, data.len()),
            ] {
                let got = segs.read_span(11, off, n).unwrap();
                let at = off as usize;
                assert_eq!(&got[..], &data[at..at + n], "at {off}, {n} bytes");
            }
            assert_eq!(
                segs.read_span(11, len - 10, 11).unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
            assert_eq!(
                segs.read_span(11, 0, MAX_SPAN_BYTES as usize + 1)
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                segs.read_span(12, 0, 10).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
        }
    }

    /// A span covering a unit read before is a read again; units are told apart by segment
    /// and by 64 KiB, across regions; the oldest regions are forgotten first.
    #[test]
    fn seen_regions_tell_a_second_read_from_a_first() {
        let mut seen = SeenRegions::default();
        assert!(!seen.touch(1, 0, 20 * 65536), "first read");
        assert!(
            !seen.touch(1, 20 * 65536, 20 * 65536),
            "the next blocks: first read"
        );
        assert!(
            seen.touch(1, 19 * 65536 + 100, 10),
            "inside a block read before"
        );
        assert!(!seen.touch(2, 0, 65536), "another segment");
        // Across a region boundary (units 63 and 64).
        assert!(!seen.touch(3, 63 * 65536, 2 * 65536));
        assert!(seen.touch(3, 64 * 65536, 1));
        // Blocks that do not start on a unit boundary (a merged segment): the next span starts
        // in the unit where the last one ended, and is still a first read.
        assert!(!seen.touch(4, 1000, 20 * 65536));
        assert!(
            !seen.touch(4, 1000 + 20 * 65536, 20 * 65536),
            "unaligned next span: a first read"
        );
        assert!(seen.touch(4, 1000, 20 * 65536), "the same span again");
        // Forgetting: fill with other regions; the first ones go.
        for r in 0..MAX_SEEN_REGIONS as u64 {
            seen.touch(9, r * 64 * 65536, 1);
        }
        assert!(!seen.touch(1, 0, 1), "forgotten");
        assert!(seen.bits.len() <= MAX_SEEN_REGIONS);
    }

    /// `len` bytes of a pattern that differs at every offset modulo 251.
    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((seed * 31 + i) % 251) as u8).collect()
    }

    /// `read_exact_at` returns exactly the bytes asked for (none of its spare capacity leaks
    /// into the result), and a read past the end of the file is `UnexpectedEof`, which the
    /// store reports as a corrupt block.
    #[test]
    fn read_exact_at_reads_the_range_or_fails_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pattern(3, 10_000);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        for (off, len) in [
            (0, 0),
            (0, 1),
            (0, 10_000),
            (1, 9_999),
            (4_096, 4_096),
            (9_999, 1),
        ] {
            let got = read_exact_at(&file, len, off as u64).unwrap();
            assert_eq!(got, data[off..off + len], "offset {off}, length {len}");
        }
        for (off, len) in [(0, 10_001), (9_999, 2), (10_000, 1), (20_000, 5)] {
            let err = read_exact_at(&file, len, off).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "offset {off}, length {len}"
            );
        }
    }

    /// Appends pieces of awkward sizes (crossing stage boundaries, unaligned), syncs, appends
    /// more after the sync, and reads everything back at the offsets `append` returned.
    fn round_trip(mode: WriteMode, sizes: &[usize]) {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::dir(dir.path().join("blocks")).unwrap();
        let mut w = segs.create(7, mode).unwrap();
        let mut written = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let data = pattern(i, size);
            let off = w.append(&data).unwrap();
            written.push((off, data));
            if i == sizes.len() - 2 {
                w.sync().unwrap();
            }
        }
        w.sync().unwrap();
        let total: usize = sizes.iter().sum();
        assert_eq!(w.len(), total as u64);
        assert_eq!(segs.disk_bytes().unwrap(), total as u64);
        for (off, data) in written {
            assert_eq!(segs.read(7, off, data.len()).unwrap(), data, "at {off}");
        }
    }

    #[test]
    fn bulk_segment_reads_back_across_stage_boundaries() {
        let block = 64 * 1024;
        let mut sizes = vec![block; DIRECT_STAGE_BYTES / block * 2 + 3];
        sizes.extend([1, 4095, DIRECT_STAGE_BYTES + 17, 300, 5]);
        round_trip(WriteMode::Bulk, &sizes);
    }

    /// The network-leaves segment syncs after every batch of whole blocks: it stays direct
    /// through aligned syncs, turns buffered at the first unaligned one, and every byte reads
    /// back at its offset either way.
    #[test]
    fn bulk_segment_stays_direct_through_aligned_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::dir(dir.path().join("blocks")).unwrap();
        let mut w = segs.create(9, WriteMode::Bulk).unwrap();
        let is_direct = |w: &SegmentWriter| match w {
            SegmentWriter::File { file, .. } => file.direct.is_some(),
            SegmentWriter::Mem { .. } => false,
        };
        let direct_available = is_direct(&w);
        let block = 64 * 1024;
        let mut written = Vec::new();
        // Batches of 3 and of 70 blocks (the latter crosses stage boundaries).
        for (batch, n) in [3, 70, 3, 1, 70].into_iter().enumerate() {
            for k in 0..n {
                let data = pattern(batch * 100 + k, block);
                written.push((w.append(&data).unwrap(), data));
            }
            w.sync().unwrap();
            assert_eq!(is_direct(&w), direct_available, "after batch {batch}");
            for (off, data) in &written {
                assert_eq!(&segs.read(9, *off, data.len()).unwrap(), data, "at {off}");
            }
        }
        let small = pattern(7, 100);
        written.push((w.append(&small).unwrap(), small));
        w.sync().unwrap();
        assert!(!is_direct(&w));
        let more = pattern(8, block);
        written.push((w.append(&more).unwrap(), more));
        w.sync().unwrap();
        for (off, data) in &written {
            assert_eq!(&segs.read(9, *off, data.len()).unwrap(), data, "at {off}");
        }
    }

    /// An abandoned upload drops its writer with buffers in flight: the I/O thread stops and the
    /// segment can be removed.
    #[test]
    fn bulk_segment_dropped_unsynced_stops_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::dir(dir.path().join("blocks")).unwrap();
        let mut w = segs.create(3, WriteMode::Bulk).unwrap();
        let data = pattern(1, 1024 * 1024);
        for _ in 0..(DIRECT_STAGE_BYTES * DIRECT_STAGES * 2) / data.len() + 1 {
            w.append(&data).unwrap();
        }
        drop(w);
        segs.remove(3).unwrap();
        assert_eq!(segs.list().unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn buffered_segment_reads_back_across_write_behind_windows() {
        let piece = 1024 * 1024 + 3;
        let n = usize::try_from(WRITE_BEHIND_BYTES * 2).unwrap() / piece + 2;
        round_trip(WriteMode::Buffered, &vec![piece; n]);
    }
}
