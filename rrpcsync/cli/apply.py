"""`rrpcsync apply`: show the plan, confirm, send, record; the summary and the exit code."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from rrpcsync import api
from rrpcsync.cli.app import cli, emit, examples, info, out, settings
from rrpcsync.cli.boundary import fail
from rrpcsync.cli.inputs import (
    connection_from,
    drift_from,
    progress_bar,
    rollout_flags,
    selection_from,
    sending_options,
    store_from,
    windows_from,
)
from rrpcsync.cli.options import (
    client_options,
    detail_option,
    format_option,
    ignore_windows_option,
    lock_timeout_option,
    manifest_paths,
    max_sends_option,
    only_failed_option,
    paths_with_excludes,
    prune_option,
    refresh_options,
    rollout_options,
    selection_options,
    state_option,
)
from rrpcsync.cli.summary import NO_CHANGES_REPORT, deferred_note, render_report
from rrpcsync.cli.validate import report_diagnostics
from rrpcsync.errors import ExitCode, ManifestError, UsageError
from rrpcsync.model import Plan, RolloutSpec
from rrpcsync.planning import render
from rrpcsync.planning.render import NO_FLAGS

if TYPE_CHECKING:
    from rrpcsync.run.executor import ApplyReport


@cli.command(
    epilog=examples(
        "rrpcsync apply configs/ --auto-approve",
        "rrpcsync plan --out plan.json && rrpcsync apply plan.json --auto-approve",
        "rrpcsync apply --target 'ASBHKN/dev-00*' --parallelism 50 --rate 20",
        "rrpcsync apply --prune --auto-approve --format json > report.json",
        "rrpcsync apply --canary 5 --waves 10%,50% --max-failure-rate 2 --auto-approve",
        "rrpcsync apply --refresh --auto-approve   # probe for drift and correct it",
        "rrpcsync apply --only-failed --auto-approve   # retry only what failed last time",
        "rrpcsync apply --ignore-windows --auto-approve   # emergency: outside the windows too",
    )
)
@manifest_paths
@state_option
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@max_sends_option
@client_options
@rollout_options
@format_option("text", "json")
@detail_option
@lock_timeout_option
@selection_options
@only_failed_option
@prune_option
@ignore_windows_option
@refresh_options
def apply(paths: tuple[str, ...], state_path: str, auto_approve: bool, **options: Any) -> None:
    """Send the plan's changes (create, update, retry, drift) and record every reply in the state.

    PATHS are manifest files/folders, or one saved plan (`plan --out`), applied exactly as
    saved: --target/--exclude/--selector/--only-failed/--prune/--refresh are refused.
    Changes outside their manifest's maintenance windows (spec.windows) are deferred, not
    sent. Exit 0 all applied (or deferred), 3 some devices failed, were blocked or claimed by
    another run (sharded apply), or the rollout was aborted (docs/rollouts.md), 1 fatal error,
    unreachable endpoint, stale saved plan or above --max-sends, 4 locked, 130 interrupted.
    """
    json_out = options["output_format"] == "json"
    rollout = rollout_flags(options)
    try:
        applied = api.apply_manifests(
            paths_with_excludes(paths, options["exclude_files"]),
            store_from(state_path),
            selection=selection_from(options["targets"], options["excludes"], options["selectors"]),
            prune=options["prune"],
            drift=drift_from(options),
            connection=connection_from(options),
            sending=sending_options(options),
            rollout=rollout,
            max_sends=options["max_sends"],
            lock_timeout=options["lock_timeout"],
            show=lambda the_plan: show_plan(
                the_plan, to_stderr=json_out, detail=options["detail"], flags=rollout
            ),
            confirm=lambda _plan: confirm_or_refuse(auto_approve),
            progress=progress_bar,
            say=info,
            only_failed=options["only_failed"],
            windows=windows_from(options),
        )
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    if applied.report is None:
        deferred = sorted(c.key for c in applied.planned.plan.changes if c.deferred)
        if json_out:
            out(json.dumps({**NO_CHANGES_REPORT, "deferred": deferred}, indent=2))
        elif deferred:
            out(deferred_note(applied.planned.plan))
        return
    render_report(applied.report, json_out, applied.fatal)
    raise SystemExit(apply_exit_code(applied.report, applied.fatal))


def show_plan(
    the_plan: Plan, to_stderr: bool, detail: str = "summary", flags: RolloutSpec = NO_FLAGS
) -> None:
    color = settings().color and not to_stderr
    lines = render.plan_text(
        the_plan, color=color, prune=the_plan.prune, grouped=detail != "full", rollout=flags
    )
    for line in lines:
        emit(line, err=to_stderr, color=True if color else None)


def confirm_or_refuse(auto_approve: bool, what: str = "apply these changes") -> None:
    if auto_approve:
        return
    verb = what.split()[0]
    if not sys.stdin.isatty():
        raise UsageError(
            f"refusing to {verb} without confirmation: stdin is not a terminal; "
            "review the plan and pass --auto-approve"
        )
    if not click.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        raise UsageError(f"{verb} cancelled; nothing was sent")


def apply_exit_code(report: ApplyReport, fatal: str | None) -> ExitCode:
    if report.fatal is not None:
        fatal_report = report.fatal
        fallback = api.fatal_message(fatal_report.code or "Unknown", fatal_report.message)
        fail(fatal or fallback, ExitCode.ERROR)
    if report.interrupted:
        info("interrupted: the replies received are recorded; run apply again to go on")
        return ExitCode.INTERRUPTED
    if report.aborted:
        emit(f"error: {report.aborted}", err=True)
    return ExitCode.PARTIAL if report.failed or report.blocked or report.claimed else ExitCode.OK
