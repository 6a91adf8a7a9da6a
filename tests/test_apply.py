"""`rrpcsync apply` against the emulator over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.state.jsonfile import load_state

from .helpers import Result, manifest_text, run, write

TOKEN = "emulator-token"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fleet_manifest(path: Path, devices: list[str], payload: str = "{method: set, v: 1}") -> None:
    write(
        path / "configs" / "m.yaml",
        manifest_text(devices="[" + ", ".join(devices) + "]", payload=payload),
    )


def apply(capsys: pytest.CaptureFixture[str], emu: Any, *extra: str) -> Result:
    return run(
        capsys,
        "apply",
        "configs",
        "--auto-approve",
        "--rate",
        "500",
        "--retry-backoff",
        "0.01",
        "--endpoint",
        emu.url,
        *extra,
    )


def per_device(emu: Any) -> dict[str, Any]:
    return emu.stats()["per_device"]  # type: ignore[no-any-return]


def sent_to(emu: Any) -> dict[str, int]:
    return {key: info["requests"] for key, info in per_device(emu).items() if info["requests"]}


def test_apply_sends_each_device_once_and_records_replies(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "ok-1"}, "P1/d2": {"reply": "echo"}}})
    fleet_manifest(env, ["d1", "d2"])
    result = apply(capsys, emu)
    assert result.code == 0, result.err
    assert sent_to(emu) == {"P1/d1": 1, "P1/d2": 1}
    state = load_state(env / "rrpcsync.state.json")
    one, two = state.devices["P1/d1"], state.devices["P1/d2"]
    assert (one.status.value, one.reply_text, one.reply_base64) == ("applied", "ok-1", "b2stMQ==")
    assert two.reply_text == '{"method":"set","v":1}'
    assert one.payload == '{"method":"set","v":1}'
    assert one.attempts == 1 and one.message_id is not None and one.request_id
    assert per_device(emu)["P1/d1"]["acked"] == ['{"method":"set","v":1}']
    assert "Apply: 2 applied, 0 failed" in result.out
    assert not (env / "rrpcsync.state.json.journal").exists()


def test_second_apply_sends_nothing_and_does_not_rewrite_state(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1", "d2", "d3"])
    assert apply(capsys, emu).code == 0
    state_file = env / "rrpcsync.state.json"
    before = state_file.read_bytes()
    again = apply(capsys, emu)
    assert again.code == 0
    assert "No changes." in again.out
    assert emu.stats()["requests_total"] == 3
    assert state_file.read_bytes() == before


def test_one_changed_device_sends_exactly_one_request(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    text = manifest_text(devices="[d1, d2, {name: d3, payload: {v: 2}}]", payload="{v: 1}")
    write(env / "configs" / "m.yaml", text)
    assert apply(capsys, emu).code == 0
    write(env / "configs" / "m.yaml", text.replace("{v: 2}", "{v: 3}"))
    emu.reset()
    result = apply(capsys, emu)
    assert result.code == 0
    assert sent_to(emu) == {"P1/d3": 1}
    assert per_device(emu)["P1/d3"]["acked"] == ['{"v":3}']
    assert "  ~ P1/d3" in result.out


def test_device_errors_fail_those_devices_and_exit_3(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator(
        {
            "devices": {
                "P1/ok": {},
                "P1/off": {"offline": True},
                "P1/nosub": {"no_subscription": True},
                "P1/slow": {"rrpc_timeout": True},
            }
        }
    )
    fleet_manifest(env, ["ok", "off", "nosub", "slow", "ghost"])
    result = apply(capsys, emu)
    assert result.code == 3
    state = load_state(env / "rrpcsync.state.json").devices
    codes = {
        k: (r.status.value, r.last_error.code if r.last_error else None) for k, r in state.items()
    }
    assert codes == {
        "P1/ok": ("applied", None),
        "P1/off": ("failed", "FailedOperation.DeviceOffline"),
        "P1/nosub": ("failed", "FailedOperation.DeviceNoSubscription"),
        "P1/slow": ("failed", "FailedOperation.RRPCTimeout"),
        "P1/ghost": ("failed", "ResourceNotFound.DeviceNotExist"),
    }
    assert sent_to(emu) == {"P1/ok": 1, "P1/off": 1, "P1/nosub": 1, "P1/slow": 1}  # no retries
    assert "  failed      1  FailedOperation.DeviceOffline" in result.out
    plan = run(capsys, "plan", "configs")
    assert "↻ P1/off" in plan.out and "last error: FailedOperation.DeviceOffline" in plan.out


def test_failed_update_keeps_last_acknowledged_payload(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {}}})
    fleet_manifest(env, ["d1"], payload="{v: 1}")
    assert apply(capsys, emu).code == 0
    emu.configure({"devices": {"P1/d1": {"offline": True}}})
    fleet_manifest(env, ["d1"], payload="{v: 2}")
    assert apply(capsys, emu).code == 3
    record = load_state(env / "rrpcsync.state.json").devices["P1/d1"]
    assert (record.status.value, record.payload) == ("failed", '{"v":1}')
    assert (
        record.last_error is not None and record.last_error.code == "FailedOperation.DeviceOffline"
    )
    assert record.reply_text is not None


def test_flaky_devices_succeed_after_retries(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/f1": {"fail_times": 2}, "P1/f2": {"fail_times": 1}}})
    fleet_manifest(env, ["f1", "f2"])
    assert apply(capsys, emu, "--retries", "3").code == 0
    assert sent_to(emu) == {"P1/f1": 3, "P1/f2": 2}
    assert load_state(env / "rrpcsync.state.json").devices["P1/f1"].attempts == 3


def test_transient_errors_beyond_retries_fail(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/f1": {"fail_times": 5}}})
    fleet_manifest(env, ["f1"])
    assert apply(capsys, emu, "--retries", "2").code == 3
    assert sent_to(emu) == {"P1/f1": 3}
    record = load_state(env / "rrpcsync.state.json").devices["P1/f1"]
    assert record.last_error is not None and record.last_error.code == "InternalError"


def test_rate_limited_cloud_still_gets_every_device_applied(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "rate_limit": 20})
    devices = [f"d{i:02d}" for i in range(40)]
    fleet_manifest(env, devices)
    result = apply(capsys, emu, "--parallelism", "20", "--retries", "10", "--retry-backoff", "0.2")
    assert result.code == 0, result.out
    log_codes = {entry["code"] for entry in emu.stats()["log"]}
    assert "RequestLimitExceeded" in log_codes
    assert len(sent_to(emu)) == 40


def test_invalid_token_stops_the_run_and_marks_nothing_applied(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "not-the-token-s3cr3t"
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", secret)
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, [f"d{i}" for i in range(20)])
    result = apply(capsys, emu, "--parallelism", "2")
    assert emu.stats()["requests_total"] <= 4  # stopped dispatching after the first answers
    result_v = run(capsys, "-v", "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        "error: the access token was rejected (InvalidParameterValue.InvalidAccessToken); "
        "set a fresh RRPCSYNC_ACCESS_TOKEN, or let rrpcsync log in itself (docs/auth.md)"
    )
    assert '"AccessToken": "***"' in result_v.err  # -v shows requests, token masked
    states = load_state(env / "rrpcsync.state.json").devices
    assert all(record.status.value != "applied" for record in states.values())
    for text in (result.out, result.err, result_v.out, result_v.err):
        assert secret not in text
    for path in env.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_wrapped_response_shape(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator(
        {"shape": "wrapped", "devices": {"P1/d1": {"reply": "hi"}, "P1/d2": {"offline": True}}}
    )
    fleet_manifest(env, ["d1", "d2"])
    assert apply(capsys, emu).code == 3
    devices = load_state(env / "rrpcsync.state.json").devices
    assert devices["P1/d1"].reply_text == "hi"
    assert devices["P1/d2"].last_error is not None
    assert devices["P1/d2"].last_error.code == "FailedOperation.DeviceOffline"


def test_null_message_id_and_reply(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {"null_message_id": True, "null_reply": True}}})
    fleet_manifest(env, ["d1"])
    assert apply(capsys, emu).code == 0
    record = load_state(env / "rrpcsync.state.json").devices["P1/d1"]
    assert (record.message_id, record.reply_base64, record.reply_text) == (None, None, None)


def test_never_two_requests_in_flight_to_one_device(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.05, "fail_times": 2}})
    fleet_manifest(env, [f"d{i}" for i in range(10)])
    assert apply(capsys, emu, "--parallelism", "10").code == 0
    stats = emu.stats()
    assert stats["concurrency_violations"] == 0
    assert stats["requests_total"] == 30


def test_rate_option_is_respected(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, [f"d{i:02d}" for i in range(31)])
    result = run(
        capsys,
        "apply",
        "configs",
        "--auto-approve",
        "--rate",
        "20",
        "--parallelism",
        "10",
        "--endpoint",
        emu.url,
    )
    assert result.code == 0
    starts = sorted(entry["t"] for entry in emu.stats()["log"])
    span = starts[-1] - starts[0]
    assert 30 / 20 * 0.9 <= span <= 30 / 20 * 1.5  # 30 intervals of 50 ms
    # smooth: no 1-second window holds more than the rate (+1 for scheduling jitter)
    per_second = [sum(1 for t in starts if begin <= t < begin + 1.0) for begin in starts]
    assert max(per_second) <= 21


def test_refuses_without_tty_and_without_auto_approve(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1"])
    result = run(capsys, "apply", "configs", "--endpoint", emu.url)
    assert result.code == 1
    assert "refusing to apply without confirmation" in result.err
    assert emu.stats()["requests_total"] == 0


def test_json_report(capsys: pytest.CaptureFixture[str], env: Path, emulator: Any) -> None:
    emu = emulator({"devices": {"P1/d1": {}, "P1/d2": {"offline": True}}})
    fleet_manifest(env, ["d1", "d2"])
    result = apply(capsys, emu, "--format", "json")
    report = json.loads(result.out)
    assert report["applied"] == ["P1/d1"]
    assert report["failed"]["P1/d2"]["code"] == "FailedOperation.DeviceOffline"
    assert report["failed_by_code"] == {"FailedOperation.DeviceOffline": 1}
    assert report["requests"] == 2


def test_saved_plan_applies_exactly_and_refuses_other_lineage(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1", "d2"])
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    fleet_manifest(env, ["d1", "d2", "d3"])  # edits after the plan are not applied
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 0, result.err
    assert sent_to(emu) == {"P1/d1": 1, "P1/d2": 1}
    again = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert again.code == 0, again.err  # the same plan twice: nothing sent the second time
    assert "2 change(s) were already applied by an earlier run" in again.err
    assert sent_to(emu) == {"P1/d1": 1, "P1/d2": 1}
    assert run(capsys, "plan", "configs", "--out", "plan2.json").code == 0
    assert apply(capsys, emu, "--state", "other.json").code == 0
    other = run(capsys, "apply", "plan2.json", "--state", "other.json", "--auto-approve")
    assert other.code == 1
    assert "the plan was made for state lineage" in other.err
    assert sent_to(emu) == {"P1/d1": 2, "P1/d2": 2, "P1/d3": 1}


def test_stale_saved_plan_is_refused_whole_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1"], payload="{v: 1}")
    assert apply(capsys, emu).code == 0
    fleet_manifest(env, ["d1", "d2"], payload="{v: 2}")
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    fleet_manifest(env, ["d1", "d2"], payload="{v: 3}")
    assert apply(capsys, emu, "--target", "P1/d1").code == 0  # moves d1 on, to another payload
    before = (env / "rrpcsync.state.json").read_bytes()
    emu.reset()
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert sent_to(emu) == {}  # not even the fresh change of d2
    assert "saved plan is stale: 1 of its 2 change(s) no longer match" in result.err
    assert "P1/d1" in result.err
    assert (env / "rrpcsync.state.json").read_bytes() == before


def test_prune_forgets_orphans_without_sending(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1", "d2"])
    assert apply(capsys, emu).code == 0
    fleet_manifest(env, ["d1"])
    emu.reset()
    assert apply(capsys, emu).code == 0
    assert "P1/d2" in load_state(env / "rrpcsync.state.json").devices
    assert apply(capsys, emu, "--prune").code == 0
    assert "P1/d2" not in load_state(env / "rrpcsync.state.json").devices
    assert emu.stats()["requests_total"] == 0


def test_insecure_endpoint_is_refused(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    fleet_manifest(env, ["d1"])
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", "http://example.com/")
    assert result.code == 1
    assert "https" in result.err
    assert not (env / "rrpcsync.state.json").exists()


def test_orphans_alone_are_not_actionable(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    fleet_manifest(env, ["d1", "d2"])
    assert apply(capsys, emu).code == 0
    fleet_manifest(env, ["d1"])
    state_file = env / "rrpcsync.state.json"
    before = state_file.read_bytes()
    assert run(capsys, "plan", "configs", "--detailed-exitcode").code == 0
    assert run(capsys, "plan", "configs", "--detailed-exitcode", "--prune").code == 2
    result = apply(capsys, emu)
    assert result.code == 0
    assert "- P1/d2" in result.out
    assert state_file.read_bytes() == before  # reported only: no rewrite
