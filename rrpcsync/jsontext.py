"""JSON as rrpcsync writes and compares it: one canonical form, one way to walk strings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical_payload(value: Any) -> str:
    """The exact Payload text: canonical JSON for mappings and lists, strings verbatim.

    Raises ValueError for NaN/infinity (not JSON) and TypeError for non-JSON values.
    """
    if isinstance(value, str):
        return value
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def walk_strings(value: Any, change: Callable[[str], str], keys: bool = False) -> Any:
    """A copy of a JSON value with `change` applied to every string (and mapping key)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [walk_strings(item, change, keys) for item in value]
    if isinstance(value, dict):
        return {
            (change(key) if keys else key): walk_strings(item, change, keys)
            for key, item in value.items()
        }
    return value
