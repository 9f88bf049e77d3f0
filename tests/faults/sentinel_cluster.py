"""Three redis-servers (a primary and two replicas, AOF on each) watched by three Sentinels, all started
from the same redis-server binary on loopback, for the failover tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from stack import RedisServer, find_redis_server, free_port, spawn, stop

from tests.support.waiting import wait_until

MASTER = "mymaster"
DOWN_AFTER_MS = 1000  # how long Sentinel waits before it calls the primary down
FAILOVER_TIMEOUT_MS = 3000
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "sentinel" / "redis.conf"
# The shipped config's min-replicas-max-lag (5 s) is longer than the tests' freezes: they lower it so
# that a resumed old primary refuses writes at once.
MIN_REPLICAS_MAX_LAG = "2"


@dataclass
class SentinelCluster:
    root: Path
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[tuple[int, object]] = field(default_factory=list)  # (port, Popen)

    def start(self) -> SentinelCluster:
        ports = [free_port() for _ in range(3)]
        for index, port in enumerate(ports):
            conf = self.root / f"redis-{index}.conf"
            conf.write_text(SHIPPED_CONFIG.read_text())  # a copy: Sentinel rewrites it
            replica_of = ("--replicaof", "127.0.0.1", str(ports[0])) if index else ()
            server = RedisServer(
                self.root / f"redis-{index}",
                port,
                config_file=conf,
                extra_args=(
                    "--min-replicas-max-lag", MIN_REPLICAS_MAX_LAG,
                    "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0",
                    *replica_of,
                ),
            )  # fmt: skip
            self.servers.append(server.start(self.root / f"redis-{index}.log"))
        self.wait(lambda: self.client(0).info("replication")["connected_slaves"] == 2, "replicas to connect")
        for index in range(3):
            port = free_port()
            conf = self.root / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 2\n"
            )
            proc = spawn([find_redis_server(), str(conf), "--sentinel"], dict(os.environ), self.root / f"sentinel-{index}.log")
            self.sentinels.append((port, proc))
        self.wait(self._sentinels_agree, "sentinels to find each other and the replicas")
        return self

    @property
    def sentinel_env(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)

    def client(self, index: int) -> redis.Redis:
        return redis.Redis(port=self.servers[index].port, decode_responses=True, socket_timeout=5)

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[index][0], decode_responses=True, socket_timeout=5)

    def primary_port(self) -> int:
        """The primary as the Sentinels see it now."""
        return int(self.sentinel().sentinel_get_master_addr_by_name(MASTER)[1])

    def index_of(self, port: int) -> int:
        return next(i for i, server in enumerate(self.servers) if server.port == port)

    def primary(self) -> redis.Redis:
        return self.client(self.index_of(self.primary_port()))

    def signal(self, index: int, signum: int) -> None:
        proc = self.servers[index].proc
        assert proc is not None
        proc.send_signal(signum)

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> int:
        """The new primary's port, once every Sentinel names it and it takes writes as a primary."""

        def switched() -> bool:
            ports = {int(self.sentinel(i).sentinel_get_master_addr_by_name(MASTER)[1]) for i in self._live_sentinels()}
            return len(ports) == 1 and old_port not in ports and self.primary().info("replication")["role"] == "master"

        self.wait(switched, "failover", timeout_s)
        return self.primary_port()

    def _live_sentinels(self) -> list[int]:
        return [i for i, (_, proc) in enumerate(self.sentinels) if proc.poll() is None]  # type: ignore[attr-defined]

    def _sentinels_agree(self) -> bool:
        for index in range(3):
            master = self.sentinel(index).sentinel_master(MASTER)
            if int(master["num-slaves"]) != 2 or int(master["num-other-sentinels"]) != 2:
                return False
        return True

    @staticmethod
    def wait(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        """`wait_until`, counting a Redis error (a server down or refusing mid-failover) as "not yet"."""

        def quietly() -> bool:
            try:
                return check()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                return False

        wait_until(quietly, timeout_s, what, poll_s=0.1)

    def stop(self) -> None:
        for server in self.servers:
            if server.proc and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a frozen server ignores SIGTERM
            server.stop()
        for _, proc in self.sentinels:
            stop(proc, 10)  # type: ignore[arg-type]
