"""A misbehaving Open Inference Protocol server, for the faults no real server shows on demand: it
answers readiness probes, and every infer call according to its `mode`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Mode = Literal["slow", "close", "garbage", "no-outputs"]


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler whose answers are JSON bodies (`_send`): the base of a fake server."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002, ARG002 - stdlib signature
        return

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on a free port answering with `handler` in threads: its base URL while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _handler(mode: Mode) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            self._send(200, b'{"ready": true}')

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "close":
                self.close_connection = True  # no answer at all: the connection just closes
                return
            if mode == "slow":
                time.sleep(3)
                self._send(200, json.dumps({"outputs": []}).encode())
            elif mode == "garbage":
                self._send(200, b"<html>this is not the protocol</html>")
            else:
                self._send(200, json.dumps({"model_name": "x", "outputs": []}).encode())

    return Handler


@contextmanager
def fault_server(mode: Mode) -> Iterator[str]:
    """Its base URL while the block runs."""
    with serving(_handler(mode)) as url:
        yield url
