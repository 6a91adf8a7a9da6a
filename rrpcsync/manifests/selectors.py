"""Label selectors (`--selector`, and manifests' selector fields), as in Kubernetes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from rrpcsync.errors import UsageError

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./:-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)([\w./-]+)\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement of a selector, as in Kubernetes label selectors."""

    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (all must hold)."""
    return tuple(_parse_requirement(part, text) for part in _split_selector(text))


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _parse_requirement(part: str, whole: str) -> Requirement:
    if match := _SET_RE.match(part):
        values = frozenset(v.strip() for v in match[3].split(",") if v.strip())
        return Requirement(match[1], match[2], values)
    if match := _EQ_RE.match(part):
        return Requirement(match[1], "notin" if match[2] == "!=" else "in", frozenset([match[3]]))
    if match := _EXISTS_RE.match(part):
        return Requirement(match[2], "!exists" if match[1] else "exists")
    raise UsageError(
        f"invalid --selector {whole!r}: expected k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k"
    )
