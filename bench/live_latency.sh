#!/usr/bin/env bash
# Live latency benchmark (see bench/live_latency.py): builds the release gateway unless
# BENCH_NO_BUILD=1, then runs the producer/follower pair. LINES=50 for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then cargo build --release -p engine-gateway; fi
exec python3 bench/live_latency.py
