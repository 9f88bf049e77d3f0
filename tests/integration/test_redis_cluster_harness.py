"""The Redis Cluster harness (tests/support/redis_cluster.py) on a real cluster: three masters with a
replica each, created by `redis-cli --cluster create`; redis-py's cluster client follows a failover and
a slot moved under it without losing an acknowledged write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.support.redis_cluster import NODE_TIMEOUT_MS, SLOTS, RedisClusterHarness, hash_tag_in_slot, started_cluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
WAIT_TIMEOUT_MS = 2000  # WAIT 1's bound: a replica on loopback acknowledges in milliseconds


@dataclass
class Writer:
    """Writes key `prefix<i>` = i in a thread until stopped, each write through the cluster client;
    with `replicas_ack`, a write counts as acknowledged only once WAIT says that many replicas have it."""

    client: RedisCluster
    prefix: str
    replicas_ack: int = 0
    written: list[str] = field(default_factory=list)  # keys whose SET succeeded, acknowledged or not
    acked: dict[str, str] = field(default_factory=dict)  # key -> value, in write order
    errors: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        assert self.thread is not None
        self.thread.join(30)

    def _run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            key, value = f"{self.prefix}{index}", str(index)
            index += 1
            try:
                self.client.set(key, value)
                self.written.append(key)
                if self.replicas_ack:
                    # the same connection as the SET (one per node): WAIT counts this client's writes
                    node = self.client.get_node_from_key(key)
                    if (
                        self.client.execute_command("WAIT", self.replicas_ack, WAIT_TIMEOUT_MS, target_nodes=node)
                        < self.replicas_ack
                    ):
                        continue
            except redis.RedisError as exc:
                self.errors.append(f"{key}: {exc!r}")
                time.sleep(0.05)
                continue
            self.acked[key] = value
            time.sleep(0.005)

    def wait_for(self, count: Callable[[], int], at_least: int, what: str) -> None:
        wait_until(lambda: count() >= at_least, 30, what)


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterHarness) -> Iterator[RedisCluster]:
    client = redis_cluster.cluster_client(max_connections=1)  # one connection per node (see Writer)
    yield client
    client.close()


def test_three_masters_each_with_a_replica_in_sync(redis_cluster: RedisClusterHarness) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(last - first + 1 for _, ranges in masters for first, last in ranges) == SLOTS
    for port, ranges in masters:
        for first, last in ranges:
            assert redis_cluster.owner_of_slot(first) == redis_cluster.owner_of_slot(last) == port
        (replica,) = redis_cluster.replicas_of(port)
        with redis_cluster.node_client(replica) as client:
            replication = client.info("replication")
        assert (replication["role"], replication["master_port"], replication["master_link_status"]) == ("slave", port, "up")
    assert sorted(redis_cluster.ports) == sorted(
        [port for port, _ in masters] + [r for p, _ in masters for r in redis_cluster.replicas_of(p)]
    )
    for port in redis_cluster.ports:
        with redis_cluster.node_client(port) as client:
            assert client.config_get("cluster-node-timeout")["cluster-node-timeout"] == str(NODE_TIMEOUT_MS)
            assert client.config_get("appendonly")["appendonly"] == "yes"
    startup_nodes = [ClusterNode(*address.split(":")) for address in redis_cluster.node_addresses.split(",")]
    with RedisCluster(startup_nodes=startup_nodes) as client:
        assert sorted(node.port for node in client.get_nodes()) == sorted(redis_cluster.ports)
    print(f"\ncluster created in {redis_cluster.create_seconds:.2f} s")


def test_keys_spread_over_every_master(redis_cluster: RedisClusterHarness, cluster_client: RedisCluster) -> None:
    redis_cluster.reset_commandstats()
    assert set(redis_cluster.per_node_commandstats().values()) == {0}  # its own CLUSTER/INFO calls left out
    keys = [f"spread:{index}" for index in range(300)]
    for key in keys:
        cluster_client.set(key, key)
    sizes = {}
    for port, _ in redis_cluster.masters():
        with redis_cluster.node_client(port) as client:
            sizes[port] = client.dbsize()
    assert sum(sizes.values()) == len(keys)
    assert min(sizes.values()) > len(keys) / 6, sizes  # CRC16 spreads 300 keys near 100 a master
    for key in keys[:20]:
        with redis_cluster.node_client(redis_cluster.owner_of_slot(redis_cluster.key_slot(key))) as client:
            assert client.get(key) == key
    load = redis_cluster.per_node_commandstats()
    assert set(load) == set(sizes) and all(usec > 0 for usec in load.values()), load
    with RedisCluster.from_url(redis_cluster.seed_url, decode_responses=True) as seeded:
        assert seeded.get(keys[0]) == keys[0]


def test_kill_master_keeps_acknowledged_writes(redis_cluster: RedisClusterHarness, cluster_client: RedisCluster) -> None:
    victim = redis_cluster.owner_of_slot(0)
    (its_replica,) = redis_cluster.replicas_of(victim)
    with Writer(cluster_client, "ack:", replicas_ack=1) as writer:
        writer.wait_for(lambda: len(writer.acked), 60, "writes before the kill")
        acked_before = len(writer.acked)
        new_master = redis_cluster.kill_master(victim)
        written_before = len(writer.written)
        served = dict(redis_cluster.masters())[new_master]  # the slots the replica took over

        def on_new_master(keys: list[str]) -> int:
            return sum(1 for key in keys if any(a <= redis_cluster.key_slot(key) <= b for a, b in served))

        # alone, the new master takes writes but WAIT 1 cannot be met: none counts as acknowledged
        writer.wait_for(lambda: on_new_master(writer.written[written_before:]), 5, "writes to the promoted replica")
        redis_cluster.restart(victim)
        writer.wait_for(lambda: on_new_master(list(writer.acked)[acked_before:]), 5, "acknowledged writes to it")
    assert new_master == its_replica
    assert victim not in [port for port, _ in redis_cluster.masters()]
    with redis_cluster.cluster_client() as fresh:
        lost = {key: value for key, value in writer.acked.items() if fresh.get(key) != value}
    assert not lost, f"{len(lost)} acknowledged writes lost: {list(lost)[:5]}"
    assert redis_cluster.replicas_of(new_master) == [victim]
    with redis_cluster.node_client(victim) as client:
        assert client.info("replication")["role"] == "slave"
        some_key = next(key for key in writer.acked if redis_cluster.owner_of_slot(redis_cluster.key_slot(key)) == new_master)
        assert client.execute_command("READONLY") and client.get(some_key) == writer.acked[some_key]  # synced
    print(
        f"\nfailover {redis_cluster.failover_seconds[-1]:.2f} s; {len(writer.acked)} writes acknowledged, "
        f"{len(writer.errors)} refused during it"
    )


def test_move_slot_while_writing_follows_ask_and_moved(redis_cluster: RedisClusterHarness, cluster_client: RedisCluster) -> None:
    slot = redis_cluster.key_slot("{moving}")
    source = redis_cluster.owner_of_slot(slot)
    target = next(port for port, _ in redis_cluster.masters() if port != source)
    old_keys = {f"{{moving}}:old:{index}": str(index) for index in range(25)}
    for key, value in old_keys.items():
        cluster_client.set(key, value)
    with redis_cluster.cluster_client() as live_client, Writer(live_client, "{moving}:live:") as writer:
        steps = redis_cluster.move_slot_steps(slot, target, keys_per_batch=10)
        move = next(steps)  # open: IMPORTING/MIGRATING, no key moved yet
        with redis_cluster.node_client(source) as client, pytest.raises(redis.exceptions.AskError):
            client.get("{moving}:absent")  # the source lacks it: ask the target
        cluster_client.set("{moving}:new", "asked")  # redis-py follows ASK: created on the target
        assert _asking_get(redis_cluster, target, "{moving}:new") == "asked"
        move = next(steps)  # one batch moved: the slot's keys are on both nodes
        assert move.keys_moved == 10
        writer.wait_for(lambda: len(writer.acked), 20, "writes while the slot is half-moved")
        assert {key: cluster_client.get(key) for key in old_keys} == old_keys  # read through ASK
        moved_key = next(key for key in old_keys if _asking_get(redis_cluster, target, key) is not None)
        staying_key = next(key for key in old_keys if _asking_get(redis_cluster, target, key) is None)
        # a multi-key command across the two halves: Redis 6.2's source answers ASK, the target TRYAGAIN
        with redis_cluster.node_client(source) as client, pytest.raises(redis.exceptions.AskError):
            client.mget(moved_key, staying_key)
        with pytest.raises(redis.exceptions.TryAgainError):
            _asking(redis_cluster, target, "MGET", moved_key, staying_key)
        for _ in steps:  # the rest (the same SlotMove, updated), then SETSLOT NODE everywhere
            pass
        written_during_move = len(writer.acked)
        writer.wait_for(lambda: len(writer.acked), written_during_move + 20, "writes after the move")
    assert not writer.errors, writer.errors[:5]
    assert redis_cluster.owner_of_slot(slot) == target and move.keys_moved >= 25
    with redis_cluster.node_client(source) as client:
        assert client.cluster("countkeysinslot", slot) == 0
        with pytest.raises(redis.exceptions.MovedError):
            client.get(moved_key)
    expected = {**old_keys, **writer.acked, "{moving}:new": "asked"}
    with redis_cluster.node_client(target) as client:
        assert client.cluster("countkeysinslot", slot) == len(expected)
        assert dict(zip(expected, client.mget(list(expected)), strict=True)) == expected
    assert {key: cluster_client.get(key) for key in expected} == expected


def test_reshard_with_cli_moves_the_sources_lowest_slots_with_their_keys(
    redis_cluster: RedisClusterHarness, cluster_client: RedisCluster
) -> None:
    source, target = (port for port, _ in redis_cluster.masters()[:2])
    lowest = redis_cluster.lowest_slots(source, 3)
    keys = {f"{{{hash_tag_in_slot(slot)}}}:{index}": str(index) for index, slot in enumerate(lowest * 2)}
    for key, value in keys.items():
        cluster_client.set(key, value)
    assert redis_cluster.reshard_with_cli(source, target, 3) == lowest
    assert redis_cluster.cli_keys_moved[-1] == len(keys)
    assert all(redis_cluster.owner_of_slot(slot) == target for slot in lowest)
    assert redis_cluster.lowest_slots(source, 1)[0] > lowest[-1]
    with redis_cluster.node_client(target) as client:  # there, not by a redirection
        assert {key: client.get(key) for key in keys} == keys


def test_reset_heals_a_killed_master_and_a_half_moved_slot(redis_cluster: RedisClusterHarness) -> None:
    slot = redis_cluster.key_slot("{half}")
    source = redis_cluster.owner_of_slot(slot)
    target = next(port for port, _ in redis_cluster.masters() if port != source)
    with redis_cluster.cluster_client() as client:
        client.set("{half}:key", "x")
    steps = redis_cluster.move_slot_steps(slot, target)
    next(steps)  # left open on purpose
    with pytest.raises(ValueError, match="finish the move"):
        redis_cluster.kill_master(source)  # the cluster would not heal by itself
    killed = next(port for port, _ in redis_cluster.masters() if port not in (source, target))
    redis_cluster.kill_master(killed)
    redis_cluster.reset()
    assert redis_cluster.open_move is None and redis_cluster.owner_of_slot(slot) == target
    assert killed in redis_cluster.live_ports()
    masters = redis_cluster.masters()
    assert len(masters) == 3 and all(len(redis_cluster.replicas_of(port)) == 1 for port, _ in masters)
    with redis_cluster.cluster_client() as client:
        assert client.dbsize() == 0


def test_password_protected_cluster(tmp_path: Path) -> None:
    with started_cluster(tmp_path / "secured", masters=3, replicas_per_master=0, password="s3cret") as secured:
        assert len(secured.masters()) == 3 and all(not secured.replicas_of(port) for port, _ in secured.masters())
        with redis.Redis(port=secured.ports[0]) as anonymous, pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.get("key")
        with RedisCluster.from_url(secured.seed_url, decode_responses=True) as client:
            client.set("{secured}:key", "value")
            slot = secured.key_slot("{secured}:key")
            target = next(port for port, _ in secured.masters() if port != secured.owner_of_slot(slot))
            assert secured.move_slot(slot, target) == 1  # MIGRATE with AUTH
            assert client.get("{secured}:key") == "value"


def _asking(cluster: RedisClusterHarness, port: int, *command: str) -> object:
    """A command to a node importing its keys' slot (ASKING first, on the same connection)."""
    with cluster.node_client(port) as client, client.pipeline(transaction=False) as pipe:
        return pipe.execute_command("ASKING").execute_command(*command).execute()[1]


def _asking_get(cluster: RedisClusterHarness, port: int, key: str) -> object:
    return _asking(cluster, port, "GET", key)
