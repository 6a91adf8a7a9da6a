"""JSON as rrpcsync writes and compares it: one canonical form, one way to walk strings, and
the collector paused while a decoder builds a large tree."""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator
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


# --------------------------------------------------------------------------- decoding with limits

MAX_DEPTH = 200  # nesting of decoded documents (replies, probes, saved plans, payload diffs)


class JsonLimitError(ValueError):
    """A JSON text over one of the decoder's limits: too deep, or a number too long."""


def loads(text: str | bytes, max_depth: int | None = MAX_DEPTH, **options: Any) -> Any:
    """`json.loads` that fails only with ValueError: JSONDecodeError (invalid JSON),
    UnicodeDecodeError (bytes not UTF-8), or JsonLimitError (nested deeper than `max_depth`,
    or an integer over Python's 4,300-digit limit). Never RecursionError.

    With `max_depth=None` only the decoder's own recursion limit applies (for large documents
    whose shape the caller checks, like the state)."""
    try:
        value = json.loads(text, **options)
    except RecursionError:
        limit = f"more than {max_depth} levels deep" if max_depth else "too deeply to read"
        raise JsonLimitError(f"nested {limit}") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if "digits" in str(exc) and not isinstance(exc, UnicodeDecodeError):
            raise JsonLimitError("a number has more than 4,300 digits") from None
        raise
    if max_depth is not None and nested_deeper_than(value, max_depth):
        raise JsonLimitError(f"nested more than {max_depth} levels deep")
    return value


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects in `value` nest more than `limit` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: loading builds millions of objects (nodes, dicts,
    devices), and each collection triggered by them scans them all and finds nothing to free
    (measured: a tenth to a fifth of a large plan). Collection resumes afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
