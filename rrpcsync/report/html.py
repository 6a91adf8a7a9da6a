"""The report as one self-contained HTML page (docs/report.md).

Jinja2 renders it with autoescaping on: every name, label, error message and URL that comes
from manifests, devices or replies is escaped text. The page loads nothing: its CSS and
script are inline, its charts inline SVG, and its Content-Security-Policy allows only that
exact style and script (by hash), so even an escaping mistake could not run a script.

Size: the static HTML lists a bounded number of rows (groups, failed devices per code, runs);
every device rides in one compact JSON block that the script searches and shows a page at a
time, so a 100,000-device fleet stays a few megabytes and a few thousand DOM rows.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jinja2
from markupsafe import Markup

from rrpcsync.report.model import (
    COMPLIANCE,
    Category,
    Counts,
    DeviceLine,
    Grouping,
    Report,
    RunPoint,
)

GROUP_ROWS = 50  # group rows shown before "show all"
GROUP_ROWS_MAX = 300  # group rows in the page at all (the JSON form has every group)
CODES_MAX = 50  # error codes listed with their devices
CODE_DEVICES = 20  # failed devices listed per code in the static page
RUN_ROWS = 20  # runs in the table before "show all"
RUN_ROWS_MAX = 200
HISTORY_POINTS = 100  # the newest runs drawn in the chart
MESSAGE_CHARS = 300  # an error message or reply is cut after this many characters in the page
MESSAGE_BUDGET = 500_000  # distinct message and reply characters embedded for the search, at most


# --------------------------------------------------------------------------- bars


class Segment(NamedTuple):
    category: str
    label: str
    x: float
    width: float
    size: int  # devices
    percent: float


BAR_WIDTH = 1000.0


def bar_segments(counts: Counts) -> list[Segment]:
    """The stacked compliance bar of `counts`, in SVG units of a 1000-wide bar."""
    segments: list[Segment] = []
    total, x = counts.total, 0.0
    for category in COMPLIANCE:
        count = counts.of(category)
        if not count:
            continue
        width = BAR_WIDTH * count / total
        segments.append(
            Segment(category.value, category.label, x, width, count, counts.percent(count))
        )
        x += width
    return segments


# --------------------------------------------------------------------------- history chart


class HistoryBar(NamedTuple):
    run: RunPoint
    x: float
    width: float
    sent_y: float
    sent_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True, slots=True)
class HistoryChart:
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float  # y of the x axis
    bars: tuple[HistoryBar, ...]
    duration_line: str  # SVG polyline points
    duration_dots: tuple[tuple[float, float], ...]
    y_ticks: tuple[tuple[float, str, str], ...]  # (y, devices, duration)
    x_labels: tuple[tuple[float, str], ...]
    shown: int
    total: int


def history_chart(runs: Sequence[RunPoint]) -> HistoryChart | None:
    """Devices sent and failed (bars) and duration (line) of the newest runs."""
    if not runs:
        return None
    shown = list(runs[-HISTORY_POINTS:])
    width, height, left, right, top, bottom = 1000.0, 260.0, 56.0, 944.0, 16.0, 220.0
    max_sent = max(1, *(run.sent for run in shown))
    max_duration = max(1.0, *(run.duration or 0.0 for run in shown))
    slot = (right - left) / len(shown)
    bars, points = [], []
    for index, run in enumerate(shown):
        x = left + index * slot
        sent_h = (bottom - top) * run.sent / max_sent
        failed_h = (bottom - top) * min(run.failed, run.sent) / max_sent
        bars.append(
            HistoryBar(
                run,
                x + slot * 0.15,
                max(slot * 0.7, 1.0),
                bottom - sent_h,
                sent_h,
                bottom - failed_h,
                failed_h,
                _run_title(run),
            )
        )
        if run.duration is not None:
            y = bottom - (bottom - top) * run.duration / max_duration
            points.append((round(x + slot / 2, 1), round(y, 1)))
    ticks = tuple(
        (
            bottom - (bottom - top) * step / 4,
            f"{max_sent * step / 4:,.0f}",
            _duration(max_duration * step / 4),
        )
        for step in range(5)
    )
    label_at = sorted({0, len(shown) // 2, len(shown) - 1})
    labels = tuple((left + (i + 0.5) * slot, shown[i].finished_at[:10]) for i in label_at)
    line = " ".join(f"{x},{y}" for x, y in points)
    return HistoryChart(
        width, height, left, right, top, bottom, tuple(bars), line, tuple(points), ticks,
        labels, len(shown), len(runs),
    )  # fmt: skip


def _run_title(run: RunPoint) -> str:
    took = _duration(run.duration) if run.duration is not None else "unknown time"
    return (
        f"{run.finished_at} {run.command}: {run.sent} sent, {run.applied} applied, "
        f"{run.failed} failed in {took}"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 or seconds == 0 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


# --------------------------------------------------------------------------- devices (JSON)


class _Interned:
    """Strings stored once in the page's data, referred to by index."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, value: str | None) -> int:
        if value is None:
            return -1
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.values)
            self.values.append(value)
        return found


def split_key(key: str) -> tuple[str | None, str]:
    product, slash, name = key.partition("/")
    return (product, name) if slash else (None, key)


def devices_data(lines: Iterable[DeviceLine]) -> dict[str, Any]:
    """Every device, compactly: names bucketed by (manifest, product, category, deferred),
    failed devices one row each with their error and reply (strings interned; messages and
    replies only while MESSAGE_BUDGET lasts)."""
    manifests, products, codes, messages, times = (_Interned() for _ in range(5))
    categories = [category.value for category in Category]
    buckets: dict[tuple[int, int, int, int], list[str]] = {}
    failed: list[list[Any]] = []
    budget = MESSAGE_BUDGET
    for line in lines:
        product, name = split_key(line.key)
        where = (manifests(line.manifest), products(product))
        category = categories.index(line.category.value)
        if line.category is not Category.FAILED:
            buckets.setdefault((*where, category, int(line.deferred)), []).append(name)
            continue
        texts = []
        for text in (_cut(line.message), _cut(line.reply)):
            if text is not None and text not in messages.index:
                if len(text) > budget:
                    text = None  # past the budget: the search shows the device without it
                else:
                    budget -= len(text)
            texts.append(messages(text))
        row = [*where, name, codes(line.code), times(line.at), line.attempts]
        failed.append(row + _without_defaults([*texts, int(line.deferred)], FAILED_DEFAULTS))
    return {
        "categories": categories,
        "manifests": manifests.values,
        "products": products.values,
        "codes": codes.values,
        "messages": messages.values,
        "times": times.values,
        "buckets": [[*key, names] for key, names in buckets.items()],
        "failed": failed,
    }


FAILED_DEFAULTS = (-1, -1, 0)  # message, reply, deferred: left out of a row's end when so


def _without_defaults(values: list[Any], defaults: Sequence[Any]) -> list[Any]:
    while values and values[-1] == defaults[len(values) - 1]:
        values.pop()
    return values


def _cut(message: str | None) -> str | None:
    if message is None or len(message) <= MESSAGE_CHARS:
        return message
    return message[: MESSAGE_CHARS - 1] + "…"


def script_json(value: Any) -> Markup:
    """JSON safe inside a <script> element: `<`, `>` and `&` as \\u escapes, so no text can
    close the element (the same escaping as Jinja's `tojson`, without its spaces)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# --------------------------------------------------------------------------- page


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rrpcsync.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = _duration
    env.filters["pct"] = lambda value: f"{value:.1f}%"
    env.filters["thousands"] = lambda value: f"{value:,}"
    return env


def asset(name: str) -> str:
    """A static file of the templates folder (the page's CSS or script), exactly as stored."""
    loader = environment().loader
    assert loader is not None
    return loader.get_source(environment(), name)[0]


def csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


class GroupView(NamedTuple):
    grouping: Grouping
    title: str
    rows: list[tuple[str, Any, list[Segment]]]  # (shown value, row, bar)
    left_out: int  # groups beyond GROUP_ROWS_MAX (only in the JSON form)


def group_view(grouping: Grouping) -> GroupView:
    by = grouping.by
    missing = f"(no {by.label} label)" if by.kind == "label" else "(none)"
    title = f"label {by.label}" if by.kind == "label" else by.kind
    rows = [
        (row.value if row.value is not None else missing, row, bar_segments(row.counts))
        for row in grouping.rows[:GROUP_ROWS_MAX]
    ]
    return GroupView(grouping, title, rows, max(0, len(grouping.rows) - GROUP_ROWS_MAX))


class CodeView(NamedTuple):
    code: str
    size: int  # failed devices
    percent: float  # of the failed devices
    devices: list[DeviceLine]


def code_views(report: Report) -> tuple[list[CodeView], int]:
    """Error codes with their first failed devices, and how many codes are left out."""
    by_code: dict[str, list[DeviceLine]] = {}
    for line in report.failures:
        devices = by_code.setdefault(line.code or "", [])
        if len(devices) < CODE_DEVICES:
            devices.append(line._replace(message=_cut(line.message), reply=_cut(line.reply)))
    failed = report.totals.failed
    views = [
        CodeView(code, count, round(100.0 * count / failed, 1), by_code.get(code, []))
        for code, count in report.totals.failed_by_code.items()
    ]
    return views[:CODES_MAX], max(0, len(views) - CODES_MAX)


def render_html(
    report: Report, *, sources: Sequence[str] = (), title: str = "rrpcsync fleet report"
) -> str:
    """The whole page; `sources` are the manifest paths, shown in the header."""
    css, script = asset("report.css"), asset("report.js")
    codes, codes_left_out = code_views(report)
    policy = (
        f"default-src 'none'; style-src {csp_hash(css)}; script-src {csp_hash(script)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    template = environment().get_template("report.html.j2")
    return template.render(
        title=title,
        report=report,
        sources=list(sources),
        totals=report.totals,
        categories=COMPLIANCE,
        overall=bar_segments(report.totals),
        groups=[group_view(grouping) for grouping in report.groupings],
        codes=codes,
        codes_left_out=codes_left_out,
        runs=list(reversed(report.runs[-RUN_ROWS_MAX:])),
        chart=history_chart(report.runs),
        limits={"group_rows": GROUP_ROWS, "code_devices": CODE_DEVICES, "run_rows": RUN_ROWS},
        css=Markup(css),
        script=Markup(script),
        policy=policy,
        data=script_json(devices_data(report.devices)),
    )
