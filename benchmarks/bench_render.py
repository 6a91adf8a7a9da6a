"""Grouped plans against `--detail full`: lines, markdown size and render time, one run.

    python benchmarks/bench_render.py                  # 100,000 devices, 1% changed 4 ways
    python benchmarks/bench_render.py --devices 20000 --changed 100

Prints ratios measured in this run (grouped / full); nothing is asserted here.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from rrpcsync.model import DesiredDevice, DeviceRecord, Status
from rrpcsync.planning.planner import make_plan
from rrpcsync.planning.render import MARKDOWN_LIMIT, plan_markdown, plan_text


def payload(interval: int, unit: str = "C") -> str:
    return f'{{"method":"set","params":{{"interval":{interval},"unit":"{unit}"}}}}'


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fleet_plan(devices: int, changed_percent: float):  # type: ignore[no-untyped-def]
    ways = [payload(45), payload(60), payload(30, "F"), payload(90, "K")]
    step = max(1, round(100 / changed_percent))
    desired, records = [], {}
    for i in range(devices):
        key = f"P{i % 7}/dev-{i:06d}"
        text = ways[(i // step) % len(ways)] if i % step == 0 else payload(30)
        product, _, name = key.partition("/")
        desired.append(DesiredDevice(key, product, name, f"m{i % 7}", text, sha(text), "f", i))
        old = payload(30)
        records[key] = DeviceRecord(Status.APPLIED, sha(old), old, sha(old), manifest=f"m{i % 7}")
    return make_plan(desired, records, lineage="L", serial=1)


def timed(make):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = make()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=1.0, help="percent of devices changed")
    args = parser.parse_args()
    plan = fleet_plan(args.devices, args.changed)
    grouped, grouped_s = timed(lambda: list(plan_text(plan)))
    full, full_s = timed(lambda: list(plan_text(plan, grouped=False)))
    md, md_s = timed(lambda: plan_markdown(plan))
    md_full, md_full_s = timed(lambda: plan_markdown(plan, grouped=False))
    print(f"{args.devices:,} devices, {len(plan.changes):,} changed:")
    print(
        f"  text lines: grouped {len(grouped):,}, full {len(full):,} "
        f"(ratio {len(grouped) / len(full):.4f}); time ratio {grouped_s / full_s:.2f}"
    )
    left_out = "not shown" in md
    print(
        f"  markdown: grouped {len(md):,} chars (limit {MARKDOWN_LIMIT:,}, every change shown: "
        f"{not left_out}), full {len(md_full):,} chars (changes left out: "
        f"{'not shown' in md_full}); time ratio {md_s / md_full_s:.2f}"
    )


if __name__ == "__main__":
    main()
