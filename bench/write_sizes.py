#!/usr/bin/env python3
"""The cost of one large write() versus the same bytes in pieces, all under one fdatasync.

Writes 1 GiB per size as 4 MiB batches (the store writer's largest batch), each batch in pieces
of 4 MiB / 1 MiB / 256 KiB / 64 KiB followed by one fdatasync, and prints MiB/s and this
process's CPU-s per GiB. Run it from a directory on the disk to measure (it writes
./wsplit.bin and removes it): `cd target && python3 ../bench/write_sizes.py`.
"""
import os, time, sys
buf = os.urandom(4 << 20)
def run(piece, total=1 << 30):
    fd = os.open("wsplit.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    t0 = os.times(); w0 = time.time(); written = 0
    mv = memoryview(buf)
    while written < total:
        for off in range(0, len(buf), piece):
            os.write(fd, mv[off:off + piece])
        os.fdatasync(fd); written += len(buf)
    t1 = os.times(); w1 = time.time()
    os.close(fd); os.unlink("wsplit.bin")
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    print(f"piece {piece>>10:5d} KiB: {total/(1<<20)/(w1-w0):7.1f} MiB/s, {cpu/(total/(1<<30)):.2f} CPU-s/GiB")
for rep in range(2):
    for piece in (4 << 20, 1 << 20, 256 << 10, 64 << 10):
        run(piece)
