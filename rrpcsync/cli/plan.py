"""`rrpcsync plan` and `rrpcsync drift`: what apply would send; nothing is written."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import click

from rrpcsync import api
from rrpcsync.cli.app import cli, emit, examples, info
from rrpcsync.cli.inputs import (
    connection_from,
    drift_from,
    progress_bar,
    selection_from,
    sending_options,
    store_from,
    windows_from,
)
from rrpcsync.cli.options import (
    client_options,
    explain_option,
    format_option,
    ignore_windows_option,
    manifest_paths,
    only_failed_option,
    paths_with_excludes,
    plan_output_options,
    prune_option,
    refresh_options,
    resync_after_option,
    selection_options,
    state_option,
)
from rrpcsync.cli.output import refuse_clobbering, write_plan_outputs
from rrpcsync.cli.validate import report_diagnostics, report_warnings
from rrpcsync.errors import ExitCode, ManifestError
from rrpcsync.model import Plan
from rrpcsync.planning import render
from rrpcsync.planning.deferral import schedule_text
from rrpcsync.planning.selection import Selection


@cli.command(
    epilog=examples(
        "rrpcsync plan",
        "rrpcsync plan configs/ --state prod.state.json --out plan.json",
        "rrpcsync plan --format markdown --out-markdown comment.md",
        "rrpcsync plan --target 'ASBHKN/dev-*' --selector site=shanghai",
        "rrpcsync plan --detailed-exitcode   # exit 2 when there are changes",
        "rrpcsync plan --refresh             # probe devices for drift first",
        "rrpcsync plan --explain ASBHKN/dev-002   # which layer set each payload value",
    )
)
@manifest_paths
@state_option
@format_option("text", "json", "markdown")
@plan_output_options
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 2 when there are, 1 on errors.",
)
@selection_options
@only_failed_option
@prune_option
@ignore_windows_option
@explain_option
@refresh_options
@client_options
def plan(
    paths: tuple[str, ...],
    state_path: str,
    output_format: str,
    out_path: str | None,
    md_path: str | None,
    detail: str,
    detailed_exitcode: bool,
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
    only_failed: bool,
    prune: bool,
    explain_key: str | None,
    **options: Any,
) -> None:
    """Show what apply would send: devices to create, update, retry, drifted, and orphans.

    Reads the state but never writes it (with --refresh too: what the probes saw is only
    shown). Changes outside their manifest's maintenance windows show as deferred. Invalid
    manifests print the validate output, exit 1. --explain KEY prints one device's layers.
    """
    refuse_clobbering(store_from(state_path), plan_outputs(out_path, md_path))
    selection = selection_from(targets, excludes, selectors)
    planned = plan_and_show(
        paths, state_path, selection, prune, {**options, "only_failed": only_failed}
    )
    if explain_key is not None:
        show_explanation(planned, explain_key)
        return
    the_plan = planned.plan
    write_plan_outputs(the_plan, output_format, out_path, md_path, detail)
    if detailed_exitcode and the_plan.pending:
        raise SystemExit(ExitCode.CHANGES)


def show_explanation(planned: api.Planned, key: str) -> None:
    explained = api.explain_device(planned, key)
    change = next((c for c in planned.plan.changes if c.key == key), None)
    policy = planned.plan.policies.get(explained.device.manifest)
    now = datetime.now(timezone.utc)
    schedule = schedule_text(policy.windows if policy else (), now)
    for line in render.explanation_lines(explained, change, schedule):
        emit(line)


@cli.command(
    epilog=examples(
        "rrpcsync drift                      # exit 2 when devices drifted",
        "rrpcsync drift configs/ --resync-after 7d --out-markdown drift.md",
    )
)
@manifest_paths
@state_option
@format_option("text", "json", "markdown")
@plan_output_options
@selection_options
@resync_after_option
@client_options
def drift(
    paths: tuple[str, ...],
    state_path: str,
    output_format: str,
    out_path: str | None,
    md_path: str | None,
    detail: str,
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
    **options: Any,
) -> None:
    """Report drift, for alerting: `plan --refresh --detailed-exitcode`; sends no fix.

    Probes the devices whose manifests declare spec.probe and prints the plan; the state is
    not written. Exit 2 when devices drifted or their desired payload differs from the
    recorded one (create, update); devices only waiting for a retry are listed but exit 0.
    Exit 1 on errors.
    """
    refuse_clobbering(store_from(state_path), plan_outputs(out_path, md_path))
    selection = selection_from(targets, excludes, selectors)
    planned = plan_and_show(paths, state_path, selection, False, {**options, "refresh": True})
    write_plan_outputs(planned.plan, output_format, out_path, md_path, detail)
    if drift_alert(planned.plan):
        raise SystemExit(ExitCode.CHANGES)


def drift_alert(the_plan: Plan) -> bool:
    """`drift` exits 2 for drift and for desired payloads not yet recorded (create, update);
    a retry alone (the payload was sent, the device has not acknowledged it) stays green."""
    summary = the_plan.summary
    return summary.drift + summary.create + summary.update > 0


def plan_outputs(out_path: str | None, md_path: str | None) -> list[tuple[str, str | None]]:
    return [("--out", out_path), ("--out-markdown", md_path)]


def plan_and_show(
    paths: Sequence[str],
    state_path: str,
    selection: Selection,
    prune: bool,
    options: dict[str, Any],
) -> api.Planned:
    """The plan of `plan` and `drift`; invalid manifests print the validate output, exit 1."""
    try:
        planned = api.plan_manifests(
            paths_with_excludes(paths, options.get("exclude_files", ())),
            store_from(state_path),
            selection=selection,
            prune=prune,
            drift=drift_from(options),
            connection=connection_from(options),
            sending=sending_options(options),
            progress=progress_bar,
            say=info,
            only_failed=options.get("only_failed", False),
            windows=windows_from(options),
            read_only=True,
        )
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    if planned.manifests is not None:
        report_warnings(planned.manifests.warnings, "text")
    return planned
