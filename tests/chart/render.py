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
    """Run helm; its stdout, or HelmError with its stderr."""
    proc = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def template_text(
    *values_files: Path, sets: tuple[str, ...] = (), set_strings: tuple[str, ...] = (), release: str = RELEASE
) -> str:
    """`helm template` the chart (tests included) and return the raw manifest stream."""
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    for s in set_strings:
        args += ["--set-string", s]
    return helm(*args)


def template(
    *values_files: Path, sets: tuple[str, ...] = (), set_strings: tuple[str, ...] = (), release: str = RELEASE
) -> list[dict[str, Any]]:
    """`helm template` the chart (tests included) and return the parsed objects."""
    text = template_text(*values_files, sets=sets, set_strings=set_strings, release=release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass(frozen=True)
class Rendered:
    """One scenario's objects, indexed for the assertions."""

    scenario: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str, component: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind and (component is None or component_of(o) == component)]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = self.of_kind(kind, component)
        assert len(found) == 1, f"{self.scenario}: expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str, component: str | None = None) -> dict[str, Any] | None:
        found = self.of_kind(kind, component)
        return found[0] if found else None

    def named(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found

    @property
    def config(self) -> dict[str, str]:
        return self.one("ConfigMap", "config")["data"]

    def workers(self) -> dict[str, dict[str, Any]]:
        """Worker Deployments by model name."""
        return {d["metadata"]["labels"]["asyncinfer.io/model"]: d for d in self.of_kind("Deployment", "worker")}

    def scaled_objects(self) -> dict[str, dict[str, Any]]:
        """ScaledObjects by model name."""
        return {s["metadata"]["labels"]["asyncinfer.io/model"]: s for s in self.of_kind("ScaledObject")}


def component_of(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


@cache
def rendered(scenario: str) -> Rendered:
    """Render a scenario once per test session (helm costs ~0.1 s a run)."""
    return Rendered(scenario, tuple(template(SCENARIOS[scenario])))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload or of a bare Pod."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    """The labels a workload's pods (or a bare Pod) carry."""
    return obj["metadata"]["labels"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]["labels"]


def workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] in ("Deployment", "StatefulSet", "Job", "Pod")]


def all_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
