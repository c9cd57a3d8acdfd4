"""Traces out of ``choreo run`` and ``choreo tracker``, when the environment asks.

choreo makes spans through OpenTelemetry's API only (``choreo.tracing``): a program
that runs a service itself installs its own SDK provider. The two commands are
programs too, and nothing else runs in their process that could install one; without
this module a deployment's spans would never leave the process. So the commands read
OTel's standard environment (the same variables every OTel SDK reads):

- asked for: ``OTEL_TRACES_EXPORTER`` names ``otlp``, or (left unset)
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set;
  ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn it off;
- then a ``TracerProvider`` is installed globally with a resource whose ``service.name``
  is the service's name (``OTEL_SERVICE_NAME`` or a ``service.name`` in
  ``OTEL_RESOURCE_ATTRIBUTES`` win), a ``BatchSpanProcessor`` and the OTLP exporter for
  ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``
  (``http/protobuf``, the specification's default, or ``grpc``), shut down (flushing
  what is queued) when the command ends;
- asked for without the SDK installed (``pip install 'choreo[otel]'``), the command
  stops with an error that says so; not asked for, nothing is imported and nothing
  happens.

The SDK's own environment-driven setup (``opentelemetry.sdk._configuration``, used by
``opentelemetry-instrument``) is private, so the provider is assembled here from public
parts, each of which reads its own variables: the exporters read the endpoint,
headers, timeout, compression and certificates; ``TracerProvider`` the sampler
(``OTEL_TRACES_SAMPLER``); ``BatchSpanProcessor`` its ``OTEL_BSP_*`` sizes and delays;
``Resource.create`` the resource attributes. Nothing here reads or prints the headers
(``OTEL_EXPORTER_OTLP_HEADERS`` may hold a token): the one line printed names the
protocol and the endpoint with any password in it masked.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from choreo.errors import UsageError
from choreo.redact import redact_url

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"  # the OTLP exporter specification's default
_DEFAULT_ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}


def wanted(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for OTLP trace export (see the module's docstring); an
    exporter choreo cannot run is a usage error rather than silence."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [n for n in named if n]
    if named:
        unknown = sorted(set(named) - {"otlp", "none"})
        if unknown:
            raise UsageError(
                f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: choreo's commands export "
                "traces with otlp only",
                hint="set OTEL_TRACES_EXPORTER=otlp (or none), or install a tracer provider "
                "of your own in the module the command imports",
            )
        return "otlp" in named
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol ``env`` names (the traces' own variable first)."""
    value = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_PROTOCOL
    ).strip()
    if value not in PROTOCOLS:
        raise UsageError(
            f"OTLP protocol {value!r} is not one choreo's exporters speak",
            hint="set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf (the default) or grpc",
        )
    return value


def endpoint(env: Mapping[str, str], proto: str) -> str:
    """Where the exporter sends, as the exporters themselves resolve it (for the log)."""
    given = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if given:
        return given
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINTS[proto]
    return base.rstrip("/") + "/v1/traces" if proto == "http/protobuf" else base


def _exporter(proto: str) -> SpanExporter:
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def install(service_name: str) -> TracerProvider | None:
    """Install the global OTLP tracer provider the environment asks for and return it, or
    None when not asked for or when a provider is installed already (the module the
    command imported set one itself: it is kept)."""
    env = os.environ  # the SDK's parts read it too
    if not wanted(env):
        return None
    proto = protocol(env)
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = _exporter(proto)
    except ImportError as exc:
        raise UsageError(
            f"the environment asks for OTLP trace export ({proto}), but the OpenTelemetry "
            f"SDK or its OTLP exporter is not installed ({exc})",
            hint="pip install 'choreo[otel]', or unset OTEL_TRACES_EXPORTER and "
            "OTEL_EXPORTER_OTLP_*ENDPOINT",
        ) from exc
    from choreo.tracing import sdk_configured

    if sdk_configured():
        exporter.shutdown()
        print("choreo: a tracer provider is installed already; OTEL_* export left to it",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    from_env = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create({} if from_env else {SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    name = resource.attributes.get(SERVICE_NAME)
    print(f"choreo: exporting traces of {name} over OTLP {proto} to "
          f"{redact_url(endpoint(env, proto))}", flush=True)  # fmt: skip
    return provider


@contextlib.contextmanager
def exporting(service_name: str) -> Iterator[None]:
    """``install`` for the block's length: on leaving it the provider is shut down,
    which exports the spans still queued (bounded by ``OTEL_BSP_EXPORT_TIMEOUT``)."""
    provider = install(service_name)
    try:
        yield
    finally:
        if provider is not None:
            provider.shutdown()
