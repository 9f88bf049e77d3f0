"""Bench-only API runner: our `api.app:create_app` under uvicorn or granian, with or without the hot path.

    python -m bench.serve --server uvicorn|granian [--no-hotpath]   # PORT and the usual env vars
    python -m bench.serve --floor                                   # the floor: uvicorn, no work at all

Used by `bench/run.py` to A/B the ASGI server and the `api/hotpath.py` bypass in the same run, with the
same app, settings and load. `--floor` serves `floor_app`, which answers the e2e load's two requests
without doing anything (no validation, no Redis): what uvicorn alone costs per request, the part of
the API's CPU no handler can remove. Production runs `asyncinfer-api` (api/main.py); nothing here is shipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

HOTPATH_ENV = "BENCH_HOTPATH"  # "0" drops the hot path (granian imports the factory by name)


def build_app() -> FastAPI:
    """create_app() as shipped, minus the hot path when BENCH_HOTPATH=0 (the same outer layers without it)."""
    from api.app import create_app, outer_layers
    from jobqueue.settings import get_settings

    settings = get_settings()
    app = create_app(settings)
    if os.environ.get(HOTPATH_ENV, "1") == "0":
        app.front = outer_layers(app, settings.max_concurrent_requests, hotpath=False)
    return app


async def floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /predict: 202 pending (200 completed under `Prefer`); GET /job/{id}: 200 completed."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    job_id = scope["path"].rpartition("/")[2] if scope["method"] == "GET" else uuid.uuid4().hex
    waited = any(name == b"prefer" for name, _ in scope["headers"])
    finished = scope["method"] == "GET" or waited
    status = b"completed" if finished else b"pending"
    body = b'{"job_id":"' + job_id.encode() + b'","status":"' + status + b'","result":[1]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200 if finished else 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--no-hotpath", action="store_true")
    parser.add_argument("--floor", action="store_true", help="serve floor_app under uvicorn")
    args = parser.parse_args()
    if args.no_hotpath:
        os.environ[HOTPATH_ENV] = "0"
    port = int(os.environ.get("PORT", "8000"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.server == "uvicorn":
        import uvicorn

        # the settings api/main.py uses: uvloop + httptools picked by "auto", no access log
        app = floor_app if args.floor else build_app()
        uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
        return
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "bench.serve:build_app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        log_level=LogLevels.warning,
    ).serve()


if __name__ == "__main__":
    main()
