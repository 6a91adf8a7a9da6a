"""`rrpcsync plan` and `rrpcsync drift`: what apply would send; nothing is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from rrpcsync import api
from rrpcsync.cli.app import cli, examples, info
from rrpcsync.cli.inputs import (
    connection_from,
    drift_from,
    progress_bar,
    selection_from,
    sending_options,
)
from rrpcsync.cli.options import (
    client_options,
    format_option,
    only_failed_option,
    paths_argument,
    plan_output_options,
    prune_option,
    refresh_options,
    resync_after_option,
    selection_options,
    state_option,
)
from rrpcsync.cli.output import write_plan_outputs
from rrpcsync.cli.validate import report_diagnostics
from rrpcsync.errors import ExitCode, ManifestError
from rrpcsync.model import Plan
from rrpcsync.planning.selection import Selection


@cli.command(
    epilog=examples(
        "rrpcsync plan",
        "rrpcsync plan configs/ --state prod.state.json --out plan.json",
        "rrpcsync plan --format markdown --out-markdown comment.md",
        "rrpcsync plan --target 'ASBHKN/dev-*' --selector site=shanghai",
        "rrpcsync plan --detailed-exitcode   # exit 2 when there are changes",
        "rrpcsync plan --refresh             # probe devices for drift first",
    )
)
@paths_argument
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
    **options: Any,
) -> None:
    """Show what apply would send: devices to create, update, retry, drifted, and orphans.

    Reads the state but never writes it (with --refresh too: what the probes saw is only
    shown). Invalid manifests print the validate output, exit 1.
    """
    selection = selection_from(targets, excludes, selectors)
    the_plan = plan_and_show(
        paths, state_path, selection, prune, {**options, "only_failed": only_failed}
    )
    write_plan_outputs(the_plan, output_format, out_path, md_path, detail)
    if detailed_exitcode and the_plan.actionable:
        raise SystemExit(ExitCode.CHANGES)


@cli.command(
    epilog=examples(
        "rrpcsync drift                      # exit 2 when devices drifted",
        "rrpcsync drift configs/ --resync-after 7d --out-markdown drift.md",
    )
)
@paths_argument
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
    selection = selection_from(targets, excludes, selectors)
    the_plan = plan_and_show(paths, state_path, selection, False, {**options, "refresh": True})
    write_plan_outputs(the_plan, output_format, out_path, md_path, detail)
    if drift_alert(the_plan):
        raise SystemExit(ExitCode.CHANGES)


def drift_alert(the_plan: Plan) -> bool:
    """`drift` exits 2 for drift and for desired payloads not yet recorded (create, update);
    a retry alone (the payload was sent, the device has not acknowledged it) stays green."""
    summary = the_plan.summary
    return summary.drift + summary.create + summary.update > 0


def plan_and_show(
    paths: Sequence[str],
    state_path: str,
    selection: Selection,
    prune: bool,
    options: dict[str, Any],
) -> Plan:
    """The plan of `plan` and `drift`; invalid manifests print the validate output, exit 1."""
    try:
        planned = api.plan_manifests(
            paths,
            api.open_store(state_path),
            selection=selection,
            prune=prune,
            drift=drift_from(options),
            connection=connection_from(options),
            sending=sending_options(options),
            progress=progress_bar,
            say=info,
            only_failed=options.get("only_failed", False),
        )
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    return planned.plan
