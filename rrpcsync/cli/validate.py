"""`rrpcsync validate` and `rrpcsync schema`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from rrpcsync import api
from rrpcsync.cli.app import cli, emit, examples, info, out
from rrpcsync.cli.options import format_option, manifest_paths, paths_with_excludes
from rrpcsync.cli.terminal import safe_command
from rrpcsync.errors import Diagnostic, ExitCode, ManifestError
from rrpcsync.manifests import loader
from rrpcsync.planning import render


def report_diagnostics(error: ManifestError, output_format: str) -> None:
    diags = error.diagnostics
    if output_format == "json":
        out(render.diagnostics_json(diags))
    else:
        for diag in diags:
            emit(render.diagnostic_line(diag), err=True)
        if output_format == "github" or os.environ.get("GITHUB_ACTIONS") == "true":
            for diag in diags:
                click.echo(safe_command(render.github_annotation(diag)))
    info(f"{len(diags)} error(s); {error.summary}" if error.summary else f"{len(diags)} error(s)")


@cli.command(
    epilog=examples(
        "rrpcsync validate                      # checks configs/",
        "rrpcsync validate a.yaml fleet/ --format json",
        "rrpcsync validate --format github      # annotations in GitHub Actions",
    )
)
@manifest_paths
@format_option("text", "json", "github")
def validate(paths: tuple[str, ...], exclude_files: tuple[str, ...], output_format: str) -> None:
    """Check manifests against the schema and the rules beyond it; report every error.

    Exit 0 when every file is valid, 1 otherwise.
    """
    try:
        result = api.validate_manifests(paths_with_excludes(paths, exclude_files))
    except ManifestError as error:
        report_diagnostics(error, output_format)
        raise SystemExit(ExitCode.ERROR) from None
    report_warnings(result.warnings, output_format)
    if output_format == "json":
        out("[]")
    info(f"valid: {loader.summary_line(result)}")


def report_warnings(warnings: Sequence[Diagnostic], output_format: str) -> None:
    """Problems that do not make the manifests invalid (an override matching no device)."""
    if output_format == "json":
        return
    for diag in warnings:
        info(render.diagnostic_line(diag, "warning"))
    if output_format == "github" or os.environ.get("GITHUB_ACTIONS") == "true":
        for diag in warnings:
            click.echo(safe_command(render.github_annotation(diag, "warning")))


@cli.command(epilog=examples("rrpcsync schema > rrpcsync.schema.json"))
def schema() -> None:
    """Print the manifest JSON Schema (Draft 2020-12), e.g. for editors."""
    out(loader.schema_text().rstrip("\n"))
