"""A consumer-side circuit breaker: when a dependency is down, stop consuming instead of
burning every record's retry budget into the dead-letter topic.

    payments = CircuitBreaker("payments-api", failures=3, window=30, cooldown=10)

    @app.on_event(OrderPlaced, breaker=payments)
    async def charge(event, ctx): ...

``failures`` retriable failures of the handlers sharing the breaker within ``window``
seconds, with no success between, open it. While it is open, a record that reaches such
a handler is not run: the whole batch waits (``CircuitOpen`` is infrastructure trouble to
the worker, which retries the batch with backoff, so the partition stops in order and
nothing is dead-lettered for it), and once every partition's lane waits the consumer
pauses them as it does for any backlog. After ``cooldown`` one call is let through
(half-open): its success closes the breaker, its failure opens it for another cooldown.
Business failures (``BusinessFailure``, ``throws=``) and non-retriable errors are the
handler's answer, not the dependency's trouble: they neither count nor trip it.

Open it before the record's own retry budget is spent (``failures`` at most the handler's
``RetryPolicy.max_attempts``), or a record dead-letters before the breaker sees the
outage; registration refuses a breaker that could never open in time.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

from choreo.errors import ConfigurationError, TransportError

log = logging.getLogger("choreo.breaker")


class CircuitOpen(TransportError):
    """A handler's circuit breaker is open: the batch waits and is retried."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        window: float = 30.0,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name:
            raise ConfigurationError("a circuit breaker needs a name")
        if failures < 1 or window <= 0 or cooldown <= 0:
            raise ConfigurationError(
                f"circuit breaker {name!r}: failures >= 1, window > 0 and cooldown > 0"
            )
        self.name = name
        self.failures = failures
        self.window = window
        self.cooldown = cooldown
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.opened_at = 0.0
        self.trips = 0
        self._recent: deque[float] = deque()
        self._probing = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.state.value})"

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` unless a call may go through now (closed, or the one
        probe of a half-open breaker)."""
        if self.state is BreakerState.CLOSED:
            return
        now = self.clock()
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
            log.warning("circuit %s half-open: letting one call through", self.name)
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return
        wait = max(0.0, self.cooldown - (now - self.opened_at))
        raise CircuitOpen(
            f"circuit breaker {self.name!r} is {self.state.value}"
            + (f" for {wait:.1f} s more" if self.state is BreakerState.OPEN else "")
        )

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.warning("circuit %s closed: the dependency answers again", self.name)
        self.state = BreakerState.CLOSED
        self._probing = False
        self._recent.clear()

    def abandon(self) -> None:
        """A call ended without telling anything about the dependency (cancelled, or
        the store failed under it): a half-open breaker lets the next call probe."""
        self._probing = False

    def failure(self) -> bool:
        """Count a retriable failure; True when it opened (or re-opened) the breaker."""
        now = self.clock()
        if self.state is BreakerState.HALF_OPEN:
            self._open(now, "the half-open probe failed")
            return True
        if self.state is BreakerState.OPEN:
            return True
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now, f"{len(self._recent)} failures within {self.window:g} s")
            return True
        return False

    def _open(self, now: float, why: str) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.trips += 1
        self._probing = False
        self._recent.clear()
        log.warning("circuit %s open (%s): consuming stops for %g s", self.name, why,
                    self.cooldown)  # fmt: skip
