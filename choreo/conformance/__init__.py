"""The conformance kit: drive a participant of any language through the scenarios that
matter, over real Kafka, and report each rule of docs/wire-format.md kept or broken with
its evidence (``choreo conformance``; the scenarios are in ``choreo.conformance.kit``)."""

from __future__ import annotations

from choreo.conformance.checks import Check
from choreo.conformance.inputs import Target, pick_step, sample_payload
from choreo.conformance.kit import Kit, run
from choreo.conformance.report import passed, render

__all__ = ["Check", "Kit", "Target", "passed", "pick_step", "render", "run", "sample_payload"]
