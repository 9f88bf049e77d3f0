"""Settings come from the environment with one name and one default each; keys are built in one place."""

import pytest
from pydantic import ValidationError

from jobqueue.keys import QueueKeys
from jobqueue.protocol import epoch_ms_to_iso
from jobqueue.settings import Settings
from jobqueue.states import JobStatus


def test_defaults_match_the_documented_table():
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.queue_name == "asyncinfer:queue"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.worker_ttl_seconds + s.recovery_interval_seconds <= 30  # recovery bound


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("QUEUE_NAME", "q1")
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("MAX_BATCH_WAIT_MS", "1.5")
    s = Settings()
    assert (s.queue_name, s.max_batch_size, s.max_batch_wait_ms) == ("q1", 7, 1.5)


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()


def test_request_ttl_cannot_outlive_the_record():
    with pytest.raises(ValidationError, match="REQUEST_TTL_SECONDS"):
        Settings(job_ttl_seconds=10, request_ttl_seconds=20)


def test_every_key_shares_the_queue_prefix():
    keys = QueueKeys("{tenant}:queue")
    assert keys.pending == "{tenant}:queue"
    derived = [keys.inflight, keys.workers, keys.dead, keys.events, keys.stats, keys.recovery_lock,
               keys.job("j"), keys.processing("w"), keys.idempotency("k")]
    assert all(key.startswith("{tenant}:queue:") for key in derived)
    assert len(set(derived)) == len(derived)


def test_terminal_states():
    assert {s for s in JobStatus if s.terminal} == {"completed", "failed", "canceled", "expired"}


def test_iso_timestamps():
    assert epoch_ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert epoch_ms_to_iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert epoch_ms_to_iso(None) is None
