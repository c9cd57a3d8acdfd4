"""What every system's records look like, and the topics of one round (standard library
only: the FastStream step imports nothing else from here, in its own virtualenv).

Every system moves the same payload, ``{"order_id": <gid>, "amount": <int>}`` as JSON,
keyed by the gid, through ``<prefix>.start -> .s1 -> .s2 -> .done``. choreo's records
also carry its envelope headers (docs/wire-format.md); the driver writes them by hand
for ``start``, as a client in another language would.
"""

from __future__ import annotations

import json
import os
import time

PARTITIONS = 6
STAGES = ("start", "s1", "s2", "done")
CHOREO_SAGA = "bench"
#: choreo event type of each stage's event (see choreo_app)
CHOREO_TYPES = {
    "start": "bench.Start",
    "s1": "bench.Step1Done",
    "s2": "bench.Step2Done",
    "done": "bench.Done",
}


#: system (e)'s step2 keeps its counters in PostgreSQL (one row per counter key)
COUNTERS_DDL = "CREATE TABLE IF NOT EXISTS bench_counters (k text PRIMARY KEY, n bigint NOT NULL)"


def topics(prefix: str) -> dict[str, str]:
    return {stage: f"{prefix}.{stage}" for stage in STAGES}


def payload(gid: str, amount: int) -> bytes:
    return json.dumps({"order_id": gid, "amount": amount}, separators=(",", ":")).encode()


def choreo_headers(gid: str) -> list[tuple[str, bytes]]:
    """The envelope headers of a saga's first event, as ``Envelope.first`` makes them."""
    event_id = os.urandom(16).hex()
    pairs = (
        ("choreo-type", CHOREO_TYPES["start"]),
        (
            "choreo-id",
            f"{event_id[:8]}-{event_id[8:12]}-4{event_id[13:16]}-a{event_id[17:20]}-"
            f"{event_id[20:]}",
        ),
        ("choreo-gid", gid),
        ("choreo-saga", CHOREO_SAGA),
        ("choreo-step", ""),
        ("choreo-op", ""),
        ("choreo-outcome", ""),
        ("choreo-causation", ""),
        ("choreo-occurred-at", str(round(time.time() * 1000))),
        ("choreo-version", "1"),
        ("choreo-attempt", "1"),
        ("choreo-source", "driver"),
        ("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"),
    )
    return [(name, value.encode()) for name, value in pairs]
