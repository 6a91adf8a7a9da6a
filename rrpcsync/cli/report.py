"""`rrpcsync report`: the fleet against its manifests, as one HTML page, text, JSON or
markdown (docs/report.md). Reads the manifests and the state; writes only the page."""

from __future__ import annotations

import json
from pathlib import Path

from rrpcsync import api
from rrpcsync.cli.app import cli, examples, info, out
from rrpcsync.cli.inputs import store_from
from rrpcsync.cli.options import format_option, paths_argument, report_options, state_option
from rrpcsync.cli.output import append_step_summary, refuse_clobbering, write_text_file
from rrpcsync.cli.validate import report_diagnostics
from rrpcsync.errors import ExitCode, ManifestError
from rrpcsync.report.html import render_html
from rrpcsync.report.model import GroupBy, Report, report_document
from rrpcsync.report.text import report_markdown, report_text


@cli.command(
    epilog=examples(
        "rrpcsync report --html report.html",
        "rrpcsync report configs/ --state prod.state.json --group-by label:site --html r.html",
        "rrpcsync report --format json | jq .totals",
    )
)
@paths_argument
@state_option
@format_option("text", "json", "markdown")
@report_options
def report(
    paths: tuple[str, ...],
    state_path: str,
    output_format: str,
    html_path: str | None,
    group_by: tuple[GroupBy, ...],
) -> None:
    """How much of the fleet matches its manifests, what fails and why, how the runs went.

    Compliance per manifest, product or label value; failures by error code; the run
    history. Prints a summary (--format) and, with --html, writes one self-contained page.
    Reads the state but never writes it. Invalid manifests print the validate output, exit 1.
    """
    store = store_from(state_path)
    refuse_clobbering(store, [("--html", html_path)])
    try:
        fleet = api.fleet_report(paths, store, group_by=group_by or None)
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    if html_path:
        write_page(Path(html_path), fleet, paths)
    markdown = report_markdown(fleet)
    append_step_summary(markdown)
    if output_format == "json":
        out(json.dumps(report_document(fleet), indent=2, ensure_ascii=False))
    elif output_format == "markdown":
        out(markdown.rstrip("\n"))
    else:
        for line in report_text(fleet):
            out(line)


def write_page(path: Path, fleet: Report, paths: tuple[str, ...]) -> None:
    page = render_html(fleet, sources=paths or api.DEFAULT_PATHS)
    write_text_file(path, page)
    size = len(page.encode("utf-8"))
    info(f"wrote {path} ({size / 1_000_000:.1f} MB)" if size >= 100_000 else f"wrote {path}")
