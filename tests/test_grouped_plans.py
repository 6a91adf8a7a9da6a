"""Plans people can review: identical changes grouped, the rollout preview, readable colours."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rrpcsync.model import RolloutSpec
from rrpcsync.planning import render
from rrpcsync.planning.planner import make_plan
from rrpcsync.planning.render import MARKDOWN_LIMIT, plan_markdown, plan_text

from .helpers import EXAMPLES, run
from .test_plan import applied, device


def interval(value: int, unit: str = "C") -> str:
    return f'{{"method":"set","params":{{"interval":{value},"unit":"{unit}"}}}}'


def fleet_plan(count: int, changed: dict[int, str], manifest: str = "thermostats"):  # type: ignore[no-untyped-def]
    """`count` applied devices at interval 30; device i gets payload `changed[i]` instead."""
    desired = [
        device(f"P/dev-{i:06d}", changed.get(i, interval(30)), manifest=manifest)
        for i in range(count)
    ]
    records = {f"P/dev-{i:06d}": applied(interval(30)) for i in range(count)}
    return make_plan(desired, records, lineage="L", serial=1)


def test_identical_updates_are_one_group_with_the_first_keys() -> None:
    plan = fleet_plan(20_000, {i: interval(45) for i in range(20_000)})
    lines = list(plan_text(plan))
    assert lines[:8] == [
        "thermostats:",
        "  ~ 20,000 devices in thermostats: params.interval: 30 → 45",
        "      P/dev-000000  (f.yaml:3)",
        "      P/dev-000001  (f.yaml:3)",
        "      P/dev-000002  (f.yaml:3)",
        "      P/dev-000003  (f.yaml:3)",
        "      P/dev-000004  (f.yaml:3)",
        "      … and 19,995 more",
    ]
    assert len(lines) == 10  # the group, a blank line and the summary


def test_groups_split_by_diff_and_action() -> None:
    changed = {1: interval(45), 2: interval(45), 3: interval(60), 4: interval(45, "F")}
    plan = fleet_plan(6, changed)
    lines = list(plan_text(plan))
    assert "  ~ 2 devices in thermostats: params.interval: 30 → 45" in lines
    assert "  ~ P/dev-000003  (f.yaml:3)" in lines  # a lone change reads as before
    assert "      params.interval: 30 → 60" in lines
    assert "  ~ P/dev-000004  (f.yaml:3)" in lines
    assert '      params.unit: "C" → "F"' in lines


def test_detail_full_lists_every_device() -> None:
    plan = fleet_plan(300, {i: interval(45) for i in range(300)})
    lines = list(plan_text(plan, grouped=False))
    assert sum(1 for line in lines if re.match(r"  ~ P/dev-\d+  \(f\.yaml:3\)$", line)) == 300
    assert lines.count("      params.interval: 30 → 45") == 300


def test_markdown_of_100k_devices_with_one_percent_changed_fits_with_every_diff() -> None:
    ways = [interval(45), interval(60), interval(30, "F"), interval(90, "K")]
    changed = {n * 100: ways[n % len(ways)] for n in range(1000)}  # 1% in 4 ways
    text = plan_markdown(fleet_plan(100_000, changed))
    assert len(text) <= MARKDOWN_LIMIT
    assert "not shown" not in text
    for line in (
        "~ 250 devices in thermostats: params.interval: 30 → 45",
        "~ 250 devices in thermostats: params.interval: 30 → 60",
        '~ 250 devices in thermostats: params.unit: "C" → "F"',
        "~ 250 devices in thermostats",
        "    params.interval: 30 → 90",
        '    params.unit: "C" → "K"',
    ):
        assert line in text.splitlines(), line
    assert text.count("… and 245 more") == 4


def test_rollout_preview_names_the_canary_the_wave_sizes_and_the_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES / "rollouts" / "configs", tmp_path / "configs")
    result = run(capsys, "plan", "configs")
    assert result.code == 0, result.err
    assert result.out_lines[-3:] == [
        "Order (dependsOn): gateways → thermostats",
        "Canary of thermostats: 2 device(s): ASBHKN/dev-001, ASBHKN/dev-002",
        "Waves of thermostats: 3 wave(s) of 3, 3, 6 device(s)",
    ]
    markdown = run(capsys, "plan", "configs", "--format", "markdown").out
    assert "- Canary of thermostats: 2 device(s): ASBHKN/dev-001, ASBHKN/dev-002" in markdown


def test_rollout_preview_of_the_apply_flags() -> None:
    plan = fleet_plan(100, {i: interval(45) for i in range(100)})
    lines = render.rollout_lines(plan, RolloutSpec(canary=3, waves=("10%", "50%")))
    assert lines == [
        "Canary: 3 device(s): P/dev-000000, P/dev-000001, P/dev-000002",
        "Waves: 3 wave(s) of 10, 39, 48 device(s)",
    ]
    assert render.rollout_lines(plan) == []  # unstaged, one level: nothing to preview


def test_changed_values_are_the_brightest_text_not_dimmed() -> None:
    plan = fleet_plan(2, {0: interval(45), 1: interval(45)})
    head = list(plan_text(plan, color=True))[1]
    assert "\x1b[1;32m45\x1b[0m" in head  # the new value: bold green
    assert "\x1b[31m30\x1b[0m" in head  # the old one: red
    single = list(plan_text(fleet_plan(2, {0: interval(45)}), color=True))
    diff_line = next(line for line in single if "params.interval" in line)
    assert "\x1b[2m" not in diff_line
    assert "\x1b[1;32m45\x1b[0m" in diff_line


def test_cli_detail_full_and_json_stays_complete(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names = ", ".join(f"d{i}" for i in range(12))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "m.yaml").write_text(
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m1}\n"
        f"spec:\n  productId: P1\n  payload: {{a: 1}}\n  devices: [{names}]\n",
        encoding="utf-8",
    )
    summary = run(capsys, "plan", "configs")
    assert "  + 12 devices in m1" in summary.out_lines
    assert "      … and 7 more" in summary.out_lines
    full = run(capsys, "plan", "configs", "--detail", "full")
    assert sum(1 for line in full.out_lines if line.startswith("  + P1/d")) == 12
    doc = json.loads(run(capsys, "plan", "configs", "--format", "json").out)
    assert len(doc["changes"]) == 12
