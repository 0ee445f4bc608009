#!/usr/bin/env bash
# Capture and report times of the incident: runs the recorder_oom test's incident (a tokio task
# logging an anyhow error with `{:?}` under RUST_BACKTRACE=1, in a 256 MiB cgroup), keeps its
# captures, then times `memwatch report` on the first one RUNS times (wall clock, the memwatch
# binary given, default the release build) and reads each capture's own write time from its
# meta.txt. Prints a table and writes bench/results/memwatch_report.md.
#
# usage: bench/memwatch_report.sh [MEMWATCH_BIN] [RUNS]
# Needs the rights to create a memory cgroup (as the OOM tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/memwatch}
runs=${2:-7}
out=bench/results/memwatch_report.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build -q --release -p memwatch --bin memwatch
cargo test -q -p memwatch --test recorder_oom --no-run 2>/dev/null
test_bin=$(ls -t target/debug/deps/recorder_oom-* | grep -v '\.d$' | head -1)
MEMWATCH_TEST_KEEP="$work/captures" "$test_bin" >"$work/test.log" 2>&1
capture=$(ls -d "$work"/captures/capture-* | head -1)
written_ns=$(sed -n 's/^capture_ns=//p' "$capture/meta.txt")
written=$(( ${written_ns:-0} / 1000 ))

times=()
for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    "$bin" report "$capture" -o "$work/report" >"$work/report.txt"
    end=$(date +%s%N)
    times+=($(((end - start) / 1000000)))
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | sed -n "$(((runs + 1) / 2))p")
machine="$(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
{
    echo "# memwatch report on the incident's capture"
    echo
    echo "Machine: $machine. Capture: $(basename "$capture") ($(du -sk "$capture" | cut -f1) KiB on disk)."
    echo
    echo "| what | median | all runs |"
    echo "|---|---:|---|"
    echo "| trigger → capture written (heap dump + timeline, the recorder's own figure) | ${written:-?} µs | one capture |"
    echo "| \`memwatch report\` (symbolize with DWARF, advice, flame graph, pprof) | $median ms | $(echo $sorted | tr ' ' ',') ms |"
    echo
    echo "First screen:"
    echo
    echo '```text'
    head -24 "$work/report.txt"
    echo '```'
} | tee "$out"
