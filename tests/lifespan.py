"""Running an app's lifespan in a test, with start-up and shutdown limits sized for the worst case.

asgi-lifespan gives start-up 5 s by default. An app with models loads them and starts its process
pool in that time, which a shared CI machine (another job installing packages, the rest of the
suite's servers) can stretch well past 5 s: `tests/api/test_api_keys.py` failed that way on a
clean clone (issue 21). A limit here only stops a test that would otherwise hang; how long
start-up takes is measured by `make bench`, not asserted by a test.
"""

from __future__ import annotations

from asgi_lifespan import LifespanManager
from fastapi import FastAPI

STARTUP_LIMIT_S = 120.0
SHUTDOWN_LIMIT_S = 60.0
# A server in a process of its own (`python -m app.cli serve` or `model-server`) until it answers:
# its imports too, which alone took 40 s on a shared host under load (issue 21).
SERVER_STARTUP_LIMIT_S = 300.0


def lifespan(app: FastAPI) -> LifespanManager:
    """`async with lifespan(app):` runs `app`'s start-up on entry and its shutdown on exit."""
    return LifespanManager(app, startup_timeout=STARTUP_LIMIT_S, shutdown_timeout=SHUTDOWN_LIMIT_S)
