"""Running the service on the test Redis Cluster (tests/support/redis_cluster.py): the environment its
processes get, a MODELS_FILE with a sharded and an unsharded model, and where a job's shard lives."""

from __future__ import annotations

from pathlib import Path

import yaml

from jobqueue.shards import tag_of, tag_slot
from tests.conftest import MODEL_PATH, service_env
from tests.support.redis_cluster import RedisClusterHarness

SHARDS = 3
SHARDED, SINGLE = "iris", "solo"  # the same ONNX file under two names: 3 shards and 1


def cluster_env(cluster: RedisClusterHarness, **overrides: object) -> dict[str, str]:
    """What every API, worker and notifier process gets: the Cluster named by one seed node, 3 shards."""
    return service_env(cluster.seed_url, REDIS_CLUSTER="true", QUEUE_SHARDS=SHARDS, **overrides)


def two_models_file(directory: Path, single_path: str = MODEL_PATH) -> Path:
    """MODELS_FILE: `iris` split into 3 shards (the first, the default model) and `solo` in 1."""
    path = directory / "models.yaml"
    models = {SHARDED: {"path": MODEL_PATH, "shards": SHARDS}, SINGLE: {"path": single_path, "shards": 1}}
    path.write_text(yaml.safe_dump(models, sort_keys=False))
    return path


def shard_tag(job_id: str) -> str:
    """The hash tag a job id carries (its shard); fails for an untagged or malformed id."""
    tag = tag_of(job_id)
    assert tag, f"job id {job_id!r} carries no shard tag"
    return tag


def master_of(cluster: RedisClusterHarness, tag: str) -> int:
    """The port of the master serving `tag`'s slot now."""
    return cluster.owner_of_slot(tag_slot(tag))


def job_key(job_id: str, key_prefix: str = "asyncinfer") -> str:
    """A job record's key on the Cluster (jobqueue/keys.py's layout with the id's tag)."""
    return f"{key_prefix}:{{{shard_tag(job_id)}}}:job:{job_id}"
