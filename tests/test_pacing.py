"""Pure pieces of the executor: pacing, backoff, progress lines."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import ApiResult
from rrpcsync.run.executor import ApplyOptions, RateLimiter, backoff_delay
from rrpcsync.run.progress import Progress, eta_text, progress_line


def transient(retry_after: float | None = None) -> ApiResult:
    return ApiResult(
        ok=False,
        request_id="r",
        message_id=None,
        reply_base64=None,
        reply_text=None,
        code="RequestLimitExceeded",
        message="slow down",
        error_class=ErrorClass.TRANSIENT,
        http_status=200,
        retry_after=retry_after,
        elapsed=0.1,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_spaces_starts_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    async def five_starts() -> None:
        for _ in range(5):
            await limiter.acquire()

    asyncio.run(five_starts())
    assert sleeps == [0.05] * 4  # the first starts at once, then one every 1/rate


def test_rate_limiter_pause_pushes_the_next_slot() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock)
    limiter.pause(3.0)
    assert limiter.next_slot == 103.0


def test_backoff_is_full_jitter_doubling_and_capped() -> None:
    random.seed(1)
    options = ApplyOptions(backoff=0.5, backoff_max=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff_delay(attempt, transient(), options) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


def test_backoff_honours_retry_after_within_the_cap() -> None:
    options = ApplyOptions(backoff=0.01, backoff_max=30.0)
    assert backoff_delay(1, transient(retry_after=7.0), options) == 7.0
    assert backoff_delay(1, transient(retry_after=600.0), options) == 30.0


def test_progress_line_and_eta() -> None:
    assert progress_line(50, 100, 2, 10.0, width=10) == (
        "[#####-----] 50/100  5.0/s  ETA 10s  failures 2"
    )
    assert eta_text(3725) == "1h02m"
    assert eta_text(61) == "1m01s"


def test_progress_prints_a_line_per_interval_off_a_terminal() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress(stream, live=False, interval=10.0, clock=clock)
    progress.started(3)
    progress.result("a", True, None)
    clock.now += 11
    progress.result("b", False, "X")
    progress.result("c", True, None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[-1].startswith("[########################] 3/3")
    assert lines[-1].endswith("failures 1")
