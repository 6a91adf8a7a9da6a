"""Operator safety (issue 13): apply touches exactly what the operator chose and stops when
the run itself is broken. Every test drives the CLI against the emulator over a real socket and
checks the exit code, what the emulator received and what the state holds afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.state.jsonfile import load_state

from .helpers import ROOT, Result, manifest_text, run, write

TOKEN = "emulator-token"
STATE = "rrpcsync.state.json"
FAST = ("--rate", "500", "--retry-backoff", "0.01")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fleet(path: Path, devices: list[str], payload: str = "{method: set, params: {v: 1}}") -> None:
    write(
        path / "configs" / "m.yaml",
        manifest_text(devices="[" + ", ".join(devices) + "]", payload=payload),
    )


def names(count: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


def cli(capsys: pytest.CaptureFixture[str], emu: Any, command: str, *extra: str) -> Result:
    args = [command, *extra, "--endpoint", emu.url]
    if command == "apply":
        args += ["--auto-approve", *FAST]
    return run(capsys, *args)


def sent_to(emu: Any) -> dict[str, int]:
    per_device = emu.stats()["per_device"]
    return {key: info["requests"] for key, info in per_device.items() if info["requests"]}


def requests(emu: Any) -> int:
    return int(emu.stats(include_log=False)["requests_total"])


def state_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def records(path: Path) -> dict[str, Any]:
    return load_state(path / STATE).devices


# --------------------------------------------------------------------------- saved plans


@pytest.mark.parametrize(
    "flag",
    [
        ("--target", "P1/d00"),
        ("--exclude", "P1/d00"),
        ("--selector", "site=x"),
        ("--only-failed",),
        ("--prune",),
        ("--refresh",),
        ("--resync-after", "1d"),
    ],
    ids=lambda flag: flag[0],
)
def test_saved_plan_refuses_every_flag_that_would_narrow_or_change_it(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, flag: tuple[str, ...]
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(3))
    assert cli(capsys, emu, "apply", "configs").code == 0
    fleet(env, names(3), payload="{method: set, params: {v: 2}}")
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    before = state_bytes(env / STATE)
    emu.reset()
    result = cli(capsys, emu, "apply", "plan.json", *flag)
    assert result.code == 1
    assert f"{flag[0]} cannot be used with a saved plan" in result.err
    assert requests(emu) == 0
    assert state_bytes(env / STATE) == before


@pytest.mark.parametrize(
    ("flags", "code", "sent"),
    [
        (("--canary", "1"), 3, 1),  # the canary (d00) fails: nobody else is sent
        (("--max-failures", "0", "--parallelism", "1"), 3, 1),
        (("--max-failure-rate", "10", "--min-sample", "1", "--parallelism", "1"), 3, 1),
        (("--waves", "2,100%", "--parallelism", "1"), 3, 4),
        (("--max-sends", "3"), 1, 0),
        (("--max-sends", "100%"), 3, 4),
    ],
    ids=[
        "canary",
        "max-failures",
        "max-failure-rate",
        "waves",
        "max-sends-refused",
        "max-sends-ok",
    ],
)
def test_rollout_and_sending_flags_apply_to_a_saved_plan(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    flags: tuple[str, ...],
    code: int,
    sent: int,
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d00": {"offline": True}}})
    fleet(env, names(4))
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    result = cli(capsys, emu, "apply", "plan.json", "--retries", "0", *flags)
    assert result.code == code, result.err
    assert sum(sent_to(emu).values()) == sent
    if sent:
        assert "P1/d00" in sent_to(emu)
        assert records(env)["P1/d00"].status.value == "failed"
        assert len(records(env)) == sent
    else:
        assert not (env / STATE).exists()
    if "--waves" in flags:
        assert "rollout: wave 2/2" in result.err


def test_a_stale_saved_plan_names_how_many_and_the_first_keys(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(8))
    assert cli(capsys, emu, "apply", "configs").code == 0
    fleet(env, names(8), payload="{method: set, params: {v: 2}}")
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    fleet(env, names(8), payload="{method: set, params: {v: 3}}")
    assert cli(capsys, emu, "apply", "configs", "--exclude", "P1/d07").code == 0
    before = state_bytes(env / STATE)
    emu.reset()
    result = cli(capsys, emu, "apply", "plan.json")
    assert result.code == 1
    assert (
        "plan.json: saved plan is stale: 7 of its 8 change(s) no longer match rrpcsync.state.json"
        in result.err
    )
    assert "P1/d00, P1/d01, P1/d02, P1/d03, P1/d04 and 2 more; nothing was sent" in result.err
    assert requests(emu) == 0  # not even d07, whose change is still fresh
    assert state_bytes(env / STATE) == before


def test_the_same_saved_plan_twice_sends_nothing_the_second_time(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d02": {"offline": True}}})
    fleet(env, names(3))
    assert cli(capsys, emu, "apply", "configs", "--retries", "0").code == 3
    fleet(env, names(3), payload="{method: set, params: {v: 2}}")
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    emu.configure({"devices": {"P1/d02": {"offline": False}}})
    emu.configure({"devices": {"P1/d01": {"offline": True}}})
    first = cli(capsys, emu, "apply", "plan.json", "--retries", "0")
    assert first.code == 3
    assert sent_to(emu) == {"P1/d00": 2, "P1/d01": 2, "P1/d02": 2}
    before = state_bytes(env / STATE)
    second = cli(capsys, emu, "apply", "plan.json", "--retries", "0")
    assert second.code == 1  # d01 failed in between: its change is stale, the plan refused
    assert "saved plan is stale: 1 of its 3 change(s)" in second.err and "P1/d01" in second.err
    assert sent_to(emu) == {"P1/d00": 2, "P1/d01": 2, "P1/d02": 2}
    assert state_bytes(env / STATE) == before


def test_a_saved_plan_shows_the_same_diff_as_plan_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIFI_KEY", "hunter2-secret")
    payload = "{method: set, params: {interval: 30, key: '${env:WIFI_KEY}'}}"
    emu = emulator({"auto_devices": True})
    fleet(env, ["d1"], payload=payload)
    assert cli(capsys, emu, "apply", "configs").code == 0
    fleet(env, ["d1"], payload=payload.replace("30", "45"))
    planned = run(capsys, "plan", "configs", "--out", "plan.json")
    applied = cli(capsys, emu, "apply", "plan.json")
    assert applied.code == 0, applied.err
    assert "      params.interval: 30 → 45" in planned.out
    plan_lines = planned.out.splitlines()[: planned.out.splitlines().index("")]
    assert applied.out.splitlines()[: len(plan_lines)] == plan_lines
    assert "(none)" not in applied.out
    assert "hunter2-secret" not in applied.out + applied.err + planned.out
    assert emu.stats()["per_device"]["P1/d1"]["acked"][-1] == (
        '{"method":"set","params":{"interval":45,"key":"hunter2-secret"}}'
    )


def test_a_saved_plan_mixed_with_manifest_paths_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, ["d1"])
    assert run(capsys, "plan", "configs", "--out", "p.json").code == 0
    result = cli(capsys, emu, "apply", "p.json", "configs/")
    assert result.code == 1
    assert result.err.strip() == (
        "error: p.json is a saved plan: apply it alone (`rrpcsync apply p.json`), without "
        "manifest paths or other plans"
    )
    assert requests(emu) == 0 and not (env / STATE).exists()


# --------------------------------------------------------------------------- a missing state


def test_a_missing_state_is_said_before_the_plan_and_recorded_in_json_and_markdown(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(4))
    notice = "no state at typo.json: all 4 declared devices are new"
    planned = run(capsys, "plan", "configs", "--state", "typo.json", "--out-markdown", "p.md")
    assert planned.code == 0 and planned.err_lines[0] == notice
    as_json = run(capsys, "plan", "configs", "--state", "typo.json", "--format", "json")
    assert json.loads(as_json.out)["state"] == "new" and notice in as_json.err
    markdown = (env / "p.md").read_text(encoding="utf-8")
    assert "**No state** at `typo.json`: every declared device is new." in markdown
    drift = cli(capsys, emu, "drift", "configs", "--state", "typo.json")
    assert notice in drift.err
    applied = cli(capsys, emu, "apply", "configs", "--state", "typo.json")
    assert applied.code == 0 and applied.err_lines[0] == notice
    assert len(sent_to(emu)) == 4 and len(load_state(env / "typo.json").devices) == 4
    existing = run(capsys, "plan", "configs", "--state", "typo.json", "--format", "json")
    assert json.loads(existing.out)["state"] == "existing" and "no state" not in existing.err


@pytest.mark.parametrize(
    ("limit", "code", "sent"),
    [("3", 1, 0), ("4", 0, 4), ("50%", 1, 0), ("100%", 0, 4), ("10%", 1, 0)],
)
def test_max_sends_refuses_above_the_limit_before_sending(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    limit: str,
    code: int,
    sent: int,
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(4))
    result = cli(capsys, emu, "apply", "configs", "--max-sends", limit)
    assert result.code == code, result.err
    assert len(sent_to(emu)) == sent
    if code:
        assert f"the plan would send to 4 device(s), above --max-sends {limit}" in result.err
        assert "nothing was sent" in result.err
        assert not (env / STATE).exists()
    else:
        assert len(records(env)) == 4


def test_max_sends_counts_percent_of_the_selected_devices_and_reads_its_env(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(10))
    assert cli(capsys, emu, "apply", "configs").code == 0
    fleet(env, names(10), payload="{method: set, params: {v: 2}}")
    emu.reset()
    monkeypatch.setenv("RRPCSYNC_MAX_SENDS", "50%")
    refused = cli(capsys, emu, "apply", "configs", "--target", "P1/d0[0-3]")
    assert refused.code == 1
    assert "above --max-sends 50% (2 of 4 selected device(s))" in refused.err
    assert requests(emu) == 0
    ok = cli(capsys, emu, "apply", "configs", "--target", "P1/d0[0-3]", "--max-sends", "4")
    assert ok.code == 0, ok.err
    assert sorted(sent_to(emu)) == ["P1/d00", "P1/d01", "P1/d02", "P1/d03"]
    bad = cli(capsys, emu, "apply", "configs", "--max-sends", "lots")
    assert bad.code == 1 and "--max-sends" in bad.err


@pytest.mark.parametrize("command", [("state", "list"), ("state", "show", "P1/d1")])
def test_state_list_and_show_on_a_missing_state_exit_1_naming_it(
    capsys: pytest.CaptureFixture[str], env: Path, command: tuple[str, ...]
) -> None:
    result = run(capsys, *command, "--state", "typo.json")
    assert result.code == 1
    assert "error: no state at typo.json" in result.err
    assert "0 device" not in result.err + result.out
    assert not (env / "typo.json").exists()


# --------------------------------------------------------------------------- a broken run


def test_an_unreachable_endpoint_stops_the_run_and_keeps_previous_records(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(30))
    assert cli(capsys, emu, "apply", "configs").code == 0
    before = records(env)
    fleet(env, [*names(30), *names(10, "new")], payload="{method: set, params: {v: 2}}")
    url = emu.url
    emu.stop()  # its port now refuses connections
    started = time.monotonic()
    result = run(
        capsys,
        "apply",
        "configs",
        "--auto-approve",
        "--endpoint",
        url,
        "--parallelism",
        "4",
        "--format",
        "json",
        "--retry-backoff",
        "0.01",
    )
    assert time.monotonic() - started < 15
    assert result.code == 1
    assert f"error: cannot reach {url}: " in result.err
    report = json.loads(result.out)
    assert report["fatal"]["code"] == "Transport.ConnectError"
    assert report["fatal"]["message"].startswith(f"cannot reach {url}: ")
    assert report["requests"] <= 8  # about one round of --parallelism, no hour of retries
    assert report["failed"] == {} and report["applied"] == []
    assert len(report["not_sent"]) == 40
    assert records(env) == before  # nothing became `failed`; the new devices stay unknown
    replan = run(capsys, "plan", "configs")
    assert "to retry" in replan.out and "0 to retry" in replan.out
    assert "Plan: 10 to create, 30 to update, 0 to retry" in replan.out


@pytest.mark.parametrize(("parallelism", "devices", "most"), [("1", 5, 3), ("10", 3, 3)])
def test_a_broken_endpoint_is_noticed_after_one_round_of_requests(
    capsys: pytest.CaptureFixture[str], env: Path, parallelism: str, devices: int, most: int
) -> None:
    fleet(env, names(devices))
    result = run(
        capsys,
        "apply",
        "configs",
        "--auto-approve",
        "--endpoint",
        "http://127.0.0.1:9/",
        "--parallelism",
        parallelism,
        "--retry-backoff",
        "0.01",
        "--format",
        "json",
    )
    assert result.code == 1
    report = json.loads(result.out)
    assert report["requests"] == most and len(report["not_sent"]) == devices
    assert records(env) == {}


def test_an_endpoint_that_breaks_mid_run_keeps_the_unsent_devices_as_they_were(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(40))
    assert cli(capsys, emu, "apply", "configs").code == 0
    before = records(env)
    fleet(env, names(40), payload="{method: set, params: {v: 2}}")
    emu.reset()
    url = emu.url
    stopper = threading.Timer(0.4, emu.stop)
    stopper.start()
    try:
        result = run(
            capsys,
            "apply",
            "configs",
            "--auto-approve",
            "--endpoint",
            url,
            "--rate",
            "20",
            "--parallelism",
            "2",
            "--retry-backoff",
            "0.01",
        )
    finally:
        stopper.join()
    assert result.code == 1, result.err
    assert f"cannot reach {url}" in result.err
    acked = {key for key, info in emu.stats()["per_device"].items() if info["acked"]}
    after = records(env)
    assert 0 < len(acked) < 40
    changed = {key for key in after if after[key] != before[key]}
    assert acked <= changed
    assert len(changed - acked) <= 2  # at most the requests in flight when it broke
    assert {after[key].payload for key in set(after) - changed} == {before["P1/d00"].payload}


def test_a_refused_token_keeps_previous_records_and_the_next_plan_shows_no_token_retries(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(6))
    assert cli(capsys, emu, "apply", "configs").code == 0
    before = records(env)
    fleet(env, [*names(6), "extra"], payload="{method: set, params: {v: 2}}")
    emu.reset()
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "expired-token")
    result = cli(capsys, emu, "apply", "configs", "--format", "json", "--parallelism", "2")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["fatal"]["code"] == "InvalidParameterValue.InvalidAccessToken"
    assert report["fatal"]["message"].startswith(
        "the access token was rejected (InvalidParameterValue.InvalidAccessToken); "
    )
    assert result.err_lines[-1] == f"error: {report['fatal']['message']}"
    assert report["failed"] == {} and 1 <= requests(emu) <= 3
    assert records(env) == before
    replan = run(capsys, "plan", "configs")
    assert "InvalidAccessToken" not in replan.out
    assert "Plan: 1 to create, 6 to update, 0 to retry" in replan.out


def test_without_a_token_apply_errors_before_printing_the_plan(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RRPCSYNC_ACCESS_TOKEN")
    emu = emulator({"auto_devices": True})
    fleet(env, names(2))
    result = cli(capsys, emu, "apply", "configs")
    assert result.code == 1
    assert result.out == ""  # no plan printed first
    assert "RRPCSYNC_ACCESS_TOKEN" in result.err
    assert requests(emu) == 0 and not (env / STATE).exists()


# --------------------------------------------------------------------------- selections


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (
            ("--target", "THERM01/*"),
            "--target 'THERM01/*' matches no declared device; did you mean THERMO01/*?",
        ),
        (
            ("--exclude", "THERMO01/dx07"),
            "--exclude 'THERMO01/dx07' matches no declared device; did you mean THERMO01/d07?",
        ),
        (
            ("--selector", "site=shanghia"),
            "--selector 'site=shanghia' matches no declared device; did you mean site=shanghai?",
        ),
        (
            ("--selector", "sight=shanghai"),
            "--selector 'sight=shanghai' matches no declared device; did you mean site=shanghai?",
        ),
    ],
)
@pytest.mark.parametrize("command", ["plan", "apply", "drift"])
def test_a_selection_typo_is_an_error_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    emulator: Any,
    command: str,
    flag: tuple[str, str],
    message: str,
) -> None:
    emu = emulator({"auto_devices": True})
    labelled = manifest_text(product="THERMO01", devices="[d07, d08]").replace(
        "spec:\n", "  labels: {site: shanghai}\nspec:\n"
    )
    write(env / "configs" / "m.yaml", labelled)
    result = cli(capsys, emu, command, "configs", *flag)
    assert result.code == 1
    assert result.err.strip() == f"error: {message}"
    assert requests(emu) == 0 and not (env / STATE).exists()


def test_an_active_selection_is_said_in_the_plan_summary(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet(env, names(10))
    planned = run(capsys, "plan", "configs", "--target", "P1/d0[0-2]", "--format", "json")
    assert json.loads(planned.out)["selection"] == {"selected": 3, "declared": 10}
    markdown = run(capsys, "plan", "configs", "--target", "P1/d0[0-2]", "--format", "markdown")
    assert "**Selection:** 3 of 10 declared devices." in markdown.out
    applied = cli(capsys, emu, "apply", "configs", "--target", "P1/d0[0-2]")
    assert applied.code == 0
    assert (
        "Plan: 3 to create, 0 to update, 0 to retry, 0 orphaned, 0 unchanged. "
        "(selection: 3 of 10 declared devices)"
    ) in applied.out
    assert len(sent_to(emu)) == 3 and len(records(env)) == 3
    again = run(capsys, "plan", "configs", "--exclude", "P1/d09")
    assert "(selection: 9 of 10 declared devices)" in again.out
    whole = run(capsys, "plan", "configs")
    assert "selection" not in whole.out


# --------------------------------------------------------------------------- signals


def start(workdir: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RRPCSYNC_ACCESS_TOKEN": TOKEN, "RRPCSYNC_ENDPOINT": url}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", *args],
        cwd=workdir,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(emu: Any, count: int) -> None:
    deadline = time.monotonic() + 20
    while requests(emu) < count:
        assert time.monotonic() < deadline, "no request arrived"
        time.sleep(0.01)


def test_sigterm_during_apply_says_what_it_waits_for_and_the_summary_says_interrupted(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.4}})
    fleet(tmp_path, names(30))
    proc = start(
        tmp_path,
        emu.url,
        "apply",
        "configs",
        "--auto-approve",
        "--parallelism",
        "4",
        "--rate",
        "100",
    )
    wait_for(emu, 4)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: waiting for 4 in-flight requests (Ctrl-C again to abandon them)" in err
    assert out.splitlines()[-1].startswith("Apply interrupted: ")
    state = load_state(tmp_path / STATE).devices
    assert {record.status.value for record in state.values()} == {"applied"}
    assert set(state) == set(sent_to(emu)) and len(state) < 30


def test_sigterm_while_waiting_for_the_lock_exits_130_with_a_message(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.5}})
    fleet(tmp_path, names(8))
    args = ("apply", "configs", "--auto-approve", "--parallelism", "1", "--rate", "100")
    holder = start(tmp_path, emu.url, *args)
    try:
        wait_for(emu, 1)
        waiter = start(tmp_path, emu.url, *args, "--lock-timeout", "30")
        time.sleep(1.0)
        waiter.send_signal(signal.SIGTERM)
        _, err = waiter.communicate(timeout=20)
    finally:
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=30)
    assert waiter.returncode == 130
    assert "interrupted (SIGTERM)" in err
    assert "Traceback" not in err


PROBED = """\
apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata:
  name: m1
spec:
  productId: P1
  payload: {method: set, params: {v: 1}}
  probe: {payload: {method: get}}
  devices: [DEVICES]
"""


def test_sigterm_during_drift_probes_exits_130_with_a_message(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.5}})
    write(tmp_path / "configs" / "m.yaml", PROBED.replace("DEVICES", ", ".join(names(3))))
    state = load_state(tmp_path / STATE)
    proc = start(tmp_path, emu.url, "apply", "configs", "--auto-approve", "--rate", "100")
    assert proc.communicate(timeout=30) and proc.returncode == 0
    before = state_bytes(tmp_path / STATE)
    emu.reset()
    proc = start(tmp_path, emu.url, "drift", "configs", "--parallelism", "1")
    wait_for(emu, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert requests(emu) < 3
    assert state_bytes(tmp_path / STATE) == before
    assert not state.exists


# --------------------------------------------------------------------------- say what failed


def test_apply_lists_failed_devices_per_code_in_text_and_the_step_summary(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = {f"P1/off{i:02d}": {"offline": True} for i in range(25)}
    emu = emulator(
        {"auto_devices": True, "devices": {**offline, "P1/nosub": {"no_subscription": True}}}
    )
    fleet(env, [*names(3), *names(25, "off"), "nosub"])
    summary = env / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = cli(capsys, emu, "apply", "configs", "--retries", "0")
    assert result.code == 3
    lines = result.out_lines
    start_at = lines.index("Failed with FailedOperation.DeviceOffline (25):")
    assert lines[start_at + 1 : start_at + 21] == [f"  P1/off{i:02d}" for i in range(20)]
    assert lines[start_at + 21] == "  … and 5 more: rrpcsync state list --status failed"
    assert "Failed with FailedOperation.DeviceNoSubscription (1):" in lines
    assert "  P1/nosub" in lines
    written = summary.read_text(encoding="utf-8")
    assert "Failed with FailedOperation.DeviceOffline (25):" in written
    assert "  … and 5 more: rrpcsync state list --status failed" in written
    assert sum(1 for r in records(env).values() if r.status.value == "failed") == 26


def test_drift_stays_green_for_devices_only_waiting_for_a_retry(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d01": {"offline": True}}})
    fleet(env, names(3))
    assert cli(capsys, emu, "apply", "configs", "--retries", "0").code == 3
    emu.reset()
    waiting = cli(capsys, emu, "drift", "configs")
    assert waiting.code == 0, waiting.err
    assert "↻ P1/d01" in waiting.out and "last error: FailedOperation.DeviceOffline" in waiting.out
    fleet(env, names(3), payload="{method: set, params: {v: 2}}")
    changed = cli(capsys, emu, "drift", "configs")
    assert changed.code == 2
    fleet(env, [*names(3), "d09"])
    created = cli(capsys, emu, "drift", "configs")
    assert created.code == 2
    assert requests(emu) == 0  # drift reports, never sends a fix
    assert records(env)["P1/d01"].status.value == "failed"
