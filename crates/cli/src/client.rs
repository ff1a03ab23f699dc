//! Client commands: talk to a running node over its REST API.

use std::path::Path;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

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

/// Downloads a dataset to `output` (atomically: a `.part` file renamed at the end) or stdout.
/// The node serves what it has and fetches the rest from its peers
/// (`/data/{cid}/network/stream`).
pub(crate) async fn download(api: &str, cid: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let resp = reqwest::get(format!("{}/data/{cid}/network/stream", base(api)))
        .await
        .with_context(|| format!("cannot reach the node at {api}"))?;
    if !resp.status().is_success() {
        bail!("downloading {cid} failed: {}", error_text(resp).await);
    }
    let pb = bar(resp.content_length(), cid.chars().take(12).collect());
    let mut body = resp.bytes_stream();
    match output {
        Some(path) => {
            let part = path.with_extension(match path.extension() {
                Some(e) => format!("{}.part", e.to_string_lossy()),
                None => "part".into(),
            });
            let mut f = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot create {}", part.display()))?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download was interrupted")?;
                f.write_all(&chunk).await?;
                pb.inc(chunk.len() as u64);
            }
            f.sync_all().await?;
            tokio::fs::rename(&part, path).await?;
        }
        None => {
            let mut out = tokio::io::stdout();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download was interrupted")?;
                out.write_all(&chunk).await?;
                pb.inc(chunk.len() as u64);
            }
            out.flush().await?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}
