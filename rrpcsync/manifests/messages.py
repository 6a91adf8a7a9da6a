"""Messages that say what to do: schema errors in words, YAML syntax errors with the place a
bracket or quote was opened, tabs and indentation named. Pure; used by the loader.

No message shows Python's spelling of a value (`None`, `True`, `{'a': 1}`): values are quoted
as YAML/JSON would write them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

PATTERN_WORDS = {
    "^[A-Za-z0-9]{1,32}$": "product IDs are 1–32 letters or digits",
    "^[A-Za-z0-9_:.\\-]{1,48}$": "device names are 1–48 letters, digits or _ : . -",
    "^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$": (
        "names are 1–63 lowercase letters, digits, - . or _, starting and ending with a "
        "letter or digit"
    ),
    "^[A-Za-z0-9]([A-Za-z0-9_.\\-/]{0,61}[A-Za-z0-9])?$": (
        "label keys are 1–63 letters, digits, _ . - or /, starting and ending with a letter "
        "or digit"
    ),
    "^[0-9]+(\\.[0-9]+)?%$": "a percentage is a number followed by %, such as 10% or 2.5%",
    "\\.([cC][sS][vV]|[yY][aA]?[mM][lL]|[jJ][sS][oO][nN])$": (
        "an inventory is a .csv, .yaml, .yml or .json file"
    ),
    "^([01][0-9]|2[0-3]):[0-5][0-9]$": "a time is HH:MM with two digits each, 00:00 to 23:59",
    "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$": (
        "a time is HH:MM with two digits each, 00:00 to 24:00"
    ),
}
TYPE_WORDS = {
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty (null)",
}


def value_text(value: Any, width: int = 60) -> str:
    """A value as the YAML author would recognise it: 'text', 3, true, null, [1, 2]."""
    if isinstance(value, str):
        text = f"'{value}'"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):  # keys of several types; NaN and infinity
            text = kind_of(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def kind_of(value: Any) -> str:
    """What a YAML value is, in words."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int | float):
        return f"a number ({value_text(value)})"
    if isinstance(value, str):
        return f"a string ({value_text(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    if isinstance(value, set | frozenset):
        return "a set (!!set)"
    return "a value of another YAML type"


def wrong_type(expected: str | Sequence[str], value: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    words = [TYPE_WORDS.get(name, name) for name in names]
    wanted = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    message = f"must be {wanted}, not {kind_of(value)}"
    if names == ["string"] and isinstance(value, bool | int | float) and value is not None:
        message += f'; quote it to keep it as text: "{value_text(value).strip(chr(39))}"'
    return message


def no_match(pattern: str, value: Any, description: str = "") -> str:
    words = PATTERN_WORDS.get(pattern) or description.rstrip(".")
    if not words:
        return f"{value_text(value)} does not have the expected form ({pattern})"
    return f"{value_text(value)} is not allowed: {words}"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`; did you mean 'labels'?` for a close choice, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {choice.lower(): choice for choice in choices}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"; did you mean '{close[0]}'?" if close else ""


# keys that belong to another part of a manifest: `spec.labels` is meant for metadata
ELSEWHERE = {"labels": "metadata", "name": "metadata", "productId": "spec", "devices": "spec"}


def unknown_key(key: Any, allowed: Sequence[str]) -> str:
    name = key if isinstance(key, str) else value_text(key)
    hint = did_you_mean(name, allowed) if isinstance(key, str) else ""
    if isinstance(key, str) and not hint:
        elsewhere = [k for k in ELSEWHERE if k not in allowed]
        hint = did_you_mean(name, elsewhere)
        if hint:
            place = ELSEWHERE[hint.split("'")[1]]
            hint = hint.replace("?", f" (under {place})?")
    return f"unknown key '{name}'{hint} (allowed: {', '.join(allowed)})"


_PYTHON_WORDS = re.compile(r"\b(None|True|False)\b")


def plain(message: str) -> str:
    """A library's message with Python's None/True/False written as YAML writes them."""
    return _PYTHON_WORDS.sub(
        lambda m: {"None": "null", "True": "true", "False": "false"}[m[1]], message
    )


# --------------------------------------------------------------------------- YAML syntax

_OPENED = {
    "while parsing a flow mapping": "the '{'",
    "while parsing a flow sequence": "the '['",
    "while scanning a quoted scalar": "the quote",
}


def yaml_syntax(
    lines: Sequence[str],
    context: str | None,
    context_at: tuple[int, int] | None,
    problem: str | None,
    problem_at: tuple[int, int],
) -> str:
    """A YAML syntax error in words; places are (line, column), 1-based."""
    line_text = lines[problem_at[0] - 1] if 0 < problem_at[0] <= len(lines) else ""
    if "\t" in line_text[: len(line_text) - len(line_text.lstrip())]:
        return "a tab is used for indentation; YAML indents with spaces only (replace the tab)"
    if context in _OPENED and context_at is not None and context_at != problem_at:
        opened = f"{_OPENED[context]} opened at line {context_at[0]}, column {context_at[1]}"
        return f"{opened} is not closed ({problem or 'syntax error'})"
    if context == "while parsing a block mapping" and problem == "did not find expected key":
        column = context_at[1] if context_at else 1
        return (
            f"bad indentation: expected a key at column {column}, as in the mapping from line "
            f"{context_at[0] if context_at else 1}, or a deeper indentation under a key; "
            f"found this line at column {problem_at[1]}"
        )
    if problem and problem.startswith("mapping values are not allowed"):
        return _mapping_value_problem(lines, problem_at)
    parts = [part for part in (context, problem) if part]
    return "; ".join(parts) or "YAML syntax error"


def _mapping_value_problem(lines: Sequence[str], at: tuple[int, int]) -> str:
    text = lines[at[0] - 1] if 0 < at[0] <= len(lines) else ""
    indent = len(text) - len(text.lstrip(" "))
    above = _line_above(lines, at[0])
    if above is not None:
        number, previous = above
        previous_indent = len(previous) - len(previous.lstrip(" "))
        if indent > previous_indent and not previous.rstrip().endswith(":"):
            return (
                f"bad indentation: this line is indented {indent} spaces, more than line "
                f"{number} ({previous_indent}), whose value is already given; indent it "
                f"{previous_indent} spaces to make it a sibling key"
            )
    return (
        "a second ': ' on one line: quote the value if it contains ': ', or put the key on "
        "its own line"
    )


def _line_above(lines: Sequence[str], number: int) -> tuple[int, str] | None:
    for index in range(number - 2, -1, -1):
        stripped = lines[index].strip()
        if stripped and not stripped.startswith("#"):
            return index + 1, lines[index]
    return None
