"""The chart's Redis replication bootstrap (files/redis-replication.sh) run for real: three redis-server
"pods" and three Sentinels on loopback, started by the script with the StatefulSet's own arguments and
environment; the primary is SIGKILLed, the Sentinels fail over, and the old primary, restarted by the
script, comes back as a replica of the new one; then every pod goes down and comes back at once, around
the primary the Sentinels last recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from stack import find_redis_server

from tests.chart.render import CHART, env_of, pod_spec, rendered
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(300)

SCRIPT = CHART / "files" / "redis-replication.sh"
PASSWORD = 'se"cret \\pass'  # a quote, a space and a backslash: the script must escape them for Redis
HOST = "127.0.0.1"
MASTER_SET = "mymaster"  # redis.replication.masterSet's default
# Sentinel's timings shortened for the test; everything else is what the chart renders.
FAST = {"DOWN_AFTER_MS": "1000", "FAILOVER_TIMEOUT_MS": "4000", "DISCOVERY_WAIT_S": "3"}


@dataclass
class Pod:
    """One StatefulSet pod on loopback: its ports, its data directory and its two processes."""

    index: int
    redis_port: int
    sentinel_port: int
    data: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.redis_port, password=PASSWORD, socket_timeout=5)

    def sentinel(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.sentinel_port, password=PASSWORD, socket_timeout=5, decode_responses=True)


def containers() -> dict[str, dict[str, Any]]:
    """The replication StatefulSet's containers, by name, as the chart renders them."""
    sts = rendered("replication").one("StatefulSet")
    return {c["name"]: c for c in pod_spec(sts)["containers"]}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


class ReplicaSet:
    """Three pods started by the chart's script with the chart's arguments and environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.bin_dir = Path(find_redis_server()).parent  # redis-server, and redis-cli beside it
        (tmp_path / "secrets").mkdir()
        self.password_file = tmp_path / "secrets" / "redis-password"
        self.password_file.write_text(PASSWORD + "\n")  # a trailing newline, as `echo` would leave it
        self.pods = [Pod(i, free_port(), free_port(), tmp_path / f"pod-{i}") for i in range(3)]
        for pod in self.pods:
            pod.data.mkdir()
        self.logs = tmp_path / "logs"
        self.logs.mkdir()

    def env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        chart_env = {name: e["value"] for name, e in env_of(container).items() if "value" in e}
        sentinels = " ".join(f"{HOST}:{p.sentinel_port}" for p in self.pods)
        loopback = {
            "SELF_HOST": HOST,
            "REDIS_PORT": str(pod.redis_port),
            "SENTINEL_PORT": str(pod.sentinel_port),
            "PRIMARY_HOST": HOST,
            "PRIMARY_PORT": str(self.pods[0].redis_port),
            "SENTINELS": sentinels,
            "PASSWORD_FILE": str(self.password_file),
            "SENTINEL_CONF": str(pod.data / "sentinel.conf"),
        }
        assert set(loopback) - {"PRIMARY_PORT"} <= set(chart_env) | {"SELF_HOST"}, "the chart sets what the script reads"
        return {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}", **chart_env, **loopback, **FAST}

    def start(self, pod: Pod, name: str) -> None:
        container = containers()[name]
        args = [str(SCRIPT), name]
        if name == "redis":
            chart_args = list(container["args"])
            chart_args[chart_args.index("--port") + 1] = str(pod.redis_port)
            chart_args[chart_args.index("--dir") + 1] = str(pod.data)
            args += [*chart_args, "--bind", HOST]
        with (self.logs / f"{name}-{pod.index}.log").open("ab") as log:  # the child keeps its own descriptor
            pod.procs[name] = subprocess.Popen(
                ["sh", *args],
                env=self.env(pod, container),
                cwd=pod.data,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_pod(self, pod: Pod) -> None:
        self.start(pod, "sentinel")
        self.start(pod, "redis")

    def kill_pod(self, pod: Pod) -> None:
        for proc in pod.procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        pod.procs.clear()

    def stop(self) -> None:
        for pod in self.pods:
            for proc in pod.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.iterdir()))

    def named_primary(self, pod: Pod) -> tuple[str, int] | None:
        answer = pod.sentinel().sentinel_get_master_addr_by_name(MASTER_SET)
        return (answer[0], int(answer[1])) if answer else None


@pytest.fixture
def replica_set(tmp_path: Path) -> Iterator[ReplicaSet]:
    rs = ReplicaSet(tmp_path)
    try:
        yield rs
    finally:
        rs.stop()
        print(rs.log_text())  # pytest shows it when the test failed


def role(pod: Pod) -> dict[str, Any]:
    return pod.client().info("replication")


def test_the_chart_runs_the_script_it_ships() -> None:
    """The script these tests run is the one the StatefulSet mounts and starts, for both containers."""
    r = rendered("replication")
    spec = pod_spec(r.one("StatefulSet"))
    (scripts,) = [v for v in spec["volumes"] if v["name"] == "scripts"]
    (config_map,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"] == scripts["configMap"]["name"]]
    assert config_map["data"]["redis-replication.sh"] == SCRIPT.read_text()
    for name, container in containers().items():
        (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "scripts"]
        assert container["command"] == ["sh", f"{mount}/redis-replication.sh", name]
    assert env_of(containers()["redis"])["MASTER_SET"]["value"] == MASTER_SET


def test_a_killed_primary_fails_over_and_comes_back_as_a_replica(replica_set: ReplicaSet) -> None:
    rs = replica_set
    first, second, third = rs.pods
    for pod in rs.pods:
        rs.start_pod(pod)

    # A new set: no Sentinel knew a primary, so pod-0 is it and the others replicate from it.
    wait_for("pod-0 primary with two replicas", lambda: role(first)["role"] == "master" and role(first)["connected_slaves"] == 2)
    for pod in rs.pods:
        wait_for(f"sentinel {pod.index} naming pod-0", lambda pod=pod: rs.named_primary(pod) == (HOST, first.redis_port))
        # A Sentinel learns the replicas from the primary's INFO (every 10 s): with none known it could
        # promote nothing when the primary dies.
        wait_for(
            f"sentinel {pod.index} knowing its two peers and both replicas",
            lambda pod=pod: (lambda m: (int(m["num-other-sentinels"]), int(m["num-slaves"])) == (2, 2))(
                pod.sentinel().sentinel_master(MASTER_SET)
            ),
        )
    # The chart's readiness probes (redis-cli, AUTH with the escaped password) pass on both containers.
    for name, port in (("redis", second.redis_port), ("sentinel", second.sentinel_port)):
        command = containers()[name]["readinessProbe"]["exec"]["command"]
        assert command[:2] == ["sh", "-c"]
        script = command[2].replace("/etc/asyncinfer/secrets", str(rs.password_file.parent))
        script = script.replace({"redis": "-p 6379", "sentinel": "-p 26379"}[name], f"-p {port}")
        probe = subprocess.run(["sh", "-c", script], env=rs.env(second, containers()[name]), timeout=30, check=False)
        assert probe.returncode == 0, f"the {name} readiness probe fails"
    primary = first.client()
    primary.set("job", "acknowledged")
    assert primary.wait(2, 5000) == 2
    # min-replicas-to-write is set: the primary refuses writes it could not replicate.
    assert primary.config_get("min-replicas-to-write")["min-replicas-to-write"] == "1"

    rs.kill_pod(first)  # the whole pod: its redis-server and its Sentinel
    wait_for(
        "the surviving Sentinels to promote a replica",
        lambda: (
            rs.named_primary(second) in {(HOST, second.redis_port), (HOST, third.redis_port)}
            and rs.named_primary(second) == rs.named_primary(third)
        ),
        timeout_s=90,
    )
    new_primary_addr = rs.named_primary(second)
    (new_primary,) = [p for p in rs.pods if (HOST, p.redis_port) == new_primary_addr]
    wait_for("the promoted replica to be primary", lambda: role(new_primary)["role"] == "master")
    assert new_primary.client().get("job") == b"acknowledged"

    # The old primary restarts: the script must make it a replica of the new primary from its first
    # answer (not wait for Sentinel to demote it), and its Sentinel must monitor the new primary.
    rs.start_pod(first)
    wait_for("the restarted pod to answer", lambda: first.client().ping())
    info = role(first)
    assert info["role"] == "slave", f"the restarted old primary came back as {info['role']}"
    assert (info["master_host"], info["master_port"]) == new_primary_addr
    wait_for("the restarted Sentinel to answer", lambda: rs.named_primary(first) is not None)
    assert rs.named_primary(first) == new_primary_addr
    wait_for("the rejoined replica in sync", lambda: role(first)["master_link_status"] == "up")
    assert first.client().get("job") == b"acknowledged"
    wait_for(
        "both replicas, the old primary among them, following the new primary", lambda: role(new_primary)["connected_slaves"] == 2
    )
    new_primary.client().set("after", "failover")
    assert new_primary.client().wait(2, 4000) == 2
    assert first.client().get("after") == b"failover"
    assert "starting as a replica of" in (rs.logs / "redis-0.log").read_text().split("starting as the primary")[-1]

    # Every pod down at once (a whole-cluster outage), then all back together: no Sentinel can name a
    # primary at first, so each pod falls back on what its Sentinel recorded: the set comes back around
    # the promoted primary with its data, not around pod 0 (whose data may have lagged).
    for pod in rs.pods:
        rs.kill_pod(pod)
    for pod in rs.pods:
        rs.start_pod(pod)
    for pod in rs.pods:
        wait_for(f"pod {pod.index} back", lambda pod=pod: pod.client().ping())
    assert role(new_primary)["role"] == "master"
    for pod in rs.pods:
        if pod is not new_primary:
            assert (role(pod)["master_host"], role(pod)["master_port"]) == new_primary_addr, f"pod {pod.index}"
    assert new_primary.client().get("after") == b"failover"
    wait_for(
        "the Sentinels naming the promoted primary again", lambda: all(rs.named_primary(p) == new_primary_addr for p in rs.pods)
    )

    # A rolling update stops the primary: its preStop hook (the script's `prestop`) hands the role over
    # before redis-server gets SIGTERM, so the Sentinels name another primary at once.
    prestop = containers()["redis"]["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop == ["sh", "/opt/asyncinfer/redis-replication.sh", "prestop"]
    wait_for(
        "the Sentinels knowing both replicas again",
        lambda: int(new_primary.sentinel().sentinel_master(MASTER_SET)["num-slaves"]) == 2,
    )
    wait_for("both replicas in sync", lambda: role(new_primary)["connected_slaves"] == 2)
    started = time.monotonic()
    subprocess.run(["sh", str(SCRIPT), "prestop"], env=rs.env(new_primary, containers()["redis"]), timeout=60, check=True)
    assert time.monotonic() - started < 20, "the hook must end within the pod's grace period"
    handed_to = rs.named_primary(new_primary)  # its own Sentinel, which ran the failover
    assert handed_to is not None and handed_to != new_primary_addr
    wait_for("every Sentinel naming the successor", lambda: all(rs.named_primary(p) == handed_to for p in rs.pods))
    (successor,) = [p for p in rs.pods if (HOST, p.redis_port) == handed_to]
    wait_for("the successor to be primary", lambda: role(successor)["role"] == "master")
    assert successor.client().get("after") == b"failover"
