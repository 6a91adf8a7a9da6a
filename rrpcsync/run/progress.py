"""Apply progress on stderr: a live bar on a terminal, a line every 10 s elsewhere (CI logs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def eta_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(done: int, total: int, failed: int, elapsed: float, width: int = 24) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = eta_text((total - done) / rate) if rate > 0 else "?"
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    return f"[{bar}] {done}/{total}  {rate:.1f}/s  ETA {eta}  failures {failed}"


class Progress:
    """Receives results from the executor (one event loop thread) and draws them."""

    def __init__(
        self,
        stream: TextIO,
        live: bool,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.live = live
        self.interval = 0.1 if live else interval
        self.clock = clock
        self.total = self.done = self.failed = 0
        self.started_at = self.last_drawn = 0.0

    def started(self, total: int) -> None:
        self.total = total
        self.started_at = self.last_drawn = self.clock()

    def result(self, key: str, ok: bool, code: str | None) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = self.clock()
        if now - self.last_drawn >= self.interval or self.done == self.total:
            self.last_drawn = now
            self._draw(now)

    def finished(self) -> None:
        if self.live and self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        line = progress_line(self.done, self.total, self.failed, now - self.started_at)
        self.stream.write(f"\r\x1b[2K{line}" if self.live else f"{line}\n")
        self.stream.flush()
