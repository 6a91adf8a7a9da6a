"""What apply says at the end: the text summary (also the GitHub step summary), or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rrpcsync.cli.app import out
from rrpcsync.cli.output import append_step_summary
from rrpcsync.planning import render

if TYPE_CHECKING:
    from rrpcsync.run.executor import ApplyReport

NO_CHANGES_REPORT: dict[str, Any] = {
    "applied": [],
    "failed": {},
    "failed_by_code": {},
    "not_sent": [],
    "unknown": [],
    "stale": [],
    "pruned": [],
    "requests": 0,
    "elapsed_seconds": 0.0,
    "interrupted": False,
    "blocked": [],
    "aborted": None,
}


def report_document(report: ApplyReport, stale: Sequence[str]) -> dict[str, Any]:
    return {
        "applied": sorted(report.applied),
        "failed": {
            key: {"code": err.code, "message": err.message, "at": err.at}
            for key, err in sorted(report.failed.items())
        },
        "failed_by_code": dict(report.failures_by_code),
        "not_sent": sorted(report.not_sent),
        "unknown": sorted(report.unknown),
        "stale": sorted(stale),
        "pruned": sorted(report.pruned),
        "requests": report.requests,
        "elapsed_seconds": round(report.elapsed, 3),
        "interrupted": report.interrupted,
        "blocked": sorted(report.blocked),
        "aborted": report.aborted,
    }


def render_report(report: ApplyReport, stale: Sequence[str], json_out: bool) -> None:
    if json_out:
        out(json.dumps(report_document(report, stale), indent=2, ensure_ascii=False))
        return
    lines = render.apply_summary(
        len(report.applied),
        dict(report.failures_by_code),
        len(report.not_sent) + len(report.unknown),
        len(stale),
        len(report.pruned),
        report.elapsed,
        report.requests,
    )
    if report.blocked:
        lines.append(f"  blocked {len(report.blocked):>5}  (a dependency had failures)")
    for line in lines:
        out(line)
    append_step_summary("\n".join(["### rrpcsync apply", "", *lines, ""]))
