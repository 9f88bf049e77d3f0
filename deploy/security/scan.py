#!/usr/bin/env python3
"""Policy scanners over what we ship: checkov (Kubernetes on the rendered chart, Dockerfile on both
recipes), trivy config (the same) and hadolint (both recipes). Zero findings, or exit 1.

    python deploy/security/scan.py             (make test-security; tests/chart/test_scanners.py runs it)

Skips come only from deploy/security/scanner-skips.yaml. The chart is rendered with every
ci/*-values.yaml scenario and deploy/kind/values.yaml, so each option's objects are scanned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "asyncinfer"
SKIPS_FILE = ROOT / "deploy" / "security" / "scanner-skips.yaml"
DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
BIN = Path(sys.executable).parent


# Set to False (tests do) to see what the skips hide: every listed skip must still be needed.
APPLY_SKIPS = True


def skips() -> dict[str, list[dict[str, Any]]]:
    """The skip entries per scanner (none when APPLY_SKIPS is off)."""
    entries = yaml.safe_load(SKIPS_FILE.read_text())
    return entries if APPLY_SKIPS else {scanner: [] for scanner in entries}


def cli_skips(scanner: str) -> list[str]:
    """Skip ids for a scanner's command line: the entries not scoped to one object's annotation."""
    return [s["id"] for s in skips()[scanner] if s["where"] != "annotation"]


def render(out: Path) -> list[Path]:
    """Every scenario's manifests, one file each."""
    scenarios = sorted((CHART / "ci").glob("*-values.yaml")) + [ROOT / "deploy" / "kind" / "values.yaml"]
    files = []
    for values in scenarios:
        name = values.name.removesuffix("-values.yaml").removesuffix(".yaml")
        target = out / f"{name}.yaml"
        manifest = subprocess.run(
            [str(HELM), "template", "scan", str(CHART), "--namespace", "asyncinfer", "-f", str(values)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        target.write_text(manifest)
        files.append(target)
    return files


def run(name: str, command: list[str]) -> tuple[int, str]:
    """Run one scanner; (exit code, its output)."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env={**os.environ, "NO_COLOR": "1"})
    return proc.returncode, f"--- {name}: {' '.join(command)} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}"


def checkov(framework: str, targets: list[str]) -> list[str]:
    """checkov over files or a directory; the failed checks as 'ID resource (file)' lines."""
    command = [str(CHECKOV), "--skip-download", "--quiet", "--compact", "--framework", framework, "-o", "json"]
    if cli_skips("checkov"):
        command += ["--skip-check", ",".join(cli_skips("checkov"))]
    for target in targets:
        command += ["-d", target] if Path(target).is_dir() else ["-f", target]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed to run ({proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = json.loads(proc.stdout) if proc.stdout.strip() else []
    reports = reports if isinstance(reports, list) else [reports]
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]


def trivy(targets: list[Path], cache: Path) -> list[str]:
    """trivy config (embedded checks, no download) over each target; the failures as 'ID message' lines."""
    ignore = cache / "trivyignore"
    ignore.write_text("".join(f"{s['id']}\n" for s in skips()["trivy"]))
    found = []
    for target in targets:
        proc = subprocess.run(
            [
                str(tool("trivy")),
                "config",
                "--skip-check-update",
                "--quiet",
                "--cache-dir",
                str(cache / "trivy"),
                "--ignorefile",
                str(ignore),
                "--format",
                "json",
                "--file-patterns",
                r"dockerfile:Dockerfile.*",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"trivy failed to run ({proc.returncode}):\n{proc.stderr[-3000:]}")
        for result in json.loads(proc.stdout).get("Results", []) or []:
            for m in result.get("Misconfigurations", []) or []:
                if m.get("Status") == "FAIL":
                    found.append(f"{m['ID']} {result['Target']}: {m['Message']}")
    return found


def hadolint(dockerfiles: list[Path]) -> list[str]:
    """hadolint over the recipes; its findings."""
    command = [str(tool("hadolint"))]
    for s in skips()["hadolint"]:
        command += ["--ignore", s["id"]]
    proc = subprocess.run([*command, *map(str, dockerfiles)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def tool(name: str) -> Path:
    """A scanner binary next to this interpreter (the dev extra) or on PATH."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: deploy/security/install-scanners.sh")
    return Path(found)


def scan(manifests_dir: Path | None = None, dockerfiles: list[Path] | None = None) -> dict[str, list[str]]:
    """Every scanner's findings (after skips) by scanner name; empty lists = clean."""
    dockerfiles = dockerfiles or DOCKERFILES
    with tempfile.TemporaryDirectory(prefix="asyncinfer-scan-") as tmp:
        work = Path(tmp)
        if manifests_dir is None:
            manifests_dir = work / "rendered"
            manifests_dir.mkdir()
            render(manifests_dir)
        return {
            "checkov kubernetes": checkov("kubernetes", [str(manifests_dir)]),
            "checkov dockerfile": checkov("dockerfile", [str(d) for d in dockerfiles]),
            "trivy config": trivy([manifests_dir, *dockerfiles], work),
            "hadolint": hadolint(dockerfiles),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    findings = scan()
    for scanner, items in findings.items():
        print(f"{scanner}: {len(items)} finding(s)")
        for item in items:
            print(f"  {item}")
    return 1 if any(findings.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
