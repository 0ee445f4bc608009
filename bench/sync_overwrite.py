#!/usr/bin/env python3
"""What one write + fdatasync of a 64 KiB chunk costs when the file grows, and when it does not;
and what a write that does not end on a 4 KiB block costs.

The embedded store's log grows with every batch, so on ext4 each fdatasync also writes the
block allocation and the inode's size (separate I/Os, each waited for). This measures, in
alternated rounds, one writer doing 64 KiB pwrite + fdatasync:

- append:      64 KiB writes into a growing file;
- record:      65,576-byte writes into a growing file: what the log writes for a lone 64 KiB
               PATCH (a 40-byte record head, then the data), so every sync ends mid-block and
               the next write dirties that block again;
- padded:      the same record followed by zeros up to the next 4 KiB boundary (69,632 bytes
               per write: what aligned batch ends would cost in bytes);
- fallocate:   into space reserved with posix_fallocate first (unwritten extents: still a
               metadata change per sync);
- prewritten:  over a file whose blocks were written (zeros) and synced beforehand, so a sync
               only writes the data (what a log with pre-written or recycled segments would do);
- direct:      64 KiB O_DIRECT writes (no page cache) into a growing file, then fdatasync;
- direct-prewritten: O_DIRECT writes over pre-written blocks, then fdatasync (left to sync:
               the disk's write cache flush);
- dsync-prewritten: O_DIRECT|O_DSYNC writes over pre-written blocks, no separate fdatasync.

Prints a table of medians (MiB/s, CPU-s/GiB of this process, µs per write + fdatasync) and
writes it to bench/results/sync-overwrite-<date>.md (or OUT). MiB/s and CPU-s/GiB count the
64 KiB chunks, not the heads or padding. MODES picks modes (comma separated, default all).
Run it on the disk to measure (it writes ./sync-overwrite.bin and removes it):
`cd target && python3 ../bench/sync_overwrite.py`.
"""
import datetime
import mmap
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwbench import write_result  # noqa: E402

PIECE = 64 << 10
OPS = int(os.environ.get("OPS", "6000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PATH = "sync-overwrite.bin"
HEAD = 40
BLOCK = 4096
# bytes written per op, and what lies there before the first op
MODES = {
    "append": (PIECE, None),
    "record": (HEAD + PIECE, None),
    "padded": (-(-(HEAD + PIECE) // BLOCK) * BLOCK, None),
    "fallocate": (PIECE, "fallocate"),
    "prewritten": (PIECE, "prewritten"),
    "direct": (PIECE, None),
    "direct-prewritten": (PIECE, "prewritten"),
    "dsync-prewritten": (PIECE, "prewritten"),
}
# extra open flags, and whether each write is followed by an fdatasync
FLAGS = {
    "direct": (os.O_DIRECT, True),
    "direct-prewritten": (os.O_DIRECT, True),
    "dsync-prewritten": (os.O_DIRECT | os.O_DSYNC, False),
}


def run(mode):
    write, before = MODES[mode]
    buf = mmap.mmap(-1, write)
    buf.write(os.urandom(min(write, HEAD + PIECE)))  # the record; padding stays zero
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = OPS * write
        if before == "prewritten":
            zeros = mmap.mmap(-1, 8 << 20)
            for _ in range(size // len(zeros) + 1):
                os.write(fd, zeros)
            os.fsync(fd)
        elif before == "fallocate":
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        flags, sync = FLAGS.get(mode, (0, True))
        wfd = os.open(PATH, os.O_RDWR | flags) if flags else fd
        t0, w0 = os.times(), time.monotonic()
        for i in range(OPS):
            os.pwrite(wfd, buf, i * write)
            if sync:
                os.fdatasync(wfd)
        t1, w1 = os.times(), time.monotonic()
        if flags:
            os.close(wfd)
    finally:
        os.close(fd)
        os.unlink(PATH)
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    gib = OPS * PIECE / (1 << 30)
    return OPS * PIECE / (1 << 20) / (w1 - w0), cpu / gib, (w1 - w0) / OPS * 1e6


def main():
    modes = [m for m in os.environ.get("MODES", ",".join(MODES)).split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown MODES {unknown}; known: {', '.join(MODES)}")
    results = {m: [] for m in modes}
    for _ in range(ROUNDS):
        for m in modes:
            results[m].append(run(m))
    date = datetime.date.today().strftime("%Y%m%d")
    lines = [
        f"# 64 KiB write + fdatasync: growing, unaligned, padded, reserved, pre-written ({date})",
        "",
        f"- {os.cpu_count()} CPUs, {os.uname().release}; cwd {os.getcwd()}; "
        f"{OPS} ops per run, {ROUNDS} alternated rounds, medians",
        "",
        "| file | MiB/s | CPU-s/GiB | µs per write + fdatasync |",
        "|---|---:|---:|---:|",
    ]
    for m in modes:
        mib, cpu, us = (statistics.median(x[i] for x in results[m]) for i in range(3))
        lines.append(f"| {m} | {mib:.0f} | {cpu:.2f} | {us:.0f} |")
    write_result("\n".join(lines) + "\n", "sync-overwrite")


if __name__ == "__main__":
    main()
