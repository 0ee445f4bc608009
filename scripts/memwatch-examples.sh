#!/usr/bin/env bash
# Runs memwatch's two examples as a newcomer would, briefly (CI): the batch worker twice (its
# captures, then the post-mortem of the first run at the second start) and the axum quick
# start (memory JSON, a requested capture, metrics, a flame graph), then `memwatch report` on
# a capture of each. Builds them as `cargo test --workspace` does (nothing to do after it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --examples --bins --locked --quiet
bin=target/debug
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "memwatch-examples: $*" >&2; exit 1; }

echo "--- the README's quick start is the example, verbatim"
readme_block=$(awk '/^```rust$/{n++; if (n==1) {on=1; next}} on && /^```$/{exit} on' crates/memwatch/README.md)
example_body=$(grep -v '^//!' crates/memwatch-axum/examples/quickstart.rs | sed '1{/^$/d}')
[ "$readme_block" = "$example_body" ] || fail "crates/memwatch/README.md's quick start differs from examples/quickstart.rs:
$(diff <(echo "$readme_block") <(echo "$example_body"))"

echo "--- batch worker, twice"
"$bin/examples/batch_worker" "$work/batch" 2>"$work/run1.log"
"$bin/examples/batch_worker" "$work/batch" 2>"$work/run2.log"
grep -q "memory capture written: trigger share-75" "$work/run1.log" || fail "no share-75 capture: $(cat "$work/run1.log")"
grep -q "the newest of 3 captures" "$work/run2.log" || fail "no post-mortem: $(cat "$work/run2.log")"
newest=$(ls -d "$work"/batch/capture-* | sort | tail -1)
"$bin/memwatch" report "$newest" -o "$work/report1" >"$work/report1.txt"
grep -q "batch_worker::main" "$work/report1.txt" || fail "report lacks the job's frame: $(cat "$work/report1.txt")"

echo "--- axum quick start"
port=$((20000 + RANDOM % 20000))   # a clash only fails the curl loop below, loudly
url="http://127.0.0.1:$port"
(cd "$work" && ADMIN_TOKEN=s3cret MEMWATCH_LIMIT_BYTES=$((1 << 30)) LISTEN="127.0.0.1:$port" \
  exec "$OLDPWD/$bin/examples/quickstart" 2>"$work/quickstart.log") &
server=$!
for _ in $(seq 100); do curl -fs "$url/" >/dev/null && break; sleep 0.1; done
auth=(-H "authorization: Bearer s3cret")
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/debug/memory")" = 401 ] || fail "memory JSON without a token"
# (`grep -q` on a variable: on a pipe it may close early, and pipefail would fail the curl.)
memory=$(curl -fs "${auth[@]}" "$url/debug/memory") || fail "no memory JSON"
grep -q '"limit_source":"config"' <<<"$memory" || fail "recorder not armed: $memory"
curl -fs "${auth[@]}" -X POST "$url/debug/memory/capture" >/dev/null
for _ in $(seq 100); do grep -q "memory capture written: trigger manual" "$work/quickstart.log" && break; sleep 0.1; done
grep -q "memory capture written: trigger manual" "$work/quickstart.log" || fail "no capture line: $(cat "$work/quickstart.log")"
metrics=$(curl -fs "$url/metrics") || fail "no metrics"
grep -q "memwatch_recorder_captures_total 1" <<<"$metrics" || fail "metrics lack the capture: $(grep memwatch_recorder <<<"$metrics")"
svg=$(curl -fs "${auth[@]}" "$url/debug/pprof/heap?format=svg") || fail "no flame graph"
grep -q "<svg" <<<"$svg" || fail "the flame graph is not SVG"
"$bin/memwatch" report "$(ls -d "$work"/memwatch/capture-* | tail -1)" -o "$work/report2" >"$work/report2.txt"
grep -q "top allocation sites" "$work/report2.txt" || fail "quick start report: $(cat "$work/report2.txt")"
echo "memwatch examples: ok"
