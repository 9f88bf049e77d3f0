"""`asyncinfer run` as a subprocess against the real stack: interrupted half-way and resumed, progress display."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncinfer_client.run_file import RUN_MAX_CHUNK
from tests.client.helpers import CLI, JOB_KEYS, cli_env, iris_rows, line_count, read_jsonl, run_cli, wait_for
from tests.conftest import service_env

TOTAL = 2000
# enough that a run with --concurrency 1 (a bulk request of RUN_MAX_CHUNK at a time) lasts several progress intervals
PROGRESS_INPUTS = 3000
PLAIN_LINE = re.compile(r"^asyncinfer run: \d+/\d+ \(\d+%\) done, \d+ failed, [\d.]+/s, ETA [\d:?]+$", re.M)


def write_jsonl(path: Path, rows: list[list[float]]) -> list[object]:
    """Half the lines carry an `id`, half are bare rows (their id is the line number). Returns the ids."""
    ids: list[object] = []
    with path.open("w") as handle:
        for line_number, row in enumerate(rows, start=1):
            if line_number % 2:
                handle.write(json.dumps({"id": f"row-{line_number}", "data": [row]}) + "\n")
                ids.append(f"row-{line_number}")
            else:
                handle.write(json.dumps(row) + "\n")
                ids.append(line_number)
    return ids


def write_csv(path: Path, rows: list[list[float]]) -> list[object]:
    """A header line, then one row per line: ids are line numbers 2..N+1."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width"])
        writer.writerows(rows)
    return list(range(2, len(rows) + 2))


def expected_class(rows: list[list[float]], ids: list[object], record: dict) -> str:
    position = ids.index(record["id"])
    return "setosa" if rows[position][0] == 5.1 else "virginica"


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_run_interrupted_half_way_resumes_without_submitting_twice(stack, redis_client, tmp_path, kind):
    rows = iris_rows(TOTAL)
    input_path = tmp_path / f"inputs.{kind}"
    ids = (write_jsonl if kind == "jsonl" else write_csv)(input_path, rows)
    output = tmp_path / "results.jsonl"
    # two bulk requests in flight (up to 500 inputs): a quarter of the file, so some are in flight at Ctrl-C
    args = [CLI, "run", str(input_path), "-o", str(output), "--concurrency", "2", "--progress-interval", "0.5"]
    first = subprocess.Popen(args, env=cli_env(stack.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: line_count(output) >= TOTAL // 2, 90, "half the results")
        # freeze the worker so jobs are in flight (submitted, not yet written) when Ctrl-C comes
        os.kill(stack.worker.pid, signal.SIGSTOP)
        try:
            settled = -1
            while settled != line_count(output):
                settled = line_count(output)
                time.sleep(0.5)
            first.send_signal(signal.SIGINT)
            _, first_err = first.communicate(timeout=30)
        finally:
            os.kill(stack.worker.pid, signal.SIGCONT)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, first_err
    assert "interrupted" in first_err and "run the same command again to resume" in first_err
    written_first = read_jsonl(output)
    assert TOTAL // 2 <= len(written_first) < TOTAL

    second = run_cli(["run", str(input_path), "-o", str(output), "--concurrency", "8"], stack.url)
    assert second.returncode == 0, second.stderr
    records = read_jsonl(output)
    assert sorted(map(str, (r["id"] for r in records))) == sorted(map(str, ids))  # every input exactly once
    assert all(r["status"] == "completed" for r in records)
    assert all(r["result"]["class_name"] == expected_class(rows, ids, r) for r in records)
    # nothing was submitted twice: one job record per input on the server, and the in-flight ones were replayed
    assert len(redis_client.keys(JOB_KEYS)) == TOTAL
    assert len({r["job_id"] for r in records}) == TOTAL
    replayed = int(re.search(r"(\d+) found already submitted", second.stderr).group(1))
    # the ones in flight at Ctrl-C: at most one chunk per bulk request in flight
    assert 1 <= replayed <= 2 * RUN_MAX_CHUNK, second.stderr
    assert f"{len(written_first)} already done" in second.stderr


def http_requests(url: str) -> dict[tuple[str, str], float]:
    """The API's request counts by (method, route template), from its /metrics."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "asyncinfer_http_requests_total":
                key = (sample.labels["method"], sample.labels["route"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_run_sends_what_map_sends_bulk_submits_and_bulk_lookups(stack, tmp_path):
    # at least as fast as `Client.map` because it makes map's requests, in larger chunks: one bulk submit per chunk
    # of inputs and a few reads per chunk, not a submit and a long poll per input (bench/cli_run.py compares them)
    inputs = 1000
    input_path = tmp_path / "inputs.jsonl"
    write_jsonl(input_path, iris_rows(inputs))
    result = run_cli(["run", str(input_path), "-o", str(tmp_path / "out.jsonl")], stack.url)
    assert result.returncode == 0, result.stderr
    assert f"{inputs} completed, 0 failed" in result.stderr
    requests = http_requests(stack.url)
    assert requests.get(("POST", "/predict"), 0) == 0
    assert requests[("POST", "/predict/batch")] == inputs // RUN_MAX_CHUNK
    made = sum(count for (_, route), count in requests.items() if route != "/metrics")
    assert made <= inputs / 50, requests  # a handful per chunk of 250


def test_large_inputs_go_in_smaller_bulk_requests_under_the_body_limit(processes, redis_server, redis_client, tmp_path):
    # 256 rows per input (~4.6 KB as sent): 100 of them in one request would be over this service's 384 KiB body
    # limit (refused with a 413, every input of the request journaled as rejected)
    env = service_env(redis_server.url, MAX_BODY_BYTES=str(384 * 1024))
    processes.worker(env)
    _, url = processes.api(env)
    inputs = 120
    input_path = tmp_path / "inputs.jsonl"
    input_path.write_text("".join(json.dumps({"id": i, "data": iris_rows(256)}) + "\n" for i in range(inputs)))
    result = run_cli(["run", str(input_path), "-o", str(tmp_path / "out.jsonl")], url)
    assert result.returncode == 0, result.stderr
    assert f"{inputs} completed, 0 failed" in result.stderr
    assert http_requests(url)[("POST", "/predict/batch")] == 3  # 45 inputs (~210 KiB) per request


def test_run_exits_1_and_names_the_failure_when_an_input_is_refused(stack, tmp_path):
    input_path = tmp_path / "inputs.jsonl"
    input_path.write_text(
        json.dumps({"id": "good", "data": [[5.1, 3.5, 1.4, 0.2]]}) + "\n" + json.dumps({"id": "bad", "data": [[1, 2]]}) + "\n"
    )
    output = tmp_path / "results.jsonl"
    result = run_cli(["run", str(input_path), "-o", str(output)], stack.url)
    assert result.returncode == 1
    by_id = {r["id"]: r for r in read_jsonl(output)}
    assert by_id["good"]["status"] == "completed" and by_id["bad"]["status"] == "rejected"
    assert "4 values" in by_id["bad"]["error"] and by_id["bad"]["job_id"] is None
    assert "1 completed, 1 failed" in result.stderr


def test_run_refuses_duplicate_ids_before_submitting(api_only, redis_client, tmp_path):
    input_path = tmp_path / "inputs.jsonl"
    input_path.write_text("\n".join(json.dumps({"id": 7, "data": [[5.1, 3.5, 1.4, 0.2]]}) for _ in range(2)) + "\n")
    result = run_cli(["run", str(input_path), "-o", str(tmp_path / "out.jsonl")], api_only.url)
    assert result.returncode == 2 and "appears twice" in result.stderr
    assert redis_client.keys(JOB_KEYS) == []


def test_progress_on_a_pipe_is_plain_periodic_lines(stack, tmp_path):
    input_path = tmp_path / "inputs.jsonl"
    write_jsonl(input_path, iris_rows(PROGRESS_INPUTS))
    args = ["run", str(input_path), "-o", str(tmp_path / "out.jsonl"), "--concurrency", "1", "--progress-interval", "0.2"]
    result = run_cli(args, stack.url)
    assert result.returncode == 0, result.stderr
    lines = PLAIN_LINE.findall(result.stderr)
    assert len(lines) >= 3, result.stderr  # periodic, not only the last one
    assert lines[-1].startswith(f"asyncinfer run: {PROGRESS_INPUTS}/{PROGRESS_INPUTS} (100%) done, 0 failed")
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no terminal control codes in a log


def test_progress_on_a_terminal_is_a_live_bar_with_rate_and_eta(stack, tmp_path):
    input_path = tmp_path / "inputs.jsonl"
    write_jsonl(input_path, iris_rows(PROGRESS_INPUTS))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 140, 0, 0))
    proc = subprocess.Popen(
        [CLI, "run", str(input_path), "-o", str(tmp_path / "out.jsonl"), "--concurrency", "1"],
        env=cli_env(stack.url, TERM="xterm-256color", COLUMNS="140"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its side of the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # colours and cursor moves
    assert "━" in text  # rich's bar
    assert re.search(rf" \d+/{PROGRESS_INPUTS} done, 0 failed, [\d.]+/s ETA \d+:\d\d:\d\d", text), text[-2000:]
    assert f"{PROGRESS_INPUTS}/{PROGRESS_INPUTS} done" in text
    assert screen.count("\x1b[2K") > 3  # redrawn in place (erase line), not printed line after line
    assert not PLAIN_LINE.search(text)
