"""The state stores at scale: the JSON file, SQLite and PostgreSQL holding the same state.

- apply: what a run writes when a few devices change. The real store API is driven in the
  executor's pattern: for every changed device a `pending` record (not waited for), then its
  result in group commits of 32, then `save` and the run record. Wall time and bytes written
  on each store, as ratios to the JSON file. Bytes: the `write`s this process made (the JSON
  file, SQLite); for PostgreSQL, the server's WAL bytes plus the data pages it wrote, with a
  CHECKPOINT before and after (PostgreSQL's default settings, full-page writes on). Also the
  bytes per byte of the changed records (their size in the JSON state file), and the slope
  between a 10-device and a 1%-changed apply: the part that grows with the devices changed.
- plan: `rrpcsync plan` end to end on each store vs a bare CSafeLoader load of the manifests
  (medians of 5, taking turns; `--only stores-plan` measures the plan part alone).

Targets (issue "State that scales"): a SQL apply writes O(changed): <= 3x the changed
records' size plus a constant (the slope); plan from a SQL store <= 1.3x a bare parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.pgserver

import bench_plan
from fleet import write_fleet

from rrpcsync.model import DeviceRecord, Status
from rrpcsync.state import State, open_store
from rrpcsync.state.jsonfile import load_state
from rrpcsync.state.records import state_text
from rrpcsync.state.sql import SqlStore

GROUP_COMMIT = 32


@dataclass
class Written:
    seconds: float
    bytes: int


def process_wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def pg_counters(admin: Any) -> int:
    """WAL bytes plus data pages written by the server so far (after a checkpoint)."""
    admin.execute("CHECKPOINT")
    (wal,) = admin.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    (pages,) = admin.execute(
        "SELECT buffers_checkpoint + buffers_clean + buffers_backend FROM pg_stat_bgwriter"
    ).fetchone()
    return int(wal) + 8192 * int(pages)


def applied(record: DeviceRecord, serial: int) -> DeviceRecord:
    payload = f'{{"method":"set_config","params":{{"v":{serial}}}}}'
    digest = hashlib.sha256(payload.encode()).hexdigest()  # the loader checks it
    return record._replace(
        status=Status.APPLIED,
        payload_sha256=digest,
        target_sha256=digest,
        payload=payload,
        applied_at="2026-12-01T00:00:00Z",
        attempts=record.attempts + 1,
    )


def run_apply(spec: str, keys: Sequence[str], round_: int) -> tuple[float, dict[str, DeviceRecord]]:
    """One apply of `keys` through the store API, as the executor drives it."""
    started = time.perf_counter()
    store = open_store(spec)
    with store.lock("apply"):
        state = store.load()
        recorder = store.recorder(state)
        results: dict[str, DeviceRecord] = {}
        for start in range(0, len(keys), GROUP_COMMIT):
            batch = keys[start : start + GROUP_COMMIT]
            for key in batch:
                pending = state.devices[key]._replace(status=Status.PENDING)
                recorder.append_many([(key, pending)], sync=False)
            done = [(key, applied(state.devices[key], round_)) for key in batch]
            recorder.append_many(done)
            results.update(done)
        recorder.close()
        state.devices.update(results)
        store.save(state)
    if isinstance(store, SqlStore):
        store.close()
    return time.perf_counter() - started, results


def records_size(records: dict[str, DeviceRecord]) -> int:
    """The size of these records in the JSON state file (what the issue measures against)."""
    empty = len(state_text(State("x", "L"), 1).encode())
    return len(state_text(State("x", "L", 0, dict(records)), 1).encode()) - empty


def measure(spec: str, keys: Sequence[str], round_: int, admin: Any) -> tuple[Written, int]:
    before = process_wchar() if admin is None else pg_counters(admin)
    seconds, results = run_apply(spec, keys, round_)
    after = process_wchar() if admin is None else pg_counters(admin)
    return Written(seconds, after - before), records_size(results)


def settle(url: str) -> None:
    """Settle the freshly loaded table as a long-lived database is: hint bits set and the
    visibility map written (VACUUM), so the apply is not charged for the bulk load."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) rrpcsync_devices")
        conn.execute("SELECT count(*) FROM rrpcsync_devices")


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A PostgreSQL server with its default settings, or None (and why) if none can start."""
    from tests import pgserver

    reason = pgserver.missing_reason()
    if reason:
        yield None, reason
        return
    with pgserver.running_server(settings="") as server:
        yield server, ""


def bench(files: int, devices: int, plan_only: bool = False) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="rrpcsync-bench-stores-") as tmp,
        postgres() as (
            server,
            why_not,
        ),
    ):
        root = Path(tmp)
        fleet = write_fleet(root / "configs", files, devices)
        json_path = root / "state.json"
        total = bench_plan.write_state(fleet, json_path, changed_every=100)  # 1% outdated
        state = load_state(json_path)
        specs = {"json": str(json_path), "sqlite": f"sqlite:///{root}/state.db"}
        admin = None
        if server is not None:
            specs["postgresql"] = server.new_database()
            admin = server.admin()
        for name, spec in specs.items():
            if name != "json":
                store = open_store(spec)
                assert isinstance(store, SqlStore)
                store.replace(state)
                store.close()
        if server is not None:
            settle(specs["postgresql"])
        result: dict[str, Any] = {"devices": total, "postgresql_skipped": why_not}
        result["plan"] = plan_times(fleet, specs)
        if not plan_only:
            result["apply"] = apply_writes(state, specs, admin)
        if admin is not None:
            admin.close()
    return result


def plan_times(fleet: Path, specs: dict[str, str], rounds: int = 5) -> dict[str, float]:
    """The median of `rounds` for each, the stores and the bare parse taking turns, so a
    burst of load on this shared machine hits them all alike."""
    from rrpcsync.manifests.loader import discover

    paths, _ = discover([fleet])
    env = {**os.environ, "RRPCSYNC_ACCESS_TOKEN": "unused"}
    env.pop("GITHUB_ACTIONS", None)
    times: dict[str, list[float]] = {name: [] for name in ["bare", *specs]}
    for _ in range(rounds):
        times["bare"].append(bench_plan.bare_load(paths))
        for name, spec in specs.items():
            args = ["-q", "plan", str(fleet), "--state", spec, "--format", "json"]
            elapsed, code, tail = bench_plan.run_cli(args, env)
            if code != 0:
                raise RuntimeError(f"plan on {name} failed ({code}): {tail}")
            times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def apply_writes(state: State, specs: dict[str, str], admin: Any) -> dict[str, Any]:
    keys = sorted(state.devices)
    count = max(1, len(keys) // 100)
    cases = {
        "small": keys[-max(1, count // 10) :],  # a tenth as many: the constant part
        "one manifest": keys[:count],  # 1% contiguous: one manifest's devices
        "spread": keys[count::100][:count],  # 1% scattered across the whole state
    }
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        per_case = {}
        for round_, (case, chosen) in enumerate(cases.items(), start=1):
            per_case[case] = measure(spec, chosen, round_, admin if name == "postgresql" else None)
        out[name] = per_case
    return out


def report(result: dict[str, Any]) -> list[str]:
    lines = [f"state stores: {result['devices']:,} devices, 1% changed"]
    plan = result["plan"]
    lines.append(f"  plan (medians): bare CSafeLoader load {plan['bare']:.2f} s")
    for name in ("json", "sqlite", "postgresql"):
        if name in plan:
            ratio = plan[name] / plan["bare"]
            target = "" if name == "json" else f" (target <= 1.3x) {mark(ratio <= 1.3)}"
            lines.append(f"    plan on {name:<10} {plan[name]:6.2f} s = {ratio:.2f}x bare{target}")
    apply = result.get("apply")
    if apply is None:  # --only stores-plan
        return lines
    base = apply["json"]
    for case in ("one manifest", "spread"):
        lines.append(f"  apply, {case}:")
        for name, cases in apply.items():
            written, size = cases[case]
            small, small_size = cases["small"]
            slope = (written.bytes - small.bytes) / max(1, size - small_size)
            ref = base[case][0]
            lines.append(
                f"    {name:<10} {written.seconds:6.2f} s ({written.seconds / ref.seconds:.3f}x "
                f"json), {written.bytes:>12,} bytes ({written.bytes / max(1, ref.bytes):.4f}x "
                f"json) = {written.bytes / size:.2f}x the {size:,} bytes of changed records; "
                f"slope {slope:.2f}x over a smaller apply's {small.bytes:,} bytes"
                + ("" if name == "json" else f" (target <= 3x) {mark(slope <= 3)}")
            )
    if result["postgresql_skipped"]:
        lines.append(f"  postgresql: skipped: {result['postgresql_skipped']}")
    return lines


def mark(ok: bool) -> str:
    return "OK" if ok else "MISSED"


if __name__ == "__main__":
    print("\n".join(report(bench(int(sys.argv[1]), int(sys.argv[2])))))
