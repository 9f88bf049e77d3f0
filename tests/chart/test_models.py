"""Several models: one worker Deployment, ScaledObject and PDB per model; the API sees every model at the
same path as its workers; `url` sources are downloaded and refused unless their sha256 matches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobqueue.models import load_models
from jobqueue.settings import Settings
from tests.chart.render import SCENARIOS, HelmError, env_of, pod_spec, rendered, template

ALL = sorted(SCENARIOS)


def models_file(r: Any, key: str) -> dict[str, Any]:
    return yaml.safe_load(r.one("ConfigMap", "models")["data"][key])


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {k: v["value"] for k, v in env_of(container).items() if "value" in v}


def mounted_paths(workload: dict[str, Any]) -> dict[str, str]:
    """mountPath -> volume name of the main container."""
    return {m["mountPath"]: m["name"] for m in pod_spec(workload)["containers"][0]["volumeMounts"]}


def test_two_models_get_two_workers_two_scaledobjects_and_two_pdbs() -> None:
    r = rendered("two-models")
    assert set(r.workers()) == set(r.scaled_objects()) == {"iris", "sentiment-v2"}
    assert {p["metadata"]["labels"]["asyncinfer.io/model"] for p in r.of_kind("PodDisruptionBudget", "worker")} == {
        "iris",
        "sentiment-v2",
    }
    names = {d["metadata"]["name"] for d in r.workers().values()}
    assert names == {"ci-asyncinfer-worker-iris", "ci-asyncinfer-worker-sentiment-v2"}
    so = r.scaled_objects()
    assert so["sentiment-v2"]["spec"]["minReplicaCount"] == 0 and so["sentiment-v2"]["spec"]["maxReplicaCount"] == 4
    assert so["sentiment-v2"]["spec"]["advanced"]["scalingModifiers"]["target"] == "64"
    assert so["iris"]["spec"]["minReplicaCount"] == 1 and so["iris"]["spec"]["advanced"]["scalingModifiers"]["target"] == "128"


@pytest.mark.parametrize("scenario", ALL)
def test_each_worker_serves_one_model_from_its_own_models_file(scenario: str) -> None:
    r = rendered(scenario)
    everything = models_file(r, "models.yaml")
    assert list(everything) == [
        m["name"] for m in yaml.safe_load(SCENARIOS[scenario].read_text()).get("models", [{"name": "iris"}])
    ]
    for model, worker in r.workers().items():
        container = pod_spec(worker)["containers"][0]
        env = env_values(container)
        assert env["MODEL_NAME"] == env["DEFAULT_MODEL"] == model
        own_file = env["MODELS_FILE"]
        assert os.path.dirname(own_file) in mounted_paths(worker)
        assert models_file(r, os.path.basename(own_file)) == {model: everything[model]}
        assert env["MAX_BATCH_SIZE"] == str(everything[model]["max_batch_size"])


@pytest.mark.parametrize("scenario", ALL)
def test_the_api_sees_every_model_at_the_path_its_workers_see(scenario: str) -> None:
    r = rendered(scenario)
    api = r.one("Deployment", "api")
    api_env = env_values(pod_spec(api)["containers"][0]) | r.config
    assert api_env["MODELS_FILE"] == "/etc/asyncinfer/models/models.yaml"
    assert api_env["DEFAULT_MODEL"] in models_file(r, "models.yaml")
    api_volumes = {v["name"]: v for v in pod_spec(api)["volumes"]}
    for model, entry in models_file(r, "models.yaml").items():
        worker = r.workers()[model]
        worker_volumes = {v["name"]: v for v in pod_spec(worker)["volumes"]}
        if entry["path"].startswith("/models/"):
            # Mounted, not in the image: the same volume source at the same directory in both pods.
            directory = f"/models/{model}"
            api_volume, worker_volume = mounted_paths(api)[directory], mounted_paths(worker)[directory]
            assert api_volumes[api_volume] == worker_volumes[worker_volume]
        else:
            assert entry["path"] == "/app/models/iris.onnx"  # the example model both images carry


def test_per_model_overrides_reach_the_models_file_and_the_pod() -> None:
    r = rendered("two-models")
    entry = models_file(r, "models.yaml")["sentiment-v2"]
    assert entry == {
        "path": "/models/sentiment-v2/sentiment/v2/model.onnx",
        "max_batch_size": 32,
        "max_batch_wait_ms": 20,
        "inference_providers": "CUDAExecutionProvider,CPUExecutionProvider",
        "inference_threads": 2,  # unset (0): one per CPU of its limit, not ONNX Runtime's one per node core
        "labels": "/etc/asyncinfer/models/labels-sentiment-v2.json",
    }
    cm = r.one("ConfigMap", "models")["data"]
    assert json.loads(cm["labels-sentiment-v2.json"]) == ["negative", "neutral", "positive"]
    # The labels file is mounted next to the MODELS_FILE in the model's workers and in the API.
    for workload in (r.workers()["sentiment-v2"], r.one("Deployment", "api")):
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "models-file"]
        assert {"key": "labels-sentiment-v2.json", "path": "labels-sentiment-v2.json"} in volume["configMap"]["items"]
    assert models_file(r, "models.yaml")["iris"]["max_batch_size"] == 128
    spec = pod_spec(r.workers()["sentiment-v2"])
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nodeSelector" not in pod_spec(r.workers()["iris"])
    (claim,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "models-store", "readOnly": True}
    assert r.config["DEFAULT_MODEL"] == "iris"


def checksums(objs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for o in objs:
        if o["kind"] != "Deployment":
            continue
        annotations = o["spec"]["template"]["metadata"]["annotations"]
        model = o["metadata"]["labels"].get("asyncinfer.io/model")
        if model:
            out[model] = annotations["checksum/model"]
        elif "checksum/models" in annotations:
            out["api"] = annotations["checksum/models"]
    return out


def test_changing_one_models_source_rolls_only_its_workers_and_the_api() -> None:
    base = checksums(template(SCENARIOS["two-models"]))
    changed = checksums(template(SCENARIOS["two-models"], sets=("models[1].source.path=sentiment/v3/model.onnx",)))
    assert changed["sentiment-v2"] != base["sentiment-v2"]
    assert changed["api"] != base["api"]
    assert changed["iris"] == base["iris"]


def fetch_containers(r: Any) -> dict[str, dict[str, Any]]:
    """`url` model init containers by the component of the pod they run in."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: c
        for d in r.of_kind("Deployment")
        for c in pod_spec(d).get("initContainers", [])
        if c["name"].startswith("fetch-model-")
    }


def test_url_source_gets_an_init_container_with_the_checksum_check_in_api_and_worker() -> None:
    r = rendered("url-source")
    found = fetch_containers(r)
    assert set(found) == {"api", "worker"}
    assert found["api"]["command"] == found["worker"]["command"]
    for container in found.values():
        env = env_values(container)
        assert env["MODEL_URL"] == "https://models.example.com/resnet50/v1/model.onnx"
        assert env["MODEL_SHA256"] == "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
        assert "sha256sum -c" in container["command"][2]
    worker = r.workers()["resnet50"]
    (volume,) = [v for v in pod_spec(worker)["volumes"] if v["name"] == "model-resnet50"]
    assert volume == {"name": "model-resnet50", "emptyDir": {"sizeLimit": "512Mi"}}
    assert "initContainers" not in pod_spec(r.workers()["iris"]), "image sources need no download"
    assert models_file(r, "models.yaml")["resnet50"]["path"] == "/models/resnet50/model.onnx"


def run_fetch(container: dict[str, Any], url: str, sha256: str, model_dir: Path) -> subprocess.CompletedProcess[str]:
    """The init container's own script, run here with its env (a file:// URL instead of https)."""
    env = {**os.environ, **env_values(container), "MODEL_URL": url, "MODEL_SHA256": sha256, "MODEL_DIR": str(model_dir)}
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_fetch_script_keeps_a_matching_file_and_refuses_a_mismatch(tmp_path: Path) -> None:
    container = fetch_containers(rendered("url-source"))["worker"]
    source = tmp_path / "published.onnx"
    source.write_bytes(b"\x08\x07onnx-bytes" * 100)
    good = hashlib.sha256(source.read_bytes()).hexdigest()

    ok_dir = tmp_path / "ok"
    ok_dir.mkdir()
    result = run_fetch(container, source.as_uri(), good, ok_dir)
    assert result.returncode == 0, result.stderr
    assert (ok_dir / "model.onnx").read_bytes() == source.read_bytes()

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    result = run_fetch(container, source.as_uri(), "0" * 64, bad_dir)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
    assert not (bad_dir / "model.onnx").exists(), "a file that fails its checksum must never be where the model is read"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("models[0].name=Iris",), "/models/0/name"),
        (("models[0].name=-iris",), "/models/0/name"),
        (("models[0].name=" + "a" * 41,), "/models/0/name"),
        (("models[0].source.type=url", "models[0].source.url=https://x.example/m.onnx"), "sha256"),
        (
            ("models[0].source.type=url", "models[0].source.url=http://x.example/m.onnx", "models[0].source.sha256=" + "a" * 64),
            "/models/0/source",
        ),
        (("models[0].source.type=pvc", "models[0].source.path=m.onnx"), "claimName"),
        (("models[0].source.type=ftp",), "/models/0/source/type"),
        (("models[0].maxBatchSize=0",), "/models/0/maxBatchSize"),
    ],
)
def test_the_schema_refuses_bad_models(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema") as err:
        template(sets=sets)
    assert message in str(err.value)


def test_a_duplicate_model_name_is_refused(tmp_path: Path) -> None:
    values = tmp_path / "dup-values.yaml"
    entry = {"name": "iris", "source": {"type": "image", "path": "/app/models/iris.onnx"}}
    values.write_text(yaml.safe_dump({"models": [entry, {**entry, "maxBatchSize": 8}]}))
    with pytest.raises(HelmError, match='models: "iris" appears twice'):
        template(values)


def test_default_model_must_be_one_of_the_models() -> None:
    with pytest.raises(HelmError, match='config.defaultModel "resnet" is not one of the models'):
        template(sets=("config.defaultModel=resnet",))
    objs = template(SCENARIOS["url-source"], sets=("config.defaultModel=resnet50",))
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ci-asyncinfer"]
    assert cm["data"]["DEFAULT_MODEL"] == "resnet50"


@pytest.mark.parametrize("scenario", ALL)
def test_the_services_own_parser_reads_the_rendered_models_files(scenario: str, tmp_path: Path) -> None:
    """jobqueue.models.load_models over the rendered files, as the API and each worker read them."""
    r = rendered(scenario)
    cm = r.one("ConfigMap", "models")["data"]
    for key, text in cm.items():
        (tmp_path / key).write_text(text)
    cluster = r.config.get("REDIS_CLUSTER") == "true"
    api_models = load_models(
        Settings(models_file=str(tmp_path / "models.yaml"), default_model=r.config["DEFAULT_MODEL"], redis_cluster=cluster)
    )
    assert list(api_models)[0] == r.config["DEFAULT_MODEL"]
    assert set(api_models) == set(r.workers())
    for model, worker in r.workers().items():
        env = env_values(pod_spec(worker)["containers"][0])
        own = load_models(
            Settings(
                models_file=str(tmp_path / os.path.basename(env["MODELS_FILE"])),
                default_model=env["DEFAULT_MODEL"],
                redis_cluster=cluster,
            )
        )
        assert list(own) == [env["MODEL_NAME"]] == [model]
        assert own[model].path == api_models[model].path, "a worker opens the file the API read the signature from"
        assert own[model].max_batch_size == api_models[model].max_batch_size == int(env["MAX_BATCH_SIZE"])
        # A worker goes round the shards new jobs go to: the same hash tags.
        assert (own[model].shards, own[model].tags) == (api_models[model].shards, api_models[model].tags)
        if own[model].labels_path:
            assert os.path.dirname(own[model].labels_path) == os.path.dirname(env["MODELS_FILE"])
