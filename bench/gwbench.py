"""Shared helpers of the Python benchmarks: start a gateway, make tokens, percentiles, write a
result table."""
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """`engine-gateway serve` on a free loopback port with a fresh data directory."""

    def __init__(self, binary, extra=(), config=None):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="egw-bench-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data]
        if config:
            path = os.path.join(self.dir, "gateway.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        self.log = open(os.path.join(self.dir, "gateway.log"), "w")
        self.proc = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("gateway did not start")

    def token(self, *args):
        out = subprocess.run(
            [self.binary, "token", "create", "--data-dir", self.data, *args],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def percentile(samples, q):
    """Nearest-rank percentile of a list of numbers."""
    s = sorted(samples)
    if not s:
        return float("nan")
    rank = max(1, -(-len(s) * q // 100))
    return s[int(rank) - 1]


def write_result(text, name):
    """Prints `text` and writes it to OUT, or to bench/results/NAME-<date>.md."""
    sys.stdout.write(text)
    date = datetime.date.today().strftime("%Y%m%d")
    out = os.environ.get("OUT") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"{name}-{date}.md")
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out}", file=sys.stderr)
