//! What the end-to-end test files share: a `cairn start` child process on loopback
//! ([`NodeProc`]), an HTTP client, test data, and running the CLI.
//!
//! Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cairn");
/// Longest any wait in a test may take (a node starting, an answer, a condition polled).
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// Stdout lines of a node queued for the test (it prints one).
const STDOUT_QUEUE: usize = 16;

/// A `cairn start` child process on loopback (API, libp2p and DHT on free ports); killed
/// when dropped.
pub(crate) struct NodeProc {
    child: Child,
    /// The node's REST endpoint, as `--api` takes it.
    pub(crate) api: String,
    /// The node's stdout lines after the first (the REST line), as they come.
    lines: mpsc::Receiver<String>,
}

impl NodeProc {
    /// The node's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn start(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> NodeProc {
        NodeProc::start_with(data, extra, envs, "warn", Stdio::inherit())
    }

    /// A node logging at `level` into `log` (a file, as an operator redirects stderr).
    pub(crate) fn start_logging(data: &Path, level: &str, log: &Path) -> NodeProc {
        NodeProc::start_logging_with(data, level, log, &[])
    }

    /// [`NodeProc::start_logging`] with environment variables `envs` set.
    pub(crate) fn start_logging_with(
        data: &Path,
        level: &str,
        log: &Path,
        envs: &[(&str, &str)],
    ) -> NodeProc {
        let file = std::fs::File::create(log).expect("log file");
        NodeProc::start_with(data, &[], envs, level, Stdio::from(file))
    }

    fn start_with(
        data: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
        level: &str,
        stderr: Stdio,
    ) -> NodeProc {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "start",
            "--api-port",
            "0",
            "--log-level",
            level,
            "--listen-addrs",
            "/ip4/127.0.0.1/tcp/0",
            "--disc-port",
            "0",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        // Settings the test does not pass must not come from the environment it runs in.
        .env_remove("CAIRN_METRICS")
        .env_remove("CAIRN_METRICS_PORT")
        .env_remove("CAIRN_METRICS_ADDRESS")
        .env_remove("MALLOC_ARENA_MAX")
        .env_remove("NO_COLOR")
        .env_remove("CAIRN_TEST_SHUTDOWN_LIMIT_SECS")
        .stdout(Stdio::piped())
        .stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start cairn");
        let stdout = child.stdout.take().expect("stdout");
        // try_send drops lines when the queue is full so the reader keeps draining the pipe.
        let (tx, rx) = mpsc::sync_channel(STDOUT_QUEUE);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.try_send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).expect("node printed its API address");
        let url = line
            .split("listening on ")
            .nth(1)
            .expect("address line")
            .trim();
        let api = url.trim_end_matches("/api/codex/v1").to_owned();
        NodeProc {
            child,
            api,
            lines: rx,
        }
    }

    /// The node's next stdout line, waiting up to [`WAIT`].
    pub(crate) fn next_line(&self) -> Option<String> {
        self.lines.recv_timeout(WAIT).ok()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/api/codex/v1{path}", self.api)
    }

    /// SIGTERM, then wait for a clean exit; returns the stdout lines not read yet.
    pub(crate) fn stop(self) -> Vec<String> {
        self.terminate();
        self.wait_exit()
    }

    /// The node's exit status if it has exited, without waiting.
    pub(crate) fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits up to `limit` for the node to exit (polling); its exit status, `None` if it still
    /// runs.
    pub(crate) fn wait_status(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        /// How often the node is checked.
        const POLL: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for a clean exit (after [`NodeProc::terminate`]); returns the stdout lines not
    /// read yet.
    pub(crate) fn wait_exit(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "node exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The process is gone, so its stdout ends and the reader thread drops the sender.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects node `from` to node `to` through `from`'s `GET /connect/{peer}?addrs=…`, with the
/// id and first address `to` gives in `/debug/info`.
pub(crate) fn connect(c: &reqwest::blocking::Client, from: &NodeProc, to: &NodeProc) {
    let info: serde_json::Value = c.get(to.url("/debug/info")).send().unwrap().json().unwrap();
    let peer = info["id"].as_str().unwrap();
    let addr = info["addrs"][0].as_str().unwrap();
    let r = c
        .get(from.url(&format!("/connect/{peer}?addrs={addr}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
}

/// Uploads `data` to node `n` (`POST /data`) and returns the CID it answers.
pub(crate) fn upload(c: &reqwest::blocking::Client, n: &NodeProc, data: &[u8]) -> String {
    c.post(n.url("/data"))
        .body(data.to_vec())
        .send()
        .unwrap()
        .text()
        .unwrap()
}

pub(crate) fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
}

pub(crate) fn random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs the CLI with `input` on its stdin.
pub(crate) fn cli_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from another thread so a large input cannot deadlock against the output pipes;
    // dropping `stdin` at the end closes it (end of input). A command that exits without
    // reading it all makes the write fail; what it printed is what the test checks.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// A loopback TCP port nothing listens on (bound and released at once).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The user and group (`nobody`) a test runs the CLI as when it runs as root, whom no file
/// mode stops: see [`cli_as_other`].
pub(crate) const OTHER_ID: u32 = 65534;

/// Whether the tests run as root.
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs the CLI as a user that does not own the files the test made: as root through
/// `setpriv` as `nobody` ([`OTHER_ID`]); otherwise as the test's own user, for whom the file
/// modes the test sets are enough. The test's directories must be open to that user
/// ([`open_to_other`]).
pub(crate) fn cli_as_other(args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        let id = OTHER_ID.to_string();
        c.args([
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".into(),
        ])
        .arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args(args).output().unwrap()
}

/// Lets the user of [`cli_as_other`] into `dir` (mode 0755) and, with `own`, gives it `dir`
/// (so it may create and rename files there).
pub(crate) fn open_to_other(dir: &Path, own: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if own && is_root() {
        std::os::unix::fs::chown(dir, Some(OTHER_ID), Some(OTHER_ID)).unwrap();
    }
}

/// `FILE.part`, where `cairn download -o FILE` writes before it renames.
pub(crate) fn part_of(file: &Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    name.into()
}
