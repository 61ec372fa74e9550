"""OpenTelemetry tracing, switched on by `OTEL_ENABLED=true`; off by default, at no cost.

On: a TracerProvider with an OTLP/HTTP exporter, configured by the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, ...). Request spans come
from FastAPI's native telemetry (FastAPI >= 0.142: server span per request named
"METHOD /route/template", child spans for dependencies, endpoint and serialization), SQL spans
from the SQLAlchemy instrumentation, outgoing-call spans from the httpx and redis ones.

Off: FastAPI is told tracing, metrics and logs are off, so its per-request check is three dict
reads; the SDK, exporter and instrumentation packages are never imported (they are the optional
`otel` extra and need not be installed).
"""

# The OpenTelemetry SDK is imported only when tracing is on: it is an optional extra.
# ruff: noqa: PLC0415

from __future__ import annotations

import os
from typing import Any

import structlog
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings

log = structlog.get_logger("app.tracing")

OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


class TracingUnavailable(RuntimeError):
    """OTEL_ENABLED=true, but the OpenTelemetry SDK packages are not installed."""


class Tracing:
    """The tracer provider and the instrumentations one app instance switched on."""

    def __init__(self, settings: Settings, exporter: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found,unused-ignore]
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # type: ignore[import-not-found,unused-ignore]
            from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found,unused-ignore]
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise TracingUnavailable(
                "OTEL_ENABLED=true needs the OpenTelemetry packages: install the project's `otel` extra"
            ) from exc
        # Resource.create() merges OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over this default.
        resource = Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: settings.app_name}
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        # The global provider serves code that asks `trace.get_tracer()` itself. It can be set once
        # per process; everything below is handed this provider explicitly either way.
        if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":
            trace.set_tracer_provider(self.provider)
        self._uninstrument: list[Any] = []

    def fastapi_config(self) -> TelemetryConfig:
        return {
            "tracing": True,
            "metrics": False,  # Prometheus (/metrics) already covers request metrics
            "logs": False,  # structlog already writes every error with its request id
            "auto_configure": False,
            "tracer_provider": self.provider,
        }

    def instrument(self, engine: AsyncEngine) -> None:
        """SQL spans for this engine; httpx and redis client spans for the process."""
        for name, call in (
            ("sqlalchemy", self._sqlalchemy),
            ("httpx", self._httpx),
            ("redis", self._redis),
        ):
            try:
                call(engine)
            except ImportError:
                log.warning("otel_instrumentation_missing", library=name)

    def _sqlalchemy(self, engine: AsyncEngine) -> None:
        # The engine's own listeners, not SQLAlchemyInstrumentor, which also patches create_engine
        # process-wide. Connection-usage metrics go nowhere: the pool gauges are in /metrics.
        from opentelemetry.instrumentation.sqlalchemy.engine import (  # type: ignore[import-not-found,unused-ignore]
            EngineTracer,
        )
        from opentelemetry.metrics import NoOpMeterProvider

        usage = (
            NoOpMeterProvider().get_meter("sqlalchemy").create_up_down_counter("db.client.connections.usage")
        )
        tracer = self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call,unused-ignore]
        self._uninstrument.append(EngineTracer.remove_all_event_listeners)

    def _httpx(self, _engine: AsyncEngine) -> None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # type: ignore[import-not-found,unused-ignore]

        instrumentor = HTTPXClientInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self.provider)
            self._uninstrument.append(instrumentor.uninstrument)

    def _redis(self, _engine: AsyncEngine) -> None:
        from opentelemetry.instrumentation.redis import RedisInstrumentor  # type: ignore[import-not-found,unused-ignore]

        instrumentor = RedisInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self.provider)
            self._uninstrument.append(instrumentor.uninstrument)

    def shutdown(self) -> None:
        """Export what is buffered, then undo the instrumentation."""
        for undo in reversed(self._uninstrument):
            undo()
        self._uninstrument.clear()
        self.provider.shutdown()


def setup(settings: Settings) -> Tracing | None:
    """The tracing of a new app instance, or None when OTEL_ENABLED is off."""
    if not settings.otel_enabled:
        return None
    tracing = Tracing(settings)
    log.info("otel_tracing_enabled", endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return tracing


def fastapi_config(tracer: Tracing | None) -> TelemetryConfig:
    """FastAPI's `telemetry=` argument for this app."""
    return OFF if tracer is None else tracer.fastapi_config()
