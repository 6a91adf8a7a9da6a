"""`${env:NAME}` references in payloads: resolved at plan/apply time, never shown or stored.

A payload that references a variable is *sensitive*: plans, logs and errors show its masked
form (each reference replaced by `(sensitive)`), the state keeps only the masked copy and the
hash of the real bytes, and a saved plan keeps the unresolved template. See docs/secrets.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from rrpcsync.jsontext import canonical_payload, walk_strings

MARKER = "${env:"
MASK = "(sensitive)"
_REFERENCE = re.compile(r"\$(\$?)\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

_known_values: set[str] = set()  # resolved values, so that logs and errors can redact them


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
    document = walk_strings(json.loads(template), lambda s: _substitute(s, env))
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


def known_values() -> Iterable[str]:
    return tuple(_known_values)
