//! End-to-end tests of `cairn start --metrics`: the real binary on loopback, scraped over HTTP,
//! the exposition parsed line by line. Every wait is on a condition polled with a timeout.
//! The node process is the shared `common::NodeProc`; the metrics address is the second line
//! the node prints.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

mod common;

use common::{NodeProc, WAIT, client, random};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);
/// The media type `prometheus-client`'s text encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const BLOCK: usize = 65536;

/// A node and, when it printed one, its `http://…/metrics` address.
struct Node {
    proc: NodeProc,
    metrics: Option<String>,
}

impl std::ops::Deref for Node {
    type Target = NodeProc;
    fn deref(&self) -> &NodeProc {
        &self.proc
    }
}

impl Node {
    /// Starts a node; with `metrics_line` waits for the metrics line after the REST line.
    fn start(data: &Path, extra: &[&str], envs: &[(&str, &str)], metrics_line: bool) -> Node {
        let proc = NodeProc::start(data, extra, envs);
        let metrics = metrics_line.then(|| {
            let line = proc.next_line().expect("node printed its metrics address");
            line.strip_prefix("cairn: metrics listening on ")
                .unwrap_or_else(|| panic!("not the metrics line: {line}"))
                .trim()
                .to_owned()
        });
        Node { proc, metrics }
    }

    /// SIGTERM, a clean exit; returns the stdout lines not read yet.
    fn stop(self) -> Vec<String> {
        self.proc.stop()
    }
}

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the declared metric families (`# TYPE`) and the samples.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

/// Parses the OpenMetrics text format as far as cairn uses it: `# HELP/TYPE/UNIT` lines, the
/// final `# EOF`, and samples `name{label="value",…} value` with escaped label values. Checks
/// what it reads: every sample belongs to a declared family (with the suffix its type allows),
/// no label appears twice, and the text ends with `# EOF`.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "{name} declared twice"
                    );
                }
                (Some("HELP" | "UNIT"), Some(_), _) | (Some("EOF"), None, None) => {}
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        samples.push(parse_sample(line));
    }
    for s in &samples {
        let family = types.iter().find(|(name, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|x| s.name == format!("{name}{x}"))
        });
        assert!(family.is_some(), "sample of no declared family: {s:?}");
    }
    Exposition { types, samples }
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("bad sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bad();
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            match chars.peek() {
                Some((_, '}')) => {
                    chars.next();
                    break;
                }
                Some((_, ',')) => {
                    chars.next();
                }
                Some(_) => {}
                None => bad(),
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => bad(),
                    },
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            }
            assert!(
                labels.insert(key.clone(), value).is_none(),
                "label {key} twice: {line}"
            );
        }
        rest = match chars.next() {
            Some((i, ' ')) => &body[i..],
            _ => bad(),
        };
    }
    let value = rest.trim_start_matches(' ');
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

impl Exposition {
    /// The value of the sample `name` with exactly `labels`; panics when there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Checks every histogram: buckets cumulative (never decreasing with `le`), `+Inf` equal to
    /// `_count`, per series of labels.
    fn check_histograms(&self) {
        for (family, _) in self.types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket_name = format!("{family}_bucket");
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket_name) {
                let mut rest = s.labels.clone();
                let le = rest.remove("le").expect("bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.entry(rest).or_default().push((le, s.value));
            }
            assert!(!series.is_empty(), "histogram {family} has no buckets");
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family}{labels:?}: buckets not cumulative: {buckets:?}"
                );
                let count = self
                    .samples
                    .iter()
                    .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                    .map(|s| s.value);
                assert_eq!(
                    buckets.last().map(|b| (b.0, b.1)),
                    count.map(|c| (f64::INFINITY, c))
                );
            }
        }
    }
}

/// Scrapes `url`: checks the status and the media type, parses the body.
fn scrape(c: &reqwest::blocking::Client, url: &str) -> Exposition {
    let r = c.get(url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OPENMETRICS);
    parse(&r.text().unwrap())
}

/// Scrapes `url` until `cond` holds, within [`WAIT`].
fn scrape_until(
    c: &reqwest::blocking::Client,
    url: &str,
    what: &str,
    cond: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + WAIT;
    loop {
        let e = scrape(c, url);
        if cond(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            e.samples
        );
        std::thread::sleep(POLL);
    }
}

fn space_used(c: &reqwest::blocking::Client, n: &NodeProc) -> f64 {
    let s: serde_json::Value = c.get(n.url("/space")).send().unwrap().json().unwrap();
    s["quotaUsedBytes"].as_f64().unwrap()
}

/// Two nodes with `--metrics --metrics-port 0`: A stores a dataset, B connects to A and streams
/// it through the network; both scrapes then show the transfer — blocks and bytes each way, the
/// peers by direction, B's download and its request latencies, the stores as `/space` has them.
#[test]
fn metrics_follow_a_download_between_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--metrics", "--metrics-port", "0"];
    let a = Node::start(&dir.path().join("a"), &flags, &[], true);
    let b = Node::start(&dir.path().join("b"), &flags, &[], true);
    let (ma, mb) = (a.metrics.clone().unwrap(), b.metrics.clone().unwrap());
    assert!(
        ma.starts_with("http://127.0.0.1:") && ma.ends_with("/metrics"),
        "{ma}"
    );
    assert_ne!(ma, mb);
    let c = client();

    // Before anything happened: no peer, nothing received.
    let before = scrape(&c, &mb);
    before.check_histograms();
    assert_eq!(before.get("cairn_peers", &[("direction", "outbound")]), 0.0);
    let accepted = [("outcome", "accepted")];
    assert_eq!(
        before.get("cairn_blockexc_blocks_received_total", &accepted),
        0.0
    );

    let data = random(5 * BLOCK + 999, 91);
    let blocks = data.len().div_ceil(BLOCK) as f64;
    let cid = c
        .post(a.url("/data"))
        .body(data.clone())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let info: serde_json::Value = c.get(a.url("/debug/info")).send().unwrap().json().unwrap();
    let peer = info["id"].as_str().unwrap();
    let addr = info["addrs"][0].as_str().unwrap();
    let r = c
        .get(b.url(&format!("/connect/{peer}?addrs={addr}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let got = c
        .get(b.url(&format!("/data/{cid}/network/stream")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got.as_ref() == data.as_slice(), "downloaded bytes differ");

    // B: every block of the dataset and the manifest came through the exchange, verified.
    let eb = scrape_until(&c, &mb, "B's counters", |e| {
        e.get("cairn_blockexc_blocks_received_total", &accepted) >= blocks + 1.0
            && e.get(
                "cairn_download_duration_seconds_count",
                &[("outcome", "completed")],
            ) >= 1.0
    });
    eb.check_histograms();
    assert_eq!(
        eb.get(
            "cairn_blockexc_blocks_received_total",
            &[("outcome", "rejected")]
        ),
        0.0
    );
    assert_eq!(
        eb.get("cairn_download_blocks_total", &[("source", "network")]),
        blocks
    );
    assert_eq!(
        eb.get("cairn_download_blocks_total", &[("source", "local")]),
        0.0
    );
    assert!(eb.get("cairn_blockexc_block_requests_total", &[]) >= blocks + 1.0);
    // Every accepted block answered a request: one latency each.
    assert!(eb.get("cairn_blockexc_block_request_duration_seconds_count", &[]) >= blocks + 1.0);
    let blockexc_in = [("protocol", "blockexc"), ("direction", "received")];
    assert!(eb.get("cairn_network_bytes_total", &blockexc_in) >= data.len() as f64);
    assert!(eb.get("cairn_network_messages_total", &blockexc_in) >= 1.0);
    assert_eq!(eb.get("cairn_peers", &[("direction", "outbound")]), 1.0);
    assert_eq!(eb.get("cairn_peers", &[("direction", "inbound")]), 0.0);
    assert_eq!(eb.get("cairn_downloads_active", &[]), 0.0);
    assert_eq!(eb.get("cairn_store_used_bytes", &[]), space_used(&c, &b));
    assert_eq!(eb.get("cairn_store_quota_bytes", &[]), (20u64 << 30) as f64);
    // Once the download is over, nothing stays in flight or unwritten (sampled every tick).
    scrape_until(&c, &mb, "B's gauges back to zero", |e| {
        e.get("cairn_blockexc_blocks_in_flight", &[]) == 0.0
            && e.get("cairn_blockexc_blocks_unstored", &[]) == 0.0
            && e.get("cairn_blockexc_wantlist_blocks", &[("side", "local")]) == 0.0
    });

    // A: it sent them; B dialled it; it announced the dataset to its (empty) DHT.
    let ea = scrape_until(&c, &ma, "A's counters", |e| {
        e.get("cairn_blockexc_blocks_sent_total", &[]) >= blocks + 1.0
            && e.get("cairn_dht_announcements_total", &[]) >= 1.0
    });
    ea.check_histograms();
    let blockexc_out = [("protocol", "blockexc"), ("direction", "sent")];
    assert!(ea.get("cairn_network_bytes_total", &blockexc_out) >= data.len() as f64);
    assert_eq!(ea.get("cairn_peers", &[("direction", "inbound")]), 1.0);
    assert_eq!(ea.get("cairn_peers", &[("direction", "outbound")]), 0.0);
    assert_eq!(
        ea.get("cairn_blockexc_blocks_received_total", &accepted),
        0.0,
        "A fetched nothing"
    );
    assert_eq!(ea.get("cairn_store_used_bytes", &[]), space_used(&c, &a));
    assert_eq!(ea.get("cairn_store_blocks", &[]), blocks + 1.0);
    // No label names a peer or a CID.
    for s in ea.samples.iter().chain(&eb.samples) {
        for v in s.labels.values() {
            assert!(!v.contains(peer) && !v.contains(&cid), "{s:?}");
        }
    }
    a.stop();
    b.stop();
}

/// Without `--metrics` nothing listens on the metrics port and no metrics line is printed; the
/// same port given with `CAIRN_METRICS=1` (the environment variable) is served.
#[test]
fn metrics_are_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    // A free port: bound, then released for the nodes.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_s = port.to_string();
    let at = SocketAddr::from(([127, 0, 0, 1], port));

    let off = Node::start(
        &dir.path().join("off"),
        &["--metrics-port", &port_s],
        &[],
        false,
    );
    // The node is up (its REST API answers) and nothing listens where metrics would be.
    let c = client();
    assert_eq!(c.get(off.url("/space")).send().unwrap().status(), 200);
    assert!(
        TcpStream::connect_timeout(&at, WAIT).is_err(),
        "something listens on {at} without --metrics"
    );
    let rest = off.stop();
    assert!(
        rest.iter().all(|l| !l.contains("metrics")),
        "metrics line printed without --metrics: {rest:?}"
    );

    let on = Node::start(
        &dir.path().join("on"),
        &[],
        &[("CAIRN_METRICS", "1"), ("CAIRN_METRICS_PORT", &port_s)],
        true,
    );
    assert_eq!(
        on.metrics.as_deref(),
        Some(format!("http://{at}/metrics").as_str())
    );
    let e = scrape(&c, on.metrics.as_ref().unwrap());
    assert_eq!(e.get("cairn_peers", &[("direction", "inbound")]), 0.0);
    on.stop();
    // Stopped with the node.
    assert!(TcpStream::connect_timeout(&at, WAIT).is_err());
}

#[test]
fn the_parser_reads_what_it_must_and_refuses_the_rest() {
    let text = "# HELP x_bytes Some.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\n\
                x_bytes_total{a=\"q\\\"uo,te\",b=\"\"} 3\n# TYPE h histogram\n\
                h_sum 1.5\nh_count 2\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let e = parse(text);
    assert_eq!(e.get("x_bytes_total", &[("a", "q\"uo,te"), ("b", "")]), 3.0);
    e.check_histograms();
    for bad in [
        "# TYPE x counter\nx_total 1\n",                 // no EOF
        "# TYPE x counter\nx 1\n# EOF\n",                // counter without _total
        "y_total 1\n# EOF\n",                            // undeclared
        "# TYPE x gauge\nx{a=\"1\" 2\n# EOF\n",          // unterminated labels
        "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 2\n# EOF\n", // label twice
        "# TYPE x gauge\nx one\n# EOF\n",                // not a number
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
    let broken = parse(
        "# TYPE h histogram\nh_sum 1\nh_count 3\nh_bucket{le=\"1.0\"} 2\n\
         h_bucket{le=\"+Inf\"} 1\n# EOF\n",
    );
    assert!(std::panic::catch_unwind(|| broken.check_histograms()).is_err());
}
