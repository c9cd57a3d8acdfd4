"""Compensation scheduling, completion, alerts and operators' commands: the half of the
state machine that decides what the tracker publishes."""

from __future__ import annotations

from choreo.events import Event, derived_event_id
from choreo.saga.contract import Step
from choreo.saga.state import SagaStatus, StepState, StepStatus
from choreo.saga.transition import Run, compensation_event_id
from choreo.system_events import (
    AdminCommand,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    bounded_reason,
)

# Dispatched steps whose compensation is still owed, and steps with nothing left to undo.
UNDONE = (StepStatus.PENDING, StepStatus.DONE)
SETTLED = (StepStatus.COMPENSATED, StepStatus.FAILED)
# Saga states in which owed compensations are issued (terminal ones only for late work).
UNDOING = (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.STUCK)


def complete(run: Run, why: str) -> None:
    if not run.set_status(SagaStatus.COMPLETED):
        run.note(f"{why} ignored: saga is {run.state.status}")
        return
    event = SagaCompleted(saga=run.contract.name)
    event_id = derived_event_id(run.state.gid, "saga", "completed")
    run.publish(event, "", "", event_id, "saga completed")


def settle(run: Run) -> None:
    """Complete a finished saga, issue the compensations now unblocked, and close a saga
    whose compensations are all confirmed."""
    s, contract = run.state, run.contract
    if s.status == SagaStatus.RUNNING and all(
        (cur := s.steps.get(name)) is not None and cur.status == StepStatus.DONE
        for name in contract.step_names
    ):
        complete(run, "last step done")
    if s.status not in UNDOING:
        return
    for step in contract.steps:
        cur = s.steps.get(step.name)
        if step.compensation is None or cur is None or cur.status not in UNDONE:
            continue
        if not any(_blocks(run, later) for later in contract.descendants(step)):
            issue(run, step, cur)
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
    elif s.status == SagaStatus.STUCK and s.cleared_at is None:
        # It stays STUCK (terminal states never reopen), but whoever looks must see that
        # nothing is owed any more, and retention may let it go.
        s.cleared_at = run.now
        run.note("clear: every compensation confirmed after the saga went STUCK")


def _blocks(run: Run, step: Step) -> bool:
    """A dispatched later step whose compensation must be confirmed first."""
    cur = run.state.steps.get(step.name)
    return step.compensation is not None and cur is not None and cur.status not in SETTLED


def issue(run: Run, step: Step, cur: StepState) -> None:
    cls, s = step.compensation, run.state
    if cls is None:
        return
    try:
        event = _compensation(run, step, cls)
    except Exception as exc:
        cur.status, cur.next_retry_at = StepStatus.COMPENSATING, None
        detail = " ".join(str(exc).split())[:300]
        cur.outcome_note = f"cannot build {cls.__name__} to compensate {step.name}: {detail}"
        stuck(run, step.name, cur, cur.outcome_note)
        return
    cur.compensation_attempts += 1
    attempt = cur.compensation_attempts
    cur.status, cur.compensation_issued_at = StepStatus.COMPENSATING, run.now
    cur.next_retry_at = run.now + run.contract.retry_delay(attempt)
    event_id = compensation_event_id(s.gid, step.name, attempt, cur.compensation_round)
    note = f"compensation of {step.name} issued (attempt {attempt})"
    run.publish(event, step.name, "compensate", event_id, note)


def _compensation(run: Run, step: Step, cls: type[Event]) -> Event:
    """Built once from the step's own trigger and done event (``Step.build_compensation``),
    then kept: every attempt re-publishes the same event."""
    s = run.state
    kept = s.compensations.get(step.name)
    if kept is not None:
        return cls.model_validate(kept)
    done = s.replies.get(step.name)
    reply = None if done is None or done not in s.payloads else (done, s.payloads[done])
    event, notes = step.build_compensation(s.payloads.get(step.on.event_type), reply)
    s.compensations[step.name] = event.model_dump(mode="json")
    for note in notes:
        run.log(note, step=step.name)
    return event


def forget(run: Run) -> None:
    """Drop the payloads that no owed compensation or operator's retry can need any more
    (``SagaState.payloads``/``replies``/``compensations``): a step needs its trigger's and
    done event's while it is pending (a retry re-publishes the trigger; it may time out),
    done with a compensation, not dispatched with one (a late success is undone), or
    compensating before its compensation is built; a compensation is kept while it is
    unconfirmed. A completed saga keeps nothing."""
    s = run.state
    if not (s.payloads or s.compensations):
        return
    if s.status == SagaStatus.COMPLETED:  # terminal, and never compensates
        s.payloads, s.replies, s.compensations = {}, {}, {}
        return
    steps, replies, built = s.steps, s.replies, s.compensations
    types: set[str] = set()
    needy: set[str] = set()
    owed: set[str] = set()
    for step in run.contract.steps:
        name, cur = step.name, steps.get(step.name)
        status = None if cur is None else cur.status
        if status == StepStatus.COMPENSATING:
            owed.add(name)
            if name in built:
                continue
        elif status != StepStatus.PENDING and (step.compensation is None or status in SETTLED):
            continue
        needy.add(name)
        types.add(step.on.event_type)
        if name in replies:
            types.add(replies[name])
    if not s.payloads.keys() <= types:
        s.payloads = {t: p for t, p in s.payloads.items() if t in types}
    if not replies.keys() <= needy:
        s.replies = {name: t for name, t in replies.items() if name in needy}
    if not built.keys() <= owed:
        s.compensations = {name: p for name, p in built.items() if name in owed}


def stuck(run: Run, name: str, cur: StepState, reason: str) -> None:
    """A compensation that cannot be confirmed: the saga is STUCK and an operator alerted,
    once per exhausted step. A terminal saga keeps its status but still alerts."""
    reason = bounded_reason(reason)
    run.set_status(SagaStatus.STUCK, reason)
    attempts = cur.compensation_attempts
    event = SagaStuck(saga=run.contract.name, step=name, attempts=attempts, reason=reason)
    event_id = derived_event_id(
        run.state.gid, name, "stuck", f"{cur.compensation_round}.{attempts}"
    )
    run.publish(event, name, "", event_id, f"stuck: {reason}")


def admin(run: Run, cmd: AdminCommand) -> None:
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


def _retry_triggers(run: Run) -> None:
    s, version = run.state, run.state.version
    pending = [
        st
        for st in run.contract.steps
        if st.name in s.steps and s.steps[st.name].status == StepStatus.PENDING
    ]
    if not pending:
        run.note("ignored: no pending step to retry")
    for step in pending:
        payload = s.payloads.get(step.on.event_type)
        try:
            event = step.on.model_validate(payload)
        except Exception:
            run.log(f"cannot retry {step.name}: no valid {step.on.__name__} seen", step=step.name)
            continue
        s.steps[step.name].deadline_at = run.now + step.deadline
        event_id = derived_event_id(s.gid, step.name, "retry", str(version))
        run.publish(event, step.name, "action", event_id, f"trigger of {step.name} re-published")


def _retry_compensations(run: Run) -> bool:
    """Re-issue every unconfirmed compensation with a fresh attempt budget."""
    retried = False
    for step in run.contract.steps:
        cur = run.state.steps.get(step.name)
        if cur is not None and cur.status == StepStatus.COMPENSATING:
            cur.compensation_attempts, cur.compensation_round = 0, cur.compensation_round + 1
            issue(run, step, cur)
            retried = True
    return retried
