"""The state: what each device last acknowledged, kept by a `StateStore`.

`open_store(spec)` turns the `--state` value into a store; the JSON file is the default.
"""

from __future__ import annotations

from rrpcsync.state.jsonfile import JsonFileStore
from rrpcsync.state.store import (
    Recorder,
    RunRecord,
    State,
    StateStore,
    SummaryLoading,
    new_lineage,
    utc_now,
)

__all__ = [
    "JsonFileStore",
    "Recorder",
    "RunRecord",
    "State",
    "StateStore",
    "SummaryLoading",
    "new_lineage",
    "open_store",
    "utc_now",
]


def open_store(spec: str, name: str = "default") -> StateStore:
    """The store named by `--state`: `sqlite:///PATH`, `postgresql://…`, else a JSON file path.

    `name` (`--state-name`) picks one of the states a database holds; a JSON file holds one.
    """
    if spec.startswith("sqlite:"):
        from rrpcsync.state.sqlite import SqliteStore

        return SqliteStore(spec, name)
    if spec.startswith(("postgresql:", "postgres:")):
        from rrpcsync.state.postgres import PostgresStore

        return PostgresStore(spec, name)
    if name != "default":
        from rrpcsync.errors import UsageError

        raise UsageError(
            f"--state-name {name}: a JSON state file holds one state; use another file, or a "
            "sqlite:/// or postgresql:// store"
        )
    return JsonFileStore(spec)
