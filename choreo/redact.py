"""Keeping secrets out of what choreo prints: URLs carry passwords
(``redis://:s3cret@host:6379/0``), and messages, logs and banners show URLs; the Kafka
clients' debug logs carry SASL credentials."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (a lone token,
    which Redis takes as the password, too); the rest is kept as written."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))  # fmt: skip
    netloc, tail = rest[:end], rest[end:]
    if "@" not in netloc:
        return url
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon and user else "***"
    return f"{scheme}://{shown}@{hostport}{tail}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it redacted (see ``redact_url``): for
    messages that may quote a URL, such as a client library's error."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


# The Kafka clients' own loggers. At DEBUG aiokafka logs every request it sends, the
# SASL handshake with its username and password included, and faust and mode log their
# configuration; so they stay at WARNING, even under ``choreo -v``, unless named.
PROTOCOL_LOGGERS = ("aiokafka", "faust", "mode")
PROTOCOL_ENV = "CHOREO_LOG_PROTOCOL"


def quiet_protocol_loggers(environ: Mapping[str, str]) -> list[str]:
    """Set the protocol loggers to WARNING, except those ``CHOREO_LOG_PROTOCOL`` names
    (comma-separated logger names, or ``1``/``all`` for every one), which follow the
    root logger: asking for protocol logs is asking, by name, for what may hold secrets.
    Returns the names quieted."""
    asked = {name.strip() for name in environ.get(PROTOCOL_ENV, "").split(",") if name.strip()}
    everything = bool(asked & {"1", "all", "true", "yes"})
    quieted = []
    for name in PROTOCOL_LOGGERS:
        logger = logging.getLogger(name)
        if everything or name in asked:
            logger.setLevel(logging.NOTSET)
        else:
            logger.setLevel(logging.WARNING)
            quieted.append(name)
    return quieted
