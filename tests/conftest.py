"""Shared fixtures: the cloud emulator on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.emulator import Emulator, Fleet

FLEET_TOKEN = "emulator-token"

StartEmulator = Callable[..., Emulator]


@pytest.fixture
def fleet_token() -> str:
    """The access token the `emulator` fixture's fleets accept unless they set another."""
    return FLEET_TOKEN


@pytest.fixture
def emulator() -> Iterator[StartEmulator]:
    """Start emulators: `emu = emulator({"devices": {"P1/d1": {"reply": "ok"}}})`.

    Takes a fleet dict (its token defaults to FLEET_TOKEN), a fleet file path or a Fleet, plus
    Emulator keyword arguments. Every emulator started is stopped at teardown.
    """
    started: list[Emulator] = []

    def start(
        fleet: Mapping[str, Any] | str | Path | Fleet | None = None, **kwargs: Any
    ) -> Emulator:
        if fleet is None or isinstance(fleet, Mapping):
            fleet = {"token": FLEET_TOKEN, **(fleet or {})}
        emu = Emulator(fleet, host="127.0.0.1", port=0, **kwargs)
        started.append(emu.start())
        return emu

    yield start
    for emu in reversed(started):
        emu.stop()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the real cloud: unless a test points elsewhere, the endpoint is a
    closed port on 127.0.0.1. CI variables of the machine running the tests are cleared."""
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", "http://127.0.0.1:9/")
    for name in (
        "GITHUB_ACTIONS",
        "GITHUB_STEP_SUMMARY",
        "RRPCSYNC_STATE",
        "NO_COLOR",
        "RRPCSYNC_APP_KEY",
        "RRPCSYNC_APP_SECRET",
        "RRPCSYNC_USER",
        "RRPCSYNC_PASSWORD",
        "RRPCSYNC_SITE",
        "RRPCSYNC_LOGIN_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL server (initdb + pg_ctl in a temporary folder), for the session.

    Skipped with the reason when PostgreSQL or psycopg is missing, except in CI (CI=true),
    where that fails: `.ci/run` installs both, so these tests always run there.
    """
    from tests import pgserver

    reason = pgserver.missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    with pgserver.running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """The URL (password included) of a fresh, empty database on the test server."""
    return str(pg_server.new_database())
