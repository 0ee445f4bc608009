#!/usr/bin/env bash
# Cost of always-on heap profiling on ingest: gateway-bench ingest (64 streams, 64 KiB chunks)
# against the release gateway as shipped (jemalloc prof:true, lg_prof_sample:19 via the
# malloc_conf symbol) and with MALLOC_CONF=prof:false (the environment overrides the symbol),
# alternated in one run, the first of each round alternating too (bench/ab_rounds.sh), ROUNDS
# rounds each; medians.
#
# The counting allocator (memwatch::Allocator) has no runtime switch, so its own cost cannot
# be measured this way (see bench/README.md).
#
# usage: bench/prof_overhead.sh            (ROUNDS=4 DURATION=10s by default)
#        REPORT_ONLY=1 ROUNDS=5 bench/prof_overhead.sh   (table again from the kept JSON)
# Writes bench/results/prof_overhead.md; the raw JSON of every run stays in target/prof-overhead/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-4}
duration=${DURATION:-10s}
work=target/prof-overhead
if [[ -z "${REPORT_ONLY:-}" ]]; then
rm -rf "$work" && mkdir -p "$work"
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    cargo build --release -p engine-gateway -p loadgen
fi
run() {
    local env_args=()
    [[ $1 == prof-off ]] && env_args=(--gateway-env MALLOC_CONF=prof:false)
    target/release/gateway-bench ingest --streams 64 --chunk 64KiB --duration "$duration" \
        --baseline-duration 200ms "${env_args[@]}" --out "$work/$1-$2.json" >/dev/null
}
. bench/ab_rounds.sh
ab_rounds "$rounds" prof-on prof-off run
fi
python3 - "$work" "$rounds" "$duration" >bench/results/prof_overhead.md <<'PY'
import json, statistics, sys, glob, os
work, rounds, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {v: [] for v in ("prof-on", "prof-off")}
machine = None
for v in runs:
    for r in range(1, rounds + 1):
        rep = json.load(open(os.path.join(work, f"{v}-{r}.json")))
        machine = rep["machine"]
        s = rep["scenarios"][0]
        runs[v].append((r, s["mib_per_s"], s["latency"]["p50_ms"], s["latency"]["p99_ms"],
                        s["peak_rss_mib"], rep["raw"]["mib_per_s"], s["error_total"],
                        (s.get("cpu_s_per_gib") or float("nan")) * 1000))
med = {v: statistics.median(x[1] for x in runs[v]) for v in runs}
print("# Heap profiling cost on ingest\n")
print(f"Measured by `bench/prof_overhead.sh` on {machine['date']}, {machine['nproc']} cores "
      f"({machine['cpu_model']}), kernel {machine['kernel']}, commit {machine['git_commit']}; "
      "shared with other builds (noisy).")
print(f"`gateway-bench ingest --streams 64 --chunk 64KiB --duration {duration}` against the release "
      f"gateway, {rounds} rounds, the two variants alternated within each round, which goes first "
      "alternating between rounds; medians.\n")
cpu = {v: statistics.median(x[7] for x in runs[v]) for v in runs}
paired = statistics.median(on[1] / off[1] for on, off in zip(runs["prof-on"], runs["prof-off"]))
paired_cpu = statistics.median(on[7] / off[7] for on, off in zip(runs["prof-on"], runs["prof-off"]))
print("| variant | MiB/s (median) | ratio to prof:false | gateway CPU ms per GiB (median) | CPU ratio | p50 ms | p99 ms | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for v, label in (("prof-on", "profiling on (as shipped: `prof:true,lg_prof_sample:19`)"),
                 ("prof-off", "profiling off (`MALLOC_CONF=prof:false`)")):
    xs = runs[v]
    print(f"| {label} | {med[v]:.1f} | {med[v] / med['prof-off']:.3f} | {cpu[v]:.0f} | "
          f"{cpu[v] / cpu['prof-off']:.3f} | "
          f"{statistics.median(x[2] for x in xs):.2f} | {statistics.median(x[3] for x in xs):.2f} | "
          f"{statistics.median(x[4] for x in xs):.1f} |")
print(f"\nPaired (each round's prof-on over its prof-off, median over the rounds): throughput "
      f"**{paired:.3f}×**, gateway CPU per GiB **{paired_cpu:.3f}×**.")
print("\nMedians over the rounds; p50/p99: commit latency of one PATCH; CPU: the gateway's user + system "
      "time during the scenario (/proc/PID/stat) per GiB acknowledged, less sensitive to the disk's noise "
      "than throughput.")
print("\nEvery run (raw = the same disk's one-writer fdatasync baseline measured in that run):\n")
print("| round | variant | MiB/s | CPU ms/GiB | p50 ms | p99 ms | peak RSS MiB | raw MiB/s | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for r in range(rounds):
    for v in runs:
        x = runs[v][r]
        print(f"| {x[0]} | {v} | {x[1]:.1f} | {x[7]:.0f} | {x[2]:.2f} | {x[3]:.2f} | {x[4]:.1f} | {x[5]:.1f} | {x[6]} |")
PY
cat bench/results/prof_overhead.md
