"""`rrpcsync state migrate|pull|push`: move a state between stores (docs/state.md)."""

from __future__ import annotations

import sys

import click

from rrpcsync import api
from rrpcsync.cli.app import examples, info
from rrpcsync.cli.inputs import store_from
from rrpcsync.cli.options import lock_timeout_option, state_option
from rrpcsync.cli.state import state


@state.command(
    "migrate",
    epilog=examples(
        "rrpcsync state migrate --state rrpcsync.state.json --to sqlite:///rrpcsync.db",
        "rrpcsync state migrate --state sqlite:///rrpcsync.db "
        "--to postgresql://rrpcsync@db.internal/fleet --to-state-name site-a",
    ),
)
@state_option
@click.option(
    "--to",
    "target",
    required=True,
    metavar="STORE",
    help="Where to copy the state: a JSON file, sqlite:///PATH.db or postgresql://… (empty).",
)
@click.option(
    "--to-state-name",
    default="default",
    show_default=True,
    metavar="NAME",
    help="The state's name in the target database.",
)
@lock_timeout_option
def state_migrate(state_path: str, target: str, to_state_name: str, lock_timeout: float) -> None:
    """Copy the state, its lineage, serial and run history, into an empty store."""
    source = store_from(state_path)
    destination = api.open_store(target, to_state_name)
    copied = api.migrate_state(source, destination, lock_timeout)
    info(
        f"copied {len(copied.devices)} device(s) (lineage {copied.lineage}, serial "
        f"{copied.serial}) from {source.location} to {destination.location}"
    )


@state.command(
    "pull",
    epilog=examples(
        "rrpcsync state pull --state postgresql://rrpcsync@db/fleet > snapshot.json",
        "rrpcsync plan configs/ --state snapshot.json   # offline",
    ),
)
@state_option
def state_pull(state_path: str) -> None:
    """Write the state to stdout as a JSON state file (from any store)."""
    data = api.pull_state(store_from(state_path))
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@state.command(
    "push",
    epilog=examples("rrpcsync state push snapshot.json --state sqlite:///rrpcsync.db"),
)
@click.argument("file", type=click.Path(dir_okay=False))
@state_option
@lock_timeout_option
def state_push(file: str, state_path: str, lock_timeout: float) -> None:
    """Replace the stored state with a JSON state file of the same lineage, not older."""
    store = store_from(state_path)
    pushed = api.push_state(store, file, lock_timeout)
    info(f"pushed {len(pushed.devices)} device(s) to {store.location} (serial {pushed.serial})")
