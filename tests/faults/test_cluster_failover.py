"""Redis Cluster faults (issue #25) on real processes: three masters with a replica each, the API and
workers on a model split into three shards. A master SIGKILLed under load (its replica takes over, the
killed node restarted as Kubernetes would restart its pod) and a shard's slot moved to another master
under load (the product refuses on ASK/TRYAGAIN and retries, reconnects on MOVED): no acknowledged job
is lost, none gets two results, clients see only 202 or a bounded stretch of 503."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import pytest

from jobqueue.keys import StoreKeys
from jobqueue.protocol import ANONYMOUS
from jobqueue.settings import Settings
from jobqueue.shards import ModelTags, tag_of, tag_slot
from tests.conftest import MODEL_PATH, service_env
from tests.faults.helpers import (
    PREFIX,
    Jobs,
    assert_held_batch_ran_again,
    assert_queue_consistent,
    resume,
    start_paused,
    write_models_file,
)
from tests.faults.load import PAYLOAD, StatePoller, SubmitLoad, serve_under_load
from tests.support.redis_cluster import NODE_TIMEOUT_MS, RedisClusterHarness, hash_tag_in_slot
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
MODEL = "iris"
SHARDS = 3
ACK_TIMEOUT_MS = 500
DEADLINE_S = 3
# How long clients may be refused, generously: a failover (3-5 s at NODE_TIMEOUT_MS), the restarted
# node's full sync before WAIT 1 answers again, the API's deadline, and a loaded 2-core machine.
FAILOVER_503_BUDGET_S = NODE_TIMEOUT_MS / 1000 * 3 + 30
# A slot move's own pauses plus its migrations, the API's deadline and a loaded machine.
RESHARD_503_BUDGET_S = 60
COMPLETION_TIMEOUT_S = 120
# redis-cli reshard's slots: the source's lowest, the first shard's slot the last of them
RESHARDED_SLOTS = 10


def cluster_env(cluster: RedisClusterHarness, **overrides: object) -> dict[str, str]:
    settings: dict[str, object] = {
        "REDIS_CLUSTER": "true",
        "QUEUE_SHARDS": SHARDS,
        "REDIS_MIN_REPLICAS_ACK": 1,
        "REDIS_REPLICA_ACK_TIMEOUT_MS": ACK_TIMEOUT_MS,
        "REDIS_DEADLINE_SECONDS": DEADLINE_S,
    }
    return service_env(cluster.seed_url, **{**settings, **overrides})


def model_tags(cluster: RedisClusterHarness, model: str) -> list[str]:
    """The model's shard tags, in shard order, from the registry the services wrote."""
    registry_key = StoreKeys(PREFIX).shard_registry
    with cluster.node_client(cluster.owner_of_slot(cluster.key_slot(registry_key))) as client:
        registry = client.hgetall(registry_key)
    return [registry[f"{model}/{index}"] for index in range(len(registry)) if f"{model}/{index}" in registry]


def shard_jobs(cluster: RedisClusterHarness, tag: str) -> Jobs:
    """The shard's keys on the master serving its slot now."""
    return Jobs(cluster.node_client(cluster.owner_of_slot(tag_slot(tag))), StoreKeys(PREFIX, tag))


def untagged_keys_owner(cluster: RedisClusterHarness) -> int:
    """The master serving the slot of the untagged replica-ack marker (KEY_PREFIX:replica-ack)."""
    return cluster.owner_of_slot(cluster.key_slot(StoreKeys(PREFIX).replica_ack))


def stored_jobs(cluster: RedisClusterHarness, tag: str) -> list[str]:
    """The ids of every job record shard `tag` holds."""
    store = StoreKeys(PREFIX, tag)
    with cluster.node_client(cluster.owner_of_slot(tag_slot(tag))) as client:
        return [key.removeprefix(store.job("")) for key in client.scan_iter(match=store.job("*"), count=1000)]


def by_shard(job_ids: list[str]) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = defaultdict(list)
    for job_id in job_ids:
        tag = tag_of(job_id)
        assert tag, f"{job_id} names no shard"
        shards[tag].append(job_id)
    return shards


def assert_each_completed_once(cluster: RedisClusterHarness, model: str, acknowledged: list[str]) -> int:
    """Every acknowledged job ends completed with one result in its shard, every shard's queue agrees
    with its records (a second finish of one job would count it twice in the shard's stats) and holds
    nothing; returns how many jobs ran more than once (at-least-once: a claim lost with a master)."""
    assert len(set(acknowledged)) == len(acknowledged), "a job id acknowledged twice"
    run_twice = 0
    for tag, ids in by_shard(acknowledged).items():
        jobs = shard_jobs(cluster, tag)
        wait_until(
            lambda jobs=jobs, ids=ids: all(r.get("status") == "completed" for r in jobs.records(ids)),
            COMPLETION_TIMEOUT_S,
            f"every acknowledged job of shard {tag} to complete",
        )
        records = jobs.records(ids)
        lost = [job_id for job_id, record in zip(ids, records, strict=True) if not record.get("result")]
        assert not lost, f"shard {tag}: acknowledged jobs without a result: {lost[:5]}"
        wait_until(lambda jobs=jobs: not any(jobs.processing_lists(model).values()), 30, f"shard {tag} to hold nothing")
        assert_queue_consistent(jobs, model)
        run_twice += sum(1 for record in records if int(record.get("attempts") or 0) > 1)
    return run_twice


def refused_window(load: SubmitLoad, since: float) -> tuple[int, float]:
    """How many answers were 503 after `since`, and how long after it the last one came."""
    refused = [when - since for when, status, _ in load.answers if status == 503 and when >= since]
    return len(refused), max(refused, default=0.0)


def acknowledged_after(load: SubmitLoad, since: float, tag: str | None = None) -> int:
    return sum(1 for when, status, job_id in load.answers if status == 202 and when > since and tag in (None, tag_of(job_id)))


def start_service(
    cluster: RedisClusterHarness, processes, load_threads: list[SubmitLoad | StatePoller], **env: object
) -> tuple[SubmitLoad, StatePoller, list[str]]:
    """The API, two workers, a submit load on a model in SHARDS shards and a poller reading its jobs;
    returns them once the load has acknowledged jobs in every shard, and the shards' tags. `env`: more
    settings for the services."""
    load, poller = serve_under_load(processes, cluster_env(cluster, **env), load_threads)
    tags = model_tags(cluster, MODEL)
    assert len(tags) == SHARDS, tags
    wait_until(lambda: all(acknowledged_after(load, 0, tag) >= 40 for tag in tags), 60, "submits in every shard")
    return load, poller, tags


def stop_and_check_answers(load: SubmitLoad, poller: StatePoller) -> None:
    """Only 202 or 503 to submits, and no job's shown end changed while the poller read them."""
    load.stop()
    poller.stop()
    counts = load.statuses()
    assert set(counts) <= {202, 503}, f"only 202 or 503 (never a 500 or a hang): {counts}"
    assert not poller.went_backwards(), poller.went_backwards()[:3]
    assert sum(len(views) for views in poller.seen.values()) > 50, "the poller read jobs throughout"


def settle(
    cluster: RedisClusterHarness, load: SubmitLoad, poller: StatePoller, since: float, budget_s: float
) -> tuple[int, float, int, int]:
    """Stop the load and check it: answers, a 503 window within `budget_s` of `since`, every acknowledged
    job completed once. Returns (503 answers, the last one's delay, acknowledged jobs, jobs run twice)."""
    stop_and_check_answers(load, poller)
    refused, last_503_s = refused_window(load, since)
    assert last_503_s < budget_s, f"503s went on {last_503_s:.1f}s after the fault began"
    acknowledged = load.acknowledged()
    return refused, last_503_s, len(acknowledged), assert_each_completed_once(cluster, MODEL, acknowledged)


def test_a_master_killed_under_load_loses_and_doubles_no_acknowledged_job(
    redis_cluster: RedisClusterHarness, processes, load_threads: list[SubmitLoad | StatePoller]
) -> None:
    seed = redis_cluster.live_ports()[0]  # REDIS_URL's node: the services must have learned the others
    load, poller, tags = start_service(redis_cluster, processes, load_threads)
    owners = {tag: redis_cluster.owner_of_slot(tag_slot(tag)) for tag in tags}
    victim_tag = next((tag for tag in tags if owners[tag] == seed), tags[0])
    victim = owners[victim_tag]
    killed_at = time.monotonic()
    promoted = redis_cluster.kill_master(victim)
    failover_s = time.monotonic() - killed_at
    # the pod restarted: the killed node rejoins as the promoted master's replica, so WAIT 1 holds again
    redis_cluster.restart(victim)
    restarted_s = time.monotonic() - killed_at
    wait_until(
        lambda: acknowledged_after(load, killed_at + restarted_s, victim_tag) >= 30,
        60,
        f"submits to shard {victim_tag} on its new master",
    )
    refused, last_503_s, acknowledged, run_twice = settle(redis_cluster, load, poller, killed_at, FAILOVER_503_BUDGET_S)
    print(
        f"\nmaster {victim} (shard {victim_tag}, {'the' if victim == seed else 'not the'} REDIS_URL node) SIGKILLed under load: replica {promoted} took over in"
        f" {failover_s:.1f}s, the killed node back as a replica at {restarted_s:.1f}s; {acknowledged} jobs"
        f" acknowledged, {refused} answers 503, the last {last_503_s:.1f}s after the kill; lost 0,"
        f" run twice {run_twice}, doubled results 0"
    )


@pytest.mark.parametrize("lost", ["claim", "finish"])
def test_a_worker_whose_claim_or_finish_was_lost_with_its_master_sees_the_batch_run_again_with_one_result(
    redis_cluster: RedisClusterHarness, processes, model_dir: Path, tmp_path: Path, loop_speed: float, lost: str
) -> None:
    """The replica stops receiving just before the worker claims its batch (`claim`: the jobs are pending
    again on the promoted replica) or just after the claim reached it (`finish`: the results went to the
    old master only; the promoted replica lists the jobs as held by a worker that is alive and believes
    them done)."""
    tag = "a"  # given, so the test knows the shard's master before any service starts
    models = write_models_file(tmp_path / "models.yaml", {"loop": {"path": str(model_dir / "loop.onnx"), "tags": [tag]}})
    env = cluster_env(redis_cluster, MODELS_FILE=models, MODEL_NAME="loop", MAX_BATCH_SIZE=8)
    master = redis_cluster.owner_of_slot(tag_slot(tag))
    (replica,) = redis_cluster.replicas_of(master)
    jobs = shard_jobs(redis_cluster, tag)
    holder = start_paused(jobs, "loop", lambda: processes.worker(env))
    ids = [jobs.enqueue("loop", [[v]]) for v in (int(loop_speed * 1.5), 3, 5)]
    assert jobs.client.wait(1, 5000) == 1  # the replica holds the jobs, pending, and the model paused
    replica_proc = redis_cluster.servers[replica].proc
    assert replica_proc is not None

    def cut_replica() -> None:
        # From here on nothing the master takes reaches its replica: frozen, its link cut (a frozen
        # replica would still find what was sent in its socket buffer when resumed).
        replica_proc.send_signal(signal.SIGSTOP)
        jobs.client.client_kill_filter(_type="replica")

    try:
        if lost == "claim":
            cut_replica()
        resume(jobs, "loop")
        wait_until(lambda: set(jobs.statuses(ids)) == {"processing"}, 10, "the worker to claim the batch")
        if lost == "finish":
            assert jobs.client.wait(1, 5000) == 1  # the claim reached the replica
            cut_replica()
            wait_until(lambda: set(jobs.statuses(ids)) == {"completed"}, 30, "the worker to record the batch")
        redis_cluster.servers[master].kill()
    finally:
        replica_proc.send_signal(signal.SIGCONT)
    redis_cluster.wait(lambda: redis_cluster.owner_of_slot(tag_slot(tag)) == replica, f"replica {replica} to take over")
    redis_cluster.restart(master)
    survivor = shard_jobs(redis_cluster, tag)
    after_failover = survivor.statuses(ids)
    # A lost claim: pending again on the new master, unless the holder, which followed the failover with
    # its results in hand, has recorded them already (the first result wins). A lost finish: held.
    assert set(after_failover) <= ({"pending", "completed"} if lost == "claim" else {"processing", "completed"}), after_failover
    what = f"the jobs (after the failover: {after_failover}) to run again on the new master"
    records = assert_held_batch_ran_again(survivor, ids, holder, processes, env, what)
    print(f"\n{lost} lost with the master: after the failover {after_failover}, attempts {[r.get('attempts') for r in records]}")


def test_a_shard_moved_to_another_master_under_load_loses_and_doubles_no_job(
    redis_cluster: RedisClusterHarness, processes, load_threads: list[SubmitLoad | StatePoller]
) -> None:
    load, poller, tags = start_service(redis_cluster, processes, load_threads)
    moved_tag = tags[0]
    slot = tag_slot(moved_tag)
    source = redis_cluster.owner_of_slot(slot)
    target = next(port for port, _ in redis_cluster.masters() if port != source)
    started = time.monotonic()
    steps = 0
    for move in redis_cluster.move_slot_steps(slot, target):
        # Pauses while the slot is open, before any key moved and between the first batches: the source
        # answers ASK for keys it lacks (a new job's record, a migrated one), the target TRYAGAIN for a
        # script whose keys are split; later batches run at once.
        if steps < 6:
            time.sleep(1.0 if move.keys_moved == 0 else 0.3)
        steps += 1
    moved_s = time.monotonic() - started
    outcome = settle_moved_shard(redis_cluster, load, poller, tags, target, started, moved_s)
    print(f"\nshard {moved_tag} (slot {slot}) moved {source} -> {target} ({move.keys_moved} keys, {steps} steps) {outcome}")


def test_a_shard_resharded_by_redis_cli_under_load_loses_and_doubles_no_job(
    redis_cluster: RedisClusterHarness, processes, load_threads: list[SubmitLoad | StatePoller], tmp_path: Path
) -> None:
    """`redis-cli --cluster reshard` itself moves a master's lowest slots to another master, the first
    shard's among them, last: the slots before it are empty, so the load meets the slots opening and
    closing as an operator's reshard makes them before its own shard moves."""
    # neither end of the move serves the untagged keys (the replica-ack marker's slot among them): what
    # the API sends to the target behind ASKING must keep to the moving slot
    third = untagged_keys_owner(redis_cluster)
    source, target = (port for port, _ in redis_cluster.masters() if port != third)
    resharded = redis_cluster.lowest_slots(source, RESHARDED_SLOTS)
    others = [redis_cluster.lowest_slots(port, 1)[0] for port in (target, third)]  # a shard on each other master
    tags = [hash_tag_in_slot(slot) for slot in (resharded[-1], *others)]
    models = write_models_file(tmp_path / "models.yaml", {MODEL: {"path": MODEL_PATH, "tags": tags}})
    load, poller, registered = start_service(redis_cluster, processes, load_threads, MODELS_FILE=models)
    assert registered == tags
    moved_tag = tags[0]
    started = time.monotonic()
    moved = redis_cluster.reshard_with_cli(source, target, len(resharded))
    moved_s = time.monotonic() - started
    assert moved == resharded, f"redis-cli moved {moved}, not the source's lowest slots {resharded}"
    outcome = settle_moved_shard(redis_cluster, load, poller, tags, target, started, moved_s)
    print(
        f"\nredis-cli --cluster reshard moved slots {moved} of {source} (shard {moved_tag}'s the last) to {target}"
        f" ({redis_cluster.cli_keys_moved[-1]} keys) {outcome}"
    )


def settle_moved_shard(
    cluster: RedisClusterHarness,
    load: SubmitLoad,
    poller: StatePoller,
    tags: list[str],
    target: int,
    started: float,
    moved_s: float,
) -> str:
    """After the first shard's slot moved to `target` (from `started`, in `moved_s`): submits to it are
    acknowledged there, then `settle` (RESHARD_503_BUDGET_S), its slot is still on `target`, and no
    refused submit left a job behind (a move refuses only commands that ran nothing) unless its 503 said
    it may have; returns the figures to print."""
    tag = tags[0]
    wait_until(lambda: acknowledged_after(load, started + moved_s, tag) >= 30, 60, f"submits to shard {tag} on {target}")
    refused, last_503_s, acknowledged, run_twice = settle(cluster, load, poller, started, RESHARD_503_BUDGET_S)
    assert cluster.owner_of_slot(tag_slot(tag)) == target
    stored = {job_id for shard in tags for job_id in stored_jobs(cluster, shard)}
    refused_but_stored = stored - set(load.acknowledged())
    # only a 503 that says the write may stand ("not acknowledged": its replicas were not confirmed, as
    # the README says) may have left a job behind
    may_stand = sum(1 for _, status, detail in load.answers if status == 503 and "not acknowledged" in str(detail))
    assert len(refused_but_stored) <= may_stand, (
        f"{len(refused_but_stored)} jobs stored for submits answered 503 (a client's retry makes another):"
        f" {sorted(refused_but_stored)[:3]}; the 503s said {[d for _, status, d in load.answers if status == 503][:3]}"
    )
    return (
        f"under load in {moved_s:.1f}s; {acknowledged} jobs acknowledged, {refused} answers 503, the last"
        f" {last_503_s:.1f}s after the move began; lost 0, run twice {run_twice}, doubled results 0"
    )


def key_for_shard(tags: list[str], tag: str) -> str:
    """An anonymous client's Idempotency-Key whose submits go to shard `tag` (as api/state.py chooses)."""
    shards = ModelTags(Settings(redis_cluster=True), {MODEL: tuple(tags)}, {MODEL: len(tags)})
    while True:
        key = str(uuid.uuid4())
        if tag_of(shards.new_job_id(MODEL, affinity=f"{ANONYMOUS}\n{key}")) == tag:
            return key


@pytest.mark.parametrize("request_kind", ["submit", "read", "read-ended"])
def test_a_request_refused_with_ask_mid_move_is_retried_and_answered_once_the_move_ends(
    redis_cluster: RedisClusterHarness, processes, request_kind: str
) -> None:
    """A request refused with ASK while its slot moves (a new job's keys the source lacks, from the moment
    the slot is open; a job's record migrated already) ran nothing: the API follows the ASK to the node
    named or tries again within REDIS_DEADLINE_SECONDS (README, "Redis Cluster"), so a move that ends
    well within the deadline costs the request time, not a 503. A keyed submit cannot go to another
    shard: it stays on the moving one. `read-ended`: the job has ended, so the read followed to the
    target also waits for the target's replicas (REDIS_MIN_REPLICAS_ACK) before showing its end."""
    deadline_s = 10  # generous: the move below stays open for 0.5 s
    env = cluster_env(redis_cluster, REDIS_DEADLINE_SECONDS=deadline_s)
    _, base = processes.api(env)
    tags = model_tags(redis_cluster, MODEL)
    moved_tag = tags[0]
    slot = tag_slot(moved_tag)
    source = redis_cluster.owner_of_slot(slot)
    # a target that serves none of the untagged keys (the replica-ack marker's slot among them): what
    # the API sends there behind ASKING must keep to the moving slot
    target = next(port for port, _ in redis_cluster.masters() if port not in (source, untagged_keys_owner(redis_cluster)))
    answers: list[tuple[int, str, float]] = []
    with httpx.Client(base_url=base, timeout=deadline_s * 3) as http:
        # no worker (but for read-ended, below): the job stays pending, its record in the moved slot
        existing = http.post("/predict", content=PAYLOAD, headers={"Idempotency-Key": key_for_shard(tags, moved_tag)})
        assert existing.status_code == 202, existing.text
        existing_id = existing.json()["job_id"]
        if request_kind == "read-ended":
            processes.worker(env)
            jobs = shard_jobs(redis_cluster, moved_tag)
            wait_until(lambda: jobs.statuses([existing_id]) == ["completed"], 30, "the worker to complete the job")

        def send() -> None:
            started = time.monotonic()
            if request_kind == "submit":
                response = http.post("/predict", content=PAYLOAD, headers={"Idempotency-Key": key_for_shard(tags, moved_tag)})
            else:
                response = http.get(f"/job/{existing_id}")
            answers.append((response.status_code, response.text, time.monotonic() - started))

        steps = redis_cluster.move_slot_steps(slot, target, keys_per_batch=1000)
        next(steps)  # the slot is open: the source answers ASK for keys it lacks (a new job's)
        if request_kind != "submit":
            next(steps)  # every key of the slot migrated: ASK for the existing job's record too
        requester = threading.Thread(target=send)
        requester.start()
        time.sleep(0.5)
        for _ in steps:  # the rest of the move, then SETSLOT NODE everywhere
            pass
        requester.join(deadline_s * 3)
    ((status, text, took_s),) = answers
    assert status in (200, 202), (
        f"a {request_kind} refused with ASK while slot {slot} moved was answered {status} after {took_s:.2f}s instead"
        f" of being retried until the move ended (within REDIS_DEADLINE_SECONDS={deadline_s}): {text}"
    )
    view = orjson.loads(text)
    assert view["status"] == ("completed" if request_kind == "read-ended" else "pending"), view
    job_id = view["job_id"]
    assert tag_of(job_id) == moved_tag
    assert shard_jobs(redis_cluster, moved_tag).record(job_id), "the job is on the slot's new master"
