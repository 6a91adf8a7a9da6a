"""Click commands only: parse, call the library, render, exit code."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from rrpcsync import __version__
from rrpcsync.cli.options import (
    DEFAULT_PATHS,
    client_options,
    format_option,
    lock_timeout_option,
    paths_argument,
    plan_output_options,
    prune_option,
    refresh_options,
    resync_after_option,
    rollout_options,
    selection_options,
    state_option,
)
from rrpcsync.errors import ExitCode, ManifestError, RrpcsyncError, UsageError
from rrpcsync.manifests import loader as manifest
from rrpcsync.manifests.loader import LoadResult
from rrpcsync.manifests.policy import declared_policies
from rrpcsync.model import DesiredDevice, Plan, RolloutSpec
from rrpcsync.planning import render
from rrpcsync.planning.planner import Selection, make_plan, plan_document

NEW_STATE = ""  # the lineage of a plan made when the state file did not exist yet
Refresher = Callable[[Sequence[DesiredDevice], Any, Plan], Plan]  # (desired, state, plan)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass(frozen=True, slots=True)
class Settings:
    verbose: int
    quiet: bool
    color: bool


def settings() -> Settings:
    ctx = click.get_current_context()
    found = ctx.find_object(Settings)
    return found if found is not None else Settings(0, False, False)


def use_color(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def out(line: str = "") -> None:
    click.echo(line)


def info(line: str) -> None:
    """Progress and diagnostics go to stderr; `-q` silences them."""
    if not settings().quiet:
        click.echo(line, err=True)


def examples(*lines: str) -> str:
    body = "\n".join(f"  {line}" for line in lines)
    return f"\b\nExamples:\n{body}"


# --------------------------------------------------------------------------- group


@click.group(
    context_settings=CONTEXT,
    epilog=examples(
        "rrpcsync validate configs/",
        "rrpcsync plan configs/ --state rrpcsync.state.json",
        "RRPCSYNC_ACCESS_TOKEN=... rrpcsync apply configs/ --auto-approve",
        "rrpcsync demo",
    ),
)
@click.version_option(__version__, "--version", prog_name="rrpcsync")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour output; auto follows the terminal and NO_COLOR.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, color: str) -> None:
    """Declarative config sync for device fleets on Tencent Cloud IoT Explorer (RRPC).

    Manifests (YAML) declare the payload each device must have; `plan` shows what
    would be sent, `apply` sends it and records each device's reply in the state file.
    """
    ctx.obj = Settings(verbose, quiet and not verbose, use_color(color, sys.stdout))
    # -v: rrpcsync's own debug log (requests with the token as ***); -vv: libraries' too
    root_level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=root_level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("rrpcsync").setLevel(logging.DEBUG if verbose else logging.WARNING)


# --------------------------------------------------------------------------- validate / schema


def load_valid(paths: Sequence[str]) -> LoadResult:
    """Load manifests; any problem raises ManifestError carrying every diagnostic."""
    result = manifest.load_manifests(paths or DEFAULT_PATHS)
    if not result.ok:
        raise ManifestError(result.diagnostics, manifest.summary_line(result))
    return result


def report_diagnostics(error: ManifestError, output_format: str) -> None:
    diags = error.diagnostics
    if output_format == "json":
        out(render.diagnostics_json(diags))
    else:
        for diag in diags:
            click.echo(render.diagnostic_line(diag), err=True)
        if output_format == "github" or os.environ.get("GITHUB_ACTIONS") == "true":
            for diag in diags:
                out(render.github_annotation(diag))
    info(f"{len(diags)} error(s); {error.summary}" if error.summary else f"{len(diags)} error(s)")


@cli.command(
    epilog=examples(
        "rrpcsync validate                      # checks configs/",
        "rrpcsync validate a.yaml fleet/ --format json",
        "rrpcsync validate --format github      # annotations in GitHub Actions",
    )
)
@paths_argument
@format_option("text", "json", "github")
def validate(paths: tuple[str, ...], output_format: str) -> None:
    """Check manifests against the schema and the rules beyond it; report every error.

    Exit 0 when every file is valid, 1 otherwise.
    """
    try:
        result = load_valid(paths)
    except ManifestError as error:
        report_diagnostics(error, output_format)
        raise SystemExit(ExitCode.ERROR) from None
    if output_format == "json":
        out("[]")
    info(f"valid: {manifest.summary_line(result)}")


@cli.command(epilog=examples("rrpcsync schema > rrpcsync.schema.json"))
def schema() -> None:
    """Print the manifest JSON Schema (Draft 2020-12), e.g. for editors."""
    out(manifest.schema_text().rstrip("\n"))


# --------------------------------------------------------------------------- plan


def compute_plan(
    paths: Sequence[str],
    state_path: str,
    selection: Selection,
    prune: bool,
    refresh: Refresher | None = None,
) -> tuple[Any, Plan]:
    """Load the state (while worker processes parse the manifests) and diff the two; `refresh`
    then adds drift (--refresh, --resync-after)."""
    from rrpcsync.state.jsonfile import load_state

    desired, state = manifest.load_manifests_while(
        paths or DEFAULT_PATHS, lambda: load_state(Path(state_path))
    )
    if not desired.ok:
        raise ManifestError(desired.diagnostics, manifest.summary_line(desired))
    plan = make_plan(
        desired.devices,
        state.devices,
        lineage=state.lineage if state.exists else NEW_STATE,
        serial=state.serial,
        prune=prune,
        selection=selection,
        policies=declared_policies(desired.manifests),
    )
    if refresh is not None:
        plan = refresh(desired.devices, state, plan)
    return state, plan


def selection_from(
    targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
) -> Selection:
    return Selection.from_options(targets, excludes, selectors)


def write_plan_outputs(
    plan: Plan, output_format: str, out_path: str | None, md_path: str | None
) -> None:
    from rrpcsync.state.jsonfile import utc_now

    doc = plan_document(plan, created_at=utc_now())
    if out_path:
        write_text_file(Path(out_path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        info(f"saved plan to {out_path}; apply it with `rrpcsync apply {out_path}`")
    markdown = render.plan_markdown(plan)
    if md_path:
        write_text_file(Path(md_path), markdown)
    append_step_summary(markdown)
    if output_format == "json":
        doc_no_payloads = plan_document(plan, created_at=doc["created_at"], include_payloads=False)
        out(json.dumps(doc_no_payloads, indent=2, ensure_ascii=False))
    elif output_format == "markdown":
        out(markdown.rstrip("\n"))
    else:
        for line in render.plan_text(plan, color=settings().color, prune=plan.prune):
            out(line)


def write_text_file(path: Path, text: str) -> None:
    """Plans may hold payloads: private to the user (0600), like the state."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def append_step_summary(markdown: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if os.environ.get("GITHUB_ACTIONS") != "true" or not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    except OSError as exc:
        info(f"warning: cannot append to GITHUB_STEP_SUMMARY: {exc.strerror}")


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
@prune_option
@refresh_options
@client_options
def plan(
    paths: tuple[str, ...],
    state_path: str,
    output_format: str,
    out_path: str | None,
    md_path: str | None,
    detailed_exitcode: bool,
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
    prune: bool,
    **options: Any,
) -> None:
    """Show what apply would send: devices to create, update, retry, drifted, and orphans.

    Reads the state but never writes it (with --refresh too: what the probes saw is only
    shown). Invalid manifests print the validate output, exit 1.
    """
    selection = selection_from(targets, excludes, selectors)
    the_plan = plan_and_show(paths, state_path, selection, prune, options)
    write_plan_outputs(the_plan, output_format, out_path, md_path)
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
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
    **options: Any,
) -> None:
    """Report drift, for alerting: `plan --refresh --detailed-exitcode`; sends no fix.

    Probes the devices whose manifests declare spec.probe and prints the plan; the state is
    not written. Exit 0 in sync, 2 drifted (or other changes to apply), 1 on errors.
    """
    selection = selection_from(targets, excludes, selectors)
    the_plan = plan_and_show(paths, state_path, selection, False, {**options, "refresh": True})
    write_plan_outputs(the_plan, output_format, out_path, md_path)
    if the_plan.actionable:
        raise SystemExit(ExitCode.CHANGES)


def plan_and_show(
    paths: Sequence[str],
    state_path: str,
    selection: Selection,
    prune: bool,
    options: dict[str, Any],
) -> Plan:
    """The plan of `plan` and `drift`; invalid manifests print the validate output, exit 1."""
    try:
        _, the_plan = compute_plan(
            paths, state_path, selection, prune, drift_refresher(options, selection)
        )
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    return the_plan


# --------------------------------------------------------------------------- drift


def drift_refresher(
    options: dict[str, Any], selection: Selection, record: bool = False
) -> Refresher | None:
    """--refresh / --resync-after: probe devices, then plan `drift` changes (docs/drift.md).
    With `record` (apply), what the probes saw goes into the state's records."""
    refresh, resync_after = options.get("refresh", False), options.get("resync_after")
    if not refresh and resync_after is None:
        return None

    def add_drift(desired: Sequence[DesiredDevice], state: Any, the_plan: Plan) -> Plan:
        from rrpcsync.run import drift

        observations = probe_for_drift(desired, state, selection, options) if refresh else {}
        if record:
            drift.record_observations(state.devices, observations)
        return drift.drift_plan(
            the_plan,
            desired,
            state.devices,
            selection=selection,
            observations=observations,
            resync_after=resync_after,
        )

    return add_drift


def probe_for_drift(
    desired: Sequence[DesiredDevice], state: Any, selection: Selection, options: dict[str, Any]
) -> dict[str, Any]:
    """Observations of the devices to probe (none to probe: no request, no token needed)."""
    from rrpcsync.run import drift

    targets = drift.probe_targets(desired, state.devices, selection)
    if not targets:
        return {}
    info(f"Probing {len(targets)} device(s) for drift...")
    report = drift.probe_devices(
        targets, publisher_factory(options), sending_options(options), progress_bar()
    )
    if report.fatal is not None:
        fail(fatal_message(report.fatal.code or "Unknown"), ExitCode.ERROR)
    info(drift.probe_summary(report))
    return report.observations


# --------------------------------------------------------------------------- error boundary


def fail(message: str, code: ExitCode) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(int(code))


def run_guarded(entry: click.Command, args: Sequence[str] | None = None) -> int:
    """The one place that turns exceptions into messages and exit codes."""
    given = args if args is not None else sys.argv[1:]
    verbose = any(
        arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}) for arg in given
    )
    try:
        returned = entry.main(args=args, prog_name="rrpcsync", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return int(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.ERROR)  # usage errors are 1, never 2 (2 means "changes present")
    except RrpcsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # an rrpcsync bug: short report, traceback only with -v
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        if verbose:
            traceback.print_exc()
        else:
            click.echo("run again with -v for a traceback, and please report it", err=True)
        return int(ExitCode.ERROR)
    return returned if isinstance(returned, int) else int(ExitCode.OK)


def main() -> NoReturn:
    sys.exit(run_guarded(cli))


# --------------------------------------------------------------------------- apply


FATAL_HINTS = {
    "InvalidParameterValue.InvalidAccessToken": "log in again and set RRPCSYNC_ACCESS_TOKEN",
}


def fatal_message(code: str) -> str:
    if code in FATAL_HINTS:
        return f"the access token was rejected ({code}); {FATAL_HINTS[code]}"
    if code == "Transport.CertificateError":
        return (
            "the endpoint's TLS certificate could not be verified (Transport.CertificateError); "
            "check RRPCSYNC_ENDPOINT (and SSL_CERT_FILE for a private CA); nothing was sent"
        )
    if code.startswith("HTTP."):
        return f"the endpoint refused the request ({code}); check RRPCSYNC_ENDPOINT"
    return f"the cloud refused the request ({code}); check the account's rights on this product"


def is_saved_plan(paths: Sequence[str]) -> bool:
    """Manifests are YAML: one `.json` argument is a saved plan (`plan --out`)."""
    return len(paths) == 1 and paths[0].endswith(".json")


def load_saved_plan(path: str, state: Any) -> tuple[Plan, list[str]]:
    from rrpcsync.errors import PlanFileError
    from rrpcsync.planning.planner import plan_from_document
    from rrpcsync.run.executor import stale_changes

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanFileError(f"{path}: cannot read saved plan: {exc}") from None
    saved = plan_from_document(doc, path, os.environ)
    if saved.lineage == NEW_STATE and state.exists:
        raise PlanFileError(
            f"{path}: the plan was made before {state.location} existed, and another run has "
            "written it since; make a new plan"
        )
    if saved.lineage not in (NEW_STATE, state.lineage):
        raise PlanFileError(
            f"{path}: the plan was made for state lineage {saved.lineage}, but "
            f"{state.location} has lineage {state.lineage}; make a new plan"
        )
    return saved, stale_changes(saved, state)


def confirm_or_refuse(auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to apply without confirmation: stdin is not a terminal; "
            "review the plan and pass --auto-approve"
        )
    if not click.confirm("Apply these changes?", default=False, err=True):
        raise UsageError("apply cancelled; nothing was sent")


def sending_options(options: dict[str, Any]) -> Any:
    """Concurrency, pacing and retries shared by apply and the drift probes."""
    from rrpcsync.run.executor import ApplyOptions

    return ApplyOptions(
        parallelism=options["parallelism"],
        rate=options["rate"],
        retries=options["retries"],
        backoff=options["retry_backoff"],
    )


def progress_bar() -> Any:
    from rrpcsync.run.progress import Progress

    return Progress(sys.stderr, live=sys.stderr.isatty() and not settings().quiet)


def publisher_factory(options: dict[str, Any]) -> Callable[[], Any]:
    from rrpcsync.cloud.client import DEFAULT_ENDPOINT, RrpcClient, check_endpoint, resolve_token

    token = resolve_token(os.environ, options["access_token_file"])
    endpoint = options["endpoint"] or DEFAULT_ENDPOINT
    for warning in check_endpoint(endpoint, options["allow_insecure_endpoint"]):
        info(f"warning: {warning}")

    def make() -> RrpcClient:
        return RrpcClient(
            endpoint,
            token,
            timeout=options["timeout"],
            max_connections=options["parallelism"],
        )

    return make


def apply_exit_code(report: Any, stale: Sequence[str]) -> ExitCode:
    if report.fatal is not None:
        fail(fatal_message(report.fatal.code or "Unknown"), ExitCode.ERROR)
    if report.interrupted:
        return ExitCode.INTERRUPTED
    if stale:
        info(f"error: {len(stale)} change(s) of the saved plan were stale and not applied")
        return ExitCode.ERROR
    if report.aborted:
        click.echo(f"error: {report.aborted}", err=True)
    return ExitCode.PARTIAL if report.failed or report.blocked else ExitCode.OK


def report_document(report: Any, stale: Sequence[str]) -> dict[str, Any]:
    return {
        "applied": sorted(report.applied),
        "failed": {
            key: {"code": err.code, "message": err.message, "at": err.at}
            for key, err in sorted(report.failed.items())
        },
        "failed_by_code": dict(report.failures_by_code),
        "not_sent": sorted(report.not_sent),
        "unknown": sorted(report.unknown),
        "stale": sorted(stale),
        "pruned": sorted(report.pruned),
        "requests": report.requests,
        "elapsed_seconds": round(report.elapsed, 3),
        "interrupted": report.interrupted,
        "blocked": sorted(report.blocked),
        "aborted": report.aborted,
    }


@cli.command(
    epilog=examples(
        "rrpcsync apply configs/ --auto-approve",
        "rrpcsync plan --out plan.json && rrpcsync apply plan.json --auto-approve",
        "rrpcsync apply --target 'ASBHKN/dev-00*' --parallelism 50 --rate 20",
        "rrpcsync apply --prune --auto-approve --format json > report.json",
        "rrpcsync apply --canary 5 --waves 10%,50% --max-failure-rate 2 --auto-approve",
        "rrpcsync apply --refresh --auto-approve   # probe for drift and correct it",
    )
)
@paths_argument
@state_option
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@client_options
@rollout_options
@format_option("text", "json")
@lock_timeout_option
@selection_options
@prune_option
@refresh_options
def apply(paths: tuple[str, ...], state_path: str, auto_approve: bool, **options: Any) -> None:
    """Send the plan's changes (create, update, retry, drift) and record every reply in the state.

    PATHS are manifest files/folders, or one saved plan (`plan --out`). Exit 0 all applied,
    3 some devices failed or were blocked, or the rollout was aborted (docs/rollouts.md),
    1 fatal error or stale saved plan, 4 locked, 130 interrupted.
    """
    from rrpcsync.state.jsonfile import StateLock, save_state

    json_out = options["output_format"] == "json"
    with StateLock(Path(state_path), "apply", timeout=options["lock_timeout"]):
        state, the_plan, stale = plan_for_apply(paths, state_path, options)
        show_plan(the_plan, to_stderr=json_out)
        if not the_plan.actionable and not stale:
            if state.replayed or the_plan.summary.probed > the_plan.summary.unreachable:
                save_state(state)  # fold a killed run's journal in; keep what probes saw
            if json_out:
                out(json.dumps(NO_CHANGES_REPORT, indent=2))
            return
        confirm_or_refuse(auto_approve)
        report = execute(the_plan, state, stale, options)
        save_state(state)
    render_report(report, stale, json_out)
    raise SystemExit(apply_exit_code(report, stale))


NO_CHANGES_REPORT: dict[str, Any] = {
    "applied": [],
    "failed": {},
    "failed_by_code": {},
    "not_sent": [],
    "unknown": [],
    "stale": [],
    "pruned": [],
    "requests": 0,
    "elapsed_seconds": 0.0,
    "interrupted": False,
    "blocked": [],
    "aborted": None,
}


def execute(the_plan: Plan, state: Any, stale: Sequence[str], options: dict[str, Any]) -> Any:
    """Prune, then send; imported late so that a no-op apply never loads the HTTP stack."""
    from rrpcsync.run.executor import ApplyReport
    from rrpcsync.run.rollout import apply_rollout

    make_publisher = publisher_factory(options) if the_plan.summary.to_send else None
    pruned = prune_orphans(the_plan, state)
    report = ApplyReport()
    if make_publisher is not None:
        flags = rollout_flags(options)
        report = apply_rollout(
            the_plan,
            state,
            make_publisher,
            sending_options(options),
            flags,
            progress_bar(),
            stale,
            info,
        )
    report.pruned = pruned
    report.stale = list(stale)
    return report


def rollout_flags(options: dict[str, Any]) -> RolloutSpec:
    """The rollout flags of apply; each one given overrides the manifests' `spec.rollout`."""
    return RolloutSpec(
        canary=options["canary"],
        waves=options["waves"],
        max_failures=options["max_failures"],
        max_failure_rate=options["max_failure_rate"],
        min_sample=options["min_sample"],
    )


def plan_for_apply(
    paths: Sequence[str], state_path: str, options: dict[str, Any]
) -> tuple[Any, Plan, list[str]]:
    if is_saved_plan(paths):
        from rrpcsync.state.jsonfile import load_state

        if options["refresh"] or options["resync_after"] is not None:
            raise UsageError("--refresh and --resync-after plan from manifests, not a saved plan")
        state = load_state(Path(state_path))
        return (state, *load_saved_plan(paths[0], state))
    selection = selection_from(options["targets"], options["excludes"], options["selectors"])
    refresh = drift_refresher(options, selection, record=True)
    try:
        state, the_plan = compute_plan(paths, state_path, selection, options["prune"], refresh)
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    return state, the_plan, []


def show_plan(the_plan: Plan, to_stderr: bool) -> None:
    color = settings().color and not to_stderr
    for line in render.plan_text(the_plan, color=color, prune=the_plan.prune):
        click.echo(line, err=to_stderr)


def prune_orphans(the_plan: Plan, state: Any) -> list[str]:
    if not the_plan.prune:
        return []
    orphans = [c.key for c in the_plan.changes if c.action.value == "orphan"]
    for key in orphans:
        state.devices.pop(key, None)
    return orphans


def render_report(report: Any, stale: Sequence[str], json_out: bool) -> None:
    if json_out:
        out(json.dumps(report_document(report, stale), indent=2, ensure_ascii=False))
        return
    lines = render.apply_summary(
        len(report.applied),
        dict(report.failures_by_code),
        len(report.not_sent) + len(report.unknown),
        len(stale),
        len(report.pruned),
        report.elapsed,
        report.requests,
    )
    if report.blocked:
        lines.append(f"  blocked {len(report.blocked):>5}  (a dependency had failures)")
    for line in lines:
        out(line)
    append_step_summary("\n".join(["### rrpcsync apply", "", *lines, ""]))


# --------------------------------------------------------------------------- state


@cli.group(
    epilog=examples(
        "rrpcsync state list",
        "rrpcsync state show ASBHKN/dev-001",
        "rrpcsync state rm ASBHKN/dev-001   # the next apply re-sends it",
        "rrpcsync state unlock",
    )
)
def state() -> None:
    """Inspect and edit the state file."""


@state.command(
    "list", epilog=examples("rrpcsync state list", "rrpcsync state list --format json | jq .")
)
@state_option
@format_option("text", "json")
def state_list(state_path: str, output_format: str) -> None:
    """List recorded devices with their status, and counts per status."""
    from collections import Counter

    from rrpcsync.state.jsonfile import load_state

    loaded = load_state(Path(state_path))
    counts = Counter(record.status.value for record in loaded.devices.values())
    if output_format == "json":
        devices = {
            key: {
                "status": rec.status.value,
                "manifest": rec.manifest,
                "payload_sha256": rec.payload_sha256,
                "applied_at": rec.applied_at,
                "last_error": rec.last_error.code if rec.last_error else None,
            }
            for key, rec in sorted(loaded.devices.items())
        }
        doc = {"lineage": loaded.lineage, "serial": loaded.serial, "counts": dict(counts)}
        out(json.dumps({**doc, "devices": devices}, indent=2, ensure_ascii=False))
        return
    for key, rec in sorted(loaded.devices.items()):
        error = f"  {rec.last_error.code}" if rec.last_error else ""
        out(f"{key}  {rec.status.value}  {rec.applied_at or '-'}{error}")
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no devices"
    info(f"{len(loaded.devices)} device(s): {parts} (serial {loaded.serial})")


@state.command("show", epilog=examples("rrpcsync state show ASBHKN/dev-001"))
@click.argument("key")
@state_option
def state_show(key: str, state_path: str) -> None:
    """Show one device's record, its reply decoded."""
    from rrpcsync.state.jsonfile import load_state, record_to_dict

    loaded = load_state(Path(state_path))
    record = loaded.devices.get(key)
    if record is None:
        raise UsageError(f"{key} is not in {state_path}")
    out(json.dumps({key: record_to_dict(record)}, indent=2, ensure_ascii=False, sort_keys=True))


@state.command("rm", epilog=examples("rrpcsync state rm ASBHKN/dev-001 ASBHKN/dev-002"))
@click.argument("keys", nargs=-1, required=True)
@state_option
@lock_timeout_option
def state_rm(keys: tuple[str, ...], state_path: str, lock_timeout: float) -> None:
    """Forget devices: nothing is sent; the next apply treats them as new."""
    from rrpcsync.state.jsonfile import StateLock, load_state, save_state

    with StateLock(Path(state_path), "state rm", timeout=lock_timeout):
        loaded = load_state(Path(state_path))
        missing = [key for key in keys if key not in loaded.devices]
        if missing:
            raise UsageError(f"not in {state_path}: {', '.join(missing)}; nothing was removed")
        for key in keys:
            del loaded.devices[key]
        save_state(loaded)
    info(f"removed {len(keys)} device(s) from {state_path}")


@state.command("unlock", epilog=examples("rrpcsync state unlock", "rrpcsync state unlock --force"))
@state_option
@click.option("--force", is_flag=True, help="Remove the lock even if its holder looks alive.")
def state_unlock(state_path: str, force: bool) -> None:
    """Remove a stale lock left by a run that died."""
    from rrpcsync.state.jsonfile import unlock

    info(unlock(Path(state_path), force))


# --------------------------------------------------------------------------- emulator / demo


@cli.command(
    epilog=examples(
        "rrpcsync emulator --port 8080",
        "rrpcsync emulator --fleet examples/emulator/fleet.yaml",
        "RRPCSYNC_ENDPOINT=http://127.0.0.1:8080/ rrpcsync apply --auto-approve",
    )
)
@click.option(
    "--fleet", type=click.Path(exists=True, dir_okay=False), help="Fleet file (YAML) of devices."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
def emulator(fleet: str | None, host: str, port: int) -> None:
    """Run the local stand-in for the cloud API (AppPublishRRPCMessage) until Ctrl-C.

    Without --fleet every device exists and answers {"code":0}; the token is emulator-token.
    """
    from rrpcsync.emulator import EmulatorError, load_fleet, main_blocking

    try:
        loaded = load_fleet(fleet) if fleet else load_fleet({"auto_devices": True})
        main_blocking(loaded, host, port, on_ready=lambda url: info(f"emulator listening on {url}"))
    except EmulatorError as exc:  # bad fleet file, busy port, non-loopback host
        raise UsageError(str(exc)) from None


@cli.command(epilog=examples("rrpcsync demo", "rrpcsync demo --keep"))
@click.option("--keep", is_flag=True, help="Keep the temporary folder to look around.")
def demo(keep: bool) -> None:
    """Validate, plan and apply the example fleet against the emulator, offline.

    Edits one manifest and shows that the next apply sends exactly one message.
    """
    from rrpcsync.cli.demo import run_demo

    def run(args: Sequence[str]) -> int:
        return run_guarded(cli, list(args))

    code = run_demo(run, lambda line: click.echo(line), keep=keep)
    raise SystemExit(code)
