#!/usr/bin/env bash
# Isolation benchmark (see bench/isolation.py): builds the release gateway unless
# BENCH_NO_BUILD=1. PATCHES=20 for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then cargo build --release -p engine-gateway; fi
exec python3 bench/isolation.py
