"""The state: what each device last acknowledged, kept by a `StateStore`.

`open_store(spec)` turns the `--state` value into a store; the JSON file is the default.
"""

from __future__ import annotations

from rrpcsync.state.jsonfile import JsonFileStore
from rrpcsync.state.store import Recorder, RunRecord, State, StateStore, new_lineage, utc_now

__all__ = [
    "JsonFileStore",
    "Recorder",
    "RunRecord",
    "State",
    "StateStore",
    "new_lineage",
    "open_store",
    "utc_now",
]


def open_store(spec: str) -> StateStore:
    """The store named by `--state`: a path is the JSON file."""
    return JsonFileStore(spec)
