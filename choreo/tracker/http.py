"""What the state API's routes share: JSON responses, bounded query and body parsing, and
the summary of a saga that lists show.

Every input is bounded before it is parsed: a query parameter over ``MAX_QUERY_CHARS``
characters, an integer of more than ``MAX_INT_DIGITS`` digits or a body that does not
arrive within ``BODY_TIMEOUT`` seconds is a 400 (408 for the timeout), never a 500.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from choreo import codec
from choreo.http_guard import json_error, json_response
from choreo.saga.state import SagaState

Route = Callable[[web.Request], Awaitable[web.Response]]

MAX_GID_CHARS = codec.Limits().max_gid_chars
MAX_QUERY_CHARS = 200  # any one query parameter
MAX_INT_DIGITS = 12
MAX_OFFSET = 10**12
MAX_LIMIT = 1000  # summaries in one page of GET /sagas
# Several workers (choreo.tracker.routing): a request one worker sends another carries
# LOCAL_HEADER and is answered from that worker's partitions alone; for a page of
# GET /sagas each is asked its first offset+limit summaries, at most MAX_WINDOW.
LOCAL_HEADER = "X-Choreo-Local"
MAX_WINDOW = 10_000
MAX_ROWS = 1000  # rows of the ops routes' lists (stalled sagas, dead letters)
BODY_TIMEOUT = 10.0  # seconds to receive a request's body once its headers are in


error = json_error  # the API's error body, {"error": message}: the guard's, one place


def problem(status: int, message: str, hint: str = "") -> web.Response:
    return json_response({"error": message, "hint": hint}, status)


def summary(state: SagaState) -> dict[str, Any]:
    """A saga without its payloads and timeline: what a list needs."""
    fields = ("gid", "saga", "status", "version", "started_at", "updated_at", "finished_at")
    data = state.model_dump(mode="json", include={*fields, "reason", "resolved"})
    data["steps"] = {name: step.status.value for name, step in state.steps.items()}
    return data


def text(request: web.Request, name: str, most: int = MAX_QUERY_CHARS) -> str | None:
    """A query parameter as given (None when absent or empty); 400 over ``most`` chars."""
    raw = request.query.get(name, "")
    if len(raw) > most:
        raise web.HTTPBadRequest(reason=f"{name} is {len(raw)} characters, over {most}")
    return raw or None


def known_gid(request: web.Request) -> str:
    """The request's ``{gid}``; 400 when it is longer than any gid choreo accepts."""
    gid = request.match_info["gid"]
    if len(gid) > MAX_GID_CHARS:
        raise web.HTTPBadRequest(reason=f"the gid is {len(gid)} characters, over {MAX_GID_CHARS}")
    return gid


def number(request: web.Request, name: str, default: float | None, low: float) -> float | None:
    raw = text(request, name, 32)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be a number") from None
    if not math.isfinite(value) or value < low:
        raise web.HTTPBadRequest(reason=f"{name} must be >= {low:g}")
    return value


def integer(request: web.Request, name: str, default: int, low: int, most: int) -> int:
    """A whole number in [low, most]; past ``most`` it is ``most``; 400 if not a number
    of at most ``MAX_INT_DIGITS`` ASCII digits, or under ``low``."""
    raw = request.query.get(name, "")
    if not raw:
        return default
    digits = raw.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_INT_DIGITS:
        raise web.HTTPBadRequest(
            reason=f"{name} must be a whole number of at most {MAX_INT_DIGITS} digits"
        )
    value = int(raw)
    if value < low:
        raise web.HTTPBadRequest(reason=f"{name} must be >= {low}")
    return min(value, most)


def page_limit(request: web.Request) -> int:
    """``limit`` of a page of summaries: up to ``MAX_LIMIT``, or ``MAX_WINDOW`` when
    another worker asks for its part of a page."""
    local = request.headers.get(LOCAL_HEADER) == "1"
    return integer(request, "limit", 50, 1, MAX_WINDOW if local else MAX_LIMIT)


def limit(request: web.Request, default: int, most: int) -> int:
    return integer(request, "limit", default, 1, most)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; the app's ``client_max_size`` bounds it (413 past it)."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.json()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise web.HTTPBadRequest(reason="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return body
