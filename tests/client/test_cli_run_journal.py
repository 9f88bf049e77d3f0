"""`asyncinfer run` against the fake service: which refusals stop a run, keys per input, a torn OUTPUT line."""

from __future__ import annotations

import hashlib
import json
import re

from tests.client.helpers import read_jsonl, run_cli

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def write_inputs(path):
    path.write_text("".join(json.dumps({"id": f"r{i}", "data": [row]}) + "\n" for i, row in enumerate(ROWS)))


def test_service_refusal_stops_the_run_and_journals_nothing_so_a_rerun_retries(fake, tmp_path):
    fake.service.fail_first, fake.service.fail_status, fake.service.retry_after = 10_000, 503, "0"
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inputs)
    stopped = run_cli(["run", str(inputs), "-o", str(output), "--concurrency", "1"], fake.url)
    assert stopped.returncode == 1
    assert "stopped:" in stopped.stderr and "HTTP 503" in stopped.stderr
    assert read_jsonl(output) == []  # an outage is not the inputs' fault: nothing marked done
    assert fake.service.jobs_created == 0

    fake.service.fail_first = 0
    resumed = run_cli(["run", str(inputs), "-o", str(output)], fake.url)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["id"] for r in read_jsonl(output)) == ["r0", "r1", "r2"]
    # one key per input, derived from the input file's absolute path and the input's id
    prefix = "run-" + hashlib.sha256(str(inputs.resolve()).encode()).hexdigest()[:16]
    assert set(fake.service.jobs_by_key) == {f"{prefix}-r0", f"{prefix}-r1", f"{prefix}-r2"}


def test_a_torn_last_line_is_dropped_and_that_input_runs_again(fake, tmp_path):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inputs)
    output.write_text('{"id":"r0","job_id":"j0","status":"completed","result":{"prediction":0}}\n{"id":"r1","job_')
    result = run_cli(["run", str(inputs), "-o", str(output)], fake.url)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(output)  # every line parses: the torn one was cut off before appending
    assert sorted(r["id"] for r in records) == ["r0", "r1", "r2"]
    assert records[0]["job_id"] == "j0"  # the earlier result is kept, not redone
    assert fake.service.jobs_created == 2
    assert re.search(r"2 completed, 0 failed, 1 already done", result.stderr)


def test_csv_header_with_an_id_column_names_the_results(fake, tmp_path):
    inputs, output = tmp_path / "in.csv", tmp_path / "out.jsonl"
    inputs.write_text("id,a,b,c,d\nx1,5.1,3.5,1.4,0.2\n\nx2,6.7,3.0,5.2,2.3\n")
    result = run_cli(["run", str(inputs), "-o", str(output)], fake.url)
    assert result.returncode == 0, result.stderr
    assert sorted(r["id"] for r in read_jsonl(output)) == ["x1", "x2"]
    sent = [item for r in fake.service.requests if r.method == "POST" and "items" in r.body for item in r.body["items"]]
    assert sorted(b["data"][0][0] for b in sent) == [5.1, 6.7] and all(len(b["data"][0]) == 4 for b in sent)


def test_job_timeout_journals_timeouts_and_exits_1(fake, tmp_path):
    fake.service.job_status = "pending"  # never ends
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inputs)
    result = run_cli(["run", str(inputs), "-o", str(output), "--job-timeout", "1"], fake.url, timeout_s=30)
    assert result.returncode == 1
    records = read_jsonl(output)
    assert [r["status"] for r in records] == ["timeout"] * 3 and all(r["job_id"] for r in records)
    assert "0 completed, 3 failed" in result.stderr
