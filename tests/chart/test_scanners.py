"""The policy scanners (checkov, trivy config, hadolint) find nothing in the rendered chart and both
Dockerfiles, really run (they flag a bad manifest and a bad recipe), and every skip is listed once,
with a reason, and still needed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.chart.render import ROOT, rendered

pytestmark = pytest.mark.timeout(900)  # checkov over every scenario takes ~15 s a framework on 2 cores
SKIPS = yaml.safe_load((ROOT / "deploy" / "security" / "scanner-skips.yaml").read_text())
BAD_MANIFEST = """\
apiVersion: v1
kind: Pod
metadata:
  name: bad
  namespace: default
spec:
  hostNetwork: true
  containers:
    - name: bad
      image: nginx:latest
      securityContext:
        privileged: true
        runAsUser: 0
"""
BAD_DOCKERFILE = (
    "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nADD http://example.com/x /x\nCMD curl localhost\n"
)


@cache
def scanner() -> ModuleType:
    """deploy/security/scan.py, with the scanners installed by the project's own script."""
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "security" / "install-scanners.sh")],
        check=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    spec = importlib.util.spec_from_file_location("asyncinfer_scan", ROOT / "deploy" / "security" / "scan.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_chart_and_dockerfiles_have_zero_findings() -> None:
    findings = scanner().scan()
    assert findings == {"checkov kubernetes": [], "checkov dockerfile": [], "trivy config": [], "hadolint": []}


def test_every_scanner_flags_a_bad_manifest_and_a_bad_recipe(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "bad.yaml").write_text(BAD_MANIFEST)
    recipe = tmp_path / "Dockerfile.bad"
    recipe.write_text(BAD_DOCKERFILE)
    findings = scanner().scan(manifests_dir=manifests, dockerfiles=[recipe])
    assert any(f.startswith("CKV_K8S_16 ") for f in findings["checkov kubernetes"]), "privileged container"
    assert any(f.startswith("CKV_DOCKER_3 ") for f in findings["checkov dockerfile"]), "no USER"
    assert any(f.startswith("KSV-0017 ") for f in findings["trivy config"]), "privileged"
    assert any(f.startswith("DS-0002 ") for f in findings["trivy config"]), "runs as root"
    assert any("DL3008" in f for f in findings["hadolint"])


def test_every_command_line_skip_is_still_needed() -> None:
    module = scanner()
    module.APPLY_SKIPS = False
    try:
        findings = module.scan()
    finally:
        module.APPLY_SKIPS = True
    found = " ".join(item for items in findings.values() for item in items)
    for scanner_name in ("checkov", "trivy", "hadolint"):
        for skip in SKIPS[scanner_name]:
            if skip["where"] != "annotation":
                assert f"{skip['id']} " in found, f"{scanner_name} skip {skip['id']} hides nothing: remove it"


def test_every_skip_has_a_reason_and_annotation_skips_match_the_chart() -> None:
    for scanner_name, entries in SKIPS.items():
        for skip in entries:
            assert set(skip) >= {"id", "where", "reason"} and len(skip["reason"]) > 40, (scanner_name, skip)
    listed = {s["id"] for s in SKIPS["checkov"] if s["where"] == "annotation"}
    in_chart = {
        value.split("=")[0]
        for scenario in ("default", "production")
        for obj in rendered(scenario).objects
        for key, value in obj["metadata"].get("annotations", {}).items()
        if key.startswith("checkov.io/skip")
    }
    assert in_chart == listed
    for skip in SKIPS["checkov"]:
        if skip["where"] == "annotation":
            template = ROOT / "deploy" / "helm" / "asyncinfer" / skip["template"]
            assert f"{skip['id']}=" in template.read_text()
    # No other file may skip checks (one place for every skip).
    for path in (ROOT / ".checkov.yaml", ROOT / ".trivyignore", ROOT / ".hadolint.yaml"):
        assert not path.exists(), f"{path.name}: skips belong in deploy/security/scanner-skips.yaml"
