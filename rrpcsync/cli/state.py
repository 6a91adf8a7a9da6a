"""`rrpcsync state list|show|rm|unlock`: inspect and edit the state through its store."""

from __future__ import annotations

import json
from collections import Counter

import click

from rrpcsync import api
from rrpcsync.cli.app import cli, examples, info, out
from rrpcsync.cli.options import format_option, lock_timeout_option, state_option
from rrpcsync.errors import UsageError
from rrpcsync.state.jsonfile import record_to_dict


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
    loaded = api.open_store(state_path).load()
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
    loaded = api.open_store(state_path).load()
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
    api.remove_devices(api.open_store(state_path), keys, lock_timeout)
    info(f"removed {len(keys)} device(s) from {state_path}")


@state.command("unlock", epilog=examples("rrpcsync state unlock", "rrpcsync state unlock --force"))
@state_option
@click.option("--force", is_flag=True, help="Remove the lock even if its holder looks alive.")
def state_unlock(state_path: str, force: bool) -> None:
    """Remove a stale lock left by a run that died."""
    info(api.open_store(state_path).unlock(force))
