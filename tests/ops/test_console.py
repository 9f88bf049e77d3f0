"""The admin console in headless Chromium (Debian's, driven by Playwright): an admin finds a failed
job, retries it and sees it complete; retry-all and cancel ask for a confirmation; pause and resume;
a client token is refused. Screenshots land in tests/ops/artifacts/ (gitignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_env
from tests.ops.conftest import ADMIN_TOKEN, CLIENT_TOKEN, OpsStack

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium missing: run deploy/ops-tools.sh")

ARTIFACTS = Path(__file__).parent / "artifacts"
LAPTOP = {"width": 1366, "height": 900}
UI_TIMEOUT_MS = 20_000


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A fresh tab (its own sessionStorage); fails the test on any script error in the page."""
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def sign_in(page, stack: OpsStack, token: str) -> None:
    page.goto(f"{stack.api_url}/console")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def expect(locator):
    return playwright_api.expect(locator)


def test_admin_retries_a_failed_job_and_sees_it_complete(ops_stack: OpsStack, page):
    ops_stack.submit(1)
    (failed,) = ops_stack.fail_pending("model error: [ONNXRuntimeError] INVALID_ARGUMENT: out of memory", 1)
    ops_stack.submit(1)
    (other,) = ops_stack.fail_pending("worker lost while processing, 3 attempts", 1)
    ops_stack.start_worker()

    sign_in(page, ops_stack, ADMIN_TOKEN)
    expect(page.locator("#app")).to_be_visible()
    row = page.locator(f'#failures tr[data-job="{failed}"]')
    expect(row).to_contain_text("INVALID_ARGUMENT: out of memory")  # the error text, at a glance
    expect(page.locator('#queues tr[data-model="iris"]')).to_contain_text("iris")
    expect(page.locator("#workers tbody")).to_contain_text("alive")
    assert page.evaluate("sessionStorage.getItem('asyncinfer.token')") == ADMIN_TOKEN

    row.get_by_role("button", name="Retry").click()
    job = page.locator("#job")
    expect(job).to_have_attribute("data-status", "completed")  # looked up and refreshed until it ends
    expect(job).to_contain_text("Result")
    expect(row).to_have_count(0)  # no longer a dead letter
    expect(page.locator(f'#failures tr[data-job="{other}"]')).to_be_visible()
    with ops_stack.http(ADMIN_TOKEN) as http:
        assert http.get(f"/job/{failed}").json()["status"] == "completed"

    expect(page.locator("#toast")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    if os.environ.get("CONSOLE_SCREENSHOT"):  # `CONSOLE_SCREENSHOT=docs/console.png` refreshes the README's
        shutil.copy(ARTIFACTS / "console.png", os.environ["CONSOLE_SCREENSHOT"])


def test_retry_all_failed_asks_first_then_requeues_every_dead_letter(ops_stack: OpsStack, page):
    ops_stack.submit(3)
    failed = ops_stack.fail_pending("model error: boom", 3)
    ops_stack.start_worker()
    sign_in(page, ops_stack, ADMIN_TOKEN)
    iris = page.locator('#queues tr[data-model="iris"]')
    expect(page.locator("#failures tr[data-job]")).to_have_count(3)

    iris.get_by_role("button", name="Retry all failed").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Retry all failed jobs of iris?")
    dialog.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(2500)  # a refresh later: nothing was retried
    expect(page.locator("#failures tr[data-job]")).to_have_count(3)

    iris.get_by_role("button", name="Retry all failed").click()
    dialog.get_by_role("button", name="Retry all").click()
    expect(page.locator("#toast")).to_contain_text("3 job(s) of iris requeued")
    expect(page.locator("#failures tbody")).to_contain_text("no failures")
    with ops_stack.http(ADMIN_TOKEN) as http:
        for job_id in failed:
            assert http.get(f"/job/{job_id}", params={"wait": 20}).json()["status"] == "completed"


def test_cancel_a_pending_job_and_pause_resume_the_queue(ops_stack: OpsStack, page, redis_client):
    (job_id,) = ops_stack.submit(1)  # no worker: it stays pending
    sign_in(page, ops_stack, ADMIN_TOKEN)
    iris = page.locator('#queues tr[data-model="iris"]')
    expect(iris).to_contain_text("no workers")  # pending work, nobody to run it: red at a glance

    page.fill("#lookup-id", job_id)
    page.click("#lookup-form button[type=submit]")
    job = page.locator("#job")
    expect(job).to_have_attribute("data-status", "pending")
    job.get_by_role("button", name="Cancel").click()
    page.locator("#confirm").get_by_role("button", name="Cancel job").click()
    expect(job).to_have_attribute("data-status", "canceled")
    assert redis_client.hget(f"asyncinfer:job:{job_id}", "status") == "canceled"

    iris.get_by_role("button", name="Pause").click()
    page.locator("#confirm").get_by_role("button", name="Pause").click()
    expect(iris).to_contain_text("paused")
    assert redis_client.exists("asyncinfer:iris:paused")
    iris.get_by_role("button", name="Resume").click()
    expect(iris.get_by_role("button", name="Pause")).to_be_visible()
    assert not redis_client.exists("asyncinfer:iris:paused")


def test_a_client_token_is_refused(ops_stack: OpsStack, page):
    sign_in(page, ops_stack, CLIENT_TOKEN)
    expect(page.locator("#login-error")).to_have_text("admin token required")
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('asyncinfer.token')") is None
    with ops_stack.http(CLIENT_TOKEN) as http:
        assert http.get("/admin/overview").status_code == 403
        assert http.get("/admin/dead-letters").status_code == 403
    sign_in(page, ops_stack, "not-a-token-at-all-0000")
    expect(page.locator("#login-error")).to_contain_text("token rejected")


def test_with_authentication_off_the_console_opens_without_a_token(processes, redis_server, redis_client, page):
    _, url = processes.api(service_env(redis_server.url))  # the plain local stack: no AUTH_TOKENS_FILE
    page.goto(f"{url}/console")
    expect(page.locator('#queues tr[data-model="iris"]')).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
