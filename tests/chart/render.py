"""Run the real helm binary over the chart and parse what it renders."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "asyncinfer"
HELM = ROOT / ".tools" / "bin" / "helm"
INSTALL_HELM = ROOT / "deploy" / "helm" / "install-helm.sh"
RELEASE = "ci"
NAMESPACE = "asyncinfer-ci"

# Every value set the chart must render: the ci/ scenarios plus the one `make deploy` uses on kind.
SCENARIOS: dict[str, Path] = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
SCENARIOS["kind"] = ROOT / "deploy" / "kind" / "values.yaml"


class HelmError(AssertionError):
    """helm exited non-zero; the message carries its stderr."""


@cache
def ensure_helm() -> Path:
    """Install the pinned helm with the project's own script (idempotent, ~0.1 s once installed).

    Called lazily because scenarios render at collection time, before any fixture runs."""
    subprocess.run(["bash", str(INSTALL_HELM)], check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    return HELM


def helm(*args: str) -> str:
    proc = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def template(*values_files: Path, sets: tuple[str, ...] = (), set_strings: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` the chart (tests included) and return the parsed objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    for s in set_strings:
        args += ["--set-string", s]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


@dataclass(frozen=True)
class Rendered:
    """One scenario's objects, indexed for the assertions."""

    scenario: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if component is None or component_of(o) == component]
        assert len(found) == 1, f"{self.scenario}: expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str, component: str | None = None) -> dict[str, Any] | None:
        found = [o for o in self.of_kind(kind) if component is None or component_of(o) == component]
        return found[0] if found else None

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap")["data"]


def component_of(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


@cache
def rendered(scenario: str) -> Rendered:
    """Render a scenario once per test session (helm costs ~0.1 s a run)."""
    return Rendered(scenario, tuple(template(SCENARIOS[scenario])))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload or of a bare Pod."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] in ("Deployment", "StatefulSet", "Pod")]
