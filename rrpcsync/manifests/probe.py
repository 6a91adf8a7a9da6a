"""Drift probes, the pure part: JSON pointers, reading a probe reply, comparing the config a
device reports with its desired payload, and `--resync-after` durations (docs/drift.md).

No I/O here: the prober that sends probes lives in rrpcsync/drift.py.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from rrpcsync import jsontext, secrets
from rrpcsync.jsontext import canonical_payload, walk_strings
from rrpcsync.manifests.expect import MISSING, json_equal, parse_pointer, step
from rrpcsync.model import Probe

# RFC 6901: "" (the whole document) or "/"-separated tokens where "~" is "~0" or "~1".
DEFAULT_PROBE = {"method": "get_config"}
MAX_PROBE_BYTES = 65_536  # the MQTT message limit, as for payloads

# Codes of probes that got an answer rrpcsync cannot read (the device is listed unreachable).
NO_REPLY = "Probe.NoReply"
NOT_JSON = "Probe.ReplyNotJSON"
NO_CONFIG = "Probe.NoConfigInReply"


class ProbeReplyError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- probes


Report = Callable[[tuple[Any, ...], str], None]  # report(path in the document, message)
PROBE_PATH = ("spec", "probe")


def parse_probe(raw: Mapping[str, Any] | None, report: Report) -> Probe | None:
    """A manifest's `spec.probe` (schema-valid), each problem reported at its place; None if
    there is no probe or a problem was reported."""
    if raw is None:
        return None
    ok = _pointer_ok(raw.get("pointer", ""), (*PROBE_PATH, "pointer"), report)
    for index, pointer in enumerate(raw.get("ignore", ())):
        where = (*PROBE_PATH, "ignore", index)
        if pointer == "":
            report(where, 'ignoring "" (the whole document) would leave nothing to compare')
            ok = False
        else:
            ok = _pointer_ok(pointer, where, report) and ok
    try:
        probe = probe_from_spec(raw)
    except ValueError as exc:
        report((*PROBE_PATH, "payload"), str(exc))
        return None
    return probe if ok else None


def _pointer_ok(pointer: str, where: tuple[Any, ...], report: Report) -> bool:
    try:
        tokens(pointer)
    except ValueError as exc:
        report(where, f"invalid JSON pointer: {exc}")
        return False
    return True


def probe_from_spec(spec: Mapping[str, Any]) -> Probe:
    """The probe of a manifest's `spec.probe` (already schema-valid); ValueError says why the
    payload cannot be sent."""
    try:
        text = canonical_payload(spec.get("payload", DEFAULT_PROBE))
    except (TypeError, ValueError, RecursionError):
        raise ValueError("the probe payload cannot be sent as JSON (NaN, infinity?)") from None
    if secrets.is_template(text):
        raise ValueError("a probe payload cannot reference environment variables (${env:…})")
    if len(text.encode("utf-8")) > MAX_PROBE_BYTES:
        raise ValueError(f"the probe payload is over the {MAX_PROBE_BYTES:,}-byte MQTT limit")
    return Probe(text, str(spec.get("pointer", "")), tuple(spec.get("ignore", ())))


# --------------------------------------------------------------------------- pointers


def tokens(pointer: str) -> list[str]:
    return list(parse_pointer(pointer))


def lookup(document: Any, pointer: str) -> Any:
    """The value at `pointer`, or ProbeReplyError(NO_CONFIG) if there is none."""
    value = document
    for token in tokens(pointer):
        value = step(value, token)
        if value is MISSING:
            raise ProbeReplyError(NO_CONFIG, f"the probe reply has nothing at {pointer!r}")
    return value


# --------------------------------------------------------------------------- replies


def reported_config(reply_text: str | None, pointer: str) -> Any:
    """The config a device reported: the value at `pointer` in its JSON reply."""
    if reply_text is None:
        raise ProbeReplyError(NO_REPLY, "the probe reply is empty or not UTF-8 text")
    try:
        reply = jsontext.loads(reply_text)
    except jsontext.JsonLimitError as exc:
        raise ProbeReplyError(NOT_JSON, f"the probe reply is {exc}") from None
    except ValueError:
        message = f"the probe reply is not JSON: {_short(reply_text)}"
        raise ProbeReplyError(NOT_JSON, message) from None
    return lookup(reply, pointer)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- comparing


class Comparison(NamedTuple):
    matches: bool
    compared: Any  # the reported config as compared: ignored values taken from the desired


def compare(desired_payload: str, reported: Any, ignore: Sequence[str] = ()) -> Comparison:
    """Does the reported config equal the desired payload (ignoring the device's own fields)?

    A payload that is JSON text is compared as a JSON document (a reported string holding JSON
    is parsed first); any other string payload is compared as text.
    """
    try:
        desired = jsontext.loads(desired_payload)
    except ValueError:
        text = reported if isinstance(reported, str) else canonical_payload(reported)
        return Comparison(text == desired_payload, reported)
    if isinstance(reported, str) and not isinstance(desired, str):
        with contextlib.suppress(ValueError):
            reported = jsontext.loads(reported)
    compared = without_ignored(reported, desired, ignore)
    return Comparison(json_equal(compared, desired), compared)


def without_ignored(reported: Any, desired: Any, ignore: Iterable[str]) -> Any:
    """A copy of `reported` where each ignored pointer holds the desired value (or nothing,
    when the desired payload has none): equal documents then differ only where it counts."""
    result = _copy(reported)
    for pointer in ignore:
        path = tokens(pointer)
        if path:
            _overwrite(result, desired, path)
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _overwrite(target: Any, desired: Any, path: list[str]) -> None:
    *parents, last = path
    for token in parents:
        target, desired = step(target, token), step(desired, token)
        if target is MISSING:
            return
    wanted = MISSING if desired is MISSING else step(desired, last)
    if isinstance(target, dict):
        if wanted is MISSING:
            target.pop(last, None)
        else:
            target[last] = _copy(wanted)
    elif isinstance(target, list) and step(target, last) is not MISSING:
        index = int(last)
        if wanted is MISSING:
            del target[index]
        else:
            target[index] = _copy(wanted)


def masked(value: Any, hidden: Iterable[str]) -> Any:
    """`value` with every form of a secret value in its strings replaced by the mask."""
    values = [v for v in hidden if v]
    if not values:
        return value
    return walk_strings(value, lambda text: secrets.redact(text, values, secrets.MASK), keys=True)


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


MAX_DURATION_SECONDS = 100 * 365 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds in `30m`, `24h`, `7d`, `1h30m`, `2w` (s, m, h, d, w); ValueError otherwise."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h, 7d or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years")
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds
