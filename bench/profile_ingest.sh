#!/usr/bin/env bash
# Where the gateway's CPU goes during ingest: runs `gateway-bench ingest` at one concurrency and
# samples the gateway child with `perf record -e cpu-clock` (software clock: hardware counters
# are not available in most VMs) for most of the scenario, then prints the hottest symbols, the
# split by thread and by user/kernel. Needs perf (Debian: linux-perf) and a release build.
#
# usage: bench/profile_ingest.sh [STREAMS] [SECONDS]     (default 64 streams, 12 s)
#        GATEWAY_BIN=/tmp/old-engine-gateway bench/profile_ingest.sh 64
# Extra gateway-bench flags go in BENCH_ARGS (e.g. "--gateway-env MALLOC_CONF=...").
# PERF_CG sets perf's call-graph mode (default -g, frame pointers; "--call-graph dwarf,16384"
# also unwinds through libc, whose memcpy and syscalls frame pointers lose).
# Leaves perf.data and the reports in target/profile-ingest/.
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-64}
seconds=${2:-12}
bin=${GATEWAY_BIN:-target/release/engine-gateway}
out=target/profile-ingest
mkdir -p "$out"
# shellcheck disable=SC2086
target/release/gateway-bench ingest --gateway-bin "$bin" --streams "$streams" \
    --duration "${seconds}s" --baseline-duration 100ms --settle 1s --out "$out/run.json" \
    ${BENCH_ARGS:-} >"$out/run.md" 2>"$out/run.log" &
bench=$!
gateway=
for _ in $(seq 600); do
    gateway=$(sed -n 's/^gateway ready at .* (pid \([0-9]*\))$/\1/p' "$out/run.log")
    [[ -n $gateway ]] && break
    sleep 0.1
done
[[ -n $gateway ]] || { echo "no gateway child found" >&2; cat "$out/run.log" >&2; exit 1; }
sleep 1.5   # past the settle pause, into the scenario
perf record -e cpu-clock -F 999 ${PERF_CG:--g} -p "$gateway" -o "$out/perf.data" -- sleep $((seconds - 3)) \
    2>"$out/perf.log"
wait "$bench"
cat "$out/run.md" | grep -E '^\| (disk|raw|[0-9])'
echo
echo "## by thread"
perf report -i "$out/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo
echo "## user vs kernel"
perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo
echo "## hottest symbols"
perf report -i "$out/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
