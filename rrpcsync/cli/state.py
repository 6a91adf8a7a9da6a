"""`rrpcsync state list|show|rm|mv|unlock`: inspect and edit the state through its store."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import click

from rrpcsync import api, jsontext
from rrpcsync.cli.app import FullSummaries, cli, examples, info, out
from rrpcsync.cli.apply import confirm_or_refuse
from rrpcsync.cli.inputs import (
    connection_from,
    progress_bar,
    selection_from,
    sending_options,
    store_from,
)
from rrpcsync.cli.options import (
    client_options,
    format_option,
    lock_timeout_option,
    manifest_paths,
    paths_with_excludes,
    selection_options,
    state_option,
    yes_option,
)
from rrpcsync.cli.validate import report_diagnostics
from rrpcsync.errors import ExitCode, ManifestError, StateError, UsageError
from rrpcsync.model import Change, DeviceRecord, Status
from rrpcsync.planning.render import by_manifest
from rrpcsync.planning.selection import RecordFilter, Selection
from rrpcsync.state import State
from rrpcsync.state.jsonfile import record_to_dict

SHOWN_KEYS = 5  # keys named when a command works on many
ADOPTED = {
    "probe": "its probe reported the desired config; never acknowledged a send",
    "assumed": "assumed in sync, never acknowledged",
}


@cli.group(
    cls=FullSummaries,
    epilog=examples(
        "rrpcsync state list --status failed",
        "rrpcsync state show ASBHKN/dev-001",
        "rrpcsync state rm 'ASBHKN/dev-00*' --yes   # the next apply re-sends them",
        "rrpcsync state mv 'OLDPROD/*' 'NEWPROD/*'  # a renamed product plans as unchanged",
        "rrpcsync state unlock",
    ),
)
def state() -> None:
    """Inspect, edit and move the state (any store): list, show, forget, rename, adopt, unlock,
    migrate, pull, push."""


@state.command(
    "list",
    epilog=examples(
        "rrpcsync state list",
        "rrpcsync state list --status failed --error-code 'FailedOperation.*'",
        "rrpcsync state list --manifest 'thermostats-*' --target 'ASBHKN/*'",
        "rrpcsync state list configs/ --selector site=shanghai",
        "rrpcsync state list --format json | jq .",
    ),
)
@manifest_paths
@state_option
@format_option("text", "json")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([status.value for status in Status]),
    help="Only devices with this status (repeatable).",
)
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    metavar="GLOB",
    help="Only devices last sent by a manifest whose name matches (repeatable).",
)
@click.option(
    "--error-code",
    "error_codes",
    multiple=True,
    metavar="GLOB",
    help="Only devices whose last error code matches, e.g. 'FailedOperation.*' (repeatable).",
)
@selection_options
def state_list(
    paths: tuple[str, ...],
    exclude_files: tuple[str, ...],
    state_path: str,
    output_format: str,
    statuses: tuple[str, ...],
    manifests: tuple[str, ...],
    error_codes: tuple[str, ...],
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
) -> None:
    """List recorded devices with their status, and counts per status.

    The filters combine (all must hold). --selector reads the devices' labels from the
    manifests in PATHS (default configs/).
    """
    selection = Selection.from_options(targets, excludes, selectors)
    record_filter = RecordFilter(frozenset(statuses), manifests, error_codes, selection)
    loaded, chosen = api.list_records(
        store_from(state_path), record_filter, paths_with_excludes(paths, exclude_files)
    )
    check_exists(loaded)
    counts = Counter(record.status.value for _, record in chosen)
    if output_format == "json":
        devices = {key: _list_entry(rec) for key, rec in chosen}
        doc = {"lineage": loaded.lineage, "serial": loaded.serial, "counts": dict(counts)}
        out(json.dumps({**doc, "devices": devices}, indent=2, ensure_ascii=False))
        return
    for line in table(["DEVICE", "STATUS", "MANIFEST", "APPLIED AT", "LAST ERROR"], chosen):
        out(line)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no devices"
    of = f" of {len(loaded.devices)}" if len(chosen) != len(loaded.devices) else ""
    info(f"{len(chosen)}{of} device(s): {parts} (serial {loaded.serial})")


def _list_entry(rec: DeviceRecord) -> dict[str, object]:
    return {
        "status": rec.status.value,
        "manifest": rec.manifest,
        "payload_sha256": rec.payload_sha256,
        "applied_at": rec.applied_at,
        "last_error": rec.last_error.code if rec.last_error else None,
    }


def table(header: Sequence[str], rows: Sequence[tuple[str, DeviceRecord]]) -> list[str]:
    """Aligned columns under a header; `-` for an empty cell."""
    cells = [list(header)] + [
        [
            key,
            rec.status.value,
            rec.manifest or "-",
            rec.applied_at or "-",
            rec.last_error.code if rec.last_error else "-",
        ]
        for key, rec in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


@state.command(
    "show",
    epilog=examples(
        "rrpcsync state show ASBHKN/dev-001", "rrpcsync state show ASBHKN/dev-001 --format json"
    ),
)
@click.argument("key")
@state_option
@format_option("text", "json")
def state_show(key: str, state_path: str, output_format: str) -> None:
    """Show one device's record; the reply as text (indented when it is JSON)."""
    loaded = load_existing(state_path)
    record = loaded.devices.get(key)
    if record is None:
        raise UsageError(f"{key} is not in {loaded.location}")
    if output_format == "json":
        doc = {key: record_to_dict(record)}
        out(json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True))
        return
    for line in record_lines(key, record):
        out(line)


def load_existing(state_path: str) -> State:
    """The state to inspect; a missing one is an error (a typo'd --state is not "0 devices")."""
    return check_exists(store_from(state_path).load())


def check_exists(loaded: State) -> State:
    if not loaded.exists and not loaded.devices:
        raise StateError(f"no state at {loaded.location}: check --state (or RRPCSYNC_STATE)")
    return loaded


def record_lines(key: str, rec: DeviceRecord) -> list[str]:
    error = rec.last_error
    fields = [
        ("status", rec.status.value),
        ("manifest", rec.manifest),
        ("applied at", rec.applied_at),
        ("attempts", str(rec.attempts)),
        ("request id", rec.request_id),
        ("message id", None if rec.message_id is None else str(rec.message_id)),
        ("payload sha256", rec.payload_sha256),
        ("last error", f"{error.code}: {error.message} ({error.at})" if error else None),
        ("observed at", rec.observed_at),
        ("adopted", ADOPTED.get(rec.adopted or "", rec.adopted)),
    ]
    lines = [key, *(f"  {name + ':':<16}{value}" for name, value in fields if value is not None)]
    for title, text in (("payload", rec.payload), ("observed", rec.observed)):
        if text is not None:
            lines += [f"  {title}:", *indented(readable(text))]
    if rec.reply_text is not None:
        lines += ["  reply:", *indented(readable(rec.reply_text))]
    elif rec.reply_base64 is not None:
        lines.append(f"  reply (base64, not UTF-8): {rec.reply_base64}")
    return lines


def readable(text: str) -> str:
    """JSON indented; other text as it is, control characters shown as escapes."""
    try:
        return json.dumps(jsontext.loads(text), indent=2, ensure_ascii=False)
    except ValueError:  # not JSON, or too deep to indent: shown as text
        return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def indented(text: str) -> list[str]:
    return [f"    {line}" for line in text.splitlines() or [""]]


@state.command(
    "rm",
    epilog=examples(
        "rrpcsync state rm ASBHKN/dev-001 ASBHKN/dev-002",
        "rrpcsync state rm 'ASBHKN/*' --yes",
    ),
)
@click.argument("keys", nargs=-1, required=True)
@state_option
@lock_timeout_option
@yes_option
def state_rm(keys: tuple[str, ...], state_path: str, lock_timeout: float, yes: bool) -> None:
    """Forget devices (keys or globs): nothing is sent; the next apply treats them as new.

    Every KEY must match; more than one device needs --yes without a terminal.
    """
    store = store_from(state_path)
    removed = api.remove_devices(store, keys, lock_timeout, confirm=lambda ks: _confirm(ks, yes))
    info(f"removed {len(removed)} device(s) from {store.location}")


def _confirm(keys: Sequence[str], yes: bool) -> None:
    shown = ", ".join(keys[:SHOWN_KEYS]) + (
        f", … and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    )
    info(f"{len(keys)} device(s) match: {shown}")
    if len(keys) <= 1 or yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"{len(keys)} devices match; pass --yes to forget them without a terminal; "
            "nothing changed"
        )
    if not click.confirm(f"Forget {len(keys)} devices from the state?", default=False, err=True):
        raise UsageError("cancelled; nothing changed")


@state.command(
    "mv",
    epilog=examples(
        "rrpcsync state mv ASBHKN/dev-001 ASBHKN/lobby-001",
        "rrpcsync state mv 'OLDPROD/*' 'NEWPROD/*'",
    ),
)
@click.argument("old")
@click.argument("new")
@state_option
@lock_timeout_option
def state_mv(old: str, new: str, state_path: str, lock_timeout: float) -> None:
    """Rename a device's record (or PRODUCT/* to NEWPRODUCT/*) without sending anything.

    A device renamed in the manifests then plans as unchanged instead of create + orphan.
    """
    store = store_from(state_path)
    moves = api.move_devices(store, old, new, lock_timeout)
    first = next(iter(moves.items()))
    more = f" and {len(moves) - 1} more" if len(moves) > 1 else ""
    info(f"renamed {first[0]} → {first[1]}{more} in {store.location}; nothing was sent")


@state.command(
    "adopt",
    epilog=examples(
        "rrpcsync state adopt configs/ --probe            # adopt what the devices confirm",
        "rrpcsync state adopt --assume-in-sync --target 'ASBHKN/*' --auto-approve",
    ),
)
@manifest_paths
@state_option
@click.option(
    "--probe",
    "mode",
    flag_value=api.ADOPT_PROBE,
    help="Adopt only devices whose drift probe (spec.probe) reports the desired config.",
)
@click.option(
    "--assume-in-sync",
    "mode",
    flag_value=api.ADOPT_ASSUMED,
    help="Adopt every selected device on your word; the record notes it was not acknowledged.",
)
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@selection_options
@lock_timeout_option
@client_options
def state_adopt(
    paths: tuple[str, ...],
    exclude_files: tuple[str, ...],
    state_path: str,
    mode: str | None,
    auto_approve: bool,
    targets: tuple[str, ...],
    excludes: tuple[str, ...],
    selectors: tuple[str, ...],
    lock_timeout: float,
    **options: Any,
) -> None:
    """Record declared devices as applied without sending their payload (terraform import).

    For a fleet that already holds its config: the devices apply would send to are recorded
    as applied, so the next plan leaves them unchanged. Needs --probe or --assume-in-sync;
    shows what it will adopt and asks like apply (--auto-approve without a terminal).
    """
    if mode is None:
        raise UsageError("state adopt needs --probe or --assume-in-sync")
    try:
        adoption = api.adopt_devices(
            paths_with_excludes(paths, exclude_files),
            store_from(state_path),
            mode=mode,
            selection=selection_from(targets, excludes, selectors),
            connection=connection_from(options),
            sending=sending_options(options),
            lock_timeout=lock_timeout,
            show=show_adoption,
            confirm=lambda _adoption: confirm_or_refuse(auto_approve, "adopt these devices"),
            progress=progress_bar,
            say=info,
        )
    except ManifestError as error:
        report_diagnostics(error, "text")
        raise SystemExit(ExitCode.ERROR) from None
    if adoption.adopt:
        how = "as their probes confirmed" if mode == api.ADOPT_PROBE else "on your word"
        info(f"adopted {len(adoption.adopt)} device(s) into {state_path} {how}; nothing was sent")


def show_adoption(adoption: api.Adoption) -> None:
    if not adoption.adopt and not adoption.left_out:
        out("Nothing to adopt: every selected device is already recorded as applied.")
        return
    for manifest, changes in by_manifest(adoption.adopt).items():
        out(f"{manifest}:")
        out(f"  = {len(changes):,} device(s) recorded as applied, nothing sent")
        for line in _keys(changes):
            out(f"      {line}")
    if adoption.left_out:
        out(f"Not adopted ({len(adoption.left_out):,}): apply sends them their payload")
        for change, reason in adoption.left_out:
            out(f"  {change.key}  ({change.source}): {reason}")
    out("")
    note = "" if adoption.mode == api.ADOPT_PROBE else " (assumed in sync, not acknowledged)"
    out(f"Adopt: {len(adoption.adopt):,} device(s){note}, {len(adoption.left_out):,} left out.")


def _keys(changes: Sequence[Change]) -> list[str]:
    lines = [f"{c.key}  ({c.source})" for c in changes[:SHOWN_KEYS]]
    if len(changes) > SHOWN_KEYS:
        lines.append(f"… and {len(changes) - SHOWN_KEYS:,} more")
    return lines


@state.command("unlock", epilog=examples("rrpcsync state unlock", "rrpcsync state unlock --force"))
@state_option
@click.option("--force", is_flag=True, help="Remove the lock even if its holder looks alive.")
def state_unlock(state_path: str, force: bool) -> None:
    """Remove a stale lock left by a run that died."""
    info(store_from(state_path).unlock(force))


# `state migrate|pull|push` live in their own module; importing it adds them to this group.
from rrpcsync.cli import state_move  # noqa: E402, F401
