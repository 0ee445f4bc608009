"""Live latency: a producer writes one 100-byte line every 100 ms through `push -`; a
`cat --follow` reader, started first (the stream does not exist yet), timestamps each line as
it arrives. Prints p50/p99/max of send-to-receive latency and writes bench/results/.

Environment: GATEWAY_BIN (default target/release/engine-gateway), LINES (default 300),
BENCH_OUT (default bench/results/live_latency.md).
"""
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from gwbench import Gateway, percentile  # noqa: E402

binary = os.environ.get("GATEWAY_BIN", "target/release/engine-gateway")
lines = int(os.environ.get("LINES", "300"))
out_md = os.environ.get("BENCH_OUT", "bench/results/live_latency.md")

gw = Gateway(binary)
token = gw.token("--org", "acme", "--cluster", "prod", "--role", "deployer")
stream = "acme/prod/live"
client = ["--url", gw.url, "--token", token, "--stream", stream]
cat = subprocess.Popen([binary, "cat", *client, "--follow"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
# The reader says it waits for the stream before the producer starts.
waiting = cat.stderr.readline().decode()
assert "waiting" in waiting, waiting
push = subprocess.Popen([binary, "push", *client, "--seal", "-"], stdin=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)

latencies = []


def read():
    for raw in cat.stdout:
        now = time.monotonic_ns()
        seq, sent = raw.split()[:2]
        latencies.append((now - int(sent)) / 1e6)


reader = threading.Thread(target=read)
reader.start()
for i in range(lines):
    head = f"{i} {time.monotonic_ns()} "
    push.stdin.write((head + "." * (99 - len(head)) + "\n").encode())
    push.stdin.flush()
    time.sleep(0.1)
push.stdin.close()
push.wait(timeout=60)
cat.wait(timeout=60)
reader.join()
gw.stop()

assert len(latencies) == lines, f"{len(latencies)} of {lines} lines arrived"
p50, p99, mx = (percentile(latencies, 50), percentile(latencies, 99), max(latencies))
table = (
    "| lines | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|\n"
    f"| {lines} | {p50:.1f} | {p99:.1f} | {mx:.1f} |\n"
)
print(table)
os.makedirs(os.path.dirname(out_md), exist_ok=True)
with open(out_md, "w") as f:
    f.write(
        "# Live latency (bench/live_latency.sh)\n\n"
        "One 100-byte line every 100 ms through `engine-gateway push -`, read by "
        "`engine-gateway cat --follow` started before the stream existed; latency from the "
        f"producer's write to the reader's receipt, loopback, `{binary}`.\n\n" + table
    )
with open(out_md.removesuffix(".md") + ".json", "w") as f:
    json.dump({"lines": lines, "p50_ms": p50, "p99_ms": p99, "max_ms": mx}, f)
