"""Generate the synchronous client (asyncinfer_client/client.py) from the asyncio one (aio.py) with unasync.

`python client/generate_sync.py` (`make sync-client`) rewrites client.py; tests/client/test_generated_sync.py
fails while client.py is not what aio.py generates. The output is ruff-fixed and formatted, so the generated
file passes `make lint` like the hand-written ones.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parent / "asyncinfer_client"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "client.py"
# names unasync's own rules do not know: the sync twin of each async name the source uses
REPLACEMENTS = {
    "AsyncClient": "Client",  # ours, and httpx.AsyncClient -> httpx.Client
    "AsyncJob": "Job",
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "async_sleep": "sleep",
    "async_transport": "sync_transport",
}
HEADER = "# Generated from aio.py by client/generate_sync.py (unasync): do not edit; edit aio.py and run `make sync-client`.\n"


def ruff(args: list[str], source: str) -> str:
    """`ruff <args>` over the source on stdin, with the project's settings; the fixed source."""
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(command, input=source, capture_output=True, text=True, check=True, cwd=PACKAGE.parent.parent).stdout


def generated() -> str:
    """What client.py must hold: aio.py through unasync, then ruff's import sorting and formatting."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch, "_async", "aio.py")
        source.parent.mkdir()
        source.write_text(SOURCE.read_text())
        rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(source)], rules=[rule])
        text = Path(scratch, "_sync", "aio.py").read_text()
    text = ruff(["check", "--fix-only", "--exit-zero", "--select", "I,F401"], text)
    return HEADER + ruff(["format"], text)


def main() -> int:
    TARGET.write_text(generated())
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
