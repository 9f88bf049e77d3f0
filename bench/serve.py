"""Bench-only API runner: our `api.app:create_app` under uvicorn or granian, with or without the hot path.

    python -m bench.serve --server uvicorn|granian [--no-hotpath]   # PORT and the usual env vars

Used by `bench/run.py` to A/B the ASGI server and the `api/hotpath.py` bypass in the same run, with the
same app, settings and load. Production runs `asyncinfer-api` (api/main.py); nothing here is shipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fastapi import FastAPI

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--no-hotpath", action="store_true")
    args = parser.parse_args()
    if args.no_hotpath:
        os.environ[HOTPATH_ENV] = "0"
    port = int(os.environ.get("PORT", "8000"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.server == "uvicorn":
        import uvicorn

        # the settings api/main.py uses: uvloop + httptools picked by "auto", no access log
        uvicorn.run(build_app(), host="127.0.0.1", port=port, access_log=False, log_level="warning")
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
