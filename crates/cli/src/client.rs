//! Client commands: talk to a running node over its REST API.

use std::path::Path;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

const BAR_TEMPLATE: &str = "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";

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

fn base(api: &str) -> String {
    format!("{}{}", api.trim_end_matches('/'), cairn_api::API_BASE)
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    format!("{status}: {}", body.trim())
}

/// Uploads each file; prints its CID.
pub(crate) async fn upload(
    api: &str,
    files: &[std::path::PathBuf],
    mime: Option<&str>,
    with_filename: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for path in files {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata().await?.len();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let pb = bar(Some(len), name.clone().unwrap_or_default());
        let counter = pb.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    counter.inc(c.len() as u64);
                }
            });
        let mut req = client
            .post(format!("{}/data", base(api)))
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(m) = mime {
            req = req.header("content-type", m);
        }
        if let Some(n) = name.filter(|n| with_filename && cairn_api::valid_filename(n)) {
            req = req.header(
                "content-disposition",
                format!("attachment; filename=\"{n}\""),
            );
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {api}"))?;
        pb.finish_and_clear();
        if !resp.status().is_success() {
            bail!(
                "uploading {} failed: {}",
                path.display(),
                error_text(resp).await
            );
        }
        println!("{}", resp.text().await?.trim());
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

/// Downloads a dataset to `output` or stdout. The node serves what it has and fetches the rest
/// from its peers (`/data/{cid}/network/stream`).
///
/// To a file, the bytes go to `FILE.part`, renamed to `FILE` once its size is the dataset's.
/// With `resume`, a `FILE.part` left by an interrupted download, or else an existing `FILE`
/// shorter than the dataset, is continued: only `Range: bytes=<its length>-` is asked for and
/// appended (like `curl -C -`: the bytes already there are trusted to be the dataset's). A
/// file as long as the dataset is left alone; a longer one, or a node that ignores `Range`
/// (`200`), means a download from the start.
pub(crate) async fn download(
    api: &str,
    cid: &str,
    output: Option<&Path>,
    resume: bool,
) -> anyhow::Result<()> {
    let url = format!("{}/data/{cid}/network/stream", base(api));
    let client = reqwest::Client::new();
    let Some(path) = output else {
        return download_to_stdout(&client, &url, cid).await;
    };
    let mut target = target(path, resume).await?;
    let mut resp = get_from(&client, &url, target.offset).await?;
    if resp.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        let total = content_range(&resp).map(|(_, t)| t);
        if total == Some(target.offset) {
            finish(&target.file, path).await?;
            eprintln!(
                "{} already holds all {} bytes of {cid}",
                path.display(),
                target.offset
            );
            return Ok(());
        }
        // Longer than the dataset: not a piece of it. Start over.
        target = Target {
            file: part_path(path),
            offset: 0,
        };
        resp = get_from(&client, &url, 0).await?;
    }
    if !resp.status().is_success() {
        bail!("downloading {cid} failed: {}", error_text(resp).await);
    }
    let (from, total) = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
        match content_range(&resp) {
            Some((Some(first), total)) if first == target.offset => (first, total),
            other => bail!("the node answered another range than asked: {other:?}"),
        }
    } else {
        // The whole dataset (no range asked, or the node ignored it).
        let total = resp
            .content_length()
            .context("the node did not say how long the dataset is")?;
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
    let pb = bar(Some(total), cid.chars().take(12).collect());
    pb.set_position(from);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was interrupted (run it again to resume)")?;
        f.write_all(&chunk).await?;
        pb.inc(chunk.len() as u64);
    }
    f.sync_all().await?;
    let written = f.metadata().await?.len();
    drop(f);
    pb.finish_and_clear();
    if written != total {
        bail!(
            "{} has {written} bytes, the dataset {total} (run it again to resume)",
            target.file.display()
        );
    }
    finish(&target.file, path).await
}

/// `GET url`, from byte `offset` on when it is not 0.
async fn get_from(
    client: &reqwest::Client,
    url: &str,
    offset: u64,
) -> anyhow::Result<reqwest::Response> {
    let mut req = client.get(url);
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    req.send()
        .await
        .with_context(|| format!("cannot reach the node at {url}"))
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

async fn download_to_stdout(client: &reqwest::Client, url: &str, cid: &str) -> anyhow::Result<()> {
    let resp = get_from(client, url, 0).await?;
    if !resp.status().is_success() {
        bail!("downloading {cid} failed: {}", error_text(resp).await);
    }
    let pb = bar(resp.content_length(), cid.chars().take(12).collect());
    let mut body = resp.bytes_stream();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was interrupted")?;
        out.write_all(&chunk).await?;
        pb.inc(chunk.len() as u64);
    }
    out.flush().await?;
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
    fn part_names() {
        assert_eq!(part_path(Path::new("a/b.bin")), Path::new("a/b.bin.part"));
        assert_eq!(part_path(Path::new("b")), Path::new("b.part"));
    }
}
