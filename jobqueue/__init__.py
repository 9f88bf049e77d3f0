"""asyncinfer's Redis job protocol, shared by the API, the workers and the notifier."""

from __future__ import annotations

from functools import cache


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncinfer")  # the one place it is set: pyproject.toml
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


def __getattr__(name: str) -> str:
    """`__version__`, read from the package metadata on first use: a worker never asks for it, and
    reading it (the METADATA file, parsed as an e-mail) cost every worker's cold start."""
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
