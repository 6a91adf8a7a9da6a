"""The report's numbers: desired devices × state records × run history → `Report` (pure).

Every declared device falls in exactly one compliance category (`Category`), so the counts of
a group add up to its devices; `deferred` is counted on top of them: devices that need a send
but whose manifest's maintenance window is closed. Devices in the state that no manifest
declares any more are `orphaned`, counted apart (they have no desired payload to comply with).
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from rrpcsync import jsontext
from rrpcsync.manifests import probe as probes
from rrpcsync.model import DesiredDevice, DeviceRecord, Status
from rrpcsync.state.store import RunRecord, State, parse_utc, utc_now

REPORT_FORMAT = "rrpcsync-report"
REPORT_FORMAT_VERSION = 1
UNKNOWN_CODE = "Unknown"  # a failed record without an error (written by an older version)


class Category(str, enum.Enum):
    """Where a device stands against its manifest."""

    CURRENT = "current"  # acknowledged exactly its desired payload; no probe says otherwise
    DRIFTED = "drifted"  # acknowledged it, but its last drift probe reported another config
    OUTDATED = "outdated"  # acknowledged an older payload: the desired one differs
    FAILED = "failed"  # the last send failed (see its error code)
    PENDING = "pending"  # sent, outcome unknown (the run died before the reply)
    NEVER_SENT = "never_sent"  # declared, but not in the state
    ORPHANED = "orphaned"  # in the state, declared by no manifest (not a compliance category)

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


COMPLIANCE = (
    Category.CURRENT,
    Category.DRIFTED,
    Category.OUTDATED,
    Category.FAILED,
    Category.PENDING,
    Category.NEVER_SENT,
)


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True, slots=True)
class Counts:
    """Devices per compliance category; `deferred` counts those of them waiting for a window."""

    current: int = 0
    drifted: int = 0
    outdated: int = 0
    failed: int = 0
    pending: int = 0
    never_sent: int = 0
    deferred: int = 0
    failed_by_code: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.of(category) for category in COMPLIANCE)

    def of(self, category: Category) -> int:
        return int(getattr(self, category.value))

    def percent(self, count: int) -> float:
        """`count` as a percentage of the devices, to one decimal (0 for no devices)."""
        return round(100.0 * count / self.total, 1) if self.total else 0.0

    @property
    def compliance(self) -> float:
        return self.percent(self.current)


class _Tally:
    """A Counts being added up (one list of ints: the hot loop of a 100,000-device report)."""

    __slots__ = ("codes", "deferred", "numbers")

    def __init__(self) -> None:
        self.numbers = dict.fromkeys(COMPLIANCE, 0)
        self.deferred = 0
        self.codes: Counter[str] = Counter()

    def add(self, category: Category, deferred: bool, code: str | None) -> None:
        self.numbers[category] += 1
        self.deferred += deferred
        if code is not None:
            self.codes[code] += 1

    def freeze(self) -> Counts:
        numbers = {category.value: count for category, count in self.numbers.items()}
        codes = dict(sorted(self.codes.items(), key=lambda item: (-item[1], item[0])))
        return Counts(**numbers, deferred=self.deferred, failed_by_code=codes)


# --------------------------------------------------------------------------- grouping


class GroupBy(NamedTuple):
    """How devices are grouped: by `manifest`, `product`, or the value of `label:KEY`."""

    kind: str
    label: str | None = None

    @property
    def name(self) -> str:
        return f"label:{self.label}" if self.kind == "label" else self.kind

    def value(self, device: DesiredDevice) -> str | None:
        if self.kind == "manifest":
            return device.manifest
        if self.kind == "product":
            return device.product_id
        return device.labels.get(self.label or "")


MANIFEST = GroupBy("manifest")
PRODUCT = GroupBy("product")
DEFAULT_GROUP_BY = (MANIFEST, PRODUCT)


def parse_group_by(text: str) -> GroupBy:
    """`manifest`, `product` or `label:KEY`; ValueError says what is accepted."""
    if text in ("manifest", "product"):
        return GroupBy(text)
    kind, _, label = text.partition(":")
    if kind == "label" and label.strip():
        return GroupBy("label", label.strip())
    raise ValueError(f"expected manifest, product or label:KEY, not {text!r}")


@dataclass(frozen=True, slots=True)
class GroupRow:
    value: str | None  # None: devices without the label
    counts: Counts


@dataclass(frozen=True, slots=True)
class Grouping:
    by: GroupBy
    rows: tuple[GroupRow, ...]  # by value; devices without the label last


# --------------------------------------------------------------------------- devices


class DeviceLine(NamedTuple):
    """One device as the report lists it (a NamedTuple: a report holds 100,000)."""

    key: str
    manifest: str | None
    category: Category
    deferred: bool = False
    code: str | None = None  # failed: the last error's code
    message: str | None = None
    at: str | None = None  # when the last error happened (RFC 3339 UTC)
    attempts: int = 0
    reply: str | None = None  # failed: the reply kept as evidence (a ReplyMismatch), as text


def categorize(device: DesiredDevice, record: DeviceRecord | None) -> Category:
    if record is None:
        return Category.NEVER_SENT
    if record.status is Status.PENDING:
        return Category.PENDING
    if record.status is Status.FAILED:
        return Category.FAILED
    if record.payload_sha256 != device.payload_sha256:
        return Category.OUTDATED
    return Category.DRIFTED if is_drifted(device, record) else Category.CURRENT


def is_drifted(device: DesiredDevice, record: DeviceRecord) -> bool:
    """The config the device last reported to its probe differs from the desired payload.

    `observed` is stored masked, so it is compared with the masked desired payload; the
    probe's `ignore` pointers (the device's own fields) do not count, as in rrpcsync/run/drift.py.
    """
    observed = record.observed
    if observed is None:
        return False
    desired = device.shown_payload
    if observed == desired:
        return False
    try:
        reported: Any = jsontext.loads(observed)
    except ValueError:  # not JSON, or over the depth limit: compared as text
        reported = observed
    ignore = device.probe.ignore if device.probe is not None else ()
    return not probes.compare(desired, reported, ignore).matches


def device_line(
    key: str, manifest: str | None, category: Category, record: DeviceRecord | None, deferred: bool
) -> DeviceLine:
    if category is not Category.FAILED or record is None:
        return DeviceLine(key, manifest, category, deferred)
    error = record.last_error
    reply = record.reply_text
    if error is None:
        return DeviceLine(key, manifest, category, deferred, UNKNOWN_CODE, None, None, 0, reply)
    code = error.code or UNKNOWN_CODE
    return DeviceLine(
        key, manifest, category, deferred, code, error.message, error.at, record.attempts, reply
    )


# --------------------------------------------------------------------------- runs


class RunPoint(NamedTuple):
    """One run of the history, ready to show: its duration, and links that are safe to follow."""

    started_at: str
    finished_at: str
    command: str
    sent: int
    applied: int
    failed: int
    failed_by_code: Mapping[str, int]
    duration: float | None  # seconds; None when a time cannot be read
    ci_url: str | None  # an http(s) URL, or None
    commit: str | None
    commit_url: str | None


_COMMIT_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")
_CI_RUN_RE = (
    re.compile(r"^(?P<repo>https?://[^/]+/[^/]+/[^/]+)/actions/runs/\d+"),  # GitHub Actions
    re.compile(r"^(?P<repo>https?://[^/]+/.+?)/-/(?:pipelines|jobs)/\d+"),  # GitLab CI
)


def safe_url(url: str | None) -> str | None:
    """`url` if it is a plain http(s) URL (never `javascript:` or the like), else None."""
    if not url or any(ord(char) <= 0x20 or char in "\"'<>\\`" for char in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def commit_url(ci_url: str | None, commit: str | None) -> str | None:
    """The commit's page next to a GitHub Actions or GitLab CI run, when both are known."""
    if ci_url is None or commit is None or not _COMMIT_RE.match(commit):
        return None
    for pattern in _CI_RUN_RE:
        match = pattern.match(ci_url)
        if match:
            separator = "/-/commit/" if "/-/" in ci_url else "/commit/"
            return f"{match['repo']}{separator}{commit}"
    return None


def run_point(run: RunRecord) -> RunPoint:
    started, finished = parse_utc(run.started_at), parse_utc(run.finished_at)
    duration = (finished - started).total_seconds() if started and finished else None
    url = safe_url(run.ci_url)
    commit = run.commit if run.commit else None
    return RunPoint(
        started_at=run.started_at,
        finished_at=run.finished_at,
        command=run.command,
        sent=run.sent,
        applied=run.applied,
        failed=run.failed,
        failed_by_code=dict(run.failed_by_code),
        duration=duration if duration is None or duration >= 0 else None,
        ci_url=url,
        commit=commit,
        commit_url=commit_url(url, commit),
    )


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: str
    location: str  # the store, as messages name it (never a password)
    lineage: str
    serial: int
    totals: Counts
    orphaned: int
    groupings: tuple[Grouping, ...]
    devices: tuple[DeviceLine, ...]  # every declared device (manifest order), then orphans
    runs: tuple[RunPoint, ...]  # oldest first
    windows_known: bool  # False: maintenance windows were not checked, `deferred` is 0
    closed_windows: Mapping[str, str] = field(default_factory=dict)  # manifest -> next opening

    @property
    def failures(self) -> list[DeviceLine]:
        """Failed devices by error code (most frequent first), then key."""
        order = {code: index for index, code in enumerate(self.totals.failed_by_code)}
        failed = [line for line in self.devices if line.category is Category.FAILED]
        return sorted(failed, key=lambda line: (order.get(line.code or "", 0), line.key))


def build_report(
    desired: Iterable[DesiredDevice],
    state: State,
    runs: Sequence[RunRecord] = (),
    *,
    group_by: Sequence[GroupBy] = DEFAULT_GROUP_BY,
    deferred_manifests: Mapping[str, str] | None = None,
    generated_at: str | None = None,
) -> Report:
    """The numbers of the report.

    `deferred_manifests`: the manifests whose maintenance windows are all closed now, with
    their next opening (their devices that need a send are `deferred`); None when windows
    were not checked, and nothing is deferred.
    """
    records = state.devices
    closed = frozenset(deferred_manifests or ())
    totals = _Tally()
    groups: dict[GroupBy, dict[str | None, _Tally]] = {by: {} for by in dict.fromkeys(group_by)}
    lines: list[DeviceLine] = []
    declared: set[str] = set()
    for device in desired:
        declared.add(device.key)
        record = records.get(device.key)
        category = categorize(device, record)
        deferred = category is not Category.CURRENT and device.manifest in closed
        line = device_line(device.key, device.manifest, category, record, deferred)
        lines.append(line)
        totals.add(category, deferred, line.code)
        for by, tallies in groups.items():
            value = by.value(device)
            tally = tallies.get(value)
            if tally is None:
                tally = tallies[value] = _Tally()
            tally.add(category, deferred, line.code)
    orphans = [key for key in records if key not in declared]
    lines.extend(DeviceLine(k, records[k].manifest, Category.ORPHANED) for k in sorted(orphans))
    return Report(
        generated_at=generated_at or utc_now(),
        location=state.location,
        lineage=state.lineage,
        serial=state.serial,
        totals=totals.freeze(),
        orphaned=len(orphans),
        groupings=tuple(_grouping(by, tallies) for by, tallies in groups.items()),
        devices=tuple(lines),
        runs=tuple(run_point(run) for run in runs),
        windows_known=deferred_manifests is not None,
        closed_windows=dict(sorted((deferred_manifests or {}).items())),
    )


def _grouping(by: GroupBy, tallies: Mapping[str | None, _Tally]) -> Grouping:
    ordered = sorted(tallies.items(), key=lambda item: (item[0] is None, item[0] or ""))
    return Grouping(by, tuple(GroupRow(value, tally.freeze()) for value, tally in ordered))


# --------------------------------------------------------------------------- JSON


def counts_document(counts: Counts) -> dict[str, Any]:
    numbers = {category.value: counts.of(category) for category in COMPLIANCE}
    percent = {name: counts.percent(count) for name, count in numbers.items()}
    return {
        "total": counts.total,
        **numbers,
        "deferred": counts.deferred,
        "failed_by_code": dict(counts.failed_by_code),
        "percent": {**percent, "deferred": counts.percent(counts.deferred)},
    }


def report_document(report: Report) -> dict[str, Any]:
    """The numbers of the page, for scripts (`rrpcsync report --format json`, docs/report.md)."""
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_FORMAT_VERSION,
        "generated_at": report.generated_at,
        "state": {"location": report.location, "lineage": report.lineage, "serial": report.serial},
        "windows": {"checked": report.windows_known, "closed": dict(report.closed_windows)},
        "totals": {**counts_document(report.totals), "orphaned": report.orphaned},
        "groups": {
            grouping.by.name: [
                {"value": row.value, **counts_document(row.counts)} for row in grouping.rows
            ]
            for grouping in report.groupings
        },
        "failures": [_failure_document(line) for line in report.failures],
        "runs": [_run_document(run) for run in report.runs],
    }


def _failure_document(line: DeviceLine) -> dict[str, Any]:
    return {
        "key": line.key,
        "manifest": line.manifest,
        "code": line.code,
        "message": line.message,
        "at": line.at,
        "attempts": line.attempts,
        "reply": line.reply,
        "deferred": line.deferred,
    }


def _run_document(run: RunPoint) -> dict[str, Any]:
    document = run._asdict()
    document["failed_by_code"] = dict(run.failed_by_code)
    return document
