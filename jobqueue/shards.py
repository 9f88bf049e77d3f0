"""Where each model's keys live: one standalone Redis, or a hash tag per model on a Redis Cluster.

Standalone, every model shares one untagged `StoreKeys` (the layout from before Cluster support) and a
job id is a uuid4. On a Cluster (REDIS_CLUSTER) a Lua script may only touch keys of one slot, so each
model's queue, its jobs' records and everything its scripts touch carry the model's hash tag:
`StoreKeys(KEY_PREFIX, tag)`. A job id is then "<uuid4>.<tag>", so any process finds a job's keys, and
the node serving them, from the id alone.

A model's queue may be split into shards (QUEUE_SHARDS, a model's `shards:`), each its own tag: jobs go
to the shards in turn (an idempotency key always to the same one), a worker goes round all of them.
Each tag is chosen once, from the slot map, so that shards spread over the masters: the master serving
the fewest tags gets the next shard, whose tag is the first short name (base 36 of 0, 1, 2, ...) whose
slot that master serves and no other tag uses. The choice is recorded in `KEY_PREFIX:shards` (field
"<model>/<shard>") with HSETNX: the first process to choose wins, every other process and every restart
reads it, whatever the slot map does later (a resharding moves a tag's slot with all its keys).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.crc import key_slot

from jobqueue.keys import StoreKeys
from jobqueue.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio

    from jobqueue.models import ModelConfig

SLOTS = 16384
TAG_PATTERN = re.compile(r"^[0-9a-z]{1,8}$")
JOB_TAG_SEPARATOR = "."  # never in a uuid4's text


def tag_slot(tag: str) -> int:
    return key_slot(f"{{{tag}}}".encode())


def new_job_id(tag: str) -> str:
    return f"{uuid.uuid4()}{JOB_TAG_SEPARATOR}{tag}" if tag else str(uuid.uuid4())


def tag_of(job_id: str) -> str | None:
    """The tag a job id carries ("" for an untagged id), None when what follows the separator is no tag
    this service makes (the job cannot exist)."""
    _, separator, tag = job_id.rpartition(JOB_TAG_SEPARATOR)
    if not separator:
        return ""
    return tag if TAG_PATTERN.match(tag) else None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        n, r = divmod(n, 36)
        text = digits[r] + text
        if not n:
            return text


def choose_tag(cluster_slots: Sequence[Any], taken: Iterable[str]) -> str:
    """A tag for one more model: on the master (from a CLUSTER SLOTS reply) serving the fewest of the
    `taken` tags, in a slot no taken tag uses."""
    masters: list[list[tuple[int, int]]] = []
    addresses: list[tuple[str, int]] = []
    for start, end, master, *_ in cluster_slots:
        address = (str(master[0]), int(master[1]))
        if address not in addresses:
            addresses.append(address)
            masters.append([])
        masters[addresses.index(address)].append((int(start), int(end)))
    used = {tag_slot(tag) for tag in taken}

    def serves(ranges: list[tuple[int, int]], slot: int) -> bool:
        return any(start <= slot <= end for start, end in ranges)

    load = [sum(1 for slot in used if serves(ranges, slot)) for ranges in masters]
    target = masters[load.index(min(load))]
    n = 0
    while True:  # about masters-count tries per hit; 16384 slots are never all taken by models
        tag = _base36(n)
        slot = tag_slot(tag)
        if slot not in used and serves(target, slot):
            return tag
        n += 1


class ModelTags:
    """Each model's shards as tags ("" for the one shard of every model on a standalone Redis).

    A model has every shard the registry lists for it (`tags`); new jobs go to the first `shards` of
    them (its configuration): a shard dropped from the configuration still has workers draining it."""

    def __init__(
        self, settings: Settings, tags: dict[str, tuple[str, ...]] | None = None, shards: dict[str, int] | None = None
    ) -> None:
        self.root = settings.key_prefix
        self.cluster = settings.redis_cluster
        self.tags = dict(tags or {})
        self.shards = dict(shards or {})
        self._turn = 0

    def all(self) -> list[str]:
        """The distinct tags of the models known here (standalone: the one untagged "")."""
        return sorted({tag for tags in self.tags.values() for tag in tags}) if self.cluster else [""]

    @property
    def loaded(self) -> bool:
        return not self.cluster or bool(self.tags)

    def _tags(self, model: str) -> tuple[str, ...]:
        if not self.cluster:
            return ("",)
        try:
            return self.tags[model]
        except KeyError:  # an outage (503), not a fault: the registry answers once the Cluster does
            raise redis.ConnectionError(f"model {model}'s hash tags are not read from the Cluster yet") from None

    def model_keys(self, model: str) -> list[StoreKeys]:
        """Every shard of `model`, as keys."""
        return [StoreKeys(self.root, tag) for tag in self._tags(model)]

    def job_keys(self, job_id: str) -> StoreKeys | None:
        """The keys of a job from its id; None when the id cannot name a job here."""
        if not self.cluster:
            return StoreKeys(self.root)
        tag = tag_of(job_id)
        return StoreKeys(self.root, tag) if tag else None

    def submit_shards(self, model: str) -> int:
        """How many of `model`'s shards take new jobs."""
        return min(self.shards.get(model, 1), len(self._tags(model)))

    def new_job_id(self, model: str, affinity: str | None = None) -> str:
        """An id for a new job of `model` naming the shard it goes to: the one `affinity` hashes to (an
        idempotency key: a repeat finds its first job), else the next in turn."""
        tags = self._tags(model)[: self.submit_shards(model)]
        if affinity is not None:
            index = int.from_bytes(hashlib.blake2b(affinity.encode(), digest_size=8).digest(), "big") % len(tags)
        else:
            self._turn += 1
            index = self._turn % len(tags)
        return new_job_id(tags[index])

    def other_shard_id(self, job_id: str, model: str, tried: int) -> str | None:
        """A new id for a job refused by its shard's share of a limit, in the `tried`-th next shard; None
        once every shard that takes new jobs has been tried."""
        tags = self._tags(model)[: self.submit_shards(model)]
        tag = tag_of(job_id)
        if tried >= len(tags) or tag not in tags:
            return None
        return new_job_id(tags[(tags.index(tag) + 1) % len(tags)])


def _registered(registry: dict[str, str], model: str) -> list[str]:
    """`model`'s tags in the registry (fields "<model>/<shard>"), in shard order, up to the first gap."""
    tags: list[str] = []
    while f"{model}/{len(tags)}" in registry:
        tags.append(registry[f"{model}/{len(tags)}"])
    return tags


class TagConflict(ValueError):
    """The registry holds other tags for a model than its configuration gives (`tags:`)."""


def _pending_choices(
    registry: dict[str, str], models: Sequence[ModelConfig], cluster_slots: Sequence[Any] | None
) -> dict[str, str]:
    """Registry fields to add for models with fewer shards registered than configured: the tags the
    configuration gives, or new ones spread as `choose_tag` says."""
    chosen: dict[str, str] = {}
    for model in models:
        for index in range(len(_registered(registry, model.name)), model.shards):
            if model.tags:
                chosen[f"{model.name}/{index}"] = model.tags[index]
            else:
                assert cluster_slots is not None
                chosen[f"{model.name}/{index}"] = choose_tag(cluster_slots, [*registry.values(), *chosen.values()])
    return chosen


def _missing(registry: dict[str, str], models: Sequence[ModelConfig]) -> bool:
    return any(len(_registered(registry, model.name)) < model.shards for model in models)


def _tags(settings: Settings, registry: dict[str, str], models: Sequence[ModelConfig]) -> ModelTags:
    for model in models:
        registered = tuple(_registered(registry, model.name))
        if model.tags and registered[: len(model.tags)] != model.tags:
            raise TagConflict(
                f"model {model.name}: tags {list(model.tags)} configured, {list(registered)} registered in "
                f"{StoreKeys(settings.key_prefix).shard_registry} (jobs may wait under the registered ones: "
                "configure those, or drain them and delete the registry's fields)"
            )
    return ModelTags(settings, {m.name: tuple(_registered(registry, m.name)) for m in models}, {m.name: m.shards for m in models})


def _needs_slot_map(registry: dict[str, str], models: Sequence[ModelConfig]) -> bool:
    return any(not m.tags and len(_registered(registry, m.name)) < m.shards for m in models)


def load_tags(settings: Settings, client: redis.Redis, models: Sequence[ModelConfig]) -> ModelTags:
    """Every model's tags, choosing and recording the missing ones (`client`: the registry's node).
    TagConflict when the registry holds other tags than a model's configuration gives."""
    if not settings.redis_cluster:
        return ModelTags(settings)
    registry_key = StoreKeys(settings.key_prefix).shard_registry
    registry = {_text(k): _text(v) for k, v in client.hgetall(registry_key).items()}
    if _missing(registry, models):
        slots = client.execute_command("CLUSTER", "SLOTS") if _needs_slot_map(registry, models) else None  # type: ignore[no-untyped-call]
        for field, tag in _pending_choices(registry, models, slots).items():
            client.hsetnx(registry_key, field, tag)  # another process's choice, made first, stands
        registry = {_text(k): _text(v) for k, v in client.hgetall(registry_key).items()}
    return _tags(settings, registry, models)


async def load_tags_async(settings: Settings, client: redis.asyncio.Redis, models: Sequence[ModelConfig]) -> ModelTags:
    """`load_tags` for the API."""
    if not settings.redis_cluster:
        return ModelTags(settings)
    registry_key = StoreKeys(settings.key_prefix).shard_registry
    registry = {_text(k): _text(v) for k, v in (await client.hgetall(registry_key)).items()}
    if _missing(registry, models):
        needs_map = _needs_slot_map(registry, models)
        slots = await client.execute_command("CLUSTER", "SLOTS") if needs_map else None  # type: ignore[no-untyped-call]
        for field, tag in _pending_choices(registry, models, slots).items():
            await client.hsetnx(registry_key, field, tag)
        registry = {_text(k): _text(v) for k, v in (await client.hgetall(registry_key)).items()}
    return _tags(settings, registry, models)


def registered_tags(registry: dict[Any, Any]) -> list[str]:
    """Every tag in a registry read whole (HGETALL): the notifier serves every model's outboxes."""
    return sorted({_text(tag) for tag in registry.values()})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the chart's table of tags ---------------------------------------------------------------------


def even_split(masters: int) -> list[tuple[int, int]]:
    """The slot ranges `redis-cli --cluster create` gives `masters` masters (its own arithmetic)."""
    per_master = SLOTS / masters
    ranges, first, cursor = [], 0, 0.0
    for index in range(masters):
        last = math.floor(cursor + per_master - 1 + 0.5)  # C's lround, for positive numbers
        if last > SLOTS or index == masters - 1:
            last = SLOTS - 1
        last = max(last, first)
        ranges.append((first, last))
        first, cursor = last + 1, cursor + per_master
    return ranges


def chart_tag_table(max_masters: int = 16, per_master: int = 64) -> dict[str, list[list[str]]]:
    """For a Cluster the chart creates (1..max_masters masters, slots split as `even_split`): per master,
    the first `per_master` tags whose slot it serves, as `choose_tag` would pick them. Helm cannot
    compute a slot; the chart hands each model's shards tags from this table, spread over the masters,
    and names them in its KEDA triggers and MODELS_FILE."""
    table: dict[str, list[list[str]]] = {}
    for masters in range(1, max_masters + 1):
        columns: list[list[str]] = [[] for _ in range(masters)]
        used: set[int] = set()
        n = 0
        while any(len(column) < per_master for column in columns):
            tag = _base36(n)
            slot = tag_slot(tag)
            n += 1
            if slot in used:
                continue
            for column, (start, end) in zip(columns, even_split(masters), strict=True):
                if start <= slot <= end and len(column) < per_master:
                    column.append(tag)
                    used.add(slot)
        table[str(masters)] = columns
    return table


if __name__ == "__main__":  # `make docs`: python -m jobqueue.shards > deploy/helm/asyncinfer/files/cluster-tags.json
    import json

    print(json.dumps(chart_tag_table(), separators=(",", ":")))
