#!/usr/bin/env bash
# Ingest benchmark: builds the binaries (release by default), runs gateway-bench against engine-gateway,
# writes bench/results/ingest-<date>.json and .md, and prints the markdown table.
#
# Environment overrides (all optional):
#   BENCH_DURATION   per scenario and raw baseline, e.g. 10s, 500ms   (default 10s)
#   BENCH_STREAMS    concurrency levels, comma separated             (default 1,64,256)
#   BENCH_CHUNK      PATCH body size, e.g. 64KiB                      (default 64KiB)
#   BENCH_DATA_DIR   directory on the disk to measure                 (default ./target)
#   BENCH_OUT        result file (JSON; .md beside it)                (default bench/results/ingest-<date>.json)
#   BENCH_SMOKE=1    quick check: 1 and 4 streams, 1 s each; fails on any error
#   BENCH_PROFILE    cargo profile of both binaries: release or debug   (default release;
#                    debug only checks that the benchmark works, as CI's smoke run may)
#   BENCH_NO_BUILD=1 skip cargo build (use the existing binaries)
# Extra arguments are passed to `gateway-bench ingest` as they are.
set -euo pipefail

cd "$(dirname "$0")/.."

profile="${BENCH_PROFILE:-release}"
case "$profile" in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) echo "BENCH_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    cargo build "${build_flags[@]}" -p engine-gateway -p loadgen
fi

# Unset variables leave gateway-bench's own defaults in place (10s, 1,64,256, 64KiB, ./target).
args=(ingest --gateway-bin "target/$profile/engine-gateway")
if [[ "${BENCH_SMOKE:-0}" == 1 ]]; then args+=(--smoke); fi
if [[ -n "${BENCH_DURATION:-}" ]]; then args+=(--duration "$BENCH_DURATION"); fi
if [[ -n "${BENCH_STREAMS:-}" ]]; then args+=(--streams "$BENCH_STREAMS"); fi
if [[ -n "${BENCH_CHUNK:-}" ]]; then args+=(--chunk "$BENCH_CHUNK"); fi
if [[ -n "${BENCH_DATA_DIR:-}" ]]; then args+=(--data-dir "$BENCH_DATA_DIR"); fi
if [[ -n "${BENCH_OUT:-}" ]]; then args+=(--out "$BENCH_OUT"); fi

mkdir -p bench/results
exec "target/$profile/gateway-bench" "${args[@]}" "$@"
