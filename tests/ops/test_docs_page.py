"""/docs in headless Chromium on a machine with no way out: only this API's own origin is reachable, and
Swagger UI still renders every route (its files are served by the API, not fetched from a CDN).
The screenshot lands in tests/ops/artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.ops.conftest import OpsStack

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium missing: run deploy/ops-tools.sh")

ARTIFACTS = Path(__file__).parent / "artifacts"
UI_TIMEOUT_MS = 20_000


def test_swagger_ui_renders_with_only_the_api_reachable(ops_stack: OpsStack, browser):
    api_origin = urlparse(ops_stack.api_url).netloc
    blocked: list[str] = []

    def only_the_api(route) -> None:
        if urlparse(route.request.url).netloc == api_origin:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.route("**/*", only_the_api)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{ops_stack.api_url}/docs")
        expect = playwright_api.expect
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("asyncinfer")
        expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible()
        assert page.locator(".swagger-ui .opblock-summary-path", has_text="/predict").count() >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
    finally:
        context.close()
    assert blocked == [], f"/docs asked for other origins: {blocked}"
    assert errors == [], errors
