"""`asyncinfer run`: every input line of a file becomes one job; results go to a JSONL journal as they arrive.
The inputs go through `AsyncClient.map` (bulk submits, lookups in bulk) in bulk requests sized by the inputs' bytes,
so a file runs at least as fast as `map`.

Resumable: the journal names the inputs already done, and each input's idempotency key is derived from the
input file's absolute path and the input's id (`run-<sha256(path)[:16]>-<id>`), so an input that was submitted
before an interruption but not yet written is found again (the service replays its job) instead of queued twice.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import signal
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from asyncinfer_client.aio import AsyncClient
from asyncinfer_client.errors import APIError, AsyncInferError
from asyncinfer_client.progress import Progress
from asyncinfer_client.views import Outcome

KEY_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")  # ids that can stand in a key as they are
RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per line
# refusals about the input itself (malformed, too big, does not fit the model): journaled as `rejected`
INPUT_REJECTED_STATUSES = frozenset({400, 413, 422})
# bulk requests in flight: twice `map`'s default, as a file of inputs is all there is to do (~20% faster here)
RUN_CONCURRENCY = 8
# inputs per bulk request, at most (the service takes up to MAX_BULK_ITEMS, 1000 by default): with a file no caller
# waits on the first results, and fewer, larger requests than map's 100 cost less per input (measured here: about a
# quarter less client CPU at 250; at 500 and 1000 the API and Redis spent more than the client saved)
RUN_MAX_CHUNK = 250
# a bulk request's body, at most: a quarter of the service's default MAX_BODY_BYTES (1 MiB), room for data that
# grows when sent (a CSV cell `1` goes as `1.0`), so a file of large inputs goes in smaller requests, not a 413
RUN_BODY_BUDGET_BYTES = 256 * 1024
ITEM_OVERHEAD_BYTES = 160  # an item's JSON around its data: `{"data": ..., "idempotency_key": "run-<16>-<id>"}`
TICK_S = 0.25  # how often the journal is flushed and the progress display may draw without a finished input


class InputError(ValueError):
    """The input file cannot be read as JSONL or CSV; the message names the line."""


@dataclass(frozen=True)
class InputItem:
    """One input: its id (from the line's `id` field or the CSV `id` column, else its line number) and data."""

    id: Any
    data: Any
    size: int = 0  # bytes of its line in the file: about what its data adds to a bulk request

    @property
    def key(self) -> str:
        """The id as the journal and the idempotency key see it."""
        return str(self.id)


def read_inputs(path: Path) -> list[InputItem]:
    """Every input of a JSONL or CSV file (by extension, else by the first line's shape); ids must be unique."""
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as handle:
        if suffix == ".csv" or (suffix not in {".jsonl", ".ndjson", ".json"} and not _looks_like_json(handle)):
            items = list(_read_csv(handle))
        else:
            items = list(_read_jsonl(handle))
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            raise InputError(f"{path}: id {item.id!r} appears twice; ids name results and must be unique")
        seen.add(item.key)
    return items


def _looks_like_json(handle: IO[str]) -> bool:
    for line in handle:
        if line.strip():
            handle.seek(0)
            return line.lstrip()[0] in "[{"
    handle.seek(0)
    return True


def _read_jsonl(handle: IO[str]) -> Iterator[InputItem]:
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {line_number}: not JSON ({exc.msg})") from None
        if isinstance(value, dict):
            if "data" not in value:
                raise InputError(f"line {line_number}: an object needs a `data` field")
            yield InputItem(value.get("id", line_number), value["data"], len(line))
        elif isinstance(value, list):
            # a bare row is one input row; a list of rows is already a job's data
            yield InputItem(line_number, value if value and isinstance(value[0], list) else [value], len(line))
        else:
            raise InputError(f'line {line_number}: expected {{"data": ...}} or a row like [5.1, 3.5, 1.4, 0.2]')


def _number(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell.strip()  # left for the service to refuse with a 422 that names the field


def _is_numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(handle: IO[str]) -> Iterator[InputItem]:
    reader = csv.reader(handle)
    id_column: int | None = None
    first = True
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            if not all(_is_numeric(cell) for cell in row):  # a header: names, not numbers
                names = [cell.strip().lower() for cell in row]
                id_column = names.index("id") if "id" in names else None
                continue
        line_number = reader.line_num
        if id_column is not None:
            item_id: Any = row[id_column].strip() if id_column < len(row) else line_number
            features = [cell for index, cell in enumerate(row) if index != id_column]
        else:
            item_id, features = line_number, row
        yield InputItem(item_id, [[_number(cell) for cell in features]], sum(map(len, row)) + len(row))


def chunk_size_for(items: list[InputItem]) -> int:
    """Inputs per bulk request: as many of the largest input as fit RUN_BODY_BUDGET_BYTES, at most RUN_MAX_CHUNK."""
    largest = max((item.size for item in items), default=0) + ITEM_OVERHEAD_BYTES
    return max(1, min(RUN_MAX_CHUNK, RUN_BODY_BUDGET_BYTES // largest))


def run_key_prefix(input_path: Path) -> str:
    """Idempotency keys of one input file: the same file (by absolute path) gets the same keys on every run."""
    return "run-" + hashlib.sha256(str(input_path.resolve()).encode()).hexdigest()[:16]


def idempotency_key(prefix: str, item: InputItem) -> str:
    """`<prefix>-<id>`; an id that is long or has other characters is hashed (keys are at most 200 chars)."""
    if KEY_SAFE_ID.match(item.key):
        return f"{prefix}-{item.key}"
    return f"{prefix}-h{hashlib.sha256(item.key.encode()).hexdigest()[:32]}"


class Journal:
    """The OUTPUT file: one JSON line per finished input, flushed every TICK_S, read back to resume.

    A crash loses at most the lines of the last TICK_S: those inputs run again on resume, and their idempotency
    keys hand back the jobs already made, so nothing is computed twice (a flush per line cost a syscall per input).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self._handle: IO[str] | None = None

    def open(self) -> Journal:
        """Read what an earlier run wrote, drop a torn last line (a crash mid-write), then append."""
        if self.path.exists():
            raw = self.path.read_bytes()
            keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
            if len(keep) != len(raw):
                with self.path.open("r+b") as handle:
                    handle.truncate(len(keep))
            for line_number, line in enumerate(keep.decode("utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self.done.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, TypeError, KeyError):
                    raise InputError(f"{self.path} line {line_number} is no result line: is OUTPUT the right file?") from None
        self._handle = self.path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None, "open() first"
        self._handle.write(RECORD_ENCODER.encode(record) + "\n")
        self.done.add(str(record["id"]))

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class RunSummary:
    """How a run ended."""

    total: int = 0
    skipped: int = 0  # already in the output from an earlier run
    completed: int = 0
    failed: int = 0
    replayed: int = 0  # submitted by an earlier run; the service handed back that job instead of a new one
    interrupted: bool = False
    fatal: AsyncInferError | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.completed - self.failed

    def line(self, output: Path) -> str:
        text = f"{self.completed} completed, {self.failed} failed, {self.skipped} already done ({self.total} inputs) -> {output}"
        if self.replayed:
            text += f"; {self.replayed} found already submitted"
        if self.interrupted or self.fatal:
            text += f"; {self.remaining} left: run the same command again to resume"
        return text


@dataclass(frozen=True)
class RunOptions:
    model: str | None = None
    priority: str | None = None
    concurrency: int = RUN_CONCURRENCY
    job_timeout_s: float | None = None  # None: wait for each job as long as it takes


def journal_record(item: InputItem, outcome: Outcome) -> dict[str, Any]:
    """The OUTPUT line of one finished input: its result, or its status and error."""
    record: dict[str, Any] = {"id": item.id, "job_id": outcome.job_id, "status": outcome.status}
    if outcome.ok:
        record["result"] = outcome.result
    else:
        view_error = outcome.view.error if outcome.view is not None else None
        record["error"] = str(view_error or outcome.error)
    return record


async def run_inputs(
    client: AsyncClient, items: list[InputItem], input_path: Path, journal: Journal, progress: Progress, options: RunOptions
) -> RunSummary:
    """Run every input not yet in the journal with `client.map` (bulk submits of `chunk_size_for` inputs, lookups in
    bulk) and journal each result as it arrives. SIGINT/SIGTERM stop it cleanly: what was written stays, the rest resumes later."""
    summary = RunSummary(total=len(items))
    todo = [item for item in items if item.key not in journal.done]
    summary.skipped = len(items) - len(todo)
    prefix = run_key_prefix(input_path)

    async def journal_outcomes() -> None:
        outcomes = cast(
            AsyncGenerator[Outcome, None],
            client.map(  # an async generator: closed when the run stops
                [item.data for item in todo],
                options.model,
                options.priority,
                concurrency=options.concurrency,
                chunk_size=chunk_size_for(todo),
                ordered=False,
                timeout=options.job_timeout_s,
                idempotency_keys=[idempotency_key(prefix, item) for item in todo],
            ),
        )
        async with aclosing(outcomes):
            async for outcome in outcomes:
                refusal = outcome.error if outcome.status == "rejected" else None
                if isinstance(refusal, APIError) and refusal.status not in INPUT_REJECTED_STATUSES:
                    # not about this input (queue full after every retry): the others would fare the same, and
                    # nothing is journaled, so a re-run tries them again
                    raise refusal
                record = journal_record(todo[outcome.index], outcome)
                journal.write(record)
                summary.replayed += outcome.replayed
                if outcome.ok:
                    summary.completed += 1
                else:
                    summary.failed += 1
                    summary.failures.append(f"{record['id']}: {record['error']}")
                progress.advance(not outcome.ok)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            journal.flush()
            progress.tick()

    loop = asyncio.get_running_loop()
    main = asyncio.create_task(journal_outcomes())
    tick_task = asyncio.create_task(ticker())

    def interrupt() -> None:
        summary.interrupted = True
        main.cancel()  # in-flight submits are found again on resume by their idempotency keys

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    progress.start(len(items), summary.skipped)
    try:
        await main
    except asyncio.CancelledError:
        if not summary.interrupted:
            raise
    except AsyncInferError as exc:  # unreachable service, bad token, an outage: every other input would fail too
        summary.fatal = exc
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        tick_task.cancel()
        progress.close()
    return summary


def resolve_input(path: str) -> Path:
    """The input path as keys see it: absolute, symlinks resolved (the same file gets the same keys)."""
    return Path(os.path.realpath(path))
