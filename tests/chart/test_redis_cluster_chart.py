"""redis.architecture=cluster and redis.external.cluster (issue #25, chart): the hash tags the chart gives
each model's shards (from files/cluster-tags.json, which must be what jobqueue.shards prints), the keys
KEDA reads, the StatefulSet and its bootstrap Job; and the bootstrap script run for real against
redis-servers on loopback: it creates the Cluster with the slot split the tag table assumes, once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from stack import RedisServer, find_redis_server

from jobqueue.keys import StoreKeys
from jobqueue.shards import chart_tag_table, even_split, tag_slot
from tests.chart.render import CHART, ROOT, HelmError, env_of, pod_spec, rendered, template
from tests.support.redis_cluster import free_cluster_port

pytestmark = pytest.mark.timeout(300)

TAG_TABLE = CHART / "files" / "cluster-tags.json"
SCRIPT = CHART / "files" / "redis-cluster.sh"
# A percent sign, a backslash and a dollar: printf and the shell must leave them to redis-cli (no quote or
# space: the servers here take it in argv, which Redis 6.2 does not unquote).
PASSWORD = "p%s\\w$rd"
STS = "ci-asyncinfer-redis"
HEADLESS = f"{STS}.asyncinfer-ci.svc.cluster.local"


def models_file(objects: Any) -> dict[str, Any]:
    """The API's MODELS_FILE as the chart renders it."""
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-models")]
    return dict(yaml.safe_load(cm["data"]["models.yaml"]))


def master_of(tag: str, masters: int) -> int:
    """The master serving a tag's slot once `redis-cli --cluster create` split the slots over `masters`."""
    slot = tag_slot(tag)
    return next(i for i, (first, last) in enumerate(even_split(masters)) if first <= slot <= last)


def test_the_tag_table_is_what_the_code_prints() -> None:
    """One source of truth: `make docs` writes the file from jobqueue.shards."""
    printed = subprocess.run(
        [sys.executable, "-m", "jobqueue.shards"], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120
    ).stdout
    assert json.loads(TAG_TABLE.read_text()) == json.loads(printed) == chart_tag_table()


def test_each_models_shards_get_tags_spread_over_the_masters() -> None:
    """Model j's shard i on master (j + i) mod masters: five shards of two models on three masters put
    two, two and one on them, each tag in a slot of its own."""
    r = rendered("cluster")
    models = models_file(r.objects)
    assert {name: m["shards"] for name, m in models.items()} == {"iris": 2, "digits": 3}
    table = chart_tag_table()["3"]
    placed = {name: [master_of(tag, 3) for tag in m["tags"]] for name, m in models.items()}
    assert placed == {"iris": [0, 1], "digits": [1, 2, 0]}
    assert models["iris"]["tags"] == [table[0][0], table[1][0]]
    assert models["digits"]["tags"] == [table[1][1], table[2][0], table[0][1]]  # each master's next unused tag
    every_tag = [tag for m in models.values() for tag in m["tags"]]
    assert len({tag_slot(tag) for tag in every_tag}) == len(every_tag) == 5
    assert sorted(Counter(placed["iris"] + placed["digits"]).values()) == [1, 2, 2]
    # Each worker's own file carries the same shards as the API's.
    cm = r.one("ConfigMap", "models")["data"]
    for name, m in models.items():
        assert yaml.safe_load(cm[f"model-{name}.yaml"])[name]["tags"] == m["tags"]


@pytest.mark.parametrize("masters", [3, 5, 16])
def test_many_shards_fill_every_master_evenly(masters: int) -> None:
    objects = template(
        sets=("redis.architecture=cluster", f"redis.cluster.masters={masters}", f"config.queueShards={2 * masters}")
    )
    tags = models_file(objects)["iris"]["tags"]
    assert Counter(master_of(tag, masters) for tag in tags) == dict.fromkeys(range(masters), 2)


def test_keda_reads_every_shards_lists_as_storekeys_names_them() -> None:
    r = rendered("cluster")
    models = models_file(r.objects)
    so = r.scaled_objects()["digits"]
    triggers = so["spec"]["triggers"]
    assert len(triggers) == 4 * 3 and {t["type"] for t in triggers} == {"redis-cluster"}
    wanted = [
        key
        for tag in models["digits"]["tags"]
        for keys in [StoreKeys("asyncinfer", tag).model("digits")]
        for key in (keys.pending("high"), keys.pending("normal"), keys.pending("low"), keys.inflight)
    ]
    assert [t["metadata"]["listName"] for t in triggers] == wanted
    assert [t["name"] for t in triggers] == [f"t{i}" for i in range(12)]
    modifiers = so["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == " + ".join(f"t{i}" for i in range(12))
    assert (modifiers["target"], modifiers["activationTarget"]) == ("128", "0")
    assert {t["metadata"]["addresses"] for t in triggers} == {f"{HEADLESS}:6379"}


def test_the_services_are_told_they_talk_to_a_cluster() -> None:
    config = rendered("cluster").config
    assert (config["REDIS_CLUSTER"], config["QUEUE_SHARDS"]) == ("true", "2")
    assert config["REDIS_URL"] == f"redis://{HEADLESS}:6379/0"
    assert "REDIS_CLUSTER" not in rendered("default").config and "QUEUE_SHARDS" not in rendered("default").config


def test_an_external_cluster_takes_the_given_tags() -> None:
    r = rendered("external-cluster")
    assert r.maybe("StatefulSet") is None and r.maybe("Job") is None
    iris = models_file(r.objects)["iris"]
    assert (iris["shards"], iris["tags"]) == (3, ["3", "1", "0"])
    triggers = r.scaled_objects()["iris"]["spec"]["triggers"]
    assert triggers[4]["metadata"]["listName"] == StoreKeys("asyncinfer", "1").model("iris").pending("high")
    assert {(t["metadata"]["addresses"], t["metadata"]["enableTLS"]) for t in triggers} == {
        ("clustercfg.jobs.example.internal:6379", "true")
    }


def test_the_statefulset_runs_masters_and_replicas_in_cluster_mode() -> None:
    r = rendered("cluster")
    sts = r.one("StatefulSet")
    assert sts["spec"]["replicas"] == 6  # 3 masters x (1 + 1 replica)
    container = pod_spec(sts)["containers"][0]
    args = container["args"]
    pairs = dict(zip(args[0::2], args[1::2], strict=True))
    assert pairs["--cluster-node-timeout"] == "5000" and pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--hash-max-ziplist-value"] == "1024"  # the standalone Redis's tuning too
    env = env_of(container)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["SELF_HOST"]["value"] == f"$(POD_NAME).{HEADLESS}"
    assert r.one("Service", "redis")["spec"]["publishNotReadyAddresses"] is True
    assert r.one("PodDisruptionBudget", "redis")["spec"]["maxUnavailable"] == 1
    spread = pod_spec(sts)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_the_bootstrap_job_creates_the_cluster_from_every_pod() -> None:
    r = rendered("cluster")
    job = r.one("Job", "redis-bootstrap")
    # Not a hook: `helm install --wait` would wait for the API, unready until the Cluster exists.
    assert "annotations" not in job["metadata"]
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["sh", "/opt/asyncinfer/redis-cluster.sh", "bootstrap"]
    env = {k: v["value"] for k, v in env_of(container).items()}
    assert env["NODES"].split() == [f"{STS}-{i}.{HEADLESS}:6379" for i in range(6)]
    assert (env["REPLICAS"], env["PASSWORD_FILE"]) == ("1", "/etc/asyncinfer/secrets/redis-password")
    (cm,) = [o for o in r.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-redis-scripts")]
    assert cm["data"]["redis-cluster.sh"].strip() == SCRIPT.read_text().strip()


def test_a_changed_bootstrap_is_a_new_job() -> None:
    """A Job's pod template cannot be patched: an upgrade that changes it must create another Job (its
    name carries the template's hash), and one that does not must keep the finished Job as it is."""

    def job_name(*sets: str) -> str:
        (job,) = [o for o in template(sets=("redis.architecture=cluster", *sets)) if o["kind"] == "Job"]
        return str(job["metadata"]["name"])

    same = job_name()
    assert same.startswith("ci-asyncinfer-redis-bootstrap-") and same == job_name("config.logLevel=DEBUG")
    assert len({same, job_name("redis.cluster.masters=4"), job_name("redis.image.tag=7.4.3")}) == 3


@pytest.mark.parametrize(
    "sets",
    [
        ("redis.architecture=cluster", "redis.cluster.masters=2"),
        ("redis.architecture=cluster", "redis.cluster.masters=17"),
        ("redis.architecture=cluster", "redis.cluster.replicasPerMaster=-1"),
        ("redis.architecture=cluster", "redis.cluster.pdb.maxUnavailable=0"),
        ("redis.architecture=cluster", "config.queueShards=65"),
        ("redis.architecture=cluster", "models[0].name=iris", "models[0].source.type=image", "models[0].source.path=/m",
         "models[0].shards=0"),
        ("redis.architecture=cluster", "models[0].name=iris", "models[0].source.type=image", "models[0].source.path=/m",
         "models[0].tags[0]=Upper"),
        ("redis.external.cluster=yes",),
    ],
)  # fmt: skip
def test_schema_refuses_bad_cluster_values(sets: tuple[str, ...]) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        template(sets=sets)


EXTERNAL = ("redis.external.enabled=true", "redis.auth.existingSecret=s", "redis.external.cluster=true")
IRIS = ("models[0].name=iris", "models[0].source.type=image", "models[0].source.path=/m")  # --set replaces the list


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("config.queueShards=2",), "config.queueShards \\(2\\) above 1 needs a Redis Cluster"),
        (("models[0].name=iris", "models[0].source.type=image", "models[0].source.path=/m", "models[0].shards=2"),
         "model iris: `shards` above 1 and `tags` need a Redis Cluster"),
        ((*EXTERNAL, "redis.external.url=redis://h:1/0"), "model iris: with redis.external.cluster and keda.enabled every model needs `tags`"),
        ((*EXTERNAL, *IRIS, "models[0].tags[0]=a", "redis.external.url=redis://h:1/2"), "must name db 0"),
        ((*EXTERNAL, *IRIS, "models[0].tags[0]=a", "redis.external.url=redis://h:1/0", "redis.external.sentinels[0]=s:1"),
         "mutually exclusive"),
        (("redis.external.enabled=true", "redis.architecture=cluster"), "redis.architecture=cluster are mutually exclusive"),
        (("redis.architecture=cluster", "config.keyPrefix=a{b}"), "must not hold a hash tag"),
        (("redis.architecture=cluster", "redis.cluster.masters=3", "config.queueShards=64", "models[0].name=a",
          "models[0].source.type=image", "models[0].source.path=/m", "models[1].name=b", "models[1].source.type=image",
          "models[1].source.path=/m", "models[2].name=c", "models[2].source.type=image", "models[2].source.path=/m",
          "models[3].name=d", "models[3].source.type=image", "models[3].source.path=/m"),
         "has no unused tag left"),
        (("redis.architecture=cluster", "models[0].name=iris", "models[0].source.type=image", "models[0].source.path=/m",
          "models[0].shards=2", "models[0].tags[0]=a"), "shards \\(2\\) differs from the number of its tags \\(1\\)"),
    ],
)  # fmt: skip
def test_contradicting_cluster_values_fail_with_one_clear_message(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        template(sets=sets)


def test_an_external_cluster_without_keda_lets_the_services_choose_tags() -> None:
    objects = template(sets=(*EXTERNAL, "redis.external.url=redis://h:1/0", "keda.enabled=false", "config.queueShards=4"))
    assert models_file(objects)["iris"] == models_file(objects)["iris"] | {"shards": 4}
    assert "tags" not in models_file(objects)["iris"]


# -- the bootstrap script, for real ----------------------------------------------------------------


def test_a_node_start_points_nodes_conf_at_the_pods_current_addresses(tmp_path: Path) -> None:
    """After every pod restarted with a new IP, each node's nodes.conf names the others by their new
    address (what the name each announced resolves to now): a name that does not resolve, or a line
    with no name, stays as it was. Redis 7.4's line format; the redis-server here (6.2) announces no
    hostname, so the script's own function runs on a file written in that format."""
    lines = [
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 10.1.2.3:6379@16379,127.0.0.1,tls-port=0,shard-id=a1 myself,master - 0 0 1 connected 0-5460",
        "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 10.1.2.4:6379@16379,no-such-pod.invalid,tls-port=0,shard-id=b2 master - 0 1 2 connected 5461-10922",
        "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.1.2.5:6379@16379,,tls-port=0,shard-id=c3 master - 0 1 3 connected 10923-16383",
        "vars currentEpoch 3 lastVoteEpoch 0",
    ]
    conf = tmp_path / "nodes.conf"
    conf.write_text("\n".join(lines) + "\n")
    text = SCRIPT.read_text()
    functions = "".join(
        re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.S | re.M)[0] for name in ("resolve", "refresh_nodes_conf")
    )
    subprocess.run(["sh", "-c", f'{functions}refresh_nodes_conf "$1"', "sh", str(conf)], check=True, timeout=30)
    assert conf.read_text().splitlines() == [lines[0].replace("10.1.2.3:", "127.0.0.1:"), *lines[1:]]


class Nodes:
    """Six cluster-mode redis-servers on loopback with the chart's password, as the StatefulSet's pods."""

    def __init__(self, root: Path, count: int = 6) -> None:
        (root / "secrets").mkdir()
        self.password_file = root / "secrets" / "redis-password"
        self.password_file.write_text(PASSWORD + "\n")  # a trailing newline, as `echo` would leave it
        self.servers: list[RedisServer] = []
        for _ in range(count):
            port = free_cluster_port({s.port for s in self.servers})
            data = root / f"node-{port}"
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"), "--masterauth", PASSWORD)
            self.servers.append(RedisServer(data, port, password=PASSWORD, extra_args=extra).start())

    def bootstrap(self, nodes: str | None = None, timeout_s: str | None = None) -> subprocess.CompletedProcess[str]:
        """The Job's container: its command and environment from the chart, the addresses on loopback."""
        container = pod_spec(rendered("cluster").one("Job", "redis-bootstrap"))["containers"][0]
        chart_env = {k: v["value"] for k, v in env_of(container).items()}
        loopback = {
            "NODES": nodes or " ".join(f"127.0.0.1:{s.port}" for s in self.servers),
            "PASSWORD_FILE": str(self.password_file),
            "TIMEOUT_SECONDS": timeout_s or chart_env["TIMEOUT_SECONDS"],
        }
        assert set(loopback) <= set(chart_env), "the chart sets what the script reads"
        path = f"{Path(find_redis_server()).parent}{os.pathsep}{os.environ['PATH']}"
        return subprocess.run(
            ["sh", str(SCRIPT), "bootstrap"],
            env={"PATH": path, **chart_env, **loopback},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.servers[index].port, password=PASSWORD, decode_responses=True, socket_timeout=5)

    def master_ranges(self) -> list[tuple[int, int]]:
        return sorted((int(start), int(end)) for start, end, *_ in self.client().execute_command("CLUSTER", "SLOTS"))

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.stop()


def test_bootstrap_creates_the_cluster_the_tag_table_assumes_once(nodes: Nodes) -> None:
    first = nodes.bootstrap()
    assert first.returncode == 0, first.stdout + first.stderr
    info = nodes.client().execute_command("CLUSTER", "INFO")
    assert "cluster_state:ok" in info and "cluster_known_nodes:6" in info
    # The split the chart's tag table is computed for: every tag of a column on one master, each
    # column on a different one.
    assert nodes.master_ranges() == even_split(3)
    replicas = [s for s in range(6) if nodes.client(s).execute_command("ROLE")[0] == "slave"]
    assert len(replicas) == 3
    epoch_before = nodes.client().execute_command("CLUSTER", "INFO")
    again = nodes.bootstrap()
    assert again.returncode == 0 and "exists already" in again.stdout, again.stdout + again.stderr
    assert nodes.master_ranges() == even_split(3)
    assert _field(nodes.client().execute_command("CLUSTER", "INFO"), "cluster_current_epoch") == _field(
        epoch_before, "cluster_current_epoch"
    )


def test_bootstrap_gives_up_when_a_pod_never_answers(nodes: Nodes) -> None:
    silent = free_cluster_port({s.port for s in nodes.servers})
    listed = " ".join([*(f"127.0.0.1:{s.port}" for s in nodes.servers), f"127.0.0.1:{silent}"])
    result = nodes.bootstrap(nodes=listed, timeout_s="3")
    assert result.returncode == 1 and f"127.0.0.1:{silent} did not answer within 3s" in result.stderr
    assert "cluster_slots_assigned:0" in nodes.client().execute_command("CLUSTER", "INFO"), "nothing was created"


def test_bootstrap_stops_at_once_on_a_wrong_password(nodes: Nodes) -> None:
    nodes.password_file.write_text("not-the-password")
    result = nodes.bootstrap()
    assert result.returncode == 1 and "refuses the password in PASSWORD_FILE" in result.stderr, result.stderr


def _field(info: Any, name: str) -> str:
    text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{name}:"))
