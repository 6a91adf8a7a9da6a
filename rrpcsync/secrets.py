"""`${env:NAME}` references in payloads: resolved at plan/apply time, never shown or stored.

A payload that references a variable is *sensitive*: plans, logs and errors show its masked
form (each reference replaced by `(sensitive)`), the state keeps only the masked copy and the
hash of the real bytes, and a saved plan keeps the unresolved template. See docs/secrets.md.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from urllib.parse import quote, quote_plus

from rrpcsync.jsontext import canonical_payload, loads, walk_strings

MARKER = "${env:"
MASK = "(sensitive)"
_REFERENCE = re.compile(r"\$(\$?)\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

_known_values: set[str] = set()  # resolved values, so that logs and errors can redact them
REDACTED = "***"  # what a secret becomes in a log line, a message or a stored reply


class MissingVariable(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def is_template(text: str) -> bool:
    return MARKER in text


def _substitute(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match[1]:  # "$${env:X}" is the literal text "${env:X}"
            return match[0][1:]
        name = match[2]
        if name not in env:
            raise MissingVariable(name)
        value = env[name]
        if value:
            _known_values.add(value)
        return value

    return _REFERENCE.sub(replace, text)


def resolve(template: str, is_json: bool, env: Mapping[str, str]) -> str:
    """The real payload: references replaced in every string of a canonical JSON document
    (re-serialised canonically), or in a verbatim string payload."""
    if not is_json:
        return _substitute(template, env)
    document = walk_strings(loads(template), lambda s: _substitute(s, env))
    return canonical_payload(document)


def mask(template: str) -> str:
    """What may be shown: every reference replaced by `(sensitive)`."""
    return _REFERENCE.sub(lambda m: m[0][1:] if m[1] else MASK, template)


def references(template: str) -> list[str]:
    """The variable names a template references, in order, each once."""
    return list(dict.fromkeys(m[2] for m in _REFERENCE.finditer(template) if not m[1]))


def remember(templates: Iterable[str], env: Mapping[str, str]) -> None:
    """Note the values referenced by `templates` (resolved in worker processes) for redaction."""
    names = {m[2] for template in templates for m in _REFERENCE.finditer(template) if not m[1]}
    _known_values.update(env[name] for name in names if env.get(name))


def register(*values: str | None) -> None:
    """Make values secret for the rest of the process: the access token, a password, an
    AppSecret, a database password. `redact` (and so every cleaned message, log line and
    stored reply) masks each of them in every encoding `forms` knows."""
    _known_values.update(value for value in values if value)


def known_values() -> Iterable[str]:
    return tuple(_known_values)


def redact(text: str, extra: Iterable[str] = (), mask: str = REDACTED) -> str:
    """`text` with every form of every registered secret (and of `extra`) replaced by `mask`
    ("***" in messages and logs; `MASK` in stored replies, like masked payloads)."""
    values = set(_known_values)
    values.update(value for value in extra if value)
    if not values:
        return text
    for form in _all_forms(frozenset(values)):
        if form in text:
            text = text.replace(form, mask)
    return text


def contains_secret(text: str, extra: Iterable[str] = ()) -> bool:
    return redact(text, extra) != text


@lru_cache(maxsize=64)
def _all_forms(values: frozenset[str]) -> tuple[str, ...]:
    found = {form for value in values for form in forms(value)}
    return tuple(sorted(found, key=len, reverse=True))  # longest first: no partial leftovers


@lru_cache(maxsize=1024)
def forms(value: str) -> frozenset[str]:
    """Every text in which `value` can appear in what rrpcsync prints, logs or stores: raw,
    JSON-escaped (UTF-8 kept, `\\uXXXX` in either case, escaped twice for JSON inside JSON),
    Python repr, URL-encoded, and the base64 text of any payload holding it (three alignments,
    standard and URL-safe alphabets)."""
    raw = _raw_bytes(value)
    found = {value, repr(value)[1:-1], quote(raw, safe=""), quote_plus(raw, safe="")}
    for once in _json_forms(value):
        found.add(once)
        found.update(_json_forms(once))
    found.update(_base64_forms(raw))
    return frozenset(form for form in found if form)


def _raw_bytes(value: str) -> bytes:
    """The bytes a value stands for (an environment value that is not UTF-8 holds its bytes
    as lone surrogates)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _json_forms(value: str) -> set[str]:
    ascii_form = json.dumps(value)[1:-1]
    upper = re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m[1].upper(), ascii_form)
    return {json.dumps(value, ensure_ascii=False)[1:-1], ascii_form, upper}


_MIN_BASE64_BYTES = 6  # shorter fragments would mask unrelated base64 text


def _base64_forms(raw: bytes) -> set[str]:
    """The base64 characters fixed by `raw` alone, wherever it sits in a longer message."""
    if len(raw) < _MIN_BASE64_BYTES:
        return set()
    found = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).decode("ascii")
        first, end = -(-8 * offset // 6), (8 * offset + 8 * len(raw)) // 6
        fragment = encoded[first:end]
        found.update({fragment, fragment.replace("+", "-").replace("/", "_")})
    return found
