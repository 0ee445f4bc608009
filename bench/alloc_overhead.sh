#!/usr/bin/env bash
# Cost of counting at the allocator on ingest: gateway-bench ingest (64 streams, 64 KiB chunks)
# against the release gateway as shipped (memwatch::Allocator around jemalloc) and against the
# same gateway built with `--features plain-jemalloc` (jemalloc without the counting wrapper),
# alternated in one run (the first of each round alternating too), ROUNDS rounds each; medians
# of the per-round ratios.
#
# usage: bench/alloc_overhead.sh            (ROUNDS=4 DURATION=10s by default)
# Writes bench/results/alloc_overhead.md; the JSON of every run stays in target/alloc-overhead/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-4}
duration=${DURATION:-10s}
work=target/alloc-overhead
mkdir -p "$work" && rm -f "$work"/*.json
# Both variants come out of target/release (a second target dir would rebuild every dependency);
# each binary is copied aside before the other is built. Both without the link order of
# crates/gateway/build.rs: the feature renames the crate's symbols, so only the shipped variant
# would match it, and the comparison would measure the code layout too.
export ENGINE_GATEWAY_NO_FUNCTION_ORDER=1
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    cargo build --release -p engine-gateway -p loadgen --features engine-gateway/plain-jemalloc
    cp target/release/engine-gateway "$work/engine-gateway-plain"
    cargo build --release -p engine-gateway -p loadgen
    cp target/release/engine-gateway "$work/engine-gateway-counted"
fi
run() {
    target/release/gateway-bench ingest --gateway-bin "$work/engine-gateway-$1" --streams 64 \
        --chunk 64KiB --duration "$duration" --baseline-duration 200ms --out "$work/$1-$2.json" >/dev/null
}
. bench/ab_rounds.sh
ab_rounds "$rounds" counted plain run
python3 - "$work" "$rounds" "$duration" >bench/results/alloc_overhead.md <<'PY'
import json, statistics, sys, os
work, rounds, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {v: [] for v in ("counted", "plain")}
machine = None
for v in runs:
    for r in range(1, rounds + 1):
        rep = json.load(open(os.path.join(work, f"{v}-{r}.json")))
        machine = rep["machine"]
        s = rep["scenarios"][0]
        runs[v].append((r, s["mib_per_s"], (s.get("cpu_s_per_gib") or float("nan")) * 1000,
                        s["latency"]["p99_ms"], s["peak_rss_mib"], rep["raw"]["mib_per_s"]))
paired = statistics.median(c[1] / p[1] for c, p in zip(runs["counted"], runs["plain"]))
paired_cpu = statistics.median(c[2] / p[2] for c, p in zip(runs["counted"], runs["plain"]))
print("# Allocator counting cost on ingest\n")
print(f"Measured by `bench/alloc_overhead.sh` on {machine['date']}, {machine['nproc']} cores "
      f"({machine['cpu_model']}), kernel {machine['kernel']}, commit {machine['git_commit']}.")
print(f"`gateway-bench ingest --streams 64 --chunk 64KiB --duration {duration}`, {rounds} rounds, "
      "variants alternated within each round, which goes first alternating between rounds.\n")
ratios = sorted(c[1] / p[1] for c, p in zip(runs["counted"], runs["plain"]))
print(f"**Throughput ratio counted / plain (median of per-round ratios): {paired:.3f}** "
      f"(target >= 0.98; per-round ratios {ratios[0]:.2f} to {ratios[-1]:.2f}); gateway CPU "
      f"per GiB ratio: {paired_cpu:.3f}.\n")
print("| round | variant | MiB/s | CPU ms/GiB | p99 ms | peak RSS MiB | raw MiB/s |")
print("|---|---|---|---|---|---|---|")
for r in range(rounds):
    for v in runs:
        x = runs[v][r]
        print(f"| {x[0]} | {v} | {x[1]:.1f} | {x[2]:.0f} | {x[3]:.2f} | {x[4]:.1f} | {x[5]:.1f} |")
PY
cat bench/results/alloc_overhead.md
