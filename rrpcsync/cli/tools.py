"""`rrpcsync emulator` and `rrpcsync demo`: the offline stand-in for the cloud."""

from __future__ import annotations

from collections.abc import Sequence

import click

from rrpcsync.cli.app import cli, emit, examples, info
from rrpcsync.cli.boundary import run_guarded
from rrpcsync.errors import UsageError


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
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port, printed when ready).",
)
def emulator(fleet: str | None, host: str, port: int) -> None:
    """Run the local stand-in for the cloud API (AppPublishRRPCMessage) until Ctrl-C.

    Without --fleet every device exists and answers {"code":0}; the token is emulator-token.
    Logs one line per request on stderr (the token as ***); -q keeps it quiet.
    A fleet's `login:` section enables AppGetToken on paths ending in appapi (docs/auth.md).
    """
    from rrpcsync.emulator import EmulatorError, load_fleet, main_blocking

    try:
        loaded = load_fleet(fleet) if fleet else load_fleet({"auto_devices": True})
        main_blocking(
            loaded,
            host,
            port,
            on_ready=lambda url: _ready(url, loaded.login is not None),
            on_request=info,
        )
    except EmulatorError as exc:  # bad fleet file, busy port, non-loopback host
        raise UsageError(str(exc)) from None


def _ready(url: str, login: bool) -> None:
    info(f"emulator listening on {url}")
    if login:
        info(f"AppGetToken (login) on {url}api/exploreropen/appapi")


@cli.command(epilog=examples("rrpcsync demo", "rrpcsync demo --keep"))
@click.option("--keep", is_flag=True, help="Keep the temporary folder to look around.")
def demo(keep: bool) -> None:
    """Validate, plan and apply the example fleet against the emulator, offline.

    Edits one manifest and shows that the next apply sends exactly one message.
    """
    from rrpcsync.cli.demo import run_demo

    def run(args: Sequence[str]) -> int:
        return run_guarded(cli, list(args))

    code = run_demo(run, lambda line: emit(line), keep=keep)
    raise SystemExit(code)
