#!/usr/bin/env bash
# Ingest into NATS JetStream through engine-gateway versus a direct async-nats publisher, against
# one fresh nats-server, alternated for several rounds (crates/gateway/examples/nats_bench.rs),
# release build.
# Writes bench/results/nats-ingest.md. Extra arguments go to the example
# (--streams N --payload BYTES --total-mib N --rounds N). NATS_OUT overrides the result file.
set -euo pipefail
cd "$(dirname "$0")/.."
nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
cargo build --release --locked -p engine-gateway --bin engine-gateway --example nats_bench
out=${NATS_OUT:-bench/results/nats-ingest.md}
{
  echo "# NATS JetStream ingest: gateway vs direct publisher"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)"
  echo "- nats-server: $($nats_server --version), one node, file storage, on the same machine"
  echo "- every path: one message per payload, gateway headers + Nats-Msg-Id +"
  echo "  Nats-Expected-Last-Subject-Sequence, ack awaited before the next message of a stream;"
  echo "  direct and gateway alternate round by round into fresh streams; CPU-s/GiB from"
  echo "  /proc/PID/stat (utime + stime) around each run; ratios are medians over the rounds"
  echo
  target/release/examples/nats_bench --gateway target/release/engine-gateway \
    --nats-server "$nats_server" "$@"
} > "$out"
cat "$out"
