"""The pure saga state machine: ``apply`` folds one event into a saga's state and
``on_deadline`` fires due deadlines. No I/O and no clock reads: ``now`` is passed in,
so the same inputs always give the same state and the same actions.

Inputs are never mutated; a transition works on a copy. The returned actions are
events the tracker must publish under the saga's gid, with the given event ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from choreo.events import Event, Message, Op, derived_event_id
from choreo.saga.contract import SagaContract, Step
from choreo.saga.state import (
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    TimelineEntry,
)
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    DeadlineCheck,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
    SystemEvent,
)

# Dispatched steps whose compensation is still owed, and steps with nothing left to undo.
UNDONE = (StepStatus.PENDING, StepStatus.DONE)
SETTLED = (StepStatus.COMPENSATED, StepStatus.FAILED)
# Saga states in which owed compensations are issued (terminal ones only for late work).
UNDOING = (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.STUCK)


@dataclass(frozen=True)
class Publish:
    """An event the tracker must publish with the saga's gid."""

    event: Event
    step: str
    op: Op
    event_id: str


@dataclass(frozen=True)
class Transition:
    state: SagaState
    actions: tuple[Publish, ...] = ()


def compensation_event_id(gid: str, step: str, attempt: int, round_: int = 0) -> str:
    """Deterministic id of a compensation attempt; an operator's retry starts a new round."""
    suffix = str(attempt) if round_ == 0 else f"{round_}.{attempt}"
    return derived_event_id(gid, step, "compensate", suffix)


def apply(
    contract: SagaContract, state: SagaState | None, message: Message, now: float
) -> Transition:
    """Fold one event into the saga's state (None for a gid not seen yet)."""
    if state is not None and state.has_seen(message.envelope.event_id):
        return Transition(state)
    if state is None:
        state = SagaState.new(message.gid, contract.name, now)
    if isinstance(message.event, DeadlineCheck):
        return on_deadline(contract, state, now)
    run = _Run(contract, state, now)
    run.record(message)
    _route(run, message)
    _settle(run)
    return run.finish()


def on_deadline(contract: SagaContract, state: SagaState, now: float) -> Transition:
    """Time out pending steps and retry unconfirmed compensations due at ``now``.
    Firing it again at the same ``now`` changes nothing."""
    run = _Run(contract, state, now)
    s = run.state
    for step in contract.steps:
        cur = s.steps.get(step.name)
        if cur is None or cur.status != StepStatus.COMPENSATING:
            continue
        if cur.next_retry_at is None or cur.next_retry_at > now:
            continue
        if cur.compensation_attempts < contract.compensation_retries:
            _issue(run, step, cur)
        else:
            cur.next_retry_at = None
            cur.outcome_note = "compensation retry budget spent"
            attempts = cur.compensation_attempts
            why = f"compensation of {step.name} unconfirmed after {attempts} attempts"
            _stuck(run, step.name, cur, why)
    if s.status == SagaStatus.RUNNING:
        due = [
            step.name
            for step in contract.steps
            if (cur := s.steps.get(step.name)) is not None
            and cur.status == StepStatus.PENDING
            and cur.deadline_at is not None
            and cur.deadline_at <= now
        ]
        for name in due:
            s.steps[name].outcome_note = "timed out"
            run.log(f"step {name} timed out", step=name)
        if due:
            run.set_status(SagaStatus.COMPENSATING, f"step {', '.join(due)} timed out")
    _settle(run)
    if not run.touched:
        return Transition(state)
    return run.finish()


class _Run:
    """One transition in progress: a private copy of the state plus what it produced."""

    def __init__(self, contract: SagaContract, state: SagaState, now: float) -> None:
        self.contract = contract
        self.now = now
        self.state = state.draft()
        self.actions: list[Publish] = []
        self.entries: list[TimelineEntry] = []
        self.message: Message | None = None
        self.notes: list[str] = []
        self.step_hint = ""

    @property
    def touched(self) -> bool:
        return bool(self.message or self.entries or self.actions)

    def record(self, message: Message) -> None:
        self.message = message
        self.state.remember(message)

    def note(self, text: str, step: str = "") -> None:
        """Explain what the message being applied did."""
        self.notes.append(text)
        self.step_hint = self.step_hint or step

    def log(
        self, text: str, *, step: str = "", event_type: str = "", event_id: str = "", op: str = ""
    ) -> None:
        """Record something the tracker itself did."""
        entry = TimelineEntry(
            at=self.now,
            occurred_at=self.now,
            event_type=event_type,
            event_id=event_id,
            step=step,
            op=op,
            source="tracker",
            note=text,
        )
        self.entries.append(entry)

    def publish(self, event: Event, step: str, op: Op, event_id: str, note: str) -> None:
        self.actions.append(Publish(event, step, op, event_id))
        self.log(note, step=step, event_type=event.event_type, event_id=event_id, op=op)

    def set_status(self, status: SagaStatus, reason: str | None = None) -> bool:
        """Move the saga on; a terminal saga never changes status."""
        s = self.state
        if s.status.is_terminal or s.status == status:
            return False
        s.status = status
        if reason is not None:
            s.reason = reason
        if status.is_terminal:
            s.finished_at = self.now
        return True

    def finish(self) -> Transition:
        s = self.state
        entries = list(self.entries)
        if self.message is not None:
            note = "; ".join(self.notes)
            entries.insert(
                0, TimelineEntry.of_message(self.message, self.now, note, self.step_hint)
            )
        s.add_timeline(entries)
        s.version += 1
        s.updated_at = self.now
        return Transition(s, tuple(self.actions))


def _route(run: _Run, message: Message) -> None:
    event, env, contract = message.event, message.envelope, run.contract
    if isinstance(event, AdminCommand):
        _admin(run, event)
    elif isinstance(event, StepFailed):
        _failed(run, event.step, event.reason)
    elif isinstance(event, CompensationSkipped):
        _confirmed(run, event.step, skipped=True)
    elif isinstance(event, SystemEvent):
        run.note("recorded")
    elif (step := contract.step_for_compensation(type(event))) is not None:
        run.note(f"compensation of {step.name} published", step.name)
    elif (step := contract.step_compensated_by(type(event))) is not None:
        _confirmed(run, step.name, skipped=False)
    elif (step := contract.step_failed_by(type(event))) is not None:
        _failed(run, step.name, str(getattr(event, "reason", "") or ""))
    elif env.outcome == "failed" and env.op != "compensate" and contract.has_step(env.step):
        _failed(run, env.step, "")
    else:
        known = False
        if (step := contract.step_done_by(type(event))) is not None:
            _done(run, step)
            known = True
        for step in contract.step_for_trigger(type(event)):
            _triggered(run, step)
            known = True
        if contract.completes(type(event)):
            _complete(run, "completed_by event")
            known = True
        if not known:
            run.note("not part of the contract")


def _triggered(run: _Run, step: Step) -> None:
    s, name, now = run.state, step.name, run.now
    if name in s.steps:
        run.note(f"{name} already dispatched", name)
    elif s.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        cur = StepState(
            status=StepStatus.PENDING, dispatched_at=now, deadline_at=now + step.deadline
        )
        s.steps[name] = cur
        if s.status == SagaStatus.COMPENSATING:
            cur.outcome_note = "dispatched while compensating"
            run.note(f"{name} dispatched while compensating: it will be compensated", name)
        else:
            run.note(f"{name} dispatched", name)
    else:
        run.note(f"trigger of {name} ignored: saga is {s.status}", name)


def _done(run: _Run, step: Step) -> None:
    s, name = run.state, step.name
    cur = s.steps.get(name)
    if cur is not None and cur.status in (StepStatus.DONE, StepStatus.FAILED):
        run.note(f"success of {name} ignored: step already {cur.status}", name)
    elif cur is not None and cur.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED):
        run.note(f"late success of {name} after its compensation was issued: not applied", name)
    elif s.status in (SagaStatus.RUNNING, SagaStatus.COMPLETED):
        if cur is None:
            cur = s.steps[name] = StepState(status=StepStatus.DONE)
            run.note(f"{name} done before its trigger was seen", name)
        else:
            run.note(f"{name} done", name)
        cur.status, cur.finished_at = StepStatus.DONE, run.now
    else:
        if cur is None:
            cur = s.steps[name] = StepState(status=StepStatus.PENDING)
        cur.finished_at, cur.outcome_note = run.now, "late success"
        undo = "it will be compensated" if step.compensation else "it has no compensation"
        run.note(f"late success of {name} while saga is {s.status}: not applied, {undo}", name)


def _failed(run: _Run, name: str, reason: str) -> None:
    s = run.state
    if not run.contract.has_step(name):
        run.note(f"failure of unknown step {name!r} ignored")
        return
    cur = s.steps.get(name)
    if cur is not None and cur.status in (StepStatus.DONE, StepStatus.FAILED):
        run.note(f"failure of {name} ignored: step already {cur.status}", name)
        return
    if cur is not None and cur.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED):
        run.note(f"{name} failed after its compensation was issued", name)
        return
    if cur is None:
        cur = s.steps[name] = StepState(status=StepStatus.FAILED)
    why = f"step {name} failed" + (f": {reason}" if reason else "")
    cur.status, cur.finished_at, cur.outcome_note = StepStatus.FAILED, run.now, reason or "failed"
    run.note(why, name)
    run.set_status(SagaStatus.COMPENSATING, why)


def _confirmed(run: _Run, name: str, *, skipped: bool) -> None:
    s = run.state
    if not run.contract.has_step(name):
        run.note(f"confirmation for unknown step {name!r} ignored")
        return
    cur = s.steps.get(name)
    if cur is not None and cur.status in SETTLED:
        run.note(f"confirmation for {name} ignored: step already {cur.status}", name)
        return
    if cur is None:
        cur = s.steps[name] = StepState(status=StepStatus.COMPENSATED)
    issued = cur.status == StepStatus.COMPENSATING
    cur.status, cur.compensated_at, cur.next_retry_at = StepStatus.COMPENSATED, run.now, None
    run.note(f"{name} compensated" + (" (skipped by the barrier)" if skipped else ""), name)
    if not issued:
        run.note("no compensation had been issued by the tracker")
        run.set_status(SagaStatus.COMPENSATING, f"step {name} was compensated by its participant")


def _complete(run: _Run, why: str) -> None:
    if not run.set_status(SagaStatus.COMPLETED):
        run.note(f"{why} ignored: saga is {run.state.status}")
        return
    event = SagaCompleted(saga=run.contract.name)
    event_id = derived_event_id(run.state.gid, "saga", "completed")
    run.publish(event, "", "", event_id, "saga completed")


def _settle(run: _Run) -> None:
    """Complete a finished saga, issue the compensations now unblocked, and close a saga
    whose compensations are all confirmed."""
    s, contract = run.state, run.contract
    if s.status == SagaStatus.RUNNING and all(
        (cur := s.steps.get(name)) is not None and cur.status == StepStatus.DONE
        for name in contract.step_names
    ):
        _complete(run, "last step done")
    if s.status not in UNDOING:
        return
    for step in contract.steps:
        cur = s.steps.get(step.name)
        if step.compensation is None or cur is None or cur.status not in UNDONE:
            continue
        if not any(_blocks(run, later) for later in contract.descendants(step)):
            _issue(run, step, cur)
    owed = (StepStatus.PENDING, StepStatus.DONE, StepStatus.COMPENSATING)
    if any(
        cur.status in owed and contract.step(name).compensation is not None
        for name, cur in s.steps.items()
        if contract.has_step(name)
    ):
        return
    if run.set_status(SagaStatus.COMPENSATED):
        event = SagaCompensated(saga=contract.name, reason=s.reason)
        event_id = derived_event_id(s.gid, "saga", "compensated")
        run.publish(event, "", "", event_id, "saga compensated")


def _blocks(run: _Run, step: Step) -> bool:
    """A dispatched later step whose compensation must be confirmed first."""
    cur = run.state.steps.get(step.name)
    return step.compensation is not None and cur is not None and cur.status not in SETTLED


def _issue(run: _Run, step: Step, cur: StepState) -> None:
    cls, s = step.compensation, run.state
    if cls is None:
        return
    try:
        event = cls.model_validate({k: v for k, v in s.data.items() if k in cls.model_fields})
    except Exception as exc:
        cur.status, cur.next_retry_at = StepStatus.COMPENSATING, None
        detail = " ".join(str(exc).split())[:300]
        cur.outcome_note = f"cannot build {cls.__name__} to compensate {step.name}: {detail}"
        _stuck(run, step.name, cur, cur.outcome_note)
        return
    cur.compensation_attempts += 1
    attempt = cur.compensation_attempts
    cur.status, cur.compensation_issued_at = StepStatus.COMPENSATING, run.now
    cur.next_retry_at = run.now + run.contract.retry_delay(attempt)
    event_id = compensation_event_id(s.gid, step.name, attempt, cur.compensation_round)
    note = f"compensation of {step.name} issued (attempt {attempt})"
    run.publish(event, step.name, "compensate", event_id, note)


def _stuck(run: _Run, name: str, cur: StepState, reason: str) -> None:
    """A compensation that cannot be confirmed: the saga is STUCK and an operator alerted,
    once per exhausted step. A terminal saga keeps its status but still alerts."""
    run.set_status(SagaStatus.STUCK, reason)
    attempts = cur.compensation_attempts
    event = SagaStuck(saga=run.contract.name, step=name, attempts=attempts, reason=reason)
    event_id = derived_event_id(
        run.state.gid, name, "stuck", f"{cur.compensation_round}.{attempts}"
    )
    run.publish(event, name, "", event_id, f"stuck: {reason}")


def _admin(run: _Run, cmd: AdminCommand) -> None:
    s = run.state
    run.note(f"admin {cmd.action} by {cmd.actor}" + (f": {cmd.note}" if cmd.note else ""))
    if cmd.action == "compensate" and s.status == SagaStatus.RUNNING:
        run.set_status(SagaStatus.COMPENSATING, f"operator: {cmd.note or cmd.actor}")
    elif cmd.action == "retry" and s.status == SagaStatus.RUNNING:
        _retry_triggers(run)
    elif cmd.action == "retry" and _retry_compensations(run):
        pass
    elif cmd.action == "resolve" and s.status == SagaStatus.STUCK:
        s.resolved, s.resolved_by, s.resolved_note = True, cmd.actor, cmd.note
    else:
        run.note(f"ignored: nothing to {cmd.action} while saga is {s.status}")


def _retry_triggers(run: _Run) -> None:
    s, version = run.state, run.state.version
    pending = [
        st
        for st in run.contract.steps
        if st.name in s.steps and s.steps[st.name].status == StepStatus.PENDING
    ]
    if not pending:
        run.note("ignored: no pending step to retry")
    for step in pending:
        payload = s.events_by_type.get(step.on.event_type)
        try:
            event = step.on.model_validate(payload)
        except Exception:
            run.log(f"cannot retry {step.name}: no valid {step.on.__name__} seen", step=step.name)
            continue
        s.steps[step.name].deadline_at = run.now + step.deadline
        event_id = derived_event_id(s.gid, step.name, "retry", str(version))
        run.publish(event, step.name, "action", event_id, f"trigger of {step.name} re-published")


def _retry_compensations(run: _Run) -> bool:
    """Re-issue every unconfirmed compensation with a fresh attempt budget."""
    retried = False
    for step in run.contract.steps:
        cur = run.state.steps.get(step.name)
        if cur is not None and cur.status == StepStatus.COMPENSATING:
            cur.compensation_attempts, cur.compensation_round = 0, cur.compensation_round + 1
            _issue(run, step, cur)
            retried = True
    return retried
