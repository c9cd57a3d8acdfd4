"""Keeping secrets out of what choreo prints: URLs carry passwords
(``redis://:s3cret@host:6379/0``), and messages, logs and banners show URLs."""

from __future__ import annotations


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
