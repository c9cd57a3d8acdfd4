"""The offline checker: the invariants of DESIGN.md section 4 over one run's history, its
store and its tracker, each failure naming the gids (or keys) involved.

=================  ==========================================================================
terminal           every saga is COMPLETED or COMPENSATED in the tracker (STUCK only where
                   the scenario forces it); what a saga's mode makes it end as (a business
                   failure, a silent step and a late success are never COMPLETED)
books              stock and money conserved: before = after + what COMPLETED sagas took;
                   revenue = what COMPLETED sagas paid; a shipment booked iff COMPLETED
once (store)       every effect counter ``applied:<gid>:<step>:<op>`` is 0 or 1
once (records)     per (gid, step, op), the participants' outcome records carry one event
                   id (a re-publication repeats it)
lost               every acknowledged start event is in the log; every applied effect's
                   outcome event is in the log; every trigger in the log reached its
                   participant's barrier (a record for its (gid, step, op); for an
                   action whose compensation came first in the log, the compensation's)
order              a gid's records are all in one partition; every event is in the log
                   after the event that caused it
late               a late success is never applied once its deadline fired: its saga
                   COMPENSATED, no shipment (one read before the DeadlineCheck that fires
                   its deadline, possible when the broker was down at the deadline,
                   completes the saga)
poison             every injected poison record is in the DLQ with a reason, from each
                   reader that must reject it (``POISON_READERS``)
replay             the tracker's state (state API) equals a replay of the topics through
                   the pure machine (status, step statuses, seen event ids)
reorder            (reordering) a ``hanging`` saga's payment compensation is in the log
                   before its action's trigger, was confirmed as a null compensation by
                   payment, and the action never ran; an ``overtaken`` saga's shipping
                   confirmation is in the log after the tracker's CancelShipment
processes          no participant exited but by the scenario's own SIGKILL
=================  ==========================================================================
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from choreo import codec
from choreo.deadletter import DLQ_TOPIC, H_REASON, H_SERVICE
from choreo.errors import PoisonEvent
from choreo.events import Envelope
from choreo.saga import SagaState
from choreo.tracker.core import TRACKER_SOURCE, TrackerCore
from choreo.transport.base import Record
from services_demo.contract import TOPIC
from tests.faults import app as faults_app
from tests.faults.app import order_saga

if TYPE_CHECKING:
    from tests.faults.harness import Outcome

TERMINAL = ("COMPLETED", "COMPENSATED", "STUCK")
SERVICES = {"stock": "inventory", "payment": "payment", "shipping": "shipping"}
# The event a participant's handler is triggered by, per (step, op), and the outcome
# events it publishes (a business failure's event, or choreo's own for a null compensation).
TRIGGERS = {
    "OrderPlaced": ("stock", "action"),
    "StockReserved": ("payment", "action"),
    "PaymentDeducted": ("shipping", "action"),
    "ReleaseStock": ("stock", "compensate"),
    "RefundPayment": ("payment", "compensate"),
    "CancelShipment": ("shipping", "compensate"),
}
OUTPUTS = {
    ("stock", "action"): "StockReserved",
    ("payment", "action"): "PaymentDeducted",
    ("shipping", "action"): "ShipmentScheduled",
    ("stock", "compensate"): "StockReleased",
    ("payment", "compensate"): "PaymentRefunded",
    ("shipping", "compensate"): "ShipmentCancelled",
}


# Who must dead-letter each kind of poison: the start event's handler and the tracker
# for a bad OrderPlaced (the other participants skip a type they know but do not
# handle, unparsed); every participant for a type none of them knows.
_BAD_START = {"inventory", "tracker"}
POISON_READERS = {
    "invalid JSON": _BAD_START,
    "schema-invalid": _BAD_START,
    "oversized": _BAD_START,
    "deeply nested": _BAD_START,
    "non-UTF-8": _BAD_START,
    "just under the limit": _BAD_START,
    "unknown type": {"inventory", "payment", "shipping"},
}


def replay(history: Mapping[str, list[Record]]) -> dict[str, SagaState]:
    """Fold the topics into fresh states as the tracker does (``TrackerCore.fold``, the
    record's timestamp as ``now``): per partition number (a gid's records are all in one),
    the topics merged by timestamp, each partition's offset order kept."""
    core = TrackerCore([order_saga])
    states: dict[str, SagaState] = {}
    tracked = set(core.topics())
    streams_by_partition: dict[int, list[list[Record]]] = defaultdict(list)
    for topic, records in sorted(history.items()):
        if topic not in tracked:
            continue
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        for number, stream in by_partition.items():
            streams_by_partition[number].append(stream)
    for number in sorted(streams_by_partition):
        for record in heapq.merge(*streams_by_partition[number], key=lambda r: r.timestamp_ms):
            try:
                message = codec.decode(record, core.registry)
            except PoisonEvent:
                continue
            before = states.get(message.gid)
            if core.ignores(before, message):
                continue
            after, _ = core.fold(before, message, record.timestamp_ms / 1000)
            if after is not None:
                states[after.gid] = after
    return states


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=dict)
    row: dict[str, str] = field(default_factory=dict)

    def add(self, invariant: str, what: str) -> None:
        self.violations.setdefault(invariant, []).append(what)

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self, limit: int = 15) -> str:
        lines = []
        for invariant, items in self.violations.items():
            more = f" (+{len(items) - limit})" if len(items) > limit else ""
            shown = ", ".join(items[:limit]) + more
            lines.append(f"{invariant}: {len(items)}: {shown}")
        return "\n".join(lines)


def _envelopes(records: Iterable[Record]) -> list[tuple[Record, Envelope]]:
    found = []
    for record in records:
        try:
            found.append((record, codec.decode_envelope(record)))
        except PoisonEvent:
            continue
    return found


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _reordered(
    v: Verdict,
    out: Outcome,
    orders: Mapping[str, object],
    saga_log: list[tuple[Record, Envelope]],
    system_log: list[tuple[Record, Envelope]],
) -> None:
    """The ``reorder`` invariant (scenario 6): the records came in the order the fault
    meant, and the barrier and the tracker did what that order calls for."""
    first: dict[tuple[str, str], int] = {}
    for record, env in saga_log:
        kind = env.event_type
        if kind == "CancelShipment" and env.source != TRACKER_SOURCE:
            continue  # only the tracker's timeout compensation counts
        first.setdefault((env.gid, kind), record.offset)
    skipped = {env.gid for _, env in system_log
               if env.event_type == "choreo.CompensationSkipped" and env.step == "payment"
               and env.source == "payment"}  # fmt: skip
    never = 1 << 62
    for gid in orders:
        mode = faults_app.mode_of(gid)
        if mode == "hanging":
            comp = first.get((gid, "RefundPayment"), never)
            if comp >= first.get((gid, "StockReserved"), -1):
                v.add("reorder", f"{gid}: RefundPayment not before StockReserved")
            if gid not in skipped:
                v.add("reorder", f"{gid}: no null compensation from payment")
            ran = (gid, "PaymentDeducted") in first or (gid, "PaymentDeclined") in first
            if ran or out.store[faults_app.applied_key(gid, "payment", "action")]:
                v.add("reorder", f"{gid}: the hanging payment action ran")
        elif mode == "overtaken":
            comp = first.get((gid, "CancelShipment"), never)
            if first.get((gid, "ShipmentScheduled"), -1) <= comp:
                v.add("reorder", f"{gid}: ShipmentScheduled not after the tracker's "
                                 "CancelShipment")  # fmt: skip


def _shipping_due(out: Outcome, gid: str, record: Record) -> bool:
    """Whether a DeadlineCheck at ``record`` fires the shipping step's deadline: the
    machine fires only deadlines due at the check's time (its record's timestamp, as in
    ``replay``); a check written for an earlier step's deadline (many are, when the broker
    was away) changes nothing. Unknown to the tracker: assume it fired."""
    state = out.states.get(gid)
    step = state.steps.get("shipping") if state is not None else None
    if step is None or step.deadline_at is None:
        return state is None
    return record.timestamp_ms / 1000 >= step.deadline_at


def check(out: Outcome) -> Verdict:
    v = Verdict()
    orders = {o.order_id: o for o in out.orders}
    saga_log = _envelopes(out.history.get(TOPIC, []))
    system_log = _envelopes(out.history.get("choreo.system", []))
    everything = saga_log + system_log
    ids_in_log = {env.event_id for _, env in everything}

    # A late success is compensated when it arrives after the tracker fired the deadline
    # (invariant 8). The tracker fires it when it reads its own DeadlineCheck from the
    # saga topic; when the broker was down at the deadline, the success may be written
    # before that check and then completes the saga, as the machine's rules say. Such
    # sagas are counted (``late_won``) and must still balance; any other late success
    # applied is a violation.
    first_check: dict[str, int] = {}
    late_at: dict[str, int] = {}
    for record, env in saga_log:
        position = record.offset  # a gid's records share one partition
        if (env.source == TRACKER_SOURCE and env.op == "compensate") or (
            env.event_type == "choreo.DeadlineCheck" and _shipping_due(out, env.gid, record)
        ):
            first_check.setdefault(env.gid, position)
        if env.event_type == "ShipmentScheduled":
            late_at.setdefault(env.gid, position)
    never = 1 << 62
    late_won = {
        gid
        for gid, at in late_at.items()
        if faults_app.mode_of(gid) == "late" and at < first_check.get(gid, never)
    }

    # terminal, and what each mode must end as
    for gid in orders:
        state = out.states.get(gid)
        status = state.status.value if state else "MISSING"
        if status not in TERMINAL or (status == "STUCK" and not out.expect_stuck):
            why = f" ({state.reason})" if state is not None and state.reason else ""
            v.add("terminal", f"{gid}={status}{why}")
            continue
        mode = faults_app.mode_of(gid)
        if mode == "late" and status == "COMPLETED" and gid in late_won:
            continue  # see below: the success reached the tracker before its deadline fired
        if mode != "ok" and status == "COMPLETED":
            v.add("terminal", f"{gid}: mode {mode} COMPLETED")

    # books
    completed = [o for gid, o in orders.items()
                 if (s := out.states.get(gid)) and s.status.value == "COMPLETED"]  # fmt: skip
    from tests.faults.harness import CUSTOMERS, SKUS

    for sku, before in SKUS.items():
        taken = sum(o.qty for o in completed if o.sku == sku)
        after = out.store[faults_app.stock_key(sku)]
        if before != after + taken:
            v.add("books", f"stock {sku}: {before} != {after} + {taken}")
    for customer, before in CUSTOMERS.items():
        paid = sum(o.amount for o in completed if o.customer == customer)
        after = out.store[faults_app.balance_key(customer)]
        if before != after + paid:
            v.add("books", f"balance {customer}: {before} != {after} + {paid}")
    if out.store[faults_app.REVENUE] != sum(o.amount for o in completed):
        v.add("books", f"revenue {out.store[faults_app.REVENUE]}")
    done_gids = {o.order_id for o in completed}
    for gid in orders:
        booked = out.store[faults_app.shipment_key(gid)] is not None
        if booked != (gid in done_gids):
            v.add("books", f"{gid}: shipment {'booked' if booked else 'missing'}")
        applied = booked or gid in done_gids
        if faults_app.mode_of(gid) == "late" and applied and gid not in late_won:
            v.add("late", gid)

    # once: the store's own count, then the records' event ids
    double = set()
    for gid in orders:
        for step, op in OUTPUTS:
            count = out.store[faults_app.applied_key(gid, step, op)]
            if count > 1:
                double.add(gid)
                v.add("once (store)", f"{gid}/{step}/{op} applied {count} times")
    outcome_ids: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for _, env in everything:
        if env.gid in orders and env.source != TRACKER_SOURCE and env.step and env.outcome:
            outcome_ids[(env.gid, env.step, env.op)].add(env.event_id)
    for (gid, step, op), ids in outcome_ids.items():
        if len(ids) > 1:
            double.add(gid)
            v.add("once (records)", f"{gid}/{step}/{op}: {len(ids)} ids")

    # lost
    lost = set()
    for env in out.published:
        if env.event_id not in ids_in_log:
            lost.add(env.gid)
            v.add("lost", f"{env.gid}: acknowledged {env.event_type} not in the log")
    types_by_gid: dict[str, set[str]] = defaultdict(set)
    for _, env in everything:
        types_by_gid[env.gid].add(env.event_type)
    for gid in orders:
        for (step, op), output in OUTPUTS.items():
            if out.store[faults_app.applied_key(gid, step, op)] != 1:
                continue
            unconfirmed = faults_app.mode_of(gid) in ("silent", "late", "overtaken")
            if (step, op) == ("shipping", "action") and unconfirmed:
                continue
            if (
                output not in types_by_gid[gid]
                and not (
                    (step, op) == ("payment", "action") and "PaymentDeclined" in types_by_gid[gid]
                )
                and not ((step, op) == ("stock", "action") and "StockRejected" in types_by_gid[gid])
            ):
                lost.add(gid)
                v.add("lost", f"{gid}/{step}/{op} applied, {output} not in the log")
    # Where each (gid, step, op)'s trigger is first in the log (a gid has one partition).
    triggered: dict[tuple[str, str, str], int] = {}
    for record, env in saga_log:
        if env.event_type in TRIGGERS:
            triggered.setdefault((env.gid, *TRIGGERS[env.event_type]), record.offset)
    for record, env in saga_log:
        if env.gid not in orders or env.event_type not in TRIGGERS:
            continue
        step, op = TRIGGERS[env.event_type]
        recorded = {(s, o) for s, o, _ in out.barrier.get(env.gid, [])}
        name = f"{SERVICES[step]}/{step}"
        # An action read after its compensation is refused (hanging): the compensation's
        # record is what the barrier keeps of both.
        first_comp = triggered.get((env.gid, step, "compensate"))
        hanging = op == "action" and first_comp is not None and first_comp < record.offset
        if (name, op) not in recorded and not (hanging and (name, "compensate") in recorded):
            lost.add(env.gid)
            v.add("lost", f"{env.gid}: {env.event_type} never reached {name}")

    # order
    for records in (out.history.get(TOPIC, []), out.history.get("choreo.system", [])):
        partitions: dict[str, set[int]] = defaultdict(set)
        first_at: dict[str, tuple[int, int]] = {}
        for record, env in _envelopes(records):
            partitions[env.gid].add(record.partition)
            first_at.setdefault(env.event_id, (record.partition, record.offset))
        for gid, found in partitions.items():
            if gid in orders and len(found) > 1:
                v.add("order", f"{gid}: in partitions {sorted(found)}")
        for record, env in _envelopes(records):
            cause = first_at.get(env.causation_id)
            if env.gid in orders and cause and cause >= (record.partition, record.offset):
                v.add("order", f"{env.gid}: {env.event_type} at {record.offset} before its cause")

    # poison
    dead = out.history.get(DLQ_TOPIC, [])
    for marker, kind in out.poison:
        mark = marker.encode()
        letters = [r for r in dead if r.key == mark or mark in (r.value or b"")[:200]]
        if not letters:
            v.add("poison", f"{kind} ({marker}) not dead-lettered")
        elif not all(r.header(H_REASON) for r in letters):
            v.add("poison", f"{kind} ({marker}) dead-lettered without a reason")
        by = {(r.header(H_SERVICE) or b"").decode() for r in letters}
        if not POISON_READERS.get(kind, set()) <= by:
            v.add("poison", f"{kind} ({marker}) dead-lettered by {sorted(by)}, "
                            f"not by all of {sorted(POISON_READERS[kind])}")  # fmt: skip

    # replay
    for gid in orders:
        live, again = out.states.get(gid), out.replayed.get(gid)
        if live is None or again is None:
            if live is not again:
                v.add("replay", f"{gid}: live {live is not None}, replayed {again is not None}")
            continue
        mine = (live.status, {n: s.status for n, s in live.steps.items()}, set(live.seen_ids))
        theirs = (again.status, {n: s.status for n, s in again.steps.items()}, set(again.seen_ids))
        if mine != theirs:
            v.add("replay", f"{gid}: live {live.status.value} {mine[1]}, replayed "
                            f"{again.status.value} {theirs[1]}")  # fmt: skip

    _reordered(v, out, orders, saga_log, system_log)

    for exit_ in out.unexpected_exits:
        v.add("processes", exit_)

    # compensation delay: deadline -> the tracker's first compensation record
    delays = []
    for gid, state in out.states.items():
        if "timed out" not in state.reason:
            continue
        timed_out = [n for n, s in state.steps.items() if s.outcome_note == "timed out"]
        deadline = min(
            (state.steps[n].deadline_at or math.inf for n in timed_out), default=math.inf
        )
        first = min((r.timestamp_ms / 1000 for r, env in saga_log
                     if env.gid == gid and env.op == "compensate" and env.source == TRACKER_SOURCE),
                    default=math.inf)  # fmt: skip
        if deadline < math.inf and first < math.inf:
            delays.append(first - deadline)
    ends = Counter(s.status.value for gid, s in out.states.items() if gid in orders)
    worst = p99(delays)
    v.row = {
        "scenario": out.scenario.name,
        "seed": str(out.scenario.seed),
        "sagas": str(len(orders)),
        "terminal": " / ".join(f"{ends.get(k, 0)} {k.lower()}" for k in TERMINAL),
        "double-applied": str(len(double)),
        "lost": str(len(lost)),
        "dead-lettered": str(len(dead)),
        "comp delay p99": "-" if worst is None else f"{worst:.2f} s",
        "duration": f"{out.duration:.0f} s",
        "faults": "; ".join(
            out.notes
            + (
                [f"{len(late_won)} late successes read before their deadline check (completed)"]
                if late_won
                else []
            )
        )
        or "-",
        "verdict": "ok" if v.ok else "FAIL: " + ", ".join(v.violations),
    }
    return v


COLUMNS = ("scenario", "seed", "sagas", "terminal", "double-applied", "lost", "dead-lettered",
           "comp delay p99", "duration", "verdict", "faults")  # fmt: skip


def table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table of result rows (``Verdict.row``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    return "\n".join(lines)
