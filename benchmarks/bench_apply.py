"""Apply throughput against the emulator (in its own process), client CPU per request, the
naive sequential baseline, rate holding, and bytes written per final state size."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from rrpcsync.cloud.client import RrpcClient
from rrpcsync.model import Action, Change, Plan, Summary
from rrpcsync.run.executor import ApplyOptions, apply_changes
from rrpcsync.state.jsonfile import load_state, save_state

TOKEN = "emulator-token"
TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def emulator_process(latency: float, rate_limit: float | None = None) -> Iterator[tuple[str, int]]:
    """The emulator in a separate process (its own core): yields (url, pid)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        fleet = {"token": TOKEN, "auto_devices": True, "default": {"latency": latency}}
        if rate_limit:
            fleet["rate_limit"] = rate_limit
        json.dump(fleet, handle)  # JSON is YAML
    proc = subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", "emulator", "--fleet", handle.name, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _wait_for_url(proc)
        # it logs a line per request: keep reading, or a full pipe stops it mid-benchmark
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(handle.name)


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for _ in proc.stderr:
        pass


def _wait_for_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if match := re.search(r"(http://127\.0\.0\.1:\d+/?)", line):
            return match[1]
        if proc.poll() is not None:
            break
    raise RuntimeError("the emulator did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def changes(count: int, prefix: str = "dev") -> Plan:
    payload = '{"method":"set_config","params":{"interval":30,"unit":"C"}}'
    digest = hashlib.sha256(payload.encode()).hexdigest()
    items = tuple(
        Change(
            key=f"BENCH{index % 50:02d}/{prefix}-{index:06d}",
            action=Action.CREATE,
            manifest="bench",
            source="bench.yaml:1",
            payload=payload,
            payload_sha256_after=digest,
        )
        for index in range(count)
    )
    return Plan("bench", 0, items, Summary(create=count), {})


def run_apply(
    url: str, count: int, parallelism: int, rate: float, timeout: float = 30.0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-apply-") as tmp:
        state = load_state(Path(tmp) / "state.json")
        plan = changes(count)
        options = ApplyOptions(parallelism=parallelism, rate=rate, retries=0)

        def make() -> RrpcClient:
            return RrpcClient(url, TOKEN, timeout=timeout, max_connections=parallelism)

        written_before = _written_bytes()
        cpu_before = time.process_time()
        report = apply_changes(plan, state, make, options)
        cpu = time.process_time() - cpu_before
        save_state(state)
        written = _written_bytes() - written_before
        final_size = (Path(tmp) / "state.json").stat().st_size
    if report.failed:
        raise RuntimeError(f"benchmark apply failed: {dict(report.failures_by_code)}")
    return {
        "requests": report.requests,
        "elapsed": report.elapsed,
        "rate": report.requests / report.elapsed,
        "cpu_ms_per_request": 1000 * cpu / report.requests,
        "bytes_written": written,
        "final_state_bytes": final_size,
    }


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def naive_rate(url: str, count: int) -> float:
    """What a user would write by hand: one request after another."""
    payload = '{"method":"set_config"}'
    started = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for index in range(count):
            body = {
                "Action": "AppPublishRRPCMessage",
                "RequestId": f"naive-{index}",
                "AccessToken": TOKEN,
                "ProductId": "NAIVE",
                "DeviceName": f"dev-{index}",
                "Payload": payload,
            }
            client.post(url, json=body).raise_for_status()
    return count / (time.perf_counter() - started)


def bare_client(url: str, count: int, parallelism: int) -> dict[str, Any]:
    """The floor: a bare aiohttp client posting the same requests, `parallelism` at a time,
    reading each JSON reply, and nothing else (no journal, no state, no retries, no pacing)."""
    import asyncio

    import aiohttp

    payload = '{"method":"set_config","params":{"interval":30,"unit":"C"}}'

    async def run() -> int:
        connector = aiohttp.TCPConnector(limit=parallelism)
        async with aiohttp.ClientSession(connector=connector) as session:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(count):
                queue.put_nowait(index)
            ok = 0

            async def worker() -> None:
                nonlocal ok
                while not queue.empty():
                    index = queue.get_nowait()
                    body = {
                        "Action": "AppPublishRRPCMessage",
                        "RequestId": str(uuid.uuid4()),
                        "AccessToken": TOKEN,
                        "ProductId": f"BARE{index % 50:02d}",
                        "DeviceName": f"dev-{index:06d}",
                        "Payload": payload,
                    }
                    async with session.post(url, json=body) as response:
                        reply = await response.json()
                    ok += "Error" not in reply.get("Response", {})

            await asyncio.gather(*(worker() for _ in range(parallelism)))
            return ok

    cpu_before = time.process_time()
    started = time.perf_counter()
    ok = asyncio.run(run())
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    if ok != count:
        raise RuntimeError(f"bare client: {count - ok} of {count} requests failed")
    return {"rate": count / elapsed, "cpu_ms_per_request": 1000 * cpu / count}


def versus_bare(latency: float, parallelism: int, count: int, rounds: int) -> dict[str, Any]:
    """rrpcsync's executor and the bare client against one emulator, interleaved; medians."""
    ours: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    with emulator_process(latency) as (url, _):
        for _ in range(rounds):
            bare.append(bare_client(url, count, parallelism))
            ours.append(run_apply(url, count, parallelism, rate=1_000_000))
    result: dict[str, Any] = {"latency": latency, "parallelism": parallelism, "count": count}
    for name, runs in (("ours", ours), ("bare", bare)):
        result[name] = {key: statistics.median(run[key] for run in runs) for key in RATIO_KEYS}
    result["cpu_ratio"] = (
        result["ours"]["cpu_ms_per_request"] / result["bare"]["cpu_ms_per_request"]
    )
    result["rate_ratio"] = result["ours"]["rate"] / result["bare"]["rate"]
    result["rounds"] = rounds
    return result


RATIO_KEYS = ("rate", "cpu_ms_per_request")


def throughput(latency: float, parallelism: int, count: int) -> dict[str, Any]:
    with emulator_process(latency) as (url, pid):
        emulator_cpu = cpu_seconds(pid)
        result = run_apply(url, count, parallelism, rate=1_000_000)
        result["emulator_cpu_ms_per_request"] = 1000 * (cpu_seconds(pid) - emulator_cpu) / count
        result["naive_rate"] = naive_rate(url, max(5, min(20, int(8 / max(latency, 0.01)))))
    ideal = parallelism / latency
    result.update(latency=latency, parallelism=parallelism, ideal=ideal)
    result["fraction_of_ideal"] = result["rate"] / ideal
    result["speedup_over_naive"] = result["rate"] / result["naive_rate"]
    return result


def rate_holding(rate: float, seconds: float, window: float = 10.0) -> dict[str, Any]:
    """Worst deviation from `rate` over sliding windows, from the emulator's own request log."""
    count = int(rate * seconds)
    with emulator_process(0.2) as (url, _):
        run_apply(url, count, parallelism=50, rate=rate)
        log = httpx.get(url.rstrip("/") + "/_emulator/stats").json()["log"]
    starts = sorted(entry["t"] for entry in log)
    worst = 0.0
    first, last = starts[0], starts[-1]
    right = 0
    for left, begin in enumerate(starts):
        if begin + window > last:
            break
        while right < len(starts) and starts[right] < begin + window:
            right += 1
        worst = max(worst, abs((right - left) / window - rate) / rate)
    return {"rate": rate, "requests": count, "span": last - first, "worst_window_deviation": worst}


def auto_rate(limit: float, count: int) -> dict[str, Any]:
    """`--rate auto` against an emulator limited to `limit`/s: the accepted rate from the first
    refusal (the quota found) to the end, from the emulator's own request log."""
    with emulator_process(0.02, rate_limit=limit) as (url, _):
        with tempfile.TemporaryDirectory(prefix="rrpcsync-bench-auto-") as tmp:
            state = load_state(Path(tmp) / "state.json")
            options = ApplyOptions(parallelism=40, adaptive_rate=True, max_rate=10 * limit)

            def make() -> RrpcClient:
                return RrpcClient(url, TOKEN, max_connections=40)

            report = apply_changes(changes(count), state, make, options)
        log = httpx.get(url.rstrip("/") + "/_emulator/stats").json()["log"]
    if report.failed:
        raise RuntimeError(f"auto-rate apply failed: {dict(report.failures_by_code)}")
    refused = sorted(e["t"] for e in log if e["code"] == "RequestLimitExceeded")
    accepted = sorted(e["t"] for e in log if e["code"] != "RequestLimitExceeded")
    held = [t for t in accepted if refused and t >= refused[0]]
    rate = (len(held) - 1) / (held[-1] - held[0]) if len(held) > 1 else 0.0
    return {"limit": limit, "held": rate, "refused": len(refused), "requests": len(log)}


def state_writes(count: int) -> dict[str, Any]:
    with emulator_process(0.0) as (url, _):
        result = run_apply(url, count, parallelism=100, rate=1_000_000)
    result["written_over_final"] = result["bytes_written"] / result["final_state_bytes"]
    return result
