#!/usr/bin/env bash
# Idle RSS of the release gateway (embedded store): at rest 1 s after it is ready, and at rest
# again 1 s after an ordinary client session (scripts/sample-session.sh); without a memory
# limit, and with a 256 MiB one (ENGINE_GATEWAY_MEMORY_LIMIT, as a container's would be), where
# the flight recorder runs and holds its timeline.
# VmRSS is split into anonymous pages (heap, stacks, allocator) and file-backed pages (the
# binary's code and libc), as /proc/PID/status reports them.
#
# With BASELINE_BIN=path, that build is measured too, alternated with the current one in each
# round: e.g. the binary of an older commit, to show what a change did.
#
# usage: bench/idle_rss.sh                 (ROUNDS=5 by default; needs curl)
#        BASELINE_BIN=/tmp/old-engine-gateway bench/idle_rss.sh
# Writes bench/results/idle_rss.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    cargo build --release -p engine-gateway --locked
fi
declare -A bins=([current]=target/release/engine-gateway)
[[ -n "${BASELINE_BIN:-}" ]] && bins[baseline]=$BASELINE_BIN
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# Prints "VmRSS RssAnon RssFile" in KiB.
rss() { awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2} END {print ""}' "/proc/$1/status"; }

variants=()
for build in "${!bins[@]}"; do variants+=("$build" "$build+limit"); done
for round in $(seq "$rounds"); do
    for variant in "${variants[@]}"; do
        port=$((20000 + RANDOM % 20000))
        url=http://127.0.0.1:$port
        data=$work/$variant-$round
        limit=()
        [[ $variant == *+limit ]] && limit=(env ENGINE_GATEWAY_MEMORY_LIMIT=$((256 << 20)))
        "${limit[@]}" "${bins[${variant%+limit}]}" serve --listen 127.0.0.1:$port \
            --data-dir "$data" 2>"$data.log" &
        gateway=$!
        for _ in $(seq 1 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
        curl -sf "$url/healthz" >/dev/null || { cat "$data.log"; echo "$variant did not start"; exit 1; }
        sleep 1
        echo "$round $variant fresh $(rss $gateway)" >>"$work/rows"
        scripts/sample-session.sh "$url" "$(cat "$data/admin.token")" >/dev/null
        sleep 1
        echo "$round $variant after $(rss $gateway)" >>"$work/rows"
        kill -TERM $gateway
        wait $gateway || true
        echo "round $round: $variant done" >&2
    done
done

# How much of the link order (crates/gateway/build.rs) still matches the binary's symbols.
listed=$(wc -l <crates/gateway/hot-functions.txt)
found=$(nm "${bins[current]}" | awk '{print $NF}' | LC_ALL=C sort -u |
    LC_ALL=C comm -12 - <(LC_ALL=C sort -u crates/gateway/hot-functions.txt) | wc -l)

python3 - "$work/rows" "$rounds" "${BASELINE_BIN:-}" "$found" "$listed" >bench/results/idle_rss.md <<'PY'
import os, platform, statistics, subprocess, sys
rows, rounds, baseline = sys.argv[1], int(sys.argv[2]), sys.argv[3]
found, listed = int(sys.argv[4]), int(sys.argv[5])
data = {}
for line in open(rows):
    _, variant, phase, rss, anon, file = line.split()
    data.setdefault((variant, phase), []).append((int(rss), int(anon), int(file)))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# Idle RSS\n")
print(f"Measured by `bench/idle_rss.sh` at commit {commit}: {os.cpu_count()} cores ({cpu}), "
      f"kernel {platform.release()}; {rounds} rounds, variants alternated; medians (min–max) in MiB.")
if baseline:
    print(f"Baseline: `{baseline}`.")
print("\n\"fresh\": at rest 1 s after /healthz first answers; \"after traffic\": at rest 1 s after "
      "scripts/sample-session.sh (writes, a conflict, reads, a follower, /metrics, bad input).\n")
print("| build | when | VmRSS | anonymous | file-backed |")
print("|---|---|---:|---:|---:|")
def cell(xs):
    xs = [x / 1024 for x in xs]
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"
for variant in ("current", "current+limit", "baseline", "baseline+limit"):
    build = variant.replace("+limit", ", 256 MiB limit")
    for phase, label in (("fresh", "fresh"), ("after", "after traffic")):
        xs = data.get((variant, phase))
        if xs:
            print(f"| {build} | {label} | {cell([x[0] for x in xs])} | "
                  f"{cell([x[1] for x in xs])} | {cell([x[2] for x in xs])} |")
print(f"\nLink order: {found} of the {listed} functions in crates/gateway/hot-functions.txt are "
      "in the current binary" + ("; below ~90 %, run scripts/hot-functions.sh." if found < 0.9 * listed else "."))
PY
cat bench/results/idle_rss.md
