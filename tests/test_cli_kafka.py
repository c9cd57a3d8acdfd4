"""Every ``choreo`` command against the faust tracker on real Kafka and Redis.

The tracker runs as ``choreo tracker`` in a subprocess with an app id of its own (as in
test_faust_tracker, whose helpers this module borrows); the trip services run in a
``Harness`` on an event loop in a thread, because the CLI blocks on HTTP in the test's
thread. The services keep the default consumer groups (``choreo.<service>``), the ones
the tracker's ``why`` reads the lag of. The shared topics are dropped before and after
the module, so the tracker starts fresh and later modules do not wade through these
sagas; every check is still made per gid.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from choreo.local._process import free_port
from choreo.testing import Harness
from choreo.transport.base import TopicPartition
from tests.cli_support import api, at, choreo, eventually
from tests.procs.tracker_api import Served
from tests.scenarios.trip import TOPIC, build_travel
from tests.test_faust_tracker import (
    APP_PREFIX,
    TrackerProcess,
    drop_topics,
    read_topics,
    settled,
    start,
    tracker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]
T = TypeVar("T")

# Long enough to ask `why` about a running saga and compensate it by hand before its
# deadline fires; short retries, so a failing compensation is STUCK within seconds.
DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX = 8.0, 2, 0.5, 1.0
PLANS: dict[str, dict[str, str | float]] = {
    "completed": {},
    "compensated": {"silent": "car"},  # car never answers: timed out, compensated
    "stuck": {"fail": "car", "stuck": "hotel"},  # the hotel's compensation keeps failing
    "dead": {"lost": "hotel"},  # the hotel dead-letters its trigger: timed out too
}


class ServicesThread:
    """The trip services in a ``Harness`` on an event loop in a thread."""

    def __init__(self, broker: str, store: str) -> None:
        self.broker, self.store = broker, store
        self.loop: asyncio.AbstractEventLoop | None = None
        self.h: Harness | None = None
        self._stop: asyncio.Event | None = None
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="trips")

    async def _main(self) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        travel = build_travel("choreo", DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX)
        try:
            async with Harness(*travel.services, broker=self.broker, store=self.store) as h:
                self.h = h
                self._ready.put(None)
                await self._stop.wait()
        except BaseException as exc:
            self._ready.put(exc)
            raise

    def __enter__(self) -> ServicesThread:
        self._thread.start()
        failed = self._ready.get(timeout=60)
        if failed is not None:
            self._thread.join(10)
            raise RuntimeError(f"the trip services failed to start: {failed!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, **plan: str | float) -> tuple[str, str]:
        """(gid, trip id) of a new trip."""
        assert self.h is not None
        return self.run(start(self.h, **plan))


@dataclass
class Live:
    served: Served  # the tracker's URL and the gid of each plan
    trips: dict[str, str]  # the trip id of each plan
    tracker: TrackerProcess
    services: ServicesThread

    def saga(self, gid: str) -> dict[str, Any]:
        found: dict[str, Any] = api(self.served, f"/sagas/{gid}")
        return found

    def noted(self, gid: str, text: str) -> bool:
        return any(text in entry["note"] for entry in self.saga(gid)["timeline"])


@pytest.fixture(scope="module")
def live(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    asyncio.run(drop_topics(kafka_bootstrap))
    broker = f"kafka://{kafka_bootstrap}"
    tracker = TrackerProcess(
        broker,
        f"{APP_PREFIX}cli-{uuid.uuid4().hex[:8]}",
        tmp_path_factory.mktemp("cli-kafka"),
        tracker_env(DEADLINE, RETRIES, BACKOFF, BACKOFF_MAX),
    )
    tracker.start()
    try:
        tracker.wait_ready()
        with ServicesThread(broker, redis_url) as services:
            started = {name: services.start(**plan) for name, plan in PLANS.items()}
            gids = {name: gid for name, (gid, _) in started.items()}
            services.run(settled(tracker, gids.values(), timeout=60))
            trips = {name: trip for name, (_, trip) in started.items()}
            yield Live(Served(tracker.url, gids, tracker.token), trips, tracker, services)
    finally:
        code = tracker.stop()
        asyncio.run(drop_topics(kafka_bootstrap))
    assert code == 0, f"tracker did not stop cleanly ({code})\n{tracker.output()}"


# -- reading -------------------------------------------------------------------------------


def test_sagas_list(capsys: pytest.CaptureFixture[str], live: Live) -> None:
    gids = live.served.gids
    code, out, err = choreo(capsys, *at(live.served, "sagas", "list"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["GID", "SAGA", "STATUS", "AGE", "WAITING", "ON"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert {name: rows[gid][1:3] for name, gid in gids.items()} == {
        "completed": ["trip", "COMPLETED"],
        "compensated": ["trip", "COMPENSATED"],
        "stuck": ["trip", "STUCK"],
        "dead": ["trip", "COMPENSATED"],
    }
    assert rows[gids["stuck"]][-2:] == ["undo", "hotel"]
    total = api(live.served, "/counts")["total"]
    assert lines[-1] == f"{total} of {total} saga(s)"

    code, out, _ = choreo(capsys, *at(live.served, "sagas", "list", "--state", "stuck"))
    assert code == 0
    stuck = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert gids["stuck"] in stuck
    assert out.splitlines()[-1] == f"{len(stuck)} of {len(stuck)} saga(s)"

    code, out, _ = choreo(capsys, *at(live.served, "sagas", "list", "--json"))
    page = json.loads(out)
    assert page == api(live.served, "/sagas?limit=50&offset=0")
    mine = {item["gid"]: item for item in page["items"] if item["gid"] in gids.values()}
    assert mine[gids["stuck"]]["steps"] == {
        "flight": "DONE",
        "hotel": "COMPENSATING",
        "car": "FAILED",
    }
    assert mine[gids["compensated"]]["reason"] == "step car timed out"
    _, out, _ = choreo(capsys, *at(live.served, "sagas", "list", "--json", "--state", "STUCK"))
    assert {item["status"] for item in json.loads(out)["items"]} == {"STUCK"}


def test_saga_show(capsys: pytest.CaptureFixture[str], live: Live) -> None:
    gid = live.served.gids["stuck"]
    code, out, _ = choreo(capsys, *at(live.served, "saga", "show", gid))
    assert code == 0
    assert out.startswith(f"saga trip  {gid}\nstatus    STUCK  (compensation of hotel")
    assert f"waiting   undo hotel (attempt {RETRIES})" in out
    steps = out.split("\nsteps\n")[1].split("\n\ntimeline\n")[0]
    assert [line.split()[:2] for line in steps.splitlines()[1:]] == [
        ["flight", "DONE"],
        ["hotel", "COMPENSATING"],
        ["car", "FAILED"],
    ]
    assert "no cars" in steps
    timeline = out.split("\ntimeline\n")[1].splitlines()
    assert timeline[0].split() == ["TIME", "SOURCE", "EVENT", "STEP", "OP/OUTCOME", "NOTE"]
    first = ["airline", "TripBooked", "flight", "-", "flight", "dispatched"]
    assert timeline[1].split()[1:] == first
    assert any(
        "tracker  CancelHotel" in line and f"issued (attempt {RETRIES})" in line
        for line in timeline
    )
    assert any("stuck: compensation of hotel" in line for line in timeline)
    _, out, _ = choreo(capsys, *at(live.served, "saga", "show", gid, "--json"))
    state = json.loads(out)
    assert state == live.saga(gid)
    assert state["steps"]["hotel"]["compensation_attempts"] == RETRIES


def test_saga_why_of_a_stuck_and_a_dead_lettered_saga(
    capsys: pytest.CaptureFixture[str], live: Live
) -> None:
    stuck, dead = live.served.gids["stuck"], live.served.gids["dead"]
    # The hotel service commits what it dead-lettered: no lag left on the gid's partition.
    eventually(lambda: api(live.served, f"/sagas/{stuck}/why")["waiting"][0]["lag"] == 0)
    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", stuck))
    assert code == 0
    lines = out.splitlines()
    reason = f"compensation of hotel unconfirmed after {RETRIES} attempts"
    assert lines[:2] == [f"saga trip  {stuck}", f"STUCK: {reason}"]
    assert "step hotel: waits for hotel to handle CancelHotel (compensate), for " in out
    assert "  group     choreo.hotel" in lines
    assert f"  lag       0 on {TOPIC}[" in out
    assert "  why       hotel dead-lettered this saga's events (" in out
    assert "dead letters of this saga (`choreo dlq show ID`, `choreo dlq replay ID`)" in out
    assert "ConnectionError: hotel provider unreachable" in out

    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", stuck, "--json"))
    why = json.loads(out)
    assert (why["gid"], why["status"], why["contract_known"]) == (stuck, "STUCK", True)
    [hotel] = why["waiting"]
    assert {k: hotel[k] for k in ("step", "op", "service", "event_type", "topic", "group")} == {
        "step": "hotel",
        "op": "compensate",
        "service": "hotel",
        "event_type": "CancelHotel",
        "topic": TOPIC,
        "group": "choreo.hotel",
    }
    assert isinstance(hotel["partition"], int)
    assert hotel["committed"] == hotel["end_offset"] > 0
    assert hotel["lag"] == 0
    assert hotel["attempts"] == RETRIES
    letters = [d for d in why["dead_letters"] if d["service"] == "hotel"]
    assert len(letters) >= RETRIES
    assert {(d["gid"], d["event_type"], d["kind"]) for d in letters} == {
        (stuck, "CancelHotel", "budget")
    }
    assert set(hotel["dead_letters"]) == {d["id"] for d in letters}

    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", dead, "--json"))
    why = json.loads(out)
    assert (why["status"], why["waiting"], why["summary"]) == (
        "COMPENSATED",
        [],
        "COMPENSATED: nothing to wait for",
    )
    [letter] = why["dead_letters"]
    assert (letter["service"], letter["event_type"], letter["kind"], letter["reason"]) == (
        "hotel",
        "FlightBooked",
        "failed",
        "Choked: hotel service choked on its trigger",
    )
    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", dead))
    assert out.splitlines()[1] == "COMPENSATED: nothing to wait for"
    assert letter["id"] in out


def test_dashboard_once(capsys: pytest.CaptureFixture[str], live: Live) -> None:
    gids = live.served.gids
    counts = api(live.served, "/counts")
    code, out, err = choreo(capsys, *at(live.served, "dashboard", "--once"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert f"choreo dashboard  {live.served.url}" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.strip("│ ").startswith("RUNNING"))
    statuses = ("RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "STUCK")
    by_status = [str(counts["by_status"].get(s, 0)) for s in statuses]
    assert lines[header + 1].strip("│ ").split() == [*by_status, str(counts["total"]), "-"]
    assert counts["by_status"]["STUCK"] >= 1
    assert f"STUCK ({counts['by_status']['STUCK']})" in out
    row = next(line for line in lines if gids["stuck"] in line)
    assert f"undo hotel (attempt {RETRIES})" in row
    assert "compensation of hotel unconfirmed" in row
    assert gids["completed"] not in out
    assert "│ trip │ flight │" in out  # the step latencies


def test_dlq_list_show_and_replay(capsys: pytest.CaptureFixture[str], live: Live) -> None:
    dead = live.served.gids["dead"]
    code, out, err = choreo(capsys, *at(live.served, "dlq", "list"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AT", "GID", "SERVICE", "EVENT", "KIND", "REASON"]
    assert lines[-1] == f"{len(lines) - 2} dead letter(s)"
    assert {live.served.gids["stuck"], dead} <= {line.split()[2] for line in lines[1:-1]}

    code, out, _ = choreo(capsys, *at(live.served, "dlq", "list", "--gid", dead))
    [row] = [line.split() for line in out.splitlines()[1:-1]]
    dead_id = row[0]
    assert row[2:6] == [dead, "hotel", "FlightBooked", "failed"]
    assert out.splitlines()[-1] == f"1 dead letter(s) of saga {dead}"
    _, out, _ = choreo(capsys, *at(live.served, "dlq", "list", "--gid", dead, "--json"))
    assert json.loads(out) == api(live.served, f"/dlq?gid={dead}&limit=50")

    code, out, _ = choreo(capsys, *at(live.served, "dlq", "show", dead_id))
    assert code == 0
    assert out.startswith(f"id          {dead_id}\ngid         {dead}\nsaga        trip\n")
    assert "service     hotel\n" in out
    assert "reason      Choked: hotel service choked on its trigger\n" in out
    assert f"from        {TOPIC}[" in out
    assert "  choreo-type: FlightBooked" in out
    assert out.rstrip().splitlines()[-1].startswith('{"trip_id":')
    _, out, _ = choreo(capsys, *at(live.served, "dlq", "show", dead_id, "--json"))
    letter = json.loads(out)
    assert letter == api(live.served, f"/dlq/{dead_id}")

    code, out, _ = choreo(capsys, *at(live.served, "dlq", "replay", dead_id, "--yes"))
    assert code == 0
    first, sent = out.splitlines()
    assert first == (
        f"{dead_id}: FlightBooked of saga {dead} to {TOPIC} "
        "(dead-lettered by hotel: Choked: hotel service choked on its trigger)"
    )
    assert sent.startswith(f"replayed {dead_id} to {TOPIC}[{letter['partition']}]@")
    offset = int(sent.rsplit("@", 1)[1])
    assert offset > letter["offset"]

    # The very record that was dead-lettered, bytes and headers, is at the replayed offset.
    h = live.services.h
    assert h is not None
    tp = TopicPartition(TOPIC, letter["partition"])
    log = live.services.run(read_topics(h.transport, [TOPIC], {tp: offset + 1}))
    record = log[tp][-1]
    assert (record.offset, record.key) == (offset, dead.encode())
    assert record.value.decode() == letter["payload"]
    assert record.header("choreo-id") == letter["event_id"].encode()
    assert record.header("choreo-dlq-reason") is None
    # The hotel service reads it again, but its barrier knows the step was compensated (a
    # null compensation): the action is not applied late, nothing is dead-lettered again.
    live.services.run(h.drain(timeout=30))
    seen = [m for m in h.history(dead) if m.envelope.event_id == letter["event_id"]]
    assert len(seen) == 2
    assert live.services.run(h.store.get_int(f"hotel:{live.trips['dead']}")) == 0
    assert [d["id"] for d in api(live.served, f"/dlq?gid={dead}")["items"]] == [dead_id]
    assert live.saga(dead)["status"] == "COMPENSATED"


# -- acting --------------------------------------------------------------------------------


def test_retry_then_resolve_a_stuck_saga(
    capsys: pytest.CaptureFixture[str], live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = live.served.gids["stuck"]
    monkeypatch.setenv("USER", "tester")
    actor = f"tester@{socket.gethostname()}"
    code, out, err = choreo(
        capsys, *at(live.served, "saga", "retry", gid, "--note", "provider back", "--yes")
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"saga trip {gid} is STUCK, waiting on undo hotel (attempt 2)"
    assert out.splitlines()[-1].startswith("retry sent as command ")
    eventually(lambda: live.noted(gid, f"admin retry by {actor}: provider back"))

    # A fresh budget: the compensation is re-issued (the saga stays STUCK meanwhile), fails
    # again, and a second alert says the new round is spent too.
    def alerts() -> list[str]:
        notes = [entry["note"] for entry in live.saga(gid)["timeline"]]
        return [note for note in notes if note.startswith("stuck: compensation of hotel")]

    eventually(lambda: len(alerts()) == 2, timeout=30)
    hotel = live.saga(gid)["steps"]["hotel"]
    assert (hotel["compensation_round"], hotel["compensation_attempts"]) == (1, RETRIES)
    assert hotel["next_retry_at"] is None
    _, out, _ = choreo(capsys, *at(live.served, "saga", "show", gid))
    issued = [line for line in out.splitlines() if "compensation of hotel issued" in line]
    assert len(issued) == 2 * RETRIES

    code, out, err = choreo(
        capsys,
        *at(live.served, "saga", "resolve", gid, "--note", "refunded by hand", "--yes",
            "--actor", "ops-bot"),
    )  # fmt: skip
    assert (code, err) == (0, "")
    eventually(lambda: live.noted(gid, "admin resolve by ops-bot: refunded by hand"))
    state = live.saga(gid)
    assert (state["status"], state["resolved"], state["resolved_by"]) == ("STUCK", True, "ops-bot")
    _, out, _ = choreo(capsys, *at(live.served, "saga", "show", gid))
    assert "resolved  by ops-bot: refunded by hand" in out.splitlines()
    _, out, _ = choreo(capsys, *at(live.served, "saga", "why", gid))
    assert out.splitlines()[1].startswith("STUCK (resolved by an operator): ")
    code, _, err = choreo(capsys, *at(live.served, "saga", "resolve", gid, "--note", "x", "-y"))
    assert (code, err.splitlines()[0]) == (
        2,
        "choreo: error: not sent: already resolved by ops-bot",
    )


def test_why_retry_and_compensate_a_running_saga(
    capsys: pytest.CaptureFixture[str], live: Live
) -> None:
    gid, _ = live.services.start(silent="hotel")  # the hotel never answers

    def waiting() -> bool:
        found = api(live.served, "/sagas?status=RUNNING&limit=1000")["items"]
        if not any(s["gid"] == gid and s["steps"].get("hotel") == "PENDING" for s in found):
            return False
        return bool(api(live.served, f"/sagas/{gid}/why")["waiting"][0]["lag"] == 0)

    eventually(waiting)
    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", gid))
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "RUNNING, waiting on hotel (action by hotel)"
    assert "step hotel: waits for hotel to handle FlightBooked (action), for " in out
    assert "  group     choreo.hotel" in lines
    assert f"  lag       0 on {TOPIC}[" in out
    assert "but did not answer; the tracker compensates at the deadline" in out
    assert any(line.startswith("next deadline ") and "(in " in line for line in lines)
    code, out, _ = choreo(capsys, *at(live.served, "saga", "why", gid, "--json"))
    why = json.loads(out)
    [hotel] = why["waiting"]
    assert (hotel["step"], hotel["op"], hotel["service"], hotel["event_type"]) == (
        "hotel",
        "action",
        "hotel",
        "FlightBooked",
    )
    assert hotel["committed"] == hotel["end_offset"] > 0
    assert hotel["overdue_s"] is None
    assert hotel["dead_letters"] == []
    assert why["next_deadline"] == hotel["deadline_at"]

    code, out, err = choreo(
        capsys, *at(live.served, "saga", "retry", gid, "--yes", "--actor", "ops-bot")
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"saga trip {gid} is RUNNING, waiting on hotel"
    eventually(lambda: live.noted(gid, "trigger of hotel re-published"))
    assert live.noted(gid, "admin retry by ops-bot")

    code, out, err = choreo(
        capsys,
        *at(live.served, "saga", "compensate", gid, "--yes", "--actor", "ops-bot",
            "--note", "customer cancelled"),
    )  # fmt: skip
    assert (code, err) == (0, "")
    eventually(lambda: live.saga(gid)["status"] == "COMPENSATED")
    state = live.saga(gid)
    assert live.noted(gid, "admin compensate by ops-bot: customer cancelled")
    assert state["reason"] == "operator: customer cancelled"  # not the deadline
    assert {name: step["status"] for name, step in state["steps"].items()} == {
        "flight": "COMPENSATED",
        "hotel": "COMPENSATED",
    }


# -- errors --------------------------------------------------------------------------------


def test_errors(capsys: pytest.CaptureFixture[str], live: Live) -> None:
    completed = live.served.gids["completed"]
    for command in ("show", "why"):
        code, out, err = choreo(capsys, *at(live.served, "saga", command, "no-such-gid"))
        assert (code, out) == (2, "")
        assert err == (
            "choreo: error: no saga with gid 'no-such-gid'\n"
            "  hint: `choreo sagas list` shows known ones\n"
        )
    code, out, err = choreo(capsys, *at(live.served, "saga", "retry", "no-such-gid", "-y"))
    assert (code, out, err.splitlines()[0]) == (
        2,
        "",
        "choreo: error: no saga with gid 'no-such-gid'",
    )
    refused = {
        "compensate": "only a RUNNING saga can be compensated; this one is COMPLETED",
        "retry": "no compensation is unconfirmed; the saga is COMPLETED",
        "resolve": "only a STUCK saga can be resolved; this one is COMPLETED",
    }
    for action, why in refused.items():
        code, _, err = choreo(
            capsys, *at(live.served, "saga", action, completed, "--note", "n", "--yes")
        )
        assert (code, err.splitlines()) == (
            2,
            [f"choreo: error: not sent: {why}", "  hint: `choreo saga why GID` shows its state"],
        )
    code, _, err = choreo(capsys, *at(live.served, "saga", "compensate", completed))
    assert code == 2
    assert "refusing to act without confirmation: stdin is not a terminal" in err
    assert not live.noted(completed, "admin")

    code, _, err = choreo(capsys, *at(live.served, "dlq", "show", "99:999"))
    assert (code, err) == (
        2,
        "choreo: error: no dead letter 99:999\n  hint: `choreo dlq list` shows their ids\n",
    )
    code, _, err = choreo(capsys, *at(live.served, "dlq", "show", "nine"))
    assert (code, err.splitlines()[0][:55]) == (
        2,
        "choreo: error: 'nine' is not a dead-letter id like 2:17",
    )
    code, _, err = choreo(capsys, *at(live.served, "dlq", "replay", "99:999", "--yes"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: no dead letter 99:999")
    code, _, err = choreo(capsys, *at(live.served, "sagas", "list", "--since", "soon"))
    assert (code, err.splitlines()[0]) == (2, "choreo: error: 'soon' is not a duration")
    code, _, err = choreo(capsys, *at(live.served, "sagas", "list", "--limit", "0"))
    assert code == 2
    assert err.startswith("choreo: error: ")

    for argv, message in (
        (["sagas", "list", "--state", "DONE"], "invalid choice: 'DONE'"),
        (["saga", "resolve", completed, "--yes"], "the following arguments are required: --note"),
        (["dlq", "replay"], "the following arguments are required: ID"),
        (["saga", "show"], "the following arguments are required: gid"),
    ):
        with pytest.raises(SystemExit) as exited:
            choreo(capsys, *at(live.served, *argv))
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_a_tracker_that_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on a fresh port: what a stopped tracker looks like."""
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = choreo(capsys, "dashboard", "--once", "--tracker", url)
    assert code == 2
    assert err.startswith(f"choreo: error: cannot reach the tracker at {url} (")
