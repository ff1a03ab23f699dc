//! The transfer commands, `upload` and `download`: stream bytes to and from a running node over
//! its REST API, with a progress bar on stderr (drawn only when stderr is a terminal).

use std::{
    os::unix::fs::FileTypeExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{
    api::{Api, STALL_TIMEOUT},
    exit::{self, Failure},
    output,
};

const BAR_TEMPLATE: &str = "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
/// The progress line of a transfer whose length is not known (stdin, a pipe): no bar to fill.
const COUNTER_TEMPLATE: &str = "{spinner} {msg} [{elapsed_precise}] {bytes} {bytes_per_sec}";

/// Bytes read from a file or stdin at a time while uploading.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// How often a progress bar is redrawn when nothing moves it.
const BAR_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Characters of a CID shown as a download's progress message.
const BAR_CID_CHARS: usize = 12;

/// The input name that means stdin.
const STDIN: &str = "-";

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal, so it never
/// mixes with output that is piped or captured.
fn bar(len: Option<u64>, msg: String) -> ProgressBar {
    let (pb, template) = match len {
        Some(l) => (ProgressBar::new(l), BAR_TEMPLATE),
        None => (ProgressBar::no_length(), COUNTER_TEMPLATE),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb.set_message(msg);
    // Redrawn while no byte comes, so the elapsed time and the rate show a stall.
    pb.enable_steady_tick(BAR_TICK);
    pb
}

/// Options of `cairn upload`.
#[derive(Debug)]
pub(crate) struct UploadOptions<'a> {
    /// `--mime`.
    pub(crate) mime: Option<&'a str>,
    /// Record a file name (not `--no-filename`).
    pub(crate) with_filename: bool,
    /// `--filename`: the name to record instead of the file's own.
    pub(crate) filename: Option<&'a str>,
}

/// One upload in `cairn upload --json`.
#[derive(Debug, Serialize)]
struct UploadOut<'a> {
    cid: &'a str,
    file: &'a str,
    bytes: u64,
}

/// Whether `name` can be recorded as an upload's file name: the node accepts it
/// ([`cairn_api::valid_filename`]) and a header can carry it (no control character).
fn sendable_filename(name: &str) -> bool {
    // `valid_filename` looks at the last path component only, but a `"` anywhere would end
    // the header's quoted name, and with a `\` the node's answer leaves the name out (a
    // quoted-pair is not trusted by clients): it would be stored but never given back (review).
    cairn_api::valid_filename(name)
        && !name
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// Refuses an upload input that is a directory, which cannot be uploaded.
fn check_input(path: &Path, meta: &std::fs::Metadata) -> Result<(), Failure> {
    if meta.is_dir() {
        return Err(Failure::new(
            exit::FAILURE,
            format!("{} is a directory, not a file", path.display()),
        ));
    }
    Ok(())
}

/// File systems whose files' lengths say nothing about what they hold (`/proc` files say 0,
/// `/sys` files 4096, whatever they hold), by their `statfs` magic numbers (Linux's
/// `magic.h`): proc, sysfs, debugfs, tracefs, securityfs, configfs, cgroup, cgroup2.
const PSEUDO_FS_MAGIC: [u64; 8] = [
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x6265_6570,
    0x0027_e0eb,
    0x6367_7270,
];

/// The length of the upload input at `path` known before it is read, from its metadata: a
/// regular file's length. `None` for a stream whose length is known only at its end (a FIFO,
/// `/dev/stdin`, a device), and for files of pseudo file systems ([`PSEUDO_FS_MAGIC`]); such
/// inputs go chunked. A file with no disk block is either sparse (its length is right) or a
/// pseudo file system's, which its file system tells.
fn known_length(path: &Path, meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    if meta.blocks() == 0 && on_pseudo_fs(path) {
        return None;
    }
    Some(meta.len())
}

/// Whether `path` is on a pseudo file system ([`PSEUDO_FS_MAGIC`]); when that cannot be told,
/// it is taken to be (its length is then not trusted: the input goes chunked).
fn on_pseudo_fs(path: &Path) -> bool {
    rustix::fs::statfs(path).map_or(true, |s| {
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let magic = s.f_type as u64;
        PSEUDO_FS_MAGIC.contains(&magic)
    })
}

/// Whether the regular file at `path`, which says it is 0 bytes long, really is empty (a
/// `/proc` file says so too, and holds text).
async fn is_empty_file(path: &Path) -> anyhow::Result<bool> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut one = [0u8; 1];
    let n = f
        .read(&mut one)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 0)
}

/// Uploads each input (`-` is stdin) in turn; prints its CID (with `json`, a JSON line) as
/// soon as the node has stored it. Stops at the first failure.
pub(crate) async fn upload(
    api: &Api,
    inputs: &[std::path::PathBuf],
    options: &UploadOptions<'_>,
    json: bool,
) -> anyhow::Result<()> {
    if inputs.iter().filter(|p| is_stdin(p)).count() > 1 {
        return Err(Failure::new(exit::USAGE, "'-' (stdin) can be uploaded only once").into());
    }
    if options.filename.is_some() && inputs.len() > 1 {
        return Err(Failure::new(
            exit::USAGE,
            format!("--filename names one input, not {}", inputs.len()),
        )
        .into());
    }
    if let Some(n) = options.filename.filter(|n| !sendable_filename(n)) {
        // Refused here rather than by the node: a `"` would end the header's quoted name, and
        // a control character cannot be sent in a header at all.
        return Err(Failure::new(
            exit::INVALID,
            format!("--filename '{n}' is not a file name the node accepts"),
        )
        .into());
    }
    // Every input is looked at before the first is sent: a directory, a missing file or one
    // that cannot be read is a local mistake, said as such, and nothing is uploaded.
    for path in inputs.iter().filter(|p| !is_stdin(p)) {
        let meta = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        check_input(path, &meta)?;
        // Opened for reading, as it will be (a FIFO is not: opening it waits for a writer).
        if !meta.file_type().is_fifo() {
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
        }
        if meta.is_file() && meta.len() == 0 && is_empty_file(path).await? {
            return Err(Failure::new(
                exit::INVALID,
                format!(
                    "{} is empty; the node stores no empty dataset",
                    path.display()
                ),
            )
            .into());
        }
    }
    for path in inputs {
        let shown = path.display().to_string();
        let (reader, own_name, len): (Box<dyn AsyncRead + Send + Unpin>, _, _) = if is_stdin(path) {
            (Box::new(tokio::io::stdin()), None, None)
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {shown}"))?;
            // Its length now, as it is opened (it may have changed while earlier inputs
            // went up).
            let meta = file
                .metadata()
                .await
                .with_context(|| format!("cannot read {shown}"))?;
            let len = known_length(path, &meta);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            // At most the length announced in `Content-Length` (a file that grows meanwhile
            // does not overrun it).
            match len {
                Some(l) => (Box::new(file.take(l)), name, len),
                None => (Box::new(file), name, None),
            }
        };
        // A file's own name is left out when the node would refuse it, and the user is told.
        let name = match options.filename {
            Some(n) => Some(n.to_owned()),
            None => own_name.filter(|n| {
                let ok = sendable_filename(n);
                if !ok && options.with_filename {
                    output::note(&format!(
                        "{shown}: its name cannot be recorded (the node accepts no \
                         \\ / : * ? \" < > | ^ or control characters in a file name); uploading \
                         it without one (--filename gives it another)"
                    ));
                }
                ok
            }),
        }
        .filter(|_| options.with_filename);
        let pb = bar(len, name.clone().unwrap_or_else(|| shown.clone()));
        let sent = Arc::new(AtomicU64::new(0));
        let stream = {
            let (pb, counter) = (pb.clone(), sent.clone());
            let counted = tokio_util::io::ReaderStream::with_capacity(reader, UPLOAD_CHUNK)
                .inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        pb.inc(c.len() as u64);
                        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                });
            // A file that got shorter than the length announced ends the body with an error
            // that says so, not with the HTTP client's "early end".
            let end_check = {
                let (sent, shown) = (sent.clone(), shown.clone());
                futures::stream::once(async move {
                    let got = sent.load(Ordering::Relaxed);
                    match len {
                        Some(l) if got < l => Some(Err::<bytes::Bytes, _>(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "{shown} got shorter while it was read ({got} of the {l} bytes \
                                 it had when opened)"
                            ),
                        ))),
                        _ => None,
                    }
                })
                .filter_map(futures::future::ready)
            };
            counted.chain(end_check)
        };
        let mut req = api
            .request(Method::POST, &["data"])
            .body(reqwest::Body::wrap_stream(stream));
        // With its size said up front, the node refuses an upload that does not fit before
        // the first byte is sent (`507`); without it the body goes chunked.
        if let Some(l) = len {
            req = req.header(reqwest::header::CONTENT_LENGTH, l);
        }
        if let Some(m) = options.mime {
            req = req.header(reqwest::header::CONTENT_TYPE, m);
        }
        if let Some(n) = name {
            req = req.header(
                reqwest::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{n}\""),
            );
        }
        let what = format!("uploading {shown}");
        let answer = until_stalled(api.send(req, &what), &sent, api, &what)
            .await
            .and_then(|r| r);
        pb.finish_and_clear();
        let cid = answer?
            .text()
            .await
            .with_context(|| format!("{what}: the node's answer was cut off"))?;
        let cid = cid.trim();
        if cid.is_empty() {
            bail!("{what}: the node answered no CID");
        }
        if json {
            output::print_json(&UploadOut {
                cid,
                file: &shown,
                bytes: sent.load(Ordering::Relaxed),
            })?;
        } else {
            output::print(&format!("{cid}\n"))?;
        }
    }
    Ok(())
}

/// A download whose body ended early (`error`, after `received` of `total` bytes). A network
/// download's node ends the response when no peer had the next block in time (a provider left,
/// or none has it) and says so in its log; the CLI can only see the body stop.
fn cut_off(
    what: &str,
    received: u64,
    total: Option<u64>,
    error: &reqwest::Error,
    resumable: bool,
    network: bool,
) -> anyhow::Error {
    let of = total.map_or(String::new(), |t| format!(" of {t}"));
    // The innermost cause says what happened to the connection ("end of file before message
    // length reached"); the outer ones only that a body was being read.
    let mut inner: &dyn std::error::Error = error;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let cause = crate::api::short_cause(&inner.to_string());
    let again = if resumable {
        "; run it again to resume"
    } else {
        ""
    };
    let why = if network {
        " Over the network that means no peer had the next block in time (a provider left, or \
         none has it), unless the node stopped; the node's log says which"
    } else {
        " The node stopped, or could not read its store; its log says which"
    };
    anyhow::anyhow!(
        "{what}: the node stopped sending after {received}{of} bytes ({cause}).{why}{again}"
    )
}

/// The file name a dataset was uploaded with, from the `Content-Disposition` of a `HEAD` of
/// its download URL (`segments`): its `filename*` (how cairn sends a name beyond plain ASCII),
/// else its `filename` (how the reference sends every name, raw UTF-8 included), if it has one
/// that is safe as a file name here: its last path component, not `.` or `..`, no control
/// character. (The node stores names as given; a name is a label, never a path to follow.)
async fn dataset_filename(
    api: &Api,
    segments: &[&str],
    what: &str,
) -> anyhow::Result<Option<String>> {
    let ask = |method| {
        api.request(method, segments)
            .timeout(crate::api::REQUEST_TIMEOUT)
    };
    let resp = api.send_raw(ask(Method::HEAD), what).await?;
    if !resp.status().is_success() {
        // An answer to `HEAD` has no body, so no reason: the same `GET` gives it (an error
        // answer starts nothing). Review: `-o DIR` said only "400 Bad Request".
        let again = api.send_raw(ask(Method::GET), what).await?;
        if !again.status().is_success() {
            Api::check(again, what).await?;
        }
        return Err(crate::api::status_error(what, resp.status(), "").into());
    }
    let name = resp
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| file_name_from_disposition(v.as_bytes()));
    Ok(name)
}

/// The file name `-o DIR` saves under for a `Content-Disposition` value: the name it gives
/// ([`cairn_api::download_filename`]) made safe ([`safe_file_name`]).
fn file_name_from_disposition(value: &[u8]) -> Option<String> {
    cairn_api::download_filename(value).and_then(|n| safe_file_name(&n))
}

/// The last path component of `name` when it can name a file in a directory: not empty, not
/// hidden (a leading `.`: a peer's `.bashrc` or `.ssh` would land in the directory unseen), and
/// without control characters or the format characters that reorder or hide text (U+200B to
/// U+200F, U+202A to U+202E, U+2066 to U+2069, U+FEFF: a name shown as `txt.exe` that is
/// `exe.txt`). Review, both.
fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next()?;
    let deceptive = output::deceptive;
    // The file is first written as `NAME.part`, which must fit a file name too (255 bytes
    // on common file systems): a longer name falls back to the CID (found by review: a
    // 251-byte name failed with "File name too long").
    let fits = last.len() + ".part".len() <= MAX_FILE_NAME_BYTES;
    (!last.is_empty() && !last.starts_with('.') && !last.chars().any(deceptive) && fits)
        .then(|| last.to_owned())
}

/// The longest file name common file systems take (ext4, XFS, btrfs, APFS: 255 bytes).
const MAX_FILE_NAME_BYTES: usize = 255;

/// Where a download to a file writes, and what is there already.
struct Target {
    /// The file whose bytes are checked: `FILE.part`, or `FILE` (only read: what follows the
    /// bytes that match goes to `FILE.part`); `FILE.part` when there is nothing to check.
    file: std::path::PathBuf,
    /// Bytes already there, to be checked against the dataset before the rest is appended.
    offset: u64,
}

/// Times [`lock_part`] opens and locks `FILE.part` again when the file it locked was renamed
/// to `FILE` in between (by the download that held it, ending).
const PART_LOCK_TRIES: usize = 3;

/// An exclusive lock on a download's `FILE.part`, held for the download's whole run. Two
/// downloads of one file at once took turns with `FILE.part`: one resumed from the bytes the
/// other had written so far, the other renamed the finished file to `FILE`, and the first then
/// renamed its `FILE.part`, which held only the bytes after its resume point, over it: a
/// corrupt `FILE` and exit 0 both times (found by review, 4 runs in 5 of two overlapping
/// `cairn download CID -o FILE`). A second download of the same file now fails at once.
struct PartLock {
    /// `FILE.part`, open and locked; `None` where it could not be (see [`lock_part`]).
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl Drop for PartLock {
    fn drop(&mut self) {
        // A `FILE.part` the lock made and nobody wrote (the download failed before its first
        // byte, e.g. a wrong CID) goes. One renamed to `FILE` is no longer at the path.
        if let Some(file) = &self.file
            && let (Ok(held), Ok(there)) = (file.metadata(), std::fs::symlink_metadata(&self.path))
            && same_file(&held, &there)
            && held.len() == 0
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `a` and `b` are the metadata of one file.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Locks `part` (created if missing, never through a symlink) for one download. Another
/// download holding it is an error. Where it cannot be locked (a `FILE.part` that is not a
/// regular file, which [`target`] refuses with its own message; a directory this user cannot
/// write into, where only a `FILE` already whole can be "resumed"; a file system without locks),
/// the download goes on unlocked, as before the lock existed.
fn lock_part(part: &Path) -> anyhow::Result<PartLock> {
    let unlocked = || PartLock {
        file: None,
        path: part.to_path_buf(),
    };
    for _ in 0..PART_LOCK_TRIES {
        match std::fs::symlink_metadata(part) {
            Ok(m) if !m.file_type().is_file() => return Ok(unlocked()),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).write(true);
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut options,
            rustix::fs::OFlags::NOFOLLOW.bits().cast_signed(),
        );
        let file = match options.open(part) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(unlocked()),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", part.display())),
        };
        // `flock`: held by the open file, so it goes when this download ends, however it ends.
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!(
                        "another download is writing {}: wait for it to end, then run this again",
                        part.display()
                    ),
                )
                .into());
            }
            // A file system without locks.
            Err(rustix::io::Errno::NOLCK | rustix::io::Errno::NOTSUP) => return Ok(unlocked()),
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot lock {}", part.display()));
            }
        }
        // The download that held it may have renamed it to `FILE` between the open and the
        // lock: then what is locked is not `FILE.part` any more.
        let held = file
            .metadata()
            .with_context(|| format!("cannot read {}", part.display()))?;
        if std::fs::symlink_metadata(part).is_ok_and(|there| same_file(&held, &there)) {
            return Ok(PartLock {
                file: Some(file),
                path: part.to_path_buf(),
            });
        }
    }
    bail!(
        "{} kept being renamed by other downloads of the same file",
        part.display()
    )
}

/// `FILE.part` for `FILE`.
fn part_path(path: &Path) -> std::path::PathBuf {
    path.with_extension(match path.extension() {
        Some(e) => format!("{}.part", e.to_string_lossy()),
        None => "part".into(),
    })
}

/// Who chose the output file's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// The user, with `-o FILE`: `FILE` (and `FILE.part`) may be replaced by the dataset.
    ByUser,
    /// The dataset, with `-o DIR` (its file name, chosen by whoever uploaded it, or its CID): a
    /// file already there by that name, or by that name with `.part`, is not cairn's to replace
    /// unless its bytes are the dataset's first ones.
    ByDataset,
}

/// The refusal to touch `file`, which `-o DIR` did not name (see [`Named::ByDataset`]); `why`
/// follows "already exists".
fn not_replacing(file: &Path, why: &str) -> anyhow::Error {
    Failure::new(
        exit::FAILURE,
        format!(
            "{} already exists{why}: not replacing a file the dataset's name chose (remove it, or \
             give its path to -o to replace it)",
            file.display()
        ),
    )
    .into()
}

/// Whether `path`, or where its link points, names one of this process's descriptors
/// (`/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/<pid>/fd/N`): written in place, never as
/// `FILE.part`. Not all of `/dev`: a regular file in `/dev/shm` is a file like any other.
async fn is_special_path(path: &Path) -> bool {
    let special = |p: &Path| {
        p == Path::new("/dev/stdout")
            || p == Path::new("/dev/stderr")
            || p.starts_with("/dev/fd")
            || (p.starts_with("/proc")
                && p.components().nth(3).is_some_and(|c| c.as_os_str() == "fd"))
    };
    special(path)
        || tokio::fs::read_link(path)
            .await
            .is_ok_and(|target| special(&target))
}

/// What is at `file`, without following a symlink; `None` when nothing is.
async fn lstat(file: &Path) -> anyhow::Result<Option<std::fs::Metadata>> {
    match tokio::fs::symlink_metadata(file).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// What to resume: a non-empty `FILE.part` left by an interrupted download, else a non-empty
/// `FILE`; else a fresh `FILE.part`. A name the dataset chose ([`Named::ByDataset`]) is
/// resumed only from a file whose bytes are then checked (a mismatch is refused), and never
/// with `--no-resume`.
async fn target(path: &Path, resume: bool, named: Named) -> anyhow::Result<Target> {
    let part = part_path(path);
    if named == Named::ByDataset {
        let fresh = Target {
            file: part.clone(),
            offset: 0,
        };
        let part_meta = lstat(&part).await?;
        // An empty regular `FILE.part` holds nothing to lose.
        let part_in_use = part_meta
            .as_ref()
            .is_some_and(|m| !m.file_type().is_file() || m.len() > 0);
        return match lstat(path).await? {
            Some(m) if !m.file_type().is_file() => Err(not_replacing(path, " and is not a file")),
            Some(_) if !resume => Err(not_replacing(path, " (--no-resume)")),
            Some(_) if part_in_use => Err(not_replacing(&part, "")),
            Some(m) if m.len() == 0 => Err(not_replacing(path, " and is empty")),
            Some(m) => Ok(Target {
                file: path.to_path_buf(),
                offset: m.len(),
            }),
            None => match part_meta {
                Some(m) if !m.file_type().is_file() => {
                    Err(not_replacing(&part, " and is not a file"))
                }
                Some(_) if part_in_use && !resume => Err(not_replacing(&part, " (--no-resume)")),
                Some(m) if part_in_use => Ok(Target {
                    file: part,
                    offset: m.len(),
                }),
                _ => Ok(fresh),
            },
        };
    }
    // `FILE.part` is written and renamed: never through a symlink, nor a device or FIFO.
    if lstat(&part)
        .await?
        .is_some_and(|m| !m.file_type().is_file())
    {
        bail!("{} exists and is not a regular file", part.display());
    }
    if resume {
        for file in [&part, path] {
            match tokio::fs::metadata(file).await {
                Ok(m) if m.is_file() && m.len() > 0 => {
                    return Ok(Target {
                        file: file.to_path_buf(),
                        offset: m.len(),
                    });
                }
                Ok(m) if m.is_file() => {}
                Ok(_) => bail!("{} exists and is not a file", file.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
            }
        }
    }
    Ok(Target {
        file: part,
        offset: 0,
    })
}

/// Bytes of a partial output file compared with the dataset at a time: what checking it holds
/// in memory, whatever the sizes of the file and of the pieces the node sends.
const CHECK_CHUNK: usize = 64 * 1024;

/// Reads `expected.len()` bytes from `file` at its position and compares them with
/// `expected`, [`CHECK_CHUNK`] bytes at a time into `buf` (at least that long); the index in
/// `expected` of the first byte that differs.
async fn first_difference<R: AsyncRead + Unpin>(
    file: &mut R,
    expected: &[u8],
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let mut done = 0;
    for piece in expected.chunks(CHECK_CHUNK) {
        let got = &mut buf[..piece.len()];
        file.read_exact(got).await?;
        if let Some(i) = got.iter().zip(piece).position(|(a, b)| a != b) {
            return Ok(Some(done + i));
        }
        done += piece.len();
    }
    Ok(None)
}

/// Options of `cairn download`.
#[derive(Debug)]
pub(crate) struct DownloadOptions {
    /// Continue a partial output file (not `--no-resume`).
    pub(crate) resume: bool,
    /// `--local`: only a dataset whose manifest the node holds (`/data/{cid}`).
    pub(crate) local: bool,
    /// `--json`: print a JSON summary (needs an output file); nothing else is said on stderr
    /// unless something fails.
    pub(crate) json: bool,
}

/// A finished download in `cairn download --json`.
#[derive(Debug, Serialize)]
struct DownloadOut<'a> {
    cid: &'a str,
    file: String,
    /// The dataset's size (the output file's).
    bytes: u64,
    /// Bytes written this time (less than `bytes` when a partial file was resumed: the bytes
    /// already there that matched the dataset's were kept).
    fetched: u64,
}

/// Downloads a dataset to `output` or stdout. The node serves what it has and fetches the rest
/// from its peers (`/data/{cid}/network/stream`), or with `local` only a dataset whose manifest
/// it holds (`/data/{cid}`; missing blocks of it are still fetched).
///
/// To a file, the bytes go to `FILE.part`, renamed to `FILE` once its size is the dataset's
/// (into a directory, without replacing a file that appeared at `FILE` meanwhile: [`finish`]).
/// With `resume`, a `FILE.part` left by an interrupted download, or else an existing `FILE`,
/// is continued, but not trusted: the dataset is asked for whole and the bytes already there
/// are compared with it as it arrives (a piece at a time, see [`CHECK_CHUNK`]); when they all
/// match, the rest is appended (to `FILE.part`: a `FILE` is only read, so one the user cannot
/// write is resumed too, its checked bytes copied first). At the first byte that differs the file is not a piece of the
/// dataset: that is said on stderr and the download goes on as a fresh one would (a `FILE`
/// that differs is left as it was until the dataset, written to `FILE.part`, replaces it). A
/// file longer than the dataset is not a piece of it either. The check costs reading those
/// bytes from the node again, which holds them when it stored them for the interrupted
/// download; it is what makes the result the dataset, whatever was in the file.
pub(crate) async fn download(
    api: &Api,
    cid: &str,
    output: Option<&Path>,
    options: &DownloadOptions,
) -> anyhow::Result<()> {
    let segments: &[&str] = if options.local {
        &["data", cid]
    } else {
        &["data", cid, "network", "stream"]
    };
    let what = format!("downloading {cid}");
    // `-o -` is stdout, asked for by name: even a terminal gets binary bytes then.
    let stdout_by_name = output.is_some_and(|p| p.as_os_str() == "-");
    let Some(path) = output.filter(|_| !stdout_by_name) else {
        if options.json {
            return Err(Failure::new(
                exit::USAGE,
                "--json needs --output FILE: without it the dataset itself goes to stdout",
            )
            .into());
        }
        let guard = !stdout_by_name && std::io::IsTerminal::is_terminal(&std::io::stdout());
        return download_to_stdout(api, segments, cid, &what, !options.local, guard).await;
    };
    // Into a directory: the dataset's own file name there (else its CID).
    let is_dir = tokio::fs::metadata(path).await.is_ok_and(|m| m.is_dir());
    // `-o newdir/` where there is no such directory: said before anything is fetched. It was
    // taken as a file name, the dataset went to `newdir.part`, and the rename to `newdir/`
    // failed after the whole transfer, every time (found by review).
    if !is_dir && path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Failure::new(
            exit::USAGE,
            format!("--output {}: no such directory", path.display()),
        )
        .into());
    }
    let in_dir;
    let (path, named) = if is_dir {
        let name = dataset_filename(api, segments, &what).await?;
        in_dir = path.join(name.unwrap_or_else(|| cid.to_owned()));
        (in_dir.as_path(), Named::ByDataset)
    } else {
        (path, Named::ByUser)
    };
    let say = |text: String| {
        if !options.json {
            eprintln!("{text}");
        }
    };
    // A symlink to a regular file: that file is written the usual way (`FILE.part`, then
    // renamed over it), and the link stays. Before, the file was emptied and written in place
    // before the node was even asked, so a wrong CID or a node that was down wiped it (found by
    // review).
    let resolved;
    let path = match lstat(path).await? {
        // `/dev/stdout`, `/proc/self/fd/N`: written directly, whatever they lead to (the
        // README's promise). Resolved, `/dev/stdout` redirected to a file (`>> all.bin`) named
        // that file, which was then replaced by `FILE.part` (found by review).
        Some(_) if named == Named::ByUser && is_special_path(path).await => path,
        Some(m) if named == Named::ByUser && m.file_type().is_symlink() => {
            match tokio::fs::canonicalize(path).await {
                Ok(real) if tokio::fs::metadata(&real).await.is_ok_and(|m| m.is_file()) => {
                    resolved = real;
                    resolved.as_path()
                }
                _ => path,
            }
        }
        _ => path,
    };
    let direct = named == Named::ByUser
        && (is_special_path(path).await
            || lstat(path).await?.is_some_and(|m| !m.file_type().is_file()));
    if direct {
        let bytes = download_direct(api, segments, cid, &what, !options.local, path).await?;
        if options.json {
            output::print_json(&DownloadOut {
                cid,
                file: path.display().to_string(),
                bytes,
                fetched: bytes,
            })?;
        }
        return Ok(());
    }
    // One download of a file at a time: held until this one has ended.
    let _lock = {
        let part = part_path(path);
        tokio::task::spawn_blocking(move || lock_part(&part))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)?
    };
    let mut target = target(path, options.resume, named).await?;
    // A name the dataset chose replaces only the file found there and checked to be a piece of
    // the dataset; when nothing was there, nothing that turns up there meanwhile is replaced.
    let place = if named == Named::ByDataset && target.file != path {
        Place::Free
    } else {
        Place::Replace
    };
    let resp = Api::check(get(api, segments, &what).await?, &what).await?;
    let total = resp
        .content_length()
        .with_context(|| format!("{what}: the node did not say how long the dataset is"))?;
    let part = part_path(path);
    if target.offset > total {
        if named == Named::ByDataset {
            return Err(not_replacing(
                &target.file,
                " and is longer than the dataset, so not a piece of it",
            ));
        }
        say(format!(
            "{} is longer than the dataset, so not a piece of it: downloading it whole",
            target.file.display()
        ));
        target = Target {
            file: part.clone(),
            offset: 0,
        };
    }
    // The bytes already there are only read (the file may be read-only, or another user's):
    // what is written goes to `FILE.part`, opened once it is needed.
    let mut existing = None;
    let mut out = None;
    if target.offset > 0 {
        existing = Some(
            tokio::fs::File::open(&target.file)
                .await
                .with_context(|| format!("cannot open {}", target.file.display()))?,
        );
    } else {
        out = Some(writer(&target.file, &part, 0).await?);
    }
    // Bytes at the start of the file that are the dataset's: those already there, once checked
    // (`checked` of them so far); after a difference, only those before it.
    let mut kept = target.offset;
    let mut checked = 0;
    let mut buf = vec![0; CHECK_CHUNK.min(usize::try_from(kept).unwrap_or(usize::MAX))];
    let pb = bar(Some(total), cid.chars().take(BAR_CID_CHARS).collect());
    let mut body = resp.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = tokio::time::timeout(STALL_TIMEOUT, body.next())
        .await
        .map_err(|_| api.stalled(&what))?
    {
        let chunk =
            chunk.map_err(|e| cut_off(&what, received, Some(total), &e, true, !options.local))?;
        let mut rest: &[u8] = &chunk;
        if let Some(f) = existing.as_mut().filter(|_| checked < kept) {
            let n = rest
                .len()
                .min(usize::try_from(kept - checked).unwrap_or(usize::MAX));
            let differs = first_difference(f, &rest[..n], &mut buf)
                .await
                .with_context(|| format!("cannot read {}", target.file.display()))?;
            match differs {
                None => {
                    checked += n as u64;
                    rest = &rest[n..];
                    if checked == kept && kept < total {
                        pb.suspend(|| {
                            say(format!(
                                "resuming {} at byte {kept}: the bytes already there match the \
                                 dataset",
                                target.file.display()
                            ));
                        });
                        existing = None;
                        out = Some(writer(&target.file, &part, kept).await?);
                    }
                }
                Some(i) => {
                    let at = checked + i as u64;
                    if named == Named::ByDataset {
                        pb.finish_and_clear();
                        return Err(not_replacing(
                            &target.file,
                            &format!(" and is not a piece of {cid} (byte {at} differs)"),
                        ));
                    }
                    pb.suspend(|| {
                        say(format!(
                            "{} is not a piece of {cid} (byte {at} differs): not resuming it, \
                             downloading the dataset whole",
                            target.file.display()
                        ));
                    });
                    // A `FILE` that differs is not ours to overwrite until the dataset is
                    // complete: the bytes before the difference go to `FILE.part`.
                    existing = None;
                    out = Some(writer(&target.file, &part, at).await?);
                    (kept, checked) = (at, at);
                    rest = &rest[i..];
                }
            }
        }
        if !rest.is_empty() {
            let f = out
                .as_mut()
                .with_context(|| format!("{what}: the node sent more than the dataset"))?;
            f.write_all(rest)
                .await
                .with_context(|| format!("cannot write {}", part.display()))?;
        }
        received += chunk.len() as u64;
        pb.set_position(received);
    }
    if checked < kept {
        bail!("{what}: the node sent {received} bytes of {total} (run it again to resume)");
    }
    drop(existing);
    // Nothing written: what was there is the whole dataset.
    let done = match out {
        Some(f) => {
            f.sync_all().await?;
            let written = f.metadata().await?.len();
            drop(f);
            if written != total {
                pb.finish_and_clear();
                bail!(
                    "{what}: {} has {written} bytes, the dataset {total} (run it again to resume)",
                    part.display()
                );
            }
            part.clone()
        }
        None => target.file.clone(),
    };
    pb.finish_and_clear();
    finish(&done, path, place).await?;
    if options.json {
        output::print_json(&DownloadOut {
            cid,
            file: path.display().to_string(),
            bytes: total,
            fetched: total - kept,
        })?;
    } else if kept == total {
        say(format!(
            "{} already holds all {total} bytes of {cid}: they match the dataset",
            path.display()
        ));
    }
    Ok(())
}

/// `part`, open for writing after the first `len` bytes of `from` (`part` itself, or the
/// `FILE` whose first bytes were checked to be the dataset's, which is only read).
/// How `FILE.part` is opened for writing: created if missing, and never through a symlink (one
/// put there after the checks, in a shared directory such as `/tmp`, would have had its target
/// written over; found by review). A symlink there fails the open ("too many levels of
/// symbolic links").
fn part_options() -> tokio::fs::OpenOptions {
    let mut o = tokio::fs::OpenOptions::new();
    o.create(true).write(true);
    #[cfg(unix)]
    o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed());
    o
}

async fn writer(from: &Path, part: &Path, len: u64) -> anyhow::Result<tokio::fs::File> {
    if from != part {
        return part_from(from, part, len).await;
    }
    let mut f = part_options()
        .truncate(len == 0)
        .open(part)
        .await
        .with_context(|| format!("cannot open {}", part.display()))?;
    f.set_len(len).await?;
    f.seek(std::io::SeekFrom::Start(len)).await?;
    Ok(f)
}

/// Starts `part` with the first `len` bytes of `file` (checked to be the dataset's); returns it
/// open, positioned after them.
async fn part_from(file: &Path, part: &Path, len: u64) -> anyhow::Result<tokio::fs::File> {
    let mut from = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?
        .take(len);
    let mut to = part_options()
        .truncate(true)
        .open(part)
        .await
        .with_context(|| format!("cannot open {}", part.display()))?;
    tokio::io::copy(&mut from, &mut to)
        .await
        .with_context(|| format!("cannot copy {} to {}", file.display(), part.display()))?;
    Ok(to)
}

/// `GET` the API path made of `segments`: the whole dataset.
/// The answer's head must come within [`STALL_TIMEOUT`].
async fn get(api: &Api, segments: &[&str], what: &str) -> anyhow::Result<reqwest::Response> {
    tokio::time::timeout(
        STALL_TIMEOUT,
        api.send_raw(api.request(Method::GET, segments), what),
    )
    .await
    .map_err(|_| api.stalled(what))?
}

/// How often [`until_stalled`] looks at the progress.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `work` (a request whose body is being sent) until it ends, or fails it once `progress`
/// (bytes the node took) has not moved for [`STALL_TIMEOUT`].
async fn until_stalled<T>(
    work: impl std::future::Future<Output = T>,
    progress: &AtomicU64,
    api: &Api,
    what: &str,
) -> anyhow::Result<T> {
    let mut work = std::pin::pin!(work);
    let mut seen = progress.load(Ordering::Relaxed);
    let mut since = tokio::time::Instant::now();
    let mut check = tokio::time::interval(STALL_CHECK);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = check.tick() => {
                let now = progress.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, tokio::time::Instant::now());
                } else if since.elapsed() >= STALL_TIMEOUT {
                    return Err(api.stalled(what));
                }
            }
        }
    }
}

/// Whether [`finish`] may replace what is at the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Yes: the user named it (`-o FILE`), or it was checked to be a piece of the dataset.
    Replace,
    /// No: nothing was there when the download started (`-o DIR`), so whatever is there now
    /// was made by someone else meanwhile ([`rename_no_replace`]).
    Free,
}

/// Moves the finished `file` to `path` (nothing to do when resumed in place). With
/// [`Place::Free`], a file that appeared at `path` during the download is not replaced: that
/// is refused as [`target`] refuses a file found there at the start, and `file` (the whole
/// dataset) is kept, so a run after the other file is moved away only checks it.
async fn finish(file: &Path, path: &Path, place: Place) -> anyhow::Result<()> {
    if file == path {
        return Ok(());
    }
    let renamed = match place {
        Place::Replace => tokio::fs::rename(file, path).await,
        Place::Free => {
            let (from, to) = (file.to_owned(), path.to_owned());
            tokio::task::spawn_blocking(move || rename_no_replace(&from, &to))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
        }
    };
    match renamed {
        Ok(()) => Ok(()),
        Err(e) if place == Place::Free && e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(not_replacing(
                path,
                &format!(
                    ", made while the dataset downloaded (the whole dataset is in {})",
                    file.display()
                ),
            ))
        }
        Err(e) => Err(e)
            .with_context(|| format!("cannot rename {} to {}", file.display(), path.display())),
    }
}

/// Renames `from` to `to` unless something is at `to` (then [`std::io::ErrorKind::AlreadyExists`],
/// and `from` is left as it was), in one step where the system allows: a plain rename would
/// replace a file made at `to` after it was found free. On Linux `renameat2` with
/// `RENAME_NOREPLACE`; where a file system or kernel refuses that flag, or elsewhere, a hard
/// link then unlink ([`link_then_unlink`]); where hard links are refused too (FAT, some FUSE
/// file systems), a placeholder then rename ([`reserve_then_rename`]).
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::{
            fs::{CWD, RenameFlags, renameat_with},
            io::Errno,
        };
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            // The flag is not supported here (NFS, many FUSE file systems, old kernels).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match link_then_unlink(from, to) {
        Err(e) if links_unsupported(&e) => reserve_then_rename(from, to),
        other => other,
    }
}

/// Whether a hard link failed because the file system has none (not because of `to`).
fn links_unsupported(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    // EPERM is what FAT gives; EACCES (same kind) fails the placeholder's creation as well.
    e.kind() == std::io::ErrorKind::PermissionDenied
        || matches!(
            Errno::from_io_error(e),
            Some(Errno::OPNOTSUPP | Errno::NOSYS | Errno::MLINK)
        )
}

/// [`rename_no_replace`] by a hard link, which fails if `to` exists, then the removal of
/// `from`.
fn link_then_unlink(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)?;
    // The file is in place once linked: a temporary name that cannot be removed is only noted
    // (review: it was an error, with the download in place under both names).
    if let Err(e) = std::fs::remove_file(from)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        crate::output::note(&format!(
            "the download is in place, but its temporary name {} could not be removed: {e}",
            from.display()
        ));
    }
    Ok(())
}

/// [`rename_no_replace`] by an empty placeholder at `to`, created only if nothing is there
/// (`O_EXCL`), then replaced by `from`. Not one step: someone who removes the placeholder in
/// between and puts a file there loses it; but no file that was there, or that came without
/// removing ours, is replaced.
fn reserve_then_rename(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let placeholder = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?
        .metadata()?;
    std::fs::rename(from, to).inspect_err(|_| {
        // Only our placeholder is removed: a file someone put there meanwhile stays (review).
        if std::fs::symlink_metadata(to)
            .is_ok_and(|m| m.dev() == placeholder.dev() && m.ino() == placeholder.ino())
        {
            let _ = std::fs::remove_file(to);
        }
    })
}

/// Whether `chunk` is not text, by the rule curl uses before writing to a terminal: it holds a
/// NUL byte, which no text in a common encoding but UTF-16 has.
fn looks_binary(chunk: &[u8]) -> bool {
    chunk.contains(&0)
}

/// Writes a download to stdout. With `terminal_guard` (stdout is a terminal and was not asked
/// for by name), a piece that looks binary ([`looks_binary`]) stops it before that piece is
/// written: raw bytes would garble the terminal and are no use there.
async fn download_to_stdout(
    api: &Api,
    segments: &[&str],
    cid: &str,
    what: &str,
    network: bool,
    terminal_guard: bool,
) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let to = Sink {
        name: "stdout",
        terminal_guard,
    };
    stream_to(api, segments, cid, what, network, &mut out, &to).await?;
    Ok(())
}

/// Where [`stream_to`] writes: its name in messages, and whether binary bytes are refused.
struct Sink<'a> {
    name: &'a str,
    terminal_guard: bool,
}

/// Downloads to `path`, which is not a regular file (a device such as `/dev/null`, a FIFO,
/// `/dev/stdout`, a symlink to one, or to nothing yet): written directly, without `FILE.part`,
/// rename or resume, so what is there is never replaced (a symlink is followed). Returns the
/// dataset's size.
async fn download_direct(
    api: &Api,
    segments: &[&str],
    cid: &str,
    what: &str,
    network: bool,
    path: &Path,
) -> anyhow::Result<u64> {
    // `/dev/stdout` and the like lead to what the shell opened: appended to, as the shell's
    // own descriptor would be (`>> all.bin` keeps what all.bin held).
    let special = is_special_path(path).await;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(special)
        // Emptied below only when it turns out to be a regular file.
        .truncate(false)
        .open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    // A symlink to a regular file: that file is written over.
    let regular = f.metadata().await.is_ok_and(|m| m.is_file());
    if regular && !special {
        f.set_len(0)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let name = path.display().to_string();
    let to = Sink {
        name: &name,
        terminal_guard: false,
    };
    let written = stream_to(api, segments, cid, what, network, &mut f, &to).await?;
    if regular {
        f.sync_all()
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(written)
}

/// Streams the dataset at `segments` into `out`; the bytes written.
async fn stream_to<W: tokio::io::AsyncWrite + Unpin>(
    api: &Api,
    segments: &[&str],
    cid: &str,
    what: &str,
    network: bool,
    out: &mut W,
    to: &Sink<'_>,
) -> anyhow::Result<u64> {
    let terminal_guard = to.terminal_guard;
    let resp = Api::check(get(api, segments, what).await?, what).await?;
    let pb = bar(
        resp.content_length(),
        cid.chars().take(BAR_CID_CHARS).collect(),
    );
    let total = resp.content_length();
    let mut body = resp.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = tokio::time::timeout(STALL_TIMEOUT, body.next())
        .await
        .map_err(|_| api.stalled(what))?
    {
        let chunk = chunk.map_err(|e| cut_off(what, received, total, &e, false, network))?;
        if terminal_guard && looks_binary(&chunk) {
            pb.finish_and_clear();
            return Err(Failure::new(exit::USAGE, binary_to_terminal(cid, received)).into());
        }
        out.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write to {}", to.name))?;
        received += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    out.flush()
        .await
        .with_context(|| format!("cannot write to {}", to.name))?;
    pb.finish_and_clear();
    Ok(received)
}

/// The refusal to write binary bytes to a terminal, after `written` bytes that looked like text.
fn binary_to_terminal(cid: &str, written: u64) -> String {
    let so_far = if written == 0 {
        String::new()
    } else {
        format!(" after {written} bytes of text")
    };
    format!(
        "stopped{so_far}: the dataset is binary and stdout is a terminal. Save it with \
         `-o FILE` (or `-o DIR`), pipe it (`cairn download {cid} > FILE`), or give `-o -` \
         to write it to the terminal anyway"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only this process's descriptors are written in place; a file elsewhere under `/dev`
    /// (`/dev/shm`) goes through `FILE.part` as any other (review: it was appended to).
    #[tokio::test]
    async fn only_descriptors_are_special_paths() {
        for p in [
            "/dev/stdout",
            "/dev/stderr",
            "/dev/fd/1",
            "/proc/self/fd/1",
            "/proc/42/fd/3",
        ] {
            assert!(is_special_path(Path::new(p)).await, "{p}");
        }
        for p in [
            "/dev/shm/data.bin",
            "/dev/null2",
            "/proc/self/status",
            "/tmp/x",
            "/devx/fd/1",
        ] {
            assert!(!is_special_path(Path::new(p)).await, "{p}");
        }
    }

    /// Text in the usual encodings passes; anything with a NUL byte (images, archives, most
    /// binary formats within their first bytes) is binary.
    #[test]
    fn binary_is_told_from_text_by_a_nul_byte() {
        for text in ["", "hello\n", "été, 日本語\ttabs\r\n", "\x1b[31mred\x1b[0m"] {
            assert!(!looks_binary(text.as_bytes()), "{text:?}");
        }
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(looks_binary(png));
        assert!(looks_binary(&[b'a', 0, b'b']));
        let message = binary_to_terminal("zDv1", 0);
        assert!(message.starts_with("stopped: "), "{message}");
        assert!(message.contains("-o -"), "{message}");
        assert!(binary_to_terminal("zDv1", 10).starts_with("stopped after 10 bytes of text: "));
    }

    #[tokio::test]
    async fn partial_files_are_compared_a_piece_at_a_time() {
        let expected = bytes(3 * CHECK_CHUNK + 17);
        let mut buf = vec![0; CHECK_CHUNK];
        // The same bytes: no difference, and the reader is left after them.
        let mut file: &[u8] = &expected;
        assert_eq!(
            first_difference(&mut file, &expected, &mut buf)
                .await
                .unwrap(),
            None
        );
        assert!(file.is_empty());
        // A difference in a later piece is found at its place in the whole.
        for at in [
            0,
            1,
            CHECK_CHUNK - 1,
            CHECK_CHUNK,
            2 * CHECK_CHUNK + 5,
            expected.len() - 1,
        ] {
            let mut other = expected.clone();
            other[at] ^= 0x80;
            let mut file: &[u8] = &other;
            assert_eq!(
                first_difference(&mut file, &expected, &mut buf)
                    .await
                    .unwrap(),
                Some(at),
                "{at}"
            );
        }
        // A file shorter than the bytes to compare is an error, not a match.
        let mut short: &[u8] = &expected[..10];
        let err = first_difference(&mut short, &expected[..20], &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// `len` bytes that are not all alike.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A transfer in which nothing moves for the stall limit fails as not answered in time
    /// (exit 3); one that keeps moving, however slowly, is left to go on.
    #[tokio::test(start_paused = true)]
    async fn a_transfer_in_which_nothing_moves_fails_as_not_answered() {
        let api = Api::new(crate::api::parse_api_url("http://127.0.0.1:9").unwrap()).unwrap();
        let still = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        let err = until_stalled(std::future::pending::<()>(), &still, &api, "uploading x")
            .await
            .expect_err("a transfer that never moves ends");
        assert_eq!(exit::code_of(&err), exit::UNREACHABLE, "{err}");
        let took = started.elapsed();
        assert!(
            took >= STALL_TIMEOUT && took <= STALL_TIMEOUT + 2 * STALL_CHECK,
            "{took:?}"
        );
        let moving = Arc::new(AtomicU64::new(0));
        let work = {
            let moving = moving.clone();
            async move {
                for _ in 0..3 {
                    tokio::time::sleep(STALL_TIMEOUT - 2 * STALL_CHECK).await;
                    moving.fetch_add(1, Ordering::Relaxed);
                }
                7
            }
        };
        assert_eq!(until_stalled(work, &moving, &api, "x").await.unwrap(), 7);
    }

    /// One download of a file at a time: a second lock of its `FILE.part` fails while the
    /// first is held, and succeeds after. A `FILE.part` renamed to `FILE` by the download that
    /// held it is not what the next one locks: it gets a new `FILE.part`. An empty one the lock
    /// made goes with the lock; one with bytes stays, for a resume.
    #[test]
    fn a_part_file_is_locked_by_one_download_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.bin");
        let part = part_path(&file);
        let first = lock_part(&part).unwrap();
        let err = lock_part(&part)
            .err()
            .expect("a second lock while the first is held");
        assert!(
            err.to_string().starts_with("another download is writing"),
            "{err}"
        );
        assert_eq!(exit::code_of(&err), exit::FAILURE);
        // The first ends: its empty FILE.part goes, and the next lock makes a new one.
        drop(first);
        assert!(!part.exists());
        let second = lock_part(&part).unwrap();
        std::fs::write(&part, b"some bytes").unwrap();
        // It finishes: FILE.part becomes FILE, and the lock is still held meanwhile.
        std::fs::rename(&part, &file).unwrap();
        let third = lock_part(&part).expect("the renamed file's lock is not FILE.part's");
        let held = third.file.as_ref().unwrap().metadata().unwrap();
        assert!(!same_file(&held, &std::fs::metadata(&file).unwrap()));
        drop(second);
        drop(third);
        assert_eq!(std::fs::read(&file).unwrap(), b"some bytes");
        assert!(!part.exists(), "the empty FILE.part the lock made stayed");
        // Bytes in FILE.part stay after the lock (a later run resumes them).
        let fourth = lock_part(&part).unwrap();
        std::fs::write(&part, b"partial").unwrap();
        drop(fourth);
        assert_eq!(std::fs::read(&part).unwrap(), b"partial");
    }

    /// `FILE.part` is never opened through a symlink: whatever the link names is left alone.
    #[tokio::test]
    async fn a_part_file_is_not_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let part = dir.path().join("out.bin.part");
        std::os::unix::fs::symlink(&target, &part).unwrap();
        assert!(part_options().truncate(true).open(&part).await.is_err());
        assert!(writer(&part, &part, 0).await.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn names_from_the_node_stay_in_the_directory() {
        assert_eq!(safe_file_name("notes.txt").as_deref(), Some("notes.txt"));
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(safe_file_name("a\\b.txt").as_deref(), Some("b.txt"));
        assert_eq!(
            safe_file_name("\u{e9}t\u{e9}.txt").as_deref(),
            Some("\u{e9}t\u{e9}.txt")
        );
        for bad in [
            "",
            ".",
            "..",
            "dir/",
            "a/..",
            "x\ny",
            "tab\t",
            ".bashrc",
            "a/.ssh",
            "invoice\u{202e}fdp.exe",
            "zero\u{200b}width",
        ] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        // A name whose `NAME.part` would not fit a file name falls back to the CID.
        let long = "n".repeat(MAX_FILE_NAME_BYTES - ".part".len());
        assert_eq!(safe_file_name(&long).as_deref(), Some(long.as_str()));
        assert_eq!(safe_file_name(&format!("{long}x")), None);
        // Names the node would not give back are not sent.
        assert!(sendable_filename("notes.txt"));
        assert!(!sendable_filename("x.a\\b"));
        assert!(!sendable_filename("say \"hi\""));
    }

    /// A name in `filename*` is decoded, then kept to its last component like any other:
    /// escapes cannot smuggle a path or a control character in. A reference node's raw UTF-8
    /// `filename` is read as it is.
    #[test]
    fn names_in_filename_star_stay_in_the_directory() {
        let name = |v: &str| file_name_from_disposition(v.as_bytes());
        assert_eq!(
            name("attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt").as_deref(),
            Some("\u{e9}t\u{e9}.txt")
        );
        assert_eq!(
            name("attachment; filename=\"\u{6570}\u{636e}.csv\"").as_deref(),
            Some("\u{6570}\u{636e}.csv")
        );
        assert_eq!(
            name("attachment; filename=\"x\"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            name("attachment; filename*=UTF-8''..%5C%C3%A9.txt").as_deref(),
            Some("\u{e9}.txt")
        );
        for bad in [
            "attachment; filename*=UTF-8''..",
            "attachment; filename*=UTF-8''a%2F..",
            "attachment; filename*=UTF-8''a%0Ab.txt",
            "attachment; filename*=UTF-8''a%00b.txt",
            "attachment; filename*=UTF-8''a%2F",
        ] {
            assert_eq!(name(bad), None, "{bad}");
        }
    }

    #[test]
    fn upload_inputs_are_files_or_streams() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        let err = check_input(dir.path(), &meta(dir.path())).unwrap_err();
        assert_eq!(err.code, exit::FAILURE);
        assert_eq!(
            err.to_string(),
            format!("{} is a directory, not a file", dir.path().display())
        );
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert!(check_input(&file, &meta(&file)).is_ok());
        assert_eq!(known_length(&file, &meta(&file)), Some(5));
        // A character device is read as a stream, of unknown length.
        let null = Path::new("/dev/null");
        assert_eq!(known_length(null, &meta(null)), None);
        // So are the files of pseudo file systems, whose length says nothing.
        for pseudo in [
            "/proc/self/status",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ] {
            if let Ok(m) = std::fs::metadata(pseudo) {
                assert_eq!(known_length(Path::new(pseudo), &m), None, "{pseudo}");
            }
        }
    }

    /// A sparse regular file (no disk block yet) has a length all the same, which goes in the
    /// upload's `Content-Length`. (It used to be taken for a pseudo file system's and sent
    /// chunked, missing the early `507`. Found by review.)
    #[test]
    fn a_sparse_file_has_a_known_length() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        let meta = std::fs::metadata(&sparse).unwrap();
        assert_eq!(known_length(&sparse, &meta), Some(1 << 20));
    }

    /// Each way of [`rename_no_replace`] moves the file to a free name, and leaves both files
    /// as they were when the name is taken (the check-then-rename it replaces would have put
    /// the dataset over the other file).
    #[test]
    fn a_no_replace_rename_keeps_a_file_that_took_the_name() {
        type Rename = fn(&Path, &Path) -> std::io::Result<()>;
        let ways: [(&str, Rename); 3] = [
            ("rename_no_replace", rename_no_replace),
            ("link_then_unlink", link_then_unlink),
            ("reserve_then_rename", reserve_then_rename),
        ];
        for (way, rename) in ways {
            let dir = tempfile::tempdir().unwrap();
            let (part, file) = (dir.path().join("d.bin.part"), dir.path().join("d.bin"));
            std::fs::write(&part, b"dataset").unwrap();
            std::fs::write(&file, b"theirs").unwrap();
            let err = rename(&part, &file).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::AlreadyExists,
                "{way}: {err}"
            );
            assert_eq!(std::fs::read(&file).unwrap(), b"theirs", "{way}");
            assert_eq!(std::fs::read(&part).unwrap(), b"dataset", "{way}");
            std::fs::remove_file(&file).unwrap();
            rename(&part, &file).unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), b"dataset", "{way}");
            assert!(!part.exists(), "{way}");
            let names = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(names, 1, "{way}");
        }
        // A file system without hard links falls back to the placeholder; a taken name not.
        use rustix::io::Errno;
        let os = |e: Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        for e in [Errno::PERM, Errno::OPNOTSUPP, Errno::NOSYS, Errno::MLINK] {
            assert!(links_unsupported(&os(e)), "{e}");
        }
        for e in [Errno::EXIST, Errno::NOENT, Errno::IO, Errno::NOSPC] {
            assert!(!links_unsupported(&os(e)), "{e}");
        }
    }

    /// A download into a directory whose file name was taken while it ran fails as one that
    /// found the name taken at the start does, and keeps both files: theirs as it was, the
    /// dataset in `NAME.part`. With the name given by the user (`-o FILE`) the file is
    /// replaced, as before. (The rename used to replace the other file.)
    #[tokio::test]
    async fn a_file_made_during_a_download_into_a_directory_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (part, file) = (dir.path().join("d.bin.part"), dir.path().join("d.bin"));
        std::fs::write(&part, b"dataset").unwrap();
        std::fs::write(&file, b"theirs").unwrap();
        let err = finish(&part, &file, Place::Free).await.unwrap_err();
        assert_eq!(exit::code_of(&err), exit::FAILURE);
        let said = err.to_string();
        assert!(said.contains("not replacing"), "{said}");
        assert!(said.contains("made while the dataset downloaded"), "{said}");
        assert!(said.contains(&part.display().to_string()), "{said}");
        assert_eq!(std::fs::read(&file).unwrap(), b"theirs");
        assert_eq!(std::fs::read(&part).unwrap(), b"dataset");
        finish(&part, &file, Place::Replace).await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"dataset");
        assert!(!part.exists());
    }

    #[test]
    fn part_names() {
        assert_eq!(part_path(Path::new("a/b.bin")), Path::new("a/b.bin.part"));
        assert_eq!(part_path(Path::new("b")), Path::new("b.part"));
    }
}
