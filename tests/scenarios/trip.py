"""A three-step travel saga (flight -> hotel -> car) for the tracker suites.

Behaviour knobs travel in the payload (``Plan``), so one set of services serves every
scenario and each test owns its gid. Effects go through ``ctx.tx``, so tests can check
conservation: after a compensated trip every counter is back where it started, and
``cancelled:<trip>:<step>`` counts how many times a compensation really ran.

Knobs name a step (``flight``, ``hotel`` or ``car``):

- ``fail``: the step fails for business reasons (flight and car with their own failure
  event, hotel with a bare ``BusinessFailure``, i.e. ``choreo.StepFailed``).
- ``silent``: the step's handler runs, does nothing and returns None: it never answers,
  but its barrier records the action as done, so its compensation runs (as a no-op).
- ``lost``: the step's trigger is dead-lettered (the service choked on it): no answer and
  no barrier record, so its compensation is a null compensation (CompensationSkipped).
- ``stuck``: the step's compensation always raises a retriable error; it is dead-lettered
  after its retry budget and the tracker re-issues it until the saga is STUCK.
- ``late``: the step answers ``late_by`` seconds after its trigger, i.e. after its deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from choreo import BusinessFailure, Context, Event, RetryPolicy, Service
from choreo.saga import SagaContract, Step

TOPIC = "test.travel"
STEPS = ("flight", "hotel", "car")


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fail: str = ""
    silent: str = ""
    lost: str = ""
    stuck: str = ""
    late: str = ""
    late_by: float = 0.0


class TravelEvent(Event, topic=TOPIC):
    """One topic for the whole saga, so per-gid order holds across its events."""

    trip_id: str


class TripBooked(TravelEvent):
    plan: Plan = Plan()


class FlightBooked(TravelEvent):
    plan: Plan = Plan()


class FlightFailed(TravelEvent):
    reason: str


class HotelBooked(TravelEvent):
    plan: Plan = Plan()


class CarBooked(TravelEvent): ...


class CarFailed(TravelEvent):
    reason: str


class CancelFlight(TravelEvent):
    plan: Plan = Plan()  # the tracker fills it from the saga's earlier payloads


class FlightCancelled(TravelEvent): ...


class CancelHotel(TravelEvent):
    plan: Plan = Plan()  # the tracker fills it from the saga's earlier payloads


class HotelCancelled(TravelEvent): ...


class CancelCar(TravelEvent):
    plan: Plan = Plan()  # the tracker fills it from the saga's earlier payloads


class CarCancelled(TravelEvent): ...


TRAVEL_EVENTS: tuple[type[Event], ...] = (
    TripBooked, FlightBooked, FlightFailed, HotelBooked, CarBooked, CarFailed, CancelFlight,
    FlightCancelled, CancelHotel, HotelCancelled, CancelCar, CarCancelled,
)  # fmt: skip


def trip_contract(
    deadline: float = 1.0,
    compensation_retries: int = 3,
    retry_backoff: float = 0.5,
    retry_backoff_max: float = 2.0,
) -> SagaContract:
    return SagaContract(
        "trip",
        start=TripBooked,
        steps=[
            Step(
                "flight",
                on=TripBooked,
                done=FlightBooked,
                failed=FlightFailed,
                compensation=CancelFlight,
                compensated=FlightCancelled,
                deadline=deadline,
                service="airline",
            ),
            Step(
                "hotel",
                on=FlightBooked,
                done=HotelBooked,
                compensation=CancelHotel,
                compensated=HotelCancelled,
                deadline=deadline,
                service="hotel",
            ),
            Step(
                "car",
                on=HotelBooked,
                done=CarBooked,
                failed=CarFailed,
                compensation=CancelCar,
                compensated=CarCancelled,
                deadline=deadline,
                service="rental",
            ),
        ],
        compensation_retries=compensation_retries,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
    )


@dataclass
class Travel:
    contract: SagaContract
    airline: Service
    hotel: Service
    rental: Service

    @property
    def services(self) -> tuple[Service, Service, Service]:
        return (self.airline, self.hotel, self.rental)


class Choked(ValueError):
    """Not retriable: the trigger goes straight to the dead-letter topic."""


async def _act(step: str, event: TripBooked | FlightBooked | HotelBooked, ctx: Context) -> bool:
    """Apply the knobs common to every action; False when the step stays silent."""
    plan = event.plan
    if plan.lost == step:
        raise Choked(f"{step} service choked on its trigger")
    if plan.silent == step:
        return False
    if plan.late == step:
        await asyncio.sleep(plan.late_by)
    ctx.tx.incr(f"{step}:{event.trip_id}", -1)
    ctx.tx.put(f"booking:{event.trip_id}:{step}", "1")
    return True


async def _undo(step: str, event: CancelFlight | CancelHotel | CancelCar, ctx: Context) -> None:
    trip_id = event.trip_id
    if event.plan.stuck == step:
        raise ConnectionError(f"{step} provider unreachable")
    # A silent action committed nothing, so there is nothing to give back.
    if await ctx.store.get(f"booking:{trip_id}:{step}") is not None:
        ctx.tx.incr(f"{step}:{trip_id}", 1)
        ctx.tx.delete(f"booking:{trip_id}:{step}")
    ctx.tx.incr(f"cancelled:{trip_id}:{step}", 1)


def build_travel(
    prefix: str,
    deadline: float = 1.0,
    compensation_retries: int = 3,
    retry_backoff: float = 0.5,
    retry_backoff_max: float = 2.0,
) -> Travel:
    """Three services; ``prefix`` keeps consumer groups apart between tests on one broker.
    The rest goes to ``trip_contract``."""
    contract = trip_contract(deadline, compensation_retries, retry_backoff, retry_backoff_max)
    fast = RetryPolicy(max_attempts=2, backoff=0.01, backoff_max=0.02)
    services = [
        Service(name, group=f"{prefix}.{name}", contracts=[contract])
        for name in ("airline", "hotel", "rental")
    ]
    travel = Travel(contract, *services)
    for service in services:
        service.register_events(*TRAVEL_EVENTS)

    @travel.airline.on_event(TripBooked, retry=fast)
    async def book_flight(event: TripBooked, ctx: Context) -> FlightBooked | FlightFailed | None:
        if event.plan.fail == "flight":
            raise BusinessFailure(
                "no seats", FlightFailed(trip_id=event.trip_id, reason="no seats")
            )
        if not await _act("flight", event, ctx):
            return None
        return FlightBooked(trip_id=event.trip_id, plan=event.plan)

    @travel.hotel.on_event(FlightBooked, retry=fast)
    async def book_hotel(event: FlightBooked, ctx: Context) -> HotelBooked | None:
        if event.plan.fail == "hotel":
            raise BusinessFailure("no rooms")
        if not await _act("hotel", event, ctx):
            return None
        return HotelBooked(trip_id=event.trip_id, plan=event.plan)

    @travel.rental.on_event(HotelBooked, retry=fast)
    async def book_car(event: HotelBooked, ctx: Context) -> CarBooked | None:
        if event.plan.fail == "car":
            raise BusinessFailure("no cars", CarFailed(trip_id=event.trip_id, reason="no cars"))
        if not await _act("car", event, ctx):
            return None
        return CarBooked(trip_id=event.trip_id)

    @travel.airline.on_event(CancelFlight, retry=fast)
    async def cancel_flight(event: CancelFlight, ctx: Context) -> FlightCancelled:
        await _undo("flight", event, ctx)
        return FlightCancelled(trip_id=event.trip_id)

    @travel.hotel.on_event(CancelHotel, retry=fast)
    async def cancel_hotel(event: CancelHotel, ctx: Context) -> HotelCancelled:
        await _undo("hotel", event, ctx)
        return HotelCancelled(trip_id=event.trip_id)

    @travel.rental.on_event(CancelCar, retry=fast)
    async def cancel_car(event: CancelCar, ctx: Context) -> CarCancelled:
        await _undo("car", event, ctx)
        return CarCancelled(trip_id=event.trip_id)

    return travel
