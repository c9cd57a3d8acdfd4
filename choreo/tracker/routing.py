"""One state API over several tracker workers.

Workers of one app id split the saga topics' partitions (faust's consumer group), so each
holds the states of its own partitions only. Every worker's API still answers for all of
them, through an aiohttp middleware placed after the token guard:

- a route about one saga (``/sagas/{gid}``, ``.../why``, ``.../commands``) is served here
  when this worker holds the saga, else forwarded, method, query, body and bearer token as
  received, to the worker owning the gid's partition (``Workers.owner``: faust's own
  assignment, see ``choreo.tracker.faust_workers``); its answer is returned as it is, with
  ``X-Choreo-Worker`` naming who answered. A worker that does not answer is a 503 naming it;
- a route about all sagas (``/sagas``, ``/counts``, ``/stalled``, ``/latencies``) is
  answered here and by every other worker at once, each within ``FANOUT_TIMEOUT``, and
  merged (``choreo.tracker.merge``); a worker that did not answer is listed in the
  answer's ``unanswered`` (``[{"worker", "error"}]``), never silently left out.

A request one worker sends another carries ``X-Choreo-Local: 1``: it is answered from the
receiving worker's own partitions, never routed again (no loops; a client may send it too,
to ask one worker only). ``GET /workers`` shows which worker owns which partitions.
``/metrics`` stays per worker: Prometheus scrapes every worker and sums (an aggregated
/metrics would be counted once per worker scraped).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from choreo import codec
from choreo.http_guard import json_response
from choreo.tracker import merge
from choreo.tracker.http import (
    LOCAL_HEADER,
    MAX_LIMIT,
    MAX_OFFSET,
    MAX_ROWS,
    MAX_WINDOW,
    integer,
    known_gid,
    problem,
)

WORKER_HEADER = "X-Choreo-Worker"
FANOUT_TIMEOUT = 5.0  # seconds a worker has to answer its part of a list or count
# Seconds the owner has to answer a forwarded request: ``why`` reads lag and dead letters
# from the broker; under the CLI's own 15 s, so the CLI hears which worker was slow.
FORWARD_TIMEOUT = 12.0
MAX_PEERS = 64  # workers asked at once; more wait their turn
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a worker's answer read at most this far

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Workers(Protocol):
    """Who serves which partitions, as the workers' group sees it."""

    def me(self) -> str:
        """This worker's URL as the others reach it."""
        ...

    def owner(self, gid: str) -> str | None:
        """The URL of the worker owning ``gid``'s partition; None while nobody does (a
        rebalance is under way)."""
        ...

    def others(self) -> list[str]:
        """Every other worker's URL."""
        ...

    def distribution(self) -> dict[str, list[int]]:
        """Worker URL -> the partitions it owns, every worker of the group."""
        ...


SESSION = web.AppKey("choreo.routing.session", aiohttp.ClientSession)
ONE_SAGA = frozenset({"/sagas/{gid}", "/sagas/{gid}/why", "/sagas/{gid}/commands"})


def add_routing(app: web.Application, workers: Workers) -> None:
    """Route ``app``'s saga routes across ``workers`` (call before the app starts)."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as client:
            app[SESSION] = client
            yield

    async def listing(request: web.Request) -> web.Response:
        return json_response({"me": workers.me(), "workers": workers.distribution()})

    app.cleanup_ctx.append(session)
    app.middlewares.append(_middleware(workers))
    app.router.add_get("/workers", listing)


def _middleware(workers: Workers) -> Any:
    @web.middleware
    async def route(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info.route.resource
        path = info.canonical if info is not None else ""
        if request.headers.get(LOCAL_HEADER) == "1":
            return await handler(request)
        if path in ONE_SAGA:
            return await _one_saga(request, handler, workers)
        merger = _MERGERS.get((request.method, path))
        if merger is None:
            return await handler(request)
        return await _fan_out(request, handler, workers, merger)

    return route


async def _one_saga(request: web.Request, handler: Handler, workers: Workers) -> web.StreamResponse:
    gid = known_gid(request)
    owner = workers.owner(gid)
    if owner == workers.me():
        return await handler(request)  # ours: a 404 is then the answer
    if owner is None:  # nobody's right now: answer if it is here, else say so
        found = await handler(request)
        if found.status != 404 or not workers.others():
            return found
        return problem(
            503,
            "no tracker worker owns this saga's partition right now (the workers are rebalancing)",
            "try again in a few seconds; GET /workers shows who owns which partitions",
        )
    body = await request.read() if request.can_read_body else None
    try:
        status, content_type, raw = await _ask(
            request, owner, request.path_qs, FORWARD_TIMEOUT, body
        )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return problem(
            503,
            f"the tracker worker owning this saga's partition ({owner}) did not answer: "
            f"{_reason(exc)}",
            "it may be restarting; its partitions move to another worker within the "
            "group's session timeout, try again shortly",
        )
    response = web.Response(body=raw, status=status)
    response.headers["Content-Type"] = content_type
    response.headers[WORKER_HEADER] = owner
    return response


async def _ask(
    request: web.Request, worker: str, path_qs: str, timeout: float, body: bytes | None = None
) -> tuple[int, str, bytes]:
    """Send ``request``'s method and bearer token (and ``body``) to ``worker``'s
    ``path_qs``; its status, content type and body, within ``timeout`` seconds."""
    headers = {LOCAL_HEADER: "1", "Accept": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    if body is not None:
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
    client = request.app[SESSION]
    url = worker.rstrip("/") + path_qs
    limit = aiohttp.ClientTimeout(total=timeout)
    async with client.request(
        request.method, url, data=body, headers=headers, timeout=limit
    ) as answer:
        raw = bytearray()
        async for chunk in answer.content.iter_any():  # to the end, within the bound
            raw += chunk
            if len(raw) > MAX_ANSWER_BYTES:
                raise ValueError(f"its answer is over {MAX_ANSWER_BYTES} bytes")
        content_type = answer.headers.get("Content-Type", "application/json")
        return answer.status, content_type, bytes(raw)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


Merger = Callable[[web.Request, Sequence[dict[str, Any]]], dict[str, Any]]


async def _fan_out(
    request: web.Request, handler: Handler, workers: Workers, merger: Merger
) -> web.StreamResponse:
    query = _peer_query(request)
    # This worker's part, asked as the others are (the same query and header).
    headers = {**request.headers, LOCAL_HEADER: "1"}
    local = await handler(request.clone(rel_url=request.rel_url.with_query(query), headers=headers))
    if local.status != 200 or not isinstance(local, web.Response) or local.body is None:
        return local  # a bad query: the same answer the other workers would give
    bodies: list[dict[str, Any]] = [codec.loads(bytes(local.body))]  # type: ignore[arg-type]
    others = workers.others()
    path_qs = str(request.rel_url.with_query(query))
    turns = asyncio.Semaphore(MAX_PEERS)

    async def ask(worker: str) -> tuple[dict[str, Any] | None, str]:
        async with turns:
            return await _json_of(request, worker, path_qs)

    answers = await asyncio.gather(*(ask(w) for w in others))
    unanswered = []
    for worker, (body, error) in zip(others, answers, strict=True):
        if body is not None:
            bodies.append(body)
        else:
            unanswered.append({"worker": worker, "error": error})
    merged = merger(request, bodies)
    merged["workers"] = len(bodies)
    merged["unanswered"] = unanswered
    return json_response(merged)


def _peer_query(request: web.Request) -> dict[str, str]:
    """The query every worker is asked: for a page, its first offset+limit items."""
    query = dict(request.query)
    if request.path == "/sagas":
        offset = integer(request, "offset", 0, 0, MAX_OFFSET)
        limit = integer(request, "limit", 50, 1, MAX_LIMIT)
        if offset + limit > MAX_WINDOW:
            raise web.HTTPBadRequest(
                reason=f"with several tracker workers a page ends at most {MAX_WINDOW} deep "
                f"(offset + limit); narrow it with status, saga or since"
            )
        query.update(offset="0", limit=str(offset + limit))
    return query


async def _json_of(
    request: web.Request, worker: str, path_qs: str
) -> tuple[dict[str, Any] | None, str]:
    """A worker's JSON answer, or None and why there is none."""
    try:
        status, _type, raw = await _ask(request, worker, path_qs, FANOUT_TIMEOUT)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, _reason(exc)
    if status != 200:
        return None, f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    try:
        body = codec.loads(raw)
    except ValueError:
        return None, "its answer is not JSON"
    if not isinstance(body, dict):
        return None, "its answer is not a JSON object"
    return body, ""


def _page(request: web.Request, bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    offset = integer(request, "offset", 0, 0, MAX_OFFSET)
    return merge.pages(bodies, offset, integer(request, "limit", 50, 1, MAX_LIMIT))


def _stalled(request: web.Request, bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return merge.stalled(bodies, integer(request, "limit", 200, 1, MAX_ROWS))


_MERGERS: dict[tuple[str, str], Merger] = {
    ("GET", "/sagas"): _page,
    ("GET", "/counts"): lambda _request, bodies: merge.counts(bodies),
    ("GET", "/latencies"): lambda _request, bodies: merge.latencies(bodies),
    ("GET", "/stalled"): _stalled,
}
