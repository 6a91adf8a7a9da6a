"""Fault injection: the emulator's `faults:` settings, a 2,000-device apply through ~30% injected
faults, and a crash loop that SIGKILLs apply at random moments (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.client import RrpcClient
from rrpcsync.emulator import Emulator, FleetError, load_fleet
from rrpcsync.model import DeviceRecord, Status
from rrpcsync.state.jsonfile import State, backup_path, journal_path, load_state, lock_path

from .conftest import FLEET_TOKEN, StartEmulator
from .helpers import ROOT, write

STATE = "rrpcsync.state.json"

# The code the client records for each injected fault.
CLIENT_CODE = {
    "Fault.Reset": "Transport.ReadError",
    "Fault.Truncate": "Transport.ProtocolError",
    "Fault.HTML502": "HTTP.502",
    "Fault.Slow": "Transport.Timeout",
    "Fault.InternalError": "InternalError",
    "Fault.RateLimitBurst": "RequestLimitExceeded",
}


# --------------------------------------------------------------------------- helpers


def write_fleet(folder: Path, products: dict[str, int], version: dict[str, int]) -> list[str]:
    """One manifest per product with `count` devices d00000..; returns the device keys."""
    keys = []
    for product, count in products.items():
        names = [f"d{i:05d}" for i in range(count)]
        keys += [f"{product}/{name}" for name in names]
        text = (
            "apiVersion: rrpcsync/v1\n"
            "kind: DeviceConfig\n"
            f"metadata: {{name: fleet-{product.lower()}}}\n"
            "spec:\n"
            f"  productId: {product}\n"
            f"  payload: {{method: set_config, params: {{interval: 30, v: {version[product]}}}}}\n"
            "  devices: [" + ", ".join(names) + "]\n"
        )
        write(folder / "configs" / f"{product.lower()}.yaml", text)
    return keys


def start_apply(workdir: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RRPCSYNC_ACCESS_TOKEN": FLEET_TOKEN,
        "RRPCSYNC_ENDPOINT": url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "rrpcsync", "apply", "configs", "--auto-approve", *extra]
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def settle(emu: Emulator, timeout: float = 10.0) -> dict[str, Any]:
    """Stats once the requests of a finished (or killed) run have all been answered."""
    deadline = time.monotonic() + timeout
    previous = -1
    while True:
        stats = emu.stats(include_log=False)
        if stats["in_flight"] == 0 and stats["requests_total"] == previous:
            return emu.stats()
        assert time.monotonic() < deadline, "the emulator never went idle"
        previous = stats["requests_total"]
        time.sleep(0.05)


def is_private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def log_by_device(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in stats["log"]:
        entries.setdefault(entry["device"], []).append(entry)
    return entries


async def publish_all(url: str, count: int, timeout: float = 10.0) -> list[Any]:
    async with RrpcClient(url, FLEET_TOKEN, timeout=timeout) as client:
        return [await client.publish("P1", f"d{i}", f'{{"n":{i}}}') for i in range(count)]


# --------------------------------------------------------------------------- the emulator


@pytest.mark.parametrize(
    ("kind", "code", "applied"),
    [
        ("reset", "Transport.ReadError", {False, True}),
        ("truncate", "Transport.ProtocolError", {True}),
        ("html_502", "HTTP.502", {False, True}),
        ("slow", "Transport.Timeout", {True}),
        ("internal_error", "InternalError", {False, True}),
        ("rate_limit_burst", "RequestLimitExceeded", {False}),
    ],
)
def test_each_fault_reaches_the_client_as_a_transient_error_and_is_logged(
    emulator: StartEmulator, kind: str, code: str, applied: set[bool]
) -> None:
    faults = {"seed": 7, kind: 1.0, "slow_seconds": 0.4}
    emu = emulator({"auto_devices": True, "faults": faults})
    timeout = 0.15 if kind == "slow" else 10.0
    results = asyncio.run(publish_all(emu.url, 8, timeout=timeout))
    assert {(r.code, r.error_class) for r in results} == {(code, ErrorClass.TRANSIENT)}
    stats = emu.stats()
    fault_code = next(f for f, c in CLIENT_CODE.items() if c == code)
    assert stats["faults"] == {fault_code: 8}
    assert [entry["code"] for entry in stats["log"]] == [fault_code] * 8
    assert {entry["applied"] for entry in stats["log"]} == applied
    for entry in stats["log"]:  # "applied" in the log is exactly what the device acknowledged
        n = int(entry["device"].removeprefix("P1/d"))
        acked = stats["per_device"][entry["device"]]["acked"]
        assert acked == ([f'{{"n":{n}}}'] if entry["applied"] else [])


def test_faults_follow_the_seed_and_their_shares(emulator: StartEmulator) -> None:
    faults = {
        "seed": 3,
        "reset": 0.1,
        "html_502": 0.1,
        "internal_error": 0.1,
        "after_apply": 0.0,
    }
    emu = emulator({"auto_devices": True, "faults": faults})
    first = asyncio.run(publish_all(emu.url, 300))
    first_codes = [entry["code"] for entry in emu.stats()["log"]]
    assert 0.15 < sum(code != "OK" for code in first_codes) / 300 < 0.45
    assert not any(entry["applied"] for entry in emu.stats()["log"] if entry["code"] != "OK")
    emu.reset()  # the seeded sequence starts again
    asyncio.run(publish_all(emu.url, 300))
    assert [entry["code"] for entry in emu.stats()["log"]] == first_codes
    assert [r.ok for r in first] == [code == "OK" for code in first_codes]
    emu.configure({"faults": None})
    assert all(r.ok for r in asyncio.run(publish_all(emu.url, 20)))
    assert emu.stats()["faults"] == {}


def test_rate_limit_bursts_refuse_a_run_of_requests(emulator: StartEmulator) -> None:
    faults = {"seed": 1, "rate_limit_burst": 0.05, "rate_limit_burst_length": 6}
    emu = emulator({"auto_devices": True, "faults": faults})
    asyncio.run(publish_all(emu.url, 400))
    codes = "".join("B" if e["code"] == "Fault.RateLimitBurst" else "." for e in emu.stats()["log"])
    runs = [len(run) for run in codes.split(".") if run]
    assert runs and all(length % 6 == 0 for length in runs[:-1]), codes
    assert all(e["applied"] is False for e in emu.stats()["log"] if e["code"] != "OK")


def test_faults_over_http_need_a_valid_device_and_token(emulator: StartEmulator) -> None:
    emu = emulator({"devices": {"P1/d1": {}}, "faults": {"reset": 1.0}})
    body = {
        "Action": "AppPublishRRPCMessage",
        "RequestId": "r1",
        "AccessToken": "wrong",
        "ProductId": "P1",
        "DeviceName": "d1",
        "Payload": "x",
    }
    with httpx.Client(timeout=5, trust_env=False) as client:
        answer = client.post(emu.url, json=body).json()
        assert answer["Response"]["Error"]["Code"] == "InvalidParameterValue.InvalidAccessToken"
        with pytest.raises(httpx.TransportError):
            client.post(emu.url, json={**body, "AccessToken": FLEET_TOKEN})
    assert [e["code"] for e in emu.stats()["log"]] == [
        "InvalidParameterValue.InvalidAccessToken",
        "Fault.Reset",
    ]


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ({"reset": 1.5}, "faults.reset"),
        ({"reset": 0.6, "slow": 0.6}, "more than 1"),
        ({"resets": 0.1}, "unknown key 'resets'"),
        ({"seed": "one"}, "faults.seed"),
        ({"slow_seconds": -1}, "faults.slow_seconds"),
        ({"rate_limit_burst_length": 0}, "rate_limit_burst_length"),
        ({"after_apply": True}, "faults.after_apply"),
        ([0.1], "faults"),
    ],
)
def test_bad_fault_settings_are_refused(faults: Any, expected: str) -> None:
    with pytest.raises(FleetError, match="<fleet dict>") as caught:
        load_fleet({"faults": faults})
    assert expected in str(caught.value)


def test_fault_settings_round_trip_and_merge() -> None:
    fleet = load_fleet({"faults": {"seed": 1, "reset": 0.1, "slow": 0.2}})
    assert load_fleet(fleet.to_dict()) == fleet
    updated = fleet.updated({"faults": {"reset": None, "truncate": 0.3}})
    assert (updated.faults.reset, updated.faults.truncate, updated.faults.slow) == (0, 0.3, 0.2)
    assert not fleet.updated({"faults": None}).faults.active


# --------------------------------------------------------------------------- a fleet through faults

FAULTS = {
    "seed": 20240611,
    "reset": 0.06,
    "truncate": 0.05,
    "html_502": 0.06,
    "slow": 0.02,
    "slow_seconds": 3,
    "internal_error": 0.07,
    "after_apply": 0.5,
    "rate_limit_burst": 0.004,
    "rate_limit_burst_length": 8,
}
FAST = ("--parallelism", "64", "--rate", "3000", "--timeout", "2", "--retry-backoff", "0.01")


def check_run_against_emulator(
    keys: list[str], state: State, stats: dict[str, Any], sent: set[str], retries: int
) -> Counter[str]:
    """The state after one apply agrees with what the emulator saw during it.

    An "OK" answer the client did not get is one it stopped waiting for (`--timeout`, on a
    loaded machine): the only way a reply may go missing. The caller bounds their number.
    """
    entries = log_by_device(stats)
    per_device = stats["per_device"]
    outcome: Counter[str] = Counter()
    for key in keys:
        record: DeviceRecord = state.devices[key]
        outcome[record.status.value] += 1
        log = entries.get(key, [])
        if key not in sent:
            assert not log, f"{key} was not in the plan but was sent"
            continue
        assert record.attempts == len(log) == per_device[key]["requests"], key
        oks = [entry for entry in log if entry["code"] == "OK"]
        last = log[-1]
        assert record.request_id == last["request_id"], key
        if record.status is Status.APPLIED:
            # the emulator acknowledged exactly that payload, in the request the state names
            assert last["code"] == "OK" and last["applied"], (key, last)
            assert per_device[key]["acked"][-1] == record.payload, key
            assert record.reply_text == record.payload  # the fleet echoes
            assert record.last_error is None
            outcome["unheard_ok"] += len(oks) - 1
            continue
        assert record.status is Status.FAILED, (key, record.status)
        assert record.last_error is not None
        assert record.attempts == retries + 1, key  # only transient faults here
        outcome["unheard_ok"] += len(oks)
        expected = "Transport.Timeout" if last["code"] == "OK" else CLIENT_CODE[last["code"]]
        assert record.last_error.code == expected, (key, last, record.last_error)
    return outcome


def test_a_2000_device_fleet_through_30_percent_faults(
    tmp_path: Path, emulator: StartEmulator
) -> None:
    emu = emulator(
        {"auto_devices": True, "latency": 0.002, "default": {"reply": "echo"}, "faults": FAULTS}
    )
    keys = write_fleet(tmp_path, {"PA": 1000, "PB": 1000}, {"PA": 1, "PB": 1})
    state_file = tmp_path / STATE
    retries = 3

    # run 1: every device is new
    proc = start_apply(tmp_path, emu.url, *FAST, "--retries", str(retries))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err
    stats = settle(emu)
    state = load_state(state_file)
    assert set(state.devices) == set(keys)
    first = check_run_against_emulator(keys, state, stats, set(keys), retries)
    faults = stats["faults"]
    assert set(faults) == set(CLIENT_CODE), faults  # every kind of fault struck
    share = sum(faults.values()) / stats["requests_total"]
    assert 0.2 < share < 0.4, faults
    assert first["applied"] > 1900
    assert first["unheard_ok"] <= stats["requests_total"] // 100  # no reply goes missing
    assert (proc.returncode == 3) == bool(first["failed"])
    assert stats["concurrency_violations"] == 0
    assert not journal_path(state_file).exists()
    assert is_private(state_file)

    # run 2: half the fleet changes, and the failed devices are retried
    failed_before = {k for k, r in state.devices.items() if r.status is Status.FAILED}
    before = state.devices
    write_fleet(tmp_path, {"PA": 1000, "PB": 1000}, {"PA": 1, "PB": 2})
    emu.reset()
    proc = start_apply(tmp_path, emu.url, *FAST, "--retries", str(retries))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err
    stats = settle(emu)
    state = load_state(state_file)
    sent = failed_before | {key for key in keys if key.startswith("PB/")}
    second = check_run_against_emulator(keys, state, stats, sent, retries)
    assert second["applied"] > 1900
    assert second["unheard_ok"] <= stats["requests_total"] // 100
    for key, record in state.devices.items():
        if record.status is Status.FAILED and before[key].status is Status.APPLIED:
            assert record.payload == before[key].payload  # a failed update keeps the old one
    assert is_private(state_file) and is_private(backup_path(state_file))

    # run 3, faults off: exactly the failed devices are sent, once, and everything converges
    failed = {k for k, r in state.devices.items() if r.status is Status.FAILED}
    emu.configure({"faults": None})
    emu.reset()
    proc = start_apply(tmp_path, emu.url, *FAST, "--timeout", "20")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = settle(emu)
    assert {k for k, info in stats["per_device"].items() if info["requests"]} == failed
    assert all(info["requests"] <= 1 for info in stats["per_device"].values())
    final = load_state(state_file)
    assert {r.status for r in final.devices.values()} == {Status.APPLIED}
    assert {key: stats["per_device"][key]["last_payload"] for key in keys} == {
        key: record.payload for key, record in final.devices.items()
    }


# --------------------------------------------------------------------------- crash loop

KILLS = 20
CRASH_FAULTS = {
    "seed": 5,
    "reset": 0.03,
    "truncate": 0.03,
    "html_502": 0.02,
    "internal_error": 0.03,
}
CRASH_ARGS = ("--parallelism", "8", "--rate", "400", "--retries", "6", "--retry-backoff", "0.01")


def applied_payloads(state: State) -> dict[str, str | None]:
    return {k: r.payload for k, r in state.devices.items() if r.status is Status.APPLIED}


def generation_of(payload: str | None) -> int:
    return -1 if payload is None else int(payload.split('"v":')[1].rstrip("}"))


def requests_of(stats: dict[str, Any]) -> dict[str, int]:
    return {key: info["requests"] for key, info in stats["per_device"].items()}


def kill_at_a_random_moment(
    proc: subprocess.Popen[str], emu: Emulator, rng: random.Random, kill: int
) -> bool:
    """SIGKILL `proc` 0.2-1.5 s after it started (even kills: these often land while it starts,
    takes over the lock and replays the journal) or 0-1 s after its first request reached the
    emulator (odd kills: while it sends, journals and saves). True if it was still running."""
    if kill % 2 == 0:
        time.sleep(rng.uniform(0.2, 1.5))
    else:
        delay = rng.uniform(0.0, 1.0)
        sent_before = emu.stats(include_log=False)["requests_total"]
        deadline = time.monotonic() + 30
        while emu.stats(include_log=False)["requests_total"] == sent_before:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        time.sleep(delay)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    return still_running


def test_crash_loop_sigkill_at_random_moments_loses_nothing_and_resends_nothing_acknowledged(
    tmp_path: Path, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.02, "faults": CRASH_FAULTS})
    products = {"PA": 150, "PB": 150}
    keys = write_fleet(tmp_path, products, {"PA": 0, "PB": 0})
    state_file = tmp_path / STATE
    rng = random.Random(1234)
    generation = 0
    acknowledged: dict[str, int] = {}  # device -> generation of the payload it last acknowledged
    applied_now: dict[str, str | None] = {}  # applied devices (current generation) after a kill
    counts: dict[str, int] = {}  # emulator requests per device when `applied_now` was taken
    killed_mid_run = 0
    for kill in range(KILLS):
        if len(applied_now) == len(keys):  # every device has this payload: change them all
            generation += 1
            write_fleet(tmp_path, products, {"PA": generation, "PB": generation})
            applied_now, counts = {}, {}
        sent_before = emu.stats(include_log=False)["requests_total"]
        proc = start_apply(tmp_path, emu.url, *CRASH_ARGS)
        still_running = kill_at_a_random_moment(proc, emu, rng, kill)
        _, err = proc.communicate(timeout=30)
        assert still_running or proc.returncode in (0, 3), err
        stats = settle(emu)
        killed_mid_run += still_running and stats["requests_total"] > sent_before

        state = load_state(state_file)  # whatever the moment, the state and its journal load
        now = {k: p for k, p in applied_payloads(state).items() if generation_of(p) == generation}
        # a record once journaled as applied is never lost ...
        assert applied_now.items() <= now.items(), f"kill {kill}: an applied record was lost"
        for key, record in state.devices.items():
            seen = generation_of(record.payload)
            assert seen >= acknowledged.get(key, -1), f"kill {kill}: {key} went back"
            acknowledged[key] = seen
        # ... and a device recorded as applied is never sent its payload again
        now_counts = requests_of(stats)
        for key in applied_now:
            assert now_counts[key] == counts[key], f"kill {kill}: {key} was sent again"
        applied_now, counts = now, now_counts
        files = (
            state_file,
            backup_path(state_file),
            journal_path(state_file),
            lock_path(state_file),
        )
        for path in files:
            if path.exists():
                assert is_private(path), path
        assert stats["concurrency_violations"] == 0

    assert killed_mid_run >= 5, "the kills should land while devices are being sent"
    assert generation >= 1  # every payload changed at least once along the way
    emu.configure({"faults": None})
    proc = start_apply(tmp_path, emu.url, *CRASH_ARGS)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = settle(emu)
    final = load_state(state_file)
    assert final.replayed == 0 and not journal_path(state_file).exists()
    assert {k: generation_of(p) for k, p in applied_payloads(final).items()} == dict.fromkeys(
        keys, generation
    )
    for key in applied_now:
        assert requests_of(stats)[key] == counts[key], f"{key} was sent again"
    for key in keys:
        assert stats["per_device"][key]["last_payload"] == final.devices[key].payload


# --------------------------------------------------------------------------- private files


def test_state_backup_journal_and_lock_are_private_whatever_the_umask(
    tmp_path: Path, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.05})
    write_fleet(tmp_path, {"PA": 40}, {"PA": 1})
    state_file = tmp_path / STATE
    old_umask = os.umask(0)  # the children inherit it: nothing may rely on the umask
    try:
        proc = start_apply(tmp_path, emu.url, "--parallelism", "2")
        deadline = time.monotonic() + 30
        while emu.stats(include_log=False)["requests_total"] < 4:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        assert is_private(lock_path(state_file)) and is_private(journal_path(state_file))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        settle(emu)
        proc = start_apply(tmp_path, emu.url, "--parallelism", "20", "--rate", "1000")
        assert proc.wait(timeout=60) == 0
        assert is_private(state_file) and not lock_path(state_file).exists()
        state_file.chmod(0o644)  # as a git checkout or a CI cache restores it
        write_fleet(tmp_path, {"PA": 40}, {"PA": 2})
        proc = start_apply(tmp_path, emu.url, "--parallelism", "20", "--rate", "1000")
        assert proc.wait(timeout=60) == 0
    finally:
        os.umask(old_umask)
    assert is_private(state_file)
    assert is_private(backup_path(state_file))
    assert not list(tmp_path.glob(".*.tmp"))
