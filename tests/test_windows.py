"""Maintenance windows: edges, midnight, DST, next opening, the manifest form and its errors."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.manifests import windows
from rrpcsync.manifests.loader import load_manifests
from rrpcsync.manifests.policy import policy_from_document, policy_to_document
from rrpcsync.model import Action, Change, ManifestPolicy, Plan, Summary, Window
from rrpcsync.planning import deferral

from .helpers import Result, run, write

UTC = timezone.utc
WEEKDAYS = frozenset(range(5))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def window(
    start: str, end: str, zone: str = "UTC", days: frozenset[int] = windows.EVERY_DAY
) -> Window:
    first = windows.parse_time(start, allow_end_of_day=False)
    last = windows.parse_time(end, allow_end_of_day=True)
    assert first is not None and last is not None
    return Window(days, first, last, zone)


# --------------------------------------------------------------------------- open / closed


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 12, 1, 1, 59, 59), False),  # a second before
        (utc(2026, 12, 1, 2, 0, 0), True),  # start is inclusive
        (utc(2026, 12, 1, 4, 59, 59), True),
        (utc(2026, 12, 1, 5, 0, 0), False),  # end is exclusive
    ],
)
def test_edges_start_inclusive_end_exclusive(now: datetime, expected: bool) -> None:
    assert windows.is_open((window("02:00", "05:00"),), now) is expected


def test_shanghai_window_in_utc() -> None:
    # 02:00-05:00 Asia/Shanghai (UTC+8, no DST) is 18:00-21:00 UTC the day before
    shanghai = (window("02:00", "05:00", "Asia/Shanghai"),)
    assert windows.is_open(shanghai, utc(2026, 12, 1, 18, 0))
    assert windows.is_open(shanghai, utc(2026, 12, 1, 20, 59))
    assert not windows.is_open(shanghai, utc(2026, 12, 1, 21, 0))
    assert not windows.is_open(shanghai, utc(2026, 12, 2, 2, 0))  # 02:00 UTC is 10:00 there


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    # Fridays 22:00 until Saturday 02:00; 2026-12-04 is a Friday
    friday_night = (window("22:00", "02:00", days=frozenset({4})),)
    assert windows.is_open(friday_night, utc(2026, 12, 4, 22, 0))
    assert windows.is_open(friday_night, utc(2026, 12, 5, 1, 59))  # Saturday, still open
    assert not windows.is_open(friday_night, utc(2026, 12, 5, 2, 0))
    assert not windows.is_open(friday_night, utc(2026, 12, 5, 22, 0))  # Saturday night: no
    assert not windows.is_open(friday_night, utc(2026, 12, 4, 1, 0))  # Thursday's night: no


def test_days_are_local_days() -> None:
    # Monday 01:00 in Shanghai is Sunday 17:00 UTC: the local day counts
    monday = (window("01:00", "03:00", "Asia/Shanghai", frozenset({0})),)
    assert windows.is_open(monday, utc(2026, 11, 29, 17, 30))  # a Sunday in UTC
    assert not windows.is_open(monday, utc(2026, 11, 30, 17, 30))  # Monday UTC = Tuesday there


def test_whole_day_and_no_windows_are_always_open() -> None:
    always = (window("00:00", "24:00"),)
    for hour in range(0, 24 * 7, 5):
        assert windows.is_open(always, utc(2026, 12, 1) + timedelta(hours=hour, minutes=59))
    assert windows.is_open((), utc(2026, 12, 1))
    assert windows.next_opening((), utc(2026, 12, 1)) is None


def test_any_of_several_windows() -> None:
    both = (window("01:00", "02:00"), window("13:00", "14:00"))
    assert windows.is_open(both, utc(2026, 12, 1, 13, 30))
    assert not windows.is_open(both, utc(2026, 12, 1, 12, 30))
    assert windows.next_opening(both, utc(2026, 12, 1, 2, 0)) == utc(2026, 12, 1, 13, 0)


# --------------------------------------------------------------------------- next opening


def test_next_opening_later_today_tomorrow_and_next_week() -> None:
    weekdays = (window("02:00", "05:00", days=WEEKDAYS),)
    assert windows.next_opening(weekdays, utc(2026, 12, 1, 1, 0)) == utc(2026, 12, 1, 2, 0)
    assert windows.next_opening(weekdays, utc(2026, 12, 1, 5, 0)) == utc(2026, 12, 2, 2, 0)
    # Friday after the window: next is Monday (2026-12-07)
    assert windows.next_opening(weekdays, utc(2026, 12, 4, 6, 0)) == utc(2026, 12, 7, 2, 0)
    inside = utc(2026, 12, 1, 3, 0)
    assert windows.next_opening(weekdays, inside) == inside


# --------------------------------------------------------------------------- DST


NEW_YORK = (
    "America/New_York"  # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST
)


def test_spring_forward_skipped_start_opens_at_the_jump() -> None:
    w = window("02:00", "05:00", NEW_YORK)
    # the clock jumps at 07:00 UTC from 02:00 EST to 03:00 EDT; 05:00 EDT is 09:00 UTC
    assert windows.bounds(w, date(2026, 3, 8)) == (utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 9, 0))
    skipped = window("02:30", "04:00", NEW_YORK)
    assert windows.bounds(skipped, date(2026, 3, 8)) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 8))
    # the days around keep their local hours (EST: UTC-5, EDT: UTC-4)
    assert windows.bounds(w, date(2026, 3, 7)) == (utc(2026, 3, 7, 7), utc(2026, 3, 7, 10))
    assert windows.bounds(w, date(2026, 3, 9)) == (utc(2026, 3, 9, 6), utc(2026, 3, 9, 9))


def test_fall_back_repeated_hour_never_closes_early() -> None:
    # 01:00-02:00 happens twice on 2026-11-01: 05:00-06:00 UTC (EDT) and 06:00-07:00 UTC (EST)
    w = window("01:30", "01:45", NEW_YORK)
    opens, closes = windows.bounds(w, date(2026, 11, 1)) or (None, None)
    assert opens == utc(2026, 11, 1, 5, 30)  # first 01:30
    assert closes == utc(2026, 11, 1, 6, 45)  # second 01:45
    night = window("00:00", "03:00", NEW_YORK)
    assert windows.bounds(night, date(2026, 11, 1)) == (utc(2026, 11, 1, 4), utc(2026, 11, 1, 8))


def test_midnight_crossing_window_over_a_dst_change() -> None:
    # Saturday 22:00 until Sunday 04:00 around the spring jump: 5 real hours
    w = window("22:00", "04:00", NEW_YORK)
    opens, closes = windows.bounds(w, date(2026, 3, 7)) or (utc(1970, 1, 1), utc(1970, 1, 1))
    assert (opens, closes) == (utc(2026, 3, 8, 3), utc(2026, 3, 8, 8))
    assert closes - opens == timedelta(hours=5)
    assert windows.is_open((w,), utc(2026, 3, 8, 7, 30))
    assert not windows.is_open((w,), utc(2026, 3, 8, 8, 0))


def test_zone_without_dst_is_plain_offset() -> None:
    w = window("02:00", "05:00", "Asia/Shanghai")
    for day in (date(2026, 3, 8), date(2026, 11, 1)):
        opens, closes = windows.bounds(w, day) or (None, None)
        assert opens is not None and closes is not None
        assert closes - opens == timedelta(hours=3)


# --------------------------------------------------------------------------- manifest form


def manifest(windows_yaml: str) -> str:
    return (
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m}\n"
        "spec:\n  productId: P1\n  payload: {a: 1}\n  devices: [d1]\n"
        f"  windows:\n{windows_yaml}"
    )


def test_windows_load_into_the_manifest_policy(tmp_path: Path) -> None:
    text = manifest(
        '    - {days: [mon, fri], start: "22:00", end: "02:00", timezone: Asia/Shanghai}\n'
        '    - {start: "00:00", end: "24:00", timezone: UTC}\n'
    )
    result = load_manifests([write(tmp_path / "m.yaml", text)])
    assert result.ok, result.diagnostics
    policy = result.manifests[0].policy
    assert policy.windows == (
        Window(frozenset({0, 4}), 22 * 60, 2 * 60, "Asia/Shanghai"),
        Window(windows.EVERY_DAY, 0, 24 * 60, "UTC"),
    )
    assert windows.describe(policy.windows) == (
        "mon,fri 22:00-02:00 Asia/Shanghai; every day 00:00-24:00 UTC"
    )
    # saved plans carry them
    assert policy_from_document(policy_to_document(policy)) == policy


@pytest.mark.parametrize(
    ("item", "line", "message"),
    [
        (
            '{start: "02:00", end: "05:00", timezone: Asia/Shangai}',
            9,
            "unknown timezone 'Asia/Shangai'",
        ),
        ('{start: "02:00", end: "02:00", timezone: UTC}', 9, "end equals start"),
        ('{start: "2:00", end: "05:00", timezone: UTC}', 9, "two digits each, 00:00 to 23:59"),
        ('{start: "02:00", end: "24:01", timezone: UTC}', 9, "two digits each, 00:00 to 24:00"),
        (
            '{days: [monday], start: "02:00", end: "05:00", timezone: UTC}',
            9,
            "'monday' is not one of",
        ),
        ('{start: "02:00", end: "05:00"}', 9, "missing key 'timezone'"),
    ],
)
def test_window_errors_name_file_and_line(
    tmp_path: Path, item: str, line: int, message: str
) -> None:
    result = load_manifests([write(tmp_path / "m.yaml", manifest(f"    - {item}\n"))])
    assert [(Path(d.file).name, d.line) for d in result.diagnostics] == [("m.yaml", line)]
    assert message in result.diagnostics[0].message


def test_saved_policy_with_a_bad_window_is_refused() -> None:
    doc: dict[str, Any] = {"windows": [{"start": "02:00", "end": "05:00", "timezone": "Mars/Base"}]}
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Base'"):
        policy_from_document(doc)


# --------------------------------------------------------------------------- plan / apply


def hhmm(when: datetime) -> str:
    return when.strftime("%H:%M")


def closed_window() -> str:
    """Every day, opening two hours from now for one hour (UTC): closed during the test."""
    return utc_window(timedelta(hours=2), timedelta(hours=3))


def open_window() -> str:
    return utc_window(timedelta(hours=-1), timedelta(hours=1))


def utc_window(start: timedelta, end: timedelta) -> str:
    """A daily UTC window from now + start to now + end (crossing midnight when it must)."""
    now = datetime.now(UTC)
    return f'{{start: "{hhmm(now + start)}", end: "{hhmm(now + end)}", timezone: UTC}}'


def windowed(name: str, window: str | None, devices: str) -> str:
    text = (
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  productId: P1\n  payload: {method: set, v: 1}\n"
        f"  devices: {devices}\n"
    )
    return text + (f"  windows: [{window}]\n" if window else "")


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "emulator-token")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def apply_cli(capsys: pytest.CaptureFixture[str], emu: Any, *extra: str) -> Result:
    args = ["apply", "configs", "--auto-approve", "--rate", "500", "--endpoint", emu.url]
    return run(capsys, *args, *extra)


def requests_to(emu: Any) -> dict[str, int]:
    per_device = emu.stats()["per_device"]
    return {key: info["requests"] for key, info in per_device.items() if info["requests"]}


def test_closed_window_defers_apply_sends_nothing_exit_0(
    capsys: pytest.CaptureFixture[str], cli_env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    write(cli_env / "configs" / "m.yaml", windowed("m", closed_window(), "[d1, d2]"))
    plan = run(capsys, "plan", "configs")
    assert plan.code == 0
    assert "  + 2 devices in m  deferred until " in plan.out
    assert plan.out_lines[-1].endswith(". 2 deferred to a maintenance window.")
    assert run(capsys, "plan", "configs", "--detailed-exitcode").code == 2  # still pending
    result = apply_cli(capsys, emu)
    assert result.code == 0, result.err
    assert requests_to(emu) == {}
    assert result.out_lines[-1].startswith("Nothing sent: 2 change(s) deferred until their ")
    assert not (cli_env / "rrpcsync.state.json").exists()  # nothing was recorded
    report = json.loads(apply_cli(capsys, emu, "--format", "json").out)
    assert report["deferred"] == ["P1/d1", "P1/d2"] and report["applied"] == []


def test_ignore_windows_sends_now(
    capsys: pytest.CaptureFixture[str], cli_env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    write(cli_env / "configs" / "m.yaml", windowed("m", closed_window(), "[d1, d2]"))
    assert "deferred" not in run(capsys, "plan", "configs", "--ignore-windows").out
    result = apply_cli(capsys, emu, "--ignore-windows")
    assert result.code == 0, result.err
    assert requests_to(emu) == {"P1/d1": 1, "P1/d2": 1}
    assert "Apply: 2 applied, 0 failed, 0 not sent, 0 stale, 0 pruned;" in result.out


def test_only_the_closed_manifest_waits(
    capsys: pytest.CaptureFixture[str], cli_env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    write(cli_env / "configs" / "closed.yaml", windowed("closed", closed_window(), "[c1]"))
    write(cli_env / "configs" / "open.yaml", windowed("open", open_window(), "[o1]"))
    write(cli_env / "configs" / "always.yaml", windowed("always", None, "[a1]"))
    result = apply_cli(capsys, emu, "--format", "json")
    assert result.code == 0, result.err
    assert requests_to(emu) == {"P1/o1": 1, "P1/a1": 1}
    report = json.loads(result.out)
    assert (report["applied"], report["deferred"]) == (["P1/a1", "P1/o1"], ["P1/c1"])
    text = apply_cli(capsys, emu)  # the deferred one is still pending, the others applied
    assert text.code == 0
    assert "  + P1/c1  (configs/closed.yaml:7)  deferred until " in text.err + text.out
    assert (
        "Plan: 1 to create, 0 to update, 0 to retry, 0 orphaned, 2 unchanged. 1 deferred"
        in text.out
    )
    assert requests_to(emu) == {"P1/o1": 1, "P1/a1": 1}


def test_saved_plan_checks_windows_when_applied(
    capsys: pytest.CaptureFixture[str], cli_env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    write(cli_env / "configs" / "m.yaml", windowed("m", closed_window(), "[d1]"))
    assert run(capsys, "plan", "configs", "--ignore-windows", "--out", "plan.json").code == 0
    saved = json.loads((cli_env / "plan.json").read_text("utf-8"))
    assert saved["manifests"]["m"]["windows"][0]["timezone"] == "UTC"
    assert "deferred_until" not in saved["changes"][0]
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 0, result.err
    assert requests_to(emu) == {}
    assert "Nothing sent: 1 change(s) deferred" in result.out
    result = run(
        capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url, "--ignore-windows"
    )
    assert result.code == 0, result.err
    assert requests_to(emu) == {"P1/d1": 1}


def test_plan_json_counts_and_dates_deferred_changes(
    capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    write(cli_env / "configs" / "m.yaml", windowed("m", closed_window(), "[d1]"))
    doc = json.loads(run(capsys, "plan", "configs", "--format", "json").out)
    assert doc["summary"]["deferred"] == 1
    until = datetime.fromisoformat(doc["changes"][0]["deferred_until"].replace("Z", "+00:00"))
    assert timedelta(hours=1) < until - datetime.now(UTC) <= timedelta(hours=2)


# --------------------------------------------------------------------------- pure deferral


def test_defer_outside_windows_marks_sending_changes_only() -> None:
    policy = ManifestPolicy(windows=(window("02:00", "05:00"),))
    changes = (
        Change("P1/a", Action.CREATE, manifest="w"),
        Change("P1/b", Action.ORPHAN, manifest="w"),
        Change("P1/c", Action.UPDATE, manifest="free"),
    )
    plan = Plan("l", 1, changes, Summary(create=1, update=1, orphan=1), policies={"w": policy})
    night = deferral.defer_outside_windows(plan, utc(2026, 12, 1, 3, 0))
    assert night is plan  # open: nothing to mark
    day = deferral.defer_outside_windows(plan, utc(2026, 12, 1, 12, 0))
    assert [c.deferred_until for c in day.changes] == ["2026-12-02T02:00:00Z", None, None]
    assert (day.summary.deferred, day.summary.to_send, day.actionable, day.pending) == (
        1,
        1,
        True,
        True,
    )
    assert deferral.next_window(day) == "2026-12-02T02:00:00Z"
    again = deferral.defer_outside_windows(day, utc(2026, 12, 2, 2, 30))  # a saved plan, later
    assert [c.deferred_until for c in again.changes] == [None, None, None]
    assert again.summary.deferred == 0
    now = deferral.send_now(day)
    assert now.summary.deferred == 0 and not any(c.deferred for c in now.changes)


def test_only_deferred_changes_is_not_actionable_but_pending() -> None:
    policy = ManifestPolicy(windows=(window("02:00", "05:00"),))
    plan = Plan(
        "l",
        1,
        (Change("P1/a", Action.CREATE, manifest="w"),),
        Summary(create=1),
        policies={"w": policy},
    )
    day = deferral.defer_outside_windows(plan, utc(2026, 12, 1, 12, 0))
    assert (day.actionable, day.pending, day.summary.has_changes) == (False, True, True)
