"""`rrpcsync login`: log in with the app's keys and say who is logged in until when."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rrpcsync import api
from rrpcsync.cli.app import cli, examples, info, out
from rrpcsync.cli.inputs import connection_from
from rrpcsync.cli.options import login_options


@cli.command(
    epilog=examples(
        "rrpcsync login",
        "rrpcsync login --credentials-file ops.env --site overseas",
    )
)
@login_options
def login(**options: Any) -> None:
    """Log in (AppGetToken) and report who is logged in and until when; never the token.

    Credentials: RRPCSYNC_APP_KEY, RRPCSYNC_APP_SECRET, RRPCSYNC_USER, RRPCSYNC_PASSWORD, or
    --credentials-file (docs/auth.md). Exit 0 logged in, 1 with the cloud's error.
    """
    logged_in = api.log_in(connection_from(options), say=info)
    out(f"logged in as {logged_in.user} at {logged_in.login_endpoint}")
    out(f"token valid until {expiry_text(logged_in.expire_at)}")


def expiry_text(expire_at: float, local: timezone | None = None) -> str:
    """`2026-12-03T08:00:00Z (2026-12-03 16:00:00 CST)`: UTC, then local time."""
    utc = datetime.fromtimestamp(expire_at, timezone.utc)
    here = utc.astimezone(local)
    return f"{utc:%Y-%m-%dT%H:%M:%SZ} ({here:%Y-%m-%d %H:%M:%S %Z})".replace(" )", ")")
