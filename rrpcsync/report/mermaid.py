"""Compact charts GitHub draws in comments and step summaries (mermaid pies): the fleet's
compliance and an apply's outcome. The plan's own chart and the pie itself are in
rrpcsync/planning/render.py, where the plan comment is made."""

from __future__ import annotations

from collections.abc import Mapping

from rrpcsync.planning.render import mermaid_pie
from rrpcsync.report.model import COMPLIANCE, Counts


def compliance_chart(counts: Counts, title: str = "Devices by status") -> list[str]:
    return mermaid_pie(title, ((category.label, counts.of(category)) for category in COMPLIANCE))


def results_chart(
    applied: int, failed_by_code: Mapping[str, int], not_sent: int, title: str = "Apply"
) -> list[str]:
    """An apply's outcome: applied, each failure code, not sent."""
    failed = sorted(failed_by_code.items(), key=lambda item: (-item[1], item[0]))
    slices = [
        ("applied", applied),
        *((f"failed: {code}", count) for code, count in failed),
        ("not sent", not_sent),
    ]
    return mermaid_pie(title, slices)
