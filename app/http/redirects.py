"""Trailing-slash redirects that stay on the origin the client used.

Starlette's router answers `/api/v1/items/` with a 307 to an absolute URL built from the request's
Host header, so with `TRUSTED_HOSTS=*` (the default) `Host: evil.com` got a redirect to
`http://evil.com/api/v1/items`. Here the same redirect carries a relative `Location` (RFC 9110
allows one): whatever Host a request names, it is sent back to the path on the origin it came from.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

# A Location starting with these is a protocol-relative URL, another site, to browsers.
_OFF_SITE = ("//", "/\\")


def relative_slash_redirects(app: FastAPI) -> None:
    """Replace the router's slash redirects with relative ones: a path that matches no route, but
    would with its trailing slash added or removed, gets a 307 to that path (query kept); anything
    else goes on to the router's 404."""
    router = app.router
    router.redirect_slashes = False
    not_found: ASGIApp = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path != "/":
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            if other and not other.startswith(_OFF_SITE):
                redirect_scope = {**scope, "path": other}
                if any(route.matches(redirect_scope)[0] is not Match.NONE for route in router.routes):
                    query = scope.get("query_string", b"").decode("latin-1")
                    location = other + ("?" + query if query else "")
                    await RedirectResponse(location, status_code=307)(scope, receive, send)
                    return
        await not_found(scope, receive, send)

    router.default = default
