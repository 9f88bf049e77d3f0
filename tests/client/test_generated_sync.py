"""The sync client is generated from the asyncio one: client.py must be exactly what aio.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"


def test_client_py_is_what_aio_py_generates():
    spec = importlib.util.spec_from_file_location("generate_sync", CLIENT_DIR / "generate_sync.py")
    assert spec is not None and spec.loader is not None
    generate_sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_sync)
    expected = generate_sync.generated()
    assert "async def" not in expected and "await " not in expected
    assert generate_sync.TARGET.read_text() == expected, "client.py is stale: edit aio.py, then run `make sync-client`"
