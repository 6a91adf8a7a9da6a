"""Run every benchmark and print ratios measured in this one run.

    python benchmarks/run.py                 # the table of docs/performance.md (several minutes)
    python benchmarks/run.py --huge          # ... with the 1,000,000-device plan
    python benchmarks/run.py --scale         # plan at 10k, 100k, 300k devices (1M with --huge)
    python benchmarks/run.py --smoke         # tiny sizes: checks the benchmarks still run (CI)
    python benchmarks/run.py --only startup --only apply
    python benchmarks/run.py --only inventory   # 100 CSV inventories x 1,000 rows
    python benchmarks/run.py --only report      # the fleet report of 100,000 devices

Every ratio's two sides are measured in the same run, interleaved, and medians are taken:
the machines these run on are shared and noisy. Traffic goes only to the emulator on
127.0.0.1 (in its own process). Targets (issues "Performance" and "Performance II"):

    plan, 100,000 devices (JSON state)      <= 1.5x a bare CSafeLoader parse of the files
    plan, 1,000,000 devices                 <= 1.8x the parse, peak RSS <= 1.5 GiB
    apply CPU per request, 200 in flight    <= 2x a bare aiohttp client's
    apply throughput, 200 in flight         >= 0.97x the bare client's
    rrpcsync --version                      <= 4x python -c pass
    rrpcsync validate (one file)            <= 6x python -c pass
    --rate auto against a 15/s and a 60/s limit: held rate within 10%
    (and from issue "Performance": no-op apply, throughput of ideal, rate holding, writes)
    report --html, 100,000 devices          page <= about 5 MB (also when every device failed)
    state stores, 100,000 devices, 1% changed: a SQL apply writes <= 3x the changed records
    plus a constant; plan from a SQL store <= 1.3x the parse (a PostgreSQL server the
    benchmark starts itself listens on 127.0.0.1)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import bench_apply
import bench_inventory
import bench_plan
import bench_report
import bench_startup
import bench_stores

GIB = 1024


def mark(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def run_table(smoke: bool, huge: bool, only: set[str]) -> list[str]:
    lines: list[str] = []
    if "plan" in only:
        sizes = [1_000] if smoke else [100_000, *([1_000_000] if huge else [])]
        points = [bench_plan.scale_point(n, 1 if smoke or n > 100_000 else 3) for n in sizes]
        lines += bench_plan.scale_report(points, {100_000: 1.5, 1_000_000: 1.8})
        for point in points:
            if point["devices"] == 1_000_000:
                peak = point["peak_rss_mib"]
                lines.append(
                    f"  1M peak RSS {peak / GIB:.2f} GiB (target <= 1.5 GiB)  "
                    f"{mark(peak <= 1.5 * GIB)}"
                )
        if not huge and not smoke:
            lines.append("  1,000,000 devices: run with --huge")
    if "apply" in only:
        latency, count, rounds = (0.05, 200, 1) if smoke else (0.2, 4000, 3)
        parallelism = 20 if smoke else 200
        r = bench_apply.versus_bare(latency, parallelism, count, rounds)
        ours, bare = r["ours"], r["bare"]
        lines += [
            f"apply vs a bare aiohttp client, {parallelism} in flight, {latency:g} s latency, "
            f"{count:,} requests (median of {rounds}):",
            f"  client CPU {ours['cpu_ms_per_request']:.3f} ms/request vs "
            f"{bare['cpu_ms_per_request']:.3f} = {r['cpu_ratio']:.2f}x (target <= 2x)  "
            f"{mark(r['cpu_ratio'] <= 2)}",
            f"  throughput {ours['rate']:.0f} req/s vs {bare['rate']:.0f} = "
            f"{r['rate_ratio']:.2f}x (target >= 0.97x)  {mark(r['rate_ratio'] >= 0.97)}",
        ]
    if "startup" in only:
        lines += bench_startup.report(bench_startup.bench(3 if smoke else 15))
    if "auto" in only:
        lines.append("--rate auto against the emulator's limit:")
        for limit, count in [(15.0, 60), (60.0, 240)] if smoke else [(15.0, 150), (60.0, 900)]:
            r = bench_apply.auto_rate(limit, count)
            off = abs(r["held"] - limit) / limit
            lines.append(
                f"  limit {limit:g}/s: held {r['held']:.1f}/s, off by {off:.1%} (target <= 10%), "
                f"{r['refused']} of {r['requests']} requests refused  {mark(off <= 0.1)}"
            )
    return lines


def run_scale(huge: bool) -> list[str]:
    sizes = [10_000, 100_000, 300_000, *([1_000_000] if huge else [])]
    points = [bench_plan.scale_point(n, 3 if n <= 10_000 else 1) for n in sizes]
    return bench_plan.scale_report(points, {100_000: 1.5, 1_000_000: 1.8})


def run_plan(files: int, devices: int) -> list[str]:
    return bench_plan.report(bench_plan.bench(files, devices))


def run_inventory(manifests: int, rows: int) -> list[str]:
    return bench_inventory.report(bench_inventory.bench(manifests, rows))


def run_throughput(cases: list[tuple[float, int, int]]) -> list[str]:
    lines = ["apply throughput (emulator in its own process):"]
    for latency, parallelism, count in cases:
        r = bench_apply.throughput(latency, parallelism, count)
        ok = r["fraction_of_ideal"] >= 0.9 and r["cpu_ms_per_request"] <= 1.5
        lines.append(
            f"  latency {latency:>4.1f}s parallelism {parallelism:>3}: {r['rate']:7.1f} req/s = "
            f"{r['fraction_of_ideal']:.0%} of ideal {r['ideal']:.0f}/s; client CPU "
            f"{r['cpu_ms_per_request']:.2f} ms/req; emulator CPU "
            f"{r['emulator_cpu_ms_per_request']:.2f} ms/req; naive loop {r['naive_rate']:.1f} "
            f"req/s, speedup {r['speedup_over_naive']:.0f}x  {mark(ok)}"
        )
    return lines


def run_rate(rate: float, seconds: float) -> list[str]:
    r = bench_apply.rate_holding(rate, seconds)
    ok = r["worst_window_deviation"] <= 0.05
    return [
        f"rate holding: --rate {rate:g}, {r['requests']} requests over {r['span']:.1f}s: worst "
        f"10 s window off by {r['worst_window_deviation']:.1%} (target <= 5%)  {mark(ok)}"
    ]


def run_writes(count: int) -> list[str]:
    r = bench_apply.state_writes(count)
    ok = r["written_over_final"] <= 3
    return [
        f"state writes: {count:,} devices applied: {r['bytes_written']:,} bytes written for a "
        f"{r['final_state_bytes']:,}-byte state = {r['written_over_final']:.2f}x (target <= 3x) "
        f" {mark(ok)}"
    ]


ALL = [
    "plan",
    "apply",
    "startup",
    "auto",
    "noop",
    "inventory",
    "throughput",
    "rate",
    "writes",
    "report",
    "stores",
    "stores-plan",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--scale", action="store_true", help="plan at 10k, 100k, 300k devices")
    parser.add_argument("--huge", action="store_true", help="include 1,000,000 devices")
    parser.add_argument("--only", choices=ALL, action="append")
    parser.add_argument("--files", type=int, default=1000, help="files for the no-op apply")
    parser.add_argument("--devices", type=int, default=100, help="devices per file")
    parser.add_argument("--writes", type=int, default=100_000, help="devices for state writes")
    args = parser.parse_args()
    if args.scale:
        print("\n".join(run_scale(args.huge)))
        return
    only = set(args.only or ALL)
    lines = run_table(args.smoke, args.huge, only)
    if args.smoke:
        files, devices, writes = 70, 5, 300
        inventories, rows = 70, 5
        cases = [(0.05, 10, 100)]
    else:
        files, devices, writes = args.files, args.devices, args.writes
        inventories, rows = 100, 1000  # 100,000 devices from CSV files
        cases = [(0.2, 50, 2000), (0.2, 200, 4000), (2.0, 50, 500), (2.0, 200, 1000)]
    if "noop" in only:
        lines += run_plan(files, devices)
    if "inventory" in only:
        lines += run_inventory(inventories, rows)
    if "throughput" in only:
        lines += run_throughput(cases)
    if "rate" in only:
        lines += run_rate(20.0, 40.0) if not args.smoke else ["rate holding: skipped in --smoke"]
    if "writes" in only:
        lines += run_writes(writes)
    if "report" in only:
        lines += bench_report.report(bench_report.bench(files, devices))
    if "stores" in only:  # 100,000 devices at the default sizes, 1% changed
        lines += bench_stores.report(bench_stores.bench(files, devices))
    if "stores-plan" in only and "stores" not in only:  # the plan part of "stores" alone
        lines += bench_stores.report(bench_stores.bench(files, devices, plan_only=True))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
