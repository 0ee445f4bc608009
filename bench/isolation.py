"""Isolation benchmark: org B's 1 MiB PATCHes alone, then while org A runs 64 readers that read
nothing (small receive buffers, as on a slow link) and 64 writers that trickle one byte every
200 ms, then alone again; and /healthz plus an authenticated PATCH while 1,024 idle sockets are
open. Prints a table and writes bench/results/isolation.md (+ .json).

Environment: GATEWAY_BIN (default target/release/engine-gateway), PATCHES (default 60),
BENCH_OUT (default bench/results/isolation.md).
"""
import http.client
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from gwbench import Gateway, percentile  # noqa: E402

binary = os.environ.get("GATEWAY_BIN", "target/release/engine-gateway")
patches = int(os.environ.get("PATCHES", "60"))
out_md = os.environ.get("BENCH_OUT", "bench/results/isolation.md")
MIB = 1 << 20


def patch(conn, token, stream, offset, body):
    conn.request("PATCH", f"/v1/streams/{stream}", body=body, headers={
        "Authorization": f"Bearer {token}", "Stream-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream"})
    r = conn.getresponse()
    r.read()
    return r.status


def org_b_run(gw, token, stream, n):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    body = b"b" * MIB
    latencies, failures = [], 0
    for i in range(n):
        t = time.monotonic()
        status = patch(conn, token, stream, i * MIB, body)
        latencies.append((time.monotonic() - t) * 1e3)
        failures += status != 204
    conn.close()
    return latencies, failures


gw = Gateway(binary)
admin = open(os.path.join(gw.data, "admin.token")).read().strip()
reader_a = gw.token("--org", "orga", "--role", "reader")
writer_a = gw.token("--org", "orga", "--cluster", "c", "--role", "deployer")
writer_b = gw.token("--org", "orgb", "--cluster", "c", "--role", "deployer")
conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
for i in range(16):
    assert patch(conn, admin, "orga/c/big", i * MIB, b"a" * MIB) == 204
conn.close()

rows = []
calm1, f1 = org_b_run(gw, writer_b, "orgb/c/calm1", patches)

# Org A's noise.
noise = []
for _ in range(64):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    s.sendall(f"GET /v1/streams/orga/c/big HTTP/1.1\r\nhost: x\r\n"
              f"authorization: Bearer {reader_a}\r\n\r\n".encode())
    noise.append(s)
writers = []
for i in range(64):
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(f"PATCH /v1/streams/orga/c/w{i} HTTP/1.1\r\nhost: x\r\n"
              f"authorization: Bearer {writer_a}\r\nstream-offset: 0\r\n"
              "content-type: application/offset+octet-stream\r\n"
              "content-length: 1000000\r\n\r\n".encode())
    writers.append(s)
stop = threading.Event()


def trickle():
    while not stop.is_set():
        for w in writers:
            try:
                w.send(b"x")
            except OSError:
                pass
        time.sleep(0.2)


t = threading.Thread(target=trickle)
t.start()
time.sleep(1)
busy, fb = org_b_run(gw, writer_b, "orgb/c/busy", patches)
stop.set()
t.join()
for s in noise + writers:
    s.close()
time.sleep(1)
calm2, f2 = org_b_run(gw, writer_b, "orgb/c/calm2", patches)
calm = calm1 + calm2

# 1,024 idle sockets, then /healthz and an authenticated PATCH.
idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(1024)]
t0 = time.monotonic()
c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
c.request("GET", "/healthz")
healthz_status = c.getresponse().status
healthz_ms = (time.monotonic() - t0) * 1e3
c.close()
t0 = time.monotonic()
c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
idle_patch_status = patch(c, writer_b, "orgb/c/idle", 0, b"i" * 4096)
patch_ms = (time.monotonic() - t0) * 1e3
c.close()
for s in idle:
    s.close()
gw.stop()

def row(name, lat, fails):
    return (f"| {name} | {len(lat)} | {len(lat) - fails} | {percentile(lat, 50):.1f} | "
            f"{percentile(lat, 99):.1f} | {max(lat):.1f} |\n")


ratio = percentile(busy, 99) / percentile(calm, 99)
table = ("| org B, 1 MiB PATCHes | n | 204s | p50 ms | p99 ms | max ms |\n"
         "|---|---:|---:|---:|---:|---:|\n"
         + row("alone (before and after)", calm, f1 + f2)
         + row("while org A: 64 stalled readers + 64 tricklers", busy, fb)
         + f"\np99 with org A's noise / alone: **{ratio:.2f}×** (target ≤ 2)\n\n"
         "| with 1,024 idle sockets open | status | ms |\n|---|---:|---:|\n"
         f"| GET /healthz | {healthz_status} | {healthz_ms:.1f} |\n"
         f"| authenticated PATCH (4 KiB) | {idle_patch_status} | {patch_ms:.1f} |\n")
print(table)
os.makedirs(os.path.dirname(out_md), exist_ok=True)
with open(out_md, "w") as f:
    f.write(f"# Isolation (bench/isolation.sh)\n\n`{binary}`, loopback, defaults "
            "(16 MiB budget, org share 0.5, 1,024 connections).\n\n" + table)
with open(out_md.removesuffix(".md") + ".json", "w") as f:
    json.dump({"calm_ms": calm, "busy_ms": busy, "p99_ratio": ratio,
               "healthz_ms": healthz_ms, "healthz_status": healthz_status,
               "idle_patch_ms": patch_ms, "idle_patch_status": idle_patch_status}, f)
if f1 + f2 + fb or healthz_status != 200 or idle_patch_status != 204:
    sys.exit("isolation failed: see the table")
