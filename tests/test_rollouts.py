"""Safe rollouts: reply checks, abort thresholds, canaries and waves, ordering, targeting.

Unit tests for the matcher, the wave math and the schedule; the rest runs `rrpcsync apply`
against the emulator over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.errors import PlanFileError
from rrpcsync.manifests.expect import MISSING, check_reply, describe, parse_pointer, resolve_pointer
from rrpcsync.manifests.policy import parse_waves
from rrpcsync.model import Action, Change, Expectation, ManifestPolicy, Plan, RolloutSpec, Summary
from rrpcsync.planning.document import plan_document, plan_from_document
from rrpcsync.planning.schedule import by_level, interleaved, level_steps, wave_sizes, wave_targets
from rrpcsync.run.rollout import Guard
from rrpcsync.state.jsonfile import load_state

from .helpers import ROOT, Result, run, write
from .test_crash import start_apply

TOKEN = "emulator-token"
STATE = "rrpcsync.state.json"


# --------------------------------------------------------------------------- helpers


def manifest(
    name: str,
    devices: list[str],
    *,
    product: str = "P1",
    payload: str = "{method: set, v: 1}",
    extra: str = "",
) -> str:
    """One manifest document; `extra` is added under `spec:` (already indented)."""
    return (
        "apiVersion: rrpcsync/v1\n"
        "kind: DeviceConfig\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  productId: {product}\n"
        f"  payload: {payload}\n"
        f"{extra}"
        f"  devices: [{', '.join(devices)}]\n"
    )


def write_configs(root: Path, *documents: str) -> None:
    write(root / "configs" / "m.yaml", "---\n".join(documents))


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def apply(capsys: pytest.CaptureFixture[str], emu: Any, *extra: str) -> Result:
    return run(
        capsys,
        "apply",
        "configs",
        "--auto-approve",
        "--rate",
        "1000",
        "--retry-backoff",
        "0.01",
        "--endpoint",
        emu.url,
        *extra,
    )


def sent_to(emu: Any) -> dict[str, int]:
    per = emu.stats(include_log=False)["per_device"]
    return {key: info["requests"] for key, info in per.items() if info["requests"]}


def log(emu: Any) -> list[dict[str, Any]]:
    return sorted(emu.stats()["log"], key=lambda entry: entry["t"])


def statuses() -> dict[str, str]:
    return {key: rec.status.value for key, rec in load_state(Path(STATE)).devices.items()}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- matcher (unit)


def test_json_pointers() -> None:
    doc = {"a": {"b/c": [10, 20], "m~n": True}, "": 1}
    assert parse_pointer("") == ()
    assert parse_pointer("/a/b~1c/1") == ("a", "b/c", "1")
    assert resolve_pointer(doc, "/a/b~1c/1") == 20
    assert resolve_pointer(doc, "/a/m~0n") is True
    assert resolve_pointer(doc, "/") == 1
    for missing in ("/a/b~1c/2", "/a/b~1c/01", "/a/b~1c/-", "/x", "/a/m~0n/z"):
        assert resolve_pointer(doc, missing) is MISSING
        assert check_reply(Expectation(equals=((missing, "1"),)), "{}", json.dumps(doc), "x")
    for bad in ("a/b", "/a~2", "/a~"):
        with pytest.raises(ValueError):
            parse_pointer(bad)


def test_equals_is_strict_json_equality() -> None:
    expect = Expectation(equals=(("/code", "0"), ("/ok", "true")))
    assert check_reply(expect, "{}", '{"code": 0, "ok": true}', "x") is None
    assert check_reply(expect, "{}", '{"code": 0.0, "ok": true}', "x") is None
    assert check_reply(expect, "{}", '{"code": false, "ok": true}', "x") == (
        "reply /code is false, expected 0"
    )
    assert check_reply(expect, "{}", '{"code": 0, "ok": 1}', "x") == "reply /ok is 1, expected true"
    assert check_reply(expect, "{}", '{"ok": true}', "x") == "the reply has no /code (expected 0)"


def test_reply_must_be_json_unless_json_false() -> None:
    assert check_reply(Expectation(), "{}", "OK", "T0s=") == "the reply is not valid JSON: OK"
    assert check_reply(Expectation(), "{}", "NaN", "x") == "the reply is not valid JSON: NaN"
    assert check_reply(Expectation(require_json=False), "{}", "OK", "T0s=") is None
    assert check_reply(Expectation(), "{}", None, None) == "the device sent no reply"
    assert check_reply(Expectation(), "{}", None, "/w==") == "the reply is not UTF-8"


def test_regex_searches_the_reply_text() -> None:
    expect = Expectation(require_json=False, regex=r"^ok( \d+)?$")
    assert check_reply(expect, "{}", "ok 12", "x") is None
    assert check_reply(expect, "{}", "not ok", "x") == (
        "the reply does not match regex '^ok( \\\\d+)?$'"
    )


def test_echo_sha256_forms() -> None:
    payload = '{"v":1}'
    digest = sha(payload)
    expect = Expectation(echo_sha256=True)
    assert check_reply(expect, payload, json.dumps(digest), "x") is None
    assert check_reply(expect, payload, json.dumps({"sha256": digest.upper()}), "x") is None
    assert (
        check_reply(expect, payload, digest, "x")
        == "the reply is not valid JSON: " + digest[:59] + "…"
    )
    assert check_reply(expect._replace(require_json=False), payload, f" {digest}\n", "x") is None
    assert check_reply(expect, payload, json.dumps({"sha256": sha("other")}), "x") == (
        f"the reply does not carry the payload's sha256 ({digest[:12]}…)"
    )


def test_echo_fields_compare_reply_and_payload_at_the_same_pointer() -> None:
    payload = '{"method":"set","params":{"interval":10,"unit":"C"}}'
    expect = Expectation(echo_fields=("/params/interval", "/params/unit"))
    assert check_reply(expect, payload, '{"params":{"interval":10,"unit":"C"},"x":1}', "x") is None
    assert check_reply(expect, payload, '{"params":{"interval":5,"unit":"C"}}', "x") == (
        "reply /params/interval differs from the payload's value (echo)"
    )
    assert check_reply(expect, payload, '{"params":{"interval":10}}', "x") == (
        "the reply has no /params/unit to echo the payload's value"
    )


def test_describe_is_one_short_line() -> None:
    expect = Expectation(equals=(("/code", "0"),), regex="^ok", echo_sha256=True)
    assert describe(expect) == "JSON reply, /code = 0, regex '^ok', echo sha256"
    assert len(describe(Expectation(regex="x" * 500))) == 100


# --------------------------------------------------------------------------- wave math (unit)


def test_wave_targets_are_cumulative_with_an_implied_100_percent() -> None:
    assert wave_targets(parse_waves("1,10%,50%,100%"), 100) == [1, 10, 50, 100]
    assert wave_sizes(parse_waves("1,10%,50%,100%"), 100) == [1, 9, 40, 50]
    assert wave_sizes(parse_waves("1,10%,50%"), 5) == [1, 2, 2]  # 10% of 5 rounds up to 1
    assert wave_sizes(parse_waves("10%"), 95) == [10, 85]  # a final 100% is implied
    assert wave_sizes(parse_waves("5,50"), 20) == [5, 15]  # counts are capped at the total
    assert wave_sizes(parse_waves("50%,5"), 4) == [2, 2]  # mixed: never shrinks
    assert wave_sizes(None, 7) == [7]
    assert wave_sizes(parse_waves("1,10%"), 0) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10%,5%", "percentages must grow (5% after 10%)"),
        ("5,5", "device counts must grow (5 after 5)"),
        ("0", "must be at least 1 device"),
        ("120%", "above 0% and at most 100%"),
        ("ten", "neither a device count nor a percentage"),
        (",", "at least one wave"),
    ],
)
def test_invalid_waves(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_waves(text)


def change(key: str, manifest_name: str) -> Change:
    return Change(key, Action.CREATE, manifest_name, payload="{}", payload_sha256_after=sha("{}"))


def test_canary_and_waves_round_robin_across_manifests_by_priority_then_name() -> None:
    changes = [change(f"P/{m}{i}", m) for m in ("zeta", "alpha", "mid") for i in range(4)]
    policies = {"mid": ManifestPolicy(priority=1)}
    order = [c.key for c in interleaved(changes, policies)]
    assert order[:6] == ["P/mid0", "P/mid1", "P/mid2", "P/mid3", "P/alpha0", "P/zeta0"]
    steps = level_steps(changes[:8], {}, RolloutSpec(canary=2, waves=("50%",)))
    assert [(s.label, s.canary, [c.key for c in s.changes]) for s in steps] == [
        ("canary", True, ["P/alpha0", "P/zeta0"]),
        ("wave 1/2", False, ["P/alpha1", "P/zeta1", "P/alpha2"]),
        ("wave 2/2", False, ["P/zeta2", "P/alpha3", "P/zeta3"]),
    ]


def test_manifest_rollouts_stage_their_own_devices_and_canaries_go_first() -> None:
    changes = [change(f"P/a{i}", "a") for i in range(4)] + [change("P/b0", "b")]
    policies = {"a": ManifestPolicy(rollout=RolloutSpec(canary=1, waves=("2",)))}
    steps = level_steps(changes, policies, RolloutSpec())
    assert [(s.label, [c.key for c in s.changes]) for s in steps] == [
        ("canary", ["P/a0"]),
        ("wave 1/2", ["P/a1", "P/a2", "P/b0"]),
        ("wave 2/2", ["P/a3"]),
    ]


def test_levels_follow_dependencies_transitively() -> None:
    policies = {"c": ManifestPolicy(depends_on=("b",)), "b": ManifestPolicy(depends_on=("a",))}
    changes = [change("P/c", "c"), change("P/a", "a"), change("P/x", "x")]
    assert [(names_, [c.key for c in group]) for names_, group in by_level(changes, policies)] == [
        (["a", "x"], ["P/a", "P/x"]),
        (["b"], []),
        (["c"], ["P/c"]),
    ]


def test_guard_counts_failures_and_rates() -> None:
    guard = Guard(RolloutSpec(max_failures=2), {})
    assert [guard.observe(change("P/d", "m"), ok) for ok in (False, True, False)] == [None] * 3
    assert guard.observe(change("P/d", "m"), False) == "more than --max-failures 2"
    rate = Guard(RolloutSpec(max_failure_rate=25, min_sample=4), {})
    results = [rate.observe(change("P/d", "m"), ok) for ok in (False, False, True, True, True)]
    assert results[:3] == [None, None, None]  # under the minimum sample
    assert results[3] == "failure rate 50.0% above --max-failure-rate 25% (2 of 4 results)"
    own = Guard(RolloutSpec(), {"m": ManifestPolicy(rollout=RolloutSpec(max_failures=0))})
    assert own.observe(change("P/d", "other"), False) is None
    assert own.observe(change("P/d", "m"), False) == "manifest m: more than maxFailures 0"
    overridden = Guard(
        RolloutSpec(max_failures=5), {"m": ManifestPolicy(rollout=RolloutSpec(max_failures=0))}
    )
    assert overridden.observe(change("P/d", "m"), False) is None  # the flag overrides


def test_saved_plan_documents_round_trip_checks_and_policies() -> None:
    expect = Expectation(False, (), "^OK", True, ())
    checked = Expectation(equals=(("/a", '{"b":[1,null]}'),), echo_fields=("/v",))
    changes = (
        dataclasses.replace(change("P/a", "a"), expect=expect),
        dataclasses.replace(change("P/b", "b"), expect=checked),
    )
    rollout = RolloutSpec(canary=2, waves=("5", "10%"), max_failures=0, max_failure_rate=2.5)
    policies = {"a": ManifestPolicy(3, ("b",), rollout._replace(min_sample=7))}
    plan = Plan("L", 1, changes, Summary(create=2), {}, False, policies)
    doc = json.loads(json.dumps(plan_document(plan, created_at="now")))
    assert doc["manifests"]["a"] == {
        "priority": 3,
        "dependsOn": ["b"],
        "rollout": {
            "canary": 2,
            "waves": [5, "10%"],
            "maxFailures": 0,
            "maxFailureRate": 2.5,
            "minSample": 7,
        },
    }
    again = plan_from_document(doc, "plan.json")
    assert again.policies == policies
    assert [c.expect for c in again.changes] == [expect, checked]
    doc["manifests"]["a"]["rollout"]["canary"] = "two"
    with pytest.raises(PlanFileError, match=r"malformed saved plan .*'two' is not of type"):
        plan_from_document(doc, "plan.json")
    doc["manifests"] = {}
    doc["changes"][0]["expect"] = {"equals": [1]}
    with pytest.raises(PlanFileError, match=r"malformed saved plan \(malformed expect"):
        plan_from_document(doc, "plan.json")


# --------------------------------------------------------------------------- validate / plan


EXPECT_ERRORS = [
    ("  expect: {regex: '([a-z'}\n", 7, "$.spec.expect.regex", "invalid regex '([a-z'"),
    ("  expect: {equals: {code: 0}}\n", 7, "$.spec.expect.equals.code", "invalid JSON pointer"),
    ("  expect: {echo: [/a~2]}\n", 7, "$.spec.expect.echo[0]", "'~' must be followed by 0 or 1"),
    ("  expect: {echo: [/missing]}\n", 8, "$.spec.devices[0]", "payload has no value at /missing"),
    ("  expect: {echo: md5}\n", 7, "$.spec.expect.echo", "must be 'sha256', not 'md5'"),
    ("  expect: {json: false, equals: {/a: 1}}\n", 7, "$.spec.expect.json", "drop json: false"),
    ("  rollout: {waves: [10%, 5%]}\n", 7, "$.spec.rollout.waves", "percentages must grow"),
    ("  rollout: {waves: [0]}\n", 7, "$.spec.rollout.waves[0]", "less than the minimum of 1"),
    ("  rollout: {canry: 1}\n", 7, "$.spec.rollout.canry", "unknown key 'canry'"),
    ("  dependsOn: [nope]\n", 7, "$.spec.dependsOn[0]", "no manifest is named 'nope'"),
    ("  dependsOn: [m]\n", 7, "$.spec.dependsOn[0]", "dependsOn cycle: m → m"),
]


@pytest.mark.parametrize(("extra", "line", "path", "message"), EXPECT_ERRORS)
def test_validate_reports_rollout_and_expect_errors_with_file_and_line(
    capsys: pytest.CaptureFixture[str], env: Path, extra: str, line: int, path: str, message: str
) -> None:
    write_configs(env, manifest("m", ["d1"], extra=extra))
    result = run(capsys, "validate", "configs")
    assert result.code == 1
    first = result.err_lines[0]
    assert first.startswith(f"configs/m.yaml:{line}:"), first
    assert f": error: {path}: " in first and message in first, first


def test_validate_reports_a_dependency_cycle_once_at_its_first_manifest(
    capsys: pytest.CaptureFixture[str], env: Path
) -> None:
    write_configs(
        env,
        manifest("a", ["d1"], extra="  dependsOn: [c]\n"),
        manifest("b", ["d2"], extra="  dependsOn: [a]\n"),
        manifest("c", ["d3"], extra="  dependsOn: [b]\n"),
    )
    result = run(capsys, "validate", "configs")
    assert result.code == 1
    assert result.err_lines[:-1] == [
        "configs/m.yaml:7:15: error: $.spec.dependsOn[0]: dependsOn cycle: a → c → b → a"
    ]


def test_plan_shows_the_expectation_of_changed_devices(
    capsys: pytest.CaptureFixture[str], env: Path
) -> None:
    extra = "  expect: {equals: {/code: 0}, echo: sha256}\n"
    write_configs(env, manifest("m", ["d1"], extra=extra))
    result = run(capsys, "plan", "configs")
    assert result.code == 0
    assert result.out_lines[1:4] == [
        "  + P1/d1  (configs/m.yaml:8)",
        '      {"method":"set","v":1}',
        "      expect: JSON reply, /code = 0, echo sha256",
    ]


# --------------------------------------------------------------------------- reply checks


def test_reply_mismatch_fails_the_device_and_keeps_the_reply_and_acknowledged_payload(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {}, "P1/d2": {"reply": {"code": 0}}}})
    extra = "  expect: {equals: {/code: 0}}\n"
    write_configs(env, manifest("m", ["d1", "d2"], payload="{v: 1}", extra=extra))
    assert apply(capsys, emu).code == 0
    emu.configure({"devices": {"P1/d2": {"reply": {"code": 7, "msg": "bad"}}}})
    write_configs(env, manifest("m", ["d1", "d2"], payload="{v: 2}", extra=extra))
    result = apply(capsys, emu, "--format", "json")
    assert result.code == 3
    report = json.loads(result.out)
    assert report["applied"] == ["P1/d1"]
    assert report["failed"]["P1/d2"]["code"] == "ReplyMismatch"
    assert report["failed"]["P1/d2"]["message"] == "reply /code is 7, expected 0"
    record = load_state(Path(STATE)).devices["P1/d2"]
    assert record.status.value == "failed"
    assert (record.payload, record.payload_sha256) == ('{"v":1}', sha('{"v":1}'))
    assert record.reply_text == '{"code":7,"msg":"bad"}'
    assert record.reply_base64 is not None and record.message_id is not None
    assert emu.stats()["per_device"]["P1/d2"]["requests"] == 2  # a mismatch is not retried
    plan = run(capsys, "plan", "configs")
    assert "↻ P1/d2" in plan.out and "last error: ReplyMismatch" in plan.out


def test_per_device_expect_replaces_the_manifest_one_and_null_turns_it_off(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator(
        {
            "devices": {
                "P1/d1": {"reply": "echo"},
                "P1/d2": {"reply": "OK"},
                "P1/d3": {"reply": "whatever"},
            }
        }
    )
    devices = ["d1", "{name: d2, expect: {json: false, regex: '^OK$'}}", "{name: d3, expect: null}"]
    extra = "  expect: {echo: [/params/i]}\n"
    write_configs(env, manifest("m", devices, payload="{params: {i: 3}}", extra=extra))
    result = apply(capsys, emu)
    assert result.code == 0, result.err
    assert set(statuses().values()) == {"applied"}


def test_saved_plan_keeps_the_reply_checks(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "nope"}}})
    write_configs(env, manifest("m", ["d1"], extra="  expect: {regex: ok}\n"))
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 3
    assert "failed      1  ReplyMismatch" in result.out


# --------------------------------------------------------------------------- abort thresholds


@pytest.mark.parametrize("parallelism", [1, 4])
def test_max_failures_aborts_with_bounded_overshoot(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any, parallelism: int
) -> None:
    emu = emulator({"auto_devices": True, "default": {"rrpc_timeout": True, "latency": 0.03}})
    write_configs(env, manifest("m", names("d", 40)))
    result = apply(capsys, emu, "--max-failures", "3", "--parallelism", str(parallelism))
    assert result.code == 3
    total = emu.stats(include_log=False)["requests_total"]
    assert 4 <= total <= 4 + parallelism  # the 4th failure crosses; at most N in flight beyond
    sent = sent_to(emu)
    assert sum(sent.values()) == total and set(sent.values()) == {1}
    abort = result.err_lines[-1]
    assert abort.startswith(f"error: rollout aborted after {total} failures (more than ")
    assert f"--max-failures 3); {40 - total} device(s) not sent; " in abort
    assert abort.endswith(f"top errors: FailedOperation.RRPCTimeout ({total})")
    assert set(load_state(Path(STATE)).devices) == set(sent)  # the rest was never sent


def test_max_failure_rate_waits_for_the_minimum_sample(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    offline = {f"P1/d{i:02d}": {"offline": True} for i in range(0, 40, 2)}  # every other one
    emu = emulator({"auto_devices": True, "devices": offline})
    write_configs(env, manifest("m", names("d", 40)))
    result = apply(
        capsys, emu, "--max-failure-rate", "40", "--min-sample", "10", "--parallelism", "1"
    )
    assert result.code == 3
    assert emu.stats(include_log=False)["requests_total"] == 10
    assert "failure rate 50.0% above --max-failure-rate 40% (5 of 10 results)" in result.err
    assert "top errors: FailedOperation.DeviceOffline" in result.err


def test_failures_under_the_thresholds_do_not_abort(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d03": {"offline": True}}})
    write_configs(env, manifest("m", names("d", 30)))
    result = apply(capsys, emu, "--max-failures", "1", "--max-failure-rate", "5")
    assert result.code == 3
    assert "rollout aborted" not in result.err
    assert len(sent_to(emu)) == 30


def test_manifest_max_failures_aborts_and_the_flag_overrides_it(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d00": {"offline": True}}})
    extra = "  rollout: {maxFailures: 0}\n"
    write_configs(env, manifest("m", names("d", 10), extra=extra))
    result = apply(capsys, emu, "--parallelism", "1")
    assert result.code == 3
    assert "(manifest m: more than maxFailures 0)" in result.err
    assert sent_to(emu) == {"P1/d00": 1}
    again = apply(capsys, emu, "--max-failures", "5")
    assert again.code == 3 and "rollout aborted" not in again.err
    assert len(sent_to(emu)) == 10


# --------------------------------------------------------------------------- canary and waves


def test_canary_failure_sends_to_nobody_else(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P2/b00": {"offline": True}}})
    write_configs(
        env,
        manifest("beta", names("b", 5), product="P2"),
        manifest("alpha", names("a", 5)),
    )
    result = apply(capsys, emu, "--canary", "2", "--format", "json")
    assert result.code == 3
    assert sent_to(emu) == {"P1/a00": 1, "P2/b00": 1}  # one per manifest, in name order
    report = json.loads(result.out)
    assert report["aborted"] == (
        "rollout aborted after 1 failure (canary: 1 of 2 canary devices failed); "
        "8 device(s) not sent; top errors: FailedOperation.DeviceOffline (1)"
    )
    assert len(report["not_sent"]) == 8
    assert "rollout: canary: 2 device(s)" in result.err


def test_waves_go_out_one_after_another(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.02}})
    write_configs(env, manifest("m", names("d", 20)))
    result = apply(capsys, emu, "--canary", "1", "--waves", "2,50%", "--parallelism", "8")
    assert result.code == 0, result.err
    assert [line for line in result.err_lines if line.startswith("rollout:")] == [
        "rollout: canary: 1 device(s)",
        "rollout: wave 1/3: 2 device(s)",
        "rollout: wave 2/3: 8 device(s)",  # 50% of the 19 after the canary, rounded up: 10
        "rollout: wave 3/3: 9 device(s)",
    ]
    entries = log(emu)
    waves = [entries[:1], entries[1:3], entries[3:11], entries[11:]]
    for before, after in itertools.pairwise(waves):
        assert max(e["t_end"] for e in before) <= min(e["t"] for e in after)
    assert [e["device"] for e in entries[:3]] == ["P1/d00", "P1/d01", "P1/d02"]


def test_manifest_rollout_canary_applies_without_flags(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d00": {"reply": "not json"}}})
    extra = "  rollout: {canary: 1, waves: [50%]}\n  expect: {}\n"
    write_configs(env, manifest("m", names("d", 6), extra=extra))
    result = apply(capsys, emu)
    assert result.code == 3
    assert sent_to(emu) == {"P1/d00": 1}
    assert "canary: 1 of 1 canary devices failed" in result.err
    assert "top errors: ReplyMismatch (1)" in result.err


def test_an_interrupted_wave_rollout_resumes_on_the_next_apply(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.05}})
    write_configs(tmp_path, manifest("m", names("d", 60)))
    keys = {f"P1/{name}" for name in names("d", 60)}
    proc = start_apply(tmp_path, emu.url, "--waves", "5,25%,100%")
    deadline = time.monotonic() + 20
    while emu.stats(include_log=False)["requests_total"] < 10:  # inside the second wave
        assert time.monotonic() < deadline, "apply did not start sending"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.2)  # let the emulator finish the requests that were in flight
    state = load_state(tmp_path / STATE)  # replays the journal of the killed run
    applied = {k for k, r in state.devices.items() if r.status.value == "applied"}
    assert 5 <= len(applied) < 60
    before = sent_to(emu)

    proc = start_apply(tmp_path, emu.url, "--waves", "5,25%,100%")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    remaining = 60 - len(applied)
    assert "rollout: wave 1/3: 5 device(s)" in err  # the waves start again on the rest
    assert f"rollout: wave 3/3: {remaining - max(5, -(-remaining // 4))} device(s)" in err
    after = sent_to(emu)
    for key in applied:
        assert after[key] == before[key] == 1, f"{key} was sent again after its ack"
    final = load_state(tmp_path / STATE).devices
    assert {k for k, r in final.items() if r.status.value == "applied"} == keys
    assert emu.stats(include_log=False)["concurrency_violations"] == 0


# --------------------------------------------------------------------------- ordering


def test_depends_on_sends_a_manifest_only_after_its_dependencies_finished(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.02}})
    write_configs(
        env,
        manifest("sensors", names("s", 6), product="P2", extra="  dependsOn: [gateways]\n"),
        manifest("gateways", names("g", 6)),
        manifest("lamps", names("l", 3), product="P3", extra="  dependsOn: [sensors]\n"),
    )
    result = apply(capsys, emu, "--parallelism", "5")
    assert result.code == 0, result.err
    entries = log(emu)
    by_product: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_product.setdefault(entry["device"].split("/")[0], []).append(entry)
    assert max(e["t_end"] for e in by_product["P1"]) <= min(e["t"] for e in by_product["P2"])
    assert max(e["t_end"] for e in by_product["P2"]) <= min(e["t"] for e in by_product["P3"])
    assert "rollout: level 1/3, all: 6 device(s)" in result.err


def test_a_failed_dependency_blocks_its_dependents_transitively(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/g01": {"offline": True}}})
    documents = [
        manifest("gateways", names("g", 3)),
        manifest("sensors", names("s", 2), product="P2", extra="  dependsOn: [gateways]\n"),
        manifest("lamps", names("l", 2), product="P3", extra="  dependsOn: [sensors]\n"),
        manifest("other", names("o", 2), product="P4"),
    ]
    write_configs(env, *documents)
    result = apply(capsys, emu, "--format", "json")
    assert result.code == 3
    report = json.loads(result.out)
    assert report["blocked"] == ["P2/s00", "P2/s01", "P3/l00", "P3/l01"]
    assert report["aborted"] is None
    assert set(sent_to(emu)) == {"P1/g00", "P1/g01", "P1/g02", "P4/o00", "P4/o01"}
    assert (
        "rollout: sensors blocked (2 device(s) not sent): depends on gateways, "
        "which had failures" in result.err
    )
    assert "rollout: lamps blocked (2 device(s) not sent): depends on sensors" in result.err
    text = apply(capsys, emu)  # gateways still failing: still blocked, in the text summary too
    assert text.code == 3 and "  blocked     4  (a dependency had failures)" in text.out
    listed = text.out_lines[text.out_lines.index("Blocked (a dependency had failures) (4):") :]
    assert listed[1:5] == ["  P2/s00", "  P2/s01", "  P3/l00", "  P3/l01"]
    assert "Failed with FailedOperation.DeviceOffline (1):" in text.out_lines
    emu.configure({"devices": {"P1/g01": {"offline": False}}})
    assert apply(capsys, emu).code == 0
    assert set(statuses().values()) == {"applied"} and len(statuses()) == 9


def test_priority_sends_higher_first(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    write_configs(
        env,
        manifest("low", names("l", 2)),
        manifest("high", names("h", 2), product="P2", extra="  priority: 10\n"),
    )
    assert apply(capsys, emu, "--parallelism", "1").code == 0
    assert [e["device"] for e in log(emu)] == ["P2/h00", "P2/h01", "P1/l00", "P1/l01"]


def test_saved_plan_keeps_dependencies(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/a00": {"offline": True}}})
    write_configs(
        env,
        manifest("b", ["b00"], product="P2", extra="  dependsOn: [a]\n"),
        manifest("a", ["a00"]),
    )
    assert run(capsys, "plan", "configs", "--out", "plan.json").code == 0
    saved = json.loads(Path("plan.json").read_text())
    assert saved["manifests"] == {"b": {"dependsOn": ["a"]}}
    result = run(capsys, "apply", "plan.json", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 3
    assert sent_to(emu) == {"P1/a00": 1}


# --------------------------------------------------------------------------- targeting


def test_selector_target_and_exclude_on_apply_send_exactly_the_matching_devices(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    devices = [
        "{name: d1, labels: {floor: '3'}}",
        "{name: d2, labels: {floor: '4'}}",
        "{name: d3, labels: {floor: '3', canary: 'true'}}",
        "d4",
    ]
    write_configs(env, manifest("m", devices))
    assert apply(capsys, emu, "--selector", "floor=3").code == 0
    assert sent_to(emu) == {"P1/d1": 1, "P1/d3": 1}
    emu.reset()
    assert apply(capsys, emu, "-l", "!floor").code == 0
    assert sent_to(emu) == {"P1/d4": 1}
    emu.reset()
    assert apply(capsys, emu, "--target", "P1/d*", "--exclude", "P1/d2").code == 0
    assert sent_to(emu) == {}  # d1, d3, d4 are already applied
    result = apply(capsys, emu, "--target", "P1/d2")
    assert result.code == 0
    assert sent_to(emu) == {"P1/d2": 1}
    assert set(statuses()) == {"P1/d1", "P1/d2", "P1/d3", "P1/d4"}


def test_invalid_waves_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    write_configs(env, manifest("m", ["d1"]))
    result = run(capsys, "apply", "configs", "--auto-approve", "--waves", "50%,10%")
    assert result.code == 1
    assert "Invalid value for '--waves': waves are cumulative" in result.err


def test_sigint_mid_rollout_finishes_in_flight_and_sends_no_later_wave(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.1}})
    write_configs(tmp_path, manifest("m", names("d", 40)))
    proc = start_apply(tmp_path, emu.url, "--waves", "4,50%")
    deadline = time.monotonic() + 20
    while emu.stats(include_log=False)["requests_total"] < 6:  # inside the second wave
        assert time.monotonic() < deadline, "apply did not start sending"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "rollout: wave 3/3" not in err
    state = load_state(tmp_path / STATE)
    assert {r.status.value for r in state.devices.values()} == {"applied"}
    assert set(state.devices) == set(sent_to(emu))
    assert 6 <= len(state.devices) <= 20


# --------------------------------------------------------------------------- the worked example


def test_the_worked_example_of_docs_rollouts(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    example = ROOT / "examples" / "rollouts"
    emu = emulator(example / "fleet.yaml")
    for source in (example / "configs").iterdir():
        write(env / "configs" / source.name, source.read_text(encoding="utf-8"))
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 0, result.err
    docs = (ROOT / "docs" / "rollouts.md").read_text(encoding="utf-8")
    steps = [line for line in result.err_lines if line.startswith("rollout:")]
    assert len(steps) == 5 and "\n".join(steps) in docs
    thermostats = Path("configs/thermostats.yaml")
    thermostats.write_text(thermostats.read_text().replace("unit: C}", "unit: F}"))
    refusal = {"reply": {"code": 5, "msg": "unit F not supported"}}
    emu.configure({"devices": {"ASBHKN/dev-002": refusal}})
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 3
    assert result.err_lines[-1].removeprefix("error: ") in docs
    assert result.out_lines[-3:] == [
        "  failed      1  ReplyMismatch",
        "Failed with ReplyMismatch (1):",
        "  ASBHKN/dev-002",
    ]
