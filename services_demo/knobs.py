"""Failure knobs: how a demo run makes sagas fail, read once and passed explicitly.

Each service's ``build_app(knobs)`` takes a ``Knobs``; ``choreo run`` gets one from the
environment (``Knobs.from_env()``), the embedded demo builds its own. Every decision is a
pure function of the seed and the order id, so all processes of one run agree on it and
a rerun with the same seed fails the same orders.

=============================  =====================================================
``CHOREO_DEMO_DECLINE_ABOVE``  payment declines orders whose amount is above this
``CHOREO_DEMO_FAILURE_RATE``   share of payments declined at random (0.0 - 1.0)
``CHOREO_DEMO_STALL_RATE``     share of shipping requests the carrier does not confirm
``CHOREO_DEMO_STALL_SECONDS``  0: an unconfirmed shipment is never confirmed (silent);
                               > 0: it is confirmed that late (after the deadline)
``CHOREO_DEMO_SEED``           seed of the random choices (an integer)
=============================  =====================================================
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from choreo import ConfigurationError

PREFIX = "CHOREO_DEMO_"


@dataclass(frozen=True)
class Knobs:
    decline_above: int | None = None
    failure_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("failure_rate", "stall_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(f"{name} must be within 0.0 and 1.0")
        if self.stall_seconds < 0:
            raise ConfigurationError("stall_seconds must be >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Knobs:
        env = os.environ if env is None else env

        def read(name: str) -> str | None:
            value = env.get(PREFIX + name, "").strip()
            return value or None

        decline = read("DECLINE_ABOVE")
        try:
            return cls(
                decline_above=None if decline is None else int(decline),
                failure_rate=float(read("FAILURE_RATE") or 0.0),
                stall_rate=float(read("STALL_RATE") or 0.0),
                stall_seconds=float(read("STALL_SECONDS") or 0.0),
                seed=int(read("SEED") or 0),
            )
        except ValueError as exc:
            raise ConfigurationError(f"a {PREFIX}* variable is not a number: {exc}") from None

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` return these knobs (for subprocesses);
        every one is set, so none leaks in from the parent's environment."""
        env = {
            "DECLINE_ABOVE": "" if self.decline_above is None else str(self.decline_above),
            "FAILURE_RATE": repr(self.failure_rate),
            "STALL_RATE": repr(self.stall_rate),
            "STALL_SECONDS": repr(self.stall_seconds),
            "SEED": str(self.seed),
        }
        return {PREFIX + name: value for name, value in env.items()}

    def chance(self, order_id: str, purpose: str) -> float:
        """A number in [0, 1) fixed by the seed, the order and what it decides; a hash, not
        ``random``, so that redeliveries and other processes get the same answer."""
        digest = hashlib.sha256(f"{self.seed}:{purpose}:{order_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def decline_reason(self, order_id: str, amount: int) -> str | None:
        """Why payment should decline this order, or None to go ahead."""
        if self.decline_above is not None and amount > self.decline_above:
            return f"amount {amount} is above the card limit {self.decline_above}"
        if self.chance(order_id, "payment") < self.failure_rate:
            return "declined by the card issuer"
        return None

    def stalls(self, order_id: str) -> bool:
        """Whether the carrier leaves this order's shipment unconfirmed."""
        return self.chance(order_id, "shipping") < self.stall_rate


def service_urls(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``broker=`` and ``store=`` for a demo Service: ``CHOREO_BROKER`` and ``CHOREO_STORE``,
    the in-memory default when unset."""
    env = os.environ if env is None else env
    return {
        "broker": env.get("CHOREO_BROKER") or "memory://",
        "store": env.get("CHOREO_STORE") or "memory://",
    }
