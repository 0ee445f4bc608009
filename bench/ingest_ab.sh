#!/usr/bin/env bash
# Ingest of two gateway builds side by side: gateway-bench ingest (STREAMS streams, 64 KiB
# chunks) against BASELINE_BIN and CANDIDATE_BIN, alternated in one run (ABBA), ROUNDS rounds;
# medians of the per-round ratios candidate / baseline of throughput and CPU-s per GiB.
#
# usage: BASELINE_BIN=/tmp/engine-gateway-main bench/ingest_ab.sh
#   CANDIDATE_BIN (default target/release/engine-gateway), BENCH_TOOL (default
#   target/release/gateway-bench), STREAMS (default 64), CHUNK (default 64KiB), ROUNDS
#   (default 4), DURATION (default 10s)
# Writes bench/results/ingest_ab.md (ingest_ab-STREAMS-CHUNK.md for other than 64 x 64KiB, or OUT);
# the JSON of every run stays in target/ingest-ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASELINE_BIN:?set BASELINE_BIN to the baseline engine-gateway binary}"
candidate=${CANDIDATE_BIN:-target/release/engine-gateway}
tool=${BENCH_TOOL:-target/release/gateway-bench}
rounds=${ROUNDS:-4}
duration=${DURATION:-10s}
streams=${STREAMS:-64}
chunk=${CHUNK:-64KiB}
if [[ $streams == 64 && $chunk == 64KiB ]]; then default_out=bench/results/ingest_ab.md; else default_out=bench/results/ingest_ab-$streams-$chunk.md; fi
out=${OUT:-$default_out}
work=target/ingest-ab
mkdir -p "$work" && rm -f "$work"/*.json
bin_of() { if [[ $1 == baseline ]]; then echo "$BASELINE_BIN"; else echo "$candidate"; fi; }
run() {
    "$tool" ingest --gateway-bin "$(bin_of "$1")" --streams "$streams" --chunk "$chunk" \
        --duration "$duration" --baseline-duration 1s --sinks none --out "$work/$1-$2.json" >/dev/null
}
. bench/ab_rounds.sh
ab_rounds "$rounds" candidate baseline run
python3 - "$work" "$rounds" "$duration" "$BASELINE_BIN" "$candidate" "$streams" "$chunk" >"$out" <<'PY'
import json, os, statistics, sys
work, rounds, duration, base, cand, streams, chunk = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
runs = {v: [] for v in ("candidate", "baseline")}
machine = None
for v in runs:
    for r in range(1, rounds + 1):
        rep = json.load(open(os.path.join(work, f"{v}-{r}.json")))
        machine = rep["machine"]
        s = rep["scenarios"][0]
        runs[v].append((r, s["mib_per_s"], s["latency"]["p50_ms"], s["latency"]["p99_ms"],
                        s["peak_rss_mib"], rep["raw"]["mib_per_s"], s["cpu_s_per_gib"],
                        s["minor_faults_per_gib"]))
ratios = [c[1] / b[1] for c, b in zip(runs["candidate"], runs["baseline"])]
cpu = [c[6] / b[6] for c, b in zip(runs["candidate"], runs["baseline"])]
print(f"# {streams}-stream x {chunk} ingest, two builds side by side\n")
print(f"`bench/ingest_ab.sh` on {machine['date']}, {machine['nproc']} cores "
      f"({machine['cpu_model']}), kernel {machine['kernel']}. Baseline `{base}`, candidate "
      f"`{cand}`; `gateway-bench ingest --streams {streams} --chunk {chunk} --duration {duration}`, "
      f"{rounds} rounds, ABBA order.\n")
print(f"**Throughput candidate / baseline (median of per-round ratios): "
      f"{statistics.median(ratios):.3f}** (per round {min(ratios):.2f} to {max(ratios):.2f}; "
      "target >= 0.95)\n")
print(f"**CPU-s per GiB candidate / baseline (median of per-round ratios): "
      f"{statistics.median(cpu):.3f}** (per round {min(cpu):.2f} to {max(cpu):.2f})\n")
print("| build | MiB/s | CPU-s/GiB | faults/GiB | p50 ms | p99 ms | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for v in runs:
    m = [statistics.median(x[i] for x in runs[v]) for i in (1, 6, 7, 2, 3, 4)]
    print(f"| {v} (median) | {m[0]:.1f} | {m[1]:.2f} | {m[2]:.0f} | {m[3]:.2f} | {m[4]:.2f} | {m[5]:.1f} |")
print()
print("| round | build | MiB/s | CPU-s/GiB | faults/GiB | p50 ms | p99 ms | peak RSS MiB | raw MiB/s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in range(rounds):
    for v in runs:
        x = runs[v][r]
        print(f"| {x[0]} | {v} | {x[1]:.1f} | {x[6]:.2f} | {x[7]:.0f} | {x[2]:.2f} | {x[3]:.2f} | {x[4]:.1f} | {x[5]:.1f} |")
PY
cat "$out"
