//! The transfer commands, `upload` and `download`: stream bytes to and from a running node over
//! its REST API, with a progress bar on stderr (drawn only when stderr is a terminal).

use std::{
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
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt};

use crate::{
    api::Api,
    exit::{self, Failure},
    output,
};

const BAR_TEMPLATE: &str = "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";

/// Bytes read from a file or stdin at a time while uploading.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// Characters of a CID shown as a download's progress message.
const BAR_CID_CHARS: usize = 12;

/// The input name that means stdin.
const STDIN: &str = "-";

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal, so it never
/// mixes with output that is piped or captured.
fn bar(len: Option<u64>, msg: String) -> ProgressBar {
    let pb = match len {
        Some(l) => ProgressBar::new(l),
        None => ProgressBar::no_length(),
    };
    if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
        pb.set_style(style);
    }
    pb.set_message(msg);
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

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// The size of an upload input, from its metadata: a regular file's length; `None` for a
/// stream whose length is not known before it ends (a FIFO, `/dev/stdin`, a device); an error
/// for a directory, which cannot be uploaded.
fn input_size(path: &Path, meta: &std::fs::Metadata) -> Result<Option<u64>, Failure> {
    if meta.is_dir() {
        return Err(Failure::new(
            exit::FAILURE,
            format!("{} is a directory, not a file", path.display()),
        ));
    }
    Ok(meta.is_file().then_some(meta.len()))
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
    if let Some(n) = options.filename.filter(|n| !cairn_api::valid_filename(n)) {
        // Refused here rather than by the node: a `"` would end the header's quoted name.
        return Err(Failure::new(
            exit::INVALID,
            format!("--filename '{n}' is not a file name the node accepts"),
        )
        .into());
    }
    // Every input is looked at before the first is sent: a directory or a missing file is a
    // local mistake, said as such, and nothing is uploaded.
    let mut sizes = Vec::with_capacity(inputs.len());
    for path in inputs {
        sizes.push(if is_stdin(path) {
            None
        } else {
            let meta = tokio::fs::metadata(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            input_size(path, &meta)?
        });
    }
    for (path, len) in inputs.iter().zip(sizes) {
        let shown = path.display().to_string();
        let (reader, own_name): (Box<dyn AsyncRead + Send + Unpin>, _) = if is_stdin(path) {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {shown}"))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            (Box::new(file), name)
        };
        // A file's own name is left out when the node would refuse it.
        let name = match options.filename {
            Some(n) => Some(n.to_owned()),
            None => own_name.filter(|n| cairn_api::valid_filename(n)),
        }
        .filter(|_| options.with_filename);
        let pb = bar(len, name.clone().unwrap_or_else(|| shown.clone()));
        let sent = Arc::new(AtomicU64::new(0));
        let stream = {
            let (pb, sent) = (pb.clone(), sent.clone());
            tokio_util::io::ReaderStream::with_capacity(reader, UPLOAD_CHUNK).inspect(
                move |chunk| {
                    if let Ok(c) = chunk {
                        pb.inc(c.len() as u64);
                        sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                },
            )
        };
        let mut req = api
            .request(Method::POST, &["data"])
            .body(reqwest::Body::wrap_stream(stream));
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
        let answer = api.send(req, &what).await;
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

/// Where a download to a file writes, and from which byte.
struct Target {
    /// The file written: `FILE.part`, or `FILE` itself when resuming it in place.
    file: std::path::PathBuf,
    /// Bytes already there, asked from this offset on.
    offset: u64,
}

/// `FILE.part` for `FILE`.
fn part_path(path: &Path) -> std::path::PathBuf {
    path.with_extension(match path.extension() {
        Some(e) => format!("{}.part", e.to_string_lossy()),
        None => "part".into(),
    })
}

/// What to resume: a `FILE.part` left by an interrupted download, else an existing `FILE`
/// (shorter than the dataset, as the server's answer tells); else a fresh `FILE.part`.
async fn target(path: &Path, resume: bool) -> anyhow::Result<Target> {
    let part = part_path(path);
    if resume {
        for file in [&part, path] {
            match tokio::fs::metadata(file).await {
                Ok(m) if m.is_file() => {
                    return Ok(Target {
                        file: file.to_path_buf(),
                        offset: m.len(),
                    });
                }
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

/// Parses `Content-Range: bytes first-last/total` (a `206`) or `bytes */total` (a `416`) into
/// `(first, total)`; `first` is `None` for the second form.
pub(crate) fn parse_content_range(value: &str) -> Option<(Option<u64>, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok()?;
    if span.trim() == "*" {
        return Some((None, total));
    }
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last && last < total).then_some((Some(first), total))
}

fn content_range(resp: &reqwest::Response) -> Option<(Option<u64>, u64)> {
    resp.headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
}

/// Options of `cairn download`.
#[derive(Debug)]
pub(crate) struct DownloadOptions {
    /// Continue a partial output file (not `--no-resume`).
    pub(crate) resume: bool,
    /// `--local`: only from the node's own store.
    pub(crate) local: bool,
    /// `--json`: print a JSON summary (needs an output file).
    pub(crate) json: bool,
}

/// A finished download in `cairn download --json`.
#[derive(Debug, Serialize)]
struct DownloadOut<'a> {
    cid: &'a str,
    file: String,
    /// The dataset's size (the output file's).
    bytes: u64,
    /// Bytes transferred this time (less than `bytes` when resumed).
    fetched: u64,
}

/// Downloads a dataset to `output` or stdout. The node serves what it has and fetches the rest
/// from its peers (`/data/{cid}/network/stream`), or with `local` serves only what it has
/// (`/data/{cid}`).
///
/// To a file, the bytes go to `FILE.part`, renamed to `FILE` once its size is the dataset's.
/// With `resume`, a `FILE.part` left by an interrupted download, or else an existing `FILE`
/// shorter than the dataset, is continued: only `Range: bytes=<its length>-` is asked for and
/// appended (like `curl -C -`: the bytes already there are trusted to be the dataset's). A
/// file as long as the dataset is left alone; a longer one, or a node that ignores `Range`
/// (`200`), means a download from the start.
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
    let Some(path) = output else {
        if options.json {
            return Err(Failure::new(
                exit::USAGE,
                "--json needs --output: without it the dataset itself goes to stdout",
            )
            .into());
        }
        return download_to_stdout(api, segments, cid, &what).await;
    };
    let mut target = target(path, options.resume).await?;
    let mut resp = get_from(api, segments, target.offset, &what).await?;
    if resp.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        let total = content_range(&resp).map(|(_, t)| t);
        if total == Some(target.offset) {
            finish(&target.file, path).await?;
            if options.json {
                output::print_json(&DownloadOut {
                    cid,
                    file: path.display().to_string(),
                    bytes: target.offset,
                    fetched: 0,
                })?;
            } else {
                eprintln!(
                    "{} already holds all {} bytes of {cid}",
                    path.display(),
                    target.offset
                );
            }
            return Ok(());
        }
        // Longer than the dataset: not a piece of it. Start over.
        target = Target {
            file: part_path(path),
            offset: 0,
        };
        resp = get_from(api, segments, 0, &what).await?;
    }
    let resp = Api::check(resp, &what).await?;
    let (from, total) = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
        match content_range(&resp) {
            Some((Some(first), total)) if first == target.offset => (first, total),
            other => bail!("{what}: the node answered another range than asked: {other:?}"),
        }
    } else {
        // The whole dataset (no range asked, or the node ignored it).
        let total = resp
            .content_length()
            .with_context(|| format!("{what}: the node did not say how long the dataset is"))?;
        (0, total)
    };
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&target.file)
        .await
        .with_context(|| format!("cannot open {}", target.file.display()))?;
    f.set_len(from).await?;
    f.seek(std::io::SeekFrom::Start(from)).await?;
    let pb = bar(Some(total), cid.chars().take(BAR_CID_CHARS).collect());
    pb.set_position(from);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| {
            format!("{what}: the download was interrupted (run it again to resume)")
        })?;
        f.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", target.file.display()))?;
        pb.inc(chunk.len() as u64);
    }
    f.sync_all().await?;
    let written = f.metadata().await?.len();
    drop(f);
    pb.finish_and_clear();
    if written != total {
        bail!(
            "{what}: {} has {written} bytes, the dataset {total} (run it again to resume)",
            target.file.display()
        );
    }
    finish(&target.file, path).await?;
    if options.json {
        output::print_json(&DownloadOut {
            cid,
            file: path.display().to_string(),
            bytes: total,
            fetched: total - from,
        })?;
    }
    Ok(())
}

/// `GET` the API path made of `segments`, from byte `offset` on when it is not 0.
async fn get_from(
    api: &Api,
    segments: &[&str],
    offset: u64,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let mut req = api.request(Method::GET, segments);
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    api.send_raw(req, what).await
}

/// Moves the finished `file` to `path` (nothing to do when resumed in place).
async fn finish(file: &Path, path: &Path) -> anyhow::Result<()> {
    if file != path {
        tokio::fs::rename(file, path)
            .await
            .with_context(|| format!("cannot rename {} to {}", file.display(), path.display()))?;
    }
    Ok(())
}

async fn download_to_stdout(
    api: &Api,
    segments: &[&str],
    cid: &str,
    what: &str,
) -> anyhow::Result<()> {
    let resp = get_from(api, segments, 0, what).await?;
    let resp = Api::check(resp, what).await?;
    let pb = bar(
        resp.content_length(),
        cid.chars().take(BAR_CID_CHARS).collect(),
    );
    let mut body = resp.bytes_stream();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("{what}: the download was interrupted"))?;
        out.write_all(&chunk)
            .await
            .context("cannot write to stdout")?;
        pb.inc(chunk.len() as u64);
    }
    out.flush().await.context("cannot write to stdout")?;
    pb.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((Some(0), 100)));
        assert_eq!(
            parse_content_range("bytes 99-99/100"),
            Some((Some(99), 100))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, 100)));
        assert_eq!(parse_content_range("bytes 5-4/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-1/*"), None);
    }

    #[test]
    fn upload_inputs_are_files_or_streams() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        let err = input_size(dir.path(), &meta(dir.path())).unwrap_err();
        assert_eq!(err.code, exit::FAILURE);
        assert_eq!(
            err.to_string(),
            format!("{} is a directory, not a file", dir.path().display())
        );
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(input_size(&file, &meta(&file)).unwrap(), Some(5));
        // A character device is read as a stream, of unknown length.
        let null = Path::new("/dev/null");
        assert_eq!(input_size(null, &meta(null)).unwrap(), None);
    }

    #[test]
    fn part_names() {
        assert_eq!(part_path(Path::new("a/b.bin")), Path::new("a/b.bin.part"));
        assert_eq!(part_path(Path::new("b")), Path::new("b.part"));
    }
}
