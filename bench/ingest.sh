#!/usr/bin/env bash
# Ingest benchmark: builds the binaries (release by default), measures the disk's durable
# sequential write rate (64 KiB writes, one fdatasync per 8 MiB) and one fdatasync per chunk, then
# runs gateway-bench against engine-gateway (or any protocol v1 / tus server) and reports each
# scenario's MiB/s as a share of that limit, its CPU-s and minor faults per GiB, latency and RSS.
# Writes bench/results/ingest-<date>.json and .md, and prints the markdown table.
#
# Environment overrides (all optional):
#   BENCH_DURATION   per scenario and raw baseline, e.g. 10s, 500ms   (default 10s)
#   BENCH_STREAMS    concurrency levels, comma separated             (default 1,64,256,1024)
#   BENCH_CHUNK      PATCH body size, e.g. 64KiB                      (default 64KiB)
#   BENCH_DATA_DIR   directory on the disk to measure                 (default ./target)
#   BENCH_OUT        result file (JSON; .md beside it)                (default bench/results/ingest-<date>.json)
#   BENCH_SMOKE=1    quick check: 1 and 4 streams, 1 s each; fails on any error
#   BENCH_PROFILE    cargo profile of both binaries: release or debug   (default release;
#                    debug only checks that the benchmark works, as CI's smoke run may)
#   BENCH_NO_BUILD=1 skip cargo build (use the existing binaries)
#   BENCH_TARGET_URL drive this running server instead of starting the gateway, e.g.
#                    http://127.0.0.1:8080/v1/streams/bench (needs BENCH_TOKEN; loopback only)
#   BENCH_TOKEN      its bearer token
#   BENCH_TARGET_PID its process id, for CPU, faults and RSS (optional)
#   BENCH_PROTOCOL   v1 (Stream-Offset, default) or tus (Upload-Offset)
#   BENCH_SINKS      reference servers loaded after the gateway: no-disk (the network floor,
#                    default), fsync-each (fdatasync per PATCH: a hand-written durable server),
#                    both comma separated, or none (default with BENCH_SMOKE or BENCH_TARGET_URL)
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

# Unset variables leave gateway-bench's own defaults in place (10s, 1,64,256,1024, 64KiB, ./target).
args=(ingest --gateway-bin "target/$profile/engine-gateway")
if [[ -n "${BENCH_TARGET_URL:-}" ]]; then
    args+=(--target-url "$BENCH_TARGET_URL" --token "${BENCH_TOKEN:?BENCH_TOKEN is needed with BENCH_TARGET_URL}")
    if [[ -n "${BENCH_TARGET_PID:-}" ]]; then args+=(--target-pid "$BENCH_TARGET_PID"); fi
    if [[ -n "${BENCH_PROTOCOL:-}" ]]; then args+=(--protocol "$BENCH_PROTOCOL"); fi
fi
if [[ "${BENCH_SMOKE:-0}" == 1 ]]; then args+=(--smoke); fi
if [[ -n "${BENCH_DURATION:-}" ]]; then args+=(--duration "$BENCH_DURATION"); fi
if [[ -n "${BENCH_STREAMS:-}" ]]; then args+=(--streams "$BENCH_STREAMS"); fi
if [[ -n "${BENCH_CHUNK:-}" ]]; then args+=(--chunk "$BENCH_CHUNK"); fi
if [[ -n "${BENCH_DATA_DIR:-}" ]]; then args+=(--data-dir "$BENCH_DATA_DIR"); fi
if [[ -n "${BENCH_SINKS:-}" ]]; then args+=(--sinks "$BENCH_SINKS"); fi
if [[ -n "${BENCH_OUT:-}" ]]; then args+=(--out "$BENCH_OUT"); fi

mkdir -p bench/results
exec "target/$profile/gateway-bench" "${args[@]}" "$@"
