"""Anything rrpcsync decodes (issue 14): depth and size limits, every failure a documented
device outcome or a one-line error naming the file; fuzz tests over each decoder."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrpcsync import jsontext
from rrpcsync.cloud.results import parse_response
from rrpcsync.errors import PlanFileError, RrpcsyncError, StateError
from rrpcsync.manifests import expect as expect_module
from rrpcsync.manifests import probe
from rrpcsync.model import DeviceRecord, Expectation, Status, payload_digest
from rrpcsync.planning.document import plan_from_document
from rrpcsync.planning.render import payload_diff
from rrpcsync.state.jsonfile import load_state, lock_path, read_holder
from rrpcsync.state.records import record_to_dict

from .helpers import manifest_text, run, write

TOKEN = "emulator-token"
DEEP = "[" * 3000 + "]" * 3000
LINEAGE = "0c5e5d0e-8d7a-4f5e-9a57-3f2b1f0a9c11"
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def hostile_texts() -> st.SearchStrategy[str]:
    """JSON, near-JSON, deep nesting, long numbers, surrogate escapes, control characters."""
    deep = st.integers(150, 6000).map(lambda n: "[" * n + "]" * n)
    deep_objects = st.integers(150, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    long_number = st.integers(4000, 6000).map(lambda n: "9" * n)
    return st.one_of(
        st.text(max_size=40),
        json_values().map(json.dumps),
        deep,
        deep_objects,
        long_number,
        st.just('{"a": "\\ud800"}'),
        st.just('"\\udfff\\u0000\\u001b]0;x\\u0007"'),
        st.just("NaN"),
        st.just("{"),
    )


# --------------------------------------------------------------------------- the helper


def test_loads_turns_every_limit_into_a_value_error() -> None:
    for text, reason in [
        (DEEP, "nested more than 200 levels deep"),
        ("[" * 201 + "]" * 201, "nested more than 200 levels deep"),
        ("9" * 5000, "more than 4,300 digits"),
    ]:
        with pytest.raises(jsontext.JsonLimitError, match=reason):
            jsontext.loads(text)
    assert jsontext.loads("[" * 200 + "]" * 200) is not None


@FUZZ
@given(text=hostile_texts())
def test_fuzz_loads_never_raises_anything_but_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        jsontext.loads(text)


# --------------------------------------------------------------------------- replies


@FUZZ
@given(reply=hostile_texts())
def test_fuzz_reply_checks_return_a_reason_never_raise(reply: str) -> None:
    for expectation in [
        Expectation(True, (("/a", "1"),), None, False, ()),
        Expectation(False, (), "x", True, ()),
        Expectation(True, (), None, False, ("/params/a",)),
    ]:
        reason = expect_module.check_reply(expectation, '{"params":{"a":1}}', reply, "eA==")
        assert reason is None or "\n" not in reason


@FUZZ
@given(body=hostile_texts(), status=st.sampled_from([200, 502]))
def test_fuzz_responses_parse_to_a_result(body: str, status: int) -> None:
    wrapped = json.dumps({"Response": {"PayloadBase64": base64.b64encode(body.encode()).decode()}})
    for raw in (body.encode("utf-8", "surrogatepass"), wrapped.encode()):
        result = parse_response(status, {}, raw, "r")
        assert result.ok or result.code


@FUZZ
@given(reply=hostile_texts())
def test_fuzz_probe_replies_are_a_probe_error_or_a_value(reply: str) -> None:
    try:
        reported = probe.reported_config(reply, "")
    except probe.ProbeReplyError:
        return
    probe.compare('{"a":1}', reported)


@FUZZ
@given(payload=hostile_texts())
def test_fuzz_payload_diffs_of_verbatim_payloads(payload: str) -> None:
    assert payload_diff('{"a":1}', payload)  # different: always a line
    assert isinstance(payload_diff(payload, payload + " x"), list)


def test_a_verbatim_payload_that_looks_like_deep_json_plans(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text(payload=json.dumps(DEEP)))
    assert run(capsys, "validate", "configs").code == 0
    result = run(capsys, "plan", "configs")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err


def test_a_deep_mapping_payload_is_refused_by_validate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text(payload="[" * 300 + "]" * 300))
    result = run(capsys, "validate", "configs")
    assert result.code == 1
    assert "nested too deeply" in result.err


@pytest.mark.parametrize("with_expect", [True, False])
def test_a_deep_reply_is_a_device_outcome_not_a_crash(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
    with_expect: bool,
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": DEEP}, "P1/d2": {"reply": '{"code":0}'}}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    text = manifest_text(devices="[d1, d2]")
    if with_expect:
        text += "  expect: {json: true}\n"
    write(tmp_path / "configs" / "m.yaml", text)
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert "Traceback" not in result.err and "internal error" not in result.err
    devices = load_state(tmp_path / "rrpcsync.state.json").devices
    assert devices["P1/d2"].status is Status.APPLIED
    if with_expect:
        assert result.code == 3, result.err
        record = devices["P1/d1"]
        assert record.status is Status.FAILED
        assert record.last_error is not None
        assert record.last_error.code == "ReplyMismatch"
        assert "nested more than 200 levels deep" in record.last_error.message
    else:
        assert result.code == 0, result.err
        assert devices["P1/d1"].status is Status.APPLIED
    shown = run(capsys, "state", "show", "P1/d1")
    assert shown.code == 0, shown.err
    again = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert "Traceback" not in again.err and "internal error" not in again.err


def test_a_deep_probe_reply_is_an_unreachable_device_not_a_crash(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": DEEP}}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    text = manifest_text() + "  probe: {pointer: /config}\n"
    write(tmp_path / "configs" / "m.yaml", text)
    assert run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url).code == 0
    result = run(capsys, "plan", "configs", "--refresh", "--endpoint", emu.url)
    assert result.code == 0, result.err
    assert "internal error" not in result.err and "Traceback" not in result.err


# --------------------------------------------------------------------------- files


def state_text(**overrides: Any) -> str:
    payload = '{"a":1}'
    record = record_to_dict(
        DeviceRecord(
            status=Status.APPLIED,
            payload=payload,
            payload_sha256=payload_digest(payload),
            target_sha256=payload_digest(payload),
            attempts=1,
        )
    )
    doc = {
        "format": "rrpcsync-state",
        "version": 1,
        "lineage": LINEAGE,
        "serial": 1,
        "devices": {"P1/d1": record},
    }
    doc.update(overrides)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"format": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply to read"),
        (state_text().replace('"serial": 1', '"serial": ' + "9" * 4400), "4,300 digits"),
        (
            state_text().replace('"payload": "{\\"a\\":1}"', '"payload": "{\\"a\\":2}"'),
            "device 'P1/d1': field 'payload_sha256' is not the SHA-256 of its 'payload'",
        ),
        (
            state_text().replace('"target_sha256": "', '"target_sha256": "X'),
            "field 'target_sha256' must be 64 lowercase hex digits",
        ),
    ],
)
def test_hostile_state_files_are_one_line_errors_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(StateError) as caught:
        load_state(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message
    assert path.read_text() == text


def test_a_deep_journal_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(state_text())
    deep_entry = '{"v": 1, "record": ' + "[" * 5000 + "]" * 5000 + "}\n"
    (tmp_path / "s.json.journal").write_text(deep_entry + '{"v": 1}\n')
    with pytest.raises(StateError, match=r"s\.json\.journal:1: not a valid journal entry"):
        load_state(path)


def test_a_deep_lock_file_is_an_unknown_holder(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    lock_path(state).write_text("[" * 5000 + "]" * 5000)
    assert read_holder(state) is None
    lock_path(state).write_text('{"pid": ' + "9" * 5000 + "}")
    assert read_holder(state) is None


@FUZZ
@given(text=hostile_texts())
def test_fuzz_state_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("s") / "s.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_state(path)
    except StateError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


@FUZZ
@given(line=hostile_texts())
def test_fuzz_journal_lines(tmp_path_factory: pytest.TempPathFactory, line: str) -> None:
    folder = tmp_path_factory.mktemp("j")
    path = folder / "s.json"
    path.write_text(state_text())
    (folder / "s.json.journal").write_text(line + "\n" + line + "\n", errors="surrogatepass")
    try:
        load_state(path)
    except StateError as exc:
        assert str(exc).startswith(str(folder / "s.json.journal")) and "\n" not in str(exc)


# --------------------------------------------------------------------------- saved plans


def plan_doc(**overrides: Any) -> dict[str, Any]:
    payload = '{"a":1}'
    doc: dict[str, Any] = {
        "format": "rrpcsync-plan",
        "format_version": 1,
        "created_at": "2026-12-01T00:00:00Z",
        "lineage": None,
        "serial": 0,
        "prune": False,
        "summary": {"unchanged": 0},
        "changes": [
            {
                "key": "PRODA/dev-001",
                "action": "create",
                "manifest": "m1",
                "source": "m.yaml:8",
                "payload_sha256_before": None,
                "payload_sha256_after": payload_digest(payload),
                "payload": payload,
            }
        ],
    }
    doc.update(overrides)
    return doc


def change(**fields: Any) -> list[dict[str, Any]]:
    return [{**plan_doc()["changes"][0], **fields}]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (plan_doc(summary=[]), "'summary' must be an object"),
        (plan_doc(changes=change(key="PRODA/dev-001/../x")), "not of the form"),
        (plan_doc(changes=change(key="PRODA/dev 001")), "a manifest can name"),
        (plan_doc(changes=change(payload_sha256_after="0" * 63)), "must be a SHA-256"),
        (plan_doc(changes=change(manifest=["m"])), "field 'manifest' must be a string"),
        (plan_doc(changes=change(action="explode")), "explode"),
        (plan_doc(changes=change() + change()), "appears twice"),
        (plan_doc(serial=True), "'serial' must be an integer"),
        (plan_doc(changes={}), "'changes' must be a list"),
        (plan_doc(changes=["x"]), "each change must be an object"),
    ],
)
def test_malformed_saved_plans_are_one_line_errors(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(PlanFileError) as caught:
        plan_from_document(doc, "plan.json")
    message = str(caught.value)
    assert message.startswith("plan.json: malformed saved plan") and reason in message
    assert "\n" not in message


def test_a_good_saved_plan_still_loads() -> None:
    plan = plan_from_document(plan_doc(), "plan.json")
    assert [c.key for c in plan.changes] == ["PRODA/dev-001"]


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "rrpcsync-plan", "changes": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"format": "rrpcsync-plan", "serial": ' + "9" * 4400 + "}",
        json.dumps(plan_doc(summary=[])),
    ],
)
def test_hostile_saved_plan_files_at_the_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    (tmp_path / "plan.json").write_text(text)
    result = run(capsys, "apply", "plan.json", "--auto-approve")
    assert result.code == 1
    assert result.err_lines[-1].startswith("error: plan.json"), result.err
    assert "internal error" not in result.err


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {"format": st.just("rrpcsync-plan"), "format_version": st.just(1)},
        optional={
            "lineage": json_values(3),
            "serial": json_values(3),
            "summary": json_values(4),
            "prune": json_values(2),
            "manifests": json_values(4),
            "changes": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "key": st.sampled_from(["P/d", "P/d/../x", "", "P/"]) | json_values(2),
                        "action": st.sampled_from(["create", "orphan", "drift"]) | json_values(2),
                        "payload": json_values(2),
                        "payload_sha256_after": json_values(2),
                        "expect": json_values(4),
                    },
                ),
                max_size=3,
            )
            | json_values(4),
        },
    )
)
def test_fuzz_saved_plans(doc: dict[str, Any]) -> None:
    try:
        plan_from_document(doc, "plan.json")
    except RrpcsyncError as exc:
        assert str(exc).startswith("plan.json:") and "\n" not in str(exc)


@FUZZ
@given(text=hostile_texts())
def test_fuzz_lock_holders(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    state = tmp_path_factory.mktemp("l") / "s.json"
    lock_path(state).write_text(text, errors="surrogatepass")
    holder = read_holder(state)
    assert holder is None or isinstance(holder, dict)


@FUZZ
@given(text=hostile_texts(), status=st.sampled_from([200, 401, 502]))
def test_fuzz_login_responses(text: str, status: int) -> None:
    from rrpcsync.cloud.login import parse_login_response

    wrapped = json.dumps({"Response": {"Data": {"Token": text, "ExpireAt": text}}})
    for body in (text.encode("utf-8", "surrogatepass"), wrapped.encode()):
        parse_login_response(status, body, user="u@example.com", obtained_at=0.0)


@FUZZ
@given(lines=st.lists(hostile_texts(), max_size=3))
def test_fuzz_run_history(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    from rrpcsync.state import JsonFileStore

    state = tmp_path_factory.mktemp("h") / "s.json"
    (state.parent / "s.json.history").write_text("\n".join(lines), errors="surrogatepass")
    try:
        JsonFileStore(state).runs()
    except StateError as exc:
        assert str(state.parent) in str(exc) and "\n" not in str(exc)
