"""Run every benchmark and print ratios measured in this one run.

    python benchmarks/run.py                 # the sizes of docs/performance.md (a few minutes)
    python benchmarks/run.py --smoke         # tiny sizes: checks the benchmarks still run
    python benchmarks/run.py --only plan --files 200 --devices 100
    python benchmarks/run.py --only inventory   # 100 CSV inventories x 1,000 rows

Targets (issue "Performance"): plan <= 1.5x a bare CSafeLoader load, peak RSS <= 400 MiB,
no-op apply <= plan and no state rewrite; apply >= 90% of min(parallelism/latency, rate) with
client CPU <= 1.5 ms/request; rate within 5% over any 10 s window; bytes written <= 3x the final
state. Traffic goes only to the emulator on 127.0.0.1.
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


def mark(ok: bool) -> str:
    return "OK" if ok else "MISSED"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    kinds = ["plan", "inventory", "apply", "rate", "writes"]
    parser.add_argument("--only", choices=kinds, action="append")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=100, help="devices per file")
    parser.add_argument("--writes", type=int, default=100_000, help="devices for state writes")
    args = parser.parse_args()
    only = set(args.only or kinds)
    if args.smoke:
        sizes = {"files": 70, "devices": 5, "writes": 300, "inventories": 70, "rows": 5}
        cases = [(0.05, 10, 100)]
        rate = (40.0, 0.5)
    else:
        sizes = {"files": args.files, "devices": args.devices, "writes": args.writes}
        sizes |= {"inventories": 100, "rows": 1000}  # 100,000 devices from CSV files
        cases = [(0.2, 50, 2000), (0.2, 200, 4000), (2.0, 50, 500), (2.0, 200, 1000)]
        rate = (20.0, 40.0)
    lines: list[str] = []
    if "plan" in only:
        lines += run_plan(sizes["files"], sizes["devices"])
    if "inventory" in only:
        lines += run_inventory(sizes["inventories"], sizes["rows"])
    if "apply" in only:
        lines += run_throughput(cases)
    if "rate" in only:
        lines += run_rate(*rate) if not args.smoke else ["rate holding: skipped in --smoke"]
    if "writes" in only:
        lines += run_writes(sizes["writes"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
