"""What the state API's routes share: JSON responses, query and body parsing, and the
summary of a saga that lists show."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from choreo import codec
from choreo.saga.state import SagaState

Route = Callable[[web.Request], Awaitable[web.Response]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def problem(status: int, message: str, hint: str = "") -> web.Response:
    return json_response({"error": message, "hint": hint}, status)


def summary(state: SagaState) -> dict[str, Any]:
    """A saga without its payloads and timeline: what a list needs."""
    fields = ("gid", "saga", "status", "version", "started_at", "updated_at", "finished_at")
    data = state.model_dump(mode="json", include={*fields, "reason", "resolved"})
    data["steps"] = {name: step.status.value for name, step in state.steps.items()}
    return data


def number(request: web.Request, name: str, default: float | None, low: float) -> float | None:
    raw = request.query.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be a number") from None
    if not math.isfinite(value) or value < low:
        raise web.HTTPBadRequest(reason=f"{name} must be >= {low:g}")
    return value


def limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise web.HTTPBadRequest(reason="limit must be a positive integer")
    return min(int(raw), most)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return body
