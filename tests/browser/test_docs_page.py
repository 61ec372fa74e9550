"""The docs pages in a real browser: headless Chromium (Debian's, driven by Playwright) against a
running server. Swagger UI renders from the service's own assets with no request leaving
127.0.0.1, a real user authorizes through the OAuth2 password dialog, and "Try it out" on
GET /api/v1/users/me shows their email; authorized with an API key instead, "Try it out" on
GET /api/v1/items shows the key owner's item. ReDoc renders, also fully offline.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, Route, async_playwright

from tests.conftest import PASSWORD
from tests.faults.server import Server, free_port, server_env, start_server

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOCAL_HOSTS = {"127.0.0.1"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (CI does)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on SQLite in its own file: the browser tests are about the pages, not the database."""
    root = tmp_path_factory.mktemp("browser")
    env = server_env(f"sqlite+aiosqlite:///{root / 'docs.db'}", free_port())
    running = start_server(env, root / "server.log")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Offline:
    """Records every request a page makes and blocks any that would leave 127.0.0.1."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        self.blocked: list[str] = []

    async def attach(self, page: Page) -> None:
        page.on("request", lambda request: self.requested.append(request.url))
        await page.route("**/*", self._route)

    async def _route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOCAL_HOSTS:
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort()


async def _swagger_ui(browser: Browser, server: Server) -> tuple[Page, Offline, list[str]]:
    """Swagger UI loaded (offline-guarded), with the page errors it raises collected."""
    page = await browser.new_page()
    offline = Offline()
    await offline.attach(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{server.base_url}/docs")
    await page.locator(".swagger-ui .info .title").wait_for(timeout=15_000)
    return page, offline, errors


async def _try_it_out(page: Page, path: str) -> Locator:
    """ "Try it out" and "Execute" on GET `path`; the live response's row."""
    operation = page.locator(".opblock-get").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]')
    )
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator("button.execute").click()
    row = operation.locator(".live-responses-table tr.response")
    await row.wait_for(timeout=10_000)
    return row


async def test_swagger_ui_authorizes_a_real_user_and_tries_users_me(server: Server, browser: Browser) -> None:
    email = "browser@example.com"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        registered = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text

    page, offline, errors = await _swagger_ui(browser, server)
    assert "fastapi-ml-service" in await page.locator(".swagger-ui .info .title").inner_text()

    # Authorize: the OAuth2 password flow dialog, with the real user's credentials.
    await page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    await dialog.locator("#oauth_username").fill(email)
    await dialog.locator("#oauth_password").fill(PASSWORD)
    # The OAuth2 scheme's own buttons (the API key scheme has its own box in the same dialog).
    oauth2 = dialog.locator(".auth-container").filter(has=page.locator("h4", has_text="OAuth2PasswordBearer"))
    buttons = oauth2.locator(".auth-btn-wrapper button")
    await buttons.filter(has_text="Authorize").click()
    # "Logout" replaces "Authorize" once the token endpoint issued a token.
    await buttons.filter(has_text="Logout").wait_for(timeout=10_000)
    assert "Authorized" in await oauth2.inner_text()
    await buttons.filter(has_text="Close").click()

    # Try it out on GET /api/v1/users/me: the response shows this user's email.
    row = await _try_it_out(page, "/api/v1/users/me")
    assert (await row.locator(".response-col_status").inner_text()).strip() == "200"
    assert f'"email": "{email}"' in await row.locator(".response-col_description").inner_text()

    assert not offline.blocked, f"requests that would have left 127.0.0.1: {offline.blocked}"
    assert any(url.endswith("/openapi.json") for url in offline.requested)
    assert any("/api/v1/auth/token" in url for url in offline.requested)
    assert not errors, errors


async def test_swagger_ui_authorizes_with_an_api_key_and_tries_list_items(
    server: Server, browser: Browser
) -> None:
    email = "browser-key@example.com"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        await client.post("/api/v1/items", json={"title": "seen through a key"}, headers=owner)
        made = await client.post(
            "/api/v1/api-keys", json={"name": "swagger", "scopes": ["items:read"]}, headers=owner
        )
    assert made.status_code == 201, made.text

    page, offline, errors = await _swagger_ui(browser, server)

    # Authorize: the APIKey scheme's own box (an HTTP bearer credential), with the key.
    await page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    scheme = dialog.locator(".auth-container").filter(has=page.locator("h4", has_text="APIKey"))
    await scheme.locator("input").fill(made.json()["key"])
    await scheme.locator("button", has_text="Authorize").click()
    await scheme.locator("button", has_text="Logout").wait_for(timeout=10_000)
    await dialog.locator("button.btn-done", has_text="Close").first.click()

    row = await _try_it_out(page, "/api/v1/items")
    assert (await row.locator(".response-col_status").inner_text()).strip() == "200"
    assert "seen through a key" in await row.locator(".response-col_description").inner_text()
    assert not offline.blocked, offline.blocked
    assert not errors, errors


async def test_redoc_renders_offline(server: Server, browser: Browser) -> None:
    page = await browser.new_page()
    offline = Offline()
    await offline.attach(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(f"{server.base_url}/redoc")
    heading = page.locator(".api-info h1")
    await heading.wait_for(timeout=15_000)
    assert "fastapi-ml-service" in await heading.inner_text()
    # The operations are listed: the document was loaded and rendered, not only the shell.
    await page.locator("h2", has_text="Log in (OAuth2 password flow)").wait_for(timeout=10_000)

    assert not offline.blocked, f"requests that would have left 127.0.0.1: {offline.blocked}"
    assert any(url.endswith("/openapi.json") for url in offline.requested)
    assert not errors, errors


async def test_the_offline_guard_catches_an_external_request(server: Server, browser: Browser) -> None:
    """The guard the two tests above rely on: a request to another host is recorded and blocked."""
    page = await browser.new_page()
    offline = Offline()
    await offline.attach(page)
    # A blank page: the service's own pages forbid such a request by their CSP before it is made.
    await page.set_content('<img src="https://cdn.jsdelivr.net/npm/redoc/logo.png">')
    assert offline.blocked == ["https://cdn.jsdelivr.net/npm/redoc/logo.png"]
    assert offline.requested == offline.blocked
