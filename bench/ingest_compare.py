#!/usr/bin/env python3
"""Side-by-side medians of `gateway-bench ingest` result files, one column group per variant.

usage: bench/ingest_compare.py NAME=GLOB [NAME=GLOB ...] > table.md
  e.g. bench/ingest_compare.py before='/tmp/ab-before-*.json' after='/tmp/ab-after-*.json'

Each variant's files are rounds of the same run (alternated with the other variants'); every
figure is the median over its rounds. Shares are of each round's own disk limit.
"""
import glob
import json
import statistics
import sys


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def main():
    variants = []
    for arg in sys.argv[1:]:
        name, pattern = arg.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            sys.exit(f"no files match {pattern}")
        variants.append((name, [json.load(open(f)) for f in files]))
    first = variants[0][1][0]
    m = first["machine"]
    print(f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
          f"{m['data_fs']['fs_type']} on {m['data_fs']['device']}; {first['settings']['chunk_bytes']} B "
          f"chunks, {first['settings']['duration_s']:.0f} s per scenario")
    for name, reports in variants:
        limits = [r["limit"]["mib_per_s"] for r in reports]
        raws = [r["raw"]["mib_per_s"] for r in reports]
        idle = [r.get("idle_rss_mib") for r in reports]
        print(f"- {name}: {len(reports)} rounds, {reports[0]['settings']['server']}; disk limit "
              f"{min(limits):.0f}-{max(limits):.0f} MiB/s ({reports[0]['limit']['label']}, "
              f"{med([r['limit']['cpu_s_per_gib'] for r in reports]):.2f} CPU-s/GiB), one fdatasync "
              f"per chunk {min(raws):.0f}-{max(raws):.0f} MiB/s, idle RSS {med(idle):.1f} MiB")
    print()
    print("| streams | variant | MiB/s | share of limit | CPU-s/GiB | server / client cores "
          "| minor faults/GiB | p50 ms | p99 ms | peak RSS MiB | errors |")
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    streams = [s["streams"] for s in first["scenarios"]]
    for n in streams:
        for name, reports in variants:
            rows = [s for r in reports for s in r["scenarios"] if s["streams"] == n]
            print(f"| {n} | {name} | {med([s['mib_per_s'] for s in rows]):.1f} "
                  f"| {med([s['share_of_limit'] for s in rows]):.2f} "
                  f"| {med([s['cpu_s_per_gib'] for s in rows]):.2f} "
                  f"| {med([s.get('server_cores') for s in rows]):.2f} / "
                  f"{med([s.get('client_cores') for s in rows]):.2f} "
                  f"| {med([s['minor_faults_per_gib'] for s in rows]):.0f} "
                  f"| {med([s['latency']['p50_ms'] for s in rows]):.2f} "
                  f"| {med([s['latency']['p99_ms'] for s in rows]):.2f} "
                  f"| {med([s['peak_rss_mib'] for s in rows]):.1f} "
                  f"| {sum(s['error_total'] for s in rows)} |")


if __name__ == "__main__":
    main()
