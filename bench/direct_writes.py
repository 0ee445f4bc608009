#!/usr/bin/env python3
"""What one writer's batch + fdatasync costs through the page cache and with direct writes.

The embedded store's log writes its batches with O_DIRECT (crates/gateway/src/store/embedded/
log.rs, `Direct`). This measures the choice on the disk to be used, in alternated rounds, one
writer appending batches to a growing file with one fdatasync per batch:

- buffered:   the batch in 256 KiB pwrites into the page cache (what the log did before), the
              synced pages more than 32 MiB behind the end given back (posix_fadvise DONTNEED);
- direct:     the batch in one O_DIRECT pwrite from an aligned buffer;
- direct-1m:  the batch in O_DIRECT pwrites of at most 1 MiB (what the log does: its staging
              buffer is 1 MiB, and each direct write waits for the device);
- direct-256k: the same in 256 KiB pieces.

Batch sizes: BATCHES (comma separated, KiB; default 2048 = 64 streams' batch, 68 = one lone
64 KiB append and its record head, rounded to a block). Prints MiB/s, CPU-s/GiB of this process
and the median µs per batch, and writes bench/results/direct-writes-<date>.md (or OUT).
Run it on the disk to measure (it writes ./direct-writes.bin and removes it):
`cd target && python3 ../bench/direct_writes.py`.
"""
import datetime
import mmap
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwbench import write_result  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
TOTAL = int(os.environ.get("TOTAL_MIB", "512")) << 20
BATCHES = [int(b) << 10 for b in os.environ.get("BATCHES", "2048,68").split(",")]
MODES = ["buffered", "direct", "direct-1m", "direct-256k"]
PATH = "direct-writes.bin"
CACHED_TAIL = 32 << 20


def run(mode, batch):
    buf = mmap.mmap(-1, batch)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(batch))
    view = memoryview(buf)
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    wfd = os.open(PATH, os.O_RDWR | os.O_DIRECT) if mode != "buffered" else fd
    piece = {"buffered": 256 << 10, "direct": batch, "direct-1m": 1 << 20,
             "direct-256k": 256 << 10}[mode]
    n = max(1, TOTAL // batch)
    times = []
    pos = released = 0
    t0, w0 = os.times(), time.monotonic()
    try:
        for _ in range(n):
            began = time.monotonic()
            for at in range(0, batch, piece):
                os.pwrite(wfd, view[at:at + piece], pos + at)
            os.fdatasync(wfd)
            times.append(time.monotonic() - began)
            pos += batch
            if mode == "buffered" and pos - CACHED_TAIL > released + (4 << 20):
                os.posix_fadvise(fd, released, pos - CACHED_TAIL - released,
                                 os.POSIX_FADV_DONTNEED)
                released = pos - CACHED_TAIL
        t1, w1 = os.times(), time.monotonic()
    finally:
        if wfd != fd:
            os.close(wfd)
        os.close(fd)
        os.unlink(PATH)
        view.release()
        buf.close()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    gib = n * batch / (1 << 30)
    return n * batch / (1 << 20) / (w1 - w0), cpu / gib, statistics.median(times) * 1e6


def main():
    results = {(m, b): [] for b in BATCHES for m in MODES}
    for _ in range(ROUNDS):
        for b in BATCHES:
            for m in MODES:
                results[(m, b)].append(run(m, b))
    date = datetime.date.today().strftime("%Y%m%d")
    lines = [
        f"# One writer's batch + fdatasync: buffered vs direct writes ({date})",
        "",
        f"- {os.cpu_count()} CPUs, {os.uname().release}; cwd {os.getcwd()}; "
        f"{TOTAL >> 20} MiB per run, {ROUNDS} alternated rounds, medians",
        "",
        "| batch | writes | MiB/s | CPU-s/GiB | µs per batch + fdatasync |",
        "|---:|---|---:|---:|---:|",
    ]
    for b in BATCHES:
        for m in MODES:
            rows = results[(m, b)]
            mib, cpu, us = (statistics.median(r[i] for r in rows) for i in range(3))
            lines.append(f"| {b >> 10} KiB | {m} | {mib:.0f} | {cpu:.2f} | {us:.0f} |")
    write_result("\n".join(lines) + "\n", "direct-writes")


if __name__ == "__main__":
    main()
