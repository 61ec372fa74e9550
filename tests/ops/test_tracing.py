"""OpenTelemetry: off by default with nothing imported; on, spans reach an OTLP/HTTP collector."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import make_settings
from tests.faults.server import ROOT
from tests.ops.conftest import running_app, user

pytest.importorskip(
    "opentelemetry.sdk", reason="the optional `otel` extra (OpenTelemetry SDK) is not installed"
)


class _Collector(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    """A minimal OTLP/HTTP trace collector on a free port: the raw protobuf bodies it received."""
    handler = type("Collector", (_Collector,), {"bodies": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.bodies
    finally:
        server.shutdown()
        server.server_close()


def _spans(bodies: list[bytes]) -> list[tuple[str, str, dict[str, str]]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    spans.append((service, span.name, attributes))
    return spans


async def test_tracing_exports_request_and_sql_spans_over_otlp(
    database_url: str, collector: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bodies = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ops-tracing-test")
    async with running_app(database_url, otel_enabled=True) as (_, client):
        headers = await user(client)
        assert (await client.get("/api/v1/items/42", headers=headers)).status_code == 404
    # The lifespan's end flushed the batch processor to the collector.
    spans = _spans(bodies)
    names = {name for _, name, _ in spans}
    assert {service for service, _, _ in spans} == {"ops-tracing-test"}
    assert "GET /api/v1/items/{item_id}" in names
    assert any(attributes.get("db.system") or "SELECT" in name for _, name, attributes in spans)


def test_tracing_off_imports_no_sdk() -> None:
    # A fresh interpreter: building the app with the defaults loads no OpenTelemetry SDK module.
    code = (
        "import sys\n"
        "from tests.conftest import make_settings\n"
        "from app.main import create_app\n"
        "create_app(make_settings('sqlite+aiosqlite:///:memory:'))\n"
        "prefixes = ('opentelemetry.sdk', 'opentelemetry.exporter', 'opentelemetry.instrumentation')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert make_settings("sqlite+aiosqlite:///:memory:").otel_enabled is False
