"""asyncinfer's Redis job protocol, shared by the API, the workers and the notifier."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncinfer")  # the one place it is set: pyproject.toml
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
