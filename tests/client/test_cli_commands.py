"""The one-job and operator commands of `asyncinfer`: JSON on stdout, exit codes, the admin routes."""

from __future__ import annotations

import json
import os
import pty
import subprocess

from stack import free_port

from tests.client.helpers import CLI, cli_env, run_cli


def test_predict_prints_the_completed_job(stack):
    result = run_cli(["predict", "[[5.1,3.5,1.4,0.2]]"], stack.url)
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)  # one line of JSON on a pipe
    assert result.stdout.count("\n") == 1
    assert view["status"] == "completed" and view["result"]["class_name"] == "setosa"

    status = run_cli(["status", view["job_id"]], stack.url)
    assert status.returncode == 0 and json.loads(status.stdout)["job_id"] == view["job_id"]
    waited = run_cli(["wait", view["job_id"]], stack.url)
    assert waited.returncode == 0 and json.loads(waited.stdout)["result"] == view["result"]


def test_submit_prints_the_id_that_status_takes_and_json_on_request(stack):
    submitted = run_cli(["submit", "[[5.1,3.5,1.4,0.2]]"], stack.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()  # what `asyncinfer status $(asyncinfer submit ...)` passes on
    status = run_cli(["status", job_id], stack.url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["job_id"] == job_id

    as_json = run_cli(["submit", "--json", "[[5.1,3.5,1.4,0.2]]"], stack.url)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["status"] == "pending"


def test_a_url_where_nothing_listens_fails_with_the_url_named(client_env):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(["status", "some-job"], url)
    assert result.returncode == 1
    assert f"cannot connect to {url}" in result.stderr and "ASYNCINFER_URL" in result.stderr, result.stderr


def test_bad_input_exits_1_with_the_field_named(stack):
    result = run_cli(["predict", "[[1,2]]"], stack.url)
    assert result.returncode == 1
    assert "HTTP 422" in result.stderr and "4 values" in result.stderr and result.stdout == ""


def test_cancel_then_wait_reports_the_canceled_job_and_exits_1(api_only):
    submitted = run_cli(["submit", "[5.1,3.5,1.4,0.2]", "--priority", "low"], api_only.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    canceled = run_cli(["cancel", job_id], api_only.url)
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["status"] == "canceled"
    waited = run_cli(["wait", job_id, "--timeout-s", "5"], api_only.url)
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "canceled"
    assert run_cli(["status", "no-such-job"], api_only.url).returncode == 1


def test_models_lists_the_default_model(stack):
    result = run_cli(["models"], stack.url)
    assert result.returncode == 0, result.stderr
    assert [m["name"] for m in json.loads(result.stdout)["models"]] == ["iris"]


def test_json_is_indented_on_a_terminal(stack):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "predict", "[[5.1,3.5,1.4,0.2]]"], env=cli_env(stack.url), stdout=slave, stderr=subprocess.DEVNULL
    )
    os.close(slave)
    assert proc.wait(timeout=60) == 0
    output = b""
    try:
        while chunk := os.read(master, 65536):
            output += chunk
    except OSError:  # EIO once the child's side is closed and drained
        pass
    os.close(master)
    text = output.decode()
    assert '\n  "status": "completed"' in text  # indented, one member per line
    assert json.loads(text)["result"]["class_name"] == "setosa"


def test_admin_dead_letters_lists_and_retries(fake):
    fake.service.required_token = "admin-token"
    listed = run_cli(["admin", "dead-letters", "--model", "iris", "--limit", "5"], fake.url, ASYNCINFER_TOKEN="admin-token")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"][0]["job_id"] == "dead-1"
    listing = fake.service.requests[-1]
    assert listing.path == "/admin/dead-letters" and listing.query == {"model": ["iris"], "limit": ["5"]}
    retried = run_cli(["admin", "dead-letters", "--model", "iris", "--retry"], fake.url, ASYNCINFER_TOKEN="admin-token")
    assert retried.returncode == 0 and json.loads(retried.stdout) == {"retried": 1}
    assert fake.service.requests[-1].path == "/admin/dead-letters/retry" and fake.service.requests[-1].body == {"model": "iris"}
    refused = run_cli(["admin", "dead-letters"], fake.url, ASYNCINFER_TOKEN="client-token")
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "client-token" not in refused.stderr
