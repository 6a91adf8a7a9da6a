"""The fleet report at scale: `rrpcsync report --html` vs `rrpcsync plan` of the same fleet.

Both run in this one process, side by side, so the ratio holds on a noisy machine. The state
mixes every category (12% failed with their own messages, 5% outdated, 3% pending, 2% never
sent); the page's size is measured for it and for a fleet where every device failed.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_fleet

from rrpcsync import api
from rrpcsync.manifests.loader import load_manifests
from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.report.html import render_html
from rrpcsync.report.model import MANIFEST, PRODUCT, parse_group_by
from rrpcsync.state import RunRecord, open_store
from rrpcsync.state.jsonfile import load_state, save_state


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


GROUPS = (MANIFEST, PRODUCT, parse_group_by("label:site"))


def record(device: Any, index: int, failed_share: int) -> DeviceRecord | None:
    roll = index * 7919 % 100
    if roll < failed_share:
        message = f"{device.key} did not answer within 5 s (attempt {index % 3 + 1})"
        error = ErrorInfo(f"FailedOperation.Code{index % 7}", message, "2026-11-29T00:00:00Z")
        return DeviceRecord(Status.FAILED, attempts=3, last_error=error, manifest=device.manifest)
    if roll < failed_share + 5:
        old = "{}"  # an older payload than the manifests declare: outdated
        return DeviceRecord(Status.APPLIED, sha256(old), old, manifest=device.manifest)
    if roll < failed_share + 8:
        return DeviceRecord(Status.PENDING, manifest=device.manifest)
    if roll < failed_share + 10:
        return None
    return DeviceRecord(
        Status.APPLIED,
        device.payload_sha256,
        device.payload,
        device.payload_sha256,
        reply_text='{"code":0}',
        applied_at="2026-11-29T00:00:00Z",
        attempts=1,
        manifest=device.manifest,
    )


def write_state(folder: Path, state_path: Path, failed_share: int, runs: int) -> int:
    desired = load_manifests([folder]).devices
    state = load_state(state_path)
    state.devices.clear()
    for index, device in enumerate(desired):
        found = record(device, index, failed_share)
        if found is not None:
            state.devices[device.key] = found
    save_state(state)
    store = open_store(str(state_path))
    if not store.runs():
        for number in range(runs):
            store.record_run(run_record(number))
    return len(desired)


def run_record(number: int) -> RunRecord:
    day = f"2026-{number // 28 % 12 + 1:02d}-{number % 28 + 1:02d}"
    return RunRecord(
        f"{day}T06:17:00Z", f"{day}T06:21:30Z", "apply",
        f"https://github.com/acme/fleet/actions/runs/{number}", f"{number:040x}",
        500, 480, 20, {"FailedOperation.DeviceOffline": 20}, {"applied": 480, "failed": 20},
    )  # fmt: skip


def timed_report(folder: Path, state_path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    report = api.fleet_report([str(folder)], open_store(str(state_path)), group_by=GROUPS)
    page = render_html(report, sources=[str(folder)])
    return time.perf_counter() - started, len(page.encode("utf-8"))


def timed_plan(folder: Path, state_path: Path) -> float:
    started = time.perf_counter()
    api.plan_manifests([str(folder)], open_store(str(state_path)))
    return time.perf_counter() - started


def bench(files: int, devices: int, runs: int = 365) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_fleet(Path(tmp) / "configs", files, devices)
        state_path = Path(tmp) / "rrpcsync.state.json"
        count = write_state(folder, state_path, failed_share=12, runs=runs)
        timed_plan(folder, state_path)  # warm the file cache for both
        plan_s = timed_plan(folder, state_path)
        report_s, size = timed_report(folder, state_path)
        write_state(folder, state_path, failed_share=100, runs=runs)
        _, worst = timed_report(folder, state_path)
    return {
        "devices": count,
        "runs": runs,
        "plan_seconds": plan_s,
        "report_seconds": report_s,
        "report_over_plan": report_s / plan_s,
        "page_bytes": size,
        "page_bytes_all_failed": worst,
    }


def report(r: dict[str, Any]) -> list[str]:
    limit = 5_000_000
    ok = r["page_bytes"] <= limit and r["page_bytes_all_failed"] <= limit
    return [
        f"report: {r['devices']:,} devices, {r['runs']} runs: report --html "
        f"{r['report_seconds']:.2f}s = {r['report_over_plan']:.2f}x plan "
        f"({r['plan_seconds']:.2f}s); page {r['page_bytes'] / 1e6:.2f} MB, "
        f"{r['page_bytes_all_failed'] / 1e6:.2f} MB when every device failed "
        f"(target <= 5 MB)  {'OK' if ok else 'MISSED'}"
    ]


if __name__ == "__main__":
    print("\n".join(report(bench(int(sys.argv[1]), int(sys.argv[2])))))
