#!/usr/bin/env bash
# Cost of one GET /debug/pprof/heap and one flame graph (?format=svg) on a running gateway
# under upload load: wall time of the request and extra peak RSS of the gateway process.
#
# Extra peak RSS: the process's high-water mark is reset (/proc/PID/clear_refs, "5") right
# before the request and read right after: extra = VmHWM after - VmRSS before. The same is
# measured over an idle interval of the same length (load only, no request) as the noise floor.
#
# usage: bench/profile_cost.sh [BIN] [RUNS]   (BIN defaults to target/release/engine-gateway)
# Writes bench/results/profile_cost.md. Needs curl; uses the gateway's own `push` as load.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/engine-gateway}
runs=${2:-7}
port=${PORT:-18731}
url="http://127.0.0.1:$port"
work=$(mktemp -d)
out=bench/results/profile_cost.md
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

admin=$("$bin" token create --data-dir "$work/data" --role admin)
deployer=$("$bin" token create --data-dir "$work/data" --role deployer --org bench --cluster c1)
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/gateway.log" 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null && break; sleep 0.1; done

# Load: 4 pushers each uploading 16 MiB over and over to their own streams.
head -c $((16 << 20)) /dev/urandom >"$work/payload"
for i in 1 2 3 4; do
    (n=0; while :; do
        n=$((n + 1))
        "$bin" push --url "$url" --token "$deployer" --stream "bench/c1/s$i-$n" \
            --request-bytes $((1 << 20)) "$work/payload" >/dev/null 2>&1 || true
    done) &
    pids+=("$!")
done
sleep 2

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$gw/status"; }

# One measurement: prints "seconds extra_peak_kib bytes".
measure() {
    local query=$1
    echo 5 >"/proc/$gw/clear_refs"
    local before; before=$(kib VmRSS)
    local stats
    if [ -n "$query" ]; then
        stats=$(curl -fs -o "$work/body" -w '%{time_total} %{size_download}' \
            -H "authorization: Bearer $admin" "$url/debug/pprof/heap$query")
    else
        local t0 t1; t0=$(date +%s.%N); sleep "$idle"; t1=$(date +%s.%N)
        stats="$(echo "$t1 - $t0" | bc) 0"
    fi
    local after; after=$(kib VmHWM)
    read -r secs size <<<"$stats"
    echo "$secs $((after - before)) $size"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A time peak size
for kind in pprof svg; do
    query="?format=$kind"
    measure "$query" >/dev/null # warm-up: page in the code and the symbol tables once
    : >"$work/$kind"
    for _ in $(seq "$runs"); do measure "$query" >>"$work/$kind"; sleep 0.3; done
    time[$kind]=$(cut -d' ' -f1 "$work/$kind" | median)
    peak[$kind]=$(cut -d' ' -f2 "$work/$kind" | median)
    size[$kind]=$(cut -d' ' -f3 "$work/$kind" | median)
done
idle=${time[svg]}
: >"$work/idle"
for _ in $(seq "$runs"); do measure "" >>"$work/idle"; sleep 0.3; done
peak[idle]=$(cut -d' ' -f2 "$work/idle" | median)
max_peak() { cut -d' ' -f2 "$work/$1" | sort -n | tail -1; }

# The profile taken last, explained offline (symbolized with the binary or BIN.debug).
curl -fs -o "$work/heap.pb.gz" -H "authorization: Bearer $admin" "$url/debug/pprof/heap"
debug_file=$bin
[ -f "$bin.debug" ] && debug_file="$bin.debug"
memwatch_bin=${MEMWATCH:-$(dirname "$bin")/memwatch}
top_lines=""
if [ -x "$memwatch_bin" ]; then
    top_lines=$("$memwatch_bin" top "$work/heap.pb.gz" --binary "$debug_file" -n 8 || true)
fi
rss_now=$(kib VmRSS)
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)

{
    echo "# Cost of one heap profile request"
    echo
    echo "Measured by \`bench/profile_cost.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($cpu),"
    echo "shared with other builds. Binary: \`$bin\` ($(stat -c %s "$bin") bytes;"
    echo "DWARF sections in it: $(readelf -S "$bin" | grep -c '\.debug_' || true))."
    echo "Load: 4 \`push\` clients uploading 16 MiB files in 1 MiB requests."
    echo "Gateway RSS at the end: $((rss_now / 1024)) MiB. Median of $runs runs after one warm-up."
    echo
    echo "| request | time (median) | extra peak RSS (median) | extra peak RSS (max) | response |"
    echo "|---|---|---|---|---|"
    echo "| \`GET /debug/pprof/heap\` (gzip pprof) | ${time[pprof]} s | ${peak[pprof]} KiB | $(max_peak pprof) KiB | ${size[pprof]} B |"
    echo "| \`GET /debug/pprof/heap?format=svg\` | ${time[svg]} s | ${peak[svg]} KiB | $(max_peak svg) KiB | ${size[svg]} B |"
    echo "| no request (load only, same interval) | ${idle} s | ${peak[idle]} KiB | $(max_peak idle) KiB | - |"
    echo
    echo "Extra peak RSS = VmHWM after the request - VmRSS before it (high-water mark reset"
    echo "just before); the last row is the same figure with no request, i.e. the noise of"
    echo "the load itself."
    if [ -n "$top_lines" ]; then
        echo
        echo "\`memwatch top heap.pb.gz --binary $(basename "$debug_file")\` on the last profile:"
        echo
        echo '```'
        echo "$top_lines"
        echo '```'
    fi
} >"$out"
cat "$out"
