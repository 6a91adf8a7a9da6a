"""What every state store offers: the `StateStore` protocol, and the in-memory `State` it loads.

apply, drift and the `state` commands use a store only through this protocol, so a new store
(SQLite, PostgreSQL) is one class. The JSON file (`rrpcsync.state.jsonfile.JsonFileStore`) is the
first implementation and the default.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol, runtime_checkable

from rrpcsync.model import DeviceRecord


def utc_now() -> str:
    """Now as RFC 3339 UTC to the second: `2026-11-28T12:00:00Z`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str | None) -> datetime | None:
    """A time as `utc_now` writes it (or any ISO 8601; naive means UTC); None if unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def new_lineage() -> str:
    return str(uuid.uuid4())


@dataclass
class State:
    """A store's content in memory: lineage, serial and one record per device.

    Code outside a `Recorder` changes records with `put` and `drop`, which remember the keys
    they touched (`changed`), so a store that writes per device (SQL) saves only those.
    `location` names the store in messages: a path, or a URL without its password.
    """

    location: str
    lineage: str
    serial: int = 0
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    exists: bool = False  # the store held this state when loaded
    replayed: int = 0  # records of an unfinished run replayed on load; save to fold them in
    warnings: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # put/drop since load, not yet saved

    def put(self, key: str, record: DeviceRecord) -> None:
        self.devices[key] = record
        self.changed.add(key)

    def drop(self, key: str) -> None:
        if self.devices.pop(key, None) is not None:
            self.changed.add(key)


class RunRecord(NamedTuple):
    """One finished command that wrote the state (apply, state rm, …): the run history."""

    started_at: str
    finished_at: str
    command: str
    ci_url: str | None
    commit: str | None
    sent: int  # devices a payload was sent to
    applied: int
    failed: int
    failed_by_code: Mapping[str, int]  # this run's failures per error code
    counts: Mapping[str, int]  # devices per status in the state after the run


class Recorder(Protocol):
    """Durable per-device results during a run (the JSON store's journal)."""

    def append_many(self, items: Iterable[tuple[str, DeviceRecord]], sync: bool = True) -> None:
        """Record all; with `sync`, return only once they survive a power cut. `sync=False`
        must still survive a killed process (used for `pending` records)."""

    def close(self) -> None: ...


class StateStore(Protocol):
    """A place that keeps one state: the JSON file, or a database."""

    @property
    def location(self) -> str:
        """How messages name the store: a path, or a URL without its password."""

    def exists(self) -> bool: ...

    def lock(self, command: str, timeout: float = 0.0) -> AbstractContextManager[object]:
        """Exclusive right to write; raises LockedError naming the holder after `timeout`."""

    def load(self) -> State:
        """The state, with the records of an unfinished (killed) run replayed on top."""

    def recorder(self, state: State) -> Recorder:
        """Where a run records each device's result as it arrives."""

    def save(self, state: State) -> None:
        """Finish: the state becomes `state.devices` with serial + 1; results recorded by
        the recorder are folded in. Only a lock holder saves."""

    def holder(self) -> Mapping[str, Any] | None:
        """Who holds the lock (host, pid, command, started, ci_url), if anyone."""

    def unlock(self, force: bool) -> str:
        """Free a stale lock; returns what was done, for the user."""

    def record_run(self, run: RunRecord) -> None: ...

    def runs(self) -> list[RunRecord]:
        """The run history, oldest first."""

    def replace(self, state: State) -> None:
        """Make the stored state exactly `state`: lineage, serial and devices (`state migrate`,
        `state push`). Only a lock holder replaces."""


@runtime_checkable
class SummaryLoading(Protocol):
    """A store that can load less for `plan` (the SQL stores): every device's summary (status,
    hashes, attempts, last error code, manifest), then the full records of the few it needs."""

    def load_summary(self) -> State: ...

    def full_records(self, summaries: Mapping[str, DeviceRecord]) -> dict[str, DeviceRecord] | None:
        """The full records of these devices, or None if one changed since its summary."""
