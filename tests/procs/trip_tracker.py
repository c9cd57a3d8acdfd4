"""The trip contract for ``choreo tracker tests.procs.trip_tracker:contract`` run as a
subprocess by test_faust_tracker. The CLI takes a module attribute, not a factory call,
so the contract's timing knobs come from the environment:

``TRIP_DEADLINE``, ``TRIP_RETRIES``, ``TRIP_BACKOFF``, ``TRIP_BACKOFF_MAX``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from choreo.saga import SagaContract
from tests.scenarios.trip import trip_contract


def knobs(deadline: float, retries: int, backoff: float, backoff_max: float) -> dict[str, str]:
    """The environment that makes ``contract`` equal ``trip_contract(...)`` of these."""
    return {
        "TRIP_DEADLINE": str(deadline),
        "TRIP_RETRIES": str(retries),
        "TRIP_BACKOFF": str(backoff),
        "TRIP_BACKOFF_MAX": str(backoff_max),
    }


def contract_from(env: Mapping[str, str]) -> SagaContract:
    return trip_contract(
        deadline=float(env.get("TRIP_DEADLINE", "1.0")),
        compensation_retries=int(env.get("TRIP_RETRIES", "3")),
        retry_backoff=float(env.get("TRIP_BACKOFF", "0.5")),
        retry_backoff_max=float(env.get("TRIP_BACKOFF_MAX", "2.0")),
    )


contract = contract_from(os.environ)
