//! Routes and handlers.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_core::{Cid, cid::parse_cid};
use cairn_node::Node;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    ApiError,
    admin::{self, LogLevelSetter},
    cors::{self, CorsOrigin},
    download::{self, Source},
    dto::{DataItem, SpaceJson},
    guard,
    headers::{parse_content_disposition_filename, valid_filename, valid_mimetype},
    network, openapi,
};

/// The API's base path, as the reference's.
pub const API_BASE: &str = "/api/codex/v1";

/// What the API needs from the process besides the node.
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// Changes the log filter (`POST /debug/chronicles/loglevel`); without it that endpoint
    /// answers 503.
    pub log_level: Option<LogLevelSetter>,
    /// `--api-cors-origin`: with it, the API adds the reference's CORS headers and answers
    /// preflights (see `cors.rs`); without it, no CORS header is sent.
    pub cors_origin: Option<CorsOrigin>,
    /// The names requests may address the API by (`--api-allowed-hosts`; see `guard.rs`).
    pub allowed_hosts: crate::AllowedHosts,
    /// How many uploads run at once, and how long one more waits for its turn.
    pub uploads: UploadLimits,
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("log_level", &self.log_level.is_some())
            .field("cors_origin", &self.cors_origin)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("uploads", &self.uploads)
            .finish()
    }
}

/// Uploads running at once, by default. Each holds up to about 13 MiB (1 MiB between the
/// chunker and the hashers, 4 MiB between the hashers and the writer, up to 8 MiB of the
/// segment's staging buffers) and five blocking threads (a writer and up to four hashers):
/// sixteen bound that at about 210 MiB and 80 threads, whatever the number of clients (review:
/// nothing bounded them, and enough slow uploads would have used up tokio's blocking pool,
/// which every store call of the node needs).
pub const MAX_CONCURRENT_UPLOADS: usize = 16;
/// How long an upload beyond [`MAX_CONCURRENT_UPLOADS`] waits for one to end before it is
/// answered `503` (its body is not read meanwhile: it costs a connection, not memory).
pub const UPLOAD_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Uploads at once and the wait for a turn (see [`MAX_CONCURRENT_UPLOADS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Uploads running at once (at least 1).
    pub max: usize,
    /// How long one more waits for a turn before `503`.
    pub wait: std::time::Duration,
}

impl Default for UploadLimits {
    fn default() -> UploadLimits {
        UploadLimits {
            max: MAX_CONCURRENT_UPLOADS,
            wait: UPLOAD_SLOT_WAIT,
        }
    }
}

/// The turns of [`UploadLimits`].
#[derive(Debug, Clone)]
struct UploadSlots {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    limits: UploadLimits,
}

/// The API router over `node`, without process options.
pub fn router(node: Node) -> Router {
    router_with(node, ApiOptions::default())
}

/// The API router over `node`.
pub fn router_with(node: Node, options: ApiOptions) -> Router {
    let slots = UploadSlots {
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(options.uploads.max.max(1))),
        limits: options.uploads,
    };
    let upload = move |node: State<Node>, headers: HeaderMap, body: Body| {
        let slots = slots.clone();
        async move { upload(node, headers, body, slots).await }
    };
    let dials = std::sync::Arc::new(tokio::sync::Semaphore::new(
        network::MAX_CONCURRENT_CONNECTS,
    ));
    let connect =
        move |node: State<Node>, peer: Path<String>, query: Query<Vec<(String, String)>>| {
            let dials = dials.clone();
            async move { network::connect(node, peer, query, dials).await }
        };
    let api = Router::new()
        .route("/data", get(list).post(upload))
        .route("/data/{cid}", get(download).delete(delete))
        .route("/data/{cid}/exists", get(exists))
        .route(
            "/data/{cid}/network",
            axum::routing::post(network::download_background),
        )
        .route("/data/{cid}/network/stream", get(network::network_stream))
        .route(
            "/data/{cid}/network/manifest",
            get(network::network_manifest),
        )
        .route("/connect/{peer}", get(connect))
        .route("/peerid", get(network::peer_id))
        .route("/spr", get(network::spr))
        .route("/debug/info", get(network::debug_info))
        .route("/debug/peers", get(network::debug_peers))
        .route("/debug/perf/{peer}", axum::routing::post(network::perf))
        .route("/space", get(space))
        .route("/openapi.yaml", get(openapi::document))
        .with_state(node)
        .merge(admin::routes(options.log_level));
    let guard = std::sync::Arc::new(crate::guard::Guard {
        hosts: options.allowed_hosts,
        cors: options.cors_origin.clone(),
    });
    let cors = std::sync::Arc::new(options.cors_origin);
    // The guard is the outer layer: what it refuses never reaches a handler.
    Router::new()
        .nest(API_BASE, api)
        .layer(axum::middleware::from_fn_with_state(cors, cors::layer))
        .layer(axum::middleware::from_fn_with_state(guard, guard::layer))
}

/// Serves the API on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    options: ApiOptions,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "REST API listening");
    crate::server::serve_router(listener, router_with(node, options), cancel).await
}

pub(crate) fn cid_param(text: &str) -> Result<Cid, ApiError> {
    parse_cid(text).map_err(|_| ApiError::BadCid)
}

/// How long, at most, the body of a refused upload is still read (and dropped) after the
/// answer. The answer goes out as soon as the headers are judged, but closing the connection
/// while the client is still sending would make the kernel reset it, and the client could then
/// see a broken pipe instead of the answer (a write can fail before it reads). Reading on lets
/// the client read the answer and stop sending; one that sends its whole body before it reads
/// anything has this long to do so.
pub(crate) const REFUSED_UPLOAD_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// An upload whose client sends no body bytes for this long fails (`408`), and the room it
/// reserved goes back: a client that stalls cannot hold quota for good. As nginx's
/// `client_body_timeout`, it is the gap between two reads, not a limit on the whole upload.
pub(crate) const UPLOAD_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The error an upload's body stream ends with when the client went quiet for
/// [`UPLOAD_IDLE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {} s", .0.as_secs())]
pub(crate) struct UploadIdle(pub(crate) std::time::Duration);

/// The rest of an upload's body: if the upload stops reading it before its end (the store
/// refused a block: quota, a full disk), it is read and dropped in a task of its own when this
/// goes, as [`refuse`] does, so that the client reads the answer instead of a reset connection
/// (found by review: `cairn upload -` from a pipe that ran over the quota said "broken pipe").
struct RestOfBody(Option<axum::body::BodyDataStream>);

impl Drop for RestOfBody {
    fn drop(&mut self) {
        if let Some(rest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(drain_stream(rest));
        }
    }
}

/// `body`'s data, ending with [`UploadIdle`] when nothing arrives for `idle`. Dropped before
/// its end, the rest of the body is drained ([`RestOfBody`]).
fn idle_limited(
    body: Body,
    idle: std::time::Duration,
) -> impl futures::Stream<Item = Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send
{
    use futures::StreamExt as _;
    let rest = RestOfBody(Some(body.into_data_stream()));
    futures::stream::unfold(Some(rest), move |state| async move {
        let mut rest = state?;
        let body = rest.0.as_mut()?;
        let next = tokio::time::timeout(idle, body.next()).await;
        match next {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(rest))),
            // Ended, failed or gone quiet: nothing more to read.
            Ok(Some(Err(e))) => {
                rest.0 = None;
                Some((Err(e.into()), None))
            }
            Ok(None) => {
                rest.0 = None;
                None
            }
            Err(_) => {
                rest.0 = None;
                Some((Err(UploadIdle(idle).into()), None))
            }
        }
    })
}

async fn upload(
    State(node): State<Node>,
    headers: HeaderMap,
    body: Body,
    slots: UploadSlots,
) -> Result<Response, ApiError> {
    let (filename, mimetype) = match upload_headers(&headers) {
        Ok(meta) => meta,
        Err(e) => return Err(refuse(&headers, body, e)),
    };
    // A turn among the uploads running at once, held until this one is stored or fails.
    let turn = tokio::time::timeout(slots.limits.wait, slots.slots.acquire_owned()).await;
    let Ok(Ok(_turn)) = turn else {
        let error = ApiError::Unavailable(format!(
            "{} uploads are in progress, the most this node runs at once; none ended within {} s. Try again later.",
            slots.limits.max.max(1),
            slots.limits.wait.as_secs()
        ));
        // The client waited as long: one that said `Expect: 100-continue` has given up
        // waiting for our go (curl does after 1 s) and may be sending its body by now.
        return Err(refuse_after_wait(body, error));
    };
    // With a length, an upload that cannot fit is refused before its body is read, and the
    // room for one that fits is reserved.
    let size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = size
        && let Err(e) = node.has_room_for_upload(size)
    {
        return Err(refuse(&headers, body, e.into()));
    }
    let stored = node
        .store_dataset_sized(
            idle_limited(body, UPLOAD_IDLE_TIMEOUT),
            filename,
            mimetype,
            size,
        )
        .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        stored.cid.to_string(),
    )
        .into_response())
}

/// Refuses an upload with `error`, answered at once. The body the client may still be sending
/// is read and dropped after the answer, in a task of its own, to its end or for at most
/// [`REFUSED_UPLOAD_DRAIN_TIME`]; unless the client waits to be told to send it
/// (`Expect: 100-continue`, as curl sends with a large file): then none of it is asked for, so
/// the client sends none.
fn refuse(headers: &HeaderMap, body: Body, error: ApiError) -> ApiError {
    if !expects_continue(headers) {
        tokio::spawn(drain(body));
    }
    error
}

/// Refuses an upload with `error` after it waited for a turn: its body is drained as in
/// [`refuse`], whatever it said about `Expect: 100-continue`. A client waits for the go to
/// send only so long (curl: 1 s), then sends anyway, and closing the connection on a body
/// being sent would make it see a reset instead of the answer (review). If the client has
/// sent nothing yet, the drain may tell it to go on, and reads for at most
/// [`REFUSED_UPLOAD_DRAIN_TIME`].
fn refuse_after_wait(body: Body, error: ApiError) -> ApiError {
    tokio::spawn(drain(body));
    error
}

/// Whether the request says `Expect: 100-continue` (its body is sent only once the server asks
/// for it, which hyper does when the body is first read).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and drops `body` to its end (or its first error), for at most
/// [`REFUSED_UPLOAD_DRAIN_TIME`].
async fn drain(body: Body) {
    drain_stream(body.into_data_stream()).await;
}

/// [`drain`] for a body already being read.
async fn drain_stream(mut stream: axum::body::BodyDataStream) {
    use futures::StreamExt as _;
    let _ = tokio::time::timeout(REFUSED_UPLOAD_DRAIN_TIME, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// The file name and MIME type of an upload, checked as the reference checks them.
fn upload_headers(headers: &HeaderMap) -> Result<(Option<String>, Option<String>), ApiError> {
    let mimetype = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::Unprocessable("The MIME type is not valid.".into()))?;
            if text.is_empty() {
                None
            } else if valid_mimetype(text) {
                Some(text.to_owned())
            } else {
                return Err(ApiError::Unprocessable(format!(
                    "The MIME type '{text}' is not valid."
                )));
            }
        }
    };
    let filename = match headers.get(header::CONTENT_DISPOSITION) {
        None => None,
        Some(v) => {
            // UTF-8, not only ASCII: the reference takes the header's bytes as they are, so
            // `été.txt` is a name it accepts (and sends back the same way).
            let text = std::str::from_utf8(v.as_bytes())
                .map_err(|_| ApiError::Unprocessable("The filename is not valid.".into()))?;
            match parse_content_disposition_filename(text) {
                Some(name) if !valid_filename(&name) => {
                    return Err(ApiError::Unprocessable("The filename is not valid.".into()));
                }
                other => other,
            }
        }
    };
    Ok((filename, mimetype))
}

/// Datasets `GET /data` reads from the store at a time. Its body (the reference's
/// `{"content": [...]}`) is written page by page as the client reads it, so a call holds one
/// page of manifests, not every one of the node's: a node at its default 20 GiB quota can list
/// 300,000 datasets, and building the whole answer took 100–200 MB per call (review).
pub(crate) const LIST_PAGE: usize = 128;

/// Where `GET /data`'s body is, after its opening `{"content":[`.
struct Listing {
    node: Node,
    /// The page read and not yet written (the first is read before the answer starts).
    page: Option<cairn_node::ManifestPage>,
    /// The key to read the next page after.
    next: Option<Vec<u8>>,
    /// Whether an item was written (the next one needs a comma).
    any: bool,
    ended: bool,
}

impl Listing {
    /// The next part of the body; `None` after the last.
    async fn part(mut self) -> Option<(std::io::Result<bytes::Bytes>, Listing)> {
        if self.ended {
            return None;
        }
        let page = match self.page.take() {
            Some(page) => page,
            None => match self.node.list_page(self.next.take(), LIST_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // The status went out already: the client sees the body cut short.
                    tracing::warn!(error = %e, "listing the datasets failed part-way");
                    self.ended = true;
                    return Some((Err(std::io::Error::other(e)), self));
                }
            },
        };
        let mut out = Vec::new();
        for (cid, manifest) in &page.manifests {
            if self.any {
                out.push(b',');
            }
            self.any = true;
            if let Err(e) = serde_json::to_writer(&mut out, &DataItem::new(cid, manifest)) {
                self.ended = true;
                return Some((Err(std::io::Error::other(e)), self));
            }
        }
        // Only a page that looked at fewer than it could is the last (`manifest_page`).
        if page.looked_at < LIST_PAGE || page.next.is_none() {
            out.extend_from_slice(b"]}");
            self.ended = true;
        } else {
            self.next = page.next;
        }
        Some((Ok(out.into()), self))
    }
}

async fn list(State(node): State<Node>) -> Result<Response, ApiError> {
    // Read before the answer starts: a store that cannot be read is a 500, not a cut body.
    let first = node.list_page(None, LIST_PAGE).await?;
    let listing = Listing {
        node,
        page: Some(first),
        next: None,
        any: false,
        ended: false,
    };
    let opening = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
        b"{\"content\":[",
    ))]);
    let rest = futures::stream::unfold(listing, Listing::part);
    let body = Body::from_stream(futures::StreamExt::chain(opening, rest));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn download(
    State(node): State<Node>,
    Path(cid): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    download::serve(&node, &method, &headers, &cid, Source::Local).await
}

async fn delete(State(node): State<Node>, Path(cid): Path<String>) -> Result<StatusCode, ApiError> {
    let cid = cid_param(&cid)?;
    node.delete(cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exists(
    State(node): State<Node>,
    Path(cid): Path<String>,
) -> Result<Json<BTreeMap<String, bool>>, ApiError> {
    let cid = cid_param(&cid)?;
    let has = node.has_block(cid).await?;
    Ok(Json(BTreeMap::from([(cid.to_string(), has)])))
}

async fn space(State(node): State<Node>) -> Result<Json<SpaceJson>, ApiError> {
    let s = node.space().await?;
    Ok(Json(SpaceJson {
        total_blocks: s.total_blocks,
        quota_max_bytes: s.quota_max_bytes,
        quota_used_bytes: s.quota_used_bytes,
        quota_reserved_bytes: s.quota_reserved_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use cairn_node::{NodeConfig, Store, StoreConfig};
    use http_body_util::BodyExt;

    use crate::CorsOrigin;
    use tower::ServiceExt;

    use super::*;

    /// Longest a test waits for an answer or an event.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    fn app() -> Router {
        router(Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        ))
    }

    /// A client that goes quiet mid-upload: the upload fails as `408` once nothing came for the
    /// idle limit, nothing is stored, and the room its length reserved goes back.
    #[tokio::test]
    async fn a_stalled_upload_fails_and_gives_its_room_back() {
        let node = Node::new(
            Store::in_memory(StoreConfig::default()).unwrap(),
            NodeConfig::default(),
        );
        // One chunk, then silence.
        let first = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
                7u8;
                100_000
            ]))]);
        let body = Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()));
        let idle = std::time::Duration::from_millis(100);
        let upload = node.store_dataset_sized(idle_limited(body, idle), None, None, Some(10 << 20));
        let watch = async {
            // The room is held while the upload waits for its body.
            loop {
                let space = node.space().await.unwrap();
                if space.quota_reserved_bytes > 0 {
                    return space.quota_reserved_bytes;
                }
                tokio::task::yield_now().await;
            }
        };
        let (result, held) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            tokio::join!(upload, watch)
        })
        .await
        .expect("the stalled upload never ended");
        assert!(held >= 10 << 20, "{held}");
        let err = result.unwrap_err();
        let answer = ApiError::from(err).into_response();
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        let space = node.space().await.unwrap();
        assert_eq!((space.quota_used_bytes, space.quota_reserved_bytes), (0, 0));
        assert!(node.list().await.unwrap().is_empty());
    }

    /// An upload whose body the test feeds, and the sender that feeds it (dropped: the end).
    fn fed_upload() -> (
        Request<Body>,
        tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let req = Request::post(format!("{API_BASE}/data"))
            .body(Body::from_stream(stream))
            .unwrap();
        (req, tx)
    }

    /// Waits (bounded) until the upload fed by `tx` has read what was sent: it has its turn.
    async fn read_by_its_upload(
        tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    ) {
        tokio::time::timeout(WAIT, async {
            while tx.capacity() < tx.max_capacity() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the upload never read its body");
    }

    /// Uploads beyond the limit wait for a turn: one that gets it in time is stored, one that
    /// does not is `503` with its reason (review: nothing bounded the uploads running at once,
    /// each with its buffers and five blocking threads).
    #[tokio::test]
    async fn uploads_beyond_the_limit_wait_for_their_turn() {
        let node = || {
            Node::new(
                Store::in_memory(StoreConfig::default()).unwrap(),
                NodeConfig::default(),
            )
        };
        let limited = |wait| {
            router_with(
                node(),
                ApiOptions {
                    uploads: UploadLimits { max: 1, wait },
                    ..ApiOptions::default()
                },
            )
        };
        let chunk = || Ok(bytes::Bytes::from(vec![5u8; 1000]));
        // No turn within the wait: 503.
        let app = limited(std::time::Duration::from_millis(100));
        let (first, tx) = fed_upload();
        tx.send(chunk()).await.unwrap();
        let running = tokio::spawn(call_owned(app.clone(), first));
        read_by_its_upload(&tx).await;
        let (status, _, body) = call(&app, post(b"second", &[])).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("1 uploads are in progress"), "{text}");
        drop(tx);
        let (status, _, _) = tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        // A turn that comes in time: the second upload waits and is stored.
        let app = limited(WAIT);
        let (first, tx) = fed_upload();
        tx.send(chunk()).await.unwrap();
        let running = tokio::spawn(call_owned(app.clone(), first));
        read_by_its_upload(&tx).await;
        let waiting = tokio::spawn(call_owned(app.clone(), post(b"second", &[])));
        drop(tx);
        for task in [running, waiting] {
            let (status, _, _) = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
            assert_eq!(status, StatusCode::OK);
        }
    }

    async fn call_owned(app: Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        call(&app, req).await
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    fn post(body: &'static [u8], headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::post(format!("{API_BASE}/data"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from(body)).unwrap()
    }

    /// An upload refused `503` after waiting for a turn has its body read after the answer
    /// even when it said `Expect: 100-continue`: the client stopped waiting for our go long
    /// before (curl: after 1 s) and is sending it (review: it was left unread, and the closed
    /// connection reset the client).
    #[tokio::test]
    async fn an_upload_refused_after_its_wait_is_drained_despite_expect() {
        const CHUNK: usize = 16 * 1024;
        const CHUNKS: usize = 64;
        let app = router_with(
            Node::new(
                Store::in_memory(StoreConfig::default()).unwrap(),
                NodeConfig::default(),
            ),
            ApiOptions {
                uploads: UploadLimits {
                    max: 1,
                    wait: std::time::Duration::from_millis(100),
                },
                ..ApiOptions::default()
            },
        );
        let (first, tx) = fed_upload();
        tx.send(Ok(bytes::Bytes::from(vec![5u8; 1000])))
            .await
            .unwrap();
        let running = tokio::spawn(call_owned(app.clone(), first));
        read_by_its_upload(&tx).await;
        let (stream, body) = HeldBody::new(CHUNK, 0, CHUNKS);
        let req = Request::post(format!("{API_BASE}/data"))
            .header(header::EXPECT, "100-continue")
            .body(stream)
            .unwrap();
        let (status, _, _) = tokio::time::timeout(WAIT, call(&app, req))
            .await
            .expect("no answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        body.answered.notify_one();
        body.wait_for_end("refused after its wait").await;
        assert_eq!(body.read(), CHUNKS);
        drop(tx);
        let (status, _, _) = tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    /// An upload refused from its headers (`422`) or for its length (`507`) is answered at
    /// once, before its body is read, and its body is then read (and dropped) to its end: a
    /// client still sending is not reset before it can read the answer. (The node used to read
    /// 1 MiB, answer and close, and a client sending more could see a broken pipe instead.)
    #[tokio::test]
    async fn a_refused_upload_is_answered_first_and_its_body_read_after() {
        const CHUNK: usize = 16 * 1024;
        /// 16 MiB: far more than the node used to read.
        const CHUNKS: usize = 1000;
        let app = app();
        for (headers, status) in [
            (
                vec![(
                    header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded".to_owned(),
                )],
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                vec![(header::CONTENT_LENGTH, (1u64 << 50).to_string())],
                StatusCode::INSUFFICIENT_STORAGE,
            ),
        ] {
            // The body's first chunk comes at once, the others once the answer is in.
            let (stream, body) = HeldBody::new(CHUNK, 1, CHUNKS);
            let mut req = Request::post(format!("{API_BASE}/data"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let req = req.body(stream).unwrap();
            let (s, _, _) = tokio::time::timeout(WAIT, call(&app, req))
                .await
                .expect("no answer");
            assert_eq!(s, status);
            assert!(body.read() <= 1);
            body.answered.notify_one();
            body.wait_for_end(&format!("{status}")).await;
            assert_eq!(body.read(), CHUNKS);
        }
        let (_, _, list) = call(
            &app,
            Request::get(format!("{API_BASE}/data"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        assert_eq!(v["content"], serde_json::json!([]));
    }

    /// An upload whose length does not fit in the quota left is refused with 507 before its
    /// body is read into the store (only its start is read and dropped); one that fits is
    /// stored.
    #[tokio::test]
    async fn a_sized_upload_that_cannot_fit_is_refused_up_front() {
        let store = Store::in_memory(StoreConfig {
            quota_bytes: 4 * 65536,
            ..StoreConfig::default()
        })
        .unwrap();
        let app = router(Node::new(store.clone(), NodeConfig::default()));
        let big = vec![7u8; 5 * 65536];
        let req = Request::post(format!("{API_BASE}/data"))
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big))
            .unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE);
        let text = String::from_utf8(body).unwrap();
        // Its 5 blocks and room for its manifest.
        assert!(text.contains("335872 more bytes needed"), "{text}");
        let space = store.space().unwrap();
        assert_eq!((space.quota_used_bytes, space.quota_reserved_bytes), (0, 0));
        let small = vec![8u8; 65536 + 1];
        let req = Request::post(format!("{API_BASE}/data"))
            .header(header::CONTENT_LENGTH, small.len())
            .body(Body::from(small))
            .unwrap();
        let (s, _, _) = call(&app, req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(store.space().unwrap().quota_reserved_bytes, 0);
    }

    /// An upload without a length that runs over the quota part-way is answered `507`, and the
    /// rest of its body is then read (and dropped): a client still sending reads the answer
    /// instead of a reset connection (found by review: only uploads refused up front were
    /// drained).
    #[tokio::test]
    async fn an_upload_that_runs_over_the_quota_is_answered_and_its_body_read_after() {
        const CHUNK: usize = 64 * 1024;
        /// Sent before the answer: more than the quota.
        const BEFORE: usize = 8;
        const CHUNKS: usize = 64;
        let store = Store::in_memory(StoreConfig {
            quota_bytes: 4 * CHUNK as u64,
            ..StoreConfig::default()
        })
        .unwrap();
        let app = router(Node::new(store.clone(), NodeConfig::default()));
        let (stream, body) = HeldBody::new(CHUNK, BEFORE, CHUNKS);
        let req = Request::post(format!("{API_BASE}/data"))
            .body(stream)
            .unwrap();
        let (s, _, text) = tokio::time::timeout(WAIT, call(&app, req))
            .await
            .expect("no answer");
        assert_eq!(
            s,
            StatusCode::INSUFFICIENT_STORAGE,
            "{}",
            String::from_utf8_lossy(&text)
        );
        body.answered.notify_one();
        body.wait_for_end("over the quota").await;
        assert_eq!(body.read(), CHUNKS);
        let space = store.space().unwrap();
        assert_eq!((space.quota_used_bytes, space.quota_reserved_bytes), (0, 0));
    }

    /// An upload body of `chunks` chunks of `size` bytes, each chunk distinct, and what the
    /// test sees of it: the first `before` chunks come at once, the rest once `answered` is
    /// notified; `ended` is notified when the body has been read to its end.
    struct HeldBody {
        read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        answered: std::sync::Arc<tokio::sync::Notify>,
        ended: std::sync::Arc<tokio::sync::Notify>,
    }

    impl HeldBody {
        fn new(size: usize, before: usize, chunks: usize) -> (Body, HeldBody) {
            use std::sync::{Arc, atomic::Ordering};
            let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let answered = Arc::new(tokio::sync::Notify::new());
            let ended = Arc::new(tokio::sync::Notify::new());
            let (r, a, e) = (read.clone(), answered.clone(), ended.clone());
            let stream = futures::stream::unfold(0usize, move |i| {
                let (read, answered, ended) = (r.clone(), a.clone(), e.clone());
                async move {
                    if i == before {
                        answered.notified().await;
                    }
                    if i == chunks {
                        ended.notify_one();
                        return None;
                    }
                    read.fetch_add(1, Ordering::SeqCst);
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![i as u8; size])),
                        i + 1,
                    ))
                }
            });
            (
                Body::from_stream(stream),
                HeldBody {
                    read,
                    answered,
                    ended,
                },
            )
        }

        /// Chunks read so far.
        fn read(&self) -> usize {
            self.read.load(std::sync::atomic::Ordering::SeqCst)
        }

        async fn wait_for_end(&self, what: &str) {
            if tokio::time::timeout(WAIT, self.ended.notified())
                .await
                .is_err()
            {
                panic!(
                    "{what}: the body was not read after the answer ({} chunks read)",
                    self.read()
                );
            }
        }
    }

    /// A manifest whose blocks cannot fit a block-exchange message is refused (`422`, saying
    /// why) before any block is asked for: no peer could deliver one.
    #[tokio::test]
    async fn a_network_download_of_blocks_too_large_to_receive_is_refused() {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let app = router(Node::new(store.clone(), NodeConfig::default()));
        let (s, _, cid) = call(&app, post(b"some bytes", &[])).await;
        assert_eq!(s, StatusCode::OK);
        let cid = parse_cid(std::str::from_utf8(&cid).unwrap()).unwrap();
        let real = store.get_manifest(&cid).unwrap().unwrap();
        let big = cairn_node::MAX_NETWORK_BLOCK_SIZE + 1;
        let block = cairn_core::Manifest::new(real.tree_cid, big, big).to_block();
        store.put_block(&block).unwrap();
        let (s, _, body) = call(
            &app,
            Request::get(format!("{API_BASE}/data/{}/network/stream", block.cid()))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(text.contains("block-exchange message"), "{text}");
    }

    /// On a node without a network, a dataset only partly stored here (a download stopped, or
    /// fetched a range) is a 404 with a clear message for the parts it lacks, also for HEAD,
    /// and not a 200 whose body is cut off; the blocks it has are served. (With a network the
    /// missing blocks are fetched: `ranges_head_etag_and_cors` in the CLI's end-to-end tests.)
    #[tokio::test]
    async fn a_partly_stored_dataset_is_not_served_as_whole() {
        use cairn_core::{Chunker, VerifiedLeaf};
        use cairn_node::DatasetMeta;

        // The dataset, built in another store: three blocks.
        let src = Store::in_memory(StoreConfig::default()).unwrap();
        let bytes: Vec<u8> = (0..3 * 65536u32).map(|i| (i % 251) as u8).collect();
        let mut w = src.begin_dataset().unwrap();
        let mut chunker = Chunker::new(65536);
        chunker.push(&bytes, |b| {
            w.write(&cairn_core::Block::data_block(b)).unwrap()
        });
        if let (Some(last), _) = chunker.finish() {
            w.write(&cairn_core::Block::data_block(last)).unwrap();
        }
        let done = w
            .finish(DatasetMeta {
                dataset_size: bytes.len() as u64,
                block_size: 65536,
                filename: None,
                mimetype: None,
            })
            .unwrap();
        let m = done.manifest;
        // This node holds the manifest and block 0 only.
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        store
            .put_block(&src.get_block(&done.manifest_cid).unwrap().unwrap())
            .unwrap();
        let (b0, p0) = src.get_leaf(&m.tree_cid, 0).unwrap().unwrap();
        let leaf = VerifiedLeaf::verify(m.tree_cid, 0, 3, b0, p0).unwrap();
        store.put_leaves(&m.tree_cid, &[leaf]).unwrap();
        let app = router(Node::new(store, NodeConfig::default()));
        let path = format!("{API_BASE}/data/{}", done.manifest_cid);

        for method in ["GET", "HEAD"] {
            let req = Request::builder()
                .method(method)
                .uri(&path)
                .body(Body::empty())
                .unwrap();
            let (s, _, body) = call(&app, req).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method}");
            if method == "GET" {
                let text = String::from_utf8(body).unwrap();
                assert!(text.contains("not complete on this node"), "{text}");
            }
        }
        let ranged = |r: &str| {
            Request::get(&path)
                .header(header::RANGE, r)
                .body(Body::empty())
                .unwrap()
        };
        let (s, _, body) = call(&app, ranged("bytes=0-99")).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, bytes[..100]);
        let (s, _, _) = call(&app, ranged("bytes=-100")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    /// `GET /data` writes its body a page at a time: a node with more datasets than two pages
    /// lists each once, in one valid JSON document of the reference's shape.
    #[tokio::test]
    async fn the_listing_goes_out_page_by_page_and_whole() {
        let app = app();
        let n = 2 * LIST_PAGE + 3;
        let mut uploaded = std::collections::BTreeSet::new();
        for i in 0..n {
            let body = format!("dataset {i}");
            let req = Request::post(format!("{API_BASE}/data"))
                .body(Body::from(body))
                .unwrap();
            let (s, _, cid) = call(&app, req).await;
            assert_eq!(s, StatusCode::OK);
            uploaded.insert(String::from_utf8(cid).unwrap());
        }
        let req = Request::get(format!("{API_BASE}/data"))
            .body(Body::empty())
            .unwrap();
        let (s, h, list) = call(&app, req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        let items = v["content"].as_array().unwrap();
        assert_eq!(items.len(), n);
        let listed: std::collections::BTreeSet<String> = items
            .iter()
            .map(|i| i["cid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, uploaded);
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    }

    #[tokio::test]
    async fn upload_download_list_exists_delete() {
        let app = app();
        let (s, _, cid) = call(&app, post(b"some file contents", &[])).await;
        assert_eq!(s, StatusCode::OK);
        let cid = String::from_utf8(cid).unwrap();
        assert_eq!(cid, "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy");
        let get = |p: String| {
            Request::get(format!("{API_BASE}{p}"))
                .body(Body::empty())
                .unwrap()
        };
        let (s, h, body) = call(&app, get(format!("/data/{cid}"))).await;
        assert_eq!(
            (s, body.as_slice()),
            (StatusCode::OK, &b"some file contents"[..])
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
        assert_eq!(h[header::CONTENT_LENGTH], "18");
        let (_, _, list) = call(&app, get("/data".into())).await;
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        assert_eq!(v["content"][0]["cid"], cid);
        assert_eq!(
            v["content"][0]["manifest"]["treeCid"],
            "zDzSvJTezk7bJNQqFq8k1iHXY84psNuUfZVusA5bBQQUSuyzDSVL"
        );
        assert_eq!(v["content"][0]["manifest"]["datasetSize"], 18);
        // Exactly the reference's keys (nim-codex `codex/manifest/manifest.nim`, the fields
        // marked `{.serialize.}`): its clients parse every key they get.
        let mut keys: Vec<&str> = v["content"][0]["manifest"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "blockSize",
                "datasetSize",
                "filename",
                "mimetype",
                "protected",
                "treeCid"
            ]
        );
        assert_eq!(
            v["content"][0]["manifest"]["filename"],
            serde_json::Value::Null
        );
        let (_, _, ex) = call(&app, get(format!("/data/{cid}/exists"))).await;
        assert_eq!(
            String::from_utf8(ex).unwrap(),
            format!("{{\"{cid}\":true}}")
        );
        let (_, _, sp) = call(&app, get("/space".into())).await;
        let v: serde_json::Value = serde_json::from_slice(&sp).unwrap();
        assert_eq!(
            (v["quotaUsedBytes"].as_u64(), v["totalBlocks"].as_u64()),
            (Some(65592), Some(2))
        );
        let del = Request::delete(format!("{API_BASE}/data/{cid}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, del).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            call(&app, get(format!("/data/{cid}"))).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn bad_inputs_get_reference_answers() {
        let app = app();
        let (s, _, b) = call(
            &app,
            post(
                b"x",
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            b,
            b"The MIME type 'application/x-www-form-urlencoded' is not valid."
        );
        let (s, _, b) = call(
            &app,
            post(
                b"x",
                &[(
                    "content-disposition",
                    "attachment; filename=\"exam*ple.txt\"",
                )],
            ),
        )
        .await;
        assert_eq!(
            (s, b.as_slice()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                &b"The filename is not valid."[..]
            )
        );
        assert_eq!(call(&app, post(b"", &[])).await.0, StatusCode::BAD_REQUEST);
        let get = |p: &str| {
            Request::get(format!("{API_BASE}{p}"))
                .body(Body::empty())
                .unwrap()
        };
        let (s, _, b) = call(&app, get("/data/not-a-cid")).await;
        assert_eq!(
            (s, b.as_slice()),
            (StatusCode::BAD_REQUEST, &b"Incorrect Cid"[..])
        );
        let unknown = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy";
        let (s, _, b) = call(&app, get(&format!("/data/{unknown}"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(b, crate::error::NOT_FOUND_LOCAL.as_bytes());
        assert!(
            call(&app, get("/data"))
                .await
                .2
                .starts_with(b"{\"content\":[]")
        );
    }

    #[tokio::test]
    async fn filename_and_mimetype_round_trip() {
        let app = app();
        let (s, _, cid) = call(
            &app,
            post(
                b"hello",
                &[
                    ("content-type", "text/plain"),
                    ("content-disposition", "attachment; filename=\"hello.txt\""),
                ],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let cid = String::from_utf8(cid).unwrap();
        let req = Request::get(format!("{API_BASE}/data/{cid}"))
            .body(Body::empty())
            .unwrap();
        let (_, h, body) = call(&app, req).await;
        assert_eq!(body, b"hello");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(
            h[header::CONTENT_DISPOSITION],
            "attachment; filename=\"hello.txt\""
        );
    }

    /// A name beyond ASCII, uploaded as the reference takes it (raw UTF-8 in the quoted
    /// `filename`), is sent back on a download, `GET` and `HEAD`, as an ASCII
    /// fallback and the name itself in `filename*` (RFC 6266/8187), which reads back as the
    /// name. (It used to go back as raw UTF-8 bytes, which RFC 9110 calls `obs-text` and
    /// browsers read as Latin-1.)
    #[tokio::test]
    async fn a_name_beyond_ascii_is_sent_as_filename_star() {
        let app = app();
        for (name, fallback, encoded) in [
            ("r\u{e9}sum\u{e9}.pdf", "r_sum_.pdf", "r%C3%A9sum%C3%A9.pdf"),
            (
                "\u{6570}\u{636e}.csv",
                "download.csv",
                "%E6%95%B0%E6%8D%AE.csv",
            ),
        ] {
            let disposition = format!("attachment; filename=\"{name}\"");
            let req = Request::post(format!("{API_BASE}/data"))
                .header(
                    header::CONTENT_DISPOSITION,
                    axum::http::HeaderValue::from_bytes(disposition.as_bytes()).unwrap(),
                )
                .body(Body::from(name.as_bytes().to_vec()))
                .unwrap();
            let (s, _, cid) = call(&app, req).await;
            assert_eq!(s, StatusCode::OK, "{name}");
            let cid = String::from_utf8(cid).unwrap();
            let want = format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}");
            for method in [Method::GET, Method::HEAD] {
                let req = Request::builder()
                    .method(method.clone())
                    .uri(format!("{API_BASE}/data/{cid}"))
                    .body(Body::empty())
                    .unwrap();
                let (s, h, _) = call(&app, req).await;
                assert_eq!(s, StatusCode::OK, "{method}");
                let got = &h[header::CONTENT_DISPOSITION];
                assert_eq!(got, want.as_str(), "{method}");
                assert_eq!(
                    crate::download_filename(got.as_bytes()).as_deref(),
                    Some(name)
                );
            }
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn upload_bytes(app: &Router, bytes: Vec<u8>) -> String {
        let req = Request::post(format!("{API_BASE}/data"))
            .body(Body::from(bytes))
            .unwrap();
        let (s, _, cid) = call(app, req).await;
        assert_eq!(s, StatusCode::OK);
        String::from_utf8(cid).unwrap()
    }

    fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::get(format!("{API_BASE}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    /// Single ranges of every form, across block boundaries and at both ends, answer 206 with
    /// the right bytes and headers; what cannot be satisfied is 416; what does not parse, and
    /// several ranges, get the whole dataset.
    #[tokio::test]
    async fn range_requests() {
        let app = app();
        let bytes = data(3 * 65536 + 1000);
        let size = bytes.len();
        let cid = upload_bytes(&app, bytes.clone()).await;
        let path = format!("/data/{cid}");
        for (spec, first, last) in [
            ("bytes=0-65535".to_owned(), 0, 65535),
            ("bytes=65530-65545".to_owned(), 65530, 65545),
            ("bytes=70000-70000".to_owned(), 70000, 70000),
            ("bytes=-100".to_owned(), size - 100, size - 1),
            ("bytes=196000-".to_owned(), 196000, size - 1),
            (format!("bytes=10-{}", size * 2), 10, size - 1),
        ] {
            let (s, h, body) = call(&app, get_with(&path, &[("range", &spec)])).await;
            assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{spec}");
            assert_eq!(
                h[header::CONTENT_RANGE],
                format!("bytes {first}-{last}/{size}"),
                "{spec}"
            );
            assert_eq!(h[header::CONTENT_LENGTH], (last - first + 1).to_string());
            assert_eq!(h[header::ETAG], format!("\"{cid}\""));
            assert!(body == bytes[first..=last], "{spec}: bytes differ");
        }
        for spec in [
            format!("bytes={size}-"),
            "bytes=-0".into(),
            format!("bytes={size}-,{}-", size + 5),
        ] {
            let (s, h, _) = call(&app, get_with(&path, &[("range", &spec)])).await;
            assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE, "{spec}");
            assert_eq!(h[header::CONTENT_RANGE], format!("bytes */{size}"));
        }
        for spec in ["bytes=5-2", "bytes=x-", "lines=0-1", "bytes=0-1,10-20"] {
            let (s, h, body) = call(&app, get_with(&path, &[("range", spec)])).await;
            assert_eq!(s, StatusCode::OK, "{spec}");
            assert_eq!(h[header::ACCEPT_RANGES], "bytes");
            assert!(!h.contains_key(header::CONTENT_RANGE));
            assert!(body == bytes, "{spec}");
        }
    }

    /// HEAD answers GET's headers without a body (and ignores Range); the ETag is the quoted
    /// manifest CID; If-None-Match gives 304; If-Range with another tag gives the whole body.
    #[tokio::test]
    async fn head_etag_and_conditionals() {
        let app = app();
        let bytes = data(70_000);
        let cid = upload_bytes(&app, bytes.clone()).await;
        let path = format!("/data/{cid}");
        let tag = format!("\"{cid}\"");
        let (_, get_h, _) = call(&app, get_with(&path, &[])).await;
        for range in [None, Some("bytes=0-9")] {
            let mut b = Request::head(format!("{API_BASE}{path}"));
            if let Some(r) = range {
                b = b.header("range", r);
            }
            let (s, h, body) = call(&app, b.body(Body::empty()).unwrap()).await;
            assert_eq!(s, StatusCode::OK);
            assert!(body.is_empty());
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONTENT_DISPOSITION,
                header::ACCEPT_RANGES,
                header::ETAG,
            ] {
                assert_eq!(h.get(&name), get_h.get(&name), "{name}");
            }
        }
        assert_eq!(get_h[header::CONTENT_LENGTH], "70000");
        assert_eq!(get_h[header::ETAG], tag.as_str());
        let (s, h, body) = call(&app, get_with(&path, &[("if-none-match", &tag)])).await;
        assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
        assert_eq!(h[header::ETAG], tag.as_str());
        let list = format!("\"other\", W/{tag}");
        let (s, _, _) = call(&app, get_with(&path, &[("if-none-match", &list)])).await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        let (s, _, _) = call(&app, get_with(&path, &[("if-none-match", "*")])).await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        let (s, _, _) = call(&app, get_with(&path, &[("if-none-match", "\"other\"")])).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, body) = call(
            &app,
            get_with(&path, &[("range", "bytes=0-9"), ("if-range", "\"other\"")]),
        )
        .await;
        assert_eq!((s, body.len()), (StatusCode::OK, 70_000));
        let (s, _, body) = call(
            &app,
            get_with(&path, &[("range", "bytes=0-9"), ("if-range", &tag)]),
        )
        .await;
        assert_eq!(
            (s, body.as_slice()),
            (StatusCode::PARTIAL_CONTENT, &bytes[..10])
        );
        // Preconditions do not hide a missing dataset.
        let unknown = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy";
        let (s, _, _) = call(
            &app,
            get_with(&format!("/data/{unknown}"), &[("if-none-match", "*")]),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    fn cors_app(origin: &str) -> Router {
        router_with(
            Node::new(
                Store::in_memory(StoreConfig::default()).unwrap(),
                NodeConfig::default(),
            ),
            ApiOptions {
                cors_origin: Some(CorsOrigin::new(origin).unwrap()),
                ..ApiOptions::default()
            },
        )
    }

    fn options(path: &str, origin: Option<&str>) -> Request<Body> {
        let mut b = Request::options(format!("{API_BASE}{path}"));
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(Body::empty()).unwrap()
    }

    fn cors_of(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("access-control-") || *k == header::VARY)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = p
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    /// With `--api-cors-origin`, the headers of the reference for each kind of answer (see
    /// `cors.rs`); without it, none.
    #[tokio::test]
    async fn cors_as_the_reference() {
        const O: &str = "https://app.example";
        let app = cors_app(O);
        let cid = upload_bytes(&app, data(1000)).await;
        let set = |m: &'static str| {
            vec![
                ("access-control-allow-origin", O),
                ("access-control-allow-methods", m),
                ("access-control-max-age", "86400"),
            ]
        };
        // Preflights.
        let (s, h, _) = call(&app, options("/data", Some(O))).await;
        let mut want = set("POST, OPTIONS");
        want.push((
            "access-control-allow-headers",
            "content-type, content-disposition",
        ));
        assert_eq!((s, cors_of(&h)), (StatusCode::NO_CONTENT, pairs(&want)));
        let (s, h, _) = call(&app, options(&format!("/data/{cid}"), None)).await;
        let mut want = set("GET,DELETE, OPTIONS");
        want.push((
            "access-control-allow-headers",
            "Range, If-None-Match, If-Range",
        ));
        assert_eq!((s, cors_of(&h)), (StatusCode::NO_CONTENT, pairs(&want)));
        let (s, h, _) = call(&app, options("/space", Some(O))).await;
        assert_eq!(
            (s, cors_of(&h)),
            (
                StatusCode::OK,
                pairs(&[("access-control-allow-origin", O), ("vary", "Origin")])
            )
        );
        let (s, h, _) = call(&app, options("/space", Some("https://evil.example"))).await;
        assert_eq!((s, cors_of(&h)), (StatusCode::OK, vec![]));
        let (s, _, _) = call(&app, options("/nowhere", Some(O))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // Downloads: set(GET) and the reference's misspelt header, whatever the Origin.
        let (s, h, _) = call(&app, get_with(&format!("/data/{cid}"), &[])).await;
        let mut want = set("GET, OPTIONS");
        want.push(("access-control-headers", "X-Requested-With"));
        want.push((
            "access-control-expose-headers",
            "Content-Disposition, Content-Range, Accept-Ranges, ETag",
        ));
        assert_eq!((s, cors_of(&h)), (StatusCode::OK, pairs(&want)));
        let (s, h, _) = call(&app, get_with("/data/not-a-cid", &[])).await;
        assert_eq!(
            (s, cors_of(&h)),
            (StatusCode::BAD_REQUEST, pairs(&set("GET, OPTIONS")))
        );
        let del = Request::delete(format!("{API_BASE}/data/{cid}"))
            .body(Body::empty())
            .unwrap();
        let (s, h, _) = call(&app, del).await;
        assert_eq!(
            (s, cors_of(&h)),
            (StatusCode::NO_CONTENT, pairs(&set("DELETE, OPTIONS")))
        );
        // Ordinary answers reflect a matching Origin; errors of those routes carry nothing.
        let (_, h, _) = call(&app, get_with("/space", &[("origin", O)])).await;
        assert_eq!(
            cors_of(&h),
            pairs(&[("access-control-allow-origin", O), ("vary", "Origin")])
        );
        let (_, h, _) = call(&app, get_with("/space", &[])).await;
        assert_eq!(cors_of(&h), vec![]);
        let (s, h, _) = call(&app, post(b"", &[("origin", O)])).await;
        assert_eq!((s, cors_of(&h)), (StatusCode::BAD_REQUEST, vec![]));
        let (s, h, _) = call(
            &app,
            get_with(&format!("/data/{cid}/exists"), &[("origin", O)]),
        )
        .await;
        assert_eq!(
            (s, cors_of(&h)),
            (
                StatusCode::OK,
                pairs(&[("access-control-allow-origin", O), ("vary", "Origin")])
            )
        );
        let (s, h, _) = call(&app, get_with("/data/bad/exists", &[("origin", O)])).await;
        assert_eq!(
            (s, cors_of(&h)),
            (StatusCode::BAD_REQUEST, pairs(&set("GET, OPTIONS")))
        );
        let (s, h, _) = call(&app, get_with("/sales/slots", &[])).await;
        assert_eq!(
            (s, cors_of(&h)),
            (StatusCode::SERVICE_UNAVAILABLE, pairs(&set("GET, OPTIONS")))
        );
        // Two Origin headers on an answer the server library decorates: 400.
        let (s, _, body) = call(&app, get_with("/space", &[("origin", O), ("origin", O)])).await;
        assert_eq!(
            (s, body.as_slice()),
            (
                StatusCode::BAD_REQUEST,
                &b"Only a single Origin header must be specified"[..]
            )
        );
        // A host without scheme matches both schemes; `*` answers `*` without Vary.
        let app = cors_app("app.example");
        let (_, h, _) = call(
            &app,
            get_with("/space", &[("origin", "http://app.example")]),
        )
        .await;
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.example");
        let app = cors_app("*");
        let (_, h, _) = call(&app, get_with("/space", &[("origin", O)])).await;
        assert_eq!(cors_of(&h), pairs(&[("access-control-allow-origin", "*")]));

        // Without the option: no CORS header anywhere; the explicit preflight routes answer 204.
        // (Requests from another origin are refused before cors.rs sees them (guard.rs), so
        // the answers checked here are to the API's own page.)
        let app = self::app();
        let cid = upload_bytes(&app, data(1000)).await;
        let own = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        for req in [
            options("/data", Some(O)),
            options(&format!("/data/{cid}"), Some(O)),
            get_with(&format!("/data/{cid}"), &own),
            get_with("/space", &own),
            get_with("/sales/slots", &own),
        ] {
            let (s, h, _) = call(&app, req).await;
            assert_ne!(s, StatusCode::FORBIDDEN);
            assert_eq!(cors_of(&h), vec![], "{s}");
        }
        let (s, h, _) = call(&app, get_with("/space", &[("origin", O)])).await;
        assert_eq!((s, cors_of(&h)), (StatusCode::FORBIDDEN, vec![]));
        assert_eq!(
            call(&app, options("/data", None)).await.0,
            StatusCode::NO_CONTENT
        );
    }

    /// The guard (`guard.rs`) sits in front of every route: a page's upload from another site,
    /// a rebound host name and a cross-site `<img>` of a download are refused before a handler
    /// runs (nothing is stored), and the node's own clients pass.
    #[tokio::test]
    async fn requests_from_web_pages_are_refused_before_any_handler() {
        const HOST: (&str, &str) = ("host", "127.0.0.1:8080");
        let app = app();
        let cid = upload_bytes(&app, data(1000)).await;
        let listed = |app: Router| async move {
            let (s, _, body) = call(&app, get_with("/data", &[])).await;
            assert_eq!(s, StatusCode::OK);
            String::from_utf8(body).unwrap().matches("\"cid\"").count()
        };
        assert_eq!(listed(app.clone()).await, 1);
        let (s, _, body) = call(
            &app,
            post(b"from a page", &[HOST, ("origin", "http://evil.example")]),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("--api-cors-origin")
        );
        let (s, _, _) = call(&app, post(b"rebound", &[("host", "evil.example:8080")])).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(listed(app.clone()).await, 1, "nothing was stored");
        let img = [
            HOST,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "no-cors"),
        ];
        let (s, _, _) = call(&app, get_with(&format!("/data/{cid}"), &img)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // The API's own page, a followed link and a plain client pass.
        let (s, _, _) = call(
            &app,
            post(b"own page", &[HOST, ("origin", "http://127.0.0.1:8080")]),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let link = [
            HOST,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-user", "?1"),
        ];
        let (s, _, body) = call(&app, get_with(&format!("/data/{cid}"), &link)).await;
        assert_eq!((s, body), (StatusCode::OK, data(1000)));
        let (s, _, _) = call(&app, get_with("/space", &[("host", "localhost:8080")])).await;
        assert_eq!(s, StatusCode::OK);
    }

    /// With a scheme-less `--api-cors-origin` (`app.example`, as the README shows it), the
    /// answers that carry `set(…)` (downloads, deletes, their preflights) name the request's
    /// matching origin, with its scheme, as the other answers do: a browser accepts nothing
    /// else. They used to send the option's value as it is. Found by review.
    #[tokio::test]
    async fn cors_without_a_scheme_names_the_matching_origin() {
        const O: &str = "https://app.example";
        let app = cors_app("app.example");
        let cid = upload_bytes(&app, data(1000)).await;
        let allowed = |h: &HeaderMap| {
            (
                h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                    .map(|v| v.to_str().unwrap().to_owned()),
                h.get(header::VARY).map(|v| v.to_str().unwrap().to_owned()),
            )
        };
        let echoed = (Some(O.to_owned()), Some("Origin".to_owned()));
        let (s, h, _) = call(&app, get_with(&format!("/data/{cid}"), &[("origin", O)])).await;
        assert_eq!((s, allowed(&h)), (StatusCode::OK, echoed.clone()));
        let (s, h, _) = call(&app, options(&format!("/data/{cid}"), Some(O))).await;
        assert_eq!((s, allowed(&h)), (StatusCode::NO_CONTENT, echoed.clone()));
        let del = Request::delete(format!("{API_BASE}/data/{cid}"))
            .header("origin", "http://app.example")
            .body(Body::empty())
            .unwrap();
        let (s, h, _) = call(&app, del).await;
        assert_eq!(
            (s, allowed(&h)),
            (
                StatusCode::NO_CONTENT,
                (Some("http://app.example".into()), Some("Origin".into()))
            )
        );
        // Another origin is not named: the API's own page (which guard.rs lets through; another
        // site's is refused before cors.rs sees it) gets the option's value.
        let (s, h, _) = call(
            &app,
            get_with(
                &format!("/data/{cid}"),
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:8080"),
                ],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "deleted above");
        assert_eq!(allowed(&h).0.as_deref(), Some("app.example"));
        let (s, _, _) = call(
            &app,
            get_with(
                &format!("/data/{cid}"),
                &[("origin", "https://evil.example")],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
}
