"""Retry budgets: capped exponential backoff with full jitter (AWS's advice: jitter
spreads retries of many consumers so they do not hammer a recovering dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

from choreo.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff: float = 0.1
    backoff_max: float = 5.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff < 0 or self.backoff_max < self.backoff:
            raise ConfigurationError("need 0 <= backoff <= backoff_max")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        # The exponent is capped so a long-running retry loop never overflows a float.
        ceiling = min(self.backoff * 2.0 ** min(max(attempt - 1, 0), 64), self.backoff_max)
        if not self.jitter:
            return ceiling
        if rng is None:
            return random.uniform(ceiling / 2, ceiling)
        return rng.uniform(ceiling / 2, ceiling)


# Infrastructure retries (the broker or the store not answering) never give up on their
# own: the record is still owed. They back off like this and stop when the process stops.
INFRASTRUCTURE_RETRY = RetryPolicy(max_attempts=1, backoff=0.1, backoff_max=5.0)


class Backoff:
    """Counts failed attempts of a loop that retries until it succeeds, and sleeps the
    policy's delay between them; ``wait`` returns False at once when ``stopping`` is
    set (the caller gives the work up; it is redelivered after the restart)."""

    def __init__(
        self,
        policy: RetryPolicy = INFRASTRUCTURE_RETRY,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.policy = policy
        self.stopping = stopping
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return self.policy.delay(self.attempt)

    async def wait(self) -> bool:
        delay = self.next_delay()
        if self.stopping is None:
            await asyncio.sleep(delay)
            return True
        if self.stopping.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return not self.stopping.is_set()

    def reset(self) -> None:
        self.attempt = 0
