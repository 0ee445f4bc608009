#!/usr/bin/env bash
# The incident of DESIGN.md §1 side by side, in one run: the naive reference server
# (crates/naive-gateway: anyhow errors with backtraces, logged with {:?}, binary with full DWARF)
# and engine-gateway (release), both with RUST_BACKTRACE=1 (the gateway also with
# ENGINE_GATEWAY_LOG=debug), each answering the same failing PATCHes (409 wrong offset,
# 401 unknown token, 400 malformed offset) over keep-alive connections.
# Reports RSS growth (before the first failing request -> 300 ms after the last), peak RSS
# growth (VmHWM) and per-request latency p50/p99/p99.9/max; medians over the rounds.
#
# usage: bench/incident.sh [gateway-bench incident flags...]
#   e.g. bench/incident.sh --requests 100000 --rounds 3
# Writes bench/results/incident.md (override with --out).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    cargo build --release -p engine-gateway -p loadgen
    cargo build --profile bench-naive -p naive-gateway
fi
exec target/release/gateway-bench incident "$@"
