"""Fixtures of the object-store suite: one real SeaweedFS (S3 with enforced credentials) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.seaweed import SeaweedServer


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def store_up(seaweed: SeaweedServer) -> SeaweedServer:
    """The store, running (a test that stopped it is followed by a start)."""
    if seaweed.proc is None:
        seaweed.start()
    return seaweed
