"""The route inventory the security tests walk, read from the app itself so new routes are covered.

Each route is described by what its dependencies require (a token, an admin) and which path and
query parameters name an object. A parameter this module does not know fails the inventory test:
whoever adds a route that takes a new kind of id decides here whose it is.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from app.api.deps import Bearer, get_admin
from app.core.config import Settings
from app.main import create_app
from tests.conftest import empty_database
from tests.lifespan import lifespan

# Path/query parameters that name an object belonging to one user (checked for BOLA).
# A prediction id that names no prediction (a version-7 UUID of 2024), for routes that take one.
SOME_PREDICTION_ID = "0190a000-0000-7000-8000-000000000000"
OWNED_ID_PARAMS = frozenset({"item_id", "user_id", "key_id", "job_id", "prediction_id"})
# Path parameters that name something shared by every user: the model catalogue (a model, its
# versions and its aliases).
PUBLIC_PATH_PARAMS = frozenset({"name", "version", "alias"})

PASSWORD_HASH_MARKERS = ("$argon2", "hashed_password")


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    route: APIRoute

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([^}:]+)", self.path)

    @property
    def id_query_params(self) -> list[str]:
        return [p.name for p in _all_query_params(self.route.dependant) if p.name in OWNED_ID_PARAMS]

    @property
    def needs_token(self) -> bool:
        return any(_bearers(self.route.dependant))

    @property
    def checks_token_in_its_statement(self) -> bool:
        """The item routes take the caller unchecked: the item service checks it, the hottest
        operations in their own statement."""
        return any(bearer.checked_by_the_service for bearer in _bearers(self.route.dependant))

    @property
    def admin_only(self) -> bool:
        return _depends_on(self.route.dependant, get_admin)

    @property
    def has_json_body(self) -> bool:
        return self.route.body_field is not None and not _is_form(self.route)

    def url(self, **values: object) -> str:
        return re.sub(r"\{([^}:]+)[^}]*\}", lambda m: str(values[m.group(1)]), self.path)


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def _depends_on(dependant: Dependant, call: object) -> bool:
    return any(d.call is call for d in _walk(dependant))


def _bearers(dependant: Dependant) -> Iterator[Bearer]:
    """The caller dependencies (`Bearer`, one instance per scope) a route depends on."""
    return (d.call for d in _walk(dependant) if isinstance(d.call, Bearer))


def _all_query_params(dependant: Dependant) -> Iterator[object]:
    for d in _walk(dependant):
        yield from d.query_params


def _is_form(route: APIRoute) -> bool:
    field = route.body_field
    return field is not None and type(getattr(field, "field_info", None)).__name__ in {"Form", "File"}


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API operation of the app, one per method (HEAD left out: it mirrors GET)."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        methods = sorted(set(context.methods or ()) - {"HEAD"})
        found.extend(RouteInfo(method, str(context.path), route) for method in methods)
    assert found, "no routes found: has FastAPI changed how routers are included?"
    return found


def contains_password_hash(text: str) -> bool:
    return any(marker in text for marker in PASSWORD_HASH_MARKERS)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app built with its own settings; its tables are emptied afterwards."""
    application = create_app(settings)
    try:
        async with lifespan(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client
    finally:
        await empty_database(settings.database_url)  # after the shutdown has written its last records
