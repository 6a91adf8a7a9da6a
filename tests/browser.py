"""A real headless Chromium for the page tests: the system's browser (Debian's `chromium`),
driven by Playwright (`pip install playwright` carries its driver; `playwright install` is
never needed, and never run: it downloads browsers).

Skipped with the reason when the browser or Playwright is missing, except in CI (CI=true),
where that fails: `.ci/run` installs both, so these tests always run there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """`RRPCSYNC_CHROMIUM`, else the first Chromium on PATH."""
    named = os.environ.get("RRPCSYNC_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def missing_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set RRPCSYNC_CHROMIUM)"
    return None


@dataclass
class Opened:
    """A page loaded from a file, with everything it complained about."""

    page: Any  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    dialogs: list[str] = field(default_factory=list)  # alert()/confirm(): an injected script
    requests: list[str] = field(default_factory=list)  # anything but the file itself


OpenPage = Callable[..., Opened]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One browser per test module: Playwright's sync API keeps an event loop running in the
    main thread while it is open, so it must be closed before other modules run apply
    (asyncio.run); within the module, code that runs an event loop uses a thread."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[OpenPage]:
    """`open_page(path, javascript=True)`: the file in a fresh browser context."""
    contexts: list[Any] = []

    def opener(path: Path, *, javascript: bool = True, width: int = 1200) -> Opened:
        context = browser.new_context(
            java_script_enabled=javascript, viewport={"width": width, "height": 900}
        )
        contexts.append(context)
        page = context.new_page()
        opened = Opened(page)
        page.on("console", lambda m: m.type == "error" and opened.errors.append(m.text))
        page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
        page.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
        file_url = path.resolve().as_uri()
        page.on("request", lambda r: r.url != file_url and opened.requests.append(r.url))
        page.goto(file_url, wait_until="load")
        return opened

    yield opener
    for context in contexts:
        context.close()
