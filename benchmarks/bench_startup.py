"""Start-up cost: `rrpcsync --version` and `rrpcsync validate` of one file vs `python -c pass`.

Each command runs `rounds` times, interleaved with the baseline, and the ratio is of medians.
Bytecode caching is on (into a temporary PYTHONPYCACHEPREFIX, after one warm-up run) as for an
installed package, even when the caller sets PYTHONDONTWRITEBYTECODE.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import manifest_yaml

CONSOLE = "import sys; from rrpcsync.cli import main; sys.argv[0] = 'rrpcsync'; main()"


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr[-300:]!r}")
    return elapsed


def bench(rounds: int) -> dict[str, Any]:
    import random

    with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-startup-") as tmp:
        manifest = Path(tmp, "fleet.yaml")
        manifest.write_text(manifest_yaml(0, 100, random.Random(7)), "utf-8")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp, "pycache"))
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "rrpcsync --version": [sys.executable, "-c", CONSOLE, "--version"],
            "rrpcsync validate (one file)": [
                sys.executable,
                "-c",
                CONSOLE,
                "-q",
                "validate",
                str(manifest),
            ],
        }
        for argv in commands.values():  # warm-up: writes the bytecode caches
            _timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, argv in commands.items():
                times[name].append(_timed(argv, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python -c pass"]
    return {
        "rounds": rounds,
        "medians": medians,
        "ratios": {n: m / base for n, m in medians.items()},
    }


TARGETS = {"rrpcsync --version": 4.0, "rrpcsync validate (one file)": 6.0}


def report(result: dict[str, Any]) -> list[str]:
    base = result["medians"]["python -c pass"]
    lines = [
        f"start-up (median of {result['rounds']} interleaved runs; "
        f"python -c pass {base * 1000:.0f} ms):"
    ]
    for name, target in TARGETS.items():
        ratio = result["ratios"][name]
        mark = "OK" if ratio <= target else "MISSED"
        lines.append(
            f"  {name:<30} {result['medians'][name] * 1000:5.0f} ms = {ratio:.2f}x python -c pass "
            f"(target <= {target:g}x)  {mark}"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(report(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 15))))
