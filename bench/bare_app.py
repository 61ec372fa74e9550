"""The references measured beside the service: a bare FastAPI app (the framework's ceiling) and a
raw ASGI app (the server's ceiling), served by uvicorn with the production entry point's flags.

`python -m bench.bare_app fastapi|asgi --port N`

The FastAPI route returns the service's own `ItemPublic` response model (validated and serialized
by Pydantic exactly as the real route's is), with no database, no auth and no middleware; the raw
ASGI app returns the same JSON bytes with no framework at all.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from app.schemas.item import ItemPublic

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ITEM: dict[str, Any] = {
    "id": 1,
    "title": "A benchmark item",
    "description": "Seeded by bench/run.py.",
    "created_at": NOW,
    "updated_at": NOW,
    "owner_id": 1,
}

fastapi_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@fastapi_app.get("/items/{item_id}")
async def read_item(item_id: int) -> ItemPublic:
    return ItemPublic(**{**ITEM, "id": item_id})


@fastapi_app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


BODY = ItemPublic(**ITEM).model_dump_json().encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["fastapi", "asgi"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_like_the_service(
        "bench.bare_app:fastapi_app" if args.kind == "fastapi" else "bench.bare_app:asgi_app", args.port
    )


def serve_like_the_service(app: Any, port: int) -> None:
    """uvicorn with the same flags as `python -m app.cli serve`, so only the application differs."""
    # Imported here: importing this module (as the server's app) must stay as light as possible.
    import uvicorn

    from app.core.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        timeout_graceful_shutdown=settings.timeout_graceful_shutdown,
        timeout_keep_alive=settings.timeout_keep_alive,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        access_log=False,
        log_config=None,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
