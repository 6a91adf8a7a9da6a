"""Plan at scale: `rrpcsync plan` end to end vs a bare CSafeLoader load of the same files.

Both are measured in this one run, side by side, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_fleet

from rrpcsync.manifests.loader import discover, load_manifests
from rrpcsync.model import DeviceRecord, Status, payload_digest
from rrpcsync.state.jsonfile import load_state, save_state


def bare_load(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for _ in yaml.load_all(handle.read(), Loader=yaml.CSafeLoader):
                pass
    return time.perf_counter() - started


def write_state(folder: Path, state_path: Path, changed_every: int) -> int:
    """A state that holds every device; every `changed_every`-th one (0: none) is outdated."""
    desired = load_manifests([folder]).devices
    state = load_state(state_path)
    for index, device in enumerate(desired):
        changed = changed_every > 0 and index % changed_every == 0
        payload = device.payload + " " if changed else device.payload
        digest = payload_digest(payload) if changed else device.payload_sha256
        state.devices[device.key] = DeviceRecord(
            status=Status.APPLIED,
            payload_sha256=digest,
            payload=payload,
            target_sha256=digest,
            request_id="00000000-0000-4000-8000-000000000000",
            message_id=index,
            reply_base64="eyJjb2RlIjowfQ==",
            reply_text='{"code":0}',
            applied_at="2026-11-29T00:00:00Z",
            attempts=1,
            manifest=device.manifest,
        )
    save_state(state)
    return len(desired)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rrpcsync", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - started
    return elapsed, proc.returncode, proc.stdout[-300:] + proc.stderr[-300:]


def run_cli_measured(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB of the process and its workers) of one `rrpcsync` run."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed ({proc.returncode}): {errors[-300:]!r}")
    return elapsed, usage.ru_maxrss / 1024  # the child's own and its waited-for workers'


def scale_point(devices: int, rounds: int, per_file: int = 100) -> dict[str, Any]:
    """Plan of `devices` (JSON state, 1% changed) vs a bare parse, `rounds` interleaved runs."""
    files = devices // per_file
    with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-scale-") as tmp:
        root = Path(tmp)
        fleet = write_fleet(root / "configs", files, per_file)
        state_path = root / "state.json"
        total = write_state(fleet, state_path, changed_every=100)
        paths, _ = discover([fleet])
        env = {**os.environ, "RRPCSYNC_ACCESS_TOKEN": "unused"}
        env.pop("GITHUB_ACTIONS", None)
        plan_args = ["-q", "plan", str(fleet), "--state", str(state_path), "--format", "json"]
        bares, plans, peaks = [], [], []
        for _ in range(rounds):
            bares.append(bare_load(paths))
            elapsed, peak = run_cli_measured(plan_args, env)
            plans.append(elapsed)
            peaks.append(peak)
    bare, plan = statistics.median(bares), statistics.median(plans)
    return {
        "devices": total,
        "rounds": rounds,
        "bare_s": bare,
        "plan_s": plan,
        "ratio": statistics.median(p / b for p, b in zip(plans, bares, strict=True)),
        "peak_rss_mib": max(peaks),
        "plan_s_per_100k": plan * 100_000 / total,
        "rss_mib_per_100k": max(peaks) * 100_000 / total,
    }


def scale_report(points: list[dict[str, Any]], targets: dict[int, float]) -> list[str]:
    lines = ["plan at scale (JSON state, 1% changed; medians of interleaved runs):"]
    for point in points:
        target = targets.get(point["devices"])
        verdict = ""
        if target is not None:
            ok = point["ratio"] <= target
            verdict = f" (target <= {target:g}x)  {'OK' if ok else 'MISSED'}"
        lines.append(
            f"  {point['devices']:>9,} devices: plan {point['plan_s']:6.2f} s = "
            f"{point['ratio']:.2f}x bare parse ({point['bare_s']:.2f} s){verdict}; "
            f"{point['plan_s_per_100k']:.2f} s and {point['rss_mib_per_100k']:.0f} MiB per 100k; "
            f"peak {point['peak_rss_mib']:.0f} MiB"
        )
    return lines


def peak_rss_mib_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench(files: int, devices: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-plan-") as tmp:
        root = Path(tmp)
        fleet = write_fleet(root / "configs", files, devices)
        state_path = root / "state.json"
        total = write_state(fleet, state_path, changed_every=100)
        paths, _ = discover([fleet])
        env = {**os.environ, "RRPCSYNC_ACCESS_TOKEN": "unused"}
        env.pop("GITHUB_ACTIONS", None)
        bare = bare_load(paths)
        plan_args = ["-q", "plan", str(fleet), "--state", str(state_path), "--format", "json"]
        plan_time, code, tail = run_cli(plan_args, env)
        if code != 0:
            raise RuntimeError(f"plan failed ({code}): {tail}")
        rss = peak_rss_mib_children()
        bare_again = bare_load(paths)  # the machine is noisy: take the faster of two
        bare = min(bare, bare_again)
        # a no-op apply: bring the 1% up to date first (offline), then apply again
        write_state(fleet, state_path, changed_every=0)
        serial_before = load_state(state_path).serial
        mtime_before = state_path.stat().st_mtime_ns
        apply_args = ["-q", "apply", str(fleet), "--state", str(state_path), "--auto-approve"]
        apply_time, code, tail = run_cli(apply_args, env)
        if code != 0:
            raise RuntimeError(f"no-op apply failed ({code}): {tail}")
        rewritten = state_path.stat().st_mtime_ns != mtime_before
        serial_after = load_state(state_path).serial
    return {
        "files": files,
        "devices": total,
        "bare_csafeloader_s": bare,
        "plan_s": plan_time,
        "plan_over_parse": plan_time / bare,
        "peak_rss_mib": rss,
        "noop_apply_s": apply_time,
        "noop_apply_over_plan": apply_time / plan_time,
        "noop_apply_rewrote_state": rewritten or serial_after != serial_before,
    }


def report(result: dict[str, Any]) -> list[str]:
    ok_ratio = result["plan_over_parse"] <= 1.5
    ok_rss = result["peak_rss_mib"] <= 400
    ok_noop = result["noop_apply_over_plan"] <= 1.1 and not result["noop_apply_rewrote_state"]
    return [
        f"plan: {result['devices']:,} devices in {result['files']:,} files",
        f"  bare CSafeLoader load     {result['bare_csafeloader_s']:.2f} s",
        f"  rrpcsync plan (end to end) {result['plan_s']:.2f} s",
        f"  plan / parse ratio         {result['plan_over_parse']:.2f}x  (target <= 1.5x) "
        f"{'OK' if ok_ratio else 'MISSED'}",
        f"  peak RSS                   {result['peak_rss_mib']:.0f} MiB  (target <= 400 MiB) "
        f"{'OK' if ok_rss else 'MISSED'}",
        f"  no-op apply / plan         {result['noop_apply_over_plan']:.2f}x, state rewritten: "
        f"{result['noop_apply_rewrote_state']}  {'OK' if ok_noop else 'MISSED'}",
    ]


if __name__ == "__main__":
    print("\n".join(report(bench(int(sys.argv[1]), int(sys.argv[2])))))
