"""services_demo: the order saga's services, the embedded demo and its audit.

The end-to-end demo runs on the in-memory transport and store and, with the same
assertions, on real Kafka + Redis (the ``backend`` fixture).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import replace

import pytest
from rich.console import Console

from choreo import ConfigurationError, SagaStatus, Service
from choreo.cli.loading import load_object
from choreo.cli.main import main
from services_demo import embedded
from services_demo.audit import Audit
from services_demo.contract import order_saga
from services_demo.embedded import DemoRun, run_embedded
from services_demo.knobs import Knobs
from services_demo.report import summary
from services_demo.workload import build_workload, demo_knobs

TIMED_OUT = "step shipping timed out"
BUSINESS_FAILURES = {"step payment failed", "step stock failed"}


def assert_books_balance(run: DemoRun) -> None:
    assert run.audit.problems == []
    assert len(run.audit.outcomes) == len(run.workload.orders)
    for outcome in run.audit.outcomes:
        assert outcome.saga is not None, outcome.order.order_id
        assert outcome.saga.is_terminal, outcome.order.order_id
        assert outcome.saga.status != SagaStatus.STUCK


def assert_stalls_time_out(run: DemoRun) -> None:
    """Every order whose shipment the carrier left unconfirmed was timed out by the
    tracker and compensated: shipping, then payment, then stock."""
    for outcome in run.audit.outcomes:
        saga = outcome.saga
        assert saga is not None
        if run.knobs.stalls(outcome.order.order_id) and "shipping" in saga.steps:
            assert outcome.cause == TIMED_OUT, saga.reason
            assert all(step.status == "COMPENSATED" for step in saga.steps.values())


@pytest.mark.timeout(90)
async def test_embedded_demo_ends_every_saga_and_balances_the_books(
    backend: tuple[str, str],
) -> None:
    broker, store = backend
    # A stall rate high enough that a random namespace (on Kafka) still stalls some order.
    knobs = replace(demo_knobs(0), stall_rate=0.3)
    # Its duration is the demo's to report, not a test's to limit (the timeout catches a hang).
    run = await run_embedded(count=30, knobs=knobs, broker=broker, store=store)
    assert_books_balance(run)
    assert_stalls_time_out(run)
    statuses = run.audit.by_status()
    assert statuses["COMPLETED"] > 0
    assert statuses["COMPENSATED"] > 0
    causes = run.audit.by_cause()
    assert causes[TIMED_OUT] > 0
    assert set(causes) & BUSINESS_FAILURES
    # A timeout compensates three steps; a failed payment one; a rejected reservation none.
    assert run.audit.compensations_issued() >= 3 * causes[TIMED_OUT] + causes["step payment failed"]


async def test_the_default_demo_shows_every_kind_of_ending() -> None:
    run = await run_embedded()
    assert_books_balance(run)
    assert run.elapsed > 0
    causes = run.audit.by_cause()
    assert causes[TIMED_OUT] > 0
    assert causes["step payment failed"] > 0
    assert causes["step stock failed"] > 0
    # On memory nothing is slow: the only timeouts are the knobs' stalls.
    stalled = {o.order.order_id for o in run.audit.outcomes if run.knobs.stalls(o.order.order_id)}
    timed_out = {o.order.order_id for o in run.audit.outcomes if o.cause == TIMED_OUT}
    assert timed_out <= stalled
    # A finished saga owes nothing, so the tracker keeps none of its events' payloads.
    for outcome in run.audit.outcomes:
        assert outcome.saga is not None
        saga = outcome.saga
        assert (saga.payloads, saga.replies, saga.compensations) == ({}, {}, {})


@pytest.mark.timeout(60)
async def test_a_late_confirmation_after_the_timeout_is_compensated() -> None:
    # The carrier confirms stalled shipments, but only after the step's deadline: the
    # late success must not complete the saga, and the booking it made is cancelled.
    knobs = Knobs(stall_rate=0.5, stall_seconds=order_saga.step("shipping").deadline + 0.5)
    run = await run_embedded(count=6, seed=3, knobs=knobs)
    assert_books_balance(run)
    assert_stalls_time_out(run)
    late = [o for o in run.audit.outcomes if o.cause == TIMED_OUT]
    assert late, "seed 3 should stall at least one of 6 shipments"
    for outcome in late:
        assert outcome.shipment is None
        assert outcome.saga is not None
        assert any("late success" in entry.note for entry in outcome.saga.timeline)


async def test_a_run_cut_short_reports_the_unfinished_sagas() -> None:
    run = await run_embedded(count=4, seed=1, timeout=0)
    assert not run.audit.ok
    assert any("not terminal" in problem for problem in run.audit.problems)
    console = Console(file=io.StringIO(), width=120)
    console.print(summary(run.audit, run.elapsed, snapshot=run.dashboard))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "PROBLEMS:" in text
    assert "choreo dashboard" in text


def test_choreo_demo_prints_the_summary_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--orders", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "order-008" in out
    assert "every saga ended and the books balance" in out
    assert "compensations issued" in out


def test_choreo_demo_exits_one_when_the_books_do_not_balance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_audit = embedded.audit

    async def cooked(*args: object) -> Audit:
        result = await real_audit(*args)  # type: ignore[arg-type]
        result.problems.append("a unit of stock went missing")
        return result

    monkeypatch.setattr(embedded, "audit", cooked)
    assert main(["demo", "--orders", "3", "--no-table"]) == 1
    assert "a unit of stock went missing" in capsys.readouterr().out


def test_choreo_demo_rejects_an_empty_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--orders", "0"]) == 2
    assert "--orders must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("inventory", {"reserve_stock": ("stock", "action"),
                       "release_stock": ("stock", "compensate")}),
        ("payment", {"deduct_payment": ("payment", "action"),
                     "refund_payment": ("payment", "compensate")}),
        ("shipping", {"schedule_shipment": ("shipping", "action"),
                      "cancel_shipment": ("shipping", "compensate")}),
        ("orders", {"order_completed": ("orders.order_completed", "action"),
                    "order_cancelled": ("orders.order_cancelled", "action"),
                    "order_stuck": ("orders.order_stuck", "action")}),
    ],
)  # fmt: skip
def test_each_service_loads_by_name_and_takes_its_steps_from_the_contract(
    name: str, steps: dict[str, tuple[str, str]]
) -> None:
    app = load_object(f"services_demo.{name}:app", Service, "service")
    assert app.name == name
    assert {h.name: (h.step, h.op) for h in app.resolved_handlers()} == steps
    assert app.contracts == (order_saga,)


def test_the_contract_is_lint_clean_and_names_each_steps_service() -> None:
    assert order_saga.lint() == []
    assert [step.service for step in order_saga.steps] == ["inventory", "payment", "shipping"]


def test_knobs_round_trip_through_the_environment() -> None:
    knobs = Knobs(decline_above=500, failure_rate=0.25, stall_rate=0.5, stall_seconds=1.5, seed=7)
    assert Knobs.from_env(knobs.to_env()) == knobs
    assert Knobs.from_env({}) == Knobs()
    assert Knobs.from_env(Knobs().to_env()) == Knobs()
    assert Knobs.from_env({"CHOREO_DEMO_DECLINE_ABOVE": " "}).decline_above is None


@pytest.mark.parametrize(
    "env",
    [{"CHOREO_DEMO_FAILURE_RATE": "lots"}, {"CHOREO_DEMO_STALL_RATE": "1.5"},
     {"CHOREO_DEMO_STALL_SECONDS": "-1"}, {"CHOREO_DEMO_SEED": "0.5"}],
)  # fmt: skip
def test_bad_knobs_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Knobs.from_env(env)


def test_knob_decisions_are_fixed_by_seed_and_order() -> None:
    knobs = Knobs(decline_above=100, failure_rate=0.5, stall_rate=0.5, seed=1)
    ids = [f"order-{n}" for n in range(200)]
    assert [knobs.stalls(i) for i in ids] == [replace(knobs).stalls(i) for i in ids]
    assert 60 < sum(knobs.stalls(i) for i in ids) < 140
    assert [knobs.stalls(i) for i in ids] != [replace(knobs, seed=2).stalls(i) for i in ids]
    assert knobs.decline_reason("x", 101) == "amount 101 is above the card limit 100"
    assert Knobs().decline_reason("x", 10**9) is None


def test_workloads_are_reproducible_and_namespaced() -> None:
    assert build_workload(10, seed=4) == build_workload(10, seed=4)
    assert build_workload(10, seed=4) != build_workload(10, seed=5)
    namespace = uuid.uuid4().hex[:6]
    spaced = build_workload(3, namespace=namespace)
    assert [o.order_id for o in spaced.orders] == [f"{namespace}-order-00{n}" for n in (1, 2, 3)]
    with pytest.raises(ValueError, match="at least one order"):
        build_workload(0)
