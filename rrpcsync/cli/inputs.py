"""Click option values turned into the library API's inputs, shared by several commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from rrpcsync import api
from rrpcsync.cli.app import settings
from rrpcsync.cli.options import AUTO, STATE_NAME_KEY
from rrpcsync.model import RolloutSpec
from rrpcsync.planning.selection import Selection
from rrpcsync.state import StateStore

if TYPE_CHECKING:
    from rrpcsync.run.executor import ApplyOptions, ProgressSink


def store_from(state_path: str) -> StateStore:
    """The store of `--state` and `--state-name` (the current command's)."""
    ctx = click.get_current_context(silent=True)
    name = ctx.meta.get(STATE_NAME_KEY, "default") if ctx is not None else "default"
    return api.open_store(state_path, name)


def selection_from(
    targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
) -> Selection:
    return Selection.from_options(targets, excludes, selectors)


def connection_from(options: dict[str, Any]) -> api.Connection:
    return api.Connection(
        endpoint=options["endpoint"],
        access_token_file=options.get("access_token_file"),
        allow_insecure_endpoint=options["allow_insecure_endpoint"],
        timeout=options["timeout"],
        credentials_file=options["credentials_file"],
        site=options["site"],
        login_endpoint=options["login_endpoint"],
    )


def sending_options(options: dict[str, Any]) -> ApplyOptions:
    """Concurrency, pacing and retries shared by apply and the drift probes."""
    from rrpcsync.run.executor import ApplyOptions
    from rrpcsync.run.pacing import AUTO_START

    auto = options["rate"] == AUTO
    return ApplyOptions(
        parallelism=options["parallelism"],
        rate=AUTO_START if auto else options["rate"],
        adaptive_rate=auto,
        max_rate=options["max_rate"],
        retries=options["retries"],
        backoff=options["retry_backoff"],
    )


def drift_from(options: dict[str, Any]) -> api.DriftCheck:
    return api.DriftCheck(options.get("refresh", False), options.get("resync_after"))


def windows_from(options: dict[str, Any]) -> api.Windows:
    return api.Windows(ignore=options.get("ignore_windows", False))


def rollout_flags(options: dict[str, Any]) -> RolloutSpec:
    """The rollout flags of apply; each one given overrides the manifests' `spec.rollout`."""
    return RolloutSpec(
        canary=options["canary"],
        waves=options["waves"],
        max_failures=options["max_failures"],
        max_failure_rate=options["max_failure_rate"],
        min_sample=options["min_sample"],
    )


def progress_bar() -> ProgressSink:
    """A live line on a terminal, a line every 10 s elsewhere; nothing with `-q`."""
    from rrpcsync.run.executor import NoProgress
    from rrpcsync.run.progress import Progress

    if settings().quiet:
        return NoProgress()
    return Progress(sys.stderr, live=sys.stderr.isatty())
