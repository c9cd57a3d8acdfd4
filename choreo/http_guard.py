"""What every HTTP surface choreo serves shares: a bearer token checked in constant time,
open access only on a loopback address, bounded request lines and headers, a header read
timeout, and errors as JSON instead of aiohttp's HTML pages.

Used by the tracker's state API and by a service's metrics and health endpoints.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from aiohttp import web

from choreo import codec
from choreo.errors import ConfigurationError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_LINE = 4096  # the request line, and any one header
MAX_HEADERS = 64
HEADER_TIMEOUT = 15.0
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # visible ASCII: it travels in a header


def new_token() -> str:
    """A random bearer token (32 URL-safe characters, 192 bits), never starting with "-":
    printed for people to pass as ``--token VALUE``, where argparse would take a leading
    dash for an option (one token in 64 did, and the command refused it)."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ConfigurationError("a token must be 1 to 512 visible ASCII characters (no spaces)")
    return token


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.dumps(data), status=status, content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def token_guard(
    what: str, token: str | None, *, open_access: bool, public: Collection[str] = ()
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware requiring ``Authorization: Bearer <token>`` on every path but
    ``public``. Without ``token`` it needs ``open_access=True`` (ConfigurationError
    otherwise): nothing is served open by accident. HTTP errors become JSON."""
    if token is not None:
        expected: bytes | None = f"Bearer {check_token(token)}".encode()
    elif open_access:
        expected = None
    else:
        raise ConfigurationError(
            f"the {what} needs a bearer token; pass open_access=True to serve it without"
        )
    open_paths = frozenset(public)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in open_paths:
            try:
                given = request.headers.get("Authorization", "").encode()
            except UnicodeError:
                return json_error(400, "the Authorization header is not UTF-8")
            if not hmac.compare_digest(given, expected):
                return json_error(401, "missing or wrong bearer token")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason)

    return guard


def refuse_open_beyond_loopback(what: str, host: str, token: str | None, open_access: bool) -> None:
    if open_access and token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the {what} without a token on {host}: only a loopback "
            "address (127.0.0.1, ::1, localhost) may be served open"
        )


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, host: str, port: int, header_timeout: float = HEADER_TIMEOUT
) -> AsyncIterator[int]:
    """Serve ``app`` until the block exits; yields the bound port (0 picks a free one)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        # aiohttp arms this timer when a connection opens, and closes a connection whose
        # request headers are not complete when it fires: the header read timeout.
        keepalive_timeout=header_timeout,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
