"""The `asyncinfer` command: submit and inspect jobs, run a whole file of inputs, operator commands.

Output is JSON on stdout (indented on a terminal, one line otherwise); messages go to stderr.
Exit codes: 0 ok, 1 a job failed or the service refused, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asyncinfer_client import __version__, protocol
from asyncinfer_client.aio import AsyncClient
from asyncinfer_client.client import Client
from asyncinfer_client.errors import AsyncInferError, JobError
from asyncinfer_client.progress import progress_for
from asyncinfer_client.run_file import (
    RUN_CONCURRENCY,
    RUN_MAX_CHUNK,
    InputError,
    Journal,
    RunOptions,
    read_inputs,
    resolve_input,
    run_inputs,
)
from asyncinfer_client.views import JobView

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def print_json(value: Any) -> None:
    """JSON to stdout: indented for a person at a terminal, one line for a pipe (jq, files)."""
    if sys.stdout.isatty():
        print(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"asyncinfer: {message}", file=sys.stderr)
    return code


def parse_data(text: str) -> Any:
    """DATA as JSON: `[[...]]` rows, a bare row `[...]`, `{"data": ...}`, `-` for stdin or `@file`."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text()
    value = json.loads(text)
    if isinstance(value, dict) and "data" in value:
        return value["data"]
    if isinstance(value, list) and value and not isinstance(value[0], list):
        return [value]  # one bare row
    return value


def read_token(args: argparse.Namespace) -> str | None:
    # a token on the command line would show in `ps` and shell history: a file or the environment only
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return protocol.default_token()


def make_client(args: argparse.Namespace) -> Client:
    return Client(args.url, read_token(args), timeout=args.timeout)


def show_view(view: JobView) -> int:
    print_json(view.raw)
    return EXIT_OK if view.status in {"completed", "pending", "processing"} else EXIT_FAILED


# -- commands -----------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.submit(parse_data(args.data), args.model, args.priority, wait=min(args.wait, protocol.MAX_WAIT_S))
        try:
            return show_view(job.wait(args.wait))
        except JobError as exc:
            return show_view(exc.view)


def cmd_submit(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.submit(parse_data(args.data), args.model, args.priority, idempotency_key=args.idempotency_key)
        if args.json:
            print_json({"job_id": job.id, "status": "pending", "model": job.model, "replayed": job.replayed})
        else:
            print(job.id)  # bare, so `asyncinfer status $(asyncinfer submit ...)` works
        return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        return show_view(client.get(args.job_id))


def cmd_wait(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        try:
            return show_view(client.job(args.job_id).wait(args.wait))
        except JobError as exc:
            return show_view(exc.view)


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        print_json(client.cancel(args.job_id).raw)
        return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        print_json(client.retry(args.job_id).raw)
        return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        print_json({"models": client.models()})
        return EXIT_OK


def cmd_metadata(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        print_json(client.metadata(args.model))
        return EXIT_OK


def cmd_dead_letters(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        if args.retry:
            print_json({"retried": client.retry_dead_letters(args.model)})
        else:
            print_json({"items": [view.raw for view in client.dead_letters(args.model, args.limit)]})
        return EXIT_OK


def run_npy(args: argparse.Namespace, input_path: Path, output_path: Path) -> int:
    """A .npy file is one job through the service's object store (POST /uploads): its rows stream through
    the model worker-side; the result (one array per model output) is written to OUTPUT as .npz."""
    import numpy as np

    try:
        array = np.load(input_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return fail(f"cannot read {args.input}: {exc}", EXIT_USAGE)
    with Client(args.url, read_token(args), timeout=args.timeout, upload_above_bytes=0) as client:
        result = client.predict(array, args.model, timeout=args.job_timeout, priority=args.priority)
    if isinstance(result, dict) and all(hasattr(v, "dtype") for v in result.values()):
        with output_path.open("wb") as out:
            np.savez(out, **result)
    else:
        output_path.write_text(json.dumps(result) + "\n")
    print(f"asyncinfer run: {len(array)} rows of {input_path.name} -> {output_path}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    input_path = resolve_input(args.input)
    output_path = Path(args.output)
    if input_path.suffix.lower() == ".npy":
        return run_npy(args, input_path, output_path)
    try:
        items = read_inputs(input_path)
    except (OSError, InputError, UnicodeDecodeError) as exc:
        return fail(f"cannot read {args.input}: {exc}", EXIT_USAGE)
    if output_path.resolve() == input_path:
        return fail("OUTPUT must not be the INPUT file", EXIT_USAGE)
    try:
        journal = Journal(output_path).open()
    except (OSError, InputError, UnicodeDecodeError) as exc:
        return fail(f"cannot resume from {args.output}: {exc}", EXIT_USAGE)
    options = RunOptions(args.model, args.priority, args.concurrency, args.job_timeout)

    async def go() -> Any:
        # one connection per chunk in flight, plus slack for the long polls that outlive an interrupted chunk
        async with AsyncClient(args.url, read_token(args), timeout=args.timeout, max_connections=args.concurrency + 4) as client:
            return await run_inputs(client, items, input_path, journal, progress_for(sys.stderr, args.progress_interval), options)

    try:
        summary = asyncio.run(go())
    finally:
        journal.close()
    if summary.fatal is not None:
        print(f"asyncinfer run: stopped: {summary.fatal}", file=sys.stderr)
    for failure in summary.failures[:5]:
        print(f"asyncinfer run: failed {failure}", file=sys.stderr)
    print(f"asyncinfer run: {'interrupted: ' if summary.interrupted else ''}{summary.line(output_path)}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed or summary.fatal else EXIT_OK


# -- parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncinfer",
        description="Client of an asyncinfer service. ASYNCINFER_URL and ASYNCINFER_TOKEN set the service and token.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--url", default=None, help=f"service URL (default: ${protocol.URL_ENV} or {protocol.DEFAULT_URL})")
    parser.add_argument("--token-file", default=None, help=f"file holding the bearer token (default: ${protocol.TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=protocol.DEFAULT_REQUEST_TIMEOUT_S, help="seconds per HTTP request")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def model_options(sub: argparse.ArgumentParser, priority: bool = True) -> None:
        sub.add_argument("--model", "-m", default=None, help="model name (default: the service's default model)")
        if priority:
            sub.add_argument("--priority", "-p", choices=("high", "normal", "low"), default=None, help="queue priority")

    sub = command("predict", cmd_predict, "submit one job and print it once it ends")
    sub.add_argument("data", metavar="DATA", help="JSON rows like '[[5.1,3.5,1.4,0.2]]', '-' for stdin, @FILE")
    model_options(sub)
    sub.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the job (default 60)")

    sub = command("submit", cmd_submit, "submit one job and print its id without waiting")
    sub.add_argument("data", metavar="DATA", help="JSON rows like '[[5.1,3.5,1.4,0.2]]', '-' for stdin, @FILE")
    model_options(sub)
    sub.add_argument("--idempotency-key", default=None, help="the same key within the job TTL returns the same job")
    sub.add_argument("--json", action="store_true", help="print the job as JSON (id, status, model, replayed), not only its id")

    for name, handler, help_text in (
        ("status", cmd_status, "print a job"),
        ("cancel", cmd_cancel, "cancel a pending job"),
        ("retry", cmd_retry, "queue a failed or expired job again"),
    ):
        command(name, handler, help_text).add_argument("job_id", metavar="ID")
    sub = command("wait", cmd_wait, "wait for a job to end and print it (exit 1 unless it completed)")
    sub.add_argument("job_id", metavar="ID")
    sub.add_argument("--wait", "--timeout-s", dest="wait", type=float, default=None, help="give up after this many seconds")

    command("models", cmd_models, "list the service's models")
    model_options(command("metadata", cmd_metadata, "a model's inputs, outputs, labels and example"), priority=False)

    sub = command(
        "run", cmd_run, "run every input of a JSONL or CSV file (results to JSONL; resumable), or a .npy (one job, result .npz)"
    )
    sub.add_argument(
        "input",
        metavar="INPUT",
        help='JSONL ({"data": ..., "id"?: ...} or a bare row per line), CSV, or .npy (via the object store)',
    )
    sub.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="JSONL results; inputs already in it are skipped")
    sub.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=RUN_CONCURRENCY,
        help=f"bulk requests (of up to {RUN_MAX_CHUNK} inputs) in flight (default {RUN_CONCURRENCY})",
    )
    model_options(sub)
    sub.add_argument("--job-timeout", type=float, default=None, help="give up on one job after this many seconds")
    sub.add_argument(
        "--progress-interval", type=float, default=10.0, help="seconds between progress lines when stderr is no terminal"
    )

    admin = commands.add_parser("admin", help="operator commands (an admin token)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    sub = admin_commands.add_parser("dead-letters", help="list dead-lettered jobs, or queue them again with --retry")
    sub.set_defaults(handler=cmd_dead_letters)
    sub.add_argument("--model", "-m", default=None, help="one model's (default: every model's)")
    sub.add_argument("--limit", type=int, default=None, help="at most this many")
    sub.add_argument("--retry", action="store_true", help="queue them all again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `asyncinfer` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "concurrency", 1) < 1:
        return fail("--concurrency must be at least 1", EXIT_USAGE)
    try:
        return int(args.handler(args))
    except json.JSONDecodeError as exc:
        return fail(f"DATA is not JSON: {exc}", EXIT_USAGE)
    except AsyncInferError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
