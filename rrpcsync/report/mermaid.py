"""Compact charts that GitHub draws in comments and step summaries: mermaid `pie` blocks.

Labels come from fixed words and from error codes (cloud replies): a label never carries a
double quote, a backtick, `#`, `;` or a line break, so it cannot end its string, the
diagram or the markdown code fence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from rrpcsync.report.model import COMPLIANCE, Counts

MAX_SLICES = 8  # more slices are unreadable: the smallest are summed as "other"
LABEL_CHARS = 48
_UNSAFE = re.compile(r"[\"`#;\\\x00-\x1f\x7f\u2028\u2029]")


def label(text: str) -> str:
    cleaned = _UNSAFE.sub(" ", text).strip() or "?"
    return cleaned if len(cleaned) <= LABEL_CHARS else cleaned[: LABEL_CHARS - 1] + "…"


def pie(title: str, slices: Iterable[tuple[str, int]]) -> list[str]:
    """A fenced ```mermaid pie (with the numbers shown); no lines when every slice is 0
    (mermaid refuses slices that are not positive, so zeros are left out)."""
    shown = [(name, count) for name, count in slices if count > 0]
    if not shown:
        return []
    if len(shown) > MAX_SLICES:
        ordered = sorted(shown, key=lambda item: -item[1])
        rest = sum(count for _, count in ordered[MAX_SLICES - 1 :])
        shown = [*ordered[: MAX_SLICES - 1], ("other", rest)]
    lines = ["```mermaid", "pie showData", f"    title {label(title)}"]
    lines.extend(f'    "{label(name)}" : {count}' for name, count in shown)
    lines.append("```")
    return lines


def compliance_chart(counts: Counts, title: str = "Devices by status") -> list[str]:
    return pie(title, ((category.label, counts.of(category)) for category in COMPLIANCE))


def results_chart(
    applied: int, failed_by_code: Mapping[str, int], not_sent: int, title: str = "Apply"
) -> list[str]:
    """An apply's outcome: applied, each failure code, not sent."""
    failed = sorted(failed_by_code.items(), key=lambda item: (-item[1], item[0]))
    slices: Sequence[tuple[str, int]] = [
        ("applied", applied),
        *((f"failed: {code}", count) for code, count in failed),
        ("not sent", not_sent),
    ]
    return pie(title, slices)
