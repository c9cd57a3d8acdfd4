"""SagaContract: a valid contract's lookups, and every way a contract is rejected."""

from __future__ import annotations

import pytest

from choreo.errors import ContractError
from choreo.events import Event
from choreo.saga import SagaContract, Step
from choreo.system_events import SYSTEM_EVENTS, StepFailed


class Shop(Event, topic="test.shop"): ...


class OrderPlaced(Shop):
    order_id: str


class StockReserved(Shop):
    order_id: str


class StockFailed(Shop):
    order_id: str


class ReleaseStock(Shop):
    order_id: str


class StockReleased(Shop):
    order_id: str


class PaymentCharged(Shop):
    order_id: str


class RefundPayment(Shop):
    order_id: str


class PaymentRefunded(Shop):
    order_id: str


class RoomBooked(Event, topic="test.hotel"):
    order_id: str


class CancelRoom(Event, topic="test.hotel"):
    order_id: str


class Shipped(Event):
    order_id: str


def reserve(**overrides: object) -> Step:
    fields: dict[str, object] = {
        "name": "reserve",
        "on": OrderPlaced,
        "done": StockReserved,
        "failed": (StockFailed,),
        "compensation": ReleaseStock,
        "compensated": (StockReleased,),
        "service": "inventory",
    }
    fields.update(overrides)
    return Step(**fields)  # type: ignore[arg-type]


def charge() -> Step:
    return Step(
        "charge",
        on=StockReserved,
        done=(PaymentCharged,),
        compensation=RefundPayment,
        compensated=PaymentRefunded,
        service="payments",
    )


def book() -> Step:
    return Step("book", on=StockReserved, done=RoomBooked, compensation=CancelRoom)


def ship() -> Step:
    return Step("ship", on=PaymentCharged, done=Shipped, deadline=5, service="shipping")


def shop(*steps: Step, **options: object) -> SagaContract:
    return SagaContract("shop", start=OrderPlaced, steps=steps, **options)  # type: ignore[arg-type]


def test_step_normalises_event_classes_to_tuples() -> None:
    step = Step("s", on=OrderPlaced, done=StockReserved, failed=StockFailed)
    assert step.done == (StockReserved,)
    assert step.failed == (StockFailed,)
    assert step.compensated == ()
    assert step.compensation is None
    assert step.deadline == 30.0


def test_sequential_contract_lookups() -> None:
    contract = shop(reserve(), charge(), ship())
    assert contract.step_names == ("reserve", "charge", "ship")
    assert [s.name for s in contract.step_for_trigger(OrderPlaced)] == ["reserve"]
    assert [s.name for s in contract.step_for_trigger("StockReserved")] == ["charge"]
    assert contract.step_for_trigger(Shipped) == []
    assert contract.step_done_by(StockReserved) is contract.step("reserve")
    assert contract.step_done_by("PaymentCharged") is contract.step("charge")
    assert contract.step_failed_by(StockFailed) is contract.step("reserve")
    assert contract.step_compensated_by(PaymentRefunded) is contract.step("charge")
    assert contract.step_for_compensation(ReleaseStock) is contract.step("reserve")
    assert contract.step_done_by(OrderPlaced) is None
    assert contract.dependency("reserve") is None
    assert contract.dependency("ship") is contract.step("charge")
    assert [s.name for s in contract.dependents("reserve")] == ["charge"]
    assert [s.name for s in contract.descendants("reserve")] == ["charge", "ship"]
    assert contract.descendants("ship") == ()
    with pytest.raises(KeyError, match="no step 'nope'"):
        contract.step("nope")


def test_parallel_steps_share_a_trigger() -> None:
    contract = shop(reserve(), charge(), book(), ship())
    assert [s.name for s in contract.step_for_trigger(StockReserved)] == ["charge", "book"]
    assert [s.name for s in contract.dependents("reserve")] == ["charge", "book"]
    assert [s.name for s in contract.descendants("reserve")] == ["charge", "book", "ship"]
    assert contract.dependency("book") is contract.step("reserve")


def test_event_types_and_topics() -> None:
    contract = shop(reserve(), charge(), book(), ship(), completed_by=(Shipped,))
    types = contract.event_types()
    assert types[0] is OrderPlaced
    assert len(types) == len(set(types))
    for cls in (StockReserved, ReleaseStock, RoomBooked, CancelRoom, Shipped, *SYSTEM_EVENTS):
        assert cls in types
    assert contract.topics() == ("choreo.Shipped", "choreo.system", "test.hotel", "test.shop")
    assert contract.completes(Shipped)
    assert not contract.completes(StockReserved)


def test_retry_delay_is_capped_exponential() -> None:
    contract = shop(reserve(), retry_backoff=0.5, retry_backoff_max=3.0)
    assert [contract.retry_delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert contract.retry_delay(10_000) == 3.0


def test_lint_warns_about_missing_compensation_and_service() -> None:
    contract = shop(reserve(), charge(), book(), ship())
    warnings = contract.lint()
    assert any("'ship' has no compensation" in w for w in warnings)
    assert any("'book' declares no compensated event" in w for w in warnings)
    assert any("'book' names no service" in w for w in warnings)
    assert not any("'reserve'" in w or "'charge'" in w for w in warnings)


def test_done_may_also_complete_the_saga() -> None:
    contract = shop(reserve(), charge(), ship(), completed_by=Shipped)
    assert contract.completes(Shipped)
    assert contract.step_done_by(Shipped) is contract.step("ship")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Step("", on=OrderPlaced, done=StockReserved), "non-empty name"),
        (lambda: reserve(done=()), "at least one done event"),
        (lambda: reserve(deadline=0), "deadline must be > 0"),
        (lambda: reserve(deadline=-1.5), "deadline must be > 0"),
        (lambda: reserve(deadline=float("inf")), "deadline must be > 0"),
        (lambda: reserve(on=int), "on must be a choreo.Event subclass"),
        (lambda: reserve(done=(Event,)), "done must be a choreo.Event subclass"),
        (lambda: reserve(compensation=dict), "compensation must be a choreo.Event"),
        (lambda: reserve(compensation=None), "compensated events but has no compensation"),
    ],
)
def test_step_rejects(build: object, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("steps", "options", "message"),
    [
        ((), {}, "declares no steps"),
        ((reserve(), reserve()), {}, "duplicate step names: reserve"),
        ((ship(),), {}, "triggered by PaymentCharged, which is neither the start event"),
        (
            (reserve(), Step("again", on=OrderPlaced, done=StockReserved)),
            {},
            "StockReserved is used as done of 'reserve' and as done of 'again'",
        ),
        (
            (reserve(), Step("undo", on=StockReserved, done=Shipped, compensation=ReleaseStock)),
            {},
            "ReleaseStock is used as compensation of 'reserve' and as compensation of 'undo'",
        ),
        (
            (reserve(), Step("odd", on=StockReserved, done=ReleaseStock)),
            {},
            "ReleaseStock is used as compensation of 'reserve' and as done of 'odd'",
        ),
        (
            (reserve(failed=(StockReserved,)),),
            {},
            "StockReserved is used as done of 'reserve' and as failed of 'reserve'",
        ),
        ((reserve(done=OrderPlaced),), {}, "OrderPlaced is used as the start event and as done"),
        ((reserve(failed=StepFailed),), {}, "StepFailed is a system event"),
        ((reserve(),), {"compensation_retries": 0}, "compensation_retries must be an int >= 1"),
        ((reserve(),), {"retry_backoff": 0}, "retry_backoff must be > 0"),
        ((reserve(),), {"retry_backoff_max": 0.5}, "retry_backoff_max must be >= retry_backoff"),
        ((reserve(),), {"completed_by": (str,)}, "completed_by must hold choreo.Event"),
        (("reserve",), {}, "steps must be Step objects"),
    ],
)
def test_contract_rejects(
    steps: tuple[Step, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        shop(*steps, **options)


def test_contract_rejects_a_dependency_cycle() -> None:
    a = Step("a", on=StockReserved, done=PaymentCharged)
    b = Step("b", on=PaymentCharged, done=StockReserved)
    with pytest.raises(
        ContractError, match=r"dependency cycle \(each step waits for the next\): a -> b -> a"
    ):
        shop(reserve(done=Shipped), a, b)


def test_contract_rejects_a_step_triggered_by_its_own_done() -> None:
    loop = Step("loop", on=StockReserved, done=StockReserved)
    with pytest.raises(ContractError, match=r"cycle .*: loop -> loop"):
        shop(reserve(done=Shipped), loop)


def test_contract_rejects_a_bad_start_and_name() -> None:
    with pytest.raises(ContractError, match=r"start must be a choreo\.Event subclass"):
        SagaContract("shop", start=Event, steps=[reserve()])
    with pytest.raises(ContractError, match="non-empty name"):
        SagaContract(" ", start=OrderPlaced, steps=[reserve()])


def test_contract_rejects_two_classes_with_one_wire_type() -> None:
    class Twin(Event, type="StockReserved"):
        order_id: str

    with pytest.raises(ContractError, match="share the event type 'StockReserved'"):
        shop(reserve(), Step("twin", on=StockReserved, done=Twin))


def test_lint_warns_when_a_compensation_needs_what_only_the_step_knows() -> None:
    class HoldRoom(Event, topic="test.hotel"):
        order_id: str
        room: str

    class UnholdRoom(Event, topic="test.hotel"):
        order_id: str
        room: str
        note: str = ""

    hold = Step("hold", on=StockReserved, done=HoldRoom, compensation=UnholdRoom, service="h")
    contract = shop(reserve(), hold)
    assert contract.lint() == [
        "step 'hold' declares no compensated event: only CompensationSkipped can confirm its "
        "compensation, so the tracker may retry it until STUCK",
        "step 'hold': its compensation needs room, which only its done event HoldRoom "
        "carries, not its trigger StockReserved; if it times out it cannot be compensated",
    ]


# -- where a compensation's fields come from --------------------------------------------


class Hold(Shop):
    order_id: str
    qty: int


class Held(Shop):
    order_id: str
    qty: int
    slot: str


class HeldPartly(Shop):
    order_id: str
    qty: int


class Unhold(Shop):
    order_id: str
    qty: int
    slot: str


class UnholdSome(Shop):
    order_id: str
    qty: int
    note: str = ""


class HoldRoomOnly(Shop):
    order_id: str
    qty: str  # the same name for another thing


def test_a_required_field_every_done_event_or_the_trigger_must_carry() -> None:
    Step("hold", on=Hold, done=Held, compensation=Unhold)  # slot: from Held
    with pytest.raises(ContractError) as refused:
        Step("hold", on=Hold, done=(Held, HeldPartly), compensation=Unhold)
    assert str(refused.value) == (
        "step 'hold': Unhold.slot cannot be filled: neither its trigger Hold nor every done "
        "event (HeldPartly lacks it) carries 'slot' (fields of other events of the saga are "
        "never used); add it to one of them, give it a default, or build it with "
        "Step(..., compensate_with=lambda trigger, done: Unhold(...))"
    )
    # A field with a default may stay unfilled.
    Step("hold", on=Hold, done=HeldPartly, compensation=UnholdSome)


def test_a_field_both_declare_with_different_types_is_ambiguous() -> None:
    with pytest.raises(ContractError) as refused:
        Step("hold", on=Hold, done=HoldRoomOnly, compensation=UnholdSome)
    assert str(refused.value) == (
        "step 'hold': UnholdSome.qty is ambiguous: its trigger Hold has qty: int and its done "
        "event HoldRoomOnly has qty: str; build it with Step(..., compensate_with=lambda "
        "trigger, done: UnholdSome(...)) to say which one it is"
    )
    # A builder settles it, and lifts the field checks.
    Step(
        "hold",
        on=Hold,
        done=HoldRoomOnly,
        compensation=UnholdSome,
        compensate_with=lambda hold, held: UnholdSome(order_id=hold.order_id, qty=hold.qty),
    )
    Step(
        "hold",
        on=OrderPlaced,
        done=StockReserved,
        compensation=Unhold,
        compensate_with=lambda placed, _: Unhold(order_id=placed.order_id, qty=1, slot="?"),
    )


@pytest.mark.parametrize(
    ("builder", "options", "message"),
    [
        (lambda t, d: None, {"compensation": None, "compensated": ()}, "but no compensation"),
        ("not callable", {}, "compensate_with must be callable"),
        (lambda trigger: None, {}, "must take two arguments, the step's trigger and its done"),
    ],
)
def test_compensate_with_is_checked(
    builder: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        reserve(compensate_with=builder, **options)


def test_lint_reports_fields_the_done_event_overrides_but_not_the_sagas_subject() -> None:
    hold = Step("hold", on=Hold, done=HeldPartly, compensation=UnholdSome, service="h",
                compensated=StockReleased)  # fmt: skip
    start = Step("start", on=OrderPlaced, done=Hold, service="h")
    contract = shop(start, hold)
    # order_id is on every event of the saga: its subject, not reported.
    assert contract.lint()[-1] == (
        "step 'hold': UnholdSome takes qty from its done event HeldPartly, or from its "
        "trigger Hold if it times out; if they mean different things there, build it with "
        "compensate_with="
    )
    built = Step(
        "hold",
        on=Hold,
        done=HeldPartly,
        compensation=UnholdSome,
        compensated=StockReleased,
        service="h",
        compensate_with=lambda hold, held: UnholdSome(order_id=hold.order_id, qty=1),
    )
    assert not any("takes" in w for w in shop(start, built).lint())
