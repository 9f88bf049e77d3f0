"""The admin console in headless Chromium (Debian's, driven by Playwright): an admin finds a failed
job, retries it and sees it complete; retry-all and cancel ask for a confirmation; pause and resume;
a client token is refused. Screenshots land in tests/ops/artifacts/ (gitignored)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobqueue.states import Outcome
from tests.conftest import service_env
from tests.ops.conftest import ADMIN_TOKEN, CLIENT_TOKEN, OpsStack

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium missing: run deploy/ops-tools.sh")

ARTIFACTS = Path(__file__).parent / "artifacts"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
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


def fact(job, name: str):
    """The value shown beside `name` in a job's facts."""
    return job.locator(f"xpath=.//dt[text()='{name}']/following-sibling::dd[1]")


def test_admin_retries_a_failed_job_and_sees_it_complete(ops_stack: OpsStack, page, redis_client):
    ops_stack.submit(1)
    (failed,) = ops_stack.fail_pending("model error: [ONNXRuntimeError] INVALID_ARGUMENT: out of memory", 1)
    ops_stack.submit(1)
    (other,) = ops_stack.fail_pending("model error: [ONNXRuntimeError] RUNTIME_EXCEPTION: Gemm node failed", 1, attempts=3)
    ops_stack.start_worker()

    sign_in(page, ops_stack, ADMIN_TOKEN)
    expect(page.locator("#app")).to_be_visible()
    row = page.locator(f'#failures tr[data-job="{failed}"]')
    expect(row).to_contain_text("INVALID_ARGUMENT: out of memory")  # the error text, at a glance
    expect(page.locator('#queues tr[data-model="iris"]')).to_contain_text("iris")
    expect(page.locator("#workers tbody")).to_contain_text("alive")
    assert page.evaluate("sessionStorage.getItem('asyncinfer.token')") == ADMIN_TOKEN
    expect(page.locator("#signout")).to_be_visible()  # signed in with a token: there is one to forget

    row.get_by_role("button", name="Retry").click()
    job = page.locator("#job")
    expect(job).to_have_attribute("data-status", "completed")  # looked up and refreshed until it ends
    expect(job).to_contain_text("Result")
    # the wait of the run that completed it: from the retry to its start (0 ms when a waiting worker
    # took it at once), never the dash of a figure not known
    expect(fact(job, "Waited")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))
    queued_at = redis_client.hget(f"asyncinfer:job:{failed}", "queued_at")
    redis_client.hset(f"asyncinfer:job:{failed}", "started_at", queued_at)  # taken in the same millisecond
    expect(fact(job, "Waited")).to_have_text("0 ms")
    expect(row).to_have_count(0)  # no longer a dead letter
    other_row = page.locator(f'#failures tr[data-job="{other}"]')
    expect(other_row).to_contain_text("failed after 3 attempts: model error")  # ran 3 times, and says so once
    expect(other_row.locator("td.num")).to_have_text("3")
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


def test_a_job_retried_by_its_worker_shows_the_wait_of_its_latest_attempt(ops_stack: OpsStack, page, redis_client):
    ops_stack.submit(1)
    (job_id,) = ops_stack.run_pending(1, [(Outcome.RETRY, "model error: flaky"), (Outcome.COMPLETED, '{"prediction": 0}')])
    record = f"asyncinfer:job:{job_id}"
    assert redis_client.hget(record, "attempts") == "2"
    # as if it had waited ten minutes before its first attempt: none of that is its latest attempt's wait
    redis_client.hincrby(record, "queued_at", -600_000)
    sign_in(page, ops_stack, ADMIN_TOKEN)
    page.fill("#lookup-id", job_id)
    page.click("#lookup-form button[type=submit]")
    job = page.locator("#job")
    expect(job).to_have_attribute("data-status", "completed")
    expect(fact(job, "Waited")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))  # from its requeue, not "10 m ..."


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
    expect(page.locator("#signout")).to_be_hidden()  # nobody signed in: nothing to sign out of


def test_at_phone_width_nothing_is_cut_off_and_every_button_works(ops_stack: OpsStack, page):
    ops_stack.submit(2)
    (failed,) = ops_stack.fail_pending("model error: [ONNXRuntimeError] INVALID_ARGUMENT: out of memory", 1)
    page.set_viewport_size(PHONE)
    sign_in(page, ops_stack, ADMIN_TOKEN)
    iris = page.locator('#queues tr[data-model="iris"]')
    expect(iris).to_contain_text("no workers")
    expect(page.locator(f'#failures tr[data-job="{failed}"]')).to_be_visible()
    page.fill("#lookup-id", failed)
    page.click("#lookup-form button[type=submit]")
    expect(page.locator("#job")).to_have_attribute("data-status", "failed")

    # Nothing wider than the screen: no sideways scrolling, no element reaching past its right edge.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    too_wide = page.evaluate(
        """() => [...document.querySelectorAll('#app *')]
            .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className + ' ' + (e.textContent || '').slice(0, 30))"""
    )
    assert too_wide == []
    buttons = page.locator("#app button")
    assert buttons.count() >= 5  # Pause, Retry all failed, Look up, the failure's Retry, the job's Retry
    for i in range(buttons.count()):
        button = buttons.nth(i)
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], button.text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-phone.png"), full_page=True)

    iris.get_by_role("button", name="Pause").click()  # clickable, not under another element
    page.locator("#confirm").get_by_role("button", name="Pause").click()
    expect(iris).to_contain_text("paused")
    page.locator(f'#failures tr[data-job="{failed}"]').get_by_role("button", name="Retry").click()
    expect(page.locator("#job")).to_have_attribute("data-status", "pending")
