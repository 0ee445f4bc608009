#!/usr/bin/env bash
# Store benchmarks (embedded store, in process, release build): ingest at 64 streams; the read
# path a GET uses with and without checksum verification, alternating (ABBA) in one run;
# compaction throughput and ingest beside a compaction vs alone. Prints a markdown table and
# writes it to bench/results/store-<date>.md (or $BENCH_OUT).
#
# Environment overrides (all optional):
#   BENCH_PHASE_SECS   seconds per measured phase               (default 4)
#   BENCH_ROUNDS       read rounds (ABBA); compaction gets half  (default 4)
#   BENCH_SEGMENT_MIB  segment size, MiB                         (default 64)
#   BENCH_DATA_DIR     directory on the disk to measure          (default ./target)
#   BENCH_OUT          result file                               (default bench/results/store-<date>.md)
#   BENCH_SKIP_COMPACTION=1  ingest and reads only (e.g. on a tmpfs, where ingest fills it fast)
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-bench/results/store-$(date -u +%Y%m%d).md}"
mkdir -p "$(dirname "$out")"
log="$(mktemp)"
ENGINE_GATEWAY_STORE_BENCH=1 cargo test --release -p engine-gateway --test store_bench -- \
    --nocapture --test-threads=1 2>&1 | tee "$log"
{
    echo "# Store benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
    echo
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r);"
    echo "data on $(df -T "${BENCH_DATA_DIR:-target}" | awk 'NR==2 {print $2}'). Phase ${BENCH_PHASE_SECS:-4} s, ${BENCH_ROUNDS:-4} read rounds."
    echo
    grep -E '^\|' "$log"
    echo
    grep -E '^round ' "$log" | sed 's/^/    /'
} > "$out"
rm -f "$log"
echo "wrote $out"
