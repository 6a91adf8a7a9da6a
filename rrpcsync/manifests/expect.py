"""Reply checks (`expect`): what a device's reply must look like for the push to count.

Pure: parsing the manifest form (with a diagnostic per problem), JSON pointers (RFC 6901),
matching one reply, and the short description `plan` prints. See docs/rollouts.md.

    expect:
      json: true                # default: the reply must be valid JSON
      equals: {/code: 0}        # JSON pointer -> the JSON value it must hold
      regex: '"status":"ok"'    # re.search on the reply text
      echo: sha256              # or a list of JSON pointers into the payload
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from rrpcsync import jsontext
from rrpcsync.jsontext import canonical_json as canonical
from rrpcsync.model import Expectation

REPLY_MISMATCH = "ReplyMismatch"
ECHO_SHA256 = "sha256"
MISSING = object()

# (path inside the document, message) -> records a diagnostic at that path
Report = Callable[[tuple[Any, ...], str], None]


# --------------------------------------------------------------------------- JSON pointers


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: "" is the whole document, else "/"-separated tokens (~0 is ~, ~1 is /)."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must be empty or start with '/' (e.g. /code)")
    if re.search(r"~(?![01])", text):
        raise ValueError(f"{text!r}: '~' must be followed by 0 or 1 (~0 is ~, ~1 is /)")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/"))


def step(value: Any, token: str) -> Any:
    """One pointer token into `value`, or `MISSING`."""
    return _step(value, token)


def _step(value: Any, token: str) -> Any:
    if isinstance(value, dict):
        return value.get(token, MISSING)
    if isinstance(value, list) and re.fullmatch(r"0|[1-9][0-9]*", token):
        index = int(token)
        return value[index] if index < len(value) else MISSING
    return MISSING


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at `pointer`, or `MISSING`."""
    value = document
    for token in parse_pointer(pointer):
        value = _step(value, token)
        if value is MISSING:
            break
    return value


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality: true/false are not the numbers 1/0; 1 equals 1.0."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return type(left) is type(right) and bool(left == right)


# --------------------------------------------------------------------------- manifest form


def parse_expectation(
    raw: Mapping[str, Any], path: tuple[Any, ...], report: Report
) -> Expectation | None:
    """The checked form of one `expect` mapping (schema-valid); None after a diagnostic."""
    ok = True
    require_json = bool(raw.get("json", True))
    equals = raw.get("equals") or {}
    for pointer in equals:
        ok &= _pointer_ok(pointer, (*path, "equals", pointer), report)
    regex = raw.get("regex")
    if regex is not None:
        ok &= _regex_ok(regex, (*path, "regex"), report)
    echo = raw.get("echo")
    fields: tuple[str, ...] = ()
    if isinstance(echo, list):
        fields = tuple(echo)
        for index, pointer in enumerate(fields):
            ok &= _pointer_ok(pointer, (*path, "echo", index), report)
    if not require_json and (equals or fields):
        report((*path, "json"), "equals and echo fields read the reply as JSON: drop json: false")
        ok = False
    if not ok:
        return None
    pairs = tuple(sorted((pointer, canonical(value)) for pointer, value in equals.items()))
    return Expectation(require_json, pairs, regex, echo == ECHO_SHA256, fields)


def _pointer_ok(pointer: str, path: tuple[Any, ...], report: Report) -> bool:
    try:
        parse_pointer(pointer)
    except ValueError as exc:
        report(path, f"invalid JSON pointer: {exc}")
        return False
    return True


def _regex_ok(pattern: str, path: tuple[Any, ...], report: Report) -> bool:
    try:
        re.compile(pattern)
    except re.error as exc:
        report(path, f"invalid regex {pattern!r}: {exc}")
        return False
    return True


class ManifestExpectations:
    """The checks of one manifest: `spec.expect`, or a device's own `expect`, which replaces
    it whole (`expect: null` turns the check off for that device)."""

    def __init__(self, raw: Mapping[str, Any] | None, report: Report) -> None:
        self.report = report
        self.default = None if raw is None else parse_expectation(raw, ("spec", "expect"), report)

    def of(self, index: int, entry: str | Mapping[str, Any]) -> Expectation | None:
        if isinstance(entry, str) or "expect" not in entry:
            return self.default
        raw = entry["expect"]
        path = ("spec", "devices", index, "expect")
        return None if raw is None else parse_expectation(raw, path, self.report)


def check_echo_payload(
    expectation: Expectation, payload: str, path: tuple[Any, ...], report: Report
) -> bool:
    """`echo` fields must exist in the payload (else the check could never pass)."""
    if not expectation.echo_fields:
        return True
    document = _loads(payload)
    if document is MISSING:
        report(path, "expect.echo lists fields, but the payload is not JSON")
        return False
    missing = [p for p in expectation.echo_fields if resolve_pointer(document, p) is MISSING]
    for pointer in missing:
        report(path, f"expect.echo: the payload has no value at {pointer}")
    return not missing


def to_document(expectation: Expectation) -> dict[str, Any]:
    """The manifest form again (saved plans carry it)."""
    doc: dict[str, Any] = {}
    if not expectation.require_json:
        doc["json"] = False
    if expectation.equals:
        doc["equals"] = {pointer: json.loads(value) for pointer, value in expectation.equals}
    if expectation.regex is not None:
        doc["regex"] = expectation.regex
    if expectation.echo_sha256:
        doc["echo"] = ECHO_SHA256
    elif expectation.echo_fields:
        doc["echo"] = list(expectation.echo_fields)
    return doc


def from_document(doc: Any) -> Expectation:
    """Read `to_document` output back; ValueError when it is malformed."""
    from rrpcsync.manifests.policy import check_with_schema

    check_with_schema({"$ref": "#/$defs/expect"}, doc, "expect")
    problems: list[str] = []
    expectation = parse_expectation(doc, (), lambda _path, message: problems.append(message))
    if expectation is None:
        raise ValueError(f"malformed expect: {problems[0]}")
    return expectation


# --------------------------------------------------------------------------- matching


def check_reply(
    expectation: Expectation, payload: str, reply_text: str | None, reply_base64: str | None
) -> str | None:
    """None when the reply passes every check; else why not (one line, no payload values)."""
    if reply_text is None:
        return "the device sent no reply" if reply_base64 is None else "the reply is not UTF-8"
    document, problem = _decoded(reply_text)
    if expectation.require_json and document is MISSING:
        return f"the reply is {problem}: {_short(reply_text)}"
    for check in (_check_equals, _check_regex, _check_sha256, _check_fields):
        reason = check(expectation, payload, reply_text, document)
        if reason is not None:
            return reason
    return None


def _check_equals(expectation: Expectation, _payload: str, _text: str, document: Any) -> str | None:
    for pointer, expected_text in expectation.equals:
        found = resolve_pointer(document, pointer)
        if found is MISSING:
            return f"the reply has no {pointer or 'document'} (expected {expected_text})"
        if not json_equal(found, json.loads(expected_text)):
            return f"reply {pointer} is {_short(canonical(found))}, expected {expected_text}"
    return None


def _check_regex(expectation: Expectation, _payload: str, text: str, _doc: Any) -> str | None:
    if expectation.regex is None or _regex(expectation.regex).search(text):
        return None
    return f"the reply does not match regex {_short(expectation.regex)!r}"


def _check_sha256(expectation: Expectation, payload: str, text: str, document: Any) -> str | None:
    if not expectation.echo_sha256:
        return None
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    if digest in _sha256_candidates(text, document, expectation.require_json):
        return None
    return f"the reply does not carry the payload's sha256 ({digest[:12]}…)"


def _sha256_candidates(text: str, document: Any, require_json: bool) -> set[str]:
    found: set[str] = set()
    if isinstance(document, str):
        found.add(document.strip().lower())
    elif isinstance(document, dict) and isinstance(document.get("sha256"), str):
        found.add(document["sha256"].strip().lower())
    if not require_json:  # a bare digest is not JSON
        found.add(text.strip().lower())
    return found


def _check_fields(expectation: Expectation, payload: str, _text: str, document: Any) -> str | None:
    if not expectation.echo_fields:
        return None
    sent = _loads(payload)
    for pointer in expectation.echo_fields:
        found = resolve_pointer(document, pointer)
        if found is MISSING:
            return f"the reply has no {pointer} to echo the payload's value"
        if not json_equal(found, resolve_pointer(sent, pointer)):
            return f"reply {pointer} differs from the payload's value (echo)"
    return None


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _decoded(text: str) -> tuple[Any, str]:
    """(the JSON document or MISSING, why it is missing)."""
    try:
        return jsontext.loads(text, parse_constant=_no_constant), ""
    except jsontext.JsonLimitError as exc:
        return MISSING, str(exc)
    except ValueError:
        return MISSING, "not valid JSON"


def _loads(text: str) -> Any:
    try:
        return jsontext.loads(text, parse_constant=_no_constant)
    except ValueError:  # not JSON, or over the depth and number limits: no document
        return MISSING


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(text: str, width: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- display


def describe(expectation: Expectation, width: int = 100) -> str:
    """One short line for plans: `JSON reply, /code = 0, regex '^ok', echo sha256`."""
    parts = ["JSON reply" if expectation.require_json else "any reply"]
    parts += [f"{pointer or '(whole)'} = {value}" for pointer, value in expectation.equals]
    if expectation.regex is not None:
        parts.append(f"regex {expectation.regex!r}")
    if expectation.echo_sha256:
        parts.append("echo sha256")
    if expectation.echo_fields:
        parts.append("echo " + ", ".join(expectation.echo_fields))
    return _short(", ".join(parts), width)
