"""`--rate auto`: AIMD pacing finds the cloud's quota (emulator rate limits of 15/s and 60/s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import ApiResult
from rrpcsync.run.executor import ApplyOptions, limiter_for
from rrpcsync.run.pacing import AdaptiveRateLimiter, RateLimiter
from rrpcsync.state.jsonfile import load_state

from .helpers import manifest_text, run, write

TOKEN = "emulator-token"
REFUSED = "RequestLimitExceeded"


def result(code: str | None = None, status: int = 200) -> ApiResult:
    return ApiResult(
        ok=code is None,
        request_id="r",
        message_id=1 if code is None else None,
        reply_base64=None,
        reply_text=None,
        code=code,
        message=None,
        error_class=None if code is None else ErrorClass.TRANSIENT,
        http_status=status,
        retry_after=None,
        elapsed=0.01,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_slow_start_then_additive_increase() -> None:
    clock = Clock()
    limiter = AdaptiveRateLimiter(1000, start=20, slow_start_step=0.5, increase=10, clock=clock)
    for _ in range(20):  # until the first refusal, each accepted request adds 0.5/s
        limiter.observe(result(), sent_at=0)
    assert limiter.rate == 30
    limiter.observe(result(REFUSED), sent_at=0)
    assert limiter.rate == 27
    for _ in range(27):  # then a second's worth adds about `increase`
        limiter.observe(result(), sent_at=0)
    assert 35 < limiter.rate < 37
    assert limiter.interval == pytest.approx(1 / limiter.rate)


def test_one_multiplicative_decrease_per_round_of_requests() -> None:
    clock = Clock()
    limiter = AdaptiveRateLimiter(1000, start=40, decrease=0.5, clock=clock)
    limiter.observe(result(REFUSED), sent_at=9.0)
    assert limiter.rate == 20
    limiter.observe(result(REFUSED), sent_at=9.5)  # sent before the decrease: already counted
    limiter.observe(result("HTTP.429", status=429), sent_at=9.9)
    assert limiter.rate == 20
    clock.now = 11.0
    limiter.observe(result("HTTP.429", status=429), sent_at=10.5)  # sent after it: slower still
    assert limiter.rate == 10
    assert limiter.decreases == 2


def test_bounded_by_the_ceiling_and_the_floor() -> None:
    clock = Clock()
    limiter = AdaptiveRateLimiter(25, start=20, floor=2, clock=clock)
    for _ in range(50):
        limiter.observe(result(), sent_at=0)
    assert limiter.rate == 25
    for step in range(100):
        clock.now += 1
        limiter.observe(result(REFUSED), sent_at=clock.now)
        assert limiter.rate >= 2, step
    assert limiter.rate == 2
    assert AdaptiveRateLimiter(5).rate == 5  # starts at 20 unless the ceiling is lower


def test_other_failures_neither_speed_up_nor_slow_down() -> None:
    limiter = AdaptiveRateLimiter(100)
    limiter.observe(replace(result("Transport.Timeout"), http_status=None), sent_at=0)
    assert limiter.rate == 20
    limiter.pause(5.0)  # a refusal's backoff does not stop everyone: the decrease did that
    assert limiter.next_slot <= limiter.clock()


def test_options_choose_the_limiter() -> None:
    assert type(limiter_for(ApplyOptions(rate=7))) is RateLimiter
    auto = limiter_for(ApplyOptions(adaptive_rate=True, max_rate=50))
    assert isinstance(auto, AdaptiveRateLimiter) and auto.ceiling == 50 and auto.rate == 20


@pytest.mark.parametrize(("limit", "devices"), [(15, 100), (60, 600)])
def test_auto_rate_holds_the_emulators_limit_within_ten_percent(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    emulator: Any,
    limit: int,
    devices: int,
) -> None:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    emu = emulator({"auto_devices": True, "rate_limit": limit, "default": {"latency": 0.02}})
    names = [f"d{i:03d}" for i in range(devices)]
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[" + ", ".join(names) + "]"))
    args = ["apply", "configs", "--auto-approve", "--rate", "auto", "--max-rate", "500"]
    outcome = run(capsys, *args, "--parallelism", "40", "--endpoint", emu.url)
    assert outcome.code == 0, outcome.err
    assert len(load_state(tmp_path / "rrpcsync.state.json").devices) == devices
    log = sorted(emu.stats()["log"], key=lambda entry: entry["t"])
    refused = [entry["t"] for entry in log if entry["code"] == REFUSED]
    accepted = [entry["t"] for entry in log if entry["code"] != REFUSED]
    assert refused, "the limit was never reached"
    # from the first refusal (the quota found) to the last accepted request: the held rate
    held = [t for t in accepted if t >= refused[0]]
    rate = (len(held) - 1) / (held[-1] - held[0])
    assert abs(rate - limit) <= 0.1 * limit, f"held {rate:.1f}/s against a limit of {limit}/s"
    # probing costs refusals (each retried): the overshoot while the quota is found, then about
    # one per rise of the saw-tooth
    assert len(refused) <= 0.15 * len(log), f"{len(refused)} refusals of {len(log)} requests"
