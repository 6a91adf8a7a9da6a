"""What reaches a terminal or a CI log: control characters escaped, workflow commands
neutralised.

Payloads, replies, device keys and file names are data from outside. Printed raw, an escape
sequence in one (`ESC ] 0 ; … BEL`) retitles or rewrites the terminal, and a line starting with
`::error` (or holding `##[error]` anywhere) becomes a GitHub Actions workflow command. Every
line rrpcsync prints passes through `safe_text`: such characters are shown as `\\uXXXX`
escapes (which also keeps JSON output valid JSON), and workflow-command syntax gets a
backslash. rrpcsync's own colours (SGR sequences `ESC [ … m`) pass; its own annotations
(`validate --format github`) are printed with `safe_command`.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls, lone surrogates, bidi overrides and
# isolates (they reorder what is shown), line/paragraph separators
_UNSAFE = re.compile(
    "(\x1b\\[[0-9;]*m)|([\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e"
    "\u2066-\u2069])"
)
_COMMAND_AT_LINE_START = re.compile(r"^([ \t]*)::", re.MULTILINE)
_LEGACY_COMMAND = "##["


def _escape(match: re.Match[str]) -> str:
    colour = match[1]
    return colour if colour is not None else f"\\u{ord(match[2]):04x}"


def escape_controls(text: str) -> str:
    """`text` with every unsafe character shown as `\\uXXXX` (rrpcsync's colours kept)."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def safe_text(text: str) -> str:
    """A line (or lines) safe to print: controls escaped, no workflow command."""
    text = escape_controls(text)
    if "::" in text:
        text = _COMMAND_AT_LINE_START.sub(r"\1\\::", text)
    if _LEGACY_COMMAND in text:
        text = text.replace(_LEGACY_COMMAND, "#\\u0023[")
    return text


def safe_command(line: str) -> str:
    """One workflow command rrpcsync means to give: controls escaped, nothing else."""
    text = escape_controls(line)
    return text.replace(_LEGACY_COMMAND, "#\\u0023[")


def one_line(text: str) -> str:
    """An error message as one safe line: newlines shown as `\\n`."""
    return safe_text(text.replace("\r", "\\r").replace("\n", "\\n"))
