//! `cairn`: run a storage node, or talk to one.
//!
//! `cairn start` composes the node (store, node, REST API), runs until SIGINT/SIGTERM and shuts
//! down in order: stop accepting requests and finish those in flight (bounded by
//! [`SHUTDOWN_GRACE`]) while the network and the block exchange still run, so a network stream
//! in flight completes too; then stop the workers, the engine and the network, and close the
//! store (syncing its open segment). The whole shutdown is bounded by [`SHUTDOWN_LIMIT`] (past
//! it the node logs so and exits 1; [`SHUTDOWN_LIMIT_ENV`] shortens it for a test), and a
//! second SIGINT/SIGTERM during it exits at once.
//! The other commands are clients of a running node's REST API (`commands.rs`, `client.rs`),
//! except `completions`, which prints a shell completion script.
//!
//! Every failure ends in one line on stderr, `cairn: <what failed>: <why>`, and an exit code
//! from `exit.rs` (listed by `cairn --help`).

mod announce;
mod api;
mod arenas;
mod client;
mod commands;
mod config;
mod exit;
mod output;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use cairn_node::{Node, NodeConfig, Store, StoreConfig};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long shutdown waits for requests in flight before giving up on them (an upload cut off
/// here is rolled back, never half-stored).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The longest a whole shutdown may take, requests in flight ([`SHUTDOWN_GRACE`]) and the
/// metrics scrapes (waited for at the same time) included: what is left of it once they are
/// done is for the workers, the block-exchange engine (which writes the verified blocks it
/// holds) and the network to stop. Past it the node logs what it cut short and exits (1).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(45);

/// The environment variable that shortens [`SHUTDOWN_LIMIT`] to its value in whole seconds,
/// for the end-to-end test of a shutdown that cannot finish (which should not take 45 s). It can
/// only shorten the limit (a longer or unparsable value is ignored), and the node logs a
/// warning when it does: an operator has no use for it, so it is not an option.
const SHUTDOWN_LIMIT_ENV: &str = "CAIRN_TEST_SHUTDOWN_LIMIT_SECS";

/// How long the async runtime waits, once a command is done, for blocking work still running
/// (a read of stdin no one waits for any more, a file read): a command must not hang there.
const RUNTIME_DRAIN: Duration = Duration::from_secs(1);

/// A shutdown that waited this long for requests in flight says so once they finished (a
/// shorter wait is not worth a line).
const REPORT_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The binary's name, in messages and completion scripts.
const BIN_NAME: &str = "cairn";

#[derive(Debug, Parser)]
#[command(
    name = BIN_NAME,
    version,
    about = "A peer-to-peer storage node speaking the Codex protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (embedded store; no server needed).
    Start(Box<config::StartArgs>),
    #[command(flatten)]
    Client(commands::ClientCommand),
    /// Print a shell completion script.
    ///
    /// For example: `cairn completions bash > ~/.local/share/bash-completion/completions/cairn`,
    /// `cairn completions zsh > ~/.zfunc/_cairn` (with `~/.zfunc` in `fpath`),
    /// `cairn completions fish > ~/.config/fish/completions/cairn.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The command-line interface, with the exit codes in its help.
fn cli_command() -> clap::Command {
    Cli::command().after_help(exit::help())
}

fn main() -> ExitCode {
    let matches = match cli_command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            // clap names the option; a value set by the environment is easy to miss.
            let _ = e.print();
            if let Some(note) = env_note(&e) {
                eprintln!("{note}");
            }
            std::process::exit(e.exit_code());
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if matches!(cli.command, Command::Start(_)) {
        // Before any thread starts: a long-running node limits glibc's malloc arenas.
        arenas::limit();
    }
    match run(cli) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        // The reader of our output went away (`cairn download CID | head -c 10`): stop quietly,
        // as a Unix tool killed by SIGPIPE does.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            eprintln!("{BIN_NAME}: {}", output::error_chain(&e));
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// For a bad option value that came from the environment, a note naming the variable:
/// clap's error names only the option (`--storage-quota`), not `CAIRN_STORAGE_QUOTA`.
fn env_note(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => return None,
    };
    let command = cli_command();
    let mut commands = vec![&command];
    while let Some(c) = commands.pop() {
        for a in c.get_arguments() {
            if a.get_long() == Some(long)
                && let Some(var) = a.get_env()
                && std::env::var_os(var).is_some_and(|v| v.to_string_lossy() == value)
            {
                return Some(format!(
                    "note: the value '{value}' comes from the environment variable {}",
                    var.to_string_lossy()
                ));
            }
        }
        commands.extend(c.get_subcommands());
    }
    None
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    // Blocking work still running when the command is done is not waited for past
    // `RUNTIME_DRAIN` (dropping a runtime would wait for it without limit).
    let run_on = |f: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>| {
        let rt = runtime()?;
        let result = rt.block_on(f);
        rt.shutdown_timeout(RUNTIME_DRAIN);
        result
    };
    match cli.command {
        Command::Start(args) => {
            let cfg = resolve_start(*args)?;
            run_on(Box::pin(start(cfg)))
        }
        Command::Client(command) => run_on(Box::pin(command.run())),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), BIN_NAME, &mut script);
            output::print(&String::from_utf8_lossy(&script))
        }
    }
}

/// Resolves `cairn start`'s options. Whatever fails here is a mistake in what the operator
/// gave (a bad value from a flag, the environment or the config file; a config file that cannot
/// be read or parsed), so it is a usage error, as clap's own are; failures once the node starts
/// (a port in use, a store that cannot be opened) are not.
fn resolve_start(args: config::StartArgs) -> anyhow::Result<config::Config> {
    args.resolve()
        .map_err(|e| exit::Failure::new(exit::USAGE, output::error_chain(&e)).into())
}

/// The environment variable that turns colours off when set to anything but the empty string
/// (<https://no-color.org>).
const NO_COLOR: &str = "NO_COLOR";

/// Whether log lines get ANSI colours: only when stderr is a terminal (not a file or a pipe,
/// where the escape codes would be noise) and `NO_COLOR` is unset or empty.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Installs the log subscriber; returns the setter `POST /debug/chronicles/loglevel` uses to
/// change its filter while the node runs.
fn init_logging(cfg: &config::Config) -> anyhow::Result<cairn_api::LogLevelSetter> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("invalid --log-level '{}'", cfg.log_level))?;
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os(NO_COLOR).as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let setter = if cfg.log_json {
        let builder = builder.json().with_filter_reloading();
        let setter = level_setter(builder.reload_handle());
        builder.init();
        setter
    } else {
        let builder = builder.with_filter_reloading();
        let setter = level_setter(builder.reload_handle());
        builder.init();
        setter
    };
    Ok(setter)
}

/// A log-level setter over a subscriber's reload handle: checks the directives as
/// `--log-level` is checked, then swaps the filter (directives that are refused leave the
/// filter as it was).
fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> cairn_api::LogLevelSetter {
    std::sync::Arc::new(move |d: &str| {
        config::parse_log_level(d)?;
        let f = tracing_subscriber::EnvFilter::try_new(d).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

async fn start(cfg: config::Config) -> anyhow::Result<()> {
    // Before anything announces the node: a script that sends SIGTERM as soon as it reads the
    // REST line must stop the node cleanly, not kill it with the default disposition.
    let mut signals = Signals::register()?;
    let set_log_level = init_logging(&cfg)?;
    let limit = shutdown_limit(std::env::var_os(SHUTDOWN_LIMIT_ENV).as_deref());
    if limit < SHUTDOWN_LIMIT {
        warn!(
            ?limit,
            "{SHUTDOWN_LIMIT_ENV} shortens the shutdown limit (for tests)"
        );
    }
    let store_cfg = StoreConfig {
        quota_bytes: cfg.storage_quota,
        block_ttl: cfg.block_ttl,
        ..StoreConfig::default()
    };
    let repo = cfg.data_dir.join("repo");
    let store = {
        let at = repo.clone();
        tokio::task::spawn_blocking(move || Store::open(&at, store_cfg))
            .await?
            .with_context(|| format!("cannot open the block store in {}", repo.display()))?
    };
    let mut registry = cairn_node::metrics::Registry::default();
    let metrics = cairn_node::metrics::Metrics::register(&mut registry, store.clone());
    // Stops the node: network, DHT, block exchange, background downloads, maintenance.
    let cancel = CancellationToken::new();
    // Stops the REST and metrics servers, which stop before the node (see the shutdown below).
    let api_stop = CancellationToken::new();
    let key = {
        let path = cfg.key_file.clone();
        tokio::task::spawn_blocking(move || cairn_node::net::load_or_create_key(&path)).await??
    };
    let net_config = cairn_node::net::NetConfig {
        listen: cfg.listen_addrs.clone(),
        bootstrap: cfg.bootstrap_nodes.clone(),
        muxers: cfg.muxers,
        max_peers: cfg.max_peers,
        outbound_target: cfg.outbound_peers,
        max_inbound: cfg.max_inbound_peers,
        persistent_peers: cfg.persistent_peers.clone(),
        private_peer_ids: cfg.private_peer_ids.clone(),
        seed_mode: cfg.seed_mode,
        perf_server: cfg.perf_server,
        routability: if cfg.addr_book_strict {
            cairn_node::net::Routability::Strict
        } else {
            cairn_node::net::Routability::AllowLocal
        },
        // The address book lives beside the store; peers reached before are redialled at start.
        book_path: Some(cfg.data_dir.join(PEERS_FILE)),
        metrics: metrics.net.clone(),
        ..cairn_node::net::NetConfig::default()
    };
    let (net, events, net_task) = cairn_node::net::start(key.clone(), net_config, cancel.clone())
        .await
        .context("cannot start the network (--listen-addrs)")?;
    info!(peer_id = %net.local_peer_id(), "libp2p identity");
    let listening = net.listen_addrs().await.context("the network stopped")?;
    let dht = start_dht(&cfg, key, &listening, metrics.discovery, cancel.clone()).await?;
    info!(spr = %dht.local_spr().to_uri(), addr = %dht.dht_addr(), "discovery DHT started");
    let node = Node::with_network(
        store,
        NodeConfig {
            maintenance_interval: cfg.block_mi,
            data_dir: Some(cfg.data_dir.clone()),
            metrics: metrics.node,
            ..NodeConfig::default()
        },
        net,
        events,
        cancel.clone(),
    )
    .with_discovery(dht, cfg.announce_interval, cancel.clone());
    let addr = SocketAddr::new(cfg.api_bindaddr, cfg.api_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--api-bindaddr/--api-port)"))?;
    let local = listener.local_addr()?;
    let metrics_listener = if cfg.metrics {
        let addr = SocketAddr::new(cfg.metrics_address, cfg.metrics_port);
        let bound = tokio::net::TcpListener::bind(addr).await;
        Some(bound.with_context(|| {
            format!("cannot listen on {addr} (--metrics-address/--metrics-port)")
        })?)
    } else {
        None
    };
    info!(data_dir = %cfg.data_dir.display(), quota = cfg.storage_quota, "cairn node started");
    // A stable line on stdout for scripts and tests.
    say(&format!(
        "cairn: REST API listening on http://{local}{}",
        cairn_api::API_BASE
    ));
    // After the REST line, which scripts read first.
    let metrics_server = match metrics_listener {
        Some(l) => {
            say(&format!(
                "cairn: metrics listening on http://{}{}",
                l.local_addr()?,
                cairn_api::METRICS_PATH
            ));
            Some(tokio::spawn(cairn_api::serve_metrics(
                l,
                registry,
                api_stop.clone(),
            )))
        }
        None => {
            drop(registry); // its store collector holds a store handle
            None
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    {
        let node = node.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move { node.run_maintenance(cancel).await });
    }
    {
        // Background downloads the node was running when it last stopped go on (each from the
        // blocks it already has).
        let node = node.clone();
        tasks.spawn(async move {
            node.resume_downloads().await;
        });
    }
    let options = cairn_api::ApiOptions {
        log_level: Some(set_log_level),
        cors_origin: cfg.api_cors_origin.clone(),
        allowed_hosts: cfg.api_allowed_hosts.clone(),
        ..cairn_api::ApiOptions::default()
    };
    let api = tokio::spawn(cairn_api::serve(
        listener,
        node.clone(),
        options,
        api_stop.clone(),
    ));

    signals.next().await;
    info!(
        "shutting down: new requests are refused, those in flight have up to {} s to finish \
         (a second SIGINT or SIGTERM stops at once)",
        SHUTDOWN_GRACE.as_secs()
    );
    let graceful = async move {
        let stopping = std::time::Instant::now();
        // The servers stop first: requests in flight finish with the node still whole (a
        // network stream needs the block exchange and the peers it fetches from). Then
        // everything else.
        api_stop.cancel();
        // A server's failure is returned only after the node has stopped in order (the engine
        // writes the verified blocks it holds). The REST and metrics servers finish at the
        // same time, within one grace period.
        let metrics_done = async move {
            match metrics_server {
                Some(m) => Some(within_grace(m).await),
                None => None,
            }
        };
        let (api_done, metrics_done) = tokio::join!(within_grace(api), metrics_done);
        let mut served: anyhow::Result<()> = Ok(());
        match api_done {
            Ok(joined) => {
                served = joined.map_err(anyhow::Error::from).and_then(|r| Ok(r?));
                if stopping.elapsed() >= REPORT_SHUTDOWN_WAIT {
                    info!(waited = ?stopping.elapsed(), "the requests in flight finished");
                }
            }
            Err(_) => warn!("requests still running after the grace period were cut off"),
        }
        match metrics_done {
            Some(Ok(joined)) => {
                let r = joined.map_err(anyhow::Error::from).and_then(|r| Ok(r?));
                served = served.and(r);
            }
            Some(Err(_)) => {
                warn!("metrics scrapes still running after the grace period were cut off");
            }
            None => {}
        }
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        // The engine writes the verified blocks it still holds before it stops.
        node.stopped().await;
        let _ = net_task.await;
        drop(node);
        served
    };
    tokio::select! {
        done = tokio::time::timeout(limit, graceful) => match done {
            Ok(served) => {
                info!("stopped");
                served
            }
            Err(_) => {
                warn!(
                    "the shutdown did not finish within {} s: stopping anyway",
                    limit.as_secs()
                );
                anyhow::bail!(
                    "the shutdown did not finish within {} s; stopped without waiting longer",
                    limit.as_secs()
                )
            }
        },
        () = signals.next() => {
            warn!(
                "a second signal: stopping at once, without waiting for the requests in flight, \
                 the network or the store"
            );
            // At once: no destructor, no wait for blocking work (the store is crash-safe).
            std::process::exit(i32::from(exit::FAILURE));
        }
    }
}

/// The shutdown limit: [`SHUTDOWN_LIMIT`], or the shorter one `env` (the value of
/// [`SHUTDOWN_LIMIT_ENV`]) gives in whole seconds.
fn shutdown_limit(env: Option<&std::ffi::OsStr>) -> Duration {
    env.and_then(std::ffi::OsStr::to_str)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .filter(|limit| *limit < SHUTDOWN_LIMIT)
        .map_or(SHUTDOWN_LIMIT, |limit| limit.max(MIN_TEST_SHUTDOWN_LIMIT))
}

/// Waits for a server task for [`SHUTDOWN_GRACE`]; past it the task is aborted, and its
/// requests with it, before the node stops. Timing out alone dropped the handle, which
/// detaches the task: "cut off" requests went on while the node stopped, and an upload could
/// hand its client a CID after the log said it was cut off (found by review).
async fn within_grace<T>(
    mut task: tokio::task::JoinHandle<T>,
) -> Result<Result<T, tokio::task::JoinError>, tokio::time::error::Elapsed> {
    let done = tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await;
    if done.is_err() {
        task.abort();
        let _ = task.await;
    }
    done
}

/// The shortest limit [`SHUTDOWN_LIMIT_ENV`] can set: zero would stop a node without closing
/// its store even when nothing hangs (review).
const MIN_TEST_SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// The address book's file, in the data directory.
const PEERS_FILE: &str = "peers.json";

/// Starts the discovery DHT on `--disc-port`, announcing the IP chosen by `--nat` in the DHT
/// record and the libp2p listen addresses (with that IP when `extip:` is given) in the
/// provider record (`announce.rs`).
async fn start_dht(
    cfg: &config::Config,
    key: cairn_node::net::Keypair,
    listening: &[cairn_node::net::Multiaddr],
    metrics: cairn_node::discovery::Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<cairn_node::discovery::Discovery> {
    let announce_ip = announce::dht_ip(cfg.nat, listening);
    let provider_addrs = announce::provider_addrs(cfg.nat, listening);
    if let config::Nat::ExtIp(ext @ std::net::IpAddr::V6(_)) = cfg.nat {
        warn!(
            %ext,
            dht = %announce_ip,
            "--nat extip: with an IPv6 address: the provider record carries it, but the DHT \
             runs over IPv4 only, so the DHT record carries this node's IPv4 address"
        );
    }
    let mut dcfg = cairn_node::discovery::DiscoveryConfig::new(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        cfg.disc_port,
    ));
    dcfg.announce_ip = Some(announce_ip);
    dcfg.provider_addrs = provider_addrs;
    dcfg.bootstrap = cfg.bootstrap_sprs.clone();
    dcfg.metrics = metrics;
    cairn_node::discovery::Discovery::start(key, dcfg, cancel)
        .await
        .with_context(|| {
            format!(
                "cannot start the discovery DHT on UDP port {} (--disc-port)",
                cfg.disc_port
            )
        })
}

/// SIGINT and SIGTERM, registered for when made (not when first waited for): a node stopped
/// as soon as it prints its REST line stops cleanly, and a second signal during the shutdown
/// is heard.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Ends at the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Writes a line for scripts to stdout. A node must not stop (`println!` panics) because
/// whatever read its stdout has gone: a write error is ignored.
fn say(line: &str) {
    let _ = output::print(&format!("{line}\n"));
}

#[cfg(test)]
mod tests {
    /// A write to a closed pipe, whatever context is around it, ends the process quietly;
    /// other I/O errors do not.
    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        use anyhow::Context as _;
        let pipe: anyhow::Result<()> = Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("cannot write to stdout");
        assert!(super::is_broken_pipe(&pipe.unwrap_err()));
        let other: anyhow::Result<()> =
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)).context("cannot read");
        assert!(!super::is_broken_pipe(&other.unwrap_err()));
    }

    use super::*;

    /// Bad option values and config files are usage errors, their message kept.
    #[test]
    fn start_options_that_do_not_resolve_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "api-prot = 1\n").unwrap();
        for (args, said) in [
            (
                config::StartArgs {
                    bootstrap_node: vec!["garbage".into()],
                    ..Default::default()
                },
                "--bootstrap-node garbage",
            ),
            (
                config::StartArgs {
                    storage_quota: Some(1024),
                    ..Default::default()
                },
                "--storage-quota must be at least 64KiB",
            ),
            (
                config::StartArgs {
                    config_file: Some(typo),
                    ..Default::default()
                },
                "api-prot",
            ),
            (
                config::StartArgs {
                    config_file: Some(dir.path().join("missing.toml")),
                    ..Default::default()
                },
                "cannot read config file",
            ),
            (
                config::StartArgs {
                    config_file: Some(dir.path().to_owned()),
                    ..Default::default()
                },
                "cannot read config file",
            ),
        ] {
            let err = resolve_start(args).unwrap_err();
            assert_eq!(exit::code_of(&err), exit::USAGE, "{err:#}");
            assert!(output::error_chain(&err).contains(said), "{err:#}");
        }
        assert!(resolve_start(config::StartArgs::default()).is_ok());
    }

    /// The test variable can shorten the shutdown limit, never lengthen it.
    #[test]
    fn the_shutdown_limit_can_only_be_shortened() {
        use std::ffi::OsStr;
        let limit = |v: Option<&str>| shutdown_limit(v.map(OsStr::new));
        assert_eq!(limit(None), SHUTDOWN_LIMIT);
        assert_eq!(limit(Some("2")), Duration::from_secs(2));
        assert_eq!(
            limit(Some("0")),
            MIN_TEST_SHUTDOWN_LIMIT,
            "never below the floor"
        );
        for ignored in ["45", "46", "99999999999", "-1", "2s", "", "x"] {
            assert_eq!(limit(Some(ignored)), SHUTDOWN_LIMIT, "{ignored:?}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }

    /// Clap's own consistency checks of the whole command line (argument ids named by
    /// `conflicts_with`, duplicate flags, …), which otherwise only fire when a command is used.
    #[test]
    fn command_line_is_consistent() {
        cli_command().debug_assert();
    }
}
