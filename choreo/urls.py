"""Transports and stores chosen by URL: ``memory://``, ``kafka://host:port``,
``redis://host:port/db``, ``postgresql://user@host:port/db``. Heavy clients are imported
only when their scheme is used."""

from __future__ import annotations

from typing import Any

from choreo.errors import ConfigurationError
from choreo.redact import redact_url
from choreo.store.base import Store
from choreo.store.memory import MemoryStore
from choreo.transport.base import Transport
from choreo.transport.memory import MemoryBroker, MemoryTransport


def scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a URL; expected e.g. memory:// or kafka://host:9092"
        )
    return head


def open_transport(
    url: str, *, partitions: int = 4, memory_broker: MemoryBroker | None = None, **options: Any
) -> Transport:
    kind = scheme(url)
    if kind == "memory":
        return MemoryTransport(memory_broker or MemoryBroker(partitions), url)
    if kind == "kafka":
        from choreo.transport.kafka import KafkaTransport

        return KafkaTransport(url, partitions=partitions, **options)
    raise ConfigurationError(
        f"unknown broker scheme {kind!r} in {redact_url(url)!r}; use memory:// or kafka://"
    )


def open_store(url: str, **options: Any) -> Store:
    kind = scheme(url)
    if kind == "memory":
        return MemoryStore(url, **options)
    if kind in ("redis", "rediss", "unix"):
        from choreo.store.redis import RedisStore

        return RedisStore(url, **options)
    if kind in ("postgresql", "postgres"):
        from choreo.store.postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ConfigurationError(
        f"unknown store scheme {kind!r} in {redact_url(url)!r}; "
        "use memory://, redis:// or postgresql://"
    )
