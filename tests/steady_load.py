"""A steady request load for tests that change something while clients keep calling: closed loops
over several clients, every outcome recorded with when it was sent and answered.

    load = SteadyLoad({"a": url_a, "b": url_b}, post_json(PREDICT, body, headers), thread=True)
    await load.start()
    try:
        await load.wait_for(200, time.monotonic())  # steady before the change
        ...                                         # the change under test
    finally:
        await load.stop()
    assert not load.failures(versions={"1.0.0", "2.0.0"})

`loops` closed loops (each sends its next request when the last is answered); loop `i` starts at
the `i`-th client and moves to the next one after every request, so each client gets an even
share. A transport error is recorded as status 0 and the loop goes on (after `pause_after_error_s`,
so a server that refuses connections at once is not called in a spin).

Where the loops run:
- `clients` maps names to `httpx.AsyncClient`s (an in-process app behind `httpx.ASGITransport`
  lives on the test's event loop, so its load must too): the loops are tasks on the test's event
  loop, next to the test's own checks.
- `thread=True` and `clients` maps names to base URLs (servers in other processes): the loops run
  on an event loop of their own in a thread, with clients of their own, so a check the test makes
  meanwhile is not queued behind hundreds of load requests on its event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
"""One request of a loop, given the client whose turn it is."""

# Waiting for answers: a ceiling for a stuck load, not a measure of speed.
WAIT_CEILING_S = 120.0


@dataclass(frozen=True, slots=True)
class Outcome:
    client: str  # the name of the client that sent it
    sent: float  # time.monotonic() when it was sent
    answered: float  # time.monotonic() when its answer (or transport error) came back
    status: int  # the answer's status; 0 for a transport error (no answer)
    version: str | None  # a 200's `version` field, where its JSON body has one
    body: str  # a non-200's text (300 characters), or the transport error

    @property
    def error(self) -> str | None:
        """The transport error's type (`ConnectError`, `ReadError`, ...) for status 0, else None."""
        return self.body.split(":", 1)[0] if self.status == 0 else None


def post_json(path: str, body: Any, headers: Mapping[str, str] | None = None) -> Send:
    """Each request: POST `body` as JSON to `path` with `headers`."""
    fixed = dict(headers or {})

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(path, json=body, headers=fixed)

    return send


def _version(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


class SteadyLoad:
    """Closed loops of `send` over `clients` until stopped (see the module's docstring)."""

    def __init__(
        self,
        clients: Mapping[str, httpx.AsyncClient | str],
        send: Send,
        *,
        loops: int = 6,
        pause_s: float = 0.0,
        thread: bool = False,
        timeout_s: float = 30.0,
        pause_after_error_s: float = 0.0,
    ) -> None:
        if not clients:
            raise ValueError("a load needs at least one client")
        if thread and not all(isinstance(c, str) for c in clients.values()):
            raise ValueError("thread=True needs base URLs: a client belongs to the event loop that made it")
        self.names = list(clients)
        self._given = dict(clients)
        self._send = send
        self._loops = loops
        self._pause_s = pause_s
        self._thread_mode = thread
        self._timeout_s = timeout_s
        self._pause_after_error_s = pause_after_error_s
        self._outcomes: list[Outcome] = []  # appended by the loops (one append is atomic)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._own: AsyncExitStack | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

    # --- running ----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread_mode:
            self._thread = threading.Thread(target=self._run_in_thread, name="steady-load", daemon=True)
            self._thread.start()
            started = await asyncio.to_thread(self._ready.wait, WAIT_CEILING_S)
            assert started, "the load's thread did not start"
            return
        self._own = AsyncExitStack()
        clients = {name: await self._client(self._own, given) for name, given in self._given.items()}
        self._tasks = [asyncio.create_task(self._loop(i, clients)) for i in range(self._loops)]

    async def stop(self) -> None:
        """Stop every loop after its request in flight is answered."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            if self._thread_error is not None:
                raise self._thread_error
            return
        try:
            await asyncio.gather(*self._tasks)
        finally:
            if self._own is not None:
                await self._own.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _client(self, stack: AsyncExitStack, given: httpx.AsyncClient | str) -> httpx.AsyncClient:
        if isinstance(given, httpx.AsyncClient):
            return given
        return await stack.enter_async_context(httpx.AsyncClient(base_url=given, timeout=self._timeout_s))

    def _run_in_thread(self) -> None:
        try:
            asyncio.run(self._run_own_loop())
        except BaseException as exc:  # noqa: BLE001 - handed to stop(), which raises it in the test
            self._thread_error = exc
            self._ready.set()

    async def _run_own_loop(self) -> None:
        async with AsyncExitStack() as stack:
            clients = {name: await self._client(stack, given) for name, given in self._given.items()}
            self._ready.set()
            await asyncio.gather(*(self._loop(i, clients) for i in range(self._loops)))

    async def _loop(self, turn: int, clients: Mapping[str, httpx.AsyncClient]) -> None:
        while not self._stop.is_set():
            name = self.names[turn % len(self.names)]
            turn += 1
            sent = time.monotonic()
            try:
                response = await self._send(clients[name])
            except httpx.HTTPError as exc:
                failed = f"{type(exc).__name__}: {exc}"[:300]
                self._outcomes.append(Outcome(name, sent, time.monotonic(), 0, None, failed))
                await asyncio.sleep(self._pause_after_error_s)  # a server that refuses at once
            else:
                answered = time.monotonic()
                if response.status_code == 200:
                    outcome = Outcome(name, sent, answered, 200, _version(response), "")
                else:
                    outcome = Outcome(name, sent, answered, response.status_code, None, response.text[:300])
                self._outcomes.append(outcome)
            await asyncio.sleep(self._pause_s)  # at least a yield: the loop never hogs its event loop

    # --- what happened ----------------------------------------------------------------------------

    @property
    def outcomes(self) -> list[Outcome]:
        """Every outcome so far, in the order the answers came."""
        return list(self._outcomes)

    def since(self, moment: float, until: float = float("inf")) -> list[Outcome]:
        """The outcomes of requests sent in [moment, until) (time.monotonic())."""
        return [o for o in self.outcomes if moment <= o.sent < until]

    def answered_before(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.answered < moment]

    async def wait_for(self, count: int, moment: float, ceiling_s: float = WAIT_CEILING_S) -> list[Outcome]:
        """The first `count` outcomes (by when they were sent) of requests sent after `moment`,
        once there are that many; fails after `ceiling_s` (a stuck load, not a slow one)."""
        deadline = time.monotonic() + ceiling_s
        while len(self.since(moment)) < count:
            if self._thread_error is not None:
                raise self._thread_error
            assert time.monotonic() < deadline, (
                f"only {len(self.since(moment))} of {count} answers in {ceiling_s} s"
            )
            await asyncio.sleep(0.02)
        return sorted(self.since(moment), key=lambda o: o.sent)[:count]

    def failures(self, versions: Collection[str] | None = None) -> list[Outcome]:
        """The outcomes that were not a 200 (or, given `versions`, a 200 naming none of them)."""
        return [
            o
            for o in self.outcomes
            if o.status != 200 or (versions is not None and o.version not in versions)
        ]

    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)
