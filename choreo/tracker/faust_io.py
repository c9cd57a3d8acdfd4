"""faust's spelling of choreo's things: a faust message as a ``Record``, choreo's SASL/TLS
options as faust credentials, and faust's and aiokafka's errors as ``TransportError``."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import faust
from faust.exceptions import FaustError
from faust.types import TP

from choreo.errors import TransportError
from choreo.transport.base import Record
from choreo.transport.kafka_common import TRANSIENT
from choreo.transport.kafka_config import security_options

#: The broker did not answer: aiokafka's errors, the network's, and faust's own.
_FAUST_TRANSIENT: tuple[type[BaseException], ...] = (*TRANSIENT, FaustError)


def faust_credentials(security: Mapping[str, Any]) -> Any:
    """faust's spelling of choreo's ``security`` options (None: plaintext).

    faust takes SASL over TLS from the presence of an SSL context, so SASL_SSL without
    a CA file gets the system's default verifying context: without one it would quietly
    become SASL_PLAINTEXT and send the password in the clear."""
    options = security_options(security)
    context = options.get("ssl_context")
    protocol = str(options.get("security_protocol", "")).upper()
    if context is None and protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context()
    if options.get("sasl_mechanism"):
        return faust.SASLCredentials(
            username=options.get("sasl_plain_username"),
            password=options.get("sasl_plain_password"),
            mechanism=options["sasl_mechanism"],
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_tp(topic: str, partition: int) -> Any:
    """faust's TopicPartition (what its consumer's seek and offset calls take)."""
    return TP(topic, partition)


def to_record(message: Any) -> Record:
    """A faust ``ConsumerMessage`` (raw key and value) as a choreo ``Record``."""
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    timestamp = message.timestamp
    return Record(
        topic=str(message.topic),
        partition=int(message.partition),
        offset=int(message.offset),
        key=message.key,
        value=message.value if message.value is not None else b"",
        headers=tuple((str(k), bytes(v or b"")) for k, v in headers),
        timestamp_ms=round(timestamp * 1000) if timestamp and timestamp > 0 else 0,
    )


@contextlib.contextmanager
def faust_errors(what: str) -> Iterator[None]:
    """faust's own producer (the table's changelog) raises aiokafka's and faust's errors;
    they mean the broker did not answer, which the rest of choreo calls TransportError."""
    try:
        yield
    except _FAUST_TRANSIENT as exc:
        raise TransportError(f"{what}: {exc}") from exc
