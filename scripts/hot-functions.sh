#!/usr/bin/env bash
# Regenerates crates/gateway/hot-functions.txt: the functions the gateway runs from its start to
# idle and while serving ordinary requests. The release link (crates/gateway/build.rs) places
# them together at the start of the text segment.
#
# Why: the kernel maps an executable's text in 64 KiB windows around each page a process touches
# (fault-around). With the ~2 MiB of code a start and a few requests run scattered over 8 MiB of
# text, most of the text became resident; placed together, it fits in a few windows.
#
# Functions that run from the start to idle come first, then those that serving requests adds:
# a gateway at rest keeps the first part resident, one that has served traffic both.
#
# Run it after changes that rename or add many functions on the startup or request path; stale
# entries only cost resident pages (the linker skips names it does not find).
#
# usage: scripts/hot-functions.sh   (needs valgrind, curl, awk; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)"; exit 1; }

cargo build --release -p engine-gateway --locked
bin=$PWD/target/release/engine-gateway
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
url=http://127.0.0.1:$port

# With a memory limit, as in a container: the flight recorder runs (1 GiB: nothing triggers).
ENGINE_GATEWAY_MEMORY_LIMIT=$((1 << 30)) \
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind.out" \
  "$bin" serve --listen 127.0.0.1:$port --data-dir "$work/data" >"$work/log" 2>&1 &
gateway=$!
for _ in $(seq 1 240); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.5; done
curl -sf "$url/healthz" >/dev/null || { cat "$work/log"; echo "the gateway did not start"; exit 1; }

# Phase 1, start to idle: its functions go first, so that a gateway at rest keeps only them.
curl -s "$url/readyz" >/dev/null
sleep 3 # the store's checkpoint and the idle loops
callgrind_control --dump=start $gateway >/dev/null 2>&1

# Phase 2, an ordinary session.
scripts/sample-session.sh "$url" "$(cat "$work/data/admin.token")"
sleep 2
kill -TERM $gateway
wait $gateway || true

# The functions of the engine-gateway object in one dump: `ob=` names the object of the `fn=`
# lines that follow, `cob=` that of the next `cfn=`; names are given once, then referred to by id.
functions() {
  awk '
    match($0, /^c?ob=\([0-9]+\)/) {
      id = substr($0, RSTART, RLENGTH); sub(/^c?ob=/, "", id)
      if (length($0) > RLENGTH) obs[id] = substr($0, RLENGTH + 2)
      if ($0 ~ /^ob=/) ob = obs[id]; else cob = obs[id]
      next
    }
    match($0, /^c?fn=\([0-9]+\)/) {
      id = substr($0, RSTART, RLENGTH); sub(/^c?fn=/, "", id)
      if (length($0) > RLENGTH) fns[id] = substr($0, RLENGTH + 2)
      object = ($0 ~ /^fn=/) ? ob : cob
      if (object ~ /\/engine-gateway$/) { name = fns[id]; sub(/\047[0-9]+$/, "", name); print name }
    }
  ' "$1" | grep -v -e '^0x' -e '^(below main)$' | LC_ALL=C sort -u
}
dumps=("$work"/callgrind.out.*)
[ ${#dumps[@]} -eq 1 ] && [ -f "${dumps[0]}" ] || { echo "expected one phase-1 dump, found: ${dumps[*]}"; exit 1; }
functions "${dumps[0]}" >"$work/start"
functions "$work/callgrind.out" | LC_ALL=C comm -23 - "$work/start" >"$work/serve"
cat "$work/start" "$work/serve" >crates/gateway/hot-functions.txt
echo "crates/gateway/hot-functions.txt: $(wc -l <"$work/start") functions from start to idle," \
  "then $(wc -l <"$work/serve") more that serving requests runs"
