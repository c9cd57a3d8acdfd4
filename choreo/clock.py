"""Time for tests that should not wait for it: a ``VirtualClock`` runs with the wall clock
and jumps ahead when told (``advance``), so a test reaches a saga's 10-minute deadline or
a retry's 30-second backoff at once, with the code under test unchanged.

``choreo.testing.Harness(..., clock=VirtualClock())`` gives it to every participant: the
``MemoryTracker`` reads its time from it (deadlines, compensation retries) and services
sleep on it between handler retries. ``await h.advance(seconds)`` moves it.
"""

from __future__ import annotations

import asyncio
import time


class VirtualClock:
    """Wall-clock time plus an offset that only grows."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._waiters: set[asyncio.Event] = set()

    def now(self) -> float:
        """Seconds since the epoch, as ``time.time`` (the tracker's clock)."""
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` passed on this clock: in real time, or sooner when
        ``advance`` moves it past the end."""
        until = self.monotonic() + seconds
        while (left := until - self.monotonic()) > 0:
            moved = asyncio.Event()
            self._waiters.add(moved)
            try:
                await asyncio.wait_for(moved.wait(), left)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(moved)

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead and wake every sleeper to look again."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.offset += seconds
        for moved in list(self._waiters):
            moved.set()
        await asyncio.sleep(0)
