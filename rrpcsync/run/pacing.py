"""Pacing: a fixed `--rate`, or `--rate auto`, which finds the account's quota as it goes.

`--rate auto` is additive increase, multiplicative decrease (AIMD, as TCP finds a link's
bandwidth). It starts at 20 requests/s. Until the cloud first refuses (slow start), every
accepted request adds `slow_start_step` requests/s, so the rate grows by about half each
second; after that, it adds `increase` (2) requests/s per second's worth of accepted requests.
On `RequestLimitExceeded` (or HTTP 429) it multiplies the rate by `decrease`, once per round
of requests: only a refusal of a request sent after the last decrease lowers it again (the
ones already in flight were sent at the old rate). It never goes above `ceiling`
(`--max-rate`) nor below `floor`. See docs/performance.md, "Adaptive rate".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rrpcsync.cloud.results import ApiResult

AUTO_START = 20.0  # the cloud's default quota (requests per second)
AUTO_SLOW_START_STEP = 0.5  # requests/s added per accepted request, until the first refusal
AUTO_INCREASE = 2.0  # then: requests/s added per second of accepted requests
AUTO_DECREASE = 0.9  # the rate is multiplied by this on a refusal
AUTO_FLOOR = 1.0


class RateLimiter:
    """Smooth pacing: request starts are at least 1/rate apart, so no burst ever exceeds rate.

    Waiters go one at a time, and each sets the next slot from when it really started: after
    the event loop stalls, the overdue requests do not all fire at once to catch up.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.clock = clock
        self.next_slot = clock()
        self._turn = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for the next slot; returns when the request starts (by `clock`)."""
        now = self.clock()
        if now >= self.next_slot and not self._turn.locked():  # due, nobody waiting: no await
            self.next_slot = self._following(now)
            return now
        async with self._turn:
            while (wait := self.next_slot - self.clock()) > 0:  # pause() may move it on
                await asyncio.sleep(wait)
            now = self.clock()
            self.next_slot = self._following(now)
            return now

    def _following(self, now: float) -> float:
        """The slot after a request that started at `now`: one interval after the real start."""
        return now + self.interval

    def pause(self, seconds: float) -> None:
        """The cloud said slow down: no request starts for `seconds`."""
        self.next_slot = max(self.next_slot, self.clock() + seconds)

    def observe(self, result: ApiResult, sent_at: float) -> None:
        """A fixed rate learns nothing from results."""


def is_rate_limited(result: ApiResult) -> bool:
    return result.http_status == 429 or (result.code or "").startswith("RequestLimitExceeded")


class AdaptiveRateLimiter(RateLimiter):
    """`--rate auto`: AIMD between `floor` and `ceiling` (see the module docstring)."""

    def __init__(
        self,
        ceiling: float,
        *,
        start: float = AUTO_START,
        slow_start_step: float = AUTO_SLOW_START_STEP,
        increase: float = AUTO_INCREASE,
        decrease: float = AUTO_DECREASE,
        floor: float = AUTO_FLOOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        super().__init__(min(start, ceiling), clock)
        self.slow_start_step = slow_start_step
        self.increase = increase
        self.decrease = decrease
        self.last_decrease = float("-inf")
        self.decreases = 0

    def pause(self, seconds: float) -> None:
        """No pause: the multiplicative decrease in `observe` is the answer to a refusal."""

    def _following(self, now: float) -> float:
        """One interval after the slot just used, so that timer lag on a busy machine does not
        hold the rate below the one AIMD set; after a stall of more than an interval, one
        interval after `now` (no catching up in a burst)."""
        due = self.next_slot + self.interval
        return due if due > now else now + self.interval

    def observe(self, result: ApiResult, sent_at: float) -> None:
        if is_rate_limited(result):
            if sent_at >= self.last_decrease:  # sent at the current rate: it is too high
                self._set(self.rate * self.decrease)
                self.last_decrease = self.clock()
                self.decreases += 1
        elif result.http_status is not None:  # the cloud answered and did not refuse
            step = self.slow_start_step if self.decreases == 0 else self.increase / self.rate
            self._set(self.rate + step)

    def _set(self, rate: float) -> None:
        self.rate = min(self.ceiling, max(self.floor, rate))
        self.interval = 1.0 / self.rate
