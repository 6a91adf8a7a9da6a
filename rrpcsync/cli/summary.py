"""What apply says at the end: the text summary (also the GitHub step summary), or JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rrpcsync.cli.app import out
from rrpcsync.cli.output import append_step_summary
from rrpcsync.model import Plan
from rrpcsync.planning import render
from rrpcsync.planning.deferral import next_window
from rrpcsync.report.mermaid import results_chart

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
    "fatal": None,
    "deferred": [],
    "claimed_elsewhere": {},
}


def report_document(report: ApplyReport, fatal: str | None = None) -> dict[str, Any]:
    return {
        "applied": sorted(report.applied),
        "failed": {
            key: {"code": err.code, "message": err.message, "at": err.at}
            for key, err in sorted(report.failed.items())
        },
        "failed_by_code": dict(report.failures_by_code),
        "not_sent": sorted(report.not_sent),
        "unknown": sorted(report.unknown),
        "stale": sorted(report.stale),
        "pruned": sorted(report.pruned),
        "requests": report.requests,
        "elapsed_seconds": round(report.elapsed, 3),
        "interrupted": report.interrupted,
        "blocked": sorted(report.blocked),
        "aborted": report.aborted,
        "fatal": _fatal_document(report, fatal),
        "deferred": sorted(report.deferred),
        "claimed_elsewhere": dict(sorted(report.claimed.items())),
    }


def _fatal_document(report: ApplyReport, fatal: str | None) -> dict[str, Any] | None:
    """Why the run stopped as a whole: the code, and the message the user is told."""
    if report.fatal is None:
        return None
    return {"code": report.fatal.code or "Unknown", "message": fatal or report.fatal.message}


def deferred_note(plan: Plan) -> str:
    """Apply with only deferred changes: nothing sent, and when the next window opens."""
    return (
        f"Nothing sent: {plan.summary.deferred} change(s) deferred until their maintenance "
        f"window opens (next: {next_window(plan)}); --ignore-windows sends them now."
    )


def summary_lines(report: ApplyReport) -> list[str]:
    """The counts, then the failed devices per error code, the stale and the blocked ones."""
    lines = render.apply_summary(
        len(report.applied),
        dict(report.failures_by_code),
        len(report.not_sent) + len(report.unknown),
        len(report.stale),
        len(report.pruned),
        report.elapsed,
        report.requests,
        report.interrupted,
        len(report.deferred),
    )
    if report.blocked:
        lines.append(f"  blocked {len(report.blocked):>5}  (a dependency had failures)")
    if report.deferred:
        lines.append(
            f"  deferred {len(report.deferred):>4}  (outside their maintenance windows; "
            "--ignore-windows sends them now)"
        )
    if report.claimed:
        lines.append(f"  skipped {len(report.claimed):>5}  (another run has them: sharded apply)")
        lines.extend(f"    {key}: {why}" for key, why in sorted(report.claimed.items())[:20])
    lines += render.failed_device_lines({key: err.code for key, err in report.failed.items()})
    lines += render.device_list_lines("Stale (not sent)", report.stale)
    lines += render.device_list_lines("Blocked (a dependency had failures)", report.blocked)
    return lines


def render_report(report: ApplyReport, json_out: bool, fatal: str | None = None) -> None:
    if json_out:
        out(json.dumps(report_document(report, fatal), indent=2, ensure_ascii=False))
        return
    lines = summary_lines(report)
    for line in lines:
        out(line)
    not_sent = len(report.not_sent) + len(report.unknown)
    chart = results_chart(len(report.applied), report.failures_by_code, not_sent)
    markdown = ["### rrpcsync apply", "", *_markdown_lines(lines), "", *chart, ""]
    append_step_summary("\n".join(markdown))


def _markdown_lines(lines: list[str]) -> list[str]:
    """The summary in a code block, so device keys and `…` lines keep their layout."""
    return ["```", *(line.replace("```", "ˋˋˋ") for line in lines), "```"]
