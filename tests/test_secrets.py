"""`${env:NAME}` payload values: resolved at plan/apply time, never shown, logged or stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rrpcsync import secrets
from rrpcsync.manifests.loader import load_manifests
from rrpcsync.state.jsonfile import load_state

from .helpers import manifest_text, run, write

SECRET = "hunter2-Sup3rS3cret"
TOKEN = "emulator-token"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("WIFI_PASS", SECRET)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    payload = "{method: set_wifi, params: {ssid: lab, password: '${env:WIFI_PASS}'}}"
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2]", payload=payload))
    return tmp_path


def test_resolve_and_mask() -> None:
    template = '{"a":"x-${env:A}","b":"$${env:A}"}'
    assert secrets.resolve(template, True, {"A": 'q"1'}) == '{"a":"x-q\\"1","b":"${env:A}"}'
    assert secrets.mask(template) == '{"a":"x-(sensitive)","b":"${env:A}"}'
    assert secrets.resolve("PASS=${env:A};", False, {"A": "z"}) == "PASS=z;"
    with pytest.raises(secrets.MissingVariable):
        secrets.resolve("${env:NOPE}", False, {})


def test_payload_is_resolved_for_sending_and_masked_for_showing(env: Path) -> None:
    (one, _) = load_manifests([env / "configs"]).devices
    assert json.loads(one.payload)["params"]["password"] == SECRET
    assert json.loads(one.shown_payload)["params"]["password"] == "(sensitive)"


def test_missing_variable_is_an_error_naming_it_once_at_the_reference(
    capsys: pytest.CaptureFixture[str], env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WIFI_PASS")
    valid = run(capsys, "validate", "configs")  # validate never needs secret values
    assert valid.code == 0, valid.err
    assert valid.err_lines[-1] == "valid: 1 file(s), 1 manifest(s), 2 device(s)"
    for command in ("plan", "apply"):
        result = run(capsys, command, "configs")
        assert result.code == 1
        assert result.err_lines[:2] == [
            "configs/m.yaml:7:62: error: $.spec.devices[0].payload: environment variable "
            "WIFI_PASS is not set (referenced as ${env:WIFI_PASS})",
            "1 error(s); 1 file(s), 1 manifest(s), 2 device(s)",
        ], command


def test_a_changed_secret_plans_as_a_sensitive_change_never_the_value(
    capsys: pytest.CaptureFixture[str], env: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    assert run(capsys, "apply", "configs", "--auto-approve").code == 0
    monkeypatch.setenv("WIFI_PASS", "another-S3cret-value")
    planned = run(capsys, "plan", "configs")
    assert "  ~ 2 devices in m1: params.password: (sensitive value changed)" in planned.out_lines
    assert "another-S3cret-value" not in planned.out + planned.err
    assert SECRET not in planned.out + planned.err


def test_a_secret_changed_between_plan_and_apply_is_refused_clearly(
    capsys: pytest.CaptureFixture[str], env: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    monkeypatch.setenv("WIFI_PASS", "changed-in-between")
    result = run(capsys, "apply", "plan.json", "--auto-approve")
    assert result.code == 1
    assert result.err_lines[-1] == (
        "error: plan.json: a secret changed since the plan was made: ${env:WIFI_PASS} of P1/d1 "
        "now has another value than when it was planned; nothing was sent. Make a new plan "
        "(`rrpcsync plan --out PLAN.json`), or set the value the plan was made with"
    )
    assert emu.stats()["log"] == []
    assert "changed-in-between" not in result.out + result.err


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_plans_show_sensitive_never_the_value(
    capsys: pytest.CaptureFixture[str], env: Path, fmt: str
) -> None:
    result = run(capsys, "plan", "configs", "--format", fmt, "--out", "plan.json")
    assert result.code == 0
    assert SECRET not in result.out + result.err
    assert SECRET not in (env / "plan.json").read_text()
    if fmt != "json":
        assert "(sensitive)" in result.out


def test_full_run_leaks_neither_token_nor_secret(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "echo"}, "P1/d2": {"reply": "ok"}}})
    outputs = []
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    applied = run(capsys, "-v", "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert applied.code == 0, applied.err
    outputs += [applied.out, applied.err]
    assert '"Action": "AppPublishRRPCMessage"' in applied.err  # requests are logged, masked
    # the device really got the secret
    acked = emu.stats()["per_device"]["P1/d1"]["acked"]
    assert json.loads(acked[0])["params"]["password"] == SECRET
    listing = run(capsys, "-v", "state", "show", "P1/d1")
    outputs += [listing.out, listing.err]
    record = load_state(env / "rrpcsync.state.json").devices["P1/d1"]
    assert record.payload is not None and "(sensitive)" in record.payload
    assert record.reply_text is not None and "(sensitive)" in record.reply_text  # echoed
    for text in outputs:
        assert SECRET not in text and TOKEN not in text
    for path in env.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, path
            assert TOKEN.encode() not in data, path


def test_changed_secret_plans_an_update_without_showing_either(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator({"auto_devices": True})
    assert run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url).code == 0
    monkeypatch.setenv("WIFI_PASS", "another-secret-value")
    result = run(capsys, "plan", "configs")
    assert "Plan: 0 to create, 2 to update" in result.out
    assert "another-secret-value" not in result.out and SECRET not in result.out


def test_saved_plan_refuses_a_changed_variable(
    capsys: pytest.CaptureFixture[str], env: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    assert "payload_template" in (env / "plan.json").read_text()
    monkeypatch.setenv("WIFI_PASS", "changed")
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert "a secret changed since the plan was made: ${env:WIFI_PASS} of P1/d1" in result.err
    assert emu.stats()["requests_total"] == 0
