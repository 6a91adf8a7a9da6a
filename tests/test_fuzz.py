"""Fuzzing the inputs rrpcsync reads: manifests (random bytes, random YAML documents, a corpus of
YAML oddities) into `validate`/`plan`, and randomly damaged state files and journals.

Whatever the input: exit 0 or 1 with a message, never a traceback ("internal error"), never a
crash; a damaged state is refused naming the file and left as it is, never read as empty.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrpcsync.model import DeviceRecord, ErrorInfo, Status, payload_digest
from rrpcsync.state.jsonfile import Journal, State, journal_path, load_state, save_state

from .helpers import ROOT, Result, manifest_text, run

VALID = manifest_text(
    devices="[d1, {name: d2, labels: {floor: '3'}, payload: {params: {a: 2}}}]",
    payload="{method: set, params: {a: 1, unit: C}}",
)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    return tmp_path


def check_outcome(result: Result, command: str) -> None:
    """Exit 0 or 1; a failure says why on stderr; nothing is an rrpcsync bug."""
    assert "internal error" not in result.err, result.err
    assert "Traceback" not in result.err, result.err
    assert result.code in (0, 1), (command, result.code, result.err)
    if result.code == 1:
        assert "error" in result.err, (command, result.err)
    elif command == "validate":
        assert "valid:" in result.err


def validate_and_plan(capsys: pytest.CaptureFixture[str], data: bytes) -> tuple[Result, Result]:
    Path("configs/m.yaml").write_bytes(data)
    checked = run(capsys, "validate", "configs")
    check_outcome(checked, "validate")
    planned = run(capsys, "plan", "configs", "--state", "none.json")
    check_outcome(planned, "plan")
    assert (checked.code == 0) == (planned.code == 0), (checked.err, planned.err)
    return checked, planned


# --------------------------------------------------------------------------- random bytes

SPECIAL = b"[]{}:,-?#&*!|>'\"%@`\t\r\n \x00\x85\xef\xbb\xbf\\"


def mutated(rng: random.Random, text: bytes) -> bytes:
    data = bytearray(text)
    for _ in range(rng.randint(1, 6)):
        where = rng.randrange(len(data) + 1)
        choice = rng.random()
        if choice < 0.3 and data:
            data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice < 0.6:
            data[where:where] = bytes([rng.choice(SPECIAL)])
        elif choice < 0.8:
            del data[where : where + rng.randint(1, 8)]
        else:
            data[where:where] = data[rng.randrange(len(data) + 1) :][: rng.randint(1, 40)]
    return bytes(data)


def random_inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = VALID.encode()
    inputs = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            inputs.append(rng.randbytes(rng.randrange(300)))
        elif kind == 1:
            inputs.append(bytes(rng.choice(SPECIAL + b"abc019") for _ in range(rng.randrange(200))))
        elif kind == 2:
            inputs.append(mutated(rng, valid))
        else:
            inputs.append(valid[: rng.randrange(len(valid))])
    return inputs


def test_random_bytes_and_mangled_manifests(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    outcomes = [validate_and_plan(capsys, data)[0].code for data in random_inputs(20261129, 400)]
    assert 0 in outcomes and 1 in outcomes  # some mutations stay valid, most do not


# --------------------------------------------------------------------------- random YAML

yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["on", "no", "2026-01-01", "0x1F", "1e3", "~", "<<", "${env:X}", "P1/d1"])
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans(), children, max_size=4)
    ),
    max_leaves=16,
)
PATHS = [
    (),
    ("apiVersion",),
    ("kind",),
    ("metadata",),
    ("metadata", "name"),
    ("metadata", "labels"),
    ("spec",),
    ("spec", "productId"),
    ("spec", "payload"),
    ("spec", "payload", "params"),
    ("spec", "devices"),
    ("spec", "devices", 0),
    ("spec", "devices", 1),
    ("spec", "devices", 1, "payload"),
    ("spec", "devices", 1, "labels"),
]


def replace_at(document: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, *rest = path
    if isinstance(document, dict) and head in document:
        copy = dict(document)
        if delete and not rest:
            del copy[head]
        else:
            copy[head] = replace_at(copy[head], tuple(rest), value, delete)
        return copy
    if isinstance(document, list) and isinstance(head, int) and head < len(document):
        items = list(document)
        items[head] = replace_at(items[head], tuple(rest), value, delete)
        return items
    return document


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(PATHS), yaml_values, st.booleans()), min_size=1, max_size=3
    ),
    extra=st.none() | yaml_values,
)
def test_random_yaml_documents(
    capsys: pytest.CaptureFixture[str],
    folder: Path,
    edits: list[tuple[tuple[Any, ...], Any, bool]],
    extra: Any,
) -> None:
    document = yaml.safe_load(VALID)
    for path, value, delete in edits:
        document = replace_at(document, path, value, delete)
    documents = [document] if extra is None else [document, extra]
    text = yaml.safe_dump_all(documents, allow_unicode=True, sort_keys=False)
    validate_and_plan(capsys, text.encode("utf-8"))


# --------------------------------------------------------------------------- YAML oddities

HEAD = (
    "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m}\n"
    "spec:\n  productId: P1\n  devices: [d1]\n"
)
# libyaml's composer recursed on the C stack until the process died (SIGSEGV): run these in a
# child process, so that a regression fails the test rather than the test run.
DEEP = {
    "deep flow nesting": "  payload: " + "[" * 30000 + "]" * 30000,
    "deep block nesting": "  payload:\n    " + "- " * 30000 + "1",
    "deep mappings": "  payload: " + "{a: " * 30000 + "1" + "}" * 30000,
    "deep indentation": "  payload:\n" + "".join(" " * (i + 4) + "a:\n" for i in range(0, 4000, 2)),
}


@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
def test_deeply_nested_yaml_is_refused_not_a_crash(folder: Path, body: str) -> None:
    Path("configs/m.yaml").write_text(HEAD + body + " 1\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in ("validate", "plan"):
        child = subprocess.run(
            [sys.executable, "-m", "rrpcsync", command, "configs"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert child.returncode == 1, (child.returncode, child.stderr[-500:])
        assert "configs/m.yaml:" in child.stderr
        # our own guard, or the depth limit newer libyaml builds enforce themselves
        refusals = ("nested more than 1,000 levels deep", "exceeded maximum nesting depth")
        assert any(refusal in child.stderr for refusal in refusals), child.stderr


ODDITIES = {
    "nesting json cannot send": ("  payload: " + "[" * 995 + "]" * 995, "nested too deeply"),
    "an integer too long to convert": ("  payload: {v: " + "9" * 5000 + "}", "too many digits"),
    "keys equal as values": ("  payload: {true: a, 1: b}", "same value"),
    "1 and 1.0": ("  payload: {1: a, 1.0: b}", "same value"),
    "duplicate key": ("  payload: {a: 1, a: 2}", "duplicate key 'a'"),
    "unhashable key": ("  payload: {[1]: a}", "unhashable key"),
    "complex key": ("  payload:\n    ? {a: 1}\n    : b", "unhashable key"),
    "python tag": ("  payload: !!python/object/apply:os.system [true]", "no custom or Python"),
    "custom tag": ("  payload: !vault x", "no custom or Python"),
    "binary": ("  payload: !!binary aGVsbG8=", "not binary data (!!binary)"),
    "set": ("  payload: !!set {a, b}", "not a set (!!set)"),
    "undefined alias": ("  payload: *nothing", "undefined alias"),
    "recursive alias": ("  payload: &a [*a]", "recursive alias"),
    "alias bomb": (
        "  payload: {a: &a [x,x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a],"
        " c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c],"
        " e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e],"
        " g: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]}",
        "alias bomb",
    ),
    "NaN": ("  payload: {v: .nan}", "NaN"),
    "NaN key": ("  payload: {.nan: 1}", "NaN"),
    "null payload": ("  payload: ~", "must be a mapping, a list or a string, not empty (null)"),
    "NUL byte": ("  payload: {a: \x00}", "control characters"),
    "tab indentation": ("  payload:\n\t a: 1", "YAML"),
    "directive": ("%YAML 1.1\n---\n" + HEAD + "  payload: {a: 1}", None),
    "directive only": ("%YAML 1.1\n---", "no manifests found"),
    "merge key": ("  payload: {<<: {a: 1}, a: 2}", None),
    "hex int and dates": ("  payload: {a: 0x1F, b: 2026-01-01, c: on, d: 1_000}", None),
    "line separator": ("  payload: {a: b\u2028c}", None),
    "omap": ("  payload: !!omap [a: 1, b: 2]", None),
    "long key": ("  payload: {a: 1}\n  x" + "y" * 100_000 + ": 1", "could not find expected ':'"),
    "long value": ("  payload: {a: " + "y" * 100_000 + "}", "65,536-byte MQTT limit"),
}


@pytest.mark.parametrize(("body", "expected"), ODDITIES.values(), ids=ODDITIES.keys())
def test_yaml_oddities(
    capsys: pytest.CaptureFixture[str], folder: Path, body: str, expected: str | None
) -> None:
    text = body if body.startswith("%") else HEAD + body + "\n"
    checked, _ = validate_and_plan(capsys, text.encode("utf-8"))
    if expected is None:
        assert checked.code == 0, checked.err
    else:
        assert checked.code == 1 and expected in checked.err, checked.err
        assert checked.err.startswith("configs/m.yaml:"), checked.err  # file:line:col first


# --------------------------------------------------------------------------- damaged state files

LINEAGE = "6f1c0a52-5d7e-4c1b-9d1e-0a4b7a2f31c9"
DEVICES = {
    "P1/d1": DeviceRecord(
        status=Status.APPLIED,
        payload='{"method":"set","params":{"a":1,"unit":"C"}}',
        payload_sha256=payload_digest('{"method":"set","params":{"a":1,"unit":"C"}}'),
        target_sha256=payload_digest('{"method":"set","params":{"a":1,"unit":"C"}}'),
        request_id="r-1",
        message_id=7,
        reply_base64="b2s=",
        reply_text="ok",
        applied_at="2026-11-28T12:00:00Z",
        attempts=1,
        manifest="m1",
    ),
    "P1/d2": DeviceRecord(
        status=Status.FAILED,
        target_sha256="1" * 64,
        request_id="r-2",
        attempts=4,
        last_error=ErrorInfo("FailedOperation.DeviceOffline", "设备离线", "2026-11-28T12:00:05Z"),
        manifest="m1",
    ),
    "P1/d3": DeviceRecord(status=Status.PENDING, target_sha256="2" * 64, attempts=1),
}


def damaged(rng: random.Random, original: bytes) -> tuple[bytes, int]:
    """One random kind of damage: flipped bits, a cut, garbage, a deleted, retyped or added
    key, or a key written twice (where JSON readers keep the last: an empty "devices").
    Also returns how many device records the file holds if it is still a valid state."""
    kind = rng.randrange(8)
    if kind == 6:
        return original[: original.rindex(b"}")].rstrip() + b',\n  "devices": {}\n}\n', len(DEVICES)
    if kind == 7:
        return original.replace(b'"P1/d2"', b'"P1/d%d"' % rng.choice([1, 3])), len(DEVICES)
    if kind == 0:
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), len(DEVICES)
    if kind == 1:
        return original[: rng.randrange(len(original))], len(DEVICES)
    if kind == 2:
        data = bytearray(original)
        where = rng.randrange(len(data))
        data[where:where] = rng.randbytes(rng.randint(1, 16))
        return bytes(data), len(DEVICES)
    document = json.loads(original)
    holders = [document, document["devices"], *document["devices"].values()]
    holders += [r["last_error"] for r in document["devices"].values() if r["last_error"]]
    holder = rng.choice(holders)
    key = rng.choice(sorted(holder))
    if kind == 3:
        del holder[key]
    elif kind == 4:
        holder[key] = rng.choice([None, True, -1, 1.5, "x", [], {}, "9" * 30])
    else:
        holder[rng.choice(["extra", key.upper(), key + " "])] = holder[key]
    devices = document.get("devices")
    left = len(devices) if isinstance(devices, dict) else -1
    return json.dumps(document, indent=2, ensure_ascii=False).encode(), left


def test_damaged_state_files_are_refused_naming_the_file_never_read_as_empty(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    Path("configs/m.yaml").write_text(manifest_text(devices="[d1, d2, d3]"), encoding="utf-8")
    state_file = folder / "rrpcsync.state.json"
    save_state(State(state_file, LINEAGE, 3, dict(DEVICES)))
    original = state_file.read_bytes()
    rng = random.Random(7)
    refused = 0
    for _ in range(300):
        data, records = damaged(rng, original)
        state_file.write_bytes(data)
        for args in (("plan", "configs"), ("state", "list")):
            result = run(capsys, *args)
            check_outcome(result, args[0])
            assert state_file.read_bytes() == data, "a damaged state must be left as it is"
            if result.code == 1:
                assert result.err.startswith(f"error: {state_file.name}"), result.err
                assert len(result.err.strip().splitlines()) == 1, result.err
            else:  # the damage left a valid state: read as it is, never (partly) emptied
                loaded = load_state(state_file)
                assert len(loaded.devices) == records, data
        refused += result.code == 1
    assert refused > 200


def test_damaged_journals_are_replayed_or_refused_naming_the_file(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    Path("configs/m.yaml").write_text(manifest_text(devices="[d1, d2, d3]"), encoding="utf-8")
    state_file = folder / "rrpcsync.state.json"
    state = State(state_file, LINEAGE, 3, {"P1/d1": DEVICES["P1/d1"]})
    save_state(state)
    with Journal.open(state) as journal:
        journal.append_many([("P1/d2", DEVICES["P1/d2"]), ("P1/d3", DEVICES["P1/d3"])])
    original = journal_path(state_file).read_bytes()
    saved = state_file.read_bytes()
    rng = random.Random(11)
    for _ in range(100):
        data = bytearray(original)
        kind = rng.randrange(3)
        if kind == 0:  # a cut, as a killed run leaves it
            data = data[: rng.randrange(len(data))]
        elif kind == 1:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            where = rng.randrange(len(data))
            data[where:where] = rng.choice([b"\n", b"\x00" * 8, b"{}\n", b"garbage"])
        journal_path(state_file).write_bytes(bytes(data))
        result = run(capsys, "plan", "configs")
        check_outcome(result, "plan")
        assert state_file.read_bytes() == saved
        assert journal_path(state_file).read_bytes() == data  # plan never writes
        if result.code == 1:
            assert result.err.startswith(f"error: {journal_path(state_file).name}"), result.err
        else:
            assert "P1/d1" in load_state(state_file).devices  # the state under it is kept


def test_repeated_keys_in_a_state_are_refused(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    Path("configs/m.yaml").write_text(manifest_text(devices="[d1, d2, d3]"), encoding="utf-8")
    state_file = folder / "rrpcsync.state.json"
    save_state(State(state_file, LINEAGE, 3, dict(DEVICES)))
    save_state(load_state(state_file))  # a backup to point at
    text = state_file.read_text(encoding="utf-8")
    emptied = text[: text.rindex("}")].rstrip() + ',\n  "devices": {}\n}\n'
    for damaged_text, key in ((emptied, "devices"), (text.replace("P1/d2", "P1/d1"), "P1/d1")):
        state_file.write_text(damaged_text, encoding="utf-8")
        result = run(capsys, "plan", "configs")
        assert result.code == 1
        assert result.err.strip() == (
            f'error: {state_file.name}: the key "{key}" appears twice in one object (a bad merge '
            f"or edit?); the previous version is in {state_file.name}.backup"
        )
    # a reply that happens to read "status" only costs a slower, exact check
    save_state(
        State(state_file, LINEAGE, 3, {"P1/d1": DEVICES["P1/d1"]._replace(reply_text="status")})
    )
    assert run(capsys, "plan", "configs").code == 0
