"""The client is its own small distribution: the service's version, httpx (httpcore, sniffio) only, no server modules."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import ROOT

SERVER_ONLY_MODULES = ("redis", "fastapi", "uvicorn", "onnxruntime", "onnx", "numpy", "pydantic", "api", "jobqueue", "worker")


def test_client_version_is_the_service_version():
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client["version"] == service["version"]
    assert client["name"] == "asyncinfer-client"
    assert client["scripts"] == {"asyncinfer": "asyncinfer_client.cli:main"}
    # httpcore (httpx's own): AsyncClient gives it an asyncio network backend; sniffio: httpcore looks for it on
    # every asyncio request, and a failed import costs a sys.path scan each time
    assert [dep.split(">")[0] for dep in client["dependencies"]] == ["httpx", "httpcore", "sniffio"]


def test_importing_the_client_and_cli_loads_no_server_dependency():
    probe = (
        "import sys, asyncinfer_client, asyncinfer_client.cli, asyncinfer_client.run_file; "
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_ONLY_MODULES!r})); "
        "print(','.join(loaded))"
    )
    # run from the client's folder, so the repo's own packages are not importable by accident
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "client", capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_version_flag_reports_the_installed_version():
    result = subprocess.run([sys.executable, "-m", "asyncinfer_client.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "asyncinfer 0.1.0"
