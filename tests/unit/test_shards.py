"""jobqueue/shards.py: job ids carrying their shard's tag, tags spread over a Cluster's masters, the
slot split `redis-cli --cluster create` makes (and the chart's table built on it), the registry's
conflicts with a configuration, and each shard's share of a limit."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from jobqueue.keys import StoreKeys
from jobqueue.models import ModelConfig
from jobqueue.protocol import Limits
from jobqueue.settings import Settings
from jobqueue.shards import (
    SLOTS,
    TAG_PATTERN,
    ModelTags,
    TagConflict,
    chart_tag_table,
    choose_tag,
    even_split,
    load_tags,
    new_job_id,
    tag_of,
    tag_slot,
)

CLUSTER = Settings(redis_cluster=True)


def slots_reply(ranges: list[tuple[int, int]], port0: int = 7000) -> list[list[Any]]:
    """A CLUSTER SLOTS reply: one master per range (ports port0, port0+1, ...), each with a replica."""
    return [
        [start, end, ["127.0.0.1", port0 + i, "id"], ["127.0.0.1", port0 + 100 + i, "rid"]]
        for i, (start, end) in enumerate(ranges)
    ]


def master_index(ranges: list[tuple[int, int]], tag: str) -> int:
    slot = tag_slot(tag)
    return next(i for i, (start, end) in enumerate(ranges) if start <= slot <= end)


# -- job ids ----------------------------------------------------------------------------------------


def test_a_job_id_carries_its_tag_and_an_untagged_one_is_a_plain_uuid4() -> None:
    tagged = new_job_id("k3")
    head, _, tag = tagged.rpartition(".")
    assert tag == "k3" and uuid.UUID(head).version == 4 and tag_of(tagged) == "k3"
    plain = new_job_id("")
    assert uuid.UUID(plain).version == 4 and str(uuid.UUID(plain)) == plain and tag_of(plain) == ""
    assert new_job_id("k3") != tagged


@pytest.mark.parametrize("job_id", ["x.UPPER", "x.", "x.toolong12", "x.a-b", "x.{a}"])
def test_what_follows_the_separator_must_be_a_tag_this_service_makes(job_id: str) -> None:
    assert tag_of(job_id) is None


def test_a_tags_slot_is_the_slot_of_every_key_carrying_it() -> None:
    for tag in ("0", "z", "k3", "abcdefgh"):
        keys = StoreKeys("asyncinfer", tag)
        assert {key_slot(k.encode()) for k in (keys.job("x"), keys.model("iris").pending(), keys.notify)} == {tag_slot(tag)}


# -- choosing tags ---------------------------------------------------------------------------------


def test_choose_tag_spreads_tags_evenly_over_the_masters_in_unused_slots() -> None:
    ranges = even_split(3)
    taken: list[str] = []
    for _ in range(3 * 5):
        taken.append(choose_tag(slots_reply(ranges), taken))
    assert all(TAG_PATTERN.match(tag) for tag in taken)
    assert len({tag_slot(tag) for tag in taken}) == len(taken)  # no two tags share a slot
    assert Counter(master_index(ranges, tag) for tag in taken) == {0: 5, 1: 5, 2: 5}
    # the least loaded master gets the next one; the first (lowest) master of equals
    assert [master_index(ranges, tag) for tag in taken[:3]] == [0, 1, 2]


def test_choose_tag_fills_the_master_with_the_fewest_tags_first() -> None:
    ranges = even_split(3)
    on_first = [tag for tag in (str(n) for n in range(200)) if master_index(ranges, tag) == 0][:4]
    on_second = [tag for tag in (str(n) for n in range(200)) if master_index(ranges, tag) == 1][:2]
    chosen = choose_tag(slots_reply(ranges), [*on_first, *on_second])
    assert master_index(ranges, chosen) == 2
    # a master serving several ranges (after a resharding) counts once, with the tags of all of them
    reply = slots_reply([(0, 100), (5461, 10922), (101, 5460), (10923, 16383)])
    reply[2][2] = reply[0][2]  # 101-5460: the same master as 0-100
    in_range = [tag for tag in (str(n) for n in range(300)) if 101 <= tag_slot(tag) <= 5460][:1]
    second = [tag for tag in (str(n) for n in range(300)) if 5461 <= tag_slot(tag) <= 10922][:1]
    assert tag_slot(choose_tag(reply, [*in_range, *second])) >= 10923  # not 0-100: its master has a tag


def test_choose_tag_skips_slots_that_taken_tags_use() -> None:
    whole = [(0, SLOTS - 1)]
    first = choose_tag(slots_reply(whole), [])
    assert first == "0"
    second = choose_tag(slots_reply(whole), [first])
    assert second != first and tag_slot(second) != tag_slot(first)


# -- the slot split and the chart's table -----------------------------------------------------------


def test_even_split_covers_every_slot_in_near_equal_contiguous_ranges() -> None:
    assert even_split(1) == [(0, SLOTS - 1)]
    assert even_split(3) == [(0, 5460), (5461, 10922), (10923, 16383)]  # redis-cli's well-known split
    for masters in range(1, 17):
        ranges = even_split(masters)
        assert len(ranges) == masters and ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), ranges
        sizes = [end - start + 1 for start, end in ranges]
        assert max(sizes) - min(sizes) <= 1, (masters, sizes)


def test_chart_tag_table_gives_each_master_its_own_slots_as_choose_tag_would() -> None:
    table = chart_tag_table(max_masters=6, per_master=8)
    assert list(table) == [str(m) for m in range(1, 7)]
    for masters, columns in table.items():
        ranges = even_split(int(masters))
        assert len(columns) == int(masters) and all(len(column) == 8 for column in columns)
        tags = [tag for column in columns for tag in column]
        assert len({tag_slot(tag) for tag in tags}) == len(tags)  # every tag its own slot
        for index, column in enumerate(columns):
            assert all(master_index(ranges, tag) == index for tag in column), (masters, index, column)
        # choose_tag on the same slot map, one model after another, picks row by row
        taken: list[str] = []
        for _ in range(len(tags)):
            taken.append(choose_tag(slots_reply(ranges), taken))
        assert taken == [column[row] for row in range(8) for column in columns], masters


# -- a model's shards ------------------------------------------------------------------------------


def test_model_tags_go_round_the_shards_and_a_key_always_to_the_same_one() -> None:
    tags = ModelTags(CLUSTER, {"iris": ("a", "b", "c", "d")}, {"iris": 3})  # "d": dropped from the configuration
    assert tags.submit_shards("iris") == 3 and [k.tag for k in tags.model_keys("iris")] == ["a", "b", "c", "d"]
    turns = [tag_of(tags.new_job_id("iris")) for _ in range(9)]
    assert Counter(turns) == {"a": 3, "b": 3, "c": 3}
    assert len({tag_of(tags.new_job_id("iris", affinity="key-1")) for _ in range(5)}) == 1
    assert {tag_of(tags.new_job_id("iris", affinity=f"key-{n}")) for n in range(40)} == {"a", "b", "c"}
    # a refused submit moves on to the next shard, until every shard taking new jobs was tried
    job_id = new_job_id("c")
    assert tag_of(tags.other_shard_id(job_id, "iris", 1) or "") == "a"
    assert tags.other_shard_id(job_id, "iris", 3) is None
    assert tags.job_keys(job_id) == StoreKeys("asyncinfer", "c") and tags.job_keys("x.UPPER") is None
    with pytest.raises(redis.ConnectionError):
        tags.model_keys("unknown")
    standalone = ModelTags(Settings())
    assert standalone.all() == [""] and tag_of(standalone.new_job_id("iris")) == ""
    assert standalone.job_keys(new_job_id("")) == StoreKeys("asyncinfer")


def test_the_registry_is_read_and_a_configuration_naming_other_tags_is_refused(redis_client: redis.Redis) -> None:
    registry = StoreKeys(CLUSTER.key_prefix).shard_registry
    configured = ModelConfig("iris", "iris.onnx", shards=2, tags=("p", "q"))
    loaded = load_tags(CLUSTER, redis_client, [configured])  # configured tags: no slot map needed
    assert loaded.tags == {"iris": ("p", "q")} and redis_client.hgetall(registry) == {"iris/0": "p", "iris/1": "q"}
    # the first writer wins: a second process configured alike reads the same; one configured otherwise is refused
    assert load_tags(CLUSTER, redis_client, [configured]).tags == {"iris": ("p", "q")}
    with pytest.raises(TagConflict, match=r"model iris: tags \['p', 'r'\] configured, \['p', 'q'\] registered"):
        load_tags(CLUSTER, redis_client, [ModelConfig("iris", "iris.onnx", shards=2, tags=("p", "r"))])
    # fewer shards configured than registered: every registered shard is still drained
    fewer = load_tags(CLUSTER, redis_client, [ModelConfig("iris", "iris.onnx", shards=1)])
    assert fewer.tags == {"iris": ("p", "q")} and fewer.submit_shards("iris") == 1


# -- limits per shard ------------------------------------------------------------------------------


def test_each_shard_holds_its_share_of_a_limit_rounded_up() -> None:
    settings = Settings(max_queue_length=10, rate_limit_per_second=3, rate_limit_burst=7, max_pending_per_principal=1)
    assert Limits.share(settings, 1) == Limits(10, 3, 7, 1)
    assert Limits.share(settings, 3) == Limits(4, 1.0, 3, 1)  # 10/3 -> 4, 7/3 -> 3, 1/3 -> 1 (never 0)
    assert Limits.share(settings, 4) == Limits(3, 0.75, 2, 1)
    unlimited = Settings(max_queue_length=0, max_pending_per_principal=0)
    shared = Limits.share(unlimited, 3)
    assert (shared.max_queue_length, shared.rate_per_second, shared.max_unfinished) == (0, 0, 0)  # 0 stays unlimited
    for shards in range(1, 9):  # the overshoot over a limit is at most shards - 1
        share = Limits.share(settings, shards)
        assert 10 <= share.max_queue_length * shards <= 10 + shards - 1
        assert 7 <= share.burst * shards <= 7 + shards - 1
