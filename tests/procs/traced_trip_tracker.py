"""``choreo tracker tests.procs.traced_trip_tracker:contract``: the trip contract of
``trip_tracker`` (same environment knobs), with a global OpenTelemetry SDK provider set
as the module is imported, as a deployment's contract module may: ``choreo tracker``
builds the faust tracker after importing it, so the tracker's spans go there. Each
finished span is appended as one JSON line to the file ``CHOREO_TEST_SPANS`` names."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.procs.trip_tracker import contract_from


class JsonLines(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                assert span.context is not None
                line = {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else "",
                    "attributes": {
                        k: v if isinstance(v, str | int | float) else list(v)
                        for k, v in (span.attributes or {}).items()
                    },
                }
                out.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLines(os.environ["CHOREO_TEST_SPANS"])))
trace.set_tracer_provider(provider)

contract = contract_from(os.environ)
