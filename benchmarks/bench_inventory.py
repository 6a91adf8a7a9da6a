"""Plan at scale from inventories: `rrpcsync plan` of manifests whose devices come from CSV files
(`spec.devicesFrom`), with selector overrides and a window, vs a bare parse of the same data
(csv.reader of every row + CSafeLoader of every manifest), both measured in this one run.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import peak_rss_mib_children, run_cli, write_state

from rrpcsync.manifests.loader import discover, load_manifests

MANIFEST = """\
apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata:
  name: meters-{index:04d}
  labels: {{site: site-{site}, role: meter}}
spec:
  productId: MTR{product:02d}
  payload:
    method: set_config
    params: {{interval: 60, unit: kWh, upload: hourly, thresholds: {{low: 1, high: 90}}}}
  overrides:
    - selector: line in (1,2)
      payload: {{params: {{upload: realtime, interval: 10}}}}
    - selector: hw=rev-a
      payload: {{params: {{interval: 300}}}}
    - selector: hw=rev-a,line
      payload: {{params: {{batch: 10}}}}
    - selector: floor=9
      payload: {{params: {{thresholds: {{high: 70}}}}}}
  windows:
    - {{start: "00:00", end: "24:00", timezone: Asia/Shanghai}}
  devicesFrom: [inventory/part-{index:04d}.csv]
"""


def write_inventory_fleet(folder: Path, manifests: int, rows: int) -> tuple[list[Path], list[Path]]:
    """`manifests` manifest files, each with its own CSV inventory of `rows` devices."""
    (folder / "inventory").mkdir(parents=True, exist_ok=True)
    yamls, csvs = [], []
    for index in range(manifests):
        manifest = folder / f"meters-{index:04d}.yaml"
        text = MANIFEST.format(index=index, site=index % 17, product=index % 50)
        manifest.write_text(text, "utf-8")
        inventory = folder / "inventory" / f"part-{index:04d}.csv"
        lines = ["name,line,floor,rack,hw"]
        for row in range(rows):
            line = ("1", "2", "")[row % 3]
            hw = "rev-a" if row % 5 == 0 else "rev-b"
            lines.append(f"meter-{index:04d}-{row:05d},{line},{row % 10},r{row % 40},{hw}")
        inventory.write_text("\n".join(lines) + "\n", "utf-8")
        yamls.append(manifest)
        csvs.append(inventory)
    return yamls, csvs


def bare_parse(yamls: list[Path], csvs: list[Path]) -> float:
    """What any tool reading this data must do: parse the YAML and read every CSV row."""
    started = time.perf_counter()
    for path in yamls:
        with open(path, encoding="utf-8") as handle:
            for _ in yaml.load_all(handle.read(), Loader=yaml.CSafeLoader):
                pass
    for path in csvs:
        with open(path, encoding="utf-8", newline="") as handle:
            for _ in csv.reader(handle):
                pass
    return time.perf_counter() - started


def bench(manifests: int, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-inventory-") as tmp:
        root = Path(tmp)
        fleet = root / "configs"
        yamls, csvs = write_inventory_fleet(fleet, manifests, rows)
        assert len(discover([fleet])[0]) == manifests  # the CSV files are not manifests
        state_path = root / "state.json"
        total = write_state(fleet, state_path, changed_every=100)
        env = {**os.environ, "RRPCSYNC_ACCESS_TOKEN": "unused"}
        env.pop("GITHUB_ACTIONS", None)
        bare = bare_parse(yamls, csvs)
        args = ["-q", "plan", str(fleet), "--state", str(state_path), "--format", "json"]
        plan_time, code, tail = run_cli(args, env)
        if code != 0:
            raise RuntimeError(f"plan failed ({code}): {tail}")
        rss = peak_rss_mib_children()
        bare = min(bare, bare_parse(yamls, csvs))  # the machine is noisy: the faster of two
        started = time.perf_counter()
        loaded = load_manifests([fleet], jobs=1)  # manifests + inventories, no state, no diff
        load_time = time.perf_counter() - started
        assert loaded.ok and len(loaded.devices) == total
    return {
        "manifests": manifests,
        "devices": total,
        "bare_parse_s": bare,
        "plan_s": plan_time,
        "plan_over_parse": plan_time / bare,
        "load_s": load_time,
        "load_over_parse": load_time / bare,
        "peak_rss_mib": rss,
    }


def report(result: dict[str, Any]) -> list[str]:
    return [
        f"plan from inventories: {result['devices']:,} devices in {result['manifests']:,} "
        "CSV files (4 overrides and a window per manifest)",
        f"  bare parse (csv.reader + CSafeLoader) {result['bare_parse_s']:.2f} s",
        f"  rrpcsync plan (end to end)            {result['plan_s']:.2f} s",
        f"  plan / bare parse ratio               {result['plan_over_parse']:.2f}x",
        f"  load only (in process, one worker)    {result['load_s']:.2f} s = "
        f"{result['load_over_parse']:.1f}x bare (devices built, overrides merged, no state)",
        f"  peak RSS                              {result['peak_rss_mib']:.0f} MiB",
    ]


if __name__ == "__main__":
    print("\n".join(report(bench(int(sys.argv[1]), int(sys.argv[2])))))
