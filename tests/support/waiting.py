"""Waiting for a condition with a deadline, the one way every tier does it."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Poll `predicate` until it is truthy; returns how long that took, or fails naming `what`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started
