"""Real Kafka and Redis servers for development and tests, run as plain processes (no Docker).

`python -m choreo.local.kafka_broker up|down|status` and `python -m choreo.local.redis_server
up|down|status` start and stop them; the test suite uses the same classes.

The process helpers they are built on are public too, for programs that start servers or
child processes of their own (the multi-process demo does): ``cache_dir``, ``free_port``,
``pdeathsig_preexec``, ``tail``, ``terminate``; and ``redact_url``, to print a server's URL
without its password. ``KafkaBroker`` and ``RedisServer`` are
imported on first use, so ``python -m choreo.local.kafka_broker`` runs its module once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from choreo.local._process import (
    LocalServerError,
    LocalServerUnavailable,
    cache_dir,
    free_port,
    pdeathsig_preexec,
    tail,
    terminate,
)
from choreo.redact import redact_url

if TYPE_CHECKING:
    from choreo.local.kafka_broker import KafkaBroker
    from choreo.local.postgres_server import PostgresServer
    from choreo.local.redis_server import RedisServer

__all__ = [
    "KafkaBroker",
    "LocalServerError",
    "LocalServerUnavailable",
    "PostgresServer",
    "RedisServer",
    "cache_dir",
    "free_port",
    "pdeathsig_preexec",
    "redact_url",
    "tail",
    "terminate",
]

_LAZY = {
    "KafkaBroker": "choreo.local.kafka_broker",
    "PostgresServer": "choreo.local.postgres_server",
    "RedisServer": "choreo.local.redis_server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
