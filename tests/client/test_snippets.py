"""Every Python and shell snippet of the docs that uses the SDK or the `asyncinfer` command, run as a reader
would: against a real local stack (ASYNCINFER_URL), the `.venv` tools on PATH, in an empty directory.

A block that cannot run here says why in the doc, in a `<!-- not run: why -->` line just above it; it is
skipped with that reason, and so is a snippet that uses neither (curl, make, helm): `pytest -rs` lists them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack import BIN

from tests.client.helpers import cli_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "client" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
USES_CLI = re.compile(r"(?m)(^|\$\(|[|;&]\s*)asyncinfer\s")  # the command, not asyncinfer-api and friends


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # of the opening fence
    kind: str  # python or shell
    code: str
    not_run: str | None  # the doc's reason, when it marks the block

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def uses_client(self) -> bool:
        return "asyncinfer_client" in self.code if self.kind == "python" else bool(USES_CLI.search(self.code))


def snippets(doc: Path) -> list[Snippet]:
    found: list[Snippet] = []
    lines = doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        kind = LANGUAGES.get(opening[1].lower())
        if kind is not None:
            above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = NOT_RUN.search(above)
            found.append(Snippet(doc, index + 1, kind, "\n".join(lines[index + 1 : end]) + "\n", marker and marker[1]))
        index = end + 1
    return found


ALL = [snippet for doc in DOCS for snippet in snippets(doc)]


def test_the_readmes_sdk_and_cli_snippets_are_found():
    running = {snippet.name.split(":")[0] for snippet in ALL if snippet.uses_client and snippet.not_run is None}
    assert {"README.md", "client/README.md"} <= running  # the parser did not lose them


@pytest.mark.parametrize("snippet", ALL, ids=[snippet.name for snippet in ALL])
def test_snippet_runs_against_a_real_stack(snippet: Snippet, request: pytest.FixtureRequest, tmp_path: Path):
    if snippet.not_run is not None:
        pytest.skip(f"{snippet.name}: marked in the doc: not run: {snippet.not_run}")
    if not snippet.uses_client:
        pytest.skip(f"{snippet.name}: uses neither the SDK nor the asyncinfer command")
    stack = request.getfixturevalue("stack")  # started only for the snippets that run
    env = cli_env(stack.url, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    argv = [sys.executable, "-c", snippet.code] if snippet.kind == "python" else ["bash", "-euo", "pipefail", "-c", snippet.code]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{snippet.name} failed:\n{snippet.code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.strip(), f"{snippet.name} printed nothing"
