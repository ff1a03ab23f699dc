//! `cairn start` options: flags, `CAIRN_*` environment variables, a TOML file, defaults.
//!
//! Precedence, highest first: command-line flag, environment variable, `--config-file` TOML key,
//! built-in default. The TOML keys are the flag names without dashes prefix (`data-dir`,
//! `api-port`, …); an unknown key is an error that names it, so a typo never silently falls back
//! to a default.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use cairn_node::{
    discovery::Spr,
    net::{Multiaddr, Muxers, PeerId},
};
use clap::Args;
use serde::Deserialize;

/// Default REST API address, as the reference (`--api-bindaddr`).
pub(crate) const DEFAULT_API_BINDADDR: &str = "127.0.0.1";
/// Default REST API port, as the reference (`--api-port`).
pub(crate) const DEFAULT_API_PORT: u16 = 8080;
/// Default key file name, in the data directory (as the reference's `--net-privkey`).
pub(crate) const DEFAULT_KEY_FILE: &str = "key";
/// Default log filter.
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// The level names a log directive without `=` may be (in any case). Anything else there would
/// be taken by `tracing` as the name of a module to log at every level, so a mistyped level
/// (`verbose`) would silently log nothing at all.
pub(crate) const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
/// Default address of the metrics server, as the reference (`--metrics-address`): loopback,
/// since the metrics describe the node's traffic to anyone who can read them.
pub(crate) const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1";
/// Default port of the metrics server, as the reference (`--metrics-port`).
pub(crate) const DEFAULT_METRICS_PORT: u16 = 8008;
/// The smallest storage quota accepted: one full block. A smaller one (`0` by mistake, or a
/// number meant in another unit) would give a node that refuses every upload and download.
pub(crate) const MIN_STORAGE_QUOTA: u64 = 64 * 1024;
/// The shortest `--block-ttl` other than `0` (never expire): the store keeps expiry times in
/// whole seconds, where `0` means never, so a TTL under a second would silently keep data for
/// ever.
pub(crate) const MIN_BLOCK_TTL: Duration = Duration::from_secs(1);
/// The longest `--block-mi`. Expired datasets stay stored, and hold their part of the quota, up
/// to this long past their TTL; a day is already far more than any use needs, and a value
/// such as `18446744073709551615` (seconds) would mean they are never removed. (The timer
/// itself takes any period: tokio clamps it to about 30 years.)
pub(crate) const MAX_BLOCK_MI: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `--announce-interval`: the lifetime of a provider record on the DHT nodes that
/// keep it (24 h, as the reference's). With a longer interval the records this node announced
/// lapse before it announces again, and its datasets cannot be found through the DHT
/// meanwhile.
pub(crate) const MAX_ANNOUNCE_INTERVAL: Duration = cairn_node::discovery::providers::PROVIDER_TTL;

/// Options of `cairn start`.
#[derive(Debug, Args, Default)]
pub(crate) struct StartArgs {
    /// Directory for the block store and node state [default: the per-user data directory,
    /// e.g. ~/.local/share/cairn]
    #[arg(long, short = 'd', env = "CAIRN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address the REST API listens on [default: 127.0.0.1]
    #[arg(long, env = "CAIRN_API_BINDADDR")]
    pub(crate) api_bindaddr: Option<IpAddr>,
    /// Port of the REST API; 0 picks a free port [default: 8080]
    #[arg(long, short = 'p', env = "CAIRN_API_PORT")]
    pub(crate) api_port: Option<u16>,
    /// Allowed origin for cross-origin (CORS) requests from web pages, as the reference's
    /// option: an origin (https://app.example), a host matching both schemes (app.example),
    /// or '*'. Without it no CORS header is sent [default: none]
    #[arg(long, env = "CAIRN_API_CORS_ORIGIN")]
    pub(crate) api_cors_origin: Option<String>,
    /// A host name requests may address the API by besides IP addresses and localhost,
    /// repeatable; '*' allows any (protection against DNS rebinding) [default: none when
    /// --api-bindaddr is a loopback address or 0.0.0.0 / ::, any name otherwise]
    #[arg(
        long = "api-allowed-hosts",
        env = "CAIRN_API_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub(crate) api_allowed_hosts: Vec<String>,
    /// Storage quota: bytes, or with a binary unit (20GiB, 500M, 1T) [default: 20GiB]
    #[arg(long, short = 'q', env = "CAIRN_STORAGE_QUOTA", value_parser = parse_size)]
    pub(crate) storage_quota: Option<u64>,
    /// Time to live of stored datasets: seconds, or with a unit (30d, 12h, 90m); at least 1s,
    /// or 0 = never expire [default: 30d]
    #[arg(long, short = 't', env = "CAIRN_BLOCK_TTL", value_parser = parse_duration)]
    pub(crate) block_ttl: Option<Duration>,
    /// How often expired datasets are removed (same units as --block-ttl; at most 1d)
    /// [default: 10m]
    #[arg(long = "block-mi", env = "CAIRN_BLOCK_MI", value_parser = parse_duration)]
    pub(crate) block_mi: Option<Duration>,
    /// Log filter: a level (error, warn, info, debug, trace, off) or per-module directives as
    /// in RUST_LOG, e.g. "info,cairn_store=debug"; a word without `=` must be a level
    /// [default: info]
    #[arg(long, env = "CAIRN_LOG_LEVEL", value_parser = parse_log_level)]
    pub(crate) log_level: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_parser = ["text", "json"])]
    pub(crate) log_format: Option<String>,
    /// libp2p listen address, repeatable [default: /ip4/0.0.0.0/tcp/0]
    #[arg(
        long = "listen-addrs",
        short = 'i',
        env = "CAIRN_LISTEN_ADDRS",
        value_delimiter = ','
    )]
    pub(crate) listen_addrs: Vec<Multiaddr>,
    /// A node to join through, repeatable: a signed peer record (`spr:…`, as `GET /spr`
    /// prints it) joins the DHT through that node; a multiaddr ending in /p2p/<peer id> is
    /// dialled at start, asked for addresses (a cairn node sends its DHT record with them, so
    /// the DHT is joined through it too), and dialled again (after 15 s, 30 s, … up to 5 min)
    /// only while the node has fewer than --outbound-peers
    #[arg(
        long = "bootstrap-node",
        short = 'b',
        env = "CAIRN_BOOTSTRAP_NODE",
        value_delimiter = ','
    )]
    pub(crate) bootstrap_node: Vec<String>,
    /// UDP port of the discovery DHT (binds all interfaces); 0 picks a free port
    /// [default: 8090]
    #[arg(long, short = 'u', env = "CAIRN_DISC_PORT")]
    pub(crate) disc_port: Option<u16>,
    /// Which IP the node announces in its records: "any" or "none" (the first non-loopback
    /// IPv4 address it listens on, else 127.0.0.1) or "extip:<IP>" (that address, e.g. the
    /// public IP in front of a NAT, in place of the listen addresses' IP; an IPv6 one goes into
    /// the provider record only, as the DHT runs over IPv4) [default: any]
    #[arg(long, env = "CAIRN_NAT")]
    pub(crate) nat: Option<String>,
    /// How often every stored dataset is announced to the DHT again (same units as
    /// --block-ttl; at most 24h, the life of a provider record on the DHT) [default: 30m]
    #[arg(long, env = "CAIRN_ANNOUNCE_INTERVAL", value_parser = parse_duration)]
    pub(crate) announce_interval: Option<Duration>,
    /// Most libp2p connections [default: 160]
    #[arg(long, env = "CAIRN_MAX_PEERS")]
    pub(crate) max_peers: Option<u32>,
    /// Outbound peers the node keeps, dialling peers from its address book while it has fewer
    /// [default: 10]
    #[arg(long, env = "CAIRN_OUTBOUND_PEERS")]
    pub(crate) outbound_peers: Option<usize>,
    /// Most peers that dialled us; more are refused. At most --max-peers minus --outbound-peers
    /// [default: 40, or that difference if smaller; with --seed-mode, --max-peers]
    #[arg(long, env = "CAIRN_MAX_INBOUND_PEERS")]
    pub(crate) max_inbound_peers: Option<u32>,
    /// A peer to stay connected to, repeatable: a multiaddr ending in /p2p/<peer id>, redialled
    /// whenever the connection drops (backoff 1 s doubling to 5 min)
    #[arg(
        long = "persistent-peer",
        env = "CAIRN_PERSISTENT_PEER",
        value_delimiter = ','
    )]
    pub(crate) persistent_peer: Vec<String>,
    /// A peer id never given to other peers in address lists, repeatable (it can still be
    /// dialled and connected)
    #[arg(
        long = "private-peer-id",
        env = "CAIRN_PRIVATE_PEER_ID",
        value_delimiter = ','
    )]
    pub(crate) private_peer_id: Vec<String>,
    /// Run as a seed node: crawl the address book, answer address requests, and hang up;
    /// keep no long connections and store nothing for others [default: off]
    #[arg(
        long,
        env = "CAIRN_SEED_MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) seed_mode: Option<bool>,
    /// Answer peers' `/perf/1.0.0` self-tests (`cairn perf`), within their limits: at most
    /// 256 MiB each way, one run per peer, two in all at a time and four a minute [default: on]
    #[arg(
        long,
        env = "CAIRN_PERF_SERVER",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) perf_server: Option<bool>,
    /// Keep only public addresses in the address book; by default loopback and private
    /// addresses are kept too when we learn them ourselves or from a peer on our own network
    /// (never given to public peers either way) [default: off]
    #[arg(
        long,
        env = "CAIRN_ADDR_BOOK_STRICT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) addr_book_strict: Option<bool>,
    /// Private key file, relative to the data directory unless absolute; created on first
    /// start [default: key]
    #[arg(long, env = "CAIRN_NET_PRIVKEY")]
    pub(crate) net_privkey: Option<PathBuf>,
    /// Stream multiplexers offered: "yamux,mplex" (Yamux preferred), "yamux" or "mplex"
    /// [default: yamux,mplex]
    #[arg(long, env = "CAIRN_MUXERS", value_parser = parse_muxers)]
    pub(crate) muxers: Option<Muxers>,
    /// Serve Prometheus metrics at http://<metrics-address>:<metrics-port>/metrics
    /// (`--metrics` or `--metrics=true`; `--metrics=false` turns it off) [default: off]
    #[arg(
        long,
        env = "CAIRN_METRICS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) metrics: Option<bool>,
    /// Address the metrics server listens on [default: 127.0.0.1]
    #[arg(long, env = "CAIRN_METRICS_ADDRESS")]
    pub(crate) metrics_address: Option<IpAddr>,
    /// Port of the metrics server; 0 picks a free port [default: 8008]
    #[arg(long, env = "CAIRN_METRICS_PORT")]
    pub(crate) metrics_port: Option<u16>,
    /// A TOML file with any of these options (keys as the long flag names)
    #[arg(long, env = "CAIRN_CONFIG_FILE")]
    pub(crate) config_file: Option<PathBuf>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    api_bindaddr: Option<IpAddr>,
    api_port: Option<u16>,
    api_cors_origin: Option<String>,
    api_allowed_hosts: Option<Vec<String>>,
    storage_quota: Option<toml::Value>,
    block_ttl: Option<toml::Value>,
    block_mi: Option<toml::Value>,
    log_level: Option<String>,
    log_format: Option<String>,
    listen_addrs: Option<Vec<String>>,
    bootstrap_node: Option<Vec<String>>,
    disc_port: Option<u16>,
    nat: Option<String>,
    announce_interval: Option<toml::Value>,
    max_peers: Option<u32>,
    outbound_peers: Option<usize>,
    max_inbound_peers: Option<u32>,
    persistent_peer: Option<Vec<String>>,
    private_peer_id: Option<Vec<String>>,
    seed_mode: Option<bool>,
    perf_server: Option<bool>,
    addr_book_strict: Option<bool>,
    net_privkey: Option<PathBuf>,
    muxers: Option<String>,
    metrics: Option<bool>,
    metrics_address: Option<IpAddr>,
    metrics_port: Option<u16>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) api_bindaddr: IpAddr,
    pub(crate) api_port: u16,
    pub(crate) api_cors_origin: Option<cairn_api::CorsOrigin>,
    pub(crate) api_allowed_hosts: cairn_api::AllowedHosts,
    pub(crate) storage_quota: u64,
    pub(crate) block_ttl: Duration,
    pub(crate) block_mi: Duration,
    pub(crate) log_level: String,
    pub(crate) log_json: bool,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) bootstrap_nodes: Vec<Multiaddr>,
    pub(crate) bootstrap_sprs: Vec<Spr>,
    pub(crate) disc_port: u16,
    pub(crate) nat: Nat,
    pub(crate) announce_interval: Duration,
    pub(crate) max_peers: u32,
    pub(crate) outbound_peers: usize,
    pub(crate) max_inbound_peers: u32,
    pub(crate) persistent_peers: Vec<Multiaddr>,
    pub(crate) private_peer_ids: Vec<PeerId>,
    pub(crate) seed_mode: bool,
    /// Whether peers' perf self-tests are answered.
    pub(crate) perf_server: bool,
    pub(crate) addr_book_strict: bool,
    pub(crate) key_file: PathBuf,
    pub(crate) muxers: Muxers,
    /// Whether `cairn start` serves `/metrics`.
    pub(crate) metrics: bool,
    pub(crate) metrics_address: IpAddr,
    pub(crate) metrics_port: u16,
}

/// Checks a log filter (`--log-level`, `CAIRN_LOG_LEVEL`, `log-level` in the file, and the
/// node's log-level endpoint): comma-separated directives as in `RUST_LOG`, where a directive
/// without `=` must be one of [`LOG_LEVELS`] (`tracing` would take any other word as a module
/// name). Returns the filter as given.
pub(crate) fn parse_log_level(text: &str) -> Result<String, String> {
    let levels = LOG_LEVELS.join(", ");
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for d in &directives {
        if !d.contains('=') && !LOG_LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)) {
            return Err(format!(
                "'{d}' is not a log level: expected one of {levels}, optionally with \
                 per-module directives such as info,cairn_store=debug"
            ));
        }
    }
    if directives.is_empty() {
        return Err(format!(
            "an empty log filter: expected one of {levels}, or directives such as \
             info,cairn_store=debug"
        ));
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("'{text}' is not a log filter: {e}"))
}

/// Parses `--muxers`.
pub(crate) fn parse_muxers(text: &str) -> Result<Muxers, String> {
    match text.trim() {
        "yamux,mplex" | "yamux, mplex" => Ok(Muxers::YamuxThenMplex),
        "yamux" => Ok(Muxers::Yamux),
        "mplex" => Ok(Muxers::Mplex),
        other => Err(format!("'{other}': expected yamux,mplex, yamux or mplex")),
    }
}

fn multiaddrs(list: &[String], key: &str) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{key}: '{a}' is not a multiaddr"))
        })
        .collect()
}

/// Default DHT port, as the reference (`--disc-port`).
pub(crate) const DEFAULT_DISC_PORT: u16 = 8090;

/// `--nat`: which IP goes into the node's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nat {
    /// Pick from the listen addresses (`any`, `none`; cairn does no UPnP/PMP mapping).
    Auto,
    /// `extip:<IP>`.
    ExtIp(IpAddr),
}

/// Parses `--nat`.
pub(crate) fn parse_nat(text: &str) -> anyhow::Result<Nat> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("any") || t.eq_ignore_ascii_case("none") {
        return Ok(Nat::Auto);
    }
    if let Some(ip) = t.strip_prefix("extip:") {
        let addr: IpAddr = ip
            .parse()
            .with_context(|| format!("--nat: '{ip}' is not an IP address"))?;
        // The address goes into the DHT record and every provider record: one no peer can dial
        // made the node's datasets unreachable through the DHT without a word (found by review).
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || broadcast {
            bail!("--nat: '{ip}' is not an address peers can dial");
        }
        return Ok(Nat::ExtIp(addr));
    }
    bail!("--nat: '{t}': expected any, none or extip:<IP> (UPnP and NAT-PMP are not supported)")
}

/// Parses `--persistent-peer` values: multiaddrs naming their peer.
fn parse_persistent(list: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            let addr: Multiaddr = a
                .trim()
                .parse()
                .with_context(|| format!("--persistent-peer '{a}': not a multiaddr"))?;
            match addr.iter().last() {
                Some(cairn_node::net::Protocol::P2p(_)) => Ok(addr),
                _ => bail!("--persistent-peer {addr}: must end in /p2p/<peer id>"),
            }
        })
        .collect()
}

/// Parses `--private-peer-id` values.
fn parse_peer_ids(list: &[String]) -> anyhow::Result<Vec<PeerId>> {
    list.iter()
        .map(|p| {
            p.trim()
                .parse()
                .with_context(|| format!("--private-peer-id '{p}': not a peer id"))
        })
        .collect()
}

/// Splits `--bootstrap-node` values into libp2p addresses (checked to name their peer) and
/// signed peer records.
fn parse_bootstraps(list: &[String]) -> anyhow::Result<(Vec<Multiaddr>, Vec<Spr>)> {
    let mut addrs = Vec::new();
    let mut sprs = Vec::new();
    for b in list {
        let b = b.trim();
        if b.starts_with("spr:") {
            sprs.push(
                Spr::from_uri(b).with_context(|| format!("--bootstrap-node {b}: bad record"))?,
            );
            continue;
        }
        let addr: Multiaddr = b.parse().with_context(|| {
            format!("--bootstrap-node {b}: neither an spr: record nor a multiaddr")
        })?;
        match addr.iter().last() {
            Some(cairn_node::net::Protocol::P2p(_)) => addrs.push(addr),
            _ => bail!("--bootstrap-node {addr}: must end in /p2p/<peer id>"),
        }
    }
    Ok((addrs, sprs))
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir().map_or_else(|| PathBuf::from("cairn-data"), |d| d.join("cairn"))
}

/// Parses a size: a number of bytes, optionally with a binary unit (K, M, G, T, P; `iB`/`B`
/// suffixes allowed), as the reference's `--storage-quota`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 20GiB)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(format!("'{text}': unknown size unit (use K, M, G, T or P)")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: seconds, or a number with a unit (`30d`, `12h`, `10m`, `1w`, `90s`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("'{text}' is not a duration (e.g. 30d): {e}"))
}

fn toml_size(v: &toml::Value, key: &str) -> anyhow::Result<u64> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).with_context(|| format!("{key}: negative")),
        toml::Value::String(s) => parse_size(s).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        _ => bail!("{key}: expected a number or a string"),
    }
}

fn toml_duration(v: &toml::Value, key: &str) -> anyhow::Result<Duration> {
    match v {
        toml::Value::Integer(i) => Ok(Duration::from_secs(
            u64::try_from(*i).with_context(|| format!("{key}: negative"))?,
        )),
        toml::Value::String(s) => parse_duration(s).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        _ => bail!("{key}: expected a number of seconds or a string"),
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!(file_error(path, &text, &e)))
}

/// A config file's parse error on one line: the file, the line and column where the TOML
/// parser points, and its message (its own rendering spans several lines, with the source
/// line and a caret, which a log line or an error chain flattens).
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map_or(String::new(), |span| {
        // The parser's offsets are at character boundaries; `get` keeps a surprise from panicking.
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(", line {line}, column {column}")
    });
    format!(
        "invalid config file {}{at}: {}",
        path.display(),
        e.message().trim_end()
    )
}

impl StartArgs {
    /// Resolves flags/env (already merged by clap) over the file over the defaults.
    pub(crate) fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config_file {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        // A bad value from the file names the file.
        let in_file = |key: &str| match &self.config_file {
            Some(p) => format!("{key} (in {})", p.display()),
            None => key.to_owned(),
        };
        let storage_quota = match (self.storage_quota, &file.storage_quota) {
            (Some(q), _) => q,
            (None, Some(v)) => toml_size(v, &in_file("storage-quota"))?,
            (None, None) => cairn_node::StoreConfig::default().quota_bytes,
        };
        if storage_quota < MIN_STORAGE_QUOTA {
            bail!("--storage-quota must be at least 64KiB (one block), not {storage_quota} bytes");
        }
        let block_ttl = match (self.block_ttl, &file.block_ttl) {
            (Some(d), _) => d,
            (None, Some(v)) => toml_duration(v, &in_file("block-ttl"))?,
            (None, None) => cairn_node::StoreConfig::default().block_ttl,
        };
        if !block_ttl.is_zero() && block_ttl < MIN_BLOCK_TTL {
            bail!(
                "--block-ttl must be 0 (never expire) or at least {}, not {}",
                humantime::format_duration(MIN_BLOCK_TTL),
                humantime::format_duration(block_ttl)
            );
        }
        let block_mi = match (self.block_mi, &file.block_mi) {
            (Some(d), _) => d,
            (None, Some(v)) => toml_duration(v, &in_file("block-mi"))?,
            (None, None) => cairn_node::NodeConfig::default().maintenance_interval,
        };
        if block_mi.is_zero() {
            bail!("--block-mi must be greater than zero");
        }
        if block_mi > MAX_BLOCK_MI {
            bail!(
                "--block-mi must be at most {} (expired datasets are removed only this often), \
                 not {}",
                humantime::format_duration(MAX_BLOCK_MI),
                humantime::format_duration(block_mi)
            );
        }
        let log_format = self
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("--log-format must be 'text' or 'json', not '{log_format}'");
        }
        // A flag or environment value was checked by clap; one from the file is checked here.
        let log_level = match (self.log_level, file.log_level) {
            (Some(l), _) => l,
            (None, Some(l)) => {
                parse_log_level(&l).map_err(|e| anyhow::anyhow!("{}: {e}", in_file("log-level")))?
            }
            (None, None) => DEFAULT_LOG_LEVEL.into(),
        };
        let listen_addrs = match (self.listen_addrs.is_empty(), &file.listen_addrs) {
            (false, _) => self.listen_addrs,
            (true, Some(l)) => multiaddrs(l, "listen-addrs")?,
            (true, None) => vec![cairn_node::net::DEFAULT_LISTEN_ADDR.parse()?],
        };
        let (bootstrap_nodes, bootstrap_sprs) =
            match (self.bootstrap_node.is_empty(), &file.bootstrap_node) {
                (false, _) => parse_bootstraps(&self.bootstrap_node)?,
                (true, Some(l)) => parse_bootstraps(l)?,
                (true, None) => (Vec::new(), Vec::new()),
            };
        let nat = match self.nat.or(file.nat) {
            Some(n) => parse_nat(&n)?,
            None => Nat::Auto,
        };
        let announce_interval = match (self.announce_interval, &file.announce_interval) {
            (Some(d), _) => d,
            (None, Some(v)) => toml_duration(v, &in_file("announce-interval"))?,
            (None, None) => cairn_node::DEFAULT_REANNOUNCE_INTERVAL,
        };
        if announce_interval.is_zero() {
            bail!("--announce-interval must be greater than zero");
        }
        if announce_interval > MAX_ANNOUNCE_INTERVAL {
            bail!(
                "--announce-interval must be at most {max}: DHT nodes drop a provider record \
                 {max} after it was announced, so with a longer interval the datasets cannot be \
                 found between two announces (not {})",
                humantime::format_duration(announce_interval),
                max = humantime::format_duration(MAX_ANNOUNCE_INTERVAL),
            );
        }
        let muxers = match (self.muxers, &file.muxers) {
            (Some(m), _) => m,
            (None, Some(m)) => parse_muxers(m).map_err(|e| anyhow::anyhow!("muxers: {e}"))?,
            (None, None) => Muxers::default(),
        };
        let max_peers = self
            .max_peers
            .or(file.max_peers)
            .unwrap_or(cairn_node::net::DEFAULT_MAX_PEERS);
        if max_peers == 0 {
            bail!("--max-peers must be at least 1");
        }
        let outbound_peers = self
            .outbound_peers
            .or(file.outbound_peers)
            .unwrap_or(cairn_node::net::DEFAULT_OUTBOUND_TARGET);
        if u32::try_from(outbound_peers).map_or(true, |o| o > max_peers) {
            bail!("--outbound-peers ({outbound_peers}) must not exceed --max-peers ({max_peers})");
        }
        let seed_mode = self.seed_mode.or(file.seed_mode).unwrap_or(false);
        // A seed's connections last a second each, and a network starting at once dials it all
        // at once: by default it takes as many as --max-peers allows.
        // Outside seed mode, inbound peers leave room for the outbound ones: --max-peers counts
        // both, and nothing closes an inbound connection to make room, so with more inbound
        // room than that the peers that dialled us could take every slot, and every dial
        // (providers, bootstrap nodes, persistent peers) would then be refused (found by
        // review: `--max-peers 30` kept the default 40 inbound).
        let inbound_room = max_peers.saturating_sub(outbound_peers as u32);
        let max_inbound_peers = match self.max_inbound_peers.or(file.max_inbound_peers) {
            Some(n) if !seed_mode && n > inbound_room => bail!(
                "--max-inbound-peers ({n}) plus --outbound-peers ({outbound_peers}) must not \
                 exceed --max-peers ({max_peers}): inbound peers could take every connection \
                 and no dial would succeed"
            ),
            Some(n) => n,
            None if seed_mode => max_peers,
            None => cairn_node::net::DEFAULT_MAX_INBOUND.min(inbound_room),
        };
        let persistent_peers = match (self.persistent_peer.is_empty(), &file.persistent_peer) {
            (false, _) => parse_persistent(&self.persistent_peer)?,
            (true, Some(l)) => parse_persistent(l)?,
            (true, None) => Vec::new(),
        };
        let private_peer_ids = match (self.private_peer_id.is_empty(), &file.private_peer_id) {
            (false, _) => parse_peer_ids(&self.private_peer_id)?,
            (true, Some(l)) => parse_peer_ids(l)?,
            (true, None) => Vec::new(),
        };
        let api_cors_origin = self
            .api_cors_origin
            .or(file.api_cors_origin)
            .map(|o| cairn_api::CorsOrigin::new(&o))
            .transpose()
            .context("--api-cors-origin")?;
        let api_bindaddr = match self.api_bindaddr.or(file.api_bindaddr) {
            Some(a) => a,
            None => DEFAULT_API_BINDADDR.parse()?,
        };
        let allowed_names = match (self.api_allowed_hosts.is_empty(), file.api_allowed_hosts) {
            (true, Some(l)) => l,
            _ => self.api_allowed_hosts,
        };
        let api_allowed_hosts = cairn_api::AllowedHosts::for_bind(api_bindaddr, &allowed_names)
            .context("--api-allowed-hosts")?;
        // Absolute, so the node's logs and `/debug/info` (`cairn info`) name the directory
        // wherever they are read from, not relative to where the node was started.
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let key = self
            .net_privkey
            .or(file.net_privkey)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        let key_file = if key.is_absolute() {
            key
        } else {
            data_dir.join(key)
        };
        Ok(Config {
            data_dir,
            listen_addrs,
            bootstrap_nodes,
            bootstrap_sprs,
            disc_port: self
                .disc_port
                .or(file.disc_port)
                .unwrap_or(DEFAULT_DISC_PORT),
            nat,
            announce_interval,
            max_peers,
            outbound_peers,
            max_inbound_peers,
            persistent_peers,
            private_peer_ids,
            seed_mode,
            perf_server: self.perf_server.or(file.perf_server).unwrap_or(true),
            addr_book_strict: self
                .addr_book_strict
                .or(file.addr_book_strict)
                .unwrap_or(false),
            key_file,
            muxers,
            api_bindaddr,
            api_port: self.api_port.or(file.api_port).unwrap_or(DEFAULT_API_PORT),
            api_cors_origin,
            api_allowed_hosts,
            storage_quota,
            block_ttl,
            block_mi,
            log_level,
            log_json: log_format == "json",
            metrics: self.metrics.or(file.metrics).unwrap_or(false),
            metrics_address: match self.metrics_address.or(file.metrics_address) {
                Some(a) => a,
                None => DEFAULT_METRICS_ADDRESS.parse()?,
            },
            metrics_port: self
                .metrics_port
                .or(file.metrics_port)
                .unwrap_or(DEFAULT_METRICS_PORT),
        })
    }
}

#[cfg(test)]
mod tests {
    /// A parse error names the line and column and says what is wrong, on one line.
    #[test]
    fn config_file_errors_point_at_their_place() {
        let path = Path::new("cairn.toml");
        for (text, want) in [
            (
                "api-port = \"abc\"\n",
                "invalid config file cairn.toml, line 1, column 12: invalid type: string \"abc\", expected u16",
            ),
            (
                "# été\nlog-level = \"info\"\nlisten-addrs = \"/ip4/1.2.3.4\"\n",
                "invalid config file cairn.toml, line 3, column 16: invalid type: string \"/ip4/1.2.3.4\", expected a sequence",
            ),
        ] {
            let e = toml::from_str::<FileConfig>(text).unwrap_err();
            assert_eq!(file_error(path, text, &e), want, "{text:?}");
        }
        let text = "api-port = 8080\nnot toml\n";
        let e = toml::from_str::<FileConfig>(text).unwrap_err();
        let said = file_error(path, text, &e);
        assert!(
            said.starts_with("invalid config file cairn.toml, line 2, column "),
            "{said}"
        );
        assert!(!said.contains('\n'), "{said}");
    }

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10gb"), Ok(10 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("10X").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
    }

    /// A maintenance interval that would keep expired data for more than a day, or an announce
    /// interval longer than provider records live on the DHT (the datasets could not be found
    /// between two announces), is refused, from a flag or the file, naming the option and its
    /// bound; the bounds themselves are accepted.
    #[test]
    fn intervals_beyond_their_bounds_are_refused() {
        let huge = Duration::from_secs(u64::MAX);
        let over = |max: Duration| max + Duration::from_secs(1);
        for (args, said) in [
            (
                StartArgs {
                    block_mi: Some(huge),
                    ..Default::default()
                },
                "--block-mi",
            ),
            (
                StartArgs {
                    block_mi: Some(over(MAX_BLOCK_MI)),
                    ..Default::default()
                },
                "--block-mi",
            ),
            (
                StartArgs {
                    announce_interval: Some(huge),
                    ..Default::default()
                },
                "--announce-interval",
            ),
            (
                StartArgs {
                    announce_interval: Some(over(MAX_ANNOUNCE_INTERVAL)),
                    ..Default::default()
                },
                "--announce-interval",
            ),
        ] {
            let err = format!("{:#}", args.resolve().unwrap_err());
            assert!(err.contains(said) && err.contains("at most 1day"), "{err}");
        }
        let at_bounds = StartArgs {
            block_mi: Some(MAX_BLOCK_MI),
            announce_interval: Some(MAX_ANNOUNCE_INTERVAL),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (at_bounds.block_mi, at_bounds.announce_interval),
            (MAX_BLOCK_MI, MAX_ANNOUNCE_INTERVAL)
        );
        // The provider records this node's announces renew live that long on other nodes.
        assert_eq!(
            MAX_ANNOUNCE_INTERVAL,
            cairn_node::discovery::providers::PROVIDER_TTL
        );
        // From the command line, as the review's example, and from the file.
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cmd {
            #[command(flatten)]
            args: StartArgs,
        }
        let args = Cmd::try_parse_from(["cairn", "--block-mi", "18446744073709551615"])
            .unwrap()
            .args;
        assert!(format!("{:#}", args.resolve().unwrap_err()).contains("--block-mi"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        for (text, key) in [
            ("block-mi = 9223372036854775807\n", "block-mi"),
            ("announce-interval = \"100000d\"\n", "announce-interval"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = StartArgs {
                config_file: Some(f.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(key) && err.contains("at most"), "{err}");
        }
    }

    /// The store counts a TTL in whole seconds and takes 0 as "never expire": a TTL under a
    /// second (`500ms`) would silently keep data for ever, so it is refused, from a flag or the
    /// file; `0` (never) and `1s` are accepted.
    #[test]
    fn a_ttl_under_a_second_is_refused() {
        let ttl = |t: Duration| {
            StartArgs {
                block_ttl: Some(t),
                ..Default::default()
            }
            .resolve()
        };
        for t in [Duration::from_millis(500), Duration::from_nanos(1)] {
            let err = format!("{:#}", ttl(t).unwrap_err());
            assert!(
                err.contains("--block-ttl") && err.contains("at least 1s"),
                "{err}"
            );
        }
        assert_eq!(ttl(Duration::ZERO).unwrap().block_ttl, Duration::ZERO);
        assert_eq!(
            ttl(Duration::from_secs(1)).unwrap().block_ttl,
            Duration::from_secs(1)
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "block-ttl = \"300ms\"\n").unwrap();
        let err = StartArgs {
            config_file: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("at least 1s"), "{err:#}");
    }

    #[test]
    fn log_levels_are_levels_or_directives() {
        for good in [
            "info",
            "DEBUG",
            " warn ",
            "off",
            "info,cairn_store=debug",
            "cairn_store=debug",
            "warn,cairn_node::fetch=trace,",
        ] {
            assert_eq!(parse_log_level(good), Ok(good.to_owned()), "{good}");
        }
        for (bad, named) in [
            ("verbose", "'verbose' is not a log level"),
            ("info,verbose", "'verbose' is not a log level"),
            ("cairn_store", "'cairn_store' is not a log level"),
            ("info,nonsense=??", "not a log filter"),
            ("", "empty"),
            (" , ", "empty"),
        ] {
            let err = parse_log_level(bad).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
        let err = parse_log_level("verbose").unwrap_err();
        assert!(
            err.contains("error, warn, info, debug, trace, off"),
            "{err}"
        );
    }

    /// The flag (and so `CAIRN_LOG_LEVEL`, which clap reads through it) is checked by clap; the
    /// file's key by `resolve`, naming the file.
    #[test]
    fn log_level_is_checked_from_every_source() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cmd {
            #[command(flatten)]
            args: StartArgs,
        }
        let parse =
            |args: &[&str]| Cmd::try_parse_from([&["cairn"], args].concat()).map(|c| c.args);
        assert!(parse(&["--log-level", "verbose"]).is_err());
        let ok = parse(&["--log-level", "info,cairn_store=debug"]).unwrap();
        assert_eq!(ok.log_level.as_deref(), Some("info,cairn_store=debug"));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "log-level = \"verbose\"\n").unwrap();
        let from_file = |flag: Option<&str>| {
            StartArgs {
                config_file: Some(f.clone()),
                log_level: flag.map(str::to_owned),
                ..Default::default()
            }
            .resolve()
        };
        let text = format!("{:#}", from_file(None).unwrap_err());
        assert!(
            text.contains("log-level") && text.contains(&f.display().to_string()),
            "{text}"
        );
        assert_eq!(from_file(Some("debug")).unwrap().log_level, "debug");
        std::fs::write(&f, "log-level = \"cairn_store=debug\"\n").unwrap();
        assert_eq!(from_file(None).unwrap().log_level, "cairn_store=debug");
    }

    #[test]
    fn network_options_resolve_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen-addrs = [\"/ip4/127.0.0.1/tcp/9\"]\nmuxers = \"mplex\"\nnet-privkey = \"k\"\n",
        )
        .unwrap();
        let c = StartArgs {
            config_file: Some(f.clone()),
            data_dir: Some(dir.path().join("d")),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.listen_addrs[0].to_string(), "/ip4/127.0.0.1/tcp/9");
        assert_eq!(c.muxers, Muxers::Mplex);
        assert_eq!(c.key_file, dir.path().join("d").join("k"));
        // A relative data directory is made absolute.
        let c = StartArgs {
            data_dir: Some(PathBuf::from("./p1")),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.data_dir,
            std::env::current_dir().unwrap().join("p1"),
            "{}",
            c.data_dir.display()
        );
        assert_eq!(c.max_peers, cairn_node::net::DEFAULT_MAX_PEERS);
        // Defaults.
        let c = StartArgs::default().resolve().unwrap();
        assert_eq!(c.listen_addrs[0].to_string(), "/ip4/0.0.0.0/tcp/0");
        assert_eq!(c.muxers, Muxers::YamuxThenMplex);
        // A bootstrap address without /p2p/ is refused, naming the option.
        let err = StartArgs {
            bootstrap_node: vec!["/ip4/127.0.0.1/tcp/1".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("--bootstrap-node"), "{err:#}");
        std::fs::write(&f, "listen-addrs = [\"not an addr\"]\n").unwrap();
        let err = StartArgs {
            config_file: Some(f.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("listen-addrs"), "{err:#}");
        assert!(parse_muxers("quic").is_err());
        assert_eq!(parse_muxers("yamux"), Ok(Muxers::Yamux));
        let err = StartArgs {
            max_peers: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("--max-peers"), "{err:#}");
    }

    /// `--nat extip:` takes an address peers can dial, and refuses the unspecified, multicast
    /// and broadcast ones (found by review: they went into the DHT records, and the node's
    /// datasets could not be reached through the DHT).
    #[test]
    fn nat_extip_must_be_dialable() {
        assert!(matches!(parse_nat("any"), Ok(Nat::Auto)));
        assert!(matches!(parse_nat("none"), Ok(Nat::Auto)));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for good in ["203.0.113.5", "2001:db8::7", "10.0.0.2"] {
            match parse_nat(&format!("extip:{good}")) {
                Ok(Nat::ExtIp(got)) => assert_eq!(got, ip(good)),
                other => panic!("{good}: {other:?}"),
            }
        }
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            let err = parse_nat(&format!("extip:{bad}")).unwrap_err();
            assert!(
                format!("{err:#}").contains("not an address peers can dial"),
                "{bad}: {err:#}"
            );
        }
        assert!(parse_nat("extip:host.example").is_err());
        assert!(parse_nat("upnp").is_err());
    }

    #[test]
    fn peer_manager_options_resolve_and_bad_values_are_named() {
        let c = StartArgs::default().resolve().unwrap();
        assert_eq!(c.outbound_peers, cairn_node::net::DEFAULT_OUTBOUND_TARGET);
        assert_eq!(c.max_inbound_peers, cairn_node::net::DEFAULT_MAX_INBOUND);
        assert!(!c.seed_mode && !c.addr_book_strict);
        assert!(c.perf_server, "perf self-tests are answered by default");
        assert!(c.persistent_peers.is_empty() && c.private_peer_ids.is_empty());

        let id = "16Uiu2HAmFMz54faMd3PJNAF8JUQtLeTA6e48itVw8d6QsQpdRGkh";
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            format!(
                "outbound-peers = 4\nmax-inbound-peers = 8\nseed-mode = true\nperf-server = false\n\
                 addr-book-strict = true\nprivate-peer-id = [\"{id}\"]\n\
                 persistent-peer = [\"/ip4/127.0.0.1/tcp/9/p2p/{id}\"]\n"
            ),
        )
        .unwrap();
        let c = StartArgs {
            config_file: Some(f.clone()),
            outbound_peers: Some(5),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.outbound_peers, c.max_inbound_peers), (5, 8));
        assert!(c.seed_mode && c.addr_book_strict);
        assert!(!c.perf_server, "perf-server = false in the file");
        assert_eq!(c.private_peer_ids[0].to_string(), id);
        assert_eq!(
            c.persistent_peers[0].to_string(),
            format!("/ip4/127.0.0.1/tcp/9/p2p/{id}")
        );

        // Inbound peers leave room for the outbound ones (review: with --max-peers 30 they
        // could take all 30 slots, and every dial failed).
        let small = StartArgs {
            max_peers: Some(30),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (
                small.max_peers,
                small.outbound_peers,
                small.max_inbound_peers
            ),
            (30, 10, 20)
        );

        for (args, option) in [
            (
                StartArgs {
                    persistent_peer: vec!["/ip4/127.0.0.1/tcp/1".into()],
                    ..Default::default()
                },
                "--persistent-peer",
            ),
            (
                StartArgs {
                    private_peer_id: vec!["nobody".into()],
                    ..Default::default()
                },
                "--private-peer-id",
            ),
            (
                StartArgs {
                    outbound_peers: Some(20),
                    max_peers: Some(10),
                    ..Default::default()
                },
                "--outbound-peers",
            ),
            (
                StartArgs {
                    storage_quota: Some(0),
                    ..Default::default()
                },
                "--storage-quota must be at least 64KiB",
            ),
            (
                StartArgs {
                    max_peers: Some(30),
                    max_inbound_peers: Some(25),
                    ..Default::default()
                },
                "--max-inbound-peers (25) plus --outbound-peers (10) must not exceed --max-peers (30)",
            ),
        ] {
            let err = args.resolve().unwrap_err();
            assert!(format!("{err:#}").contains(option), "{err:#}");
        }
    }

    #[test]
    fn file_is_below_flags_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "api-port = 9000\nstorage-quota = \"1GiB\"\nblock-ttl = 60\n",
        )
        .unwrap();
        let args = StartArgs {
            config_file: Some(f.clone()),
            api_port: Some(9100),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(
            (c.api_port, c.storage_quota, c.block_ttl),
            (9100, 1 << 30, Duration::from_secs(60))
        );
        // The CORS origin: flag over file; none by default; an impossible value is refused.
        std::fs::write(&f, "api-cors-origin = \"https://file.example\"\n").unwrap();
        let from_file = |flag: Option<&str>| {
            StartArgs {
                config_file: Some(f.clone()),
                api_cors_origin: flag.map(str::to_owned),
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(
            from_file(None).unwrap().api_cors_origin,
            Some(cairn_api::CorsOrigin::new("https://file.example").unwrap())
        );
        assert_eq!(
            from_file(Some("*")).unwrap().api_cors_origin,
            Some(cairn_api::CorsOrigin::new("*").unwrap())
        );
        let err = from_file(Some("a b")).unwrap_err();
        assert!(format!("{err:#}").contains("--api-cors-origin"), "{err:#}");
        assert_eq!(
            StartArgs::default().resolve().unwrap().api_cors_origin,
            None
        );
        // Allowed host names: flag over file; by default none on loopback (the default
        // address) and on all addresses, any on one other address; a name that cannot be one
        // is refused.
        use cairn_api::AllowedHosts;
        std::fs::write(&f, "api-allowed-hosts = [\"file.example\"]\n").unwrap();
        let hosts = |flag: &[&str], bind: Option<&str>| {
            StartArgs {
                config_file: Some(f.clone()),
                api_allowed_hosts: flag.iter().map(|s| s.to_string()).collect(),
                api_bindaddr: bind.map(|b| b.parse().unwrap()),
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(
            hosts(&[], None).unwrap().api_allowed_hosts,
            AllowedHosts::Local(vec!["file.example".into()])
        );
        assert_eq!(
            hosts(&["Flag.Example"], Some("0.0.0.0"))
                .unwrap()
                .api_allowed_hosts,
            AllowedHosts::Local(vec!["flag.example".into()])
        );
        assert_eq!(
            hosts(&["*"], None).unwrap().api_allowed_hosts,
            AllowedHosts::Any
        );
        let err = hosts(&["host:80"], None).unwrap_err();
        assert!(
            format!("{err:#}").contains("--api-allowed-hosts"),
            "{err:#}"
        );
        let default = |bind: Option<&str>| {
            StartArgs {
                api_bindaddr: bind.map(|b| b.parse().unwrap()),
                ..Default::default()
            }
            .resolve()
            .unwrap()
            .api_allowed_hosts
        };
        assert_eq!(default(None), AllowedHosts::default());
        assert_eq!(default(Some("::1")), AllowedHosts::default());
        assert_eq!(default(Some("0.0.0.0")), AllowedHosts::default());
        assert_eq!(default(Some("192.168.1.2")), AllowedHosts::Any);
        // A bad value in the file says which file it is in.
        std::fs::write(&f, "storage-quota = \"lots\"\n").unwrap();
        let err = StartArgs {
            config_file: Some(f.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("storage-quota") && text.contains(&f.display().to_string()),
            "{text}"
        );
        std::fs::write(&f, "api-prot = 1\n").unwrap();
        let err = StartArgs {
            config_file: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("api-prot"), "{err:#}");
    }

    #[test]
    fn metrics_options_resolve_flag_over_file_over_default() {
        let c = StartArgs::default().resolve().unwrap();
        assert_eq!(
            (c.metrics, c.metrics_address.to_string(), c.metrics_port),
            (false, "127.0.0.1".into(), 8008)
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "metrics = true\nmetrics-address = \"0.0.0.0\"\nmetrics-port = 9100\n",
        )
        .unwrap();
        let c = StartArgs {
            config_file: Some(f.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (c.metrics, c.metrics_address.to_string(), c.metrics_port),
            (true, "0.0.0.0".into(), 9100)
        );
        // A flag (or environment variable, which clap merges into it) wins, `false` included.
        let c = StartArgs {
            config_file: Some(f),
            metrics: Some(false),
            metrics_port: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.metrics, c.metrics_port), (false, 0));
    }

    /// `--metrics` alone turns metrics on without taking the next argument; `--metrics=false`
    /// and the environment's boolish words work too.
    #[test]
    fn metrics_flag_parses() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cmd {
            #[command(flatten)]
            args: StartArgs,
        }
        let parse =
            |args: &[&str]| Cmd::try_parse_from([&["cairn"], args].concat()).map(|c| c.args);
        let a = parse(&["--metrics", "--metrics-port", "0"]).unwrap();
        assert_eq!((a.metrics, a.metrics_port), (Some(true), Some(0)));
        assert_eq!(parse(&["--metrics=false"]).unwrap().metrics, Some(false));
        assert_eq!(parse(&["--metrics=yes"]).unwrap().metrics, Some(true));
        assert_eq!(parse(&[]).unwrap().metrics, None);
        assert!(parse(&["--metrics=maybe"]).is_err());
    }
}
