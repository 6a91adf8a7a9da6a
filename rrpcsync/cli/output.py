"""Writing plans: stdout in the chosen format, `--out`, `--out-markdown`, the step summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rrpcsync.cli.app import info, out, settings
from rrpcsync.errors import UsageError
from rrpcsync.model import Plan
from rrpcsync.planning import render
from rrpcsync.planning.document import plan_document
from rrpcsync.state import utc_now


def write_plan_outputs(
    plan: Plan,
    output_format: str,
    out_path: str | None,
    md_path: str | None,
    detail: str = "summary",
) -> None:
    grouped = detail != "full"
    doc = plan_document(plan, created_at=utc_now())
    if out_path:
        write_text_file(Path(out_path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        info(f"saved plan to {out_path}; apply it with `rrpcsync apply {out_path}`")
    markdown = render.plan_markdown(plan, grouped=grouped)
    if md_path:
        write_text_file(Path(md_path), markdown)
    append_step_summary(markdown)
    if output_format == "json":
        doc_no_payloads = plan_document(plan, created_at=doc["created_at"], include_payloads=False)
        out(json.dumps(doc_no_payloads, indent=2, ensure_ascii=False))
    elif output_format == "markdown":
        out(markdown.rstrip("\n"))
    else:
        for line in render.plan_text(
            plan, color=settings().color, prune=plan.prune, grouped=grouped
        ):
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
