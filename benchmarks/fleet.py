"""Generate a benchmark fleet: N manifest files x M devices, defaults, overrides and labels."""

from __future__ import annotations

import random
from pathlib import Path


def manifest_yaml(index: int, devices: int, rng: random.Random) -> str:
    lines = [
        "apiVersion: rrpcsync/v1",
        "kind: DeviceConfig",
        "metadata:",
        f"  name: fleet-{index:05d}",
        f"  labels: {{site: site-{index % 17}, tier: t{index % 3}}}",
        "spec:",
        f"  productId: PROD{index % 50:04d}",
        "  payload:",
        "    method: set_config",
        "    params:",
        f"      interval: {30 + index % 7}",
        "      unit: C",
        "      thresholds: {low: 10, high: 28}",
        "      tags: [a, b, c]",
        "  devices:",
    ]
    for number in range(devices):
        name = f"dev-{index:05d}-{number:04d}"
        roll = rng.random()
        if roll < 0.7:
            lines.append(f"    - {name}")
        elif roll < 0.85:
            lines.append(f"    - name: {name}")
            lines.append(f'      labels: {{floor: "{number % 9}"}}')
        else:
            lines.append(f"    - name: {name}")
            lines.append("      payload:")
            lines.append(f"        params: {{interval: {number % 60}, unit: null}}")
    return "\n".join(lines) + "\n"


def write_fleet(folder: Path, files: int, devices: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        sub = folder / f"group-{index // 100:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"fleet-{index:05d}.yaml").write_text(manifest_yaml(index, devices, rng), "utf-8")
    return folder
