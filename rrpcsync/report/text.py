"""The report's short forms: text lines for a terminal, markdown (with a mermaid chart) for a
step summary or a comment. Pure; the page is rrpcsync/report/html.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rrpcsync.report.mermaid import compliance_chart
from rrpcsync.report.model import COMPLIANCE, Counts, Grouping, Report

MARKDOWN_MARKER = "<!-- rrpcsync-report -->"
TEXT_GROUPS = 20  # groups listed per grouping in the text form
MARKDOWN_GROUPS = 50
MARKDOWN_CODES = 20


def headline(counts: Counts) -> str:
    return (
        f"Compliance: {counts.compliance:.1f}% of {counts.total:,} declared device(s) are "
        "applied and current."
    )


def _nonzero(counts: Counts) -> str:
    parts = [
        f"{counts.of(category):,} {category.label}"
        for category in COMPLIANCE
        if counts.of(category)
    ]
    if counts.deferred:
        parts.append(f"{counts.deferred:,} deferred")
    return ", ".join(parts) or "no devices"


def report_text(report: Report) -> Iterator[str]:
    totals = report.totals
    yield headline(totals)
    for category in COMPLIANCE:
        count = totals.of(category)
        yield f"  {category.label:<11} {count:>8,}  {totals.percent(count):5.1f}%"
    windows = _windows_note(report)
    deferred = f"{totals.deferred:>8,}  {totals.percent(totals.deferred):5.1f}%"
    yield f"  {'deferred':<11} {deferred}{windows}"
    yield f"  {'orphaned':<11} {report.orphaned:>8,}  (in the state, declared by no manifest)"
    if totals.failed_by_code:
        yield "Failed by error code:"
        for code, count in totals.failed_by_code.items():
            yield f"  {count:>8,}  {code}"
    for grouping in report.groupings:
        yield from _grouping_text(grouping)
    if report.runs:
        last = report.runs[-1]
        yield (
            f"Last run: {last.command} finished {last.finished_at}: {last.sent:,} sent, "
            f"{last.failed:,} failed ({len(report.runs)} run(s) in the history)."
        )


def _windows_note(report: Report) -> str:
    if not report.windows_known:
        return "  (maintenance windows not checked)"
    closed = len(report.closed_windows)
    return f"  ({closed} manifest(s) outside their maintenance windows now)" if closed else ""


def _grouping_text(grouping: Grouping) -> Iterator[str]:
    yield f"By {grouping.by.name}:"
    for row in grouping.rows[:TEXT_GROUPS]:
        shown = row.value if row.value is not None else "(none)"
        yield f"  {shown}: {row.counts.compliance:.1f}% current; {_nonzero(row.counts)}"
    if len(grouping.rows) > TEXT_GROUPS:
        yield f"  … and {len(grouping.rows) - TEXT_GROUPS:,} more (--format json lists all)"


# --------------------------------------------------------------------------- markdown


def cell(text: str) -> str:
    """Text safe in a markdown table cell: no HTML, no cell break, no code span."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = escaped.replace("|", "\\|").replace("`", "'")
    return " ".join(escaped.split())


def _counts_row(counts: Counts, first: str) -> str:
    cells = [
        f"{counts.of(category):,} ({counts.percent(counts.of(category)):.1f}%)"
        for category in COMPLIANCE
    ]
    return f"| {first} | {counts.total:,} | " + " | ".join([*cells, f"{counts.deferred:,}"]) + " |"


def _header(first: str) -> list[str]:
    names = [first, "devices", *(category.label for category in COMPLIANCE), "deferred"]
    return ["| " + " | ".join(names) + " |", "|---|" + "---:|" * (len(names) - 1)]


def report_markdown(report: Report, title: str = "rrpcsync report") -> str:
    """Totals, a chart, failures by code and each grouping (collapsed), for GitHub."""
    totals = report.totals
    lines = [MARKDOWN_MARKER, f"### {title}", "", headline(totals), ""]
    lines += [*_header(""), _counts_row(totals, "**all**"), ""]
    if report.orphaned:
        orphans = f"{report.orphaned:,} orphaned device(s): in the state, declared by no manifest."
        lines += [orphans, ""]
    chart = compliance_chart(totals)
    lines += [*chart, ""] if chart else []
    lines += _codes_markdown(report)
    for grouping in report.groupings:
        lines += _grouping_markdown(grouping)
    return "\n".join(lines) + "\n"


def _codes_markdown(report: Report) -> list[str]:
    codes = list(report.totals.failed_by_code.items())
    if not codes:
        return []
    lines = ["| error code | failed devices |", "|---|---:|"]
    lines += [f"| `{cell(code)}` | {count:,} |" for code, count in codes[:MARKDOWN_CODES]]
    if len(codes) > MARKDOWN_CODES:
        lines.append(f"| … {len(codes) - MARKDOWN_CODES} more codes | |")
    return [*lines, ""]


def _grouping_markdown(grouping: Grouping) -> Sequence[str]:
    rows = grouping.rows[:MARKDOWN_GROUPS]
    body = [
        _counts_row(row.counts, cell(row.value) if row.value is not None else "_(none)_")
        for row in rows
    ]
    if len(grouping.rows) > len(rows):
        body.append(f"| … {len(grouping.rows) - len(rows):,} more | | | | | | | | |")
    name = cell(grouping.by.name)
    summary = f"<details><summary>By {name}: {len(grouping.rows):,} group(s)</summary>"
    return [summary, "", *_header(name), *body, "", "</details>", ""]
