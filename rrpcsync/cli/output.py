"""Writing plans: stdout in the chosen format, `--out`, `--out-markdown`, the step summary."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from rrpcsync.cli.app import info, out, settings
from rrpcsync.cli.terminal import escape_controls
from rrpcsync.errors import UsageError
from rrpcsync.model import Plan
from rrpcsync.planning import render
from rrpcsync.planning.document import plan_document
from rrpcsync.state import JsonFileStore, StateStore, utc_now
from rrpcsync.state.paths import open_private, same_file


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
        text = escape_controls(json.dumps(doc, indent=2, ensure_ascii=False))
        write_text_file(Path(out_path), text + "\n")
        info(f"saved plan to {out_path}; apply it with `rrpcsync apply {out_path}`")
    # files and the job summary get control characters escaped too (a PR comment is read by
    # people); \uXXXX escapes keep the saved plan the same JSON
    markdown = escape_controls(render.plan_markdown(plan, grouped=grouped))
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


def refuse_clobbering(store: StateStore, outputs: Sequence[tuple[str, str | None]]) -> None:
    """`plan --out state.json` would destroy the state: refuse to write an output onto the
    state file, its backup, journal, lock or history (by any path, symlinks included)."""
    protected = store.files() if isinstance(store, JsonFileStore) else ()
    for option, value in outputs:
        if value is None:
            continue
        for path in protected:
            if same_file(value, path):
                raise UsageError(
                    f"refusing to write {option} to {value}: it is the state's file {path}"
                )


def write_text_file(path: Path, text: str) -> None:
    """Plans may hold payloads: private to the user (0600), like the state. A symlink in the
    output's place is refused, never followed."""
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "output file", UsageError)
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: its folder does not exist") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
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
