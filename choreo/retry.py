"""Retry budgets: capped exponential backoff with full jitter (AWS's advice: jitter
spreads retries of many consumers so they do not hammer a recovering dependency)."""

from __future__ import annotations

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
        ceiling = min(self.backoff * 2.0 ** (attempt - 1), self.backoff_max)
        if not self.jitter:
            return ceiling
        if rng is None:
            return random.uniform(ceiling / 2, ceiling)
        return rng.uniform(ceiling / 2, ceiling)
