"""A real browser (Debian's chromium, driven by Playwright) against the real stack.

The front-end is served on one 127.0.0.1 port and calls the proxy on another, as `npm run dev`
would. Foreign pages are served from names chromium resolves to 127.0.0.1 (`evil.test`,
`rebind.test`), so the browser treats them as other sites while no packet leaves the machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import Stack, StackFactory
from origin import origin
from proxy.fake_aws import Listening, listen

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Foreign sites for the attack pages, resolved to loopback inside the browser only.
    "--host-resolver-rules=MAP evil.test 127.0.0.1, MAP rebind.test 127.0.0.1",
]
UPSTREAM_PAGE = "<!doctype html><title>upstream</title><h1 id='t'>Hello from the origin</h1>"

if not CHROMIUM.exists():
    print(f"test_browser: skipped, {CHROMIUM} is absent (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright  # noqa: E402


async def origin_with_a_page(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    if request.path.endswith("/page"):
        return web.Response(text=UPSTREAM_PAGE, content_type="text/html")
    return await origin(request, body)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def site() -> AsyncIterator[tuple[Listening, dict[str, str]]]:
    """A static web server on its own port: the front-end, or an attacker's site."""
    pages: dict[str, str] = {}

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        if request.path not in pages:
            return web.Response(status=404, text="no such page")
        return web.Response(text=pages[request.path], content_type="text/html")

    listening = await listen(serve)
    yield listening, pages
    await listening.close()


async def call(page: Page, url: str, init: dict[str, Any]) -> dict[str, Any]:
    """fetch() in the page; what the script sees, or the error the browser gave it."""
    return await page.evaluate(
        """async ([url, init]) => {
            try {
                const r = await fetch(url, init);
                return {ok: r.ok, status: r.status, body: await r.text(),
                        requestId: r.headers.get('x-amzn-requestid')};
            } catch (e) { return {error: String(e)}; }
        }""",
        [url, init],
    )


def requests_seen(stack: Stack) -> list[tuple[str, str]]:
    """What reached the upstream, less the favicon a browser asks for on whatever origin it shows."""
    return [(str(s["method"]), str(s["raw_path"])) for s in stack.gateway.seen if s["raw_path"] != "/favicon.ico"]


def put_init() -> dict[str, Any]:
    """A JSON body and a custom header: not a "simple" request, so the browser preflights it."""
    return {"method": "PUT", "body": json.dumps({"name": "widget"}), "headers": {"Content-Type": "application/json", "X-Trace-Id": "t-42"}}


async def test_front_end_calls_the_proxy_when_its_origin_is_allowed(
    make_stack: StackFactory, browser: Browser, site: tuple[Listening, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sigv4_proxy.access")
    front, pages = site
    pages["/app"] = "<!doctype html><title>front-end</title><p>dev server</p>"
    stack = await make_stack(settings={"cors_origins": [str(front.url)]})
    page = await browser.new_page()
    await page.goto(f"{front.url}/app")

    got = await call(page, f"{stack.url}/prod/items?limit=2", {})
    assert got.get("status") == 200, got
    assert json.loads(got["body"])["raw_path"] == "/prod/items"

    got = await call(page, f"{stack.url}/prod/items/7", put_init())
    assert got.get("status") == 200, got
    seen = stack.gateway.seen[-1]
    assert seen["method"] == "PUT" and seen["body_length"] == len(json.dumps({"name": "widget"}))
    assert ["X-Trace-Id", "t-42"] in seen["headers"]
    assert "OPTIONS /prod/items/7 204" in caplog.text  # the preflight, answered by the proxy
    assert [s["method"] for s in stack.gateway.seen] == ["GET", "PUT"]  # and never forwarded


async def test_front_end_fails_when_its_origin_is_not_allowed(
    make_stack: StackFactory, browser: Browser, site: tuple[Listening, dict[str, str]]
) -> None:
    front, pages = site
    pages["/app"] = "<!doctype html><title>front-end</title><p>dev server</p>"
    stack = await make_stack()  # no cors_origins
    page = await browser.new_page()
    await page.goto(f"{front.url}/app")

    assert "error" in await call(page, f"{stack.url}/prod/items", {})
    assert "error" in await call(page, f"{stack.url}/prod/items/7", put_init())
    assert stack.gateway.seen == []  # refused before signing, not merely unreadable


async def test_navigating_to_the_proxy_shows_the_upstream_page(make_stack: StackFactory, browser: Browser) -> None:
    stack = await make_stack(handler=origin_with_a_page)
    page = await browser.new_page()
    for base in (str(stack.url), f"http://localhost:{stack.proxy.port}"):
        response = await page.goto(f"{base}/prod/page")
        assert response is not None and response.status == 200
        assert await page.inner_text("#t") == "Hello from the origin"
        # The upstream's own page may call its API: same origin, so the browser sends our own Origin.
        got = await call(page, "/prod/items", {"method": "POST", "body": "{}", "headers": {"Content-Type": "application/json"}})
        assert got.get("status") == 200, got
    assert requests_seen(stack) == [("GET", "/prod/page"), ("POST", "/prod/items")] * 2


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "evil.test"])  # same site other port; another site
async def test_a_foreign_form_post_is_refused(
    make_stack: StackFactory, browser: Browser, site: tuple[Listening, dict[str, str]], attacker_host: str
) -> None:
    attacker, pages = site
    stack = await make_stack(settings={"cors_origins": ["http://localhost:3000"]})
    pages["/win-a-prize"] = (
        f"<!doctype html><form method='POST' action='{stack.url}/prod/transfer'>"
        "<input name='amount' value='1000'></form><script>document.forms[0].submit()</script>"
    )
    page = await browser.new_page()
    async with page.expect_response(lambda r: "/prod/transfer" in r.url) as answer:
        await page.goto(f"http://{attacker_host}:{attacker.url.port}/win-a-prize")
    response = await answer.value
    assert response.status == 403
    assert (await response.json())["error"] in ("cross-origin request refused", "cross-site request refused")
    assert requests_seen(stack) == []


async def test_other_tricks_of_a_foreign_page_are_refused(
    make_stack: StackFactory, browser: Browser, site: tuple[Listening, dict[str, str]]
) -> None:
    attacker, pages = site
    stack = await make_stack(handler=origin_with_a_page)
    pages["/page"] = "<!doctype html><title>evil</title>"
    page = await browser.new_page()
    await page.goto(f"http://evil.test:{attacker.url.port}/page")
    # An opaque no-cors GET sends no Origin; Sec-Fetch-Site: cross-site gives it away.
    got = await call(page, f"{stack.url}/prod/items?no-cors", {"mode": "no-cors"})
    assert got.get("status") == 0, got  # opaque either way: the point is the upstream never saw it
    # DNS rebinding: the attacker's name now resolves to 127.0.0.1, so the page is "same-origin".
    response = await page.goto(f"http://rebind.test:{stack.proxy.port}/prod/page")
    assert response is not None and response.status == 421
    assert requests_seen(stack) == []
    # The same browser, told the proxy's real address, does get through (the stack works).
    response = await page.goto(f"{stack.url}/prod/page")
    assert response is not None and response.status == 200
    assert requests_seen(stack) == [("GET", "/prod/page")]
