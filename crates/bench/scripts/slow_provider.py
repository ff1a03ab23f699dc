#!/usr/bin/env python3
"""A download from a fast provider and a slow one at once, against the same download from the
fast provider alone, measured in the same run.

Needs root (it creates a network namespace and a veth pair) and `ip`, `tc` and `curl`.

* Node A (the fast provider) and node B (the downloader) run in this namespace; node S (the
  slow provider) runs in the namespace `cairn-slow`, reached over a veth pair
  (10.77.0.1 <-> 10.77.0.2) whose egress from S is limited with a `tbf` qdisc (`--rate`).
* A gets `--size` MiB of random bytes. B downloads them from A alone
  (`GET /data/{cid}/network/stream`): the **ceiling** for this run. B deletes its copy.
* S downloads the dataset from A (before the rate limit), so it holds all of it. B connects
  to S first, then to A, and downloads again: the **mixed** download.
* Both downloads are hashed and compared with the upload. The script prints both rates, their
  ratio, and B's block-exchange counters and what each provider sent.

Traffic stays on this machine: loopback and the veth pair. Every wait is bounded.

usage: slow_provider.py [--cairn PATH] [--size MIB] [--rate RATE] [--keep] [--log-level F]
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

NS = "cairn-slow"
IN_NS = ["ip", "netns", "exec", NS]
HOST_IP, SLOW_IP = "10.77.0.1", "10.77.0.2"
# Each node: (name, listen address, REST port, discovery port, in the slow namespace).
NODES = {
    "a": ("/ip4/0.0.0.0/tcp/19101", 19201, 19301, False),
    "b": ("/ip4/127.0.0.1/tcp/19103", 19203, 19303, False),
    "s": (f"/ip4/{SLOW_IP}/tcp/19102", 19202, 19302, True),
}
START_TIMEOUT = 30  # s for a node's REST API to answer
CALL_TIMEOUT = 600  # s for any REST call (a download included)


def sh(args, **kw):
    return subprocess.run(args, check=True, **kw)


def setup_namespace():
    teardown_namespace()
    sh(["ip", "netns", "add", NS])
    sh(["ip", "link", "add", "veth-c0", "type", "veth", "peer", "name", "veth-c1"])
    sh(["ip", "link", "set", "veth-c1", "netns", NS])
    sh(["ip", "addr", "add", f"{HOST_IP}/24", "dev", "veth-c0"])
    sh(["ip", "link", "set", "veth-c0", "up"])
    sh(IN_NS + ["ip", "addr", "add", f"{SLOW_IP}/24", "dev", "veth-c1"])
    sh(IN_NS + ["ip", "link", "set", "veth-c1", "up"])
    sh(IN_NS + ["ip", "link", "set", "lo", "up"])


def teardown_namespace():
    subprocess.run(["ip", "link", "del", "veth-c0"], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


class Nodes:
    def __init__(self, cairn, tmp, log_level):
        self.cairn, self.tmp, self.procs, self.ids = cairn, tmp, {}, {}
        self.log_level = log_level

    def start(self, name):
        listen, api, disc, ns = NODES[name]
        cmd = [self.cairn, "start", "--data-dir", os.path.join(self.tmp, name),
               "--listen-addrs", listen, "--api-bindaddr", "127.0.0.1", "--api-port", str(api),
               "--disc-port", str(disc), "--nat", "none", "--log-level", self.log_level]
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        self.procs[name] = subprocess.Popen((IN_NS if ns else []) + cmd, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.time() + START_TIMEOUT
        while True:
            try:
                self.ids[name] = json.loads(self.curl(name, "/debug/info", quiet=True))["id"]
                return
            except Exception:
                if time.time() > deadline or self.procs[name].poll() is not None:
                    sys.exit(f"node {name} did not start; see {self.tmp}/{name}.log")
                time.sleep(0.2)

    def curl(self, name, path, *extra, quiet=False):
        _, api, _, ns = NODES[name]
        url = f"http://127.0.0.1:{api}/api/codex/v1{path}"
        cmd = (IN_NS if ns else []) + ["curl", "-sS", "--fail-with-body", "--max-time",
                                        str(CALL_TIMEOUT), *extra, url]
        return sh(cmd, stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL if quiet else None).stdout

    def info(self, name):
        return json.loads(self.curl(name, "/debug/info"))

    def connect(self, name, to, ip):
        self.curl(name, f"/connect/{self.ids[to]}?addrs=/ip4/{ip}/tcp/{NODES[to][0].split('/')[4]}")

    def download(self, name, cid, want, size):
        """Times B's stream of `cid` from the request to the last byte; checks the bytes."""
        _, api, _, _ = NODES[name]
        h, n = hashlib.sha256(), 0
        t = time.monotonic()
        url = f"http://127.0.0.1:{api}/api/codex/v1/data/{cid}/network/stream"
        with urllib.request.urlopen(url, timeout=CALL_TIMEOUT) as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        dt = time.monotonic() - t
        if n != size or h.hexdigest() != want:
            sys.exit(f"{name}: {n} bytes, content differs from the upload")
        return dt

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cairn", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "../../../target/release/cairn"))
    ap.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    ap.add_argument("--rate", default="40mbit", help="tc rate of the slow provider (40mbit)")
    ap.add_argument("--keep", action="store_true", help="keep data directories and logs")
    ap.add_argument("--log-level", default="warn",
                    help="the nodes' --log-level, e.g. warn,cairn_node::engine=debug to see hedges")
    args = ap.parse_args()
    size = args.size << 20
    tmp = tempfile.mkdtemp(prefix="cairn-slow-provider-")
    nodes = Nodes(os.path.abspath(args.cairn), tmp, args.log_level)
    setup_namespace()
    try:
        for n in ("a", "b"):
            nodes.start(n)
        data = os.urandom(size)
        want = hashlib.sha256(data).hexdigest()
        f = os.path.join(tmp, "upload.bin")
        with open(f, "wb") as fh:
            fh.write(data)
        del data
        cid = nodes.curl("a", "/data", "-H", "Content-Type: application/octet-stream",
                         "-X", "POST", "--upload-file", f).decode().strip()
        os.remove(f)

        nodes.connect("b", "a", "127.0.0.1")
        alone = nodes.download("b", cid, want, size)
        nodes.curl("b", f"/data/{cid}", "-X", "DELETE")

        nodes.start("s")
        nodes.connect("s", "a", HOST_IP)
        nodes.curl("s", f"/data/{cid}/network/stream", "-o", "/dev/null")
        sh(IN_NS + ["tc", "qdisc", "add", "dev", "veth-c1", "root", "tbf", "rate", args.rate,
                    "burst", "64kb", "latency", "200ms"])
        sent_before = {n: nodes.info(n)["exchange"]["blocksSent"] for n in ("a", "s")}
        ex_before = nodes.info("b")["exchange"]
        nodes.connect("b", "s", SLOW_IP)
        nodes.connect("b", "a", "127.0.0.1")
        mixed = nodes.download("b", cid, want, size)
        ex = nodes.info("b")["exchange"]
        sent = {n: nodes.info(n)["exchange"]["blocksSent"] - sent_before[n] for n in ("a", "s")}

        mb = size / 1e6
        print(f"binary: {nodes.cairn}")
        print(f"size: {args.size} MiB; slow provider limited to {args.rate}")
        print(f"fast provider alone (ceiling): {alone:.2f} s = {mb / alone:.1f} MB/s")
        print(f"fast + slow provider:          {mixed:.2f} s = {mb / mixed:.1f} MB/s")
        print(f"ratio mixed / alone: {alone / mixed:.3f}")
        d = {k: ex[k] - ex_before.get(k, 0) for k in ex if isinstance(ex[k], int) and k != "pending"}
        print(f"B's exchange during the mixed download: {d}")
        print(f"blocks sent: fast {sent['a']}, slow {sent['s']}")
        print(json.dumps({"bench": "slow_provider", "size_mib": args.size, "rate": args.rate,
                          "alone_s": round(alone, 3), "mixed_s": round(mixed, 3),
                          "ratio": round(alone / mixed, 3), "exchange_b": d, "sent": sent}))
    finally:
        nodes.stop()
        teardown_namespace()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
