"""The pure saga state machine: ``apply`` folds one event into a saga's state and
``on_deadline`` fires due deadlines. No I/O and no clock reads: ``now`` is passed in,
so the same inputs always give the same state and the same actions.

Inputs are never mutated; a transition works on a copy. The returned actions are
events the tracker must publish under the saga's gid, with the given event ids.
"""

from __future__ import annotations

from choreo.events import Message
from choreo.saga.compensation import SETTLED, admin, complete, forget, issue, settle, stuck
from choreo.saga.contract import SagaContract, Step
from choreo.saga.state import SagaState, SagaStatus, StepState, StepStatus
from choreo.saga.transition import Publish, Run, Transition, compensation_event_id
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    DeadlineCheck,
    StepFailed,
    SystemEvent,
    bounded_reason,
)

__all__ = ["Publish", "Transition", "apply", "compensation_event_id", "on_deadline"]


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
    run = Run(contract, state, now)
    run.record(message)
    if message.envelope.traceparent:
        run.state.traceparent = message.envelope.traceparent
    _route(run, message)
    settle(run)
    forget(run)
    return run.finish()


def on_deadline(contract: SagaContract, state: SagaState, now: float) -> Transition:
    """Time out pending steps and retry unconfirmed compensations due at ``now``.
    Firing it again at the same ``now`` changes nothing."""
    run = Run(contract, state, now)
    s = run.state
    for step in contract.steps:
        cur = s.steps.get(step.name)
        if cur is None or cur.status != StepStatus.COMPENSATING:
            continue
        if cur.next_retry_at is None or cur.next_retry_at > now:
            continue
        if cur.compensation_attempts < contract.compensation_retries:
            issue(run, step, cur)
        else:
            cur.next_retry_at = None
            cur.outcome_note = "compensation retry budget spent"
            attempts = cur.compensation_attempts
            why = f"compensation of {step.name} unconfirmed after {attempts} attempts"
            stuck(run, step.name, cur, why)
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
    settle(run)
    if not run.touched:
        return Transition(state)
    forget(run)
    return run.finish()


def _route(run: Run, message: Message) -> None:
    event, env, contract = message.event, message.envelope, run.contract
    if isinstance(event, AdminCommand):
        admin(run, event)
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
            complete(run, "completed_by event")
            known = True
        if not known:
            run.note("not part of the contract")


def _triggered(run: Run, step: Step) -> None:
    s, name, now = run.state, step.name, run.now
    run.keep_payload()  # the first one, which dispatched the step
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


def _done(run: Run, step: Step) -> None:
    s, name = run.state, step.name
    cur = s.steps.get(name)
    if cur is not None and cur.status in (StepStatus.DONE, StepStatus.FAILED):
        run.note(f"success of {name} ignored: step already {cur.status}", name)
    elif cur is not None and cur.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED):
        run.note(f"late success of {name} after its compensation was issued: not applied", name)
    elif s.status in (SagaStatus.RUNNING, SagaStatus.COMPLETED):
        _keep_reply(run, step)
        if cur is None:
            cur = s.steps[name] = StepState(status=StepStatus.DONE)
            run.note(f"{name} done before its trigger was seen", name)
        else:
            run.note(f"{name} done", name)
        cur.status, cur.finished_at = StepStatus.DONE, run.now
    else:
        _keep_reply(run, step)
        if cur is None:
            cur = s.steps[name] = StepState(status=StepStatus.PENDING)
        cur.finished_at, cur.outcome_note = run.now, "late success"
        undo = "it will be compensated" if step.compensation else "it has no compensation"
        run.note(f"late success of {name} while saga is {s.status}: not applied, {undo}", name)


def _keep_reply(run: Run, step: Step) -> None:
    """Keep the applied done event of a step that may have to be compensated."""
    if step.compensation is not None and step.name not in run.state.replies:
        run.state.replies[step.name] = run.keep_payload()


def _failed(run: Run, name: str, raw_reason: str) -> None:
    reason = bounded_reason(raw_reason)  # a participant's text, kept in the state
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


def _confirmed(run: Run, name: str, *, skipped: bool) -> None:
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
