"""Drift detection and scheduled correction (docs/drift.md): probes, `plan/apply --refresh`,
`--resync-after`, `rrpcsync drift`, against the emulator over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from rrpcsync.manifests import probe
from rrpcsync.model import DeviceRecord, Status
from rrpcsync.state.jsonfile import (
    State,
    journal_text,
    load_state,
    record_from_dict,
    record_to_dict,
    save_state,
    state_document,
    state_text,
)

from .helpers import Result, run, write

TOKEN = "emulator-token"
STATE = "rrpcsync.state.json"
DESIRED = {"method": "set_config", "params": {"interval": 30, "unit": "C"}}
DESIRED_TEXT = '{"method":"set_config","params":{"interval":30,"unit":"C"}}'
PROBED = """\
apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata:
  name: m1
spec:
  productId: P1
  payload: {method: set_config, params: {interval: 30, unit: C}}
  probe:
    payload: {method: get_config}
    pointer: /config
    ignore: [/params/uptime]
  devices: [DEVICES]
"""
NO_PROBE = PROBED[: PROBED.index("  probe:")] + "  devices: [DEVICES]\n"
FAST = ("--rate", "500", "--retry-backoff", "0.01")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def manifest(path: Path, devices: list[str], text: str = PROBED) -> None:
    write(path / "configs" / "m.yaml", text.replace("DEVICES", ", ".join(devices)))


def cli(capsys: pytest.CaptureFixture[str], emu: Any, command: str, *extra: str) -> Result:
    args = [command, "configs", "--endpoint", emu.url, *FAST, *extra]
    if command == "apply":
        args.append("--auto-approve")
    return run(capsys, *args)


def acked(emu: Any) -> dict[str, list[str]]:
    per_device = emu.stats(include_log=False)["per_device"]
    return {key: info["acked"] for key, info in per_device.items() if info["acked"]}


def hand_edited(**params: Any) -> dict[str, Any]:
    return {"method": "set_config", "params": {**DESIRED["params"], **params}}


def applied_fleet(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, names: list[str], **fleet: Any
) -> Any:
    """An emulator whose devices all got their payload from a first apply (counters reset)."""
    emu = emulator({"auto_devices": True, "latency": 0.01, **fleet})
    manifest(env, names)
    first = cli(capsys, emu, "apply")
    assert first.code == 0, first.err
    emu.reset()
    return emu


# --------------------------------------------------------------------------- refresh


def test_only_drifted_devices_are_found_and_re_sent(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2", "d3", "d4"])
    emu.set_memory("P1/d2", hand_edited(interval=10))  # edited by hand
    emu.set_memory("P1/d3", None)  # factory reset
    emu.set_memory("P1/d4", hand_edited(uptime=999))  # a field the device owns: ignored
    state_before = (env / STATE).read_bytes()

    plan = cli(capsys, emu, "plan", "--refresh", "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert "  ! P1/d2  (configs/m.yaml:12)  drifted: the device reports another config" in plan.out
    assert "      params.interval: 10 → 30" in plan.out
    assert "  ! P1/d3  (configs/m.yaml:12)  drifted" in plan.out
    assert "P1/d1" not in plan.out and "P1/d4" not in plan.out
    assert (
        "Plan: 0 to create, 0 to update, 0 to retry, 2 drifted, 0 orphaned, 2 unchanged."
        in plan.out
    )
    assert "Drift check: 4 device(s) probed, 0 unreachable." in plan.out
    assert (env / STATE).read_bytes() == state_before  # plan never writes the state
    assert acked(emu) == {}  # probes change nothing on the devices

    applied = cli(capsys, emu, "apply", "--refresh")
    assert applied.code == 0, applied.err
    assert acked(emu) == {"P1/d2": [DESIRED_TEXT], "P1/d3": [DESIRED_TEXT]}
    assert "Apply: 2 applied, 0 failed" in applied.out
    records = load_state(env / STATE).devices
    assert json.loads(records["P1/d4"].observed or "") == hand_edited(uptime=999)
    assert json.loads(records["P1/d1"].observed or "") == DESIRED
    assert records["P1/d1"].observed_at and records["P1/d4"].observed_at
    assert records["P1/d2"].observed is None  # re-sent: what it reported is superseded

    again = cli(capsys, emu, "drift")
    assert again.code == 0, again.out + again.err
    assert "No changes. 4 device(s) already match the manifests." in again.out


def test_plan_json_and_markdown_carry_drift(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2"])
    emu.set_memory("P1/d1", hand_edited(unit="F"))
    emu.configure({"devices": {"P1/d2": {"offline": True}}})
    result = cli(capsys, emu, "plan", "--refresh", "--format", "json", "--out-markdown", "p.md")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["summary"] == {
        "create": 0,
        "update": 0,
        "retry": 0,
        "orphan": 0,
        "unchanged": 0,
        "drift": 1,
        "unreachable": 1,
    }
    (change,) = doc["changes"]
    assert (change["key"], change["action"], change["reason"]) == ("P1/d1", "drift", "drift")
    assert json.loads(change["observed"]) == hand_edited(unit="F")
    (unreachable,) = doc["unreachable"]
    assert unreachable["key"] == "P1/d2"
    assert unreachable["code"] == "FailedOperation.DeviceOffline"
    markdown = (env / "p.md").read_text(encoding="utf-8")
    assert "**Drift check:** 1 drifted, 2 probed, 1 unreachable." in markdown
    assert "! P1/d1" in markdown and 'params.unit: "F" → "C"' in markdown
    assert "- `P1/d2`: FailedOperation.DeviceOffline" in markdown


def test_unreachable_devices_are_reported_not_re_sent(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2", "d3"])
    emu.configure({"devices": {"P1/d2": {"offline": True}}})
    emu.set_memory("P1/d3", hand_edited(interval=5))
    result = cli(capsys, emu, "apply", "--refresh")
    assert result.code == 0, result.err
    assert acked(emu) == {"P1/d3": [DESIRED_TEXT]}
    per_device = emu.stats(include_log=False)["per_device"]
    assert per_device["P1/d2"]["requests"] == 1  # one probe: a device error is not retried
    assert (
        "  ? P1/d2  (configs/m.yaml:12)  FailedOperation.DeviceOffline: the device is offline"
        in result.out
    )
    record = load_state(env / STATE).devices["P1/d2"]
    assert (record.status, record.observed) == (Status.APPLIED, None)  # as it was


def test_probes_and_apply_never_overlap_on_a_device(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    devices = [f"d{i:02d}" for i in range(12)]
    emu = applied_fleet(capsys, env, emulator, devices, latency=0.05)
    drifted = devices[::2]
    for name in drifted:
        emu.set_memory(f"P1/{name}", None)
    result = cli(capsys, emu, "apply", "--refresh", "--parallelism", "6")
    assert result.code == 0, result.err
    stats = emu.stats()
    assert stats["concurrency_violations"] == 0
    assert set(acked(emu)) == {f"P1/{name}" for name in drifted}
    by_device: dict[str, list[dict[str, Any]]] = {}
    for entry in stats["log"]:
        by_device.setdefault(entry["device"], []).append(entry)
    for name in drifted:
        probe_entry, apply_entry = sorted(by_device[f"P1/{name}"], key=lambda e: e["t"])
        assert probe_entry["t_end"] <= apply_entry["t"]
    assert max(e["t_end"] for e in stats["log"] if not e["applied"]) <= min(
        e["t"] for e in stats["log"] if e["applied"]
    )


def test_transient_probe_errors_are_retried(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1"])
    emu.configure({"devices": {"P1/d1": {"fail_times": 2}}})
    result = cli(capsys, emu, "drift", "--retries", "3")
    assert result.code == 0, result.err
    assert emu.stats(include_log=False)["per_device"]["P1/d1"]["requests"] == 3
    assert "Drift check: 1 device(s) probed, 0 unreachable." in result.out


def test_no_op_apply_refresh_saves_what_the_probes_saw(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1"])
    serial = load_state(env / STATE).serial
    result = cli(capsys, emu, "apply", "--refresh")
    assert result.code == 0, result.err
    state = load_state(env / STATE)
    assert state.serial == serial + 1
    assert state.devices["P1/d1"].observed == DESIRED_TEXT
    assert acked(emu) == {}


def test_saved_refreshed_plan_applies_its_drift(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2"])
    emu.set_memory("P1/d1", None)
    assert cli(capsys, emu, "plan", "--refresh", "--out", "plan.json").code == 0
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url, *FAST)
    assert result.code == 0, result.err
    assert "! P1/d1" in result.err + result.out
    assert acked(emu) == {"P1/d1": [DESIRED_TEXT]}
    refused = run(capsys, "apply", "plan.json", "--refresh", "--auto-approve")
    assert refused.code == 1
    assert "--refresh cannot be used with a saved plan" in refused.err


def test_sensitive_payloads_stay_masked_in_observations(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hunter2-drift-s3cret"
    monkeypatch.setenv("DEVICE_PASSWORD", secret)
    text = PROBED.replace("unit: C}", "unit: C, password: '${env:DEVICE_PASSWORD}'}")
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1", "d2"], text)
    assert cli(capsys, emu, "apply").code == 0
    leaked = dict(hand_edited(interval=1), params={"interval": 1, "password": secret})
    emu.set_memory("P1/d2", leaked)
    plan = cli(capsys, emu, "plan", "--refresh", "--format", "json")
    shown = cli(capsys, emu, "plan", "--refresh")
    applied = cli(capsys, emu, "apply", "--refresh")
    assert applied.code == 0, applied.err
    assert 'password: "(sensitive)"' not in shown.out  # equal after masking: not a difference
    assert "params.interval: 1 → 30" in shown.out
    for output in (plan.out, plan.err, shown.out, shown.err, applied.out, applied.err):
        assert secret not in output
    observed = load_state(env / STATE).devices["P1/d1"].observed or ""
    assert "(sensitive)" in observed and secret not in observed
    assert secret.encode() not in (env / STATE).read_bytes()


# --------------------------------------------------------------------------- --resync-after


def test_resync_after_selects_exactly_the_stale_devices(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1", "d2", "d3", "d4"], NO_PROBE)
    assert cli(capsys, emu, "apply").code == 0
    now = datetime.now(timezone.utc)
    ages = {"P1/d1": timedelta(days=30), "P1/d2": timedelta(hours=1), "P1/d3": timedelta(days=2)}
    state = load_state(env / STATE)
    for key, age in ages.items():
        when = (now - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        state.devices[key] = state.devices[key]._replace(applied_at=when)
    save_state(state)
    emu.reset()

    plan = cli(capsys, emu, "plan", "--resync-after", "24h", "--format", "json")
    assert plan.code == 0, plan.err
    changes = json.loads(plan.out)["changes"]
    assert [(c["key"], c["action"], c["reason"]) for c in changes] == [
        ("P1/d1", "drift", "stale"),
        ("P1/d3", "drift", "stale"),
    ]
    text = cli(capsys, emu, "plan", "--resync-after", "1d", "--detail", "full")
    assert "  ! P1/d1  (configs/m.yaml:8)  stale: last applied " in text.out
    grouped = cli(capsys, emu, "plan", "--resync-after", "1d")
    assert "  ! 2 devices in m1  stale: last applied longer ago than --resync-after, re-sent" in (
        grouped.out_lines
    )
    assert "2 drifted" in text.out
    applied = cli(capsys, emu, "apply", "--resync-after", "24h")
    assert applied.code == 0, applied.err
    assert set(acked(emu)) == {"P1/d1", "P1/d3"}
    assert emu.stats(include_log=False)["requests_total"] == 2
    assert cli(capsys, emu, "plan", "--resync-after", "24h").out.startswith("No changes.")
    bad = cli(capsys, emu, "plan", "--resync-after", "soon")
    assert bad.code == 1 and "'soon' is not a duration" in bad.err


def test_probed_devices_are_not_resynced_blindly(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2"])
    state = load_state(env / STATE)
    for key in ("P1/d1", "P1/d2"):
        state.devices[key] = state.devices[key]._replace(applied_at="2020-01-01T00:00:00Z")
    save_state(state)
    emu.configure({"devices": {"P1/d2": {"offline": True}}})
    result = cli(capsys, emu, "apply", "--refresh", "--resync-after", "1h")
    assert result.code == 0, result.err
    assert acked(emu) == {}  # d1 answered in sync; d2 is unreachable, not re-sent
    assert "? P1/d2" in result.out


# --------------------------------------------------------------------------- rrpcsync drift


def test_drift_command_exit_codes(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = applied_fleet(capsys, env, emulator, ["d1", "d2"])
    in_sync = cli(capsys, emu, "drift")
    assert in_sync.code == 0, in_sync.err
    emu.set_memory("P1/d2", hand_edited(interval=99))
    drifted = cli(capsys, emu, "drift", "--out-markdown", "drift.md")
    assert drifted.code == 2, drifted.err
    assert "! P1/d2" in drifted.out
    assert "**Drift check:** 1 drifted" in (env / "drift.md").read_text(encoding="utf-8")
    assert acked(emu) == {}  # report only: nothing is sent to fix it

    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "a-wrong-token")
    refused = cli(capsys, emu, "drift")
    assert refused.code == 1
    assert "the access token was rejected" in refused.err
    write(env / "configs" / "m.yaml", PROBED.replace("DEVICES", "d1").replace("/config", "config"))
    invalid = cli(capsys, emu, "drift")
    assert invalid.code == 1
    assert "configs/m.yaml:10:14: error: $.spec.probe.pointer: invalid JSON pointer" in invalid.err


def test_drift_without_probes_needs_no_token(
    capsys: pytest.CaptureFixture[str], env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest(env, ["d1"], NO_PROBE)
    monkeypatch.delenv("RRPCSYNC_ACCESS_TOKEN")
    result = run(capsys, "drift", "configs")
    assert result.code == 2  # never applied: a create is pending
    assert "Plan: 1 to create" in result.out


def test_action_drift_command_runs_rrpcsync_drift(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .test_github import Step

    work = env / "repo"  # the action's step writes its outputs next to the work tree
    (env / "runner").mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    emu = applied_fleet(capsys, work, emulator, ["d1", "d2"])
    emu.set_memory("P1/d1", None)
    inputs = {"command": "drift", "paths": "configs", "state": STATE}
    step = Step(work, inputs, RRPCSYNC_ENDPOINT=emu.url, RRPCSYNC_ACCESS_TOKEN=TOKEN)
    assert step.code == 0, step.proc.stderr  # exit 2 "drift found" is not a failure
    assert "+ rrpcsync drift --out-markdown" in step.proc.stdout
    assert (step.outputs["exitcode"], step.outputs["has-changes"]) == ("2", "true")
    assert "! P1/d1" in Path(step.outputs["plan-markdown-file"]).read_text(encoding="utf-8")
    assert acked(emu) == {}


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("probe_yaml", "where", "message"),
    [
        ("{pointer: config}", "8:20", "'config' must be empty or start with '/'"),
        ("{ignore: [/a, /b~2]}", "8:24", "'~' must be followed by 0 or 1"),
        ("{ignore: ['']}", "8:20", "would leave nothing to compare"),
        ("{payload: {p: '${env:X}'}}", "8:11", "cannot reference environment variables"),
        ("{payload: 3}", "8:20", "must be a mapping, a list or a string, not a number (3)"),
        ("{points: /config}", "8:19", "unknown key 'points'"),
    ],
)
def test_bad_probes_are_validate_errors_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, probe_yaml: str, where: str, message: str
) -> None:
    text = PROBED.replace("DEVICES", "d1")
    start, end = text.index("  probe:"), text.index("  devices:")
    path = write(tmp_path / "m.yaml", text[:start] + f"  probe: {probe_yaml}\n" + text[end:])
    result = run(capsys, "validate", str(path))
    assert result.code == 1
    assert result.err_lines[0].startswith(f"{path}:{where}: error: $.spec.probe"), result.err
    assert message in result.err_lines[0]


# --------------------------------------------------------------------------- comparing


@pytest.mark.parametrize(
    ("desired", "reported", "ignore", "matches"),
    [
        (DESIRED_TEXT, DESIRED, (), True),
        (DESIRED_TEXT, json.dumps(DESIRED), (), True),  # config kept as JSON text
        (DESIRED_TEXT, hand_edited(interval=30.0), (), True),
        (DESIRED_TEXT, hand_edited(interval=31), (), False),
        (DESIRED_TEXT, hand_edited(uptime=5), (), False),
        (DESIRED_TEXT, hand_edited(uptime=5), ("/params/uptime",), True),
        (DESIRED_TEXT, {"params": DESIRED["params"]}, ("/method",), True),
        (DESIRED_TEXT, None, (), False),
        ('{"on":true}', {"on": 1}, (), False),
        ('{"l":[1,2,3]}', {"l": [1, 9, 3]}, ("/l/1",), True),
        ("reboot now", "reboot now", (), True),
        ("reboot now", "reboot later", (), False),
    ],
)
def test_compare(desired: str, reported: Any, ignore: tuple[str, ...], matches: bool) -> None:
    assert probe.compare(desired, reported, ignore).matches is matches


def test_ignored_values_do_not_show_as_differences() -> None:
    reported = {"params": {"interval": 10, "uptime": 5}}
    compared = probe.compare(DESIRED_TEXT, reported, ("/params/uptime", "/method")).compared
    assert compared == {"method": "set_config", "params": {"interval": 10}}


def test_reported_config_and_durations() -> None:
    assert probe.reported_config('{"code":0,"config":{"a~/b":1}}', "/config/a~0~1b") == 1
    assert probe.reported_config('{"config":null}', "/config") is None
    for text, code in [(None, probe.NO_REPLY), ("OK", probe.NOT_JSON), ("{}", probe.NO_CONFIG)]:
        with pytest.raises(probe.ProbeReplyError) as caught:
            probe.reported_config(text, "/config")
        assert caught.value.code == code
    assert probe.parse_duration("30m") == 1800
    assert probe.parse_duration("1h30m") == 5400
    assert probe.parse_duration("7d") == 7 * 86400
    for bad in ("", "7", "1y", "0s", "h1"):
        with pytest.raises(ValueError):
            probe.parse_duration(bad)


# --------------------------------------------------------------------------- emulator


def test_emulator_answers_probes_from_memory_without_changing_it(emulator: Any) -> None:
    emu = emulator({"auto_devices": True})

    def send(payload: str) -> Any:
        body = {
            "Action": "AppPublishRRPCMessage",
            "RequestId": "r-1",
            "AccessToken": TOKEN,
            "ProductId": "P1",
            "DeviceName": "d1",
            "Payload": payload,
        }
        reply = httpx.post(emu.url, json=body).json()["Response"]["PayloadBase64"]
        return json.loads(__import__("base64").b64decode(reply))

    assert send('{"method":"get_config"}') == {"code": 0, "config": None}
    send('{"v":1}')
    assert send('{"method":"get_config"}') == {"code": 0, "config": {"v": 1}}
    send("plain text")
    assert send('{"method":"get_config"}') == {"code": 0, "config": "plain text"}
    response = httpx.post(f"{emu.url}_emulator/memory", json={"device": "P1/d1", "payload": None})
    assert response.json() == {"ok": True}
    assert send('{"method":"get_config"}')["config"] is None
    stats = emu.stats()["per_device"]["P1/d1"]
    assert (stats["requests"], stats["ok"], stats["acked"]) == (6, 2, ['{"v":1}', "plain text"])
    assert not [e for e in emu.stats()["log"] if e["applied"] and "get_config" in str(e)]
    emu.configure({"probe_method": None})  # no probes: every payload is a config
    assert send('{"method":"get_config"}') == {"code": 0}
    assert emu.fleet.to_dict()["probe_method"] is None


# --------------------------------------------------------------------------- state


def test_observations_are_optional_record_fields() -> None:
    old = record_to_dict(DeviceRecord(Status.APPLIED, payload="p"))
    assert "observed" not in old and "observed_at" not in old  # never probed: as before
    assert record_from_dict("P/d", old) == DeviceRecord(Status.APPLIED, payload="p")
    seen = DeviceRecord(Status.APPLIED, observed='{"a":"é"}', observed_at="2026-11-28T12:00:00Z")
    records = {"P/a": seen, "P/b": DeviceRecord(Status.FAILED, observed_at="t")}
    state = State(Path("s.json"), "L", 1, records)
    document = state_document(state, 2)
    assert state_text(state, 2) == json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    for key, record in records.items():
        entry = {"v": 1, "lineage": "L", "base_serial": 1, "key": key}
        entry["record"] = record_to_dict(record)
        compact = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        assert journal_text("L", 1, key, record) == compact + "\n"
        assert record_from_dict(key, record_to_dict(record)) == record
    with pytest.raises(Exception, match="field 'observed' must be a string or null"):
        record_from_dict("P/d", {**old, "observed": 3})
    with pytest.raises(Exception, match="unknown field 'observd'"):
        record_from_dict("P/d", {**old, "observd": "x"})


def test_old_state_files_load_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / STATE
    state = State(path, "L", 0, {"P/a": DeviceRecord(Status.APPLIED, payload="p")})
    save_state(state)
    assert '"observed' not in path.read_text(encoding="utf-8")
    loaded = load_state(path)
    loaded.devices["P/a"] = loaded.devices["P/a"]._replace(observed="{}", observed_at="now")
    save_state(loaded)
    assert load_state(path).devices == loaded.devices
