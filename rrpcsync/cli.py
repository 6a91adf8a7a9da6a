"""Click commands only: parse, call the library, render, exit code."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from rrpcsync import __version__, manifest, render
from rrpcsync.errors import ExitCode, ManifestError, RrpcsyncError, UsageError
from rrpcsync.manifest import LoadResult
from rrpcsync.model import Plan
from rrpcsync.options import (
    DEFAULT_PATHS,
    format_option,
    paths_argument,
    prune_option,
    selection_options,
    state_option,
)
from rrpcsync.plan import Selection, make_plan, plan_document

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
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


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
    state: Any,
    selection: Selection,
    prune: bool,
) -> tuple[LoadResult, Plan]:
    desired = load_valid(paths)
    plan = make_plan(
        desired.devices,
        state.devices,
        lineage=state.lineage,
        serial=state.serial,
        prune=prune,
        selection=selection,
    )
    return desired, plan


def selection_from(
    targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
) -> Selection:
    return Selection.from_options(targets, excludes, selectors)


def write_plan_outputs(
    plan: Plan, output_format: str, out_path: str | None, md_path: str | None
) -> None:
    from rrpcsync.state import utc_now

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
    try:
        path.write_text(text, encoding="utf-8")
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
    )
)
@paths_argument
@state_option
@format_option("text", "json", "markdown")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Save the plan for `apply PLAN.json`.",
)
@click.option(
    "--out-markdown",
    "md_path",
    type=click.Path(dir_okay=False),
    help="Also write the markdown (PR comment) form to this file.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 2 when there are, 1 on errors.",
)
@selection_options
@prune_option
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
) -> None:
    """Show what apply would send: devices to create, update, retry, and orphans.

    Reads the state but never writes it. Invalid manifests print the validate output, exit 1.
    """
    from rrpcsync.state import load_state

    selection = selection_from(targets, excludes, selectors)
    state = load_state(Path(state_path))
    try:
        _, the_plan = compute_plan(paths, state, selection, prune)
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    write_plan_outputs(the_plan, output_format, out_path, md_path)
    if detailed_exitcode and the_plan.summary.has_changes:
        raise SystemExit(ExitCode.CHANGES)


# --------------------------------------------------------------------------- error boundary


def fail(message: str, code: ExitCode) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(int(code))


def run_guarded(entry: click.Command, args: Sequence[str] | None = None) -> int:
    """The one place that turns exceptions into messages and exit codes."""
    verbose = "-v" in (args if args is not None else sys.argv[1:]) or "--verbose" in sys.argv
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
