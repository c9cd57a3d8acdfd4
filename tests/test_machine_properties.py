"""Hypothesis drives the saga machine through hostile schedules.

A small simulated world: participants that obey the barrier semantics (a compensation
for a step that never ran is a null compensation, an action arriving after its
compensation is skipped, a duplicate re-emits the first answer), a network that delays,
reorders and duplicates messages and loses some compensation commands and
confirmations (as a crash before publishing would), and a clock that jumps forward.
After a random phase everything still in flight is delivered and deadlines are fired
until the saga is quiet; then the invariants are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from choreo.events import Envelope, Event, Message, Op, Outcome, derived_event_id
from choreo.saga import (
    Publish,
    SagaContract,
    SagaState,
    SagaStatus,
    Step,
    StepStatus,
    Transition,
    apply,
    on_deadline,
)
from choreo.system_events import (
    CompensationSkipped,
    DeadlineCheck,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
)


class Prop(Event, topic="test.props"):
    order_id: str


class Start(Prop): ...


class Done0(Prop): ...


class Done1(Prop): ...


class Done2(Prop): ...


class Done3(Prop): ...


class Fail0(Prop): ...


class Fail1(Prop): ...


class Fail2(Prop): ...


class Fail3(Prop): ...


class Undo0(Prop): ...


class Undo1(Prop): ...


class Undo2(Prop): ...


class Undo3(Prop): ...


class Undone0(Prop): ...


class Undone1(Prop): ...


class Undone2(Prop): ...


class Undone3(Prop): ...


DONE: list[type[Prop]] = [Done0, Done1, Done2, Done3]
FAIL: list[type[Prop]] = [Fail0, Fail1, Fail2, Fail3]
UNDO: list[type[Prop]] = [Undo0, Undo1, Undo2, Undo3]
UNDONE: list[type[Prop]] = [Undone0, Undone1, Undone2, Undone3]

# Each shape lists every step's parent (-1: triggered by the start event).
SHAPES = {
    "sequence": (-1, 0, 1),
    "fan-out": (-1, 0, 0),
    "tree": (-1, 0, 0, 1),
    "two roots": (-1, -1, 0),
}
GID = "g-props"
TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
SETTLED = (StepStatus.COMPENSATED, StepStatus.FAILED)


def build_contract(shape: tuple[int, ...], compensable: list[bool], retries: int) -> SagaContract:
    steps = [
        Step(
            f"s{i}",
            on=Start if parent < 0 else DONE[parent],
            done=DONE[i],
            failed=(FAIL[i],),
            compensation=UNDO[i] if compensable[i] else None,
            compensated=(UNDONE[i],) if compensable[i] else (),
            deadline=10,
        )
        for i, parent in enumerate(shape)
    ]
    return SagaContract(
        "props", start=Start, steps=steps, compensation_retries=retries, retry_backoff_max=8
    )


@dataclass
class Delivery:
    to: str  # "tracker" or a step name (that step's participant)
    message: Message
    compensation: bool = False  # a compensation command for a participant


@dataclass
class World:
    contract: SagaContract
    plan: dict[str, str]  # step -> "done" | "fail" | "failsys" | "silent"
    now: float = 0.0
    state: SagaState | None = None
    inflight: list[Delivery] = field(default_factory=list)
    parked: list[Delivery] = field(default_factory=list)
    awake: bool = False
    barrier: dict[tuple[str, str], Message] = field(default_factory=dict)
    effect: dict[str, int] = field(default_factory=dict)
    history: list[tuple[Message | None, float]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # first issue of each compensation
    published: list[Publish] = field(default_factory=list)
    fed: set[str] = field(default_factory=set)  # event ids the tracker has seen
    losses: list[bool] = field(default_factory=list)  # fate of each losable publication

    # -- the network ------------------------------------------------------------------

    def publish(
        self,
        event: Event,
        *,
        event_id: str,
        step: str = "",
        op: Op = "",
        outcome: Outcome = "",
        source: str = "",
    ) -> None:
        envelope = Envelope(
            event_type=event.event_type,
            gid=GID,
            event_id=event_id,
            step=step,
            op=op,
            outcome=outcome,
            occurred_at=self.now,
            traceparent=TRACEPARENT,
            source=source,
        )
        message = Message(envelope, event, event.topic)
        if losable(event, self.contract) and self.losses and self.losses.pop(0):
            return
        self.inflight.append(Delivery("tracker", message))
        for target in self.contract.steps:
            if type(event) is target.on:
                self.inflight.append(Delivery(target.name, message))
            if type(event) is target.compensation:
                self.inflight.append(Delivery(target.name, message, compensation=True))

    def deliver(self, delivery: Delivery) -> None:
        if delivery.to == "tracker":
            self.feed(delivery.message)
        elif delivery.compensation:
            self.compensate(delivery.to)
        else:
            self.act(delivery)

    # -- participants that honour the barrier -------------------------------------------

    def act(self, delivery: Delivery) -> None:
        step = delivery.to
        if self.plan[step] == "silent" and not self.awake:
            self.parked.append(delivery)
            return
        if (step, "compensate") in self.barrier:
            return  # hanging action: its compensation already ran
        answer = self.barrier.get((step, "action"))
        if answer is None:
            index = int(step[1:])
            outcome = self.plan[step]
            if outcome in ("done", "silent"):
                self.effect[step] = self.effect.get(step, 0) + 1
                event: Event = DONE[index](order_id="o-1")
            else:
                event = (
                    FAIL[index](order_id="o-1")
                    if outcome == "fail"
                    else StepFailed(step=step, reason="declined")
                )
            ok = outcome in ("done", "silent")
            answer = self.answer(event, step, "action", "done" if ok else "failed")
            self.barrier[step, "action"] = answer
        self.resend(answer)

    def compensate(self, step: str) -> None:
        answer = self.barrier.get((step, "compensate"))
        if answer is None:
            action = self.barrier.get((step, "action"))
            if action is not None and action.envelope.outcome == "done":
                self.effect[step] -= 1
                event: Event = UNDONE[int(step[1:])](order_id="o-1")
                answer = self.answer(event, step, "compensate", "done")
            else:
                event = CompensationSkipped(step=step, reason="null compensation")
                answer = self.answer(event, step, "compensate", "skipped")
            self.barrier[step, "compensate"] = answer
        self.resend(answer)

    def answer(self, event: Event, step: str, op: Op, outcome: Outcome) -> Message:
        event_id = derived_event_id(GID, step, op, outcome)
        envelope = Envelope(
            event_type=event.event_type,
            gid=GID,
            event_id=event_id,
            step=step,
            op=op,
            outcome=outcome,
            occurred_at=self.now,
            traceparent=TRACEPARENT,
            source=step,
        )
        return Message(envelope, event, event.topic)

    def resend(self, answer: Message) -> None:
        env = answer.envelope
        self.publish(
            answer.event,
            event_id=env.event_id,
            step=env.step,
            op=env.op,
            outcome=env.outcome,
            source=env.source,
        )

    # -- the tracker --------------------------------------------------------------------

    def feed(self, message: Message) -> None:
        self.history.append((message, self.now))
        transition = apply(self.contract, self.state, message, self.now)
        event_id = message.envelope.event_id
        if event_id in self.fed and not isinstance(message.event, DeadlineCheck):
            # A redelivered event changes nothing, not even the version.
            assert transition.state is self.state
            assert transition.actions == ()
        self.fed.add(event_id)
        self.advance(transition)

    def tick(self, via_event: bool) -> None:
        assert self.state is not None
        if via_event:
            check = DeadlineCheck(version=self.state.version)
            message = Message(
                Envelope(
                    event_type=check.event_type,
                    gid=GID,
                    event_id=f"dc-{self.now}",
                    occurred_at=self.now,
                    traceparent=TRACEPARENT,
                ),
                check,
                check.topic,
            )
            self.feed(message)
        else:
            self.history.append((None, self.now))
            self.advance(on_deadline(self.contract, self.state, self.now))
        # (6) Firing the same deadline again is harmless.
        assert self.state is not None
        again = on_deadline(self.contract, self.state, self.now)
        assert again.actions == ()
        assert again.state == self.state

    def advance(self, transition: Transition) -> None:
        before, after = self.state, transition.state
        if before is not None:
            # (1) A terminal status never changes.
            if before.status.is_terminal:
                assert after.status == before.status
            if after is not before:
                assert after.version == before.version + 1
        for action in transition.actions:
            if action.op == "compensate" and action.step not in self.issued:
                # (3) Reverse dependency order: every dispatched later step is settled.
                self.issued.append(action.step)
                for later in self.contract.descendants(action.step):
                    cur = after.steps.get(later.name)
                    if later.compensation is not None and cur is not None:
                        assert cur.status in SETTLED, (action.step, later.name, cur.status)
        self.state = after
        for action in transition.actions:
            self.published.append(action)
            self.publish(
                action.event,
                event_id=action.event_id,
                step=action.step,
                op=action.op,
                source="tracker",
            )

    def settle(self, wake_early: bool) -> None:
        """Deliver everything, wake silent participants, fire deadlines until quiet."""
        for _ in range(5000):
            if self.inflight:
                self.deliver(self.inflight.pop(0))
                continue
            assert self.state is not None
            deadline = self.state.next_deadline()
            if self.parked and (wake_early or deadline is None):
                self.awake = True
                self.inflight, self.parked = self.parked, []
                continue
            if deadline is None:
                return
            self.now = max(self.now, deadline)
            self.tick(via_event=False)
        raise AssertionError("the saga never became quiet")


OPS = st.tuples(
    st.sampled_from(["deliver", "deliver", "deliver", "duplicate", "tick"]),
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([0.5, 1.0, 2.0, 3.0, 9.0, 25.0]),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    data=st.data(),
    ops=st.lists(OPS, min_size=5, max_size=80),
    wake_early=st.booleans(),
)
def test_machine_survives_hostile_schedules(
    shape: str, data: st.DataObject, ops: list[tuple[str, int, float, bool]], wake_early: bool
) -> None:
    parents = SHAPES[shape]
    compensable = data.draw(
        st.lists(
            st.sampled_from([True, True, True, False]), min_size=len(parents), max_size=len(parents)
        )
    )
    outcomes = st.sampled_from(["done", "done", "done", "fail", "failsys", "silent"])
    plan = {f"s{i}": data.draw(outcomes) for i in range(len(parents))}
    contract = build_contract(parents, compensable, data.draw(st.sampled_from([2, 3, 5])))
    world = World(
        contract,
        plan,
        losses=data.draw(st.lists(st.sampled_from([True, True, False]), max_size=10)),
    )
    world.publish(Start(order_id="o-1"), event_id=derived_event_id(GID, "start"), source="client")

    for kind, index, dt, flag in ops:
        if kind == "tick":
            if world.state is not None:
                world.now += dt
                world.tick(via_event=flag)
            continue
        if not world.inflight:
            continue
        position = index % len(world.inflight)
        if kind == "duplicate":
            world.deliver(world.inflight[position])
        else:
            world.deliver(world.inflight.pop(position))

    world.settle(wake_early)
    state = world.state
    assert state is not None

    # (2) Every saga reaches a terminal state, and announces it at most once.
    assert state.status.is_terminal
    announced = [type(p.event) for p in world.published]
    assert announced.count(SagaCompleted) + announced.count(SagaCompensated) <= 1
    alerts = [p for p in world.published if isinstance(p.event, SagaStuck)]
    assert len({p.event_id for p in alerts}) == len(alerts)
    if state.status == SagaStatus.STUCK:
        assert alerts

    # (4) Effects match the tracker's record: net zero for anything compensated.
    for step in contract.steps:
        cur = state.steps.get(step.name)
        applied = world.effect.get(step.name, 0)
        if state.status == SagaStatus.COMPLETED:
            assert applied == 1, step.name
        elif cur is None or cur.status in SETTLED:
            assert applied == 0, (step.name, cur)
        elif cur.status == StepStatus.DONE:
            assert applied == 1, step.name
        if state.status == SagaStatus.COMPENSATED and step.compensation is not None and not alerts:
            assert cur is None or cur.status in SETTLED, (step.name, cur)
            assert applied == 0, step.name

    # Every compensation could be built from its own step's events, and a completed saga
    # keeps no payload (it owes no compensation).
    assert not any("cannot build" in getattr(p.event, "reason", "") for p in alerts)
    if state.status == SagaStatus.COMPLETED:
        assert (state.payloads, state.replies, state.compensations) == ({}, {}, {})

    # (5) Replaying the same inputs into a fresh machine gives an equal state.
    replayed: SagaState | None = None
    for message, now in world.history:
        if message is None:
            assert replayed is not None
            replayed = on_deadline(contract, replayed, now).state
        else:
            replayed = apply(contract, replayed, message, now).state
    assert replayed == state
    assert replayed.model_dump(mode="json") == state.model_dump(mode="json")
    assert SagaState.model_validate(state.model_dump(mode="json")) == state


def losable(event: Event, contract: SagaContract) -> bool:
    """Compensation commands and their confirmations: the tracker's retries, and the
    barrier's re-sent answer to a repeated command, must recover them."""
    if isinstance(event, CompensationSkipped):
        return True
    kind = type(event)
    return (
        contract.step_for_compensation(kind) is not None
        or contract.step_compensated_by(kind) is not None
    )
