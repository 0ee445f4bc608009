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
