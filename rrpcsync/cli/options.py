"""Command-line options shared by several commands, each declared once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_PATHS = ("configs/",)
DEFAULT_STATE = "rrpcsync.state.json"


class FiniteFloat(click.FloatRange):
    """A float option: `nan` and `inf` are usage errors (`--timeout inf` would never time
    out, `--rate nan` would turn pacing off, `--lock-timeout nan` would wait forever)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def finite_float(min: float | None = None, max: float | None = None) -> FiniteFloat:
    """Every float option's type: finite, within [min, max]."""
    return FiniteFloat(min=min, max=max)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


AUTO = "auto"


def _rate(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    """--rate: requests per second (a number >= 0.01), or `auto`."""
    if value == AUTO:
        return value
    try:
        rate = float(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a number of requests per second nor 'auto'"
        ) from None
    if not math.isfinite(rate):
        raise click.BadParameter(f"{value!r} is not a finite number")
    if not rate >= 0.01:
        raise click.BadParameter(f"{value!r} is below 0.01 requests per second")
    return rate


paths_argument = click.argument("paths", nargs=-1, type=click.Path())

exclude_files_option = click.option(
    "--exclude-files",
    "exclude_files",
    multiple=True,
    metavar="GLOB",
    help="Skip YAML files in the folders that match this glob, e.g. 'k8s/*' (repeatable; "
    "rrpcsync.toml `exclude`).",
)
manifest_paths = _stack(paths_argument, exclude_files_option)


def paths_with_excludes(paths: Sequence[str], exclude_files: Sequence[str]) -> tuple[str, ...]:
    """PATHS (default configs/) and `!GLOB` entries the loader leaves out of folder walks."""
    return (*(paths or DEFAULT_PATHS), *(f"!{glob}" for glob in exclude_files))


STATE_NAME_KEY = "rrpcsync.state_name"


def _remember_state_name(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta[STATE_NAME_KEY] = value  # read by cli.inputs.store_from, next to --state
    return value


state_option = _stack(
    click.option(
        "--state",
        "state_path",
        envvar="RRPCSYNC_STATE",
        default=DEFAULT_STATE,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="The state: a JSON file, sqlite:///PATH.db or postgresql://USER@HOST/DB "
        "(env RRPCSYNC_STATE; docs/state.md).",
    ),
    click.option(
        "--state-name",
        envvar="RRPCSYNC_STATE_NAME",
        default="default",
        show_default=True,
        metavar="NAME",
        expose_value=False,
        is_eager=True,
        callback=_remember_state_name,
        help="Which state of a SQL store (several live in one database; env RRPCSYNC_STATE_NAME).",
    ),
)

lock_timeout_option = click.option(
    "--lock-timeout",
    type=finite_float(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another run's state lock before giving up (exit 4).",
)

selection_options = _stack(
    click.option(
        "--target",
        "targets",
        multiple=True,
        metavar="KEY",
        help="Only devices whose ProductId/DeviceName matches this glob (repeatable).",
    ),
    click.option(
        "--exclude",
        "excludes",
        multiple=True,
        metavar="KEY",
        help="Leave out devices matching this glob (repeatable).",
    ),
    click.option(
        "--selector",
        "-l",
        "selectors",
        multiple=True,
        metavar="EXPR",
        help="Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k (repeatable).",
    ),
)

yes_option = click.option(
    "--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal when several match."
)

only_failed_option = click.option(
    "--only-failed",
    is_flag=True,
    help="Only the devices whose last attempt failed (status failed in the state).",
)


def _send_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from rrpcsync.api import SendLimit

    try:
        return SendLimit.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


max_sends_option = click.option(
    "--max-sends",
    envvar="RRPCSYNC_MAX_SENDS",
    callback=_send_limit,
    metavar="N|P%",
    help="Refuse (exit 1, nothing sent) when the plan would send to more than N devices, or "
    "more than P% of the selected devices (env RRPCSYNC_MAX_SENDS).",
)

ignore_windows_option = click.option(
    "--ignore-windows",
    is_flag=True,
    help="Send now even outside the manifests' maintenance windows (spec.windows): emergencies.",
)

explain_option = click.option(
    "--explain",
    "explain_key",
    metavar="KEY",
    help="Show how the payload of device KEY (ProductId/DeviceName) is built: each layer "
    "(spec.payload, matching overrides, the device's own) and which one set each value.",
)

prune_option = click.option(
    "--prune", is_flag=True, help="Forget orphaned devices (no longer declared) from the state."
)


def format_option(*choices: str, default: str = "text") -> Callable[[F], F]:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format.",
    )


# How to log in and where (docs/auth.md): shared by every command that talks to the cloud.
login_options = _stack(
    click.option(
        "--credentials-file",
        type=click.Path(dir_okay=False),
        help="Log in with RRPCSYNC_APP_KEY, _APP_SECRET, _USER, _PASSWORD read from this "
        "file (KEY=value lines); else from the environment.",
    ),
    click.option(
        "--site",
        envvar="RRPCSYNC_SITE",
        type=click.Choice(["china", "overseas"]),
        default=None,
        help="Which cloud: both endpoints (env RRPCSYNC_SITE; default china).",
    ),
    click.option(
        "--login-endpoint",
        envvar="RRPCSYNC_LOGIN_ENDPOINT",
        default=None,
        help="AppGetToken endpoint (env RRPCSYNC_LOGIN_ENDPOINT; default the site's, or "
        "the --endpoint's appapi sibling).",
    ),
    click.option(
        "--endpoint",
        envvar="RRPCSYNC_ENDPOINT",
        default=None,
        help="RRPC API endpoint (env RRPCSYNC_ENDPOINT; default the site's official URL).",
    ),
    click.option(
        "--allow-insecure-endpoint",
        is_flag=True,
        help="Allow a non-https endpoint that is not a loopback address.",
    ),
    click.option(
        "--timeout",
        type=finite_float(min=0.1),
        default=15.0,
        show_default=True,
        metavar="SECONDS",
        help="Per-request timeout (the cloud waits 4-10 s for the device).",
    ),
)

client_options = _stack(
    click.option(
        "--access-token-file",
        type=click.Path(dir_okay=False),
        help="Read a static access token from this file (else env RRPCSYNC_ACCESS_TOKEN; "
        "docs/auth.md for the precedence).",
    ),
    login_options,
    click.option(
        "--parallelism",
        type=click.IntRange(1, 1000),
        default=10,
        show_default=True,
        help="Requests in flight at once.",
    ),
    click.option(
        "--rate",
        callback=_rate,
        metavar="RATE|auto",
        default="20",
        show_default=True,
        help="Requests per second at most (the cloud's default quota is 20), or `auto`: start "
        "at 20, speed up while the cloud accepts, slow down when it refuses (docs/performance.md).",
    ),
    click.option(
        "--max-rate",
        type=finite_float(min=0.01),
        default=200.0,
        show_default=True,
        help="The ceiling of --rate auto, in requests per second.",
    ),
    click.option(
        "--retries",
        type=click.IntRange(0, 20),
        default=3,
        show_default=True,
        help="Retries of transient errors per device.",
    ),
    click.option(
        "--retry-backoff",
        type=finite_float(min=0),
        default=0.5,
        show_default=True,
        metavar="SECONDS",
        help="First retry waits up to this long (full jitter, doubling each retry).",
    ),
)


def _waves_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from rrpcsync.manifests.policy import parse_waves

    try:
        return parse_waves(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


rollout_options = _stack(
    click.option(
        "--canary",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Send to N devices first (spread across manifests); go on only if all succeed.",
    ),
    click.option(
        "--waves",
        callback=_waves_option,
        metavar="LIST",
        help="Cumulative wave sizes, counts or percentages: 1,10%,50%,100%.",
    ),
    click.option(
        "--max-failures",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Abort the rollout at failure N+1 (stop sending, exit 3).",
    ),
    click.option(
        "--max-failure-rate",
        type=finite_float(0, 100),
        default=None,
        metavar="PERCENT",
        help="Abort when more than PERCENT of the results failed (after --min-sample).",
    ),
    click.option(
        "--min-sample",
        type=click.IntRange(min=1),
        default=None,
        metavar="M",
        help="Results needed before --max-failure-rate applies.  [default: 20]",
    ),
)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from rrpcsync.manifests.probe import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


resync_after_option = click.option(
    "--resync-after",
    callback=_duration_option,
    metavar="DURATION",
    help="Re-send to devices not probed whose last apply is older than this (30m, 24h, 7d).",
)

refresh_options = _stack(
    click.option(
        "--refresh",
        is_flag=True,
        help="First probe devices (spec.probe) for the config they hold; plan `drift` changes "
        "for those that differ (docs/drift.md).",
    ),
    resync_after_option,
)

detail_option = click.option(
    "--detail",
    type=click.Choice(["summary", "full"]),
    default="summary",
    show_default=True,
    help="summary: identical changes grouped (the first few devices named); full: every device.",
)

plan_output_options = _stack(
    click.option(
        "--out",
        "out_path",
        type=click.Path(dir_okay=False),
        help="Save the plan for `apply PLAN.json`.",
    ),
    click.option(
        "--out-markdown",
        "md_path",
        type=click.Path(dir_okay=False),
        help="Also write the markdown (PR comment) form to this file.",
    ),
    detail_option,
)


def _group_by_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    from rrpcsync.report.model import parse_group_by

    try:
        return tuple(parse_group_by(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


report_options = _stack(
    click.option(
        "--html",
        "html_path",
        type=click.Path(dir_okay=False),
        help="Write the report as one self-contained HTML page to this file.",
    ),
    click.option(
        "--group-by",
        "group_by",
        multiple=True,
        callback=_group_by_option,
        metavar="manifest|product|label:KEY",
        help="Compliance per manifest, product or value of a label (repeatable).  "
        "[default: manifest, product]",
    ),
)
