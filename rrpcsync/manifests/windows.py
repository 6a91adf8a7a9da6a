"""Maintenance windows (`spec.windows`): when a manifest's changes may be sent.

    windows:
      - days: [mon, tue, wed, thu, fri]   # the day a window *starts* (default: every day)
        start: "22:00"                    # local wall-clock time, HH:MM
        end: "02:00"                      # end <= start: the window ends the next day
        timezone: Asia/Shanghai           # IANA zone (zoneinfo; tzdata where the OS has none)

A manifest without windows is always open. With windows, it is open while any one of them is.
Times are wall-clock times in the window's zone, so a window keeps its local hours across DST
changes: a start or end the clock skips (spring forward) is the moment of the jump; a start the
clock repeats (fall back) is its first occurrence and an end its second, so a window never
closes early. "24:00" is the end of the day.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from rrpcsync.model import Window

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
EVERY_DAY = frozenset(range(7))
END_OF_DAY = 24 * 60
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_LOOKAHEAD_DAYS = 8  # every weekly window opens within a week (+1 for one crossing midnight)

Report = Callable[[tuple[Any, ...], str], None]


def bounds(window: Window, day: date) -> tuple[datetime, datetime] | None:
    """(opens, closes) in UTC of the window starting on local `day`, if it runs that day."""
    if day.weekday() not in window.days:
        return None
    zone = zone_info(window.timezone)
    end_day = day if window.end > window.start else day + timedelta(days=1)
    opens = _instant(day, window.start, zone, first=True)
    return opens, _instant(end_day, window.end, zone, first=False)


def describe_window(window: Window) -> str:
    if window.days == EVERY_DAY:
        days = "every day"
    else:
        days = ",".join(DAYS[day] for day in sorted(window.days))
    return f"{days} {_hhmm(window.start)}-{_hhmm(window.end)} {window.timezone}"


Windows = tuple[Window, ...]


@lru_cache(maxsize=256)
def zone_info(name: str) -> ZoneInfo:
    from zoneinfo import ZoneInfo  # imported when a window is used: `validate` starts faster

    return ZoneInfo(name)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _instant(day: date, minutes: int, zone: ZoneInfo, *, first: bool) -> datetime:
    """The UTC instant of local `day` + `minutes`; skipped times map to the jump."""
    if minutes == END_OF_DAY:
        day, minutes = day + timedelta(days=1), 0
    naive = datetime.combine(day, time(minutes // 60, minutes % 60))
    instant = naive.replace(tzinfo=zone, fold=0 if first else 1).astimezone(timezone.utc)
    if instant.astimezone(zone).replace(tzinfo=None) == naive:
        return instant
    # In a gap, fold=0 reads the time with the offset before the jump (an instant after it)
    # and fold=1 with the offset after it (an instant before it): the jump lies in between.
    other = naive.replace(tzinfo=zone, fold=1 if first else 0).astimezone(timezone.utc)
    return _jump_between(min(instant, other), max(instant, other), zone)


def _jump_between(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (before, after] with `after`'s UTC offset, to the second."""
    offset = after.astimezone(zone).utcoffset()
    low, high = before, after  # invariant: offset(low) != offset, offset(high) == offset
    while high - low > timedelta(seconds=1):  # bounded: a gap of hours halves ~14 times
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


# --------------------------------------------------------------------------- questions


def is_open(windows: Windows, now: datetime) -> bool:
    """No windows: always open; otherwise inside at least one (start inclusive, end exclusive)."""
    return not windows or any(_open_in(window, now) for window in windows)


def _open_in(window: Window, now: datetime) -> bool:
    today = now.astimezone(zone_info(window.timezone)).date()
    for day in (today - timedelta(days=1), today):
        span = bounds(window, day)
        if span is not None and span[0] <= now < span[1]:
            return True
    return False


def next_opening(windows: Windows, now: datetime) -> datetime | None:
    """When the next window opens (UTC), `now` when one is open, None without windows."""
    if not windows:
        return None
    if is_open(windows, now):
        return now
    return min(_next_start(window, now) for window in windows)


def _next_start(window: Window, now: datetime) -> datetime:
    today = now.astimezone(zone_info(window.timezone)).date()
    for offset in range(-1, _LOOKAHEAD_DAYS):
        span = bounds(window, today + timedelta(days=offset))
        if span is not None and span[0] > now:
            return span[0]
    raise AssertionError(f"window {describe_window(window)} never opens")  # days is never empty


def describe(windows: Windows) -> str:
    return "; ".join(describe_window(window) for window in windows) if windows else "always"


# --------------------------------------------------------------------------- manifest form


def parse_windows(raw: Sequence[Any] | None, report: Report) -> Windows:
    """`spec.windows` (shape already checked by the schema); problems go to `report`."""
    if not raw:
        return ()
    parsed = (
        _parse_window(item, ("spec", "windows", index), report) for index, item in enumerate(raw)
    )
    return tuple(window for window in parsed if window is not None)


def _parse_window(item: Any, path: tuple[Any, ...], report: Report) -> Window | None:
    start = parse_time(item["start"], allow_end_of_day=False)
    end = parse_time(item["end"], allow_end_of_day=True)
    problems: list[tuple[tuple[Any, ...], str]] = []
    if start is None:
        problems.append(((*path, "start"), f"start {item['start']!r} is not HH:MM (00:00-23:59)"))
    if end is None:
        problems.append(((*path, "end"), f"end {item['end']!r} is not HH:MM (00:00-24:00)"))
    if start is not None and start == end:
        problems.append(((*path, "end"), "end equals start: empty (a whole day is 00:00-24:00)"))
    zone_problem = _zone_problem(item["timezone"])
    if zone_problem:
        problems.append(((*path, "timezone"), zone_problem))
    for where, message in problems:
        report(where, message)
    if problems or start is None or end is None:
        return None
    return Window(_days(item.get("days")), start, end, item["timezone"])


def parse_time(text: str, *, allow_end_of_day: bool) -> int | None:
    if allow_end_of_day and text == "24:00":
        return END_OF_DAY
    match = _TIME.match(text)
    return int(match[1]) * 60 + int(match[2]) if match else None


def _days(raw: Iterable[str] | None) -> frozenset[int]:
    return EVERY_DAY if raw is None else frozenset(DAYS.index(day) for day in raw)


def _zone_problem(name: str) -> str | None:
    from zoneinfo import ZoneInfoNotFoundError

    try:
        zone_info(name)
    except (ZoneInfoNotFoundError, ValueError):
        return (
            f"unknown timezone {name!r}: use an IANA name such as Asia/Shanghai or UTC "
            "(the zone database is the system's, or the tzdata package)"
        )
    return None


def to_document(window: Window) -> dict[str, Any]:
    """The manifest form again (saved plans carry it)."""
    return {
        "days": [DAYS[day] for day in sorted(window.days)],
        "start": _hhmm(window.start),
        "end": _hhmm(window.end) if window.end != END_OF_DAY else "24:00",
        "timezone": window.timezone,
    }
