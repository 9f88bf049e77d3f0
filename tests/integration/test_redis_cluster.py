"""Sharded queues on a real Redis Cluster (3 masters, 1 replica each) with real API and worker processes:
submits spread over every master, one worker drains every shard of its model without starving one,
priorities hold within and across shards, idempotency keys find their job, and per-principal limits
hold across shards within the README's bound (issue #25)."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobqueue.protocol import ANONYMOUS
from jobqueue.settings import Settings
from jobqueue.shards import ModelTags, even_split, tag_of, tag_slot
from tests.conftest import Processes
from tests.integration.test_client_paths import bearer, setosa_result, tokens_env, wait_all_done
from tests.support.cluster_stack import SHARDED, SHARDS, SINGLE, cluster_env, master_of, shard_tag, two_models_file
from tests.support.redis_cluster import RedisClusterHarness
from tests.support.samples import ROW
from tests.support.waiting import wait_until
from worker.loop import SHARD_TURN_BATCHES, first_shard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REGISTRY = "asyncinfer:shards"


def submit_many(http: httpx.Client, count: int, priority: str = "normal", path: str = "/predict/batch") -> list[str]:
    answer = http.post(path, json={"items": [{"data": [ROW], "priority": priority}] * count})
    assert answer.status_code == 200, answer.text
    ids = [item["job_id"] for item in answer.json()["items"]]
    assert len(ids) == count, answer.text
    return ids


def by_shard(job_ids: list[str]) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = {}
    for job_id in job_ids:
        shards.setdefault(shard_tag(job_id), []).append(job_id)
    return shards


def finish_order(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Views in the order their jobs finished (ISO times in ms sort as text)."""
    assert all(v["status"] == "completed" for v in views), Counter(v["status"] for v in views)
    return sorted(views, key=lambda v: v["finished_at"])


def test_submits_spread_over_every_master_and_one_worker_drains_them(
    processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    env = cluster_env(redis_cluster, MODELS_FILE=two_models_file(tmp_path))
    _, url = processes.api(env)
    processes.worker({**env, "MODEL_NAME": SHARDED})
    processes.worker({**env, "MODEL_NAME": SINGLE})
    with httpx.Client(base_url=url, timeout=60) as http:
        singles = [http.post("/predict", json={"data": [ROW]}).json()["job_id"] for _ in range(SHARDS * 4)]
        bulk = submit_many(http, SHARDS * 10)
        solo = submit_many(http, 6, path=f"/models/{SINGLE}/predict/batch")
        views = wait_all_done(http, [*singles, *bulk, *solo])
    for view in views:
        setosa_result(view)

    # in turn: each of the model's shards takes the same number of submits, single or bulk
    for ids in (singles, bulk):
        assert sorted(Counter(shard_tag(i) for i in ids).values()) == [len(ids) // SHARDS] * SHARDS, ids
    tags = set(by_shard(singles))
    assert len(tags) == SHARDS and set(by_shard(bulk)) == tags
    masters = {master_of(redis_cluster, tag) for tag in tags}
    assert masters == {port for port, _ in redis_cluster.masters()}, (tags, masters)
    # the unsharded model has one tag of its own, never one of the sharded model's
    assert len(set(by_shard(solo))) == 1 and not set(by_shard(solo)) & tags

    # the choice is recorded once, in shard order, and every process reads the same
    with redis_cluster.cluster_client() as client:
        registry = client.hgetall(REGISTRY)
    assert {registry[f"{SHARDED}/{i}"] for i in range(SHARDS)} == tags and registry[f"{SINGLE}/0"] == shard_tag(solo[0])
    assert set(registry) == {*(f"{SHARDED}/{i}" for i in range(SHARDS)), f"{SINGLE}/0"}

    # one worker per model drained all of its model's shards
    with httpx.Client(base_url=url, timeout=30) as http:
        overview = {m["name"]: m for m in http.get("/admin/overview").json()["models"]}
        workers = {name: {w["id"] for w in model["workers"]} for name, model in overview.items()}
        assert all(len(ids) == 1 for ids in workers.values()), workers
        held_by = {http.get(f"/admin/jobs/{job_id}").json()["worker"] for job_id in [*singles, *bulk]}
    assert held_by == workers[SHARDED], held_by
    assert overview[SHARDED]["stats"]["completed"] == len(singles) + len(bulk)


def drain_order(processes: Processes, cluster: RedisClusterHarness, per_shard: int, batch: int) -> list[str]:
    """The shard of each job of a backlog of `per_shard` jobs on every shard, in the order one worker
    (MAX_BATCH_SIZE=`batch`, started once all wait) finished them."""
    env = cluster_env(cluster, MAX_BATCH_SIZE=batch)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=60) as http:
        ids = submit_many(http, per_shard * SHARDS)  # no worker yet: a backlog on every shard
        assert sorted(len(v) for v in by_shard(ids).values()) == [per_shard] * SHARDS
        processes.worker(env)
        return [shard_tag(v["job_id"]) for v in finish_order(wait_all_done(http, ids, timeout_s=180))]


def runs_of(order: list[str]) -> list[tuple[str, int]]:
    return [(tag, len(list(group))) for tag, group in itertools.groupby(order)]


def test_a_backlog_on_every_shard_drains_interleaved(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    per_shard = 60
    order = drain_order(processes, redis_cluster, per_shard, batch=4)
    # One shard then the next would finish the first third from one shard alone. A turn is a few
    # batches of 4: the first third (60 jobs) spans several turns, so every shard is in it, and so
    # in every third.
    thirds = [Counter(order[i * per_shard : (i + 1) * per_shard]) for i in range(SHARDS)]
    for third in thirds:
        assert len(third) == SHARDS and min(third.values()) >= per_shard // 10, thirds
    assert len(runs_of(order)) >= 2 * SHARDS, runs_of(order)


def test_a_shard_turn_is_at_most_4_batches_under_backlog(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    """README: "it works on one shard for up to 4 batches (a turn), then moves to" another."""
    batch = 4
    runs = runs_of(drain_order(processes, redis_cluster, per_shard=40, batch=batch))
    longest = max(length for _, length in runs)
    assert longest <= SHARD_TURN_BATCHES * batch, (
        f"a shard ran {longest} jobs in a row in batches of {batch}: more than {SHARD_TURN_BATCHES} batches "
        f"per turn (worker/loop.py: the batch claimed ahead while the turn's last one runs is one more): {runs}"
    )


def test_high_priority_behind_a_low_backlog_on_every_shard_finishes_first(
    processes: Processes, redis_cluster: RedisClusterHarness
) -> None:
    low_per_shard, high_per_shard = 60, 5
    env = cluster_env(redis_cluster, MAX_BATCH_SIZE=4)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=60) as http:
        low = submit_many(http, low_per_shard * SHARDS, priority="low")
        high = submit_many(http, high_per_shard * SHARDS, priority="high")  # behind the whole low backlog
        assert sorted(len(v) for v in by_shard(high).values()) == [high_per_shard] * SHARDS
        processes.worker(env)
        views = finish_order(wait_all_done(http, [*low, *high], timeout_s=180))
    finished = {v["job_id"]: v["finished_at"] for v in views}
    # across shards: the last high job ends while most of the low backlog still waits
    last_high = max(finished[i] for i in high)
    low_before = sum(1 for i in low if finished[i] < last_high)
    assert low_before <= len(low) // 3, (low_before, len(low))
    # within each shard: its high jobs end before the median of its low ones
    for tag, shard_high in by_shard(high).items():
        shard_low = by_shard(low)[tag]
        assert max(finished[i] for i in shard_high) < statistics.median_low(finished[i] for i in shard_low), tag


def keys_to_shard(tags: tuple[str, ...], index: int, count: int, principal: str = ANONYMOUS) -> list[str]:
    """`count` idempotency keys that send `principal`'s job to the `index`-th of a model's shards
    `tags` (the API hashes "<principal>\\n<key>": api/state.py)."""
    model = ModelTags(Settings(redis_cluster=True), {SHARDED: tags}, {SHARDED: len(tags)})
    keys = (f"key-{n}" for n in itertools.count())
    lands = (k for k in keys if tag_of(model.new_job_id(SHARDED, affinity=f"{principal}\n{k}")) == tags[index])
    return list(itertools.islice(lands, count))


def sharded_workers(http: httpx.Client) -> list[dict[str, Any]]:
    models = http.get("/admin/overview").json()["models"]
    workers: list[dict[str, Any]] = next(m for m in models if m["name"] == SHARDED)["workers"]
    return workers


def registered_tags(cluster: RedisClusterHarness) -> tuple[str, ...]:
    """The sharded model's tags in shard order (the order its workers go round them)."""
    with cluster.cluster_client() as client:
        registry = client.hgetall(REGISTRY)
    return tuple(registry[f"{SHARDED}/{i}"] for i in range(SHARDS))


def test_high_priority_on_one_shard_is_reached_at_the_end_of_the_current_turn(
    processes: Processes, redis_cluster: RedisClusterHarness
) -> None:
    """A worker leaves a shard with only low jobs for the one with high jobs waiting, not the next in
    turn: high jobs on the last shard, behind a low backlog on every shard, wait one turn, not two."""
    low_per_shard, high_count, batch = 60, 8, 4
    env = cluster_env(redis_cluster, MAX_BATCH_SIZE=batch)
    _, url = processes.api(env)
    tags = registered_tags(redis_cluster)
    with httpx.Client(base_url=url, timeout=60) as http:
        # the worker starts paused, so the shard it starts on (worker.loop.first_shard) is known first
        assert http.post(f"/admin/models/{SHARDED}/pause").status_code == 200
        processes.worker(env)
        wait_until(lambda: sharded_workers(http), 60, "the worker to beat")
        worker_id = sharded_workers(http)[0]["id"]
        start = first_shard(worker_id, SHARDS)
        # high jobs on the shard two turns away: reached after the first turn, not after the middle one's
        high_shard, middle = (start + 2) % SHARDS, tags[(start + 1) % SHARDS]
        low = submit_many(http, low_per_shard * SHARDS, priority="low")
        high = []
        for key in keys_to_shard(tags, high_shard, high_count):
            answer = http.post("/predict", json={"data": [ROW], "priority": "high"}, headers={"Idempotency-Key": key})
            high.append(answer.json()["job_id"])
        assert {shard_tag(i) for i in high} == {tags[high_shard]}
        assert http.post(f"/admin/models/{SHARDED}/resume").status_code == 200
        views = finish_order(wait_all_done(http, [*low, *high], timeout_s=180))
    finished = {v["job_id"]: v["finished_at"] for v in views}
    last_high = max(finished[i] for i in high)
    low_before = Counter(shard_tag(i) for i in low if finished[i] < last_high)
    turn = SHARD_TURN_BATCHES * batch  # the claim ahead included
    # the first shard's turn, then the high shard's claims (their low share); the next in turn would
    # add the middle shard's whole turn
    assert low_before[middle] < turn // 2 and sum(low_before.values()) < turn + turn // 2, (low_before, tags, start)


def test_an_idempotency_key_finds_its_job_on_its_shard(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    env = cluster_env(redis_cluster)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        first: dict[str, str] = {}
        for n in range(30):
            answer = http.post("/predict", json={"data": [ROW]}, headers={"Idempotency-Key": f"key-{n}"})
            assert answer.status_code == 202 and "idempotent-replayed" not in answer.headers, answer.text
            first[f"key-{n}"] = answer.json()["job_id"]
        # keys hash to every shard; each repeat, from any shard's turn, finds the first job
        assert len(set(by_shard(list(first.values())))) == SHARDS
        for key, job_id in first.items():
            again = http.post("/predict", json={"data": [ROW]}, headers={"Idempotency-Key": key})
            assert again.status_code == 202 and again.json()["job_id"] == job_id, (key, again.text)
            assert again.headers["idempotent-replayed"] == "true"

        items = [{"data": [ROW]}] * 9
        bulk = http.post("/predict/batch", json={"items": items}, headers={"Idempotency-Key": "bulk-1"}).json()["items"]
        assert not any(item.get("replayed") for item in bulk) and len(set(by_shard([i["job_id"] for i in bulk]))) > 1
        repeat = http.post("/predict/batch", json={"items": items}, headers={"Idempotency-Key": "bulk-1"}).json()["items"]
        assert [i["job_id"] for i in repeat] == [i["job_id"] for i in bulk]
        assert all(item["replayed"] for item in repeat)
        overview = http.get("/admin/overview").json()["models"][0]
    assert sum(overview["pending"].values()) == len(first) + len(items)  # no repeat stored a job


@dataclass
class Submits:
    """What one principal sent and got back."""

    accepted: list[str] = field(default_factory=list)
    refused: list[httpx.Response] = field(default_factory=list)

    def send(self, http: httpx.Client, principal: str) -> None:
        answer = http.post("/predict", json={"data": [ROW]}, headers=bearer(principal))
        if answer.status_code == 202:
            assert not self.refused, f"{principal} accepted after a refusal"
            self.accepted.append(answer.json()["job_id"])
        else:
            self.refused.append(answer)


@pytest.mark.parametrize(
    ("limits", "limit", "setting"),
    [
        ({"MAX_PENDING_PER_PRINCIPAL": 10}, 10, "MAX_PENDING_PER_PRINCIPAL"),
        ({"RATE_LIMIT_PER_SECOND": 0.001, "RATE_LIMIT_BURST": 7}, 7, "RATE_LIMIT"),
    ],
)
def test_a_principal_limit_holds_across_shards_within_the_bound(
    processes: Processes,
    redis_cluster: RedisClusterHarness,
    tmp_path: Path,
    limits: dict[str, object],
    limit: int,
    setting: str,
) -> None:
    env = tokens_env(tmp_path, redis_cluster.seed_url, REDIS_CLUSTER="true", QUEUE_SHARDS=SHARDS, **limits)
    _, url = processes.api(env)
    share = -(-limit // SHARDS)
    alice, bob = Submits(), Submits()
    with httpx.Client(base_url=url, timeout=30) as http:
        # alice, alice, bob, ...: submits go to the shards in turn, so alice's first tries keep landing
        # on the same two shards; her share there used up, her submits must move on to the third
        while len(alice.refused) < 2:
            alice.send(http, "alice")
            alice.send(http, "alice")
            if len(bob.accepted) + len(bob.refused) < limit - 2:
                bob.send(http, "bob")
        bob.send(http, "bob")  # alice refused everywhere: bob is not
        pending = http.get("/admin/overview", headers=bearer("root")).json()["models"][0]["pending"]
    # README: a principal is refused only once every shard is at its share (1/n rounded up), so the
    # overshoot is at most n - 1
    assert limit <= len(alice.accepted) <= limit + SHARDS - 1, (len(alice.accepted), limit)
    assert sorted(len(v) for v in by_shard(alice.accepted).values()) == [share] * SHARDS, by_shard(alice.accepted)
    assert all(r.status_code == 429 for r in alice.refused), [r.text for r in alice.refused]
    assert setting in alice.refused[0].json()["detail"], alice.refused[0].text
    # another principal has limits of its own on every shard
    assert len(bob.accepted) > SHARDS and not bob.refused, [r.text for r in bob.refused]
    assert sum(pending.values()) == len(alice.accepted) + len(bob.accepted)  # a refusal stored nothing


def test_a_keyed_submit_cannot_move_and_is_refused_at_its_shards_share(
    processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    """README: a keyed submit, which cannot move, can be refused while other shards have room."""
    limit = 10
    env = tokens_env(tmp_path, redis_cluster.seed_url, REDIS_CLUSTER="true", QUEUE_SHARDS=SHARDS, MAX_PENDING_PER_PRINCIPAL=limit)
    _, url = processes.api(env)
    share = -(-limit // SHARDS)
    tags = registered_tags(redis_cluster)
    with httpx.Client(base_url=url, timeout=30) as http:
        codes = []
        for key in keys_to_shard(tags, 0, share + 1, principal="alice"):
            answer = http.post("/predict", json={"data": [ROW]}, headers={**bearer("alice"), "Idempotency-Key": key})
            codes.append(answer.status_code)
            if answer.status_code == 202:
                assert shard_tag(answer.json()["job_id"]) == tags[0]
        assert codes == [202] * share + [429], codes
        unkeyed = http.post("/predict", json={"data": [ROW]}, headers=bearer("alice"))  # moves to a shard with room
        assert unkeyed.status_code == 202 and shard_tag(unkeyed.json()["job_id"]) != tags[0], unkeyed.text


def test_redis_cli_splits_slots_as_even_split_says(redis_cluster: RedisClusterHarness) -> None:
    """The chart's tag table assumes `redis-cli --cluster create`'s split: the harness's cluster was
    made by it."""
    ranges = sorted(slots for _, slots in redis_cluster.masters())
    assert ranges == [[r] for r in even_split(SHARDS)], ranges
    assert all(tag_slot(str(n)) == redis_cluster.key_slot(f"{{{n}}}") for n in range(50))
