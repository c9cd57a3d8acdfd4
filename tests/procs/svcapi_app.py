"""The service of tests/test_service_api.py, for ``choreo run`` (topics named by
``SVCAPI_PREFIX``)."""

from __future__ import annotations

import os

from choreo import Context, Event, Service

PREFIX = os.environ.get("SVCAPI_PREFIX", "svcapi")


class Ask(Event, type="svcapi.Ask", topic=f"{PREFIX}.in"):
    n: int


class Answer(Event, type="svcapi.Answer", topic=f"{PREFIX}.out"):
    n: int


app = Service("svcapi", group=f"{PREFIX}.svcapi")


@app.on_event(Ask, step="answer")
async def answer(event: Ask, ctx: Context) -> Answer:
    return Answer(n=event.n)
