"""The pure saga state machine, example by example."""

from __future__ import annotations

import itertools

import pytest

from choreo.events import Envelope, Event, Message, derived_event_id
from choreo.saga import (
    Publish,
    SagaContract,
    SagaState,
    SagaStatus,
    Step,
    StepStatus,
    apply,
    compensation_event_id,
    on_deadline,
)
from choreo.system_events import (
    AdminCommand,
    CompensationSkipped,
    DeadlineCheck,
    SagaCompensated,
    SagaCompleted,
    SagaStuck,
    StepFailed,
)


class Trip(Event, topic="test.trip"): ...


class TripBooked(Trip):
    trip_id: str
    amount: int


class SeatHeld(Trip):
    trip_id: str
    seat: str
    amount: int  # what the card step charges (and refunds)


class SeatUnavailable(Trip):
    trip_id: str
    reason: str


class ReleaseSeat(Trip):
    trip_id: str
    seat: str | None = None  # unknown when the seat step timed out before answering


class SeatReleased(Trip):
    trip_id: str


class CardCharged(Trip):
    trip_id: str


class CardDeclined(Trip):
    trip_id: str


class RefundCard(Trip):
    trip_id: str
    amount: int


class CardRefunded(Trip):
    trip_id: str


class HotelBooked(Trip):
    trip_id: str


class CancelHotel(Trip):
    trip_id: str


class HotelCancelled(Trip):
    trip_id: str


class TicketIssued(Trip):
    trip_id: str


class VoidTicket(Trip):
    trip_id: str


class TicketVoided(Trip):
    trip_id: str


class NeedsVoucher(Trip):
    voucher: str


class VoucherIssued(Trip):
    voucher: str


SEAT = Step(
    "seat",
    on=TripBooked,
    done=SeatHeld,
    failed=(SeatUnavailable,),
    compensation=ReleaseSeat,
    compensated=(SeatReleased,),
    deadline=10,
    service="seats",
)
CARD = Step(
    "card",
    on=SeatHeld,
    done=CardCharged,
    failed=(CardDeclined,),
    compensation=RefundCard,
    compensated=(CardRefunded,),
    deadline=20,
    service="payments",
)
TICKET = Step(
    "ticket",
    on=CardCharged,
    done=TicketIssued,
    compensation=VoidTicket,
    compensated=(TicketVoided,),
    deadline=30,
    service="ticketing",
)
HOTEL = Step(
    "hotel",
    on=SeatHeld,
    done=HotelBooked,
    compensation=CancelHotel,
    compensated=(HotelCancelled,),
    deadline=20,
    service="hotels",
)

SEQUENTIAL = SagaContract(
    "trip",
    start=TripBooked,
    steps=[SEAT, CARD, TICKET],
    compensation_retries=3,
    retry_backoff=1.0,
    retry_backoff_max=3.0,
)
PARALLEL = SagaContract("trip", start=TripBooked, steps=[SEAT, CARD, HOTEL])

GID = "g-1"
PAYLOAD = {"trip_id": "t-1"}


class Harness:
    """Feeds events into the machine and keeps the latest state and actions."""

    def __init__(self, contract: SagaContract = SEQUENTIAL) -> None:
        self.contract = contract
        self.state: SagaState | None = None
        self.actions: tuple[Publish, ...] = ()
        self.ids = itertools.count()

    @property
    def s(self) -> SagaState:
        assert self.state is not None
        return self.state

    def send(self, event: Event, now: float, **envelope: object) -> tuple[Publish, ...]:
        return self.deliver(message(event, event_id=f"e{next(self.ids)}", **envelope), now)

    def deliver(self, msg: Message, now: float) -> tuple[Publish, ...]:
        transition = apply(self.contract, self.state, msg, now)
        self.state, self.actions = transition.state, transition.actions
        return self.actions

    def tick(self, now: float) -> tuple[Publish, ...]:
        transition = on_deadline(self.contract, self.s, now)
        self.state, self.actions = transition.state, transition.actions
        return self.actions

    def status(self, step: str) -> StepStatus | None:
        st = self.s.steps.get(step)
        return None if st is None else st.status

    def run_to_ticket(self) -> None:
        self.send(TripBooked(trip_id="t-1", amount=50), 0)
        self.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1)
        self.send(CardCharged(trip_id="t-1"), 2)


def message(event: Event, *, event_id: str = "", **envelope: object) -> Message:
    env = Envelope(
        event_type=event.event_type,
        gid=GID,
        event_id=event_id or "x",
        occurred_at=0.0,
        traceparent="00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        **envelope,  # type: ignore[arg-type]
    )
    return Message(env, event, event.topic)


def kinds(actions: tuple[Publish, ...]) -> list[tuple[str, str]]:
    return [(type(a.event).__name__, a.step) for a in actions]


def test_happy_path_completes_once() -> None:
    h = Harness()
    assert h.send(TripBooked(trip_id="t-1", amount=50), 100) == ()
    assert h.s.saga == "trip"
    assert h.s.gid == GID
    assert h.s.status == SagaStatus.RUNNING
    assert h.s.version == 1
    seat = h.s.steps["seat"]
    assert (seat.status, seat.dispatched_at, seat.deadline_at) == (StepStatus.PENDING, 100, 110)
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 101)
    assert h.status("seat") == StepStatus.DONE
    assert h.status("card") == StepStatus.PENDING
    assert h.s.steps["card"].deadline_at == 121
    h.send(CardCharged(trip_id="t-1"), 102)
    actions = h.send(TicketIssued(trip_id="t-1"), 103)
    assert kinds(actions) == [("SagaCompleted", "")]
    assert actions[0].event == SagaCompleted(saga="trip")
    assert actions[0].event_id == derived_event_id(GID, "saga", "completed")
    assert h.s.status == SagaStatus.COMPLETED
    assert (h.s.finished_at, h.s.updated_at, h.s.version) == (103, 103, 4)
    # A completed saga owes no compensation: it keeps no payload.
    assert (h.s.payloads, h.s.replies, h.s.compensations) == ({}, {}, {})
    assert h.s.next_deadline() is None
    # The tracker's own announcement comes back: recorded, nothing else.
    assert h.send(SagaCompleted(saga="trip"), 104) == ()
    assert h.s.status == SagaStatus.COMPLETED
    assert h.s.finished_at == 103
    assert h.s.timeline[-1].event_type == "choreo.SagaCompleted"


def test_failure_of_step_two_compensates_step_one_only() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1)
    actions = h.send(CardDeclined(trip_id="t-1"), 2)
    assert h.s.status == SagaStatus.COMPENSATING
    assert h.s.reason == "step card failed"
    assert h.status("card") == StepStatus.FAILED
    assert actions == (
        Publish(
            ReleaseSeat(trip_id="t-1", seat="12A"),
            "seat",
            "compensate",
            derived_event_id(GID, "seat", "compensate", "1"),
        ),
    )
    assert h.s.steps["seat"].next_retry_at == 3.0
    actions = h.send(SeatReleased(trip_id="t-1"), 3)
    assert h.s.status == SagaStatus.COMPENSATED
    assert actions[0].event == SagaCompensated(saga="trip", reason="step card failed")
    assert h.status("seat") == StepStatus.COMPENSATED
    assert h.s.next_deadline() is None


@pytest.mark.parametrize("how", ["class", "system", "envelope"])
def test_the_three_ways_a_step_fails(how: str) -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    if how == "class":
        h.send(SeatUnavailable(trip_id="t-1", reason="sold out"), 1)
    elif how == "system":
        h.send(StepFailed(step="seat", reason="sold out"), 1)
    else:
        h.send(SeatHeld(trip_id="t-1", seat="?", amount=50), 1, step="seat", outcome="failed")
    assert h.status("seat") == StepStatus.FAILED
    assert h.s.status == SagaStatus.COMPENSATED  # nothing dispatched needs undoing
    assert h.actions[0].event == SagaCompensated(saga="trip", reason=h.s.reason)
    assert h.s.reason.startswith("step seat failed")
    assert h.status("card") is None


def test_timeout_compensates_in_reverse_order_one_at_a_time() -> None:
    h = Harness()
    h.run_to_ticket()
    assert h.s.next_deadline() == 32
    assert h.tick(31.9) == ()
    actions = h.tick(32)
    assert h.s.status == SagaStatus.COMPENSATING
    assert h.s.reason == "step ticket timed out"
    assert kinds(actions) == [("VoidTicket", "ticket")]
    assert h.s.steps["ticket"].outcome_note == "timed out"
    assert kinds(h.tick(32.5)) == []  # waiting for the confirmation, not yet retrying
    assert kinds(h.send(TicketVoided(trip_id="t-1"), 33)) == [("RefundCard", "card")]
    assert h.status("seat") == StepStatus.DONE
    assert kinds(h.send(CompensationSkipped(step="card", reason="never ran"), 34)) == [
        ("ReleaseSeat", "seat")
    ]
    actions = h.send(SeatReleased(trip_id="t-1"), 35)
    assert kinds(actions) == [("SagaCompensated", "")]
    assert h.s.status == SagaStatus.COMPENSATED
    assert h.s.finished_at == 35
    assert [h.s.steps[n].status for n in ("seat", "card", "ticket")] == [StepStatus.COMPENSATED] * 3


def test_parallel_steps_are_compensated_together_before_their_dependency() -> None:
    h = Harness(PARALLEL)
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="1C", amount=50), 1)
    assert h.status("card") == h.status("hotel") == StepStatus.PENDING
    actions = h.tick(21)
    assert h.s.reason == "step card, hotel timed out"
    assert kinds(actions) == [("RefundCard", "card"), ("CancelHotel", "hotel")]
    assert h.send(HotelCancelled(trip_id="t-1"), 22) == ()
    assert kinds(h.send(CardRefunded(trip_id="t-1"), 23)) == [("ReleaseSeat", "seat")]


def test_a_failed_parallel_branch_is_not_compensated_but_its_sibling_is() -> None:
    h = Harness(PARALLEL)
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="1C", amount=50), 1)
    h.send(HotelBooked(trip_id="t-1"), 2)
    assert kinds(h.send(CardDeclined(trip_id="t-1"), 3)) == [("CancelHotel", "hotel")]
    assert kinds(h.send(HotelCancelled(trip_id="t-1"), 4)) == [("ReleaseSeat", "seat")]


def test_retries_back_off_then_the_saga_is_stuck_with_one_alert() -> None:
    h = Harness()  # 3 attempts, backoff 1s doubling, capped at 3s
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1)
    first = h.send(CardDeclined(trip_id="t-1"), 10)
    assert h.s.steps["seat"].next_retry_at == 11
    assert h.tick(10.5) == ()
    second = h.tick(11)
    assert h.s.steps["seat"].compensation_attempts == 2
    assert h.s.steps["seat"].next_retry_at == 13
    third = h.tick(13)
    assert h.s.steps["seat"].next_retry_at == 16  # 4s capped to 3s
    ids = [a.event_id for a in (*first, *second, *third)]
    assert ids == [derived_event_id(GID, "seat", "compensate", str(n)) for n in (1, 2, 3)]
    assert h.s.next_deadline() == 16
    alerts = h.tick(16)
    assert h.s.status == SagaStatus.STUCK
    assert h.s.reason == "compensation of seat unconfirmed after 3 attempts"
    assert [a.event for a in alerts] == [
        SagaStuck(saga="trip", step="seat", attempts=3, reason=h.s.reason)
    ]
    assert h.s.finished_at == 16
    assert h.s.next_deadline() is None
    assert h.tick(16) == ()
    assert h.tick(1000) == ()
    # A confirmation that finally arrives is recorded; the saga stays STUCK.
    h.send(SeatReleased(trip_id="t-1"), 1001)
    assert h.status("seat") == StepStatus.COMPENSATED
    assert h.s.status == SagaStatus.STUCK


def test_late_success_after_timeout_compensation_is_not_applied() -> None:
    h = Harness()
    h.run_to_ticket()
    h.tick(40)
    version = h.s.version
    assert h.send(TicketIssued(trip_id="t-1"), 41) == ()
    assert h.status("ticket") == StepStatus.COMPENSATING
    assert h.s.status == SagaStatus.COMPENSATING
    assert "late success of ticket" in h.s.timeline[-1].note
    assert h.s.version == version + 1


def test_late_success_on_a_compensated_saga_is_compensated() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatUnavailable(trip_id="t-1", reason="sold out"), 1)
    assert h.s.status == SagaStatus.COMPENSATED
    # The seat service crashed and redelivered; its success arrives after all.
    actions = h.send(SeatHeld(trip_id="t-1", seat="3B", amount=50), 5)
    assert actions == ()  # the seat failed: its barrier blocks the success, nothing to undo
    # A step that was never seen dispatched reports success: undo it, stay COMPENSATED.
    actions = h.send(CardCharged(trip_id="t-1"), 6)
    assert kinds(actions) == [("RefundCard", "card")]
    assert actions[0].event == RefundCard(trip_id="t-1", amount=50)
    assert h.s.status == SagaStatus.COMPENSATED
    assert h.s.next_deadline() == 7
    assert h.send(CardRefunded(trip_id="t-1"), 7) == ()
    assert h.status("card") == StepStatus.COMPENSATED
    assert h.s.next_deadline() is None


def test_trigger_while_compensating_is_dispatched_and_compensated() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    assert kinds(h.tick(10)) == [("ReleaseSeat", "seat")]  # the seat timed out
    # The seat's late success is not applied, but it also triggered the card step,
    # which may now run: the card is compensated too (a null compensation if it never ran).
    assert kinds(h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 11)) == [
        ("RefundCard", "card")
    ]
    assert h.status("seat") == StepStatus.COMPENSATING
    assert h.s.steps["card"].outcome_note == "dispatched while compensating"
    assert kinds(h.send(CardCharged(trip_id="t-1"), 12)) == [("VoidTicket", "ticket")]
    assert h.status("card") == StepStatus.COMPENSATING
    h.send(TicketVoided(trip_id="t-1"), 13)
    h.send(CardRefunded(trip_id="t-1"), 14)
    assert h.s.status == SagaStatus.COMPENSATING
    assert kinds(h.send(SeatReleased(trip_id="t-1"), 15)) == [("SagaCompensated", "")]


def test_done_before_trigger_is_accepted() -> None:
    h = Harness()
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1)
    assert h.s.status == SagaStatus.RUNNING
    assert h.status("seat") == StepStatus.DONE
    assert h.status("card") == StepStatus.PENDING
    h.send(TripBooked(trip_id="t-1", amount=50), 2)
    assert h.status("seat") == StepStatus.DONE
    h.send(TicketIssued(trip_id="t-1"), 3)
    assert h.s.status == SagaStatus.RUNNING
    h.send(CardCharged(trip_id="t-1"), 4)
    assert h.s.status == SagaStatus.COMPLETED


def test_duplicates_are_ignored_without_a_new_version() -> None:
    h = Harness()
    msg = message(TripBooked(trip_id="t-1", amount=50), event_id="same")
    h.deliver(msg, 0)
    before = h.s
    transition = apply(SEQUENTIAL, before, msg, 5)
    assert transition.state is before
    assert transition.actions == ()
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1, step="seat")
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 2, step="seat")  # same fact, new id
    assert h.status("seat") == StepStatus.DONE
    assert h.s.steps["card"].dispatched_at == 1
    assert "already" in h.s.timeline[-1].note


def test_compensation_ids_are_deterministic() -> None:
    def run() -> list[str]:
        h = Harness()
        h.run_to_ticket()
        ids = [a.event_id for a in h.tick(100)]
        ids += [a.event_id for a in h.tick(101)]
        return ids

    assert run() == run()
    assert run() == [
        compensation_event_id(GID, "ticket", 1),
        compensation_event_id(GID, "ticket", 2),
    ]
    assert compensation_event_id(GID, "ticket", 2, 1) != compensation_event_id(GID, "ticket", 2)


def test_apply_never_mutates_its_input() -> None:
    h = Harness()
    h.run_to_ticket()
    before = h.s
    snapshot = before.model_dump()
    on_deadline(SEQUENTIAL, before, 1000)
    apply(SEQUENTIAL, before, message(CardDeclined(trip_id="t-1"), event_id="d"), 3)
    assert before.model_dump() == snapshot


def test_deadline_check_event_is_on_deadline() -> None:
    h = Harness()
    h.run_to_ticket()
    expected = on_deadline(SEQUENTIAL, h.s, 50)
    got = apply(SEQUENTIAL, h.s, message(DeadlineCheck(version=3), event_id="dc"), 50)
    assert got.state == expected.state
    assert got.actions == expected.actions
    idle = apply(SEQUENTIAL, h.s, message(DeadlineCheck(version=3), event_id="dc"), 5)
    assert idle.state is h.s


def test_on_deadline_twice_is_harmless() -> None:
    h = Harness()
    h.run_to_ticket()
    h.tick(40)
    state = h.s
    assert h.tick(40) == ()
    assert h.s is state


def test_compensation_that_cannot_be_built_makes_the_saga_stuck() -> None:
    # Only the done event carries the voucher (lint warns): a timed-out step has none.
    voucher = Step("voucher", on=TripBooked, done=VoucherIssued, compensation=NeedsVoucher)
    contract = SagaContract("trip", start=TripBooked, steps=[voucher])
    h = Harness(contract)
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    actions = h.tick(30)
    assert h.s.status == SagaStatus.STUCK
    assert "cannot build NeedsVoucher to compensate voucher" in h.s.reason
    assert [type(a.event) for a in actions] == [SagaStuck]
    assert h.tick(100) == ()


def test_completed_by_completes_early() -> None:
    contract = SagaContract("trip", start=TripBooked, steps=[SEAT, CARD], completed_by=HotelBooked)
    h = Harness(contract)
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    assert kinds(h.send(HotelBooked(trip_id="t-1"), 1)) == [("SagaCompleted", "")]
    h.send(SeatHeld(trip_id="t-1", seat="1", amount=50), 2)
    assert h.status("seat") == StepStatus.DONE
    assert h.s.status == SagaStatus.COMPLETED


def test_admin_compensate_and_ignored_commands() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(AdminCommand(action="resolve", actor="ana", note="looks fine"), 1)
    assert h.s.status == SagaStatus.RUNNING
    assert not h.s.resolved
    assert "ignored" in h.s.timeline[-1].note
    assert "ana" in h.s.timeline[-1].note
    actions = h.send(AdminCommand(action="compensate", actor="ana", note="customer asked"), 2)
    assert h.s.status == SagaStatus.COMPENSATING
    assert h.s.reason == "operator: customer asked"
    assert kinds(actions) == [("ReleaseSeat", "seat")]
    h.send(AdminCommand(action="compensate", actor="bo"), 3)
    assert "ignored" in h.s.timeline[-1].note


def test_admin_retry_republishes_pending_triggers() -> None:
    h = Harness()
    h.run_to_ticket()
    version = h.s.version
    actions = h.send(AdminCommand(action="retry", actor="ana"), 20)
    assert actions == (
        Publish(
            CardCharged(trip_id="t-1"),
            "ticket",
            "action",
            derived_event_id(GID, "ticket", "retry", str(version)),
        ),
    )
    assert h.s.steps["ticket"].deadline_at == 50
    # The re-published trigger comes back: nothing new happens.
    assert h.deliver(message(actions[0].event, event_id=actions[0].event_id), 21) == ()
    assert h.status("card") == StepStatus.DONE


def test_admin_retry_and_resolve_on_a_stuck_saga() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="12A", amount=50), 1)
    h.send(CardDeclined(trip_id="t-1"), 10)
    for now in (11, 13, 16):
        h.tick(now)
    assert h.s.status == SagaStatus.STUCK
    actions = h.send(AdminCommand(action="retry", actor="ana", note="seats db back"), 20)
    assert kinds(actions) == [("ReleaseSeat", "seat")]
    assert actions[0].event_id == compensation_event_id(GID, "seat", 1, 1)
    seat = h.s.steps["seat"]
    assert (seat.compensation_attempts, seat.compensation_round) == (1, 1)
    assert h.s.status == SagaStatus.STUCK
    assert h.s.next_deadline() == 21
    h.send(AdminCommand(action="resolve", actor="ana", note="released by hand"), 30)
    assert (h.s.resolved, h.s.resolved_by, h.s.resolved_note) == (True, "ana", "released by hand")
    assert h.s.timeline[-1].note == "admin resolve by ana: released by hand"


def test_state_round_trips_through_json() -> None:
    h = Harness(PARALLEL)
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    h.send(SeatHeld(trip_id="t-1", seat="1C", amount=50), 1)
    h.tick(25)
    dumped = h.s.model_dump(mode="json")
    assert dumped["status"] == "COMPENSATING"
    assert SagaState.model_validate(dumped) == h.s
    again = SagaState.model_validate(dumped)
    assert on_deadline(PARALLEL, again, 30).state == on_deadline(PARALLEL, h.s, 30).state


def test_seen_ids_and_timeline_are_bounded() -> None:
    h = Harness()
    h.send(TripBooked(trip_id="t-1", amount=50), 0)
    for n in range(1100):
        h.send(SeatHeld(trip_id="t-1", seat=str(n), amount=50), n)
    assert len(h.s.seen_ids) == 512
    assert h.s.seen_ids[-1] == "e1100"
    assert len(h.s.timeline) == 1000
    assert h.s.version == 1101
