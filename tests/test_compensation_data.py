"""Where a compensation's fields come from: its own step's trigger and done event, never
another event of the saga; and the tracker's state keeps only what owed compensations
and operators' retries need."""

from __future__ import annotations

import itertools

import pytest

from choreo.errors import ContractError
from choreo.events import Envelope, Event, Message
from choreo.saga import Publish, SagaContract, SagaState, SagaStatus, Step, apply, on_deadline
from choreo.system_events import AdminCommand, CompensationSkipped, SagaStuck


class Shop(Event, topic="test.parcels"):
    order_id: str


class OrderPlaced(Shop):
    amount: int  # money


class PaymentTaken(Shop): ...


class RefundPayment(Shop):
    amount: int


class PaymentRefunded(Shop): ...


class Packed(Shop):
    amount: int  # a parcel count


class Unpack(Shop): ...


class Unpacked(Shop): ...


class Shipped(Shop): ...


class ShipFailed(Shop): ...


class Unrelated(Shop):
    blob: str


PAYMENT = Step(
    "payment",
    on=OrderPlaced,
    done=PaymentTaken,
    compensation=RefundPayment,
    compensated=PaymentRefunded,
)
PACKING = Step("packing", on=PaymentTaken, done=Packed, compensation=Unpack, compensated=Unpacked)
SHIPPING = Step("shipping", on=Packed, done=Shipped, failed=ShipFailed)
ORDER = SagaContract("order", start=OrderPlaced, steps=[PAYMENT, PACKING, SHIPPING])


class Saga:
    def __init__(self, contract: SagaContract = ORDER) -> None:
        self.contract = contract
        self.state: SagaState | None = None
        self.ids = itertools.count()

    @property
    def s(self) -> SagaState:
        assert self.state is not None
        return self.state

    def send(self, event: Event, now: float) -> tuple[Publish, ...]:
        env = Envelope(
            event_type=event.event_type,
            gid="g-1",
            event_id=f"e{next(self.ids)}",
            occurred_at=now,
            traceparent="00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        )
        transition = apply(self.contract, self.state, Message(env, event, event.topic), now)
        self.state = transition.state
        return transition.actions

    def tick(self, now: float) -> tuple[Publish, ...]:
        transition = on_deadline(self.contract, self.s, now)
        self.state = transition.state
        return transition.actions


def test_a_refund_uses_the_orders_amount_not_a_later_parcel_count() -> None:
    """The reported flaw: payloads of the whole saga merged by field name made the refund
    of OrderPlaced(amount=100) take Packed(amount=2), a parcel count."""
    saga = Saga()
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    saga.send(PaymentTaken(order_id="o-1"), 1)
    saga.send(Packed(order_id="o-1", amount=2), 2)
    assert [a.event for a in saga.send(ShipFailed(order_id="o-1"), 3)] == [Unpack(order_id="o-1")]
    [refund] = saga.send(Unpacked(order_id="o-1"), 4)
    assert refund.event == RefundPayment(order_id="o-1", amount=100)
    saga.send(PaymentRefunded(order_id="o-1"), 5)
    assert saga.s.status == SagaStatus.COMPENSATED


def test_a_compensation_that_only_an_unrelated_event_could_fill_is_refused() -> None:
    """Before, a refund step triggered by PaymentTaken got its amount from OrderPlaced
    (or from whatever later event carried an ``amount``)."""
    with pytest.raises(ContractError) as refused:
        Step("refund", on=PaymentTaken, done=Shipped, compensation=RefundPayment)
    assert str(refused.value) == (
        "step 'refund': RefundPayment.amount cannot be filled: neither its trigger "
        "PaymentTaken nor its done event Shipped carries 'amount' (fields of other events of "
        "the saga are never used); add it to one of them, give it a default, or build it with "
        "Step(..., compensate_with=lambda trigger, done: RefundPayment(...))"
    )


def test_the_done_event_wins_and_a_different_trigger_value_is_noted() -> None:
    class Reserve(Shop):
        qty: int

    class Reserved(Shop):
        qty: int  # what was actually reserved

    class Release(Shop):
        qty: int

    ship = Step("ship", on=Reserved, done=Shipped)

    stock = Step("stock", on=Reserve, done=Reserved, compensation=Release)
    contract = SagaContract("stock", start=Reserve, steps=[stock, ship])
    assert (
        "step 'stock': Release takes qty from its done event Reserved, or from its trigger "
        "Reserve if it times out; if they mean different things there, build it with "
        "compensate_with="
    ) in contract.lint()
    saga = Saga(contract)
    saga.send(Reserve(order_id="o-1", qty=5), 0)
    saga.send(Reserved(order_id="o-1", qty=3), 1)
    [release] = saga.send(AdminCommand(action="compensate", actor="ana"), 2)
    assert release.event == Release(order_id="o-1", qty=3)
    assert saga.s.timeline[-2].note == (
        "Release.qty is 3 from Reserved, not 5 from Reserve (the done event wins)"
    )
    # Timed out, the step has no done event: the trigger's value is used.
    timed_out = Saga(contract)
    timed_out.send(Reserve(order_id="o-2", qty=5), 0)
    [release] = timed_out.tick(30)
    assert release.event == Release(order_id="o-2", qty=5)


def builder_contract(calls: list[tuple[Event, Event | None]]) -> SagaContract:
    def refund(placed: OrderPlaced, taken: PaymentTaken | None) -> RefundPayment:
        calls.append((placed, taken))
        return RefundPayment(order_id=placed.order_id, amount=placed.amount)

    payment = Step(
        "payment",
        on=OrderPlaced,
        done=PaymentTaken,
        compensation=RefundPayment,
        compensated=PaymentRefunded,
        compensate_with=refund,
    )
    return SagaContract("order", start=OrderPlaced, steps=[payment, PACKING, SHIPPING])


def test_a_builder_gets_the_typed_trigger_and_done_event_and_runs_once() -> None:
    calls: list[tuple[Event, Event | None]] = []
    saga = Saga(builder_contract(calls))
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    saga.send(PaymentTaken(order_id="o-1"), 1)
    saga.send(Packed(order_id="o-1", amount=2), 2)
    saga.send(ShipFailed(order_id="o-1"), 3)
    [refund] = saga.send(Unpacked(order_id="o-1"), 4)
    assert refund.event == RefundPayment(order_id="o-1", amount=100)
    assert calls == [(OrderPlaced(order_id="o-1", amount=100), PaymentTaken(order_id="o-1"))]
    assert saga.s.compensations == {"payment": {"order_id": "o-1", "amount": 100}}
    [again] = saga.tick(100)  # unconfirmed: the kept payload is re-published as is
    assert again.event == refund.event
    assert again.event_id != refund.event_id
    assert len(calls) == 1


def test_a_builder_gets_none_for_the_done_event_of_a_timed_out_step() -> None:
    calls: list[tuple[Event, Event | None]] = []
    saga = Saga(builder_contract(calls))
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    [refund] = saga.tick(30)
    assert refund.event == RefundPayment(order_id="o-1", amount=100)
    assert calls == [(OrderPlaced(order_id="o-1", amount=100), None)]


def test_a_builder_that_fails_makes_the_saga_stuck_until_an_operator_retries() -> None:
    def refund(placed: OrderPlaced, taken: PaymentTaken | None) -> RefundPayment:
        raise ValueError("rates service down")

    broken = Step("payment", on=OrderPlaced, done=PaymentTaken, compensation=RefundPayment,
                  compensate_with=refund)  # fmt: skip
    saga = Saga(SagaContract("order", start=OrderPlaced, steps=[broken]))
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    [alert] = saga.tick(30)
    assert isinstance(alert.event, SagaStuck)
    assert saga.s.reason == ("cannot build RefundPayment to compensate payment: rates service down")
    # The inputs stay, so a retry after a fix (here: another contract) can build it.
    assert saga.s.payloads == {"OrderPlaced": {"order_id": "o-1", "amount": 100}}
    fixed = Step("payment", on=OrderPlaced, done=PaymentTaken, compensation=RefundPayment)
    saga.contract = SagaContract("order", start=OrderPlaced, steps=[fixed])
    [refund] = saga.send(AdminCommand(action="retry", actor="ana"), 40)
    assert refund.event == RefundPayment(order_id="o-1", amount=100)


def test_a_builder_needs_the_trigger_and_must_return_the_compensation() -> None:
    def wrong(placed: OrderPlaced, taken: PaymentTaken | None) -> RefundPayment:
        return Unpack(order_id=placed.order_id)  # type: ignore[return-value]

    step = Step("payment", on=OrderPlaced, done=PaymentTaken, compensation=RefundPayment,
                compensate_with=wrong)  # fmt: skip
    saga = Saga(SagaContract("order", start=OrderPlaced, steps=[step]))
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    saga.tick(30)
    assert "compensate_with returned Unpack(order_id='o-1'), not a RefundPayment" in saga.s.reason
    # A done event seen before its trigger: the builder cannot run without the trigger.
    calls: list[tuple[Event, Event | None]] = []
    early = Saga(builder_contract(calls))
    early.send(PaymentTaken(order_id="o-1"), 0)
    early.send(AdminCommand(action="compensate", actor="ana"), 1)
    early.send(CompensationSkipped(step="packing", reason="never ran"), 2)
    assert early.s.reason == (
        "cannot build RefundPayment to compensate payment: its trigger OrderPlaced was never seen"
    )
    assert calls == []


def test_the_state_keeps_only_what_owed_compensations_and_retries_need() -> None:
    saga = Saga()
    placed = {"order_id": "o-1", "amount": 100}
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    assert (saga.s.payloads, saga.s.replies) == ({"OrderPlaced": placed}, {})
    saga.send(Unrelated(order_id="o-1", blob="x" * 10_000), 1)  # not part of the contract
    saga.send(PaymentTaken(order_id="o-1"), 2)
    assert saga.s.payloads == {"OrderPlaced": placed, "PaymentTaken": {"order_id": "o-1"}}
    assert saga.s.replies == {"payment": "PaymentTaken"}
    saga.send(Packed(order_id="o-1", amount=2), 3)
    # Packed is packing's reply and shipping's trigger: kept once.
    assert set(saga.s.payloads) == {"OrderPlaced", "PaymentTaken", "Packed"}
    assert saga.s.replies == {"payment": "PaymentTaken", "packing": "Packed"}
    dumped = saga.s.model_dump_json()
    assert dumped.count('"amount":2') == 1
    assert "x" * 100 not in dumped
    saga.send(Shipped(order_id="o-1"), 4)
    assert saga.s.status == SagaStatus.COMPLETED
    assert (saga.s.payloads, saga.s.replies, saga.s.compensations) == ({}, {}, {})


def test_a_compensated_step_keeps_nothing_and_an_issued_one_only_its_compensation() -> None:
    saga = Saga()
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    saga.send(PaymentTaken(order_id="o-1"), 1)
    saga.tick(100)  # packing timed out: Unpack issued, built from its trigger alone
    assert saga.s.compensations == {"packing": {"order_id": "o-1"}}
    assert set(saga.s.payloads) == {"OrderPlaced", "PaymentTaken"}  # payment's, still owed
    assert saga.s.replies == {"payment": "PaymentTaken"}
    saga.send(CompensationSkipped(step="packing", reason="never ran"), 101)
    assert saga.s.compensations == {"payment": {"order_id": "o-1", "amount": 100}}
    assert saga.s.payloads == saga.s.replies == {}
    saga.send(PaymentRefunded(order_id="o-1"), 102)
    assert saga.s.status == SagaStatus.COMPENSATED
    assert (saga.s.payloads, saga.s.replies, saga.s.compensations) == ({}, {}, {})
    assert SagaState.model_validate_json(saga.s.model_dump_json()) == saga.s


def test_a_trigger_ignored_by_a_finished_saga_is_kept_for_a_late_success() -> None:
    saga = Saga()
    saga.send(OrderPlaced(order_id="o-1", amount=100), 0)
    saga.tick(100)  # payment timed out
    saga.send(CompensationSkipped(step="payment", reason="never ran"), 101)
    assert saga.s.status == SagaStatus.COMPENSATED
    # The payment's late success also triggered packing, which ran: undo it too.
    saga.send(PaymentTaken(order_id="o-1"), 102)
    assert (saga.s.payloads, saga.s.replies) == ({"PaymentTaken": {"order_id": "o-1"}}, {})
    [unpack] = saga.send(Packed(order_id="o-1", amount=2), 103)
    assert unpack.event == Unpack(order_id="o-1")
