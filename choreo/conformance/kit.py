"""The scenarios: drive one participant's step of a saga contract over real Kafka and
hold what it publishes, and what its consumer group commits, to the normative rules.

Each scenario uses a fresh gid. Before it, the kit marks the end offsets of the step's
output topics, ``choreo.system`` and ``choreo.dlq``; after its inputs it sends a
*sentinel* (a fresh gid on the same partition of the same topic: a trigger, or on a
compensation topic a null compensation) and reads, read_committed, from the marks until
the sentinel's output appears. A participant handles a partition in order, so by then
every input of the scenario was handled and anything it published for them is on the
topics: "published nothing" is observed, not guessed from a quiet period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from choreo import codec
from choreo.deadletter import DLQ_TOPIC
from choreo.errors import TransportError
from choreo.events import Event
from choreo.system_events import CompensationSkipped, StepFailed
from choreo.transport.base import Delivered, OutgoingRecord, Record, TopicPartition
from choreo.transport.kafka import KafkaTransport
from choreo.transport.partitioner import partition_for

from .checks import Check, Expected, describe, header, ids, should_problems, wire_problems
from .inputs import Inputs, Target, header_of
from .reader import Reader


def gid_of(record: Record) -> str:
    return header(record, "choreo-gid") or (record.key or b"").decode(errors="replace")


@dataclass
class Round:
    """What one exchange saw: the records of its gids, and whether its sentinel came."""

    records: list[Record]
    sentinel: str
    complete: bool

    def outputs(self, gid: str) -> list[Record]:
        return [r for r in self.records if gid_of(r) == gid and r.topic != DLQ_TOPIC]

    def dead_letters(self, gid: str) -> list[Record]:
        return [r for r in self.records if gid_of(r) == gid and r.topic == DLQ_TOPIC]

    def incomplete(self, timeout: float) -> list[str]:
        if self.complete:
            return []
        return [
            f"the sentinel {self.sentinel} sent after this scenario's inputs had no "
            f"output within {timeout:g}s: the participant stopped handling the "
            "partition (or is not running), so this is all that was seen"
        ]


class Kit:
    def __init__(self, target: Target) -> None:
        self.t = target
        self.inputs = Inputs(target)
        self.checks: list[Check] = []
        step = target.step
        self.transport = KafkaTransport(target.broker, security=target.security)
        self.sent: dict[TopicPartition, int] = {}  # next offset after our last input
        self._ours: set[tuple[str, int, int]] = set()
        done = {cls.event_type: cls for cls in step.done}
        failing: list[type[Event]] = [*step.failed, StepFailed]
        failed = {cls.event_type: cls for cls in failing}
        outcomes = {**dict.fromkeys(done, "done"), **dict.fromkeys(failed, "failed")}
        self.action = self._expected({**done, **failed}, "action", outcomes)
        self.failure = self._expected(failed, "action", dict.fromkeys(failed, "failed"))
        confirmed = {cls.event_type: cls for cls in step.compensated}
        self.confirmation = self._expected(
            confirmed, "compensate", dict.fromkeys(confirmed, "done")
        )
        skipped: dict[str, type[Event]] = {CompensationSkipped.event_type: CompensationSkipped}
        self.skipped = self._expected(skipped, "compensate", dict.fromkeys(skipped, "skipped"))
        topics = {cls.topic for cls in (*step.done, *step.failed, *step.compensated)}
        self.observed = sorted({*topics, StepFailed.topic, DLQ_TOPIC})
        self._counts: dict[str, int] = {}
        self._answered = False

    def _expected(
        self, types: dict[str, type[Event]], op: str, outcome: dict[str, str]
    ) -> Expected:
        t = self.t
        return Expected(types, op, outcome, t.step.name, "", "", t.service, t.contract.name)

    async def fresh_gid(self, topic: str, partition: int) -> str:
        count = await self.transport.partitions_for(topic)
        while True:
            gid = f"conformance-{uuid.uuid4()}"
            if partition_for(gid.encode(), count) == partition:
                return gid

    # -- one exchange ----------------------------------------------------------------------

    async def send(self, records: Sequence[OutgoingRecord]) -> list[Delivered]:
        delivered = await self.transport.send_many(records)
        for d in delivered:
            tp = TopicPartition(d.topic, d.partition)
            self.sent[tp] = max(self.sent.get(tp, 0), d.offset + 1)
            self._ours.add((d.topic, d.partition, d.offset))
        return delivered

    async def exchange(
        self,
        inputs: Sequence[OutgoingRecord],
        gids: set[str],
        until: Callable[[list[Record]], bool] | None = None,
    ) -> Round:
        """Send ``inputs`` then a sentinel behind the last one; read until its output."""
        tps = await self.transport.topic_partitions(self.observed)
        marks = await self.transport.end_offsets(tps)
        last = (await self.send(inputs))[-1]
        sentinel = await self.fresh_gid(last.topic, last.partition)
        if last.topic == self.t.step.on.topic:
            probe = self.inputs.trigger(sentinel, self.t.payload)
        else:
            probe = self.inputs.compensation(sentinel, None)
        await self.send([probe])
        wanted = {*gids, sentinel}

        def keep(record: Record) -> bool:
            ours = (record.topic, record.partition, record.offset) in self._ours
            return not ours and gid_of(record) in wanted

        def seen(records: list[Record]) -> bool:
            came = any(gid_of(r) == sentinel for r in records)
            return came and (until is None or until(records))

        reader = Reader(self.transport, tps)
        await reader.start()
        try:
            records, complete = await reader.read(marks, keep, seen, self.t.timeout)
        finally:
            await reader.stop()
        return Round(records, sentinel, complete)

    # -- checks ------------------------------------------------------------------------------

    def add(
        self,
        scenario: str,
        name: str,
        rule: str,
        ok: bool,
        evidence: list[str],
        level: str = "MUST",
    ) -> bool:
        self.checks.append(
            Check(scenario, name, rule, "MUST" if level == "MUST" else "SHOULD", ok, evidence)
        )
        return ok

    def expect_one(
        self,
        scenario: str,
        what: str,
        rnd: Round,
        gid: str,
        expected: Expected,
        causation: str,
        rule: str,
    ) -> Record | None:
        """Exactly one output of the expected role for ``gid``, checked header by header."""
        outputs = rnd.outputs(gid)
        evidence = [describe(r) for r in outputs] or ["nothing published for " + gid]
        self.add(
            scenario,
            f"exactly one {what}",
            rule,
            len(outputs) == 1,
            evidence + rnd.incomplete(self.t.timeout),
        )
        if not outputs:
            return None
        want = Expected(
            expected.types,
            expected.op,
            expected.outcome,
            expected.step,
            causation,
            gid,
            expected.source,
            expected.saga,
        )
        problems = [p for r in outputs for p in wire_problems(r, want, self._counts[r.topic])]
        self.add(
            scenario,
            "key, headers, op/outcome, step, causation, payload, partition",
            "1-4, 7-table, 14",
            not problems,
            problems or [describe(outputs[0])],
        )
        soft = [p for r in outputs for p in should_problems(r, want)]
        self.add(
            scenario,
            "source and saga headers",
            "9",
            not soft,
            soft or ["as expected"],
            level="SHOULD",
        )
        return outputs[0]

    def expect_same(
        self, scenario: str, first: list[Record], again: Round, gid: str, rule: str
    ) -> None:
        before, after = ids(first), ids(again.outputs(gid))
        ok = bool(before) and before == after
        evidence = [f"first run published {before}", f"redelivery published {after}"]
        if before and not after:
            evidence.append(
                "nothing re-published: a consumer waiting for the outputs "
                "of a redelivered event would wait forever"
            )
        self.add(
            scenario,
            "no second run: the same events re-published, same ids",
            rule,
            ok,
            evidence + again.incomplete(self.t.timeout),
        )

    # -- the scenarios -------------------------------------------------------------------------

    async def run(self) -> list[Check]:
        await self.transport.start()
        try:
            await self._topics()
            done = await self._trigger()
            if not self._answered:
                return self.checks  # nothing else could be observed either
            await self._duplicate_trigger()
            if self.t.step.compensation is not None:
                await self._compensation(done)
                await self._null_compensation_and_hanging()
            if self.t.failing_payload is not None:
                await self._failure()
            await self._poison()
            await self._group()
        finally:
            await self.transport.stop()
        return self.checks

    async def _topics(self) -> None:
        topics = sorted({*self.t.contract.topics(), *self.observed})
        counts = {topic: await self.transport.partitions_for(topic) for topic in topics}
        missing = [topic for topic, n in counts.items() if n == 0]
        if missing:  # the participant did not create them; the kit does, as choreo would
            await self.transport.ensure_topics(missing)
            counts.update({t: await self.transport.partitions_for(t) for t in missing})
        self._counts = counts
        self.add(
            "topics",
            "every topic of the saga has one partition count",
            "14",
            len(set(counts.values())) == 1,
            [f"{topic}: {n} partitions" for topic, n in sorted(counts.items())]
            + [f"created by the kit: {', '.join(missing)}" for _ in missing[:1]],
        )

    async def _trigger(self) -> tuple[str, Mapping[str, Any]] | None:
        gid = f"conformance-{uuid.uuid4()}"
        record = self.inputs.trigger(gid, self.t.payload)
        rnd = await self.exchange([record], {gid})
        self._answered = rnd.complete or bool(rnd.records)
        if not self._answered:
            topic = self.t.step.on.topic
            self.add(
                "participant",
                "answers at all",
                "-",
                False,
                [
                    f"nothing for the trigger {gid} nor for the sentinel {rnd.sentinel} within "
                    f"{self.t.timeout:g}s: is it running, on this broker, consuming {topic} "
                    f"(step {self.t.step.name!r})? The other scenarios were not run"
                ],
            )
            return None
        out = self.expect_one(
            "trigger",
            "done-or-failed event",
            rnd,
            gid,
            self.action,
            header_of(record, "choreo-id"),
            "10, 7-table",
        )
        if out is None:
            return None
        outcome = header(out, "choreo-outcome")
        self.add(
            "trigger",
            "the trigger payload's action succeeds (outcome done)",
            "setup",
            outcome == "done",
            [describe(out)]
            + (
                []
                if outcome == "done"
                else [
                    "the compensation scenarios need a run that did its work: "
                    "give --payload that makes the action succeed"
                ]
            ),
        )
        try:
            payload = codec.loads(out.value)
        except ValueError:
            return None
        return header(out, "choreo-type"), payload if isinstance(payload, dict) else {}

    async def _duplicate_trigger(self) -> None:
        gid = f"conformance-{uuid.uuid4()}"
        record = self.inputs.trigger(gid, self.t.payload)
        first = await self.exchange([record], {gid})
        self.expect_one(
            "duplicate trigger",
            "output of the first delivery",
            first,
            gid,
            self.action,
            header_of(record, "choreo-id"),
            "10",
        )
        again = await self.exchange([record], {gid})
        self.expect_same("duplicate trigger", first.outputs(gid), again, gid, "5, 10")

    async def _compensation(self, done: tuple[str, Mapping[str, Any]] | None) -> None:
        gid = f"conformance-{uuid.uuid4()}"
        trigger = self.inputs.trigger(gid, self.t.payload)
        ran = await self.exchange([trigger], {gid})
        outputs = ran.outputs(gid)
        if outputs:
            with contextlib.suppress(ValueError):
                done = (header(outputs[0], "choreo-type"), codec.loads(outputs[0].value))
        comp = self.inputs.compensation(gid, done)
        rnd = await self.exchange([comp], {gid})
        self.expect_one(
            "compensation",
            "confirmation (op compensate, outcome done)",
            rnd,
            gid,
            self.confirmation,
            header_of(comp, "choreo-id"),
            "10, 7-table",
        )
        first = rnd.outputs(gid)
        again = await self.exchange([comp], {gid})
        self.expect_same("duplicate compensation", first, again, gid, "10")
        # The tracker's re-issue of an unconfirmed compensation: a new id, attempt 1.
        reissued = self.inputs.compensation(gid, done)
        later = await self.exchange([reissued], {gid})
        self.expect_same("re-issued compensation (new id)", first, later, gid, "7, 10")

    async def _null_compensation_and_hanging(self) -> None:
        gid = f"conformance-{uuid.uuid4()}"
        comp = self.inputs.compensation(gid, None)
        rnd = await self.exchange([comp], {gid})
        out = self.expect_one(
            "null compensation",
            "output (choreo.CompensationSkipped)",
            rnd,
            gid,
            self.skipped,
            header_of(comp, "choreo-id"),
            "10",
        )
        if out is not None and header(out, "choreo-type") == CompensationSkipped.event_type:
            step = (codec.loads(out.value) or {}).get("step") if out.value[:1] == b"{" else None
            self.add(
                "null compensation",
                "CompensationSkipped names the step",
                "10",
                step == self.t.step.name,
                [f"payload step = {step!r}"],
            )
        hang = await self.exchange([self.inputs.trigger(gid, self.t.payload)], {gid})
        outputs = hang.outputs(gid)
        self.add(
            "hanging action",
            "an action after its compensation publishes nothing",
            "10",
            hang.complete and not outputs,
            ([describe(r) for r in outputs] or ["nothing published for " + gid])
            + hang.incomplete(self.t.timeout),
        )

    async def _failure(self) -> None:
        assert self.t.failing_payload is not None
        gid = f"conformance-{uuid.uuid4()}"
        record = self.inputs.trigger(gid, self.t.failing_payload)
        rnd = await self.exchange([record], {gid})
        self.expect_one(
            "failure",
            "failure event (op action, outcome failed)",
            rnd,
            gid,
            self.failure,
            header_of(record, "choreo-id"),
            "8, 7-table",
        )

    async def _poison(self) -> None:
        """Invalid JSON, then (when the trigger has required fields) a JSON object that
        lacks them, on one partition: neither handled, the partition still flowing."""
        gid = f"conformance-{uuid.uuid4()}"
        good = self.inputs.trigger(gid, self.t.payload)
        cases = [
            (
                "invalid JSON",
                gid,
                OutgoingRecord(good.topic, good.key, b'{"not": json', good.headers),
            )
        ]
        if any(info.is_required() for info in self.t.step.on.model_fields.values()):
            count = await self.transport.partitions_for(good.topic)
            other = await self.fresh_gid(good.topic, partition_for(gid.encode(), count))
            record = self.inputs.trigger(other, self.t.payload)
            cases.append(
                (
                    "a payload its schema refuses ({})",
                    other,
                    OutgoingRecord(record.topic, record.key, b"{}", record.headers),
                )
            )
        rnd = await self.exchange([record for _, _, record in cases], {g for _, g, _ in cases})
        self.add(
            "poison",
            "keeps consuming: a trigger behind it is handled",
            "poison",
            rnd.complete,
            [f"sentinel {rnd.sentinel} handled"]
            if rnd.complete
            else rnd.incomplete(self.t.timeout),
        )
        for what, case_gid, _ in cases:
            outputs, dead = rnd.outputs(case_gid), rnd.dead_letters(case_gid)
            self.add(
                "poison",
                f"publishes nothing for {what}",
                "1, poison",
                not outputs,
                [describe(r) for r in outputs] or ["nothing published for " + case_gid],
            )
            self.add(
                "poison",
                f"dead-letters {what} on choreo.dlq",
                "poison",
                bool(dead),
                [describe(r) for r in dead] or [f"no dead letter for {case_gid} on {DLQ_TOPIC}"],
                level="SHOULD",
            )

    async def _group(self) -> None:
        group, deadline = self.t.group, time.monotonic() + self.t.timeout
        committed: dict[TopicPartition, int] = {}
        while True:
            try:
                committed = await self.transport.group_offsets(group)
            except TransportError:
                committed = {}
            behind = {tp: n for tp, n in self.sent.items() if committed.get(tp, -1) < n}
            if not behind or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        evidence = [
            f"{tp}: committed {committed.get(tp, 'nothing')}, the kit's inputs end at {n}"
            for tp, n in sorted(self.sent.items())
        ]
        if not committed:
            evidence.append(f"group {group!r} has committed no offsets (its name? --group)")
        self.add(
            "consumer group", f"{group} commits past every input", "12, 13", not behind, evidence
        )


async def run(target: Target) -> list[Check]:
    return await Kit(target).run()
