"""Settings come from the environment with one name and one default each; keys are built in one place."""

import pytest
from pydantic import ValidationError

from jobqueue.keys import StoreKeys
from jobqueue.protocol import epoch_ms_to_iso
from jobqueue.settings import Settings
from jobqueue.states import JobStatus


def test_defaults_match_the_documented_table():
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.key_prefix == "asyncinfer"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.worker_ttl_seconds + s.recovery_interval_seconds <= 30  # recovery bound


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("KEY_PREFIX", "q1")
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("MAX_BATCH_WAIT_MS", "1.5")
    s = Settings()
    assert (s.key_prefix, s.max_batch_size, s.max_batch_wait_ms) == ("q1", 7, 1.5)


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()


def test_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ValidationError, match="METRICS_PORT"):
        Settings(port=8000, metrics_port=8000)
    with pytest.raises(ValidationError, match="RECOVERY_INTERVAL_SECONDS"):
        Settings(worker_ttl_seconds=1, recovery_interval_seconds=60)
    with pytest.raises(ValidationError, match="model name"):
        Settings(model_name="Not_A_Label")
    with pytest.raises(ValidationError, match="REDIS_REPLICA_ACK_TIMEOUT_MS"):
        Settings(redis_deadline_seconds=1, redis_replica_ack_timeout_ms=1000)
    with pytest.raises(ValidationError, match="REDIS_CLUSTER and REDIS_SENTINELS exclude each other"):
        Settings(redis_cluster=True, redis_sentinels="127.0.0.1:26379")
    with pytest.raises(ValidationError, match="QUEUE_SHARDS > 1 needs REDIS_CLUSTER"):
        Settings(queue_shards=2)
    with pytest.raises(ValidationError, match="KEY_PREFIX must not hold a hash tag"):
        Settings(redis_cluster=True, key_prefix="{tenant}")


def test_every_key_shares_the_prefix_and_model_keys_are_apart():
    store = StoreKeys("{tenant}")
    iris, other = store.model("iris"), store.model("other")
    derived = [store.job("j"), store.idempotency("alice", "k"), store.events, store.notify, store.notify_failed,
               store.principal("alice"), *iris.pending_all, iris.inflight, iris.workers, iris.dead, iris.stats,
               iris.recovery_lock, iris.paused, iris.processing("w"), store.replica_ack]  # fmt: skip
    assert all(key.startswith("{tenant}:") for key in derived)
    assert len(set(derived)) == len(derived)
    assert iris.pending("high") == "{tenant}:iris:pending:high"
    assert not set(iris.pending_all) & set(other.pending_all)
    assert store.idempotency("alice", "k") != store.idempotency("bob", "k")


def test_a_shards_keys_share_its_hash_tag_and_the_events_channel_stays_untagged():
    """On a Cluster every key one script touches must hash to one slot: the shard's tag is the only {...}
    in them. The events channel is not a key (Cluster delivers a PUBLISH to every node)."""
    store = StoreKeys("asyncinfer", "k3")
    iris = store.model("iris")
    derived = [store.job("j"), store.idempotency("alice", "k"), store.notify, store.notify_failed, store.principal("alice"),
               store.objects, store.replica_ack, *iris.pending_all, iris.inflight, iris.workers, iris.dead, iris.stats,
               iris.recovery_lock, iris.paused, iris.processing("w")]  # fmt: skip
    assert all(key.startswith("asyncinfer:{k3}:") for key in derived), derived
    assert store.job_prefix + "j" == store.job("j") and store.principal_prefix + "a" == store.principal("a")
    assert store.events == StoreKeys("asyncinfer").events == "asyncinfer:events"
    assert store.shard_registry == "asyncinfer:shards"
    assert StoreKeys("asyncinfer").job("j") == "asyncinfer:job:j"  # standalone: the layout from before


def test_terminal_states():
    assert {s for s in JobStatus if s.terminal} == {"completed", "failed", "canceled", "expired"}


def test_iso_timestamps():
    assert epoch_ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert epoch_ms_to_iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert epoch_ms_to_iso(None) is None


def test_scripts_take_every_key_from_keys_py():
    """No Lua script spells a key layout itself: keys and key prefixes arrive in KEYS/ARGV from
    jobqueue/keys.py, so one module decides the layout."""
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[2] / "jobqueue" / "scripts"
    for script in scripts.glob("*.lua"):
        text = script.read_text()
        for spelled in ("'job:'", "':job:'", "'processing:'", "'pending:'", "'idem:'", "'principal:'", "asyncinfer:"):
            assert spelled not in text, f"{script.name} spells {spelled}"
