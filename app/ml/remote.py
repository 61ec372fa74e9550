"""Remote models: batches sent to an Open Inference Protocol (KServe V2) server over HTTP/JSON.

The server may be this service's own model server (`python -m app.cli model-server`), MLServer,
KServe or Triton. Everything before the call stays on this side (input checks, the bounded queue,
micro-batching, time limits: app.ml.batching); a `RemoteRuntime` only turns one batch into one
`POST {url}/v2/models/{model}[/versions/{version}]/infer` and its answer back into the (rows, k)
float64 matrix every runtime returns.

One `Backend` per server (base URL and credentials): one pooled `httpx.AsyncClient` with
keep-alive, shared by the models it serves, and one circuit breaker. Failures are told apart by
what the caller can do about them:

* nothing ran (connection refused, DNS, connect timeout): retried by the transport
  (`retries`), which retries only these; after that `BackendUnavailable` (503);
* the server is sick (5xx, the connection closed before an answer): `BackendUnavailable`, and
  counted by the breaker; a batch whose connection closed mid-request is not retried (it may
  have run);
* the server answered nonsense (a 4xx such as an unknown model or version, a malformed or wrongly
  shaped body): `BackendError` (502); the server itself is up, so the breaker is not tripped;
* no answer within the hard limit: `PredictionTimeout` (504), counted by the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import numpy as np

from app.ml.errors import BackendError, BackendUnavailable, ModelLoadError, PredictionTimeout
from app.ml.manifest import ModelSpec, RemoteSpec

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Consecutive failures open the circuit: calls are refused at once (no request piles up on a
    dead server) until `reset_s` has passed; then one call is let through as a probe (half-open).
    Its success closes the circuit, its failure opens it again for twice as long (up to
    `max_reset_s`). A readiness probe that finds the server up closes it too (`succeeded`).

    Our own small class rather than a library: it is 50 lines on the event loop with no locks or
    storage, and its clock is injectable for tests; aiobreaker and purgatory bring listeners,
    shared storage back ends and their own exception model that this does not need.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_s: float = 1.0,
        max_reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.max_reset_s = max_reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._open_for = reset_s
        self._probing = False
        self.opened = 0  # times the circuit opened, for metrics and tests

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._open_for:
            return "half-open"
        return "open"

    def retry_after(self) -> int:
        """Whole seconds until the circuit lets a probe through (at least 1)."""
        if self._opened_at is None:
            return 1
        return max(1, math.ceil(self._opened_at + self._open_for - self._clock()))

    def allow(self) -> bool:
        """Whether a call may go out now (closed, or the one probe of a half-open circuit)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._open_for = self.reset_s
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._opened_at is not None:
            # The probe failed: stay open, longer. Calls that were already under way when the
            # circuit opened and fail now tell nothing new: they leave it as it is.
            if self._probing:
                self._open_for = min(self._open_for * 2, self.max_reset_s)
                self._opened_at = self._clock()
        elif self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self.opened += 1
            log.warning("remote models: circuit opened after %d consecutive failures", self._failures)
        self._probing = False

    def released(self) -> None:
        """A call let through ended without telling anything about the server (e.g. cancelled)."""
        self._probing = False


@dataclass(frozen=True, slots=True)
class BackendKey:
    base_url: str
    token: str | None
    max_connections: int
    connect_timeout_ms: int


class Backend:
    """One OIP server: its pooled client, its circuit breaker and its models' readiness."""

    def __init__(self, key: BackendKey, *, connect_retries: int = 1, probe_interval_s: float = 2.0) -> None:
        self.key = key
        headers = {"Authorization": f"Bearer {key.token}"} if key.token else {}
        self.client = httpx.AsyncClient(
            base_url=key.base_url,
            headers=headers,
            # The read limit is set per call (the batch's hard limit); the connect limit is here.
            timeout=httpx.Timeout(30.0, connect=key.connect_timeout_ms / 1000),
            # httpx retries only connection failures (refused, DNS, connect timeout): nothing of
            # a request that is retried can have reached the server.
            transport=httpx.AsyncHTTPTransport(
                retries=connect_retries,
                limits=httpx.Limits(
                    max_connections=key.max_connections,
                    max_keepalive_connections=key.max_connections,
                    # Below the model server's keep-alive (uvicorn, TIMEOUT_KEEP_ALIVE=5 s): an idle
                    # connection is dropped here before that server may close it under a new request.
                    keepalive_expiry=4.0,
                ),
            ),
        )
        self.breaker = CircuitBreaker()
        self.probe_interval_s = probe_interval_s
        self._ready: dict[str, bool] = {}
        self._probe_paths: dict[str, str] = {}
        self._prober: asyncio.Task[None] | None = None

    def watch(self, name: str, remote: RemoteSpec) -> None:
        """Probe `name`'s readiness on this server (GET .../ready) from start() on."""
        self._probe_paths[name] = f"{remote.model_path}/ready"
        self._ready[name] = False

    def unwatch(self, name: str) -> None:
        self._probe_paths.pop(name, None)
        self._ready.pop(name, None)

    def is_ready(self, name: str) -> bool:
        return self._ready.get(name, False) and self.breaker.state != "open"

    def start(self) -> None:
        """Start probing (once: later calls, for versions loaded at run time, change nothing)."""
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name=f"oip-probe-{self.key.base_url}")

    async def probe(self) -> None:
        """Ask the server whether each watched model is ready; a ready answer closes the breaker."""
        for name, path in list(self._probe_paths.items()):
            try:
                response = await self.client.get(path, timeout=max(1.0, self.probe_interval_s))
            except httpx.HTTPError:
                self.set_ready(name, False)
                continue
            ready = response.status_code == 200 and _ready_flag(response)
            self.set_ready(name, ready)
            if ready and self.breaker.state != "closed":
                log.info("remote model %s: its server answers again; circuit closed", name)
                self.breaker.succeeded()

    def set_ready(self, name: str, ready: bool) -> None:
        if self._ready.get(name) != ready:
            log.log(logging.INFO if ready else logging.WARNING, "remote model %s: ready=%s", name, ready)
        self._ready[name] = ready

    async def _probe_loop(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.probe_interval_s)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        await self.client.aclose()


def _ready_flag(response: httpx.Response) -> bool:
    """A 200 with no body (Triton, MLServer) or with `{"ready": true}` (KServe, this service)."""
    if not response.content:
        return True
    try:
        body = response.json()
    except ValueError:
        return True
    return not isinstance(body, dict) or body.get("ready", True) is True


class RemoteRuntime:
    """One remote model: a batch in, one OIP infer call, the probabilities (or values) out."""

    restarts = 0  # its server's processes are its server's

    def __init__(self, spec: ModelSpec, backend: Backend) -> None:
        if spec.remote is None:
            raise ValueError(f"model {spec.name!r} is not remote")
        self.spec = spec
        self.remote = spec.remote
        self.backend = backend
        self._path = f"{self.remote.model_path}/infer"
        self._width = len(spec.labels) if spec.task == "classification" else 1
        # Readiness is per version: two versions of a model may be served side by side.
        self._watched = f"{spec.name}@{spec.version}"
        backend.watch(self._watched, self.remote)

    @property
    def is_ready(self) -> bool:
        return self.backend.is_ready(self._watched)

    def answered(self) -> None:
        """It just answered a prediction (the warm-up): ready without waiting for the next probe."""
        self.backend.set_ready(self._watched, True)

    def worker_pids(self) -> list[int]:
        return []

    async def load_on_server(self) -> None:
        """Ask this service's model server to load the version (its repository extension: file
        hash checked, a warm-up row run); a no-op for servers the manifest does not manage.

        Raises ModelLoadError with the server's reason, or BackendUnavailable."""
        remote = self.remote
        if not remote.managed:
            return
        name = self.spec.name
        try:
            response = await self.backend.client.post(
                f"/v2/repository/models/{remote.model}/load",
                json={"parameters": {"version": remote.version}} if remote.version else {},
                timeout=120.0,
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(name, f"cannot reach the model server ({type(exc).__name__})") from None
        if response.status_code >= 500:
            said = f"the model server answered {response.status_code}{_said(response)}"
            raise BackendUnavailable(name, said)
        if response.status_code != 200:
            where = f"{remote.base_url}{remote.model_path}"
            raise ModelLoadError(where, f"the model server refused the load{_said(response)}")

    async def wait_ready(self) -> bool:
        # Never waits: an open circuit is answered in run() at once with BackendUnavailable.
        return True

    def _body(self, x: np.ndarray) -> bytes:
        remote = self.remote
        return json.dumps(
            {
                "inputs": [
                    {
                        "name": remote.input,
                        "shape": list(x.shape),
                        "datatype": remote.datatype,
                        "data": x.ravel().tolist(),
                    }
                ],
                "outputs": [{"name": remote.output}],
            },
            separators=(",", ":"),
        ).encode()

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        name = self.spec.name
        breaker = self.backend.breaker
        if not breaker.allow():
            raise BackendUnavailable(name, "circuit open after repeated failures", breaker.retry_after())
        settled = False
        try:
            try:
                async with asyncio.timeout(hard_timeout_s):
                    response = await self.backend.client.post(
                        self._path,
                        content=self._body(x),
                        headers={"Content-Type": "application/json"},
                        timeout=httpx.Timeout(hard_timeout_s, connect=self.remote.connect_timeout_ms / 1000),
                    )
            except (TimeoutError, httpx.TimeoutException) as exc:
                if isinstance(exc, httpx.ConnectTimeout):
                    breaker.failed()
                    settled = True
                    raise BackendUnavailable(name, "connect timeout") from None
                breaker.failed()
                settled = True
                raise PredictionTimeout(name, self.spec.timeout_ms) from None
            except httpx.ConnectError:
                breaker.failed()
                settled = True
                raise BackendUnavailable(name, "connection refused or unreachable") from None
            except httpx.TransportError as exc:  # closed mid-request, protocol error
                breaker.failed()
                settled = True
                raise BackendUnavailable(name, f"connection failed ({type(exc).__name__})") from None
            if response.status_code >= 500:
                breaker.failed()
                settled = True
                raise BackendUnavailable(name, f"the server answered {response.status_code}{_said(response)}")
            breaker.succeeded()
            settled = True
            if response.status_code != 200:
                raise BackendError(name, f"the server answered {response.status_code}{_said(response)}")
            return self._outputs(response, len(x))
        finally:
            if not settled:
                breaker.released()

    async def close(self, *, force: bool = False) -> None:  # noqa: ARG002 - Runtime protocol
        # The backend's client is shared by its models and closed by the registry.
        self.backend.unwatch(self._watched)

    def _outputs(self, response: httpx.Response, rows: int) -> np.ndarray:
        name, wanted = self.spec.name, self.remote.output
        try:
            body = response.json()
        except ValueError:
            raise BackendError(name, "the response is not JSON") from None
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list):
            raise BackendError(name, "the response has no `outputs` list")
        tensor = next((o for o in outputs if isinstance(o, dict) and o.get("name") == wanted), None)
        if tensor is None:
            raise BackendError(name, f"the response has no output {wanted!r}")
        try:
            values = np.asarray(tensor.get("data"), dtype=np.float64)
        except (TypeError, ValueError):
            raise BackendError(name, f"output {wanted!r} is not numeric") from None
        if values.size != rows * self._width or not np.all(np.isfinite(values)):
            raise BackendError(
                name,
                f"output {wanted!r} has {values.size} values, expected {rows} x {self._width} finite numbers",
            )
        return values.reshape(rows, self._width)


def _said(response: httpx.Response) -> str:
    """The server's own error message (OIP `{"error"}`), shortened, for the log and the client."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("error") if isinstance(body, dict) else None
    return f": {str(message)[:200]}" if message else ""
