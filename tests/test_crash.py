"""Killed and interrupted applies: nothing acknowledged is lost or sent twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rrpcsync.state.jsonfile import load_state

from .helpers import ROOT, manifest_text, write

TOKEN = "emulator-token"


def start_apply(workdir: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RRPCSYNC_ACCESS_TOKEN": TOKEN,
        "RRPCSYNC_ENDPOINT": url,
        "PYTHONPATH": str(ROOT),
    }
    args = ["apply", "configs", "--auto-approve", "--parallelism", "4", "--rate", "1000", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_requests(emu: Any, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while emu.stats(include_log=False)["requests_total"] < count:
        assert time.monotonic() < deadline, "apply did not start sending"
        time.sleep(0.01)


def requests_per_device(emu: Any) -> dict[str, int]:
    per = emu.stats(include_log=False)["per_device"]
    return {key: info["requests"] for key, info in per.items() if info["requests"]}


def make_fleet(tmp_path: Path, count: int) -> list[str]:
    names = [f"d{i:03d}" for i in range(count)]
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[" + ", ".join(names) + "]"))
    return [f"P1/{name}" for name in names]


def test_sigkill_mid_run_loses_no_reply_and_resends_no_acknowledged_device(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.1}})
    keys = make_fleet(tmp_path, 60)
    proc = start_apply(tmp_path, emu.url)
    wait_for_requests(emu, 15)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.3)  # let the emulator finish the requests that were in flight

    journal = tmp_path / "rrpcsync.state.json.journal"
    assert journal.exists()
    state = load_state(tmp_path / "rrpcsync.state.json")  # replays the journal
    applied = {k for k, r in state.devices.items() if r.status.value == "applied"}
    pending = {k for k, r in state.devices.items() if r.status.value == "pending"}
    assert applied, "some replies were journaled before the kill"
    acked_by_emulator = {k for k, n in requests_per_device(emu).items() if n}
    assert applied <= acked_by_emulator
    # pending: journaled just before the request left; it may or may not have arrived
    assert pending.isdisjoint(applied)

    plan = subprocess.run(
        [sys.executable, "-m", "rrpcsync", "plan", "configs", "--format", "json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )

    planned = {c["key"] for c in json.loads(plan.stdout)["changes"]}
    assert planned == set(keys) - applied

    before = requests_per_device(emu)
    proc = start_apply(tmp_path, emu.url)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    after = requests_per_device(emu)
    for key in applied:
        assert after[key] == before[key] == 1, f"{key} was sent again"
    final = load_state(tmp_path / "rrpcsync.state.json")
    assert {k for k, r in final.devices.items() if r.status.value == "applied"} == set(keys)
    assert not journal.exists()
    assert emu.stats(include_log=False)["concurrency_violations"] == 0


def test_sigint_finishes_in_flight_saves_and_exits_130(tmp_path: Path, emulator: Any) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.3}})
    make_fleet(tmp_path, 40)
    proc = start_apply(tmp_path, emu.url)
    wait_for_requests(emu, 5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    state = load_state(tmp_path / "rrpcsync.state.json")
    statuses = {r.status.value for r in state.devices.values()}
    assert statuses == {"applied"}  # in-flight requests finished; nothing left pending
    sent = requests_per_device(emu)
    assert set(state.devices) == set(sent)
    assert len(sent) < 40
    assert not (tmp_path / "rrpcsync.state.json.journal").exists()
    assert "not sent" in out
