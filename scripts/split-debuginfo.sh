#!/usr/bin/env bash
# Moves a release binary's DWARF into BIN.debug and leaves BIN with its symbol table only.
#
# The running binary then has function names (for memwatch's in-process heap profiles) but no
# DWARF, so nothing in the process can be made to parse debug info; BIN.debug (same build id)
# gives file:line offline: `memwatch top heap.pb.gz --binary BIN.debug`.
#
# usage: scripts/split-debuginfo.sh target/release/engine-gateway
set -euo pipefail
bin=${1:?usage: $0 BINARY}
debug="$bin.debug"
objcopy --only-keep-debug "$bin" "$debug"
objcopy --strip-debug --add-gnu-debuglink="$debug" "$bin"
echo "$bin: $(stat -c %s "$bin") bytes, symbols only; $debug: $(stat -c %s "$debug") bytes"
